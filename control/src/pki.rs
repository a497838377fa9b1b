//! `shoal pki`: a cluster's certificates from the command line, on top of `shoal-pki`:
//! `init` (the CA), `issue` (one certificate) and `cluster` (everything a cluster needs:
//! per node a server and a peer certificate, and the client certificates of the store users
//! `root`, `flannel` and `fleet`). Keys are written 0600 into 0700 directories.
use std::{net::IpAddr, path::PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use shoal_pki::{Authority, ClusterNode, Request, Usage};

/// The CA's common name when `--common-name` is not given.
const DEFAULT_CA_NAME: &str = "shoal cluster CA";

#[derive(Debug, Args)]
pub struct PkiArgs {
    #[command(subcommand)]
    pub command: PkiCommand,
}

#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Create a CA (ca.pem, ca-key.pem) in DIR; an existing one is kept.
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = DEFAULT_CA_NAME)]
        common_name: String,
    },
    /// Issue one certificate signed by DIR's CA: DIR/NAME.pem and DIR/NAME-key.pem.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        /// File name, and the common name unless --common-name is given (a client
        /// certificate's common name is its etcd user).
        #[arg(long)]
        name: String,
        #[arg(long)]
        common_name: Option<String>,
        #[arg(long, value_enum)]
        usage: UsageArg,
        /// A DNS name or IP address the certificate is valid for; repeatable.
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
    /// Everything a cluster needs: the CA, client certificates root, flannel and fleet, and
    /// per node DIR/NAME/ with what that node's agent reads (its `pki` setting). DIR itself
    /// (the CA key, root for people) is the operator's and never goes to a node.
    Cluster {
        #[arg(long)]
        dir: PathBuf,
        /// A master (a store member) as `name=ip`; repeatable. The first is the first
        /// master: it sets up the store's users, so it is the one node that gets `root`.
        #[arg(long = "node", value_parser = parse_node, required = true)]
        nodes: Vec<ClusterNode>,
        /// A worker (no store member, so no server or peer certificate) as `name=ip`;
        /// repeatable.
        #[arg(long = "worker", value_parser = parse_node)]
        workers: Vec<ClusterNode>,
        /// A further node whose agent acts as root (a master that joins a running cluster
        /// adds itself with `MemberAdd`, which needs it); repeatable.
        #[arg(long = "admin")]
        admins: Vec<String>,
    },
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum UsageArg {
    Server,
    Peer,
    Client,
}

impl From<UsageArg> for Usage {
    fn from(usage: UsageArg) -> Self {
        match usage {
            UsageArg::Server => Usage::Server,
            UsageArg::Peer => Usage::Peer,
            UsageArg::Client => Usage::Client,
        }
    }
}

fn parse_node(text: &str) -> Result<ClusterNode, String> {
    let (name, ip) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not name=ip"))?;
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("`{ip}` in `{text}` is not an IP address"))?;
    if name.is_empty() {
        return Err(format!("`{text}` has no node name"));
    }
    Ok(ClusterNode {
        name: name.to_string(),
        ip,
        member: true,
        admin: false,
    })
}

/// `nodes` with the admin ones marked: the first (the first master, which sets up the store's
/// users) and those named in `admins`.
fn with_admins(mut nodes: Vec<ClusterNode>, admins: &[String]) -> Result<Vec<ClusterNode>> {
    if let Some(unknown) = admins
        .iter()
        .find(|admin| !nodes.iter().any(|node| node.member && node.name == **admin))
    {
        anyhow::bail!("--admin {unknown} is not one of the --node names (the masters)");
    }
    for (index, node) in nodes.iter_mut().enumerate() {
        node.admin = index == 0 || admins.contains(&node.name);
    }
    Ok(nodes)
}

pub fn run(args: PkiArgs) -> Result<()> {
    match args.command {
        PkiCommand::Init { dir, common_name } => {
            Authority::read_or_create(&dir, &common_name)
                .with_context(|| format!("creating a CA in {}", dir.display()))?;
            println!("CA in {}", dir.join(shoal_pki::CA_CERT).display());
        }
        PkiCommand::Issue {
            dir,
            name,
            common_name,
            usage,
            hosts,
        } => {
            let ca = Authority::read(&dir)?;
            let request = Request::new(common_name.unwrap_or_else(|| name.clone()), usage.into())
                .hosts(hosts);
            let files = ca.issue(&request)?.write(&dir, &name)?;
            println!(
                "{} and {}",
                files.certificate.display(),
                files.key.display()
            );
        }
        PkiCommand::Cluster {
            dir,
            nodes,
            workers,
            admins,
        } => {
            let workers = workers.into_iter().map(|worker| ClusterNode {
                member: false,
                ..worker
            });
            let nodes = with_admins(nodes.into_iter().chain(workers).collect(), &admins)?;
            shoal_pki::issue_cluster(&dir, &nodes).with_context(|| {
                format!("issuing the cluster's certificates in {}", dir.display())
            })?;
            for node in &nodes {
                let admin = if node.admin { " (root)" } else { "" };
                let role = if node.member { "master" } else { "worker" };
                println!(
                    "{} ({role}{admin}): {}",
                    node.name,
                    shoal_pki::node_dir(&dir, &node.name).display()
                );
            }
            println!(
                "root (the store's administrator, for people): {}",
                dir.join(format!("{}.pem", shoal_pki::ROOT)).display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_name_equals_ip() {
        let node = parse_node("n1=10.0.0.1").expect("valid");
        assert_eq!(node.name, "n1");
        assert_eq!(node.ip.to_string(), "10.0.0.1");
        for bad in ["n1", "n1=host", "=10.0.0.1"] {
            assert!(parse_node(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_first_node_and_named_ones_are_admins() {
        let nodes = ["n1=10.0.0.1", "n2=10.0.0.2", "n3=10.0.0.3"]
            .map(|text| parse_node(text).expect("valid"))
            .to_vec();
        let marked = with_admins(nodes.clone(), &[]).expect("valid");
        assert_eq!(
            marked.iter().map(|n| n.admin).collect::<Vec<_>>(),
            [true, false, false]
        );
        let marked = with_admins(nodes.clone(), &["n3".into()]).expect("valid");
        assert_eq!(
            marked.iter().map(|n| n.admin).collect::<Vec<_>>(),
            [true, false, true]
        );
        assert!(
            with_admins(nodes.clone(), &["n9".into()]).is_err(),
            "an unknown name"
        );
        let mut with_worker = nodes;
        with_worker[2].member = false;
        assert!(
            with_admins(with_worker, &["n3".into()]).is_err(),
            "a worker"
        );
    }

    #[test]
    fn init_then_issue_writes_an_owner_only_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = dir.path().join("pki");
        let run_pki = |command| run(PkiArgs { command }).expect("pki");
        run_pki(PkiCommand::Init {
            dir: pki.clone(),
            common_name: DEFAULT_CA_NAME.into(),
        });
        run_pki(PkiCommand::Issue {
            dir: pki.clone(),
            name: "ops".into(),
            common_name: None,
            usage: UsageArg::Client,
            hosts: Vec::new(),
        });
        let mode = std::fs::metadata(pki.join("ops-key.pem"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
