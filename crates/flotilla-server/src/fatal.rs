//! Ending a replica on a fatal error, so that a supervisor restarts it instead of leaving a
//! zombie that keeps its port open and answers UNAVAILABLE forever.
//!
//! Any part of the replica that meets an error it cannot recover from (Raft's core stopped on a
//! storage error — an I/O error, a full disk, a corrupt log — or a listener that cannot be
//! restored) calls [`Fatal::fail`] with a one-line reason. The first reason is kept, the
//! replica shuts down, and [`crate::RunningNode::stopped`] returns it as an error, which the
//! `flotilla server` command prints on one line before exiting non-zero.

use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::Raft;

/// Where fatal errors are reported; cloned into every part that may meet one.
#[derive(Debug, Clone)]
pub struct Fatal {
    reason: Arc<Mutex<Option<String>>>,
    shutdown: CancellationToken,
}

impl Fatal {
    pub fn new(shutdown: CancellationToken) -> Fatal {
        Fatal {
            reason: Arc::default(),
            shutdown,
        }
    }

    /// Ends the replica for `reason` (the first reason given wins).
    pub fn fail(&self, reason: String) {
        let mut slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            error!("fatal: {reason}");
            *slot = Some(reason);
        }
        drop(slot);
        self.shutdown.cancel();
    }

    /// The reason the replica failed, if it did.
    pub fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reports Raft's core stopping on its own (not because the replica is shutting down).
    pub async fn watch_raft(self, raft: Raft) {
        let mut metrics = raft.metrics();
        loop {
            if let Err(e) = &metrics.borrow().running_state {
                if !self.shutdown.is_cancelled() {
                    self.fail(format!("raft stopped: {e}"));
                }
                return;
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                changed = metrics.changed() => if changed.is_err() {
                    if !self.shutdown.is_cancelled() {
                        self.fail("raft stopped".to_string());
                    }
                    return;
                },
            }
        }
    }
}
