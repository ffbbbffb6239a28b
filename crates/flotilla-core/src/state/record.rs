//! How the state machine keeps a task: a compact [`TaskRecord`], and the [`Tombstone`] a task
//! removed by retention leaves while its idempotency key is still remembered.
//!
//! The record is what a snapshot holds and what a million pending tasks cost in memory, so it
//! keeps inline only what every task has (numbers, queue, payload, key) and boxes the rest:
//! what most tasks never set (labels, dependencies, time constraints) and what only a started
//! task has (worker, result, reason, checkpoint). The public [`Task`] is a view built from it.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::attempts::EndedAttempt;
use crate::{Checkpoint, Resources, Task, TaskId, TaskSpec, TaskState};

/// An interned queue name: every task of a queue shares one allocation.
pub type QueueName = Arc<str>;

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// A task as the state machine stores it. Opaque outside this crate: read it through
/// [`TaskRecord::to_task`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub(crate) id: TaskId,
    pub(crate) state: TaskState,
    /// Assignments so far: the current attempt number, the fencing token.
    pub(crate) attempts: u32,
    pub(crate) submitted_at_ms: u64,
    /// Leader time of the last change; for a finished task, when it finished.
    pub(crate) updated_at_ms: u64,
    pub(crate) queue: QueueName,
    pub(crate) payload: Box<[u8]>,
    pub(crate) key: Option<Box<str>>,
    pub(crate) priority: i32,
    pub(crate) max_attempts: u32,
    pub(crate) resources: Resources,
    pub(crate) estimate_ms: Option<u64>,
    pub(crate) extra: Option<Box<SpecExtra>>,
    pub(crate) run: Option<Box<RunInfo>>,
}

/// The parts of a spec most tasks leave empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SpecExtra {
    pub labels: BTreeMap<String, String>,
    /// Sorted, without duplicates.
    pub depends_on: Vec<TaskId>,
    pub not_before_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    /// (Format 7.)
    pub concurrency_key: Option<Box<str>>,
}

impl SpecExtra {
    fn is_empty(&self) -> bool {
        self.labels.is_empty()
            && self.depends_on.is_empty()
            && self.not_before_ms.is_none()
            && self.timeout_ms.is_none()
            && self.concurrency_key.is_none()
    }
}

/// What only a task that has started (or finished) has.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RunInfo {
    /// The worker running the current attempt (state `running` only).
    pub worker: Option<String>,
    pub started_at_ms: Option<u64>,
    pub result: Option<Vec<u8>>,
    pub reason: Option<String>,
    pub checkpoint: Option<Checkpoint>,
    /// The worker whose completion or failure report was applied last, so that the same
    /// report retried (its reply lost) is recognised as already applied.
    pub reported_by: Option<String>,
    /// Attempts that ended without finishing the task (see `attempts`); `None` when there are
    /// none. Not part of the `Task` record's encoding: an image carries it in `Attempts`
    /// records, so the record keeps its version 2 shape.
    #[serde(skip)]
    pub ended: Option<Box<[EndedAttempt]>>,
}

impl RunInfo {
    fn is_empty(&self) -> bool {
        self.worker.is_none()
            && self.started_at_ms.is_none()
            && self.result.is_none()
            && self.reason.is_none()
            && self.checkpoint.is_none()
            && self.reported_by.is_none()
            && self.ended.is_none()
    }
}

impl TaskRecord {
    /// A new record for `spec` (already validated, dependencies sorted and deduplicated).
    pub(crate) fn new(id: TaskId, spec: &TaskSpec, queue: QueueName, now_ms: u64) -> TaskRecord {
        let extra = SpecExtra {
            labels: spec.labels.clone(),
            depends_on: spec.depends_on.clone(),
            not_before_ms: spec.not_before_ms,
            timeout_ms: spec.timeout_ms,
            concurrency_key: spec.concurrency_key.as_deref().map(Box::from),
        };
        TaskRecord {
            id,
            state: TaskState::Waiting,
            attempts: 0,
            submitted_at_ms: now_ms,
            updated_at_ms: now_ms,
            queue,
            payload: spec.payload.clone().into_boxed_slice(),
            key: spec.idempotency_key.as_deref().map(Box::from),
            priority: spec.priority,
            max_attempts: spec.max_attempts,
            resources: spec.resources,
            estimate_ms: spec.estimate_ms,
            extra: (!extra.is_empty()).then(|| Box::new(extra)),
            run: None,
        }
    }

