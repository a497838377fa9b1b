//! etcd's Prometheus metrics, for what shoal measures, under etcd's names, types and buckets, so
//! etcd's dashboards and alert rules read a shoal member unchanged. Process-wide, as etcd's
//! (one registry per process). Counters and histograms are updated where things happen, with
//! atomics only (peer handles are looked up once per connection); the gauges of a member's state
//! (leader, sizes, keys) are set when `/metrics` is scraped ([`crate::api::http`]).
use std::collections::HashMap;
use std::sync::LazyLock;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder, exponential_buckets,
};

/// Every metric shoal exports.
pub struct Metrics {
    registry: Registry,
    pub has_leader: IntGauge,
    pub is_leader: IntGauge,
    pub leader_changes: IntCounter,
    pub proposals_committed: IntGauge,
    pub proposals_applied: IntGauge,
    pub proposals_pending: IntGauge,
    pub proposals_failed: IntCounter,
    pub db_size: IntGauge,
    pub debugging_db_size: IntGauge,
    pub db_size_in_use: IntGauge,
    pub keys: IntGauge,
    pub quota_bytes: IntGauge,
    pub server_version: IntGaugeVec,
    pub health_success: IntCounter,
    pub health_failures: IntCounter,
    pub wal_fsync: Histogram,
    pub backend_commit: Histogram,
    peer_rtt: HistogramVec,
    peer_sent: IntCounterVec,
    peer_received: IntCounterVec,
    peer_sent_failures: IntCounterVec,
    pub client_received: IntCounter,
    pub client_sent: IntCounter,
    /// The counters of every gRPC method of etcd 3.4, by request path, made once.
    grpc_calls: HashMap<String, GrpcCounters>,
}

/// This process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

fn register<M: Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique constants");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(
        registry,
        IntGauge::new(name, help).expect("a valid metric name"),
    )
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(
        registry,
        IntCounter::new(name, help).expect("a valid metric name"),
    )
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric name"),
    )
}

