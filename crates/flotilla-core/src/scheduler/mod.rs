//! The scheduler's pure planning function.
//!
//! `plan` reads the state and returns commands — assignments and attempt timeouts — that the
//! leader then proposes. It decides nothing irrevocably: `apply` re-checks every precondition
//! (attempt, worker, capacity), so a stale plan becomes rejected commands, never corruption.
//!
//! Order: queues take turns, the one with the fewest running tasks per unit of weight first
//! (weighted fair sharing; ties to the name), each offering its next pending task in its
//! policy's order — kept sorted by the state as
//! tasks arrive and leave, so a plan costs what it assigns, not what is queued; a task goes to the best-fitting live worker under the placement
//! strategy (found through an index of the workers by free slots, not a scan of them all), or
//! is skipped (it stays pending) when none fits now. Overdue attempts come from
//! the state's deadline index, not from a scan of the running tasks. A queue whose head tasks
//! fit nowhere is looked at for at most `max_skipped_per_queue` tasks per plan, so planning
//! never holds the state for long. A queue at its flow limits (`max_running`, its rate
//! limit's bucket: [`State::flow_room`]) takes no turn once they are reached; a task whose
//! concurrency key is at the queue's `max_per_key` ([`State::key_room`]) is skipped like one
//! that fits no worker, and counts against the same bound. `apply` re-checks every limit on
//! every `Assign`.

use std::collections::{BTreeMap, BTreeSet};

use crate::state::record::TaskRecord;
use crate::{Capacity, Command, State, Task, TaskId, TaskState, WorkerSpec};

/// How to choose among workers that fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// The fullest worker that fits: keeps whole workers free for big tasks.
    #[default]
    BinPack,
    /// The emptiest worker: spreads load.
    Spread,
}

/// Running tasks per unit of weight are compared as `running * WEIGHT_SCALE / weight`
/// (weights are at most [`crate::MAX_WEIGHT`], so shares differing by a task never tie).
const WEIGHT_SCALE: u64 = 1 << 20;

/// Leader-side planning settings (not replicated: `apply` does not depend on them).
#[derive(Debug, Clone)]
pub struct PlanConfig {
    pub placement: Placement,
    /// Most assignments in one plan.
    pub max_assignments: usize,
    /// Pending tasks of one queue that fit no worker, skipped at most per plan.
    pub max_skipped_per_queue: usize,
}

impl Default for PlanConfig {
    fn default() -> Self {
        PlanConfig {
            placement: Placement::BinPack,
            max_assignments: 1024,
            max_skipped_per_queue: 1024,
        }
    }
}

/// Pending tasks of a queue in the queue's policy order.
pub fn queue_order<'a>(
    state: &'a State,
    queue: &str,
    _now_ms: u64,
) -> impl Iterator<Item = TaskId> + 'a {
    state.pending_in(queue)
}

/// Commands the leader should propose now: timeouts of overdue attempts, then assignments of
/// pending tasks to `live` workers (registered workers with a connection to this leader).
pub fn plan(state: &State, now_ms: u64, live: &BTreeSet<String>, cfg: &PlanConfig) -> Vec<Command> {
    let mut out = Vec::new();
    for (t, timeout) in state.overdue(now_ms) {
        // Strictly past the deadline, as an attempt may use all of its time.
        if now_ms.saturating_sub(t.started_at_ms().unwrap_or(now_ms)) <= timeout {
            continue;
        }
        out.push(Command::Fail {
            now_ms,
            task_id: t.id,
            worker_id: t.worker().unwrap_or_default().to_string(),
            attempt: t.attempts,
            error: format!("attempt {} timed out after {timeout} ms", t.attempts),
            retryable: true,
        });
    }

    // Free capacity of each live worker, updated as the plan places tasks.
    let mut free = FreeCapacity::new(state, live);
    let mut slots_left = free.slots_left();
    if slots_left == 0 {
        return out;
    }

    // Queues take turns, the one with the fewest running tasks per unit of weight first (this
    // plan's assignments counted; ties to the name): a queue that frees a slot does not get it
    // back while another queue, with fewer running for its weight, waits. A queue of weight 3
    // so holds three times the slots of a queue of weight 1 when both have work.
    struct Turn<I> {
        ids: I,
        skipped: usize,
        running: u64,
        weight: u64,
        /// Starts its flow limits still allow.
        room: u64,
    }
    let share = |running: u64, weight: u64| running.saturating_mul(WEIGHT_SCALE) / weight.max(1);
    let mut queues: Vec<Turn<_>> = Vec::new();
    let mut order: BTreeSet<(u64, usize)> = BTreeSet::new();
    for q in state.pending_queues() {
        let room = state.flow_room(q, now_ms);
        if room == 0 {
            continue;
        }
        let running = state.queue_count(q, TaskState::Running);
        let weight = u64::from(state.queue_flow(q).0.weight);
        order.insert((share(running, weight), queues.len()));
        queues.push(Turn {
            ids: state.pending_in(q),
            skipped: 0,
            running,
            weight,
            room,
        });
    }
    let mut assigned = 0usize;
    // Starts this plan made per (queue turn, concurrency key).
    let mut started_keys: BTreeMap<(usize, &str), u64> = BTreeMap::new();
    while slots_left > 0 && assigned < cfg.max_assignments {
        let Some((key, i)) = order.pop_first() else {
            break;
        };
        let turn = &mut queues[i];
        let Some(id) = turn.ids.next() else {
            continue; // nothing more pending here: out of the turns
        };
        let task = state.record(id).expect("pending task exists");
        // Its concurrency key at the queue's `max_per_key` (this plan's starts counted): the
        // task waits like one that fits no worker, and the queue offers its next.
        let ckey = task.concurrency_key();
        let key_full = ckey.is_some_and(|k| {
            let planned = started_keys.get(&(i, k)).copied().unwrap_or(0);
            state.key_room(&task.queue, Some(k)) <= planned
        });
        let chosen = if key_full {
            None
        } else {
            free.choose(task, cfg.placement)
        };
        match chosen {
            Some(w) => {
                let worker = free.take(w, task.resources);
                slots_left -= 1;
                assigned += 1;
                out.push(Command::Assign {
                    now_ms,
                    task_id: id,
                    worker_id: worker.to_string(),
                    attempt: task.attempts + 1,
                });
                if let Some(k) = ckey {
                    *started_keys.entry((i, k)).or_default() += 1;
                }
                turn.running += 1;
                turn.room -= 1;
                if turn.room > 0 {
                    order.insert((share(turn.running, turn.weight), i));
                }
            }
            None => {
                turn.skipped += 1;
                if turn.skipped < cfg.max_skipped_per_queue {
                    order.insert((key, i));
                }
            }
        }
    }
    out
}

