//! The client: endpoints, leader tracking, retries.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_core::{Task, TaskId, TaskSpec, TaskState};
use flotilla_proto::pb::{self, flotilla_client::FlotillaClient};
use flotilla_proto::{spec_to_pb, state_from_pb, state_to_pb, task_from_pb, LEADER_HINT_KEY};
use rand::Rng;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tracing::debug;

use crate::ClientError;

/// Largest message the client sends or accepts.
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Retry and timeout settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Deadline of one RPC attempt.
    pub request_timeout: Duration,
    /// Deadline of a whole call, retries included.
    pub call_timeout: Duration,
    /// First retry delay; doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            request_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_secs(1),
        }
    }
}

/// Read consistency of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Served by the leader after a quorum check (read index).
    #[default]
    Linearizable,
    /// Served by whichever replica answers; may lag behind.
    Stale,
}

impl Consistency {
    pub(crate) fn to_pb(self) -> i32 {
        match self {
            Consistency::Linearizable => pb::ReadConsistency::Linearizable as i32,
            Consistency::Stale => pb::ReadConsistency::Stale as i32,
        }
    }
}

/// Filters of a list call.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub queue: Option<String>,
    pub state: Option<TaskState>,
    pub after: Option<TaskId>,
    pub limit: u32,
    pub consistency: Consistency,
}

/// One page of tasks and the cursor of the next page.
#[derive(Debug, Clone)]
pub struct ListPage {
    pub tasks: Vec<Task>,
    pub next_after: Option<TaskId>,
}

/// A member as a replica reports it.
#[derive(Debug, Clone)]
pub struct Member {
    pub id: u64,
    pub addr: String,
    pub matched_index: u64,
    pub voter: bool,
}

/// What one replica says about itself and the cluster.
#[derive(Debug, Clone)]
pub struct ClusterStatus {
    pub node_id: u64,
    pub role: String,
    pub applied_index: u64,
    pub leader_id: Option<u64>,
    pub leader_addr: Option<String>,
    pub term: u64,
    pub last_log_index: u64,
    /// Last index covered by the replica's latest snapshot (0: none).
    pub snapshot_index: u64,
    pub commit_index: u64,
    pub members: Vec<Member>,
    pub cluster_name: String,
    pub task_count: u64,
}

/// A Flotilla client. Cheap to clone; clones share connections and the known leader.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Vec<String>,
    config: ClientConfig,
    channels: Mutex<HashMap<String, Channel>>,
    /// Address of the replica that last served a leader-only call.
    leader: Mutex<Option<String>>,
}

