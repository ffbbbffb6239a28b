//! `flotilla worker`: runs command tasks for a cluster until SIGINT/SIGTERM, then drains:
//! takes nothing new, lets running tasks finish up to `--drain-timeout`, hands back the rest
//! and exits 0.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use flotilla_core::Capacity;
use flotilla_worker::{CommandHandler, WorkerConfig};
use tokio_util::sync::CancellationToken;

use crate::commands::{parse_labels, Ctx};

#[derive(Args)]
pub struct WorkerArgs {
    /// Read settings from this TOML file: keys are the flags' long names; flags and
    /// FLOTILLA_WORKER_<FLAG> variables override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Log lines as `text` or `json` (one object per line), on stderr.
    #[arg(long, value_enum, default_value_t = crate::LogFormat::Text)]
    pub log_format: crate::LogFormat,
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
    /// On SIGTERM/SIGINT: seconds running tasks may go on (no new ones are taken) before
    /// what is left is handed back to run elsewhere.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub drain_timeout: f64,
    /// How often a running command's checkpoint file ($FLOTILLA_CHECKPOINT_OUT) is looked at;
    /// a changed one is saved (and once more when the command exits).
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    pub checkpoint_every: f64,
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
    if !(args.drain_timeout.is_finite() && (0.0..=86_400.0).contains(&args.drain_timeout)) {
        anyhow::bail!(
            "invalid --drain-timeout {}: must be 0 to 86400 seconds",
            args.drain_timeout
        );
    }
    if !(args.checkpoint_every.is_finite() && (0.05..=86_400.0).contains(&args.checkpoint_every)) {
        anyhow::bail!(
            "invalid --checkpoint-every {}: must be 0.05 to 86400 seconds",
            args.checkpoint_every
        );
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
        drain_timeout: Duration::from_secs_f64(args.drain_timeout),
        batch_reports: true,
    })
}

pub async fn run(ctx: &Ctx, args: WorkerArgs) -> Result<ExitCode> {
    crate::init_tracing("info", args.log_format);
    if let Some(file) = &args.config {
        tracing::info!(file = %file.display(), "settings read from the config file");
    }
    let config = config_from(&args)?;
    let client = ctx.client()?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        crate::server::wait_for_signal().await;
        stop.cancel();
    });
    flotilla_worker::run(
        client,
        config,
        Arc::new(CommandHandler {
            checkpoint_every: Duration::from_secs_f64(args.checkpoint_every),
            ..CommandHandler::default()
        }),
        shutdown,
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}
