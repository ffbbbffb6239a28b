//! `flotilla server`: one replica, until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use flotilla_server::{parse_peers, ServerConfig};
use tokio_util::sync::CancellationToken;

#[derive(Args)]
pub struct ServerArgs {
    /// Read settings from this TOML file: keys are the flags' long names (template:
    /// deploy/flotilla.toml); flags and FLOTILLA_SERVER_<FLAG> variables override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// This replica's id (must appear in --peers).
    #[arg(long, required_unless_present = "id_from_hostname")]
    id: Option<u64>,
    /// Take the id from this host's name: the number after its last `-`, plus one (a
    /// Kubernetes StatefulSet's pod `flotilla-0` is replica 1).
    #[arg(long, conflicts_with = "id")]
    id_from_hostname: bool,
    /// HOST:PORT to listen on for peers and clients.
    #[arg(long)]
    listen: String,
    /// Data directory (created on first start).
    #[arg(long)]
    data_dir: PathBuf,
    /// Initial members: 1=HOST:PORT,2=HOST:PORT,3=HOST:PORT.
    #[arg(long, required_unless_present = "join", conflicts_with = "join")]
    peers: Option<String>,
    /// Join an existing cluster (HOST:PORT of some of its replicas): start empty, never
    /// bootstrap, and wait to be added with `flotilla cluster add-replica ID ADDR`.
    #[arg(long, value_name = "ADDR,...")]
    join: Option<String>,
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
    /// Open client, worker and peer connections, at most (capped at half the open files
    /// limit, which the replica raises to its hard limit at start); connections past it are
    /// refused with an error naming the limit.
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// Bytes of request messages received but not yet whole, at most, on this replica (each
    /// connection may hold up to two of the largest requests of it); a request past it is
    /// refused with RESOURCE_EXHAUSTED, and a message that stops arriving for 10 s is dropped.
    #[arg(long, default_value_t = flotilla_server::default_max_request_bytes_in_flight())]
    max_request_bytes_in_flight: usize,
    /// Serve Prometheus /metrics, /healthz and /readyz over HTTP on this address (HOST:PORT)
    /// [default: off].
    #[arg(long)]
    http_listen: Option<String>,
    /// Tokens file (`flotilla token new` writes it): client and worker calls then need a
    /// token whose role allows them [default: off — every call is allowed].
    #[arg(long, value_name = "FILE")]
    tokens_file: Option<std::path::PathBuf>,
    /// Cluster secret file (`flotilla token peer-secret` writes one; every replica gets the
    /// same): peer (Raft) calls then need the secret [default: off — any caller is accepted].
    #[arg(long, value_name = "FILE")]
    peer_secret_file: Option<std::path::PathBuf>,
    /// This replica's TLS certificate (PEM; `flotilla cert issue --peer` makes one): every
    /// connection is then TLS, and peers authenticate each other by certificate. Needs
    /// --tls-key and --tls-client-ca; SIGHUP re-reads all three [default: off — plain TCP].
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<std::path::PathBuf>,
    /// The TLS certificate's private key (PEM).
    #[arg(long, value_name = "FILE")]
    tls_key: Option<std::path::PathBuf>,
    /// The cluster CA certificate (PEM): it signed every replica's certificate and any client
    /// certificate this replica accepts.
    #[arg(long, value_name = "FILE")]
    tls_client_ca: Option<std::path::PathBuf>,
    /// Log lines as `text` or `json` (one object per line), on stderr.
    #[arg(long, value_enum, default_value_t = crate::LogFormat::Text)]
    log_format: crate::LogFormat,
}

/// The replica id of a host named `NAME-N`: N + 1.
fn id_from_hostname(host: &str) -> Result<u64> {
    let ordinal = host
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse::<u64>().ok())
        .with_context(|| {
            format!(
                "--id-from-hostname: host name {host:?} does not end in -NUMBER (e.g. flotilla-0)"
            )
        })?;
    ordinal
        .checked_add(1)
        .with_context(|| format!("--id-from-hostname: host name {host:?}: ordinal too large"))
}

