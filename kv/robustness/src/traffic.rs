//! The traffic: concurrent clients doing random requests on a few key families, and a watcher
//! per family, every request recorded with its call and return times.
//!
//! Keys come in families (`<prefix>f<n>/k<m>`): a txn and a lease only ever touch one family's
//! keys, so the linearizability check can split the history by family at worst. Leases carry IDs
//! the client chose (unique per round); most have a TTL longer than any round, so only revokes
//! end them, and a quarter a TTL of 2 s, so they expire while the traffic goes on.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, EventType, GetOptions,
    LeaseGrantOptions, PutOptions, Txn as EtcdTxn, TxnOp as EtcdTxnOp, WatchOptions,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::history::{
    Compare, CompareTarget, KeyValue, LeaseId, Nanos, Operation, Outcome, Request, Response, Txn,
    TxnOp, WatchEvent, WatchLog, WatchResponse,
};

/// How long a client waits after a request that failed.
const ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// Most leases outlive every round: only a revoke ends them.
const LEASE_TTL: i64 = 3600;
/// One grant in [`SHORT_LEASE_EVERY`] is of a lease that expires within the round.
const SHORT_LEASE_TTL: i64 = 2;
const SHORT_LEASE_EVERY: u32 = 4;

/// The clock every time in a history is read from.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn start() -> Self {
        Clock(Instant::now())
    }
    pub fn now(&self) -> Nanos {
        self.0.elapsed().as_nanos() as Nanos
    }
}

/// The shape of one round's traffic.
#[derive(Debug, Clone)]
pub struct Shape {
    pub clients: usize,
    pub families: usize,
    pub keys_per_family: usize,
    /// After this long a request's outcome is unknown.
    pub request_timeout: Duration,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            clients: 6,
            families: 4,
            keys_per_family: 3,
            request_timeout: Duration::from_secs(2),
        }
    }
}

/// A round's keys: `<prefix>f<family>/k<key>`.
#[derive(Debug, Clone)]
pub struct Keys {
    pub prefix: String,
    pub families: usize,
    pub per_family: usize,
}

impl Keys {
    pub fn family_prefix(&self, family: usize) -> String {
        format!("{}f{family}/", self.prefix)
    }
    pub fn key(&self, family: usize, key: usize) -> String {
        format!("{}k{key}", self.family_prefix(family))
    }
    pub fn all(&self) -> Vec<String> {
        (0..self.families)
            .flat_map(|f| (0..self.per_family).map(move |k| (f, k)))
            .map(|(f, k)| self.key(f, k))
            .collect()
    }
}

/// An etcd-client connected to `endpoints` with short dial and request timeouts.
pub async fn connect(endpoints: &[String]) -> Result<Client, etcd_client::Error> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5));
    Client::connect(endpoints, Some(options)).await
}

/// One client of the traffic: its connection, its randomness and what it remembers.
pub struct TrafficClient {
    pub id: usize,
    client: Client,
    rng: StdRng,
    keys: Keys,
    clock: Clock,
    timeout: Duration,
    /// The round, so lease IDs stay unique across rounds.
    round: usize,
    sequence: u64,
    /// The leases this client granted and has not revoked, by family.
    leases: BTreeMap<usize, Vec<LeaseId>>,
    /// The last value and mod revision this client read or wrote per key, for txn compares.
    last_seen: BTreeMap<String, (String, i64)>,
    pub history: Vec<Operation>,
}

impl TrafficClient {
    pub fn new(
        id: usize,
        client: Client,
        seed: u64,
        keys: Keys,
        clock: Clock,
        timeout: Duration,
        round: usize,
    ) -> Self {
        TrafficClient {
            id,
            client,
            rng: StdRng::seed_from_u64(seed),
            keys,
            clock,
            timeout,
            round,
            sequence: 0,
            leases: BTreeMap::new(),
            last_seen: BTreeMap::new(),
            history: Vec::new(),
        }
    }

