//! `shoal install` / `shoal uninstall`: put shoal in place as a systemd service, and take it
//! away again. With `--root DIR` the files go below DIR and systemd is left alone (for images
//! and packaging); otherwise the service is enabled and started through `systemctl`.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::agent::config::AgentConfig;

const BINARY: &str = "usr/local/bin/shoal";
const FLEETCTL_LINK: &str = "usr/local/bin/fleetctl";
const FLEETD_LINK: &str = "usr/local/bin/fleetd";
/// flannel's CNI plugin in the standard CNI bin dir (shoal answers as `flannel`).
const CNI_LINK: &str = "opt/cni/bin/flannel";
const UNIT: &str = "etc/systemd/system/shoal.service";
const DOCKER_DROP_IN: &str = "etc/systemd/system/docker.service.d/40-flannel.conf";
const CONFIG: &str = "etc/shoal/agent.yaml";
/// Where `--pki` puts a node's certificates (what an agent's `pki: /etc/shoal/pki` reads).
const PKI: &str = "etc/shoal/pki";
const SERVICE: &str = "shoal.service";
const DOCKER_SERVICE: &str = "docker.service";

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// The agent's config file to install (validated first); without it an existing
    /// /etc/shoal/agent.yaml is kept, and one is required if there is none.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A node's certificate directory (`shoal pki cluster`'s `DIR/NODE`), installed as
    /// /etc/shoal/pki: keys owner-only.
    #[arg(long)]
    pub pki: Option<PathBuf>,
    /// Install below this directory instead of `/`, without touching systemd.
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
}

#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// Uninstall from below this directory instead of `/`, without touching systemd.
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
}

