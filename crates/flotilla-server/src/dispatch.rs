//! The leader's dispatch loop: worker leases, assignment, redelivery.
//!
//! Leases live in the leader's memory, not in the Raft log: heartbeats renew them for free.
//! When a worker misses its lease the loop commits one `ExpireWorker`. A new leader grants
//! every registered worker a full lease of grace before expiring anyone, so a leader change
//! alone never restarts running work.
//!
//! Each round (on a timer, on every applied entry, or when woken) the loop runs the pure
//! [`flotilla_core::plan`] over the applied state and the workers connected to this leader,
//! proposes the resulting commands, and pushes an assignment to its worker only after the
//! `Assign` is committed — an uncommitted assignment is never sent. A worker that (re)connects
//! is sent every attempt the state says it runs, so a push lost in a crash is redelivered.
//!
//! ```text
//!  tick/applied/wake ─▶ expire stale leases ─▶ plan(state) ─▶ propose ─▶ committed? ─▶ push
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use flotilla_core::{plan, Command, PlanConfig, Response, Task, TaskId, WorkerSpec};
use flotilla_proto::pb;
use flotilla_store::SharedState;
use futures::future::join_all;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::{info, warn};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::leadership::{self, is_leader, now_ms};
use crate::planted::PlantedBug;
use crate::proposer::Proposer;
use crate::Raft;

/// Shortest pause between two planning rounds.
const MIN_ROUND_GAP: Duration = Duration::from_millis(5);

pub type EventSender = mpsc::Sender<Result<pb::WorkerEvent, Status>>;

#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// A worker not heard from for this long is expired.
    pub lease_ttl: Duration,
    pub plan: PlanConfig,
    /// Planning period when nothing else wakes the loop.
    pub interval: Duration,
    /// Events queued for one worker's stream, at most.
    pub stream_limit: usize,
}

struct Stream {
    session: String,
    tx: EventSender,
}

#[derive(Default)]
struct Leases {
    /// Last time each worker was heard from by this leader.
    heard: BTreeMap<String, Instant>,
    /// Assignment streams of workers connected to this leader.
    streams: BTreeMap<String, Stream>,
    /// When this replica last became leader; None while it is not.
    leader_since: Option<Instant>,
    /// Per worker: attempts the state says it runs but its last heartbeat did not list.
    unreported: BTreeMap<String, BTreeMap<TaskId, u32>>,
    /// Workers whose heartbeats say they drain: assigned nothing more.
    draining: BTreeSet<String>,
    /// With tokens on: the token (its name) each worker registered with on this leader. Its
    /// reports must be made with the same token.
    owners: BTreeMap<String, String>,
}

pub struct Dispatcher {
    raft: Raft,
    state: SharedState,
    proposer: Proposer,
    config: DispatchConfig,
    leases: Mutex<Leases>,
    wake: Notify,
    planted: Option<PlantedBug>,
    /// Submission to first assignment pushed (seconds).
    dispatch_latency: metrics::Histogram,
}

/// What `ListWorkers` shows of a worker's lease.
pub struct LeaseView {
    pub age: Option<Duration>,
    pub connected: bool,
}

