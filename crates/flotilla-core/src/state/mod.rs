//! The replicated state machine: the task table, its indexes and [`State::apply`].
//!
//! The state proper is the task table (tasks and tombstones), the registered workers, the
//! queue settings, workflows, schedules, `next_task_id` and the replicated clock — what a
//! snapshot holds. Everything else is an index derived from it, rebuilt when a snapshot is
//! loaded ([`StateBuilder`]) and checked by [`State::check_invariants`].
//!
//! Modules, by responsibility:
//!
//! | module | owns |
//! |---|---|
//! | `record` | how a task is stored ([`TaskRecord`]), tombstones |
//! | `table` | the copy-on-write task table |
//! | `keys` | the idempotency-key index |
//! | `queues` | queue settings, pending order per policy, counts per queue |
//! | `flow` | per-queue limits: max running, rate (a token bucket), weight |
//! | `tasks` | task life cycle: submit, cancel, assign, complete, fail, checkpoint |
//! | `attempts` | the attempt history: attempts that ended without finishing their task |
//! | `workers` | worker registry, capacity, fit |
//! | `retention` | removal of finished tasks, tombstones, holds of dependents |
//! | `workflows` | workflows: submit all or nothing, cancel, forget with their last task |
//! | `schedules` | schedules: add, pause, resume, delete, fire a tick at most once |
//! | `image` | snapshot records: the frozen view and the builder |
//! | `invariants` | the consistency checks |

mod attempts;
mod flow;
mod image;
mod invariants;
mod keys;
mod queues;
pub(crate) mod record;
mod retention;
mod schedules;
mod table;
mod tasks;
mod workers;
mod workflows;

use std::collections::{BTreeMap, BTreeSet};

pub use attempts::{EndedAttempt, MAX_ENDED_ATTEMPTS, MAX_HISTORY_ERROR_CHARS};
pub use flow::{
    validate_max_per_key, validate_max_running, validate_rate, validate_weight, Bucket, FlowLimits,
    RateLimit, MAX_RATE, MAX_RUNNING_LIMIT, MAX_WEIGHT,
};
pub use image::{
    ImageHeader, ImageRecord, ImageRecordRef, StateBuilder, StateView, STATE_IMAGE_VERSION,
};
pub use queues::{QueueSetting, QueueSettings};
pub use record::{TaskRecord, Tombstone};

use keys::KeyIndex;
use queues::QueueState;
use record::{Entry, QueueName};
use table::TaskTable;

use crate::{Capacity, Command, Proposal, QueuePolicy, Response, Task, TaskId, TaskState, Worker};

/// The scheduler's replicated state. Mutated only by [`State::apply`].
#[derive(Debug, Clone, Default)]
pub struct State {
    // ---- the state proper ----
    tasks: TaskTable,
    next_task_id: u64,
    /// Largest `now_ms` of any applied command: the replicated clock.
    clock_ms: u64,
    /// Registered workers by id.
    workers: BTreeMap<String, Worker>,
    /// Queues with tasks or settings, by name (settings are state proper, the rest derived).
    queues: BTreeMap<QueueName, QueueState>,
    /// Workflows by the id of their first task.
    workflows: BTreeMap<TaskId, crate::Workflow>,
    /// Schedules by name.
    schedules: BTreeMap<String, crate::Schedule>,

    // ---- derived indexes ----
    /// Idempotency key -> task or tombstone.
    keys: KeyIndex,
    /// Waiting tasks whose `not_before_ms` is still ahead of `clock_ms`, by that time.
    timers: BTreeSet<(u64, TaskId)>,
    /// Running attempts with a timeout, by deadline.
    deadlines: BTreeSet<(u64, TaskId)>,
    /// Worker id -> its running tasks.
    on_worker: BTreeMap<String, BTreeSet<TaskId>>,
    /// Worker id -> what its running tasks use.
    usage: BTreeMap<String, Capacity>,
    /// Parent -> waiting children that still need it to succeed.
    children: BTreeMap<TaskId, BTreeSet<TaskId>>,
    /// Task -> number of unfinished tasks that depend on it (retention keeps it while > 0).
    held: BTreeMap<TaskId, u32>,
    /// Tombstones by expiry.
    tombstones: BTreeSet<(u64, TaskId)>,
    /// Number of tasks per state, indexed by `TaskState as usize`.
    counts: [u64; 6],
    /// Held task -> the workflow it belongs to.
    member_of: BTreeMap<TaskId, TaskId>,
    /// Workflow -> how many of its tasks are held (> 0).
    members_held: BTreeMap<TaskId, u32>,
}

