//! Docker's daemon options from subnet.env, in the format of flannel's `mk-docker-opts.sh`:
//! `DOCKER_OPT_BIP`, `DOCKER_OPT_IPMASQ`, `DOCKER_OPT_MTU` (each quoted, in that order) and a
//! combined `DOCKER_OPTS=" --bip=... --ip-masq=... --mtu=..."`, which a
//! `docker.service` drop-in reads with `EnvironmentFile=`. flannel writes it beside subnet.env
//! after each lease; `shoal mk-docker-opts` writes it on demand.
//!
//! Where Docker shares its bridge with CNI containers (shoal's own addition, off in
//! mk-docker-opts.sh's format), Docker also gets `--fixed-cidr` with the lower half of the
//! lease ([`docker_half`]): its IPAM hands out only those, and the CNI plugin, which reads the
//! option back from this file ([`read_fixed_cidr`]), gives host-local the upper half
//! ([`cni_range`]) on the same bridge, behind the same gateway.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use ipnetwork::Ipv4Network;

use crate::subnet_env::{SubnetEnv, SubnetEnvError, write_atomically};

/// Where Docker's options go by default (mk-docker-opts.sh's own default is
/// /run/docker_opts.env; CoreOS-style drop-ins here read this one).
pub const DEFAULT_PATH: &str = "/run/flannel/docker";

/// The file name of Docker's options beside a file named subnet.env.
const FILE_NAME: &str = "docker";

/// Its suffix beside a subnet file named otherwise (`node1.env` -> `node1.env.docker`), so that
/// flannels sharing a directory do not share it.
const SUFFIX: &str = ".docker";

/// The combined variable's default name.
pub const DEFAULT_KEY: &str = "DOCKER_OPTS";

/// Which lines to write, as mk-docker-opts.sh's `-i`, `-c`, `-k` and `-m` choose them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerOptsFormat {
    /// One `DOCKER_OPT_*` variable per option (`-i`).
    pub individual: bool,
    /// The combined variable (`-c`).
    pub combined: bool,
    /// The combined variable's name (`-k`).
    pub key: String,
    /// Emit `--ip-masq` (`-m` turns it off, for old Docker versions).
    pub ip_masq: bool,
    /// Emit `--fixed-cidr` with the lease's lower half (`DOCKER_OPT_FIXED_CIDR`, last), leaving
    /// the upper half to CNI containers on Docker's bridge. Not in mk-docker-opts.sh.
    pub fixed_cidr: bool,
}

impl Default for DockerOptsFormat {
    fn default() -> Self {
        Self {
            individual: true,
            combined: true,
            key: DEFAULT_KEY.to_string(),
            ip_masq: true,
            fixed_cidr: false,
        }
    }
}

/// Docker's options for this node's lease: its bridge takes the subnet's first address, the
/// overlay's MTU, and masquerades only when flannel does not.
pub fn options(env: &SubnetEnv, format: &DockerOptsFormat) -> Vec<(&'static str, String)> {
    let mut options = vec![("DOCKER_OPT_BIP", format!("--bip={}", env.gateway()))];
    if format.ip_masq {
        options.push(("DOCKER_OPT_IPMASQ", format!("--ip-masq={}", !env.ip_masq)));
    }
    options.push(("DOCKER_OPT_MTU", format!("--mtu={}", env.mtu)));
    if format.fixed_cidr
        && let Some(half) = docker_half(env.subnet)
    {
        options.push(("DOCKER_OPT_FIXED_CIDR", format!("--fixed-cidr={half}")));
    }
    options
}

/// The part of a lease Docker allocates from when it shares its bridge: the lower half (the
/// gateway, `.1`, is in it and Docker skips it). `None` for a lease too small to split.
pub fn docker_half(subnet: Ipv4Network) -> Option<Ipv4Network> {
    if subnet.prefix() >= 30 {
        return None;
    }
    Ipv4Network::new(subnet.network(), subnet.prefix() + 1).ok()
}

/// The addresses of `subnet` left to CNI when Docker allocates from `docker` (a prefix at the
/// start of the lease, as [`docker_half`] gives): from the first address after it to the last
/// before the lease's broadcast. `None` if `docker` is not such a prefix or leaves nothing.
pub fn cni_range(subnet: Ipv4Network, docker: Ipv4Network) -> Option<(Ipv4Addr, Ipv4Addr)> {
    if docker.network() != subnet.network() || docker.prefix() <= subnet.prefix() {
        return None;
    }
    let start = u32::from(docker.broadcast()).checked_add(1)?;
    let end = u32::from(subnet.broadcast()).checked_sub(1)?;
    (start <= end).then(|| (Ipv4Addr::from(start), Ipv4Addr::from(end)))
}

/// The `--fixed-cidr` in a Docker options file, if the file exists and has one.
pub fn read_fixed_cidr(path: &Path) -> Option<Ipv4Network> {
    let text = std::fs::read_to_string(path).ok()?;
    text.split(|c: char| c.is_whitespace() || c == '"')
        .find_map(|word| word.strip_prefix("--fixed-cidr="))
        .and_then(|cidr| cidr.parse().ok())
}

