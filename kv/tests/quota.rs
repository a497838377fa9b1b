//! The backend quota and the NOSPACE alarm, with Debian's real `etcdctl` against one `shoal kv`
//! member and one etcd 3.4 member side by side: fill past a 2 MiB quota, see the writes refused
//! and the alarm listed (also after a restart), compact and defragment, disarm, write again.
//! Both sessions must print the same things (member IDs aside).
mod common;

use shoal_harness::store::etcdctl;
use shoal_harness::{StoreCluster, StoreKind};

const QUOTA: &str = "--quota-backend-bytes=2097152";
const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";

/// One line of a session: the command, and what etcdctl printed (or its error line).
fn run(cluster: &StoreCluster, transcript: &mut Vec<String>, args: &[&str]) -> (bool, String) {
    run_with_input(cluster, transcript, args, None)
}

fn run_with_input(
    cluster: &StoreCluster,
    transcript: &mut Vec<String>,
    args: &[&str],
    stdin: Option<&str>,
) -> (bool, String) {
    let (ok, out, err) = etcdctl(&cluster.endpoints(), args, stdin);
    let shown = if ok {
        out.trim_end().to_string()
    } else {
        // etcdctl's last stderr line is `Error: <the server's message>`.
        err.lines()
            .rfind(|line| line.starts_with("Error:"))
            .unwrap_or(err.trim())
            .to_string()
    };
    let line = format!("$ etcdctl {}\n{shown}", args.join(" "));
    transcript.push(particulars_hidden(&line));
    (ok, out)
}

/// What differs between any two members: member IDs, ports, revisions (the stores fill up
/// after different numbers of writes).
fn particulars_hidden(text: &str) -> String {
    text.lines()
        .map(particulars_hidden_in_line)
        .collect::<Vec<_>>()
        .join("\n")
}

fn particulars_hidden_in_line(line: &str) -> String {
    line.split(' ')
        .map(|word| {
            if word.starts_with("memberID:") {
                "memberID:<id>".to_string()
            } else if word.starts_with("member[") {
                "member[<endpoint>]".to_string()
            } else if word.len() > 1 && word.chars().all(|c| c.is_ascii_digit()) {
                "<n>".to_string()
            } else {
                word.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `endpoint status -w json`'s figure `field` (`dbSize`, `revision`, ...).
fn status_figure(cluster: &StoreCluster, field: &str) -> i64 {
    let (ok, out, err) = etcdctl(
        &cluster.endpoints(),
        &["endpoint", "status", "-w", "json"],
        None,
    );
    assert!(ok, "endpoint status: {err}");
    let pattern = format!("\"{field}\":");
    let at = out
        .find(&pattern)
        .unwrap_or_else(|| panic!("{field} in {out}"))
        + pattern.len();
    out[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{field} in {out}"))
}

/// The whole flow against one member of `kind`; its transcript.
fn session(kind: StoreKind) -> Vec<String> {
    let mut cluster = StoreCluster::builder(kind, 1).args([QUOTA]).start();
    let mut transcript = Vec::new();
    let value = "v".repeat(60 * 1024);
    // Overwrites of a few keys: the history fills the quota.
    let mut writes = 0;
    let refused = loop {
        let key = format!("/fill/{}", writes % 4);
        let (ok, _, err) = etcdctl(&cluster.endpoints(), &["put", &key, &value], None);
        if !ok {
            break err;
        }
        writes += 1;
        assert!(writes < 1000, "{} never refused a write", kind.name());
    };
    assert!(refused.contains(NO_SPACE), "{refused}");
    let full = status_figure(&cluster, "dbSize");
    println!(
        "{}: {writes} puts of 60 KiB before NOSPACE, dbSize {full}",
        kind.name()
    );

    run(&cluster, &mut transcript, &["alarm", "list"]);
    run(&cluster, &mut transcript, &["put", "/other", "small"]);
    run_with_input(
        &cluster,
        &mut transcript,
        &["txn"],
        Some("\nput /in-txn 1\n\n\n"),
    );
    run_with_input(
        &cluster,
        &mut transcript,
        &["txn"],
        Some("\nget /other\n\n\n"),
    );
    run(&cluster, &mut transcript, &["lease", "grant", "60"]);
    run(
        &cluster,
        &mut transcript,
        &["get", "/fill/0", "--print-value-only=false", "--keys-only"],
    );
    run(&cluster, &mut transcript, &["del", "/fill/3"]);

    // The alarm is replicated state: it survives a restart.
    cluster.restart(0);
    run(&cluster, &mut transcript, &["alarm", "list"]);

    let revision = status_figure(&cluster, "revision");
    run(
        &cluster,
        &mut transcript,
        &["compact", &revision.to_string()],
    );
    run(&cluster, &mut transcript, &["put", "/other", "small"]);
    let (ok, _) = run(&cluster, &mut transcript, &["defrag"]);
    assert!(ok, "defrag");
    let defragmented = status_figure(&cluster, "dbSize");
    println!(
        "{}: dbSize {full} full, {defragmented} after compact + defrag",
        kind.name()
    );
    assert!(
        defragmented < full / 2,
        "{}: {defragmented} of {full}",
        kind.name()
    );
    run(&cluster, &mut transcript, &["alarm", "disarm"]);
    run(&cluster, &mut transcript, &["alarm", "list"]);
    run(&cluster, &mut transcript, &["put", "/other", "small"]);
    run(&cluster, &mut transcript, &["get", "/other"]);
    transcript
}

#[test]
fn nospace_alarm_flow_matches_etcd_with_etcdctl() {
    let shoal = std::thread::spawn(|| session(StoreKind::ShoalKv));
    let etcd = session(StoreKind::Etcd);
    let shoal = shoal.join().expect("the shoal session");
    println!("--- shoal kv\n{}", shoal.join("\n"));
    println!("--- etcd 3.4\n{}", etcd.join("\n"));
    assert_eq!(shoal, etcd);
    let list = &shoal[0];
    assert!(list.ends_with("memberID:<id> alarm:NOSPACE"), "{list}");
    assert!(
        shoal[1].ends_with(&format!("Error: {NO_SPACE}")),
        "{}",
        shoal[1]
    );
}