impl Dispatcher {
    pub fn new(
        raft: Raft,
        state: SharedState,
        proposer: Proposer,
        config: DispatchConfig,
        planted: Option<PlantedBug>,
        dispatch_latency: metrics::Histogram,
    ) -> Dispatcher {
        Dispatcher {
            dispatch_latency,
            raft,
            state,
            proposer,
            config,
            leases: Mutex::new(Leases::default()),
            wake: Notify::new(),
            planted,
        }
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, Leases> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ensure_leader(&self) -> Result<(), ApiError> {
        leadership::ensure_leader(&self.raft)
    }

    pub fn lease_view(&self, worker: &str) -> LeaseView {
        let l = self.leases();
        LeaseView {
            age: l.heard.get(worker).map(|t| t.elapsed()),
            connected: l.streams.get(worker).is_some_and(|s| !s.tx.is_closed()),
        }
    }

    /// Workers with an open assignment stream to this replica.
    pub fn connected_workers(&self) -> usize {
        self.leases()
            .streams
            .values()
            .filter(|s| !s.tx.is_closed())
            .count()
    }

    /// Registers a worker and opens its assignment stream. `caller` is the token it registers
    /// with (None when auth is off); its reports are bound to that token and to `spec.session`.
    pub async fn connect(
        &self,
        spec: WorkerSpec,
        caller: Option<&Principal>,
    ) -> Result<mpsc::Receiver<Result<pb::WorkerEvent, Status>>, ApiError> {
        self.ensure_leader()?;
        spec.validate()?;
        if let Some(p) = caller {
            if self
                .leases()
                .owners
                .get(&spec.id)
                .is_some_and(|o| *o != p.name)
            {
                return Err(ApiError::PermissionDenied(format!(
                    "worker {:?} is registered with another token",
                    spec.id
                )));
            }
        }
        match self
            .proposer
            .propose(Command::RegisterWorker {
                now_ms: now_ms(),
                worker: spec.clone(),
            })
            .await?
        {
            Response::Rejected(e) => return Err(e.into()),
            Response::WorkerRegistered { resumed, .. } => {
                info!(worker = %spec.id, resumed, "worker connected")
            }
            other => return Err(ApiError::Internal(format!("unexpected {other:?}"))),
        }
        let (tx, rx) = mpsc::channel(self.config.stream_limit);
        // Redeliver whatever the state says this worker runs: a push may have been lost.
        let running: Vec<pb::WorkerEvent> = {
            let applied = self.state.read();
            applied
                .state
                .tasks_on(&spec.id)
                .iter()
                .map(assignment_event)
                .collect()
        };
        for event in running {
            let _ = tx.try_send(Ok(event));
        }
        let mut l = self.leases();
        l.heard.insert(spec.id.clone(), Instant::now());
        l.draining.remove(&spec.id);
        if let Some(p) = caller {
            l.owners.insert(spec.id.clone(), p.name.clone());
        }
        l.streams.insert(
            spec.id.clone(),
            Stream {
                session: spec.session.clone(),
                tx,
            },
        );
        drop(l);
        self.wake.notify_one();
        Ok(rx)
    }

    /// Whether a report about `worker` (a completion, failure, checkpoint, heartbeat or leave)
    /// may come from this caller. It must carry the session the worker registered with — a
    /// secret of the worker process, never shown by the API — and, with tokens on, be made with
    /// the token the worker registered with on this leader. A worker the state does not know
    /// passes: nothing runs on it, so the attempt fence in `apply` refuses whatever it reports.
    ///
    /// Refusals are PERMISSION_DENIED, except for a registered worker that has not (yet)
    /// registered with this leader while tokens are on: UNAVAILABLE, retried until it has (a
    /// worker re-registers with a new leader within a fraction of a second).
    pub fn check_reporter(
        &self,
        worker: &str,
        session: &str,
        caller: Option<&Principal>,
    ) -> Result<(), ApiError> {
        let registered = match self.state.read().state.worker(worker) {
            None => return Ok(()),
            Some(w) => w.spec.session == session,
        };
        if !registered {
            return Err(ApiError::PermissionDenied(format!(
                "session: not the session worker {worker:?} registered with"
            )));
        }
        let Some(p) = caller else { return Ok(()) };
        match self.leases().owners.get(worker) {
            Some(owner) if *owner == p.name => Ok(()),
            Some(_) => Err(ApiError::PermissionDenied(format!(
                "worker {worker:?} is registered with another token"
            ))),
            None => Err(ApiError::Unavailable(format!(
                "worker {worker:?} has not registered with this leader yet"
            ))),
        }
    }

    /// Renews a lease; returns the reported attempts the worker must stop.
    ///
    /// Also reconciles the other way: an attempt the state says this worker runs, but which
    /// two heartbeats in a row did not list, is pushed again — its assignment was lost (a full
    /// stream) and the worker, still connected, would otherwise never hear of it. Pushing
    /// twice is harmless: a worker never starts the same attempt twice.
    pub fn heartbeat(
        &self,
        worker: &str,
        session: &str,
        running: &[(TaskId, u32)],
        draining: bool,
        caller: Option<&Principal>,
    ) -> Result<Vec<(TaskId, u32)>, ApiError> {
        self.ensure_leader()?;
        self.check_owner(worker, caller)?;
        let (cancel, unreported) = {
            let applied = self.state.read();
            match applied.state.worker(worker) {
                Some(w) if w.spec.session == session => {}
                _ => {
                    return Err(ApiError::NotFound(format!(
                        "worker {worker:?} is not registered (expired?); reconnect"
                    )))
                }
            }
            let cancel = running
                .iter()
                .filter(|(id, attempt)| {
                    applied.state.running_attempt(*id) != Some((*attempt, worker))
                })
                .copied()
                .collect();
            let reported: BTreeSet<(TaskId, u32)> = running.iter().copied().collect();
            let unreported: BTreeMap<TaskId, u32> = applied
                .state
                .attempts_on(worker)
                .into_iter()
                .filter(|a| !reported.contains(a))
                .collect();
            (cancel, unreported)
        };
        let redeliver: Vec<(TaskId, u32)> = {
            let mut l = self.leases();
            l.heard.insert(worker.to_string(), Instant::now());
            if draining && l.draining.insert(worker.to_string()) {
                info!(worker, "worker draining: no more assignments");
            }
            let now = l.unreported.entry(worker.to_string()).or_default();
            let before = std::mem::replace(now, unreported);
            let again: Vec<(TaskId, u32)> = now
                .iter()
                .filter(|(id, attempt)| before.get(id) == Some(attempt))
                .map(|(id, attempt)| (*id, *attempt))
                .collect();
            // Count afresh after a redelivery, so each lost push is retried every other beat.
            for (id, _) in &again {
                now.remove(id);
            }
            again
        };
        for (task_id, attempt) in redeliver {
            info!(worker, task = %task_id, attempt, "heartbeats do not list an assigned attempt; delivering it again");
            self.push_assignment(worker, task_id, attempt);
        }
        Ok(cancel)
    }

    /// A drained worker leaves: its registration ends and whatever the state says it still
    /// runs goes back to pending at once (one committed `ExpireWorker`, as for a lost lease).
    pub async fn leave(
        &self,
        worker: &str,
        session: &str,
        caller: Option<&Principal>,
    ) -> Result<(), ApiError> {
        self.ensure_leader()?;
        self.check_owner(worker, caller)?;
        let registered = {
            let applied = self.state.read();
            applied
                .state
                .worker(worker)
                .is_some_and(|w| w.spec.session == session)
        };
        if !registered {
            return Err(ApiError::NotFound(format!(
                "worker {worker:?} is not registered with this session"
            )));
        }
        let cmd = Command::ExpireWorker {
            now_ms: now_ms(),
            worker_id: worker.to_string(),
            reason: "left after draining".into(),
        };
        match self.proposer.propose(cmd).await? {
            Response::WorkerExpired { requeued, .. } => {
                info!(worker, requeued = requeued.len(), "worker left")
            }
            Response::Rejected(e) => return Err(e.into()),
            other => return Err(ApiError::Internal(format!("unexpected {other:?}"))),
        }
        let mut l = self.leases();
        l.heard.remove(worker);
        l.streams.remove(worker);
        l.unreported.remove(worker);
        l.draining.remove(worker);
        l.owners.remove(worker);
        drop(l);
        self.wake.notify_one();
        Ok(())
    }

    /// With tokens on, a heartbeat or leave for a worker registered with another token on this
    /// leader is refused. (The session itself is checked by the caller against the state.)
    fn check_owner(&self, worker: &str, caller: Option<&Principal>) -> Result<(), ApiError> {
        let Some(p) = caller else { return Ok(()) };
        match self.leases().owners.get(worker) {
            Some(owner) if *owner != p.name => Err(ApiError::PermissionDenied(format!(
                "worker {worker:?} is registered with another token"
            ))),
            _ => Ok(()),
        }
    }

    /// The loop; returns when `shutdown` is cancelled.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut metrics = self.raft.metrics();
        let mut interval = tokio::time::interval(self.config.interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = interval.tick() => {}
                _ = self.wake.notified() => {}
                changed = metrics.changed() => if changed.is_err() { return },
            }
            self.round().await;
            tokio::time::sleep(MIN_ROUND_GAP).await;
        }
    }

    async fn round(&self) {
        let leader = is_leader(&self.raft);
        let now = Instant::now();
        {
            let mut l = self.leases();
            if !leader {
                // A deposed leader drops its streams: workers reconnect to the new leader.
                if l.leader_since.is_some() {
                    *l = Leases::default();
                }
                return;
            }
            if l.leader_since.is_none() {
                info!("leader: granting every registered worker a full lease of grace");
                l.leader_since = Some(now);
            }
            l.streams.retain(|_, s| !s.tx.is_closed());
        }

        // Expire workers whose lease ran out (counting from our own leadership at the earliest).
        let (expired, live) = {
            let applied = self.state.read();
            let l = self.leases();
            let since = l.leader_since.expect("set above");
            let mut expired = Vec::new();
            let mut live = BTreeSet::new();
            for w in applied.state.workers() {
                let last = l.heard.get(&w.spec.id).copied().unwrap_or(since).max(since);
                if now.duration_since(last) > self.config.lease_ttl {
                    expired.push(w.spec.id.clone());
                } else if !l.draining.contains(&w.spec.id)
                    && l.streams
                        .get(&w.spec.id)
                        .is_some_and(|s| s.session == w.spec.session)
                {
                    live.insert(w.spec.id.clone());
                }
            }
            (expired, live)
        };
        for worker_id in expired {
            let ttl = self.config.lease_ttl.as_millis();
            warn!(worker = %worker_id, ttl_ms = ttl as u64, "worker lease expired");
            let cmd = Command::ExpireWorker {
                now_ms: now_ms(),
                worker_id: worker_id.clone(),
                reason: format!("no heartbeat for {ttl} ms"),
            };
            if let Ok(Response::WorkerExpired { .. }) = self.proposer.propose(cmd).await {
                let mut l = self.leases();
                l.heard.remove(&worker_id);
                l.streams.remove(&worker_id);
                l.unreported.remove(&worker_id);
                l.owners.remove(&worker_id);
            }
        }

        let commands = {
            let applied = self.state.read();
            plan(&applied.state, now_ms(), &live, &self.config.plan)
        };
        if commands.is_empty() {
            return;
        }
        if self.planted == Some(PlantedBug::DispatchBeforeCommit) {
            for c in &commands {
                if let Command::Assign {
                    task_id,
                    worker_id,
                    attempt,
                    ..
                } = c
                {
                    self.push_assignment(worker_id, *task_id, *attempt);
                }
            }
        }
        let results = join_all(commands.iter().map(|c| self.proposer.propose(c.clone()))).await;
        for (command, result) in commands.iter().zip(results) {
            if let (
                Command::Assign {
                    task_id,
                    worker_id,
                    attempt,
                    ..
                },
                Ok(Response::Assigned { .. }),
            ) = (command, &result)
            {
                // Committed: now, and only now, the worker may start it.
                if self.planted != Some(PlantedBug::DispatchBeforeCommit) {
                    self.push_assignment(worker_id, *task_id, *attempt);
                }
            }
        }
    }

    fn push_assignment(&self, worker_id: &str, task_id: TaskId, attempt: u32) {
        let event = {
            let applied = self.state.read();
            match applied.state.get(task_id) {
                Some(t) => {
                    // Submission to first push, for tasks that could run at once (a dependent
                    // or delayed task waited on purpose).
                    if attempt == 1
                        && t.spec.depends_on.is_empty()
                        && t.spec.not_before_ms.is_none()
                    {
                        self.dispatch_latency
                            .record(now_ms().saturating_sub(t.submitted_at_ms) as f64 / 1000.0);
                    }
                    let mut e = assignment_event(&t);
                    if let Some(pb::worker_event::Event::Assignment(a)) = &mut e.event {
                        a.attempt = attempt;
                    }
                    e
                }
                None => return,
            }
        };
        let l = self.leases();
        if let Some(s) = l.streams.get(worker_id) {
            if s.tx.try_send(Ok(event)).is_err() {
                warn!(worker = %worker_id, task = %task_id, "assignment stream full or closed; the worker gets it on reconnect");
            }
        }
    }
}

/// The assignment event for a running task's current attempt.
fn assignment_event(t: &Task) -> pb::WorkerEvent {
    pb::WorkerEvent {
        event: Some(pb::worker_event::Event::Assignment(pb::Assignment {
            task_id: t.id.0,
            attempt: t.attempts,
            queue: t.spec.queue.clone(),
            payload: t.spec.payload.clone(),
            has_checkpoint: t.checkpoint.is_some(),
            checkpoint: t
                .checkpoint
                .as_ref()
                .map(|c| c.data.clone())
                .unwrap_or_default(),
            timeout_ms: t.spec.timeout_ms.unwrap_or(0),
        })),
    }
}
