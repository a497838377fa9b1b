//! Debian's real `etcdctl` (etcd 3.4, ETCDCTL_API=3) against a 3-member `shoal kv`.
//! Every command's output is printed, so `--nocapture` shows the whole session.
mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use shoal_harness::StoreKind;
use shoal_harness::store::etcdctl;

/// Runs etcdctl, prints the session line and returns stdout; panics if it failed.
fn ctl(endpoints: &[String], args: &[&str]) -> String {
    ctl_with_input(endpoints, args, None)
}

fn ctl_with_input(endpoints: &[String], args: &[&str], stdin: Option<&str>) -> String {
    let (ok, out, err) = etcdctl(endpoints, args, stdin);
    println!("$ etcdctl {}\n{}", args.join(" "), out.trim_end());
    assert!(ok, "etcdctl {args:?} failed: {err}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_session_against_three_members() {
    let cluster = common::start(StoreKind::ShoalKv, 3).await;
    let all = cluster.endpoints();
    let one = |i: usize| vec![cluster.endpoints()[i].clone()];

    assert_eq!(ctl(&one(0), &["put", "/app/a", "1"]).trim(), "OK");
    assert_eq!(ctl(&one(1), &["put", "/app/b", "2"]).trim(), "OK");
    assert_eq!(ctl(&one(2), &["put", "/app/c", "3"]).trim(), "OK");
    ctl(&one(1), &["put", "/app/a", "10"]);
    assert_eq!(
        ctl(&one(2), &["get", "/app/", "--prefix"]),
        "/app/a\n10\n/app/b\n2\n/app/c\n3\n"
    );
    assert_eq!(ctl(&one(0), &["get", "/app/a", "--rev=2"]), "/app/a\n1\n");
    assert_eq!(
        ctl(&one(0), &["get", "/app/", "--prefix", "--limit=1"]),
        "/app/a\n10\n"
    );
    assert_eq!(
        ctl(
            &one(1),
            &[
                "get",
                "/app/",
                "--prefix",
                "--sort-by=MODIFY",
                "--order=DESCEND",
                "--keys-only"
            ]
        ),
        "/app/a\n\n/app/c\n\n/app/b\n\n"
    );
    let json = ctl(
        &one(2),
        &["get", "/app/", "--prefix", "-w", "json", "--consistency=s"],
    );
    assert!(json.contains("\"count\":3"), "{json}");
    assert_eq!(ctl(&one(0), &["del", "/app/c"]).trim(), "1");

    let txn = "value(\"/app/a\") = \"10\"\n\nput /app/a 11\nget /app/b\n\nput /app/a never\n\n";
    let out = ctl_with_input(&one(1), &["txn"], Some(txn));
    assert_eq!(out, "SUCCESS\n\nOK\n\n/app/b\n2\n");

    // Watch with history from revision 2 and a live prefix watch, as separate processes.
    let watch_history = spawn_watch(&all, &["watch", "/app/", "--prefix", "--rev=2"]);
    let watch_live = spawn_watch(&all, &["watch", "/live/", "--prefix"]);
    tokio::time::sleep(Duration::from_millis(800)).await;
    ctl(&one(2), &["put", "/live/x", "y"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let history = stop_watch(watch_history);
    println!("$ etcdctl watch /app/ --prefix --rev=2\n{history}");
    assert!(
        history.starts_with("PUT\n/app/a\n1\nPUT\n/app/b\n2\nPUT\n/app/c\n3\nPUT\n/app/a\n10\nDELETE\n/app/c\n\nPUT\n/app/a\n11\n"),
        "{history}"
    );
    let live = stop_watch(watch_live);
    println!("$ etcdctl watch /live/ --prefix\n{live}");
    assert_eq!(live, "PUT\n/live/x\ny\n");

    let grant = ctl(&one(0), &["lease", "grant", "30"]);
    let lease = grant
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    ctl(
        &one(1),
        &["put", "/leased", "v", &format!("--lease={lease}")],
    );
    let kept = ctl(&one(2), &["lease", "keep-alive", "--once", &lease]);
    assert!(kept.contains("keepalived with TTL(30)"), "{kept}");
    let ttl = ctl(&one(1), &["lease", "timetolive", &lease, "--keys"]);
    assert!(
        ttl.contains("granted with TTL(30s)") && ttl.contains("attached keys([/leased])"),
        "{ttl}"
    );
    assert!(ctl(&one(0), &["lease", "list"]).contains(&lease));
    assert!(ctl(&one(2), &["lease", "revoke", &lease]).contains("revoked"));
    assert_eq!(ctl(&one(0), &["get", "/leased"]), "");

    let members = ctl(&one(0), &["member", "list"]);
    assert_eq!(members.lines().count(), 3, "{members}");
    for name in ["alpha", "bravo", "charlie"] {
        assert!(members.contains(&format!("started, {name}, ")), "{members}");
    }
    let status = ctl(&all, &["endpoint", "status", "-w", "table"]);
    let leaders = status
        .lines()
        .filter(|line| line.split('|').nth(5).map(str::trim) == Some("true"))
        .count();
    assert_eq!(leaders, 1, "one leader: {status}");
    let (ok, out, err) = etcdctl(&all, &["endpoint", "health"], None);
    println!("$ etcdctl endpoint health\n{out}{err}");
    assert!(ok && (out + &err).matches("is healthy").count() == 3);
    let health = etcdctl(&one(0), &["endpoint", "health", "--cluster"], None);
    assert!(health.0, "{health:?}");

    let rev = ctl(&one(0), &["get", "/app/a", "-w", "json"]);
    assert!(rev.contains("\"revision\":"), "{rev}");
    assert!(ctl(&one(1), &["compaction", "3"]).contains("compacted revision 3"));
    let (ok, _, err) = etcdctl(&one(2), &["get", "/app/a", "--rev=2"], None);
    println!("$ etcdctl get /app/a --rev=2\n{err}");
    assert!(
        !ok && err.contains("required revision has been compacted"),
        "{err}"
    );

    let snapshot = cluster.dir().join("snapshot.db");
    let path = snapshot.to_string_lossy().into_owned();
    ctl(&one(0), &["snapshot", "save", &path]);
    assert!(
        std::fs::metadata(&snapshot)
            .map(|m| m.len() > 32)
            .unwrap_or(false)
    );
}

struct WatchProcess(std::process::Child);

fn spawn_watch(endpoints: &[String], args: &[&str]) -> WatchProcess {
    let child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcdctl watch");
    WatchProcess(child)
}

fn stop_watch(mut watch: WatchProcess) -> String {
    let _ = watch.0.kill();
    let mut out = String::new();
    if let Some(mut stdout) = watch.0.stdout.take() {
        use std::io::Read;
        let _ = stdout.read_to_string(&mut out);
    }
    let _ = watch.0.wait();
    out
}

impl Drop for WatchProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
