//! Faults to inject into a running [`StoreCluster`] (etcd 3.4 or shoal kv) and heal again: the
//! nemesis of a consistency suite, after Jepsen's and etcd's robustness tests.
//!
//! ```no_run
//! use shoal_harness::nemesis::{Fault, Target};
//! use shoal_harness::{StoreCluster, StoreKind};
//!
//! let mut cluster = StoreCluster::builder(StoreKind::ShoalKv, 3).isolated().start();
//! for fault in Fault::catalogue(&cluster) {
//!     let injected = fault.inject(&mut cluster).expect("injected");
//!     println!("{}", injected.description()); // e.g. "kill -9 leader (bravo)"
//!     // ... traffic runs against the faulty cluster ...
//!     injected.heal(&mut cluster).expect("healed");
//! }
//! ```
//!
//! A [`Target`] is resolved when the fault is injected: the leader is the member the responsive
//! members report as leader (etcd's endpoint status), a follower any other responsive member.
//! [`Injected::heal`] undoes exactly what the injection did (restarts what it killed, continues
//! what it stopped, removes the nftables tables it added, clears the failpoints it set, removes
//! the member it added) and returns once every running member answers a linearizable read.
//!
//! Which faults need what:
//! - network faults ([`Fault::Partition`], [`Fault::OneWayDrop`],
//!   [`Fault::BlackholeUntilSnapshot`]) need an [`StoreClusterBuilder::isolated`] cluster;
//! - [`Fault::Failpoint`] and [`Fault::PowerLoss`] need shoal kv built with its `failpoints`
//!   feature ([`StoreClusterBuilder::failpoints`]); etcd 3.4's Debian build has no gofail;
//! - [`Fault::BlackholeUntilSnapshot`] needs writes while the follower is cut off (the suite's
//!   traffic): it heals once the leader's log moved `entries` on, and reports an error if that
//!   did not happen within a minute. A small `--snapshot-count` keeps `entries` small
//!   ([`snapshot_entries`]).
//!
//! [`StoreClusterBuilder::isolated`]: crate::StoreClusterBuilder::isolated
//! [`StoreClusterBuilder::failpoints`]: crate::StoreClusterBuilder::failpoints
use std::fmt;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::firewall::Cut;
use crate::process::Process;
use crate::store::{MemberSpec, StoreCluster, StoreKind};
use crate::{Error, Result};

/// How long a leader has to be found, a killed member to exit, a healed cluster to answer.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Fault::BlackholeUntilSnapshot`] waits for the leader's log to move on.
const BLACKHOLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a failpoint control request may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// The name of the member [`Fault::MembershipChange`] adds.
const EXTRA_MEMBER: &str = "nemesis";
/// etcd 3.4 keeps this many entries after a snapshot for slow followers (fixed in 3.4:
/// `SnapshotCatchUpEntries`); shoal keeps `min(--snapshot-count, 1000)`.
const ETCD_CATCH_UP_ENTRIES: u64 = 5000;
/// Both stores snapshot every this many entries unless `--snapshot-count` says otherwise.
const DEFAULT_SNAPSHOT_COUNT: u64 = 100_000;

/// Which member(s) a fault hits, resolved when it is injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The member the others report as leader.
    Leader,
    /// A responsive member that does not lead (successive injections take different ones).
    Follower,
    /// Member `i` of the cluster's specs.
    Member(usize),
    /// Every running member (for [`Fault::Kill`], [`Fault::Stop`], [`Fault::Failpoint`],
    /// [`Fault::PowerLoss`]).
    All,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Leader => write!(f, "leader"),
            Target::Follower => write!(f, "follower"),
            Target::Member(i) => write!(f, "member {i}"),
            Target::All => write!(f, "all members"),
        }
    }
}

