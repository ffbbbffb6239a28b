//! The worker loop.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_client::{Assignment, Client, ClientError, WorkerEvent};
use flotilla_core::{Capacity, TaskId, WorkerSpec};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

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
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("invalid worker configuration: {0}")]
    Config(String),
}

/// The result of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success(Vec<u8>),
    Failure { error: String, retryable: bool },
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
    pub timeout: Option<Duration>,
    pub worker_id: String,
    /// Cancelled when the task is cancelled, reassigned or timed out: stop promptly.
    pub cancel: CancellationToken,
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

/// Runs the worker until `shutdown` is cancelled.
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
    let running: Running = Arc::default();
    let started: Arc<Mutex<Started>> = Arc::default();
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let mut stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = client.register_worker(&spec) => match r {
                Ok(s) => s,
                Err(e) => {
                    warn!(worker = %spec.id, error = %e, "registration failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            }
        };
        backoff = Duration::from_millis(100);
        info!(worker = %spec.id, "registered");
        let session_over = shutdown.child_token();
        let hb = tokio::spawn(heartbeat_loop(
            client.clone(),
            spec.clone(),
            running.clone(),
            config.heartbeat_interval,
            session_over.clone(),
        ));
        loop {
            let event = tokio::select! {
                _ = session_over.cancelled() => break,
                e = stream.next() => e,
            };
            match event {
                Ok(Some(WorkerEvent::Assign(a))) => {
                    let first = started
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .first_start(a.task_id, a.attempt);
                    if first {
                        start_attempt(&client, &spec.id, &handler, &running, &shutdown, a);
                    }
                }
                Ok(Some(WorkerEvent::Cancel { task_id, attempt })) => {
                    cancel_attempt(&running, task_id, attempt)
                }
                Ok(None) | Err(_) => break,
            }
        }
        session_over.cancel();
        let _ = hb.await;
        if !shutdown.is_cancelled() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Stop what runs; the leader reassigns it after the lease.
    for (_, (_, token)) in lock(&running).iter() {
        token.cancel();
    }
    Ok(())
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

fn start_attempt(
    client: &Client,
    worker_id: &str,
    handler: &Arc<dyn Handler>,
    running: &Running,
    shutdown: &CancellationToken,
    a: Assignment,
) {
    let cancel = CancellationToken::new();
    {
        let mut r = lock(running);
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
        timeout: a.timeout,
        worker_id: worker_id.to_string(),
        cancel: cancel.clone(),
        client: client.clone(),
    };
    let handler = handler.clone();
    let client = client.clone();
    let running = running.clone();
    let worker_id = worker_id.to_string();
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let (task_id, attempt, timeout) = (ctx.task_id, ctx.attempt, ctx.timeout);
        let work = handler.run(ctx);
        let outcome = match timeout {
            Some(t) => match tokio::time::timeout(t, work).await {
                Ok(o) => o,
                Err(_) => {
                    cancel.cancel();
                    Outcome::Failure {
                        error: format!("attempt {attempt} timed out after {} ms", t.as_millis()),
                        retryable: true,
                    }
                }
            },
            None => work.await,
        };
        let still_ours = {
            let mut r = lock(&running);
            let ours = r.get(&task_id).is_some_and(|(a, _)| *a == attempt);
            if ours {
                r.remove(&task_id);
            }
            ours
        };
        if !still_ours {
            return; // cancelled or superseded: the leader no longer wants this outcome
        }
        // Report until a leader accepts or refuses it: an outcome is never dropped while the
        // cluster is merely unavailable.
        loop {
            let report = match &outcome {
                Outcome::Success(result) => {
                    client
                        .complete_task(&worker_id, task_id, attempt, result.clone())
                        .await
                }
                Outcome::Failure { error, retryable } => {
                    client
                        .fail_task(&worker_id, task_id, attempt, error.clone(), *retryable)
                        .await
                }
            };
            match report {
                Ok(()) => break,
                Err(ClientError::Unavailable(e)) if !shutdown.is_cancelled() => {
                    warn!(task = %task_id, attempt, error = %e, "outcome not delivered yet; retrying");
                }
                Err(e) => {
                    warn!(task = %task_id, attempt, error = %e, "outcome not accepted");
                    break;
                }
            }
        }
    });
}

async fn heartbeat_loop(
    client: Client,
    spec: WorkerSpec,
    running: Running,
    interval: Duration,
    session_over: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = session_over.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let report: Vec<(TaskId, u32)> = lock(&running)
            .iter()
            .map(|(id, (a, _))| (*id, *a))
            .collect();
        match client.heartbeat(&spec.id, &spec.session, &report).await {
            Ok(cancel) => {
                for (task_id, attempt) in cancel {
                    cancel_attempt(&running, task_id, attempt);
                }
            }
            Err(e) if e.code() == Some(tonic_code_not_found()) => {
                // Our registration is gone (lease expired): everything we run was reassigned.
                warn!(worker = %spec.id, "registration lost; stopping running attempts and re-registering");
                for (_, (_, token)) in std::mem::take(&mut *lock(&running)) {
                    token.cancel();
                }
                session_over.cancel();
                return;
            }
            Err(e) => warn!(worker = %spec.id, error = %e, "heartbeat failed"),
        }
    }
}

fn tonic_code_not_found() -> flotilla_client::Code {
    flotilla_client::Code::NotFound
}