    pub(crate) fn labels(&self) -> &BTreeMap<String, String> {
        self.extra.as_ref().map_or(&NO_LABELS, |e| &e.labels)
    }

    pub(crate) fn depends_on(&self) -> &[TaskId] {
        self.extra.as_ref().map_or(&[], |e| &e.depends_on)
    }

    pub(crate) fn concurrency_key(&self) -> Option<&str> {
        self.extra
            .as_ref()
            .and_then(|e| e.concurrency_key.as_deref())
    }

    pub(crate) fn not_before_ms(&self) -> Option<u64> {
        self.extra.as_ref().and_then(|e| e.not_before_ms)
    }

    pub(crate) fn timeout_ms(&self) -> Option<u64> {
        self.extra.as_ref().and_then(|e| e.timeout_ms)
    }

    pub(crate) fn worker(&self) -> Option<&str> {
        self.run.as_ref().and_then(|r| r.worker.as_deref())
    }

    pub(crate) fn started_at_ms(&self) -> Option<u64> {
        self.run.as_ref().and_then(|r| r.started_at_ms)
    }

    pub(crate) fn reported_by(&self) -> Option<&str> {
        self.run.as_ref().and_then(|r| r.reported_by.as_deref())
    }

    /// Attempts that ended without finishing the task, oldest first.
    pub(crate) fn ended_attempts(&self) -> &[EndedAttempt] {
        self.run
            .as_ref()
            .and_then(|r| r.ended.as_deref())
            .unwrap_or_default()
    }

    /// Records that the current attempt ended without finishing the task: call while it is
    /// still running (its worker and start are read from the record).
    pub(crate) fn record_ended(&mut self, ended_at_ms: u64, error: &str, retry_at_ms: Option<u64>) {
        let ended = EndedAttempt::new(
            self.attempts,
            self.worker().unwrap_or_default(),
            self.started_at_ms().unwrap_or(ended_at_ms),
            ended_at_ms,
            error,
            retry_at_ms,
        );
        // Rare (a retry): the history is rebuilt rather than kept growable, to keep one
        // two-word field (16 bytes) per started task.
        self.edit_run(|r| {
            let mut history = r.ended.take().map(Vec::from).unwrap_or_default();
            super::attempts::push_ended(&mut history, ended);
            r.ended = Some(history.into_boxed_slice());
        });
    }

    pub(crate) fn reason(&self) -> Option<&str> {
        self.run.as_ref().and_then(|r| r.reason.as_deref())
    }

    pub(crate) fn set_not_before_ms(&mut self, at: Option<u64>) {
        let extra = self.extra.get_or_insert_with(Box::default);
        extra.not_before_ms = at;
        if extra.is_empty() {
            self.extra = None;
        }
    }

    /// Edits the run information, dropping the box again when nothing is left in it.
    pub(crate) fn edit_run(&mut self, edit: impl FnOnce(&mut RunInfo)) {
        let run = self.run.get_or_insert_with(Box::default);
        edit(run);
        if run.is_empty() {
            self.run = None;
        }
    }

    /// The deadline of the current attempt, for a running task with a timeout.
    pub(crate) fn deadline_ms(&self) -> Option<u64> {
        match (self.state, self.timeout_ms(), self.started_at_ms()) {
            (TaskState::Running, Some(t), Some(s)) => Some(s.saturating_add(t)),
            _ => None,
        }
    }

