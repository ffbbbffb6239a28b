//! Workflows: a DAG of tasks naming each other by local names, submitted in one call (all or
//! nothing), read back with every task's state, cancelled whole.

use std::time::Duration;

use flotilla_core::{NamedTask, Task, TaskId};
use flotilla_proto::{pb, spec_to_pb, task_from_pb};

use crate::client::Consistency;
use crate::{Client, ClientError};

/// The answer to [`Client::submit_workflow`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmittedWorkflow {
    /// The workflow's id: its first task's id.
    pub id: TaskId,
    /// One id per task, in the order given.
    pub ids: Vec<TaskId>,
    /// False where the task existed already (a retried workflow, a known idempotency key).
    pub created: Vec<bool>,
}

/// A workflow's tasks, parents before children.
#[derive(Debug, Clone)]
pub struct WorkflowStatus {
    pub id: TaskId,
    pub submitted_at_ms: u64,
    pub members: Vec<WorkflowTaskStatus>,
}

#[derive(Debug, Clone)]
pub struct WorkflowTaskStatus {
    pub name: String,
    pub id: TaskId,
    /// The task (without its payload); for one removed by retention, what its tombstone
    /// remembers, or nothing once that is gone too.
    pub task: Option<Task>,
    pub removed: bool,
    /// Names of the members it runs after.
    pub after: Vec<String>,
}

impl WorkflowStatus {
    /// Every task finished (or removed by retention, which only removes finished tasks).
    pub fn is_finished(&self) -> bool {
        self.members
            .iter()
            .all(|m| m.removed || m.task.as_ref().is_some_and(|t| t.state.is_terminal()))
    }
}

impl Client {
    /// Submits a workflow: tasks whose `after` names other tasks of it, forming a DAG. All or
    /// nothing; a cycle, an unknown name or a repeated name is refused naming the task. Every
    /// task carries an idempotency key (a fresh one when it has none), so a retried call finds
    /// the same workflow.
    pub async fn submit_workflow(
        &self,
        tasks: Vec<NamedTask>,
    ) -> Result<SubmittedWorkflow, ClientError> {
        let n = tasks.len();
        let req = pb::SubmitWorkflowRequest {
            tasks: tasks
                .into_iter()
                .map(|mut t| {
                    if t.spec.idempotency_key.is_none() {
                        t.spec.idempotency_key = Some(uuid::Uuid::new_v4().to_string());
                    }
                    pb::WorkflowTask {
                        name: t.name,
                        spec: Some(spec_to_pb(&t.spec, true)),
                        after: t.after,
                    }
                })
                .collect(),
        };
        let resp = self
            .call("submit workflow", Duration::ZERO, |mut c| {
                let req = req.clone();
                async move { c.submit_workflow(req).await }
            })
            .await?;
        if resp.ids.len() != n || resp.created.len() != n {
            return Err(ClientError::BadResponse(format!(
                "{} ids for {n} tasks",
                resp.ids.len()
            )));
        }
        Ok(SubmittedWorkflow {
            id: TaskId(resp.workflow_id),
            ids: resp.ids.into_iter().map(TaskId).collect(),
            created: resp.created,
        })
    }

    /// A workflow with every task's state.
    pub async fn workflow(
        &self,
        id: TaskId,
        consistency: Consistency,
    ) -> Result<WorkflowStatus, ClientError> {
        let req = pb::GetWorkflowRequest {
            workflow_id: id.0,
            consistency: consistency.to_pb(),
        };
        let resp = self
            .read(consistency, "get workflow", |mut c| async move {
                c.get_workflow(req).await
            })
            .await?;
        let members = resp
            .members
            .into_iter()
            .map(|m| {
                let task = m
                    .task
                    .map(task_from_pb)
                    .transpose()
                    .map_err(|e| ClientError::BadResponse(e.to_string()))?;
                Ok(WorkflowTaskStatus {
                    name: m.name,
                    id: TaskId(m.id),
                    task,
                    removed: m.removed,
                    after: m.after,
                })
            })
            .collect::<Result<Vec<_>, ClientError>>()?;
        Ok(WorkflowStatus {
            id: TaskId(resp.workflow_id),
            submitted_at_ms: resp.submitted_at_ms,
            members,
        })
    }

    /// Cancels every unfinished task of a workflow; returns those cancelled, children first.
    pub async fn cancel_workflow(&self, id: TaskId) -> Result<Vec<TaskId>, ClientError> {
        let req = pb::CancelWorkflowRequest { workflow_id: id.0 };
        let resp = self
            .call("cancel workflow", Duration::ZERO, |mut c| async move {
                c.cancel_workflow(req).await
            })
            .await?;
        Ok(resp.cancelled.into_iter().map(TaskId).collect())
    }
}
