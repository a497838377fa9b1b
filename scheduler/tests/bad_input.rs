//! Bad input: invalid unit files, unknown units, impossible constraints, an unreachable store.
//! Clear errors, nothing half-submitted, daemons keep running.

mod common;

use std::time::Duration;

use common::*;
use shoal_harness::{StoreCluster, StoreKind, free_port, wait_until};
use shoal_scheduler::{
    cli::{BlockArgs, FleetctlCommand},
    fleetctl,
    store::DEFAULT_PREFIX,
};

fn block(attempts: u32) -> BlockArgs {
    BlockArgs {
        no_block: false,
        block_attempts: attempts,
    }
}

async fn fleetctl(endpoint: &str, command: FleetctlCommand) -> anyhow::Result<()> {
    fleetctl::run(
        &[endpoint.to_string()],
        DEFAULT_PREFIX,
        Duration::from_secs(2),
        command,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_unit_in_a_batch_submits_nothing() {
    let etcd = etcd();
    let dir = tempfile::tempdir().expect("temp dir");
    let good = dir.path().join("good.service");
    let bad = dir.path().join("bad.service");
    let impossible = dir.path().join("combo.service");
    std::fs::write(&good, sleeper("")).expect("write");
    std::fs::write(
        &bad,
        "[Service]\nExecStart=/bin/true\n[X-Fleet]\nMachineOff=x.service\n",
    )
    .expect("write");
    std::fs::write(
        &impossible,
        "[X-Fleet]\nGlobal=true\nMachineOf=good.service\n",
    )
    .expect("write");
    for (broken, line) in [(&bad, ":4:"), (&impossible, ":2:")] {
        let units = vec![good.display().to_string(), broken.display().to_string()];
        let err = fleetctl(
            &etcd.client_url(0),
            FleetctlCommand::Submit {
                units,
                replace: false,
            },
        )
        .await
        .unwrap_err();
        let message = format!("{err:#}");
        assert!(
            message.contains(&broken.display().to_string()),
            "error names the file: {message}"
        );
        assert!(message.contains(line), "error names the line: {message}");
    }
    let registry = registry(&etcd.client_url(0)).await;
    assert!(
        registry.jobs().await.expect("jobs").is_empty(),
        "nothing half-submitted"
    );
    let syntax = dir.path().join("syntax.service");
    std::fs::write(&syntax, "[Service]\nExecStart /bin/true\n").expect("write");
    let err = fleetctl(
        &etcd.client_url(0),
        FleetctlCommand::Submit {
            units: vec![syntax.display().to_string()],
            replace: false,
        },
    )
    .await
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("syntax.service:2: missing '='"),
        "{err:#}"
    );
    let badname = dir.path().join("noext");
    std::fs::write(&badname, sleeper("")).expect("write");
    let err = fleetctl(
        &etcd.client_url(0),
        FleetctlCommand::Submit {
            units: vec![badname.display().to_string()],
            replace: false,
        },
    )
    .await
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("invalid unit name \"noext\""),
        "{err:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_units_are_clear_errors() {
    let etcd = etcd();
    for command in [
        FleetctlCommand::Start {
            units: vec!["nope.service".into()],
            replace: false,
            block: block(1),
        },
        FleetctlCommand::Stop {
            units: vec!["nope.service".into()],
            block: block(1),
        },
        FleetctlCommand::Cat {
            unit: "nope.service".into(),
        },
        FleetctlCommand::Status {
            units: vec!["nope.service".into()],
            lines: 10,
        },
        FleetctlCommand::Journal {
            unit: "nope.service".into(),
            lines: 10,
            follow: false,
        },
    ] {
        let label = format!("{command:?}");
        let err = fleetctl(&etcd.client_url(0), command).await.unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("nope.service"), "{label}: {message}");
        assert!(
            message.contains("not found") || message.contains("does not exist"),
            "{label}: {message}"
        );
    }
    // A template instance with no template anywhere.
    let err = fleetctl(
        &etcd.client_url(0),
        FleetctlCommand::Start {
            units: vec!["ghost@1.service".into()],
            replace: false,
            block: block(1),
        },
    )
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains("ghost@.service"), "{err:#}");
}

against_both_stores!(impossible_constraints_are_reported_as_unschedulable);

