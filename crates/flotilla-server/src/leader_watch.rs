//! A follower's watch on its leader: when the leader's process is gone — its port refuses
//! connections — the followers elect a new leader at once, and when a majority of the voters
//! has not heard the leader for an election timeout (paused, cut off) they elect one
//! then, instead of waiting out the leader lease and a randomized election timeout (openraft
//! 0.9 stands only after lease + election timeout of silence: 1.8–2.4 s with the defaults).
//!
//! ```text
//!  a connection to this replica closed ─┐ (probing every ⅛ heartbeat for ½ heartbeat)
//!  or the leader silent 2 heartbeats ───┴▶ probe the leader's port ──refused──▶ release ─▶ stand
//!                                             │                        (own vote,   (rank 0 after
//!                                             │                         at once)     ¼ heartbeat,
//!                                             │                            ▲         then by rank)
//!                                             └─answers / no answer        │
//!  the leader silent an election timeout ─▶ poll the other voters ─majority silent
//!      (every ½ heartbeat while it lasts)     └─a majority hears it──▶ fallback: openraft's
//!                                                                      lease + randomized timeout
//! ```
//!
//! Openraft 0.9 makes a voter refuse every vote while its leader's lease runs (the lease is what
//! keeps a replica that was cut off from deposing a healthy leader). A voter that saw the
//! leader's port refuse with its own eyes gives its lease up: it stands for election once
//! (**release**), which replaces its vote for the dead leader with an uncommitted vote for
//! itself, so that an election at a higher term may win its vote. Every follower does the same
//! when it sees the process gone (a SIGKILLed process closes its connections at once, which
//! wakes the watch through `listener::Closed`). Then the followers **stand** one at a time,
//! by rank, highest id first (openraft 0.9 orders two candidates of one term by id, so the
//! highest id's release alone often wins; rank 0 stands a quarter heartbeat after the release,
//! each next rank half a heartbeat later, around again until a leader is known), each at a
//! term above every term it has seen in a vote request, so a candidate refused for a shorter
//! log is followed by one with the longer log rather than tying its term. A replica whose
//! vote is for another candidate waits a heartbeat for that candidate to make itself known.
//!
//! A leader that is alive but silent (SIGSTOP, a network cut) keeps its port answering or
//! silent, so no probe is refused. A voter that has not received an AppendEntries for the
//! shortest election timeout — the silence after which plain Raft would stand — then
//! **polls**: it asks the leader who it is (`Hello`, within half that silence; a leader whose
//! process answers is alive and only its Raft core is held up, by a saturated disk say, and
//! the poll ends there), then the other voters (`Silence`): each answers how long it has not
//! heard any leader and which leader it follows. When this voter and enough of the others to
//! make a majority of the voters have not heard the leader (each for at least half that
//! silence), it gives the lease up as above. The leader could no longer commit anything
//! anyway; a follower cut off alone, or slow, finds the others still hearing the leader and
//! leaves it alone (what a pre-vote gives).
//!
//! Safety is Raft's: an election never breaks it. A healthy leader is not deposed by this
//! watch: a lease is given up only by a voter that saw nothing listening on the leader's port,
//! or when a majority of the voters has heard nothing from the leader for an election timeout.
//! A damaged replica (see `damage`) and a learner never stand.
//!
//! [`Watch`] is the pure decision: time enters as a value, the probe's and the poll's outcomes
//! as inputs. [`run`] is the I/O shell: the Raft metrics, the TCP probe, the poll, the
//! election trigger.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_proto::raftpb::{SilenceReply, SilenceRequest};
use flotilla_store::{Node, NodeId};
use futures::stream::{FuturesUnordered, StreamExt};
use openraft::ServerState;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::{debug, info};

use crate::damage::Damage;
use crate::listener::Closed;
use crate::membership::Me;
use crate::network::call_once;
use crate::Raft;

/// When this replica last heard from a leader (an AppendEntries it accepted) and the highest
/// term it saw a candidate ask for, shared between the peer service that hears them and the
/// watch.
#[derive(Debug, Clone)]
pub struct Contact {
    base: Instant,
    last_ms: Arc<AtomicU64>,
    /// When an AppendEntries or a snapshot chunk was last received, accepted or not yet (a
    /// follower whose disk is slow is still hearing its leader).
    heard_ms: Arc<AtomicU64>,
    /// The highest term of any vote request this replica received.
    vote_term: Arc<AtomicU64>,
}

