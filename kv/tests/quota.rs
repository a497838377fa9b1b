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
    let text = member_ids_hidden(text);
    text.lines()
        .map(particulars_hidden_in_line)
        .collect::<Vec<_>>()
        .join("\n")
}

/// `memberID:<digits>` anywhere (also inside JSON strings) as `memberID:<id>`.
fn member_ids_hidden(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("memberID:") {
        let (before, after) = rest.split_at(at + "memberID:".len());
        out.push_str(before);
        out.push_str("<id>");
        rest = after.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    out.push_str(rest);
    out
}

fn particulars_hidden_in_line(line: &str) -> String {
    line.split(' ')
        .map(|word| {
            if word.starts_with("member[") {
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

/// `/health` of member 0 over HTTP, with its status code, as a transcript line.
fn health(cluster: &StoreCluster, transcript: &mut Vec<String>) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-m", "5", "-w", " %{http_code}"])
        .arg(format!("http://{}/health", cluster.endpoints()[0]))
        .output()
        .expect("running curl");
    transcript.push(format!(
        "$ curl /health\n{}",
        String::from_utf8_lossy(&out.stdout)
    ));
}

/// The `errors` Status reports, as a transcript line.
fn status_errors(cluster: &StoreCluster, transcript: &mut Vec<String>) {
    let (ok, out, err) = etcdctl(
        &cluster.endpoints(),
        &["endpoint", "status", "-w", "json"],
        None,
    );
    assert!(ok, "endpoint status: {err}");
    let errors = out
        .split_once("\"errors\":")
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(list, _)| format!("{list}]"))
        .unwrap_or_default();
    transcript.push(particulars_hidden(&format!(
        "$ etcdctl endpoint status -w json | errors\n{errors}"
    )));
}

/// Fills `cluster` through member 0 with overwrites of a few keys until a write is refused;
/// the refusal and how many writes went in.
fn fill(cluster: &StoreCluster, kind: StoreKind) -> (String, usize) {
    let value = "v".repeat(60 * 1024);
    let mut writes = 0;
    let endpoint = [cluster.endpoints()[0].clone()];
    loop {
        let key = format!("/fill/{}", writes % 4);
        let (ok, _, err) = etcdctl(&endpoint, &["put", &key, &value], None);
        if !ok {
            return (err, writes);
        }
        writes += 1;
        assert!(writes < 1000, "{} never refused a write", kind.name());
    }
}

/// The whole flow against one member of `kind`; its transcript.
fn session(kind: StoreKind) -> Vec<String> {
    let mut cluster = StoreCluster::builder(kind, 1).args([QUOTA]).start();
    let mut transcript = Vec::new();
    // Overwrites of a few keys: the history fills the quota.
    let (refused, writes) = fill(&cluster, kind);
    assert!(refused.contains(NO_SPACE), "{refused}");
    let full = status_figure(&cluster, "dbSize");
    println!(
        "{}: {writes} puts of 60 KiB before NOSPACE, dbSize {full}",
        kind.name()
    );

    run(&cluster, &mut transcript, &["alarm", "list"]);
    health(&cluster, &mut transcript);
    status_errors(&cluster, &mut transcript);
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
    health(&cluster, &mut transcript);
    transcript
}

/// Three members of `kind`: the alarm raised through member 0 refuses a write through member 1
/// even once member 1 alone has room again (compacted and defragmented): the alarm, not the
/// member's size, refuses it where it is applied. What each step printed.
fn alarm_refuses_writes_on_every_member(kind: StoreKind) -> Vec<String> {
    let cluster = StoreCluster::builder(kind, 3).args([QUOTA]).start();
    let (refused, _) = fill(&cluster, kind);
    assert!(refused.contains(NO_SPACE), "{refused}");
    let mut transcript = Vec::new();
    let member = |i: usize| vec![cluster.endpoints()[i].clone()];
    let revision = status_figure(&cluster, "revision");
    let steps: [(usize, Vec<&str>); 5] = [
        (1, vec!["alarm", "list"]),
        (1, vec!["compact", "--physical", "REV"]),
        (1, vec!["defrag"]),
        (1, vec!["put", "/after-defrag", "small"]),
        (2, vec!["get", "/fill/0", "--keys-only"]),
    ];
    for (i, args) in steps {
        let revision = revision.to_string();
        let args: Vec<&str> = args
            .into_iter()
            .map(|a| if a == "REV" { revision.as_str() } else { a })
            .collect();
        let (ok, out, err) = etcdctl(&member(i), &args, None);
        let shown = if ok && args == ["alarm", "list"] {
            // etcd raises one alarm per member whose own backend crossed the quota as it
            // applied the write (a second member may); shoal only the member that refused it.
            let mut alarms: Vec<&str> = out.lines().map(str::trim_end).collect();
            alarms.dedup_by(|a, b| particulars_hidden(a) == particulars_hidden(b));
            alarms.join("\n")
        } else if ok {
            out.trim_end().to_string()
        } else {
            err.lines()
                .rfind(|line| line.starts_with("Error:"))
                .unwrap_or(err.trim())
                .to_string()
        };
        transcript.push(particulars_hidden(&format!(
            "$ etcdctl --endpoints=<member {i}> {}\n{shown}",
            args.join(" ")
        )));
    }
    transcript
}

/// Runs one etcdctl session against shoal kv and etcd 3.4 side by side and asserts the
/// transcripts are equal; returns shoal's for the test's own checks.
fn same_on_shoal_and_etcd(session: fn(StoreKind) -> Vec<String>) -> Vec<String> {
    let shoal = std::thread::spawn(move || session(StoreKind::ShoalKv));
    let etcd = session(StoreKind::Etcd);
    let shoal = shoal.join().expect("the shoal session");
    println!("--- shoal kv\n{}", shoal.join("\n"));
    println!("--- etcd 3.4\n{}", etcd.join("\n"));
    assert_eq!(shoal, etcd);
    shoal
}

#[test]
fn a_raised_alarm_refuses_writes_through_every_member_as_in_etcd() {
    let shoal = same_on_shoal_and_etcd(alarm_refuses_writes_on_every_member);
    assert!(
        shoal[3].ends_with(&format!("Error: {NO_SPACE}")),
        "{}",
        shoal[3]
    );
}

#[test]
fn nospace_alarm_flow_matches_etcd_with_etcdctl() {
    let shoal = same_on_shoal_and_etcd(session);
    let list = &shoal[0];
    assert!(list.ends_with("memberID:<id> alarm:NOSPACE"), "{list}");
    assert_eq!(shoal[1], "$ curl /health\n{\"health\":\"false\"}\n 503");
    assert!(
        shoal[3].ends_with(&format!("Error: {NO_SPACE}")),
        "{}",
        shoal[3]
    );
}
