//! `shoal agent`: the daemon of one node. It reads the node's YAML ([`config`]) or a CoreOS
//! `#cloud-config` ([`cloud_config`]: also files, users, keys, host name, units), resolves what
//! the node runs ([`plan`]), then runs together: a store member (masters) or nothing (workers
//! use the masters), the overlay control plane and dataplane, fleet's agent and engine
//! candidate, and the health endpoint ([`health`], [`readiness`]).
//! With a `pki` directory the store speaks TLS, each component is its own store user, and the
//! first master sets up the users and turns on auth ([`store_users`]).
//!
//! Shutdown (SIGINT, SIGTERM) stops the components; the overlay leaves its routes, lease and
//! pinned dataplane in place so running containers keep their network.
pub mod cloud_config;
pub mod config;
pub mod dataplane_metrics;
pub mod health;
pub mod plan;
pub mod readiness;
pub mod store_users;

use std::{path::PathBuf, sync::Arc};

use anyhow::{Context, Result};
use clap::Args;
use shoal_store_client::{
    StoreClient, StoreConfig,
    etcd_client::{Compare, CompareOp, Txn, TxnOp},
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use self::{
    cloud_config::CloudConfigNode,
    config::{AgentConfig, NodeConfig},
    health::{Gauges, Readiness},
    plan::Plan,
    readiness::{FleetProbe, OverlayProbe, Probes},
};

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The node's config: the agent's YAML, or a CoreOS `#cloud-config` (first line).
    #[arg(long, default_value = "/etc/shoal/agent.yaml")]
    pub config: PathBuf,
    /// Only validate the config, print what the node would run (for a cloud-config: what
    /// each key maps to, and the keys not honoured), and exit.
    #[arg(long)]
    pub check: bool,
}