pub fn config_from(args: &ServerArgs) -> Result<ServerConfig> {
    let peers = match &args.peers {
        Some(p) => parse_peers(p).map_err(|e| anyhow::anyhow!("invalid --peers: {e}"))?,
        None => Default::default(),
    };
    let id = match args.id {
        Some(id) => id,
        None => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .context("--id-from-hostname: cannot read this host's name")?;
            id_from_hostname(host.trim())?
        }
    };
    let mut config = ServerConfig::new(id, args.listen.clone(), args.data_dir.clone(), peers);
    if let Some(join) = &args.join {
        config.join = join
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect();
        if config.join.is_empty() {
            anyhow::bail!("invalid --join: no address given");
        }
    }
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
        // The key window defaults to the retention (the client library gives every task a
        // key, so keys kept longer than their tasks would be kept for every task).
        config.key_retention_ms = r;
    }
    if let Some(r) = args.key_retention_ms {
        config.key_retention_ms = r;
    }
    config.max_pending = args.max_pending;
    config.max_pending_per_queue = args.max_pending_per_queue;
    config.check_invariants = args.check_invariants;
    config.max_connections = args.max_connections;
    config.max_request_bytes_in_flight = args.max_request_bytes_in_flight;
    config.http_listen = args.http_listen.clone();
    config.tokens_file = args.tokens_file.clone();
    config.peer_secret_file = args.peer_secret_file.clone();
    config.tls_cert = args.tls_cert.clone();
    config.tls_key = args.tls_key.clone();
    config.tls_client_ca = args.tls_client_ca.clone();
    config
        .validate()
        .map_err(|p| anyhow::anyhow!("invalid configuration: {}", p.join("; ")))?;
    Ok(config)
}

pub async fn run(args: ServerArgs) -> Result<ExitCode> {
    crate::init_tracing("info,openraft=error", args.log_format);
    if let Some(file) = &args.config {
        tracing::info!(file = %file.display(), "settings read from the config file");
    }
    let config = config_from(&args)?;
    let shutdown = CancellationToken::new();
    let node = flotilla_server::start(config, shutdown.clone()).await?;
    let handover = node.handover();
    tokio::spawn(async move {
        wait_for_signal().await;
        // A leader hands leadership over first, so the cluster does not wait out an election.
        handover.run(Duration::from_secs(5)).await;
        shutdown.cancel();
    });
    match node.stopped().await {
        // Removed from the membership: say so and exit 0, so that a supervisor that restarts
        // failed replicas leaves it stopped.
        Err(flotilla_server::ServerError::Removed(why)) => {
            eprintln!("{why}");
            Ok(ExitCode::SUCCESS)
        }
        other => {
            other?;
            Ok(ExitCode::SUCCESS)
        }
    }
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        server: ServerArgs,
    }

    #[test]
    fn a_statefulset_pod_name_gives_the_replica_id() {
        assert_eq!(id_from_hostname("flotilla-0").unwrap(), 1);
        assert_eq!(id_from_hostname("my-flotilla-12").unwrap(), 13);
        for bad in [
            "flotilla",
            "flotilla-",
            "flotilla-x",
            "",
            "f-18446744073709551615",
        ] {
            let err = id_from_hostname(bad).unwrap_err().to_string();
            assert!(
                err.starts_with("--id-from-hostname: host name"),
                "{bad:?}: {err}"
            );
        }
        // Either --id or --id-from-hostname, not both, not neither.
        let base = [
            "x",
            "--listen",
            "127.0.0.1:1",
            "--data-dir",
            "d",
            "--peers",
            "1=127.0.0.1:1",
        ];
        assert!(Cli::try_parse_from(base).is_err());
        let both = [&base[..], &["--id", "1", "--id-from-hostname"]].concat();
        assert!(Cli::try_parse_from(both).is_err());
        let from_host = [&base[..], &["--id-from-hostname"]].concat();
        assert!(Cli::try_parse_from(from_host).is_ok());
    }

    fn config(extra: &[&str]) -> ServerConfig {
        let mut argv = vec![
            "x",
            "--id",
            "1",
            "--listen",
            "127.0.0.1:7400",
            "--data-dir",
            "/tmp/d",
        ];
        argv.extend_from_slice(&["--peers", "1=127.0.0.1:7400"]);
        argv.extend_from_slice(extra);
        config_from(&Cli::parse_from(argv).server).unwrap()
    }

    #[test]
    fn the_key_window_defaults_to_the_retention() {
        let c = config(&[]);
        assert_eq!(c.key_retention_ms, c.retention_ms);
        let c = config(&["--retention-ms", "60000"]);
        assert_eq!((c.retention_ms, c.key_retention_ms), (60_000, 60_000));
        let c = config(&["--retention-ms", "60000", "--key-retention-ms", "3600000"]);
        assert_eq!(c.key_retention_ms, 3_600_000);
        let args = [
            "x",
            "--id",
            "1",
            "--listen",
            "127.0.0.1:7400",
            "--data-dir",
            "/d",
        ];
        let mut argv = args.to_vec();
        argv.extend_from_slice(&["--peers", "1=127.0.0.1:7400", "--retention-ms", "60000"]);
        argv.extend_from_slice(&["--key-retention-ms", "1000"]);
        let err = config_from(&Cli::parse_from(argv).server).unwrap_err();
        assert!(err.to_string().contains("key_retention_ms"), "{err}");
    }
}
