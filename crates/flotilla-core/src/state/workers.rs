//! The worker registry and capacity: registration, expiry (its running tasks go back to
//! pending, or fail when out of attempts), and whether a task fits a worker now.

use super::record::{Entry, TaskRecord};
use super::State;
use crate::{CommandError, Response, TaskId, TaskState, Worker, WorkerSpec};

impl State {
    pub(super) fn register_worker(
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

    pub(super) fn expire_worker(
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
            let task = self.record(id).expect("running tasks exist");
            if task.attempts < task.max_attempts {
                // The replicated clock, never behind the attempt's start.
                let clock = self.clock_ms;
                if let Some(Entry::Task(t)) = self.tasks.get_mut(id) {
                    t.record_ended(clock, &lost, None);
                }
                self.set_state(now_ms, id, TaskState::Pending, |t| {
                    t.edit_run(|r| r.reason = Some(lost.clone()))
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

    /// Checks that task `id` can be placed on the worker now.
    pub fn check_fit_id(&self, id: TaskId, worker_id: &str) -> Result<(), CommandError> {
        self.check_fit(self.existing(id)?, worker_id)
    }

    pub(super) fn check_fit(&self, task: &TaskRecord, worker_id: &str) -> Result<(), CommandError> {
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
        if !worker.spec.serves(&task.queue) {
            return no(format!("does not serve queue {:?}", &*task.queue));
        }
        if !worker.spec.matches(task.labels()) {
            return no("label constraints not met".into());
        }
        let used = self.worker_usage(worker_id);
        let cap = worker.spec.capacity;
        let needs = task.resources;
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
}