impl Default for Contact {
    fn default() -> Self {
        Contact {
            base: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
            heard_ms: Arc::new(AtomicU64::new(0)),
            vote_term: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Contact {
    /// Records that an AppendEntries was received now, and returns the time to pass to
    /// [`Contact::touch`] once it was accepted.
    pub fn stamp(&self) -> Duration {
        let now = self.now();
        self.heard_ms
            .fetch_max((now.as_millis() as u64).max(1), Ordering::Relaxed);
        now
    }

    /// Records contact with the leader: a message received at `received` (from
    /// [`Contact::stamp`]) was accepted.
    pub fn touch(&self, received: Duration) {
        // At least 1: 0 means never.
        let ms = (received.as_millis() as u64).max(1);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Records a vote request's term.
    pub fn saw_vote_term(&self, term: u64) {
        self.vote_term.fetch_max(term, Ordering::Relaxed);
    }

    /// The highest term of any vote request received.
    pub fn vote_term_seen(&self) -> u64 {
        self.vote_term.load(Ordering::Relaxed)
    }

    /// Since the leader was last heard from; None if it never was.
    pub fn since_last(&self) -> Option<Duration> {
        match self.last_ms.load(Ordering::Relaxed) {
            0 => None,
            _ => Some(self.now().saturating_sub(self.last())),
        }
    }

    /// Since an AppendEntries was last received; None if none ever was.
    pub fn since_heard(&self) -> Option<Duration> {
        match self.heard_ms.load(Ordering::Relaxed) {
            0 => None,
            _ => Some(self.now().saturating_sub(self.heard())),
        }
    }

    fn last(&self) -> Duration {
        Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    fn heard(&self) -> Duration {
        Duration::from_millis(self.heard_ms.load(Ordering::Relaxed))
    }

    fn now(&self) -> Duration {
        self.base.elapsed()
    }
}

/// What probing the leader's address showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Connection refused: nothing listens there, the process is gone.
    Refused,
    /// It accepted (alive but silent: paused, partitioned from us, or busy).
    Answered,
    /// No answer within the probe's timeout (a silent host or network).
    NoAnswer,
}

/// This replica's part, as the watch sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A voter following this leader.
    Following(NodeId),
    /// A voter that knows no leader and has not voted for another candidate (standing, or
    /// between leaders).
    Leaderless,
    /// A voter that knows no leader and whose vote is for another candidate (granted, or taken
    /// over from a refusal: openraft 0.9 orders votes of one term by candidate id).
    VotedForAnother,
    /// The leader, a learner, or a damaged replica: the watch stays out.
    Other,
}

/// What this replica sees when the watch looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    pub role: Role,
    /// When it last heard from a leader (an AppendEntries accepted, from its receipt).
    pub last_contact: Duration,
    /// When it last received an AppendEntries, accepted yet or not.
    pub last_heard: Duration,
    /// Its rank among the voters other than the leader it follows, highest id first (0: stands
    /// first; of two candidates at one term openraft 0.9 prefers the higher id).
    pub rank: u32,
    /// How many voters other than the leader it follows (who may stand).
    pub candidates: u32,
    /// A connection to this replica closed since the last look.
    pub closed: bool,
    /// This replica's vote: term and candidate.
    pub vote: (u64, NodeId),
}

/// What to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Idle,
    /// Probe the leader's address, then report with [`Watch::probed`].
    Probe(NodeId),
    /// Ask the leader whether it is alive (Hello), else the other voters whether they hear it,
    /// then report with [`Watch::polled`].
    Poll(NodeId),
    /// Give up the leader's lease: stand for election once, at once.
    Release(Why),
    /// Stand for election at a term above every term seen.
    Stand,
}

/// Why the lease is given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// The leader's port refused a connection: its process is gone.
    Refused,
    /// Neither this replica nor enough others to make a majority of the voters heard the
    /// leader for an election timeout and it did not answer (a paused or cut-off leader).
    Silent,
}

/// A poll of the other voters: about which leader, started when, whether a majority of the
/// voters (this one included) had not heard it. It speaks for the silence until an
/// AppendEntries received after its start.
#[derive(Debug, Clone, Copy)]
struct Polled {
    leader: NodeId,
    at: Duration,
    agreed: bool,
}

/// A probe: of which leader, started when, what it showed. It speaks for the silence until a
/// contact newer than its start.
#[derive(Debug, Clone, Copy)]
struct Probed {
    leader: NodeId,
    at: Duration,
    outcome: Probe,
}

/// The lease given up for a dead leader, and the standing that follows.
#[derive(Debug, Clone, Copy)]
struct Released {
    leader: NodeId,
    at: Duration,
    rank: u32,
    candidates: u32,
    stood: u32,
}

/// The decision, on time given as a value.
#[derive(Debug, Clone)]
pub struct Watch {
    heartbeat: Duration,
    lease: Duration,
    /// How long the leader must be silent before this replica polls the others (openraft's
    /// shortest election timeout: the silence plain Raft takes for a dead leader).
    silence: Duration,
    probed: Option<Probed>,
    polled: Option<Polled>,
    released: Option<Released>,
    /// The vote last seen, and since when.
    vote: Option<((u64, NodeId), Duration)>,
    /// When a connection to this replica last closed.
    closed_at: Option<Duration>,
}

