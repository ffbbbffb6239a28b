//! `flotilla dev`: a 3-replica cluster on loopback in this process, data under
//! `./flotilla-data`. Stops cleanly on Ctrl-C and restarts on the same data.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use flotilla_server::ServerConfig;
use tokio_util::sync::CancellationToken;

#[derive(Args)]
pub struct DevArgs {
    /// Where the replicas keep their data (one subdirectory each).
    #[arg(long, default_value = "./flotilla-data")]
    data_dir: PathBuf,
    /// First port; replicas listen on this port and the next two.
    #[arg(long, default_value_t = 7401)]
    base_port: u16,
    /// First HTTP port (the dashboard at /, /metrics, /healthz, /readyz); replicas serve it and
    /// the next two.
    /// 0: no HTTP listeners.
    #[arg(long, default_value_t = 9464)]
    http_base_port: u16,
}

pub const DEV_CLUSTER_NAME: &str = "flotilla-dev";

pub async fn run(args: DevArgs) -> Result<ExitCode> {
    crate::init_tracing("warn,openraft=off", crate::LogFormat::Text);
    let peers: BTreeMap<u64, String> = (1..=3u64)
        .map(|id| (id, format!("127.0.0.1:{}", args.base_port + id as u16 - 1)))
        .collect();
    let shutdown = CancellationToken::new();
    let mut nodes = Vec::new();
    for (id, addr) in &peers {
        let mut config = ServerConfig::new(
            *id,
            addr.clone(),
            args.data_dir.join(format!("node-{id}")),
            peers.clone(),
        );
        config.cluster_name = DEV_CLUSTER_NAME.into();
        if args.http_base_port > 0 {
            config.http_listen = Some(format!(
                "127.0.0.1:{}",
                args.http_base_port + *id as u16 - 1
            ));
        }
        let node = flotilla_server::start(config, shutdown.child_token())
            .await
            .with_context(|| format!("replica {id}"))?;
        nodes.push(node);
    }
    let addrs: Vec<&str> = peers.values().map(String::as_str).collect();
    outln!("flotilla dev cluster: 3 replicas on {}", addrs.join(", "));
    outln!("data under {}", args.data_dir.display());
    outln!(
        "no auth and no TLS: for this machine only (loopback); see docs/operations.md for tokens and TLS"
    );
    if args.http_base_port > 0 {
        outln!(
            "dashboard: http://127.0.0.1:{}/ (and /metrics, /healthz, /readyz; replicas 2 and 3 on the next ports)",
            args.http_base_port
        );
    }
    // Wait for a leader so that the first `flotilla submit` does not have to.
    let mut metrics = nodes[0].raft.metrics();
    let leader = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(l) = metrics.borrow().current_leader {
                return l;
            }
            if metrics.changed().await.is_err() {
                return 0;
            }
        }
    })
    .await
    .unwrap_or(0);
    if leader > 0 {
        outln!("leader: replica {leader}");
    }
    // Two workers that run command tasks.
    let client = flotilla_client::Client::new(peers.values().cloned())?;
    let mut workers = Vec::new();
    for n in 1..=2 {
        let config = flotilla_worker::WorkerConfig {
            id: format!("dev-worker-{n}"),
            capacity: flotilla_core::Capacity {
                slots: 4,
                cpu_millis: 4000,
                mem_mb: 8192,
            },
            labels: Default::default(),
            queues: vec![],
            heartbeat_interval: Duration::from_secs(1),
            // Ctrl-C should not wait long for a dev task.
            drain_timeout: Duration::from_secs(5),
            batch_reports: true,
        };
        workers.push(tokio::spawn(flotilla_worker::run(
            client.clone(),
            config,
            std::sync::Arc::new(flotilla_worker::CommandHandler::default()),
            shutdown.child_token(),
        )));
    }
    outln!("workers: dev-worker-1, dev-worker-2 (4 slots each)");
    outln!("try: flotilla submit -- echo hello; flotilla wait 1    (Ctrl-C stops the cluster)");

    crate::server::wait_for_signal().await;
    outln!("stopping...");
    shutdown.cancel();
    for w in workers {
        let _ = w.await;
    }
    for node in nodes {
        node.stopped().await?;
    }
    outln!("stopped; `flotilla dev` restarts on the same data");
    Ok(ExitCode::SUCCESS)
}
