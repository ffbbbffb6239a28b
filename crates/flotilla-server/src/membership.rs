//! Changing the replica set: adding a replica (learner → caught up → voter), removing one,
//! handing leadership to another voter, pinning each member to one incarnation of its data dir,
//! and a removed replica noticing that it was removed.
//!
//! ```text
//!  add-replica N ADDR      leader: Hello ADDR (id, cluster, incarnation, empty?) ─▶ add_learner
//!                          (pinned to that incarnation) ─▶ wait until caught up ─▶ voter
//!  remove-replica N        leader: quorum check ─▶ change_membership without N ─▶ N exits
//!  transfer-leader N       leader: hold proposals, heartbeats off ─▶ N caught up ─▶ ElectNow
//!                          (release) to the other voters: each gives the leader's lease up by
//!                          standing once ─▶ ElectNow to N: stand at once above their term (or,
//!                          if too few released, after the lease) ─▶ heartbeats back on
//! ```
//!
//! Incarnation pinning: every peer message names the incarnation its sender's membership records
//! for the receiver, and the sender's own id and incarnation. A replica refuses a message
//! addressed to another incarnation of itself, and a sender its membership pins to another
//! incarnation: a replica whose data dir was wiped can neither take entries nor vote as the
//! member whose log it lost, until an operator removes that member and adds it again. Initial
//! members are listed by address only (not pinned); the leader pins each on first contact
//! (Hello) by a membership change, so the window in which a wiped initial member could pass for
//! the old one is the few seconds between bootstrap and the first leader's pinning round.
//!
//! Must not depend on `rocksdb`; membership lives in openraft's log like any entry.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_proto::raftpb;

use crate::peer_auth::PeerSecret;
use flotilla_store::Node;
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, RaftMetrics, ServerState};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::{error, info, warn};

use crate::error::ApiError;
use crate::leadership::{forwarded, leader_hint, now_ms};
use crate::network::call_once;
use crate::proposer::Proposer;
use crate::Raft;

/// Who this replica is.
#[derive(Debug, Clone)]
pub struct Me {
    pub node_id: u64,
    pub cluster_name: String,
    /// The incarnation of this replica's data dir.
    pub incarnation: String,
    /// The cluster secret this replica's peer calls carry (see `peer_auth`).
    pub peer_secret: Option<PeerSecret>,
    /// This replica's TLS: peer calls are mutual TLS when set.
    pub tls: Option<std::sync::Arc<flotilla_tls::ReplicaTls>>,
}

/// How long a Hello may take (connect included).
const HELLO_TIMEOUT: Duration = Duration::from_secs(2);
/// A learner within this many entries of the leader's log counts as caught up.
const CAUGHT_UP_LAG: u64 = 100;
/// A learner whose matched index does not move for this long is given up on.
const NO_PROGRESS_TIMEOUT: Duration = Duration::from_secs(60);
/// Default longest wait for a learner to catch up.
const DEFAULT_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(600);
/// How often the leader looks for unpinned members, and a doubtful replica for its removal.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

type Metrics = RaftMetrics<u64, Node>;

/// The membership operations of one replica (they run on the leader).
pub struct Membership {
    pub raft: Raft,
    pub me: Me,
    pub proposer: Proposer,
    /// The voters' leader lease (openraft: election_timeout_max).
    pub lease: Duration,
    pub heartbeat: Duration,
    /// One membership operation at a time on this replica.
    busy: tokio::sync::Mutex<()>,
    /// The voter leadership is being handed to, while a transfer runs here.
    handing_to: HandingTo,
}

/// On a leader handing leadership over: the target, whose candidacy alone this replica may vote
/// for until the transfer ends (`raft_service` refuses the others). A released voter stands
/// once above the leader's term; without this, the old leader (whose own lease runs from its
/// election, not its heartbeats) grants that candidacy when its log is complete, and the
/// released voter, not the target, takes over. Refusing a vote is always safe.
#[derive(Clone, Default)]
pub(crate) struct HandingTo(Arc<AtomicU64>);

impl HandingTo {
    /// The target of the transfer under way, if any.
    pub(crate) fn target(&self) -> Option<u64> {
        Some(self.0.load(Ordering::Acquire)).filter(|t| *t != 0)
    }
}

/// The refusal a replica whose data dir is not the pinned one gets.
fn wrong_incarnation(id: u64, found: &str, expected: &str) -> String {
    format!(
        "replica {id}'s data dir is not the one the cluster knows (incarnation {found}, expected {expected}): remove replica {id} and add it again"
    )
}

