mod common;

use common::*;
use shoal_dataplane::{Backend, Counter, DecapHook};

#[test]
fn vxlan_ping_between_two_shoal_nodes() {
    let cluster = two_nodes();
    let mut dps = vec![
        NodeDataplane::attach(&cluster, cluster.node(0), DecapHook::Xdp),
        NodeDataplane::attach(&cluster, cluster.node(1), DecapHook::Xdp),
    ];
    mesh(&cluster, &mut dps, Backend::Vxlan);
    let target = cluster.node(1).container(0).ip().expect("ip");
    let ok = ping(cluster.node(0).container(0).ns(), target, 56, 3);
    eprintln!("n0 {:?}", dps[0].stats());
    eprintln!("n1 {:?}", dps[1].stats());
    assert!(ok);
    assert!(dps[0].count(Counter::EncapVxlanPackets) >= 3);
}
