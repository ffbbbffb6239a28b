//! The worker protocol service (`flotilla.v1.Workers`): registration and the assignment stream
//! (through the [`Dispatcher`]), heartbeats, and fenced completions, failures and checkpoints
//! — one at a time or many of one session in a call (`ReportOutcomes`, each fenced and answered
//! on its own);
//! and the results of a running attempt's parents (`TaskInputs`), so a task's output is its
//! dependents' input.
//!
//! Every report is checked twice: at this edge it must come from the worker's own session (and,
//! with tokens on, its own token: [`Dispatcher::check_reporter`]) — so no one else can complete,
//! fail or checkpoint a worker's task even knowing the attempt — and in `apply` the attempt
//! fence refuses a stale attempt.

use std::sync::Arc;

use flotilla_core::{Command, Response as CoreResponse, TaskId, TaskState};
use flotilla_proto::pb::{self, workers_server::Workers};
use flotilla_proto::{worker_spec_from_pb, MAX_OUTCOMES_PER_CALL};
use flotilla_store::SharedState;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::Principal;
use crate::dispatch::Dispatcher;
use crate::error::ApiError;
use crate::leadership::now_ms;
use crate::planted::PlantedBug;
use crate::proposer::Proposer;

pub struct WorkerService {
    pub dispatcher: Arc<Dispatcher>,
    pub proposer: Proposer,
    pub state: SharedState,
    pub planted: Option<PlantedBug>,
}

impl WorkerService {
    /// Proposes a fenced command; any rejection (stale attempt, wrong worker...) is an error.
    async fn fenced(&self, command: Command) -> Result<Response<pb::Ack>, Status> {
        match self.proposer.propose(command).await? {
            CoreResponse::Rejected(e) => Err(ApiError::from(e).into()),
            _ => Ok(Response::new(pb::Ack {})),
        }
    }

    /// Under the planted `skip-attempt-check` bug, the leader "trusts itself": it stamps the
    /// current attempt and worker into a completion, so a stale attempt is accepted.
    fn forge_current(&self, task_id: TaskId, worker_id: &mut String, attempt: &mut u32) {
        if self.planted != Some(PlantedBug::SkipAttemptCheck) {
            return;
        }
        let applied = self.state.read();
        if let Some(t) = applied.state.get(task_id) {
            *attempt = t.attempts;
            if let Some(w) = &t.worker {
                *worker_id = w.clone();
            }
        }
    }
}

#[tonic::async_trait]
impl Workers for WorkerService {
    type RegisterStream = ReceiverStream<Result<pb::WorkerEvent, Status>>;

    async fn register(
        &self,
        request: Request<pb::ConnectRequest>,
    ) -> Result<Response<Self::RegisterStream>, Status> {
        let caller = request.extensions().get::<Principal>().cloned();
        let spec = request
            .into_inner()
            .worker
            .ok_or_else(|| Status::invalid_argument("invalid worker: missing"))?;
        let rx = self
            .dispatcher
            .connect(worker_spec_from_pb(spec), caller.as_ref())
            .await?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let caller = request.extensions().get::<Principal>().cloned();
        let req = request.into_inner();
        let running: Vec<(TaskId, u32)> = req
            .running
            .iter()
            .map(|r| (TaskId(r.task_id), r.attempt))
            .collect();
        let cancel = self.dispatcher.heartbeat(
            &req.worker_id,
            &req.session,
            &running,
            req.draining,
            caller.as_ref(),
        )?;
        Ok(Response::new(pb::HeartbeatResponse {
            cancel: cancel
                .into_iter()
                .map(|(id, attempt)| pb::RunningAttempt {
                    task_id: id.0,
                    attempt,
                })
                .collect(),
        }))
    }

    async fn complete_task(
        &self,
        request: Request<pb::CompleteTaskRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let caller = request.extensions().get::<Principal>().cloned();
        let mut req = request.into_inner();
        self.dispatcher
            .check_reporter(&req.worker_id, &req.session, caller.as_ref())?;
        let task_id = TaskId(req.task_id);
        self.forge_current(task_id, &mut req.worker_id, &mut req.attempt);
        self.fenced(Command::Complete {
            now_ms: now_ms(),
            task_id,
            worker_id: req.worker_id,
            attempt: req.attempt,
            result: req.result,
        })
        .await
    }

    async fn fail_task(
        &self,
        request: Request<pb::FailTaskRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let caller = request.extensions().get::<Principal>().cloned();
        let req = request.into_inner();
        self.dispatcher
            .check_reporter(&req.worker_id, &req.session, caller.as_ref())?;
        self.fenced(Command::Fail {
            now_ms: now_ms(),
            task_id: TaskId(req.task_id),
            worker_id: req.worker_id,
            attempt: req.attempt,
            error: req.error,
            retryable: req.retryable,
        })
        .await
    }

