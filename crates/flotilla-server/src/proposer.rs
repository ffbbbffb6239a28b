//! Group commit: the leader folds many client commands into one Raft entry.
//!
//! Callers hand a [`Command`] to the [`Proposer`] and await its [`Response`]. One loop drains
//! the bounded queue into a [`Proposal`] of up to `max_commands_per_entry` commands (or
//! `max_entry_bytes`), proposes it without waiting for the previous entry to commit, and answers
//! each caller once the entry is committed on a quorum and applied. At most
//! `max_inflight_entries` entries are in flight; while they are, new commands accumulate and
//! the next entry grows — under load, one fsync serves many requests.
//!
//! ```text
//!  callers ─▶ [bounded queue] ─▶ batch ─▶ raft.client_write_ff ─▶ (commit+apply) ─▶ replies
//!                                  ▲ waits for an in-flight slot
//! ```

use std::sync::Arc;

use flotilla_core::{Command, Proposal, Response};
use openraft::error::ClientWriteError;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::warn;

use crate::error::ApiError;
use crate::Raft;

/// Limits of the group commit.
#[derive(Debug, Clone, Copy)]
pub struct ProposerLimits {
    pub max_commands_per_entry: usize,
    pub max_entry_bytes: usize,
    pub max_inflight_entries: usize,
    pub queue_limit: usize,
}

struct Pending {
    command: Command,
    reply: oneshot::Sender<Result<Response, ApiError>>,
}

/// Handle to the group-commit loop. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
}

impl Proposer {
    /// Starts the loop on the current runtime; it ends when every handle is dropped.
    pub fn start(raft: Raft, limits: ProposerLimits) -> Proposer {
        let (tx, rx) = mpsc::channel(limits.queue_limit);
        tokio::spawn(run(raft, rx, limits));
        Proposer { tx }
    }

    /// Proposes `command` and waits until it is committed and applied.
    pub async fn propose(&self, command: Command) -> Result<Response, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Pending { command, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => ApiError::Unavailable(
                    "proposal queue full (proposal_queue_limit); retry later".into(),
                ),
                mpsc::error::TrySendError::Closed(_) => {
                    ApiError::Unavailable("replica is shutting down".into())
                }
            })?;
        rx.await
            .map_err(|_| ApiError::Unavailable("replica is shutting down".into()))?
    }
}

fn command_bytes(c: &Command) -> usize {
    match c {
        Command::Submit { tasks, .. } => tasks.iter().map(|t| t.payload.len() + 64).sum(),
        Command::Complete { result, .. } => result.len() + 64,
        Command::SaveCheckpoint { data, .. } => data.len() + 64,
        Command::Fail { error, .. } => error.len() + 64,
        _ => 64,
    }
}

async fn run(raft: Raft, mut rx: mpsc::Receiver<Pending>, limits: ProposerLimits) {
    let slots = Arc::new(Semaphore::new(limits.max_inflight_entries));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut bytes = command_bytes(&first.command);
        let mut batch = vec![first];
        while batch.len() < limits.max_commands_per_entry && bytes < limits.max_entry_bytes {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += command_bytes(&p.command);
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let (commands, replies): (Vec<Command>, Vec<_>) =
            batch.into_iter().map(|p| (p.command, p.reply)).unzip();
        match raft.client_write_ff(Proposal { commands }).await {
            Err(fatal) => {
                let e = ApiError::Unavailable(format!("raft stopped: {fatal}"));
                for r in replies {
                    let _ = r.send(Err(e.clone()));
                }
            }
            Ok(receiver) => {
                tokio::spawn(async move {
                    let _slot = slot;
                    let outcome = match receiver.await {
                        Err(_) => Err(ApiError::Unavailable("raft stopped".into())),
                        Ok(Err(e)) => Err(write_error(e)),
                        Ok(Ok(resp)) if resp.data.len() == replies.len() => Ok(resp.data),
                        Ok(Ok(resp)) => {
                            warn!(
                                got = resp.data.len(),
                                want = replies.len(),
                                "response count mismatch"
                            );
                            Err(ApiError::Internal("response count mismatch".into()))
                        }
                    };
                    match outcome {
                        Ok(responses) => {
                            for (r, resp) in replies.into_iter().zip(responses) {
                                let _ = r.send(Ok(resp));
                            }
                        }
                        Err(e) => {
                            for r in replies {
                                let _ = r.send(Err(e.clone()));
                            }
                        }
                    }
                });
            }
        }
    }
}

/// A failed write: not leader (with hint) or unavailable. Neither means the command was
/// applied, but a client must treat an unavailable outcome as unknown and retry idempotently.
pub(crate) fn write_error(e: ClientWriteError<u64, openraft::BasicNode>) -> ApiError {
    match e {
        ClientWriteError::ForwardToLeader(f) => ApiError::NotLeader {
            leader: f
                .leader_id
                .zip(f.leader_node)
                .map(|(id, node)| (id, node.addr)),
        },
        ClientWriteError::ChangeMembershipError(e) => ApiError::Internal(e.to_string()),
    }
}
