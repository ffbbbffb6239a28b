//! Pipelined submits: many submits in flight over one `SubmitStream` to the leader.
//!
//! A unary call costs an HTTP/2 stream, two header blocks and a server task per request; a
//! [`SubmitPipeline`] sends each request as one message on a long-lived stream instead and
//! matches replies by sequence number. Its guarantees are those of [`Client::submit`]: a
//! request is answered only once its tasks are committed, and every task carries an
//! idempotency key, so whenever the stream cannot give a definite answer (it broke, the
//! replica lost leadership, a reply is late) the request is retried through
//! [`Client::submit`], which finds the leader and can never create a task twice.
//!
//! ```text
//!  submit() ─▶ [jobs] ─▶ stream task ─▶ SubmitStream (leader) ─▶ replies by seq ─▶ submit()
//!     └── no definite answer ─▶ Client::submit (unary, retried, same keys)
//! ```

use std::collections::HashMap;
use std::time::Duration;

use futures::future::{BoxFuture, Fuse, FusedFuture, FutureExt};

use flotilla_core::{TaskId, TaskSpec};
use flotilla_proto::pb;
use flotilla_proto::{LEADER_HINT_KEY, STREAM_MESSAGE_LIMIT};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tonic::{Code, Status, Streaming};
use tracing::debug;

use crate::client::{leader_hint, retryable, submit_request, submitted_ids};
use crate::{Client, ClientError};

/// Requests queued for the stream task, and sent but not yet on the wire, at most; beyond
/// that a submit goes the unary way.
const QUEUE: usize = 4096;
/// After a stream could not be opened, submits go the unary way this long before it is tried
/// again.
const REOPEN_AFTER: Duration = Duration::from_millis(200);

/// Submits over one stream to the leader. Cheap to clone; clones share the stream. Dropping
/// the last clone closes it.
#[derive(Clone)]
pub struct SubmitPipeline {
    client: Client,
    jobs: mpsc::Sender<Job>,
}

struct Job {
    tasks: Vec<pb::TaskSpec>,
    reply: oneshot::Sender<pb::SubmitStreamReply>,
}

/// The open stream: where requests go and where replies come from.
struct Conn {
    /// The replica it is open to.
    target: String,
    requests: mpsc::Sender<pb::SubmitStreamRequests>,
    replies: Streaming<pb::SubmitStreamReplies>,
}

impl Client {
    /// A [`SubmitPipeline`] on this client's replicas (it starts a task on the current runtime).
    pub fn pipeline(&self) -> SubmitPipeline {
        let (jobs, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(self.plain(), rx));
        SubmitPipeline {
            client: self.plain(),
            jobs,
        }
    }
}

impl SubmitPipeline {
    /// As [`Client::submit`]: a batch, all or nothing, one id per spec, answered once committed.
    pub async fn submit(&self, specs: Vec<TaskSpec>) -> Result<Vec<TaskId>, ClientError> {
        self.submit_request(submit_request(specs)).await
    }

    /// [`SubmitPipeline::submit`] of a request whose tasks all carry idempotency keys; the
    /// whole call, unary retries included, keeps one deadline (the client's call timeout).
    pub(crate) async fn submit_request(
        &self,
        req: pb::SubmitTasksRequest,
    ) -> Result<Vec<TaskId>, ClientError> {
        let deadline = Instant::now() + self.client.config().call_timeout;
        let n = req.tasks.len();
        let (reply, answer) = oneshot::channel();
        let job = Job {
            tasks: req.tasks.clone(),
            reply,
        };
        if self.jobs.try_send(job).is_ok() {
            let until = deadline.min(Instant::now() + self.client.config().request_timeout);
            // No reply (stream broken, leader changed, or reply late): fall through to the
            // unary retry.
            if let Ok(Ok(r)) = tokio::time::timeout_at(until, answer).await {
                if r.code == Code::Ok as i32 {
                    return submitted_ids(r.ids, n);
                }
                let status = reply_status(&r);
                // Over an admission limit: the unary path retries it with backoff until the
                // deadline.
                if !retryable(&status) && status.code() != Code::ResourceExhausted {
                    return Err(ClientError::Rejected(Box::new(status)));
                }
                debug!(error = %status.message(), "pipelined submit not answered; retrying");
            }
        }
        self.client.submit_request(req, Some(deadline)).await
    }
}

/// The status a failed reply stands for, with its leader hint as unary calls carry it.
fn reply_status(r: &pb::SubmitStreamReply) -> Status {
    let mut status = Status::new(Code::from(r.code), r.message.clone());
    if !r.leader_hint.is_empty() {
        if let Ok(v) = r.leader_hint.parse() {
            status.metadata_mut().insert(LEADER_HINT_KEY, v);
        }
    }
    status
}