pub async fn run(args: AgentArgs) -> Result<()> {
    let (config, cloud) = match NodeConfig::load(&args.config)? {
        NodeConfig::Agent(config) => (*config, None),
        NodeConfig::CloudConfig(node) => (node.agent.clone(), Some(*node)),
    };
    let plan = Plan::for_node(&config)?;
    if args.check {
        match &cloud {
            Some(cloud) => print!("{}", check_report(&args.config, cloud, &plan)),
            None => println!("{}: valid\n{plan:#?}", args.config.display()),
        }
        return Ok(());
    }
    if let Some(warning) = cloud
        .as_ref()
        .and_then(CloudConfigNode::not_honoured_warning)
    {
        tracing::warn!("{warning}");
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    if let Some(cloud) = &cloud {
        cloud_config::provision::provision(&cloud.setup)?;
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let units = cloud.map(|cloud| cloud.setup.units).unwrap_or_default();
    run_node_with_units(config, plan, units, shutdown).await
}

/// `--check` for a cloud-config: each key and what it maps to, the keys not honoured, and
/// what the node runs.
fn check_report(path: &std::path::Path, cloud: &CloudConfigNode, plan: &Plan) -> String {
    use std::fmt::Write as _;
    let mut out = format!("{}: valid #cloud-config\n", path.display());
    let width = cloud.mapped.iter().map(|m| m.key.len()).max().unwrap_or(0);
    for mapped in &cloud.mapped {
        let _ = writeln!(out, "  {:width$}  -> {}", mapped.key, mapped.effect);
    }
    match cloud.not_honoured_warning() {
        Some(warning) => {
            let _ = writeln!(out, "warning: {warning}");
        }
        None => out.push_str("every key is honoured\n"),
    }
    let mut runs = Vec::new();
    if let Some(member) = &plan.member {
        runs.push(format!(
            "a store member ({}) in place of etcd2.service",
            member.config.initial_advertise_peer_urls.join(",")
        ));
    }
    if plan.overlay.is_some() {
        runs.push("the overlay in place of flanneld.service".to_string());
    }
    if plan.fleet.is_some() {
        runs.push("fleet in place of fleet.service".to_string());
    }
    let systemd = shoal_scheduler::agent::runtime::systemd_is_init();
    let runtime = if systemd {
        "systemd (PID 1 here)"
    } else {
        "the built-in supervisor (systemd is not PID 1 here)"
    };
    let unsupervised: Vec<&str> = cloud
        .setup
        .units
        .iter()
        .map(|unit| unit.name.as_str())
        .filter(|name| !systemd && !name.ends_with(".service"))
        .collect();
    if !unsupervised.is_empty() {
        let _ = writeln!(
            out,
            "warning: the built-in supervisor runs services only: {} will not run here",
            unsupervised.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "the agent runs: {}; store endpoints {}; {} unit(s) through {runtime}",
        if runs.is_empty() {
            "no component".to_string()
        } else {
            runs.join(", ")
        },
        plan.store.endpoints.join(","),
        cloud.setup.units.len(),
    );
    out
}

/// Runs every component of the node until `shutdown`, and a cloud-config's `units` once the
/// components are started.
pub async fn run_node_with_units(
    config: AgentConfig,
    plan: Plan,
    units: Vec<cloud_config::mapping::UnitAction>,
    shutdown: CancellationToken,
) -> Result<()> {
    if units.is_empty() {
        return run_node(config, plan, shutdown).await;
    }
    let public_ip = config.public_ip.map(|ip| ip.to_string());
    let route_ip = shoal_scheduler::agent::identity::detect_public_ip(&plan.store.endpoints);
    let environment =
        shoal_scheduler::agent::identity::coreos_environment(public_ip.as_deref(), route_ip);
    let data_dir = config.data_dir.clone();
    let stop = shutdown.clone();
    let node = async move {
        let outcome = run_node(config, plan, stop.clone()).await;
        stop.cancel(); // also when it failed before starting: the units' task ends with it
        outcome
    };
    let units = async move {
        match cloud_config::units::run(&units, &data_dir, environment).await {
            // The supervisor lives as long as the agent: its units keep running after.
            Ok(supervisor) => {
                shutdown.cancelled().await;
                drop(supervisor);
            }
            // The node's components keep running: say so now, not at shutdown.
            Err(err) => tracing::error!("running the cloud-config's units: {err:#}"),
        }
    };
    tokio::join!(node, units).0
}

/// Runs every component of the node until `shutdown` is cancelled or one of them fails.
pub async fn run_node(config: AgentConfig, plan: Plan, shutdown: CancellationToken) -> Result<()> {
    let member = match &plan.member {
        Some(member) => Some(start_member(member, plan.admin.as_ref()).await?),
        None => None,
    };
    let readiness = Arc::new(Readiness::default());
    let gauges = Arc::new(Gauges::default());
    let probes = probes(&config, &plan)?;
    probes.declare(&readiness);

    let mut tasks: JoinSet<(&'static str, Result<()>)> = JoinSet::new();
    if let Some(running) = &member {
        // A store member whose Raft stopped (a failing disk) ends the agent, as etcd exits.
        let (store, stop) = (running.member.clone(), shutdown.clone());
        tasks.spawn(async move {
            tokio::select! {
                () = stop.cancelled() => ("store", Ok(())),
                why = store.raft_stopped() => ("store", Err(anyhow::anyhow!("its Raft stopped: {why}"))),
            }
        });
    }
    tasks.spawn(named(
        "health",
        health::serve(
            config.health.listen,
            readiness.clone(),
            metrics_sources(&plan, gauges.clone()),
            shutdown.clone(),
        ),
    ));
    let stop = shutdown.clone();
    tasks.spawn(async move {
        probes.run(readiness, gauges, stop).await;
        ("readiness", Ok(()))
    });
    if let Some(network_config) = plan.network_config.clone() {
        tasks.spawn(named(
            "network-config",
            write_network_config_once(network_config),
        ));
    }
    if let (Some(users), Some(admin)) = (plan.store_users.clone(), plan.admin.clone()) {
        tasks.spawn(named("store-users", store_users::set_up_once(admin, users)));
    }
    if let Some(overlay) = plan.overlay.clone() {
        let stop = shutdown.clone();
        tasks.spawn(named(
            "overlay",
            restarting("overlay", shutdown.clone(), move || {
                let (overlay, stop) = (overlay.clone(), stop.clone());
                async move { shoal_flannel::Overlay::run(overlay, stop.cancelled_owned()).await }
            }),
        ));
    }
    if let Some(fleet) = plan.fleet.clone() {
        let stop = shutdown.clone();
        tasks.spawn(named(
            "fleet",
            restarting("fleet", shutdown.clone(), move || {
                let (fleet, stop) = (fleet.clone(), watch_of(stop.clone()));
                async move {
                    shoal_scheduler::fleetd::Fleetd::run(fleet, stop)
                        .await
                        .map_err(anyhow::Error::from)
                }
            }),
        ));
    }
    tracing::info!(node = %config.name, endpoints = ?plan.store.endpoints, "agent running");

    let outcome = supervise(&mut tasks, &shutdown).await;
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    if let Some(member) = member {
        member.shutdown().await;
    }
    tracing::info!("agent stopped; the overlay stays in place for running containers");
    outcome
}

/// Waits for shutdown, or for a component to end on its own (which is an error, or fine for
/// one-shot tasks such as writing the network config).
async fn supervise(
    tasks: &mut JoinSet<(&'static str, Result<()>)>,
    shutdown: &CancellationToken,
) -> Result<()> {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            joined = tasks.join_next() => match joined {
                None => return Ok(()),
                Some(Ok(("network-config" | "store-users", Ok(())))) => continue,
                Some(Ok((name, Ok(())))) if shutdown.is_cancelled() => tracing::debug!(name, "stopped"),
                Some(Ok((name, Ok(())))) => anyhow::bail!("{name} stopped unexpectedly"),
                Some(Ok((name, Err(err)))) => return Err(err.context(format!("{name} failed"))),
                Some(Err(err)) => return Err(anyhow::anyhow!("a component panicked: {err}")),
            },
        }
    }
}

/// Starts this node's store member; `admin` is how a joining member reaches the existing
/// ones (`MemberAdd` is the administrator's, as in etcd).
async fn start_member(
    member: &plan::MemberPlan,
    admin: Option<&StoreConfig>,
) -> Result<shoal_kv::member::RunningMember> {
    let mut config = member.config.clone();
    if let Some(join) = &member.join {
        let admin = admin.context("a joining member has no administrator's identity")?;
        let through = StoreConfig {
            endpoints: vec![join.clone()],
            ..admin.clone()
        };
        config.initial_cluster = join_cluster(&through, &config).await?;
    }
    let data_dir = config.data_dir.display().to_string();
    shoal_kv::member::Member::start(config)
        .await
        .with_context(|| format!("starting the store member (data dir {data_dir})"))
}

/// Joins a running cluster through `join` (any member's client URL): `MemberAdd` this node's
/// peer URLs, and return the cluster as the existing members report it. A member already
/// added (a restart) is found in the list instead.
async fn join_cluster(
    join: &StoreConfig,
    config: &shoal_kv::member::Config,
) -> Result<Vec<(String, Vec<String>)>> {
    let store = StoreClient::connect(join)
        .await
        .context("reaching the store to join it")?;
    let mut client = store.client();
    let listed = store.call("listing members", client.member_list()).await?;
    let known = listed
        .members()
        .iter()
        .any(|member| member.peer_urls() == config.initial_advertise_peer_urls.as_slice());
    if !known {
        add_member(&store, &config.initial_advertise_peer_urls).await?;
    }
    let members = store.call("listing members", client.member_list()).await?;
    Ok(members
        .members()
        .iter()
        .map(|member| {
            let name = if member.name().is_empty() {
                config.name.clone()
            } else {
                member.name().to_string()
            };
            (name, member.peer_urls().to_vec())
        })
        .collect())
}

/// How long a join waits out etcd's strict reconfiguration check (a member that joined just
/// before is not yet connected for 5 s, or not yet started).
const JOIN_PATIENCE: std::time::Duration = std::time::Duration::from_secs(120);

/// `MemberAdd` with this node's peer URLs, retried while the cluster refuses it only for now:
/// "unhealthy cluster" and "not enough started members" pass once the last member to join is
/// up, which is why several nodes joining at once must take turns.
async fn add_member(store: &StoreClient, peer_urls: &[String]) -> Result<()> {
    let deadline = std::time::Instant::now() + JOIN_PATIENCE;
    let mut delay = std::time::Duration::from_millis(500);
    loop {
        let mut client = store.client();
        let added = store
            .call(
                "adding this member",
                client.member_add(peer_urls.to_vec(), None),
            )
            .await;
        let err = match added {
            Ok(_) => return Ok(()),
            Err(err) => err,
        };
        let text = format!("{err:#}");
        let transient =
            text.contains("unhealthy cluster") || text.contains("not enough started members");
        if !transient || std::time::Instant::now() >= deadline {
            return Err(err.into());
        }
        tracing::info!("the cluster refuses this member for now, retrying: {text}");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(std::time::Duration::from_secs(5));
    }
}

/// Writes flannel's network config if the store has none yet (never overwrites).
async fn write_network_config_once(config: plan::NetworkConfig) -> Result<()> {
    let plan::NetworkConfig { key, json, store } = config;
    let mut delay = std::time::Duration::from_millis(200);
    loop {
        match try_write_network_config(&store, &key, &json).await {
            Ok(written) => {
                tracing::info!(%key, written, "network config in place");
                return Ok(());
            }
            Err(err) => {
                tracing::info!(%key, "store not ready for the network config yet: {err:#}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
}

async fn try_write_network_config(store: &StoreConfig, key: &str, json: &str) -> Result<bool> {
    let store = StoreClient::connect(store).await?;
    let txn = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key, json, None)]);
    let mut client = store.client();
    let reply = store
        .call("writing the network config", client.txn(txn))
        .await?;
    Ok(reply.succeeded())
}

/// What `/metrics` reports: the probes' gauges, and the dataplane's pinned counters.
fn metrics_sources(plan: &Plan, gauges: Arc<Gauges>) -> Vec<Arc<dyn health::MetricsSource>> {
    let mut sources: Vec<Arc<dyn health::MetricsSource>> = vec![gauges];
    if let Some(overlay) = &plan.overlay {
        sources.push(Arc::new(dataplane_metrics::DataplaneCounters {
            pin_root: overlay.dataplane_pin_root.clone(),
        }));
    }
    sources
}

fn probes(config: &AgentConfig, plan: &Plan) -> Result<Probes> {
    let fleet = match &plan.fleet {
        Some(fleet) => Some(FleetProbe {
            store: fleet.store_config(),
            prefix: fleet.etcd_key_prefix.clone(),
            machine_id: shoal_scheduler::agent::identity::machine_id(
                fleet.machine_id.as_deref(),
                &fleet.data_dir,
            )
            .context("finding this machine's ID")?,
        }),
        None => None,
    };
    Ok(Probes {
        store: plan.store.clone(),
        probe_key: plan.probe_key.clone(),
        overlay: plan.overlay.as_ref().map(|overlay| OverlayProbe {
            store: overlay.store.store_config(),
            prefix: overlay.store.prefix.clone(),
            public_ip: config.public_ip,
            subnet_file: overlay.subnet_file.clone(),
        }),
        fleet,
    })
}

/// Runs a component again, with a growing pause, whenever it stops before `shutdown`: a
/// component that lost the store (or its lease) comes back by itself instead of taking the
/// node down with it. Both the overlay and fleet resume their state on restart.
async fn restarting<F, Fut>(
    name: &'static str,
    shutdown: CancellationToken,
    mut start: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    const FIRST_PAUSE: std::time::Duration = std::time::Duration::from_millis(500);
    const LONGEST_PAUSE: std::time::Duration = std::time::Duration::from_secs(10);
    let mut pause = FIRST_PAUSE;
    loop {
        let started = tokio::time::Instant::now();
        let outcome = start().await;
        if shutdown.is_cancelled() {
            return Ok(());
        }
        match outcome {
            Ok(()) => tracing::warn!(
                component = name,
                "stopped by itself; restarting in {pause:?}"
            ),
            Err(err) => {
                tracing::warn!(component = name, "failed: {err:#}; restarting in {pause:?}")
            }
        }
        if started.elapsed() > LONGEST_PAUSE * 3 {
            pause = FIRST_PAUSE; // it ran fine for a while: this is a new problem
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(LONGEST_PAUSE);
    }
}

async fn named(
    name: &'static str,
    work: impl Future<Output = Result<()>>,
) -> (&'static str, Result<()>) {
    (name, work.await)
}

/// fleet's daemon takes its shutdown as a `watch` that turns true.
fn watch_of(token: CancellationToken) -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        token.cancelled().await;
        let _ = tx.send(true);
    });
    rx
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut terminate) = signal(SignalKind::terminate()) else {
        tracing::warn!("cannot listen for SIGTERM; stop the agent with SIGINT");
        let _ = tokio::signal::ctrl_c().await;
        shutdown.cancel();
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}
