//! fleet on 3+ in-process fleetd nodes against a real etcd 3.4.

mod common;

against_both_stores!(
    global_unit_runs_everywhere_including_later_joiners,
    metadata_places_web_on_web_racks_and_db_on_db_rack,
    conflicts_keep_instances_apart_and_extra_one_is_unschedulable,
    killed_node_units_move_within_ttl,
    killing_the_engine_node_moves_the_engine,
    restarted_agent_adopts_running_units,
    stop_unload_and_destroy_reach_the_agent,
    replaced_unit_restarts_with_new_contents,
    global_unit_skips_machines_with_conflicting_units,
);

use std::time::Duration;

use common::*;
use shoal_harness::{StoreKind, wait_until};
use shoal_scheduler::store::TargetState;

const TTL: Duration = Duration::from_secs(3);

async fn global_unit_runs_everywhere_including_later_joiners(backend: StoreKind) {
    let mut cluster = Cluster::start(backend, &[&[], &[], &[]], TTL).await;
    let registry = cluster.registry().await;
    start_units(&registry, &[("everywhere.service", sleeper("Global=true"))]).await;
    wait_until(
        Duration::from_secs(20),
        "global unit on 3 machines",
        || async { running_on(&registry, "everywhere.service").await.len() == 3 },
    )
    .await;
    let job = job(&registry, "everywhere.service").await;
    assert_eq!(
        job.target, None,
        "global units are not scheduled by the engine"
    );

    let endpoint = cluster.endpoint().to_string();
    cluster.nodes.push(Node::start(&endpoint, 3, &[], TTL));
    let newcomer = cluster.nodes[3].id.clone();
    wait_until(
        Duration::from_secs(20),
        "global unit on the new machine",
        || async {
            running_on(&registry, "everywhere.service")
                .await
                .contains(&newcomer)
        },
    )
    .await;
}

async fn metadata_places_web_on_web_racks_and_db_on_db_rack(backend: StoreKind) {
    let cluster = Cluster::start(
        backend,
        &[
            &[("rack", "rack1"), ("compute", "web")],
            &[("rack", "rack2"), ("compute", "web")],
            &[("rack", "rack3"), ("compute", "db")],
        ],
        TTL,
    )
    .await;
    let registry = cluster.registry().await;
    let web = sleeper("MachineMetadata=compute=web");
    let db = sleeper("MachineMetadata=compute=db");
    start_units(
        &registry,
        &[
            ("web@1.service", web.clone()),
            ("web@2.service", web.clone()),
            ("web@3.service", web.clone()),
            ("web@4.service", web),
            ("db.service", db),
        ],
    )
    .await;
    let web_nodes = [cluster.nodes[0].id.clone(), cluster.nodes[1].id.clone()];
    let db_node = cluster.nodes[2].id.clone();
    wait_until(Duration::from_secs(20), "all units running", || async {
        let mut all = true;
        for unit in [
            "web@1.service",
            "web@2.service",
            "web@3.service",
            "web@4.service",
            "db.service",
        ] {
            all &= running_on(&registry, unit).await.len() == 1;
        }
        all
    })
    .await;
    let mut per_web_node = [0, 0];
    for unit in [
        "web@1.service",
        "web@2.service",
        "web@3.service",
        "web@4.service",
    ] {
        let on = running_on(&registry, unit).await;
        let index = web_nodes.iter().position(|n| *n == on[0]);
        assert!(index.is_some(), "{unit} ran on {on:?}, not a web node");
        per_web_node[index.unwrap_or(0)] += 1;
    }
    assert_eq!(per_web_node, [2, 2], "least-loaded spreads web units");
    assert_eq!(running_on(&registry, "db.service").await, [db_node]);
}

