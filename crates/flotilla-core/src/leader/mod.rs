//! The leader's engine: everything the leader decides over time, as one deterministic state
//! machine that takes [`Event`]s and returns [`Effect`]s.
//!
//! It owns the leader's in-memory bookkeeping — worker leases, the grace period after a
//! leader change, which workers have a stream to this leader, attempts a worker's heartbeats
//! did not list, drains, the token a worker registered with — and decides, on each tick, which
//! leases expired, whether the replicated clock must advance (`not_before` timers), finished
//! tasks be swept or a schedule's tick fire, and what to assign (the pure [`crate::plan`]). It
//! owns no clock, no socket and no task: time comes in each event ([`Now`]), the applied
//! [`State`] is lent to each call, and the I/O shell (`flotilla-server`'s `dispatch`) carries
//! out the effects — proposes the commands, pushes assignments and cancellations down worker
//! streams, closes streams — and feeds back what each proposal became ([`Event::Proposed`]).
//!
//! ```text
//!  shell: timer / applied entry / wake ─▶ Event::Tick ─▶ engine ─▶ [Propose(ExpireWorker),
//!         Propose(Tick), Propose(Sweep), Propose(Assign)…] ─▶ shell proposes, awaits commits
//!         ─▶ Event::Proposed{Assigned} ─▶ engine ─▶ [Push] ─▶ shell sends down the stream
//! ```
//!
//! Rules it keeps:
//! - An assignment is pushed only after its `Assign` committed (unless the test-only
//!   `push_before_commit` bug is planted).
//! - A new leader grants every registered worker a full lease from its own election before
//!   expiring anyone, so a leader change alone never restarts running work; it plans for
//!   workers as soon as they have a stream to it, so the grace never stalls new work.
//! - A worker that (re)connects is sent every attempt the state says it runs; an attempt that
//!   two heartbeats in a row did not list is pushed again (a worker never starts an attempt
//!   twice, so pushing twice is harmless).
//!
//! The shell's contract: it awaits every proposal of one tick (and feeds its result back)
//! before the next tick, so each plan sees the commits of the previous one.

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use crate::schedule::{due_tick, Calendar};
use crate::{plan, AdmissionLimits, Command, PlanConfig, Response, State, TaskId};

/// The time an event happened, as two clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// A monotonic clock for leases (never jumps).
    pub mono_ms: u64,
    /// Wall-clock milliseconds since the epoch, stamped into the commands proposed.
    pub wall_ms: u64,
}

/// Retention settings the leader stamps into each [`Command::Sweep`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionConfig {
    pub retention_ms: u64,
    pub key_retention_ms: u64,
    pub max_removals: u32,
}

/// The engine's settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Computes schedules' ticks (pure; the server's reads cron expressions).
    pub calendar: std::sync::Arc<dyn Calendar>,
    /// Admission limits stamped into each [`Command::FireSchedule`], as into a submit.
    pub admission: AdmissionLimits,
    /// A worker not heard from for this long is expired.
    pub lease_ttl_ms: u64,
    /// How often the `not_before` timers, the retention sweep and the schedules are looked at.
    pub timers_every_ms: u64,
    pub retention: RetentionConfig,
    pub plan: PlanConfig,
    /// A planted bug for the fault suite: push assignments before their `Assign` commits.
    pub push_before_commit: bool,
}

