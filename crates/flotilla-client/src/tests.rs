//! Where calls go, against fake replicas: in-process gRPC servers that answer `SubmitTasks`,
//! `SubmitStream` and `ClusterStatus` as a leader, a follower (NOT_LEADER with a hint) or a
//! frozen replica (never answers) would. Every other method is UNIMPLEMENTED, so the fake does
//! not need to follow the whole service.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use flotilla_core::{TaskId, TaskSpec};
use flotilla_proto::pb;
use flotilla_proto::LEADER_HINT_KEY;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::codegen::{http, Body, BoxFuture, Service, StdError};
use tonic::{Code, Status};

use crate::{Client, ClientConfig, ClientError};

#[derive(Debug, Clone)]
enum Role {
    Leader {
        term: u64,
    },
    /// Answers NOT_LEADER, with a hint when it knows a leader.
    Follower {
        term: u64,
        leader: Option<String>,
    },
    /// A frozen process: accepts connections, never answers.
    Frozen,
}

struct FakeState {
    id: u64,
    addr: String,
    role: Mutex<Role>,
    /// Unary SubmitTasks calls received.
    submits: AtomicUsize,
    /// SubmitStream messages and requests received.
    stream_messages: AtomicUsize,
    stream_requests: AtomicUsize,
    statuses: AtomicUsize,
}

#[derive(Clone)]
struct Fake(Arc<FakeState>);

impl Fake {
    fn role(&self) -> Role {
        self.0.role.lock().unwrap().clone()
    }

    fn not_leader(&self, leader: &Option<String>) -> Status {
        let mut s = Status::unavailable("not the leader");
        if let Some(l) = leader {
            s.metadata_mut()
                .insert(LEADER_HINT_KEY, format!("9={l}").parse().unwrap());
        }
        s
    }

    /// The ids a leader gives a request: replica id * 1,000,000 + the number in each payload,
    /// so a test sees who served it and that each caller got its own. Queue "bad" is refused.
    #[allow(clippy::result_large_err)] // tonic's Status, as the generated services return it
    fn ids(&self, tasks: &[pb::TaskSpec]) -> Result<Vec<u64>, Status> {
        if tasks.iter().any(|t| t.queue == "bad") {
            return Err(Status::invalid_argument("invalid queue: \"bad\" refused"));
        }
        Ok(tasks
            .iter()
            .map(|t| {
                let n: u64 = String::from_utf8_lossy(&t.payload).parse().unwrap_or(0);
                self.0.id * 1_000_000 + n
            })
            .collect())
    }

    async fn submit(self, req: pb::SubmitTasksRequest) -> Result<pb::SubmitTasksResponse, Status> {
        self.0.submits.fetch_add(1, Ordering::SeqCst);
        match self.role() {
            Role::Leader { .. } => Ok(pb::SubmitTasksResponse {
                ids: self.ids(&req.tasks)?,
                created: vec![true; req.tasks.len()],
            }),
            Role::Follower { leader, .. } => Err(self.not_leader(&leader)),
            Role::Frozen => std::future::pending().await,
        }
    }

    async fn status(self) -> Result<pb::ClusterStatusResponse, Status> {
        self.0.statuses.fetch_add(1, Ordering::SeqCst);
        let (role, term, leader) = match self.role() {
            Role::Leader { term } => ("leader", term, self.0.addr.clone()),
            Role::Follower { term, leader } => ("follower", term, leader.unwrap_or_default()),
            Role::Frozen => std::future::pending().await,
        };
        Ok(pb::ClusterStatusResponse {
            node_id: self.0.id,
            role: role.into(),
            term,
            leader_addr: leader,
            ..Default::default()
        })
    }

