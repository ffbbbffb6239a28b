//! Queue administration (policies, retention, the queue list) and the full status of a task,
//! including one removed by retention.

use std::time::Duration;

use flotilla_core::{FlowLimits, QueuePolicy, RateLimit, Task, TaskId, TaskState, WhyLine};
use flotilla_proto::pb;

use crate::client::Consistency;
use crate::{Client, ClientError};

/// A task as a status query sees it.
#[derive(Debug, Clone)]
pub struct TaskStatus {
    /// The task; for one removed by retention, what its tombstone remembers (outcome, queue,
    /// key, no payload).
    pub task: Task,
    /// For a pending task no registered worker could ever run: why.
    pub pending_reason: Option<String>,
    /// Removed by retention (its idempotency key still remembered).
    pub removed: bool,
    /// Why it is in its state, when asked for ([`Client::status_explained`]).
    pub why: Vec<WhyLine>,
}

/// A queue with its settings and tasks by state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    pub name: String,
    pub policy: QueuePolicy,
    /// `None`: the cluster default.
    pub retention: Option<Duration>,
    /// Tasks per state, in [`TaskState::ALL`] order.
    pub counts: [u64; 6],
    /// Submission time of the oldest pending task (ms since the Unix epoch).
    pub oldest_pending_ms: Option<u64>,
    /// Flow control: max running, weight, rate.
    pub flow: FlowLimits,
}

/// One flow-control limit of a queue, as [`Client::set_queue_limit`] sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueLimit {
    /// Most tasks running at once; `None` removes the limit.
    MaxRunning(Option<u32>),
    /// Share of free slots against other queues.
    Weight(u32),
    /// Tasks started per second; `None` removes the limit.
    Rate(Option<RateLimit>),
    /// Tasks sharing a concurrency key running at once; `None` removes the limit.
    MaxPerKey(Option<u32>),
}

impl QueueInfo {
    pub fn count(&self, state: TaskState) -> u64 {
        let i = TaskState::ALL
            .iter()
            .position(|s| *s == state)
            .expect("every state is listed");
        self.counts[i]
    }
}

/// Every queue, and the cluster's retention defaults.
#[derive(Debug, Clone)]
pub struct QueueList {
    pub queues: Vec<QueueInfo>,
    pub retention: Duration,
    pub key_retention: Duration,
}

impl Client {
    /// Sets how a queue orders its pending tasks; `create` configures a queue that has no
    /// task yet (refused as unknown otherwise).
    pub async fn set_queue_policy(
        &self,
        queue: &str,
        policy: QueuePolicy,
        create: bool,
    ) -> Result<(), ClientError> {
        let (name, aging_ms) = match policy {
            QueuePolicy::Fifo => ("fifo", 0),
            QueuePolicy::Priority { aging_ms } => ("priority", aging_ms),
            QueuePolicy::ShortestJobFirst => ("sjf", 0),
        };
        let req = pb::SetQueuePolicyRequest {
            queue: queue.into(),
            policy: name.into(),
            aging_ms,
            create,
        };
        self.call("set-policy", Duration::ZERO, |mut c| {
            let req = req.clone();
            async move { c.set_queue_policy(req).await }
        })
        .await
        .map(|_| ())
    }

    /// Sets how long a queue keeps finished tasks; `None` goes back to the cluster default.
    pub async fn set_queue_retention(
        &self,
        queue: &str,
        retention: Option<Duration>,
        create: bool,
    ) -> Result<(), ClientError> {
        let retention_ms = match retention {
            Some(d) if d.as_millis() == 0 => {
                return Err(ClientError::BadRequest(
                    "invalid retention: must be at least 1 ms".into(),
                ))
            }
            Some(d) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            None => 0,
        };
        let req = pb::SetQueueRetentionRequest {
            queue: queue.into(),
            retention_ms,
            create,
        };
        self.call("set-retention", Duration::ZERO, |mut c| {
            let req = req.clone();
            async move { c.set_queue_retention(req).await }
        })
        .await
        .map(|_| ())
    }

    /// Sets one flow-control limit of a queue (admin); `create` configures a queue that has no
    /// task yet. A limit of 0 is refused naming the field.
    pub async fn set_queue_limit(
        &self,
        queue: &str,
        limit: QueueLimit,
        create: bool,
    ) -> Result<(), ClientError> {
        use pb::set_queue_limit_request::Limit;
        let limit = match limit {
            QueueLimit::MaxRunning(Some(n)) => Limit::MaxRunning(n),
            QueueLimit::MaxRunning(None) => Limit::NoMaxRunning(true),
            QueueLimit::Weight(w) => Limit::Weight(w),
            QueueLimit::Rate(Some(r)) => Limit::Rate(pb::RateLimit {
                per_sec: r.per_sec,
                burst: r.burst,
            }),
            QueueLimit::Rate(None) => Limit::NoRate(true),
            QueueLimit::MaxPerKey(Some(n)) => Limit::MaxPerKey(n),
            QueueLimit::MaxPerKey(None) => Limit::NoMaxPerKey(true),
        };
        let req = pb::SetQueueLimitRequest {
            queue: queue.into(),
            create,
            limit: Some(limit),
        };
        self.call("set-limit", Duration::ZERO, |mut c| {
            let req = req.clone();
            async move { c.set_queue_limit(req).await }
        })
        .await
        .map(|_| ())
    }

