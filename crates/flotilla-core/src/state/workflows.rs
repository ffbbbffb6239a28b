//! Workflows in the replicated state: submitting one (all or nothing), cancelling what has not
//! finished, and forgetting one when retention has removed its last task.
//!
//! A workflow is known by the id of its first task. Each task belongs to at most one workflow:
//! a task found by its idempotency key may join a new workflow only if it is in none, and a
//! submit whose first task's key finds the first task of a workflow with the same tasks is a
//! retry, answered with that workflow.

use super::State;
use crate::workflow::{validate_task_name, Workflow, WorkflowMember, WorkflowTask};
use crate::{AdmissionLimits, CommandError, Limits, Response, TaskId, TaskSpec, TaskState};

impl State {
    /// The workflow whose first task is `id`.
    pub fn workflow(&self, id: TaskId) -> Option<&Workflow> {
        self.workflows.get(&id)
    }

    /// The workflow task `id` belongs to, while the task is held.
    pub fn workflow_of(&self, id: TaskId) -> Option<TaskId> {
        self.member_of.get(&id).copied()
    }

    /// Workflows held.
    pub fn workflow_count(&self) -> usize {
        self.workflows.len()
    }

    pub(super) fn submit_workflow(
        &mut self,
        now_ms: u64,
        tasks: &[WorkflowTask],
        limits: &AdmissionLimits,
    ) -> Result<Response, CommandError> {
        // Validate everything before touching anything: all or nothing.
        let specs: Vec<&TaskSpec> = tasks.iter().map(|t| &t.spec).collect();
        let extra: usize = tasks.iter().map(|t| t.name.len() + 8 * t.after.len()).sum();
        self.check_batch(&specs, Limits::MAX_WORKFLOW_TASKS, extra)?;
        let mut names = std::collections::BTreeMap::new();
        let mut keys = std::collections::BTreeMap::new();
        for (i, t) in tasks.iter().enumerate() {
            validate_task_name(&format!("tasks[{i}].name"), &t.name)?;
            if let Some(j) = names.insert(t.name.as_str(), i) {
                return Err(CommandError::invalid(
                    format!("tasks[{i}].name"),
                    format!("{:?} is also the name of tasks[{j}]", t.name),
                ));
            }
            if let Some(&p) = t.after.iter().find(|p| **p as usize >= i) {
                return Err(CommandError::invalid(
                    format!("tasks[{i}].after"),
                    format!(
                        "task {:?} runs after position {p}, which is not before it",
                        t.name
                    ),
                ));
            }
            if let Some(k) = t.spec.idempotency_key.as_deref() {
                if let Some(j) = keys.insert(k, i) {
                    return Err(CommandError::invalid(
                        format!("tasks[{i}].idempotency_key"),
                        format!("{k:?} is also the key of tasks[{j}]"),
                    ));
                }
            }
        }
        // Tasks that exist already, found by their keys.
        let existing: Vec<Option<TaskId>> = tasks
            .iter()
            .map(|t| {
                t.spec
                    .idempotency_key
                    .as_deref()
                    .and_then(|k| self.task_by_key(k))
            })
            .collect();
        if let Some(w) = existing[0].and_then(|id| self.workflows.get(&id)) {
            let same = w.members.len() == tasks.len()
                && w.members
                    .iter()
                    .zip(&existing)
                    .all(|(m, e)| *e == Some(m.task));
            if !same {
                return Err(CommandError::invalid(
                    "tasks[0].idempotency_key",
                    format!(
                        "task {} is the first task of workflow {} with other tasks",
                        w.id, w.id
                    ),
                ));
            }
            return Ok(Response::WorkflowSubmitted {
                workflow: w.id,
                ids: w.members.iter().map(|m| m.task).collect(),
                created: vec![false; tasks.len()],
            });
        }
        for (i, e) in existing.iter().enumerate() {
            let Some(id) = e else { continue };
            if let Some(w) = self.member_of.get(id) {
                return Err(CommandError::invalid(
                    format!("tasks[{i}].idempotency_key"),
                    format!("task {id} belongs to workflow {w}"),
                ));
            }
        }
        for (i, t) in tasks.iter().enumerate() {
            if existing[i].is_some() {
                continue; // not created: its own dependencies are what they were
            }
            for &p in &t.after {
                if let Some(id) = existing[p as usize].filter(|id| self.record(*id).is_none()) {
                    return Err(CommandError::invalid(
                        format!("tasks[{i}].after"),
                        format!(
                            "{:?} is task {id}, removed by retention",
                            tasks[p as usize].name
                        ),
                    ));
                }
            }
        }
        let fresh: Vec<&TaskSpec> = specs
            .iter()
            .zip(&existing)
            .filter(|(_, e)| e.is_none())
            .map(|(s, _)| *s)
            .collect();
        self.admit(&fresh, limits)?;

        let mut ids: Vec<TaskId> = Vec::with_capacity(tasks.len());
        let mut created = Vec::with_capacity(tasks.len());
        for (t, e) in tasks.iter().zip(&existing) {
            if let Some(id) = e {
                ids.push(*id);
                created.push(false);
                continue;
            }
            let mut spec = t.spec.clone();
            spec.depends_on
                .extend(t.after.iter().map(|p| ids[*p as usize]));
            ids.push(self.insert_new(now_ms, &spec));
            created.push(true);
        }
        let workflow = Workflow {
            id: ids[0],
            submitted_at_ms: now_ms,
            members: tasks
                .iter()
                .zip(&ids)
                .map(|(t, id)| WorkflowMember {
                    name: t.name.clone(),
                    task: *id,
                })
                .collect(),
        };
        // Only tasks still held count; a workflow of removed tasks only is not kept.
        self.add_workflow(workflow);
        Ok(Response::WorkflowSubmitted {
            workflow: ids[0],
            ids,
            created,
        })
    }