/// What the engine reacts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// This replica became the Raft leader.
    BecameLeader { now: Now },
    /// This replica is no longer the leader: every lease and stream is forgotten.
    LostLeadership,
    /// Time passed (a timer, an applied entry or a wake-up): expire, tick, sweep, plan.
    Tick { now: Now },
    /// A worker asked this leader to register it; its `RegisterWorker` is about to be
    /// proposed. Heard from now: between that command's commit and [`Event::WorkerConnected`]
    /// the state knows the worker but no stream is open yet, and a tick in that gap must not
    /// count its lease from the election (a leader elected more than a TTL ago would expire
    /// it at once). Another session's attempt on a live worker's id renews nothing.
    WorkerRegistering {
        worker: String,
        session: String,
        now: Now,
    },
    /// A worker's `RegisterWorker` committed and its stream to this leader is open. `owner`:
    /// the token it registered with, when tokens are on.
    WorkerConnected {
        worker: String,
        session: String,
        owner: Option<String>,
        now: Now,
    },
    /// A heartbeat of a worker whose session the shell checked against the state.
    Heartbeat {
        worker: String,
        running: Vec<(TaskId, u32)>,
        draining: bool,
        now: Now,
    },
    /// A worker's stream to this leader closed.
    StreamClosed { worker: String },
    /// A drained worker left (its `ExpireWorker` committed).
    WorkerLeft { worker: String },
    /// A task running `attempt` on `worker` was cancelled (committed).
    TaskCancelled {
        task_id: TaskId,
        worker: String,
        attempt: u32,
    },
    /// What a proposed command became: `None` when it was not committed.
    Proposed {
        command: Command,
        response: Option<Response>,
    },
}

/// Why an assignment is pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushReason {
    /// Its `Assign` committed.
    Committed,
    /// The worker (re)connected; the state says it runs this attempt.
    Reconnected,
    /// Two heartbeats in a row did not list it: the first push was lost.
    Unreported,
    /// The planted bug: before its `Assign` committed.
    Planted,
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Propose this command and feed back [`Event::Proposed`].
    Propose(Command),
    /// Send this attempt's assignment down the worker's stream.
    Push {
        worker: String,
        task_id: TaskId,
        attempt: u32,
        reason: PushReason,
    },
    /// The worker must stop this attempt (in a heartbeat's answer, or down its stream).
    Cancel {
        worker: String,
        task_id: TaskId,
        attempt: u32,
    },
    /// Close the worker's stream (its lease expired or it left).
    CloseStream { worker: String },
    /// Close every stream (leadership lost: workers reconnect to the new leader).
    CloseAllStreams,
}

/// One worker's standing with this leader.
#[derive(Debug, Clone, Default)]
struct Lease {
    /// Last time (monotonic) it was heard from by this leader.
    heard_ms: Option<u64>,
    /// The session of its open stream to this leader.
    stream_session: Option<String>,
    /// The token it registered with on this leader (tokens on).
    owner: Option<String>,
    /// Its heartbeats say it drains: it is assigned nothing more.
    draining: bool,
    /// Attempts the state says it runs that its last heartbeat did not list.
    unreported: BTreeMap<TaskId, u32>,
}

/// What the shell may show of a worker's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    pub heard_ms: Option<u64>,
    pub streaming: bool,
    pub draining: bool,
}

/// The leader's engine. See the module docs.
#[derive(Debug)]
pub struct LeaderEngine {
    config: EngineConfig,
    /// When this replica last became leader (monotonic); None while it is not.
    leader_since_ms: Option<u64>,
    leases: BTreeMap<String, Lease>,
    /// Workers whose `ExpireWorker` is proposed and not yet answered.
    expiring: BTreeSet<String>,
    /// When the timers were last looked at (monotonic).
    timers_checked_ms: Option<u64>,
}

