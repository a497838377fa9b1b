//! A store cluster for tests and benchmarks: N members of etcd 3.4 or shoal kv (both speak the
//! etcd v3 API and take etcd's flags) as child processes, on free loopback ports or inside a
//! namespace, each with a data dir and a log file in one temp dir.
//!
//! `start` returns once every member answers `etcdctl endpoint health` (a linearizable read, so
//! a leader is elected). A member that fails, a start that times out, and a test that panics
//! while the cluster lives print every member's log. Members are killed (SIGKILL) on drop.
//!
//! With [`StoreClusterBuilder::tls`] every member serves clients and peers over TLS with etcd's
//! flags (`--cert-file`, `--client-cert-auth`, `--peer-cert-file`, ...), from certificates
//! `shoal-pki` issues into the cluster's temp dir ([`ClusterTls`]), and the cluster's etcdctl
//! presents a `root` client certificate.
//!
//! With [`StoreClusterBuilder::isolated`] every member runs in a network namespace of its own
//! ([`crate::isolation`]), reached from the host on an address of a test-only range, so faults
//! can cut the network between members ([`crate::nemesis`]). With
//! [`StoreClusterBuilder::failpoints`] shoal kv members are the failpoints build and serve their
//! failpoint control API ([`MemberSpec::failpoints_addr`]).
//!
//! Binaries: etcd is Debian's `/usr/bin/etcd` (`cargo xtask setup` installs it); shoal kv is the
//! workspace's `shoal-kv`, found by [`crate::binaries::shoal_kv`], unless the builder is given
//! another program (e.g. `shoal` with `kv`).
use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shoal_pki::{Authority, Files, Request, Usage};

use crate::isolation::Isolation;
use crate::process::Process;
use crate::{Namespace, Result, binaries, command, ports};

pub const ETCD: &str = "/usr/bin/etcd";
pub const ETCDCTL: &str = "/usr/bin/etcdctl";

/// How long a cluster (or a restarted member) has to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Starts on other ports after a member found its port taken, at most this many times.
const START_ATTEMPTS: usize = 3;
const MEMBER_NAMES: [&str; 5] = ["alpha", "bravo", "charlie", "delta", "echo"];
/// Where a failpoints build of shoal kv serves its failpoint control API.
pub const FAILPOINTS_ADDR_ENV: &str = "SHOAL_KV_FAILPOINTS_ADDR";
/// The failpoint control port of a member in a namespace of its own.
const FAILPOINTS_PORT: u16 = 2381;

/// Which store: both take etcd's flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// Debian's etcd 3.4.
    Etcd,
    /// `shoal kv`, shoal's own store.
    ShoalKv,
}

impl StoreKind {
    /// The name reports use.
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Etcd => "etcd 3.4",
            StoreKind::ShoalKv => "shoal kv",
        }
    }

    /// The program (and its leading arguments) that runs a member.
    fn program(self) -> (PathBuf, Vec<OsString>) {
        match self {
            StoreKind::Etcd => (PathBuf::from(ETCD), Vec::new()),
            StoreKind::ShoalKv => (binaries::shoal_kv(), Vec::new()),
        }
    }
}

/// One member's settings, kept so it can be restarted the same way.
#[derive(Debug, Clone)]
pub struct MemberSpec {
    pub name: String,
    /// Where clients reach it (loopback, or the namespace's address).
    pub client_ip: Ipv4Addr,
    pub client_port: u16,
    /// Where peers reach it: loopback when all members share the host's or one namespace's
    /// network, the member's own address when each has a namespace.
    pub peer_ip: Ipv4Addr,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    /// Whether its URLs are `https://` (a [`StoreClusterBuilder::tls`] cluster).
    pub tls: bool,
    /// The namespace it runs in, if not the host's.
    pub netns: Option<String>,
    /// The port of its failpoint control API (on `client_ip`), in a
    /// [`StoreClusterBuilder::failpoints`] cluster.
    pub failpoints_port: Option<u16>,
}

impl MemberSpec {
    fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }
    pub fn client_url(&self) -> String {
        format!(
            "{}://{}:{}",
            self.scheme(),
            self.client_ip,
            self.client_port
        )
    }
    pub fn peer_url(&self) -> String {
        format!("{}://{}:{}", self.scheme(), self.peer_ip, self.peer_port)
    }
    /// `ip:port`, as etcd-client takes it.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.client_ip, self.client_port)
    }

    /// `ip:port` of its failpoint control API (`SHOAL_KV_FAILPOINTS_ADDR`), if it serves one.
    pub fn failpoints_addr(&self) -> Option<String> {
        self.failpoints_port
            .map(|port| format!("{}:{port}", self.client_ip))
    }
}