impl Watch {
    pub fn new(heartbeat: Duration, lease: Duration, silence: Duration) -> Watch {
        Watch {
            heartbeat,
            lease,
            silence,
            probed: None,
            polled: None,
            released: None,
            vote: None,
            closed_at: None,
        }
    }

    /// How often the shell should look, at least.
    pub fn tick(&self) -> Duration {
        self.heartbeat / 8
    }

    /// The next action at time `now`.
    pub fn next(&mut self, now: Duration, view: View) -> Action {
        if view.closed {
            self.closed_at = Some(now);
        }
        let vote_since = match self.vote {
            Some((v, since)) if v == view.vote => since,
            _ => {
                self.vote = Some((view.vote, now));
                now
            }
        };
        match view.role {
            Role::Other => {
                self.probed = None;
                self.polled = None;
                self.released = None;
                Action::Idle
            }
            Role::Following(leader) => {
                if let Some(r) = self.released {
                    if r.leader == leader && view.last_contact <= r.at {
                        // The release is not processed yet, or it was refused: stand as planned.
                        return self.stand_if_due(now);
                    }
                    // Another leader, or this one heard again.
                    self.released = None;
                }
                self.on_following(now, leader, view)
            }
            Role::Leaderless => match self.released {
                Some(_) => self.stand_if_due(now),
                None => Action::Idle,
            },
            // A candidate this vote went to makes itself known within a heartbeat if it won;
            // the vote lapses for the watch after that.
            Role::VotedForAnother if now.saturating_sub(vote_since) >= self.heartbeat => {
                self.stand_if_due(now)
            }
            Role::VotedForAnother => Action::Idle,
        }
    }

    fn on_following(&mut self, now: Duration, leader: NodeId, view: View) -> Action {
        let silent = now.saturating_sub(view.last_contact);
        // A probe started after the last contact (an AppendEntries received before the leader
        // died may finish after the probe; contact counts from receipt).
        let this_silence = self
            .probed
            .filter(|p| p.leader == leader && p.at >= view.last_contact);
        if this_silence.is_some_and(|p| p.outcome == Probe::Refused) {
            return self.release(now, leader, view, Why::Refused);
        }
        // Silence is counted from the last AppendEntries received, accepted or not.
        let heard = view.last_contact.max(view.last_heard);
        let polled = self.polled.filter(|p| p.leader == leader && p.at >= heard);
        if polled.is_some_and(|p| p.agreed) {
            return self.release(now, leader, view, Why::Silent);
        }
        // Silent for an election timeout: ask the others, and again every half heartbeat
        // while it lasts.
        let polled_lately = polled.is_some_and(|p| now.saturating_sub(p.at) < self.heartbeat / 2);
        if now.saturating_sub(heard) >= self.silence && !polled_lately {
            return Action::Poll(leader);
        }
        let recent = self
            .probed
            .is_some_and(|p| p.leader == leader && now.saturating_sub(p.at) < self.heartbeat / 8);
        // A dying process closes its connections a moment before its listening socket: after a
        // close, probe every eighth of a heartbeat for half a heartbeat.
        let after_close = self
            .closed_at
            .is_some_and(|c| now.saturating_sub(c) < self.heartbeat / 2);
        // Silent for two heartbeats: probe, and again every heartbeat while it lasts.
        let fresh = this_silence.is_some_and(|p| now.saturating_sub(p.at) < self.heartbeat);
        let silent_long = silent >= 2 * self.heartbeat && !fresh;
        if !recent && (after_close || silent_long) {
            return Action::Probe(leader);
        }
        Action::Idle
    }

    fn release(&mut self, now: Duration, leader: NodeId, view: View, why: Why) -> Action {
        self.released = Some(Released {
            leader,
            at: now,
            rank: view.rank,
            candidates: view.candidates.max(1),
            stood: 0,
        });
        Action::Release(why)
    }

    fn stand_if_due(&mut self, now: Duration) -> Action {
        let Some(r) = self.released.as_mut() else {
            return Action::Idle;
        };
        // After a lease, openraft's own timer (an election timeout, the vote being uncommitted
        // now) is as quick: leave it to that.
        if now >= r.at + self.lease {
            return Action::Idle;
        }
        let step = self.heartbeat / 2;
        let due = r.at + self.heartbeat / 4 + step * (r.rank + r.stood * r.candidates);
        if now >= due {
            r.stood += 1;
            Action::Stand
        } else {
            Action::Idle
        }
    }

    /// Reports the outcome of the poll that [`Watch::next`] asked for, started at `at`:
    /// whether a majority of the voters, this one included, had not heard `leader`.
    pub fn polled(&mut self, leader: NodeId, at: Duration, agreed: bool) {
        self.polled = Some(Polled { leader, at, agreed });
    }

    /// Reports the outcome of the probe that [`Watch::next`] asked for, started at `at`.
    pub fn probed(&mut self, leader: NodeId, at: Duration, outcome: Probe) {
        self.probed = Some(Probed {
            leader,
            at,
            outcome,
        });
    }
}

