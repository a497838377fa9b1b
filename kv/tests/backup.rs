//! Backups in etcd's format, against Debian's etcd 3.4 and etcdctl: a snapshot of etcd restores
//! into a new shoal kv cluster and one of shoal kv into a new etcd (both serve the same keys,
//! revisions and HashKV), a damaged snapshot is refused, and HashKV agrees across members after
//! a kill and restart, and with etcd's for the same writes.
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::Clients;
use etcd_client::{Client, Compare, CompareOp, DeleteOptions, LeaseGrantOptions, PutOptions, Txn};
use etcd_client::{GetOptions, TxnOp};
use shoal_harness::store::etcdctl;
use shoal_harness::{StoreCluster, StoreClusterBuilder, StoreKind, binaries};

const LEASE: i64 = 0x1234;
const REVOKED_LEASE: i64 = 0x99;

/// The same writes on any store: puts, a delete, a txn, leases (one revoked with its key) and a
/// compaction; lease IDs are chosen so both stores hold the same values.
async fn write_history(client: &mut Client) {
    for (key, value) in [("a", "1"), ("b", "2"), ("a", "3")] {
        client.put(key, value, None).await.expect("put");
    }
    let grant = LeaseGrantOptions::new().with_id(LEASE);
    client.lease_grant(600, Some(grant)).await.expect("grant");
    let leased = PutOptions::new().with_lease(LEASE);
    client.put("c", "4", Some(leased)).await.expect("put");
    let txn = Txn::new()
        .when([Compare::value("a", CompareOp::Equal, "3")])
        .and_then([TxnOp::put("d", "5", None), TxnOp::delete("b", None)]);
    assert!(client.txn(txn).await.expect("txn").succeeded());
    let revoked = LeaseGrantOptions::new().with_id(REVOKED_LEASE);
    client.lease_grant(600, Some(revoked)).await.expect("grant");
    let leased = PutOptions::new().with_lease(REVOKED_LEASE);
    client.put("e", "6", Some(leased)).await.expect("put");
    client.lease_revoke(REVOKED_LEASE).await.expect("revoke");
    client.compact(4, None).await.expect("compact");
    client.put("a", "7", None).await.expect("put");
    let prefix = DeleteOptions::new().with_prefix();
    client.put("x/1", "8", None).await.expect("put");
    client.delete("x/", Some(prefix)).await.expect("delete");
}

/// Every live key-value at `rev` as (key, value, create, mod, version, lease).
async fn keys_at(client: &mut Client, rev: i64) -> Vec<(String, String, i64, i64, i64, i64)> {
    let options = GetOptions::new().with_all_keys().with_revision(rev);
    let response = client.get("", Some(options)).await.expect("get");
    response
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().expect("utf-8").to_string(),
                kv.value_str().expect("utf-8").to_string(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease(),
            )
        })
        .collect()
}

async fn revision(client: &mut Client) -> i64 {
    client
        .status()
        .await
        .expect("status")
        .header()
        .expect("header")
        .revision()
}

/// (hash, compact revision) of HashKV at `rev` from every member.
async fn hash_kvs(cluster: &StoreCluster, rev: i64) -> Vec<(u32, i64)> {
    let mut hashes = Vec::new();
    for i in 0..cluster.specs.len() {
        let mut client = cluster.client(i).await;
        let response = client.hash_kv(rev).await.expect("hashkv");
        hashes.push((response.hash(), response.compact_version()));
    }
    hashes
}

/// Saves a snapshot of member 0 with etcdctl.
fn save_snapshot(cluster: &StoreCluster, file: &Path) {
    let path = file.to_string_lossy();
    let (ok, out, err) =
        shoal_harness::store::etcdctl(&[cluster.client_url(0)], &["snapshot", "save", &path], None);
    assert!(ok, "etcdctl snapshot save: {out}{err}");
}

async fn start_restored(kind: StoreKind, size: usize, snapshot: &Path) -> StoreCluster {
    start_restored_as(StoreCluster::builder(kind, size), snapshot).await
}

async fn start_restored_as(builder: StoreClusterBuilder, snapshot: &Path) -> StoreCluster {
    let builder = builder.restore_from(snapshot);
    tokio::task::spawn_blocking(move || builder.start())
        .await
        .expect("starting the restored cluster")
}

