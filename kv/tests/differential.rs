//! The same sequence of operations, through the `etcd-client` crate, against a real etcd 3.4
//! server and against `shoal kv` must give the same responses: revisions, versions, prev_kv,
//! counts, watch events and errors (gRPC code and message). Only what identifies the server
//! (cluster and member IDs, Raft term) is left out of the comparison.
mod common;

use common::Clients;
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, EventType, GetOptions, KeyValue, LeaseGrantOptions,
    LeaseTimeToLiveOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use shoal_harness::StoreKind;

fn kv(kv: &KeyValue) -> String {
    format!(
        "{}={} c{} m{} v{} l{}",
        String::from_utf8_lossy(kv.key()),
        String::from_utf8_lossy(kv.value()),
        kv.create_revision(),
        kv.mod_revision(),
        kv.version(),
        kv.lease()
    )
}

fn kvs(list: &[KeyValue]) -> String {
    list.iter().map(kv).collect::<Vec<_>>().join("; ")
}

fn error(e: etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            format!("error {:?}: {}", status.code(), status.message())
        }
        other => format!("error {other}"),
    }
}

/// Records one line per step of the script.
struct Transcript {
    lines: Vec<String>,
}

impl Transcript {
    fn push(&mut self, step: &str, line: String) {
        self.lines.push(format!("{step}: {line}"));
    }

    async fn get(&mut self, c: &mut Client, step: &str, key: &str, opts: Option<GetOptions>) {
        let line = match c.get(key, opts).await {
            Ok(r) => format!(
                "rev {} count {} more {} [{}]",
                r.header().map(|h| h.revision()).unwrap_or_default(),
                r.count(),
                r.more(),
                kvs(r.kvs())
            ),
            Err(e) => error(e),
        };
        self.push(step, line);
    }

    async fn put(
        &mut self,
        c: &mut Client,
        step: &str,
        key: &str,
        value: Vec<u8>,
        opts: Option<PutOptions>,
    ) {
        let line = match c.put(key, value, opts).await {
            Ok(r) => format!(
                "rev {} prev [{}]",
                r.header().map(|h| h.revision()).unwrap_or_default(),
                r.prev_key().map(kv).unwrap_or_default()
            ),
            Err(e) => error(e),
        };
        self.push(step, line);
    }

    async fn delete(&mut self, c: &mut Client, step: &str, key: &str, opts: Option<DeleteOptions>) {
        let line = match c.delete(key, opts).await {
            Ok(r) => format!(
                "rev {} deleted {} prev [{}]",
                r.header().map(|h| h.revision()).unwrap_or_default(),
                r.deleted(),
                kvs(r.prev_kvs())
            ),
            Err(e) => error(e),
        };
        self.push(step, line);
    }

    async fn txn(&mut self, c: &mut Client, step: &str, txn: Txn) {
        let line = match c.txn(txn).await {
            Ok(r) => format!(
                "rev {} succeeded {} [{}]",
                r.header().map(|h| h.revision()).unwrap_or_default(),
                r.succeeded(),
                r.op_responses()
                    .iter()
                    .map(op_response)
                    .collect::<Vec<_>>()
                    .join(" | ")
            ),
            Err(e) => error(e),
        };
        self.push(step, line);
    }
}

fn op_response(op: &TxnOpResponse) -> String {
    match op {
        TxnOpResponse::Put(p) => format!("put prev [{}]", p.prev_key().map(kv).unwrap_or_default()),
        TxnOpResponse::Get(g) => format!("get count {} [{}]", g.count(), kvs(g.kvs())),
        TxnOpResponse::Delete(d) => format!("delete {} [{}]", d.deleted(), kvs(d.prev_kvs())),
        TxnOpResponse::Txn(t) => format!(
            "txn {} [{}]",
            t.succeeded(),
            t.op_responses()
                .iter()
                .map(op_response)
                .collect::<Vec<_>>()
                .join(" | ")
        ),
    }
}

