//! The workflow calls of the client API: submit a DAG in one call, read it, cancel it.
//!
//! Names are resolved here, at the edge (`flotilla_core::workflow::resolve`: unknown names and
//! cycles refused naming the task); `apply` re-checks the order and everything a submit checks.
//! Errors name the task by its position in the request, even where `apply` (which sees the
//! tasks in topological order) found them.

use std::collections::BTreeMap;

use flotilla_core::workflow::{resolve, NamedTask};
use flotilla_core::{
    batch_bytes, schedule::refuse_reserved_key, validate_spec, Command, CommandError, Limits,
    Lookup, Response as CoreResponse, TaskId, TaskState,
};
use flotilla_proto::pb;
use flotilla_proto::{spec_from_pb, task_to_pb};

use crate::api::Api;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::leadership::{ensure_leader, now_ms};

impl Api {
    pub(crate) async fn submit_workflow_call(
        &self,
        req: pb::SubmitWorkflowRequest,
        caller: Option<&Principal>,
    ) -> Result<pb::SubmitWorkflowResponse, ApiError> {
        if req.tasks.len() > Limits::MAX_WORKFLOW_TASKS {
            return Err(ApiError::Invalid {
                field: "tasks".into(),
                message: format!(
                    "workflow of {} tasks exceeds limit {}",
                    req.tasks.len(),
                    Limits::MAX_WORKFLOW_TASKS
                ),
            });
        }
        let mut named = Vec::with_capacity(req.tasks.len());
        for (i, t) in req.tasks.into_iter().enumerate() {
            let field = format!("tasks[{i}]");
            let spec = spec_from_pb(
                &format!("{field}.spec"),
                t.spec.ok_or_else(|| ApiError::Invalid {
                    field: format!("{field}.spec"),
                    message: "missing".into(),
                })?,
            )?;
            validate_spec(&field, &spec)?;
            refuse_reserved_key(&field, &spec)?;
            if let Some(why) = caller.and_then(|c| c.refuses_queue(&spec.queue)) {
                return Err(ApiError::PermissionDenied(format!("{field}.queue: {why}")));
            }
            named.push(NamedTask {
                name: t.name,
                spec,
                after: t.after,
            });
        }
        let n = named.len();
        let (tasks, order) = resolve(named)?;
        let bytes = batch_bytes(tasks.iter().map(|t| &t.spec));
        if bytes > Limits::MAX_BATCH_BYTES {
            return Err(ApiError::Invalid {
                field: "tasks".into(),
                message: format!(
                    "workflow of {bytes} bytes exceeds limit {} (max_batch_bytes)",
                    Limits::MAX_BATCH_BYTES
                ),
            });
        }
        let command = Command::SubmitWorkflow {
            now_ms: now_ms(),
            tasks,
            limits: self.admission,
        };
        let answer = match self.proposer.propose(command).await? {
            CoreResponse::Rejected(e) => return Err(in_request_order(e, &order).into()),
            other => other,
        };
        let CoreResponse::WorkflowSubmitted {
            workflow,
            ids,
            created,
        } = answer
        else {
            return Err(ApiError::Internal(format!(
                "unexpected response {answer:?}"
            )));
        };
        // Back to the request's order.
        let mut out_ids = vec![0; n];
        let mut out_created = vec![false; n];
        for (k, &i) in order.iter().enumerate() {
            out_ids[i] = ids[k].0;
            out_created[i] = created[k];
        }
        Ok(pb::SubmitWorkflowResponse {
            workflow_id: workflow.0,
            ids: out_ids,
            created: out_created,
        })
    }