async fn impossible_constraints_are_reported_as_unschedulable(backend: StoreKind) {
    let cluster = Cluster::start(
        backend,
        &[&[("compute", "web")], &[("compute", "web")]],
        Duration::from_secs(5),
    )
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let gpu = dir.path().join("gpu.service");
    std::fs::write(&gpu, sleeper("MachineMetadata=compute=gpu")).expect("write");
    let err = fleetctl(
        cluster.endpoint(),
        FleetctlCommand::Start {
            units: vec![gpu.display().to_string()],
            replace: false,
            block: block(40),
        },
    )
    .await
    .unwrap_err();
    let message = format!("{err:#}");
    assert!(
        message.contains("gpu.service cannot be scheduled"),
        "{message}"
    );
    assert!(
        message.contains("2 MachineMetadata does not match"),
        "{message}"
    );
    let registry = cluster.registry().await;
    let job = job(&registry, "gpu.service").await;
    assert!(job.unschedulable.is_some() && job.target.is_none());
    // The cluster keeps working.
    let ok = dir.path().join("ok.service");
    std::fs::write(&ok, sleeper("MachineMetadata=compute=web")).expect("write");
    fleetctl(
        cluster.endpoint(),
        FleetctlCommand::Start {
            units: vec![ok.display().to_string()],
            replace: false,
            block: block(40),
        },
    )
    .await
    .expect("schedulable unit starts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_store_fails_fast_and_fleetd_waits_for_it() {
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let err = fleetctl(
        &endpoint,
        FleetctlCommand::ListMachines {
            table: table(),
            long: false,
        },
    )
    .await
    .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        format!("{err:#}").contains("cannot reach the fleet store"),
        "{err:#}"
    );

    let node = Node::start(&endpoint, 0, &[], Duration::from_secs(5));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _etcd = StoreCluster::builder(StoreKind::Etcd, 1)
        .client_port(port)
        .start();
    let registry = registry(&endpoint).await;
    wait_until(
        Duration::from_secs(20),
        "fleetd to register once the store is up",
        || async { registry.machines().await.map(|m| m.len()).unwrap_or(0) == 1 },
    )
    .await;
    drop(node);
}

fn table() -> shoal_scheduler::cli::TableArgs {
    shoal_scheduler::cli::TableArgs {
        full: false,
        no_legend: false,
        fields: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_fails_over_past_an_unreachable_endpoint() {
    let etcd = etcd();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let endpoints = [dead.clone(), etcd.client_url(0)];
    let timeout = Duration::from_secs(2);
    let store = shoal_scheduler::store::Store::connect(&endpoints, DEFAULT_PREFIX, timeout)
        .await
        .expect("the live endpoint is used");
    for round in 0..10 {
        let value = format!("ok{round}");
        store
            .client()
            .put("/failover-probe", value.clone(), None)
            .await
            .expect("every write goes to the live endpoint");
        assert_eq!(
            store.get("/failover-probe").await.expect("read back"),
            Some(value)
        );
    }
    let list = FleetctlCommand::ListMachines {
        table: table(),
        long: false,
    };
    fleetctl::run(&endpoints, DEFAULT_PREFIX, timeout, list)
        .await
        .expect("fleetctl uses the live endpoint");
    let only_dead = fleetctl(&dead, FleetctlCommand::ListUnitFiles { table: table() }).await;
    assert!(only_dead.is_err(), "a dead endpoint alone is an error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_whose_endpoint_died_reconnects_to_another() {
    let first = etcd();
    let second = etcd();
    let endpoints = [first.client_url(0), second.client_url(0)];
    let timeout = Duration::from_secs(2);
    let store = shoal_scheduler::store::Store::connect(&endpoints, DEFAULT_PREFIX, timeout)
        .await
        .expect("the first endpoint answers");
    store
        .client()
        .put("/which", "first", None)
        .await
        .expect("a write to the first endpoint");
    drop(first);
    assert!(
        store.get("/which").await.is_err(),
        "the first endpoint is gone"
    );
    let store = store
        .reconnected()
        .await
        .expect("the second endpoint answers");
    assert_eq!(
        store.get("/which").await.expect("a read from the second"),
        None,
        "the second endpoint is another store"
    );
}
