//! Every fault of the nemesis is injected into a running 3-member cluster and healed, and the
//! cluster serves writes afterwards: shoal kv and etcd 3.4 alike, where the fault applies.
use shoal_harness::nemesis::{Fault, Target};
use shoal_harness::{StoreCluster, StoreClusterBuilder, StoreKind};

/// Elections in half a second, so faults heal fast.
const FAST_ELECTIONS: [&str; 4] = ["--heartbeat-interval", "50", "--election-timeout", "500"];

fn fast(kind: StoreKind) -> StoreClusterBuilder {
    StoreCluster::builder(kind, 3).args(FAST_ELECTIONS)
}

/// Injects `fault`, checks the cluster is still there, heals it, and writes through every member.
fn inject_and_heal(cluster: &mut StoreCluster, fault: Fault) -> String {
    let injected = fault
        .inject(cluster)
        .unwrap_or_else(|err| panic!("injecting {fault}: {err}"));
    let description = injected.description().to_string();
    injected
        .heal(cluster)
        .unwrap_or_else(|err| panic!("healing {description}: {err}"));
    for i in 0..cluster.specs.len() {
        let key = format!("after/{}/{i}", fault.name());
        cluster
            .ctl_member(i, &["put", &key, "v"])
            .unwrap_or_else(|err| panic!("put through member {i} after {description}: {err}"));
    }
    description
}

fn process_faults_heal(kind: StoreKind) {
    let mut cluster = fast(kind).start();
    for fault in [
        Fault::Kill(Target::Leader),
        Fault::Kill(Target::Follower),
        Fault::Stop(Target::Leader),
        Fault::Stop(Target::Follower),
        Fault::Both(
            Box::new(Fault::Stop(Target::Follower)),
            Box::new(Fault::Kill(Target::Leader)),
        ),
    ] {
        let description = inject_and_heal(&mut cluster, fault.clone());
        // The description names the members the targets resolved to.
        assert!(description.contains(" ("), "{description}");
        println!("{}: {description} healed", kind.name());
    }
}

#[test]
fn kill_and_stop_of_leader_and_follower_heal_on_shoal_kv() {
    process_faults_heal(StoreKind::ShoalKv);
}

#[test]
fn kill_and_stop_of_leader_and_follower_heal_on_etcd() {
    process_faults_heal(StoreKind::Etcd);
}

#[test]
fn the_leader_is_the_member_the_others_follow() {
    let cluster = fast(StoreKind::ShoalKv).start();
    let leader = cluster.leader().expect("a leader");
    let leader_id = cluster.status(leader).expect("status").member_id;
    for i in 0..3 {
        assert_eq!(cluster.status(i).expect("status").leader, leader_id);
    }
}