/// One fault, or two at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL; healed by starting the member again on its data dir.
    Kill(Target),
    /// SIGSTOP; healed by SIGCONT.
    Stop(Target),
    /// The member's packets to and from every other member dropped (clients still reach it).
    Partition(Target),
    /// Packets from `from` to `to` dropped (inside `to`'s namespace); the other way flows.
    /// TCP between the two stalls either way, as a one-way cut does to any handshake.
    OneWayDrop { from: Target, to: Target },
    /// The member removed (`member remove`), killed, its data dir wiped; healed by `member add`
    /// and a start with `--initial-cluster-state existing`, so it rejoins empty.
    WipeAndRejoin(Target),
    /// A follower cut off (as [`Fault::Partition`]) until the leader's log moved `entries` on,
    /// so the leader must send it a snapshot; see [`snapshot_entries`].
    BlackholeUntilSnapshot { target: Target, entries: u64 },
    /// A member added (`member add`, started with `--initial-cluster-state existing`) and, on
    /// heal, removed again and stopped.
    MembershipChange,
    /// shoal kv's failpoint `name` set to `action` (the `fail` crate's syntax: `panic`,
    /// `return`, `sleep(1000)`, `1*return`, ...); healed by clearing it and starting again any
    /// member it crashed.
    Failpoint {
        target: Target,
        name: String,
        action: String,
    },
    /// shoal kv's simulated power loss: the log's unsynced tail dropped, the process killed;
    /// healed by starting the member(s) again.
    PowerLoss(Target),
    /// Two faults at once, injected in order and healed in reverse.
    Both(Box<Fault>, Box<Fault>),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill(target) => write!(f, "kill -9 {target}"),
            Fault::Stop(target) => write!(f, "SIGSTOP {target}"),
            Fault::Partition(target) => write!(f, "partition {target}"),
            Fault::OneWayDrop { from, to } => write!(f, "drop packets {from} -> {to}"),
            Fault::WipeAndRejoin(target) => write!(f, "wipe and rejoin {target}"),
            Fault::BlackholeUntilSnapshot { target, entries } => {
                write!(f, "blackhole {target} for {entries} entries (snapshot)")
            }
            Fault::MembershipChange => write!(f, "add and remove a member"),
            Fault::Failpoint {
                target,
                name,
                action,
            } => write!(f, "failpoint {name}={action} on {target}"),
            Fault::PowerLoss(target) => write!(f, "power loss of {target}"),
            Fault::Both(a, b) => write!(f, "{a} + {b}"),
        }
    }
}

/// How far a leader's log must move past a cut-off follower before it has to send that
/// follower a snapshot: `--snapshot-count` (from the cluster's flags, else the default) plus
/// what the store keeps after a snapshot, with a margin.
pub fn snapshot_entries(cluster: &StoreCluster) -> u64 {
    let count = flag_value(cluster, "--snapshot-count").unwrap_or(DEFAULT_SNAPSHOT_COUNT);
    let kept = match cluster.kind() {
        StoreKind::Etcd => ETCD_CATCH_UP_ENTRIES,
        StoreKind::ShoalKv => count.min(1000),
    };
    count + kept + count / 2 + 10
}

/// The value of `--flag N` or `--flag=N` among the cluster's extra flags.
fn flag_value(cluster: &StoreCluster, flag: &str) -> Option<u64> {
    let args: Vec<String> = cluster
        .extra_args()
        .iter()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    args.iter().enumerate().find_map(|(i, arg)| {
        let value = match arg.strip_prefix(flag)? {
            "" => args.get(i + 1)?.as_str(),
            rest => rest.strip_prefix('=')?,
        };
        value.parse().ok()
    })
}

/// The failpoints of shoal kv (`kv/src/failpoints.rs` lists them with what each does).
pub mod points {
    /// Before the log writes entries (`return`: the write fails with EIO).
    pub const LOG_APPEND: &str = "raftlog::append";
    /// Before the log's fdatasync (`return`: it fails with EIO; `sleep(ms)`: a slow disk).
    pub const LOG_FSYNC: &str = "raftlog::fsync";
    /// `return`: the log acknowledges appends without fdatasync (the deliberately broken build
    /// for the suite's control experiment: with [`super::Fault::PowerLoss`] of every member,
    /// acknowledged writes are lost).
    pub const LOG_SKIP_FSYNC: &str = "raftlog::skip_fsync";
    /// `return`: a power loss at the next append (unsynced tail dropped, process killed).
    pub const LOG_POWER_LOSS: &str = "raftlog::power_loss";
    /// Before the state machine builds a snapshot.
    pub const SNAPSHOT_BUILD: &str = "snapshot::build";
    /// Before a follower installs a snapshot the leader sent.
    pub const SNAPSHOT_INSTALL: &str = "snapshot::install";
    /// Before the log purges entries a snapshot holds.
    pub const LOG_PURGE: &str = "raftlog::purge";
}

