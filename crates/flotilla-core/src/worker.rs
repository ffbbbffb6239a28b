//! Workers as the state machine knows them, and per-queue scheduling policies.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{CommandError, Limits, Resources};

/// What a worker offers: task slots plus CPU and memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub slots: u32,
    pub cpu_millis: u32,
    pub mem_mb: u32,
}

/// A worker's registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub id: String,
    /// Identifies one run of the worker process; a second live process with the same id (a
    /// different session) is refused.
    pub session: String,
    pub capacity: Capacity,
    pub labels: BTreeMap<String, String>,
    /// Queues served; empty means every queue.
    pub queues: Vec<String>,
}

impl WorkerSpec {
    pub fn serves(&self, queue: &str) -> bool {
        self.queues.is_empty() || self.queues.iter().any(|q| q == queue)
    }

    /// Whether a task's label constraints hold on this worker.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        labels.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }

    /// Whether a task needing `needs` could ever run here (on an idle worker).
    pub fn could_fit(&self, needs: &Resources) -> bool {
        self.capacity.slots >= 1
            && needs.cpu_millis <= self.capacity.cpu_millis
            && needs.mem_mb <= self.capacity.mem_mb
    }

    pub fn validate(&self) -> Result<(), CommandError> {
        if self.id.is_empty() || self.id.len() > Limits::MAX_WORKER_ID_LEN {
            return Err(CommandError::invalid(
                "worker.id",
                format!("must be 1..={} bytes", Limits::MAX_WORKER_ID_LEN),
            ));
        }
        if self.capacity.slots == 0 {
            return Err(CommandError::invalid(
                "worker.capacity.slots",
                "must be at least 1",
            ));
        }
        if self.capacity.slots > Limits::MAX_WORKER_SLOTS {
            return Err(CommandError::invalid(
                "worker.capacity.slots",
                format!("exceeds limit {}", Limits::MAX_WORKER_SLOTS),
            ));
        }
        if self.labels.len() > Limits::MAX_LABELS {
            return Err(CommandError::invalid("worker.labels", "too many labels"));
        }
        Ok(())
    }
}

/// A registered worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    pub spec: WorkerSpec,
    pub registered_at_ms: u64,
}

/// How a queue orders its pending tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum QueuePolicy {
    /// Submission order.
    #[default]
    Fifo,
    /// Higher priority first, FIFO among equals. With `aging_ms > 0` a task gains one priority
    /// point per `aging_ms` waited, so low priorities are never starved forever.
    Priority { aging_ms: u64 },
    /// Shortest estimated duration first; tasks without an estimate last; FIFO among equals.
    ShortestJobFirst,
}