impl Client {
    /// A client for the replicas at `addrs` (HOST:PORT), with default settings.
    pub fn new<I, S>(addrs: I) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Client::with_config(addrs, ClientConfig::default())
    }

    pub fn with_config<I, S>(addrs: I, config: ClientConfig) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let endpoints: Vec<String> = addrs
            .into_iter()
            .map(Into::into)
            .map(|a| a.trim().trim_start_matches("http://").to_string())
            .filter(|a| !a.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        let client = Client {
            inner: Arc::new(Inner {
                endpoints,
                config,
                channels: Mutex::new(HashMap::new()),
                leader: Mutex::new(None),
            }),
        };
        for e in &client.inner.endpoints {
            client.channel(e)?;
        }
        Ok(client)
    }

    pub(crate) fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    pub(crate) fn channel(&self, addr: &str) -> Result<FlotillaClient<Channel>, ClientError> {
        self.raw_channel(addr).map(flotilla)
    }

    /// The (lazily connected) channel to a replica.
    pub(crate) fn raw_channel(&self, addr: &str) -> Result<Channel, ClientError> {
        let mut channels = self
            .inner
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = Channel::from_shared(format!("http://{addr}")).map_err(|e| {
            ClientError::BadAddress {
                addr: addr.to_string(),
                message: e.to_string(),
            }
        })?;
        let channel = endpoint
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    pub(crate) fn known_leader(&self) -> Option<String> {
        self.inner
            .leader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn set_leader(&self, addr: Option<String>) {
        *self.inner.leader.lock().unwrap_or_else(|p| p.into_inner()) = addr;
    }

    /// Runs `op` against the leader (or the replica a hint names), retrying until it succeeds,
    /// is rejected for good, or the call deadline passes.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        what: &str,
        extra: Duration,
        op: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(FlotillaClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call_raw(what, extra, |ch| op(flotilla(ch))).await
    }

    /// [`Client::call`] over a raw channel, for services other than the client API.
    pub(crate) async fn call_raw<T, F, Fut>(
        &self,
        what: &str,
        extra: Duration,
        op: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let cfg = &self.inner.config;
        let deadline = tokio::time::Instant::now() + cfg.call_timeout + extra;
        let endpoints = &self.inner.endpoints;
        let mut next = rand::thread_rng().gen_range(0..endpoints.len());
        let mut target = self
            .known_leader()
            .unwrap_or_else(|| endpoints[next].clone());
        let mut backoff = cfg.backoff_initial;
        let mut last_error;
        loop {
            let channel = self.raw_channel(&target)?;
            let attempt = tokio::time::timeout(cfg.request_timeout + extra, op(channel)).await;
            let mut hinted = None;
            match attempt {
                Ok(Ok(resp)) => {
                    return Ok(resp.into_inner());
                }
                Ok(Err(status)) if retryable(&status) => {
                    last_error = format!("{target}: {}", status.message());
                    hinted = leader_hint(&status);
                }
                Ok(Err(status)) => return Err(ClientError::Rejected(Box::new(status))),
                Err(_) => last_error = format!("{target}: {what} timed out"),
            }
            debug!(what, target = %target, error = %last_error, "retrying");
            match hinted {
                Some(addr) if addr != target => {
                    // A fresh hint: go there at once.
                    self.set_leader(Some(addr.clone()));
                    target = addr;
                    continue;
                }
                _ => {
                    self.set_leader(None);
                    next = (next + 1) % endpoints.len();
                    target = endpoints[next].clone();
                }
            }
            let jitter = rand::thread_rng().gen_range(0..=backoff.as_millis() as u64 / 2);
            let sleep = backoff + Duration::from_millis(jitter);
            if tokio::time::Instant::now() + sleep >= deadline {
                return Err(ClientError::Unavailable(last_error));
            }
            tokio::time::sleep(sleep).await;
            backoff = (backoff * 2).min(cfg.backoff_max);
        }
    }

    /// Submits a batch, all or nothing, and returns one id per spec. A spec without an
    /// idempotency key gets a fresh one, so retries inside this call never double a task.
    pub async fn submit(&self, specs: Vec<TaskSpec>) -> Result<Vec<TaskId>, ClientError> {
        self.submit_request(submit_request(specs)).await
    }

    /// [`Client::submit`] of a request whose tasks all carry idempotency keys.
    pub(crate) async fn submit_request(
        &self,
        req: pb::SubmitTasksRequest,
    ) -> Result<Vec<TaskId>, ClientError> {
        let n = req.tasks.len();
        let resp = self
            .call("submit", Duration::ZERO, |mut c| {
                let req = req.clone();
                async move { c.submit_tasks(req).await }
            })
            .await?;
        submitted_ids(resp.ids, n)
    }

    pub async fn get(&self, id: TaskId) -> Result<Task, ClientError> {
        self.get_with(id, Consistency::Linearizable).await
    }

    pub async fn get_with(
        &self,
        id: TaskId,
        consistency: Consistency,
    ) -> Result<Task, ClientError> {
        Ok(self.get_explained(id, consistency).await?.0)
    }

    /// The task and, for a pending task that no registered worker could ever run, why.
    pub async fn get_explained(
        &self,
        id: TaskId,
        consistency: Consistency,
    ) -> Result<(Task, Option<String>), ClientError> {
        let req = pb::GetTaskRequest {
            id: id.0,
            consistency: consistency.to_pb(),
        };
        let resp = self
            .call("get", Duration::ZERO, |mut c| async move {
                c.get_task(req).await
            })
            .await?;
        let reason = resp
            .task
            .as_ref()
            .map(|t| t.pending_reason.clone())
            .filter(|r| !r.is_empty());
        Ok((decode_task(resp.task)?, reason))
    }

    /// Waits until the task is terminal or `timeout` passes; returns the task either way.
    pub async fn wait(&self, id: TaskId, timeout: Duration) -> Result<Task, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let req = pb::WaitTaskRequest {
                id: id.0,
                timeout_ms: left.as_millis() as u64,
            };
            let resp = self
                .call("wait", left, |mut c| async move { c.wait_task(req).await })
                .await?;
            let task = decode_task(resp.task)?;
            // The server caps one wait; keep waiting until our own deadline.
            if resp.terminal || tokio::time::Instant::now() >= deadline {
                return Ok(task);
            }
        }
    }

    /// Cancels a task; returns the state it was in.
    pub async fn cancel(&self, id: TaskId) -> Result<TaskState, ClientError> {
        let req = pb::CancelTaskRequest { id: id.0 };
        let resp = self
            .call("cancel", Duration::ZERO, |mut c| async move {
                c.cancel_task(req).await
            })
            .await?;
        state_from_pb("previous", resp.previous)
            .map_err(|e| ClientError::BadResponse(e.to_string()))?
            .ok_or_else(|| ClientError::BadResponse("previous state missing".into()))
    }

    pub async fn list(&self, query: &ListQuery) -> Result<ListPage, ClientError> {
        let req = pb::ListTasksRequest {
            queue: query.queue.clone().unwrap_or_default(),
            state: query.state.map_or(0, |s| state_to_pb(s) as i32),
            after_id: query.after.map_or(0, |a| a.0),
            limit: query.limit,
            consistency: query.consistency.to_pb(),
            omit_payload: false,
        };
        let resp = self
            .call("list", Duration::ZERO, |mut c| {
                let req = req.clone();
                async move { c.list_tasks(req).await }
            })
            .await?;
        let tasks = resp
            .tasks
            .into_iter()
            .map(|t| task_from_pb(t).map_err(|e| ClientError::BadResponse(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ListPage {
            tasks,
            next_after: Some(TaskId(resp.next_after_id)).filter(|a| a.0 > 0),
        })
    }

    /// Asks one replica, by address, about itself and the cluster (no redirect).
    pub async fn cluster_status_of(&self, addr: &str) -> Result<ClusterStatus, ClientError> {
        let mut client = self.channel(addr)?;
        let resp = tokio::time::timeout(
            self.inner.config.request_timeout,
            client.cluster_status(pb::ClusterStatusRequest {}),
        )
        .await
        .map_err(|_| ClientError::Unavailable(format!("{addr}: timed out")))?
        .map_err(|s| ClientError::Unavailable(format!("{addr}: {}", s.message())))?
        .into_inner();
        Ok(ClusterStatus {
            node_id: resp.node_id,
            role: resp.role,
            applied_index: resp.applied_index,
            leader_id: Some(resp.leader_id).filter(|l| *l > 0),
            leader_addr: Some(resp.leader_addr).filter(|a| !a.is_empty()),
            term: resp.term,
            last_log_index: resp.last_log_index,
            snapshot_index: resp.snapshot_index,
            commit_index: resp.commit_index,
            members: resp
                .members
                .into_iter()
                .map(|m| Member {
                    id: m.id,
                    addr: m.addr,
                    matched_index: m.matched_index,
                    voter: m.voter,
                })
                .collect(),
            cluster_name: resp.cluster_name,
            task_count: resp.task_count,
        })
    }

    /// The status from the first replica in the endpoint list that answers.
    pub async fn cluster_status(&self) -> Result<ClusterStatus, ClientError> {
        let mut last = ClientError::NoEndpoints;
        for addr in self.inner.endpoints.clone() {
            match self.cluster_status_of(&addr).await {
                Ok(s) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

fn flotilla(channel: Channel) -> FlotillaClient<Channel> {
    FlotillaClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

fn decode_task(task: Option<pb::Task>) -> Result<Task, ClientError> {
    let task = task.ok_or_else(|| ClientError::BadResponse("task missing".into()))?;
    task_from_pb(task).map_err(|e| ClientError::BadResponse(e.to_string()))
}

/// The request of a submit: every task gets an idempotency key (a fresh one when it has none).
pub(crate) fn submit_request(specs: Vec<TaskSpec>) -> pb::SubmitTasksRequest {
    let tasks = specs
        .into_iter()
        .map(|mut s| {
            if s.idempotency_key.is_none() {
                s.idempotency_key = Some(uuid::Uuid::new_v4().to_string());
            }
            spec_to_pb(&s, true)
        })
        .collect();
    pb::SubmitTasksRequest { tasks }
}

/// The ids of an acknowledged submit of `n` tasks.
pub(crate) fn submitted_ids(ids: Vec<u64>, n: usize) -> Result<Vec<TaskId>, ClientError> {
    if ids.len() != n {
        return Err(ClientError::BadResponse(format!(
            "{} ids for {n} tasks",
            ids.len()
        )));
    }
    Ok(ids.into_iter().map(TaskId).collect())
}

/// Codes after which the same call may be retried elsewhere without risk: the server either
/// did nothing or the call is idempotent (submits carry idempotency keys).
pub(crate) fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
            | Code::Aborted
    ) || (status.code() == Code::Internal && status.message().contains("h2 protocol error"))
}

pub(crate) fn leader_hint(status: &Status) -> Option<String> {
    let value = status.metadata().get(LEADER_HINT_KEY)?.to_str().ok()?;
    let (_, addr) = value.split_once('=')?;
    Some(addr.to_string())
}