/// Refuses a peer call (ElectNow, Silence) from another cluster, or addressed to another
/// incarnation of this replica (an empty `to_incarnation`: not pinned yet).
pub(crate) fn check_addressed(me: &Me, cluster: &str, to_incarnation: &str) -> Result<(), Status> {
    if cluster != me.cluster_name {
        return Err(Status::permission_denied(format!(
            "message from cluster {cluster:?}, this replica belongs to {:?}",
            me.cluster_name
        )));
    }
    if !to_incarnation.is_empty() && to_incarnation != me.incarnation {
        return Err(Status::failed_precondition(wrong_incarnation(
            me.node_id,
            &me.incarnation,
            to_incarnation,
        )));
    }
    Ok(())
}

/// Logs `message` unless one was logged through `last_ms` in the last 10 s.
pub(crate) fn warn_throttled(last_ms: &AtomicU64, message: &str) {
    let now = now_ms();
    let last = last_ms.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= 10_000
        && last_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        warn!("{message}");
    }
}

static REFUSED_WARNED_MS: AtomicU64 = AtomicU64::new(0);

/// Checks the incarnations a peer message carries against this replica and its membership.
pub(crate) fn check_incoming(
    raft: &Raft,
    me: &Me,
    msg: &raftpb::RaftMessage,
) -> Result<(), Status> {
    let pinned_sender = || {
        raft.metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&msg.from_id)
            .map(|n| n.incarnation.clone())
    };
    match refusal(me, msg, pinned_sender) {
        None => Ok(()),
        Some(m) => {
            warn_throttled(&REFUSED_WARNED_MS, &format!("refused a peer message: {m}"));
            Err(Status::failed_precondition(m))
        }
    }
}

/// The rule of incarnation pinning, for one message: refused (why) when it is addressed to
/// another incarnation of this replica, or comes from a sender that this replica's membership
/// (`pinned_sender`: the sender's recorded incarnation) pins to another one. An empty
/// incarnation on either side means "not pinned" or "not known" and refuses nothing.
fn refusal(
    me: &Me,
    msg: &raftpb::RaftMessage,
    pinned_sender: impl FnOnce() -> Option<String>,
) -> Option<String> {
    if !msg.to_incarnation.is_empty() && msg.to_incarnation != me.incarnation {
        return Some(wrong_incarnation(
            me.node_id,
            &me.incarnation,
            &msg.to_incarnation,
        ));
    }
    if msg.from_id == 0 || msg.from_incarnation.is_empty() {
        return None;
    }
    match pinned_sender() {
        Some(pinned) if !pinned.is_empty() && pinned != msg.from_incarnation => Some(
            wrong_incarnation(msg.from_id, &msg.from_incarnation, &pinned),
        ),
        _ => None,
    }
}

/// The answer to a Hello: who this replica is and which membership it has committed.
pub(crate) async fn hello(raft: &Raft, me: &Me) -> Result<raftpb::HelloReply, Status> {
    let (index, members) = raft
        .with_raft_state(|st| {
            let c = st.membership_state.committed();
            let members: Vec<raftpb::HelloMember> = c
                .membership()
                .nodes()
                .map(|(id, n)| raftpb::HelloMember {
                    id: *id,
                    incarnation: n.incarnation.clone(),
                })
                .collect();
            (c.log_id().map_or(0, |l| l.index), members)
        })
        .await
        .map_err(|e| Status::unavailable(format!("raft stopped: {e}")))?;
    let m = raft.metrics().borrow().clone();
    Ok(raftpb::HelloReply {
        node_id: me.node_id,
        cluster: me.cluster_name.clone(),
        incarnation: me.incarnation.clone(),
        initialized: m.last_log_index.is_some() || m.current_term > 0,
        membership_index: index,
        members,
    })
}

/// Asks the replica at `addr` who it is.
pub(crate) async fn hello_at(addr: &str, me: &Me) -> Result<raftpb::HelloReply, String> {
    let request = raftpb::HelloRequest {
        cluster: me.cluster_name.clone(),
    };
    call_once(
        me.tls.as_ref(),
        me.peer_secret.as_ref(),
        addr,
        HELLO_TIMEOUT,
        request,
        |mut c, r| async move { c.hello(r).await },
    )
    .await
}