    /// Indexes and keeps `w` if any of its tasks is held.
    pub(super) fn add_workflow(&mut self, w: Workflow) {
        let held: Vec<TaskId> = w
            .members
            .iter()
            .map(|m| m.task)
            .filter(|t| self.record(*t).is_some())
            .collect();
        if held.is_empty() {
            return;
        }
        for t in &held {
            self.member_of.insert(*t, w.id);
        }
        self.members_held.insert(w.id, held.len() as u32);
        self.workflows.insert(w.id, w);
    }

    /// Cancels every unfinished task of workflow `id`, children first (so each is cancelled,
    /// not failed as `upstream_failed`).
    pub(super) fn cancel_workflow(
        &mut self,
        now_ms: u64,
        id: TaskId,
    ) -> Result<Response, CommandError> {
        let w = self
            .workflows
            .get(&id)
            .ok_or(CommandError::UnknownWorkflow(id))?;
        let members: Vec<TaskId> = w.members.iter().rev().map(|m| m.task).collect();
        let mut cancelled = Vec::new();
        for t in members {
            let Some(state) = self.record(t).map(|r| r.state) else {
                continue;
            };
            if !state.is_terminal() {
                self.finish(now_ms, t, TaskState::Cancelled, Some("cancelled".into()));
                cancelled.push((t, state));
            }
        }
        Ok(Response::WorkflowCancelled {
            workflow: id,
            cancelled,
        })
    }

    /// Retention removed task `id`: a workflow whose last held task it was goes too.
    pub(super) fn forget_member(&mut self, id: TaskId) {
        let Some(w) = self.member_of.remove(&id) else {
            return;
        };
        let n = self
            .members_held
            .get_mut(&w)
            .expect("a workflow with members counts them");
        *n -= 1;
        if *n == 0 {
            self.members_held.remove(&w);
            self.workflows.remove(&w);
        }
    }
}
