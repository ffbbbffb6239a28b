//! A follower's watch on its leader: when the leader's process is gone — its port refuses
//! connections — the followers elect a new leader at once instead of waiting out the leader
//! lease and a randomized election timeout (openraft 0.9 stands only after lease + election
//! timeout of silence: 1.8–2.4 s with the defaults).
//!
//! ```text
//!  a connection to this replica closed ─┐ (probing every ⅛ heartbeat for ½ heartbeat)
//!  or the leader silent 2 heartbeats ───┴▶ probe the leader's port ──refused──▶ release ─▶ stand
//!                                             │                        (own vote,   (rank 0 after
//!                                             │                         at once)     ¼ heartbeat,
//!                                             │                                      then by rank)
//!                                             └─answers / no answer──▶ fallback: openraft's
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
//! Safety is Raft's: an election never breaks it. A healthy leader is never deposed by this
//! watch: a lease is given up only by a voter that saw nothing listening on the leader's port,
//! and a paused or partitioned leader's port answers or stays silent, so the fallback applies.
//! A damaged replica (see `damage`) and a learner never stand.
//!
//! [`Watch`] is the pure decision: time enters as a value, the probe's outcome as an input.
//! [`run`] is the I/O shell: the Raft metrics, the TCP probe, the election trigger.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_store::NodeId;
use openraft::ServerState;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::damage::Damage;
use crate::listener::Closed;
use crate::Raft;

/// When this replica last heard from a leader (an AppendEntries it accepted) and the highest
/// term it saw a candidate ask for, shared between the peer service that hears them and the
/// watch.
#[derive(Debug, Clone)]
pub struct Contact {
    base: Instant,
    last_ms: Arc<AtomicU64>,
    /// The highest term of any vote request this replica received.
    vote_term: Arc<AtomicU64>,
}