impl Fault {
    /// Every fault that applies to `cluster`: process faults and membership changes always,
    /// network faults if it is isolated (blackhole until snapshot only if it was started with
    /// `--snapshot-count`), failpoints and power loss if it is shoal kv with failpoints, and a
    /// few combinations.
    pub fn catalogue(cluster: &StoreCluster) -> Vec<Fault> {
        let mut faults = vec![
            Fault::Kill(Target::Leader),
            Fault::Kill(Target::Follower),
            Fault::Stop(Target::Leader),
            Fault::Stop(Target::Follower),
            Fault::WipeAndRejoin(Target::Follower),
            Fault::MembershipChange,
            Fault::Both(
                Box::new(Fault::Stop(Target::Follower)),
                Box::new(Fault::Kill(Target::Leader)),
            ),
        ];
        if cluster.isolation().is_some() {
            faults.extend([
                Fault::Partition(Target::Leader),
                Fault::Partition(Target::Follower),
                Fault::OneWayDrop {
                    from: Target::Leader,
                    to: Target::Follower,
                },
                Fault::OneWayDrop {
                    from: Target::Follower,
                    to: Target::Leader,
                },
                Fault::Both(
                    Box::new(Fault::Partition(Target::Follower)),
                    Box::new(Fault::Kill(Target::Leader)),
                ),
            ]);
        }
        // With the default snapshot count a snapshot is 100 000 entries away: only a cluster
        // started with a small `--snapshot-count` gets there within a round.
        if cluster.isolation().is_some() && flag_value(cluster, "--snapshot-count").is_some() {
            faults.push(Fault::BlackholeUntilSnapshot {
                target: Target::Follower,
                entries: snapshot_entries(cluster),
            });
        }
        if cluster.has_failpoints() {
            let failpoint = |target, name: &str, action: &str| Fault::Failpoint {
                target,
                name: name.to_string(),
                action: action.to_string(),
            };
            faults.extend([
                failpoint(Target::Leader, points::LOG_APPEND, "panic"),
                failpoint(Target::Follower, points::LOG_APPEND, "panic"),
                failpoint(Target::Leader, points::LOG_FSYNC, "sleep(300)"),
                failpoint(Target::Follower, points::LOG_FSYNC, "panic"),
                failpoint(Target::Leader, points::LOG_POWER_LOSS, "return"),
                failpoint(Target::Leader, points::SNAPSHOT_BUILD, "panic"),
                failpoint(Target::Follower, points::SNAPSHOT_INSTALL, "panic"),
                failpoint(Target::All, points::LOG_PURGE, "panic"),
                Fault::PowerLoss(Target::Leader),
                Fault::PowerLoss(Target::Follower),
                Fault::PowerLoss(Target::All),
            ]);
        }
        faults
    }

    /// A short description for reports, e.g. `kill -9 leader`.
    pub fn name(&self) -> String {
        self.to_string()
    }

    /// Whether the fault can be injected into `cluster` (see the module's list).
    pub fn applies_to(&self, cluster: &StoreCluster) -> bool {
        self.requirement(cluster).is_none()
    }