async fn kv_script(c: &mut Client, t: &mut Transcript) {
    t.put(c, "put a", "a", b"1".to_vec(), None).await;
    t.put(
        c,
        "put a again with prev",
        "a",
        b"2".to_vec(),
        Some(PutOptions::new().with_prev_key()),
    )
    .await;
    for (key, value) in [
        ("b", "3"),
        ("c", "0"),
        ("ab", "9"),
        ("abc", "5"),
        ("d", "7"),
    ] {
        t.put(c, "put", key, value.as_bytes().to_vec(), None).await;
    }
    t.put(c, "put b again", "b", b"4".to_vec(), None).await;
    t.get(c, "get a", "a", None).await;
    t.get(c, "get missing", "zz", None).await;
    t.get(c, "prefix a", "a", Some(GetOptions::new().with_prefix()))
        .await;
    t.get(
        c,
        "prefix a limit 2",
        "a",
        Some(GetOptions::new().with_prefix().with_limit(2)),
    )
    .await;
    t.get(
        c,
        "range a..c",
        "a",
        Some(GetOptions::new().with_range("c")),
    )
    .await;
    t.get(
        c,
        "from key b",
        "b",
        Some(GetOptions::new().with_from_key()),
    )
    .await;
    t.get(c, "all keys", "\0", Some(GetOptions::new().with_all_keys()))
        .await;
    for (name, target, order) in [
        ("sort value desc", SortTarget::Value, SortOrder::Descend),
        ("sort create asc", SortTarget::Create, SortOrder::Ascend),
        ("sort mod desc", SortTarget::Mod, SortOrder::Descend),
        ("sort key desc", SortTarget::Key, SortOrder::Descend),
        ("sort version none", SortTarget::Version, SortOrder::None),
    ] {
        let opts = GetOptions::new().with_all_keys().with_sort(target, order);
        t.get(c, name, "\0", Some(opts)).await;
    }
    let opts = GetOptions::new()
        .with_all_keys()
        .with_sort(SortTarget::Value, SortOrder::Ascend)
        .with_limit(3);
    t.get(c, "sort value limit 3", "\0", Some(opts)).await;
    t.get(
        c,
        "a at rev 2",
        "a",
        Some(GetOptions::new().with_revision(2)),
    )
    .await;
    t.get(
        c,
        "prefix at rev 4",
        "a",
        Some(GetOptions::new().with_prefix().with_revision(4)),
    )
    .await;
    t.get(
        c,
        "future rev",
        "a",
        Some(GetOptions::new().with_revision(1000)),
    )
    .await;
    t.get(
        c,
        "keys only",
        "a",
        Some(GetOptions::new().with_prefix().with_keys_only()),
    )
    .await;
    t.get(
        c,
        "count only",
        "a",
        Some(GetOptions::new().with_prefix().with_count_only()),
    )
    .await;
    t.get(
        c,
        "serializable",
        "a",
        Some(GetOptions::new().with_serializable()),
    )
    .await;
    t.get(
        c,
        "min mod rev",
        "\0",
        Some(GetOptions::new().with_all_keys().with_min_mod_revision(5)),
    )
    .await;
    t.get(c, "empty key", "", None).await;
    t.delete(
        c,
        "delete b prev",
        "b",
        Some(DeleteOptions::new().with_prev_key()),
    )
    .await;
    t.delete(c, "delete missing", "nope", None).await;
    t.delete(
        c,
        "delete prefix ab",
        "ab",
        Some(DeleteOptions::new().with_prefix().with_prev_key()),
    )
    .await;
    t.put(c, "recreate b", "b", b"again".to_vec(), None).await;
    t.get(c, "b recreated", "b", None).await;
    t.put(
        c,
        "ignore value on missing",
        "nokey",
        vec![],
        Some(PutOptions::new().with_ignore_value()),
    )
    .await;
    t.put(
        c,
        "ignore value",
        "b",
        vec![],
        Some(PutOptions::new().with_ignore_value()),
    )
    .await;
    t.put(c, "empty key", "", b"x".to_vec(), None).await;
    t.put(
        c,
        "unknown lease",
        "x",
        b"x".to_vec(),
        Some(PutOptions::new().with_lease(12345)),
    )
    .await;
}

