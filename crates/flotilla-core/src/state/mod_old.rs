//! The replicated state machine: the task table, its indexes and [`State::apply`].
//!
//! Only `tasks`, `next_task_id` and `clock_ms` are the state proper; every other field is an
//! index derived from them, rebuilt by [`State::from_image`] and checked by
//! [`State::check_invariants`].

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasherDefault;

use serde::{Deserialize, Serialize};

use crate::{
    validate_spec, Capacity, Checkpoint, Command, CommandError, Limits, Proposal, QueuePolicy,
    Response, Task, TaskId, TaskSpec, TaskState, Worker, WorkerSpec, REASON_UPSTREAM_FAILED,
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
    pub workers: Vec<Worker>,
    /// Queues with a policy other than the default (FIFO).
    pub queue_policies: Vec<(String, QueuePolicy)>,
}

/// The scheduler's replicated state. Mutated only by [`State::apply`].
#[derive(Debug, Clone, Default)]
pub struct State {
    tasks: BTreeMap<TaskId, Task>,
    next_task_id: u64,
    /// Largest `now_ms` of any applied command: the replicated clock.
    clock_ms: u64,
    /// Registered workers by id.
    workers: BTreeMap<String, Worker>,
    /// Queues with a non-default policy.
    queue_policies: BTreeMap<String, QueuePolicy>,

    // ---- derived indexes ----
    /// Tasks in state `waiting`.
    waiting: BTreeSet<TaskId>,
    /// Waiting tasks whose `not_before_ms` is still ahead of `clock_ms`, by that time.
    timers: BTreeSet<(u64, TaskId)>,
    /// Tasks in state `pending`, per queue, in submission order.
    pending: BTreeMap<String, BTreeSet<TaskId>>,
    /// Tasks in state `running`.
    running: BTreeSet<TaskId>,
    /// Worker id -> its running tasks.
    on_worker: BTreeMap<String, BTreeSet<TaskId>>,
    /// Idempotency key -> the task created with it. Hashed, not ordered: a lookup per submitted
    /// task must not cost a string comparison per tree level. The hasher is SipHash with fixed
    /// keys — deterministic on every replica — and the map is never iterated by `apply`.
    by_key: HashMap<String, TaskId, BuildHasherDefault<DefaultHasher>>,
    /// Parent -> waiting children that still need it to succeed.
    children: BTreeMap<TaskId, BTreeSet<TaskId>>,
    /// Number of tasks per state, indexed by `TaskState as usize`.
    counts: [u64; 6],
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