/// Whether a pristine replica with initial members `peers` should bootstrap the cluster: not
/// when a peer already holds a log (the cluster exists; this data dir is new, e.g. wiped).
pub(crate) async fn should_bootstrap(me: &Me, peers: &BTreeMap<u64, String>) -> bool {
    for (id, addr) in peers {
        if *id == me.node_id {
            continue;
        }
        if let Ok(reply) = hello_at(addr, me).await {
            if reply.cluster == me.cluster_name && reply.initialized {
                info!(
                    peer = id,
                    "a peer already holds a log: not bootstrapping; as an initial member this \
                     replica catches up from the leader; if its data dir was wiped, it is \
                     refused until `flotilla cluster remove-replica {0}` and \
                     `flotilla cluster add-replica {0} ADDR`",
                    me.node_id
                );
                return false;
            }
        }
    }
    true
}

/// Bootstraps a pristine replica: proposes the initial membership (every initial member may;
/// they propose the same one), unless it was started to join an existing cluster or a peer
/// already holds a log.
pub(crate) async fn bootstrap(raft: Raft, me: Me, peers: BTreeMap<u64, String>, join: Vec<String>) {
    if !join.is_empty() {
        info!(
            node_id = me.node_id,
            "empty replica waiting to be added: run `flotilla --cluster {} cluster add-replica {} ADDR`",
            join.join(","),
            me.node_id
        );
        return;
    }
    if !should_bootstrap(&me, &peers).await {
        return;
    }
    let members: BTreeMap<u64, Node> = peers
        .iter()
        .map(|(id, addr)| (*id, Node::new(addr.clone())))
        .collect();
    match raft.initialize(members).await {
        Ok(()) => info!(node_id = me.node_id, "cluster bootstrapped"),
        Err(e) => info!(error = %e, "bootstrap skipped"),
    }
}

fn raft_write_error(e: RaftError<u64, ClientWriteError<u64, Node>>) -> ApiError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => forwarded(f),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(e),
        )) => ApiError::Unavailable(format!("another membership change is in progress: {e}")),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ApiError::FailedPrecondition(e.to_string())
        }
        RaftError::Fatal(e) => ApiError::Unavailable(format!("raft stopped: {e}")),
    }
}

fn invalid(field: &str, message: String) -> ApiError {
    ApiError::Invalid {
        field: field.into(),
        message,
    }
}

fn valid_addr(addr: &str) -> bool {
    addr.rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
}

/// What AddReplica reports.
pub struct Added {
    pub incarnation: String,
    pub catch_up: Duration,
    pub membership_index: u64,
}

/// Holds proposals and heartbeats while leadership moves; restores both when dropped.
struct Quiet<'a> {
    raft: &'a Raft,
    _hold: crate::proposer::Hold,
    handing_to: &'a HandingTo,
}

impl Drop for Quiet<'_> {
    fn drop(&mut self) {
        self.handing_to.0.store(0, Ordering::Release);
        self.raft.runtime_config().heartbeat(true);
    }
}

impl Membership {
    pub fn new(
        raft: Raft,
        me: Me,
        proposer: Proposer,
        lease: Duration,
        heartbeat: Duration,
    ) -> Self {
        Membership {
            raft,
            me,
            proposer,
            lease,
            heartbeat,
            busy: tokio::sync::Mutex::new(()),
            handing_to: HandingTo::default(),
        }
    }

    /// The transfer target this replica's vote is pinned to while it hands leadership over.
    pub(crate) fn handing_to(&self) -> HandingTo {
        self.handing_to.clone()
    }

    fn metrics(&self) -> Metrics {
        self.raft.metrics().borrow().clone()
    }

    /// The leader's metrics, its membership uniform. A joint membership that no change on this
    /// replica is completing (callers hold `busy`) was left by a leader that failed between the
    /// two steps of a change; it is completed first, to the new configuration, as openraft's
    /// second step would have.
    async fn leader_metrics(&self) -> Result<Metrics, ApiError> {
        let m = self.metrics();
        if m.state != ServerState::Leader {
            return Err(leader_hint(&self.raft));
        }
        let joint = m.membership_config.membership().get_joint_config().clone();
        if joint.len() <= 1 {
            return Ok(m);
        }
        let goal = joint.last().cloned().unwrap_or_default();
        info!(voters = ?goal, "completing a membership change left half done");
        self.raft
            .change_membership(ChangeMembers::ReplaceAllVoters(goal), false)
            .await
            .map_err(raft_write_error)?;
        let m = self.metrics();
        if m.state != ServerState::Leader {
            return Err(leader_hint(&self.raft));
        }
        if m.membership_config.membership().get_joint_config().len() > 1 {
            return Err(ApiError::Unavailable(
                "a membership change is in progress; retry".into(),
            ));
        }
        Ok(m)
    }