async fn conflicts_keep_instances_apart_and_extra_one_is_unschedulable(backend: StoreKind) {
    let cluster = Cluster::start(backend, &[&[], &[], &[]], TTL).await;
    let registry = cluster.registry().await;
    let unit = sleeper("Conflicts=app@*.service");
    let names = [
        "app@1.service",
        "app@2.service",
        "app@3.service",
        "app@4.service",
    ];
    let units: Vec<(&str, String)> = names.iter().map(|n| (*n, unit.clone())).collect();
    start_units(&registry, &units).await;
    wait_until(Duration::from_secs(20), "3 instances running", || async {
        let mut running = 0;
        for name in names {
            running += running_on(&registry, name).await.len();
        }
        running == 3
    })
    .await;
    let mut machines = Vec::new();
    for name in names {
        machines.extend(running_on(&registry, name).await);
    }
    machines.sort();
    machines.dedup();
    assert_eq!(machines.len(), 3, "each instance on its own machine");
    let jobs = registry.jobs().await.expect("jobs");
    let unplaced: Vec<_> = jobs.values().filter(|j| j.target.is_none()).collect();
    assert_eq!(unplaced.len(), 1);
    let reason = unplaced[0].unschedulable.clone().unwrap_or_default();
    assert!(reason.contains("conflicts with app@"), "reason: {reason}");
}

async fn killed_node_units_move_within_ttl(backend: StoreKind) {
    let mut cluster = Cluster::start(backend, &[&[], &[], &[]], TTL).await;
    let registry = cluster.registry().await;
    start_units(&registry, &[("mover.service", sleeper(""))]).await;
    wait_until(Duration::from_secs(20), "unit running", || async {
        running_on(&registry, "mover.service").await.len() == 1
    })
    .await;
    let victim = running_on(&registry, "mover.service").await[0].clone();
    let index = cluster
        .nodes
        .iter()
        .position(|n| n.id == victim)
        .expect("victim node");
    cluster.nodes[index].kill();
    let moved = wait_until(
        Duration::from_secs(20),
        "unit running elsewhere",
        || async {
            let on = running_on(&registry, "mover.service").await;
            on.len() == 1 && on[0] != victim
        },
    )
    .await;
    assert!(
        moved < TTL + Duration::from_secs(6),
        "moved after {moved:?}"
    );
    let job = job(&registry, "mover.service").await;
    assert_ne!(job.target.as_deref(), Some(victim.as_str()));
}

async fn killing_the_engine_node_moves_the_engine(backend: StoreKind) {
    let mut cluster = Cluster::start(backend, &[&[], &[], &[]], TTL).await;
    let registry = cluster.registry().await;
    let leader_key = registry.store().keys().engine_leader();
    let store = registry.store().clone();
    wait_until(Duration::from_secs(15), "an engine leader", || async {
        store.get(&leader_key).await.ok().flatten().is_some()
    })
    .await;
    let leader = store
        .get(&leader_key)
        .await
        .expect("store")
        .expect("leader");
    let index = cluster
        .nodes
        .iter()
        .position(|n| n.id == leader)
        .expect("leader node");
    cluster.nodes[index].kill();
    wait_until(Duration::from_secs(20), "a new engine leader", || async {
        matches!(store.get(&leader_key).await, Ok(Some(new)) if new != leader)
    })
    .await;
    // The new engine schedules.
    start_units(&registry, &[("after-failover.service", sleeper(""))]).await;
    wait_until(
        Duration::from_secs(20),
        "unit scheduled by the new engine",
        || async { running_on(&registry, "after-failover.service").await.len() == 1 },
    )
    .await;
}

async fn restarted_agent_adopts_running_units(backend: StoreKind) {
    let mut cluster = Cluster::start(backend, &[&[]], Duration::from_secs(10)).await;
    let registry = cluster.registry().await;
    start_units(&registry, &[("steady.service", sleeper(""))]).await;
    wait_until(Duration::from_secs(20), "unit running", || async {
        running_on(&registry, "steady.service").await.len() == 1
    })
    .await;
    let pid_before = main_pid(&registry, "steady.service").await;
    cluster.nodes[0].restart();
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_until(
        Duration::from_secs(20),
        "unit reported running again",
        || async { running_on(&registry, "steady.service").await.len() == 1 },
    )
    .await;
    assert_eq!(main_pid(&registry, "steady.service").await, pid_before);
    let output =
        std::fs::read_to_string(cluster.nodes[0].output_file("steady.service")).expect("output");
    assert_eq!(
        output.matches("hello from steady.service").count(),
        1,
        "started once:\n{output}"
    );
    assert!(output.contains("adopted running main process"), "{output}");
}

async fn main_pid(registry: &shoal_scheduler::registry::Registry, unit: &str) -> u32 {
    let states = registry.states().await.expect("states");
    states[unit]
        .values()
        .next()
        .and_then(|s| s.main_pid)
        .expect("main pid")
}