    pub fn workers(&self) -> impl Iterator<Item = &Worker> + '_ {
        self.workers.values()
    }

    pub fn worker(&self, id: &str) -> Option<&Worker> {
        self.workers.get(id)
    }

    /// Tasks running on worker `id`.
    pub fn tasks_on(&self, id: &str) -> impl Iterator<Item = &Task> + '_ {
        self.on_worker
            .get(id)
            .into_iter()
            .flatten()
            .map(|t| &self.tasks[t])
    }

    /// What a worker's running tasks use of its capacity.
    pub fn worker_usage(&self, id: &str) -> Capacity {
        let mut used = Capacity::default();
        for t in self.tasks_on(id) {
            used.slots += 1;
            used.cpu_millis = used.cpu_millis.saturating_add(t.spec.resources.cpu_millis);
            used.mem_mb = used.mem_mb.saturating_add(t.spec.resources.mem_mb);
        }
        used
    }

    /// Queues with a non-default policy.
    pub fn queue_policies(&self) -> Vec<(String, QueuePolicy)> {
        self.queue_policies
            .iter()
            .map(|(q, p)| (q.clone(), *p))
            .collect()
    }

    pub fn queue_policy(&self, queue: &str) -> QueuePolicy {
        self.queue_policies.get(queue).copied().unwrap_or_default()
    }

    /// Queues with pending tasks, by name.
    pub fn pending_queues(&self) -> impl Iterator<Item = &str> + '_ {
        self.pending.keys().map(String::as_str)
    }

    /// Running tasks, by id.
    pub fn running(&self) -> impl Iterator<Item = &Task> + '_ {
        self.running.iter().map(|t| &self.tasks[t])
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
            Command::RegisterWorker { now_ms, worker } => self
                .register_worker(*now_ms, worker)
                .unwrap_or_else(Response::Rejected),
            Command::ExpireWorker {
                now_ms,
                worker_id,
                reason,
            } => self
                .expire_worker(*now_ms, worker_id, reason)
                .unwrap_or_else(Response::Rejected),
            Command::Assign {
                now_ms,
                task_id,
                worker_id,
                attempt,
            } => self
                .assign(*now_ms, *task_id, worker_id, *attempt)
                .unwrap_or_else(Response::Rejected),
            Command::Complete {
                now_ms,
                task_id,
                worker_id,
                attempt,
                result,
            } => self
                .complete(*now_ms, *task_id, worker_id, *attempt, result)
                .unwrap_or_else(Response::Rejected),
            Command::Fail {
                now_ms,
                task_id,
                worker_id,
                attempt,
                error,
                retryable,
            } => self
                .fail(*now_ms, *task_id, worker_id, *attempt, error, *retryable)
                .unwrap_or_else(Response::Rejected),
            Command::SaveCheckpoint {
                now_ms,
                task_id,
                worker_id,
                attempt,
                progress_permille,
                data,
            } => self
                .save_checkpoint(
                    *now_ms,
                    *task_id,
                    worker_id,
                    *attempt,
                    *progress_permille,
                    data,
                )
                .unwrap_or_else(Response::Rejected),
            Command::SetQueuePolicy { queue, policy, .. } => {
                match validate_queue_name("queue", queue) {
                    Ok(()) => {
                        if *policy == QueuePolicy::Fifo {
                            self.queue_policies.remove(queue);
                        } else {
                            self.queue_policies.insert(queue.clone(), *policy);
                        }
                        Response::QueuePolicySet
                    }
                    Err(e) => Response::Rejected(e),
                }
            }
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

    fn register_worker(
        &mut self,
        now_ms: u64,
        spec: &WorkerSpec,
    ) -> Result<Response, CommandError> {
        spec.validate()?;
        if let Some(existing) = self.workers.get(&spec.id) {
            if existing.spec.session != spec.session {
                return Err(CommandError::DuplicateWorker(spec.id.clone()));
            }
            // Same process again (e.g. after a leader change): keep the original registration,
            // whose capacity its running tasks were placed against.
            return Ok(Response::WorkerRegistered {
                worker_id: spec.id.clone(),
                resumed: true,
            });
        }
        self.workers.insert(
            spec.id.clone(),
            Worker {
                spec: spec.clone(),
                registered_at_ms: now_ms,
            },
        );
        Ok(Response::WorkerRegistered {
            worker_id: spec.id.clone(),
            resumed: false,
        })
    }

    fn expire_worker(
        &mut self,
        now_ms: u64,
        worker_id: &str,
        reason: &str,
    ) -> Result<Response, CommandError> {
        if !self.workers.contains_key(worker_id) {
            return Err(CommandError::UnknownWorker(worker_id.to_string()));
        }
        let (mut requeued, mut failed) = (Vec::new(), Vec::new());
        let lost = format!("worker {worker_id} lost: {reason}");
        let running: Vec<TaskId> = self
            .on_worker
            .get(worker_id)
            .into_iter()
            .flatten()
            .copied()
            .collect();
        for id in running {
            let task = &self.tasks[&id];
            if task.attempts < task.spec.max_attempts {
                self.set_state(now_ms, id, TaskState::Pending, |t| {
                    t.reason = Some(lost.clone())
                });
                requeued.push(id);
            } else {
                self.finish(now_ms, id, TaskState::Failed, Some(lost.clone()));
                failed.push(id);
            }
        }
        self.workers.remove(worker_id);
        Ok(Response::WorkerExpired {
            worker_id: worker_id.to_string(),
            requeued,
            failed,
        })
    }

    /// Checks that the task can be placed on the worker now.
    pub fn check_fit(&self, task: &Task, worker_id: &str) -> Result<(), CommandError> {
        let worker = self
            .workers
            .get(worker_id)
            .ok_or_else(|| CommandError::UnknownWorker(worker_id.to_string()))?;
        let no = |message: String| {
            Err(CommandError::DoesNotFit {
                task_id: task.id,
                worker_id: worker_id.to_string(),
                message,
            })
        };
        if !worker.spec.serves(&task.spec.queue) {
            return no(format!("does not serve queue {:?}", task.spec.queue));
        }
        if !worker.spec.matches(&task.spec.labels) {
            return no("label constraints not met".into());
        }
        let used = self.worker_usage(worker_id);
        let cap = worker.spec.capacity;
        let needs = task.spec.resources;
        if used.slots >= cap.slots
            || used.cpu_millis.saturating_add(needs.cpu_millis) > cap.cpu_millis
            || used.mem_mb.saturating_add(needs.mem_mb) > cap.mem_mb
        {
            return no(format!(
                "needs 1 slot, {} mcpu, {} MB; free {} slots, {} mcpu, {} MB",
                needs.cpu_millis,
                needs.mem_mb,
                cap.slots.saturating_sub(used.slots),
                cap.cpu_millis.saturating_sub(used.cpu_millis),
                cap.mem_mb.saturating_sub(used.mem_mb)
            ));
        }
        Ok(())
    }

    fn assign(
        &mut self,
        now_ms: u64,
        id: TaskId,
        worker_id: &str,
        attempt: u32,
    ) -> Result<Response, CommandError> {
        let task = self.tasks.get(&id).ok_or(CommandError::NotFound(id))?;
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
        let worker = worker_id.to_string();
        self.set_state(now_ms, id, TaskState::Running, |t| {
            t.attempts = attempt;
            t.worker = Some(worker);
            t.started_at_ms = Some(now_ms);
        });
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
    ) -> Result<&Task, CommandError> {
        let task = self.tasks.get(&id).ok_or(CommandError::NotFound(id))?;
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
        if task.worker.as_deref() != Some(worker_id) {
            return Err(CommandError::WrongState {
                task_id: id,
                state: task.state,
                message: format!("attempt {attempt} does not run on worker {worker_id:?}"),
            });
        }
        Ok(task)
    }

    fn complete(
        &mut self,
        now_ms: u64,
        id: TaskId,
        worker_id: &str,
        attempt: u32,
        result: &[u8],
    ) -> Result<Response, CommandError> {
        self.check_current(id, worker_id, attempt)?;
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
        let result = result.to_vec();
        self.set_state(now_ms, id, TaskState::Succeeded, |t| {
            t.result = Some(result);
            t.reason = None;
        });
        // Children waiting on this task may now run.
        for child in self.children.remove(&id).unwrap_or_default() {
            if self.is_ready(&self.tasks[&child]) {
                self.set_state(now_ms, child, TaskState::Pending, |_| {});
            }
        }
        Ok(Response::Completed { task_id: id })
    }

    fn fail(
        &mut self,
        now_ms: u64,
        id: TaskId,
        worker_id: &str,
        attempt: u32,
        error: &str,
        retryable: bool,
    ) -> Result<Response, CommandError> {
        let task = self.check_current(id, worker_id, attempt)?;
        let error: String = error.chars().take(Limits::MAX_ERROR_LEN).collect();
        if retryable && task.attempts < task.spec.max_attempts {
            let backoff = Limits::RETRY_BACKOFF_BASE_MS
                .saturating_mul(1u64 << (task.attempts.saturating_sub(1)).min(20))
                .min(Limits::RETRY_BACKOFF_MAX_MS);
            let retry_at = now_ms.saturating_add(backoff);
            self.set_state(now_ms, id, TaskState::Waiting, |t| {
                t.reason = Some(error);
                t.spec.not_before_ms = Some(retry_at);
            });
            return Ok(Response::AttemptFailed {
                task_id: id,
                retry_at_ms: Some(retry_at),
            });
        }
        self.finish(now_ms, id, TaskState::Failed, Some(error));
        Ok(Response::AttemptFailed {
            task_id: id,
            retry_at_ms: None,
        })
    }

    fn save_checkpoint(
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
        let task = self.tasks.get_mut(&id).expect("checked above");
        task.checkpoint = Some(checkpoint);
        task.updated_at_ms = now_ms;
        Ok(Response::CheckpointSaved { task_id: id })
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
            worker: None,
            started_at_ms: None,
            checkpoint: None,
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
        id
    }

    fn cancel(&mut self, now_ms: u64, id: TaskId) -> Result<TaskState, CommandError> {
        let task = self.tasks.get(&id).ok_or(CommandError::NotFound(id))?;
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
        if state != TaskState::Running {
            task.worker = None;
        }
        edit(&mut task);
        self.index_insert(&task);
        self.counts[task.state.index()] += 1;
        self.tasks.insert(id, task);
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
                if let Some(w) = &task.worker {
                    self.on_worker.entry(w.clone()).or_default().insert(task.id);
                }
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
                if let Some(w) = &task.worker {
                    if let Some(set) = self.on_worker.get_mut(w) {
                        set.remove(&task.id);
                        if set.is_empty() {
                            self.on_worker.remove(w);
                        }
                    }
                }
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
            workers: self.workers.values().cloned().collect(),
            queue_policies: self
                .queue_policies
                .iter()
                .map(|(q, p)| (q.clone(), *p))
                .collect(),
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
            workers: image
                .workers
                .into_iter()
                .map(|w| (w.spec.id.clone(), w))
                .collect(),
            queue_policies: image.queue_policies.into_iter().collect(),
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
        for t in self.running.iter().map(|id| &self.tasks[id]) {
            let on = t.worker.as_ref().is_some_and(|w| {
                self.workers.contains_key(w)
                    && self.on_worker.get(w).is_some_and(|s| s.contains(&t.id))
            });
            if !on {
                return Err(format!("running task {} not on a registered worker", t.id));
            }
        }
        for (w, set) in &self.on_worker {
            let Some(worker) = self.workers.get(w) else {
                return Err(format!("tasks on unregistered worker {w}"));
            };
            if set.is_empty() {
                return Err(format!("empty task set for worker {w}"));
            }
            let used = self.worker_usage(w);
            let cap = worker.spec.capacity;
            if used.slots > cap.slots
                || used.cpu_millis > cap.cpu_millis
                || used.mem_mb > cap.mem_mb
            {
                return Err(format!("worker {w} over capacity: {used:?} > {cap:?}"));
            }
        }
        if self
            .tasks
            .values()
            .any(|t| t.worker.is_some() && t.state != TaskState::Running)
        {
            return Err("a task that is not running names a worker".into());
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

/// Checks a queue name (shared by specs and queue policies).
fn validate_queue_name(field: &str, queue: &str) -> Result<(), CommandError> {
    let mut spec = TaskSpec::new(queue, Vec::new());
    spec.max_attempts = 1;
    validate_spec(field, &spec).map_err(|e| match e {
        CommandError::Invalid { message, .. } => CommandError::invalid(field, message),
        other => other,
    })
}

#[cfg(test)]
mod tests;