    /// Adds replica `id` at `addr`: as a learner pinned to its incarnation, then, once caught
    /// up, as a voter. Bad input is refused before anything changes.
    pub async fn add_replica(
        &self,
        id: u64,
        addr: &str,
        timeout: Option<Duration>,
    ) -> Result<Added, ApiError> {
        if id == 0 {
            return Err(invalid("id", "must be at least 1".into()));
        }
        if !valid_addr(addr) {
            return Err(invalid("addr", format!("{addr:?} is not HOST:PORT")));
        }
        let _busy = self.busy.lock().await;
        let m = self.leader_metrics().await?;
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let existing = membership.get_node(&id).cloned();
        if let Some(node) = &existing {
            // A learner left behind by an add that did not finish may be resumed; anything
            // else with this id is a member already.
            if voters.contains(&id) || node.addr != addr {
                return Err(invalid(
                    "id",
                    format!(
                        "replica {id} is already a member ({} at {}); remove it first",
                        if voters.contains(&id) {
                            "voter"
                        } else {
                            "learner"
                        },
                        node.addr
                    ),
                ));
            }
        }
        if let Some((other, _)) = membership
            .nodes()
            .find(|(other, n)| **other != id && n.addr == addr)
        {
            return Err(invalid(
                "addr",
                format!("{addr} is already the address of replica {other}"),
            ));
        }
        let reply = hello_at(addr, &self.me)
            .await
            .map_err(|e| invalid("addr", format!("cannot reach a replica at {addr}: {e}")))?;
        if reply.cluster != self.me.cluster_name {
            return Err(invalid(
                "addr",
                format!(
                    "the replica at {addr} belongs to cluster {:?}, not {:?}",
                    reply.cluster, self.me.cluster_name
                ),
            ));
        }
        if reply.node_id != id {
            return Err(invalid(
                "id",
                format!(
                    "the replica at {addr} is replica {}, not {id}",
                    reply.node_id
                ),
            ));
        }
        let node = Node::pinned(addr, reply.incarnation.clone());
        match &existing {
            Some(old) if old.incarnation != reply.incarnation => {
                return Err(invalid(
                    "id",
                    format!(
                    "learner {id} at {addr} was added with another data dir ({}); remove it first",
                    old.incarnation
                ),
                ))
            }
            Some(_) => info!(node_id = id, "resuming the addition of a learner"),
            None => {
                if reply.initialized {
                    return Err(invalid(
                        "addr",
                        format!(
                            "the replica at {addr} already holds a log (it was a member before or bootstrapped on its own): start it with an empty data dir and --join"
                        ),
                    ));
                }
                info!(node_id = id, addr, incarnation = %reply.incarnation, "adding a learner");
                self.raft
                    .add_learner(id, node.clone(), false)
                    .await
                    .map_err(raft_write_error)?;
            }
        }

        let started = Instant::now();
        let deadline = started + timeout.unwrap_or(DEFAULT_CATCH_UP_TIMEOUT);
        self.wait_caught_up(id, deadline).await?;
        let catch_up = started.elapsed();
        info!(
            node_id = id,
            catch_up_ms = catch_up.as_millis() as u64,
            "learner caught up; making it a voter"
        );
        let resp = self
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(raft_write_error)?;
        info!(
            node_id = id,
            index = resp.log_id.index,
            "replica added as a voter"
        );
        Ok(Added {
            incarnation: reply.incarnation,
            catch_up,
            membership_index: resp.log_id.index,
        })
    }

