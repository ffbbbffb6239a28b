//! The worker protocol and worker administration, on the same leader-following machinery as
//! the client API.

use std::time::Duration;

use flotilla_core::{TaskId, WorkerSpec};
use flotilla_proto::pb::{self, workers_client::WorkersClient};
use flotilla_proto::{worker_spec_from_pb, worker_spec_to_pb, MAX_OUTCOMES_PER_CALL};
use tonic::Streaming;

use crate::client::MAX_MESSAGE_BYTES;
use crate::{Client, ClientError};

fn workers(channel: crate::client::Conn) -> WorkersClient<crate::client::Conn> {
    WorkersClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// A task attempt pushed to a worker.
#[derive(Debug, Clone)]
pub struct Assignment {
    pub task_id: TaskId,
    pub attempt: u32,
    pub queue: String,
    pub payload: Vec<u8>,
    /// The latest checkpoint saved by an earlier attempt.
    pub checkpoint: Option<Vec<u8>>,
    pub timeout: Option<Duration>,
    /// The tasks this one depends on (their results: [`Client::task_inputs`]).
    pub parents: Vec<TaskId>,
}

/// The outcome of one attempt, as its worker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It succeeded with this result.
    Success(Vec<u8>),
    /// It failed; a retryable failure runs again (within the task's retry budget).
    Failure { error: String, retryable: bool },
}

/// What the leader sends on a worker's stream.
#[derive(Debug, Clone)]
pub enum WorkerEvent {
    Assign(Assignment),
    /// Stop this attempt.
    Cancel {
        task_id: TaskId,
        attempt: u32,
    },
}

/// The assignment stream of a registered worker.
pub struct WorkerStream {
    inner: Streaming<pb::WorkerEvent>,
    /// The replica that accepted the registration.
    leader: Option<String>,
}

impl WorkerStream {
    /// The replica (the leader then) that holds this stream, when known.
    pub fn leader(&self) -> Option<&str> {
        self.leader.as_deref()
    }

    /// The next event; `Ok(None)` when the leader closed the stream.
    pub async fn next(&mut self) -> Result<Option<WorkerEvent>, ClientError> {
        loop {
            let msg = self
                .inner
                .message()
                .await
                .map_err(|s| ClientError::Unavailable(s.message().to_string()))?;
            let Some(msg) = msg else { return Ok(None) };
            match msg.event {
                Some(pb::worker_event::Event::Assignment(a)) => {
                    return Ok(Some(WorkerEvent::Assign(Assignment {
                        task_id: TaskId(a.task_id),
                        attempt: a.attempt,
                        queue: a.queue,
                        payload: a.payload,
                        checkpoint: a.has_checkpoint.then_some(a.checkpoint),
                        timeout: Some(a.timeout_ms)
                            .filter(|t| *t > 0)
                            .map(Duration::from_millis),
                        parents: a.parents.into_iter().map(TaskId).collect(),
                    })))
                }
                Some(pb::worker_event::Event::Cancel(c)) => {
                    return Ok(Some(WorkerEvent::Cancel {
                        task_id: TaskId(c.task_id),
                        attempt: c.attempt,
                    }))
                }
                None => continue,
            }
        }
    }
}

/// A worker as the leader reports it.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    pub spec: WorkerSpec,
    pub running: u32,
    pub used_cpu_millis: u32,
    pub used_mem_mb: u32,
    pub lease_age: Option<Duration>,
    pub connected: bool,
    pub registered_at_ms: u64,
}

impl Client {
    /// Registers a worker with the leader and opens its assignment stream.
    pub async fn register_worker(&self, spec: &WorkerSpec) -> Result<WorkerStream, ClientError> {
        let req = pb::ConnectRequest {
            worker: Some(worker_spec_to_pb(spec)),
        };
        let inner = self
            .call_raw("register", Duration::ZERO, |ch| {
                let req = req.clone();
                async move { workers(ch).register(req).await }
            })
            .await?;
        // A success names the leader: the registration went there.
        Ok(WorkerStream {
            inner,
            leader: self.known_leader(),
        })
    }

