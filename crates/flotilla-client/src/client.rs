//! The client: endpoints, leader tracking, retries.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::future::{BoxFuture, Fuse, FusedFuture, FutureExt};
use futures::stream::{FuturesUnordered, StreamExt};

use flotilla_core::{Task, TaskId, TaskSpec, TaskState};
use flotilla_proto::pb::{self, flotilla_client::FlotillaClient};
use flotilla_proto::{spec_to_pb, state_from_pb, state_to_pb, task_from_pb, LEADER_HINT_KEY};
use rand::Rng;
use tokio::time::Instant;
use tonic::codegen::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tracing::debug;

use crate::routing::{describe, unreachable, Routing, PROBE_FRESH, PROBE_TIMEOUT};
use crate::{ClientError, SubmitPipeline};

/// Largest message the client sends or accepts.
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Retry and timeout settings, and the token.
#[derive(Clone)]
pub struct ClientConfig {
    /// Deadline of one RPC attempt.
    pub request_timeout: Duration,
    /// Bearer token sent with every call (replicas started with `--tokens-file` need one).
    pub token: Option<String>,
    /// TLS to the replicas (those started with `--tls-cert` need it): the CA trusted and an
    /// optional client certificate. `None`: plain connections.
    pub tls: Option<flotilla_tls::ClientTls>,
    /// Deadline of a whole call, retries included.
    pub call_timeout: Duration,
    /// Delay before asking all replicas again once every one failed; doubles up to
    /// `backoff_max`. (The first retry elsewhere after a failure does not wait.)
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A call to the leader outstanding this long makes the client ask the other replicas who
    /// leads (then at doubling intervals up to 0.5 s); a newer leader gets the call too.
    pub hedge_after: Duration,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("request_timeout", &self.request_timeout)
            .field("token", &self.token.as_ref().map(|_| "(set)"))
            .field("tls", &self.tls)
            .field("call_timeout", &self.call_timeout)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .field("hedge_after", &self.hedge_after)
            .finish()
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            request_timeout: Duration::from_secs(5),
            token: None,
            tls: None,
            call_timeout: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(250),
            hedge_after: Duration::from_millis(100),
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
    /// The incarnation of its data dir the membership pins (empty: not pinned yet).
    pub incarnation: String,
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
    /// Last log index the replica purged (0: none); a replica behind it needs a snapshot.
    pub purged_index: u64,
    pub commit_index: u64,
    pub members: Vec<Member>,
    pub cluster_name: String,
    pub task_count: u64,
}

/// A Flotilla client. Cheap to clone; clones share connections and the known leader.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    /// The stream that concurrent [`Client::submit`] calls share, opened on the first submit.
    /// `None` in the client the stream task itself holds (no reference cycle).
    submits: Option<Arc<OnceLock<SubmitPipeline>>>,
}

struct Inner {
    endpoints: Vec<String>,
    config: ClientConfig,
    channels: Mutex<HashMap<String, Channel>>,
    /// Adds the token to every call.
    bearer: Bearer,
    /// The known leader and the addresses that refused connections.
    routing: Routing,
}

/// Where a call may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Only the leader serves it; a success names the leader.
    Leader,
    /// Any replica serves it (stale reads).
    Any,
}

/// How one attempt on one replica ended.
enum Attempt<T> {
    Done(T),
    Failed(Status),
    TimedOut,
    BadAddress(ClientError),
}

/// Longest interval between two probes of one call.
const HEDGE_GAP_MAX: Duration = Duration::from_millis(500);