    async fn stream(
        self,
        mut requests: tonic::Streaming<pb::SubmitStreamRequests>,
    ) -> Result<ReceiverStream<Result<pb::SubmitStreamReplies, Status>>, Status> {
        match self.role() {
            Role::Leader { .. } => {}
            Role::Follower { leader, .. } => return Err(self.not_leader(&leader)),
            Role::Frozen => std::future::pending().await,
        }
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(async move {
            while let Ok(Some(msg)) = requests.message().await {
                self.0.stream_messages.fetch_add(1, Ordering::SeqCst);
                let replies = msg
                    .requests
                    .into_iter()
                    .map(|r| {
                        self.0.stream_requests.fetch_add(1, Ordering::SeqCst);
                        match self.ids(&r.tasks) {
                            Ok(ids) => pb::SubmitStreamReply {
                                seq: r.seq,
                                created: vec![true; ids.len()],
                                ids,
                                ..Default::default()
                            },
                            Err(s) => pb::SubmitStreamReply {
                                seq: r.seq,
                                code: s.code() as i32,
                                message: s.message().into(),
                                ..Default::default()
                            },
                        }
                    })
                    .collect();
                if tx
                    .send(Ok(pb::SubmitStreamReplies { replies }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(ReceiverStream::new(rx))
    }
}

struct Unary<F>(Fake, F);

impl<Req, Resp, F, Fut> tonic::server::UnaryService<Req> for Unary<F>
where
    F: Fn(Fake, Req) -> Fut,
    Fut: std::future::Future<Output = Result<Resp, Status>> + Send + 'static,
    Resp: Send + 'static,
{
    type Response = Resp;
    type Future = BoxFuture<tonic::Response<Resp>, Status>;
    fn call(&mut self, request: tonic::Request<Req>) -> Self::Future {
        let fut = (self.1)(self.0.clone(), request.into_inner());
        Box::pin(async move { fut.await.map(tonic::Response::new) })
    }
}

struct Streamed(Fake);

impl tonic::server::StreamingService<pb::SubmitStreamRequests> for Streamed {
    type Response = pb::SubmitStreamReplies;
    type ResponseStream = ReceiverStream<Result<pb::SubmitStreamReplies, Status>>;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, Status>;
    fn call(
        &mut self,
        request: tonic::Request<tonic::Streaming<pb::SubmitStreamRequests>>,
    ) -> Self::Future {
        let fake = self.0.clone();
        Box::pin(async move {
            fake.stream(request.into_inner())
                .await
                .map(tonic::Response::new)
        })
    }
}

impl<B> Service<http::Request<B>> for Fake
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
        let fake = self.clone();
        match req.uri().path() {
            "/flotilla.v1.Flotilla/SubmitTasks" => Box::pin(async move {
                let svc = Unary(fake, |f: Fake, r: pb::SubmitTasksRequest| f.submit(r));
                Ok(
                    tonic::server::Grpc::new(tonic::codec::ProstCodec::default())
                        .unary(svc, req)
                        .await,
                )
            }),
            "/flotilla.v1.Flotilla/ClusterStatus" => Box::pin(async move {
                let svc = Unary(fake, |f: Fake, _: pb::ClusterStatusRequest| f.status());
                Ok(
                    tonic::server::Grpc::new(tonic::codec::ProstCodec::default())
                        .unary(svc, req)
                        .await,
                )
            }),
            "/flotilla.v1.Flotilla/SubmitStream" => Box::pin(async move {
                let svc = Streamed(fake);
                Ok(
                    tonic::server::Grpc::new(tonic::codec::ProstCodec::default())
                        .streaming(svc, req)
                        .await,
                )
            }),
            _ => Box::pin(async move { Ok(Status::unimplemented("not faked").into_http()) }),
        }
    }
}

impl tonic::server::NamedService for Fake {
    const NAME: &'static str = "flotilla.v1.Flotilla";
}

/// Starts a fake replica on a loopback port.
async fn fake(id: u64, role: Role) -> Fake {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let fake = Fake(Arc::new(FakeState {
        id,
        addr,
        role: Mutex::new(role),
        submits: AtomicUsize::new(0),
        stream_messages: AtomicUsize::new(0),
        stream_requests: AtomicUsize::new(0),
        statuses: AtomicUsize::new(0),
    }));
    let server = tonic::transport::Server::builder()
        .add_service(fake.clone())
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);
    fake
}

impl Fake {
    fn addr(&self) -> String {
        self.0.addr.clone()
    }
    fn submits(&self) -> usize {
        self.0.submits.load(Ordering::SeqCst)
    }
}

/// An address nothing listens on: connections are refused.
async fn refusing_addr() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().to_string()
}

fn client(addrs: &[String]) -> Client {
    let config = ClientConfig {
        call_timeout: Duration::from_secs(10),
        ..ClientConfig::default()
    };
    Client::with_config(addrs.to_vec(), config).unwrap()
}

fn task(n: u64) -> TaskSpec {
    TaskSpec::new("q", n.to_string().into_bytes())
}

/// A unary submit, without the shared stream.
async fn unary_submit(c: &Client, n: u64) -> Result<Vec<TaskId>, ClientError> {
    c.plain().submit(vec![task(n)]).await
}

#[tokio::test]
async fn the_leader_is_remembered_from_a_success() {
    let b = fake(2, Role::Leader { term: 3 }).await;
    let a = fake(
        1,
        Role::Follower {
            term: 3,
            leader: Some(b.addr()),
        },
    )
    .await;
    let c = fake(
        3,
        Role::Follower {
            term: 3,
            leader: Some(b.addr()),
        },
    )
    .await;
    let client = client(&[a.addr(), b.addr(), c.addr()]);
    // No leader known: every replica is asked at once and the leader's answer wins.
    assert_eq!(
        unary_submit(&client, 7).await.unwrap(),
        vec![TaskId(2_000_007)]
    );
    assert_eq!(client.known_leader(), Some(b.addr()));
    let (a0, c0) = (a.submits(), c.submits());
    assert!(a0 <= 1 && c0 <= 1, "{a0} {c0}");
    // From then on, calls go to the leader only.
    for n in 0..5 {
        assert_eq!(
            unary_submit(&client, n).await.unwrap(),
            vec![TaskId(2_000_000 + n)]
        );
    }
    assert_eq!((a.submits(), b.submits(), c.submits()), (a0, 6, c0));
}

#[tokio::test]
async fn a_leader_hint_is_followed_even_outside_the_list() {
    let b = fake(2, Role::Leader { term: 3 }).await;
    let a = fake(
        1,
        Role::Follower {
            term: 3,
            leader: Some(b.addr()),
        },
    )
    .await;
    let client = client(&[a.addr()]);
    let t0 = Instant::now();
    assert_eq!(
        unary_submit(&client, 1).await.unwrap(),
        vec![TaskId(2_000_001)]
    );
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!((a.submits(), b.submits()), (1, 1));
    assert_eq!(client.known_leader(), Some(b.addr()));
    unary_submit(&client, 2).await.unwrap();
    assert_eq!(
        (a.submits(), b.submits()),
        (1, 2),
        "the hinted leader is remembered"
    );
}

#[tokio::test]
async fn discovery_asks_every_replica_at_once_and_a_frozen_one_does_not_delay_it() {
    let frozen = fake(1, Role::Frozen).await;
    let b = fake(2, Role::Leader { term: 3 }).await;
    let c = fake(
        3,
        Role::Follower {
            term: 3,
            leader: None,
        },
    )
    .await;
    let client = client(&[frozen.addr(), c.addr(), b.addr()]);
    let t0 = Instant::now();
    assert_eq!(
        unary_submit(&client, 4).await.unwrap(),
        vec![TaskId(2_000_004)]
    );
    // Far below the 5 s request timeout a sequential try of the frozen replica would cost.
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!((frozen.submits(), b.submits(), c.submits()), (1, 1, 1));
}

#[tokio::test]
async fn a_refused_address_is_left_at_once_and_not_tried_first_again() {
    let dead = refusing_addr().await;
    let b = fake(2, Role::Leader { term: 4 }).await;
    // A follower that still names the dead old leader.
    let c = fake(
        3,
        Role::Follower {
            term: 3,
            leader: Some(dead.clone()),
        },
    )
    .await;
    let client = client(&[dead.clone(), b.addr(), c.addr()]);
    client.set_leader(Some(dead.clone()));
    let t0 = Instant::now();
    assert_eq!(
        unary_submit(&client, 5).await.unwrap(),
        vec![TaskId(2_000_005)]
    );
    // No backoff sleep before the retry elsewhere (the first backoff is 20 ms or more).
    assert!(
        t0.elapsed() < Duration::from_millis(300),
        "{:?}",
        t0.elapsed()
    );
    assert!(client.is_dead(&dead));
    assert_eq!(client.known_leader(), Some(b.addr()));
    // A stale hint naming the dead address does not make it the first choice again.
    client.set_leader(None);
    client.inner.routing.learn_in_term(&dead, 0);
    client.inner.routing.mark_dead(&dead);
    assert_eq!(client.known_leader(), None);
    assert!(!client.everyone(&Default::default()).contains(&dead));
    unary_submit(&client, 6).await.unwrap();
    assert_eq!(client.known_leader(), Some(b.addr()));
}

#[tokio::test]
async fn a_call_stuck_on_a_frozen_leader_moves_to_the_newer_leader() {
    let old = fake(1, Role::Frozen).await;
    let new = fake(2, Role::Leader { term: 5 }).await;
    let c = fake(
        3,
        Role::Follower {
            term: 5,
            leader: Some(new.addr()),
        },
    )
    .await;
    let client = client(&[old.addr(), new.addr(), c.addr()]);
    client.inner.routing.learn_in_term(&old.addr(), 4);
    let t0 = Instant::now();
    assert_eq!(
        unary_submit(&client, 9).await.unwrap(),
        vec![TaskId(2_000_009)]
    );
    let took = t0.elapsed();
    // The hedge delay (100 ms) and one probe, not the 5 s request timeout.
    assert!(took >= Duration::from_millis(100), "{took:?}");
    assert!(took < Duration::from_millis(1000), "{took:?}");
    assert_eq!((old.submits(), new.submits(), c.submits()), (1, 1, 0));
    assert_eq!(client.known_leader(), Some(new.addr()));
    assert_eq!(client.inner.routing.term_of(&new.addr()), 5);
}

#[tokio::test]
async fn a_slow_leader_that_still_leads_keeps_the_call() {
    // The probe finds the same leader in the newest term: nothing is sent elsewhere.
    let old = fake(1, Role::Frozen).await;
    let c = fake(
        3,
        Role::Follower {
            term: 4,
            leader: Some(old.addr()),
        },
    )
    .await;
    let d = fake(
        4,
        Role::Follower {
            term: 4,
            leader: Some(old.addr()),
        },
    )
    .await;
    let config = ClientConfig {
        call_timeout: Duration::from_millis(600),
        ..ClientConfig::default()
    };
    let client = Client::with_config([old.addr(), c.addr(), d.addr()], config).unwrap();
    client.set_leader(Some(old.addr()));
    let err = unary_submit(&client, 1).await.unwrap_err();
    assert!(matches!(err, ClientError::Unavailable(_)), "{err}");
    assert_eq!((old.submits(), c.submits(), d.submits()), (1, 0, 0));
    assert!(
        c.0.statuses.load(Ordering::SeqCst) >= 1,
        "the followers were asked"
    );
}

#[tokio::test]
async fn concurrent_submits_share_stream_messages_and_each_gets_its_own_answer() {
    let leader = fake(2, Role::Leader { term: 1 }).await;
    let client = client(&[leader.addr()]);
    client.set_leader(Some(leader.addr()));
    let mut calls = Vec::new();
    for n in 0..64u64 {
        let client = client.clone();
        calls.push(tokio::spawn(async move {
            let mut spec = task(n);
            if n % 8 == 3 {
                spec.queue = "bad".into();
            }
            (n, client.submit(vec![spec]).await)
        }));
    }
    for call in calls {
        let (n, result) = call.await.unwrap();
        if n % 8 == 3 {
            let err = result.unwrap_err();
            assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
            assert!(err.to_string().contains("bad"), "{err}");
        } else {
            assert_eq!(result.unwrap(), vec![TaskId(2_000_000 + n)]);
        }
    }
    assert_eq!(leader.submits(), 0, "no unary call");
    assert_eq!(leader.0.stream_requests.load(Ordering::SeqCst), 64);
    let messages = leader.0.stream_messages.load(Ordering::SeqCst);
    assert!(
        messages < 64,
        "{messages} messages for 64 requests: nothing coalesced"
    );
}