/// etcd's buckets: `count` doubling from `start` seconds.
fn histogram_opts(name: &str, help: &str, start: f64, count: usize) -> HistogramOpts {
    HistogramOpts::new(name, help)
        .buckets(exponential_buckets(start, 2.0, count).expect("valid buckets"))
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let r = &registry;
        // process_open_fds and process_max_fds, which etcd's alert rules read.
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("process metric names are unique");
        let metrics = Metrics {
            has_leader: gauge(r, "etcd_server_has_leader", "Whether or not a leader exists. 1 is existence, 0 is not."),
            is_leader: gauge(r, "etcd_server_is_leader", "Whether or not this member is a leader. 1 if is, 0 otherwise."),
            leader_changes: counter(r, "etcd_server_leader_changes_seen_total", "The number of leader changes seen."),
            proposals_committed: gauge(r, "etcd_server_proposals_committed_total", "The total number of consensus proposals committed."),
            proposals_applied: gauge(r, "etcd_server_proposals_applied_total", "The total number of consensus proposals applied."),
            proposals_pending: gauge(r, "etcd_server_proposals_pending", "The current number of pending proposals to commit."),
            proposals_failed: counter(r, "etcd_server_proposals_failed_total", "The total number of failed proposals seen."),
            db_size: gauge(r, "etcd_mvcc_db_total_size_in_bytes", "Total size of the underlying database physically allocated in bytes."),
            debugging_db_size: gauge(r, "etcd_debugging_mvcc_db_total_size_in_bytes", "Total size of the underlying database physically allocated in bytes."),
            db_size_in_use: gauge(r, "etcd_mvcc_db_total_size_in_use_in_bytes", "Total size of the underlying database logically in use in bytes."),
            keys: gauge(r, "etcd_debugging_mvcc_keys_total", "Total number of keys."),
            quota_bytes: gauge(r, "etcd_server_quota_backend_bytes", "Current backend storage quota size in bytes."),
            server_version: register(
                r,
                IntGaugeVec::new(
                    Opts::new("etcd_server_version", "Which version is running. 1 for 'server_version' label with current version."),
                    &["server_version"],
                )
                .expect("a valid metric name"),
            ),
            health_success: counter(r, "etcd_server_health_success", "The total number of successful health checks"),
            health_failures: counter(r, "etcd_server_health_failures", "The total number of failed health checks"),
            wal_fsync: register(
                r,
                Histogram::with_opts(histogram_opts(
                    "etcd_disk_wal_fsync_duration_seconds",
                    "The latency distributions of fsync called by WAL.",
                    0.001,
                    14,
                ))
                .expect("a valid metric name"),
            ),
            backend_commit: register(
                r,
                Histogram::with_opts(histogram_opts(
                    "etcd_disk_backend_commit_duration_seconds",
                    "The latency distributions of commit called by backend.",
                    0.001,
                    14,
                ))
                .expect("a valid metric name"),
            ),
            peer_rtt: register(
                r,
                HistogramVec::new(
                    histogram_opts(
                        "etcd_network_peer_round_trip_time_seconds",
                        "Round-Trip-Time histogram between peers",
                        0.0001,
                        16,
                    ),
                    &["To"],
                )
                .expect("a valid metric name"),
            ),
            peer_sent: counter_vec(r, "etcd_network_peer_sent_bytes_total", "The total number of bytes sent to peers.", &["To"]),
            peer_received: counter_vec(r, "etcd_network_peer_received_bytes_total", "The total number of bytes received from peers.", &["From"]),
            peer_sent_failures: counter_vec(r, "etcd_network_peer_sent_failures_total", "The total number of send failures from peers.", &["To"]),
            client_received: counter(r, "etcd_network_client_grpc_received_bytes_total", "The total number of bytes received from grpc clients."),
            client_sent: counter(r, "etcd_network_client_grpc_sent_bytes_total", "The total number of bytes sent to grpc clients."),
            grpc_calls: grpc_calls(r),
            registry,
        };
        metrics
            .server_version
            .with_label_values(&[crate::api::VERSION])
            .set(1);
        metrics
    }

    /// The exposition text of every metric.
    pub fn render(&self) -> String {
        let mut text = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut text) {
            tracing::warn!("encoding metrics: {e}");
        }
        String::from_utf8_lossy(&text).into_owned()
    }

    /// The counters of traffic with peer `member` (looked up once, then updated lock-free).
    pub fn peer(&self, member: u64) -> PeerMetrics {
        let id = format!("{member:x}");
        PeerMetrics {
            round_trip: self.peer_rtt.with_label_values(&[&id]),
            sent: self.peer_sent.with_label_values(&[&id]),
            received: self.peer_received.with_label_values(&[&id]),
            send_failures: self.peer_sent_failures.with_label_values(&[&id]),
        }
    }

    /// The counters of the gRPC method at `path` (`/etcdserverpb.KV/Range`), if it is one of
    /// etcd 3.4's.
    pub fn grpc_call(&self, path: &str) -> Option<&GrpcCounters> {
        self.grpc_calls.get(path)
    }
}

/// The traffic with one peer.
#[derive(Clone)]
pub struct PeerMetrics {
    pub round_trip: Histogram,
    pub sent: IntCounter,
    pub received: IntCounter,
    pub send_failures: IntCounter,
}

/// etcd 3.4's gRPC methods by service, as go-grpc-prometheus labels them.
const GRPC_METHODS: &[(&str, &[&str])] = &[
    (
        "etcdserverpb.KV",
        &["Range", "Put", "DeleteRange", "Txn", "Compact"],
    ),
    ("etcdserverpb.Watch", &["Watch"]),
    (
        "etcdserverpb.Lease",
        &[
            "LeaseGrant",
            "LeaseRevoke",
            "LeaseKeepAlive",
            "LeaseTimeToLive",
            "LeaseLeases",
        ],
    ),
    (
        "etcdserverpb.Cluster",
        &[
            "MemberAdd",
            "MemberRemove",
            "MemberUpdate",
            "MemberList",
            "MemberPromote",
        ],
    ),
    (
        "etcdserverpb.Maintenance",
        &[
            "Alarm",
            "Status",
            "Defragment",
            "Hash",
            "HashKV",
            "Snapshot",
            "MoveLeader",
        ],
    ),
    (
        "etcdserverpb.Auth",
        &[
            "AuthEnable",
            "AuthDisable",
            "Authenticate",
            "UserAdd",
            "UserGet",
            "UserList",
            "UserDelete",
            "UserChangePassword",
            "UserGrantRole",
            "UserRevokeRole",
            "RoleAdd",
            "RoleGet",
            "RoleList",
            "RoleDelete",
            "RoleGrantPermission",
            "RoleRevokePermission",
        ],
    ),
];

