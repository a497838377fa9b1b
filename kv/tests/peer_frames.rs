//! The peer port under attack: garbage, oversized, wrong-cluster, deeply nested and
//! out-of-place frames sent to real `shoal-kv` members are refused while the member stays up,
//! serves clients and keeps its data; a forwarded write is checked as a client request is.
mod common;

use std::time::{Duration, Instant};

use common::Clients;
use etcd_client::Client;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, SnapshotMeta, Vote};
use shoal_harness::{StoreCluster, StoreKind};
use shoal_kv::error::EtcdError;
use shoal_kv::peer::wire::{CallError, Identity, Links};
use shoal_kv::peer::{ForwardRpc, MAX_PEER_MESSAGE, Method, PeerPool};
use shoal_kv::proto::etcdserverpb as pb;
use shoal_kv::types::{ClientRequest, Command, MemberNode, Outcome, TypeConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TIMEOUT: Duration = Duration::from_secs(5);

/// A member under attack, with a key written before: what must survive.
struct Target {
    cluster: StoreCluster,
    /// The member the frames go to.
    index: usize,
    identity: Identity,
    revision: i64,
}

impl Target {
    /// Member `index` of `size` members, once `before` is written.
    async fn start(size: usize, index: usize) -> Target {
        let cluster = common::start(StoreKind::ShoalKv, size).await;
        let mut client = cluster.client(index).await;
        let put = client.put("before", "kept", None).await.expect("put");
        let header = put.header().expect("header");
        let identity = Identity {
            cluster_id: header.cluster_id(),
            member_id: 0x5eed,
        };
        let revision = header.revision();
        Target {
            cluster,
            index,
            identity,
            revision,
        }
    }

    fn peer_address(&self) -> String {
        format!("127.0.0.1:{}", self.cluster.specs[self.index].peer_port)
    }

    async fn client(&self) -> Client {
        self.cluster.client(self.index).await
    }

    /// Calls `method` with a raw payload, as a member of `cluster_id`.
    async fn call_as(
        &self,
        cluster_id: u64,
        method: Method,
        payload: &[u8],
    ) -> Result<Vec<u8>, CallError> {
        let identity = Identity {
            cluster_id,
            ..self.identity
        };
        Links::new(MAX_PEER_MESSAGE, identity)
            .call(&self.peer_address(), method as u8, payload, TIMEOUT)
            .await
            .map(|answer| answer.to_vec())
    }

    /// Calls `method` with a raw payload, as a member of the target's cluster.
    async fn call(&self, method: Method, payload: &[u8]) -> Result<Vec<u8>, CallError> {
        self.call_as(self.identity.cluster_id, method, payload)
            .await
    }

    /// The member runs, serves a linearizable read of the key written before, at the same
    /// revision, and takes a write.
    async fn assert_intact(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut client = self.client().await;
        let got = loop {
            match client.get("before", None).await {
                Ok(got) => break got,
                Err(e) => {
                    assert!(Instant::now() < deadline, "the member stopped serving: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let kv = got.kvs().first().expect("the key written before");
        assert_eq!(kv.value(), b"kept");
        assert_eq!(got.header().expect("header").revision(), self.revision);
        client
            .put("after", "taken", None)
            .await
            .expect("a write after");
        let log = self.cluster.log(self.index);
        assert!(!log.contains("panicked"), "{log}");
    }

    /// The term the member is in.
    async fn term(&self) -> u64 {
        let status = self.client().await.status().await.expect("status");
        status.header().expect("header").raft_term()
    }
}

fn failure(answer: Result<Vec<u8>, CallError>) -> String {
    match answer {
        Err(CallError::Failed(reason)) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn garbage_and_a_4_gib_length_prefix_close_the_connection_and_nothing_else() {
    let target = Target::start(1, 0).await;
    let frames: [&[u8]; 3] = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0],
        &[0, 0, 0, 2, 1, 1],
    ];
    for frame in frames {
        let mut stream = tokio::net::TcpStream::connect(target.peer_address())
            .await
            .expect("connect");
        stream.write_all(frame).await.expect("write");
        let mut back = Vec::new();
        tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut back))
            .await
            .expect("the member closes the connection")
            .expect("read");
        assert!(back.is_empty(), "{back:?}");
    }
    target.assert_intact().await;
}

#[tokio::test]
async fn a_higher_term_append_entries_from_another_cluster_is_refused_by_a_follower() {
    let mut target = Target::start(3, 0).await;
    target.index = (target.cluster.leader().await + 1) % 3;
    let term = target.term().await;
    let forged_put = pb::PutRequest {
        key: b"before".to_vec().into(),
        value: b"forged".to_vec().into(),
        ..Default::default()
    };
    let forged_term = term + 100;
    let append = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(forged_term, 0x5eed),
        prev_log_id: None,
        entries: vec![Entry {
            log_id: LogId::new(CommittedLeaderId::new(forged_term, 0x5eed), 1),
            payload: EntryPayload::Normal(Command::Put(ClientRequest::new(forged_put))),
        }],
        leader_commit: Some(LogId::new(CommittedLeaderId::new(forged_term, 0x5eed), 1)),
    };
    let payload = bincode::serialize(&append).expect("encode");
    let stranger = target.identity.cluster_id ^ 1;
    let reason = failure(
        target
            .call_as(stranger, Method::AppendEntries, &payload)
            .await,
    );
    assert!(reason.contains("cluster ID mismatch"), "{reason}");
    // The same connection setup in the right cluster is answered: the refusal was the cluster's.
    let vote = VoteRequest::<u64>::new(Vote::new(0, 0x5eed), None);
    let vote = bincode::serialize(&vote).expect("encode");
    target
        .call(Method::Vote, &vote)
        .await
        .expect("a vote of term 0 is answered");
    assert_eq!(target.term().await, term);
    target.assert_intact().await;
    let log = target.cluster.log(target.index);
    assert!(log.contains("refusing requests of member 5eed"), "{log}");
}

#[tokio::test]
async fn declared_lengths_of_2_pow_60_nested_batches_and_overlong_appends_are_refused() {
    let target = Target::start(1, 0).await;
    let batch_tag = &bincode::serialize(&Command::Batch(Vec::new())).expect("encode")[..4];
    let put_tag =
        &bincode::serialize(&Command::Put(ClientRequest::default())).expect("encode")[..4];
    let huge_batch = [batch_tag, &(1u64 << 60).to_le_bytes()].concat();
    let huge_bytes = [put_tag, &(1u64 << 60).to_le_bytes()].concat();
    let nested: Vec<u8> = (0..1_000_000)
        .flat_map(|_| [batch_tag, &1u64.to_le_bytes()].concat())
        .collect();
    for (what, payload) in [
        ("vector", huge_batch),
        ("bytes", huge_bytes),
        ("nested", nested),
    ] {
        let reason = failure(target.call(Method::Propose, &payload).await);
        assert!(
            reason.starts_with("decoding a peer message"),
            "{what}: {reason}"
        );
    }
    let leader = CommittedLeaderId::new(0, 0x5eed);
    let many = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(0, 0x5eed),
        prev_log_id: None,
        entries: (1..=1001)
            .map(|index| Entry {
                log_id: LogId::new(leader, index),
                payload: EntryPayload::Blank,
            })
            .collect(),
        leader_commit: None,
    };
    let many = bincode::serialize(&many).expect("encode");
    let reason = failure(target.call(Method::AppendEntries, &many).await);
    assert!(
        reason.starts_with("an AppendEntries of 1001 entries"),
        "{reason}"
    );
    target.assert_intact().await;
}

#[tokio::test]
async fn a_snapshot_chunk_past_the_bytes_received_is_refused() {
    let target = Target::start(1, 0).await;
    let term = target.term().await;
    let chunk = |offset: u64| InstallSnapshotRequest::<TypeConfig> {
        vote: Vote::new_committed(term + 100, 0x5eed),
        meta: SnapshotMeta {
            last_log_id: None,
            last_membership: Default::default(),
            snapshot_id: "forged".to_string(),
        },
        offset,
        data: vec![0; 16],
        done: false,
    };
    let first = bincode::serialize(&chunk(0)).expect("encode");
    target
        .call(Method::FullSnapshot, &first)
        .await
        .expect("the first chunk is taken");
    // openraft would seek its in-memory snapshot to this offset and fill a terabyte of zeros.
    let far = bincode::serialize(&chunk(1 << 40)).expect("encode");
    let reason = failure(target.call(Method::FullSnapshot, &far).await);
    assert!(
        reason.starts_with("a snapshot chunk at offset 1099511627776"),
        "{reason}"
    );
    target.assert_intact().await;
}

#[tokio::test]
async fn forwarded_writes_are_checked_on_the_leader_as_client_requests_are() {
    let target = Target::start(1, 0).await;
    let leader = MemberNode {
        name: target.cluster.specs[0].name.clone(),
        peer_urls: vec![target.cluster.specs[0].peer_url()],
    };
    let pool = PeerPool::new(target.identity, None);
    let put = |key: &[u8], value_bytes: usize| {
        Command::Put(ClientRequest::new(pb::PutRequest {
            key: key.to_vec().into(),
            value: vec![b'v'; value_bytes].into(),
            ..Default::default()
        }))
    };
    let txn_ops = (0..129)
        .map(|n| pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: format!("k{n}").into_bytes().into(),
                ..Default::default()
            })),
        })
        .collect();
    let refused = [
        (
            Command::LeaseGrant {
                id: 7,
                ttl: i64::MAX,
            },
            EtcdError::LeaseTtlTooLarge,
        ),
        (put(b"big", 2 * 1024 * 1024), EtcdError::RequestTooLarge),
        (put(b"", 1), EtcdError::EmptyKey),
        (
            Command::Txn(ClientRequest::new(pb::TxnRequest {
                success: txn_ops,
                ..Default::default()
            })),
            EtcdError::TooManyOps,
        ),
        (
            Command::Batch(vec![put(b"ok", 1), Command::Batch(vec![put(b"in", 1)])]),
            EtcdError::Internal("a batch inside a request".to_string()),
        ),
    ];
    for (command, expected) in refused {
        let answer: Result<(Outcome, u64), EtcdError> = pool
            .call(leader.clone(), ForwardRpc::Propose, &command, TIMEOUT)
            .await;
        assert_eq!(answer.map(|_| ()), Err(expected), "{command:?}");
    }
    // The lease clock still runs: a lease of the smallest TTL expires.
    let mut client = target.client().await;
    let lease = client.lease_grant(1, None).await.expect("grant").id();
    let deadline = Instant::now() + Duration::from_secs(5);
    while client
        .lease_time_to_live(lease, None)
        .await
        .expect("ttl")
        .ttl()
        != -1
    {
        assert!(Instant::now() < deadline, "the lease did not expire");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    target.assert_intact().await;
}

#[tokio::test]
async fn etcdctl_lease_grant_of_i64_max_is_refused_as_etcd_refuses_it() {
    let ttl = i64::MAX.to_string();
    for kind in [StoreKind::Etcd, StoreKind::ShoalKv] {
        let cluster = common::start(kind, 1).await;
        let refused = cluster
            .ctl(&["lease", "grant", &ttl])
            .expect_err("a TTL above etcd's largest");
        let text = format!("{refused:#}");
        assert!(
            text.contains("Error: failed to grant lease (etcdserver: too large lease TTL)"),
            "{}: {text}",
            kind.name()
        );
        let granted = cluster
            .ctl(&["lease", "grant", "9000000000"])
            .expect("the largest TTL");
        assert!(
            granted.contains("granted with TTL(9000000000s)"),
            "{granted}"
        );
    }
}
