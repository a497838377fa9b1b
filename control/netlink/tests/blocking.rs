//! The blocking facade from the places async callers use it: inside `block_in_place` on a
//! multi-thread runtime (flannel's eBPF backend) and on the blocking pool (its endpoint sync).
use shoal_netlink::block_on;

fn loopback_exists() -> bool {
    block_on(|netlink| async move { netlink.link_by_name("lo").await })
        .expect("looking up lo")
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_inside_block_in_place() {
    assert!(tokio::task::block_in_place(loopback_exists));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_on_the_blocking_pool() {
    let found = tokio::task::spawn_blocking(loopback_exists)
        .await
        .expect("the blocking task");
    assert!(found);
}