    /// The spec the task was submitted with (with its current `not_before_ms`).
    pub fn spec(&self) -> TaskSpec {
        let extra = self.extra.as_deref();
        TaskSpec {
            queue: self.queue.to_string(),
            payload: self.payload.to_vec(),
            priority: self.priority,
            idempotency_key: self.key.as_deref().map(str::to_string),
            estimate_ms: self.estimate_ms,
            resources: self.resources,
            labels: extra.map(|e| e.labels.clone()).unwrap_or_default(),
            depends_on: extra.map(|e| e.depends_on.clone()).unwrap_or_default(),
            max_attempts: self.max_attempts,
            not_before_ms: extra.and_then(|e| e.not_before_ms),
            timeout_ms: extra.and_then(|e| e.timeout_ms),
            concurrency_key: extra.and_then(|e| e.concurrency_key.as_deref().map(str::to_string)),
        }
    }

    /// The public view of this task.
    pub fn to_task(&self) -> Task {
        let run = self.run.as_deref();
        Task {
            id: self.id,
            spec: self.spec(),
            state: self.state,
            attempts: self.attempts,
            submitted_at_ms: self.submitted_at_ms,
            updated_at_ms: self.updated_at_ms,
            result: run.and_then(|r| r.result.clone()),
            reason: run.and_then(|r| r.reason.clone()),
            worker: run.and_then(|r| r.worker.clone()),
            started_at_ms: run.and_then(|r| r.started_at_ms),
            checkpoint: run.and_then(|r| r.checkpoint.clone()),
        }
    }
}

/// What is left of a finished task after retention removed it, while its idempotency key is
/// still remembered: enough to answer a resubmit with the original id and a status query
/// with the outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    pub(crate) id: TaskId,
    pub(crate) queue: QueueName,
    pub(crate) key: Box<str>,
    pub(crate) state: TaskState,
    pub(crate) attempts: u32,
    pub(crate) submitted_at_ms: u64,
    pub(crate) finished_at_ms: u64,
    /// When the key is forgotten and this tombstone goes.
    pub(crate) expires_at_ms: u64,
    pub(crate) result: Option<Vec<u8>>,
    pub(crate) reason: Option<String>,
}

impl Tombstone {
    /// The task as far as it is still known: its outcome, queue and key; no payload.
    pub fn to_task(&self) -> Task {
        let mut spec = TaskSpec::new(self.queue.to_string(), Vec::new());
        spec.idempotency_key = Some(self.key.to_string());
        Task {
            id: self.id,
            spec,
            state: self.state,
            attempts: self.attempts,
            submitted_at_ms: self.submitted_at_ms,
            updated_at_ms: self.finished_at_ms,
            result: self.result.clone(),
            reason: self.reason.clone(),
            worker: None,
            started_at_ms: None,
            checkpoint: None,
        }
    }

    /// When the remembered key is forgotten.
    pub fn expires_at_ms(&self) -> u64 {
        self.expires_at_ms
    }
}

/// One slot of the task table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    Task(TaskRecord),
    Tombstone(Tombstone),
}

impl Entry {
    pub(crate) fn key(&self) -> Option<&str> {
        match self {
            Entry::Task(t) => t.key.as_deref(),
            Entry::Tombstone(t) => Some(&t.key),
        }
    }

    pub(crate) fn task(&self) -> Option<&TaskRecord> {
        match self {
            Entry::Task(t) => Some(t),
            Entry::Tombstone(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attempt history costs a started task one empty field, not a growable vector; a task
    /// that never started has no run record at all.
    #[test]
    fn the_history_adds_one_two_word_field_to_a_run_record() {
        assert_eq!(std::mem::size_of::<Option<Box<[EndedAttempt]>>>(), 16);
        // 144 bytes before the history; the record itself keeps the run boxed.
        assert!(std::mem::size_of::<RunInfo>() <= 160);
        assert!(std::mem::size_of::<TaskRecord>() <= 128);
    }
}
