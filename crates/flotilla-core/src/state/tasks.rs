//! The task life cycle: submit, cancel, assign, complete, fail, checkpoint — and the one
//! place a task changes state ([`State::set_state`]), which keeps every index in step.
//!
//! ```text
//!  waiting ──▶ pending ──▶ running ──▶ succeeded
//!     │           │           ├──▶ waiting (retry after backoff) / pending (worker lost)
//!     └───────────┴───────────┴──▶ failed | cancelled
//! ```

use std::collections::BTreeMap;

use super::queues::order_key;
use super::record::{Entry, TaskRecord};
use super::State;
use crate::{
    validate_spec, AdmissionLimits, Checkpoint, CommandError, Limits, Response, TaskId, TaskSpec,
    TaskState, REASON_UPSTREAM_FAILED,
};

impl State {
    pub(super) fn submit(
        &mut self,
        now_ms: u64,
        specs: &[TaskSpec],
        limits: &AdmissionLimits,
    ) -> Result<(Vec<TaskId>, Vec<bool>), CommandError> {
        // Validate everything before touching anything: all or nothing.
        let refs: Vec<&TaskSpec> = specs.iter().collect();
        self.check_batch(&refs, Limits::MAX_BATCH_TASKS, 0)?;
        self.admit(&refs, limits)?;

        let mut ids = Vec::with_capacity(specs.len());
        let mut created = Vec::with_capacity(specs.len());
        for spec in specs {
            if let Some(existing) = spec
                .idempotency_key
                .as_deref()
                .and_then(|k| self.task_by_key(k))
            {
                ids.push(existing);
                created.push(false);
                continue;
            }
            ids.push(self.insert_new(now_ms, spec));
            created.push(true);
        }
        Ok((ids, created))
    }

    /// Checks a batch of at most `max_tasks` specs in isolation and their dependencies on
    /// existing tasks; `extra_bytes` count against the batch's size limit besides the specs'.
    pub(super) fn check_batch(
        &self,
        specs: &[&TaskSpec],
        max_tasks: usize,
        extra_bytes: usize,
    ) -> Result<(), CommandError> {
        if specs.is_empty() {
            return Err(CommandError::invalid("tasks", "batch is empty"));
        }
        if specs.len() > max_tasks {
            return Err(CommandError::invalid(
                "tasks",
                format!("batch of {} tasks exceeds limit {max_tasks}", specs.len()),
            ));
        }
        let bytes = crate::limits::batch_bytes(specs.iter().copied()) + extra_bytes;
        if bytes > Limits::MAX_BATCH_BYTES {
            return Err(CommandError::invalid(
                "tasks",
                format!(
                    "batch of {bytes} bytes exceeds limit {} (max_batch_bytes)",
                    Limits::MAX_BATCH_BYTES
                ),
            ));
        }
        for (i, spec) in specs.iter().enumerate() {
            validate_spec(&format!("tasks[{i}]"), spec)?;
            for d in &spec.depends_on {
                if self.record(*d).is_none() {
                    let why = if d.0 > 0 && d.0 < self.next_task_id {
                        format!("task {d} was removed by retention")
                    } else {
                        format!("unknown task {d}")
                    };
                    return Err(CommandError::invalid(format!("tasks[{i}].depends_on"), why));
                }
            }
        }
        Ok(())
    }