async fn txn_script(c: &mut Client, t: &mut Transcript) {
    let txn = Txn::new()
        .when([Compare::version("a", CompareOp::Equal, 2)])
        .and_then([
            TxnOp::put("a", "3", Some(PutOptions::new().with_prev_key())),
            TxnOp::get("a", None),
            TxnOp::delete("c", Some(DeleteOptions::new().with_prev_key())),
        ])
        .or_else([TxnOp::get("a", None)]);
    t.txn(c, "txn version succeeds", txn).await;
    let txn = Txn::new()
        .when([Compare::value("a", CompareOp::Equal, "nope")])
        .and_then([TxnOp::put("a", "4", None)])
        .or_else([TxnOp::get("a", Some(GetOptions::new().with_prefix()))]);
    t.txn(c, "txn value fails", txn).await;
    let txn = Txn::new()
        .when([Compare::value("missing", CompareOp::NotEqual, "x")])
        .and_then([TxnOp::put("m", "1", None)])
        .or_else([TxnOp::put("m", "2", None)]);
    t.txn(c, "txn value on missing key", txn).await;
    let txn = Txn::new()
        .when([Compare::create_revision("missing", CompareOp::Equal, 0)])
        .and_then([TxnOp::put("created", "1", None)]);
    t.txn(c, "txn create-if-absent", txn).await;
    let txn = Txn::new()
        .when([
            Compare::mod_revision("a", CompareOp::Greater, 1),
            Compare::lease("a", CompareOp::Equal, 0),
        ])
        .and_then([TxnOp::txn(
            Txn::new()
                .when([Compare::version("m", CompareOp::Less, 5)])
                .and_then([
                    TxnOp::put("nested", "yes", None),
                    TxnOp::get("nested", None),
                ]),
        )]);
    t.txn(c, "nested txn", txn).await;
    let txn = Txn::new()
        .when([Compare::version("a", CompareOp::Greater, 0).with_prefix()])
        .and_then([TxnOp::get(
            "a",
            Some(GetOptions::new().with_count_only().with_prefix()),
        )]);
    t.txn(c, "compare over prefix", txn).await;
    let txn = Txn::new().and_then([TxnOp::put("dup", "1", None), TxnOp::put("dup", "2", None)]);
    t.txn(c, "duplicate key", txn).await;
    let txn = Txn::new().and_then([TxnOp::get("a", None)]);
    t.txn(c, "read-only txn", txn).await;
    let txn = Txn::new().and_then([TxnOp::put(
        "x",
        "1",
        Some(PutOptions::new().with_lease(777)),
    )]);
    t.txn(c, "txn unknown lease", txn).await;
}

