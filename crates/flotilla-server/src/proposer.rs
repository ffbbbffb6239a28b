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
    /// The dispatcher's: an entry holding it goes without lingering, and its caller is not
    /// expected to send again when answered (see [`Proposer::propose_now`]).
    now: bool,
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
        self.send(command, false).await
    }

    /// As [`Proposer::propose`], for the dispatcher's rounds: the entry that carries it does
    /// not linger for more commands (an `Assign` waiting out the linger is dispatch latency),
    /// and its answer does not make the next entry wait for the dispatcher to send again (it
    /// plans its next round only after this one's commits).
    pub async fn propose_now(&self, command: Command) -> Result<Response, ApiError> {
        self.send(command, true).await
    }

    async fn send(&self, command: Command, now: bool) -> Result<Response, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Pending {
                command,
                reply,
                now,
            })
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
    let mut linger = Linger::default();
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let want = expected.swap(0, Ordering::Relaxed);
        let batch = gather(&mut rx, first, want, &limits, &mut linger).await;
        // Callers who may send again as soon as they are answered.
        let n_again = batch.iter().filter(|p| !p.now).count();
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
                    expected.fetch_add(queued + n_again, Ordering::Relaxed);
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

/// When to wait for more commands before proposing an entry. A wait that timed out makes the
/// next entries go without waiting — one, then twice as many after each further timeout (up to
/// [`MAX_SKIP`]) — until a wait pays off.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Linger {
    /// Entries still to propose without waiting.
    skip: u32,
    /// How many to skip after the next timeout (doubled by each timeout in a row).
    penalty: u32,
}

impl Linger {
    /// Whether to wait: `want` commands are expected, the batch has `have` and is not full.
    fn should_wait(&mut self, want: usize, have: usize, full: bool, linger: Duration) -> bool {
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        want > have && !full && !linger.is_zero()
    }

    fn waited(&mut self, timed_out: bool) {
        if timed_out {
            self.penalty = (self.penalty * 2).clamp(1, MAX_SKIP);
            self.skip = self.penalty;
        } else {
            self.penalty = 0;
        }
    }
}

/// One entry's commands: `first`, whatever is queued now, then — when `want` more are expected
/// and the linger policy says so — what arrives within `limits.linger`, up to the entry's
/// limits. An entry with a dispatcher's command ([`Proposer::propose_now`]) does not wait, and
/// one arriving during the wait ends it.
async fn gather(
    rx: &mut mpsc::Receiver<Pending>,
    first: Pending,
    want: usize,
    limits: &ProposerLimits,
    linger: &mut Linger,
) -> Vec<Pending> {
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
    let urgent = batch.iter().any(|p| p.now);
    if !urgent && linger.should_wait(want, batch.len(), full(&batch, bytes), limits.linger) {
        let deadline = tokio::time::Instant::now() + limits.linger;
        let mut timed_out = false;
        while batch.len() < want && !full(&batch, bytes) {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(p)) => {
                    bytes += command_bytes(&p.command);
                    let now = p.now;
                    batch.push(p);
                    if now {
                        break;
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    timed_out = true;
                    break;
                }
            }
        }
        linger.waited(timed_out);
    }
    batch
}