    /// Waits until the leader's log and learner `id`'s matched index are close.
    async fn wait_caught_up(&self, id: u64, deadline: Instant) -> Result<(), ApiError> {
        let mut metrics = self.raft.metrics();
        let mut progress = (0u64, Instant::now());
        loop {
            let (state, matched, last) = {
                let m = metrics.borrow();
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id).copied().flatten())
                    .map(|l| l.index);
                (m.state, matched, m.last_log_index.unwrap_or(0))
            };
            if state != ServerState::Leader {
                return Err(leader_hint(&self.raft));
            }
            if let Some(matched) = matched {
                if matched + CAUGHT_UP_LAG >= last {
                    return Ok(());
                }
                if matched > progress.0 {
                    progress = (matched, Instant::now());
                }
            }
            let now = Instant::now();
            if now >= deadline || now.duration_since(progress.1) >= NO_PROGRESS_TIMEOUT {
                return Err(ApiError::Unavailable(format!(
                    "learner {id} did not catch up (matched {} of {last}); it stays a learner: \
                     add-replica again to resume, or remove-replica {id}",
                    matched.map_or("nothing".into(), |m| m.to_string())
                )));
            }
            let wait = tokio::time::timeout(Duration::from_millis(200), metrics.changed()).await;
            if let Ok(Err(_)) = wait {
                return Err(ApiError::Unavailable("replica is shutting down".into()));
            }
        }
    }

    /// Removes replica `id` (voter or learner). Refused when it would leave no voter or no
    /// quorum of reachable voters. Removing the leader itself first hands leadership over.
    pub async fn remove_replica(&self, id: u64) -> Result<u64, ApiError> {
        let _busy = self.busy.lock().await;
        let m = self.leader_metrics().await?;
        let membership = m.membership_config.membership();
        if membership.get_node(&id).is_none() {
            return Err(invalid("id", format!("replica {id} is not a member")));
        }
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let change = if voters.contains(&id) {
            let rest: BTreeSet<u64> = voters.iter().copied().filter(|v| *v != id).collect();
            if rest.is_empty() {
                return Err(invalid(
                    "id",
                    format!("replica {id} is the last voter; a cluster needs one"),
                ));
            }
            // The voters left must form a quorum among those that answer now.
            let mut reachable = 0usize;
            for v in &rest {
                if *v == self.me.node_id {
                    reachable += 1;
                } else if let Some(n) = membership.get_node(v) {
                    if hello_at(&n.addr, &self.me)
                        .await
                        .is_ok_and(|r| r.node_id == *v)
                    {
                        reachable += 1;
                    }
                }
            }
            if reachable * 2 <= rest.len() {
                return Err(invalid(
                    "id",
                    format!(
                        "removing replica {id} would leave {} voters of which only {reachable} answer: no quorum",
                        rest.len()
                    ),
                ));
            }
            if id == self.me.node_id {
                // Hand leadership to another voter; the client retries there (leader hint).
                let target = self.best_voter(&m, &rest)?;
                drop(_busy);
                self.transfer_leader(target).await?;
                return Err(leader_hint(&self.raft));
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        info!(node_id = id, "removing a replica");
        let resp = self
            .raft
            .change_membership(change, false)
            .await
            .map_err(raft_write_error)?;
        info!(node_id = id, index = resp.log_id.index, "replica removed");
        Ok(resp.log_id.index)
    }

    /// The voter of `among` whose log matches the leader's furthest.
    fn best_voter(&self, m: &Metrics, among: &BTreeSet<u64>) -> Result<u64, ApiError> {
        among
            .iter()
            .filter(|v| **v != self.me.node_id)
            .map(|v| (matched(m, *v), *v))
            .max()
            .map(|(_, v)| v)
            .ok_or_else(|| ApiError::FailedPrecondition("no other voter to lead".into()))
    }

    /// On a leader about to stop: hands leadership to the most caught-up other voter, so the
    /// cluster does not wait out an election timeout. Returns the new leader and how long it
    /// took, or None when this replica is not the leader (or is the only voter).
    pub async fn hand_over(&self) -> Result<Option<(u64, Duration)>, ApiError> {
        let m = self.metrics();
        if m.state != ServerState::Leader {
            return Ok(None);
        }
        let voters: BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
        if voters.len() < 2 {
            return Ok(None);
        }
        let target = self.best_voter(&m, &voters)?;
        let (took, _) = self.transfer_leader(target).await?;
        Ok(Some((target, took)))
    }

    /// Hands leadership to voter `id`; answers once it leads, with how long it took.
    pub async fn transfer_leader(&self, id: u64) -> Result<(Duration, u64), ApiError> {
        let _busy = self.busy.lock().await;
        let m = self.metrics();
        if m.current_leader == Some(id) && m.state != ServerState::Leader {
            return Ok((Duration::ZERO, m.current_term));
        }
        let m = self.leader_metrics().await?;
        if id == self.me.node_id {
            return Ok((Duration::ZERO, m.current_term));
        }
        let membership = m.membership_config.membership();
        let Some(node) = membership.get_node(&id).cloned() else {
            return Err(invalid("id", format!("replica {id} is not a member")));
        };
        if !membership.voter_ids().any(|v| v == id) {
            return Err(invalid(
                "id",
                format!("replica {id} is a learner; only a voter can lead"),
            ));
        }
        let last = m.last_log_index.unwrap_or(0);
        let behind = last.saturating_sub(matched(&m, id).unwrap_or(0));
        if matched(&m, id).is_none() || behind > CAUGHT_UP_LAG {
            return Err(ApiError::FailedPrecondition(format!(
                "replica {id} is not caught up ({behind} entries behind): it cannot lead yet"
            )));
        }

        // Quiet: no new entries, no heartbeats, so the voters' lease runs out.
        let quiet = Quiet {
            raft: &self.raft,
            _hold: self.proposer.hold(),
            handing_to: &self.handing_to,
        };
        self.handing_to.0.store(id, Ordering::Release);
        self.raft.runtime_config().heartbeat(false);
        let started = Instant::now();
        // Entries already proposed finish replicating; the target must have all of them.
        let mut metrics = self.raft.metrics();
        let settle = Instant::now() + Duration::from_secs(2);
        loop {
            let (ok, last) = {
                let m = metrics.borrow();
                let last = m.last_log_index.unwrap_or(0);
                (matched(&m, id).is_some_and(|x| x >= last), last)
            };
            if ok {
                break;
            }
            if Instant::now() >= settle {
                return Err(ApiError::FailedPrecondition(format!(
                    "replica {id} is not caught up (log at {last}): it cannot lead yet"
                )));
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), metrics.changed()).await;
        }
        // The other voters give the lease up; with a quorum of them and the target, the target
        // wins at once at a term above theirs. Otherwise it waits out the lease.
        let others: Vec<(u64, Node)> = membership
            .voter_ids()
            .filter(|v| *v != id && *v != self.me.node_id)
            .filter_map(|v| membership.get_node(&v).map(|n| (v, n.clone())))
            .collect();
        let releases = others.iter().map(|(v, n)| {
            let request = raftpb::ElectNowRequest {
                cluster: self.me.cluster_name.clone(),
                term: m.current_term,
                to_incarnation: n.incarnation.clone(),
                wait_ms: 0,
                release: true,
                above_term: 0,
            };
            async move { (*v, self.elect_now_call(n, request).await) }
        });
        let mut above_term = 0;
        let mut released = 1; // the target
        for (v, outcome) in futures::future::join_all(releases).await {
            match outcome {
                Ok(reply) => {
                    released += 1;
                    above_term = above_term.max(reply.term).max(m.current_term + 1);
                }
                Err(e) => warn!(replica = v, error = %e, "did not give the lease up"),
            }
        }
        let voters = membership.voter_ids().count();
        if released <= voters / 2 {
            above_term = 0;
        }
        let wait_ms = (self.lease + 2 * self.heartbeat).as_millis() as u64;
        let request = raftpb::ElectNowRequest {
            cluster: self.me.cluster_name.clone(),
            term: m.current_term,
            to_incarnation: node.incarnation.clone(),
            wait_ms,
            release: false,
            above_term,
        };
        self.elect_now_call(&node, request)
            .await
            .map_err(|e| ApiError::Unavailable(format!("replica {id} did not take over: {e}")))?;

        let deadline = started + Duration::from_millis(wait_ms) + 4 * self.lease;
        while metrics.borrow().state == ServerState::Leader {
            if Instant::now() >= deadline {
                drop(quiet);
                return Err(ApiError::Unavailable(format!(
                    "leadership did not move to replica {id} within {:?}; this replica leads on",
                    deadline - started
                )));
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), metrics.changed()).await;
        }
        // Stepped down; the new leader makes itself known with its first AppendEntries.
        let known = Instant::now() + 2 * self.lease;
        while metrics.borrow().current_leader != Some(id) && Instant::now() < known {
            let _ = tokio::time::timeout(Duration::from_millis(50), metrics.changed()).await;
        }
        let took = started.elapsed();
        drop(quiet);
        let (leader, term) = {
            let m = metrics.borrow();
            (m.current_leader, m.current_term)
        };
        info!(
            target = id,
            leader = ?leader,
            transfer_ms = took.as_millis() as u64,
            "leadership transferred"
        );
        if leader != Some(id) {
            return Err(ApiError::Unavailable(format!(
                "leadership left this replica but went to {leader:?}, not {id}"
            )));
        }
        Ok((took, term))
    }
}

