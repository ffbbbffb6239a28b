//! The outbox: attempts' outcomes on their way to the leader, sent in batches.
//!
//! Every finished attempt hands its outcome to the outbox and awaits the leader's answer to
//! it. One loop per worker process sends what has queued as one `ReportOutcomes` call — at most
//! [`MAX_OUTCOMES_PER_CALL`] outcomes and about [`MAX_BATCH_BYTES`] — with up to
//! [`CALLS_IN_FLIGHT`] calls on their way; while they are, the next batch gathers. Under load one call (and one h2 stream, one decode, one
//! session check on the leader) serves many attempts; alone, an outcome goes at once. Each
//! outcome is still fenced and answered on its own; retrying one that the cluster did not take
//! is the caller's choice (see `runtime::report`).
//!
//! A leader that does not know `ReportOutcomes` (an older version, during a rolling upgrade)
//! answers UNIMPLEMENTED; the outbox then sends each outcome as its own call at once, as
//! before (also the way with batching off).

use std::collections::VecDeque;

use flotilla_client::{Client, ClientError, Code, Outcome, TaskId, MAX_OUTCOMES_PER_CALL};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tracing::info;

/// `ReportOutcomes` calls in flight at once per worker: an outcome that finishes while one is
/// on its way need not wait for it.
pub(crate) const CALLS_IN_FLIGHT: usize = 2;

/// Bytes of results and errors sent in one call, about (a single larger outcome goes alone).
pub(crate) const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// An outcome waiting for its call, and who waits for the answer.
struct Queued {
    task_id: TaskId,
    attempt: u32,
    outcome: Outcome,
    answer: oneshot::Sender<Result<(), ClientError>>,
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub(crate) struct Outbox {
    tx: mpsc::UnboundedSender<Queued>,
}

impl Outbox {
    /// Starts the loop that delivers for one worker session (`batched`: in `ReportOutcomes`
    /// calls; false: one call per outcome); it ends when every [`Outbox`] handle is dropped.
    pub(crate) fn start(
        client: Client,
        worker_id: String,
        session: String,
        batched: bool,
    ) -> Outbox {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(deliver(client, worker_id, session, batched, rx));
        Outbox { tx }
    }

    /// Sends one outcome and waits for the leader's answer to it.
    pub(crate) async fn send(
        &self,
        task_id: TaskId,
        attempt: u32,
        outcome: Outcome,
    ) -> Result<(), ClientError> {
        let (answer, rx) = oneshot::channel();
        self.tx
            .send(Queued {
                task_id,
                attempt,
                outcome,
                answer,
            })
            .map_err(|_| ClientError::Unavailable("the worker is stopping".into()))?;
        rx.await
            .map_err(|_| ClientError::Unavailable("the worker is stopping".into()))?
    }
}

fn outcome_bytes(o: &Outcome) -> usize {
    32 + match o {
        Outcome::Success(result) => result.len(),
        Outcome::Failure { error, .. } => error.len(),
    }
}

/// How many of the queued outcomes (from the front) the next call carries: at least one, at
/// most [`MAX_OUTCOMES_PER_CALL`], and no more than [`MAX_BATCH_BYTES`] unless one alone is.
fn batch_len<'a>(queued: impl Iterator<Item = &'a Outcome>) -> usize {
    let mut bytes = 0;
    let mut n = 0;
    for o in queued.take(MAX_OUTCOMES_PER_CALL) {
        bytes += outcome_bytes(o);
        if n > 0 && bytes > MAX_BATCH_BYTES {
            break;
        }
        n += 1;
    }
    n
}

