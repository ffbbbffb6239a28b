//! A follower's watch on its leader: when the leader's process is gone — its port refuses
//! connections — the follower stands for election as soon as the leader lease has run out,
//! rather than waiting out a randomized election timeout on top of the lease (openraft 0.9
//! stands only after lease + election timeout of silence: 1.8–2.4 s with the defaults).
//!
//! ```text
//!  heard from the leader ──▶ silent 3 heartbeats ──▶ probe its port ──refused──▶ lease over
//!                                                      │                        + stagger ─▶ elect
//!                                                      └─answers / no answer──▶ fallback: openraft's
//!                                                                               randomized timeout
//! ```
//!
//! Safety is Raft's: an election never breaks it, and the other voters still refuse a vote
//! while their own lease from the leader runs, so a healthy leader is never deposed by this
//! watch (a paused or partitioned leader's port answers or stays silent, so the fallback
//! applies). The stagger (one heartbeat per rank among the other voters) keeps two followers
//! from splitting the vote. A damaged replica (see `damage`) never stands.
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
use crate::Raft;

/// When this replica last heard from a leader (an AppendEntries it accepted), shared between
/// the peer service that hears it and the watch.
#[derive(Debug, Clone)]
pub struct Contact {
    base: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Default for Contact {
    fn default() -> Self {
        Contact {
            base: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Contact {
    /// Records contact with the leader now.
    pub fn touch(&self) {
        let now = self.base.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(now, Ordering::Relaxed);
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

/// What this replica sees when the watch looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    /// The leader this replica follows, when it is a voter that may stand for election
    /// (a follower, not damaged); None otherwise.
    pub following: Option<NodeId>,
    /// When it last heard from a leader.
    pub last_contact: Duration,
    /// Its rank among the voters other than the leader (0: stands first).
    pub rank: u32,
}

/// What to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Idle,
    /// Probe the leader's address, then report with [`Watch::probed`].
    Probe(NodeId),
    /// Stand for election.
    Elect,
}

/// The decision, on time given as a value.
#[derive(Debug, Clone)]
pub struct Watch {
    heartbeat: Duration,
    lease: Duration,
    /// The probe of the current silence: which leader, from which last contact, what it showed.
    probe: Option<(NodeId, Duration, Probe)>,
    /// An election was triggered for this silence.
    elected: Option<Duration>,
}

impl Watch {
    pub fn new(heartbeat: Duration, lease: Duration) -> Watch {
        Watch {
            heartbeat,
            lease,
            probe: None,
            elected: None,
        }
    }

    /// The next action at time `now`.
    pub fn next(&mut self, now: Duration, view: View) -> Action {
        let Some(leader) = view.following else {
            self.probe = None;
            return Action::Idle;
        };
        if now.saturating_sub(view.last_contact) < 3 * self.heartbeat {
            self.probe = None;
            return Action::Idle;
        }
        if self.elected == Some(view.last_contact) {
            return Action::Idle;
        }
        match self.probe {
            Some((l, since, outcome)) if l == leader && since == view.last_contact => {
                let due = view.last_contact + self.lease + self.heartbeat * (1 + view.rank);
                if outcome == Probe::Refused && now >= due {
                    self.elected = Some(view.last_contact);
                    Action::Elect
                } else {
                    Action::Idle
                }
            }
            _ => Action::Probe(leader),
        }
    }

    /// Reports the outcome of the probe that [`Watch::next`] asked for.
    pub fn probed(&mut self, leader: NodeId, last_contact: Duration, outcome: Probe) {
        self.probe = Some((leader, last_contact, outcome));
    }
}

/// Runs the watch until shutdown.
pub async fn run(
    raft: Raft,
    node_id: NodeId,
    contact: Contact,
    damage: Damage,
    heartbeat: Duration,
    lease: Duration,
    shutdown: CancellationToken,
) {
    let mut watch = Watch::new(heartbeat, lease);
    let mut tick = tokio::time::interval(heartbeat / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (view, leader_addr) = {
            let m = raft.metrics();
            let m = m.borrow();
            let membership = m.membership_config.membership();
            let voter = membership.voter_ids().any(|v| v == node_id);
            let following = m
                .current_leader
                .filter(|l| *l != node_id && voter && m.state == ServerState::Follower)
                .filter(|_| damage.lost().is_none());
            let rank = following.map_or(0, |l| {
                membership
                    .voter_ids()
                    .filter(|v| *v != l && *v < node_id)
                    .count() as u32
            });
            let addr = following.and_then(|l| membership.get_node(&l).map(|n| n.addr.clone()));
            (
                View {
                    following,
                    last_contact: contact.last(),
                    rank,
                },
                addr,
            )
        };
        match watch.next(contact.now(), view) {
            Action::Idle => {}
            Action::Probe(leader) => {
                let outcome = match leader_addr {
                    Some(addr) => probe(&addr, heartbeat).await,
                    None => Probe::NoAnswer,
                };
                watch.probed(leader, view.last_contact, outcome);
            }
            Action::Elect => {
                info!(
                    leader = ?view.following,
                    silent_ms = contact.now().saturating_sub(view.last_contact).as_millis() as u64,
                    "the leader's port refuses connections and its lease ran out: standing for election"
                );
                let _ = raft.trigger().elect().await;
            }
        }
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

    fn following(last_contact: u64, rank: u32) -> View {
        View {
            following: Some(1),
            last_contact: ms(last_contact),
            rank,
        }
    }

    #[test]
    fn a_leader_heard_recently_is_left_alone() {
        let mut w = Watch::new(HB, LEASE);
        for now in (1000..1299).step_by(50) {
            assert_eq!(w.next(ms(now), following(1000, 0)), Action::Idle);
        }
    }

    #[test]
    fn a_refused_leader_is_replaced_when_the_lease_runs_out_not_before() {
        let mut w = Watch::new(HB, LEASE);
        assert_eq!(w.next(ms(1300), following(1000, 0)), Action::Probe(1));
        w.probed(1, ms(1000), Probe::Refused);
        // Lease from the last contact (1000 + 1200) plus one heartbeat of stagger at rank 0.
        for now in (1300..2300).step_by(50) {
            assert_eq!(
                w.next(ms(now), following(1000, 0)),
                Action::Idle,
                "at {now}"
            );
        }
        assert_eq!(w.next(ms(2300), following(1000, 0)), Action::Elect);
        // Once per silence.
        assert_eq!(w.next(ms(2400), following(1000, 0)), Action::Idle);
        assert_eq!(w.next(ms(5000), following(1000, 0)), Action::Idle);
    }

    #[test]
    fn followers_are_staggered_by_rank() {
        let mut w = Watch::new(HB, LEASE);
        assert_eq!(w.next(ms(1300), following(1000, 2)), Action::Probe(1));
        w.probed(1, ms(1000), Probe::Refused);
        assert_eq!(w.next(ms(2499), following(1000, 2)), Action::Idle);
        assert_eq!(w.next(ms(2500), following(1000, 2)), Action::Elect);
    }

    #[test]
    fn a_leader_that_answers_or_is_silent_falls_back_to_the_timeout() {
        for outcome in [Probe::Answered, Probe::NoAnswer] {
            let mut w = Watch::new(HB, LEASE);
            assert_eq!(w.next(ms(1300), following(1000, 0)), Action::Probe(1));
            w.probed(1, ms(1000), outcome);
            for now in (1300..10_000).step_by(100) {
                assert_eq!(
                    w.next(ms(now), following(1000, 0)),
                    Action::Idle,
                    "{outcome:?}"
                );
            }
        }
    }

    #[test]
    fn contact_again_resets_the_probe() {
        let mut w = Watch::new(HB, LEASE);
        assert_eq!(w.next(ms(1300), following(1000, 0)), Action::Probe(1));
        w.probed(1, ms(1000), Probe::Refused);
        // The leader came back (restarted on the same port) and was heard at 1500.
        assert_eq!(w.next(ms(1600), following(1500, 0)), Action::Idle);
        assert_eq!(w.next(ms(2400), following(1500, 0)), Action::Probe(1));
        w.probed(1, ms(1500), Probe::Answered);
        assert_eq!(w.next(ms(3000), following(1500, 0)), Action::Idle);
    }

    #[test]
    fn no_leader_a_new_leader_or_not_a_follower_means_no_election() {
        let mut w = Watch::new(HB, LEASE);
        assert_eq!(w.next(ms(1300), following(1000, 0)), Action::Probe(1));
        w.probed(1, ms(1000), Probe::Refused);
        let none = View {
            following: None,
            ..following(1000, 0)
        };
        assert_eq!(w.next(ms(2300), none), Action::Idle);
        // Another leader now: its own probe first.
        let other = View {
            following: Some(2),
            ..following(1000, 0)
        };
        assert_eq!(w.next(ms(2300), other), Action::Probe(2));
    }
}
