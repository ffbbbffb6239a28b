//! Format version 1 (up to commit 6fc034c): commands and the snapshot image as that release
//! encoded them. Field order and enum variant order are what bincode relied on; keep them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::state::record::{RunInfo, TaskRecord};
use crate::{
    AdmissionLimits, ImageHeader, ImageRecord, QueueSetting, QueueSettings, STATE_IMAGE_VERSION,
};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskState {
    Waiting,
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub attempt: u32,
    pub progress_permille: u32,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    pub spec: TaskSpec,
    pub state: TaskState,
    pub attempts: u32,
    pub submitted_at_ms: u64,
    pub updated_at_ms: u64,
    pub result: Option<Vec<u8>>,
    pub reason: Option<String>,
    pub worker: Option<String>,
    pub started_at_ms: Option<u64>,
    pub checkpoint: Option<Checkpoint>,
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    pub spec: WorkerSpec,
    pub registered_at_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueuePolicy {
    Fifo,
    Priority { aging_ms: u64 },
    ShortestJobFirst,
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
    SetQueuePolicy {
        now_ms: u64,
        queue: String,
        policy: QueuePolicy,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateImage {
    pub version: u32,
    pub next_task_id: u64,
    pub clock_ms: u64,
    pub tasks: Vec<Task>,
    pub workers: Vec<Worker>,
    pub queue_policies: Vec<(String, QueuePolicy)>,
}

// ------------------------------------------------------------------ conversions

impl From<TaskId> for crate::TaskId {
    fn from(t: TaskId) -> Self {
        crate::TaskId(t.0)
    }
}

impl From<Resources> for crate::Resources {
    fn from(r: Resources) -> Self {
        crate::Resources {
            cpu_millis: r.cpu_millis,
            mem_mb: r.mem_mb,
        }
    }
}

impl From<TaskSpec> for crate::TaskSpec {
    fn from(s: TaskSpec) -> Self {
        crate::TaskSpec {
            queue: s.queue,
            payload: s.payload,
            priority: s.priority,
            idempotency_key: s.idempotency_key,
            estimate_ms: s.estimate_ms,
            resources: s.resources.into(),
            labels: s.labels,
            depends_on: s.depends_on.into_iter().map(Into::into).collect(),
            max_attempts: s.max_attempts,
            not_before_ms: s.not_before_ms,
            timeout_ms: s.timeout_ms,
            concurrency_key: None,
        }
    }
}

impl From<TaskState> for crate::TaskState {
    fn from(s: TaskState) -> Self {
        match s {
            TaskState::Waiting => crate::TaskState::Waiting,
            TaskState::Pending => crate::TaskState::Pending,
            TaskState::Running => crate::TaskState::Running,
            TaskState::Succeeded => crate::TaskState::Succeeded,
            TaskState::Failed => crate::TaskState::Failed,
            TaskState::Cancelled => crate::TaskState::Cancelled,
        }
    }
}

impl From<Checkpoint> for crate::Checkpoint {
    fn from(c: Checkpoint) -> Self {
        crate::Checkpoint {
            attempt: c.attempt,
            progress_permille: c.progress_permille,
            data: c.data,
        }
    }
}

impl From<WorkerSpec> for crate::WorkerSpec {
    fn from(w: WorkerSpec) -> Self {
        crate::WorkerSpec {
            id: w.id,
            session: w.session,
            capacity: crate::Capacity {
                slots: w.capacity.slots,
                cpu_millis: w.capacity.cpu_millis,
                mem_mb: w.capacity.mem_mb,
            },
            labels: w.labels,
            queues: w.queues,
        }
    }
}

impl From<Worker> for crate::Worker {
    fn from(w: Worker) -> Self {
        crate::Worker {
            spec: w.spec.into(),
            registered_at_ms: w.registered_at_ms,
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

impl From<Command> for crate::Command {
    fn from(c: Command) -> Self {
        use crate::Command as C;
        match c {
            // Version 1 had no admission limits: replaying it must admit what it admitted.
            Command::Submit { now_ms, tasks } => C::Submit {
                now_ms,
                tasks: tasks.into_iter().map(Into::into).collect(),
                limits: AdmissionLimits::default(),
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
            // Version 1 configured any valid queue name, known or not.
            Command::SetQueuePolicy {
                now_ms,
                queue,
                policy,
            } => C::SetQueue {
                now_ms,
                queue,
                setting: QueueSetting::Policy(policy.into()),
                create: true,
            },
        }
    }
}

impl From<Proposal> for crate::Proposal {
    fn from(p: Proposal) -> Self {
        crate::Proposal {
            commands: p.commands.into_iter().map(Into::into).collect(),
        }
    }
}

impl StateImage {
    /// The image as current records, in the order [`crate::StateBuilder`] takes them.
    pub fn into_records(self) -> Result<Vec<ImageRecord>, String> {
        if self.version != 1 {
            return Err(format!("version 1 image says version {}", self.version));
        }
        let mut records = vec![ImageRecord::Header(ImageHeader {
            version: STATE_IMAGE_VERSION,
            next_task_id: self.next_task_id,
            clock_ms: self.clock_ms,
            queues: self.queue_policies.len() as u64,
            workers: self.workers.len() as u64,
            tasks: self.tasks.len() as u64,
            tombstones: 0,
        })];
        for (name, policy) in self.queue_policies {
            records.push(ImageRecord::Queue {
                name,
                settings: QueueSettings {
                    policy: policy.into(),
                    retention_ms: None,
                },
            });
        }
        records.extend(
            self.workers
                .into_iter()
                .map(|w| ImageRecord::Worker(w.into())),
        );
        for t in self.tasks {
            let spec: crate::TaskSpec = t.spec.into();
            let queue = spec.queue.as_str().into();
            let mut r = TaskRecord::new(t.id.into(), &spec, queue, t.submitted_at_ms);
            r.state = t.state.into();
            r.attempts = t.attempts;
            r.updated_at_ms = t.updated_at_ms;
            let run = RunInfo {
                worker: t.worker,
                started_at_ms: t.started_at_ms,
                result: t.result,
                reason: t.reason,
                checkpoint: t.checkpoint.map(Into::into),
                // Version 1 did not record who reported; a retried report of a task converted
                // from it is refused as before.
                reported_by: None,
                // Nor an attempt history.
                ended: None,
            };
            r.edit_run(|x| *x = run);
            records.push(ImageRecord::Task(r));
        }
        Ok(records)
    }
}
