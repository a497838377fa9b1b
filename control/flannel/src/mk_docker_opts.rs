//! `shoal mk-docker-opts`: flannel's `mk-docker-opts.sh` with its flags (`-f`, `-d`, `-i`, `-c`,
//! `-k`, `-m`), writing Docker's options from subnet.env; `--wait` lets a `docker.service`
//! drop-in run it before dockerd while flannel is still taking its lease.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use clap::Args;

use crate::{
    docker_opts::{self, DEFAULT_KEY, DockerOptsFormat},
    subnet_env::{self, SubnetEnv},
};

/// How often `--wait` looks for subnet.env.
const POLL: Duration = Duration::from_millis(250);

/// Generate Docker daemon options from flannel's subnet.env (as flannel's mk-docker-opts.sh).
#[derive(Debug, Clone, Args)]
pub struct MkDockerOptsArgs {
    /// Path to flannel's env file.
    #[arg(short = 'f', long = "flannel-env", default_value = subnet_env::DEFAULT_PATH)]
    pub flannel_env: PathBuf,
    /// Path to the Docker env file to write.
    #[arg(short = 'd', long = "docker-env", default_value = docker_opts::DEFAULT_PATH)]
    pub docker_env: PathBuf,
    /// Output each Docker option as an individual variable, e.g. DOCKER_OPT_MTU=1450.
    #[arg(short = 'i', long)]
    pub individual: bool,
    /// Output the combined Docker options into the DOCKER_OPTS variable.
    #[arg(short = 'c', long)]
    pub combined: bool,
    /// Name of the combined options variable.
    #[arg(short = 'k', long = "key", default_value = DEFAULT_KEY)]
    pub key: String,
    /// Do not output --ip-masq (for older Docker versions).
    #[arg(short = 'm', long = "no-ip-masq")]
    pub no_ip_masq: bool,
    /// Also restrict Docker's container addresses to the lower half of the lease
    /// (`--fixed-cidr`), leaving the upper half to CNI containers on Docker's bridge (shoal's
    /// addition; not a flag of mk-docker-opts.sh).
    #[arg(long)]
    pub fixed_cidr: bool,
    /// Seconds to wait for flannel's env file to appear (0: it must be there already).
    #[arg(long, default_value_t = 0)]
    pub wait: u64,
}

impl MkDockerOptsArgs {
    /// The script writes both kinds of variables unless one of `-i`/`-c` is given.
    pub fn format(&self) -> DockerOptsFormat {
        let both = !self.individual && !self.combined;
        DockerOptsFormat {
            individual: self.individual || both,
            combined: self.combined || both,
            key: self.key.clone(),
            ip_masq: !self.no_ip_masq,
            fixed_cidr: self.fixed_cidr,
        }
    }
}

pub async fn run(args: MkDockerOptsArgs) -> Result<()> {
    let env = read_waiting(&args.flannel_env, Duration::from_secs(args.wait)).await?;
    docker_opts::write(&args.docker_env, &env, &args.format())?;
    Ok(())
}

/// Reads subnet.env, waiting up to `limit` for it to appear.
async fn read_waiting(path: &std::path::Path, limit: Duration) -> Result<SubnetEnv> {
    let deadline = tokio::time::Instant::now() + limit;
    while !path.exists() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
    }
    SubnetEnv::read(path)
        .with_context(|| format!("flannel's env file (waited {}s for it)", limit.as_secs()))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        args: MkDockerOptsArgs,
    }

    fn parse(flags: &[&str]) -> MkDockerOptsArgs {
        Command::parse_from(std::iter::once("mk-docker-opts").chain(flags.iter().copied())).args
    }

    #[test]
    fn script_flags_choose_the_format() {
        assert_eq!(parse(&[]).format(), DockerOptsFormat::default());
        let only_individual = parse(&["-i"]).format();
        assert!(only_individual.individual && !only_individual.combined);
        let custom = parse(&["-c", "-m", "-k", "CUSTOM_KEY"]).format();
        assert!(!custom.individual && custom.combined && !custom.ip_masq);
        assert_eq!(custom.key, "CUSTOM_KEY");
        let defaults = parse(&[]);
        assert_eq!(
            defaults.flannel_env,
            PathBuf::from("/run/flannel/subnet.env")
        );
        assert_eq!(defaults.docker_env, PathBuf::from("/run/flannel/docker"));
    }

    #[tokio::test]
    async fn writes_from_subnet_env_and_waits_for_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let subnet_file = dir.path().join("subnet.env");
        let docker_file = dir.path().join("docker_opts.env");
        let text = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";
        let late = {
            let subnet_file = subnet_file.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                std::fs::write(&subnet_file, text).expect("write subnet.env");
            })
        };
        let mut args = parse(&["-c"]);
        args.flannel_env = subnet_file.clone();
        args.docker_env = docker_file.clone();
        args.wait = 10;
        run(args.clone())
            .await
            .expect("written once subnet.env appears");
        late.await.expect("writer");
        assert_eq!(
            std::fs::read_to_string(&docker_file).expect("read"),
            "DOCKER_OPTS=\" --bip=10.1.74.1/24 --ip-masq=false --mtu=1472\"\n"
        );
        args.flannel_env = dir.path().join("absent.env");
        args.wait = 0;
        let err = run(args).await.expect_err("no subnet.env");
        assert!(format!("{err:#}").contains("absent.env"), "{err:#}");
    }
}
