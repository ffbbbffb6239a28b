//! The client API service (`flotilla.v1.Flotilla`).
//!
//! Writes go through the [`Proposer`] and answer only after commit and apply. Reads are
//! linearizable by default: the leader confirms its leadership with a quorum (read index) and
//! waits until it has applied that far; a follower answers with a leader hint. Stale reads are
//! served from the local applied state of whichever replica is asked.

use crate::auth::Principal;
use std::sync::Arc;
use std::time::Duration;

use flotilla_core::{
    batch_bytes, schedule::refuse_reserved_key, validate_spec, AdmissionLimits, Command, Limits,
    Lookup, QueuePolicy, QueueSetting, Response as CoreResponse, TaskId, TaskState,
};
use flotilla_proto::pb::{self, flotilla_server::Flotilla};
use flotilla_proto::{
    spec_from_pb, state_from_pb, state_to_pb, task_to_pb, LEADER_HINT_KEY, STREAM_MESSAGE_LIMIT,
};
use flotilla_store::SharedState;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::ServerState;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

use crate::dispatch::Dispatcher;
use crate::error::ApiError;
use crate::leadership::{ensure_leader, forwarded, now_ms};
use crate::planted::PlantedBug;
use crate::proposer::Proposer;
use crate::Raft;

/// Bytes of a snapshot file per ExportSnapshot message.
const EXPORT_CHUNK_BYTES: usize = 1 << 20;
/// ExportSnapshot messages read ahead of a slow reader.
const EXPORT_CHUNKS_QUEUED: usize = 4;
/// Most tasks a ListTasks page returns.
const MAX_LIST_LIMIT: u32 = 10_000;
const DEFAULT_LIST_LIMIT: u32 = 100;

#[derive(Clone)]
pub struct Api {
    pub node_id: u64,
    pub cluster_name: String,
    pub raft: Raft,
    pub state: SharedState,
    pub proposer: Proposer,
    pub wait_max: Duration,
    /// A deliberately broken behaviour, only in `planted-bugs` builds (see `planted`).
    pub planted: Option<PlantedBug>,
    pub dispatcher: Arc<Dispatcher>,
    /// Cancelled when the replica stops: open submit streams stop reading and finish, so the
    /// server's graceful shutdown does not wait on them forever.
    pub shutdown: CancellationToken,
    /// Backlog caps stamped into every submit.
    pub admission: AdmissionLimits,
    /// Cluster defaults of retention (reported by ListQueues; the sweeps use the same).
    pub retention_ms: u64,
    pub key_retention_ms: u64,
    /// Adding, removing and handing over to replicas (leader only).
    pub membership: Arc<crate::membership::Membership>,
    /// This replica's metrics (submit latency).
    pub telemetry: Arc<crate::telemetry::Telemetry>,
}

impl Api {
    pub(crate) async fn propose(&self, command: Command) -> Result<CoreResponse, ApiError> {
        match self.proposer.propose(command).await? {
            CoreResponse::Rejected(e) => Err(e.into()),
            other => Ok(other),
        }
    }

    /// Validates and proposes one batch of tasks: all or nothing, answered after commit.
    async fn submit(
        &self,
        tasks: Vec<pb::TaskSpec>,
        caller: Option<&Principal>,
    ) -> Result<pb::SubmitTasksResponse, ApiError> {
        let received = std::time::Instant::now();
        let answer = self.submit_batch(tasks, caller).await;
        if answer.is_ok() {
            self.telemetry
                .submit_latency
                .record(received.elapsed().as_secs_f64());
        }
        answer
    }

