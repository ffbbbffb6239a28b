//! Commands proposed through Raft and the responses `apply` returns.
//!
//! Versioning: within a format version, variants are append-only — never reorder, remove or
//! change a variant's fields; add a new variant instead. A change of shape is a new format
//! version (`flotilla-store`'s `codec`), with the previous shapes frozen in [`crate::compat`]
//! so that old log entries still decode; golden bytes in the tests pin the encoding.

use serde::{Deserialize, Serialize};

use crate::{
    CommandError, QueueSetting, ScheduleSpec, TaskId, TaskSpec, TaskState, TickOutcome, WorkerSpec,
    WorkflowTask,
};

/// One Raft log entry's payload: the commands of many client requests folded together by the
/// leader's group commit. Each command is applied on its own, all-or-nothing; one rejected
/// command does not affect its neighbours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Proposal {
    pub commands: Vec<Command>,
}

/// A state change, with every nondeterministic input (time) chosen by the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Create a batch of tasks, all or nothing, within the leader's admission limits.
    Submit {
        now_ms: u64,
        tasks: Vec<TaskSpec>,
        limits: AdmissionLimits,
    },
    /// Cancel a waiting, pending or running task; dependents fail as `upstream_failed`.
    Cancel { now_ms: u64, task_id: TaskId },
    /// Advance the replicated clock: waiting tasks whose `not_before` has passed become pending.
    Tick { now_ms: u64 },
    /// A worker joins (or, with the same session, re-joins after a leader change).
    RegisterWorker { now_ms: u64, worker: WorkerSpec },
    /// A worker missed its lease: its tasks go back to pending (or fail when out of attempts).
    ExpireWorker {
        now_ms: u64,
        worker_id: String,
        reason: String,
    },
    /// Start attempt `attempt` (= attempts so far + 1) of a pending task on a worker.
    Assign {
        now_ms: u64,
        task_id: TaskId,
        worker_id: String,
        attempt: u32,
    },
    /// The attempt succeeded. Fenced: only the current attempt on its worker is accepted.
    Complete {
        now_ms: u64,
        task_id: TaskId,
        worker_id: String,
        attempt: u32,
        result: Vec<u8>,
    },
    /// The attempt failed; retried with backoff when `retryable` and attempts remain.
    Fail {
        now_ms: u64,
        task_id: TaskId,
        worker_id: String,
        attempt: u32,
        error: String,
        retryable: bool,
    },
    /// Save progress of the current attempt for the next one.
    SaveCheckpoint {
        now_ms: u64,
        task_id: TaskId,
        worker_id: String,
        attempt: u32,
        progress_permille: u32,
        data: Vec<u8>,
    },
    /// Change one setting of a queue. Refused for a queue nobody submitted to unless `create`.
    SetQueue {
        now_ms: u64,
        queue: String,
        setting: QueueSetting,
        create: bool,
    },
    /// Remove finished tasks older than their queue's retention (default `retention_ms`) and
    /// forget idempotency keys older than `key_retention_ms` (never before their task), at most
    /// `max_removals` of both. Proposed by the leader when something is due.
    Sweep {
        now_ms: u64,
        retention_ms: u64,
        key_retention_ms: u64,
        max_removals: u32,
    },
    /// Create a workflow: its tasks, each running after the earlier ones its `after` names,
    /// all or nothing. (Format 4.)
    SubmitWorkflow {
        now_ms: u64,
        tasks: Vec<WorkflowTask>,
        limits: AdmissionLimits,
    },
    /// Cancel every unfinished task of a workflow. (Format 4.)
    CancelWorkflow { now_ms: u64, workflow: TaskId },
    /// Create a schedule; `next_tick_ms` is its first tick after `now_ms`, computed by the
    /// leader's calendar. Boxed: a spec is large and commands are moved around a lot (the
    /// encoding is the spec's). (Format 5.)
    AddSchedule {
        now_ms: u64,
        schedule: Box<ScheduleSpec>,
        next_tick_ms: Option<u64>,
    },
    /// Pause or resume a schedule; a resumed one next fires at `next_tick_ms`, the leader's
    /// first tick after `now_ms`. (Format 5.)
    PauseSchedule {
        now_ms: u64,
        name: String,
        paused: bool,
        next_tick_ms: Option<u64>,
    },
    /// Delete a schedule (the tasks it created stay). (Format 5.)
    DeleteSchedule { now_ms: u64, name: String },
    /// Fire tick `tick_ms` of a schedule: refused unless it is at or after the schedule's next
    /// tick, so each tick fires at most once; the schedule then waits for `next_tick_ms`.
    /// `missed` ticks between were passed over (the catch-up rule). (Format 5.)
    FireSchedule {
        now_ms: u64,
        name: String,
        tick_ms: u64,
        next_tick_ms: Option<u64>,
        missed: u32,
        limits: AdmissionLimits,
    },
}

