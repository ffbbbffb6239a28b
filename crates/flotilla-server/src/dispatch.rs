//! The I/O shell of the leader's engine ([`flotilla_core::leader`]): it owns the worker
//! streams, the timers and the proposer, feeds the engine events, and carries out the effects
//! it returns.
//!
//! Every decision over time — lease expiry and the grace after a leader change, planning,
//! redelivery, `not_before` timers, retention sweeps, retry backoff — is the engine's; this
//! module only turns sockets and clocks into [`Event`]s and [`Effect`]s into proposals and
//! stream messages. One loop drives it: a round on a timer, on every applied entry, or when
//! woken (a worker connected or left), and each round awaits its proposals and feeds their
//! results back before the next, so each plan sees what the previous one committed.
//!
//! ```text
//!  timer/applied/wake ─▶ Event::Tick ─▶ engine ─▶ Propose… ─▶ proposer ─▶ Event::Proposed
//!                                                                  │
//!   worker stream ◀── Push / Cancel / CloseStream ◀── engine ◀─────┘
//! ```

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use flotilla_core::leader::{Effect, EngineConfig, Event, LeaderEngine, Now, PushReason};
use flotilla_core::{Command, Response, Task, TaskId, TickOutcome, WorkerSpec};
use flotilla_proto::pb;
use flotilla_store::SharedState;
use futures::future::join_all;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::{debug, info, warn};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::leadership::{self, is_leader, now_ms};
use crate::proposer::Proposer;
use crate::Raft;

/// Shortest pause between two rounds. A slot freed by a completion waits for the next round:
/// 5 ms here was a third of a slot's cycle under full load (docs/performance.md), while a plan
/// over 100,000 pending tasks takes ~0.2 ms.
const MIN_ROUND_GAP: Duration = Duration::from_millis(1);

pub type EventSender = mpsc::Sender<Result<pb::WorkerEvent, Status>>;

#[derive(Debug, Clone)]
pub struct DispatchConfig {
    pub engine: EngineConfig,
    /// Round period when nothing else wakes the loop.
    pub interval: Duration,
    /// Events queued for one worker's stream, at most.
    pub stream_limit: usize,
}

/// The engine and the streams it speaks through, under one lock.
struct Inner {
    engine: LeaderEngine,
    /// Assignment streams of workers connected to this leader.
    streams: BTreeMap<String, EventSender>,
    /// Whether the engine was last told this replica leads.
    leader: bool,
}

