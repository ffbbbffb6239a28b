//! Queues: their replicated settings and the command that changes them, and per queue the
//! order of pending tasks, the finished tasks waiting for retention, and counts by state.
//!
//! Each queue keeps its pending tasks sorted by the policy's key, maintained as tasks arrive
//! and leave, so planning reads them in order without sorting. Priority with aging uses a key
//! that does not change with time: a task's effective priority `p + (now - submitted)/aging`
//! ranks it above another exactly when `submitted - p * aging` is smaller, whatever `now` is.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::flow::{Bucket, FlowLimits, RateLimit};
use super::record::{QueueName, TaskRecord};
use super::State;
use crate::{CommandError, QueuePolicy, TaskId};

/// A queue's replicated settings (the defaults for a queue nobody configured).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSettings {
    pub policy: QueuePolicy,
    /// How long finished tasks of this queue are kept; `None`: the cluster default.
    pub retention_ms: Option<u64>,
}

impl QueueSettings {
    pub fn is_default(&self) -> bool {
        *self == QueueSettings::default()
    }
}

/// A change to one queue setting.
///
/// Persisted in the log: variants are only ever appended (an older entry decodes unchanged).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueSetting {
    Policy(QueuePolicy),
    /// `None` goes back to the cluster default.
    RetentionMs(Option<u64>),
    /// Most tasks running at once; `None` removes the limit. (Format 3.)
    MaxRunning(Option<u32>),
    /// Share of free slots against other queues. (Format 3.)
    Weight(u32),
    /// Most tasks started per second; `None` removes the limit. (Format 3.)
    Rate(Option<RateLimit>),
    /// Most tasks sharing a concurrency key running at once; `None` removes the limit.
    /// (Format 7.)
    MaxPerKey(Option<u32>),
}

/// One queue's state and indexes.
#[derive(Debug, Clone)]
pub(crate) struct QueueState {
    pub settings: QueueSettings,
    /// Tasks per state, indexed by `TaskState as usize`.
    pub counts: [u64; 6],
    /// Pending tasks in the policy's order.
    pub pending: BTreeSet<(i64, TaskId)>,
    /// Finished tasks no unfinished task depends on, by the time they finished.
    pub expirable: BTreeSet<(u64, TaskId)>,
    /// Flow-control settings (state proper).
    pub flow: FlowLimits,
    /// The rate limit's bucket: `Some` exactly when `flow.rate` is (state proper).
    pub bucket: Option<Bucket>,
    /// Running tasks per concurrency key (keys with none are absent).
    pub running_keys: BTreeMap<Box<str>, u64>,
}

impl QueueState {
    pub(crate) fn new() -> QueueState {
        QueueState {
            settings: QueueSettings::default(),
            counts: [0; 6],
            pending: BTreeSet::new(),
            expirable: BTreeSet::new(),
            flow: FlowLimits::default(),
            bucket: None,
            running_keys: BTreeMap::new(),
        }
    }

    /// Nothing to keep: no task and default settings.
    pub(crate) fn is_unused(&self) -> bool {
        self.counts.iter().all(|c| *c == 0) && self.settings.is_default() && self.flow.is_default()
    }

    /// Waiting plus pending: the backlog that admission limits bound.
    pub(crate) fn backlog(&self) -> u64 {
        self.counts[crate::TaskState::Waiting.index()]
            + self.counts[crate::TaskState::Pending.index()]
    }
}

/// The sort key of a pending task under `policy`; ties go to the smaller id.
pub(crate) fn order_key(policy: QueuePolicy, t: &TaskRecord) -> i64 {
    match policy {
        QueuePolicy::Fifo => 0,
        QueuePolicy::Priority { aging_ms: 0 } => -i64::from(t.priority),
        QueuePolicy::Priority { aging_ms } => {
            // aging_ms is bounded by Limits::MAX_AGING_MS, so this cannot overflow.
            (t.submitted_at_ms.min(i64::MAX as u64) as i64)
                .saturating_sub(i64::from(t.priority).saturating_mul(aging_ms as i64))
        }
        QueuePolicy::ShortestJobFirst => t
            .estimate_ms
            .map_or(i64::MAX, |e| e.min(i64::MAX as u64 - 1) as i64),
    }
}