async fn stop_unload_and_destroy_reach_the_agent(backend: StoreKind) {
    let cluster = Cluster::start(backend, &[&[], &[]], TTL).await;
    let registry = cluster.registry().await;
    start_units(&registry, &[("cycle.service", sleeper(""))]).await;
    wait_until(Duration::from_secs(20), "unit running", || async {
        running_on(&registry, "cycle.service").await.len() == 1
    })
    .await;
    let names = vec!["cycle.service".to_string()];
    registry
        .set_target_state(&names, TargetState::Loaded)
        .await
        .expect("stop");
    wait_until(
        Duration::from_secs(20),
        "unit stopped but loaded",
        || async {
            let states = registry.states().await.unwrap_or_default();
            states.get("cycle.service").is_some_and(|m| {
                m.values()
                    .all(|s| s.load_state == "loaded" && s.active_state == "inactive")
            })
        },
    )
    .await;
    registry
        .set_target_state(&names, TargetState::Launched)
        .await
        .expect("start");
    wait_until(Duration::from_secs(20), "unit running again", || async {
        running_on(&registry, "cycle.service").await.len() == 1
    })
    .await;
    assert!(registry.destroy("cycle.service").await.expect("destroy"));
    wait_until(
        Duration::from_secs(20),
        "unit gone from every machine",
        || async {
            !registry
                .states()
                .await
                .unwrap_or_default()
                .contains_key("cycle.service")
        },
    )
    .await;
    let journal_key = registry.store().keys().unit_journals("cycle.service");
    let (left, _) = registry
        .store()
        .get_prefix(&journal_key)
        .await
        .expect("store");
    assert!(left.is_empty(), "journal cleaned up: {left:?}");
}

async fn replaced_unit_restarts_with_new_contents(backend: StoreKind) {
    let cluster = Cluster::start(backend, &[&[]], TTL).await;
    let registry = cluster.registry().await;
    start_units(&registry, &[("versioned.service", sleeper(""))]).await;
    wait_until(Duration::from_secs(20), "first version running", || async {
        running_on(&registry, "versioned.service").await.len() == 1
    })
    .await;
    let first_pid = main_pid(&registry, "versioned.service").await;
    let second = "[Service]\nExecStart=/bin/sh -c 'echo version two; exec sleep 600'\n";
    let unit =
        shoal_scheduler::registry::ValidUnit::new("versioned.service", "versioned.service", second)
            .expect("valid");
    let refused = registry.submit(std::slice::from_ref(&unit), false).await;
    assert!(refused.is_err(), "different contents need --replace");
    registry.submit(&[unit], true).await.expect("replace");
    wait_until(
        Duration::from_secs(20),
        "second version running",
        || async {
            let states = registry.states().await.unwrap_or_default();
            states.get("versioned.service").is_some_and(|m| {
                m.values().any(|s| {
                    s.active_state == "active" && s.main_pid.is_some_and(|p| p != first_pid)
                })
            })
        },
    )
    .await;
    let output =
        std::fs::read_to_string(cluster.nodes[0].output_file("versioned.service")).expect("output");
    assert!(output.contains("version two"), "{output}");
}

async fn global_unit_skips_machines_with_conflicting_units(backend: StoreKind) {
    let cluster = Cluster::start(backend, &[&[], &[], &[]], TTL).await;
    let registry = cluster.registry().await;
    let pinned = format!("MachineID={}", &cluster.nodes[1].id[..8]);
    start_units(&registry, &[("busy.service", sleeper(&pinned))]).await;
    wait_until(Duration::from_secs(20), "busy.service running", || async {
        running_on(&registry, "busy.service").await.len() == 1
    })
    .await;
    start_units(
        &registry,
        &[(
            "agent.service",
            sleeper("Global=true\nConflicts=busy.service"),
        )],
    )
    .await;
    wait_until(
        Duration::from_secs(20),
        "global unit on the 2 other machines",
        || async { running_on(&registry, "agent.service").await.len() == 2 },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let on = running_on(&registry, "agent.service").await;
    assert_eq!(on.len(), 2, "{on:?}");
    assert!(
        !on.contains(&cluster.nodes[1].id),
        "ran next to the unit it conflicts with"
    );
}