pub struct Dispatcher {
    raft: Raft,
    state: SharedState,
    proposer: Proposer,
    config: DispatchConfig,
    inner: Mutex<Inner>,
    wake: Notify,
    /// The origin of the engine's monotonic clock.
    epoch: Instant,
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
        dispatch_latency: metrics::Histogram,
    ) -> Dispatcher {
        Dispatcher {
            inner: Mutex::new(Inner {
                engine: LeaderEngine::new(config.engine.clone()),
                streams: BTreeMap::new(),
                leader: false,
            }),
            dispatch_latency,
            raft,
            state,
            proposer,
            config,
            wake: Notify::new(),
            epoch: Instant::now(),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now(&self) -> Now {
        Now {
            mono_ms: self.epoch.elapsed().as_millis() as u64,
            wall_ms: now_ms(),
        }
    }

    /// Feeds the engine one event. Lock order: the applied state, then `inner`.
    fn handle(&self, event: Event) -> Vec<Effect> {
        let applied = self.state.read();
        self.inner().engine.handle(&applied.state, event)
    }

    pub(crate) fn ensure_leader(&self) -> Result<(), ApiError> {
        leadership::ensure_leader(&self.raft)
    }

    pub fn lease_view(&self, worker: &str) -> LeaseView {
        let i = self.inner();
        let now = self.epoch.elapsed().as_millis() as u64;
        LeaseView {
            age: i
                .engine
                .lease(worker)
                .and_then(|l| l.heard_ms)
                .map(|t| Duration::from_millis(now.saturating_sub(t))),
            connected: i.streams.get(worker).is_some_and(|s| !s.is_closed()),
        }
    }

    /// Workers with an open assignment stream to this replica.
    pub fn connected_workers(&self) -> usize {
        self.inner()
            .streams
            .values()
            .filter(|s| !s.is_closed())
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
                .inner()
                .engine
                .owner(&spec.id)
                .is_some_and(|o| o != p.name)
            {
                return Err(ApiError::PermissionDenied(format!(
                    "worker {:?} is registered with another token",
                    spec.id
                )));
            }
        }
        let effects = self.handle(Event::WorkerRegistering {
            worker: spec.id.clone(),
            session: spec.session.clone(),
            now: self.now(),
        });
        self.carry_out_now(effects);
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
        self.inner().streams.insert(spec.id.clone(), tx);
        let effects = self.handle(Event::WorkerConnected {
            worker: spec.id,
            session: spec.session,
            owner: caller.map(|p| p.name.clone()),
            now: self.now(),
        });
        self.carry_out_now(effects);
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
        match self.inner().engine.owner(worker) {
            Some(owner) if owner == p.name => Ok(()),
            Some(_) => Err(ApiError::PermissionDenied(format!(
                "worker {worker:?} is registered with another token"
            ))),
            None => Err(ApiError::Unavailable(format!(
                "worker {worker:?} has not registered with this leader yet"
            ))),
        }
    }

    /// Renews a lease; returns the reported attempts the worker must stop. An attempt the
    /// state says this worker runs but two heartbeats in a row did not list is pushed again
    /// (the engine decides; see [`flotilla_core::leader`]).
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
        let registered = self
            .state
            .read()
            .state
            .worker(worker)
            .is_some_and(|w| w.spec.session == session);
        if !registered {
            return Err(ApiError::NotFound(format!(
                "worker {worker:?} is not registered (expired?); reconnect"
            )));
        }
        let was_draining = self
            .inner()
            .engine
            .lease(worker)
            .is_some_and(|l| l.draining);
        if draining && !was_draining {
            info!(worker, "worker draining: no more assignments");
        }
        let effects = self.handle(Event::Heartbeat {
            worker: worker.to_string(),
            running: running.to_vec(),
            draining,
            now: self.now(),
        });
        let mut cancel = Vec::new();
        let mut rest = Vec::new();
        for e in effects {
            match e {
                Effect::Cancel {
                    task_id, attempt, ..
                } => cancel.push((task_id, attempt)),
                other => rest.push(other),
            }
        }
        self.carry_out_now(rest);
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
        let effects = self.handle(Event::WorkerLeft {
            worker: worker.to_string(),
        });
        self.carry_out_now(effects);
        self.wake.notify_one();
        Ok(())
    }

    /// A task running `attempt` on `worker` was cancelled (committed): the worker hears it down
    /// its stream at once, not at its next heartbeat.
    pub fn cancelled(&self, task_id: TaskId, worker: &str, attempt: u32) {
        let effects = self.handle(Event::TaskCancelled {
            task_id,
            worker: worker.to_string(),
            attempt,
        });
        self.carry_out_now(effects);
    }

    /// With tokens on, a heartbeat or leave for a worker registered with another token on this
    /// leader is refused. (The session itself is checked by the caller against the state.)
    fn check_owner(&self, worker: &str, caller: Option<&Principal>) -> Result<(), ApiError> {
        let Some(p) = caller else { return Ok(()) };
        match self.inner().engine.owner(worker) {
            Some(owner) if owner != p.name => Err(ApiError::PermissionDenied(format!(
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

    /// Tells the engine of a leadership change and of closed streams, then ticks it and
    /// carries out what it decides, proposals included.
    async fn round(&self) {
        let leader = is_leader(&self.raft);
        let now = self.now();
        let mut events = Vec::new();
        {
            let mut i = self.inner();
            if leader != i.leader {
                i.leader = leader;
                events.push(if leader {
                    info!("leader: granting every registered worker a full lease of grace");
                    Event::BecameLeader { now }
                } else {
                    Event::LostLeadership
                });
            }
            let closed: Vec<String> = i
                .streams
                .iter()
                .filter(|(_, s)| s.is_closed())
                .map(|(w, _)| w.clone())
                .collect();
            for worker in closed {
                i.streams.remove(&worker);
                events.push(Event::StreamClosed { worker });
            }
        }
        if leader {
            events.push(Event::Tick { now });
        }
        let mut effects = Vec::new();
        for e in events {
            effects.extend(self.handle(e));
        }
        self.carry_out(effects).await;
    }

    /// Carries out effects, proposing (concurrently) and feeding each result back to the
    /// engine until nothing more is to be done.
    async fn carry_out(&self, mut effects: Vec<Effect>) {
        loop {
            let mut proposals = Vec::new();
            for e in effects.drain(..) {
                match e {
                    Effect::Propose(c) => proposals.push(c),
                    other => self.carry_out_one(other),
                }
            }
            if proposals.is_empty() {
                return;
            }
            for c in &proposals {
                if let Command::ExpireWorker {
                    worker_id, reason, ..
                } = c
                {
                    warn!(worker = %worker_id, reason, "worker lease expired");
                }
            }
            let results = join_all(
                proposals
                    .iter()
                    .map(|c| self.proposer.propose_now(c.clone())),
            )
            .await;
            for (command, result) in proposals.into_iter().zip(results) {
                match (&command, &result) {
                    (
                        Command::Sweep { .. },
                        Ok(Response::Swept {
                            removed,
                            tombstoned,
                            forgotten,
                        }),
                    ) => {
                        debug!(removed, tombstoned, forgotten, "retention sweep")
                    }
                    (
                        Command::FireSchedule { missed, .. },
                        Ok(Response::ScheduleFired {
                            name,
                            tick_ms,
                            outcome,
                        }),
                    ) => match outcome {
                        TickOutcome::Created { task, .. } => {
                            info!(schedule = %name, tick_ms, task = %task, missed, "schedule tick fired")
                        }
                        TickOutcome::Skipped(why) => {
                            info!(schedule = %name, tick_ms, why, missed, "schedule tick skipped")
                        }
                    },
                    (
                        Command::Sweep { .. } | Command::Tick { .. } | Command::FireSchedule { .. },
                        Ok(Response::Rejected(e)),
                    ) => {
                        warn!(command = ?command, error = %e, "timer command refused")
                    }
                    (
                        Command::Sweep { .. }
                        | Command::Tick { .. }
                        | Command::ExpireWorker { .. }
                        | Command::FireSchedule { .. },
                        Err(e),
                    ) => {
                        warn!(error = %e, "not committed: {}", kind(&command))
                    }
                    _ => {}
                }
                effects.extend(self.handle(Event::Proposed {
                    command,
                    response: result.ok(),
                }));
            }
        }
    }

    /// Carries out effects that need no proposal (those of a worker's call).
    fn carry_out_now(&self, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Propose(c) => {
                    // The engine proposes only on ticks; a proposal here would be a bug of
                    // the engine, harmless to drop (the next tick decides again).
                    warn!(
                        command = kind(&c),
                        "engine proposed outside a round; dropped"
                    )
                }
                other => self.carry_out_one(other),
            }
        }
    }

    fn carry_out_one(&self, effect: Effect) {
        match effect {
            Effect::Propose(_) => unreachable!("proposals are carried out by `carry_out`"),
            Effect::Push {
                worker,
                task_id,
                attempt,
                reason,
            } => {
                if reason == PushReason::Unreported {
                    info!(worker, task = %task_id, attempt, "heartbeats do not list an assigned attempt; delivering it again");
                }
                self.push_assignment(&worker, task_id, attempt, reason);
            }
            Effect::Cancel {
                worker,
                task_id,
                attempt,
            } => {
                let event = pb::WorkerEvent {
                    event: Some(pb::worker_event::Event::Cancel(pb::RunningAttempt {
                        task_id: task_id.0,
                        attempt,
                    })),
                };
                self.send(&worker, task_id, event);
            }
            Effect::CloseStream { worker } => {
                self.inner().streams.remove(&worker);
            }
            Effect::CloseAllStreams => self.inner().streams.clear(),
        }
    }

    fn push_assignment(&self, worker_id: &str, task_id: TaskId, attempt: u32, reason: PushReason) {
        let event = {
            let applied = self.state.read();
            match applied.state.get(task_id) {
                Some(t) => {
                    // Submission to first push, for tasks that could run at once (a dependent
                    // or delayed task waited on purpose).
                    if reason == PushReason::Committed
                        && attempt == 1
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
        self.send(worker_id, task_id, event);
    }

    fn send(&self, worker_id: &str, task_id: TaskId, event: pb::WorkerEvent) {
        let i = self.inner();
        if let Some(s) = i.streams.get(worker_id) {
            if s.try_send(Ok(event)).is_err() {
                warn!(worker = %worker_id, task = %task_id, "worker stream full or closed; the worker gets it on reconnect or at its next heartbeat");
            }
        }
    }
}

/// A command's name for logs.
fn kind(c: &Command) -> &'static str {
    match c {
        Command::Submit { .. } => "submit",
        Command::Cancel { .. } => "cancel",
        Command::Tick { .. } => "tick",
        Command::RegisterWorker { .. } => "register worker",
        Command::ExpireWorker { .. } => "expire worker",
        Command::Assign { .. } => "assign",
        Command::Complete { .. } => "complete",
        Command::Fail { .. } => "fail",
        Command::SaveCheckpoint { .. } => "save checkpoint",
        Command::SetQueue { .. } => "set queue",
        Command::Sweep { .. } => "sweep",
        Command::SubmitWorkflow { .. } => "submit workflow",
        Command::CancelWorkflow { .. } => "cancel workflow",
        Command::AddSchedule { .. } => "add schedule",
        Command::PauseSchedule { .. } => "pause schedule",
        Command::DeleteSchedule { .. } => "delete schedule",
        Command::FireSchedule { .. } => "fire schedule",
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
            parents: t.spec.depends_on.iter().map(|p| p.0).collect(),
        })),
    }
}
