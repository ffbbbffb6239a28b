//! The operator's HTTP listener (`--http-listen`): Prometheus `/metrics`, `/healthz` and
//! `/readyz` (see [`crate::health`]), and the web dashboard (see [`crate::dashboard`]): the
//! page at `/`, its JSON at `/api/overview`, and, for an admin token, `/api/session` and
//! `POST /api/tasks/{id}/cancel`. Plain HTTP/1.1 on its own address, apart from gRPC.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use flotilla_proto::pb::{self, flotilla_server::Flotilla};
use flotilla_store::{SharedState, StoreProbe};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::api::Api;
use crate::auth::{Role, TokensFile};
use crate::dashboard::{self, LeaseSeen, MemberView, ReplicaView};
use crate::dispatch::Dispatcher;
use crate::fatal::Fatal;
use crate::health::{readiness, ReadyBounds, ReadyInput};
use crate::leader_watch::Contact;
use crate::leadership::now_ms;
use crate::telemetry::{Scrape, Telemetry};
use crate::Raft;

/// What the HTTP handlers read.
pub struct Observed {
    pub telemetry: Arc<Telemetry>,
    pub raft: Raft,
    pub state: SharedState,
    pub store: StoreProbe,
    pub fatal: Fatal,
    pub contact: Contact,
    pub dispatcher: Arc<Dispatcher>,
    pub bounds: ReadyBounds,
    pub requests: Arc<crate::inflight::Budget>,
    pub node_id: u64,
    pub cluster_name: String,
    /// The tokens file, whose admin tokens authorise the dashboard's actions.
    pub tokens: Option<Arc<TokensFile>>,
    /// The client API, through which the dashboard's actions go.
    pub api: Api,
}

/// Serves until `shutdown`.
pub async fn serve(listener: TcpListener, observed: Arc<Observed>, shutdown: CancellationToken) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/", get(page))
        .route("/dashboard.js", get(script))
        .route("/dashboard.css", get(style))
        .route("/api/overview", get(overview))
        .route("/api/session", get(session))
        .route("/api/tasks/:id/cancel", post(cancel))
        .with_state(observed);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = served {
        warn!(error = %e, "the HTTP listener stopped");
    }
}

async fn metrics(State(o): State<Arc<Observed>>) -> impl IntoResponse {
    let text = o.telemetry.render(&Scrape {
        raft: &o.raft,
        state: &o.state,
        store: &o.store,
        workers_connected: o.dispatcher.connected_workers(),
        request_bytes_in_flight: o.requests.held(),
        now_ms: now_ms(),
    });
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

async fn healthz(State(o): State<Arc<Observed>>) -> (StatusCode, String) {
    if let Some(why) = o.fatal.reason() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {why}\n"),
        );
    }
    let store = o.store.clone();
    let probe = tokio::task::spawn_blocking(move || store.writable());
    match tokio::time::timeout(Duration::from_secs(5), probe).await {
        Ok(Ok(Ok(()))) => (StatusCode::OK, "ok\n".into()),
        Ok(Ok(Err(why))) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {why}\n"),
        ),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: storage probe failed: {e}\n"),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "unhealthy: a synced write took over 5 s\n".into(),
        ),
    }
}

