//! Flow control of a queue, enforced by the replicated state: the most tasks it runs at once
//! (`max_running`), the most tasks sharing a concurrency key it runs at once (`max_per_key`, e.g.
//! one per customer), how many it starts per second (a token bucket on the replicated clock),
//! and its weight in sharing free slots with other queues.
//!
//! `plan` respects these limits ([`State::flow_room`]) and `apply` re-checks them on every
//! `Assign` (`check_start`, then `record_start` takes a token), so a stale or wrong plan becomes a rejected command,
//! never a queue over its limit. The bucket refills from the replicated clock (`clock_ms`,
//! the largest `now_ms` applied), so every replica computes the same level and a leader change
//! neither resets nor refills it.
//!
//! ```text
//!  bucket level at t = min(burst, level at `at_ms` + (t - at_ms) * per_sec / 1000)   (in starts)
//!  an Assign needs one whole start and takes it
//! ```
//!
//! Over any window of `w` ms a queue therefore starts at most `burst + w * per_sec / 1000`
//! tasks.

use serde::{Deserialize, Serialize};

use super::State;
use crate::{CommandError, TaskState};

/// Largest `max_running` accepted.
pub const MAX_RUNNING_LIMIT: u32 = 1_000_000;
/// Largest queue weight accepted.
pub const MAX_WEIGHT: u32 = 1_000;
/// Largest rate (tasks started per second) and burst accepted.
pub const MAX_RATE: u32 = 1_000_000;

/// A rate limit: at most `per_sec` starts per second on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    pub per_sec: u32,
    pub burst: u32,
}

/// A queue's flow-control settings (replicated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowLimits {
    /// Most tasks of the queue running at once; `None`: no limit.
    pub max_running: Option<u32>,
    /// Its share of free slots against other queues with pending tasks (at least 1).
    pub weight: u32,
    /// Most tasks started per second; `None`: no limit.
    pub rate: Option<RateLimit>,
    /// Most tasks sharing a concurrency key running at once; `None`: no limit. (Format 7.)
    pub max_per_key: Option<u32>,
}

impl Default for FlowLimits {
    fn default() -> Self {
        FlowLimits {
            max_running: None,
            weight: 1,
            rate: None,
            max_per_key: None,
        }
    }
}

impl FlowLimits {
    pub fn is_default(&self) -> bool {
        *self == FlowLimits::default()
    }
}

/// In one short cell, as the CLI and the dashboard show it: "max 3, w 2, 5/s burst 10", or
/// "-" for none.
impl std::fmt::Display for FlowLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(m) = self.max_running {
            parts.push(format!("max {m}"));
        }
        if self.weight != 1 {
            parts.push(format!("w {}", self.weight));
        }
        if let Some(r) = self.rate {
            parts.push(format!("{}/s burst {}", r.per_sec, r.burst));
        }
        if let Some(k) = self.max_per_key {
            parts.push(format!("{k} per key"));
        }
        if parts.is_empty() {
            f.write_str("-")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// A rate-limited queue's token bucket, in thousandths of a start, as of `at_ms` on the
/// replicated clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub milli: u64,
    pub at_ms: u64,
}

impl Bucket {
    /// A full bucket at `at_ms`.
    pub fn full(rate: RateLimit, at_ms: u64) -> Bucket {
        Bucket {
            milli: u64::from(rate.burst) * 1000,
            at_ms,
        }
    }

    /// The level (thousandths of a start) at `now_ms`; never above the burst.
    pub fn level(&self, rate: RateLimit, now_ms: u64) -> u64 {
        let refill = now_ms
            .saturating_sub(self.at_ms)
            .saturating_mul(u64::from(rate.per_sec));
        self.milli
            .saturating_add(refill)
            .min(u64::from(rate.burst) * 1000)
    }

    /// Whole starts available at `now_ms`.
    pub fn starts(&self, rate: RateLimit, now_ms: u64) -> u64 {
        self.level(rate, now_ms) / 1000
    }

    /// The bucket after one start at `now_ms` (which must be available).
    fn take(&self, rate: RateLimit, now_ms: u64) -> Bucket {
        Bucket {
            milli: self.level(rate, now_ms) - 1000,
            at_ms: self.at_ms.max(now_ms),
        }
    }

    /// The bucket under a new rate: what it held, up to the new burst.
    pub(super) fn rerated(&self, old: RateLimit, new: RateLimit, now_ms: u64) -> Bucket {
        Bucket {
            milli: self.level(old, now_ms).min(u64::from(new.burst) * 1000),
            at_ms: self.at_ms.max(now_ms),
        }
    }
}

/// Checks a limit before it is set: zero and absurd values are refused naming the field.
pub fn validate_max_running(max_running: Option<u32>) -> Result<(), CommandError> {
    match max_running {
        Some(0) => Err(CommandError::invalid(
            "max_running",
            "must be at least 1 (remove the limit instead of setting 0)",
        )),
        Some(n) if n > MAX_RUNNING_LIMIT => Err(CommandError::invalid(
            "max_running",
            format!("{n} exceeds limit {MAX_RUNNING_LIMIT}"),
        )),
        _ => Ok(()),
    }
}