impl Membership {
    /// One ElectNow call to `node`, bounded by [`HELLO_TIMEOUT`].
    async fn elect_now_call(
        &self,
        node: &Node,
        request: raftpb::ElectNowRequest,
    ) -> Result<raftpb::ElectNowReply, String> {
        call_once(
            self.me.tls.as_ref(),
            self.me.peer_secret.as_ref(),
            &node.addr,
            HELLO_TIMEOUT,
            request,
            |mut c, r| async move { c.elect_now(r).await },
        )
        .await
    }
}

fn matched(m: &Metrics, id: u64) -> Option<u64> {
    m.replication
        .as_ref()
        .and_then(|r| r.get(&id).copied().flatten())
        .map(|l| l.index)
}

/// A voter's side of a transfer: the target elects itself (at once above the others' term, or
/// after their lease has run out); the other voters give the lease up (`release`).
pub(crate) async fn elect_now(
    raft: &Raft,
    me: &Me,
    req: raftpb::ElectNowRequest,
) -> Result<raftpb::ElectNowReply, Status> {
    check_addressed(me, &req.cluster, &req.to_incarnation)?;
    let m = raft.metrics().borrow().clone();
    if m.current_term > req.term {
        return Err(Status::failed_precondition(format!(
            "term {} is behind this replica's term {}",
            req.term, m.current_term
        )));
    }
    if !m
        .membership_config
        .membership()
        .voter_ids()
        .any(|v| v == me.node_id)
    {
        return Err(Status::failed_precondition(format!(
            "replica {} is not a voter",
            me.node_id
        )));
    }
    if req.release {
        // Give the leader's lease up: stand once, now, and answer once the vote has moved on.
        let mut metrics = raft.metrics();
        raft.trigger()
            .elect()
            .await
            .map_err(|e| Status::unavailable(format!("election not started: {e}")))?;
        let until = Instant::now() + Duration::from_secs(1);
        loop {
            let term = metrics.borrow().vote.leader_id().term;
            if term > req.term {
                info!(
                    term,
                    "gave the leader's lease up: leadership is being handed over"
                );
                return Ok(raftpb::ElectNowReply { term });
            }
            if Instant::now() >= until {
                return Err(Status::unavailable("the election did not start within 1 s"));
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), metrics.changed()).await;
        }
    }
    let wait = Duration::from_millis(req.wait_ms.min(60_000));
    let raft = raft.clone();
    let leader = m.current_leader;
    let me_id = me.node_id;
    tokio::spawn(async move {
        let mut stood_at = 0;
        if req.above_term > 0 {
            // The others gave the lease up: stand at once, above their term.
            let own = raft.metrics().borrow().vote.leader_id().term;
            let times = (req.above_term + 1).saturating_sub(own).clamp(1, 4);
            stood_at = own + times;
            info!(
                term = own + times,
                "electing itself at once: leadership is being handed over"
            );
            for _ in 0..times {
                if let Err(e) = raft.trigger().elect().await {
                    warn!(error = %e, "election not started");
                    return;
                }
            }
        }
        tokio::time::sleep(wait).await;
        if req.above_term > 0 {
            // Stand again only if that election came to nothing: no term since, no leader but
            // the one handing over.
            let (now_leader, term) = {
                let m = raft.metrics();
                let m = m.borrow();
                (m.current_leader, m.current_term)
            };
            if term > stood_at
                || now_leader == Some(me_id)
                || now_leader.is_some_and(|l| Some(l) != leader)
            {
                return;
            }
        }
        info!("electing itself: leadership is being handed over");
        if let Err(e) = raft.trigger().elect().await {
            warn!(error = %e, "election not started");
        }
    });
    Ok(raftpb::ElectNowReply { term: 0 })
}