/// Whether a peer's answer to a poll about `leader` agrees that it is silent: the peer follows
/// that leader or none, and has not heard any leader for half the silence the asker waited
/// (the leader's messages to two followers are not sent at the same moment).
pub fn agrees(leader: NodeId, silence: Duration, reply: &SilenceReply) -> bool {
    (reply.leader == 0 || reply.leader == leader)
        && reply.silent_ms >= (silence / 2).as_millis() as u64
}

/// Whether `agreeing` other voters and this one make a majority of `voters`.
pub fn majority(voters: usize, agreeing: usize) -> bool {
    1 + agreeing > voters / 2
}

/// The peer's side of a poll: since when this replica has not heard a leader, and which leader
/// it follows.
pub(crate) fn answer_poll(
    raft: &Raft,
    me: &Me,
    contact: &Contact,
    req: &SilenceRequest,
) -> Result<SilenceReply, Status> {
    crate::membership::check_addressed(me, &req.cluster, &req.to_incarnation)?;
    let m = raft.metrics();
    let m = m.borrow();
    let leader = m.current_leader.unwrap_or(0);
    let silent_ms = if leader == me.node_id {
        0
    } else {
        contact
            .since_heard()
            .map_or(u64::MAX, |d| d.as_millis() as u64)
    };
    Ok(SilenceReply {
        silent_ms,
        leader,
        term: m.current_term,
    })
}

/// Whether the silent leader is to be given up: first it is asked who it is (`Hello`, on a
/// fresh connection, within `ping`) — a leader whose process answers is alive, only its Raft
/// core is held up (a saturated disk), and an election would not help; then every other voter
/// but `leader` is asked whether it hears `leader` (each call within `timeout`): true once
/// enough of them agree it is silent to make a majority with this replica.
async fn poll(
    raft: &Raft,
    me: &Me,
    leader: NodeId,
    silence: Duration,
    ping: Duration,
    timeout: Duration,
) -> bool {
    let leader_addr = {
        let m = raft.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
    };
    if let Some(addr) = leader_addr {
        let request = flotilla_proto::raftpb::HelloRequest {
            cluster: me.cluster_name.clone(),
        };
        let answered = call_once(
            me.tls.as_ref(),
            me.peer_secret.as_ref(),
            &addr,
            ping,
            request,
            |mut c, r| async move { c.hello(r).await },
        )
        .await;
        if answered.is_ok() {
            debug!(leader, "the silent leader answers: its process is alive");
            return false;
        }
    }
    let (voters, others, term) = {
        let m = raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let voters = membership.voter_ids().count();
        let others: Vec<(NodeId, Node)> = membership
            .voter_ids()
            .filter(|v| *v != leader && *v != me.node_id)
            .filter_map(|v| membership.get_node(&v).map(|n| (v, n.clone())))
            .collect();
        (voters, others, m.current_term)
    };
    let mut asks: FuturesUnordered<_> = others
        .into_iter()
        .map(|(id, node)| {
            let request = SilenceRequest {
                cluster: me.cluster_name.clone(),
                leader,
                term,
                to_incarnation: node.incarnation.clone(),
            };
            async move {
                let reply = call_once(
                    me.tls.as_ref(),
                    me.peer_secret.as_ref(),
                    &node.addr,
                    timeout,
                    request,
                    |mut c, r| async move { c.silence(r).await },
                )
                .await;
                (id, reply)
            }
        })
        .collect();
    let mut agreeing = 0;
    while let Some((id, reply)) = asks.next().await {
        match reply {
            Ok(reply) if agrees(leader, silence, &reply) => agreeing += 1,
            Ok(reply) => debug!(
                replica = id,
                silent_ms = reply.silent_ms,
                follows = reply.leader,
                "a voter still hears a leader"
            ),
            Err(e) => debug!(replica = id, error = %e, "a voter did not answer the poll"),
        }
        if majority(voters, agreeing) {
            return true;
        }
    }
    false
}

/// Runs the watch until shutdown. `silence`: how long the leader must be silent before the
/// other voters are polled.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    raft: Raft,
    me: Me,
    contact: Contact,
    damage: Damage,
    closed: Closed,
    heartbeat: Duration,
    lease: Duration,
    silence: Duration,
    shutdown: CancellationToken,
) {
    let node_id = me.node_id;
    let mut watch = Watch::new(heartbeat, lease, silence);
    let mut tick = tokio::time::interval(watch.tick());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let was_closed = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => false,
            _ = closed.notified() => true,
        };
        let (view, leader_addr) = look(&raft, node_id, &contact, &damage, was_closed);
        match watch.next(contact.now(), view) {
            Action::Idle => {}
            Action::Probe(leader) => {
                let started = contact.now();
                let outcome = match leader_addr {
                    Some(addr) => probe(&addr, heartbeat).await,
                    None => Probe::NoAnswer,
                };
                watch.probed(leader, started, outcome);
            }
            Action::Poll(leader) => {
                let started = contact.now();
                let agreed = poll(&raft, &me, leader, silence, silence / 2, 2 * heartbeat).await;
                watch.polled(leader, started, agreed);
            }
            Action::Release(why) => {
                let Role::Following(leader) = view.role else {
                    continue;
                };
                let silent_ms = contact.now().saturating_sub(view.last_contact).as_millis() as u64;
                match why {
                    Why::Refused => info!(
                        leader,
                        silent_ms,
                        "the leader's port refuses connections: giving up its lease and standing for election"
                    ),
                    Why::Silent => info!(
                        leader,
                        silent_ms,
                        "a majority of the voters has not heard the leader for an election timeout: giving up its lease and standing for election"
                    ),
                }
                let _ = raft.trigger().elect().await;
            }
            Action::Stand => stand(&raft, node_id, &contact, &damage).await,
        }
    }
}

