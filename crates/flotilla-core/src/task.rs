//! Tasks: what a client submits ([`TaskSpec`]) and what the state machine keeps ([`Task`]).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Identifier of a task, assigned by the state machine in log order (1, 2, 3, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TaskId(pub u64);

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Failure reason given to tasks whose parent failed or was cancelled.
pub const REASON_UPSTREAM_FAILED: &str = "upstream_failed";

/// Resource needs of a task (or capacity of a worker).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU in thousandths of a core.
    pub cpu_millis: u32,
    /// Memory in mebibytes.
    pub mem_mb: u32,
}

/// What a client asks to run. Validated by [`crate::validate_spec`] at the edge and again in
/// `apply`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Queue the task belongs to; workers serve queues.
    pub queue: String,
    /// Opaque bytes handed to the worker (for command tasks: an encoded argv).
    pub payload: Vec<u8>,
    /// Higher runs first under the `priority` policy.
    pub priority: i32,
    /// Client-chosen key: a resubmission with the same key returns the original task.
    pub idempotency_key: Option<String>,
    /// Estimated run time, used by the shortest-job-first policy.
    pub estimate_ms: Option<u64>,
    /// What a worker must have free to run the task.
    pub resources: Resources,
    /// Label constraints a worker must match.
    pub labels: BTreeMap<String, String>,
    /// Tasks that must succeed before this one may run. They must already exist.
    pub depends_on: Vec<TaskId>,
    /// How many attempts before the task fails for good (at least 1).
    pub max_attempts: u32,
    /// The task may not start before this time (ms since the Unix epoch).
    pub not_before_ms: Option<u64>,
    /// An attempt running longer than this is failed (and retried if attempts remain).
    pub timeout_ms: Option<u64>,
    /// Tasks of a queue sharing a key run at most the queue's `max_per_key` at once (e.g. one
    /// running task per customer); `None`: no key. (Format 7.)
    pub concurrency_key: Option<String>,
}

impl TaskSpec {
    /// A spec with defaults for everything but the queue and payload.
    pub fn new(queue: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        TaskSpec {
            queue: queue.into(),
            payload: payload.into(),
            priority: 0,
            idempotency_key: None,
            estimate_ms: None,
            resources: Resources::default(),
            labels: BTreeMap::new(),
            depends_on: Vec::new(),
            max_attempts: crate::Limits::DEFAULT_MAX_ATTEMPTS,
            not_before_ms: None,
            timeout_ms: None,
            concurrency_key: None,
        }
    }
}

/// Life cycle of a task.
///
/// ```text
///  waiting ──▶ pending ──▶ running ──▶ succeeded
///     │           │           ├──▶ pending (retry)
///     └───────────┴───────────┴──▶ failed | cancelled
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TaskState {
    /// Dependencies or `not_before` still pending.
    Waiting,
    /// Ready to be assigned to a worker.
    Pending,
    /// Assigned to a worker under an attempt number.
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskState {
    pub const ALL: [TaskState; 6] = [
        TaskState::Waiting,
        TaskState::Pending,
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Cancelled,
    ];

    /// A terminal state never changes again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled
        )
    }

    /// Lowercase name used by the API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Waiting => "waiting",
            TaskState::Pending => "pending",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A task as the state machine keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    pub spec: TaskSpec,
    pub state: TaskState,
    /// Number of assignments so far; the current attempt number (the fencing token).
    pub attempts: u32,
    /// Leader time at which the task was submitted.
    pub submitted_at_ms: u64,
    /// Leader time of the last state change.
    pub updated_at_ms: u64,
    /// Output of the successful attempt.
    pub result: Option<Vec<u8>>,
    /// Why the task failed or was cancelled, or the last attempt's error while it retries.
    pub reason: Option<String>,
    /// The worker running the current attempt (state `running` only).
    pub worker: Option<String>,
    /// Leader time at which the current attempt was assigned.
    pub started_at_ms: Option<u64>,
    /// The latest checkpoint, handed to the next attempt.
    pub checkpoint: Option<Checkpoint>,
}

/// Progress saved by an attempt, so a later attempt can resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The attempt that saved it.
    pub attempt: u32,
    /// Progress in thousandths (0..=1000), for display.
    pub progress_permille: u32,
    pub data: Vec<u8>,
}
