//! Format version 6 (up to commit e894ec8): the app data of a Raft log entry — [`Proposal`],
//! [`Command`] and everything they hold — as that release encoded it.
//!
//! The release that changes [`crate::TaskSpec`]'s shape (format 7) must still read what
//! format 6 wrote: its log entries, and the AppendEntries a replica of format 6 sends to its
//! peers, which carry entries in this shape. Field order and enum variant order are what
//! bincode relied on; keep them. Never change a frozen type. The snapshot image is not here:
//! its records are versioned on their own (`STATE_IMAGE_VERSION`).
//!
//! The conversions destructure without `..`, so a field added to today's types stops this
//! module compiling until someone decides what a format 6 entry means for it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskId(pub u64);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_millis: u32,
    pub mem_mb: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub queue: String,
    pub payload: Vec<u8>,
    pub priority: i32,
    pub idempotency_key: Option<String>,
    pub estimate_ms: Option<u64>,
    pub resources: Resources,
    pub labels: BTreeMap<String, String>,
    pub depends_on: Vec<TaskId>,
    pub max_attempts: u32,
    pub not_before_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmissionLimits {
    pub max_pending: Option<u64>,
    pub max_pending_per_queue: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub slots: u32,
    pub cpu_millis: u32,
    pub mem_mb: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub id: String,
    pub session: String,
    pub capacity: Capacity,
    pub labels: BTreeMap<String, String>,
    pub queues: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueuePolicy {
    #[default]
    Fifo,
    Priority {
        aging_ms: u64,
    },
    ShortestJobFirst,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    pub per_sec: u32,
    pub burst: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueSetting {
    Policy(QueuePolicy),
    RetentionMs(Option<u64>),
    MaxRunning(Option<u32>),
    Weight(u32),
    Rate(Option<RateLimit>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowTask {
    pub name: String,
    pub spec: TaskSpec,
    pub after: Vec<u32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Overlap {
    #[default]
    Skip,
    Allow,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleSpec {
    pub name: String,
    pub cron: String,
    pub task: TaskSpec,
    pub overlap: Overlap,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Proposal {
    pub commands: Vec<Command>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Submit {
        now_ms: u64,
        tasks: Vec<TaskSpec>,
        limits: AdmissionLimits,
    },
    Cancel {
        now_ms: u64,
        task_id: TaskId,
    },
    Tick {
        now_ms: u64,
    },
    RegisterWorker {
        now_ms: u64,
        worker: WorkerSpec,
    },
    ExpireWorker {
        now_ms: u64,
        worker_id: String,
        reason: String,
    },
    Assign {
        now_ms: u64,
        task_id: TaskId,
        worker_id: String,
        attempt: u32,
    },
    Complete {
        now_ms: u64,
        task_id: TaskId,
        worker_id: String,
        attempt: u32,
        result: Vec<u8>,
    },
    Fail {
        now_ms: u64,
        task_id: TaskId,
        worker_id: String,
        attempt: u32,
        error: String,
        retryable: bool,
    },
    SaveCheckpoint {
        now_ms: u64,
        task_id: TaskId,
        worker_id: String,
        attempt: u32,
        progress_permille: u32,
        data: Vec<u8>,
    },
    SetQueue {
        now_ms: u64,
        queue: String,
        setting: QueueSetting,
        create: bool,
    },
    Sweep {
        now_ms: u64,
        retention_ms: u64,
        key_retention_ms: u64,
        max_removals: u32,
    },
    SubmitWorkflow {
        now_ms: u64,
        tasks: Vec<WorkflowTask>,
        limits: AdmissionLimits,
    },
    CancelWorkflow {
        now_ms: u64,
        workflow: TaskId,
    },
    /// Boxed as today's is (a spec is large); a box encodes as what it holds.
    AddSchedule {
        now_ms: u64,
        schedule: Box<ScheduleSpec>,
        next_tick_ms: Option<u64>,
    },
    PauseSchedule {
        now_ms: u64,
        name: String,
        paused: bool,
        next_tick_ms: Option<u64>,
    },
    DeleteSchedule {
        now_ms: u64,
        name: String,
    },
    FireSchedule {
        now_ms: u64,
        name: String,
        tick_ms: u64,
        next_tick_ms: Option<u64>,
        missed: u32,
        limits: AdmissionLimits,
    },
}

// ------------------------------------------------------------------ conversions

impl From<TaskId> for crate::TaskId {
    fn from(t: TaskId) -> Self {
        let TaskId(id) = t;
        crate::TaskId(id)
    }
}

impl From<Resources> for crate::Resources {
    fn from(r: Resources) -> Self {
        let Resources { cpu_millis, mem_mb } = r;
        crate::Resources { cpu_millis, mem_mb }
    }
}

impl From<TaskSpec> for crate::TaskSpec {
    fn from(s: TaskSpec) -> Self {
        let TaskSpec {
            queue,
            payload,
            priority,
            idempotency_key,
            estimate_ms,
            resources,
            labels,
            depends_on,
            max_attempts,
            not_before_ms,
            timeout_ms,
        } = s;
        crate::TaskSpec {
            queue,
            payload,
            priority,
            idempotency_key,
            estimate_ms,
            resources: resources.into(),
            labels,
            depends_on: depends_on.into_iter().map(Into::into).collect(),
            max_attempts,
            not_before_ms,
            timeout_ms,
            // Format 7: a format 6 task has no key.
            concurrency_key: None,
        }
    }
}

impl From<AdmissionLimits> for crate::AdmissionLimits {
    fn from(l: AdmissionLimits) -> Self {
        let AdmissionLimits {
            max_pending,
            max_pending_per_queue,
        } = l;
        crate::AdmissionLimits {
            max_pending,
            max_pending_per_queue,
        }
    }
}

impl From<Capacity> for crate::Capacity {
    fn from(c: Capacity) -> Self {
        let Capacity {
            slots,
            cpu_millis,
            mem_mb,
        } = c;
        crate::Capacity {
            slots,
            cpu_millis,
            mem_mb,
        }
    }
}

impl From<WorkerSpec> for crate::WorkerSpec {
    fn from(w: WorkerSpec) -> Self {
        let WorkerSpec {
            id,
            session,
            capacity,
            labels,
            queues,
        } = w;
        crate::WorkerSpec {
            id,
            session,
            capacity: capacity.into(),
            labels,
            queues,
        }
    }
}

impl From<QueuePolicy> for crate::QueuePolicy {
    fn from(p: QueuePolicy) -> Self {
        match p {
            QueuePolicy::Fifo => crate::QueuePolicy::Fifo,
            QueuePolicy::Priority { aging_ms } => crate::QueuePolicy::Priority { aging_ms },
            QueuePolicy::ShortestJobFirst => crate::QueuePolicy::ShortestJobFirst,
        }
    }
}

impl From<RateLimit> for crate::RateLimit {
    fn from(r: RateLimit) -> Self {
        let RateLimit { per_sec, burst } = r;
        crate::RateLimit { per_sec, burst }
    }
}

impl From<QueueSetting> for crate::QueueSetting {
    fn from(s: QueueSetting) -> Self {
        use crate::QueueSetting as S;
        match s {
            QueueSetting::Policy(p) => S::Policy(p.into()),
            QueueSetting::RetentionMs(r) => S::RetentionMs(r),
            QueueSetting::MaxRunning(m) => S::MaxRunning(m),
            QueueSetting::Weight(w) => S::Weight(w),
            QueueSetting::Rate(r) => S::Rate(r.map(Into::into)),
        }
    }
}

impl From<WorkflowTask> for crate::WorkflowTask {
    fn from(t: WorkflowTask) -> Self {
        let WorkflowTask { name, spec, after } = t;
        crate::WorkflowTask {
            name,
            spec: spec.into(),
            after,
        }
    }
}

impl From<Overlap> for crate::Overlap {
    fn from(o: Overlap) -> Self {
        match o {
            Overlap::Skip => crate::Overlap::Skip,
            Overlap::Allow => crate::Overlap::Allow,
        }
    }
}

impl From<ScheduleSpec> for crate::ScheduleSpec {
    fn from(s: ScheduleSpec) -> Self {
        let ScheduleSpec {
            name,
            cron,
            task,
            overlap,
        } = s;
        crate::ScheduleSpec {
            name,
            cron,
            task: task.into(),
            overlap: overlap.into(),
        }
    }
}

impl From<Command> for crate::Command {
    fn from(c: Command) -> Self {
        use crate::Command as C;
        match c {
            Command::Submit {
                now_ms,
                tasks,
                limits,
            } => C::Submit {
                now_ms,
                tasks: tasks.into_iter().map(Into::into).collect(),
                limits: limits.into(),
            },
            Command::Cancel { now_ms, task_id } => C::Cancel {
                now_ms,
                task_id: task_id.into(),
            },
            Command::Tick { now_ms } => C::Tick { now_ms },
            Command::RegisterWorker { now_ms, worker } => C::RegisterWorker {
                now_ms,
                worker: worker.into(),
            },
            Command::ExpireWorker {
                now_ms,
                worker_id,
                reason,
            } => C::ExpireWorker {
                now_ms,
                worker_id,
                reason,
            },
            Command::Assign {
                now_ms,
                task_id,
                worker_id,
                attempt,
            } => C::Assign {
                now_ms,
                task_id: task_id.into(),
                worker_id,
                attempt,
            },
            Command::Complete {
                now_ms,
                task_id,
                worker_id,
                attempt,
                result,
            } => C::Complete {
                now_ms,
                task_id: task_id.into(),
                worker_id,
                attempt,
                result,
            },
            Command::Fail {
                now_ms,
                task_id,
                worker_id,
                attempt,
                error,
                retryable,
            } => C::Fail {
                now_ms,
                task_id: task_id.into(),
                worker_id,
                attempt,
                error,
                retryable,
            },
            Command::SaveCheckpoint {
                now_ms,
                task_id,
                worker_id,
                attempt,
                progress_permille,
                data,
            } => C::SaveCheckpoint {
                now_ms,
                task_id: task_id.into(),
                worker_id,
                attempt,
                progress_permille,
                data,
            },
            Command::SetQueue {
                now_ms,
                queue,
                setting,
                create,
            } => C::SetQueue {
                now_ms,
                queue,
                setting: setting.into(),
                create,
            },
            Command::Sweep {
                now_ms,
                retention_ms,
                key_retention_ms,
                max_removals,
            } => C::Sweep {
                now_ms,
                retention_ms,
                key_retention_ms,
                max_removals,
            },
            Command::SubmitWorkflow {
                now_ms,
                tasks,
                limits,
            } => C::SubmitWorkflow {
                now_ms,
                tasks: tasks.into_iter().map(Into::into).collect(),
                limits: limits.into(),
            },
            Command::CancelWorkflow { now_ms, workflow } => C::CancelWorkflow {
                now_ms,
                workflow: workflow.into(),
            },
            Command::AddSchedule {
                now_ms,
                schedule,
                next_tick_ms,
            } => C::AddSchedule {
                now_ms,
                schedule: Box::new((*schedule).into()),
                next_tick_ms,
            },
            Command::PauseSchedule {
                now_ms,
                name,
                paused,
                next_tick_ms,
            } => C::PauseSchedule {
                now_ms,
                name,
                paused,
                next_tick_ms,
            },
            Command::DeleteSchedule { now_ms, name } => C::DeleteSchedule { now_ms, name },
            Command::FireSchedule {
                now_ms,
                name,
                tick_ms,
                next_tick_ms,
                missed,
                limits,
            } => C::FireSchedule {
                now_ms,
                name,
                tick_ms,
                next_tick_ms,
                missed,
                limits: limits.into(),
            },
        }
    }
}

impl From<Proposal> for crate::Proposal {
    fn from(p: Proposal) -> Self {
        let Proposal { commands } = p;
        crate::Proposal {
            commands: commands.into_iter().map(Into::into).collect(),
        }
    }
}