/// How to start a [`StoreCluster`]; [`StoreCluster::start`] takes the defaults.
#[derive(Debug)]
pub struct StoreClusterBuilder {
    kind: StoreKind,
    size: usize,
    args: Vec<OsString>,
    program: Option<(PathBuf, Vec<OsString>)>,
    namespace: Option<(String, Ipv4Addr)>,
    client_port: Option<u16>,
    tls: bool,
    restore_from: Option<PathBuf>,
    user: Option<String>,
    isolated: bool,
    failpoints: bool,
}

impl StoreClusterBuilder {
    /// Each member in a network namespace of its own, on a bridge the host reaches (see
    /// [`crate::isolation`]): peers talk over that bridge, so the network between members can be
    /// cut ([`crate::nemesis`]); clients still reach every member from the host.
    pub fn isolated(mut self) -> Self {
        assert!(
            self.namespace.is_none(),
            "a cluster runs in one namespace or isolated"
        );
        self.isolated = true;
        self
    }

    /// shoal kv built with its `failpoints` feature ([`binaries::shoal_kv_failpoints`]), each
    /// member serving its failpoint control API on a port of its client address
    /// ([`MemberSpec::failpoints_addr`]).
    pub fn failpoints(mut self) -> Self {
        assert_eq!(
            self.kind,
            StoreKind::ShoalKv,
            "failpoints are shoal kv's (Debian's etcd has none compiled in)"
        );
        self.failpoints = true;
        self.program = Some((binaries::shoal_kv_failpoints(), Vec::new()));
        self
    }

    /// TLS on every port, with client certificates required on both (`--client-cert-auth`,
    /// `--peer-client-cert-auth`): see [`ClusterTls`].
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Serves clients of the (single) member on `port`, e.g. one a test already handed out.
    pub fn client_port(mut self, port: u16) -> Self {
        assert_eq!(self.size, 1, "a fixed client port is for a single member");
        self.client_port = Some(port);
        self
    }

    /// Flags passed to every member after the standard ones (e.g. `--heartbeat-interval 50`).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Runs `program leading_args...` for each member instead of the kind's default binary.
    pub fn program<I, S>(mut self, program: impl Into<PathBuf>, leading_args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let leading = leading_args.into_iter().map(Into::into).collect();
        self.program = Some((program.into(), leading));
        self
    }

    /// Starts a new cluster from a snapshot file: each member's data dir is restored from it
    /// first (`etcdctl snapshot restore`, or `shoal-kv snapshot restore`), with etcdutl's flags.
    pub fn restore_from(mut self, snapshot: impl Into<PathBuf>) -> Self {
        self.restore_from = Some(snapshot.into());
        self
    }

    /// The cluster's etcdctl (its readiness checks too) authenticates as `user:password`, for
    /// a cluster with auth enabled from the start (e.g. restored from such a snapshot).
    pub fn user(mut self, user_password: &str) -> Self {
        self.user = Some(user_password.to_string());
        self
    }

    /// Runs the members inside `ns`, serving clients on `ip` from port 2379 up.
    pub fn in_namespace(mut self, ns: &Namespace, ip: Ipv4Addr) -> Self {
        assert!(
            !self.isolated,
            "a cluster runs in one namespace or isolated"
        );
        self.namespace = Some((ns.name().to_string(), ip));
        self
    }

    /// Starts the members and waits until every one answers; panics with their logs if not.
    pub fn start(self) -> StoreCluster {
        let (program, leading_args) = match self.program {
            Some(program) => program,
            None => self.kind.program(),
        };
        let dir = tempfile::tempdir().expect("a temp dir for the store");
        let isolation = self.isolated.then(|| {
            // One namespace more than members: a member added later joins in it.
            Isolation::create(self.size + 1)
                .unwrap_or_else(|err| panic!("member namespaces: {err}"))
        });
        let client_ips: Vec<Ipv4Addr> = match &isolation {
            Some(isolation) => isolation.member_ips(),
            None => self.namespace.iter().map(|(_, ip)| *ip).collect(),
        };
        let tls = self.tls.then(|| {
            let names = &MEMBER_NAMES[..self.size];
            ClusterTls::create_for(&dir.path().join("pki"), names, &client_ips)
        });
        let mut cluster = StoreCluster {
            kind: self.kind,
            tls,
            specs: Vec::new(),
            members: Vec::new(),
            dir,
            state: "new",
            program,
            leading_args,
            args: self.args,
            namespace: self.namespace,
            client_port: self.client_port,
            user: self.user,
            paused: Vec::new(),
            isolation,
            failpoints: self.failpoints,
        };
        for attempt in 1..=START_ATTEMPTS {
            cluster.specs = cluster.member_specs(self.size, attempt);
            cluster.members = (0..self.size).map(|_| None).collect();
            cluster.paused = vec![false; self.size];
            if let Some(snapshot) = &self.restore_from {
                cluster.restore_from(snapshot);
            }
            for i in 0..self.size {
                cluster.spawn(i);
            }
            match cluster.wait_started() {
                Ok(()) => return cluster,
                Err(PortTaken { log }) => {
                    eprintln!("attempt {attempt}: a port was taken, starting again\n{log}")
                }
            }
        }
        panic!("a store member found its port taken in {START_ATTEMPTS} attempts");
    }
}

