//! The worker loop.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_client::{Assignment, Client, ClientError, Outcome, WorkerEvent};
use flotilla_core::{Capacity, TaskId, WorkerSpec};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::outbox::Outbox;

/// How a worker presents itself and paces itself.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub id: String,
    pub capacity: Capacity,
    pub labels: BTreeMap<String, String>,
    /// Queues served; empty: every queue.
    pub queues: Vec<String>,
    /// Period of heartbeats; keep it well under the leader's lease TTL.
    pub heartbeat_interval: Duration,
    /// On shutdown, how long running attempts may go on before they are handed back.
    pub drain_timeout: Duration,
    /// Send outcomes in batches (`ReportOutcomes`, see `outbox`); false: one call per outcome.
    pub batch_reports: bool,
}

/// The default of [`WorkerConfig::drain_timeout`].
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("invalid worker configuration: {0}")]
    Config(String),
}

/// What a handler gets for one attempt.
#[derive(Clone)]
pub struct TaskContext {
    pub task_id: TaskId,
    pub attempt: u32,
    pub queue: String,
    pub payload: Vec<u8>,
    /// The checkpoint saved by an earlier attempt, to resume from.
    pub checkpoint: Option<Vec<u8>>,
    /// The tasks this one depends on, in the order it named them.
    pub parents: Vec<TaskId>,
    /// Their results (each parent succeeded before this task could run): a task's output is
    /// its dependents' input.
    pub inputs: BTreeMap<TaskId, Vec<u8>>,
    pub timeout: Option<Duration>,
    pub worker_id: String,
    /// Cancelled when the task is cancelled, reassigned or timed out: stop promptly.
    pub cancel: CancellationToken,
    /// The worker process's session: its reports carry it (see `check_reporter` on the leader).
    session: String,
    client: Client,
}

impl TaskContext {
    /// Saves progress for a later attempt (fenced by this attempt).
    pub async fn checkpoint(
        &self,
        progress_permille: u32,
        data: Vec<u8>,
    ) -> Result<(), ClientError> {
        self.client
            .checkpoint(
                &self.worker_id,
                &self.session,
                self.task_id,
                self.attempt,
                progress_permille,
                data,
            )
            .await
    }
}

/// Runs attempts.
pub trait Handler: Send + Sync + 'static {
    fn run(&self, ctx: TaskContext) -> Pin<Box<dyn Future<Output = Outcome> + Send>>;
}

impl<F, Fut> Handler for F
where
    F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    fn run(&self, ctx: TaskContext) -> Pin<Box<dyn Future<Output = Outcome> + Send>> {
        Box::pin(self(ctx))
    }
}

/// Attempts running on this worker: task -> (attempt, cancel token).
type Running = Arc<Mutex<BTreeMap<TaskId, (u32, CancellationToken)>>>;

/// Highest attempt of each task this worker has ever started, so a redelivered assignment
/// (a new leader resends every attempt the state says we run) is never run twice — even when
/// it already finished here and its outcome is still on its way. Bounded: the oldest entries
/// go first.
#[derive(Default)]
struct Started {
    highest: BTreeMap<TaskId, u32>,
    order: std::collections::VecDeque<TaskId>,
}

/// Tasks remembered by [`Started`], at most.
const STARTED_MEMORY: usize = 100_000;

impl Started {
    /// Records `attempt`; false if this or a later attempt was already started.
    fn first_start(&mut self, task: TaskId, attempt: u32) -> bool {
        match self.highest.get(&task) {
            Some(a) if *a >= attempt => false,
            Some(_) => {
                self.highest.insert(task, attempt);
                true
            }
            None => {
                self.highest.insert(task, attempt);
                self.order.push_back(task);
                if self.order.len() > STARTED_MEMORY {
                    if let Some(old) = self.order.pop_front() {
                        self.highest.remove(&old);
                    }
                }
                true
            }
        }
    }
}