/// The systemd unit that runs the agent.
pub fn unit_file() -> String {
    format!(
        "[Unit]\n\
         Description=shoal node agent: store, overlay network and fleet\n\
         Documentation=https://example.invalid/shoal\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         \n\
         [Service]\n\
         Type=simple\n\
         ExecStart=/{BINARY} agent --config /{CONFIG}\n\
         Restart=always\n\
         RestartSec=2\n\
         # Stopping the agent leaves the overlay (pinned eBPF state) working for containers.\n\
         KillMode=process\n\
         TimeoutStopSec=20\n\
         LimitNOFILE=1048576\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

/// The `docker.service` drop-in that puts Docker's bridge on this node's overlay subnet, as
/// CoreOS's flannel drop-in did: dockerd starts after shoal with the options flannel derives
/// from subnet.env (`shoal mk-docker-opts`, waiting for the lease if need be).
pub fn docker_drop_in() -> String {
    format!(
        "# Installed by shoal: Docker on the overlay (bridge address, MTU, masquerade from\n\
         # /run/flannel/subnet.env). Docker's own options belong in /etc/docker/daemon.json.\n\
         [Unit]\n\
         Requires={SERVICE}\n\
         After={SERVICE}\n\
         \n\
         [Service]\n\
         EnvironmentFile=-{docker_env}\n\
         ExecStartPre=/{BINARY} mk-docker-opts --wait 60 --fixed-cidr\n\
         ExecStart=\n\
         ExecStart=/usr/sbin/dockerd -H fd:// $DOCKER_OPTS\n",
        docker_env = shoal_flannel::docker_opts::DEFAULT_PATH,
    )
}

pub async fn install(args: InstallArgs) -> Result<()> {
    let root = &args.root;
    let config_target = root.join(CONFIG);
    match &args.config {
        Some(source) => {
            AgentConfig::load(source)?;
            // Owner-only: it may hold the store password.
            place(
                root,
                CONFIG,
                &std::fs::read(source).with_context(|| format!("reading {}", source.display()))?,
                0o600,
            )?;
        }
        None if config_target.exists() => {
            AgentConfig::load(&config_target)?;
        }
        None => bail!(
            "no {} yet: give one with --config FILE",
            config_target.display()
        ),
    }
    let me = std::env::current_exe().context("finding this binary")?;
    let binary = std::fs::read(&me).with_context(|| format!("reading {}", me.display()))?;
    place(root, BINARY, &binary, 0o755)?;
    if let Some(pki) = &args.pki {
        install_pki(root, pki)?;
    }
    for link in [FLEETCTL_LINK, FLEETD_LINK] {
        link_to_shoal(root, link, Path::new("shoal"))?;
    }
    link_to_shoal(root, CNI_LINK, &Path::new("/").join(BINARY))?;
    place(root, UNIT, unit_file().as_bytes(), 0o644)?;
    place(root, DOCKER_DROP_IN, docker_drop_in().as_bytes(), 0o644)?;
    println!(
        "installed /{BINARY}, /{FLEETCTL_LINK}, /{FLEETD_LINK}, /{CNI_LINK}, /{UNIT}, \
         /{DOCKER_DROP_IN}, /{CONFIG}{} below {}",
        if args.pki.is_some() {
            format!(", /{PKI}")
        } else {
            String::new()
        },
        root.display()
    );
    if is_host_root(root) {
        systemctl(&["daemon-reload"])?;
        systemctl(&["enable", "--now", SERVICE])?;
        println!("enabled and started {SERVICE}");
        restart_running_docker()?;
    }
    Ok(())
}

/// A Docker already running (or still starting, as at boot) was started without the
/// drop-in: it restarts on it, so its bridge moves onto the node's lease (`try-restart` leaves a
/// stopped Docker alone). `--no-block`: the drop-in's `mk-docker-opts --wait` waits for the
/// agent's first lease.
fn restart_running_docker() -> Result<()> {
    let load_state = Command::new("systemctl")
        .args(["show", "-p", "LoadState", "--value", DOCKER_SERVICE])
        .output()
        .context("running systemctl show")?;
    if String::from_utf8_lossy(&load_state.stdout).trim() != "loaded" {
        return Ok(());
    }
    systemctl(&["try-restart", "--no-block", DOCKER_SERVICE])?;
    println!("restarting {DOCKER_SERVICE} on the drop-in if it runs");
    Ok(())
}

pub async fn uninstall(args: UninstallArgs) -> Result<()> {
    let root = &args.root;
    if is_host_root(root) && root.join(UNIT).exists() {
        systemctl(&["disable", "--now", SERVICE])?;
    }
    for path in [
        UNIT,
        DOCKER_DROP_IN,
        FLEETCTL_LINK,
        FLEETD_LINK,
        CNI_LINK,
        BINARY,
        CONFIG,
    ] {
        let target = root.join(path);
        match std::fs::remove_file(&target) {
            Ok(()) => println!("removed {}", target.display()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err).with_context(|| format!("removing {}", target.display())),
        }
    }
    if is_host_root(root) {
        systemctl(&["daemon-reload"])?;
    }
    let pki = root.join(PKI);
    if pki.exists() {
        std::fs::remove_dir_all(&pki).with_context(|| format!("removing {}", pki.display()))?;
        println!("removed {}", pki.display());
    }
    println!("kept the data directory (/var/lib/shoal); remove it to forget this node's state");
    Ok(())
}

/// Makes `root/relative` a symlink to `target` (replacing what was there): shoal answers as
/// the program the link is named after.
fn link_to_shoal(root: &Path, relative: &str, target: &Path) -> Result<()> {
    let link = root.join(relative);
    if let Some(dir) = link.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(target, &link).with_context(|| format!("linking {}", link.display()))
}

fn is_host_root(root: &Path) -> bool {
    root == Path::new("/")
}

/// Writes `contents` to `root/relative` with `mode` from the start, atomically (temp file +
/// rename).
fn place(root: &Path, relative: &str, contents: &[u8], mode: u32) -> Result<()> {
    let target = root.join(relative);
    let dir = target.parent().context("installed paths have a parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let temp = target.with_extension("shoal-new");
    shoal_pki::write_file(&temp, contents, mode)?;
    std::fs::rename(&temp, &target).with_context(|| format!("moving into {}", target.display()))
}

/// Copies the `.pem` files of a node's certificate directory to `root/etc/shoal/pki` (0700),
/// keys 0600, and removes the ones the directory no longer has (a `root` certificate of a
/// node that is no longer the first master does not linger).
fn install_pki(root: &Path, source: &Path) -> Result<()> {
    let installed = root.join(PKI);
    shoal_pki::create_private_dir(&installed)?;
    let wanted = pem_files(source)?;
    for path in pem_files(&installed)? {
        if !wanted
            .iter()
            .any(|kept| kept.file_name() == path.file_name())
        {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    for path in wanted {
        let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
            continue;
        };
        let mode = if name.ends_with("-key.pem") {
            0o600
        } else {
            0o644
        };
        let contents =
            std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        place(root, &format!("{PKI}/{name}"), &contents, mode)?;
    }
    Ok(())
}

/// The `.pem` files in `dir`.
fn pem_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        if path.extension().is_some_and(|ext| ext == "pem") {
            files.push(path);
        }
    }
    Ok(files)
}

fn systemctl(args: &[&str]) -> Result<()> {
    if !Path::new("/run/systemd/system").exists() {
        bail!(
            "systemd is not running on this host: the files are in place, but `systemctl {}` cannot run",
            args.join(" ")
        );
    }
    let status = Command::new("systemctl")
        .args(args)
        .status()
        .context("running systemctl")?;
    anyhow::ensure!(
        status.success(),
        "systemctl {} failed: {status}",
        args.join(" ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn install_then_uninstall_below_a_root() {
        let root = tempfile::tempdir().expect("tempdir");
        let config = root.path().join("node.yaml");
        std::fs::write(&config, "name: node1\n").expect("write config");
        let pki = root.path().join("made-by-shoal-pki");
        let node1 = |admin| shoal_pki::ClusterNode {
            name: "node1".into(),
            ip: "10.0.0.1".parse().expect("IP"),
            member: true,
            admin,
        };
        let installed = |admin| {
            shoal_pki::issue_cluster(&pki, &[node1(admin)]).expect("certificates");
            install(InstallArgs {
                config: Some(config.clone()),
                pki: Some(shoal_pki::node_dir(&pki, "node1")),
                root: root.path().to_path_buf(),
            })
        };
        installed(true).await.expect("install");
        let root_key = root.path().join("etc/shoal/pki/root-key.pem");
        assert!(root_key.exists(), "the first master's root");
        installed(false).await.expect("install again");
        assert!(!root_key.exists(), "no root left once the node is no admin");
        for path in [BINARY, UNIT, CONFIG] {
            assert!(root.path().join(path).is_file(), "{path} installed");
        }
        let mode = |path: &str| {
            use std::os::unix::fs::PermissionsExt;
            let metadata = std::fs::metadata(root.path().join(path)).expect(path);
            metadata.permissions().mode() & 0o777
        };
        assert_eq!(mode(CONFIG), 0o600);
        assert_eq!(mode(BINARY), 0o755);
        assert_eq!(mode(PKI), 0o700);
        assert_eq!(mode("etc/shoal/pki/server-key.pem"), 0o600);
        assert_eq!(mode("etc/shoal/pki/flannel-key.pem"), 0o600);
        assert_eq!(mode("etc/shoal/pki/ca.pem"), 0o644);
        let unit = std::fs::read_to_string(root.path().join(UNIT)).expect("unit");
        assert!(
            unit.contains("ExecStart=/usr/local/bin/shoal agent --config /etc/shoal/agent.yaml")
        );
        for link in [FLEETCTL_LINK, FLEETD_LINK] {
            let target = std::fs::read_link(root.path().join(link)).expect("symlink");
            assert_eq!(target, Path::new("shoal"));
        }
        let cni = std::fs::read_link(root.path().join(CNI_LINK)).expect("CNI symlink");
        assert_eq!(cni, Path::new("/usr/local/bin/shoal"));
        let drop_in = std::fs::read_to_string(root.path().join(DOCKER_DROP_IN)).expect("drop-in");
        for line in [
            "Requires=shoal.service",
            "After=shoal.service",
            "EnvironmentFile=-/run/flannel/docker",
            "ExecStartPre=/usr/local/bin/shoal mk-docker-opts --wait 60 --fixed-cidr",
            "ExecStart=\n",
            "ExecStart=/usr/sbin/dockerd -H fd:// $DOCKER_OPTS",
        ] {
            assert!(drop_in.contains(line), "{line} in {drop_in}");
        }

        uninstall(UninstallArgs {
            root: root.path().to_path_buf(),
        })
        .await
        .expect("uninstall");
        for path in [
            BINARY,
            UNIT,
            CONFIG,
            FLEETCTL_LINK,
            FLEETD_LINK,
            DOCKER_DROP_IN,
            PKI,
        ] {
            assert!(!root.path().join(path).exists(), "{path} removed");
        }
    }

    #[tokio::test]
    async fn an_invalid_config_installs_nothing() {
        let root = tempfile::tempdir().expect("tempdir");
        let config = root.path().join("node.yaml");
        std::fs::write(&config, "name: node1\nrole: boss\n").expect("write config");
        let err = install(InstallArgs {
            config: Some(config),
            pki: None,
            root: root.path().to_path_buf(),
        })
        .await
        .expect_err("invalid config");
        assert!(format!("{err:#}").contains("role"), "{err:#}");
        assert!(!root.path().join(BINARY).exists());
        assert!(!root.path().join(UNIT).exists());
    }
}