    pub(crate) async fn get_workflow_call(
        &self,
        req: pb::GetWorkflowRequest,
    ) -> Result<pb::GetWorkflowResponse, ApiError> {
        self.read_consistency(req.consistency).await?;
        let applied = self.state.read();
        let state = &applied.state;
        let id = TaskId(req.workflow_id);
        let Some(w) = state.workflow(id) else {
            return Err(not_found(state, id));
        };
        let names: BTreeMap<TaskId, &str> = w
            .members
            .iter()
            .map(|m| (m.task, m.name.as_str()))
            .collect();
        let members = w
            .members
            .iter()
            .map(|m| {
                let (task, removed) = match state.lookup(m.task) {
                    Lookup::Task(t) => (Some(t), false),
                    Lookup::Removed(t) => (t, true),
                    Lookup::Unknown => (None, true),
                };
                let after = task
                    .as_ref()
                    .map(|t| {
                        t.spec
                            .depends_on
                            .iter()
                            .filter_map(|d| names.get(d).map(|n| n.to_string()))
                            .collect()
                    })
                    .unwrap_or_default();
                pb::WorkflowMember {
                    name: m.name.clone(),
                    id: m.task.0,
                    task: task.as_ref().map(|t| task_to_pb(t, false)),
                    removed,
                    after,
                }
            })
            .collect();
        Ok(pb::GetWorkflowResponse {
            workflow_id: w.id.0,
            submitted_at_ms: w.submitted_at_ms,
            members,
        })
    }

    pub(crate) async fn cancel_workflow_call(
        &self,
        req: pb::CancelWorkflowRequest,
        caller: Option<&Principal>,
    ) -> Result<pb::CancelWorkflowResponse, ApiError> {
        let id = TaskId(req.workflow_id);
        // The attempts running now, so that their workers hear of the cancel at once (as for a
        // single task); and, for a token limited to some queues, every member's queue.
        let running: BTreeMap<TaskId, (u32, String)> = {
            let applied = self.state.read();
            let state = &applied.state;
            let w = state.workflow(id).ok_or_else(|| not_found(state, id))?;
            if let Some(caller) = caller.filter(|c| c.queues.is_some()) {
                ensure_leader(&self.raft)?;
                for m in &w.members {
                    let Some(t) = state.get(m.task) else { continue };
                    if let Some(why) = caller.refuses_queue(&t.spec.queue) {
                        return Err(ApiError::PermissionDenied(format!(
                            "workflow {id}, task {}: {why}",
                            m.task
                        )));
                    }
                }
            }
            w.members
                .iter()
                .filter_map(|m| {
                    state
                        .running_attempt(m.task)
                        .map(|(a, w)| (m.task, (a, w.to_string())))
                })
                .collect()
        };
        let command = Command::CancelWorkflow {
            now_ms: now_ms(),
            workflow: id,
        };
        match self.propose(command).await? {
            CoreResponse::WorkflowCancelled { cancelled, .. } => {
                for (task, previous) in &cancelled {
                    if let (TaskState::Running, Some((attempt, worker))) =
                        (previous, running.get(task))
                    {
                        self.dispatcher.cancelled(*task, worker, *attempt);
                    }
                }
                Ok(pb::CancelWorkflowResponse {
                    cancelled: cancelled.iter().map(|(t, _)| t.0).collect(),
                })
            }
            other => Err(ApiError::Internal(format!("unexpected response {other:?}"))),
        }
    }
}

/// No workflow `id`; says so, and which workflow the task `id` belongs to if it does.
fn not_found(state: &flotilla_core::State, id: TaskId) -> ApiError {
    match state.workflow_of(id) {
        Some(w) => ApiError::NotFound(format!(
            "workflow {id} not found (task {id} belongs to workflow {w})"
        )),
        None => ApiError::NotFound(format!(
            "workflow {id} not found (a workflow's id is its first task's; it goes when retention removed its last task)"
        )),
    }
}

/// `apply` names a task by its position in the command (topological order): name it by its
/// position in the request instead.
fn in_request_order(e: CommandError, order: &[usize]) -> CommandError {
    match e {
        CommandError::Invalid { field, message } => {
            let field = field
                .strip_prefix("tasks[")
                .and_then(|rest| rest.split_once(']'))
                .and_then(|(k, tail)| {
                    let i = order.get(k.parse::<usize>().ok()?)?;
                    Some(format!("tasks[{i}]{tail}"))
                })
                .unwrap_or(field);
            CommandError::Invalid { field, message }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_of_apply_name_the_task_by_its_place_in_the_request() {
        let e = CommandError::invalid("tasks[0].depends_on", "unknown task 9");
        assert_eq!(
            in_request_order(e, &[2, 0, 1]),
            CommandError::invalid("tasks[2].depends_on", "unknown task 9")
        );
        let e = CommandError::invalid("tasks", "batch is empty");
        assert_eq!(in_request_order(e.clone(), &[1, 0]), e);
    }
}
