//! Group commit: the leader folds many client commands into one Raft entry.
//!
//! Callers hand a [`Command`] to the [`Proposer`] and await its [`Response`]. One loop drains
//! the bounded queue into a [`Proposal`] of up to `max_commands_per_entry` commands (or
//! `max_entry_bytes`), proposes it without waiting for the previous entry to commit, and answers
//! each caller once the entry is committed on a quorum and applied. At most
//! `max_inflight_entries` entries are in flight; while they are, new commands accumulate and
//! the next entry grows — under load, one fsync serves many requests.
//!
//! Callers that send their next command as soon as they are answered (a client with N
//! requests in flight) would otherwise settle into two cohorts: when an entry commits, the
//! cohort queued behind it is proposed at once, and the cohort just answered, a moment later,
//! queues behind that one — each entry carries half the load and every request waits for two
//! commits. So when an entry is answered, the loop expects the commands queued by then plus
//! that entry's own back, and the next entry waits for them, at most `linger` (a commit delay,
//! as in PostgreSQL's `commit_delay`): one cohort, one entry, one commit per request.
//!
//! ```text
//!  callers ─▶ [bounded queue] ─▶ batch ─▶ raft.client_write_ff ─▶ (commit+apply) ─▶ replies
//!                                  ▲ waits for an in-flight slot
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flotilla_core::{Command, Proposal, Response};
use openraft::error::ClientWriteError;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tracing::warn;

use crate::error::ApiError;
use crate::leadership::forwarded;
use crate::Raft;

/// Limits of the group commit.
#[derive(Debug, Clone, Copy)]
pub struct ProposerLimits {
    pub max_commands_per_entry: usize,
    pub max_entry_bytes: usize,
    pub max_inflight_entries: usize,
    pub queue_limit: usize,
    /// Longest wait for the expected commands before proposing fewer (zero: never wait).
    pub linger: Duration,
}

struct Pending {
    command: Command,
    reply: oneshot::Sender<Result<Response, ApiError>>,
}

/// Handle to the group-commit loop. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
    /// True while a [`Hold`] exists: batches wait instead of going to Raft (a leadership
    /// transfer needs the log to stand still).
    held: Arc<watch::Sender<bool>>,
}

/// While it lives, the proposer proposes nothing (commands queue, bounded as always).
pub struct Hold(Arc<watch::Sender<bool>>);

impl Drop for Hold {
    fn drop(&mut self) {
        self.0.send_replace(false);
    }
}

impl Proposer {
    /// Starts the loop on the current runtime; it ends when every handle is dropped. Each
    /// entry's number of commands is recorded in `entry_commands`.
    pub fn start(
        raft: Raft,
        limits: ProposerLimits,
        entry_commands: metrics::Histogram,
    ) -> Proposer {
        let (tx, rx) = mpsc::channel(limits.queue_limit);
        let (held, held_rx) = watch::channel(false);
        tokio::spawn(run(
            raft,
            rx,
            tx.downgrade(),
            held_rx,
            limits,
            entry_commands,
        ));
        Proposer {
            tx,
            held: Arc::new(held),
        }
    }

    /// Stops proposing until the returned [`Hold`] is dropped.
    pub fn hold(&self) -> Hold {
        self.held.send_replace(true);
        Hold(self.held.clone())
    }

    /// Whether proposals are held (a leadership transfer is under way).
    pub fn is_held(&self) -> bool {
        *self.held.borrow()
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

/// Most entries proposed without lingering after lingers that did not pay off.
const MAX_SKIP: u32 = 64;

fn command_bytes(c: &Command) -> usize {
    match c {
        Command::Submit { tasks, .. } => tasks.iter().map(|t| t.payload.len() + 64).sum(),
        Command::Complete { result, .. } => result.len() + 64,
        Command::SaveCheckpoint { data, .. } => data.len() + 64,
        Command::Fail { error, .. } => error.len() + 64,
        _ => 64,
    }
}

async fn run(
    raft: Raft,
    mut rx: mpsc::Receiver<Pending>,
    queue: mpsc::WeakSender<Pending>,
    mut held: watch::Receiver<bool>,
    limits: ProposerLimits,
    entry_commands: metrics::Histogram,
) {
    let slots = Arc::new(Semaphore::new(limits.max_inflight_entries));
    // Commands expected for the next entry: those queued when the last entry was answered,
    // plus that entry's own, whose callers may be about to send their next ones.
    let expected = Arc::new(AtomicUsize::new(0));
    // Callers that do not send again at once (paced clients, the dispatcher) would make every
    // entry wait out the linger: after a wait that timed out, entries skip the wait, for twice
    // as many entries after each further timeout (up to MAX_SKIP), until a wait pays off.
    let (mut skip, mut penalty) = (0u32, 0u32);
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let want = expected.swap(0, Ordering::Relaxed);
        let mut bytes = command_bytes(&first.command);
        let mut batch = vec![first];
        let full = |batch: &Vec<Pending>, bytes: usize| {
            batch.len() >= limits.max_commands_per_entry || bytes >= limits.max_entry_bytes
        };
        while !full(&batch, bytes) {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += command_bytes(&p.command);
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        if skip > 0 {
            skip -= 1;
        } else if want > batch.len() && !full(&batch, bytes) && !limits.linger.is_zero() {
            let deadline = tokio::time::Instant::now() + limits.linger;
            let mut timed_out = false;
            while batch.len() < want && !full(&batch, bytes) {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(p)) => {
                        bytes += command_bytes(&p.command);
                        batch.push(p);
                    }
                    Ok(None) => break,
                    Err(_) => {
                        timed_out = true;
                        break;
                    }
                }
            }
            if timed_out {
                penalty = (penalty * 2).clamp(1, MAX_SKIP);
                skip = penalty;
            } else {
                penalty = 0;
            }
        }
        let (commands, replies): (Vec<Command>, Vec<_>) =
            batch.into_iter().map(|p| (p.command, p.reply)).unzip();
        let n_cmds = commands.len();
        entry_commands.record(n_cmds as f64);
        while *held.borrow_and_update() {
            if held.changed().await.is_err() {
                break;
            }
        }
        match raft.client_write_ff(Proposal { commands }).await {
            Err(fatal) => {
                let e = ApiError::Unavailable(format!("raft stopped: {fatal}"));
                for r in replies {
                    let _ = r.send(Err(e.clone()));
                }
            }
            Ok(receiver) => {
                let expected = expected.clone();
                let queue = queue.clone();
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
                    let queued = queue
                        .upgrade()
                        .map_or(0, |q| q.max_capacity() - q.capacity());
                    expected.fetch_add(queued + n_cmds, Ordering::Relaxed);
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
pub(crate) fn write_error(e: ClientWriteError<u64, flotilla_store::Node>) -> ApiError {
    match e {
        ClientWriteError::ForwardToLeader(f) => forwarded(f),
        ClientWriteError::ChangeMembershipError(e) => ApiError::Internal(e.to_string()),
    }
}
