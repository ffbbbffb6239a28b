//! `flotilla worker`: runs command tasks for a cluster until SIGINT/SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use flotilla_core::Capacity;
use flotilla_worker::{CommandHandler, WorkerConfig};
use tokio_util::sync::CancellationToken;

use crate::commands::{parse_labels, Ctx};

#[derive(Args)]
pub struct WorkerArgs {
    /// Worker id [default: HOSTNAME-PID].
    #[arg(long)]
    pub id: Option<String>,
    /// Tasks run at once.
    #[arg(long, default_value_t = 4)]
    pub slots: u32,
    /// CPU offered, in millicores.
    #[arg(long, value_name = "MILLI", default_value_t = 4000)]
    pub cpu: u32,
    /// Memory offered, in MiB.
    #[arg(long, value_name = "MB", default_value_t = 8192)]
    pub mem_mb: u32,
    /// A label tasks can require, KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Serve only this queue (repeatable) [default: every queue].
    #[arg(long = "queue", value_name = "QUEUE")]
    pub queues: Vec<String>,
    /// Heartbeat period in ms (keep it well under the cluster's worker lease TTL).
    #[arg(long, default_value_t = 1000)]
    pub heartbeat_ms: u64,
}

pub fn config_from(args: &WorkerArgs) -> Result<WorkerConfig> {
    let id = match &args.id {
        Some(id) => id.clone(),
        None => {
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "worker".into());
            format!("{}-{}", host.trim(), std::process::id())
        }
    };
    if args.heartbeat_ms == 0 {
        anyhow::bail!("invalid --heartbeat-ms 0: must be positive");
    }
    Ok(WorkerConfig {
        id,
        capacity: Capacity {
            slots: args.slots,
            cpu_millis: args.cpu,
            mem_mb: args.mem_mb,
        },
        labels: parse_labels(&args.labels)?,
        queues: args.queues.clone(),
        heartbeat_interval: Duration::from_millis(args.heartbeat_ms),
    })
}

pub async fn run(ctx: &Ctx, args: WorkerArgs) -> Result<ExitCode> {
    crate::init_tracing("info");
    let config = config_from(&args)?;
    let client =
        flotilla_client::Client::new(ctx.cluster.split(',')).context("invalid --cluster")?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        crate::server::wait_for_signal().await;
        stop.cancel();
    });
    flotilla_worker::run(
        client,
        config,
        Arc::new(CommandHandler::default()),
        shutdown,
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}