/// A member exited because its port was taken: the cluster starts again on other ports.
struct PortTaken {
    /// The member's log, which says so.
    log: String,
}

/// A TLS cluster's certificates, in `<cluster dir>/pki` (shoal-pki's layout): the CA, each
/// member's server (`<name>-server`) and peer (`<name>-peer`) certificates, and a `root` client
/// certificate etcdctl presents.
pub struct ClusterTls {
    authority: Authority,
    pub dir: PathBuf,
    /// The CA certificate every member and client trusts.
    pub ca: PathBuf,
    /// The `root` client certificate and key.
    pub root: Files,
    /// What member certificates are valid for.
    hosts: Vec<String>,
}

impl ClusterTls {
    /// A new CA in `dir` with the `root` client certificate and `members`' certificates, valid
    /// for 127.0.0.1, localhost and `client_ip` (for stores run outside the harness, e.g. the
    /// benchmarks' in-process members).
    pub fn create(dir: &Path, members: &[&str], client_ip: Option<Ipv4Addr>) -> Self {
        let client_ips: Vec<Ipv4Addr> = client_ip.into_iter().collect();
        Self::create_for(dir, members, &client_ips)
    }

    /// The same, valid for every address of `client_ips` too (members in namespaces).
    pub fn create_for(dir: &Path, members: &[&str], client_ips: &[Ipv4Addr]) -> Self {
        let authority = Authority::create("shoal test CA").expect("a CA");
        let ca = authority.write(dir).expect("writing the CA").certificate;
        let mut hosts = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        hosts.extend(client_ips.iter().map(Ipv4Addr::to_string));
        let tls = ClusterTls {
            root: issue(&authority, dir, "root", Usage::Client, &[]),
            authority,
            dir: dir.to_path_buf(),
            ca,
            hosts,
        };
        for name in members {
            tls.member(name);
        }
        tls
    }

    /// Issues member `name`'s server (`<name>-server`) and peer (`<name>-peer`) certificates
    /// and returns the etcd flags it runs with (e.g. for a member joining with `member add`).
    pub fn member(&self, name: &str) -> Vec<OsString> {
        self.issue(&format!("{name}-server"), Usage::Server, &self.hosts);
        self.issue(&format!("{name}-peer"), Usage::Peer, &self.hosts);
        self.member_args(name)
    }

    /// Issues `<dir>/<cn>.pem` and `<dir>/<cn>-key.pem`, a client certificate for `cn`
    /// (etcd's user with `--client-cert-auth`).
    pub fn client(&self, cn: &str) -> Files {
        self.issue(cn, Usage::Client, &[])
    }

    /// Issues a certificate named `name` (also its file name) for `hosts`.
    pub fn issue(&self, name: &str, usage: Usage, hosts: &[String]) -> Files {
        issue(&self.authority, &self.dir, name, usage, hosts)
    }

    /// The etcd flags a member runs with.
    fn member_args(&self, name: &str) -> Vec<OsString> {
        let file = |suffix: &str| self.dir.join(format!("{name}-{suffix}")).into_os_string();
        vec![
            "--cert-file".into(),
            file("server.pem"),
            "--key-file".into(),
            file("server-key.pem"),
            "--trusted-ca-file".into(),
            self.ca.clone().into_os_string(),
            "--client-cert-auth".into(),
            "--peer-cert-file".into(),
            file("peer.pem"),
            "--peer-key-file".into(),
            file("peer-key.pem"),
            "--peer-trusted-ca-file".into(),
            self.ca.clone().into_os_string(),
            "--peer-client-cert-auth".into(),
        ]
    }

    /// etcdctl's `--cacert/--cert/--key` with the root client certificate.
    pub fn etcdctl_args(&self) -> Vec<String> {
        let path = |p: &Path| p.display().to_string();
        vec![
            "--cacert".to_string(),
            path(&self.ca),
            "--cert".to_string(),
            path(&self.root.certificate),
            "--key".to_string(),
            path(&self.root.key),
        ]
    }
}

