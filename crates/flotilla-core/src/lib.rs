//! Flotilla's deterministic core.
//!
//! This crate owns the domain model of the scheduler — tasks, their states, the commands that
//! change them — and [`State::apply`], the replicated state machine's transition function.
//!
//! It must not depend on tokio, the clock, randomness or any I/O: every replica applies the same
//! log to the same state and must reach byte-identical results. Time enters only as a value
//! (`now_ms`) inside a [`Command`] that the leader stamped before proposing it. Maps are
//! `BTreeMap`s so that iteration order, which reaches outputs, is deterministic.
//!
//! ```text
//!   client ──TaskSpec──▶ leader stamps now_ms ──Command──▶ Raft log ──▶ State::apply ──▶ Response
//! ```

mod command;
pub mod compat;
mod error;
pub mod leader;
mod limits;
#[cfg(test)]
mod reached;
pub mod schedule;
mod scheduler;
pub mod simulate;
mod state;
mod task;
mod worker;
pub mod workflow;

pub use command::{AdmissionLimits, Command, Proposal, Response};
pub use error::CommandError;
pub use limits::{batch_bytes, validate_spec, Limits};
pub use schedule::{Calendar, Overlap, Schedule, ScheduleSpec, TickOutcome};
pub use scheduler::why::{why, why_id, WhyLine};
pub use scheduler::{plan, queue_order, unplaceable_reason, Placement, PlanConfig};
pub use state::{
    validate_max_per_key, validate_max_running, validate_rate, validate_weight, Bucket,
    EndedAttempt, FlowLimits, ImageHeader, ImageRecord, ImageRecordRef, Lookup, QueueSetting,
    QueueSettings, RateLimit, State, StateBuilder, StateView, TaskRecord, Tombstone,
    MAX_ENDED_ATTEMPTS, MAX_HISTORY_ERROR_CHARS, MAX_RATE, MAX_RUNNING_LIMIT, MAX_WEIGHT,
    STATE_IMAGE_VERSION,
};

pub use task::{Checkpoint, Resources, Task, TaskId, TaskSpec, TaskState, REASON_UPSTREAM_FAILED};
pub use worker::{Capacity, QueuePolicy, Worker, WorkerSpec};
pub use workflow::{NamedTask, Workflow, WorkflowMember, WorkflowTask};