/// The stream task: opens the stream on demand, numbers and sends requests, routes replies.
/// A request it cannot send, or whose stream breaks, loses its reply sender, which tells the
/// caller to retry the unary way.
async fn run(client: Client, mut jobs: mpsc::Receiver<Job>) {
    let mut conn: Option<Conn> = None;
    let mut waiting: HashMap<u64, oneshot::Sender<pb::SubmitStreamReply>> = HashMap::new();
    let mut next_seq = 0u64;
    let mut reopen_at = Instant::now();
    // Last time the stream answered (or started having requests to answer).
    let mut progress_at = Instant::now();
    let hedge_after = client.config().hedge_after;
    let mut probe: Fuse<BoxFuture<'static, Option<String>>> = Fuse::terminated();
    let mut leader_rx = client.leader_watch();
    leader_rx.mark_unchanged();
    loop {
        // Requests waiting past the hedge delay without any reply: ask who leads.
        let stuck = conn.is_some() && !waiting.is_empty() && probe.is_terminated();
        tokio::select! {
            job = jobs.recv() => {
                let Some(job) = job else { return };
                if conn.is_none() && Instant::now() >= reopen_at {
                    conn = open(&client).await;
                    if conn.is_none() {
                        reopen_at = Instant::now() + REOPEN_AFTER;
                    }
                }
                // The jobs queued meanwhile go in the same message, each its own request.
                let mut batch = vec![job];
                while batch.len() < STREAM_MESSAGE_LIMIT {
                    match jobs.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                // Without a stream, dropping the jobs' reply senders sends them to the unary path.
                let Some(c) = &conn else { continue };
                let mut requests = Vec::with_capacity(batch.len());
                let mut senders = Vec::with_capacity(batch.len());
                for job in batch {
                    next_seq += 1;
                    requests.push(pb::SubmitStreamRequest { seq: next_seq, tasks: job.tasks });
                    senders.push((next_seq, job.reply));
                }
                if c.requests.try_send(pb::SubmitStreamRequests { requests }).is_ok() {
                    if waiting.is_empty() {
                        progress_at = Instant::now();
                    }
                    waiting.extend(senders);
                }
            }
            replies = next_replies(&mut conn) => match replies {
                Some(replies) => {
                    progress_at = Instant::now();
                    let mut lost_leader = false;
                    for r in replies {
                        if r.code == Code::Unavailable as i32 && !lost_leader {
                            lost_leader = true;
                            client.set_leader(leader_hint(&reply_status(&r)));
                        }
                        if let Some(tx) = waiting.remove(&r.seq) {
                            let _ = tx.send(r);
                        }
                    }
                    if lost_leader {
                        // Whatever else is in flight there will fail too: start afresh.
                        conn = None;
                        waiting.clear();
                    }
                }
                None => {
                    conn = None;
                    waiting.clear();
                }
            },
            () = tokio::time::sleep_until(progress_at + hedge_after), if stuck => {
                let suspect = conn.as_ref().map(|c| c.target.clone()).unwrap_or_default();
                let client = client.clone();
                probe = async move { client.probe_newer_leader(suspect).await }.boxed().fuse();
            }
            _ = &mut probe => {
                // A newer leader, if found, is announced on the watch below; otherwise the
                // next probe waits another hedge delay.
                progress_at = Instant::now();
            }
            Ok(()) = leader_rx.changed() => {
                let leader = leader_rx.borrow_and_update().clone();
                if let (Some(l), Some(c)) = (leader, &conn) {
                    if l != c.target {
                        // Another leader is known: what waits here goes the unary way (to it),
                        // and the next request opens a stream there.
                        debug!(old = %c.target, new = %l, "leader changed; reopening the submit stream");
                        conn = None;
                        waiting.clear();
                    }
                }
            }
        }
    }
}

/// The next replies of the open stream; `None` when it ended or broke; never, without one.
async fn next_replies(conn: &mut Option<Conn>) -> Option<Vec<pb::SubmitStreamReply>> {
    match conn {
        Some(c) => c.replies.message().await.ok().flatten().map(|m| m.replies),
        None => std::future::pending().await,
    }
}

/// Opens a stream to the known leader (else any replica); a refusal's leader hint is
/// remembered for the next attempt.
async fn open(client: &Client) -> Option<Conn> {
    let target = client.known_leader().or_else(|| {
        let live = client.endpoints().iter().find(|e| !client.is_dead(e));
        live.or(client.endpoints().first()).cloned()
    })?;
    let mut api = client.channel(&target).ok()?;
    let (requests, rx) = mpsc::channel(QUEUE);
    // Short: while the stream opens, submits wait; a leader that does not answer this soon
    // is left to the unary path, which finds the new one.
    let open_timeout = (client.config().hedge_after * 3).min(client.config().request_timeout);
    let opened = tokio::time::timeout(
        open_timeout,
        api.submit_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await;
    match opened {
        Ok(Ok(resp)) => {
            client.set_leader(Some(target.clone()));
            Some(Conn {
                target,
                requests,
                replies: resp.into_inner(),
            })
        }
        Ok(Err(status)) => {
            debug!(%target, error = %status.message(), "submit stream refused");
            client.set_leader(leader_hint(&status));
            None
        }
        Err(_) => {
            debug!(%target, "opening the submit stream timed out");
            client.set_leader(None);
            None
        }
    }
}