/// What the state knows of an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Task(Task),
    /// Removed by retention; the outcome while its idempotency key is still remembered.
    Removed(Option<Task>),
    /// Never allocated.
    Unknown,
}

impl State {
    pub fn new() -> Self {
        State {
            next_task_id: 1,
            ..State::default()
        }
    }

    // ------------------------------------------------------------------ queries

    pub(crate) fn record(&self, id: TaskId) -> Option<&TaskRecord> {
        self.tasks.get(id).and_then(Entry::task)
    }

    /// The task with id `id` (not a removed one).
    pub fn get(&self, id: TaskId) -> Option<Task> {
        self.record(id).map(TaskRecord::to_task)
    }

    /// A task, or why there is none.
    pub fn lookup(&self, id: TaskId) -> Lookup {
        match self.tasks.get(id) {
            Some(Entry::Task(t)) => Lookup::Task(t.to_task()),
            Some(Entry::Tombstone(t)) => Lookup::Removed(Some(t.to_task())),
            None if id.0 > 0 && id.0 < self.next_task_id => Lookup::Removed(None),
            None => Lookup::Unknown,
        }
    }

    /// Tasks held (not counting tombstones).
    pub fn task_count(&self) -> usize {
        self.counts.iter().sum::<u64>() as usize
    }

    /// Tombstones held: removed tasks whose keys are still remembered.
    pub fn tombstone_count(&self) -> usize {
        self.tombstones.len()
    }

    /// Number of tasks in `state`.
    pub fn count(&self, state: TaskState) -> u64 {
        self.counts[state.index()]
    }

    /// Number of tasks of `queue` in `state`.
    pub fn queue_count(&self, queue: &str, state: TaskState) -> u64 {
        self.queues
            .get(queue)
            .map_or(0, |q| q.counts[state.index()])
    }

    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    pub fn next_task_id(&self) -> u64 {
        self.next_task_id
    }

