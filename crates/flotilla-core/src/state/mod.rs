//! The replicated state machine: the task table, its indexes and [`State::apply`].
//!
//! Only `tasks`, `next_task_id` and `clock_ms` are the state proper; every other field is an
//! index derived from them, rebuilt by [`State::from_image`] and checked by
//! [`State::check_invariants`].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{
    validate_spec, Command, CommandError, Limits, Proposal, Response, Task, TaskId, TaskSpec,
    TaskState, REASON_UPSTREAM_FAILED,
};

/// Version of [`StateImage`]'s encoding; bump when its fields change and migrate on decode.
pub const STATE_IMAGE_VERSION: u32 = 1;

/// The state proper, as written to a snapshot: enough to rebuild every index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateImage {
    pub version: u32,
    pub next_task_id: u64,
    pub clock_ms: u64,
    pub tasks: Vec<Task>,
}

/// The scheduler's replicated state. Mutated only by [`State::apply`].
#[derive(Debug, Clone, Default)]
pub struct State {
    tasks: BTreeMap<TaskId, Task>,
    next_task_id: u64,
    /// Largest `now_ms` of any applied command: the replicated clock.
    clock_ms: u64,

    // ---- derived indexes ----
    /// Tasks in state `waiting`.
    waiting: BTreeSet<TaskId>,
    /// Waiting tasks whose `not_before_ms` is still ahead of `clock_ms`, by that time.
    timers: BTreeSet<(u64, TaskId)>,
    /// Tasks in state `pending`, per queue, in submission order.
    pending: BTreeMap<String, BTreeSet<TaskId>>,
    /// Tasks in state `running`.
    running: BTreeSet<TaskId>,
    /// Idempotency key -> the task created with it.
    by_key: BTreeMap<String, TaskId>,
    /// Parent -> waiting children that still need it to succeed.
    children: BTreeMap<TaskId, BTreeSet<TaskId>>,
    /// Number of tasks per state, indexed by `TaskState as usize`.
    counts: [u64; 6],

    /// Tasks changed since the last [`State::take_dirty`]; lets storage write only what changed.
    dirty: BTreeSet<TaskId>,
}

impl State {
    pub fn new() -> Self {
        State {
            next_task_id: 1,
            ..State::default()
        }
    }

    // ------------------------------------------------------------------ queries

    pub fn get(&self, id: TaskId) -> Option<&Task> {
        self.tasks.get(&id)
    }

    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// Number of tasks in `state`.
    pub fn count(&self, state: TaskState) -> u64 {
        self.counts[state.index()]
    }

    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    pub fn next_task_id(&self) -> u64 {
        self.next_task_id
    }

    /// The task created with idempotency key `key`, if any.
    pub fn task_by_key(&self, key: &str) -> Option<TaskId> {
        self.by_key.get(key).copied()
    }