    /// Renews the lease; returns the attempts to stop.
    pub async fn heartbeat(
        &self,
        worker_id: &str,
        session: &str,
        running: &[(TaskId, u32)],
    ) -> Result<Vec<(TaskId, u32)>, ClientError> {
        self.heartbeat_draining(worker_id, session, running, false)
            .await
    }

    /// [`Client::heartbeat`]; with `draining`, the leader assigns the worker nothing more.
    pub async fn heartbeat_draining(
        &self,
        worker_id: &str,
        session: &str,
        running: &[(TaskId, u32)],
        draining: bool,
    ) -> Result<Vec<(TaskId, u32)>, ClientError> {
        let req = pb::HeartbeatRequest {
            worker_id: worker_id.into(),
            session: session.into(),
            draining,
            running: running
                .iter()
                .map(|(id, attempt)| pb::RunningAttempt {
                    task_id: id.0,
                    attempt: *attempt,
                })
                .collect(),
        };
        let resp = self
            .call_raw("heartbeat", Duration::ZERO, |ch| {
                let req = req.clone();
                async move { workers(ch).heartbeat(req).await }
            })
            .await?;
        Ok(resp
            .cancel
            .into_iter()
            .map(|r| (TaskId(r.task_id), r.attempt))
            .collect())
    }

    /// Reports an attempt's success, from the worker's own `session` (the one it registered
    /// with). Refused with FAILED_PRECONDITION when the attempt is stale, and with
    /// PERMISSION_DENIED from another session or, with tokens on, another token.
    pub async fn complete_task(
        &self,
        worker_id: &str,
        session: &str,
        task_id: TaskId,
        attempt: u32,
        result: Vec<u8>,
    ) -> Result<(), ClientError> {
        let req = pb::CompleteTaskRequest {
            worker_id: worker_id.into(),
            task_id: task_id.0,
            attempt,
            result,
            session: session.into(),
        };
        self.call_raw("complete", Duration::ZERO, |ch| {
            let req = req.clone();
            async move { workers(ch).complete_task(req).await }
        })
        .await
        .map(|_| ())
    }

    /// Reports many attempts' outcomes of one worker session in one call (at most
    /// [`MAX_OUTCOMES_PER_CALL`]): one answer per report, in order — `Ok` when it was applied
    /// (or had been already), a rejection as [`Client::complete_task`] gives one otherwise.
    /// The call as a whole fails when no leader could take it; sending the same reports again
    /// is safe.
    pub async fn report_outcomes(
        &self,
        worker_id: &str,
        session: &str,
        reports: &[(TaskId, u32, Outcome)],
    ) -> Result<Vec<Result<(), ClientError>>, ClientError> {
        if reports.len() > MAX_OUTCOMES_PER_CALL {
            return Err(ClientError::BadRequest(format!(
                "outcomes: {} in one call exceeds limit {MAX_OUTCOMES_PER_CALL}",
                reports.len()
            )));
        }
        let req = pb::ReportOutcomesRequest {
            worker_id: worker_id.into(),
            session: session.into(),
            outcomes: reports
                .iter()
                .map(|(task_id, attempt, outcome)| pb::AttemptOutcome {
                    task_id: task_id.0,
                    attempt: *attempt,
                    outcome: Some(match outcome {
                        Outcome::Success(result) => {
                            pb::attempt_outcome::Outcome::Result(result.clone())
                        }
                        Outcome::Failure { error, retryable } => {
                            pb::attempt_outcome::Outcome::Failure(pb::AttemptFailure {
                                error: error.clone(),
                                retryable: *retryable,
                            })
                        }
                    }),
                })
                .collect(),
        };
        let resp = self
            .call_raw("report outcomes", Duration::ZERO, |ch| {
                let req = req.clone();
                async move { workers(ch).report_outcomes(req).await }
            })
            .await?;
        if resp.results.len() != reports.len() {
            return Err(ClientError::BadResponse(format!(
                "{} answers to {} outcomes",
                resp.results.len(),
                reports.len()
            )));
        }
        Ok(resp
            .results
            .into_iter()
            .map(|r| match tonic::Code::from(r.code) {
                tonic::Code::Ok => Ok(()),
                code => Err(ClientError::Rejected(Box::new(tonic::Status::new(
                    code, r.message,
                )))),
            })
            .collect())
    }