async fn readyz(State(o): State<Arc<Observed>>) -> (StatusCode, String) {
    let input = {
        let m = o.raft.metrics().borrow().clone();
        ReadyInput {
            is_leader: m.state == openraft::ServerState::Leader,
            leader: m.current_leader,
            since_contact: o.contact.since_last(),
            since_quorum_ack: m.millis_since_quorum_ack.map(Duration::from_millis),
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            fatal: o.fatal.reason(),
        }
    };
    match readiness(&input, o.bounds) {
        Ok(what) => (StatusCode::OK, format!("{what}\n")),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn page() -> impl IntoResponse {
    static_file("text/html; charset=utf-8", dashboard::INDEX_HTML)
}

async fn script() -> impl IntoResponse {
    static_file("text/javascript; charset=utf-8", dashboard::SCRIPT_JS)
}

async fn style() -> impl IntoResponse {
    static_file("text/css; charset=utf-8", dashboard::STYLE_CSS)
}

fn static_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// A JSON response.
fn json(status: StatusCode, value: &impl serde::Serialize) -> Response {
    match serde_json::to_string(value) {
        Ok(body) => (
            status,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding: {e}\n"),
        )
            .into_response(),
    }
}

/// `{"error": message}` with `status`.
fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    json(status, &serde_json::json!({ "error": message.into() }))
}

async fn overview(State(o): State<Arc<Observed>>) -> Response {
    let m = o.raft.metrics().borrow().clone();
    let is_leader = m.state == openraft::ServerState::Leader;
    let membership = m.membership_config.membership();
    let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
    let members = membership
        .nodes()
        .map(|(id, node)| MemberView {
            id: *id,
            addr: node.addr.clone(),
            voter: voters.contains(id),
            leader: m.current_leader == Some(*id),
            matched_index: m
                .replication
                .as_ref()
                .and_then(|r| r.get(id).copied())
                .map(|l| l.map_or(0, |l| l.index)),
        })
        .collect();
    let replica = ReplicaView {
        id: o.node_id,
        cluster_name: o.cluster_name.clone(),
        role: format!("{:?}", m.state).to_lowercase(),
        term: m.current_term,
        leader: m.current_leader,
        last_log_index: m.last_log_index.unwrap_or(0),
        applied_index: m.last_applied.map_or(0, |l| l.index),
        snapshot_index: m.snapshot.map_or(0, |l| l.index),
        now_ms: now_ms(),
    };
    let lease = |w: &str| {
        let v = o.dispatcher.lease_view(w);
        LeaseSeen {
            age_ms: v.age.map(|d| d.as_millis() as u64),
            connected: v.connected,
        }
    };
    let view = {
        let applied = o.state.read();
        dashboard::overview(
            &applied.state,
            replica,
            members,
            is_leader.then_some(&lease as &dyn Fn(&str) -> LeaseSeen),
            o.tokens.is_some(),
        )
    };
    json(StatusCode::OK, &view)
}

/// The admin token in `headers`, or the response refusing the request.
fn admin(o: &Observed, headers: &HeaderMap) -> Result<crate::auth::Principal, Response> {
    let Some(tokens) = &o.tokens else {
        return Err(json_error(
            StatusCode::FORBIDDEN,
            "this replica has no tokens file, so the dashboard is read-only (start it with --tokens-file)",
        ));
    };
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    // Any token of the file is known here (every role may ask for the cluster's status); the
    // role is checked next, so that a refusal says an admin token is needed.
    let principal = tokens
        .current()
        .check("/flotilla.v1.Flotilla/ClusterStatus", authorization)
        .map_err(|s| {
            json_error(
                http_status(s.code()),
                format!("token refused: {}", s.message()),
            )
        })?;
    if principal.role != Role::Admin {
        return Err(json_error(
            StatusCode::FORBIDDEN,
            format!(
                "token {:?} has role {}; the dashboard's actions need an admin token",
                principal.name, principal.role
            ),
        ));
    }
    Ok(principal)
}

async fn session(State(o): State<Arc<Observed>>, headers: HeaderMap) -> Response {
    match admin(&o, &headers) {
        Ok(p) => json(
            StatusCode::OK,
            &serde_json::json!({ "name": p.name, "role": p.role.name(), "admin": true }),
        ),
        Err(refused) => refused,
    }
}

async fn cancel(
    State(o): State<Arc<Observed>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let principal = match admin(&o, &headers) {
        Ok(p) => p,
        Err(refused) => return refused,
    };
    let Ok(id) = id.parse::<u64>() else {
        return json_error(
            StatusCode::BAD_REQUEST,
            format!("task id {id:?} is not a number"),
        );
    };
    let mut request = tonic::Request::new(pb::CancelTaskRequest { id });
    request.extensions_mut().insert(principal);
    match o.api.cancel_task(request).await {
        Ok(reply) => {
            let previous = flotilla_proto::state_from_pb("previous", reply.into_inner().previous)
                .ok()
                .flatten()
                .map_or("unknown", |s| s.as_str());
            json(
                StatusCode::OK,
                &serde_json::json!({ "id": id, "previous": previous }),
            )
        }
        Err(status) => json_error(http_status(status.code()), status.message()),
    }
}

/// The HTTP status for a gRPC code.
fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code;
    match code {
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