    /// What `cluster` lacks for this fault, if anything.
    fn requirement(&self, cluster: &StoreCluster) -> Option<&'static str> {
        match self {
            Fault::Partition(_)
            | Fault::OneWayDrop { .. }
            | Fault::BlackholeUntilSnapshot { .. }
                if cluster.isolation().is_none() =>
            {
                Some("an isolated cluster (StoreClusterBuilder::isolated)")
            }
            Fault::Failpoint { .. } | Fault::PowerLoss(_) if !cluster.has_failpoints() => {
                Some("shoal kv with failpoints (StoreClusterBuilder::failpoints)")
            }
            Fault::Both(a, b) => a.requirement(cluster).or_else(|| b.requirement(cluster)),
            _ => None,
        }
    }

    /// Injects the fault; the returned [`Injected`] heals it.
    pub fn inject(&self, cluster: &mut StoreCluster) -> Result<Injected> {
        if let Some(needs) = self.requirement(cluster) {
            return Err(Error::Fault(format!("{self} needs {needs}")));
        }
        let mut injected = Injected {
            fault: self.clone(),
            description: String::new(),
            undo: Vec::new(),
            at: Instant::now(),
        };
        let description = self.inject_into(cluster, &mut injected.undo);
        match description {
            Ok(description) => {
                injected.description = description;
                Ok(injected)
            }
            Err(err) => {
                // What was done so far is undone, so a failed injection leaves no fault behind.
                let healed = injected.heal(cluster);
                Err(match healed {
                    Ok(()) => err,
                    Err(heal) => Error::Fault(format!("{err}; undoing it: {heal}")),
                })
            }
        }
    }

    /// Injects, recording how to undo each step; describes what it hit.
    fn inject_into(&self, cluster: &mut StoreCluster, undo: &mut Vec<Undo>) -> Result<String> {
        match self {
            Fault::Kill(target) => {
                let members = resolve(cluster, *target)?;
                for &i in &members {
                    cluster.kill(i);
                }
                undo.push(Undo::Restart(members.clone()));
                Ok(format!("{self} ({})", names(cluster, &members)))
            }
            Fault::Stop(target) => {
                let members = resolve(cluster, *target)?;
                for &i in &members {
                    cluster.pause(i);
                }
                undo.push(Undo::Resume(members.clone()));
                Ok(format!("{self} ({})", names(cluster, &members)))
            }
            Fault::Partition(target) => {
                let member = resolve_one(cluster, *target)?;
                undo.push(Undo::Uncut(vec![partition(cluster, member)?]));
                Ok(format!("{self} ({})", cluster.specs[member].name))
            }
            Fault::OneWayDrop { from, to } => {
                let from = resolve_one(cluster, *from)?;
                let to = resolve_one(cluster, *to)?;
                if from == to {
                    return Err(Error::Fault(format!("{self}: both ends are member {from}")));
                }
                let netns = member_netns(cluster, to)?;
                let cut = Cut::install(&netns, &[cluster.specs[from].peer_ip], &[])?;
                undo.push(Undo::Uncut(vec![cut]));
                let (from, to) = (&cluster.specs[from].name, &cluster.specs[to].name);
                Ok(format!("{self} ({from} -> {to})"))
            }
            Fault::WipeAndRejoin(target) => {
                let member = resolve_one(cluster, *target)?;
                wipe(cluster, member)?;
                undo.push(Undo::Rejoin(member));
                Ok(format!("{self} ({})", cluster.specs[member].name))
            }
            Fault::BlackholeUntilSnapshot { target, entries } => {
                let member = resolve_one(cluster, *target)?;
                let leader = cluster.current_leader()?;
                if leader == member {
                    return Err(Error::Fault(format!("{self}: the target leads")));
                }
                let from_index = cluster.status(leader)?.raft_index;
                let cut = partition(cluster, member)?;
                undo.push(Undo::UncutAfter {
                    cut,
                    until_index: from_index + entries,
                });
                Ok(format!(
                    "{self} ({}, from index {from_index})",
                    cluster.specs[member].name
                ))
            }
            Fault::MembershipChange => {
                let added = add_member(cluster)?;
                let description = format!("{self} ({})", added.name);
                undo.push(Undo::RemoveMember(added));
                Ok(description)
            }
            Fault::Failpoint {
                target,
                name,
                action,
            } => {
                let members = resolve(cluster, *target)?;
                undo.push(Undo::ClearFailpoint {
                    members: members.clone(),
                    name: name.clone(),
                });
                for &i in &members {
                    set_failpoint(&cluster.specs[i], name, action)?;
                }
                Ok(format!("{self} ({})", names(cluster, &members)))
            }
            Fault::PowerLoss(target) => {
                let members = resolve(cluster, *target)?;
                undo.push(Undo::Restart(members.clone()));
                for &i in &members {
                    power_loss(cluster, i)?;
                }
                Ok(format!("{self} ({})", names(cluster, &members)))
            }
            Fault::Both(a, b) => {
                let first = a.inject_into(cluster, undo)?;
                let second = b.inject_into(cluster, undo)?;
                Ok(format!("{first} + {second}"))
            }
        }
    }
}

/// A fault in effect; [`Injected::heal`] ends it.
#[must_use = "a fault stays until healed"]
#[derive(Debug)]
pub struct Injected {
    fault: Fault,
    description: String,
    undo: Vec<Undo>,
    at: Instant,
}