impl Default for Contact {
    fn default() -> Self {
        Contact {
            base: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
            vote_term: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Contact {
    /// The time now, to pass to [`Contact::touch`] once a message received now was accepted.
    pub fn stamp(&self) -> Duration {
        self.now()
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

    fn last(&self) -> Duration {
        Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
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
    /// When it last heard from a leader.
    pub last_contact: Duration,
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
    /// Give up the dead leader's lease: stand for election once, at once.
    Release,
    /// Stand for election at a term above every term seen.
    Stand,
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
    probed: Option<Probed>,
    released: Option<Released>,
    /// The vote last seen, and since when.
    vote: Option<((u64, NodeId), Duration)>,
    /// When a connection to this replica last closed.
    closed_at: Option<Duration>,
}

impl Watch {
    pub fn new(heartbeat: Duration, lease: Duration) -> Watch {
        Watch {
            heartbeat,
            lease,
            probed: None,
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
        if let Some(p) = this_silence {
            if p.outcome == Probe::Refused {
                self.released = Some(Released {
                    leader,
                    at: now,
                    rank: view.rank,
                    candidates: view.candidates.max(1),
                    stood: 0,
                });
                return Action::Release;
            }
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

    /// Reports the outcome of the probe that [`Watch::next`] asked for, started at `at`.
    pub fn probed(&mut self, leader: NodeId, at: Duration, outcome: Probe) {
        self.probed = Some(Probed {
            leader,
            at,
            outcome,
        });
    }
}

/// Runs the watch until shutdown.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    raft: Raft,
    node_id: NodeId,
    contact: Contact,
    damage: Damage,
    closed: Closed,
    heartbeat: Duration,
    lease: Duration,
    shutdown: CancellationToken,
) {
    let mut watch = Watch::new(heartbeat, lease);
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
            Action::Release => {
                let Role::Following(leader) = view.role else {
                    continue;
                };
                info!(
                    leader,
                    silent_ms = contact.now().saturating_sub(view.last_contact).as_millis() as u64,
                    "the leader's port refuses connections: giving up its lease and standing for election"
                );
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

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Following replica 1, last heard at `last_contact`, at `rank` of 2 candidates.
    fn following(last_contact: u64, rank: u32) -> View {
        View {
            role: Role::Following(1),
            last_contact: ms(last_contact),
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
        let mut w = Watch::new(HB, LEASE);
        for now in (1000..1199).step_by(25) {
            assert_eq!(w.next(ms(now), following(1000, 0)), Action::Idle);
        }
    }

    #[test]
    fn a_closed_connection_probes_at_once_and_a_refusal_gives_the_lease_up_at_once() {
        let mut w = Watch::new(HB, LEASE);
        // Heard 10 ms ago: silence alone would not probe yet, a closed connection does.
        assert_eq!(w.next(ms(1010), following(1000, 0)), Action::Idle);
        let action = probe_then(&mut w, 1010, closed(following(1000, 0)), Probe::Refused);
        assert_eq!(
            action,
            Action::Release,
            "released long before the lease (2200)"
        );
    }

    #[test]
    fn a_message_received_before_the_refusal_but_accepted_after_it_does_not_void_it() {
        let mut w = Watch::new(HB, LEASE);
        let view = closed(following(1000, 0));
        assert_eq!(w.next(ms(1010), view), Action::Probe(1));
        w.probed(1, ms(1010), Probe::Refused);
        // An AppendEntries received at 1005 was accepted after the probe.
        assert_eq!(w.next(ms(1012), following(1005, 0)), Action::Release);
        // The release stands while the metrics still show that leader.
        assert_eq!(w.next(ms(1020), following(1005, 0)), Action::Idle);
        assert_eq!(w.next(ms(1036), following(1005, 0)), Action::Idle);
        assert_eq!(w.next(ms(1037), following(1005, 0)), Action::Stand);
    }

    #[test]
    fn after_a_close_the_leader_is_probed_again_for_half_a_heartbeat() {
        // The dying leader's connections close a moment before its listening socket.
        let mut w = Watch::new(HB, LEASE);
        let answered = probe_then(&mut w, 1000, closed(following(1000, 0)), Probe::Answered);
        assert_eq!(answered, Action::Idle);
        assert_eq!(
            w.next(ms(1010), following(1000, 0)),
            Action::Idle,
            "probed 10 ms ago"
        );
        assert_eq!(
            probe_then(&mut w, 1013, following(1000, 0), Probe::Refused),
            Action::Release
        );
        // A healthy leader: a few probes after a close, then none until the next close.
        let mut w = Watch::new(HB, LEASE);
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
        let mut w = Watch::new(HB, LEASE);
        assert_eq!(w.next(ms(1199), following(1000, 0)), Action::Idle);
        assert_eq!(
            probe_then(&mut w, 1200, following(1000, 0), Probe::Refused),
            Action::Release
        );
    }

    #[test]
    fn after_the_release_the_ranks_stand_in_turn_until_a_leader_is_known() {
        // Rank 0 of 2: a quarter heartbeat after the release, then every two half-heartbeats.
        let mut w = Watch::new(HB, LEASE);
        let view = closed(following(1000, 0));
        assert_eq!(
            probe_then(&mut w, 1000, view, Probe::Refused),
            Action::Release
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
        let mut w = Watch::new(HB, LEASE);
        let view = closed(following(1000, 1));
        assert_eq!(
            probe_then(&mut w, 1000, view, Probe::Refused),
            Action::Release
        );
        let leaderless = with_role(following(1000, 1), Role::Leaderless);
        assert_eq!(w.next(ms(1074), leaderless), Action::Idle);
        assert_eq!(w.next(ms(1075), leaderless), Action::Stand);
        assert_eq!(w.next(ms(1174), leaderless), Action::Idle);
        assert_eq!(w.next(ms(1175), leaderless), Action::Stand);
    }

    #[test]
    fn a_vote_for_another_waits_a_heartbeat_and_nothing_stands_after_a_lease() {
        let mut w = Watch::new(HB, LEASE);
        let view = closed(following(1000, 0));
        assert_eq!(
            probe_then(&mut w, 1000, view, Probe::Refused),
            Action::Release
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
    fn a_leader_that_answers_or_is_silent_falls_back_to_the_timeout() {
        for outcome in [Probe::Answered, Probe::NoAnswer] {
            let mut w = Watch::new(HB, LEASE);
            assert_eq!(
                probe_then(&mut w, 1200, following(1000, 0), outcome),
                Action::Idle
            );
            // Probed again every heartbeat while the silence lasts, never more.
            let mut probes = 0;
            for now in (1225..10_000).step_by(25) {
                match w.next(ms(now), following(1000, 0)) {
                    Action::Idle => {}
                    Action::Probe(1) => {
                        probes += 1;
                        w.probed(1, ms(now), outcome);
                    }
                    a => panic!("{outcome:?} at {now}: {a:?}"),
                }
            }
            assert_eq!(
                probes, 87,
                "{outcome:?}: one probe per 100 ms from 1300 to 9900"
            );
            // A closed connection probes again (at most every quarter heartbeat).
            let a = w.next(ms(10_000), closed(following(1000, 0)));
            assert_eq!(a, Action::Probe(1), "{outcome:?}");
            w.probed(1, ms(10_000), outcome);
            let a = w.next(ms(10_010), closed(following(1000, 0)));
            assert_eq!(a, Action::Idle, "{outcome:?}: probed 10 ms ago");
        }
    }

    #[test]
    fn contact_again_resets_the_probe() {
        let mut w = Watch::new(HB, LEASE);
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
        let mut w = Watch::new(HB, LEASE);
        let view = closed(following(1000, 0));
        assert_eq!(
            probe_then(&mut w, 1000, view, Probe::Refused),
            Action::Release
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
        let mut w = Watch::new(HB, LEASE);
        assert_eq!(w.next(ms(1200), following(1000, 0)), Action::Probe(1));
        w.probed(1, ms(1200), Probe::Answered);
        let other = View {
            role: Role::Following(2),
            ..closed(following(1000, 0))
        };
        assert_eq!(w.next(ms(1205), other), Action::Probe(2));
    }
}
