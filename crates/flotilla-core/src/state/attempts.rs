//! The attempt history of a task: its attempts that ended without finishing it (the worker
//! reported a retryable failure, the attempt timed out, or its worker was lost) and how the
//! task went on — what `flotilla why` tells about the past.
//!
//! `apply` records an ended attempt when it puts a running task back to waiting (a retry after
//! its backoff) or to pending (its worker lost), so every replica keeps the same history and a
//! new leader tells the same story. The attempt that ends a task for good is not repeated
//! here: the task's own fields (`reason`, `result`, `reported_by`) already describe it.
//!
//! Bounded per task: the latest [`MAX_ENDED_ATTEMPTS`] attempts, each error cut to
//! [`MAX_HISTORY_ERROR_CHARS`] characters; earlier ones are dropped (the attempt numbers show
//! the gap). A task that never retried keeps nothing, so the history costs nothing for it.
//!
//! The history lives in the task's run information (copy-on-write with the task table, so a
//! snapshot view costs nothing more) and a snapshot image carries it as `Attempts` records
//! after the other records (image version 6), which keeps the `Task` record's shape as it was.

use serde::{Deserialize, Serialize};

use super::record::Entry;
use super::State;
use crate::TaskId;

/// Ended attempts kept per task (the latest ones).
pub const MAX_ENDED_ATTEMPTS: usize = 8;
/// Characters of an ended attempt's error kept in the history (the task's `reason` keeps the
/// last error whole).
pub const MAX_HISTORY_ERROR_CHARS: usize = 256;

/// An attempt that ended without finishing its task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndedAttempt {
    /// The attempt number (the fencing token it ran under).
    pub attempt: u32,
    /// The worker it ran on.
    pub worker: String,
    /// Leader time it was assigned.
    pub started_at_ms: u64,
    /// Leader time it ended.
    pub ended_at_ms: u64,
    /// Why it ended: the worker's error, the timeout, or the worker's loss (cut to
    /// [`MAX_HISTORY_ERROR_CHARS`]).
    pub error: String,
    /// When the next attempt could start at the earliest (the retry backoff); `None`: at once
    /// (the worker was lost).
    pub retry_at_ms: Option<u64>,
}

impl EndedAttempt {
    /// The record of an attempt that ended; the error is cut to the history's bound.
    pub(crate) fn new(
        attempt: u32,
        worker: &str,
        started_at_ms: u64,
        ended_at_ms: u64,
        error: &str,
        retry_at_ms: Option<u64>,
    ) -> EndedAttempt {
        EndedAttempt {
            attempt,
            worker: worker.to_string(),
            started_at_ms,
            ended_at_ms,
            error: error.chars().take(MAX_HISTORY_ERROR_CHARS).collect(),
            retry_at_ms,
        }
    }
}

/// Appends `ended` to `history`, dropping the oldest beyond the bound.
pub(crate) fn push_ended(history: &mut Vec<EndedAttempt>, ended: EndedAttempt) {
    if history.len() == MAX_ENDED_ATTEMPTS {
        history.remove(0);
    }
    history.push(ended);
}

/// Checks one task's history against the bounds and its attempt count: attempts in strictly
/// increasing order, none after the task's current one, and — while an attempt runs — none
/// for the running attempt.
pub(crate) fn check_history(
    history: &[EndedAttempt],
    attempts: u32,
    running: bool,
) -> Result<(), String> {
    if history.len() > MAX_ENDED_ATTEMPTS {
        return Err(format!(
            "{} ended attempts kept, the bound is {MAX_ENDED_ATTEMPTS}",
            history.len()
        ));
    }
    let mut last = 0;
    for e in history {
        if e.attempt <= last {
            return Err(format!("ended attempt {} out of order", e.attempt));
        }
        last = e.attempt;
        if e.error.chars().count() > MAX_HISTORY_ERROR_CHARS {
            return Err(format!(
                "ended attempt {} keeps too long an error",
                e.attempt
            ));
        }
        if e.ended_at_ms < e.started_at_ms {
            return Err(format!(
                "ended attempt {} ended before it started",
                e.attempt
            ));
        }
    }
    let newest_allowed = if running {
        attempts.saturating_sub(1)
    } else {
        attempts
    };
    if last > newest_allowed {
        return Err(format!(
            "ended attempt {last} recorded, the task is at attempt {attempts} (running: {running})"
        ));
    }
    Ok(())
}

impl State {
    /// The attempts of task `id` that ended without finishing it, oldest first (empty for an
    /// unknown or removed task).
    pub fn ended_attempts(&self, id: TaskId) -> &[EndedAttempt] {
        self.record(id).map_or(&[], |t| t.ended_attempts())
    }

    /// Attaches an image's `Attempts` record to its task (snapshot loading).
    pub(super) fn restore_attempts(
        &mut self,
        id: TaskId,
        history: Vec<EndedAttempt>,
    ) -> Result<(), String> {
        let Some(Entry::Task(t)) = self.tasks.get_mut(id) else {
            return Err(format!(
                "attempts record for task {id}, which the image lacks"
            ));
        };
        if history.is_empty() {
            return Err(format!("empty attempts record for task {id}"));
        }
        check_history(&history, t.attempts, t.state == crate::TaskState::Running)
            .map_err(|e| format!("task {id}: {e}"))?;
        t.edit_run(|r| r.ended = Some(history.into_boxed_slice()));
        Ok(())
    }
}