/// What the Raft metrics show now, and the leader's address when following one.
fn look(
    raft: &Raft,
    node_id: NodeId,
    contact: &Contact,
    damage: &Damage,
    closed: bool,
) -> (View, Option<String>) {
    let m = raft.metrics();
    let m = m.borrow();
    let membership = m.membership_config.membership();
    let voter = membership.voter_ids().any(|v| v == node_id);
    let role = if !voter || damage.lost().is_some() {
        Role::Other
    } else {
        match (m.state, m.current_leader) {
            (ServerState::Follower, Some(l)) if l != node_id => Role::Following(l),
            (ServerState::Follower | ServerState::Candidate, None) => {
                if m.vote.leader_id().voted_for().is_some_and(|v| v != node_id) {
                    Role::VotedForAnother
                } else {
                    Role::Leaderless
                }
            }
            _ => Role::Other,
        }
    };
    let (rank, candidates, addr) = match role {
        Role::Following(l) => {
            let others: Vec<NodeId> = membership.voter_ids().filter(|v| *v != l).collect();
            let rank = others.iter().filter(|v| **v > node_id).count() as u32;
            let addr = membership.get_node(&l).map(|n| n.addr.clone());
            (rank, others.len() as u32, addr)
        }
        _ => (0, 0, None),
    };
    (
        View {
            role,
            last_contact: contact.last(),
            last_heard: contact.heard(),
            rank,
            candidates,
            closed,
            vote: (m.vote.leader_id().term, m.vote.leader_id().node_id),
        },
        addr,
    )
}

/// Stands for election at a term above every term this replica has seen: its own vote's, and
/// every vote request's (openraft 0.9 does not raise its term on a request it refuses for a
/// shorter log, so a plain election could tie the refused candidate's term and be refused).
async fn stand(raft: &Raft, node_id: NodeId, contact: &Contact, damage: &Damage) {
    let (own, role) = {
        let (view, _) = look(raft, node_id, contact, damage, false);
        (raft.metrics().borrow().vote.leader_id().term, view.role)
    };
    if role == Role::Other {
        return;
    }
    let seen = contact.vote_term_seen();
    // Each election raises the term by one; at most a few, a runaway term is not wanted.
    let times = (seen.saturating_sub(own) + 1).min(4);
    info!(
        term = own + times,
        "the dead leader's successor is not known yet: standing for election"
    );
    for _ in 0..times {
        let _ = raft.trigger().elect().await;
    }
}

