//! Test support: `shoal-kv` members and real etcd 3.4 servers as child processes on free
//! loopback ports in temp dirs, killed (and their files removed) when dropped, also on panic.
#![allow(dead_code)]
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};

pub const SHOAL_KV: &str = env!("CARGO_BIN_EXE_shoal-kv");
pub const ETCD: &str = "/usr/bin/etcd";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// One member's settings, kept so it can be restarted the same way.
#[derive(Debug, Clone)]
pub struct MemberSpec {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
}

impl MemberSpec {
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }
}

/// Specs of `size` members on free ports, with data under `dir` (a directory per attempt).
fn member_specs(dir: &std::path::Path, size: usize, attempt: usize) -> Vec<MemberSpec> {
    let names = ["alpha", "bravo", "charlie", "delta", "echo"];
    let ports = free_ports(size * 2);
    (0..size)
        .map(|i| MemberSpec {
            name: names[i].to_string(),
            client_port: ports[i * 2],
            peer_port: ports[i * 2 + 1],
            data_dir: dir.join(format!("{}-{attempt}", names[i])),
        })
        .collect()
}

/// `n` distinct free loopback ports (all bound at once while they are chosen).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("a bound address").port())
        .collect()
}

/// A child process killed with SIGKILL when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Shoal,
    Etcd,
}

/// A cluster of `shoal-kv` (or etcd) members on one machine.
pub struct TestCluster {
    pub flavor: Flavor,
    pub specs: Vec<MemberSpec>,
    pub procs: Vec<Option<Proc>>,
    pub dir: tempfile::TempDir,
    pub state: &'static str,
    /// Passed to every member after the standard flags.
    pub extra_args: Vec<String>,
}

impl TestCluster {
    pub async fn start(flavor: Flavor, size: usize) -> TestCluster {
        Self::start_with(flavor, size, &[]).await
    }

    /// Starts `size` members on free ports. A port found free can be taken by another process
    /// before the member binds it (parallel tests open connections all the time): a member that
    /// exits with "address already in use" makes the cluster start again on other ports.
    pub async fn start_with(flavor: Flavor, size: usize, extra_args: &[&str]) -> TestCluster {
        let mut cluster = TestCluster {
            flavor,
            specs: Vec::new(),
            procs: Vec::new(),
            dir: tempfile::tempdir().expect("temp dir"),
            state: "new",
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
        };
        for attempt in 1..=3 {
            cluster.specs = member_specs(cluster.dir.path(), size, attempt);
            cluster.procs = (0..size).map(|_| None).collect();
            for i in 0..size {
                cluster.spawn(i);
            }
            match cluster.wait_started().await {
                Ok(()) => return cluster,
                Err(log) => eprintln!("attempt {attempt}: a port was taken, starting again\n{log}"),
            }
        }
        panic!("a member found its port taken in three attempts");
    }

    /// Waits until every member answers a linearizable read; `Err` with the member's log when
    /// one exited because its port was taken. Any other exit, or no readiness within 30 s,
    /// panics with every member's log.
    async fn wait_started(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for i in 0..self.procs.len() {
                let exited = match self.procs[i].as_mut() {
                    Some(proc) => proc.0.try_wait().expect("waiting for a member"),
                    None => None,
                };
                if let Some(status) = exited {
                    let log = self.log(i);
                    if log.to_lowercase().contains("address already in use") {
                        self.procs.iter_mut().for_each(|proc| *proc = None);
                        return Err(log);
                    }
                    panic!("{} exited with {status}:\n{log}", self.specs[i].name);
                }
            }
            let mut ready = true;
            for spec in &self.specs {
                ready &= member_ready(&spec.endpoint()).await;
            }
            if ready {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "the cluster was not ready within 30 s:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every member's log, headed by its name.
    pub fn logs(&self) -> String {
        (0..self.specs.len())
            .map(|i| format!("--- {}\n{}", self.specs[i].name, self.log(i)))
            .collect()
    }

    pub fn initial_cluster(&self) -> String {
        self.specs
            .iter()
            .map(|s| format!("{}={}", s.name, s.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn log_path(&self, spec: &MemberSpec) -> PathBuf {
        self.dir.path().join(format!("{}.log", spec.name))
    }

    pub fn spawn(&mut self, i: usize) {
        let spec = self.specs[i].clone();
        let program = match self.flavor {
            Flavor::Shoal => SHOAL_KV,
            Flavor::Etcd => ETCD,
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(&spec))
            .expect("log file");
        let mut command = Command::new(program);
        command
            .arg("--name")
            .arg(&spec.name)
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .arg("--listen-client-urls")
            .arg(spec.client_url())
            .arg("--advertise-client-urls")
            .arg(spec.client_url())
            .arg("--listen-peer-urls")
            .arg(spec.peer_url())
            .arg("--initial-advertise-peer-urls")
            .arg(spec.peer_url())
            .arg("--initial-cluster")
            .arg(self.initial_cluster())
            .arg("--initial-cluster-state")
            .arg(self.state)
            .arg("--heartbeat-interval")
            .arg("50")
            .arg("--election-timeout")
            .arg("500")
            .args(&self.extra_args)
            .env("SHOAL_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        self.procs[i] = Some(Proc(command.spawn().expect("spawning a member")));
    }

    /// SIGKILL, no goodbye.
    pub fn kill(&mut self, i: usize) {
        self.procs[i] = None;
    }

    pub async fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        wait_member_ready(&self.specs[i].endpoint()).await;
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(&self.specs[i])).unwrap_or_default()
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.specs.iter().map(MemberSpec::endpoint).collect()
    }

    pub fn live_endpoints(&self) -> Vec<String> {
        self.specs
            .iter()
            .zip(&self.procs)
            .filter(|(_, p)| p.is_some())
            .map(|(s, _)| s.endpoint())
            .collect()
    }

    pub async fn client(&self, i: usize) -> Client {
        connect(&[self.specs[i].endpoint()]).await
    }

    pub async fn wait_ready(&self) {
        for spec in &self.specs {
            wait_member_ready(&spec.endpoint()).await;
        }
    }

    /// Index of the member that leads, as the members report it.
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for (i, spec) in self.specs.iter().enumerate() {
                if self.procs[i].is_none() {
                    continue;
                }
                let mut client = connect(&[spec.endpoint()]).await;
                if let Ok(status) = client.status().await {
                    let header = status.header().expect("header");
                    if status.leader() == header.member_id() {
                        return i;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader within 20 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

pub async fn connect(endpoints: &[String]) -> Client {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(10));
    Client::connect(endpoints, Some(options))
        .await
        .expect("connecting to the store")
}

/// Whether a member answers a linearizable read now.
pub async fn member_ready(endpoint: &str) -> bool {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(500))
        .with_timeout(Duration::from_secs(2));
    match Client::connect([endpoint], Some(options)).await {
        Ok(mut client) => client.get("ready-probe", None).await.is_ok(),
        Err(_) => false,
    }
}

/// Waits until a member answers a linearizable read.
pub async fn wait_member_ready(endpoint: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !member_ready(endpoint).await {
        assert!(
            Instant::now() < deadline,
            "{endpoint} not ready within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs Debian's etcdctl (v3 API) against `endpoints`; returns (success, stdout, stderr).
pub fn etcdctl(endpoints: &[String], args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running etcdctl");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("writing to etcdctl");
    } else {
        drop(child.stdin.take());
    }
    let output = child.wait_with_output().expect("etcdctl output");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Every file under a member's data dir (the redb file and the Raft log's segments), sorted.
pub fn data_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for item in std::fs::read_dir(&dir).expect("reading the data dir") {
            let path = item.expect("data dir entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}
