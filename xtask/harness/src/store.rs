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
//! Binaries: etcd is Debian's `/usr/bin/etcd` (`cargo xtask setup` installs it); shoal kv is the
//! workspace's `shoal-kv`, found by [`crate::binaries::shoal_kv`], unless the builder is given
//! another program (e.g. `shoal` with `kv`).
use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shoal_pki::{Authority, Files, Request, Usage};

use crate::process::Process;
use crate::{Namespace, Result, binaries, command, ports};

pub const ETCD: &str = "/usr/bin/etcd";
pub const ETCDCTL: &str = "/usr/bin/etcdctl";

/// How long a cluster (or a restarted member) has to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Starts on other ports after a member found its port taken, at most this many times.
const START_ATTEMPTS: usize = 3;
const MEMBER_NAMES: [&str; 5] = ["alpha", "bravo", "charlie", "delta", "echo"];

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
    /// Peers talk on loopback (all members share the host's or the namespace's).
    pub peer_port: u16,
    pub data_dir: PathBuf,
    /// Whether its URLs are `https://` (a [`StoreClusterBuilder::tls`] cluster).
    pub tls: bool,
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
        format!("{}://127.0.0.1:{}", self.scheme(), self.peer_port)
    }
    /// `ip:port`, as etcd-client takes it.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.client_ip, self.client_port)
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
}

impl StoreClusterBuilder {
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
        let client_ip = self.namespace.as_ref().map(|(_, ip)| *ip);
        let tls = self.tls.then(|| {
            let names = &MEMBER_NAMES[..self.size];
            ClusterTls::create(&dir.path().join("pki"), names, client_ip)
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
        };
        for attempt in 1..=START_ATTEMPTS {
            cluster.specs = cluster.member_specs(self.size, attempt);
            cluster.members = (0..self.size).map(|_| None).collect();
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
        let authority = Authority::create("shoal test CA").expect("a CA");
        let ca = authority.write(dir).expect("writing the CA").certificate;
        let mut hosts = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        hosts.extend(client_ip.map(|ip| ip.to_string()));
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
        }
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

    /// Whether member `i`'s process ended by itself: its status if so (`None` while it runs,
    /// or when it was killed or never started).
    pub fn exit_status(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        self.members[i].as_mut().and_then(Process::exited)
    }

    /// The process of member `i`, if running.
    pub fn process(&self, i: usize) -> Option<&Process> {
        self.members[i].as_ref()
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
        let mut cmd = match &self.namespace {
            Some((ns, _)) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(&self.program);
                cmd
            }
            None => Command::new(&self.program),
        };
        cmd.args(&self.leading_args)
            .arg("--name")
            .arg(&spec.name)
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .args(["--listen-client-urls", &spec.client_url()])
            .args(["--advertise-client-urls", &spec.client_url()])
            .args(["--listen-peer-urls", &spec.peer_url()])
            .args(["--initial-advertise-peer-urls", &spec.peer_url()])
            .args(["--initial-cluster", &self.initial_cluster()])
            .args(["--initial-cluster-state", self.state])
            .args(self.tls.iter().flat_map(|tls| tls.member_args(&spec.name)))
            .args(&self.args)
            .env("SHOAL_LOG", "info,openraft=warn")
            .stdout(log.try_clone().expect("a member's log file"))
            .stderr(log);
        let name = format!("{} {}", self.kind.name(), spec.name);
        self.members[i] = Some(Process::spawn(&name, &mut cmd));
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
        let (client_ip, mut ports) = match self.namespace {
            // A namespace of its own: etcd's well-known ports are free.
            Some((_, ip)) => (ip, (0..size * 2).map(|n| 2379 + n as u16).collect()),
            None => (Ipv4Addr::LOCALHOST, ports::free_ports(size * 2)),
        };
        if let Some(port) = self.client_port {
            ports[0] = port;
        }
        MEMBER_NAMES[..size]
            .iter()
            .enumerate()
            .map(|(i, name)| MemberSpec {
                name: name.to_string(),
                client_ip,
                client_port: ports[i * 2],
                peer_port: ports[i * 2 + 1],
                data_dir: self.dir.path().join(format!("{name}-{attempt}")),
                tls: self.tls.is_some(),
            })
            .collect()
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
