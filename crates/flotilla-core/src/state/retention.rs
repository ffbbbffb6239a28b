//! Retention: finished tasks are removed a while after they finished, by a replicated
//! [`crate::Command::Sweep`] that the leader proposes when something is due, so every replica
//! removes the same tasks at the same log index.
//!
//! A finished task stays while an unfinished task depends on it (`held`): the dependent may
//! still need its state to become ready, and its result as input. A removed task whose
//! idempotency key must be remembered longer (`key_retention_ms` beyond the task's retention)
//! leaves a [`Tombstone`] until then: a resubmit with the key still gets the original id, a
//! status query the outcome.

use super::record::{Entry, TaskRecord, Tombstone};
use super::State;
use crate::{CommandError, Response, TaskId};

impl State {
    /// Unfinished `t` holds its parents.
    pub(super) fn take_holds(&mut self, t: &TaskRecord) {
        for d in t.depends_on() {
            let n = self.held.entry(*d).or_insert(0);
            *n += 1;
            if *n == 1 {
                // The parent may already be finished and waiting for retention.
                if let Some((queue, key)) = self.expiry_key(*d) {
                    if let Some(q) = self.queues.get_mut(&*queue) {
                        q.expirable.remove(&key);
                    }
                }
            }
        }
    }

    /// Finished `t` lets go of its parents; a finished parent nobody holds becomes removable.
    pub(super) fn release_holds(&mut self, t: &TaskRecord) {
        for d in t.depends_on() {
            let Some(n) = self.held.get_mut(d) else {
                continue;
            };
            *n -= 1;
            if *n > 0 {
                continue;
            }
            self.held.remove(d);
            if let Some((queue, key)) = self.expiry_key(*d) {
                if let Some(q) = self.queues.get_mut(&*queue) {
                    q.expirable.insert(key);
                }
            }
        }
    }

    /// The queue and retention index key of finished task `id`.
    fn expiry_key(&self, id: TaskId) -> Option<(super::record::QueueName, (u64, TaskId))> {
        self.record(id)
            .filter(|p| p.state.is_terminal())
            .map(|p| (p.queue.clone(), (p.updated_at_ms, p.id)))
    }

    /// When the next sweep has something to do under these retention settings.
    pub fn next_sweep_ms(&self, retention_ms: u64, key_retention_ms: u64) -> Option<u64> {
        let _ = key_retention_ms; // tombstones carry their own expiry
        let tasks = self
            .queues
            .values()
            .filter_map(|q| {
                let retention = q.settings.retention_ms.unwrap_or(retention_ms);
                q.expirable
                    .first()
                    .map(|(finished, _)| finished.saturating_add(retention))
            })
            .min();
        let keys = self.tombstones.first().map(|(at, _)| *at);
        tasks.into_iter().chain(keys).min()
    }

    /// Removes finished tasks whose retention passed and forgets keys whose window passed, at
    /// most `max_removals` of both together; oldest first within each queue.
    pub(super) fn sweep(
        &mut self,
        now_ms: u64,
        retention_ms: u64,
        key_retention_ms: u64,
        max_removals: u32,
    ) -> Result<Response, CommandError> {
        if retention_ms == 0 {
            return Err(CommandError::invalid(
                "retention_ms",
                "must be at least 1 ms",
            ));
        }
        if max_removals == 0 {
            return Err(CommandError::invalid("max_removals", "must be at least 1"));
        }
        let mut budget = max_removals;
        let (mut removed, mut tombstoned, mut forgotten) = (0u32, 0u32, 0u32);

        let mut due: Vec<(TaskId, u64)> = Vec::new();
        for q in self.queues.values() {
            let retention = q.settings.retention_ms.unwrap_or(retention_ms);
            // Keys are remembered at least as long as their task.
            let key_retention = key_retention_ms.max(retention);
            for (finished, id) in &q.expirable {
                if budget == 0 || finished.saturating_add(retention) > now_ms {
                    break;
                }
                due.push((*id, finished.saturating_add(key_retention)));
                budget -= 1;
            }
        }
        for (id, key_expires_at) in due {
            let Some(Entry::Task(t)) = self.tasks.remove(id) else {
                unreachable!("expirable tasks exist")
            };
            self.index_remove(&t);
            self.forget_member(id);
            self.counts[t.state.index()] -= 1;
            if let Some(q) = self.queues.get_mut(&*t.queue) {
                q.counts[t.state.index()] -= 1;
            }
            removed += 1;
            match t.key {
                Some(key) if key_expires_at > now_ms => {
                    let run = t.run.map(|r| *r).unwrap_or_default();
                    let stone = Tombstone {
                        id,
                        queue: t.queue.clone(),
                        key,
                        state: t.state,
                        attempts: t.attempts,
                        submitted_at_ms: t.submitted_at_ms,
                        finished_at_ms: t.updated_at_ms,
                        expires_at_ms: key_expires_at,
                        result: run.result,
                        reason: run.reason,
                    };
                    self.tombstones.insert((key_expires_at, id));
                    self.tasks.insert(id, Entry::Tombstone(stone));
                    tombstoned += 1;
                }
                Some(key) => {
                    self.keys.remove(&key, id);
                    forgotten += 1;
                }
                None => {}
            }
            self.drop_queue_if_unused(&t.queue);
        }
        while budget > 0 {
            let Some(&(at, id)) = self.tombstones.first() else {
                break;
            };
            if at > now_ms {
                break;
            }
            self.tombstones.remove(&(at, id));
            if let Some(Entry::Tombstone(stone)) = self.tasks.remove(id) {
                self.keys.remove(&stone.key, id);
            }
            forgotten += 1;
            budget -= 1;
        }
        Ok(Response::Swept {
            removed,
            tombstoned,
            forgotten,
        })
    }
}