    async fn submit_batch(
        &self,
        tasks: Vec<pb::TaskSpec>,
        caller: Option<&Principal>,
    ) -> Result<pb::SubmitTasksResponse, ApiError> {
        if tasks.is_empty() {
            return Err(ApiError::Invalid {
                field: "tasks".into(),
                message: "batch is empty".into(),
            });
        }
        if tasks.len() > Limits::MAX_BATCH_TASKS {
            return Err(ApiError::Invalid {
                field: "tasks".into(),
                message: format!(
                    "batch of {} tasks exceeds limit {}",
                    tasks.len(),
                    Limits::MAX_BATCH_TASKS
                ),
            });
        }
        let mut specs = Vec::with_capacity(tasks.len());
        for (i, t) in tasks.into_iter().enumerate() {
            let field = format!("tasks[{i}]");
            let spec = spec_from_pb(&field, t)?;
            validate_spec(&field, &spec)?;
            refuse_reserved_key(&field, &spec)?;
            if let Some(why) = caller.and_then(|c| c.refuses_queue(&spec.queue)) {
                return Err(ApiError::PermissionDenied(format!("{field}.queue: {why}")));
            }
            specs.push(spec);
        }
        // Refused here, before it costs a proposal; `apply` checks the same.
        let bytes = batch_bytes(&specs);
        if bytes > Limits::MAX_BATCH_BYTES {
            return Err(ApiError::Invalid {
                field: "tasks".into(),
                message: format!(
                    "batch of {bytes} bytes exceeds limit {} (max_batch_bytes)",
                    Limits::MAX_BATCH_BYTES
                ),
            });
        }
        if self.planted == Some(PlantedBug::NoIdempotency) {
            for t in &mut specs {
                t.idempotency_key = None;
            }
        }
        let n = specs.len();
        let command = Command::Submit {
            now_ms: now_ms(),
            tasks: specs,
            limits: self.admission,
        };
        if self.planted == Some(PlantedBug::AckBeforeCommit) {
            let proposer = self.proposer.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let _ = proposer.propose(command).await;
            });
            return Ok(pb::SubmitTasksResponse {
                ids: vec![0; n],
                created: vec![true; n],
            });
        }
        match self.propose(command).await? {
            CoreResponse::Submitted { ids, created } => Ok(pb::SubmitTasksResponse {
                ids: ids.into_iter().map(|i| i.0).collect(),
                created,
            }),
            other => Err(ApiError::Internal(format!("unexpected response {other:?}"))),
        }
    }

    /// Waits until a read at this point is linearizable on this replica.
    async fn linearize(&self) -> Result<(), ApiError> {
        // Confirming leadership sends heartbeats, which would renew the lease a leadership
        // transfer waits out.
        if self.proposer.is_held() {
            return Err(ApiError::Unavailable(
                "leadership is being transferred; retry".into(),
            ));
        }
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => Err(forwarded(f)),
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => Err(
                ApiError::Unavailable(format!("leadership not confirmed by a quorum: {e}")),
            ),
            Err(RaftError::Fatal(e)) => Err(ApiError::Unavailable(format!("raft stopped: {e}"))),
        }
    }

    /// Builds a snapshot covering everything applied now, unless the current one does; waits
    /// (`timeout_ms`, 0: 60 s, at most 600 s) and returns the log index it covers.
    async fn snapshot_now(&self, timeout_ms: u64) -> Result<u64, ApiError> {
        let timeout = match timeout_ms {
            0 => Duration::from_secs(60),
            ms => Duration::from_millis(ms).min(Duration::from_secs(600)),
        };
        let mut metrics = self.raft.metrics();
        let want = metrics.borrow().last_applied.map_or(0, |l| l.index);
        let covered = |m: &openraft::RaftMetrics<u64, flotilla_store::Node>| {
            m.snapshot.map_or(0, |l| l.index)
        };
        if covered(&metrics.borrow()) < want {
            self.raft
                .trigger()
                .snapshot()
                .await
                .map_err(|e| ApiError::Unavailable(format!("raft stopped: {e}")))?;
        }
        let done = tokio::time::timeout(timeout, async {
            loop {
                let index = covered(&metrics.borrow());
                if index >= want {
                    return Ok(index);
                }
                if metrics.changed().await.is_err() {
                    return Err(ApiError::Unavailable("replica is shutting down".into()));
                }
            }
        })
        .await
        .map_err(|_| ApiError::Unavailable(format!("snapshot not built within {timeout:?}")))??;
        Ok(done)
    }

    pub(crate) async fn read_consistency(&self, raw: i32) -> Result<(), ApiError> {
        match pb::ReadConsistency::try_from(raw) {
            Ok(pb::ReadConsistency::Linearizable) => self.linearize().await,
            Ok(pb::ReadConsistency::Stale) => Ok(()),
            Err(_) => Err(ApiError::Invalid {
                field: "consistency".into(),
                message: format!("unknown read consistency {raw}"),
            }),
        }
    }

    /// The task, or what a tombstone remembers of it (`true`: removed by retention).
    fn task(&self, id: u64) -> Result<(pb::Task, bool), ApiError> {
        let applied = self.state.read();
        match applied.state.lookup(TaskId(id)) {
            Lookup::Task(task) => {
                let mut out = task_to_pb(&task, true);
                out.pending_reason = flotilla_core::unplaceable_reason(&applied.state, &task)
                    .unwrap_or_default();
                Ok((out, false))
            }
            Lookup::Removed(Some(tombstone)) => Ok((task_to_pb(&tombstone, true), true)),
            Lookup::Removed(None) => Err(ApiError::NotFound(format!(
                "task {id} was removed by retention (finished tasks are kept for their queue's retention)"
            ))),
            Lookup::Unknown => Err(ApiError::NotFound(format!("task {id} not found"))),
        }
    }
}