/// A failed write: not leader (with hint) or unavailable. Neither means the command was
/// applied, but a client must treat an unavailable outcome as unknown and retry idempotently.
pub(crate) fn write_error(e: ClientWriteError<u64, flotilla_store::Node>) -> ApiError {
    match e {
        ClientWriteError::ForwardToLeader(f) => forwarded(f),
        ClientWriteError::ChangeMembershipError(e) => ApiError::Internal(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(linger_ms: u64, max_commands: usize) -> ProposerLimits {
        ProposerLimits {
            max_commands_per_entry: max_commands,
            max_entry_bytes: 1 << 20,
            max_inflight_entries: 4,
            queue_limit: 64,
            linger: Duration::from_millis(linger_ms),
        }
    }

    fn pending() -> (Pending, oneshot::Receiver<Result<Response, ApiError>>) {
        pending_from(false)
    }

    fn pending_from(dispatcher: bool) -> (Pending, oneshot::Receiver<Result<Response, ApiError>>) {
        let (reply, rx) = oneshot::channel();
        let command = Command::Tick { now_ms: 1 };
        (
            Pending {
                command,
                reply,
                now: dispatcher,
            },
            rx,
        )
    }

    /// The dispatcher's commands never wait out the linger: an entry that starts with one goes
    /// at once, and one that arrives while an entry waits ends the wait — though more commands
    /// were expected and the linger is on. The penalty is left as it was.
    #[tokio::test(start_paused = true)]
    async fn the_dispatchers_commands_do_not_linger() {
        let (_tx, mut rx, _) = queue(0);
        let mut linger = Linger::default();
        let started = tokio::time::Instant::now();
        let batch = gather(
            &mut rx,
            pending_from(true).0,
            5,
            &limits(10, 100),
            &mut linger,
        )
        .await;
        assert_eq!((batch.len(), started.elapsed()), (1, Duration::ZERO));
        assert_eq!(linger, Linger::default());

        let (tx, mut rx, mut first) = queue(1);
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            tx.send(pending().0).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
            tx.send(pending_from(true).0).await.unwrap();
            tx
        });
        let started = tokio::time::Instant::now();
        let batch = gather(&mut rx, first.remove(0), 5, &limits(10, 100), &mut linger).await;
        assert_eq!(batch.len(), 3);
        assert!(batch[2].now);
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(2),
            "ended by the dispatcher's"
        );
        drop(sender.await.unwrap());
    }

    fn queue(n: usize) -> (mpsc::Sender<Pending>, mpsc::Receiver<Pending>, Vec<Pending>) {
        let (tx, rx) = mpsc::channel(64);
        let firsts = (0..n).map(|_| pending().0).collect();
        (tx, rx, firsts)
    }

    /// Waits for the commands expected, up to `linger`, and stops as soon as they are there.
    #[tokio::test(start_paused = true)]
    async fn an_entry_waits_for_the_expected_commands_and_no_longer() {
        let (tx, mut rx, mut first) = queue(1);
        let mut linger = Linger::default();
        let sender = tokio::spawn(async move {
            for _ in 0..2 {
                tokio::time::sleep(Duration::from_millis(1)).await;
                tx.send(pending().0).await.unwrap();
            }
            tx
        });
        let started = tokio::time::Instant::now();
        let batch = gather(&mut rx, first.remove(0), 3, &limits(10, 100), &mut linger).await;
        assert_eq!(batch.len(), 3);
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(2),
            "stopped when complete"
        );
        assert_eq!(
            linger,
            Linger::default(),
            "a wait that paid off costs nothing later"
        );
        drop(sender.await.unwrap());
    }

    /// A wait that times out proposes what it has after exactly `linger`, then the next
    /// entries skip waiting: 1, 2, 4… after each timeout in a row, up to MAX_SKIP.
    #[tokio::test(start_paused = true)]
    async fn a_timed_out_wait_makes_the_next_entries_go_at_once_doubling() {
        let (_tx, mut rx, firsts) = queue(200);
        let mut firsts = firsts.into_iter();
        let mut linger = Linger::default();
        let l = limits(2, 100);
        let mut waits = Vec::new();
        for _ in 0..140 {
            let started = tokio::time::Instant::now();
            let batch = gather(&mut rx, firsts.next().unwrap(), 5, &l, &mut linger).await;
            assert_eq!(batch.len(), 1, "nothing else came");
            waits.push(started.elapsed() == Duration::from_millis(2));
            assert!(
                started.elapsed() == Duration::ZERO
                    || started.elapsed() == Duration::from_millis(2)
            );
        }
        // Indexes of the entries that waited: skips of 1, 2, 4, 8, 16, 32, 64, 64 between.
        let waited: Vec<usize> = (0..waits.len()).filter(|i| waits[*i]).collect();
        assert_eq!(waited, vec![0, 2, 5, 10, 19, 36, 69, 134]);
        assert_eq!(linger.penalty, MAX_SKIP);
    }

    /// No wait when nothing more is expected, when the entry is already full, or with the
    /// linger off.
    #[tokio::test(start_paused = true)]
    async fn no_wait_without_reason() {
        for (want, max_commands, linger_ms, queued) in
            [(1, 100, 2, 0), (10, 3, 2, 5), (10, 100, 0, 0)]
        {
            let (tx, mut rx, mut first) = queue(1);
            for _ in 0..queued {
                tx.send(pending().0).await.unwrap();
            }
            let mut linger = Linger::default();
            let started = tokio::time::Instant::now();
            let batch = gather(
                &mut rx,
                first.remove(0),
                want,
                &limits(linger_ms, max_commands),
                &mut linger,
            )
            .await;
            assert_eq!(
                started.elapsed(),
                Duration::ZERO,
                "want {want}, max {max_commands}"
            );
            assert_eq!(batch.len(), (1 + queued).min(max_commands));
        }
    }
}
