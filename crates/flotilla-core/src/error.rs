//! Why a command was rejected. A rejected command changes nothing.

use serde::{Deserialize, Serialize};

use crate::{TaskId, TaskState};

/// A deterministic rejection, part of the replicated response: every replica rejects the same
/// command with the same error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum CommandError {
    /// The input is malformed; `field` names the offending field (e.g. `tasks[3].queue`).
    #[error("invalid {field}: {message}")]
    Invalid { field: String, message: String },
    #[error("task {0} not found")]
    NotFound(TaskId),
    /// The id was allocated, but retention removed the finished task since.
    #[error("task {0} was removed by retention")]
    Removed(TaskId),
    /// A submit would grow the backlog past an admission limit; `limit` names it.
    #[error("{message} ({limit})")]
    LimitExceeded { limit: String, message: String },
    /// A completion, failure or checkpoint of an attempt that is not the current one.
    #[error("task {task_id}: attempt {attempt} is stale (current attempt is {current})")]
    StaleAttempt {
        task_id: TaskId,
        attempt: u32,
        current: u32,
    },
    #[error("worker {0:?} is not registered")]
    UnknownWorker(String),
    #[error("worker {0:?} is already registered by another live process")]
    DuplicateWorker(String),
    #[error("task {task_id} does not fit worker {worker_id:?}: {message}")]
    DoesNotFit {
        task_id: TaskId,
        worker_id: String,
        message: String,
    },
    /// The task is in a state where the command does not apply.
    #[error("task {task_id} is {state}: {message}")]
    WrongState {
        task_id: TaskId,
        state: TaskState,
        message: String,
    },
    /// No workflow has this id (never, or removed with its last task by retention).
    #[error("workflow {0} not found")]
    UnknownWorkflow(TaskId),
    /// No schedule has this name.
    #[error("schedule {0:?} not found")]
    UnknownSchedule(String),
}

impl CommandError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        CommandError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}