/// One step of healing.
#[derive(Debug)]
enum Undo {
    Restart(Vec<usize>),
    Resume(Vec<usize>),
    Uncut(Vec<Cut>),
    Rejoin(usize),
    UncutAfter { cut: Cut, until_index: u64 },
    RemoveMember(AddedMember),
    ClearFailpoint { members: Vec<usize>, name: String },
}

impl Injected {
    /// The fault as injected.
    pub fn fault(&self) -> &Fault {
        &self.fault
    }

    /// What was injected into which members, e.g. `kill -9 leader (bravo)`.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// When it was injected.
    pub fn injected_at(&self) -> Instant {
        self.at
    }

    /// Undoes every step in reverse, then waits until every running member answers. Every step
    /// is tried even when one fails; the first error is returned.
    pub fn heal(mut self, cluster: &mut StoreCluster) -> Result<()> {
        let mut first_error = None;
        while let Some(step) = self.undo.pop() {
            if let Err(err) = step.run(cluster) {
                first_error.get_or_insert(err);
            }
        }
        if let Err(err) = wait_responsive(cluster) {
            first_error.get_or_insert(err);
        }
        match first_error {
            None => Ok(()),
            Some(err) => Err(Error::Fault(format!("healing {}: {err}", self.description))),
        }
    }
}

impl Undo {
    fn run(self, cluster: &mut StoreCluster) -> Result<()> {
        match self {
            Undo::Restart(members) => {
                for &i in &members {
                    if !cluster.is_running(i) {
                        cluster.spawn(i);
                    }
                }
                Ok(())
            }
            Undo::Resume(members) => {
                members.into_iter().for_each(|i| cluster.resume(i));
                Ok(())
            }
            Undo::Uncut(cuts) => cuts.into_iter().try_for_each(Cut::remove),
            Undo::Rejoin(member) => rejoin(cluster, member),
            Undo::UncutAfter { cut, until_index } => {
                let reached = wait_leader_index(cluster, until_index);
                cut.remove()?;
                reached
            }
            Undo::RemoveMember(added) => remove_added(cluster, added),
            Undo::ClearFailpoint { members, name } => {
                let mut result = Ok(());
                for i in members {
                    if crashed(cluster, i) {
                        cluster.kill(i);
                        cluster.spawn(i);
                    } else if let Err(err) = clear_failpoint(&cluster.specs[i], &name) {
                        result = Err(err);
                    }
                }
                result
            }
        }
    }
}

/// The members `target` names now.
fn resolve(cluster: &StoreCluster, target: Target) -> Result<Vec<usize>> {
    match target {
        Target::All => Ok((0..cluster.specs.len())
            .filter(|&i| cluster.is_running(i))
            .collect()),
        one => resolve_one(cluster, one).map(|i| vec![i]),
    }
}

/// The one member `target` names now.
fn resolve_one(cluster: &StoreCluster, target: Target) -> Result<usize> {
    static NEXT_FOLLOWER: AtomicUsize = AtomicUsize::new(0);
    match target {
        Target::Member(i) if i < cluster.specs.len() => Ok(i),
        Target::Member(i) => Err(Error::Fault(format!("there is no member {i}"))),
        Target::Leader => cluster.current_leader(),
        Target::Follower => {
            let leader = cluster.current_leader()?;
            let followers: Vec<usize> = (0..cluster.specs.len())
                .filter(|&i| i != leader && cluster.is_responsive(i))
                .collect();
            if followers.is_empty() {
                return Err(Error::Fault("no responsive follower".to_string()));
            }
            Ok(followers[NEXT_FOLLOWER.fetch_add(1, Ordering::Relaxed) % followers.len()])
        }
        Target::All => Err(Error::Fault("this fault hits one member".to_string())),
    }
}