/// Background duties: on the leader, pin unpinned members to their incarnations; on any other
/// replica that lost touch with a leader, find out whether it was removed, and if so stop.
pub(crate) async fn watch(
    raft: Raft,
    me: Me,
    proposer: Proposer,
    removed: Arc<Mutex<Option<String>>>,
    shutdown: CancellationToken,
) {
    let mut interval = tokio::time::interval(CHECK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_member = false;
    let stop = |why: String| {
        error!("{why}");
        *removed.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        shutdown.cancel();
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let m = raft.metrics().borrow().clone();
        if m.state == ServerState::Leader {
            // Not while leadership is being handed over: an entry would renew the lease.
            if !proposer.is_held() {
                pin_members(&raft, &me, &m).await;
            }
            continue;
        }
        let membership = m.membership_config.membership();
        if membership.get_node(&me.node_id).is_none() {
            if was_member {
                stop(format!(
                    "replica {} was removed from the cluster (the membership at index {} no longer lists it); it stops serving",
                    me.node_id,
                    m.membership_config.log_id().map_or(0, |l| l.index)
                ));
                return;
            }
            // Not a member (yet): an empty replica waiting to be added.
            continue;
        }
        was_member = true;
        let doubtful = matches!(m.state, ServerState::Learner | ServerState::Candidate)
            || m.current_leader.is_none();
        if !doubtful {
            continue;
        }
        let own_index = m.membership_config.log_id().map_or(0, |l| l.index);
        // Ask the leader it knows, else every other member, for their committed membership.
        let mut ask: Vec<(u64, String)> = m
            .current_leader
            .filter(|l| *l != me.node_id)
            .and_then(|l| membership.get_node(&l).map(|n| (l, n.addr.clone())))
            .into_iter()
            .collect();
        if ask.is_empty() {
            ask = membership
                .nodes()
                .filter(|(id, _)| **id != me.node_id)
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect();
        }
        for (_, addr) in ask {
            let Ok(reply) = hello_at(&addr, &me).await else {
                continue;
            };
            if reply.cluster != me.cluster_name || reply.membership_index <= own_index {
                continue;
            }
            if !reply.members.iter().any(|x| x.id == me.node_id) {
                stop(format!(
                    "replica {} was removed from the cluster (the membership committed at index {} no longer lists it); it stops serving",
                    me.node_id, reply.membership_index
                ));
                return;
            }
            break;
        }
    }
}

/// On the leader: pins every member listed by address only to the incarnation it reports.
async fn pin_members(raft: &Raft, me: &Me, m: &Metrics) {
    let membership = m.membership_config.membership();
    if membership.get_joint_config().len() > 1 {
        return;
    }
    let mut pins = BTreeMap::new();
    for (id, node) in membership.nodes() {
        if node.is_pinned() {
            continue;
        }
        let incarnation = if *id == me.node_id {
            me.incarnation.clone()
        } else {
            match hello_at(&node.addr, me).await {
                Ok(r) if r.cluster == me.cluster_name && r.node_id == *id => r.incarnation,
                Ok(r) => {
                    warn!(
                        node_id = id,
                        addr = %node.addr,
                        found_id = r.node_id,
                        found_cluster = %r.cluster,
                        "member's address answers as another replica; not pinning it"
                    );
                    continue;
                }
                Err(_) => continue,
            }
        };
        pins.insert(*id, Node::pinned(node.addr.clone(), incarnation));
    }
    if pins.is_empty() {
        return;
    }
    let ids: Vec<u64> = pins.keys().copied().collect();
    match raft
        .change_membership(ChangeMembers::SetNodes(pins), true)
        .await
    {
        Ok(r) => {
            info!(members = ?ids, index = r.log_id.index, "members pinned to their data dirs' incarnations")
        }
        Err(e) => warn!(error = %e, "pinning members"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(to: &str, from_id: u64, from: &str) -> raftpb::RaftMessage {
        raftpb::RaftMessage {
            cluster: "c".into(),
            data: Vec::new(),
            to_incarnation: to.into(),
            from_id,
            from_incarnation: from.into(),
            framed: Vec::new(),
        }
    }

    #[test]
    fn incarnation_rule() {
        let me = Me {
            node_id: 3,
            cluster_name: "c".into(),
            incarnation: "new".into(),
            peer_secret: None,
            tls: None,
        };
        let pinned = |inc: &str| {
            let inc = inc.to_string();
            move || Some(inc)
        };
        // Addressed to this data dir, or to nobody in particular: accepted.
        assert_eq!(refusal(&me, &msg("new", 1, "a"), pinned("a")), None);
        assert_eq!(refusal(&me, &msg("", 1, "a"), pinned("a")), None);
        // Addressed to the member whose data dir this replica no longer has: refused, saying
        // what to do.
        let why = refusal(&me, &msg("old", 1, "a"), pinned("a")).unwrap();
        assert_eq!(
            why,
            "replica 3's data dir is not the one the cluster knows (incarnation new, expected old): remove replica 3 and add it again"
        );
        // From a sender pinned to another incarnation (a wiped replica speaking as the old
        // member): refused; from an unpinned, unknown or pre-pinning sender: accepted.
        let why = refusal(&me, &msg("new", 1, "b"), pinned("a")).unwrap();
        assert!(
            why.starts_with("replica 1's data dir is not the one"),
            "{why}"
        );
        assert_eq!(refusal(&me, &msg("new", 1, "b"), pinned("")), None);
        assert_eq!(refusal(&me, &msg("new", 1, "b"), || None), None);
        assert_eq!(refusal(&me, &msg("new", 0, ""), pinned("a")), None);
        assert_eq!(refusal(&me, &msg("new", 1, ""), pinned("a")), None);
    }

    #[test]
    fn addresses() {
        assert!(valid_addr("127.0.0.1:7400"));
        assert!(valid_addr("host:1"));
        assert!(!valid_addr("nonsense"));
        assert!(!valid_addr(":7400"));
        assert!(!valid_addr("h:99999"));
    }
}