async fn compact_and_watch_script(c: &mut Client, t: &mut Transcript) {
    let mut watch = c
        .watch(
            "a",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(2)
                    .with_prev_key(),
            ),
        )
        .await
        .expect("watch");
    let mut events = Vec::new();
    while events.len() < 5 {
        let response = watch
            .message()
            .await
            .expect("watch response")
            .expect("watch stream");
        for e in response.events() {
            events.push(format!(
                "{:?} {} prev [{}]",
                e.event_type(),
                e.kv().map(kv).unwrap_or_default(),
                e.prev_kv().map(kv).unwrap_or_default()
            ));
        }
    }
    t.push("watch history", events.join(" / "));

    let current = c
        .get("a", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision();
    let line = match c.compact(current - 3, None).await {
        Ok(r) => format!(
            "rev {}",
            r.header().map(|h| h.revision()).unwrap_or_default()
        ),
        Err(e) => error(e),
    };
    t.push("compact", line);
    t.get(
        c,
        "read compacted rev",
        "a",
        Some(GetOptions::new().with_revision(current - 4)),
    )
    .await;
    t.get(
        c,
        "read at compact rev",
        "a",
        Some(GetOptions::new().with_revision(current - 3)),
    )
    .await;
    for (name, rev) in [
        ("compact again", current - 3),
        ("compact future", current + 10),
    ] {
        let line = match c.compact(rev, None).await {
            Ok(_) => "ok".to_string(),
            Err(e) => error(e),
        };
        t.push(name, line);
    }
    let mut watch = c
        .watch("a", Some(WatchOptions::new().with_start_revision(2)))
        .await
        .expect("watch");
    let mut seen = Vec::new();
    while let Some(response) = watch.message().await.expect("watch response") {
        seen.push(format!(
            "created {} canceled {} compact {}",
            response.created(),
            response.canceled(),
            response.compact_revision() - current
        ));
        if response.canceled() {
            break;
        }
    }
    t.push("watch compacted", seen.join(" / "));

    let mut watch = c
        .watch("w", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch");
    watch.message().await.expect("created").expect("stream");
    t.put(c, "put w1", "w1", b"1".to_vec(), None).await;
    t.delete(c, "delete w1", "w1", None).await;
    let mut events = Vec::new();
    while events.len() < 2 {
        let response = watch.message().await.expect("watch").expect("stream");
        for e in response.events() {
            let is_delete = e.event_type() == EventType::Delete;
            events.push(format!(
                "{:?} {} {is_delete}",
                e.event_type(),
                e.kv().map(kv).unwrap_or_default()
            ));
        }
    }
    t.push("live watch", events.join(" / "));
}

async fn lease_script(c: &mut Client, t: &mut Transcript) {
    let grant = |id| Some(LeaseGrantOptions::new().with_id(id));
    let line = match c.lease_grant(60, grant(1000)).await {
        Ok(r) => format!(
            "id {} ttl {} rev {}",
            r.id(),
            r.ttl(),
            r.header().map(|h| h.revision()).unwrap_or_default()
        ),
        Err(e) => error(e),
    };
    t.push("lease grant", line);
    let line = match c.lease_grant(60, grant(1000)).await {
        Ok(r) => format!("id {}", r.id()),
        Err(e) => error(e),
    };
    t.push("lease grant again", line);
    t.put(
        c,
        "put leased",
        "leased",
        b"v".to_vec(),
        Some(PutOptions::new().with_lease(1000)),
    )
    .await;
    t.put(
        c,
        "put leased 2",
        "leased2",
        b"v".to_vec(),
        Some(PutOptions::new().with_lease(1000)),
    )
    .await;
    let line = match c
        .lease_time_to_live(1000, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
    {
        Ok(r) => {
            // etcd lists a lease's keys from a Go map: in no particular order.
            let mut keys: Vec<String> = r
                .keys()
                .iter()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect();
            keys.sort();
            format!("granted {} keys {:?}", r.granted_ttl(), keys)
        }
        Err(e) => error(e),
    };
    t.push("time to live", line);
    let line = match c.lease_time_to_live(4242, None).await {
        Ok(r) => format!("ttl {}", r.ttl()),
        Err(e) => error(e),
    };
    t.push("time to live unknown", line);
    let line = match c.leases().await {
        Ok(r) => format!(
            "{:?}",
            r.leases().iter().map(|l| l.id()).collect::<Vec<_>>()
        ),
        Err(e) => error(e),
    };
    t.push("leases", line);
    let line = match c.lease_revoke(1000).await {
        Ok(r) => format!(
            "rev {}",
            r.header().map(|h| h.revision()).unwrap_or_default()
        ),
        Err(e) => error(e),
    };
    t.push("revoke", line);
    t.get(
        c,
        "leased keys gone",
        "leased",
        Some(GetOptions::new().with_prefix()),
    )
    .await;
    let line = match c.lease_revoke(1000).await {
        Ok(_) => "ok".to_string(),
        Err(e) => error(e),
    };
    t.push("revoke again", line);
    let line = match c.lease_grant(9_000_000_001, None).await {
        Ok(_) => "ok".to_string(),
        Err(e) => error(e),
    };
    t.push("lease too long", line);
    t.put(c, "too large", "big", vec![b'x'; 1600 * 1024], None)
        .await;
    t.get(c, "after too large", "big", None).await;
}

async fn transcript(kind: StoreKind) -> Vec<String> {
    let cluster = common::start(kind, 1).await;
    let mut client = cluster.client(0).await;
    let mut t = Transcript { lines: Vec::new() };
    kv_script(&mut client, &mut t).await;
    txn_script(&mut client, &mut t).await;
    compact_and_watch_script(&mut client, &mut t).await;
    lease_script(&mut client, &mut t).await;
    t.lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shoal_answers_like_etcd_3_4() {
    let (etcd, shoal) = tokio::join!(transcript(StoreKind::Etcd), transcript(StoreKind::ShoalKv));
    let mut differences = Vec::new();
    for (e, s) in etcd.iter().zip(&shoal) {
        if e != s {
            differences.push(format!("etcd : {e}\nshoal: {s}"));
        }
    }
    for line in &etcd {
        println!("{line}");
    }
    assert_eq!(etcd.len(), shoal.len(), "transcripts differ in length");
    assert!(
        differences.is_empty(),
        "{} of {} steps differ:\n{}",
        differences.len(),
        etcd.len(),
        differences.join("\n")
    );
}