fn issue(authority: &Authority, dir: &Path, name: &str, usage: Usage, hosts: &[String]) -> Files {
    authority
        .issue(&Request::new(name, usage).hosts(hosts.iter().cloned()))
        .expect("issuing a certificate")
        .write(dir, name)
        .expect("writing a certificate")
}

/// N members of one store kind, killed when dropped.
pub struct StoreCluster {
    kind: StoreKind,
    tls: Option<ClusterTls>,
    /// Every member's settings, by index.
    pub specs: Vec<MemberSpec>,
    members: Vec<Option<Process>>,
    dir: tempfile::TempDir,
    /// `--initial-cluster-state` of members spawned from now on (`existing` to rejoin).
    pub state: &'static str,
    program: PathBuf,
    leading_args: Vec<OsString>,
    args: Vec<OsString>,
    namespace: Option<(String, Ipv4Addr)>,
    client_port: Option<u16>,
    /// `user:password` every etcdctl call authenticates as.
    user: Option<String>,
    /// Which members are stopped with SIGSTOP ([`StoreCluster::pause`]).
    paused: Vec<bool>,
    /// The members' own namespaces, in an [`StoreClusterBuilder::isolated`] cluster. Dropped
    /// after the members (fields drop in order, and `Drop` kills the members first).
    isolation: Option<Isolation>,
    /// Whether members serve their failpoint control API.
    failpoints: bool,
}

impl StoreCluster {
    /// `size` members on free loopback ports, ready.
    pub fn start(kind: StoreKind, size: usize) -> Self {
        Self::builder(kind, size).start()
    }

    /// One member inside `ns`, serving clients on `ip:2379`, ready.
    pub fn in_namespace(kind: StoreKind, ns: &Namespace, ip: Ipv4Addr) -> Self {
        Self::builder(kind, 1).in_namespace(ns, ip).start()
    }

    pub fn builder(kind: StoreKind, size: usize) -> StoreClusterBuilder {
        assert!(
            (1..=MEMBER_NAMES.len()).contains(&size),
            "a store cluster has 1 to {} members",
            MEMBER_NAMES.len()
        );
        StoreClusterBuilder {
            kind,
            size,
            args: Vec::new(),
            program: None,
            namespace: None,
            client_port: None,
            tls: false,
            restore_from: None,
            user: None,
            isolated: false,
            failpoints: false,
        }
    }

    /// The members' own namespaces, in an [`StoreClusterBuilder::isolated`] cluster.
    pub fn isolation(&self) -> Option<&Isolation> {
        self.isolation.as_ref()
    }

    /// Whether members serve their failpoint control API ([`StoreClusterBuilder::failpoints`]).
    pub fn has_failpoints(&self) -> bool {
        self.failpoints
    }

    /// The program members run and its leading arguments.
    pub fn program(&self) -> (&Path, &[OsString]) {
        (&self.program, &self.leading_args)
    }

    /// The flags every member gets after the standard ones ([`StoreClusterBuilder::args`]).
    pub fn extra_args(&self) -> &[OsString] {
        &self.args
    }

    /// The certificates of a [`StoreClusterBuilder::tls`] cluster.
    pub fn tls(&self) -> Option<&ClusterTls> {
        self.tls.as_ref()
    }

    /// etcdctl's TLS flags for this cluster (none without TLS).
    pub fn etcdctl_tls_args(&self) -> Vec<String> {
        self.tls
            .as_ref()
            .map(ClusterTls::etcdctl_args)
            .unwrap_or_default()
    }

    pub fn kind(&self) -> StoreKind {
        self.kind
    }

    /// The temp dir holding the members' data dirs and logs (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every member's `ip:port` (`https://` ones are in [`StoreCluster::client_urls`]).
    pub fn endpoints(&self) -> Vec<String> {
        self.specs.iter().map(MemberSpec::endpoint).collect()
    }

    /// Member `i`'s `http(s)://ip:port`.
    pub fn client_url(&self, i: usize) -> String {
        self.specs[i].client_url()
    }

    /// Every member's `http(s)://ip:port`.
    pub fn client_urls(&self) -> Vec<String> {
        self.specs.iter().map(MemberSpec::client_url).collect()
    }

    /// The `ip:port` of the members that were not killed.
    pub fn live_endpoints(&self) -> Vec<String> {
        (0..self.specs.len())
            .filter(|&i| self.is_running(i))
            .map(|i| self.specs[i].endpoint())
            .collect()
    }