/// Asserts the restored cluster serves what the source served, at every revision kept.
async fn assert_same_data(source: &StoreCluster, restored: &StoreCluster) {
    let mut from = source.client(0).await;
    let current = revision(&mut from).await;
    for i in 0..restored.specs.len() {
        let mut to = restored.client(i).await;
        assert_eq!(revision(&mut to).await, current, "member {i}'s revision");
        for rev in 4..=current {
            assert_eq!(
                keys_at(&mut to, rev).await,
                keys_at(&mut from, rev).await,
                "member {i}, keys at revision {rev}"
            );
        }
        let compacted = to.get("a", Some(GetOptions::new().with_revision(3))).await;
        assert!(compacted.is_err(), "revision 3 was compacted");
        let ttl = to.lease_time_to_live(LEASE, None).await.expect("ttl");
        assert!(ttl.ttl() > 0, "lease {LEASE:#x} restored");
    }
    let expected = hash_kvs(source, current).await[0];
    for (i, hash) in hash_kvs(restored, current).await.into_iter().enumerate() {
        assert_eq!(hash, expected, "member {i}'s HashKV at {current}");
    }
    println!(
        "{} -> {}: revision {current}, HashKV {expected:?} on every member",
        source.kind().name(),
        restored.kind().name()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_snapshot_restores_into_a_new_shoal_cluster() {
    let etcd = common::start(StoreKind::Etcd, 1).await;
    let mut client = etcd.client(0).await;
    write_history(&mut client).await;
    let ctl = |args: &[&str]| etcd.ctl(args).expect("etcdctl");
    ctl(&["role", "add", "app"]);
    ctl(&[
        "role",
        "grant-permission",
        "app",
        "readwrite",
        "/app/",
        "--prefix",
    ]);
    let snapshot = etcd.dir().join("etcd.db");
    save_snapshot(&etcd, &snapshot);

    let mut shoal = start_restored(StoreKind::ShoalKv, 3, &snapshot).await;
    assert_same_data(&etcd, &shoal).await;
    let role = shoal.ctl(&["role", "get", "app"]).expect("role get");
    assert!(role.contains("[/app/, /app0)"), "{role}");
    let mut client = shoal.client(0).await;
    client.put("after", "restore", None).await.expect("put");
    let expected = keys_at(&mut client, 0).await;
    assert_eq!(expected.len(), 4);

    // A member that joins later (here: wiped and rejoined) gets the restored state too, not a
    // replay of the new cluster's log alone.
    shoal.kill(2);
    std::fs::remove_dir_all(&shoal.specs[2].data_dir).expect("wiping member 2");
    shoal.state = "existing";
    let shoal = tokio::task::spawn_blocking(move || {
        shoal.spawn(2);
        shoal.wait_member_ready(2);
        shoal
    })
    .await
    .expect("rejoining member 2");
    let mut rejoined = shoal.client(2).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let keys = keys_at(&mut rejoined, 0).await;
        if keys == expected {
            break;
        }
        assert!(Instant::now() < deadline, "member 2 holds {keys:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shoal_snapshot_restores_into_a_new_etcd() {
    let shoal = common::start(StoreKind::ShoalKv, 3).await;
    let mut client = shoal.client(0).await;
    write_history(&mut client).await;
    let snapshot = shoal.dir().join("shoal.db");
    save_snapshot(&shoal, &snapshot);

    let path = snapshot.to_string_lossy();
    let (ok, etcdctl_status, err) =
        shoal_harness::store::etcdctl(&[], &["snapshot", "status", &path, "-w", "json"], None);
    assert!(ok, "etcdctl snapshot status: {err}");
    let ours = std::process::Command::new(binaries::shoal_kv())
        .args(["snapshot", "status", &path, "-w", "json"])
        .output()
        .expect("shoal-kv snapshot status");
    assert_eq!(
        String::from_utf8_lossy(&ours.stdout).trim(),
        etcdctl_status.trim()
    );
    println!("snapshot status: {}", etcdctl_status.trim());

    let etcd = start_restored(StoreKind::Etcd, 1, &snapshot).await;
    assert_same_data(&shoal, &etcd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_snapshot_or_a_restore_for_another_cluster_is_refused() {
    let shoal = common::start(StoreKind::ShoalKv, 1).await;
    let mut client = shoal.client(0).await;
    write_history(&mut client).await;
    let snapshot = shoal.dir().join("good.db");
    save_snapshot(&shoal, &snapshot);
    let bytes = std::fs::read(&snapshot).expect("snapshot");

    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x40;
    let cut = bytes[..bytes.len() - 1000].to_vec();
    for (name, content, reason) in [
        ("flipped", flipped, "SHA-256 mismatch"),
        ("cut", cut, "no SHA-256 trailer"),
    ] {
        let file = shoal.dir().join(format!("{name}.db"));
        std::fs::write(&file, content).expect("writing the damaged copy");
        let output = std::process::Command::new(binaries::shoal_kv())
            .args(["snapshot", "restore"])
            .arg(&file)
            .arg("--data-dir")
            .arg(shoal.dir().join(format!("{name}.restored")))
            .output()
            .expect("shoal-kv snapshot restore");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{name}: restored anyway");
        assert!(stderr.contains(reason), "{name}: {stderr}");
        assert!(!shoal.dir().join(format!("{name}.restored")).exists());
    }

    // A bare db file (no trailer) restores only with --skip-hash-check; a cut one never.
    let bare = shoal.dir().join("bare.db");
    std::fs::write(&bare, &bytes[..bytes.len() - 32]).expect("writing the bare db");
    let cut = shoal.dir().join("cut.db");
    let cases = [
        (&bare, false, Err("no SHA-256 trailer")),
        (&bare, true, Ok(())),
        (&cut, true, Err("the file ends before its last page")),
    ];
    for (i, (file, skip, expected)) in cases.into_iter().enumerate() {
        let dir = shoal.dir().join(format!("case-{i}.restored"));
        let output = std::process::Command::new(binaries::shoal_kv())
            .args(["snapshot", "restore"])
            .arg(file)
            .arg("--data-dir")
            .arg(&dir)
            .args(skip.then_some("--skip-hash-check"))
            .output()
            .expect("shoal-kv snapshot restore");
        let stderr = String::from_utf8_lossy(&output.stderr);
        match expected {
            Ok(()) => assert!(output.status.success(), "{}: {stderr}", file.display()),
            Err(reason) => assert!(
                !output.status.success() && stderr.contains(reason),
                "{} (skip {skip}): {stderr}",
                file.display()
            ),
        }
    }

    // A data dir restored for one cluster does not start as a member of another.
    let restored = shoal.dir().join("restored");
    let port = shoal_harness::free_port();
    let peer_url = format!("http://127.0.0.1:{port}");
    let restore = std::process::Command::new(binaries::shoal_kv())
        .args(["snapshot", "restore"])
        .arg(&snapshot)
        .arg("--data-dir")
        .arg(&restored)
        .args(["--name", "one", "--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("one={peer_url}")])
        .output()
        .expect("shoal-kv snapshot restore");
    assert!(restore.status.success(), "{restore:?}");
    let output = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(binaries::shoal_kv())
            .arg("--data-dir")
            .arg(&restored)
            .args(["--name", "one", "--initial-advertise-peer-urls", &peer_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("one={peer_url}")])
            .args(["--initial-cluster-token", "another-cluster"])
            .args(["--listen-client-urls", "http://127.0.0.1:0"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("shoal-kv must refuse the data dir, not serve")
    .expect("running shoal-kv");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("the data dir was restored for cluster"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_kv_agrees_across_members_after_a_restart_and_with_etcd() {
    let (mut shoal, etcd) = tokio::join!(
        common::start(StoreKind::ShoalKv, 3),
        common::start(StoreKind::Etcd, 3)
    );
    let mut to_shoal = shoal.client(0).await;
    let mut to_etcd = etcd.client(0).await;
    write_history(&mut to_shoal).await;
    write_history(&mut to_etcd).await;
    shoal.kill(2);
    for client in [&mut to_shoal, &mut to_etcd] {
        client.put("while", "down", None).await.expect("put");
        client.delete("c", None).await.expect("delete");
    }
    let shoal = tokio::task::spawn_blocking(move || {
        shoal.spawn(2);
        shoal.wait_member_ready(2);
        shoal
    })
    .await
    .expect("restarting member 2");

    let rev = revision(&mut to_etcd).await;
    assert_eq!(
        revision(&mut to_shoal).await,
        rev,
        "same writes, same revision"
    );
    let (ours, theirs) = (hash_kvs(&shoal, rev).await, hash_kvs(&etcd, rev).await);
    println!("HashKV at {rev}: shoal kv {ours:?}, etcd 3.4 {theirs:?}");
    assert!(ours.iter().all(|h| *h == ours[0]), "shoal members differ");
    assert!(
        theirs.iter().all(|h| *h == theirs[0]),
        "etcd members differ"
    );
    assert_eq!(ours[0], theirs[0], "shoal kv and etcd 3.4 differ");
    let cluster = shoal
        .ctl(&["endpoint", "hashkv", "--cluster", "-w", "json"])
        .expect("endpoint hashkv --cluster");
    assert_eq!(
        cluster.matches(&format!("\"hash\":{}", ours[0].0)).count(),
        3
    );

    let mut whole = Vec::new();
    for i in 0..3 {
        whole.push(shoal.client(i).await.hash().await.expect("hash").hash());
    }
    assert!(
        whole.iter().all(|h| *h == whole[0]),
        "Hash differs: {whole:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_auth_carry_over_from_etcd_to_shoal_and_back() {
    let etcd = common::start(StoreKind::Etcd, 1).await;
    let ctl = |cluster: &StoreCluster, args: &[&str]| {
        cluster
            .ctl(args)
            .unwrap_or_else(|e| panic!("etcdctl {args:?}: {e:#}"))
    };
    ctl(&etcd, &["user", "add", "root:rootpw"]);
    ctl(&etcd, &["user", "add", "alice:alicepw"]);
    ctl(&etcd, &["role", "add", "app"]);
    ctl(
        &etcd,
        &[
            "role",
            "grant-permission",
            "app",
            "readwrite",
            "/app/",
            "--prefix",
        ],
    );
    ctl(&etcd, &["user", "grant-role", "alice", "app"]);
    ctl(&etcd, &["auth", "enable"]);
    ctl(&etcd, &["--user", "alice:alicepw", "put", "/app/a", "1"]);
    let snapshot = etcd.dir().join("etcd-auth.db");
    let path = snapshot.to_string_lossy().into_owned();
    ctl(&etcd, &["--user", "root:rootpw", "snapshot", "save", &path]);

    let builder = StoreCluster::builder(StoreKind::ShoalKv, 1).user("alice:alicepw");
    let shoal = start_restored_as(builder, &snapshot).await;
    let got = ctl(&shoal, &["get", "/app/a"]);
    assert_eq!(got, "/app/a\n1\n");
    let refused = shoal.ctl(&["put", "/other", "x"]);
    assert!(refused.is_err(), "alice may only write /app/");
    let endpoints = shoal.client_urls();
    let (ok, _, err) = etcdctl(
        &endpoints,
        &["--user", "alice:wrong", "get", "/app/a"],
        None,
    );
    assert!(!ok && err.contains("authentication failed"), "{err}");
    let (ok, _, err) = etcdctl(&endpoints, &["get", "/app/a"], None);
    assert!(
        !ok && err.contains("user name is empty"),
        "auth stays enabled: {err}"
    );

    // And back: shoal's snapshot carries them into a new etcd.
    let back = shoal.dir().join("shoal-auth.db");
    let path = back.to_string_lossy().into_owned();
    ctl(
        &shoal,
        &["--user", "root:rootpw", "snapshot", "save", &path],
    );
    let builder = StoreCluster::builder(StoreKind::Etcd, 1).user("alice:alicepw");
    let etcd = start_restored_as(builder, &back).await;
    assert_eq!(ctl(&etcd, &["get", "/app/a"]), "/app/a\n1\n");
    assert!(
        etcd.ctl(&["put", "/other", "x"]).is_err(),
        "alice may only write /app/"
    );
    let (ok, _, err) = etcdctl(&etcd.client_urls(), &["get", "/app/a"], None);
    assert!(
        !ok && err.contains("user name is empty"),
        "auth stays enabled: {err}"
    );
}

/// `snapshot status -w json` of a file, by etcdctl and by shoal-kv (which must agree).
fn snapshot_status(file: &Path) -> String {
    let path = file.to_string_lossy();
    let args = ["snapshot", "status", &path, "-w", "json"];
    let (ok, theirs, err) = etcdctl(&[], &args, None);
    assert!(ok, "etcdctl snapshot status: {err}");
    let ours = std::process::Command::new(binaries::shoal_kv())
        .args(args)
        .output()
        .expect("shoal-kv snapshot status");
    assert_eq!(String::from_utf8_lossy(&ours.stdout).trim(), theirs.trim());
    theirs.trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_snapshots_with_many_pages_round_trip() {
    let etcd = common::start(StoreKind::Etcd, 1).await;
    let mut client = etcd.client(0).await;
    for batch in 0..40 {
        let puts: Vec<TxnOp> = (0..100)
            .map(|n| TxnOp::put(format!("load/{batch:02}/{n:03}"), vec![b'v'; 100], None))
            .collect();
        client.txn(Txn::new().and_then(puts)).await.expect("txn");
    }
    client
        .put("big", vec![b'b'; 300 * 1024], None)
        .await
        .expect("a value over many pages");
    let snapshot = etcd.dir().join("large.db");
    save_snapshot(&etcd, &snapshot);
    println!("etcd's: {}", snapshot_status(&snapshot));

    let shoal = start_restored(StoreKind::ShoalKv, 1, &snapshot).await;
    assert_same_data_now(&etcd, &shoal).await;
    let back = shoal.dir().join("large-shoal.db");
    save_snapshot(&shoal, &back);
    println!("shoal's: {}", snapshot_status(&back));
    let etcd_again = start_restored(StoreKind::Etcd, 1, &back).await;
    assert_same_data_now(&shoal, &etcd_again).await;
}

/// The same keys, revision and HashKV now (without reading every revision).
async fn assert_same_data_now(source: &StoreCluster, restored: &StoreCluster) {
    let (mut from, mut to) = (source.client(0).await, restored.client(0).await);
    let rev = revision(&mut from).await;
    assert_eq!(revision(&mut to).await, rev);
    assert_eq!(keys_at(&mut to, rev).await, keys_at(&mut from, rev).await);
    assert_eq!(hash_kvs(restored, rev).await, hash_kvs(source, rev).await);
}
