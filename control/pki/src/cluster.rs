//! Everything a shoal cluster needs, in one go: the CA, the client certificates of the store
//! users shoal's components connect as, and per node a directory with what that node's agent
//! reads (its `pki` setting): the CA certificate (not its key), a server and a peer certificate
//! for its store member (masters only: a peer certificate lets its holder speak Raft), and the
//! client certificates of its components.
//!
//! ```text
//! <dir>/ca.pem ca-key.pem               the CA (the key stays here)
//! <dir>/root.pem flannel.pem fleet.pem  client certificates (+ -key.pem): CN = etcd user
//! <dir>/<node>/ca.pem flannel.pem fleet.pem (+ -key.pem)
//! <dir>/<master>/server.pem peer.pem    (+ -key.pem) only on a node with a store member
//! <dir>/<admin node>/root.pem           (+ -key.pem) only where the agent acts as root
//! ```
//!
//! The top-level directory, with the CA key and the administrator's `root` certificate, is the
//! operator's: it never goes to a node. A node gets `root` only if it is an admin node (the
//! first master, which sets up the store's users; a master that joins a running cluster), so a
//! compromised worker cannot take over the store.
//!
//! Files that exist are kept, so running it again with more nodes adds only theirs; a
//! certificate left in a node that no longer needs it (`root`, a member's) is removed.
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::{
    Authority, CA_CERT, Issued, PkiError, Request, Result, Usage, create_private_dir, read_file,
    write_file,
};

/// A node's store member certificate for its client port.
pub const SERVER: &str = "server";
/// A node's store member certificate for its peer port (serves and dials).
pub const PEER: &str = "peer";
/// The store's administrator (etcd's `root` user).
pub const ROOT: &str = "root";
/// The overlay's store user: may write only under the network prefix.
pub const FLANNEL: &str = "flannel";
/// fleet's store user: may write only under fleet's prefix.
pub const FLEET: &str = "fleet";
/// Every client certificate a cluster gets, named (and CN'd) after its store user.
pub const CLIENTS: [&str; 3] = [ROOT, FLANNEL, FLEET];

/// The CA's common name in a cluster made by [`issue_cluster`].
const CA_NAME: &str = "shoal cluster CA";

/// A node of the cluster: its name and the address its store member serves on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    pub name: String,
    pub ip: IpAddr,
    /// Whether the node runs a store member (a master: gets server and peer certificates).
    pub member: bool,
    /// Whether the node's agent acts as the store's administrator (gets `root`).
    pub admin: bool,
}

/// The directory of `node`'s certificates below a cluster's PKI directory.
pub fn node_dir(dir: &Path, node: &str) -> PathBuf {
    dir.join(node)
}

/// Creates (or completes) a cluster's PKI in `dir` (see the module docs for the layout).
pub fn issue_cluster(dir: &Path, nodes: &[ClusterNode]) -> Result<()> {
    let ca = Authority::read_or_create(dir, CA_NAME)?;
    let clients = CLIENTS
        .iter()
        .map(|user| {
            Ok((
                *user,
                kept_or_issued(&ca, dir, user, Request::new(*user, Usage::Client))?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    for node in nodes {
        let own = node_dir(dir, &node.name);
        create_private_dir(&own)?;
        write_file(&own.join(CA_CERT), ca.certificate_pem().as_bytes(), 0o644)?;
        let hosts = [
            node.ip.to_string(),
            node.name.clone(),
            "127.0.0.1".to_string(),
            "localhost".to_string(),
        ];
        for (name, usage) in [(SERVER, Usage::Server), (PEER, Usage::Peer)] {
            if node.member {
                let request = Request::new(node.name.clone(), usage).hosts(hosts.clone());
                kept_or_issued(&ca, &own, name, request)?;
            } else {
                remove_certificate(&own, name)?;
            }
        }
        for (user, issued) in &clients {
            if *user != ROOT || node.admin {
                issued.write(&own, user)?;
            }
        }
        if !node.admin {
            remove_certificate(&own, ROOT)?;
        }
    }
    Ok(())
}

/// Removes `<dir>/<name>.pem` and its key, if they are there.
fn remove_certificate(dir: &Path, name: &str) -> Result<()> {
    remove_if_present(&dir.join(format!("{name}.pem")))?;
    remove_if_present(&dir.join(format!("{name}-key.pem")))
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(source) if source.kind() != std::io::ErrorKind::NotFound => Err(PkiError::Io {
            action: "removing",
            path: path.to_path_buf(),
            source,
        }),
        _ => Ok(()),
    }
}

/// `<dir>/<name>.pem` and its key as they are, or newly issued and written.
fn kept_or_issued(ca: &Authority, dir: &Path, name: &str, request: Request) -> Result<Issued> {
    let certificate = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}-key.pem"));
    if certificate.exists() && key.exists() {
        return Ok(Issued {
            certificate_pem: read_file(&certificate)?,
            key_pem: read_file(&key)?,
        });
    }
    let issued = ca.issue(&request)?;
    issued.write(dir, name)?;
    Ok(issued)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn a_cluster_gets_every_certificate_and_a_rerun_keeps_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = dir.path().join("pki");
        let node = |name: &str, ip: &str, admin: bool| ClusterNode {
            name: name.into(),
            ip: ip.parse().expect("IP"),
            member: true,
            admin,
        };
        issue_cluster(&pki, &[node("n1", "10.0.0.1", true)]).expect("issued");
        let server = std::fs::read_to_string(pki.join("n1/server.pem")).expect("server cert");
        issue_cluster(
            &pki,
            &[node("n1", "10.0.0.1", true), node("n2", "10.0.0.2", false)],
        )
        .expect("more");
        assert_eq!(
            std::fs::read_to_string(pki.join("n1/server.pem")).expect("kept"),
            server
        );
        for name in ["ca", "root", "flannel", "fleet"] {
            assert_eq!(mode(&pki.join(format!("{name}-key.pem"))), 0o600, "{name}");
        }
        for node in ["n1", "n2"] {
            let own = node_dir(&pki, node);
            assert_eq!(mode(&own), 0o700);
            assert!(!own.join("ca-key.pem").exists(), "the CA key stays out");
            for name in ["server", "peer", "flannel", "fleet"] {
                assert_eq!(mode(&own.join(format!("{name}-key.pem"))), 0o600);
                assert!(own.join(format!("{name}.pem")).exists());
            }
        }
        assert_eq!(mode(&pki.join("n1/root-key.pem")), 0o600, "the admin node");
        for file in ["root.pem", "root-key.pem"] {
            assert!(
                !pki.join("n2").join(file).exists(),
                "no admin on n2: {file}"
            );
        }
        let worker = ClusterNode {
            member: false,
            ..node("n1", "10.0.0.1", false)
        };
        issue_cluster(&pki, &[worker]).expect("demoted");
        for file in ["root-key.pem", "server-key.pem", "peer.pem", "peer-key.pem"] {
            assert!(!pki.join("n1").join(file).exists(), "a worker: no {file}");
        }
        assert!(pki.join("n1/fleet-key.pem").exists());
        assert_eq!(
            std::fs::read(pki.join("n2/flannel.pem")).expect("copy"),
            std::fs::read(pki.join("flannel.pem")).expect("original")
        );
    }
}