    /// Checks the admission limits for the tasks `specs` would create.
    pub(super) fn admit(
        &self,
        specs: &[&TaskSpec],
        limits: &AdmissionLimits,
    ) -> Result<(), CommandError> {
        if limits.max_pending.is_none() && limits.max_pending_per_queue.is_none() {
            return Ok(());
        }
        // New tasks per queue: keys already known, or repeated within the batch, create none.
        let mut new: BTreeMap<&str, u64> = BTreeMap::new();
        let mut seen = std::collections::BTreeSet::new();
        for spec in specs {
            if let Some(k) = spec.idempotency_key.as_deref() {
                if self.task_by_key(k).is_some() || !seen.insert(k) {
                    continue;
                }
            }
            *new.entry(spec.queue.as_str()).or_default() += 1;
        }
        if let Some(max) = limits.max_pending_per_queue {
            for (queue, n) in &new {
                let have = self.queues.get(*queue).map_or(0, |q| q.backlog());
                if have + n > max {
                    return Err(CommandError::LimitExceeded {
                        limit: "max_pending_per_queue".into(),
                        message: format!(
                            "queue {queue:?} holds {have} waiting or pending tasks; {n} more would exceed {max}"
                        ),
                    });
                }
            }
        }
        if let Some(max) = limits.max_pending {
            let have = self.count(TaskState::Waiting) + self.count(TaskState::Pending);
            let n: u64 = new.values().sum();
            if have + n > max {
                return Err(CommandError::LimitExceeded {
                    limit: "max_pending".into(),
                    message: format!(
                        "the cluster holds {have} waiting or pending tasks; {n} more would exceed {max}"
                    ),
                });
            }
        }
        Ok(())
    }

    pub(super) fn insert_new(&mut self, now_ms: u64, spec: &TaskSpec) -> TaskId {
        let id = TaskId(self.next_task_id);
        self.next_task_id += 1;
        let mut spec = spec.clone();
        spec.depends_on.sort_unstable();
        spec.depends_on.dedup();
        let queue = self.intern(&spec.queue);
        let mut task = TaskRecord::new(id, &spec, queue, now_ms);
        let upstream_failed = task.depends_on().iter().any(|d| {
            self.record(*d)
                .is_some_and(|p| matches!(p.state, TaskState::Failed | TaskState::Cancelled))
        });
        if upstream_failed {
            task.state = TaskState::Failed;
            task.edit_run(|r| r.reason = Some(REASON_UPSTREAM_FAILED.to_string()));
        } else if self.is_ready(&task) {
            task.state = TaskState::Pending;
        }
        if let Some(key) = task.key.as_deref() {
            self.keys.insert(key, id);
        }
        if !task.state.is_terminal() {
            self.take_holds(&task);
        }
        self.index_insert(&task);
        self.count_in(&task);
        self.tasks.insert(id, Entry::Task(task));
        id
    }

