//! A Rust program serving the `square` queue with its own async handler.
//!
//! ```sh
//! cargo run --release --example square -- 127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403
//! flotilla submit --queue square -- 12      # the payload here is the argv JSON; see below
//! ```
//! The handler reads the payload as a decimal number (or the first argv element of a command
//! payload) and returns its square as the result.

use std::sync::Arc;
use std::time::Duration;

use flotilla_client::Client;
use flotilla_core::Capacity;
use flotilla_worker::{CommandPayload, Outcome, TaskContext, WorkerConfig};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() {
    let cluster = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403".into());
    let client = Client::new(cluster.split(',')).expect("valid addresses");
    let handler = |ctx: TaskContext| async move {
        let text = match CommandPayload::decode(&ctx.payload) {
            Some(p) => p.argv.first().cloned().unwrap_or_default(),
            None => String::from_utf8_lossy(&ctx.payload).to_string(),
        };
        match text.trim().parse::<i64>() {
            Ok(n) => Outcome::Success(n.saturating_mul(n).to_string().into_bytes()),
            Err(e) => Outcome::Failure {
                error: format!("payload {text:?} is not a number: {e}"),
                retryable: false,
            },
        }
    };
    let config = WorkerConfig {
        id: format!("square-{}", std::process::id()),
        capacity: Capacity {
            slots: 16,
            cpu_millis: 1000,
            mem_mb: 256,
        },
        labels: Default::default(),
        queues: vec!["square".into()],
        heartbeat_interval: Duration::from_secs(1),
        drain_timeout: flotilla_worker::DEFAULT_DRAIN_TIMEOUT,
        batch_reports: true,
    };
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    if let Err(e) = flotilla_worker::run(client, config, Arc::new(handler), shutdown).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
