//! The layer against a real kernel: each test runs in a fresh network namespace of its own
//! thread (gone with the thread), builds a veth pair and a bridge there, and exercises links,
//! routes, neighbours, the FDB and filter queries. Needs root.
use std::{net::Ipv4Addr, process::Command};

use nix::sched::{CloneFlags, unshare};
use shoal_netlink::{NeighbourState, Netlink, NetlinkError, Route, TcDirection, block_on};

/// Runs `test` in a thread inside a new network namespace.
fn in_new_netns(test: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare a network namespace (root needed)");
        test();
    })
    .join()
    .expect("the test thread");
}

/// A veth pair `nl0`/`nl1` with `nl1` a port of bridge `nlbr0`, everything up; `nl0` holds
/// 10.8.0.1/24. Returns the indexes of nl0, nl1 and the bridge.
async fn topology(netlink: &Netlink) -> (u32, u32, u32) {
    let (near, far) = netlink.create_veth("nl0", "nl1", 1500).await.expect("veth");
    let bridge = netlink
        .ensure_bridge("nlbr0", "10.9.0.1/24".parse().expect("net"), 1500)
        .await
        .expect("bridge");
    netlink
        .set_controller(far.index, bridge.index)
        .await
        .expect("port");
    netlink
        .ensure_address(near.index, "10.8.0.1/24".parse().expect("net"))
        .await
        .expect("address");
    for index in [near.index, far.index] {
        netlink.set_up(index).await.expect("up");
    }
    (near.index, far.index, bridge.index)
}

#[test]
fn links_know_their_kind_and_bridge() {
    in_new_netns(|| {
        block_on(|netlink| async move {
            let (near, far, bridge) = topology(&netlink).await;
            let link = netlink.link_by_name("nl0").await?.expect("nl0");
            assert_eq!(link.index, near);
            assert_eq!(link.kind.as_deref(), Some("veth"));
            assert!(link.is_veth() && !link.is_bridge());
            let by_index = netlink.link_by_index(bridge).await?.expect("bridge");
            assert_eq!(by_index.name, "nlbr0");
            assert_eq!(by_index.kind.as_deref(), Some("bridge"));
            assert!(by_index.is_bridge());
            assert!(by_index.mac.is_some());
            let ports = netlink.bridge_ports(bridge).await?;
            assert_eq!(
                ports.iter().map(|port| port.index).collect::<Vec<_>>(),
                vec![far]
            );
            assert_eq!(netlink.link_by_name("nope0").await?, None);
            assert_eq!(netlink.link_by_index(9999).await?, None);
            Ok(())
        })
        .expect("links");
    });
}

#[test]
fn errors_are_told_apart_by_errno() {
    in_new_netns(|| {
        block_on(|netlink| async move {
            topology(&netlink).await;
            let again = netlink.create_veth("nl0", "nl1", 1500).await;
            assert!(
                matches!(again, Err(NetlinkError::Exists { .. })),
                "{again:?}"
            );
            let missing = netlink.delete_link(9999).await;
            assert!(
                matches!(missing, Err(NetlinkError::NotFound { .. })),
                "{missing:?}"
            );
            netlink.delete_link_if_exists(9999).await?;
            Ok(())
        })
        .expect("errors");
    });
}

#[test]
fn gateway_routes_and_neighbours_are_replaced_and_removed() {
    in_new_netns(|| {
        block_on(|netlink| async move {
            let (near, _, _) = topology(&netlink).await;
            let subnet = "10.7.0.0/24".parse().expect("net");
            let gateway = Ipv4Addr::new(10, 7, 0, 0);
            let mac = [2, 0, 0, 0, 0, 7];
            let source = Ipv4Addr::new(10, 8, 0, 1);
            let route = Route {
                destination: subnet,
                gateway,
                device: near,
                mtu: Some(1450),
                source: Some(source),
            };
            for _ in 0..2 {
                netlink.replace_neighbour(near, gateway, mac).await?;
                netlink.replace_gateway_route(&route).await?;
            }
            let routes = netlink.routes_to(subnet).await?;
            assert_eq!(routes.len(), 1, "{routes:?}");
            assert_eq!(routes[0].gateway, Some(gateway));
            assert_eq!(routes[0].device, Some(near));
            assert_eq!(routes[0].mtu, Some(1450));
            assert_eq!(routes[0].source, Some(source));
            let neighbour = netlink
                .ipv4_neighbours()
                .await?
                .into_iter()
                .find(|neighbour| neighbour.address == gateway)
                .expect("the gateway's neighbour");
            assert_eq!(neighbour.index, near);
            assert_eq!(neighbour.mac, Some(mac));
            assert_eq!(neighbour.state, NeighbourState::Permanent);
            assert!(neighbour.is_usable());
            for _ in 0..2 {
                netlink.delete_routes_via(subnet, near).await?;
                netlink.delete_neighbour(near, gateway).await?;
            }
            assert!(netlink.routes_to(subnet).await?.is_empty());
            assert!(
                !netlink
                    .ipv4_neighbours()
                    .await?
                    .iter()
                    .any(|neighbour| neighbour.address == gateway)
            );
            Ok(())
        })
        .expect("routes and neighbours");
    });
}

#[test]
fn the_bridge_fdb_maps_port_macs_to_ports() {
    in_new_netns(|| {
        block_on(|netlink| async move {
            let (_, far, bridge) = topology(&netlink).await;
            let port_mac = netlink.link_by_index(far).await?.and_then(|link| link.mac);
            let entries = netlink.bridge_fdb(bridge).await?;
            assert!(
                entries
                    .iter()
                    .any(|entry| Some(entry.mac) == port_mac && entry.port == far),
                "{entries:?}"
            );
            assert!(entries.iter().all(|entry| entry.bridge == Some(bridge)));
            Ok(())
        })
        .expect("fdb");
    });
}

#[test]
fn filter_queries_see_clsact_and_bpf_filters() {
    in_new_netns(|| {
        let near = block_on(|netlink| async move {
            let (near, _, _) = topology(&netlink).await;
            assert!(!netlink.has_clsact(near).await?);
            assert!(
                netlink
                    .bpf_filters(near, TcDirection::Ingress)
                    .await?
                    .is_empty()
            );
            Ok(near)
        })
        .expect("before clsact");
        // Tests may use iproute2: a classic-BPF filter needs no object file.
        tc(&["qdisc", "add", "dev", "nl0", "clsact"]);
        tc(&[
            "filter",
            "add",
            "dev",
            "nl0",
            "ingress",
            "pref",
            "1",
            "handle",
            "1",
            "bpf",
            "bytecode",
            "1,6 0 0 0",
        ]);
        block_on(|netlink| async move {
            assert!(netlink.has_clsact(near).await?);
            let ingress = netlink.bpf_filters(near, TcDirection::Ingress).await?;
            assert_eq!(ingress.len(), 1, "{ingress:?}");
            assert_eq!(ingress[0].priority, 1);
            assert_eq!(ingress[0].handle, 1);
            assert!(
                netlink
                    .bpf_filters(near, TcDirection::Egress)
                    .await?
                    .is_empty()
            );
            Ok(())
        })
        .expect("after clsact");
    });
}

fn tc(args: &[&str]) {
    let status = Command::new("tc").args(args).status().expect("running tc");
    assert!(status.success(), "tc {args:?}");
}