impl State {
    /// Applies [`crate::Command::SetQueue`]: checks the setting, then changes it (re-sorting
    /// the pending tasks when the policy changes); a queue must exist unless `create`.
    pub(super) fn set_queue(
        &mut self,
        queue: &str,
        setting: &QueueSetting,
        create: bool,
    ) -> Result<(), CommandError> {
        crate::limits::validate_queue_name("queue", queue)?;
        match setting {
            QueueSetting::Policy(QueuePolicy::Priority { aging_ms })
                if *aging_ms > crate::Limits::MAX_AGING_MS =>
            {
                return Err(CommandError::invalid(
                    "aging_ms",
                    format!("{aging_ms} exceeds limit {}", crate::Limits::MAX_AGING_MS),
                ))
            }
            QueueSetting::RetentionMs(Some(0)) => {
                return Err(CommandError::invalid(
                    "retention_ms",
                    "must be at least 1 ms",
                ))
            }
            QueueSetting::MaxRunning(m) => super::flow::validate_max_running(*m)?,
            QueueSetting::Weight(w) => super::flow::validate_weight(*w)?,
            QueueSetting::Rate(r) => super::flow::validate_rate(*r)?,
            QueueSetting::MaxPerKey(m) => super::flow::validate_max_per_key(*m)?,
            _ => {}
        }
        if !create && !self.queues.contains_key(queue) {
            return Err(CommandError::invalid(
                "queue",
                format!("unknown queue {queue:?}: no task was submitted to it (create it explicitly to configure it first)"),
            ));
        }
        let name = self.intern(queue);
        let q = self.queues.get_mut(&name).expect("interned above");
        match setting {
            QueueSetting::Policy(p) => {
                if q.settings.policy != *p {
                    q.settings.policy = *p;
                    self.reorder_pending(&name);
                }
            }
            QueueSetting::RetentionMs(r) => q.settings.retention_ms = *r,
            QueueSetting::MaxRunning(m) => q.flow.max_running = *m,
            QueueSetting::Weight(w) => q.flow.weight = *w,
            QueueSetting::MaxPerKey(m) => q.flow.max_per_key = *m,
            QueueSetting::Rate(r) => {
                let now = self.clock_ms;
                q.bucket = match (*r, q.flow.rate, q.bucket) {
                    (None, _, _) => None,
                    (Some(new), Some(old), Some(b)) => Some(b.rerated(old, new, now)),
                    (Some(new), _, _) => Some(Bucket::full(new, now)),
                };
                q.flow.rate = *r;
            }
        }
        self.drop_queue_if_unused(&name);
        Ok(())
    }

    /// The shared name of `queue`, creating its entry if needed.
    pub(super) fn intern(&mut self, queue: &str) -> QueueName {
        if let Some((name, _)) = self.queues.get_key_value(queue) {
            return name.clone();
        }
        let name: QueueName = queue.into();
        self.queues.insert(name.clone(), QueueState::new());
        name
    }

    pub(super) fn drop_queue_if_unused(&mut self, queue: &str) {
        if self.queues.get(queue).is_some_and(QueueState::is_unused) {
            self.queues.remove(queue);
        }
    }

    /// Re-sorts a queue's pending tasks after its policy changed.
    fn reorder_pending(&mut self, queue: &str) {
        let Some(q) = self.queues.get(queue) else {
            return;
        };
        let policy = q.settings.policy;
        let ids: Vec<TaskId> = q.pending.iter().map(|(_, id)| *id).collect();
        let pending = ids
            .into_iter()
            .filter_map(|id| self.record(id).map(|t| (order_key(policy, t), id)))
            .collect();
        self.queues.get_mut(queue).expect("checked above").pending = pending;
    }
}