pub fn validate_max_per_key(max_per_key: Option<u32>) -> Result<(), CommandError> {
    match max_per_key {
        Some(0) => Err(CommandError::invalid(
            "max_per_key",
            "must be at least 1 (remove the limit instead of setting 0)",
        )),
        Some(n) if n > MAX_RUNNING_LIMIT => Err(CommandError::invalid(
            "max_per_key",
            format!("{n} exceeds limit {MAX_RUNNING_LIMIT}"),
        )),
        _ => Ok(()),
    }
}

pub fn validate_weight(weight: u32) -> Result<(), CommandError> {
    match weight {
        0 => Err(CommandError::invalid("weight", "must be at least 1")),
        w if w > MAX_WEIGHT => Err(CommandError::invalid(
            "weight",
            format!("{w} exceeds limit {MAX_WEIGHT}"),
        )),
        _ => Ok(()),
    }
}

pub fn validate_rate(rate: Option<RateLimit>) -> Result<(), CommandError> {
    let Some(r) = rate else { return Ok(()) };
    for (field, v) in [("rate.per_sec", r.per_sec), ("rate.burst", r.burst)] {
        if v == 0 {
            return Err(CommandError::invalid(
                field,
                "must be at least 1 (remove the limit instead of setting 0)",
            ));
        }
        if v > MAX_RATE {
            return Err(CommandError::invalid(
                field,
                format!("{v} exceeds limit {MAX_RATE}"),
            ));
        }
    }
    Ok(())
}

impl State {
    /// A queue's flow-control settings and its bucket (defaults for an unknown queue).
    pub fn queue_flow(&self, queue: &str) -> (FlowLimits, Option<Bucket>) {
        self.queues
            .get(queue)
            .map(|q| (q.flow, q.bucket))
            .unwrap_or_default()
    }

    /// Queues with flow-control settings, by name.
    pub fn flows(&self) -> impl Iterator<Item = (&str, FlowLimits, Option<Bucket>)> + '_ {
        self.queues
            .iter()
            .filter(|(_, q)| !q.flow.is_default())
            .map(|(n, q)| (&**n, q.flow, q.bucket))
    }

    /// How many more tasks of `queue` may start at `now_ms` under its limits (`u64::MAX`:
    /// unlimited). The planner's view; `apply` checks each start with [`State::admit_start`].
    pub fn flow_room(&self, queue: &str, now_ms: u64) -> u64 {
        let Some(q) = self.queues.get(queue) else {
            return u64::MAX;
        };
        let running = q.counts[TaskState::Running.index()];
        let by_running = q
            .flow
            .max_running
            .map_or(u64::MAX, |m| u64::from(m).saturating_sub(running));
        let by_rate = match (q.flow.rate, q.bucket) {
            (Some(rate), Some(b)) => b.starts(rate, now_ms.max(self.clock_ms)),
            _ => u64::MAX,
        };
        by_running.min(by_rate)
    }

    /// How many more tasks of `queue` with concurrency key `key` may run now under the
    /// queue's `max_per_key` (`u64::MAX`: no key or no limit). The planner's view of one task.
    pub fn key_room(&self, queue: &str, key: Option<&str>) -> u64 {
        let (Some(q), Some(key)) = (self.queues.get(queue), key) else {
            return u64::MAX;
        };
        let Some(max) = q.flow.max_per_key else {
            return u64::MAX;
        };
        u64::from(max).saturating_sub(self.running_with_key(queue, key))
    }

    /// Running tasks of `queue` with concurrency key `key`.
    pub fn running_with_key(&self, queue: &str, key: &str) -> u64 {
        self.queues
            .get(queue)
            .and_then(|q| q.running_keys.get(key).copied())
            .unwrap_or(0)
    }

    /// Refuses a start of a task of `queue` (with concurrency key `key`) that its limits do
    /// not allow now (the replicated clock); changes nothing.
    pub(super) fn check_start(&self, queue: &str, key: Option<&str>) -> Result<(), CommandError> {
        let Some(q) = self.queues.get(queue) else {
            return Ok(());
        };
        if let (Some(max), Some(key)) = (q.flow.max_per_key, key) {
            let running = q.running_keys.get(key).copied().unwrap_or(0);
            if running >= u64::from(max) {
                return Err(CommandError::LimitExceeded {
                    limit: "max_per_key".into(),
                    message: format!(
                        "queue {queue:?} runs {running} tasks with concurrency key {key:?}, its limit"
                    ),
                });
            }
        }
        let running = q.counts[TaskState::Running.index()];
        if let Some(max) = q.flow.max_running {
            if running >= u64::from(max) {
                return Err(CommandError::LimitExceeded {
                    limit: "max_running".into(),
                    message: format!("queue {queue:?} runs {running} tasks, its limit"),
                });
            }
        }
        if let (Some(rate), Some(b)) = (q.flow.rate, q.bucket) {
            if b.starts(rate, self.clock_ms) == 0 {
                return Err(CommandError::LimitExceeded {
                    limit: "rate".into(),
                    message: format!(
                        "queue {queue:?} started its {} tasks/s (burst {})",
                        rate.per_sec, rate.burst
                    ),
                });
            }
        }
        Ok(())
    }

    /// Records a start of a task of `queue` (after [`State::check_start`] allowed it).
    pub(super) fn record_start(&mut self, queue: &str) {
        let now = self.clock_ms;
        if let Some(q) = self.queues.get_mut(queue) {
            if let (Some(rate), Some(b)) = (q.flow.rate, q.bucket) {
                q.bucket = Some(b.take(rate, now));
            }
        }
    }
}