    pub fn workers(&self) -> impl Iterator<Item = &Worker> + '_ {
        self.workers.values()
    }

    pub fn worker(&self, id: &str) -> Option<&Worker> {
        self.workers.get(id)
    }

    /// The current attempt of task `id` and the worker running it, if it is running.
    pub fn running_attempt(&self, id: TaskId) -> Option<(u32, &str)> {
        let t = self.record(id)?;
        Some((t.attempts, t.worker()?))
    }

    /// Ids and current attempts of the tasks running on worker `id`.
    pub fn attempts_on(&self, id: &str) -> Vec<(TaskId, u32)> {
        self.on_worker
            .get(id)
            .into_iter()
            .flatten()
            .filter_map(|t| self.record(*t).map(|r| (r.id, r.attempts)))
            .collect()
    }

    /// Tasks running on worker `id`.
    pub fn tasks_on(&self, id: &str) -> Vec<Task> {
        self.on_worker
            .get(id)
            .into_iter()
            .flatten()
            .filter_map(|t| self.get(*t))
            .collect()
    }

    /// What a worker's running tasks use of its capacity.
    pub fn worker_usage(&self, id: &str) -> Capacity {
        self.usage.get(id).copied().unwrap_or_default()
    }

    /// Every queue with tasks or settings, by name, with its settings.
    pub fn queues(&self) -> impl Iterator<Item = (&str, &QueueSettings)> + '_ {
        self.queues.iter().map(|(n, q)| (&**n, &q.settings))
    }

    /// Queues with a non-default policy.
    pub fn queue_policies(&self) -> Vec<(String, QueuePolicy)> {
        self.queues
            .iter()
            .filter(|(_, q)| q.settings.policy != QueuePolicy::Fifo)
            .map(|(n, q)| (n.to_string(), q.settings.policy))
            .collect()
    }

    pub fn queue_settings(&self, queue: &str) -> QueueSettings {
        self.queues
            .get(queue)
            .map(|q| q.settings.clone())
            .unwrap_or_default()
    }

    pub fn queue_policy(&self, queue: &str) -> QueuePolicy {
        self.queues
            .get(queue)
            .map(|q| q.settings.policy)
            .unwrap_or_default()
    }

    /// Queues with pending tasks, by name.
    pub fn pending_queues(&self) -> impl Iterator<Item = &str> + '_ {
        self.queues
            .iter()
            .filter(|(_, q)| !q.pending.is_empty())
            .map(|(n, _)| &**n)
    }

    /// Pending tasks of `queue` in the queue's policy order.
    pub fn pending_in(&self, queue: &str) -> impl Iterator<Item = TaskId> + '_ {
        self.queues
            .get(queue)
            .into_iter()
            .flat_map(|q| q.pending.iter().map(|(_, id)| *id))
    }

    /// The oldest submission time among the pending tasks of `queue` (O(1) under FIFO,
    /// O(pending) under the other policies).
    pub fn oldest_pending_ms(&self, queue: &str) -> Option<u64> {
        let q = self.queues.get(queue)?;
        let mut ids = q.pending.iter().map(|(_, id)| *id);
        let times = |ids: &mut dyn Iterator<Item = TaskId>| -> Option<u64> {
            ids.filter_map(|id| self.record(id))
                .map(|t| t.submitted_at_ms)
                .min()
        };
        match q.settings.policy {
            QueuePolicy::Fifo => times(&mut ids.by_ref().take(1)),
            _ => times(&mut ids),
        }
    }

    /// Running attempts whose deadline is at or before `now_ms`: (task, worker, attempt).
    pub fn overdue(&self, now_ms: u64) -> impl Iterator<Item = (&TaskRecord, u64)> + '_ {
        self.deadlines
            .iter()
            .take_while(move |(at, _)| *at <= now_ms)
            .filter_map(|(_, id)| self.record(*id))
            .filter_map(|t| t.timeout_ms().map(|timeout| (t, timeout)))
    }

    /// The task created with idempotency key `key`, if any (possibly removed, key remembered).
    pub fn task_by_key(&self, key: &str) -> Option<TaskId> {
        self.keys.find(key, &self.tasks)
    }

    /// The earliest `not_before_ms` among waiting tasks still held back by time: the leader
    /// proposes a [`Command::Tick`] once its clock passes it.
    pub fn next_wakeup_ms(&self) -> Option<u64> {
        self.timers.first().map(|(t, _)| *t)
    }

    /// Tasks with id greater than `after`, filtered by queue and state, at most `limit`.
    pub fn list(
        &self,
        queue: Option<&str>,
        state: Option<TaskState>,
        after: Option<TaskId>,
        limit: usize,
    ) -> Vec<Task> {
        let start = after.map_or(0, |a| a.0.saturating_add(1));
        self.tasks
            .range_from(TaskId(start))
            .filter_map(Entry::task)
            .filter(|t| queue.is_none_or(|q| &*t.queue == q))
            .filter(|t| state.is_none_or(|s| t.state == s))
            .take(limit)
            .map(TaskRecord::to_task)
            .collect()
    }

    // ------------------------------------------------------------------ apply

    /// Applies every command of a proposal, one response per command.
    pub fn apply_proposal(&mut self, proposal: &Proposal) -> Vec<Response> {
        proposal.commands.iter().map(|c| self.apply(c)).collect()
    }

    /// Applies one command.
    ///
    /// Every command first advances the replicated clock to its `now_ms` (never backwards),
    /// which promotes waiting tasks whose `not_before` has come: time passing is not part of
    /// the command and happens even if the command is then rejected. Apart from that, a
    /// rejected command leaves the state unchanged.
    pub fn apply(&mut self, command: &Command) -> Response {
        let promoted = self.advance_clock(command.now_ms());
        let response = match command {
            Command::Submit {
                now_ms,
                tasks,
                limits,
            } => match self.submit(*now_ms, tasks, limits) {
                Ok((ids, created)) => Response::Submitted { ids, created },
                Err(e) => Response::Rejected(e),
            },
            Command::Cancel { now_ms, task_id } => match self.cancel(*now_ms, *task_id) {
                Ok(previous) => Response::Cancelled {
                    task_id: *task_id,
                    previous,
                },
                Err(e) => Response::Rejected(e),
            },
            Command::Tick { .. } => Response::Ticked { promoted },
            Command::RegisterWorker { now_ms, worker } => self
                .register_worker(*now_ms, worker)
                .unwrap_or_else(Response::Rejected),
            Command::ExpireWorker {
                now_ms,
                worker_id,
                reason,
            } => self
                .expire_worker(*now_ms, worker_id, reason)
                .unwrap_or_else(Response::Rejected),
            Command::Assign {
                now_ms,
                task_id,
                worker_id,
                attempt,
            } => self
                .assign(*now_ms, *task_id, worker_id, *attempt)
                .unwrap_or_else(Response::Rejected),
            Command::Complete {
                now_ms,
                task_id,
                worker_id,
                attempt,
                result,
            } => self
                .complete(*now_ms, *task_id, worker_id, *attempt, result)
                .unwrap_or_else(Response::Rejected),
            Command::Fail {
                now_ms,
                task_id,
                worker_id,
                attempt,
                error,
                retryable,
            } => self
                .fail(*now_ms, *task_id, worker_id, *attempt, error, *retryable)
                .unwrap_or_else(Response::Rejected),
            Command::SaveCheckpoint {
                now_ms,
                task_id,
                worker_id,
                attempt,
                progress_permille,
                data,
            } => self
                .save_checkpoint(
                    *now_ms,
                    *task_id,
                    worker_id,
                    *attempt,
                    *progress_permille,
                    data,
                )
                .unwrap_or_else(Response::Rejected),
            Command::SetQueue {
                queue,
                setting,
                create,
                ..
            } => match self.set_queue(queue, setting, *create) {
                Ok(()) => Response::QueueSet,
                Err(e) => Response::Rejected(e),
            },
            Command::Sweep {
                now_ms,
                retention_ms,
                key_retention_ms,
                max_removals,
            } => self
                .sweep(*now_ms, *retention_ms, *key_retention_ms, *max_removals)
                .unwrap_or_else(Response::Rejected),
            Command::SubmitWorkflow {
                now_ms,
                tasks,
                limits,
            } => self
                .submit_workflow(*now_ms, tasks, limits)
                .unwrap_or_else(Response::Rejected),
            Command::CancelWorkflow { now_ms, workflow } => self
                .cancel_workflow(*now_ms, *workflow)
                .unwrap_or_else(Response::Rejected),
            Command::AddSchedule {
                now_ms,
                schedule,
                next_tick_ms,
            } => self
                .add_schedule(*now_ms, schedule, *next_tick_ms)
                .unwrap_or_else(Response::Rejected),
            Command::PauseSchedule {
                now_ms,
                name,
                paused,
                next_tick_ms,
            } => self
                .pause_schedule(*now_ms, name, *paused, *next_tick_ms)
                .unwrap_or_else(Response::Rejected),
            Command::DeleteSchedule { name, .. } => self
                .delete_schedule(name)
                .unwrap_or_else(Response::Rejected),
            Command::FireSchedule {
                now_ms,
                name,
                tick_ms,
                next_tick_ms,
                missed,
                limits,
            } => self
                .fire_schedule(*now_ms, name, *tick_ms, *next_tick_ms, *missed, limits)
                .unwrap_or_else(Response::Rejected),
        };
        #[cfg(any(debug_assertions, test))]
        if let Err(e) = self.check_invariants() {
            panic!("state invariant broken after {command:?}: {e}");
        }
        response
    }

    /// Moves the clock forward to `now_ms` and promotes the waiting tasks whose time has come;
    /// returns how many became pending.
    fn advance_clock(&mut self, now_ms: u64) -> u32 {
        if now_ms <= self.clock_ms {
            return 0;
        }
        self.clock_ms = now_ms;
        let mut promoted = 0;
        while let Some(&(at, id)) = self.timers.first() {
            if at > self.clock_ms {
                break;
            }
            self.timers.remove(&(at, id));
            if self.record(id).is_some_and(|t| self.is_ready(t)) {
                self.set_state(now_ms, id, TaskState::Pending, |_| {});
                promoted += 1;
            }
        }
        promoted
    }
}

#[cfg(test)]
mod tests;
