//! Leadership as the rest of the replica sees it: whether this replica leads now, the "not
//! the leader" error carrying a hint of who does, and the wall clock a leader stamps into the
//! commands it proposes.
//!
//! The client API, the worker service, the dispatch loop, membership changes and the proposer
//! all need these; keeping them here, below all of them, keeps the module graph acyclic.
//! Depends on `error` and openraft's metrics only; nothing here may depend on another module
//! of this crate.

use std::time::{SystemTime, UNIX_EPOCH};

use flotilla_store::Node;
use openraft::error::ForwardToLeader;
use openraft::ServerState;

use crate::error::ApiError;
use crate::Raft;

/// Whether this replica is the leader, by its latest metrics.
pub(crate) fn is_leader(raft: &Raft) -> bool {
    raft.metrics().borrow().state == ServerState::Leader
}

/// `Ok` on the leader; otherwise "not the leader" with a hint of who is.
pub(crate) fn ensure_leader(raft: &Raft) -> Result<(), ApiError> {
    if is_leader(raft) {
        Ok(())
    } else {
        Err(leader_hint(raft))
    }
}

/// "Not the leader", with the leader's id and address when this replica knows them.
pub(crate) fn leader_hint(raft: &Raft) -> ApiError {
    let m = raft.metrics().borrow().clone();
    let leader = m.current_leader.and_then(|id| {
        m.membership_config
            .membership()
            .get_node(&id)
            .map(|n| (id, n.addr.clone()))
    });
    ApiError::NotLeader { leader }
}

/// openraft's "forward to the leader" as "not the leader", with the hint it carries.
pub(crate) fn forwarded(f: ForwardToLeader<u64, Node>) -> ApiError {
    ApiError::NotLeader {
        leader: f
            .leader_id
            .zip(f.leader_node)
            .map(|(id, node)| (id, node.addr)),
    }
}

/// Wall-clock time in ms: read here, at the edge, and carried into commands as a value.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
