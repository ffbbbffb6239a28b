//! Where calls go: the leader as last seen, the addresses that recently refused connections,
//! and the probe that asks the other replicas who leads while a call to the leader is slow.
//!
//! The leader is learned from every successful leader-only call, from leader hints (a
//! follower's NOT_LEADER answer) and from probes (`ClusterStatus`, which carries the term). It
//! is published on a watch channel, so a call stuck on an old leader moves as soon as any call
//! of this client learns a newer one.
//!
//! ```text
//!  success / hint / probe ─▶ Routing::learn ─▶ watch ─▶ calls still waiting on another replica
//!  connection refused     ─▶ mark_dead (not tried first again for DEAD_FOR)
//! ```

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// How long an address that refused a connection (or could not be reached) is skipped when
/// choosing where to send a call first. A leader hint naming it is not followed meanwhile.
pub(crate) const DEAD_FOR: Duration = Duration::from_secs(1);

/// A probe's answer is reused by calls that want one this soon after it.
pub(crate) const PROBE_FRESH: Duration = Duration::from_millis(50);

/// Longest wait for the replicas' answers to one probe.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// When a probe ran, and the leader (address, term) it found.
pub(crate) type Probed = (Instant, Option<(String, u64)>);

pub(crate) struct Routing {
    state: Mutex<RouteState>,
    leader_tx: watch::Sender<Option<String>>,
    /// The last probe: when, and the leader (address, term) it found. Held across a probe, so
    /// concurrent calls share one.
    pub(crate) probe: tokio::sync::Mutex<Option<Probed>>,
}

#[derive(Default)]
struct RouteState {
    leader: Option<String>,
    /// Term in which `leader` was seen leading (0: unknown; a success or a hint has no term).
    term: u64,
    /// Addresses that refused a connection, and when.
    dead: HashMap<String, Instant>,
}

impl Routing {
    pub(crate) fn new() -> Routing {
        Routing {
            state: Mutex::default(),
            leader_tx: watch::channel(None).0,
            probe: tokio::sync::Mutex::new(None),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, RouteState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The leader as last seen, unless its address refused a connection since.
    pub(crate) fn leader(&self) -> Option<String> {
        let s = self.state();
        s.leader.clone().filter(|l| !is_dead(&s, l))
    }

    /// The term the known leader `addr` was seen leading in (0 if unknown or not the leader).
    pub(crate) fn term_of(&self, addr: &str) -> u64 {
        let s = self.state();
        if s.leader.as_deref() == Some(addr) {
            s.term
        } else {
            0
        }
    }

    /// `addr` served a leader-only call or was named by a hint: it leads (term unknown).
    pub(crate) fn learn(&self, addr: &str) {
        self.learn_in_term(addr, 0);
    }

    /// `addr` leads in `term` (0: unknown). A known term is never replaced by an older one.
    pub(crate) fn learn_in_term(&self, addr: &str, term: u64) {
        let changed = {
            let mut s = self.state();
            s.dead.remove(addr);
            if s.leader.as_deref() == Some(addr) {
                s.term = s.term.max(term);
                false
            } else if term > 0 && term < s.term {
                false
            } else {
                s.leader = Some(addr.to_string());
                s.term = term;
                true
            }
        };
        if changed {
            self.leader_tx.send_replace(Some(addr.to_string()));
        }
    }

    /// `addr` failed a call: it is no longer taken for the leader.
    pub(crate) fn forget(&self, addr: &str) {
        let changed = {
            let mut s = self.state();
            if s.leader.as_deref() == Some(addr) {
                s.leader = None;
                s.term = 0;
                true
            } else {
                false
            }
        };
        if changed {
            self.leader_tx.send_replace(None);
        }
    }

    /// Forgets whichever leader is known.
    pub(crate) fn forget_any(&self) {
        let leader = self.state().leader.clone();
        if let Some(l) = leader {
            self.forget(&l);
        }
    }

    pub(crate) fn mark_dead(&self, addr: &str) {
        self.state().dead.insert(addr.to_string(), Instant::now());
        self.forget(addr);
    }

    pub(crate) fn is_dead(&self, addr: &str) -> bool {
        is_dead(&self.state(), addr)
    }

    /// Notified whenever the known leader changes.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Option<String>> {
        self.leader_tx.subscribe()
    }
}

fn is_dead(s: &RouteState, addr: &str) -> bool {
    s.dead.get(addr).is_some_and(|at| at.elapsed() < DEAD_FOR)
}

/// A failed call's message with its causes ("transport error" alone hides a refused connect
/// or a certificate the client does not trust).
pub(crate) fn describe(status: &tonic::Status) -> String {
    flotilla_proto::with_causes(
        status.message().to_string(),
        std::error::Error::source(status),
    )
}

/// Whether a failed call means the address could not be reached at all (connection refused,
/// host or network unreachable, connect timed out), as opposed to an answer or a broken call.
pub(crate) fn unreachable(status: &tonic::Status) -> bool {
    use std::io::ErrorKind;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::HostUnreachable
                    | ErrorKind::NetworkUnreachable
                    | ErrorKind::AddrNotAvailable
            ) {
                return true;
            }
        }
        let text = e.to_string();
        if text.contains("tcp connect error") || text.contains("error trying to connect") {
            return true;
        }
        cause = e.source();
    }
    let m = status.message();
    m.contains("tcp connect error")
        || m.contains("error trying to connect")
        || m.contains("Connection refused")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_dead_mark_expires_and_a_learned_leader_clears_it() {
        let r = Routing::new();
        r.learn("a:1");
        assert_eq!(r.leader().as_deref(), Some("a:1"));
        r.mark_dead("a:1");
        assert_eq!(r.leader(), None, "a dead leader is forgotten");
        assert!(r.is_dead("a:1"));
        tokio::time::advance(DEAD_FOR).await;
        assert!(!r.is_dead("a:1"));
        r.mark_dead("b:1");
        r.learn("b:1");
        assert!(
            !r.is_dead("b:1"),
            "learning an address clears its dead mark"
        );
        assert_eq!(r.leader().as_deref(), Some("b:1"));
    }

    #[test]
    fn an_older_term_never_replaces_a_newer_one() {
        let r = Routing::new();
        r.learn_in_term("a:1", 5);
        r.learn_in_term("b:1", 4);
        assert_eq!(r.leader().as_deref(), Some("a:1"));
        assert_eq!(r.term_of("a:1"), 5);
        r.learn_in_term("b:1", 6);
        assert_eq!(r.leader().as_deref(), Some("b:1"));
        assert_eq!(r.term_of("a:1"), 0);
        // A success or a hint (no term) always wins: it is news from the replica itself.
        r.learn("c:1");
        assert_eq!(r.leader().as_deref(), Some("c:1"));
    }
}
