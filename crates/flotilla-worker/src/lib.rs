//! The Flotilla worker runtime.
//!
//! A worker registers with the leader (capacity, labels, queues), holds the assignment stream,
//! runs each assigned attempt with a [`Handler`], reports the outcome fenced by its attempt
//! number, and heartbeats its running attempts so the leader can tell it what to stop. After a
//! leader change it re-registers with the same session and keeps running what it runs.
//!
//! ```text
//!  register ─▶ stream: Assign ─▶ handler(ctx) ─▶ outbox ─▶ ReportOutcomes (batched, each
//!                                                            outcome attempt-fenced)
//!      ▲         heartbeat every interval: running attempts ─▶ attempts to cancel
//!      └── stream closed / leader changed / lease lost: register again
//!  shutdown ─▶ drain: heartbeats say `draining` (nothing new), running attempts finish until
//!              the drain timeout, the rest is failed as retryable ─▶ Leave ─▶ return
//! ```
//!
//! [`CommandHandler`] runs command tasks (`flotilla submit -- CMD ARGS`); a Rust program can
//! serve a queue with its own async closure instead (see `examples/`). An attempt of a task
//! with dependencies gets its parents' results in [`TaskContext::inputs`] (command tasks: as
//! files; see `attempt_files`).

mod attempt_files;
mod command;
mod outbox;
mod runtime;

pub use command::{CommandHandler, CommandPayload, DEFAULT_CHECKPOINT_EVERY};
pub use flotilla_client::Outcome;
pub use runtime::{run, Handler, TaskContext, WorkerConfig, WorkerError, DEFAULT_DRAIN_TIMEOUT};
