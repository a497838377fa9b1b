//! Observable like etcd: `/metrics`, `/health` and `/version` of 3-member `shoal kv` and etcd 3.4
//! clusters side by side, scraped with curl. Every metric etcd's alert rules read
//! (`Documentation/op-guide/etcd3_alert.rules`) and every etcd metric shoal measures must be
//! present in both with the same type (and histograms with the same buckets); the JSON endpoints
//! must answer as etcd's. Then the same over TLS (HTTP/1.1 and HTTP/2 on the gRPC port) and on
//! `--listen-metrics-urls`.
mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use shoal_harness::store::etcdctl;
use shoal_harness::{StoreCluster, StoreKind, free_port};

/// The metrics etcd's alert rules read that etcd 3.4 exports by default.
const ALERT_RULE_METRICS: &[&str] = &[
    "etcd_server_has_leader",
    "etcd_server_leader_changes_seen_total",
    "etcd_network_peer_round_trip_time_seconds",
    "etcd_server_proposals_failed_total",
    "etcd_disk_wal_fsync_duration_seconds",
    "etcd_disk_backend_commit_duration_seconds",
    "process_open_fds",
    "process_max_fds",
];

/// The etcd metrics shoal measures besides.
const MEASURED: &[&str] = &[
    "etcd_server_is_leader",
    "etcd_server_proposals_committed_total",
    "etcd_server_proposals_applied_total",
    "etcd_server_proposals_pending",
    "etcd_mvcc_db_total_size_in_bytes",
    "etcd_mvcc_db_total_size_in_use_in_bytes",
    "etcd_debugging_mvcc_keys_total",
    "etcd_network_peer_sent_bytes_total",
    "etcd_network_peer_received_bytes_total",
    "etcd_server_quota_backend_bytes",
    "etcd_server_version",
    "etcd_server_health_success",
    "grpc_server_started_total",
    "grpc_server_handled_total",
    "etcd_debugging_mvcc_db_total_size_in_bytes",
    "etcd_network_client_grpc_received_bytes_total",
    "etcd_network_client_grpc_sent_bytes_total",
];

/// Metrics of etcd's alert rules that etcd 3.4 exports only in some conditions (a failure seen,
/// `--metrics=extensive`, the v2 HTTP API): when etcd exports one, shoal must too.
const WHEN_ETCD_HAS_THEM: &[&str] = &[
    "etcd_network_peer_sent_failures_total",
    "grpc_server_handling_seconds",
    "etcd_http_failed_total",
    "etcd_http_received_total",
    "etcd_http_successful_duration_seconds",
];

/// `curl` of `url` with `extra` flags: the status code and the body.
fn curl(url: &str, extra: &[String]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-m", "5", "-w", "\n%{http_code}"])
        .args(extra)
        .arg(url)
        .output()
        .expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Each metric's type, from the `# TYPE` lines.
fn types(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(name, kind)| (name.to_string(), kind.to_string()))
        .collect()
}

/// A histogram's bucket bounds (`le` values) in the exposition, in order.
fn buckets(exposition: &str, name: &str) -> Vec<String> {
    let prefix = format!("{name}_bucket{{");
    let mut bounds: Vec<String> = exposition
        .lines()
        .filter(|line| line.starts_with(&prefix))
        .filter_map(|line| line.split("le=\"").nth(1)?.split('"').next())
        .map(str::to_string)
        .collect();
    bounds.dedup();
    bounds.sort_by(|a, b| {
        let f = |s: &str| s.parse::<f64>().unwrap_or(f64::INFINITY);
        f(a).total_cmp(&f(b))
    });
    bounds.dedup();
    bounds
}