    /// Whether member `i` was started and not killed.
    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].is_some()
    }

    /// The process of member `i`, if running.
    pub fn process(&self, i: usize) -> Option<&Process> {
        self.members[i].as_ref()
    }

    /// The process of member `i`, if running, to ask whether it exited.
    pub fn process_mut(&mut self, i: usize) -> Option<&mut Process> {
        self.members[i].as_mut()
    }

    pub fn initial_cluster(&self) -> String {
        self.specs
            .iter()
            .map(|spec| format!("{}={}", spec.name, spec.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Restores every member's data dir from `snapshot` with the kind's restore command.
    fn restore_from(&self, snapshot: &Path) {
        for spec in &self.specs {
            let mut cmd = match self.kind {
                StoreKind::Etcd => {
                    let mut cmd = Command::new(ETCDCTL);
                    cmd.env("ETCDCTL_API", "3");
                    cmd
                }
                StoreKind::ShoalKv => {
                    let mut cmd = Command::new(&self.program);
                    cmd.args(&self.leading_args);
                    cmd
                }
            };
            cmd.args(["snapshot", "restore"])
                .arg(snapshot)
                .args(["--name", &spec.name])
                .arg("--data-dir")
                .arg(&spec.data_dir)
                .args(["--initial-cluster", &self.initial_cluster()])
                .args(["--initial-advertise-peer-urls", &spec.peer_url()])
                .stdin(Stdio::null());
            if let Err(e) = command::run(&mut cmd) {
                panic!("restoring {} from {}: {e:#}", spec.name, snapshot.display());
            }
        }
    }

    /// Starts member `i` (again) with its settings; does not wait for it.
    pub fn spawn(&mut self, i: usize) {
        let spec = self.specs[i].clone();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(&spec))
            .expect("a member's log file");
        let mut cmd = self.member_command(&spec, self.state, &self.initial_cluster());
        cmd.args(self.tls.iter().flat_map(|tls| tls.member_args(&spec.name)))
            .stdout(log.try_clone().expect("a member's log file"))
            .stderr(log);
        let name = format!("{} {}", self.kind.name(), spec.name);
        self.members[i] = Some(Process::spawn(&name, &mut cmd));
        self.paused[i] = false;
    }

    /// The command line member `spec` runs with, joining as `state` (`new` or `existing`) a
    /// cluster of `initial_cluster`.
    fn member_command(&self, spec: &MemberSpec, state: &str, initial_cluster: &str) -> Command {
        let mut cmd = match &spec.netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(&self.program);
                cmd
            }
            None => Command::new(&self.program),
        };
        if let Some(addr) = spec.failpoints_addr() {
            cmd.env(FAILPOINTS_ADDR_ENV, addr);
        }
        cmd.args(&self.leading_args)
            .arg("--name")
            .arg(&spec.name)
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .args(["--listen-client-urls", &spec.client_url()])
            .args(["--advertise-client-urls", &spec.client_url()])
            .args(["--listen-peer-urls", &spec.peer_url()])
            .args(["--initial-advertise-peer-urls", &spec.peer_url()])
            .args(["--initial-cluster", initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(&self.args)
            .env("SHOAL_LOG", "info,openraft=warn");
        cmd
    }

    /// Settings for a member beyond the cluster's specs, named `name` (e.g. one a membership
    /// change adds): in an isolated cluster the spare namespace, else free ports beside the
    /// others; a fresh data dir in the cluster's directory.
    pub fn extra_member_spec(&self, name: &str) -> Result<MemberSpec> {
        static EXTRA: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = EXTRA.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let data_dir = self.dir.path().join(format!("{name}-extra-{n}"));
        if let Some(isolation) = &self.isolation {
            let slot = self.specs.len();
            let mut spec = self.isolated_spec(isolation, slot, name, 0);
            spec.data_dir = data_dir;
            return Ok(spec);
        }
        let (client_ip, ports) = match &self.namespace {
            Some((_, ip)) => {
                let base = 2379 + 3 * self.specs.len() as u16;
                (*ip, vec![base, base + 1, base + 2])
            }
            None => (Ipv4Addr::LOCALHOST, ports::free_ports(3)),
        };
        Ok(MemberSpec {
            name: name.to_string(),
            client_ip,
            client_port: ports[0],
            peer_ip: Ipv4Addr::LOCALHOST,
            peer_port: ports[1],
            data_dir,
            tls: self.tls.is_some(),
            netns: self.namespace.as_ref().map(|(ns, _)| ns.clone()),
            failpoints_port: self.failpoints.then_some(ports[2]),
        })
    }

    /// Starts a member of `spec` (from [`StoreCluster::extra_member_spec`], announced with
    /// `member add`) joining this cluster (`--initial-cluster-state existing` with
    /// `initial_cluster`), with the cluster's program, flags and (for TLS) certificates of its
    /// own. Its log is `<name>.log` in the cluster's directory.
    pub fn spawn_extra(&self, spec: &MemberSpec, initial_cluster: &str) -> Process {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(spec))
            .expect("the extra member's log file");
        let mut cmd = self.member_command(spec, "existing", initial_cluster);
        cmd.args(self.tls.iter().flat_map(|tls| tls.member(&spec.name)))
            .stdout(log.try_clone().expect("the extra member's log file"))
            .stderr(log);
        Process::spawn(&spec.name, &mut cmd)
    }

    /// Whether the member of `spec` answers a linearizable read now.
    pub fn spec_ready(&self, spec: &MemberSpec) -> bool {
        let args = ["endpoint", "health", "--dial-timeout", "1s"];
        self.etcdctl(&spec.client_url(), &args).is_ok()
    }

    /// Member `i`'s view (etcd's endpoint status): its ID, the leader's, its log and revision.
    pub fn status(&self, i: usize) -> Result<MemberStatus> {
        let out = self.ctl_member(
            i,
            &["endpoint", "status", "-w", "json", "--dial-timeout", "1s"],
        )?;
        let parsed: Vec<EndpointStatusJson> = serde_json::from_str(&out)
            .map_err(|err| crate::Error::Fault(format!("endpoint status {out:?}: {err}")))?;
        let status = parsed.into_iter().next().ok_or_else(|| {
            crate::Error::Fault(format!("{} reported no status", self.specs[i].name))
        })?;
        Ok(MemberStatus {
            member_id: status.status.header.member_id,
            leader: status.status.leader,
            raft_term: status.status.raft_term,
            raft_index: status.status.raft_index,
            raft_applied_index: status.status.raft_applied_index,
            revision: status.status.header.revision,
        })
    }

    /// The member that leads: one that reports itself as leader and that a majority of the
    /// cluster's responsive members report as leader too. Waits up to 30 s for one.
    pub fn current_leader(&self) -> Result<usize> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(leader) = self.agreed_leader() {
                return Ok(leader);
            }
            if Instant::now() > deadline {
                return Err(crate::Error::Fault(format!(
                    "the {} cluster agreed on no leader within {READY_TIMEOUT:?}",
                    self.kind.name()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn agreed_leader(&self) -> Option<usize> {
        let statuses: Vec<(usize, MemberStatus)> = (0..self.specs.len())
            .filter(|&i| self.is_responsive(i))
            .filter_map(|i| self.status(i).ok().map(|status| (i, status)))
            .collect();
        let majority = self.specs.len() / 2 + 1;
        statuses.iter().find_map(|(i, status)| {
            let leads = status.leader == status.member_id && status.member_id != 0;
            let votes = statuses
                .iter()
                .filter(|(_, other)| other.leader == status.member_id)
                .count();
            (leads && votes >= majority).then_some(*i)
        })
    }

    /// The cluster's members as a responsive member lists them.
    pub fn member_list(&self) -> Result<Vec<ListedMember>> {
        let mut last = None;
        for i in (0..self.specs.len()).filter(|&i| self.is_responsive(i)) {
            match self.ctl_member(i, &["member", "list", "-w", "json"]) {
                Ok(out) => {
                    let parsed: MemberListJson = serde_json::from_str(&out).map_err(|err| {
                        crate::Error::Fault(format!("member list {out:?}: {err}"))
                    })?;
                    return Ok(parsed.members);
                }
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap_or_else(|| crate::Error::Fault("no responsive member".to_string())))
    }

    /// Starts shoal kv member `name`, already announced with `member add`, joining this
    /// cluster (`--initial-cluster-state existing` with `initial_cluster`) on `client_url` and
    /// `peer_url`, with certificates of its own when the cluster has TLS and the fast timings of
    /// test clusters. Its data dir and log (`<name>.log`) are in the cluster's directory.
    pub fn spawn_joiner(
        &self,
        name: &str,
        client_url: &str,
        peer_url: &str,
        initial_cluster: &str,
    ) -> Process {
        let log = std::fs::File::create(self.dir().join(format!("{name}.log")))
            .expect("the joiner's log file");
        Process::spawn(
            name,
            Command::new(binaries::shoal_kv())
                .args(["--name", name, "--initial-cluster-state", "existing"])
                .arg("--data-dir")
                .arg(self.dir().join(name))
                .args(["--listen-client-urls", client_url])
                .args(["--advertise-client-urls", client_url])
                .args(["--listen-peer-urls", peer_url])
                .args(["--initial-advertise-peer-urls", peer_url])
                .args(["--initial-cluster", initial_cluster])
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                .args(self.tls.iter().flat_map(|tls| tls.member(name)))
                .stdout(log.try_clone().expect("the joiner's log file"))
                .stderr(log),
        )
    }

    /// SIGKILL, no goodbye.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut member) = self.members[i].take() {
            member.kill();
        }
        self.paused[i] = false;
    }

    /// Stops member `i` with SIGSTOP: it holds its sockets and answers nothing until
    /// [`StoreCluster::resume`]. Does nothing to a member that is not running.
    pub fn pause(&mut self, i: usize) {
        if let Some(member) = &self.members[i] {
            // SAFETY: kill(2) on our own child, which has not been reaped yet.
            unsafe { libc::kill(member.pid(), libc::SIGSTOP) };
            self.paused[i] = true;
        }
    }

    /// Continues member `i` after [`StoreCluster::pause`] (SIGCONT).
    pub fn resume(&mut self, i: usize) {
        if let Some(member) = &self.members[i] {
            // SAFETY: kill(2) on our own child, which has not been reaped yet.
            unsafe { libc::kill(member.pid(), libc::SIGCONT) };
        }
        self.paused[i] = false;
    }

    /// Whether member `i` is stopped with SIGSTOP.
    pub fn is_paused(&self, i: usize) -> bool {
        self.paused[i]
    }

    /// Whether member `i` runs and is not paused: it can answer.
    pub fn is_responsive(&self, i: usize) -> bool {
        self.is_running(i) && !self.paused[i]
    }

    /// Kills member `i`, starts it again and waits until it answers.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_member_ready(i);
    }

    /// Waits until every member answers.
    pub fn wait_ready(&self) {
        for i in 0..self.specs.len() {
            self.wait_member_ready(i);
        }
    }

    /// Waits until member `i` answers; panics with every log after 30 s.
    pub fn wait_member_ready(&self, i: usize) {
        let deadline = Instant::now() + READY_TIMEOUT;
        while !self.member_ready(i) {
            assert!(
                Instant::now() < deadline,
                "{} not ready within {READY_TIMEOUT:?}:\n{}",
                self.specs[i].name,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether member `i` answers a linearizable read now.
    pub fn member_ready(&self, i: usize) -> bool {
        let endpoint = self.specs[i].client_url();
        self.etcdctl(&endpoint, &["endpoint", "health", "--dial-timeout", "1s"])
            .is_ok()
    }

    /// Runs etcdctl (v3 API, from the members' namespace) against every member; its stdout.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        self.etcdctl(&self.client_urls().join(","), args)
    }

    /// Runs etcdctl against member `i` alone; its stdout.
    pub fn ctl_member(&self, i: usize, args: &[&str]) -> Result<String> {
        self.etcdctl(&self.specs[i].client_url(), args)
    }

    fn etcdctl(&self, endpoints: &str, args: &[&str]) -> Result<String> {
        let mut cmd = match &self.namespace {
            Some((ns, _)) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, ETCDCTL]);
                cmd
            }
            None => Command::new(ETCDCTL),
        };
        cmd.env("ETCDCTL_API", "3")
            .args(["--endpoints", endpoints, "--command-timeout", "5s"])
            .args(self.etcdctl_tls_args())
            .args(self.user.iter().flat_map(|user| ["--user", user]))
            .args(args)
            .stdin(Stdio::null());
        command::run(&mut cmd)
    }

    /// Member `i`'s log so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(&self.specs[i])).unwrap_or_default()
    }

    /// Every member's log, headed by its name.
    pub fn logs(&self) -> String {
        (0..self.specs.len())
            .map(|i| format!("--- {}\n{}", self.specs[i].name, self.log(i)))
            .collect()
    }

    fn log_path(&self, spec: &MemberSpec) -> PathBuf {
        self.dir.path().join(format!("{}.log", spec.name))
    }

    /// Specs of `size` members, with data under a directory per attempt.
    fn member_specs(&self, size: usize, attempt: usize) -> Vec<MemberSpec> {
        if let Some(isolation) = &self.isolation {
            return (0..size)
                .map(|i| self.isolated_spec(isolation, i, MEMBER_NAMES[i], attempt))
                .collect();
        }
        // Three ports a member: client, peer, failpoint control.
        let (client_ip, mut ports) = match self.namespace {
            // A namespace of its own: etcd's well-known ports are free.
            Some((_, ip)) => (ip, (0..size * 3).map(|n| 2379 + n as u16).collect()),
            None => (Ipv4Addr::LOCALHOST, ports::free_ports(size * 3)),
        };
        if let Some(port) = self.client_port {
            ports[0] = port;
        }
        let netns = self.namespace.as_ref().map(|(ns, _)| ns.clone());
        MEMBER_NAMES[..size]
            .iter()
            .enumerate()
            .map(|(i, name)| MemberSpec {
                name: name.to_string(),
                client_ip,
                client_port: ports[i * 3],
                peer_ip: Ipv4Addr::LOCALHOST,
                peer_port: ports[i * 3 + 1],
                data_dir: self.dir.path().join(format!("{name}-{attempt}")),
                tls: self.tls.is_some(),
                netns: netns.clone(),
                failpoints_port: self.failpoints.then_some(ports[i * 3 + 2]),
            })
            .collect()
    }

    /// Member `i` of an isolated cluster: its namespace's address, etcd's well-known ports.
    fn isolated_spec(
        &self,
        isolation: &Isolation,
        i: usize,
        name: &str,
        attempt: usize,
    ) -> MemberSpec {
        let ip = isolation.member_ip(i);
        MemberSpec {
            name: name.to_string(),
            client_ip: ip,
            client_port: 2379,
            peer_ip: ip,
            peer_port: 2380,
            data_dir: self.dir.path().join(format!("{name}-{attempt}")),
            tls: self.tls.is_some(),
            netns: Some(isolation.namespace(i).name().to_string()),
            failpoints_port: self.failpoints.then_some(FAILPOINTS_PORT),
        }
    }

    /// Waits until every member answers. `Err` with the member's log when one exited because
    /// its port was taken (a free port can be taken by another process before the member binds
    /// it); any other exit, or no readiness within 30 s, panics with every member's log.
    fn wait_started(&mut self) -> std::result::Result<(), PortTaken> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            for i in 0..self.members.len() {
                let exited = self.members[i].as_mut().and_then(Process::exited);
                if let Some(status) = exited {
                    let log = self.log(i);
                    if log.to_lowercase().contains("address already in use") {
                        self.members.iter_mut().for_each(|member| *member = None);
                        return Err(PortTaken { log });
                    }
                    panic!(
                        "{} exited with {status}:\n{}",
                        self.specs[i].name,
                        self.logs()
                    );
                }
            }
            if (0..self.specs.len()).all(|i| self.member_ready(i)) {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "the {} cluster was not ready within {READY_TIMEOUT:?}:\n{}",
                self.kind.name(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for StoreCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        if std::thread::panicking() {
            eprintln!("store logs of the failed test:\n{}", self.logs());
        }
    }
}

/// A member's view of the cluster, from etcd's endpoint status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    pub member_id: u64,
    /// The member ID it takes as leader (0: none).
    pub leader: u64,
    pub raft_term: u64,
    /// The last index of its Raft log.
    pub raft_index: u64,
    pub raft_applied_index: u64,
    /// Its store's revision.
    pub revision: i64,
}

