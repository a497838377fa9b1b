//! The agent's HTTP endpoint: `/healthz` (the process serves), `/readyz` (every component of
//! the node is ready: store quorum, leases known, machine registered) and `/metrics`
//! (Prometheus text format).
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use tokio_util::sync::CancellationToken;

/// Readiness of the node's components, each reported by the component itself.
#[derive(Debug, Default)]
pub struct Readiness {
    checks: Mutex<BTreeMap<&'static str, Check>>,
}

#[derive(Debug, Clone)]
struct Check {
    ready: bool,
    detail: String,
}

impl Readiness {
    /// Declares a check that is not ready yet.
    pub fn declare(&self, name: &'static str, detail: impl Into<String>) {
        self.set(name, false, detail);
    }

    pub fn set(&self, name: &'static str, ready: bool, detail: impl Into<String>) {
        let mut checks = self
            .checks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        checks.insert(
            name,
            Check {
                ready,
                detail: detail.into(),
            },
        );
    }

    /// Whether every declared check is ready, and one line per check.
    pub fn report(&self) -> (bool, String) {
        let checks = self
            .checks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let all_ready = !checks.is_empty() && checks.values().all(|check| check.ready);
        let lines = checks
            .iter()
            .map(|(name, check)| {
                let mark = if check.ready { "ok" } else { "waiting" };
                format!("{name}: {mark} {}\n", check.detail)
            })
            .collect();
        (all_ready, lines)
    }
}

/// Gauges set by whoever measures them (the readiness probes, the dataplane reader) and
/// rendered on every scrape.
#[derive(Debug, Default)]
pub struct Gauges {
    values: Mutex<BTreeMap<&'static str, (&'static str, f64)>>,
}

impl Gauges {
    pub fn set(&self, name: &'static str, help: &'static str, value: f64) {
        let mut values = self
            .values
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        values.insert(name, (help, value));
    }
}

impl MetricsSource for Gauges {
    fn render(&self, out: &mut String) {
        let values = self
            .values
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (name, (help, value)) in values.iter() {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
            ));
        }
    }
}

/// Something that adds samples to `/metrics` (the dataplane's counters, the store's stats...).
pub trait MetricsSource: Send + Sync {
    /// Appends samples in Prometheus text format.
    fn render(&self, out: &mut String);
}

#[derive(Clone)]
struct Shared {
    readiness: Arc<Readiness>,
    sources: Arc<Vec<Arc<dyn MetricsSource>>>,
}

/// Serves the endpoint on `listen` until `shutdown` is cancelled.
pub async fn serve(
    listen: SocketAddr,
    readiness: Arc<Readiness>,
    sources: Vec<Arc<dyn MetricsSource>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let shared = Shared {
        readiness,
        sources: Arc::new(sources),
    };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|err| anyhow::anyhow!("binding the health endpoint to {listen}: {err}"))?;
    tracing::info!(%listen, "health endpoint serving /healthz /readyz /metrics");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

async fn readyz(State(shared): State<Shared>) -> (StatusCode, String) {
    let (ready, lines) = shared.readiness.report();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, lines)
}

async fn metrics(State(shared): State<Shared>) -> String {
    let mut out = String::new();
    let (ready, _) = shared.readiness.report();
    out.push_str("# HELP shoal_node_ready Whether every component of the node is ready.\n");
    out.push_str("# TYPE shoal_node_ready gauge\n");
    out.push_str(&format!("shoal_node_ready {}\n", u8::from(ready)));
    for source in shared.sources.iter() {
        source.render(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_render_in_prometheus_text_format() {
        let gauges = Gauges::default();
        gauges.set(
            "shoal_store_up",
            "Whether a linearizable read succeeds.",
            1.0,
        );
        let mut out = String::new();
        gauges.render(&mut out);
        assert_eq!(
            out,
            "# HELP shoal_store_up Whether a linearizable read succeeds.\n# TYPE shoal_store_up gauge\nshoal_store_up 1\n"
        );
    }

    #[test]
    fn ready_only_when_every_declared_check_is() {
        let readiness = Readiness::default();
        assert!(!readiness.report().0, "nothing declared is not ready");
        readiness.declare("store", "no quorum");
        readiness.set("fleet", true, "machine registered");
        let (ready, lines) = readiness.report();
        assert!(!ready);
        assert!(lines.contains("store: waiting no quorum"), "{lines}");
        readiness.set("store", true, "quorum of 3");
        assert!(readiness.report().0);
    }

    #[tokio::test]
    async fn the_endpoint_answers_health_readiness_and_metrics() {
        let readiness = Arc::new(Readiness::default());
        readiness.declare("store", "no quorum");
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        let listen = probe.local_addr().expect("addr");
        drop(probe);
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            listen,
            readiness.clone(),
            Vec::new(),
            shutdown.clone(),
        ));
        let get = |path: &'static str| async move {
            for _ in 0..50 {
                if let Ok(reply) = http_get(listen, path).await {
                    return reply;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            panic!("no answer on {path}");
        };
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
        readiness.set("store", true, "quorum");
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/metrics").await.contains("shoal_node_ready 1"));
        shutdown.cancel();
        server.await.expect("join").expect("served");
    }

    async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await?;
        Ok(reply)
    }
}