/// The scrape of member 0 once the peer round trips are measured (etcd probes every few seconds).
fn scrape_with_peers(cluster: &StoreCluster) -> String {
    let url = format!("http://{}/metrics", cluster.endpoints()[0]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = curl(&url, &[]);
        assert_eq!(code, 200, "{} /metrics", cluster.kind().name());
        if body.contains("etcd_network_peer_round_trip_time_seconds_bucket")
            || Instant::now() > deadline
        {
            return body;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Every member's scrape, one after the other: each call is counted by the member that served
/// it (calls were seen counted on other members than the one etcdctl was given).
fn scrape_all(cluster: &StoreCluster) -> String {
    cluster
        .endpoints()
        .iter()
        .map(|endpoint| curl(&format!("http://{endpoint}/metrics"), &[]).1)
        .collect()
}

/// Writes and a read of a future revision, through member 0.
fn traffic(cluster: &StoreCluster) {
    for i in 0..5 {
        let (ok, _, err) = etcdctl(&cluster.endpoints(), &["put", &format!("k{i}"), "v"], None);
        assert!(ok, "{err}");
    }
    let (ok, _, _) = etcdctl(
        &cluster.endpoints(),
        &["get", "missing", "--rev=1000"],
        None,
    );
    assert!(!ok, "a read of a future revision fails");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_version_answer_as_etcds() {
    let (shoal, etcd) = tokio::join!(
        common::start(StoreKind::ShoalKv, 3),
        common::start(StoreKind::Etcd, 3)
    );
    let (shoal_metrics, etcd_metrics, shoal_all, etcd_all) =
        tokio::task::spawn_blocking(move || {
            traffic(&shoal);
            traffic(&etcd);
            (
                scrape_with_peers(&shoal),
                scrape_with_peers(&etcd),
                scrape_all(&shoal),
                scrape_all(&etcd),
            )
        })
        .await
        .expect("scrapes");
    let (shoal_types, etcd_types) = (types(&shoal_metrics), types(&etcd_metrics));
    for name in ALERT_RULE_METRICS.iter().chain(MEASURED) {
        let theirs = etcd_types.get(*name);
        assert!(theirs.is_some(), "etcd 3.4 exports {name}");
        assert_eq!(shoal_types.get(*name), theirs, "{name}'s type");
    }
    for name in WHEN_ETCD_HAS_THEM {
        if let Some(theirs) = etcd_types.get(*name) {
            assert_eq!(shoal_types.get(*name), Some(theirs), "{name}'s type");
        }
    }
    assert_eq!(
        shoal_types
            .get("etcd_network_peer_sent_failures_total")
            .map(String::as_str),
        Some("counter")
    );
    for histogram in [
        "etcd_disk_wal_fsync_duration_seconds",
        "etcd_disk_backend_commit_duration_seconds",
        "etcd_network_peer_round_trip_time_seconds",
    ] {
        assert_eq!(
            buckets(&shoal_metrics, histogram),
            buckets(&etcd_metrics, histogram),
            "{histogram}'s buckets"
        );
    }
    for (kind, metrics) in [("shoal", &shoal_all), ("etcd", &etcd_all)] {
        assert!(metrics.contains("etcd_server_has_leader 1"), "{kind}");
        assert!(
            metrics.contains(
                "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Put\",\
                 grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}"
            ),
            "{kind}: the puts are counted"
        );
        assert!(
            metrics.contains(
                "grpc_server_handled_total{grpc_code=\"OutOfRange\",grpc_method=\"Range\""
            ),
            "{kind}: the failed read is counted with its code"
        );
    }
    println!(
        "shoal exports {} metric families, etcd {}; {} checked in both",
        shoal_types.len(),
        etcd_types.len(),
        ALERT_RULE_METRICS.len() + MEASURED.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_version_match_etcds_on_client_and_metrics_urls() {
    let shoal_port = free_port();
    let etcd_port = free_port();
    let shoal_flag = format!("--listen-metrics-urls=http://127.0.0.1:{shoal_port}");
    let etcd_flag = format!("--listen-metrics-urls=http://127.0.0.1:{etcd_port}");
    let (shoal_flags, etcd_flags) = ([shoal_flag.as_str()], [etcd_flag.as_str()]);
    let (shoal, etcd) = tokio::join!(
        common::start_with(StoreKind::ShoalKv, 1, &shoal_flags),
        common::start_with(StoreKind::Etcd, 1, &etcd_flags)
    );
    tokio::task::spawn_blocking(move || {
        let answers = |cluster: &StoreCluster, metrics_port: u16| {
            let client = format!("http://{}", cluster.endpoints()[0]);
            let metrics = format!("http://127.0.0.1:{metrics_port}");
            [
                curl(&format!("{client}/health"), &[]),
                curl(&format!("{metrics}/health"), &[]),
                (curl(&format!("{metrics}/version"), &[]).0, String::new()),
                (curl(&format!("{metrics}/metrics"), &[]).0, String::new()),
            ]
        };
        let (shoal_answers, etcd_answers) =
            (answers(&shoal, shoal_port), answers(&etcd, etcd_port));
        println!("shoal {shoal_answers:?}\netcd  {etcd_answers:?}");
        assert_eq!(shoal_answers, etcd_answers);
        assert_eq!(shoal_answers[0], (200, r#"{"health":"true"}"#.to_string()));

        let (code, version) = curl(&format!("http://{}/version", shoal.endpoints()[0]), &[]);
        let (_, etcd_version) = curl(&format!("http://{}/version", etcd.endpoints()[0]), &[]);
        println!("shoal /version {version}\netcd  /version {etcd_version}");
        assert_eq!(code, 200);
        assert_eq!(version, r#"{"etcdserver":"3.4.0","etcdcluster":"3.4.0"}"#);
        let shape = |v: &str| {
            v.split('"')
                .step_by(2)
                .collect::<String>()
                .replace(|c: char| c.is_ascii_digit() || c == '.', "")
        };
        assert_eq!(shape(&version), shape(&etcd_version), "the same JSON shape");
    })
    .await
    .expect("the checks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_endpoints_answer_over_tls_on_the_grpc_port() {
    let shoal = common::start_tls(StoreKind::ShoalKv, 1).await;
    tokio::task::spawn_blocking(move || {
        let tls = shoal.etcdctl_tls_args();
        let url = shoal.client_urls()[0].clone();
        for version in ["--http1.1", "--http2"] {
            let mut flags = tls.clone();
            flags.push(version.to_string());
            let (code, health) = curl(&format!("{url}/health"), &flags);
            assert_eq!(
                (code, health.as_str()),
                (200, r#"{"health":"true"}"#),
                "{version}"
            );
            let (code, metrics) = curl(&format!("{url}/metrics"), &flags);
            assert_eq!(code, 200, "{version}");
            assert!(
                metrics.contains("# TYPE etcd_server_has_leader gauge"),
                "{version}"
            );
        }
        // gRPC still works on the same port.
        let mut args = tls.clone();
        args.extend(["put".to_string(), "k".to_string(), "v".to_string()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, out, err) = etcdctl(&shoal.client_urls(), &args, None);
        assert!(ok, "{err}");
        assert_eq!(out.trim(), "OK");
    })
    .await
    .expect("the checks");
}

/// The Watch service is served ahead of the router (`api::Dispatch`); its streams must still be
/// counted as etcd's grpc metrics count them: started when opened, handled when the client
/// closes its side (etcd's bidi streams end `OK` or `Canceled`; the count moves either way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_are_counted_started_and_handled_as_etcds() {
    use common::Clients;
    let started = "grpc_server_started_total{grpc_method=\"Watch\",\
                   grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"} 1";
    let handled = "grpc_method=\"Watch\",grpc_service=\"etcdserverpb.Watch\",\
                   grpc_type=\"bidi_stream\"} 1";
    for kind in [StoreKind::ShoalKv, StoreKind::Etcd] {
        let cluster = common::start(kind, 1).await;
        let url = format!("http://{}/metrics", cluster.endpoints()[0]);
        let mut client = cluster.client(0).await;
        let mut stream = client.watch("counted", None).await.expect("watch");
        client.put("counted", "v", None).await.expect("put");
        let events = loop {
            let response = stream.message().await.expect("events").expect("open");
            if !response.events().is_empty() {
                break response.events().len();
            }
        };
        assert_eq!(events, 1, "{}: the put's event", kind.name());
        let open = tokio::task::spawn_blocking({
            let url = url.clone();
            move || curl(&url, &[]).1
        })
        .await
        .expect("scrape");
        assert!(
            open.contains(started),
            "{}: the stream is started",
            kind.name()
        );
        drop((stream, client));
        let deadline = Instant::now() + Duration::from_secs(10);
        let closed = loop {
            let url = url.clone();
            let scrape = tokio::task::spawn_blocking(move || curl(&url, &[]).1)
                .await
                .expect("scrape");
            let counted = scrape.lines().any(|line| {
                line.starts_with("grpc_server_handled_total") && line.contains(handled)
            });
            if counted || Instant::now() > deadline {
                break counted;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(closed, "{}: the closed stream is handled", kind.name());
    }
}