/// A member as `member list` shows it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ListedMember {
    #[serde(rename = "ID")]
    pub id: u64,
    /// Empty until the member has started and published it.
    #[serde(default)]
    pub name: String,
    #[serde(rename = "peerURLs", default)]
    pub peer_urls: Vec<String>,
    #[serde(rename = "clientURLs", default)]
    pub client_urls: Vec<String>,
    #[serde(rename = "isLearner", default)]
    pub is_learner: bool,
}

/// etcdctl's `member list -w json`.
#[derive(serde::Deserialize)]
struct MemberListJson {
    #[serde(default)]
    members: Vec<ListedMember>,
}

/// One entry of etcdctl's `endpoint status -w json` (protobuf JSON: zero fields are left out).
#[derive(serde::Deserialize)]
struct EndpointStatusJson {
    #[serde(rename = "Status")]
    status: StatusJson,
}

#[derive(serde::Deserialize)]
struct StatusJson {
    #[serde(default)]
    header: HeaderJson,
    #[serde(default)]
    leader: u64,
    #[serde(rename = "raftIndex", default)]
    raft_index: u64,
    #[serde(rename = "raftTerm", default)]
    raft_term: u64,
    #[serde(rename = "raftAppliedIndex", default)]
    raft_applied_index: u64,
}

#[derive(serde::Deserialize, Default)]
struct HeaderJson {
    #[serde(default)]
    member_id: u64,
    #[serde(default)]
    revision: i64,
}

/// Runs etcdctl (v3 API) against `endpoints` with `stdin`; (success, stdout, stderr).
pub fn etcdctl(endpoints: &[String], args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new(ETCDCTL)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running etcdctl");
    let mut input = child.stdin.take().expect("piped stdin");
    if let Some(text) = stdin {
        input
            .write_all(text.as_bytes())
            .expect("writing to etcdctl");
    }
    drop(input);
    let output = child.wait_with_output().expect("etcdctl output");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