/// One `ReportOutcomes` call for `batch`; the batch comes back when the leader does not know
/// the method (UNIMPLEMENTED), to be sent one by one.
async fn send_batch(
    client: &Client,
    worker_id: &str,
    session: &str,
    batch: Vec<Queued>,
) -> Option<Vec<Queued>> {
    let reports: Vec<(TaskId, u32, Outcome)> = batch
        .iter()
        .map(|q| (q.task_id, q.attempt, q.outcome.clone()))
        .collect();
    match client.report_outcomes(worker_id, session, &reports).await {
        Ok(answers) => {
            for (q, a) in batch.into_iter().zip(answers) {
                let _ = q.answer.send(a);
            }
            None
        }
        Err(e) if e.code() == Some(Code::Unimplemented) => Some(batch),
        Err(e) => {
            for q in batch {
                let _ = q.answer.send(Err(e.clone()));
            }
            None
        }
    }
}

/// One outcome in a call of its own (`CompleteTask` or `FailTask`).
async fn send_one(client: &Client, worker_id: &str, session: &str, q: Queued) {
    let sent = match q.outcome {
        Outcome::Success(result) => {
            client
                .complete_task(worker_id, session, q.task_id, q.attempt, result)
                .await
        }
        Outcome::Failure { error, retryable } => {
            client
                .fail_task(worker_id, session, q.task_id, q.attempt, error, retryable)
                .await
        }
    };
    let _ = q.answer.send(sent);
}