impl LeaderEngine {
    pub fn new(config: EngineConfig) -> LeaderEngine {
        LeaderEngine {
            config,
            leader_since_ms: None,
            leases: BTreeMap::new(),
            expiring: BTreeSet::new(),
            timers_checked_ms: None,
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Whether the engine acts as leader (between `BecameLeader` and `LostLeadership`).
    pub fn is_leader(&self) -> bool {
        self.leader_since_ms.is_some()
    }

    /// The token `worker` registered with on this leader.
    pub fn owner(&self, worker: &str) -> Option<&str> {
        self.leases.get(worker)?.owner.as_deref()
    }

    pub fn lease(&self, worker: &str) -> Option<LeaseInfo> {
        self.leases.get(worker).map(|l| LeaseInfo {
            heard_ms: l.heard_ms,
            streaming: l.stream_session.is_some(),
            draining: l.draining,
        })
    }

    /// Reacts to one event; `state` is the applied state at the time.
    pub fn handle(&mut self, state: &State, event: Event) -> Vec<Effect> {
        match event {
            Event::BecameLeader { now } => {
                self.leader_since_ms = Some(now.mono_ms);
                self.timers_checked_ms = None;
                Vec::new()
            }
            Event::LostLeadership => {
                self.leader_since_ms = None;
                self.leases.clear();
                self.expiring.clear();
                vec![Effect::CloseAllStreams]
            }
            Event::Tick { now } => self.tick(state, now),
            Event::WorkerRegistering {
                worker,
                session,
                now,
            } => {
                if state
                    .worker(&worker)
                    .is_none_or(|w| w.spec.session == session)
                {
                    self.leases.entry(worker).or_default().heard_ms = Some(now.mono_ms);
                }
                Vec::new()
            }
            Event::WorkerConnected {
                worker,
                session,
                owner,
                now,
            } => {
                let lease = self.leases.entry(worker.clone()).or_default();
                lease.heard_ms = Some(now.mono_ms);
                lease.draining = false;
                lease.stream_session = Some(session);
                if owner.is_some() {
                    lease.owner = owner;
                }
                // Redeliver whatever the state says it runs: a push may have been lost.
                state
                    .attempts_on(&worker)
                    .into_iter()
                    .map(|(task_id, attempt)| Effect::Push {
                        worker: worker.clone(),
                        task_id,
                        attempt,
                        reason: PushReason::Reconnected,
                    })
                    .collect()
            }
            Event::Heartbeat {
                worker,
                running,
                draining,
                now,
            } => self.heartbeat(state, worker, running, draining, now),
            Event::StreamClosed { worker } => {
                if let Some(l) = self.leases.get_mut(&worker) {
                    l.stream_session = None;
                }
                Vec::new()
            }
            Event::WorkerLeft { worker } => {
                self.leases.remove(&worker);
                vec![Effect::CloseStream { worker }]
            }
            Event::TaskCancelled {
                task_id,
                worker,
                attempt,
            } => match self.leases.get(&worker) {
                Some(l) if l.stream_session.is_some() => vec![Effect::Cancel {
                    worker,
                    task_id,
                    attempt,
                }],
                _ => Vec::new(),
            },
            Event::Proposed { command, response } => self.proposed(command, response),
        }
    }

    fn tick(&mut self, state: &State, now: Now) -> Vec<Effect> {
        let Some(since) = self.leader_since_ms else {
            return Vec::new();
        };
        let mut out = Vec::new();
        // Leases count from this leader's election at the earliest: the grace period.
        let mut live = BTreeSet::new();
        for w in state.workers() {
            let id = &w.spec.id;
            let lease = self.leases.get(id);
            let last = lease.and_then(|l| l.heard_ms).unwrap_or(since).max(since);
            if now.mono_ms.saturating_sub(last) > self.config.lease_ttl_ms {
                if self.expiring.insert(id.clone()) {
                    out.push(Effect::Propose(Command::ExpireWorker {
                        now_ms: now.wall_ms,
                        worker_id: id.clone(),
                        reason: format!("no heartbeat for {} ms", self.config.lease_ttl_ms),
                    }));
                }
            } else if lease.is_some_and(|l| {
                !l.draining && l.stream_session.as_deref() == Some(w.spec.session.as_str())
            }) {
                live.insert(id.clone());
            }
        }
        let timers_due = self
            .timers_checked_ms
            .is_none_or(|t| now.mono_ms.saturating_sub(t) >= self.config.timers_every_ms);
        if timers_due {
            self.timers_checked_ms = Some(now.mono_ms);
            if state.next_wakeup_ms().is_some_and(|t| t <= now.wall_ms) {
                out.push(Effect::Propose(Command::Tick {
                    now_ms: now.wall_ms,
                }));
            }
            let r = self.config.retention;
            if state
                .next_sweep_ms(r.retention_ms, r.key_retention_ms)
                .is_some_and(|t| t <= now.wall_ms)
            {
                out.push(Effect::Propose(Command::Sweep {
                    now_ms: now.wall_ms,
                    retention_ms: r.retention_ms,
                    key_retention_ms: r.key_retention_ms,
                    max_removals: r.max_removals,
                }));
            }
            // Each due tick once per look: the shell awaits these proposals before the next
            // tick, and `apply` refuses a tick that fired already.
            for (schedule, due_ms) in state.due_schedules() {
                if due_ms > now.wall_ms {
                    continue;
                }
                let cron = &schedule.spec.cron;
                let (tick_ms, next_tick_ms, missed) =
                    due_tick(&*self.config.calendar, cron, due_ms, now.wall_ms);
                out.push(Effect::Propose(Command::FireSchedule {
                    now_ms: now.wall_ms,
                    name: schedule.spec.name.clone(),
                    tick_ms,
                    next_tick_ms,
                    missed,
                    limits: self.config.admission,
                }));
            }
        }
        for command in plan(state, now.wall_ms, &live, &self.config.plan) {
            if self.config.push_before_commit {
                if let Command::Assign {
                    task_id,
                    worker_id,
                    attempt,
                    ..
                } = &command
                {
                    out.push(Effect::Push {
                        worker: worker_id.clone(),
                        task_id: *task_id,
                        attempt: *attempt,
                        reason: PushReason::Planted,
                    });
                }
            }
            out.push(Effect::Propose(command));
        }
        out
    }

    fn heartbeat(
        &mut self,
        state: &State,
        worker: String,
        running: Vec<(TaskId, u32)>,
        draining: bool,
        now: Now,
    ) -> Vec<Effect> {
        let mut out: Vec<Effect> = running
            .iter()
            .filter(|(id, attempt)| state.running_attempt(*id) != Some((*attempt, worker.as_str())))
            .map(|(task_id, attempt)| Effect::Cancel {
                worker: worker.clone(),
                task_id: *task_id,
                attempt: *attempt,
            })
            .collect();
        let reported: BTreeSet<(TaskId, u32)> = running.into_iter().collect();
        let unreported: BTreeMap<TaskId, u32> = state
            .attempts_on(&worker)
            .into_iter()
            .filter(|a| !reported.contains(a))
            .collect();
        let lease = self.leases.entry(worker.clone()).or_default();
        lease.heard_ms = Some(now.mono_ms);
        lease.draining |= draining;
        let before = std::mem::replace(&mut lease.unreported, unreported);
        let again: Vec<(TaskId, u32)> = lease
            .unreported
            .iter()
            .filter(|(id, attempt)| before.get(id) == Some(attempt))
            .map(|(id, attempt)| (*id, *attempt))
            .collect();
        // Count afresh after a redelivery, so each lost push is retried every other beat.
        for (id, _) in &again {
            lease.unreported.remove(id);
        }
        out.extend(again.into_iter().map(|(task_id, attempt)| Effect::Push {
            worker: worker.clone(),
            task_id,
            attempt,
            reason: PushReason::Unreported,
        }));
        out
    }

    fn proposed(&mut self, command: Command, response: Option<Response>) -> Vec<Effect> {
        match (command, response) {
            (
                Command::Assign {
                    task_id,
                    worker_id,
                    attempt,
                    ..
                },
                Some(Response::Assigned { .. }),
            ) if !self.config.push_before_commit => vec![Effect::Push {
                worker: worker_id,
                task_id,
                attempt,
                reason: PushReason::Committed,
            }],
            (Command::ExpireWorker { worker_id, .. }, response) => {
                self.expiring.remove(&worker_id);
                if matches!(response, Some(Response::WorkerExpired { .. })) {
                    self.leases.remove(&worker_id);
                    vec![Effect::CloseStream { worker: worker_id }]
                } else {
                    Vec::new()
                }
            }
            _ => Vec::new(),
        }
    }
}