fn names(cluster: &StoreCluster, members: &[usize]) -> String {
    members
        .iter()
        .map(|&i| cluster.specs[i].name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn member_netns(cluster: &StoreCluster, member: usize) -> Result<String> {
    cluster.specs[member]
        .netns
        .clone()
        .ok_or_else(|| Error::Fault(format!("member {member} has no namespace of its own")))
}

/// Drops member `member`'s packets to and from every other member slot.
fn partition(cluster: &StoreCluster, member: usize) -> Result<Cut> {
    let isolation = cluster
        .isolation()
        .ok_or_else(|| Error::Fault("partitions need an isolated cluster".to_string()))?;
    let own = cluster.specs[member].peer_ip;
    let others: Vec<_> = isolation
        .member_ips()
        .into_iter()
        .filter(|ip| *ip != own)
        .collect();
    Cut::install(&member_netns(cluster, member)?, &others, &others)
}

/// Waits until every running, unpaused member answers a linearizable read; fails at once if
/// one has exited.
fn wait_responsive(cluster: &mut StoreCluster) -> Result<()> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let responsive: Vec<usize> = (0..cluster.specs.len())
        .filter(|&i| cluster.is_responsive(i))
        .collect();
    for i in responsive {
        while !cluster.member_ready(i) {
            if crashed(cluster, i) {
                return Err(Error::Fault(format!(
                    "{} exited:\n{}",
                    cluster.specs[i].name,
                    cluster.log(i)
                )));
            }
            if Instant::now() > deadline {
                return Err(Error::Fault(format!(
                    "{} did not answer within {SETTLE_TIMEOUT:?}",
                    cluster.specs[i].name
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// Waits until the leader's log reaches `index`.
fn wait_leader_index(cluster: &StoreCluster, index: u64) -> Result<()> {
    let deadline = Instant::now() + BLACKHOLE_TIMEOUT;
    let mut reached = 0;
    while Instant::now() < deadline {
        if let Ok(status) = cluster
            .current_leader()
            .and_then(|leader| cluster.status(leader))
        {
            reached = status.raft_index;
            if reached >= index {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(Error::Fault(format!(
        "the leader's log reached index {reached}, not {index}, within {BLACKHOLE_TIMEOUT:?}: \
         not enough writes to force a snapshot"
    )))
}

/// Whether member `i` was started and has exited on its own since (a crash).
fn crashed(cluster: &mut StoreCluster, i: usize) -> bool {
    cluster.process_mut(i).is_some_and(|p| p.exited().is_some())
}

/// Removes member `member` from the cluster, kills it and wipes its data dir.
fn wipe(cluster: &mut StoreCluster, member: usize) -> Result<()> {
    let name = cluster.specs[member].name.clone();
    let id = cluster
        .member_list()?
        .into_iter()
        .find(|m| m.name == name)
        .ok_or_else(|| Error::Fault(format!("{name} is not in the member list")))?
        .id;
    cluster.kill(member);
    retry_ctl(
        cluster,
        Some(member),
        &["member", "remove", &format!("{id:x}")],
    )?;
    let dir = &cluster.specs[member].data_dir;
    match std::fs::remove_dir_all(dir) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::Fault(format!("wiping {}: {err}", dir.display())))
        }
        _ => Ok(()),
    }
}

/// Adds wiped member `member` back and starts it empty, joining the cluster.
fn rejoin(cluster: &mut StoreCluster, member: usize) -> Result<()> {
    let spec = cluster.specs[member].clone();
    let peer_urls = format!("--peer-urls={}", spec.peer_url());
    retry_ctl(
        cluster,
        Some(member),
        &["member", "add", &spec.name, &peer_urls],
    )?;
    let state = cluster.state;
    cluster.state = "existing";
    cluster.spawn(member);
    cluster.state = state;
    Ok(())
}

/// The member [`Fault::MembershipChange`] added.
#[derive(Debug)]
struct AddedMember {
    name: String,
    peer_url: String,
    process: Process,
}

/// Adds a member named [`EXTRA_MEMBER`] and starts it; waits until it answers.
fn add_member(cluster: &mut StoreCluster) -> Result<AddedMember> {
    let spec = cluster.extra_member_spec(EXTRA_MEMBER)?;
    let peer_urls = format!("--peer-urls={}", spec.peer_url());
    retry_ctl(cluster, None, &["member", "add", &spec.name, &peer_urls])?;
    let initial_cluster = format!(
        "{},{}={}",
        cluster.initial_cluster(),
        spec.name,
        spec.peer_url()
    );
    let process = cluster.spawn_extra(&spec, &initial_cluster);
    let added = AddedMember {
        name: spec.name.clone(),
        peer_url: spec.peer_url(),
        process,
    };
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while !cluster.spec_ready(&spec) {
        if Instant::now() > deadline {
            remove_added(cluster, added)?;
            return Err(Error::Fault(format!(
                "{EXTRA_MEMBER} did not answer within {SETTLE_TIMEOUT:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(added)
}

/// Removes the member [`Fault::MembershipChange`] added, then stops it.
fn remove_added(cluster: &mut StoreCluster, mut added: AddedMember) -> Result<()> {
    let id = cluster
        .member_list()?
        .into_iter()
        // A member that never started has no name yet: its peer URL tells it.
        .find(|m| m.name == added.name || m.peer_urls.contains(&added.peer_url))
        .map(|m| m.id);
    let removed = match id {
        Some(id) => retry_ctl(cluster, None, &["member", "remove", &format!("{id:x}")]),
        None => Ok(String::new()),
    };
    added.process.kill();
    removed.map(drop)
}

/// Runs etcdctl against the responsive members other than `except` until it succeeds (a
/// membership change is refused while a leader is being elected); its stdout.
fn retry_ctl(cluster: &StoreCluster, except: Option<usize>, args: &[&str]) -> Result<String> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let mut last = None;
        for i in (0..cluster.specs.len()).filter(|&i| Some(i) != except && cluster.is_responsive(i))
        {
            match cluster.ctl_member(i, args) {
                Ok(out) => return Ok(out),
                Err(err) => last = Some(err),
            }
        }
        if Instant::now() > deadline {
            return Err(last.unwrap_or_else(|| Error::Fault("no responsive member".to_string())));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sets failpoint `name` to `action` on the member of `spec` (`PUT /<name>`).
pub fn set_failpoint(spec: &MemberSpec, name: &str, action: &str) -> Result<()> {
    control(spec, "PUT", name, action).map(drop)
}

/// Clears failpoint `name` on the member of `spec` (`DELETE /<name>`).
pub fn clear_failpoint(spec: &MemberSpec, name: &str) -> Result<()> {
    control(spec, "DELETE", name, "").map(drop)
}

/// The member's failpoints and their actions, one `name=action` a line (`GET /`).
pub fn list_failpoints(spec: &MemberSpec) -> Result<String> {
    control(spec, "GET", "", "")
}

/// Cuts member `i`'s power: its log loses what was not fdatasync'ed and the process dies
/// (`POST /power-loss`); waits until it has exited.
pub fn power_loss(cluster: &mut StoreCluster, i: usize) -> Result<()> {
    let Some(process) = cluster.process_mut(i) else {
        return Ok(());
    };
    if process.exited().is_none() {
        // The connection dies with the process: no answer is the expected one.
        let _ = control(&cluster.specs[i], "POST", "power-loss", "");
    }
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while !crashed(cluster, i) {
        if Instant::now() > deadline {
            return Err(Error::Fault(format!(
                "{} still runs after its power loss",
                cluster.specs[i].name
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cluster.kill(i); // reaps it and marks it down
    Ok(())
}

/// One request to a member's failpoint control API; the response body on a 2xx status.
fn control(spec: &MemberSpec, method: &str, path: &str, body: &str) -> Result<String> {
    let addr = spec
        .failpoints_addr()
        .ok_or_else(|| Error::Fault(format!("{} serves no failpoint control API", spec.name)))?;
    let failed = |why: String| Error::Fault(format!("{method} /{path} on {addr}: {why}"));
    let socket = addr
        .parse()
        .map_err(|err| failed(format!("bad address: {err}")))?;
    let mut stream = TcpStream::connect_timeout(&socket, CONTROL_TIMEOUT)
        .map_err(|err| failed(err.to_string()))?;
    stream
        .set_read_timeout(Some(CONTROL_TIMEOUT))
        .map_err(|err| failed(err.to_string()))?;
    let request = format!(
        "{method} /{path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|err| failed(err.to_string()))?;
    let mut response = String::new();
    stream
        .take(1024 * 1024)
        .read_to_string(&mut response)
        .map_err(|err| failed(err.to_string()))?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if status.starts_with('2') {
        Ok(body.to_string())
    } else {
        Err(failed(format!("{head}: {body}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_have_descriptive_names() {
        let both = Fault::Both(
            Box::new(Fault::Stop(Target::Follower)),
            Box::new(Fault::Kill(Target::Leader)),
        );
        assert_eq!(both.name(), "SIGSTOP follower + kill -9 leader");
        let drop = Fault::OneWayDrop {
            from: Target::Leader,
            to: Target::Member(2),
        };
        assert_eq!(drop.name(), "drop packets leader -> member 2");
    }
}
