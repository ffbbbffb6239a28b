//! The operator's HTTP listener (`--http-listen`): Prometheus `/metrics`, `/healthz` and
//! `/readyz` (see [`crate::health`]). Plain HTTP/1.1 on its own address, apart from gRPC.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use flotilla_store::{SharedState, StoreProbe};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

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
}

/// Serves until `shutdown`.
pub async fn serve(listener: TcpListener, observed: Arc<Observed>, shutdown: CancellationToken) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
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
