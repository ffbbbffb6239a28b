//! Commands proposed through Raft and the responses `apply` returns.
//!
//! Versioning: variants are append-only. Never reorder, remove or change a variant's fields;
//! add a new variant instead. The log entry format in `flotilla-store` carries a version byte.

use serde::{Deserialize, Serialize};

use crate::{CommandError, TaskId, TaskSpec, TaskState};

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
    /// Create a batch of tasks, all or nothing.
    Submit { now_ms: u64, tasks: Vec<TaskSpec> },
    /// Cancel a waiting, pending or running task; dependents fail as `upstream_failed`.
    Cancel { now_ms: u64, task_id: TaskId },
    /// Advance the replicated clock: waiting tasks whose `not_before` has passed become pending.
    Tick { now_ms: u64 },
}

impl Command {
    /// The leader's time stamped into the command.
    pub fn now_ms(&self) -> u64 {
        match self {
            Command::Submit { now_ms, .. }
            | Command::Cancel { now_ms, .. }
            | Command::Tick { now_ms } => *now_ms,
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
    Rejected(CommandError),
}