    pub(super) fn cancel(&mut self, now_ms: u64, id: TaskId) -> Result<TaskState, CommandError> {
        let task = self.existing(id)?;
        let previous = task.state;
        if previous == TaskState::Cancelled {
            // Idempotent: a cancel retried after its reply was lost must not turn into an
            // error for an operation that succeeded.
            return Ok(previous);
        }
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

    /// The task with id `id`, or the error naming why there is none.
    pub(super) fn existing(&self, id: TaskId) -> Result<&TaskRecord, CommandError> {
        match self.record(id) {
            Some(t) => Ok(t),
            None if id.0 > 0 && id.0 < self.next_task_id => Err(CommandError::Removed(id)),
            None => Err(CommandError::NotFound(id)),
        }
    }

    pub(super) fn assign(
        &mut self,
        now_ms: u64,
        id: TaskId,
        worker_id: &str,
        attempt: u32,
    ) -> Result<Response, CommandError> {
        let task = self.existing(id)?;
        if task.state != TaskState::Pending {
            return Err(CommandError::WrongState {
                task_id: id,
                state: task.state,
                message: "only a pending task can be assigned".into(),
            });
        }
        if attempt != task.attempts + 1 {
            return Err(CommandError::StaleAttempt {
                task_id: id,
                attempt,
                current: task.attempts,
            });
        }
        self.check_fit(task, worker_id)?;
        let queue = task.queue.clone();
        self.check_start(&queue, task.concurrency_key())?;
        let worker = worker_id.to_string();
        self.set_state(now_ms, id, TaskState::Running, |t| {
            t.attempts = attempt;
            t.edit_run(|r| {
                r.worker = Some(worker);
                r.started_at_ms = Some(now_ms);
            });
        });
        self.record_start(&queue);
        Ok(Response::Assigned {
            task_id: id,
            attempt,
        })
    }

    /// The fencing check shared by completions, failures and checkpoints: the task is running
    /// `attempt` on `worker_id`.
    fn check_current(
        &self,
        id: TaskId,
        worker_id: &str,
        attempt: u32,
    ) -> Result<&TaskRecord, CommandError> {
        let task = self.existing(id)?;
        if attempt != task.attempts {
            return Err(CommandError::StaleAttempt {
                task_id: id,
                attempt,
                current: task.attempts,
            });
        }
        if task.state != TaskState::Running {
            return Err(CommandError::WrongState {
                task_id: id,
                state: task.state,
                message: format!("attempt {attempt} is no longer running"),
            });
        }
        if task.worker() != Some(worker_id) {
            return Err(CommandError::WrongState {
                task_id: id,
                state: task.state,
                message: format!("attempt {attempt} does not run on worker {worker_id:?}"),
            });
        }
        Ok(task)
    }

    pub(super) fn complete(
        &mut self,
        now_ms: u64,
        id: TaskId,
        worker_id: &str,
        attempt: u32,
        result: &[u8],
    ) -> Result<Response, CommandError> {
        if result.len() > Limits::MAX_RESULT_BYTES {
            return Err(CommandError::invalid(
                "result",
                format!(
                    "{} bytes exceeds limit {}",
                    result.len(),
                    Limits::MAX_RESULT_BYTES
                ),
            ));
        }
        // A completion retried after it was applied (its reply lost) is acknowledged again
        // and changes nothing.
        if let Ok(t) = self.existing(id) {
            if t.state == TaskState::Succeeded
                && t.attempts == attempt
                && t.reported_by() == Some(worker_id)
            {
                return Ok(Response::Completed { task_id: id });
            }
        }
        self.check_current(id, worker_id, attempt)?;
        let result = result.to_vec();
        let by = worker_id.to_string();
        self.set_state(now_ms, id, TaskState::Succeeded, |t| {
            t.edit_run(|r| {
                r.result = Some(result);
                r.reason = None;
                r.reported_by = Some(by);
            })
        });
        // Children waiting on this task may now run.
        for child in self.children.remove(&id).unwrap_or_default() {
            if self.record(child).is_some_and(|c| self.is_ready(c)) {
                self.set_state(now_ms, child, TaskState::Pending, |_| {});
            }
        }
        Ok(Response::Completed { task_id: id })
    }

    pub(super) fn fail(
        &mut self,
        now_ms: u64,
        id: TaskId,
        worker_id: &str,
        attempt: u32,
        error: &str,
        retryable: bool,
    ) -> Result<Response, CommandError> {
        let error: String = error.chars().take(Limits::MAX_ERROR_LEN).collect();
        // A failure report retried after it was applied is acknowledged again, changing
        // nothing: the attempt is the current one, no longer running, reported by this worker,
        // and the task carries this very error (failed for good, or waiting for its retry).
        if let Ok(t) = self.existing(id) {
            let recorded = t.attempts == attempt
                && t.reason() == Some(error.as_str())
                && t.reported_by() == Some(worker_id);
            match t.state {
                TaskState::Failed if recorded => {
                    return Ok(Response::AttemptFailed {
                        task_id: id,
                        retry_at_ms: None,
                    })
                }
                TaskState::Waiting | TaskState::Pending if recorded && t.worker().is_none() => {
                    return Ok(Response::AttemptFailed {
                        task_id: id,
                        retry_at_ms: t.not_before_ms(),
                    })
                }
                _ => {}
            }
        }
        let task = self.check_current(id, worker_id, attempt)?;
        if retryable && task.attempts < task.max_attempts {
            let backoff = Limits::RETRY_BACKOFF_BASE_MS
                .saturating_mul(1u64 << (task.attempts.saturating_sub(1)).min(20))
                .min(Limits::RETRY_BACKOFF_MAX_MS);
            // Counted from the replicated clock, not `now_ms`: a failure stamped by a leader
            // whose clock lags would otherwise wait for a time already past, which no timer
            // fires (apply has already advanced `clock_ms` to at least `now_ms`).
            let retry_at = self.clock_ms.saturating_add(backoff);
            let by = worker_id.to_string();
            let clock = self.clock_ms;
            if let Some(Entry::Task(t)) = self.tasks.get_mut(id) {
                t.record_ended(clock, &error, Some(retry_at));
            }
            self.set_state(now_ms, id, TaskState::Waiting, |t| {
                t.edit_run(|r| {
                    r.reason = Some(error);
                    r.reported_by = Some(by);
                });
                t.set_not_before_ms(Some(retry_at));
            });
            return Ok(Response::AttemptFailed {
                task_id: id,
                retry_at_ms: Some(retry_at),
            });
        }
        self.finish(now_ms, id, TaskState::Failed, Some(error));
        let by = worker_id.to_string();
        if let Some(Entry::Task(t)) = self.tasks.get_mut(id) {
            t.edit_run(|r| r.reported_by = Some(by));
        }
        Ok(Response::AttemptFailed {
            task_id: id,
            retry_at_ms: None,
        })
    }

    pub(super) fn save_checkpoint(
        &mut self,
        now_ms: u64,
        id: TaskId,
        worker_id: &str,
        attempt: u32,
        progress_permille: u32,
        data: &[u8],
    ) -> Result<Response, CommandError> {
        self.check_current(id, worker_id, attempt)?;
        if data.len() > Limits::MAX_CHECKPOINT_BYTES {
            return Err(CommandError::invalid(
                "checkpoint",
                format!(
                    "{} bytes exceeds limit {}",
                    data.len(),
                    Limits::MAX_CHECKPOINT_BYTES
                ),
            ));
        }
        let checkpoint = Checkpoint {
            attempt,
            progress_permille: progress_permille.min(1000),
            data: data.to_vec(),
        };
        let Some(Entry::Task(task)) = self.tasks.get_mut(id) else {
            unreachable!("checked above")
        };
        task.edit_run(|r| r.checkpoint = Some(checkpoint));
        task.updated_at_ms = now_ms;
        Ok(Response::CheckpointSaved { task_id: id })
    }

    /// Moves a live task to a terminal state and fails, transitively, every waiting task that
    /// needed it to succeed.
    pub(super) fn finish(
        &mut self,
        now_ms: u64,
        id: TaskId,
        state: TaskState,
        reason: Option<String>,
    ) {
        debug_assert!(state.is_terminal());
        let mut work = vec![(id, state, reason)];
        while let Some((id, state, reason)) = work.pop() {
            self.set_state(now_ms, id, state, |t| t.edit_run(|r| r.reason = reason));
            if state != TaskState::Succeeded {
                for child in self.children.remove(&id).unwrap_or_default() {
                    if self
                        .record(child)
                        .is_some_and(|c| c.state == TaskState::Waiting)
                    {
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
    pub(super) fn is_ready(&self, task: &TaskRecord) -> bool {
        task.not_before_ms().is_none_or(|t| t <= self.clock_ms)
            && task.depends_on().iter().all(|d| {
                self.record(*d)
                    .is_some_and(|p| p.state == TaskState::Succeeded)
            })
    }

    /// The one place a task changes state: keeps indexes, counts and holds in step.
    pub(super) fn set_state(
        &mut self,
        now_ms: u64,
        id: TaskId,
        state: TaskState,
        edit: impl FnOnce(&mut TaskRecord),
    ) {
        let Some(Entry::Task(mut task)) = self.tasks.remove(id) else {
            panic!("set_state on unknown task {id}")
        };
        self.index_remove(&task);
        self.count_out(&task);
        let was_terminal = task.state.is_terminal();
        task.state = state;
        task.updated_at_ms = now_ms;
        if state != TaskState::Running {
            task.edit_run(|r| r.worker = None);
        }
        edit(&mut task);
        if !was_terminal && state.is_terminal() {
            self.release_holds(&task);
        }
        self.index_insert(&task);
        self.count_in(&task);
        self.tasks.insert(id, Entry::Task(task));
    }

    fn count_in(&mut self, t: &TaskRecord) {
        self.counts[t.state.index()] += 1;
        if let Some(q) = self.queues.get_mut(&*t.queue) {
            q.counts[t.state.index()] += 1;
        }
    }

    fn count_out(&mut self, t: &TaskRecord) {
        self.counts[t.state.index()] -= 1;
        if let Some(q) = self.queues.get_mut(&*t.queue) {
            q.counts[t.state.index()] -= 1;
        }
    }

    /// Adds `t` to the indexes of its state.
    pub(super) fn index_insert(&mut self, t: &TaskRecord) {
        match t.state {
            TaskState::Waiting => {
                if let Some(at) = t.not_before_ms().filter(|at| *at > self.clock_ms) {
                    self.timers.insert((at, t.id));
                }
                for d in t.depends_on() {
                    if self
                        .record(*d)
                        .is_some_and(|p| p.state != TaskState::Succeeded)
                    {
                        self.children.entry(*d).or_default().insert(t.id);
                    }
                }
            }
            TaskState::Pending => {
                let q = self
                    .queues
                    .get_mut(&*t.queue)
                    .expect("queue of a task exists");
                q.pending.insert((order_key(q.settings.policy, t), t.id));
            }
            TaskState::Running => {
                if let Some(w) = t.worker() {
                    self.on_worker
                        .entry(w.to_string())
                        .or_default()
                        .insert(t.id);
                    let used = self.usage.entry(w.to_string()).or_default();
                    used.slots += 1;
                    used.cpu_millis = used.cpu_millis.saturating_add(t.resources.cpu_millis);
                    used.mem_mb = used.mem_mb.saturating_add(t.resources.mem_mb);
                }
                if let Some(at) = t.deadline_ms() {
                    self.deadlines.insert((at, t.id));
                }
                if let Some(key) = t.concurrency_key() {
                    let q = self
                        .queues
                        .get_mut(&*t.queue)
                        .expect("queue of a task exists");
                    *q.running_keys.entry(Box::from(key)).or_default() += 1;
                }
            }
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled => {
                if !self.held.contains_key(&t.id) {
                    let q = self
                        .queues
                        .get_mut(&*t.queue)
                        .expect("queue of a task exists");
                    q.expirable.insert((t.updated_at_ms, t.id));
                }
            }
        }
    }

    /// Removes `t` from the indexes of its state.
    pub(super) fn index_remove(&mut self, t: &TaskRecord) {
        match t.state {
            TaskState::Waiting => {
                if let Some(at) = t.not_before_ms() {
                    self.timers.remove(&(at, t.id));
                }
                for d in t.depends_on() {
                    if let Some(set) = self.children.get_mut(d) {
                        set.remove(&t.id);
                        if set.is_empty() {
                            self.children.remove(d);
                        }
                    }
                }
            }
            TaskState::Pending => {
                if let Some(q) = self.queues.get_mut(&*t.queue) {
                    q.pending.remove(&(order_key(q.settings.policy, t), t.id));
                }
            }
            TaskState::Running => {
                if let Some(w) = t.worker() {
                    if let Some(set) = self.on_worker.get_mut(w) {
                        set.remove(&t.id);
                        if set.is_empty() {
                            self.on_worker.remove(w);
                        }
                    }
                    if let Some(used) = self.usage.get_mut(w) {
                        used.slots -= 1;
                        used.cpu_millis -= t.resources.cpu_millis;
                        used.mem_mb -= t.resources.mem_mb;
                        if used.slots == 0 {
                            self.usage.remove(w);
                        }
                    }
                }
                if let Some(at) = t.deadline_ms() {
                    self.deadlines.remove(&(at, t.id));
                }
                if let (Some(key), Some(q)) = (t.concurrency_key(), self.queues.get_mut(&*t.queue))
                {
                    if let Some(n) = q.running_keys.get_mut(key) {
                        *n -= 1;
                        if *n == 0 {
                            q.running_keys.remove(key);
                        }
                    }
                }
            }
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled => {
                if let Some(q) = self.queues.get_mut(&*t.queue) {
                    q.expirable.remove(&(t.updated_at_ms, t.id));
                }
            }
        }
    }
}
