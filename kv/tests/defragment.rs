//! Defragment gives space back for real: after a large state is deleted and compacted,
//! defragmenting one member replaces the large Raft snapshot in the data file with a snapshot of
//! the state as it is now, shrinks that file (redb's compaction), and its reported `dbSize` to
//! what is in use.
mod common;

use shoal_harness::StoreKind;

use common::Clients;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defragment_shrinks_the_data_file_and_db_size_after_a_compaction() {
    let cluster = common::start_with(StoreKind::ShoalKv, 1, &["--snapshot-count=20"]).await;
    let data_file = cluster.specs[0].data_dir.join("shoal-kv.redb");
    let mut client = cluster.client(0).await;
    let value = vec![b'v'; 64 * 1024];
    for i in 0..60 {
        client
            .put(format!("big/{i}"), value.clone(), None)
            .await
            .expect("put");
    }
    let full = client.status().await.expect("status");
    let deleted = client
        .delete(
            "big/",
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .expect("delete");
    let revision = deleted.header().expect("header").revision();
    client.compact(revision, None).await.expect("compact");
    // Fewer writes than `--snapshot-count` after the compaction: no Raft snapshot is due, so
    // the last one still holds the values, as it does whenever the snapshot due was being
    // built as the last entries applied.
    for i in 0..5 {
        client
            .put(format!("small/{i}"), "x", None)
            .await
            .expect("put");
    }
    let size = || std::fs::metadata(&data_file).expect("the data file").len();
    let compacted = client.status().await.expect("status");
    // The defragment snapshots the state as it is now before it compacts the file.
    let file_before = size();
    client.defragment().await.expect("defragment");
    let file_after = size();
    let defragmented = client.status().await.expect("status");
    println!(
        "dbSize {} full, {} compacted (in use {}), {} defragmented; data file {file_before} -> {file_after} bytes",
        full.db_size(),
        compacted.db_size(),
        compacted.raft_used_db_size(),
        defragmented.db_size()
    );
    assert!(
        compacted.db_size() >= full.db_size(),
        "compaction frees pages, not the file"
    );
    assert!(compacted.raft_used_db_size() < full.db_size() / 10);
    assert_eq!(defragmented.db_size(), defragmented.raft_used_db_size());
    assert!(defragmented.db_size() < full.db_size() / 10);
    assert!(
        file_after < file_before / 2,
        "{file_after} of {file_before}"
    );
    // Still serving, with its data.
    let got = client.get("small/4", None).await.expect("get");
    assert_eq!(got.kvs()[0].value(), b"x");
}