async fn probe(addr: &str, timeout: Duration) -> Probe {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Probe::Answered,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Probe::Refused,
        _ => Probe::NoAnswer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HB: Duration = Duration::from_millis(100);
    const LEASE: Duration = Duration::from_millis(1200);
    const SILENCE: Duration = Duration::from_millis(600);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Following replica 1, last heard at `last_contact`, at `rank` of 2 candidates.
    fn following(last_contact: u64, rank: u32) -> View {
        View {
            role: Role::Following(1),
            last_contact: ms(last_contact),
            last_heard: ms(last_contact),
            rank,
            candidates: 2,
            closed: false,
            vote: (1, 1),
        }
    }

    fn closed(view: View) -> View {
        View {
            closed: true,
            ..view
        }
    }

    fn with_role(view: View, role: Role) -> View {
        View { role, ..view }
    }

    /// Probes at `now` (the probe answering `outcome`) and returns the next action.
    fn probe_then(w: &mut Watch, now: u64, view: View, outcome: Probe) -> Action {
        assert_eq!(w.next(ms(now), view), Action::Probe(1), "probe at {now}");
        w.probed(1, ms(now), outcome);
        w.next(ms(now), view)
    }

    #[test]
    fn a_leader_heard_recently_is_left_alone() {
        let mut w = Watch::new(HB, LEASE, SILENCE);
        for now in (1000..1199).step_by(25) {
            assert_eq!(w.next(ms(now), following(1000, 0)), Action::Idle);
        }
    }

    #[test]
    fn a_closed_connection_probes_at_once_and_a_refusal_gives_the_lease_up_at_once() {
        let mut w = Watch::new(HB, LEASE, SILENCE);
        // Heard 10 ms ago: silence alone would not probe yet, a closed connection does.
        assert_eq!(w.next(ms(1010), following(1000, 0)), Action::Idle);
        let action = probe_then(&mut w, 1010, closed(following(1000, 0)), Probe::Refused);
        assert_eq!(
            action,
            Action::Release(Why::Refused),
            "released long before the lease (2200)"
        );
    }

    #[test]
    fn a_message_received_before_the_refusal_but_accepted_after_it_does_not_void_it() {
        let mut w = Watch::new(HB, LEASE, SILENCE);
        let view = closed(following(1000, 0));
        assert_eq!(w.next(ms(1010), view), Action::Probe(1));
        w.probed(1, ms(1010), Probe::Refused);
        // An AppendEntries received at 1005 was accepted after the probe.
        assert_eq!(
            w.next(ms(1012), following(1005, 0)),
            Action::Release(Why::Refused)
        );
        // The release stands while the metrics still show that leader.
        assert_eq!(w.next(ms(1020), following(1005, 0)), Action::Idle);
        assert_eq!(w.next(ms(1036), following(1005, 0)), Action::Idle);
        assert_eq!(w.next(ms(1037), following(1005, 0)), Action::Stand);
    }

    #[test]
    fn after_a_close_the_leader_is_probed_again_for_half_a_heartbeat() {
        // The dying leader's connections close a moment before its listening socket.
        let mut w = Watch::new(HB, LEASE, SILENCE);
        let answered = probe_then(&mut w, 1000, closed(following(1000, 0)), Probe::Answered);
        assert_eq!(answered, Action::Idle);
        assert_eq!(
            w.next(ms(1010), following(1000, 0)),
            Action::Idle,
            "probed 10 ms ago"
        );
        assert_eq!(
            probe_then(&mut w, 1013, following(1000, 0), Probe::Refused),
            Action::Release(Why::Refused)
        );
        // A healthy leader: a few probes after a close, then none until the next close.
        let mut w = Watch::new(HB, LEASE, SILENCE);
        let mut probes = 0;
        for now in (2000..2600).step_by(5) {
            let view = if now == 2000 {
                closed(following(now, 0))
            } else {
                following(now - now % 50, 0)
            };
            match w.next(ms(now), view) {
                Action::Idle => {}
                Action::Probe(1) => {
                    probes += 1;
                    w.probed(1, ms(now), Probe::Answered);
                }
                a => panic!("at {now}: {a:?}"),
            }
        }
        assert_eq!(
            probes, 4,
            "every 12.5 ms (15 ms in 5 ms steps) within 50 ms of the close"
        );
    }

    #[test]
    fn silence_alone_probes_after_two_heartbeats() {
        let mut w = Watch::new(HB, LEASE, SILENCE);
        assert_eq!(w.next(ms(1199), following(1000, 0)), Action::Idle);
        assert_eq!(
            probe_then(&mut w, 1200, following(1000, 0), Probe::Refused),
            Action::Release(Why::Refused)
        );
    }

    #[test]
    fn after_the_release_the_ranks_stand_in_turn_until_a_leader_is_known() {
        // Rank 0 of 2: a quarter heartbeat after the release, then every two half-heartbeats.
        let mut w = Watch::new(HB, LEASE, SILENCE);
        let view = closed(following(1000, 0));
        assert_eq!(
            probe_then(&mut w, 1000, view, Probe::Refused),
            Action::Release(Why::Refused)
        );
        // The release may not be processed yet: the metrics still show the dead leader.
        assert_eq!(w.next(ms(1010), following(1000, 0)), Action::Idle);
        assert_eq!(w.next(ms(1024), following(1000, 0)), Action::Idle);
        assert_eq!(w.next(ms(1025), following(1000, 0)), Action::Stand);
        let leaderless = with_role(following(1000, 0), Role::Leaderless);
        assert_eq!(w.next(ms(1030), leaderless), Action::Idle);
        assert_eq!(w.next(ms(1124), leaderless), Action::Idle);
        assert_eq!(w.next(ms(1125), leaderless), Action::Stand);
        assert_eq!(w.next(ms(1225), leaderless), Action::Stand);
        // A new leader: done, and it is followed like any other.
        let new_leader = View {
            role: Role::Following(3),
            last_contact: ms(1240),
            ..leaderless
        };
        assert_eq!(w.next(ms(1250), new_leader), Action::Idle);
        assert_eq!(w.next(ms(1400), leaderless), Action::Idle);

        // Rank 1 stands half a heartbeat after rank 0, and in turn after that.
        let mut w = Watch::new(HB, LEASE, SILENCE);
        let view = closed(following(1000, 1));
        assert_eq!(
            probe_then(&mut w, 1000, view, Probe::Refused),
            Action::Release(Why::Refused)
        );
        let leaderless = with_role(following(1000, 1), Role::Leaderless);
        assert_eq!(w.next(ms(1074), leaderless), Action::Idle);
        assert_eq!(w.next(ms(1075), leaderless), Action::Stand);
        assert_eq!(w.next(ms(1174), leaderless), Action::Idle);
        assert_eq!(w.next(ms(1175), leaderless), Action::Stand);
    }

    #[test]
    fn a_vote_for_another_waits_a_heartbeat_and_nothing_stands_after_a_lease() {
        let mut w = Watch::new(HB, LEASE, SILENCE);
        let view = closed(following(1000, 0));
        assert_eq!(
            probe_then(&mut w, 1000, view, Probe::Refused),
            Action::Release(Why::Refused)
        );
        // It voted (at 1005) for another candidate: that one has a heartbeat to make itself
        // known, then the vote lapses and the schedule goes on.
        let voted = View {
            vote: (2, 3),
            ..with_role(following(1000, 0), Role::VotedForAnother)
        };
        for now in (1005..1105).step_by(5) {
            assert_eq!(w.next(ms(now), voted), Action::Idle, "at {now}");
        }
        assert_eq!(w.next(ms(1105), voted), Action::Stand);
        // A new vote for another: another heartbeat of waiting.
        let voted_again = View {
            vote: (3, 3),
            ..voted
        };
        for now in (1110..1210).step_by(5) {
            assert_eq!(w.next(ms(now), voted_again), Action::Idle, "at {now}");
        }
        // Its own vote again (it stood): stand again when due, until a lease has passed.
        let leaderless = View {
            vote: (4, 2),
            ..with_role(following(1000, 0), Role::Leaderless)
        };
        assert_eq!(w.next(ms(1500), leaderless), Action::Stand);
        assert_eq!(w.next(ms(2150), leaderless), Action::Stand);
        // Past a lease after the release, openraft's own election timer is as quick.
        for now in (2200..4000).step_by(25) {
            assert_eq!(w.next(ms(now), leaderless), Action::Idle, "at {now}");
        }
    }

    #[test]
    fn a_leader_that_answers_or_is_silent_falls_back_to_the_timeout_while_a_majority_hears_it() {
        for outcome in [Probe::Answered, Probe::NoAnswer] {
            let mut w = Watch::new(HB, LEASE, SILENCE);
            assert_eq!(
                probe_then(&mut w, 1200, following(1000, 0), outcome),
                Action::Idle
            );
            // Probed again every heartbeat while the silence lasts; after an election timeout
            // of silence the others are polled every half heartbeat too. They still hear the
            // leader: nothing is given up.
            let (mut probes, mut polls) = (0, 0);
            for now in (1225..10_000).step_by(25) {
                match w.next(ms(now), following(1000, 0)) {
                    Action::Idle => {}
                    Action::Probe(1) => {
                        probes += 1;
                        w.probed(1, ms(now), outcome);
                    }
                    Action::Poll(1) => {
                        assert!(now >= 1600, "{outcome:?}: polled at {now}");
                        polls += 1;
                        w.polled(1, ms(now), false);
                    }
                    a => panic!("{outcome:?} at {now}: {a:?}"),
                }
            }
            assert_eq!(
                polls, 168,
                "{outcome:?}: one poll per 50 ms from 1600 to 9950"
            );
            assert!(
                (80..=87).contains(&probes),
                "{outcome:?}: about one probe per 100 ms from 1300, {probes}"
            );
            // A closed connection probes again (at most every quarter heartbeat).
            let a = w.next(ms(10_000), closed(following(1000, 0)));
            assert_eq!(a, Action::Poll(1), "{outcome:?}: the poll comes first");
            w.polled(1, ms(10_000), false);
            let a = w.next(ms(10_000), closed(following(1000, 0)));
            assert_eq!(a, Action::Probe(1), "{outcome:?}");
            w.probed(1, ms(10_000), outcome);
            let a = w.next(ms(10_010), closed(following(1000, 0)));
            assert_eq!(a, Action::Idle, "{outcome:?}: probed and polled 10 ms ago");
        }
    }

    #[test]
    fn a_leader_a_majority_has_not_heard_for_an_election_timeout_is_given_up() {
        let mut w = Watch::new(HB, LEASE, SILENCE);
        assert_eq!(
            probe_then(&mut w, 1200, following(1000, 0), Probe::Answered),
            Action::Idle
        );
        // Probed every heartbeat (the port answers); no poll before an election timeout.
        for now in (1201..1600).step_by(2) {
            match w.next(ms(now), following(1000, 0)) {
                Action::Idle => {}
                Action::Probe(1) => w.probed(1, ms(now), Probe::Answered),
                a => panic!("at {now}: {a:?}"),
            }
        }
        assert_eq!(w.next(ms(1600), following(1000, 0)), Action::Poll(1));
        w.polled(1, ms(1600), true);
        assert_eq!(
            w.next(ms(1602), following(1000, 0)),
            Action::Release(Why::Silent)
        );
        // Then it stands like after a refusal: rank 0 a quarter heartbeat later.
        assert_eq!(w.next(ms(1626), following(1000, 0)), Action::Idle);
        assert_eq!(w.next(ms(1627), following(1000, 0)), Action::Stand);
    }

    #[test]
    fn an_append_entries_received_after_the_poll_started_voids_it() {
        let mut w = Watch::new(HB, LEASE, SILENCE);
        assert_eq!(w.next(ms(1600), following(1000, 0)), Action::Poll(1));
        w.polled(1, ms(1600), true);
        // Received at 1605 (the follower's disk still syncing it): the leader speaks.
        let heard = View {
            last_heard: ms(1605),
            ..following(1000, 0)
        };
        for now in (1610..2205).step_by(5) {
            match w.next(ms(now), heard) {
                Action::Idle => {}
                Action::Probe(1) => w.probed(1, ms(now), Probe::Answered),
                a => panic!("at {now}: {a:?}"),
            }
        }
        assert_eq!(
            w.next(ms(2205), heard),
            Action::Poll(1),
            "silent 600 ms again"
        );
    }

    #[test]
    fn a_follower_whose_disk_lags_but_hears_its_leader_does_not_poll() {
        // Accepted last at 1000 (its AppendEntries wait on a slow sync), received at 1550.
        let mut w = Watch::new(HB, LEASE, SILENCE);
        let slow = View {
            last_heard: ms(1550),
            ..following(1000, 0)
        };
        for now in (1600..2150).step_by(5) {
            match w.next(ms(now), slow) {
                Action::Idle => {}
                Action::Probe(1) => w.probed(1, ms(now), Probe::Answered),
                a => panic!("at {now}: {a:?}"),
            }
        }
        assert_eq!(w.next(ms(2150), slow), Action::Poll(1));
    }

    #[test]
    fn a_peer_agrees_when_it_follows_that_leader_or_none_and_has_not_heard_one_lately() {
        let reply = |leader, silent_ms| SilenceReply {
            silent_ms,
            leader,
            term: 3,
        };
        assert!(agrees(1, SILENCE, &reply(1, 300)));
        assert!(agrees(1, SILENCE, &reply(0, 300)), "leaderless");
        assert!(agrees(1, SILENCE, &reply(1, u64::MAX)), "never heard one");
        assert!(!agrees(1, SILENCE, &reply(1, 299)), "heard it 299 ms ago");
        assert!(
            !agrees(1, SILENCE, &reply(2, 5_000)),
            "follows another leader"
        );
        assert!(
            !agrees(1, SILENCE, &reply(3, 0)),
            "the answering replica leads"
        );
        // This voter and the agreeing others against all voters, the leader included.
        assert!(majority(3, 1));
        assert!(!majority(3, 0));
        assert!(!majority(5, 1));
        assert!(majority(5, 2));
        assert!(!majority(4, 1), "2 of 4 is not a majority");
        assert!(majority(4, 2));
    }

    #[test]
    fn contact_again_resets_the_probe() {
        let mut w = Watch::new(HB, LEASE, SILENCE);
        assert_eq!(w.next(ms(1200), following(1000, 0)), Action::Probe(1));
        // The probe was refused, but the leader was heard (restarted on the same port) since.
        w.probed(1, ms(1200), Probe::Refused);
        assert_eq!(w.next(ms(1250), following(1240, 0)), Action::Idle);
        assert_eq!(
            probe_then(&mut w, 1440, following(1240, 0), Probe::Answered),
            Action::Idle
        );
    }

    #[test]
    fn a_leader_a_learner_or_a_damaged_replica_never_stands() {
        let mut w = Watch::new(HB, LEASE, SILENCE);
        let view = closed(following(1000, 0));
        assert_eq!(
            probe_then(&mut w, 1000, view, Probe::Refused),
            Action::Release(Why::Refused)
        );
        let other = with_role(following(1000, 0), Role::Other);
        assert_eq!(w.next(ms(1025), other), Action::Idle);
        // Being Other forgot the release: leaderless afterwards does not stand on its own.
        let leaderless = with_role(following(1000, 0), Role::Leaderless);
        for now in (1025..3000).step_by(25) {
            assert_eq!(w.next(ms(now), leaderless), Action::Idle, "at {now}");
            assert_eq!(w.next(ms(now), closed(other)), Action::Idle, "at {now}");
        }
    }

    #[test]
    fn another_leader_is_probed_on_its_own() {
        let mut w = Watch::new(HB, LEASE, SILENCE);
        assert_eq!(w.next(ms(1200), following(1000, 0)), Action::Probe(1));
        w.probed(1, ms(1200), Probe::Answered);
        let other = View {
            role: Role::Following(2),
            ..closed(following(1000, 0))
        };
        assert_eq!(w.next(ms(1205), other), Action::Probe(2));
    }
}