    /// Every queue with tasks or settings.
    pub async fn list_queues(&self, consistency: Consistency) -> Result<QueueList, ClientError> {
        let req = pb::ListQueuesRequest {
            consistency: consistency.to_pb(),
        };
        let resp = self
            .read(consistency, "list-queues", |mut c| async move {
                c.list_queues(req).await
            })
            .await?;
        let queues = resp
            .queues
            .into_iter()
            .map(|q| {
                let policy = match q.policy.as_str() {
                    "fifo" => QueuePolicy::Fifo,
                    "priority" => QueuePolicy::Priority {
                        aging_ms: q.aging_ms,
                    },
                    "sjf" => QueuePolicy::ShortestJobFirst,
                    other => {
                        return Err(ClientError::BadResponse(format!(
                            "queue {}: unknown policy {other:?}",
                            q.name
                        )))
                    }
                };
                Ok(QueueInfo {
                    name: q.name,
                    policy,
                    retention: Some(q.retention_ms)
                        .filter(|r| *r > 0)
                        .map(Duration::from_millis),
                    counts: [
                        q.waiting,
                        q.pending,
                        q.running,
                        q.succeeded,
                        q.failed,
                        q.cancelled,
                    ],
                    oldest_pending_ms: Some(q.oldest_pending_ms).filter(|t| *t > 0),
                    flow: FlowLimits {
                        max_running: Some(q.max_running).filter(|n| *n > 0),
                        // A replica of the previous release sends 0: the default.
                        weight: q.weight.max(1),
                        rate: (q.rate_per_sec > 0).then_some(RateLimit {
                            per_sec: q.rate_per_sec,
                            burst: q.rate_burst.max(1),
                        }),
                        max_per_key: Some(q.max_per_key).filter(|n| *n > 0),
                    },
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(QueueList {
            queues,
            retention: Duration::from_millis(resp.retention_ms),
            key_retention: Duration::from_millis(resp.key_retention_ms),
        })
    }

    /// Builds a snapshot on the replica at `addr` now; returns the log index it covers.
    pub async fn take_snapshot(&self, addr: &str, timeout: Duration) -> Result<u64, ClientError> {
        let mut c = self.channel(addr)?;
        let req = pb::TakeSnapshotRequest {
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        let resp = tokio::time::timeout(timeout + Duration::from_secs(5), c.take_snapshot(req))
            .await
            .map_err(|_| ClientError::Unavailable(format!("{addr}: snapshot timed out")))?
            .map_err(|s| ClientError::Rejected(Box::new(s)))?;
        Ok(resp.into_inner().snapshot_index)
    }

    /// The task, why it cannot run yet, and whether retention removed it.
    pub async fn status(
        &self,
        id: TaskId,
        consistency: Consistency,
    ) -> Result<TaskStatus, ClientError> {
        self.status_explained(id, consistency, false).await
    }

    /// [`Client::status`] with, when `explain`, why the task is in its state (`why`; empty for
    /// a task removed by retention).
    pub async fn status_explained(
        &self,
        id: TaskId,
        consistency: Consistency,
        explain: bool,
    ) -> Result<TaskStatus, ClientError> {
        let req = pb::GetTaskRequest {
            id: id.0,
            consistency: consistency.to_pb(),
            explain,
        };
        let resp = self
            .read(
                consistency,
                "get",
                |mut c| async move { c.get_task(req).await },
            )
            .await?;
        let task = resp
            .task
            .ok_or_else(|| ClientError::BadResponse("task missing".into()))?;
        let pending_reason = Some(task.pending_reason.clone()).filter(|r| !r.is_empty());
        let task = flotilla_proto::task_from_pb(task)
            .map_err(|e| ClientError::BadResponse(e.to_string()))?;
        Ok(TaskStatus {
            task,
            pending_reason,
            removed: resp.removed,
            why: resp
                .why
                .into_iter()
                .map(|l| WhyLine {
                    at_ms: Some(l.at_ms).filter(|t| *t > 0),
                    text: l.text,
                })
                .collect(),
        })
    }
}