/// Sleeps until `at`; never, without one.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
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
        let bearer = Bearer::new(config.token.as_deref())?;
        let client = Client {
            inner: Arc::new(Inner {
                endpoints,
                bearer,
                config,
                channels: Mutex::new(HashMap::new()),
                routing: Routing::new(),
            }),
            submits: Some(Arc::default()),
        };
        for e in &client.inner.endpoints {
            client.channel(e)?;
        }
        Ok(client)
    }

    /// The retry and timeout settings.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    pub(crate) fn channel(&self, addr: &str) -> Result<FlotillaClient<Conn>, ClientError> {
        self.raw_channel(addr).map(flotilla)
    }

    /// The (lazily connected) channel to a replica, sending the token with every call.
    pub(crate) fn raw_channel(&self, addr: &str) -> Result<Conn, ClientError> {
        let mut channels = self
            .inner
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(addr) {
            return Ok(InterceptedService::new(
                c.clone(),
                self.inner.bearer.clone(),
            ));
        }
        let endpoint = Channel::from_shared(format!("http://{addr}")).map_err(|e| {
            ClientError::BadAddress {
                addr: addr.to_string(),
                message: e.to_string(),
            }
        })?;
        let endpoint = endpoint.connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true);
        let channel = match &self.inner.config.tls {
            Some(tls) => tls.connector(CONNECT_TIMEOUT).lazy_channel(endpoint),
            None => endpoint.connect_lazy(),
        };
        channels.insert(addr.to_string(), channel.clone());
        Ok(InterceptedService::new(channel, self.inner.bearer.clone()))
    }

    /// The leader as last seen (unless its address refused a connection since).
    pub(crate) fn known_leader(&self) -> Option<String> {
        self.inner.routing.leader()
    }

    /// Whether `addr` refused a connection recently.
    pub(crate) fn is_dead(&self, addr: &str) -> bool {
        self.inner.routing.is_dead(addr)
    }

    /// `Some(addr)`: `addr` leads (a hint or a success); `None`: forget the known leader.
    pub(crate) fn set_leader(&self, addr: Option<String>) {
        match addr {
            Some(a) => self.inner.routing.learn(&a),
            None => self.inner.routing.forget_any(),
        }
    }

    /// The address of the replica believed to lead, and a receiver notified whenever this
    /// client learns of another one (from any call, hint or probe).
    pub fn leader_watch(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.inner.routing.subscribe()
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
        F: Fn(FlotillaClient<Conn>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.route(Route::Leader, what, extra, |ch| op(flotilla(ch)))
            .await
    }

    /// A read: to the leader when linearizable, to any replica when stale.
    pub(crate) async fn read<T, F, Fut>(
        &self,
        consistency: Consistency,
        what: &str,
        op: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(FlotillaClient<Conn>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let route = match consistency {
            Consistency::Linearizable => Route::Leader,
            Consistency::Stale => Route::Any,
        };
        self.route(route, what, Duration::ZERO, |ch| op(flotilla(ch)))
            .await
    }

    /// [`Client::call`] over a raw channel, for services other than the client API.
    pub(crate) async fn call_raw<T, F, Fut>(
        &self,
        what: &str,
        extra: Duration,
        op: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.route(Route::Leader, what, extra, op).await
    }

    /// The retry engine. Every attempt is `op` on one replica; several may be in flight at
    /// once (at most one per replica), and the first success or final rejection ends the call:
    ///
    /// - first to the known leader; when none is known, to every replica at once (only the
    ///   leader can succeed; the others answer NOT_LEADER with a hint, which is followed at
    ///   once, even to an address not in the list);
    /// - after a failure, at once to every other replica; only a second failure of every
    ///   attempt waits (capped exponential backoff with jitter) before all are asked again;
    /// - an address that refused a connection is not asked first again for [`DEAD_FOR`];
    /// - while the attempt on the leader is outstanding past `hedge_after`, the other replicas
    ///   are asked who leads (`ClusterStatus`); one that names another leader in a newer term,
    ///   or a leader learned meanwhile by any call of this client, gets the call too.
    ///
    /// Sending the same call twice is safe: every submit carries idempotency keys, reports are
    /// fenced by attempt and idempotent, a cancel of a cancelled task answers OK.
    async fn route<T, F, Fut>(
        &self,
        route: Route,
        what: &str,
        extra: Duration,
        op: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let cfg = &self.inner.config;
        let deadline = Instant::now() + cfg.call_timeout + extra;
        let per_try = cfg.request_timeout + extra;
        self.route_until(route, what, deadline, per_try, op).await
    }

    /// [`Client::route`] with its deadline and the timeout of one attempt given.
    async fn route_until<T, F, Fut>(
        &self,
        route: Route,
        what: &str,
        deadline: Instant,
        per_try: Duration,
        op: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let cfg = &self.inner.config;
        let routing = &self.inner.routing;
        let leader_only = route == Route::Leader;
        let launch = |addr: String| {
            let call = self.raw_channel(&addr).map(&op);
            async move {
                let outcome = match call {
                    Ok(fut) => match tokio::time::timeout(per_try, fut).await {
                        Ok(Ok(resp)) => Attempt::Done(resp.into_inner()),
                        Ok(Err(status)) => Attempt::Failed(status),
                        Err(_) => Attempt::TimedOut,
                    },
                    Err(e) => Attempt::BadAddress(e),
                };
                (addr, outcome)
            }
        };
        let mut inflight = FuturesUnordered::new();
        // Replicas with an attempt in flight, and those that failed since the last wait.
        let mut busy: HashSet<String> = HashSet::new();
        let mut failed: HashSet<String> = HashSet::new();
        let mut retry_at: Option<Instant> = None;
        let mut asked_all = false;
        let mut backoff = cfg.backoff_initial;
        let mut last_error = format!("{what}: no replica answered");
        // The attempt on the replica believed to lead, watched by the hedge.
        let mut focus: Option<String> = None;
        let mut hedge_at = Instant::now() + cfg.hedge_after;
        let mut hedge_gap = cfg.hedge_after;
        let mut probe: Fuse<BoxFuture<'_, Option<String>>> = Fuse::terminated();
        let mut leader_rx = routing.subscribe();
        leader_rx.mark_unchanged();
        // A RESOURCE_EXHAUSTED answer: when to ask that replica again, and the refusal.
        let mut exhausted_at: Option<(Instant, String)> = None;
        let mut exhausted: Option<Status> = None;

        let first = match (routing.leader(), route) {
            (Some(l), _) => Some(l),
            (None, Route::Leader) => None,
            (None, Route::Any) => {
                let live: Vec<&String> = self
                    .inner
                    .endpoints
                    .iter()
                    .filter(|e| !routing.is_dead(e))
                    .collect();
                live.get(rand::thread_rng().gen_range(0..live.len().max(1)))
                    .map(|e| e.to_string())
            }
        };
        match first {
            Some(addr) => {
                busy.insert(addr.clone());
                focus = Some(addr.clone());
                inflight.push(launch(addr));
            }
            None => {
                asked_all = true;
                for addr in self.everyone(&busy) {
                    busy.insert(addr.clone());
                    inflight.push(launch(addr));
                }
            }
        }
        loop {
            if inflight.is_empty() && retry_at.is_none() && exhausted_at.is_none() {
                if !asked_all {
                    // The first failure: every other replica, now.
                    asked_all = true;
                    for addr in self.everyone(&busy) {
                        busy.insert(addr.clone());
                        inflight.push(launch(addr));
                    }
                    continue;
                }
                let jitter = rand::thread_rng().gen_range(0..=backoff.as_millis() as u64 / 2);
                let at = Instant::now() + backoff + Duration::from_millis(jitter);
                if at >= deadline {
                    return Err(match exhausted {
                        Some(s) => ClientError::Rejected(Box::new(s)),
                        None => ClientError::Unavailable(last_error),
                    });
                }
                retry_at = Some(at);
                backoff = (backoff * 2).min(cfg.backoff_max);
            }
            let hedging = leader_only
                && probe.is_terminated()
                && focus.as_ref().is_some_and(|f| busy.contains(f));
            tokio::select! {
                biased;
                Some((addr, outcome)) = inflight.next() => {
                    busy.remove(&addr);
                    let status = match outcome {
                        Attempt::Done(v) => {
                            if leader_only {
                                routing.learn(&addr);
                            }
                            return Ok(v);
                        }
                        Attempt::Failed(s) if s.code() == Code::ResourceExhausted => {
                            // The leader is over an admission limit: the same call may pass
                            // once the backlog drained. Ask it again after a backoff, until the
                            // deadline; then the refusal (naming the limit) is the answer.
                            let jitter =
                                rand::thread_rng().gen_range(0..=backoff.as_millis() as u64 / 2);
                            let at = Instant::now() + backoff + Duration::from_millis(jitter);
                            backoff = (backoff * 2).min(cfg.backoff_max);
                            if at >= deadline {
                                return Err(ClientError::Rejected(Box::new(s)));
                            }
                            exhausted_at = Some((at, addr));
                            exhausted = Some(s);
                            continue;
                        }
                        Attempt::Failed(s) if !retryable(&s) => {
                            return Err(ClientError::Rejected(Box::new(s)));
                        }
                        Attempt::Failed(s) => s,
                        Attempt::TimedOut => {
                            last_error = format!("{addr}: {what} timed out");
                            routing.forget(&addr);
                            failed.insert(addr);
                            continue;
                        }
                        Attempt::BadAddress(e) => {
                            last_error = e.to_string();
                            failed.insert(addr);
                            continue;
                        }
                    };
                    last_error = format!("{addr}: {}", describe(&status));
                    debug!(what, target = %addr, error = %last_error, "attempt failed");
                    if unreachable(&status) {
                        routing.mark_dead(&addr);
                    } else {
                        routing.forget(&addr);
                    }
                    failed.insert(addr.clone());
                    match leader_hint(&status) {
                        // A hint to somewhere new: go there at once. One back to a replica
                        // that failed already (two replicas pointing at each other) waits.
                        Some(hint)
                            if hint != addr
                                && !busy.contains(&hint)
                                && !failed.contains(&hint)
                                && !routing.is_dead(&hint) =>
                        {
                            routing.learn(&hint);
                            busy.insert(hint.clone());
                            focus = Some(hint.clone());
                            hedge_at = Instant::now() + cfg.hedge_after;
                            inflight.push(launch(hint));
                        }
                        _ => {}
                    }
                }
                () = sleep_until_opt(exhausted_at.as_ref().map(|(at, _)| *at)) => {
                    if let Some((_, addr)) = exhausted_at.take() {
                        if !busy.contains(&addr) {
                            busy.insert(addr.clone());
                            inflight.push(launch(addr));
                        }
                    }
                }
                () = sleep_until_opt(retry_at) => {
                    retry_at = None;
                    failed.clear();
                    for addr in self.everyone(&busy) {
                        busy.insert(addr.clone());
                        inflight.push(launch(addr));
                    }
                }
                () = tokio::time::sleep_until(hedge_at), if hedging => {
                    // The leader is slow to answer: does another replica know a newer one?
                    hedge_gap = (hedge_gap * 2).min(HEDGE_GAP_MAX);
                    hedge_at = Instant::now() + hedge_gap;
                    let suspect = focus.clone().unwrap_or_default();
                    probe = self.probe_newer_leader(suspect).boxed().fuse();
                }
                newer = &mut probe => {
                    if let Some(addr) = newer {
                        if !busy.contains(&addr) {
                            debug!(what, leader = %addr, "a newer leader is known; sending there too");
                            busy.insert(addr.clone());
                            focus = Some(addr.clone());
                            inflight.push(launch(addr));
                        }
                    }
                }
                Ok(()) = leader_rx.changed(), if leader_only => {
                    let leader = leader_rx.borrow_and_update().clone();
                    if let Some(addr) = leader.filter(|a| !busy.contains(a)) {
                        // Another call learned of a new leader while this one waits elsewhere.
                        debug!(what, leader = %addr, "leader changed; sending there too");
                        busy.insert(addr.clone());
                        focus = Some(addr.clone());
                        hedge_at = Instant::now() + cfg.hedge_after;
                        inflight.push(launch(addr));
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    return Err(match exhausted {
                        Some(s) => ClientError::Rejected(Box::new(s)),
                        None => ClientError::Unavailable(last_error),
                    });
                }
            }
        }
    }

    /// Every replica not in `busy` to ask at once: the known ones (and a learned leader not in
    /// the list), without those that refused connections recently unless that is all of them.
    fn everyone(&self, busy: &HashSet<String>) -> Vec<String> {
        let routing = &self.inner.routing;
        let mut all: Vec<String> = self.inner.endpoints.clone();
        if let Some(l) = routing.leader() {
            if !all.contains(&l) {
                all.push(l);
            }
        }
        all.retain(|a| !busy.contains(a));
        let live: Vec<String> = all
            .iter()
            .filter(|a| !routing.is_dead(a))
            .cloned()
            .collect();
        if live.is_empty() {
            all
        } else {
            live
        }
    }

    /// Asks every replica who leads (one probe at a time per client; a fresh answer is
    /// shared). Returns the leader named in the newest term when it is not `suspect` and its
    /// term is newer than the one `suspect` was seen leading in; that leader is then known.
    pub(crate) async fn probe_newer_leader(&self, suspect: String) -> Option<String> {
        let routing = &self.inner.routing;
        let found = {
            let mut last = routing.probe.lock().await;
            match &*last {
                Some((at, found)) if at.elapsed() < PROBE_FRESH => found.clone(),
                _ => {
                    let found = self.who_leads().await;
                    *last = Some((Instant::now(), found.clone()));
                    found
                }
            }
        };
        let (addr, term) = found?;
        if addr == suspect {
            routing.learn_in_term(&addr, term);
            return None;
        }
        if term <= routing.term_of(&suspect) {
            return None;
        }
        routing.learn_in_term(&addr, term);
        Some(addr)
    }

    /// The leader (address, term) named by the replica in the newest term, from the answers of
    /// every replica (all but one suffice: the leader being probed may not answer).
    async fn who_leads(&self) -> Option<(String, u64)> {
        let n = self.inner.endpoints.len();
        let mut asks: FuturesUnordered<_> = self
            .inner
            .endpoints
            .iter()
            .map(|addr| {
                let client = self.channel(addr);
                async move {
                    let mut client = client.ok()?;
                    let resp = client
                        .cluster_status(pb::ClusterStatusRequest {})
                        .await
                        .ok()?
                        .into_inner();
                    Some((resp.leader_addr, resp.term))
                }
            })
            .collect();
        let mut best: Option<(String, u64)> = None;
        let mut answered = 0;
        let until = Instant::now() + PROBE_TIMEOUT;
        while let Ok(Some(answer)) = tokio::time::timeout_at(until, asks.next()).await {
            answered += 1;
            if let Some((addr, term)) = answer.filter(|(a, _)| !a.is_empty()) {
                if best.as_ref().is_none_or(|(_, t)| term > *t) {
                    best = Some((addr, term));
                }
            }
            if answered + 1 >= n && best.is_some() {
                break;
            }
        }
        best
    }

    /// Submits a batch, all or nothing, and returns one id per spec. A spec without an
    /// idempotency key gets a fresh one, so retries inside this call never double a task.
    ///
    /// Concurrent submits of one client (and its clones) share one `SubmitStream` to the
    /// leader: each is still its own request with its own ids or error, and one whose stream
    /// gives no definite answer is retried as a unary `SubmitTasks` with the same keys.
    pub async fn submit(&self, specs: Vec<TaskSpec>) -> Result<Vec<TaskId>, ClientError> {
        let req = submit_request(specs);
        match &self.submits {
            Some(shared) => {
                let pipeline = shared.get_or_init(|| self.plain().pipeline());
                pipeline.submit_request(req).await
            }
            None => self.submit_request(req, None).await,
        }
    }

    /// This client without the shared submit stream: what a stream task holds.
    pub(crate) fn plain(&self) -> Client {
        Client {
            inner: self.inner.clone(),
            submits: None,
        }
    }

    /// A unary `SubmitTasks` of a request whose tasks all carry idempotency keys, retried
    /// until `deadline` (default: the call timeout from now).
    pub(crate) async fn submit_request(
        &self,
        req: pb::SubmitTasksRequest,
        deadline: Option<Instant>,
    ) -> Result<Vec<TaskId>, ClientError> {
        let n = req.tasks.len();
        let deadline = deadline.unwrap_or_else(|| Instant::now() + self.inner.config.call_timeout);
        let per_try = self.inner.config.request_timeout;
        let resp = self
            .route_until(Route::Leader, "submit", deadline, per_try, |ch| {
                let req = req.clone();
                let mut c = flotilla(ch);
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
            explain: false,
        };
        let resp = self
            .read(
                consistency,
                "get",
                |mut c| async move { c.get_task(req).await },
            )
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
            .read(query.consistency, "list", |mut c| {
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
        .map_err(|s| match s.code() {
            // Asking another replica would be refused the same way.
            Code::Unauthenticated | Code::PermissionDenied => ClientError::Rejected(Box::new(s)),
            _ => ClientError::Unavailable(format!("{addr}: {}", describe(&s))),
        })?
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
            purged_index: resp.purged_index,
            commit_index: resp.commit_index,
            members: resp
                .members
                .into_iter()
                .map(|m| Member {
                    id: m.id,
                    addr: m.addr,
                    matched_index: m.matched_index,
                    voter: m.voter,
                    incarnation: m.incarnation,
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
                Err(e @ ClientError::Rejected(_)) => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// The token in `path`: its first line, trimmed.
pub fn token_from_file(path: &std::path::Path) -> Result<String, ClientError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ClientError::BadToken(format!("{}: {e}", path.display())))?;
    let first = text.lines().next().unwrap_or("").trim();
    if first.is_empty() {
        return Err(ClientError::BadToken(format!(
            "{}: the file is empty",
            path.display()
        )));
    }
    Ok(first.to_string())
}

/// The caller's token from the environment, as the CLI reads it: the file
/// `FLOTILLA_TOKEN_FILE` names, else `FLOTILLA_TOKEN`; `None` without either. For
/// [`ClientConfig::token`].
pub fn token_from_env() -> Result<Option<String>, ClientError> {
    if let Some(path) = std::env::var_os("FLOTILLA_TOKEN_FILE").filter(|p| !p.is_empty()) {
        return token_from_file(std::path::Path::new(&path)).map(Some);
    }
    Ok(std::env::var("FLOTILLA_TOKEN")
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty()))
}

/// TLS settings from the environment, as the CLI reads them: `FLOTILLA_CA` (the CA file that
/// signed the replicas' certificates; TLS is on when it is set), `FLOTILLA_CLIENT_CERT` and
/// `FLOTILLA_CLIENT_KEY` (an optional client certificate), `FLOTILLA_TLS_SERVER_NAME` (the
/// name to expect in the replicas' certificates instead of the host dialled). For
/// [`ClientConfig::tls`].
pub fn tls_from_env() -> Result<Option<flotilla_tls::ClientTls>, ClientError> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let Some(ca) = var("FLOTILLA_CA") else {
        if var("FLOTILLA_CLIENT_CERT").is_some() {
            return Err(ClientError::BadTls(
                "FLOTILLA_CLIENT_CERT is set without FLOTILLA_CA".into(),
            ));
        }
        return Ok(None);
    };
    let cert = var("FLOTILLA_CLIENT_CERT");
    let key = var("FLOTILLA_CLIENT_KEY");
    let name = std::env::var("FLOTILLA_TLS_SERVER_NAME")
        .ok()
        .filter(|v| !v.is_empty());
    tls_from_files(
        std::path::Path::new(&ca),
        cert.as_deref().map(std::path::Path::new),
        key.as_deref().map(std::path::Path::new),
        name.as_deref(),
    )
    .map(Some)
}

/// TLS trusting the CA file `ca`, presenting `cert` and `key` when given, and expecting
/// `server_name` in the replicas' certificates when given.
pub fn tls_from_files(
    ca: &std::path::Path,
    cert: Option<&std::path::Path>,
    key: Option<&std::path::Path>,
    server_name: Option<&str>,
) -> Result<flotilla_tls::ClientTls, ClientError> {
    let tls =
        flotilla_tls::ClientTls::from_files(ca, cert, key).map_err(|e| ClientError::BadTls(e.0))?;
    match server_name {
        Some(n) => tls
            .with_server_name(n)
            .map_err(|e| ClientError::BadTls(e.0)),
        None => Ok(tls),
    }
}

/// A connect to a replica taking longer fails (and the next replica is tried).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A channel to a replica that adds the caller's token to every request.
pub(crate) type Conn = InterceptedService<Channel, Bearer>;

/// Sets `authorization: Bearer TOKEN` on every request, when there is a token.
#[derive(Clone)]
pub(crate) struct Bearer(Option<tonic::metadata::AsciiMetadataValue>);

impl Bearer {
    fn new(token: Option<&str>) -> Result<Bearer, ClientError> {
        token
            .map(|t| {
                format!("Bearer {}", t.trim()).parse().map_err(|_| {
                    ClientError::BadToken("a token is printable ASCII without line breaks".into())
                })
            })
            .transpose()
            .map(Bearer)
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

fn flotilla(channel: Conn) -> FlotillaClient<Conn> {
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

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