    /// The connection, for requests the history does not record.
    pub fn raw(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Random requests until `stop` turns true.
    pub async fn run_until_stopped(&mut self, stop: tokio::sync::watch::Receiver<bool>) {
        while !*stop.borrow() {
            let request = self.random_request();
            self.execute(request).await;
        }
    }

    /// Sends `request`, records it with its outcome and returns the outcome.
    pub async fn execute(&mut self, request: Request) -> Outcome {
        let call = self.clock.now();
        let outcome =
            match tokio::time::timeout(self.timeout, send(&mut self.client, &request)).await {
                Ok(Ok(response)) => Outcome::Done(response),
                Ok(Err(err)) if is_lease_not_found(&err) => Outcome::Done(Response::LeaseNotFound),
                Ok(Err(err)) => Outcome::Unknown(err.to_string()),
                Err(_) => Outcome::Unknown(format!("no answer within {:?}", self.timeout)),
            };
        let ret = self.clock.now();
        if !matches!(outcome, Outcome::Done(_)) {
            // A member that is down refuses at once: back off rather than fill the history.
            tokio::time::sleep(ERROR_BACKOFF).await;
        }
        self.remember(&request, &outcome);
        self.history.push(Operation {
            client: self.id,
            call,
            ret,
            request,
            outcome: outcome.clone(),
        });
        outcome
    }

    fn next_value(&mut self) -> String {
        self.sequence += 1;
        format!("c{}-{}", self.id, self.sequence)
    }

    fn random_request(&mut self) -> Request {
        let family = self.rng.gen_range(0..self.keys.families);
        let key = self
            .keys
            .key(family, self.rng.gen_range(0..self.keys.per_family));
        let dice = self.rng.gen_range(0..100);
        match dice {
            0..30 => Request::Get {
                key,
                serializable: false,
            },
            30..40 => Request::Get {
                key,
                serializable: true,
            },
            40..58 => Request::Put {
                key,
                value: self.next_value(),
                lease: None,
            },
            58..66 => match self.random_lease(family) {
                Some(lease) => Request::Put {
                    key,
                    value: self.next_value(),
                    lease: Some(lease),
                },
                None => self.grant(family),
            },
            66..73 => Request::Delete { key },
            73..90 => self.random_txn(family),
            90..95 => self.grant(family),
            _ => match self.take_lease(family) {
                Some(id) => Request::LeaseRevoke { id },
                None => self.grant(family),
            },
        }
    }

    fn grant(&mut self, family: usize) -> Request {
        self.sequence += 1;
        // Positive and unique: round, client and sequence in separate bit ranges.
        let id = ((self.round as i64 + 1) << 40) | ((self.id as i64) << 28) | self.sequence as i64;
        self.leases.entry(family).or_default().push(id);
        let ttl = if self.rng.gen_ratio(1, SHORT_LEASE_EVERY) {
            SHORT_LEASE_TTL
        } else {
            LEASE_TTL
        };
        Request::LeaseGrant { id, ttl }
    }

    fn random_lease(&mut self, family: usize) -> Option<LeaseId> {
        let leases = self.leases.get(&family).filter(|l| !l.is_empty())?;
        Some(leases[self.rng.gen_range(0..leases.len())])
    }

    fn take_lease(&mut self, family: usize) -> Option<LeaseId> {
        let leases = self.leases.get_mut(&family).filter(|l| !l.is_empty())?;
        let index = self.rng.gen_range(0..leases.len());
        Some(leases.swap_remove(index))
    }

    /// A txn on one family: compare one key on what this client last saw of it, then write
    /// two other keys (or the compared one when the compare fails).
    fn random_txn(&mut self, family: usize) -> Request {
        let per_family = self.keys.per_family;
        let first = self.rng.gen_range(0..per_family);
        let compared = self.keys.key(family, first);
        let (value, mod_revision) = self
            .last_seen
            .get(&compared)
            .cloned()
            .unwrap_or((String::new(), 0));
        let target = if self.rng.gen_bool(0.5) && !value.is_empty() {
            CompareTarget::Value(value)
        } else {
            CompareTarget::ModRevision(mod_revision)
        };
        let second = self.keys.key(family, (first + 1) % per_family);
        let third = self.keys.key(family, (first + 2) % per_family);
        let mut success = vec![TxnOp::Put {
            key: second,
            value: self.next_value(),
        }];
        if third != compared {
            success.push(if self.rng.gen_bool(0.5) {
                TxnOp::Delete { key: third }
            } else {
                TxnOp::Put {
                    key: third,
                    value: self.next_value(),
                }
            });
        }
        let failure = vec![TxnOp::Put {
            key: compared.clone(),
            value: self.next_value(),
        }];
        Request::Txn(Txn {
            compares: vec![Compare {
                key: compared,
                target,
            }],
            success,
            failure,
        })
    }

    /// Keeps what a read or write showed, for later txn compares.
    fn remember(&mut self, request: &Request, outcome: &Outcome) {
        match (request, outcome) {
            (Request::Get { key, .. }, Outcome::Done(Response::Get { kv, .. })) => match kv {
                Some(kv) => {
                    let seen = (kv.value.clone(), kv.mod_revision);
                    self.last_seen.insert(key.clone(), seen);
                }
                None => {
                    self.last_seen.remove(key);
                }
            },
            (Request::Put { key, value, .. }, Outcome::Done(Response::Put { revision })) => {
                self.last_seen
                    .insert(key.clone(), (value.clone(), *revision));
            }
            _ => {}
        }
    }
}

fn is_lease_not_found(err: &etcd_client::Error) -> bool {
    matches!(err, etcd_client::Error::GRpcStatus(status)
        if status.message().contains("requested lease not found"))
}

async fn send(client: &mut Client, request: &Request) -> Result<Response, etcd_client::Error> {
    match request {
        Request::Get { key, serializable } => {
            let options = serializable.then(|| GetOptions::new().with_serializable());
            let response = client.get(key.as_str(), options).await?;
            let revision = response.header().map_or(0, |h| h.revision());
            let kv = response.kvs().first().map(|kv| KeyValue {
                value: String::from_utf8_lossy(kv.value()).into_owned(),
                create_revision: kv.create_revision(),
                mod_revision: kv.mod_revision(),
                version: kv.version(),
                lease: kv.lease(),
            });
            Ok(Response::Get { revision, kv })
        }
        Request::Put { key, value, lease } => {
            let options = lease.map(|id| PutOptions::new().with_lease(id));
            let response = client.put(key.as_str(), value.as_str(), options).await?;
            let revision = response.header().map_or(0, |h| h.revision());
            Ok(Response::Put { revision })
        }
        Request::Delete { key } => {
            let response = client.delete(key.as_str(), None).await?;
            let revision = response.header().map_or(0, |h| h.revision());
            Ok(Response::Delete {
                revision,
                deleted: response.deleted(),
            })
        }
        Request::Txn(txn) => {
            let response = client.txn(etcd_txn(txn)).await?;
            let revision = response.header().map_or(0, |h| h.revision());
            Ok(Response::Txn {
                revision,
                succeeded: response.succeeded(),
            })
        }
        Request::LeaseGrant { id, ttl } => {
            let options = LeaseGrantOptions::new().with_id(*id);
            client.lease_grant(*ttl, Some(options)).await?;
            Ok(Response::LeaseGrant)
        }
        Request::LeaseRevoke { id } => {
            let response = client.lease_revoke(*id).await?;
            let revision = response.header().map_or(0, |h| h.revision());
            Ok(Response::LeaseRevoke { revision })
        }
    }
}

fn etcd_txn(txn: &Txn) -> EtcdTxn {
    let compares: Vec<EtcdCompare> = txn
        .compares
        .iter()
        .map(|c| match &c.target {
            CompareTarget::Value(value) => {
                EtcdCompare::value(c.key.as_str(), CompareOp::Equal, value.as_str())
            }
            CompareTarget::ModRevision(rev) => {
                EtcdCompare::mod_revision(c.key.as_str(), CompareOp::Equal, *rev)
            }
        })
        .collect();
    let ops = |ops: &[TxnOp]| -> Vec<EtcdTxnOp> {
        ops.iter()
            .map(|op| match op {
                TxnOp::Put { key, value } => EtcdTxnOp::put(key.as_str(), value.as_str(), None),
                TxnOp::Delete { key } => EtcdTxnOp::delete(key.as_str(), None),
            })
            .collect()
    };
    EtcdTxn::new()
        .when(compares)
        .and_then(ops(&txn.success))
        .or_else(ops(&txn.failure))
}

/// Watches `prefix` from `start_revision` until an event at `until_revision` or later arrives,
/// or `deadline`; reopens the watch after the last revision it saw whenever it breaks.
pub async fn watch(
    endpoints: Vec<String>,
    prefix: String,
    start_revision: i64,
    until_revision: tokio::sync::watch::Receiver<Option<i64>>,
    deadline: tokio::sync::watch::Receiver<Option<Instant>>,
) -> WatchLog {
    let mut log = WatchLog {
        prefix: prefix.clone(),
        start_revision,
        end_revision: 0,
        responses: Vec::new(),
    };
    let done = |log: &WatchLog| {
        let reached = until_revision
            .borrow()
            .is_some_and(|end| log.last_revision() >= end);
        let late = deadline.borrow().is_some_and(|at| Instant::now() >= at);
        reached || late
    };
    while !done(&log) {
        let Ok(mut client) = connect(&endpoints).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(log.last_revision() + 1);
        let Ok(mut stream) = client.watch(prefix.as_str(), Some(options)).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while !done(&log) {
            // Wake up now and then to look at the end conditions.
            let message = tokio::time::timeout(Duration::from_millis(200), stream.message());
            let response = match message.await {
                Err(_) => continue,
                Ok(Ok(Some(response))) => response,
                Ok(Ok(None)) | Ok(Err(_)) => break,
            };
            if response.canceled() {
                break;
            }
            if response.events().is_empty() {
                continue;
            }
            log.responses.push(WatchResponse {
                revision: response.header().map_or(0, |h| h.revision()),
                events: response.events().iter().filter_map(event).collect(),
            });
        }
    }
    log.end_revision = until_revision.borrow().unwrap_or(0);
    log
}

fn event(event: &etcd_client::Event) -> Option<WatchEvent> {
    let kv = event.kv()?;
    Some(WatchEvent {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: match event.event_type() {
            EventType::Put => Some(String::from_utf8_lossy(kv.value()).into_owned()),
            EventType::Delete => None,
        },
        mod_revision: kv.mod_revision(),
    })
}