async fn deliver(
    client: Client,
    worker_id: String,
    session: String,
    mut batched: bool,
    mut rx: mpsc::UnboundedReceiver<Queued>,
) {
    let mut queued: VecDeque<Queued> = VecDeque::new();
    let mut calls: FuturesUnordered<BoxFuture<'_, Option<Vec<Queued>>>> = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            q = rx.recv(), if open => match q {
                Some(q) => queued.push_back(q),
                None => open = false,
            },
            Some(back) = calls.next(), if !calls.is_empty() => {
                if let Some(back) = back {
                    info!(worker = %worker_id, "the leader does not take batched reports; reporting one by one");
                    batched = false;
                    for q in back.into_iter().rev() {
                        queued.push_front(q);
                    }
                }
            }
            else => return,
        }
        while let Ok(q) = rx.try_recv() {
            queued.push_back(q);
        }
        let (client, worker_id, session) = (&client, &worker_id, &session);
        if batched {
            while calls.len() < CALLS_IN_FLIGHT && !queued.is_empty() {
                let n = batch_len(queued.iter().map(|q| &q.outcome));
                let batch: Vec<Queued> = queued.drain(..n).collect();
                calls.push(send_batch(client, worker_id, session, batch).boxed());
            }
        } else {
            for q in queued.drain(..) {
                calls.push(
                    async move {
                        send_one(client, worker_id, session, q).await;
                        None
                    }
                    .boxed(),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};

    use flotilla_proto::pb;
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::codegen::{http, Body, BoxFuture, Service, StdError};
    use tonic::Status;

    /// A leader of an older version: it knows `CompleteTask` and `FailTask` (recording each
    /// report) and answers UNIMPLEMENTED to everything else, `ReportOutcomes` included.
    #[derive(Clone, Default)]
    struct OldLeader {
        /// (method, task, attempt) of every call, in order.
        calls: Arc<Mutex<Vec<(String, u64, u32)>>>,
    }

    /// Records a call to `method` (its task and attempt read by the fn) and answers OK.
    struct Record<Req>(OldLeader, &'static str, fn(&Req) -> (u64, u32));

    impl<Req> tonic::server::UnaryService<Req> for Record<Req> {
        type Response = pb::Ack;
        type Future = BoxFuture<tonic::Response<pb::Ack>, Status>;
        fn call(&mut self, request: tonic::Request<Req>) -> Self::Future {
            let (task, attempt) = (self.2)(request.get_ref());
            self.0
                .calls
                .lock()
                .unwrap()
                .push((self.1.to_string(), task, attempt));
            Box::pin(async { Ok(tonic::Response::new(pb::Ack {})) })
        }
    }

    impl<B> Service<http::Request<B>> for OldLeader
    where
        B: Body + Send + 'static,
        B::Error: Into<StdError> + Send + 'static,
    {
        type Response = http::Response<tonic::body::BoxBody>;
        type Error = Infallible;
        type Future = BoxFuture<Self::Response, Self::Error>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<B>) -> Self::Future {
            let leader = self.clone();
            match req.uri().path() {
                "/flotilla.v1.Workers/CompleteTask" => Box::pin(async move {
                    let svc = Record(leader, "complete", |r: &pb::CompleteTaskRequest| {
                        (r.task_id, r.attempt)
                    });
                    Ok(
                        tonic::server::Grpc::new(tonic::codec::ProstCodec::default())
                            .unary(svc, req)
                            .await,
                    )
                }),
                "/flotilla.v1.Workers/FailTask" => Box::pin(async move {
                    let svc = Record(leader, "fail", |r: &pb::FailTaskRequest| {
                        (r.task_id, r.attempt)
                    });
                    Ok(
                        tonic::server::Grpc::new(tonic::codec::ProstCodec::default())
                            .unary(svc, req)
                            .await,
                    )
                }),
                other => {
                    let method = other.rsplit('/').next().unwrap_or_default().to_string();
                    leader.calls.lock().unwrap().push((method, 0, 0));
                    Box::pin(async move { Ok(Status::unimplemented("unknown method").into_http()) })
                }
            }
        }
    }

    impl tonic::server::NamedService for OldLeader {
        const NAME: &'static str = "flotilla.v1.Workers";
    }

    /// Against a leader without `ReportOutcomes` (a rolling upgrade), the outbox falls back to
    /// one call per outcome: every outcome is delivered and answered OK, and after the first
    /// UNIMPLEMENTED it never tries a batch again.
    #[tokio::test]
    async fn against_a_leader_without_batches_each_outcome_goes_in_its_own_call() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let leader = OldLeader::default();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(leader.clone())
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let client = Client::new([addr]).unwrap();
        let outbox = Outbox::start(client, "w".into(), "s".into(), true);
        let failure = Outcome::Failure {
            error: "boom".into(),
            retryable: true,
        };
        let (a, b) = tokio::join!(
            outbox.send(TaskId(1), 1, Outcome::Success(b"r".to_vec())),
            outbox.send(TaskId(2), 3, failure),
        );
        a.expect("completion delivered");
        b.expect("failure delivered");
        outbox
            .send(TaskId(3), 1, Outcome::Success(vec![]))
            .await
            .expect("a later completion delivered");
        let mut calls = leader.calls.lock().unwrap().clone();
        assert_eq!(calls[0], ("ReportOutcomes".to_string(), 0, 0), "{calls:?}");
        calls.remove(0);
        calls.sort();
        assert_eq!(
            calls,
            vec![
                ("complete".to_string(), 1, 1),
                ("complete".to_string(), 3, 1),
                ("fail".to_string(), 2, 3),
            ],
            "one call per outcome, no batch tried again"
        );
    }

    fn success(bytes: usize) -> Outcome {
        Outcome::Success(vec![0; bytes])
    }

    /// A batch takes at least one outcome, at most the call's count limit, and stops before
    /// the byte budget unless a single outcome is over it alone.
    #[test]
    fn a_batch_is_bounded_by_count_and_bytes_but_never_empty() {
        let small: Vec<Outcome> = (0..MAX_OUTCOMES_PER_CALL + 5).map(|_| success(8)).collect();
        assert_eq!(batch_len(small.iter()), MAX_OUTCOMES_PER_CALL);
        assert_eq!(batch_len(small[..3].iter()), 3);
        let big = [success(MAX_BATCH_BYTES + 1), success(8)];
        assert_eq!(batch_len(big.iter()), 1, "one oversized outcome goes alone");
        let halves = [
            success(MAX_BATCH_BYTES / 2),
            success(MAX_BATCH_BYTES / 2),
            success(8),
        ];
        assert_eq!(
            batch_len(halves.iter()),
            1,
            "two halves plus overhead exceed the budget"
        );
        let fail = Outcome::Failure {
            error: "e".repeat(MAX_BATCH_BYTES),
            retryable: true,
        };
        assert_eq!(batch_len([success(8), fail].iter()), 1);
        assert_eq!(batch_len(std::iter::empty()), 0);
    }
}