/// The live workers' free capacity during one plan, indexed by free slots, so that placing a
/// task looks at the workers in the order the strategy prefers and stops at the first that
/// fits: the same choice as a scan of every worker — fewest (binpack) or most (spread) free
/// slots, ties to the smallest id — at the cost of the workers passed over, not of all of
/// them (with 1,000 workers a scan cost ~47 µs per assignment).
struct FreeCapacity<'a> {
    /// Live workers by id, with what they have free.
    workers: Vec<(&'a WorkerSpec, Capacity)>,
    /// Free slots (at least 1) -> indexes into `workers`, ascending (so by id).
    by_slots: BTreeMap<u32, BTreeSet<usize>>,
}

impl<'a> FreeCapacity<'a> {
    fn new(state: &'a State, live: &BTreeSet<String>) -> FreeCapacity<'a> {
        let mut workers: Vec<(&'a WorkerSpec, Capacity)> = state
            .workers()
            .filter(|w| live.contains(&w.spec.id))
            .map(|w| {
                let used = state.worker_usage(&w.spec.id);
                let cap = w.spec.capacity;
                let free = Capacity {
                    slots: cap.slots.saturating_sub(used.slots),
                    cpu_millis: cap.cpu_millis.saturating_sub(used.cpu_millis),
                    mem_mb: cap.mem_mb.saturating_sub(used.mem_mb),
                };
                (&w.spec, free)
            })
            .collect();
        workers.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        let mut by_slots: BTreeMap<u32, BTreeSet<usize>> = BTreeMap::new();
        for (i, (_, f)) in workers.iter().enumerate() {
            if f.slots > 0 {
                by_slots.entry(f.slots).or_default().insert(i);
            }
        }
        FreeCapacity { workers, by_slots }
    }

    fn slots_left(&self) -> u64 {
        self.workers.iter().map(|(_, f)| f.slots as u64).sum()
    }

    /// The worker `task` goes to under `placement`, if one fits now.
    fn choose(&self, task: &TaskRecord, placement: Placement) -> Option<usize> {
        let needs = task.resources;
        let fits = |i: &&usize| {
            let (w, f) = &self.workers[**i];
            f.cpu_millis >= needs.cpu_millis
                && f.mem_mb >= needs.mem_mb
                && w.serves(&task.queue)
                && w.matches(task.labels())
        };
        let found = match placement {
            Placement::BinPack => self.by_slots.values().flatten().find(fits),
            Placement::Spread => self.by_slots.values().rev().flatten().find(fits),
        };
        found.copied()
    }

    /// Places a task needing `needs` on worker `i`; returns the worker's id.
    fn take(&mut self, i: usize, needs: crate::Resources) -> &'a str {
        let (w, f) = &mut self.workers[i];
        let was = f.slots;
        f.slots -= 1;
        f.cpu_millis -= needs.cpu_millis;
        f.mem_mb -= needs.mem_mb;
        if let Some(set) = self.by_slots.get_mut(&was) {
            set.remove(&i);
            if set.is_empty() {
                self.by_slots.remove(&was);
            }
        }
        if f.slots > 0 {
            self.by_slots.entry(f.slots).or_default().insert(i);
        }
        w.id.as_str()
    }
}

/// Why a pending task cannot be placed on any registered worker, even an idle one; `None`
/// when some registered worker could run it.
pub fn unplaceable_reason(state: &State, task: &Task) -> Option<String> {
    if task.state != TaskState::Pending {
        return None;
    }
    let mut serving = state
        .workers()
        .filter(|w| w.spec.serves(&task.spec.queue))
        .peekable();
    if serving.peek().is_none() {
        return Some(format!(
            "no registered worker serves queue {:?}",
            task.spec.queue
        ));
    }
    let labelled: Vec<_> = serving
        .filter(|w| w.spec.matches(&task.spec.labels))
        .collect();
    if labelled.is_empty() {
        return Some("no registered worker of this queue has the required labels".into());
    }
    if !labelled
        .iter()
        .any(|w| w.spec.could_fit(&task.spec.resources))
    {
        let r = task.spec.resources;
        return Some(format!(
            "no registered worker has {} mcpu and {} MB of capacity",
            r.cpu_millis, r.mem_mb
        ));
    }
    None
}

pub mod why;

#[cfg(test)]
mod tests;