    async fn report_outcomes(
        &self,
        request: Request<pb::ReportOutcomesRequest>,
    ) -> Result<Response<pb::ReportOutcomesResponse>, Status> {
        let caller = request.extensions().get::<Principal>().cloned();
        let req = request.into_inner();
        if req.outcomes.len() > MAX_OUTCOMES_PER_CALL {
            return Err(ApiError::Invalid {
                field: "outcomes".into(),
                message: format!(
                    "{} in one call exceeds limit {MAX_OUTCOMES_PER_CALL}",
                    req.outcomes.len()
                ),
            }
            .into());
        }
        self.dispatcher
            .check_reporter(&req.worker_id, &req.session, caller.as_ref())?;
        let now_ms = now_ms();
        let mut commands = Vec::with_capacity(req.outcomes.len());
        for (i, o) in req.outcomes.into_iter().enumerate() {
            let task_id = TaskId(o.task_id);
            let (mut worker_id, mut attempt) = (req.worker_id.clone(), o.attempt);
            commands.push(match o.outcome {
                Some(pb::attempt_outcome::Outcome::Result(result)) => {
                    self.forge_current(task_id, &mut worker_id, &mut attempt);
                    Command::Complete {
                        now_ms,
                        task_id,
                        worker_id,
                        attempt,
                        result,
                    }
                }
                Some(pb::attempt_outcome::Outcome::Failure(f)) => Command::Fail {
                    now_ms,
                    task_id,
                    worker_id,
                    attempt,
                    error: f.error,
                    retryable: f.retryable,
                },
                None => {
                    return Err(ApiError::Invalid {
                        field: format!("outcomes[{i}].outcome"),
                        message: "missing (a result or a failure)".into(),
                    }
                    .into())
                }
            });
        }
        // All proposed at once: the group commit folds them into one entry or a few.
        let answers =
            futures::future::join_all(commands.into_iter().map(|c| self.proposer.propose(c))).await;
        let mut results = Vec::with_capacity(answers.len());
        for answer in answers {
            // A failure of the call itself (not the leader, unavailable) fails the whole call:
            // the worker sends it all again, and what was applied is acknowledged again.
            results.push(match answer? {
                CoreResponse::Rejected(e) => {
                    let status: Status = ApiError::from(e).into();
                    pb::OutcomeResult {
                        code: status.code() as i32,
                        message: status.message().to_string(),
                    }
                }
                _ => pb::OutcomeResult::default(),
            });
        }
        Ok(Response::new(pb::ReportOutcomesResponse { results }))
    }

    type TaskInputsStream = ReceiverStream<Result<pb::TaskInput, Status>>;

    async fn task_inputs(
        &self,
        request: Request<pb::TaskInputsRequest>,
    ) -> Result<Response<Self::TaskInputsStream>, Status> {
        let caller = request.extensions().get::<Principal>().cloned();
        let req = request.into_inner();
        self.dispatcher.ensure_leader()?;
        self.dispatcher
            .check_reporter(&req.worker_id, &req.session, caller.as_ref())?;
        let task_id = TaskId(req.task_id);
        let parents = {
            let applied = self.state.read();
            let Some(t) = applied.state.get(task_id) else {
                return Err(ApiError::NotFound(format!("task {task_id} not found")).into());
            };
            // The attempt fence, at this edge: only the attempt running now reads the inputs.
            if t.state != TaskState::Running
                || t.attempts != req.attempt
                || t.worker.as_deref() != Some(req.worker_id.as_str())
            {
                return Err(ApiError::FailedPrecondition(format!(
                    "task {task_id} attempt {} is not running on worker {:?}",
                    req.attempt, req.worker_id
                ))
                .into());
            }
            t.spec.depends_on
        };
        // One parent's result at a time (each at most MAX_RESULT_BYTES), read as it is sent.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let state = self.state.clone();
        tokio::spawn(async move {
            for parent in parents {
                let input = match state.read().state.get(parent) {
                    Some(p) if p.state == TaskState::Succeeded => Ok(pb::TaskInput {
                        parent_id: parent.0,
                        result: p.result.unwrap_or_default(),
                    }),
                    Some(p) => Err(ApiError::FailedPrecondition(format!(
                        "parent {parent} of task {task_id} is {}, not succeeded",
                        p.state
                    ))),
                    None => Err(ApiError::FailedPrecondition(format!(
                        "parent {parent} of task {task_id} is no longer held"
                    ))),
                };
                let failed = input.is_err();
                if tx.send(input.map_err(Status::from)).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn checkpoint(
        &self,
        request: Request<pb::CheckpointRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let caller = request.extensions().get::<Principal>().cloned();
        let req = request.into_inner();
        self.dispatcher
            .check_reporter(&req.worker_id, &req.session, caller.as_ref())?;
        self.fenced(Command::SaveCheckpoint {
            now_ms: now_ms(),
            task_id: TaskId(req.task_id),
            worker_id: req.worker_id,
            attempt: req.attempt,
            progress_permille: req.progress_permille,
            data: req.data,
        })
        .await
    }

    async fn leave(&self, request: Request<pb::LeaveRequest>) -> Result<Response<pb::Ack>, Status> {
        let caller = request.extensions().get::<Principal>().cloned();
        let req = request.into_inner();
        self.dispatcher
            .leave(&req.worker_id, &req.session, caller.as_ref())
            .await?;
        Ok(Response::new(pb::Ack {}))
    }
}
