//! `shoal run`: start a command in a new container network namespace on the overlay: a veth
//! pair from the node's workload bridge, an address from the node's subnet (see
//! [`shoal_flannel::ipam`]), the overlay MTU and a default route via the bridge. Prints the
//! address, runs the command, then releases everything and exits with the command's status.
use std::{
    fs::File,
    io::Write,
    net::Ipv4Addr,
    os::{
        fd::{AsRawFd, OwnedFd, RawFd},
        unix::process::{CommandExt, ExitStatusExt},
    },
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};
use clap::Args;
use ipnetwork::Ipv4Network;
use nix::sched::{CloneFlags, setns, unshare};

use shoal_netlink::{Netlink, OverlayRoute};

use shoal_flannel::{
    DEFAULT_BRIDGE,
    ipam::{DEFAULT_IPAM_DIR, Ipam},
    subnet_env::SubnetEnv,
};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Name of the container (and of its network namespace under /run/netns).
    #[arg(long)]
    pub name: Option<String>,
    /// The node's subnet file, written by `shoal flannel`.
    #[arg(
        long,
        env = "FLANNELD_SUBNET_FILE",
        default_value = "/run/flannel/subnet.env"
    )]
    pub subnet_file: PathBuf,
    /// The workload bridge to attach to.
    #[arg(long, env = "SHOAL_FLANNEL_BRIDGE", default_value = DEFAULT_BRIDGE)]
    pub bridge: String,
    /// Where address assignments are kept.
    #[arg(long, default_value = DEFAULT_IPAM_DIR)]
    pub ipam_dir: PathBuf,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

pub async fn run(args: RunArgs) -> Result<()> {
    let status = run_container(&args).await?;
    // Exit like the command did (after every resource above was released).
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    std::process::exit(code);
}

/// Runs the command in a fresh container namespace and returns its exit status.
pub async fn run_container(args: &RunArgs) -> Result<std::process::ExitStatus> {
    let env = SubnetEnv::read(&args.subnet_file)
        .context("reading the node's subnet (is `shoal flannel` running?)")?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("run{}", std::process::id()));
    let ipam = Ipam::new(&args.ipam_dir, env.subnet);
    let address = ipam.allocate(std::process::id(), &name)?;
    let netns = new_netns().context("creating the container's network namespace")?;
    let _named = args.name.as_deref().and_then(|name| {
        NamedNetns::mount(name, &netns)
            .map_err(|err| tracing::warn!("naming the namespace {name}: {err:#}"))
            .ok()
    });
    let netlink = Netlink::open()?;
    let host_side = attach(&netlink, &env, &args.bridge, &netns, address.ip).await?;
    let result = spawn_and_wait(&args.command, &netns, address.ip, &name);
    if let Err(err) = netlink.delete_link(host_side).await {
        tracing::debug!(
            "removing the container's veth: {:#}",
            anyhow::Error::from(err)
        );
    }
    address.release();
    result
}

/// Creates the veth pair, plugs one end into the bridge and configures the other inside the
/// container. Returns the host side's link index.
async fn attach(
    netlink: &Netlink,
    env: &SubnetEnv,
    bridge: &str,
    netns: &OwnedFd,
    ip: Ipv4Addr,
) -> Result<u32> {
    let bridge = netlink
        .ensure_bridge(bridge, env.gateway(), env.mtu)
        .await
        .with_context(|| format!("setting up workload bridge {bridge}"))?;
    let tag = format!("{:08x}", rand::random::<u32>());
    let (host, peer) = netlink
        .create_veth(&format!("veth{tag}"), &format!("ct{tag}"), env.mtu)
        .await?;
    netlink.set_controller(host.index, bridge.index).await?;
    netlink.set_up(host.index).await?;
    netlink.move_to_netns(peer.index, netns.as_raw_fd()).await?;
    let address = Ipv4Network::new(ip, env.subnet.prefix())?;
    let gateway = env.gateway().ip();
    let peer_name = peer.name.clone();
    let fd = netns.try_clone()?;
    let mtu = env.mtu;
    std::thread::spawn(move || configure_inside(fd, &peer_name, address, gateway, mtu))
        .join()
        .map_err(|_| anyhow::anyhow!("configuring the container panicked"))??;
    Ok(host.index)
}

/// Runs in its own thread, moved into the container namespace.
fn configure_inside(
    netns: OwnedFd,
    peer: &str,
    address: Ipv4Network,
    gateway: Ipv4Addr,
    mtu: u32,
) -> Result<()> {
    setns(&netns, CloneFlags::CLONE_NEWNET).context("entering the container namespace")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let netlink = Netlink::open()?;
        if let Some(lo) = netlink.link_by_name("lo").await? {
            netlink.set_up(lo.index).await?;
        }
        let link = netlink
            .link_by_name(peer)
            .await?
            .with_context(|| format!("{peer} did not arrive in the container"))?;
        netlink.rename(link.index, "eth0").await?;
        netlink.set_mtu(link.index, mtu).await?;
        netlink.ensure_address(link.index, address).await?;
        netlink.set_up(link.index).await?;
        let default = OverlayRoute {
            destination: Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0)?,
            gateway,
            device: None,
        };
        netlink.replace_route(&default).await?;
        Ok(())
    })
}

/// Prints the address, runs the command inside the namespace, forwards SIGINT/SIGTERM to it and
/// waits for it.
fn spawn_and_wait(
    command: &[String],
    netns: &OwnedFd,
    ip: Ipv4Addr,
    name: &str,
) -> Result<std::process::ExitStatus> {
    let (program, rest) = command.split_first().context("no command given")?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{ip}")?;
    stdout.flush()?;
    let fd: RawFd = netns.as_raw_fd();
    let mut cmd = Command::new(program);
    cmd.args(rest)
        .env("SHOAL_IP", ip.to_string())
        .env("SHOAL_NAME", name);
    // SAFETY: only setns(2), which is async-signal-safe, runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().with_context(|| format!("starting {program}"))?;
    let pid = child.id();
    let forwarder = tokio::spawn(forward_signals(pid));
    let status = child
        .wait()
        .with_context(|| format!("waiting for {program}"))?;
    forwarder.abort();
    Ok(status)
}

async fn forward_signals(pid: u32) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    loop {
        let signal = tokio::select! {
            _ = int.recv() => libc::SIGINT,
            _ = term.recv() => libc::SIGTERM,
        };
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid as i32, signal) };
    }
}

/// A new network namespace, held by a descriptor (it lives as long as the descriptor or a
/// process inside it).
fn new_netns() -> Result<OwnedFd> {
    std::thread::spawn(|| -> Result<OwnedFd> {
        unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
        let file = File::open("/proc/thread-self/ns/net").context("opening the new namespace")?;
        Ok(OwnedFd::from(file))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("creating the namespace panicked"))?
}

/// `/run/netns/<name>` bound to the container's namespace, so `ip netns exec <name>` works while
/// the container runs; unmounted on drop.
struct NamedNetns {
    path: PathBuf,
}

impl NamedNetns {
    fn mount(name: &str, netns: &OwnedFd) -> Result<Self> {
        let dir = Path::new("/run/netns");
        std::fs::create_dir_all(dir)?;
        let path = dir.join(name);
        File::options()
            .create_new(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("{} already exists", path.display()))?;
        let source = format!("/proc/self/fd/{}", netns.as_raw_fd());
        let mounted = nix::mount::mount(
            Some(source.as_str()),
            &path,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        );
        if let Err(err) = mounted {
            let _ = std::fs::remove_file(&path);
            return Err(err).context("bind-mounting the namespace");
        }
        Ok(Self { path })
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&self.path);
    }
}
