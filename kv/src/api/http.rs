//! The plain HTTP endpoints etcd serves beside gRPC, on the client URLs and on
//! `--listen-metrics-urls`: `/metrics` (Prometheus text, [`crate::metrics`]), `/health` (etcd
//! 3.4's JSON and checks) and, on the client URLs only (as etcd), `/version`.
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use super::VERSION;
use crate::member::Member;
use crate::metrics::metrics;

/// How long `/health` waits for a linearizable read (etcd's one second).
const HEALTH_READ_TIMEOUT: Duration = Duration::from_secs(1);
/// The cluster version `/version` reports: the API level every member speaks.
const CLUSTER_VERSION: &str = "3.4.0";

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoints {
    /// A client URL: `/metrics`, `/health` and `/version`.
    Client,
    /// A `--listen-metrics-urls` URL: `/metrics` and `/health`.
    Metrics,
}

/// The endpoints as routes, to sit beside the gRPC services.
pub fn routes(member: Arc<Member>, endpoints: Endpoints) -> Router {
    let scraped = member.clone();
    let router = Router::new()
        .route(
            "/metrics",
            get(move || std::future::ready(scrape(&scraped))),
        )
        .route(
            "/health",
            get(move || {
                let member = member.clone();
                async move { health(&member).await }
            }),
        );
    match endpoints {
        Endpoints::Client => router.route("/version", get(|| std::future::ready(version()))),
        Endpoints::Metrics => router,
    }
}

/// Sets the gauges of the member's state, then renders every metric.
fn scrape(member: &Member) -> impl IntoResponse + use<> {
    let m = metrics();
    {
        let raft = member.raft.metrics();
        let raft = raft.borrow();
        m.has_leader.set(i64::from(raft.current_leader.is_some()));
        m.is_leader
            .set(i64::from(raft.current_leader == Some(member.id)));
        let applied = raft.last_applied.map(|l| l.index).unwrap_or_default();
        m.proposals_applied.set(applied as i64);
    }
    let size = &member.shared.db_size;
    m.db_size.set(size.size() as i64);
    m.debugging_db_size.set(size.size() as i64);
    m.db_size_in_use.set(size.in_use() as i64);
    m.keys.set(member.shared.read().mvcc.key_count() as i64);
    m.quota_bytes.set(member.config.quota.bytes() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m.render(),
    )
}

/// etcd 3.4's health check: no alarm, a leader, and a linearizable read within a second.
async fn health(member: &Member) -> impl IntoResponse + use<> {
    let healthy = member.shared.read().alarms.is_empty()
        && member.raft.metrics().borrow().current_leader.is_some()
        && matches!(
            tokio::time::timeout(HEALTH_READ_TIMEOUT, member.read_barrier()).await,
            Ok(Ok(()))
        );
    let m = metrics();
    let (status, text) = if healthy {
        m.health_success.inc();
        (StatusCode::OK, r#"{"health":"true"}"#)
    } else {
        m.health_failures.inc();
        // etcd answers an unhealthy member with Go's `http.Error`, which ends with a newline.
        (StatusCode::SERVICE_UNAVAILABLE, "{\"health\":\"false\"}\n")
    };
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
}

/// etcd's `/version`: the server's version (what Status reports) and the cluster's.
fn version() -> impl IntoResponse {
    /// etcd's `version.Versions`, its fields in etcd's order.
    #[derive(serde::Serialize)]
    struct Versions {
        etcdserver: &'static str,
        etcdcluster: &'static str,
    }
    let body = serde_json::to_string(&Versions {
        etcdserver: VERSION,
        etcdcluster: CLUSTER_VERSION,
    })
    .unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body)
}