    /// Pending tasks of `queue` in submission order.
    pub fn pending_in(&self, queue: &str) -> impl Iterator<Item = TaskId> + '_ {
        self.pending.get(queue).into_iter().flatten().copied()
    }

    /// The earliest `not_before_ms` among waiting tasks still held back by time: the leader
    /// proposes a [`Command::Tick`] once its clock passes it.
    pub fn next_wakeup_ms(&self) -> Option<u64> {
        self.timers.first().map(|(t, _)| *t)
    }

    /// Tasks with id greater than `after`, filtered by queue and state, at most `limit`.
    pub fn list(
        &self,
        queue: Option<&str>,
        state: Option<TaskState>,
        after: Option<TaskId>,
        limit: usize,
    ) -> Vec<&Task> {
        let start = after.map_or(0, |a| a.0.saturating_add(1));
        self.tasks
            .range(TaskId(start)..)
            .map(|(_, t)| t)
            .filter(|t| queue.is_none_or(|q| t.spec.queue == q))
            .filter(|t| state.is_none_or(|s| t.state == s))
            .take(limit)
            .collect()
    }

    /// Ids of tasks changed since the last call, in id order.
    pub fn take_dirty(&mut self) -> BTreeSet<TaskId> {
        std::mem::take(&mut self.dirty)
    }

    // ------------------------------------------------------------------ apply

    /// Applies every command of a proposal, one response per command.
    pub fn apply_proposal(&mut self, proposal: &Proposal) -> Vec<Response> {
        proposal.commands.iter().map(|c| self.apply(c)).collect()
    }

    /// Applies one command.
    ///
    /// Every command first advances the replicated clock to its `now_ms` (never backwards),
    /// which promotes waiting tasks whose `not_before` has come: time passing is not part of
    /// the command and happens even if the command is then rejected. Apart from that, a
    /// rejected command leaves the state unchanged.
    pub fn apply(&mut self, command: &Command) -> Response {
        let promoted = self.advance_clock(command.now_ms());
        let response = match command {
            Command::Submit { now_ms, tasks } => match self.submit(*now_ms, tasks) {
                Ok((ids, created)) => Response::Submitted { ids, created },
                Err(e) => Response::Rejected(e),
            },
            Command::Cancel { now_ms, task_id } => match self.cancel(*now_ms, *task_id) {
                Ok(previous) => Response::Cancelled {
                    task_id: *task_id,
                    previous,
                },
                Err(e) => Response::Rejected(e),
            },
            Command::Tick { .. } => Response::Ticked { promoted },
        };
        #[cfg(debug_assertions)]
        if let Err(e) = self.check_invariants() {
            panic!("state invariant broken after {command:?}: {e}");
        }
        response
    }

    /// Moves the clock forward to `now_ms` and promotes the waiting tasks whose time has come;
    /// returns how many became pending.
    fn advance_clock(&mut self, now_ms: u64) -> u32 {
        if now_ms <= self.clock_ms {
            return 0;
        }
        self.clock_ms = now_ms;
        let mut promoted = 0;
        while let Some(&(at, id)) = self.timers.first() {
            if at > self.clock_ms {
                break;
            }
            self.timers.remove(&(at, id));
            if self.is_ready(&self.tasks[&id]) {
                self.set_state(now_ms, id, TaskState::Pending, |_| {});
                promoted += 1;
            }
        }
        promoted
    }

    fn submit(
        &mut self,
        now_ms: u64,
        specs: &[TaskSpec],
    ) -> Result<(Vec<TaskId>, Vec<bool>), CommandError> {
        // Validate everything before touching anything: all or nothing.
        if specs.is_empty() {
            return Err(CommandError::invalid("tasks", "batch is empty"));
        }
        if specs.len() > Limits::MAX_BATCH_TASKS {
            return Err(CommandError::invalid(
                "tasks",
                format!(
                    "batch of {} tasks exceeds limit {}",
                    specs.len(),
                    Limits::MAX_BATCH_TASKS
                ),
            ));
        }
        for (i, spec) in specs.iter().enumerate() {
            validate_spec(&format!("tasks[{i}]"), spec)?;
            if let Some(missing) = spec.depends_on.iter().find(|d| !self.tasks.contains_key(d)) {
                return Err(CommandError::invalid(
                    format!("tasks[{i}].depends_on"),
                    format!("unknown task {missing}"),
                ));
            }
        }

        let mut ids = Vec::with_capacity(specs.len());
        let mut created = Vec::with_capacity(specs.len());
        for spec in specs {
            if let Some(existing) = spec
                .idempotency_key
                .as_deref()
                .and_then(|k| self.by_key.get(k))
            {
                ids.push(*existing);
                created.push(false);
                continue;
            }
            let id = self.insert_new(now_ms, spec);
            ids.push(id);
            created.push(true);
        }
        Ok((ids, created))
    }

    fn insert_new(&mut self, now_ms: u64, spec: &TaskSpec) -> TaskId {
        let id = TaskId(self.next_task_id);
        self.next_task_id += 1;
        let mut spec = spec.clone();
        spec.depends_on.sort_unstable();
        spec.depends_on.dedup();

        let upstream_failed = spec.depends_on.iter().any(|d| {
            let s = self.tasks[d].state;
            s == TaskState::Failed || s == TaskState::Cancelled
        });
        let mut task = Task {
            id,
            spec,
            state: TaskState::Waiting,
            attempts: 0,
            submitted_at_ms: now_ms,
            updated_at_ms: now_ms,
            result: None,
            reason: None,
        };
        if upstream_failed {
            task.state = TaskState::Failed;
            task.reason = Some(REASON_UPSTREAM_FAILED.to_string());
        } else if self.is_ready(&task) {
            task.state = TaskState::Pending;
        }
        if let Some(key) = &task.spec.idempotency_key {
            self.by_key.insert(key.clone(), id);
        }
        self.index_insert(&task);
        self.counts[task.state.index()] += 1;
        self.tasks.insert(id, task);
        self.dirty.insert(id);
        id
    }

    fn cancel(&mut self, now_ms: u64, id: TaskId) -> Result<TaskState, CommandError> {
        let task = self.tasks.get(&id).ok_or(CommandError::NotFound(id))?;
        let previous = task.state;
        if previous.is_terminal() {
            return Err(CommandError::WrongState {
                task_id: id,
                state: previous,
                message: "a finished task cannot be cancelled".into(),
            });
        }
        self.finish(now_ms, id, TaskState::Cancelled, Some("cancelled".into()));
        Ok(previous)
    }

    /// Moves a live task to a terminal state and fails, transitively, every waiting task that
    /// needed it to succeed.
    fn finish(&mut self, now_ms: u64, id: TaskId, state: TaskState, reason: Option<String>) {
        debug_assert!(state.is_terminal());
        let mut work = vec![(id, state, reason)];
        while let Some((id, state, reason)) = work.pop() {
            self.set_state(now_ms, id, state, |t| t.reason = reason);
            if state != TaskState::Succeeded {
                for child in self.children.remove(&id).unwrap_or_default() {
                    if self.tasks[&child].state == TaskState::Waiting {
                        work.push((
                            child,
                            TaskState::Failed,
                            Some(REASON_UPSTREAM_FAILED.to_string()),
                        ));
                    }
                }
            }
        }
    }

    /// A waiting task may become pending: every parent succeeded and its time has come.
    fn is_ready(&self, task: &Task) -> bool {
        task.spec.not_before_ms.is_none_or(|t| t <= self.clock_ms)
            && task
                .spec
                .depends_on
                .iter()
                .all(|d| self.tasks[d].state == TaskState::Succeeded)
    }

    /// The one place a task changes state: keeps indexes and counts in step.
    fn set_state(
        &mut self,
        now_ms: u64,
        id: TaskId,
        state: TaskState,
        edit: impl FnOnce(&mut Task),
    ) {
        let mut task = self.tasks.remove(&id).expect("set_state on a known task");
        self.index_remove(&task);
        self.counts[task.state.index()] -= 1;
        task.state = state;
        task.updated_at_ms = now_ms;
        edit(&mut task);
        self.index_insert(&task);
        self.counts[task.state.index()] += 1;
        self.tasks.insert(id, task);
        self.dirty.insert(id);
    }

    fn index_insert(&mut self, task: &Task) {
        match task.state {
            TaskState::Waiting => {
                self.waiting.insert(task.id);
                if let Some(t) = task.spec.not_before_ms.filter(|t| *t > self.clock_ms) {
                    self.timers.insert((t, task.id));
                }
                for d in &task.spec.depends_on {
                    if self.tasks[d].state != TaskState::Succeeded {
                        self.children.entry(*d).or_default().insert(task.id);
                    }
                }
            }
            TaskState::Pending => {
                self.pending
                    .entry(task.spec.queue.clone())
                    .or_default()
                    .insert(task.id);
            }
            TaskState::Running => {
                self.running.insert(task.id);
            }
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled => {}
        }
    }

    fn index_remove(&mut self, task: &Task) {
        match task.state {
            TaskState::Waiting => {
                self.waiting.remove(&task.id);
                if let Some(t) = task.spec.not_before_ms {
                    self.timers.remove(&(t, task.id));
                }
                for d in &task.spec.depends_on {
                    if let Some(set) = self.children.get_mut(d) {
                        set.remove(&task.id);
                        if set.is_empty() {
                            self.children.remove(d);
                        }
                    }
                }
            }
            TaskState::Pending => {
                if let Some(set) = self.pending.get_mut(&task.spec.queue) {
                    set.remove(&task.id);
                    if set.is_empty() {
                        self.pending.remove(&task.spec.queue);
                    }
                }
            }
            TaskState::Running => {
                self.running.remove(&task.id);
            }
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled => {}
        }
    }

    // ------------------------------------------------------------------ images

    /// The state proper, for a snapshot. Tasks are in id order, so equal states give equal
    /// images (and equal bytes under any deterministic encoding).
    pub fn to_image(&self) -> StateImage {
        StateImage {
            version: STATE_IMAGE_VERSION,
            next_task_id: self.next_task_id,
            clock_ms: self.clock_ms,
            tasks: self.tasks.values().cloned().collect(),
        }
    }

    /// Rebuilds a state and all its indexes from an image; refuses an inconsistent image.
    pub fn from_image(image: StateImage) -> Result<State, String> {
        if image.version != STATE_IMAGE_VERSION {
            return Err(format!(
                "state image version {} is not supported (expected {})",
                image.version, STATE_IMAGE_VERSION
            ));
        }
        let mut state = State {
            next_task_id: image.next_task_id,
            clock_ms: image.clock_ms,
            ..State::default()
        };
        for task in image.tasks {
            if task.id.0 >= image.next_task_id || task.id.0 == 0 {
                return Err(format!(
                    "task {} outside the allocated id range 1..{}",
                    task.id, image.next_task_id
                ));
            }
            if state.tasks.insert(task.id, task).is_some() {
                return Err("duplicate task id in image".into());
            }
        }
        for task in state.tasks.values() {
            if let Some(d) = task
                .spec
                .depends_on
                .iter()
                .find(|d| !state.tasks.contains_key(d))
            {
                return Err(format!("task {} depends on missing task {d}", task.id));
            }
        }
        let tasks: Vec<Task> = state.tasks.values().cloned().collect();
        for task in &tasks {
            if let Some(key) = &task.spec.idempotency_key {
                state.by_key.entry(key.clone()).or_insert(task.id);
            }
            state.index_insert(task);
            state.counts[task.state.index()] += 1;
        }
        state.check_invariants()?;
        Ok(state)
    }

    // ------------------------------------------------------------------ invariants

    /// Checks that every index agrees with the task table. O(tasks); run after every apply in
    /// debug builds and by tests.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut counts = [0u64; 6];
        let mut indexed = 0usize;
        for (id, t) in &self.tasks {
            if *id != t.id {
                return Err(format!("task {} stored under id {id}", t.id));
            }
            if id.0 == 0 || id.0 >= self.next_task_id {
                return Err(format!("task {id} outside id range"));
            }
            counts[t.state.index()] += 1;
            let places = [
                self.waiting.contains(id),
                self.pending
                    .get(&t.spec.queue)
                    .is_some_and(|s| s.contains(id)),
                self.running.contains(id),
            ];
            let expected = match t.state {
                TaskState::Waiting => [true, false, false],
                TaskState::Pending => [false, true, false],
                TaskState::Running => [false, false, true],
                _ => [false, false, false],
            };
            if places != expected {
                return Err(format!(
                    "task {id} in state {} indexed as {places:?}",
                    t.state
                ));
            }
            indexed += places.iter().filter(|p| **p).count();
            if let Some(key) = &t.spec.idempotency_key {
                if self.by_key.get(key) != Some(id) {
                    return Err(format!("task {id} key {key:?} missing from key index"));
                }
            }
            if t.state == TaskState::Waiting {
                if self.is_ready(t) {
                    return Err(format!("task {id} is waiting but ready to run"));
                }
                if let Some(nb) = t.spec.not_before_ms {
                    if nb > self.clock_ms && !self.timers.contains(&(nb, *id)) {
                        return Err(format!("waiting task {id} has no timer"));
                    }
                }
            }
        }
        if counts != self.counts {
            return Err(format!("counts {:?} != actual {counts:?}", self.counts));
        }
        let index_total = self.waiting.len()
            + self.pending.values().map(BTreeSet::len).sum::<usize>()
            + self.running.len();
        if index_total != indexed {
            return Err(format!(
                "indexes hold {index_total} entries but only {indexed} tasks belong there"
            ));
        }
        if self.pending.values().any(BTreeSet::is_empty) {
            return Err("empty pending queue left in index".into());
        }
        for (key, id) in &self.by_key {
            match self.tasks.get(id) {
                Some(t) if t.spec.idempotency_key.as_deref() == Some(key) => {}
                _ => return Err(format!("key {key:?} points at task {id} without that key")),
            }
        }
        for (at, id) in &self.timers {
            let ok = *at > self.clock_ms
                && self.tasks.get(id).is_some_and(|t| {
                    t.state == TaskState::Waiting && t.spec.not_before_ms == Some(*at)
                });
            if !ok {
                return Err(format!("stale timer for task {id}"));
            }
        }
        for (parent, kids) in &self.children {
            if kids.is_empty() {
                return Err(format!("empty children set for task {parent}"));
            }
            for kid in kids {
                let ok = self.tasks.get(kid).is_some_and(|t| {
                    t.state == TaskState::Waiting && t.spec.depends_on.contains(parent)
                });
                if !ok {
                    return Err(format!("task {kid} listed as waiting on {parent}"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
