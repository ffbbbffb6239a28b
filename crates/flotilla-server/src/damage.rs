//! What a replica whose log lost entries it had acknowledged may do until it has them again.
//!
//! RocksDB's recovery cannot tell damage in the middle of the WAL from a torn tail, and drops
//! everything after it. The store detects that at open ([`flotilla_store::LogStore::damaged`])
//! against its separately synced record of what it acknowledged. Such a replica's log is
//! shorter than its promises: it voted for entries it no longer holds, and the cluster counted
//! it towards a quorum for them. So until it has caught up past the last entry it acknowledged:
//!
//! - it does not stand for election (its log could be missing committed entries);
//! - it refuses its vote to a candidate whose log ends before that entry (Raft's own rule
//!   compares with the damaged log, which would let a lagging candidate win without them).
//!
//! A single damaged replica plus ordinary lag thus never elects a leader without an
//! acknowledged entry: the candidate needs this replica's vote or one of a replica that has it.

use std::sync::{Arc, Mutex};

use flotilla_store::NodeId;
use openraft::LogId;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::Raft;

/// The last acknowledged entry this replica lost, while it has not caught up past it.
#[derive(Debug, Clone, Default)]
pub struct Damage {
    lost: Arc<Mutex<Option<LogId<NodeId>>>>,
}

impl Damage {
    pub fn new(lost: Option<LogId<NodeId>>) -> Damage {
        Damage {
            lost: Arc::new(Mutex::new(lost)),
        }
    }

    /// The lost entry, while this replica has not caught up past it.
    pub fn lost(&self) -> Option<LogId<NodeId>> {
        *self.lost.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why a candidate whose log ends at `candidate_last` must not get this replica's vote, if
    /// it must not.
    pub fn refuses_vote(&self, candidate_last: Option<&LogId<NodeId>>) -> Option<String> {
        let lost = self.lost()?;
        (candidate_last < Some(&lost)).then(|| {
            format!(
                "this replica acknowledged entries up to {lost} that its damaged log lost; a candidate whose log ends at {} lacks them",
                candidate_last.map_or("(empty)".to_string(), |l| l.to_string())
            )
        })
    }

    /// Marks the damage repaired once `applied` reaches the lost entry; true when it did.
    fn caught_up(&self, applied: Option<LogId<NodeId>>) -> bool {
        let mut lost = self.lost.lock().unwrap_or_else(|p| p.into_inner());
        match *lost {
            Some(l) if applied >= Some(l) => {
                *lost = None;
                true
            }
            _ => false,
        }
    }

    /// While damaged, keeps elections off on this replica; turns them on once it has applied
    /// the lost entry again (from the leader's log or a snapshot).
    pub async fn watch(self, raft: Raft, shutdown: CancellationToken) {
        let Some(lost) = self.lost() else { return };
        raft.runtime_config().elect(false);
        warn!(
            acknowledged = %lost,
            "damaged log: this replica will not stand for election, nor vote for a candidate behind the entries it acknowledged, until it has them again"
        );
        let mut metrics = raft.metrics();
        loop {
            let applied = metrics.borrow().last_applied;
            if self.caught_up(applied) {
                raft.runtime_config().elect(true);
                info!(acknowledged = %lost, applied = ?applied, "caught up past the damage: elections on");
                return;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = metrics.changed() => if changed.is_err() { return },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    fn id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    #[test]
    fn refuses_only_candidates_behind_the_lost_entry_until_caught_up() {
        let d = Damage::new(Some(id(2, 100)));
        assert!(d.refuses_vote(None).is_some());
        assert!(d.refuses_vote(Some(&id(2, 99))).is_some());
        // A later term with a shorter log is still behind? No: logs compare by term first, and
        // a log ending in a later term holds every entry committed before it.
        assert!(d.refuses_vote(Some(&id(3, 50))).is_none());
        assert!(d.refuses_vote(Some(&id(2, 100))).is_none());
        assert!(!d.caught_up(Some(id(2, 99))));
        assert!(d.refuses_vote(Some(&id(2, 99))).is_some());
        assert!(d.caught_up(Some(id(2, 100))));
        assert!(d.refuses_vote(None).is_none());
        assert!(Damage::default().refuses_vote(None).is_none());
    }
}