fn lock(r: &Running) -> std::sync::MutexGuard<'_, BTreeMap<TaskId, (u32, CancellationToken)>> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the attempts of one worker process share.
#[derive(Clone)]
struct Shared {
    client: Client,
    worker_id: String,
    session: String,
    handler: Arc<dyn Handler>,
    running: Running,
    /// Set once `shutdown` fires: new assignments are handed back, heartbeats say so.
    draining: Arc<AtomicBool>,
    /// Notified whenever an attempt ends (and leaves `running`).
    ended: Arc<Notify>,
    /// Attempt tasks, each running then reporting one attempt; awaited before leaving.
    attempts: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    /// Cancelled when outcomes that could not be delivered yet are given up.
    give_up: CancellationToken,
    /// Where finished attempts' outcomes go to the leader, batched.
    outbox: Outbox,
}

/// Runs the worker until `shutdown` is cancelled, then drains it: no new assignments (the
/// leader is told so by the heartbeats), running attempts get up to `drain_timeout` to finish
/// and report, what is still running then is stopped and handed back (failed as retryable,
/// fenced by its attempt), and the worker leaves (its registration ends, so anything the
/// state still gives it goes back to pending at once).
pub async fn run(
    client: Client,
    config: WorkerConfig,
    handler: Arc<dyn Handler>,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let spec = WorkerSpec {
        id: config.id.clone(),
        session: uuid::Uuid::new_v4().to_string(),
        capacity: config.capacity,
        labels: config.labels.clone(),
        queues: config.queues.clone(),
    };
    spec.validate()
        .map_err(|e| WorkerError::Config(e.to_string()))?;
    let shared = Shared {
        client: client.clone(),
        worker_id: spec.id.clone(),
        session: spec.session.clone(),
        handler,
        running: Arc::default(),
        draining: Arc::default(),
        ended: Arc::default(),
        attempts: Arc::default(),
        give_up: CancellationToken::new(),
        outbox: Outbox::start(
            client.clone(),
            spec.id.clone(),
            spec.session.clone(),
            config.batch_reports,
        ),
    };
    let started: Arc<Mutex<Started>> = Arc::default();
    let mut backoff = Duration::from_millis(100);
    let mut registered = false;
    let mut drain_until: Option<Instant> = None;
    let beat_now = Arc::new(Notify::new());
    let mut leader_rx = client.leader_watch();
    'sessions: loop {
        if shutdown.is_cancelled() && drain_until.is_none() {
            drain_until = Some(Instant::now() + config.drain_timeout);
            shared.draining.store(true, Ordering::SeqCst);
            info!(worker = %spec.id, drain_timeout_ms = config.drain_timeout.as_millis() as u64, "draining");
        }
        if let Some(until) = drain_until {
            if !registered || lock(&shared.running).is_empty() || Instant::now() >= until {
                break;
            }
        }
        // A draining worker does not register again: it only heartbeats and reports.
        let mut stream = if drain_until.is_some() {
            None
        } else {
            let r = tokio::select! {
                _ = shutdown.cancelled() => continue 'sessions,
                r = client.register_worker(&spec) => r,
            };
            match r {
                Ok(s) => {
                    backoff = Duration::from_millis(100);
                    registered = true;
                    info!(worker = %spec.id, leader = s.leader().unwrap_or("?"), "registered");
                    Some(s)
                }
                Err(e) => {
                    warn!(worker = %spec.id, error = %e, "registration failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            }
        };
        let registered_with = stream.as_ref().and_then(|s| s.leader().map(str::to_string));
        leader_rx.mark_unchanged();
        let session_start = Instant::now();
        let session_over = CancellationToken::new();
        let hb = tokio::spawn(heartbeat_loop(
            shared.clone(),
            config.heartbeat_interval,
            beat_now.clone(),
            session_over.clone(),
        ));
        if drain_until.is_some() {
            beat_now.notify_one();
        }
        loop {
            let draining = drain_until.is_some();
            let event = tokio::select! {
                _ = session_over.cancelled() => break,
                _ = shutdown.cancelled(), if !draining => {
                    drain_until = Some(Instant::now() + config.drain_timeout);
                    shared.draining.store(true, Ordering::SeqCst);
                    info!(worker = %spec.id, drain_timeout_ms = config.drain_timeout.as_millis() as u64, "draining");
                    // Tell the leader now rather than at the next beat.
                    beat_now.notify_one();
                    if lock(&shared.running).is_empty() {
                        break;
                    }
                    continue;
                }
                () = sleep_until_opt(drain_until) => break,
                _ = shared.ended.notified(), if draining => {
                    if lock(&shared.running).is_empty() {
                        break;
                    }
                    continue;
                }
                Ok(()) = leader_rx.changed(), if !draining => {
                    let leader = leader_rx.borrow_and_update().clone();
                    if leader.is_some() && leader != registered_with {
                        // The stream is held by a replica that no longer leads (it may not
                        // even have noticed): register with the new leader now.
                        info!(worker = %spec.id, leader = leader.as_deref().unwrap_or("?"), "leader changed; registering again");
                        break;
                    }
                    continue;
                }
                e = next_event(&mut stream) => e,
            };
            match event {
                Ok(Some(WorkerEvent::Assign(a))) => {
                    let first = started
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .first_start(a.task_id, a.attempt);
                    if first && (draining || shutdown.is_cancelled()) {
                        hand_back(
                            &shared,
                            a.task_id,
                            a.attempt,
                            "worker draining: not started",
                        );
                    } else if first {
                        start_attempt(&shared, a);
                    }
                }
                Ok(Some(WorkerEvent::Cancel { task_id, attempt })) => {
                    cancel_attempt(&shared.running, task_id, attempt)
                }
                // The stream ended (the leader changed or went away): a draining worker keeps
                // waiting for its attempts; others register again.
                Ok(None) | Err(_) if draining => stream = None,
                Ok(None) | Err(_) => break,
            }
        }
        session_over.cancel();
        let _ = hb.await;
        // Register again at once, unless sessions end as soon as they start.
        if !shutdown.is_cancelled() && session_start.elapsed() < Duration::from_millis(100) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    if registered {
        finish_drain(&shared, &beat_now, config.heartbeat_interval).await;
    }
    Ok(())
}

/// The end of a drain: stops and hands back what still runs, waits (bounded) for the
/// outcomes being reported, and leaves.
async fn finish_drain(shared: &Shared, beat_now: &Arc<Notify>, heartbeat_interval: Duration) {
    // Heartbeats go on (draining) while the last reports are delivered.
    let over = CancellationToken::new();
    let hb = tokio::spawn(heartbeat_loop(
        shared.clone(),
        heartbeat_interval,
        beat_now.clone(),
        over.clone(),
    ));
    let left: Vec<(TaskId, (u32, CancellationToken))> = std::mem::take(&mut *lock(&shared.running))
        .into_iter()
        .collect();
    for (task_id, (attempt, token)) in left {
        token.cancel();
        hand_back(
            shared,
            task_id,
            attempt,
            "worker drained: handed back after the drain timeout",
        );
    }
    // Every outcome and hand-back is delivered before the worker leaves, so leaving never
    // requeues an attempt whose report is on its way. Bounded by the client's call timeout.
    let handles = std::mem::take(&mut *shared.attempts.lock().unwrap_or_else(|p| p.into_inner()));
    let deliver = futures::future::join_all(handles);
    if tokio::time::timeout(shared.client.config().call_timeout, deliver)
        .await
        .is_err()
    {
        warn!(worker = %shared.worker_id, "outcomes not delivered in time; leaving anyway");
    }
    shared.give_up.cancel();
    over.cancel();
    let _ = hb.await;
    match shared
        .client
        .leave(&shared.worker_id, &shared.session)
        .await
    {
        Ok(()) => info!(worker = %shared.worker_id, "drained and left"),
        Err(e) => {
            warn!(worker = %shared.worker_id, error = %e, "leave not accepted (the lease expires instead)")
        }
    }
}

/// Reports an attempt this worker will not finish as failed and retryable, so it runs again
/// elsewhere; fenced by its attempt like any report.
fn hand_back(shared: &Shared, task_id: TaskId, attempt: u32, why: &'static str) {
    info!(task = %task_id, attempt, "handing back attempt");
    let s = shared.clone();
    track(
        shared,
        tokio::spawn(async move {
            report(
                &s,
                task_id,
                attempt,
                &Outcome::Failure {
                    error: why.into(),
                    retryable: true,
                },
            )
            .await
        }),
    );
}

fn track(shared: &Shared, handle: tokio::task::JoinHandle<()>) {
    let mut all = shared.attempts.lock().unwrap_or_else(|p| p.into_inner());
    if all.len() >= 1024 {
        all.retain(|h| !h.is_finished());
    }
    all.push(handle);
}

async fn next_event(
    stream: &mut Option<flotilla_client::WorkerStream>,
) -> Result<Option<WorkerEvent>, ClientError> {
    match stream {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn cancel_attempt(running: &Running, task_id: TaskId, attempt: u32) {
    let mut r = lock(running);
    if r.get(&task_id).is_some_and(|(a, _)| *a == attempt) {
        if let Some((_, token)) = r.remove(&task_id) {
            info!(task = %task_id, attempt, "cancelling attempt");
            token.cancel();
        }
    }
}

/// Fetches the results of the attempt's parents into `ctx.inputs`; on failure, the outcome to
/// report instead of running (the next attempt tries again).
async fn fetch_inputs(ctx: &mut TaskContext) -> Result<(), Outcome> {
    if ctx.parents.is_empty() {
        return Ok(());
    }
    let fetch = ctx
        .client
        .task_inputs(&ctx.worker_id, &ctx.session, ctx.task_id, ctx.attempt);
    let fetched = tokio::select! {
        f = fetch => f,
        _ = ctx.cancel.cancelled() => {
            return Err(Outcome::Failure { error: "cancelled".into(), retryable: false });
        }
    };
    match fetched {
        Ok(inputs) => {
            ctx.inputs = inputs.into_iter().collect();
            Ok(())
        }
        Err(e) => Err(Outcome::Failure {
            error: format!("cannot fetch the results of its parents: {e}"),
            retryable: true,
        }),
    }
}

fn start_attempt(shared: &Shared, a: Assignment) {
    let cancel = CancellationToken::new();
    {
        let mut r = lock(&shared.running);
        match r.get(&a.task_id) {
            // Redelivery of what already runs: nothing to do.
            Some((attempt, _)) if *attempt == a.attempt => return,
            Some((attempt, _)) if *attempt > a.attempt => return,
            Some((_, old)) => old.cancel(),
            None => {}
        }
        r.insert(a.task_id, (a.attempt, cancel.clone()));
    }
    let ctx = TaskContext {
        task_id: a.task_id,
        attempt: a.attempt,
        queue: a.queue,
        payload: a.payload,
        checkpoint: a.checkpoint,
        parents: a.parents,
        inputs: BTreeMap::new(),
        timeout: a.timeout,
        worker_id: shared.worker_id.clone(),
        cancel: cancel.clone(),
        session: shared.session.clone(),
        client: shared.client.clone(),
    };
    let s = shared.clone();
    let handle = tokio::spawn(async move {
        let (task_id, attempt, timeout) = (ctx.task_id, ctx.attempt, ctx.timeout);
        let mut ctx = ctx;
        let outcome = match fetch_inputs(&mut ctx).await {
            Err(outcome) => outcome,
            Ok(()) => {
                let work = s.handler.run(ctx);
                match timeout {
                    Some(t) => match tokio::time::timeout(t, work).await {
                        Ok(o) => o,
                        Err(_) => {
                            cancel.cancel();
                            Outcome::Failure {
                                error: format!(
                                    "attempt {attempt} timed out after {} ms",
                                    t.as_millis()
                                ),
                                retryable: true,
                            }
                        }
                    },
                    None => work.await,
                }
            }
        };
        let still_ours = {
            let mut r = lock(&s.running);
            let ours = r.get(&task_id).is_some_and(|(a, _)| *a == attempt);
            if ours {
                r.remove(&task_id);
            }
            ours
        };
        if still_ours {
            report(&s, task_id, attempt, &outcome).await;
        }
        // Cancelled or superseded: the leader no longer wants this outcome.
        s.ended.notify_one();
    });
    track(shared, handle);
}

/// Reports an outcome until a leader accepts or refuses it: an outcome is never dropped while
/// the cluster is merely unavailable (unless the worker gives up on it at exit).
async fn report(s: &Shared, task_id: TaskId, attempt: u32, outcome: &Outcome) {
    loop {
        let sent = s.outbox.send(task_id, attempt, outcome.clone()).await;
        match sent {
            Ok(()) => return,
            Err(ClientError::Unavailable(e)) if !s.give_up.is_cancelled() => {
                warn!(task = %task_id, attempt, error = %e, "outcome not delivered yet; retrying");
            }
            Err(e) => {
                warn!(task = %task_id, attempt, error = %e, "outcome not accepted");
                return;
            }
        }
    }
}

async fn heartbeat_loop(
    shared: Shared,
    interval: Duration,
    beat_now: Arc<Notify>,
    session_over: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = session_over.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
            _ = beat_now.notified() => {}
        }
        let report: Vec<(TaskId, u32)> = lock(&shared.running)
            .iter()
            .map(|(id, (a, _))| (*id, *a))
            .collect();
        let draining = shared.draining.load(Ordering::SeqCst);
        let beat =
            shared
                .client
                .heartbeat_draining(&shared.worker_id, &shared.session, &report, draining);
        let answer = tokio::select! {
            _ = session_over.cancelled() => return,
            a = beat => a,
        };
        match answer {
            Ok(cancel) => {
                for (task_id, attempt) in cancel {
                    cancel_attempt(&shared.running, task_id, attempt);
                }
            }
            Err(e) if e.code() == Some(tonic_code_not_found()) => {
                // Our registration is gone (lease expired): everything we run was reassigned.
                warn!(worker = %shared.worker_id, "registration lost; stopping running attempts and re-registering");
                for (_, (_, token)) in std::mem::take(&mut *lock(&shared.running)) {
                    token.cancel();
                }
                shared.ended.notify_one();
                session_over.cancel();
                return;
            }
            Err(e) => warn!(worker = %shared.worker_id, error = %e, "heartbeat failed"),
        }
    }
}

fn tonic_code_not_found() -> flotilla_client::Code {
    flotilla_client::Code::NotFound
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The never-run-twice rule: an attempt starts once; a redelivery of it, or of an older
    /// one, does not start again; a newer attempt does.
    #[test]
    fn an_attempt_starts_once_and_only_newer_attempts_start_again() {
        let mut s = Started::default();
        let (a, b) = (TaskId(1), TaskId(2));
        assert!(s.first_start(a, 1));
        assert!(!s.first_start(a, 1), "redelivered");
        assert!(s.first_start(b, 3));
        assert!(s.first_start(a, 2), "a newer attempt");
        assert!(!s.first_start(a, 1), "an older attempt, late");
        assert!(!s.first_start(a, 2));
        assert!(!s.first_start(b, 2));
        assert_eq!(s.order.len(), 2, "one entry per task, not per attempt");
    }

    /// The memory is bounded: past `STARTED_MEMORY` tasks the oldest is forgotten, the
    /// others kept.
    #[test]
    fn the_memory_of_started_attempts_is_bounded_oldest_first() {
        let mut s = Started::default();
        for id in 1..=STARTED_MEMORY as u64 + 1 {
            assert!(s.first_start(TaskId(id), 1));
        }
        assert_eq!(s.highest.len(), STARTED_MEMORY);
        assert!(s.first_start(TaskId(1), 1), "the oldest was forgotten");
        assert!(!s.first_start(TaskId(3), 1), "a later one is remembered");
    }
}