#[tonic::async_trait]
impl Flotilla for Api {
    async fn submit_tasks(
        &self,
        request: Request<pb::SubmitTasksRequest>,
    ) -> Result<Response<pb::SubmitTasksResponse>, Status> {
        let caller = request.extensions().get::<Principal>().cloned();
        Ok(Response::new(
            self.submit(request.into_inner().tasks, caller.as_ref())
                .await?,
        ))
    }

    type SubmitStreamStream = ReceiverStream<Result<pb::SubmitStreamReplies, Status>>;

    async fn submit_stream(
        &self,
        request: Request<Streaming<pb::SubmitStreamRequests>>,
    ) -> Result<Response<Self::SubmitStreamStream>, Status> {
        // Refuse at once on a follower, so the client goes to the leader instead of sending
        // requests that would each be refused.
        ensure_leader(&self.raft)?;
        let caller = request.extensions().get::<Principal>().cloned();
        let (tx, rx) = mpsc::channel(STREAM_WINDOW);
        tokio::spawn(serve_submit_stream(
            self.clone(),
            request.into_inner(),
            caller,
            tx,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_task(
        &self,
        request: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::GetTaskResponse>, Status> {
        let req = request.into_inner();
        self.read_consistency(req.consistency).await?;
        let (task, removed) = self.task(req.id)?;
        let why = if req.explain {
            let applied = self.state.read();
            flotilla_core::why_id(&applied.state, TaskId(req.id), now_ms())
                .unwrap_or_default()
                .into_iter()
                .map(|l| pb::WhyLine {
                    at_ms: l.at_ms.unwrap_or(0),
                    text: l.text,
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Response::new(pb::GetTaskResponse {
            task: Some(task),
            removed,
            why,
        }))
    }

    async fn wait_task(
        &self,
        request: Request<pb::WaitTaskRequest>,
    ) -> Result<Response<pb::WaitTaskResponse>, Status> {
        let req = request.into_inner();
        let timeout = Duration::from_millis(req.timeout_ms).min(self.wait_max);
        let deadline = tokio::time::Instant::now() + timeout;
        // Start from a linearizable point, so a task acknowledged anywhere is found here.
        self.linearize().await?;
        let mut applied = self.raft.metrics();
        loop {
            let (task, _) = self.task(req.id)?;
            let terminal = matches!(
                pb::TaskState::try_from(task.state),
                Ok(pb::TaskState::Succeeded | pb::TaskState::Failed | pb::TaskState::Cancelled)
            );
            if terminal || tokio::time::Instant::now() >= deadline {
                return Ok(Response::new(pb::WaitTaskResponse {
                    task: Some(task),
                    terminal,
                }));
            }
            // Any applied entry may have finished the task: look again after each.
            match tokio::time::timeout_at(deadline, applied.changed()).await {
                Ok(Ok(())) | Err(_) => {}
                Ok(Err(_)) => {
                    return Err(ApiError::Unavailable("replica is shutting down".into()).into())
                }
            }
        }
    }

    async fn cancel_task(
        &self,
        request: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::CancelTaskResponse>, Status> {
        let caller = request.extensions().get::<Principal>().cloned();
        let req = request.into_inner();
        if let Some(caller) = caller.filter(|c| c.queues.is_some()) {
            // A token limited to some queues cancels only in them. The leader has applied
            // every task it acknowledged, so it finds the task's queue.
            ensure_leader(&self.raft)?;
            let (task, _) = self.task(req.id)?;
            let queue = task.spec.as_ref().map_or("", |s| s.queue.as_str());
            if let Some(why) = caller.refuses_queue(queue) {
                return Err(ApiError::PermissionDenied(format!("task {}: {why}", req.id)).into());
            }
        }
        let task_id = TaskId(req.id);
        // The attempt running now, if any: once the cancel commits, its worker hears of it
        // down its stream at once. (Had it changed before the commit, the worker ignores a
        // cancel of an attempt it does not run, and its next heartbeat is told the truth.)
        let running = self
            .state
            .read()
            .state
            .running_attempt(task_id)
            .map(|(attempt, worker)| (attempt, worker.to_string()));
        let command = Command::Cancel {
            now_ms: now_ms(),
            task_id,
        };
        match self.propose(command).await? {
            CoreResponse::Cancelled { previous, .. } => {
                if let (TaskState::Running, Some((attempt, worker))) = (previous, running) {
                    self.dispatcher.cancelled(task_id, &worker, attempt);
                }
                Ok(Response::new(pb::CancelTaskResponse {
                    previous: state_to_pb(previous) as i32,
                }))
            }
            other => Err(ApiError::Internal(format!("unexpected response {other:?}")).into()),
        }
    }

    async fn submit_workflow(
        &self,
        request: Request<pb::SubmitWorkflowRequest>,
    ) -> Result<Response<pb::SubmitWorkflowResponse>, Status> {
        let caller = request.extensions().get::<Principal>().cloned();
        Ok(Response::new(
            self.submit_workflow_call(request.into_inner(), caller.as_ref())
                .await?,
        ))
    }

    async fn get_workflow(
        &self,
        request: Request<pb::GetWorkflowRequest>,
    ) -> Result<Response<pb::GetWorkflowResponse>, Status> {
        Ok(Response::new(
            self.get_workflow_call(request.into_inner()).await?,
        ))
    }

    async fn cancel_workflow(
        &self,
        request: Request<pb::CancelWorkflowRequest>,
    ) -> Result<Response<pb::CancelWorkflowResponse>, Status> {
        let caller = request.extensions().get::<Principal>().cloned();
        Ok(Response::new(
            self.cancel_workflow_call(request.into_inner(), caller.as_ref())
                .await?,
        ))
    }

    async fn add_schedule(
        &self,
        request: Request<pb::AddScheduleRequest>,
    ) -> Result<Response<pb::AddScheduleResponse>, Status> {
        let caller = request.extensions().get::<Principal>().cloned();
        Ok(Response::new(
            self.add_schedule_call(request.into_inner(), caller.as_ref())
                .await?,
        ))
    }

    async fn list_schedules(
        &self,
        request: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        Ok(Response::new(
            self.list_schedules_call(request.into_inner()).await?,
        ))
    }

    async fn pause_schedule(
        &self,
        request: Request<pb::PauseScheduleRequest>,
    ) -> Result<Response<pb::PauseScheduleResponse>, Status> {
        let caller = request.extensions().get::<Principal>().cloned();
        Ok(Response::new(
            self.pause_schedule_call(request.into_inner(), caller.as_ref())
                .await?,
        ))
    }

    async fn delete_schedule(
        &self,
        request: Request<pb::DeleteScheduleRequest>,
    ) -> Result<Response<pb::DeleteScheduleResponse>, Status> {
        let caller = request.extensions().get::<Principal>().cloned();
        Ok(Response::new(
            self.delete_schedule_call(request.into_inner(), caller.as_ref())
                .await?,
        ))
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let req = request.into_inner();
        let state = state_from_pb("state", req.state).map_err(ApiError::from)?;
        if req.limit > MAX_LIST_LIMIT {
            return Err(ApiError::Invalid {
                field: "limit".into(),
                message: format!("{} exceeds limit {MAX_LIST_LIMIT}", req.limit),
            }
            .into());
        }
        let limit = if req.limit == 0 {
            DEFAULT_LIST_LIMIT
        } else {
            req.limit
        } as usize;
        self.read_consistency(req.consistency).await?;
        let applied = self.state.read();
        let queue = Some(req.queue.as_str()).filter(|q| !q.is_empty());
        let after = Some(TaskId(req.after_id)).filter(|a| a.0 > 0);
        let page = applied.state.list(queue, state, after, limit + 1);
        let more = page.len() > limit;
        let tasks: Vec<pb::Task> = page
            .iter()
            .take(limit)
            .map(|t| task_to_pb(t, !req.omit_payload))
            .collect();
        let next_after_id = if more {
            tasks.last().map_or(0, |t| t.id)
        } else {
            0
        };
        Ok(Response::new(pb::ListTasksResponse {
            tasks,
            next_after_id,
        }))
    }

    async fn list_workers(
        &self,
        _request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        // Leases live on the leader.
        ensure_leader(&self.raft)?;
        let applied = self.state.read();
        let workers = applied
            .state
            .workers()
            .map(|w| {
                let used = applied.state.worker_usage(&w.spec.id);
                let lease = self.dispatcher.lease_view(&w.spec.id);
                pb::WorkerInfo {
                    // The session is the worker process's secret (its reports carry it).
                    spec: Some(pb::WorkerSpec {
                        session: String::new(),
                        ..flotilla_proto::worker_spec_to_pb(&w.spec)
                    }),
                    running: used.slots,
                    used_cpu_millis: used.cpu_millis,
                    used_mem_mb: used.mem_mb,
                    lease_age_ms: lease.age.map_or(0, |a| a.as_millis() as u64),
                    connected: lease.connected,
                    registered_at_ms: w.registered_at_ms,
                }
            })
            .collect();
        Ok(Response::new(pb::ListWorkersResponse { workers }))
    }

    async fn set_queue_policy(
        &self,
        request: Request<pb::SetQueuePolicyRequest>,
    ) -> Result<Response<pb::SetQueuePolicyResponse>, Status> {
        let req = request.into_inner();
        let policy = match req.policy.as_str() {
            "fifo" => flotilla_core::QueuePolicy::Fifo,
            "priority" => flotilla_core::QueuePolicy::Priority {
                aging_ms: req.aging_ms,
            },
            "sjf" => flotilla_core::QueuePolicy::ShortestJobFirst,
            other => {
                return Err(ApiError::Invalid {
                    field: "policy".into(),
                    message: format!("unknown policy {other:?} (use fifo, priority or sjf)"),
                }
                .into())
            }
        };
        self.propose(Command::SetQueue {
            now_ms: now_ms(),
            queue: req.queue,
            setting: QueueSetting::Policy(policy),
            create: req.create,
        })
        .await?;
        Ok(Response::new(pb::SetQueuePolicyResponse {}))
    }

    async fn set_queue_retention(
        &self,
        request: Request<pb::SetQueueRetentionRequest>,
    ) -> Result<Response<pb::SetQueueRetentionResponse>, Status> {
        let req = request.into_inner();
        self.propose(Command::SetQueue {
            now_ms: now_ms(),
            queue: req.queue,
            setting: QueueSetting::RetentionMs(Some(req.retention_ms).filter(|r| *r > 0)),
            create: req.create,
        })
        .await?;
        Ok(Response::new(pb::SetQueueRetentionResponse {}))
    }

    async fn set_queue_limit(
        &self,
        request: Request<pb::SetQueueLimitRequest>,
    ) -> Result<Response<pb::SetQueueLimitResponse>, Status> {
        use pb::set_queue_limit_request::Limit;
        let req = request.into_inner();
        let setting = match req.limit {
            None => {
                return Err(ApiError::Invalid {
                    field: "limit".into(),
                    message:
                        "missing: give max_running, weight, rate, max_per_key or a no_* variant"
                            .into(),
                }
                .into())
            }
            Some(Limit::MaxRunning(n)) => QueueSetting::MaxRunning(Some(n)),
            Some(Limit::NoMaxRunning(_)) => QueueSetting::MaxRunning(None),
            Some(Limit::Weight(w)) => QueueSetting::Weight(w),
            Some(Limit::Rate(r)) => QueueSetting::Rate(Some(flotilla_core::RateLimit {
                per_sec: r.per_sec,
                burst: r.burst,
            })),
            Some(Limit::NoRate(_)) => QueueSetting::Rate(None),
            Some(Limit::MaxPerKey(n)) => QueueSetting::MaxPerKey(Some(n)),
            Some(Limit::NoMaxPerKey(_)) => QueueSetting::MaxPerKey(None),
        };
        self.propose(Command::SetQueue {
            now_ms: now_ms(),
            queue: req.queue,
            setting,
            create: req.create,
        })
        .await?;
        Ok(Response::new(pb::SetQueueLimitResponse {}))
    }

    async fn list_queues(
        &self,
        request: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        self.read_consistency(request.into_inner().consistency)
            .await?;
        let applied = self.state.read();
        let s = &applied.state;
        let queues = s
            .queues()
            .map(|(name, settings)| {
                let (policy, aging_ms) = match settings.policy {
                    QueuePolicy::Fifo => ("fifo", 0),
                    QueuePolicy::Priority { aging_ms } => ("priority", aging_ms),
                    QueuePolicy::ShortestJobFirst => ("sjf", 0),
                };
                let n = |st| s.queue_count(name, st);
                let (flow, _) = s.queue_flow(name);
                pb::QueueInfo {
                    name: name.to_string(),
                    policy: policy.into(),
                    aging_ms,
                    retention_ms: settings.retention_ms.unwrap_or(0),
                    waiting: n(TaskState::Waiting),
                    pending: n(TaskState::Pending),
                    running: n(TaskState::Running),
                    succeeded: n(TaskState::Succeeded),
                    failed: n(TaskState::Failed),
                    cancelled: n(TaskState::Cancelled),
                    oldest_pending_ms: s.oldest_pending_ms(name).unwrap_or(0),
                    max_running: flow.max_running.unwrap_or(0),
                    weight: flow.weight,
                    rate_per_sec: flow.rate.map_or(0, |r| r.per_sec),
                    rate_burst: flow.rate.map_or(0, |r| r.burst),
                    max_per_key: flow.max_per_key.unwrap_or(0),
                }
            })
            .collect();
        Ok(Response::new(pb::ListQueuesResponse {
            queues,
            retention_ms: self.retention_ms,
            key_retention_ms: self.key_retention_ms,
        }))
    }

    async fn take_snapshot(
        &self,
        request: Request<pb::TakeSnapshotRequest>,
    ) -> Result<Response<pb::TakeSnapshotResponse>, Status> {
        let done = self.snapshot_now(request.into_inner().timeout_ms).await?;
        Ok(Response::new(pb::TakeSnapshotResponse {
            snapshot_index: done,
        }))
    }

    type ExportSnapshotStream = ReceiverStream<Result<pb::SnapshotChunk, Status>>;

    #[tracing::instrument(skip_all, fields(node_id = self.node_id))]
    async fn export_snapshot(
        &self,
        request: Request<pb::ExportSnapshotRequest>,
    ) -> Result<Response<Self::ExportSnapshotStream>, Status> {
        ensure_leader(&self.raft)?;
        // Everything acknowledged before this call is applied here once leadership is
        // confirmed (read index), so the snapshot built next holds it.
        self.linearize().await?;
        self.snapshot_now(request.into_inner().timeout_ms).await?;
        // The current snapshot, opened: a newer one replacing it meanwhile does not cut the
        // stream short (the store reads the pointer again if the file went; see
        // `StateMachine::open_current`).
        let snapshot = self
            .raft
            .get_snapshot()
            .await
            .map_err(|e| ApiError::Unavailable(format!("raft stopped: {e}")))?
            .ok_or_else(|| ApiError::Internal("no snapshot after building one".into()))?;
        let last = snapshot
            .meta
            .last_log_id
            .ok_or_else(|| ApiError::Internal("the snapshot covers no log entry".into()))?;
        let mut file = snapshot.snapshot;
        file.seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(|e| ApiError::Internal(format!("reading the snapshot file: {e}")))?;
        let total_bytes = file
            .metadata()
            .await
            .map_err(|e| ApiError::Internal(format!("reading the snapshot file: {e}")))?
            .len();
        tracing::info!(
            index = last.index,
            term = last.leader_id.term,
            bytes = total_bytes,
            "exporting a snapshot"
        );
        let (tx, rx) = mpsc::channel(EXPORT_CHUNKS_QUEUED);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut offset = 0u64;
            loop {
                let mut data = Vec::with_capacity(EXPORT_CHUNK_BYTES);
                let read = (&mut *file)
                    .take(EXPORT_CHUNK_BYTES as u64)
                    .read_to_end(&mut data)
                    .await;
                let chunk = match read {
                    Ok(0) => break,
                    Ok(n) => {
                        let chunk = pb::SnapshotChunk {
                            offset,
                            data,
                            total_bytes,
                            last_log_index: last.index,
                            last_log_term: last.leader_id.term,
                        };
                        offset += n as u64;
                        Ok(chunk)
                    }
                    Err(e) => Err(Status::from(ApiError::Internal(format!(
                        "reading the snapshot file at byte {offset}: {e}"
                    )))),
                };
                let failed = chunk.is_err();
                tokio::select! {
                    sent = tx.send(chunk) => if sent.is_err() || failed { return },
                    () = shutdown.cancelled() => {
                        let _ = tx.try_send(Err(ApiError::Unavailable("replica is shutting down".into()).into()));
                        return;
                    }
                }
            }
            if offset != total_bytes {
                let _ = tx
                    .send(Err(ApiError::Internal(format!(
                        "the snapshot file ended at byte {offset} of {total_bytes}"
                    ))
                    .into()))
                    .await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn add_replica(
        &self,
        request: Request<pb::AddReplicaRequest>,
    ) -> Result<Response<pb::AddReplicaResponse>, Status> {
        let req = request.into_inner();
        let timeout = Some(Duration::from_millis(req.timeout_ms)).filter(|t| !t.is_zero());
        let added = self
            .membership
            .add_replica(req.id, &req.addr, timeout)
            .await?;
        Ok(Response::new(pb::AddReplicaResponse {
            incarnation: added.incarnation,
            catch_up_ms: added.catch_up.as_millis() as u64,
            membership_index: added.membership_index,
        }))
    }

    async fn remove_replica(
        &self,
        request: Request<pb::RemoveReplicaRequest>,
    ) -> Result<Response<pb::RemoveReplicaResponse>, Status> {
        let index = self
            .membership
            .remove_replica(request.into_inner().id)
            .await?;
        Ok(Response::new(pb::RemoveReplicaResponse {
            membership_index: index,
        }))
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        let (took, term) = self
            .membership
            .transfer_leader(request.into_inner().id)
            .await?;
        Ok(Response::new(pb::TransferLeaderResponse {
            transfer_ms: took.as_millis() as u64,
            term,
        }))
    }

    async fn cluster_status(
        &self,
        _request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let m = self.raft.metrics().borrow().clone();
        let commit_index = self
            .raft
            .with_raft_state(|st| st.committed.map_or(0, |l| l.index))
            .await
            .map_err(|e| ApiError::Unavailable(format!("raft stopped: {e}")))?;
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| pb::Member {
                id: *id,
                addr: node.addr.clone(),
                matched_index: m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).copied().flatten())
                    .map_or(0, |l| l.index),
                voter: voters.contains(id),
                incarnation: node.incarnation.clone(),
            })
            .collect();
        let leader_addr = m
            .current_leader
            .and_then(|l| membership.get_node(&l).map(|n| n.addr.clone()))
            .unwrap_or_default();
        let task_count = self.state.read().state.task_count() as u64;
        Ok(Response::new(pb::ClusterStatusResponse {
            node_id: self.node_id,
            role: role.into(),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            leader_id: m.current_leader.unwrap_or(0),
            leader_addr,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            purged_index: m.purged.map_or(0, |l| l.index),
            commit_index,
            members,
            cluster_name: self.cluster_name.clone(),
            task_count,
        }))
    }
}

/// Requests of one SubmitStream that may wait for commit at once; beyond it the stream is not
/// read (HTTP/2 flow control then holds the client back).
const STREAM_WINDOW: usize = 4096;

/// Serves one SubmitStream: reads messages while fewer than [`STREAM_WINDOW`] requests are in
/// flight, proposes each request (they share group-commit entries like unary calls) and sends
/// each reply as soon as its request is committed, together with the others ready by then.
/// Ends when the client closes its side (or the replica stops) and every reply is sent, or
/// when the client goes away.
async fn serve_submit_stream(
    api: Api,
    mut requests: Streaming<pb::SubmitStreamRequests>,
    caller: Option<Principal>,
    replies: mpsc::Sender<Result<pb::SubmitStreamReplies, Status>>,
) {
    let mut in_flight = FuturesUnordered::new();
    let mut reading = true;
    loop {
        tokio::select! {
            next = requests.message(), if reading && in_flight.len() < STREAM_WINDOW => {
                match next {
                    Ok(Some(msg)) if msg.requests.len() > STREAM_MESSAGE_LIMIT => {
                        let status = Status::invalid_argument(format!(
                            "requests: {} in one message, at most {STREAM_MESSAGE_LIMIT}",
                            msg.requests.len()
                        ));
                        let _ = replies.send(Err(status)).await;
                        return;
                    }
                    Ok(Some(msg)) => {
                        for req in msg.requests {
                            let (api, caller) = (&api, caller.as_ref());
                            in_flight.push(async move {
                                stream_reply(req.seq, api.submit(req.tasks, caller).await)
                            });
                        }
                    }
                    Ok(None) => reading = false,
                    Err(status) => {
                        debug!(%status, "submit stream broken");
                        reading = false;
                    }
                }
            }
            _ = api.shutdown.cancelled(), if reading => reading = false,
            Some(first) = in_flight.next() => {
                let mut ready = vec![first];
                while let Some(Some(reply)) = in_flight.next().now_or_never() {
                    ready.push(reply);
                }
                let msg = pb::SubmitStreamReplies { replies: ready };
                if replies.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
            else => return,
        }
    }
}

fn stream_reply(
    seq: u64,
    outcome: Result<pb::SubmitTasksResponse, ApiError>,
) -> pb::SubmitStreamReply {
    match outcome {
        Ok(r) => pb::SubmitStreamReply {
            seq,
            ids: r.ids,
            created: r.created,
            ..Default::default()
        },
        Err(e) => {
            let status = Status::from(e);
            pb::SubmitStreamReply {
                seq,
                code: status.code() as i32,
                message: status.message().to_string(),
                leader_hint: status
                    .metadata()
                    .get(LEADER_HINT_KEY)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string(),
                ..Default::default()
            }
        }
    }
}
