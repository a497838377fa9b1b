//! Docker's daemon options from subnet.env, in the format of flannel's `mk-docker-opts.sh`:
//! `DOCKER_OPT_BIP`, `DOCKER_OPT_IPMASQ`, `DOCKER_OPT_MTU` (each quoted, in that order) and a
//! combined `DOCKER_OPTS=" --bip=... --ip-masq=... --mtu=..."`, which a
//! `docker.service` drop-in reads with `EnvironmentFile=`. flannel writes it beside subnet.env
//! after each lease; `shoal mk-docker-opts` writes it on demand.

use std::path::{Path, PathBuf};

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
}

impl Default for DockerOptsFormat {
    fn default() -> Self {
        Self {
            individual: true,
            combined: true,
            key: DEFAULT_KEY.to_string(),
            ip_masq: true,
        }
    }
}

/// Docker's options for this node's lease: its bridge takes the subnet's first address, the
/// overlay's MTU, and masquerades only when flannel does not.
pub fn options(env: &SubnetEnv, ip_masq: bool) -> Vec<(&'static str, String)> {
    let mut options = vec![("DOCKER_OPT_BIP", format!("--bip={}", env.gateway()))];
    if ip_masq {
        options.push(("DOCKER_OPT_IPMASQ", format!("--ip-masq={}", !env.ip_masq)));
    }
    options.push(("DOCKER_OPT_MTU", format!("--mtu={}", env.mtu)));
    options
}

/// The file's text, byte for byte what mk-docker-opts.sh writes for the same input. (The script
/// also starts the combined variable from that variable's value in its own environment; shoal
/// does not, so that regenerating the file in a unit that reads it never repeats options.)
pub fn render(env: &SubnetEnv, format: &DockerOptsFormat) -> String {
    let options = options(env, format.ip_masq);
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
