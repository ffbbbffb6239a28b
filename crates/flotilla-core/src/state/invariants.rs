//! The consistency checks: every derived index agrees with the task table, capacity holds,
//! holds and children are exactly what the tasks imply. O(tasks); run after every apply in
//! debug and test builds, after every applied entry when a replica runs with invariant
//! checks on, and whenever a snapshot is loaded.

use std::collections::{BTreeMap, BTreeSet};

use super::queues::order_key;
use super::record::Entry;
use super::State;
use crate::{Capacity, TaskId, TaskState};

impl State {
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut counts = [0u64; 6];
        let mut queue_counts: BTreeMap<&str, [u64; 6]> = BTreeMap::new();
        let mut usage: BTreeMap<&str, Capacity> = BTreeMap::new();
        let mut children: BTreeMap<TaskId, BTreeSet<TaskId>> = BTreeMap::new();
        let mut held: BTreeMap<TaskId, u32> = BTreeMap::new();
        let (mut timers, mut deadlines, mut expirable, mut pending, mut keyed) = (0, 0, 0, 0, 0);
        let mut tombstones = 0usize;
        let mut last = 0u64;
        let mut running_keys: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for e in self.tasks.iter() {
            let id = super::table::entry_id(e);
            if id.0 <= last || id.0 >= self.next_task_id {
                return Err(format!("entry {id} out of order or outside the id range"));
            }
            last = id.0;
            if let Some(key) = e.key() {
                keyed += 1;
                if !self.keys.maps(key, id) {
                    return Err(format!("entry {id} key {key:?} missing from key index"));
                }
                if self.keys.find(key, &self.tasks) != Some(id) {
                    return Err(format!("key {key:?} of {id} finds another entry"));
                }
            }
            let t = match e {
                Entry::Tombstone(t) => {
                    tombstones += 1;
                    if !self.tombstones.contains(&(t.expires_at_ms, id)) {
                        return Err(format!("tombstone {id} missing from the expiry index"));
                    }
                    if !t.state.is_terminal() {
                        return Err(format!("tombstone {id} of an unfinished task"));
                    }
                    continue;
                }
                Entry::Task(t) => t,
            };
            counts[t.state.index()] += 1;
            queue_counts.entry(&t.queue).or_default()[t.state.index()] += 1;
            let Some(q) = self.queues.get(&*t.queue) else {
                return Err(format!("task {id} in unknown queue {:?}", &*t.queue));
            };
            if t.worker().is_some() != (t.state == TaskState::Running) {
                return Err(format!(
                    "task {id} in state {} names worker {:?}",
                    t.state,
                    t.worker()
                ));
            }
            super::attempts::check_history(
                t.ended_attempts(),
                t.attempts,
                t.state == TaskState::Running,
            )
            .map_err(|e| format!("task {id}: {e}"))?;
            if !t.state.is_terminal() {
                for d in t.depends_on() {
                    *held.entry(*d).or_default() += 1;
                }
            }
            match t.state {
                TaskState::Waiting => {
                    if self.is_ready(t) {
                        return Err(format!("task {id} is waiting but ready to run"));
                    }
                    if let Some(nb) = t.not_before_ms().filter(|nb| *nb > self.clock_ms) {
                        timers += 1;
                        if !self.timers.contains(&(nb, id)) {
                            return Err(format!("waiting task {id} has no timer"));
                        }
                    }
                    for d in t.depends_on() {
                        match self.record(*d) {
                            None => return Err(format!("waiting task {id} lost parent {d}")),
                            Some(p) if p.state != TaskState::Succeeded => {
                                children.entry(*d).or_default().insert(id);
                            }
                            Some(_) => {}
                        }
                    }
                }
                TaskState::Pending => {
                    pending += 1;
                    if !q.pending.contains(&(order_key(q.settings.policy, t), id)) {
                        return Err(format!("pending task {id} not in its queue's order"));
                    }
                }
                TaskState::Running => {
                    let w = t.worker().expect("checked above");
                    if !self.workers.contains_key(w)
                        || !self.on_worker.get(w).is_some_and(|s| s.contains(&id))
                    {
                        return Err(format!("running task {id} not on a registered worker"));
                    }
                    if let Some(key) = t.concurrency_key() {
                        *running_keys.entry((&*t.queue, key)).or_default() += 1;
                    }
                    let u = usage.entry(w).or_default();
                    u.slots += 1;
                    u.cpu_millis = u.cpu_millis.saturating_add(t.resources.cpu_millis);
                    u.mem_mb = u.mem_mb.saturating_add(t.resources.mem_mb);
                    if let Some(at) = t.deadline_ms() {
                        deadlines += 1;
                        if !self.deadlines.contains(&(at, id)) {
                            return Err(format!("running task {id} has no deadline entry"));
                        }
                    }
                }
                TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled => {
                    if !self.held.contains_key(&id) {
                        expirable += 1;
                        if !q.expirable.contains(&(t.updated_at_ms, id)) {
                            return Err(format!("finished task {id} not up for retention"));
                        }
                    }
                }
            }
        }
        if self.tasks.len() != tombstones + counts.iter().sum::<u64>() as usize {
            return Err("task table size differs from its entries".into());
        }
        if counts != self.counts {
            return Err(format!("counts {:?} != actual {counts:?}", self.counts));
        }
        for (name, q) in &self.queues {
            let actual = queue_counts.get(&**name).copied().unwrap_or_default();
            if q.counts != actual {
                return Err(format!(
                    "queue {name:?} counts {:?} != actual {actual:?}",
                    q.counts
                ));
            }
            if q.is_unused() {
                return Err(format!("unused queue {name:?} kept"));
            }
            match (q.flow.rate, q.bucket) {
                (None, None) => {}
                (Some(rate), Some(b)) => {
                    if b.milli > u64::from(rate.burst) * 1000 || b.at_ms > self.clock_ms {
                        return Err(format!(
                            "queue {name:?} bucket {b:?} beyond its burst or the clock"
                        ));
                    }
                }
                (rate, bucket) => {
                    return Err(format!(
                        "queue {name:?} rate {rate:?} with bucket {bucket:?}"
                    ))
                }
            }
            let indexed: BTreeMap<(&str, &str), u64> = q
                .running_keys
                .iter()
                .map(|(k, n)| ((&**name, &**k), *n))
                .collect();
            let actual: BTreeMap<(&str, &str), u64> = running_keys
                .range((&**name, "")..)
                .take_while(|((q, _), _)| *q == &**name)
                .map(|(k, n)| (*k, *n))
                .collect();
            if indexed != actual {
                return Err(format!(
                    "queue {name:?} running per key {indexed:?} != actual {actual:?}"
                ));
            }
            if q.flow.weight == 0 || q.flow.max_running == Some(0) || q.flow.max_per_key == Some(0)
            {
                return Err(format!("queue {name:?} flow {:?}", q.flow));
            }
        }
        let sizes = [
            ("timers", self.timers.len(), timers),
            ("deadlines", self.deadlines.len(), deadlines),
            (
                "pending order",
                self.queues.values().map(|q| q.pending.len()).sum(),
                pending,
            ),
            (
                "expirable",
                self.queues.values().map(|q| q.expirable.len()).sum(),
                expirable,
            ),
            ("key index", self.keys.len(), keyed),
            ("tombstones", self.tombstones.len(), tombstones),
            (
                "running per worker",
                self.on_worker.values().map(BTreeSet::len).sum(),
                counts[TaskState::Running.index()] as usize,
            ),
        ];
        for (what, indexed, actual) in sizes {
            if indexed != actual {
                return Err(format!(
                    "{what} index holds {indexed} entries, {actual} belong there"
                ));
            }
        }
        if children != self.children {
            return Err("children index differs from the waiting tasks' parents".into());
        }
        if held != self.held {
            return Err("holds differ from the unfinished tasks' parents".into());
        }
        let cached: BTreeMap<&str, Capacity> =
            self.usage.iter().map(|(w, c)| (w.as_str(), *c)).collect();
        if cached != usage {
            return Err(format!("worker usage {cached:?} != actual {usage:?}"));
        }
        for (w, used) in &usage {
            let cap = self.workers[*w].spec.capacity;
            if used.slots > cap.slots
                || used.cpu_millis > cap.cpu_millis
                || used.mem_mb > cap.mem_mb
            {
                return Err(format!("worker {w} over capacity: {used:?} > {cap:?}"));
            }
        }
        if self.on_worker.values().any(BTreeSet::is_empty) {
            return Err("empty task set for a worker".into());
        }
        self.check_workflows()?;
        self.check_schedules()
    }

    /// Each workflow is keyed by its first task, has a held task, and its held tasks are
    /// exactly those indexed as its members; no task is in two workflows.
    fn check_workflows(&self) -> Result<(), String> {
        let mut member_of: BTreeMap<TaskId, TaskId> = BTreeMap::new();
        let mut members_held: BTreeMap<TaskId, u32> = BTreeMap::new();
        for (id, w) in &self.workflows {
            if w.id != *id || w.members.first().map(|m| m.task) != Some(*id) {
                return Err(format!("workflow {id} is not keyed by its first task"));
            }
            for m in &w.members {
                if m.task.0 == 0 || m.task.0 >= self.next_task_id {
                    return Err(format!("workflow {id} names unallocated task {}", m.task));
                }
                if self.record(m.task).is_none() {
                    continue;
                }
                if let Some(other) = member_of.insert(m.task, *id) {
                    return Err(format!("task {} is in workflows {other} and {id}", m.task));
                }
                *members_held.entry(*id).or_default() += 1;
            }
            if !members_held.contains_key(id) {
                return Err(format!("workflow {id} holds no task"));
            }
        }
        if member_of != self.member_of || members_held != self.members_held {
            return Err("workflow member index differs from the workflows".into());
        }
        Ok(())
    }
}