/// Caps on the backlog a submit may grow to, stamped into the command by the leader from its
/// configuration; `None`: no cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmissionLimits {
    /// Waiting plus pending tasks in the whole cluster.
    pub max_pending: Option<u64>,
    /// Waiting plus pending tasks in one queue.
    pub max_pending_per_queue: Option<u64>,
}

impl Command {
    /// The leader's time stamped into the command.
    pub fn now_ms(&self) -> u64 {
        match self {
            Command::Submit { now_ms, .. }
            | Command::Cancel { now_ms, .. }
            | Command::Tick { now_ms }
            | Command::RegisterWorker { now_ms, .. }
            | Command::ExpireWorker { now_ms, .. }
            | Command::Assign { now_ms, .. }
            | Command::Complete { now_ms, .. }
            | Command::Fail { now_ms, .. }
            | Command::SaveCheckpoint { now_ms, .. }
            | Command::SetQueue { now_ms, .. }
            | Command::Sweep { now_ms, .. }
            | Command::SubmitWorkflow { now_ms, .. }
            | Command::CancelWorkflow { now_ms, .. }
            | Command::AddSchedule { now_ms, .. }
            | Command::PauseSchedule { now_ms, .. }
            | Command::DeleteSchedule { now_ms, .. }
            | Command::FireSchedule { now_ms, .. } => *now_ms,
        }
    }

    /// A submit without admission limits.
    pub fn submit(now_ms: u64, tasks: Vec<TaskSpec>) -> Command {
        Command::Submit {
            now_ms,
            tasks,
            limits: AdmissionLimits::default(),
        }
    }
}

/// The result of applying one [`Command`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// One id per submitted spec, in order; `created[i]` is false when the id came from an
    /// earlier task with the same idempotency key.
    Submitted {
        ids: Vec<TaskId>,
        created: Vec<bool>,
    },
    Cancelled {
        task_id: TaskId,
        previous: TaskState,
    },
    Ticked {
        promoted: u32,
    },
    /// `resumed` when the same session registered again (e.g. with a new leader).
    WorkerRegistered {
        worker_id: String,
        resumed: bool,
    },
    /// Tasks of the expired worker that went back to pending, and those that failed for good.
    WorkerExpired {
        worker_id: String,
        requeued: Vec<TaskId>,
        failed: Vec<TaskId>,
    },
    Assigned {
        task_id: TaskId,
        attempt: u32,
    },
    Completed {
        task_id: TaskId,
    },
    /// `retry_at_ms` is when the next attempt may start, or None if the task failed for good.
    AttemptFailed {
        task_id: TaskId,
        retry_at_ms: Option<u64>,
    },
    CheckpointSaved {
        task_id: TaskId,
    },
    QueueSet,
    /// Finished tasks removed (`tombstoned` of them leave a tombstone for their key) and
    /// idempotency keys forgotten.
    Swept {
        removed: u32,
        tombstoned: u32,
        forgotten: u32,
    },
    Rejected(CommandError),
    /// The workflow (the id of its first task) and one id per task of the command, in its
    /// order; `created` as for [`Response::Submitted`] (all false for a retried workflow).
    WorkflowSubmitted {
        workflow: TaskId,
        ids: Vec<TaskId>,
        created: Vec<bool>,
    },
    /// The tasks cancelled, children first, with the state each was in.
    WorkflowCancelled {
        workflow: TaskId,
        cancelled: Vec<(TaskId, TaskState)>,
    },
    /// A schedule was added, paused, resumed or deleted.
    ScheduleSet {
        name: String,
    },
    /// A schedule's tick fired: the task it created, or why none.
    ScheduleFired {
        name: String,
        tick_ms: u64,
        outcome: TickOutcome,
    },
}