/// Every gRPC status code, in the order of their numbers.
const GRPC_CODES: [tonic::Code; 17] = {
    use tonic::Code::*;
    [
        Ok,
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    ]
};

/// One gRPC method's counters: started, and handled by status code.
#[derive(Debug)]
pub struct GrpcCounters {
    started: IntCounter,
    handled: Vec<IntCounter>,
}

impl GrpcCounters {
    pub fn started(&self) {
        self.started.inc();
    }

    /// The call ended with `code`.
    pub fn handled(&self, code: tonic::Code) {
        if let Some(counter) = self.handled.get(code as usize) {
            counter.inc();
        }
    }
}

/// The counters of every method, every code at 0 from the start (as go-grpc-prometheus's
/// `Register` makes them).
fn grpc_calls(registry: &Registry) -> HashMap<String, GrpcCounters> {
    let started = counter_vec(
        registry,
        "grpc_server_started_total",
        "Total number of RPCs started on the server.",
        &["grpc_type", "grpc_service", "grpc_method"],
    );
    let handled = counter_vec(
        registry,
        "grpc_server_handled_total",
        "Total number of RPCs completed on the server, regardless of success or failure.",
        &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
    );
    let mut calls = HashMap::new();
    for (service, methods) in GRPC_METHODS {
        for method in *methods {
            let kind = match *method {
                "Watch" | "LeaseKeepAlive" => "bidi_stream",
                "Snapshot" => "server_stream",
                _ => "unary",
            };
            let counters = GrpcCounters {
                started: started.with_label_values(&[kind, service, method]),
                handled: GRPC_CODES
                    .iter()
                    .map(|code| {
                        handled.with_label_values(&[kind, service, method, grpc_code_name(*code)])
                    })
                    .collect(),
            };
            calls.insert(format!("/{service}/{method}"), counters);
        }
    }
    calls
}

/// A gRPC status code's name, as grpc-go prints it.
pub fn grpc_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_have_etcds_buckets_and_names_render_with_their_types() {
        let m = metrics();
        m.wal_fsync.observe(0.003);
        m.peer(0xabc).round_trip.observe(0.0002);
        let text = m.render();
        assert!(text.contains("# TYPE etcd_disk_wal_fsync_duration_seconds histogram"));
        assert!(text.contains("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.001\"}"));
        assert!(text.contains("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"8.192\"}"));
        assert!(text.contains(
            "etcd_network_peer_round_trip_time_seconds_bucket{To=\"abc\",le=\"0.0001\"}"
        ));
        assert!(text.contains("# TYPE etcd_server_proposals_committed_total gauge"));
        assert!(text.contains("etcd_server_version{server_version=\"3.4.0\"} 1"));
    }

    #[test]
    fn every_etcd_method_is_counted_by_code_from_the_start() {
        let m = metrics();
        let watch = m.grpc_call("/etcdserverpb.Watch/Watch").expect("Watch");
        watch.started();
        watch.handled(tonic::Code::Cancelled);
        assert!(m.grpc_call("/metrics").is_none());
        let text = m.render();
        assert!(text.contains(
            "grpc_server_handled_total{grpc_code=\"Canceled\",grpc_method=\"Watch\",\
             grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"} 1"
        ));
        assert!(text.contains(
            "grpc_server_handled_total{grpc_code=\"Unavailable\",grpc_method=\"Put\",\
             grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 0"
        ));
    }
}
