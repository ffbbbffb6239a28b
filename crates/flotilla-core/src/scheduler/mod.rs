//! The scheduler's pure planning function.
//!
//! `plan` reads the state and returns commands — assignments and attempt timeouts — that the
//! leader then proposes. It decides nothing irrevocably: `apply` re-checks every precondition
//! (attempt, worker, capacity), so a stale plan becomes rejected commands, never corruption.
//!
//! Order: queues take turns (round robin, by name), each offering its next pending task in its
//! policy's order — kept sorted by the state as tasks arrive and leave, so a plan costs what it
//! assigns, not what is queued; a task goes to the best-fitting live worker under the placement
//! strategy, or is skipped (it stays pending) when none fits now. Overdue attempts come from
//! the state's deadline index, not from a scan of the running tasks. A queue whose head tasks
//! fit nowhere is looked at for at most `max_skipped_per_queue` tasks per plan, so planning
//! never holds the state for long.

use std::collections::{BTreeMap, BTreeSet};

use crate::state::record::TaskRecord;
use crate::{Capacity, Command, State, Task, TaskId, TaskState};

/// How to choose among workers that fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// The fullest worker that fits: keeps whole workers free for big tasks.
    #[default]
    BinPack,
    /// The emptiest worker: spreads load.
    Spread,
}

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
    let mut free: BTreeMap<&str, Capacity> = BTreeMap::new();
    for w in state.workers().filter(|w| live.contains(&w.spec.id)) {
        let used = state.worker_usage(&w.spec.id);
        let cap = w.spec.capacity;
        free.insert(
            &w.spec.id,
            Capacity {
                slots: cap.slots.saturating_sub(used.slots),
                cpu_millis: cap.cpu_millis.saturating_sub(used.cpu_millis),
                mem_mb: cap.mem_mb.saturating_sub(used.mem_mb),
            },
        );
    }
    let mut slots_left: u64 = free.values().map(|c| c.slots as u64).sum();
    if slots_left == 0 {
        return out;
    }

    struct Turn<'a, I> {
        ids: I,
        skipped: usize,
        _queue: &'a str,
    }
    let mut queues: Vec<Turn<'_, _>> = state
        .pending_queues()
        .map(|q| Turn {
            ids: state.pending_in(q),
            skipped: 0,
            _queue: q,
        })
        .collect();
    let mut assigned = 0usize;
    while !queues.is_empty() && slots_left > 0 && assigned < cfg.max_assignments {
        queues.retain_mut(|turn| {
            if slots_left == 0 || assigned >= cfg.max_assignments {
                return false;
            }
            let Some(id) = turn.ids.next() else {
                return false;
            };
            let task = state.record(id).expect("pending task exists");
            match choose_worker(state, task, &free, cfg.placement) {
                Some(worker) => {
                    let f = free.get_mut(worker).expect("chosen among free");
                    f.slots -= 1;
                    f.cpu_millis -= task.resources.cpu_millis;
                    f.mem_mb -= task.resources.mem_mb;
                    slots_left -= 1;
                    assigned += 1;
                    out.push(Command::Assign {
                        now_ms,
                        task_id: id,
                        worker_id: worker.to_string(),
                        attempt: task.attempts + 1,
                    });
                    true
                }
                None => {
                    turn.skipped += 1;
                    turn.skipped < cfg.max_skipped_per_queue
                }
            }
        });
    }
    out
}

fn choose_worker<'a>(
    state: &State,
    task: &TaskRecord,
    free: &BTreeMap<&'a str, Capacity>,
    placement: Placement,
) -> Option<&'a str> {
    let needs = task.resources;
    let fits = free.iter().filter(|(id, f)| {
        let w = &state
            .worker(id)
            .expect("free lists registered workers")
            .spec;
        f.slots >= 1
            && f.cpu_millis >= needs.cpu_millis
            && f.mem_mb >= needs.mem_mb
            && w.serves(&task.queue)
            && w.matches(task.labels())
    });
    match placement {
        // Fewest free slots first; ties go to the smallest id (BTreeMap order, min_by_key keeps
        // the first minimum).
        Placement::BinPack => fits.min_by_key(|(_, f)| f.slots).map(|(id, _)| *id),
        Placement::Spread => fits
            .max_by_key(|(id, f)| (f.slots, std::cmp::Reverse(*id)))
            .map(|(id, _)| *id),
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

#[cfg(test)]
mod tests;