/// The file's text, byte for byte what mk-docker-opts.sh writes for the same input. (The script
/// also starts the combined variable from that variable's value in its own environment; shoal
/// does not, so that regenerating the file in a unit that reads it never repeats options.)
pub fn render(env: &SubnetEnv, format: &DockerOptsFormat) -> String {
    let options = options(env, format);
    let mut text = String::new();
    let mut combined = String::new();
    for (name, value) in &options {
        if format.individual {
            text.push_str(&format!("{name}=\"{value}\"\n"));
        }
        combined.push(' ');
        combined.push_str(value);
    }
    if format.combined {
        text.push_str(&format!("{}=\"{combined}\"\n", format.key));
    }
    text
}

/// Docker's options file beside `subnet_file`: `/run/flannel/subnet.env` ->
/// `/run/flannel/docker`, any other `NAME` -> `NAME.docker`.
pub fn path_beside(subnet_file: &Path) -> PathBuf {
    match subnet_file.file_name() {
        Some(name) if name == "subnet.env" => subnet_file.with_file_name(FILE_NAME),
        _ => {
            let mut path = subnet_file.as_os_str().to_os_string();
            path.push(SUFFIX);
            PathBuf::from(path)
        }
    }
}

/// Writes the options file atomically.
pub fn write(
    path: &Path,
    env: &SubnetEnv,
    format: &DockerOptsFormat,
) -> Result<(), SubnetEnvError> {
    write_atomically(path, render(env, format).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// flannel's own test input (dist/mk_docker_opts_test.go).
    fn sample() -> SubnetEnv {
        SubnetEnv::parse(
            "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n",
        )
        .expect("parses")
    }

    /// The expected outputs of flannel's own test cases, flag for flag.
    #[test]
    fn matches_mk_docker_opts_cases() {
        let env = sample();
        let cases = [
            (
                DockerOptsFormat::default(),
                "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=true\"\n\
                 DOCKER_OPT_MTU=\"--mtu=1472\"\nDOCKER_OPTS=\" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472\"\n",
            ),
            (
                DockerOptsFormat {
                    combined: false,
                    ..DockerOptsFormat::default()
                },
                "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=true\"\n\
                 DOCKER_OPT_MTU=\"--mtu=1472\"\n",
            ),
            (
                DockerOptsFormat {
                    individual: false,
                    ..DockerOptsFormat::default()
                },
                "DOCKER_OPTS=\" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472\"\n",
            ),
            (
                DockerOptsFormat {
                    key: "CUSTOM_KEY".into(),
                    ..DockerOptsFormat::default()
                },
                "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=true\"\n\
                 DOCKER_OPT_MTU=\"--mtu=1472\"\nCUSTOM_KEY=\" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472\"\n",
            ),
            (
                DockerOptsFormat {
                    ip_masq: false,
                    ..DockerOptsFormat::default()
                },
                "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_MTU=\"--mtu=1472\"\n\
                 DOCKER_OPTS=\" --bip=10.1.74.1/24 --mtu=1472\"\n",
            ),
        ];
        for (format, expected) in cases {
            assert_eq!(render(&env, &format), expected, "{format:?}");
        }
    }

    #[test]
    fn flannel_masquerading_turns_dockers_off() {
        let mut env = sample();
        env.ip_masq = true;
        let format = DockerOptsFormat {
            individual: false,
            ..DockerOptsFormat::default()
        };
        assert_eq!(
            render(&env, &format),
            "DOCKER_OPTS=\" --bip=10.1.74.1/24 --ip-masq=false --mtu=1472\"\n"
        );
    }

    #[test]
    fn a_shared_bridge_gives_docker_the_lower_half_and_cni_the_upper() {
        let env = sample();
        let format = DockerOptsFormat {
            individual: false,
            fixed_cidr: true,
            ..DockerOptsFormat::default()
        };
        assert_eq!(
            render(&env, &format),
            "DOCKER_OPTS=\" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472 --fixed-cidr=10.1.74.0/25\"\n"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("docker");
        write(&path, &env, &format).expect("written");
        let docker = read_fixed_cidr(&path).expect("a --fixed-cidr");
        assert_eq!(docker, "10.1.74.0/25".parse::<Ipv4Network>().expect("cidr"));
        assert_eq!(
            cni_range(env.subnet, docker),
            Some((Ipv4Addr::new(10, 1, 74, 128), Ipv4Addr::new(10, 1, 74, 254)))
        );
        assert_eq!(read_fixed_cidr(&dir.path().join("absent")), None);
        let other: Ipv4Network = "10.1.74.128/25".parse().expect("cidr");
        assert_eq!(
            cni_range(env.subnet, other),
            None,
            "not at the lease's start"
        );
        assert_eq!(docker_half("10.1.74.0/30".parse().expect("cidr")), None);
    }

    #[test]
    fn written_beside_subnet_env() {
        let dir = tempfile::tempdir().expect("temp dir");
        let subnet_file = dir.path().join("flannel/subnet.env");
        let path = path_beside(&subnet_file);
        assert_eq!(path, dir.path().join("flannel/docker"));
        write(&path, &sample(), &DockerOptsFormat::default()).expect("written");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.ends_with("DOCKER_OPTS=\" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472\"\n"));
        assert_eq!(
            path_beside(Path::new(crate::subnet_env::DEFAULT_PATH)),
            Path::new(DEFAULT_PATH)
        );
    }
}
