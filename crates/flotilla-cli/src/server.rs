//! `flotilla server`: one replica, until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use flotilla_server::{parse_peers, ServerConfig};
use tokio_util::sync::CancellationToken;

#[derive(Args)]
pub struct ServerArgs {
    /// This replica's id (must appear in --peers).
    #[arg(long)]
    id: u64,
    /// HOST:PORT to listen on for peers and clients.
    #[arg(long)]
    listen: String,
    /// Data directory (created on first start).
    #[arg(long)]
    data_dir: PathBuf,
    /// Initial members: 1=HOST:PORT,2=HOST:PORT,3=HOST:PORT.
    #[arg(long)]
    peers: String,
    /// Cluster name; data dirs and peers of another cluster are refused.
    #[arg(long, default_value = "flotilla")]
    cluster_name: String,
    /// Leader heartbeat period in ms.
    #[arg(long)]
    heartbeat_ms: Option<u64>,
    /// Minimum election timeout in ms (the maximum is twice this).
    #[arg(long)]
    election_timeout_ms: Option<u64>,
    /// A worker not heard from for this long is expired and its tasks reassigned (ms).
    #[arg(long)]
    worker_ttl_ms: Option<u64>,
    /// Placement strategy for tasks on workers: binpack or spread.
    #[arg(long)]
    placement: Option<String>,
    /// Group commit: Raft entries proposed but not yet applied, at most.
    #[arg(long)]
    max_inflight_entries: Option<usize>,
    /// Group commit: how long (ms) the next Raft entry may wait for the commands expected
    /// back from the callers of the entry just committed; 0 proposes at once.
    #[arg(long)]
    group_commit_linger_ms: Option<u64>,
    /// Assignments queued on one worker's stream, at most.
    #[arg(long)]
    worker_stream_limit: Option<usize>,
    /// Raft log entries applied since the last snapshot that trigger a new one. A restart
    /// re-applies at most about this many entries after loading the snapshot.
    #[arg(long)]
    snapshot_every_entries: Option<u64>,
    /// Finished tasks are removed this many ms after they finished [default: 7 days]; a
    /// queue may override it (`flotilla queue retention`).
    #[arg(long)]
    retention_ms: Option<u64>,
    /// Idempotency keys are remembered this many ms after their task finished; at least
    /// --retention-ms [default: --retention-ms].
    #[arg(long)]
    key_retention_ms: Option<u64>,
    /// Waiting plus pending tasks in the cluster, at most; submits past it get
    /// RESOURCE_EXHAUSTED [default: no cap].
    #[arg(long)]
    max_pending: Option<u64>,
    /// Waiting plus pending tasks per queue, at most [default: no cap].
    #[arg(long)]
    max_pending_per_queue: Option<u64>,
    /// Check the state machine's invariants after every applied entry (slow: for tests and
    /// fault runs).
    #[arg(long, hide = true)]
    check_invariants: bool,
}

pub fn config_from(args: &ServerArgs) -> Result<ServerConfig> {
    let peers = parse_peers(&args.peers).map_err(|e| anyhow::anyhow!("invalid --peers: {e}"))?;
    let mut config = ServerConfig::new(args.id, args.listen.clone(), args.data_dir.clone(), peers);
    config.cluster_name = args.cluster_name.clone();
    if let Some(h) = args.heartbeat_ms {
        config.heartbeat_interval_ms = h;
    }
    if let Some(e) = args.election_timeout_ms {
        config.election_timeout_min_ms = e;
        config.election_timeout_max_ms = e * 2;
    }
    if let Some(t) = args.worker_ttl_ms {
        config.worker_lease_ttl_ms = t;
    }
    if let Some(p) = &args.placement {
        config.placement = p.clone();
    }
    if let Some(n) = args.max_inflight_entries {
        config.max_inflight_entries = n;
    }
    if let Some(n) = args.group_commit_linger_ms {
        config.group_commit_linger_ms = n;
    }
    if let Some(n) = args.worker_stream_limit {
        config.worker_stream_limit = n;
    }
    if let Some(n) = args.snapshot_every_entries {
        config.snapshot_every_entries = n;
    }
    if let Some(r) = args.retention_ms {
        config.retention_ms = r;
        config.key_retention_ms = config.key_retention_ms.max(r);
    }
    if let Some(r) = args.key_retention_ms {
        config.key_retention_ms = r;
    }
    config.max_pending = args.max_pending;
    config.max_pending_per_queue = args.max_pending_per_queue;
    config.check_invariants = args.check_invariants;
    config
        .validate()
        .map_err(|p| anyhow::anyhow!("invalid configuration: {}", p.join("; ")))?;
    Ok(config)
}

pub async fn run(args: ServerArgs) -> Result<ExitCode> {
    crate::init_tracing("info,openraft=error");
    let config = config_from(&args)?;
    let shutdown = CancellationToken::new();
    let node = flotilla_server::start(config, shutdown.clone()).await?;
    tokio::spawn(async move {
        wait_for_signal().await;
        shutdown.cancel();
    });
    node.stopped().await?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