    /// Reports an attempt's failure; refused as [`Client::complete_task`] is.
    pub async fn fail_task(
        &self,
        worker_id: &str,
        session: &str,
        task_id: TaskId,
        attempt: u32,
        error: String,
        retryable: bool,
    ) -> Result<(), ClientError> {
        let req = pb::FailTaskRequest {
            worker_id: worker_id.into(),
            task_id: task_id.0,
            attempt,
            error,
            retryable,
            session: session.into(),
        };
        self.call_raw("fail", Duration::ZERO, |ch| {
            let req = req.clone();
            async move { workers(ch).fail_task(req).await }
        })
        .await
        .map(|_| ())
    }

    /// Saves an attempt's checkpoint; refused as [`Client::complete_task`] is.
    pub async fn checkpoint(
        &self,
        worker_id: &str,
        session: &str,
        task_id: TaskId,
        attempt: u32,
        progress_permille: u32,
        data: Vec<u8>,
    ) -> Result<(), ClientError> {
        let req = pb::CheckpointRequest {
            worker_id: worker_id.into(),
            task_id: task_id.0,
            attempt,
            progress_permille,
            data,
            session: session.into(),
        };
        self.call_raw("checkpoint", Duration::ZERO, |ch| {
            let req = req.clone();
            async move { workers(ch).checkpoint(req).await }
        })
        .await
        .map(|_| ())
    }

    /// The results of the parents of a running attempt, in the order of its dependencies
    /// (only for the attempt `worker_id` runs now).
    pub async fn task_inputs(
        &self,
        worker_id: &str,
        session: &str,
        task_id: TaskId,
        attempt: u32,
    ) -> Result<Vec<(TaskId, Vec<u8>)>, ClientError> {
        let req = pb::TaskInputsRequest {
            worker_id: worker_id.into(),
            session: session.into(),
            task_id: task_id.0,
            attempt,
        };
        self.call_raw("task inputs", Duration::ZERO, |ch| {
            let req = req.clone();
            async move {
                let mut stream = workers(ch).task_inputs(req).await?.into_inner();
                let mut inputs = Vec::new();
                while let Some(i) = stream.message().await? {
                    inputs.push((TaskId(i.parent_id), i.result));
                }
                Ok(tonic::Response::new(inputs))
            }
        })
        .await
    }

    /// Ends a (drained) worker's registration; what the state still gives it goes back to
    /// pending at once.
    pub async fn leave(&self, worker_id: &str, session: &str) -> Result<(), ClientError> {
        let req = pb::LeaveRequest {
            worker_id: worker_id.into(),
            session: session.into(),
        };
        self.call_raw("leave", Duration::ZERO, |ch| {
            let req = req.clone();
            async move { workers(ch).leave(req).await }
        })
        .await
        .map(|_| ())
    }

    /// Registered workers with capacity, load and lease age.
    pub async fn list_workers(&self) -> Result<Vec<WorkerInfo>, ClientError> {
        let resp = self
            .call("workers", Duration::ZERO, |mut c| async move {
                c.list_workers(pb::ListWorkersRequest {}).await
            })
            .await?;
        Ok(resp
            .workers
            .into_iter()
            .map(|w| WorkerInfo {
                spec: worker_spec_from_pb(w.spec.unwrap_or_default()),
                running: w.running,
                used_cpu_millis: w.used_cpu_millis,
                used_mem_mb: w.used_mem_mb,
                lease_age: w.connected.then(|| Duration::from_millis(w.lease_age_ms)),
                connected: w.connected,
                registered_at_ms: w.registered_at_ms,
            })
            .collect())
    }
}
