//! Starting and stopping a replica: open the data dir, start openraft, serve gRPC, bootstrap
//! the cluster once, run the leader's clock ticks, and shut down on a cancellation token.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use flotilla_core::Command;
use flotilla_core::PlanConfig;
use flotilla_proto::pb::flotilla_server::FlotillaServer;
use flotilla_proto::pb::workers_server::WorkersServer;
use flotilla_proto::raftpb::raft_server::RaftServer;
use flotilla_store::SharedState;
use openraft::{Config, ServerState, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::api::{now_ms, Api};
use crate::config::ServerConfig;
use crate::dispatch::{DispatchConfig, Dispatcher};
use crate::network::{Network, H2_CONNECTION_WINDOW, H2_STREAM_WINDOW, MAX_RAFT_MESSAGE_BYTES};
use crate::proposer::{Proposer, ProposerLimits};
use crate::raft_service::RaftService;
use crate::worker_service::WorkerService;
use crate::{Raft, ServerError};

/// How often the leader checks whether a waiting task's `not_before` has passed.
const TICK_INTERVAL: Duration = Duration::from_millis(100);

/// A started replica.
pub struct RunningNode {
    pub raft: Raft,
    pub state: SharedState,
    /// The address actually bound (useful with port 0).
    pub local_addr: std::net::SocketAddr,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    shutdown: CancellationToken,
}

impl RunningNode {
    /// Resolves once `shutdown` is cancelled and the replica has stopped.
    pub async fn stopped(self) -> Result<(), ServerError> {
        self.shutdown.cancelled().await;
        let served = self.server.await;
        if let Err(e) = self.raft.shutdown().await {
            warn!(error = %e, "raft shutdown");
        }
        match served {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ServerError::Raft(format!("server: {e}"))),
            Err(e) => Err(ServerError::Raft(format!("server task: {e}"))),
        }
    }
}

/// Starts a replica; it runs until `shutdown` is cancelled.
pub async fn start(
    config: ServerConfig,
    shutdown: CancellationToken,
) -> Result<RunningNode, ServerError> {
    config
        .validate()
        .map_err(|problems| ServerError::Config(problems.join("; ")))?;

    let dir = config.data_dir.clone();
    let (cluster, id) = (config.cluster_name.clone(), config.node_id);
    let opened = tokio::task::spawn_blocking(move || flotilla_store::open(&dir, &cluster, id))
        .await
        .map_err(|e| ServerError::Raft(e.to_string()))??;
    let pristine = opened
        .log_store
        .is_pristine()
        .map_err(|e| ServerError::Raft(e.to_string()))?;
    let state = opened.state_machine.shared();
    opened
        .state_machine
        .set_check_invariants(config.check_invariants);

    let raft_config = Config {
        cluster_name: config.cluster_name.clone(),
        heartbeat_interval: config.heartbeat_interval_ms,
        election_timeout_min: config.election_timeout_min_ms,
        election_timeout_max: config.election_timeout_max_ms,
        max_payload_entries: 64,
        // Replicas snapshot at different indexes (up to +3/8 of the period, by id), so that
        // a cluster never spends its CPU and disk on three snapshots of the same state at once.
        snapshot_policy: SnapshotPolicy::LogsSinceLast(
            config.snapshot_every_entries
                + config.snapshot_every_entries * (config.node_id % 4) / 8,
        ),
        // A snapshot travels to a follower in chunks of at most this many bytes.
        snapshot_max_chunk_size: 1 << 20,
        // Entries kept behind a snapshot for followers that lag a little (fewer when snapshots
        // are frequent, so the log does not outlive several snapshots).
        max_in_snapshot_log_to_keep: config.snapshot_every_entries.min(1000),
        install_snapshot_timeout: 5_000,
        ..Default::default()
    }
    .validate()
    .map_err(|e| ServerError::Config(e.to_string()))?;
    let network = Network {
        cluster_name: config.cluster_name.clone(),
    };
    let raft = Raft::new(
        config.node_id,
        Arc::new(raft_config),
        network,
        opened.log_store,
        opened.state_machine,
    )
    .await
    .map_err(|e| ServerError::Raft(e.to_string()))?;

    let listener = TcpListener::bind(&config.listen_addr)
        .await
        .map_err(|source| ServerError::Listen {
            addr: config.listen_addr.clone(),
            source,
        })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: config.listen_addr.clone(),
            source,
        })?;

    // Bootstrap exactly once: only a replica that has never voted nor logged anything
    // proposes the initial membership. Every initial member may do so; they propose the same
    // membership, and a replica that already heard from a leader is no longer pristine.
    if pristine {
        let members: BTreeMap<u64, flotilla_store::Node> = config
            .peers
            .iter()
            .map(|(id, addr)| (*id, flotilla_store::Node::new(addr.clone())))
            .collect();
        match raft.initialize(members).await {
            Ok(()) => info!(node_id = config.node_id, "cluster bootstrapped"),
            Err(e) => info!(error = %e, "bootstrap skipped"),
        }
    }

    let proposer = Proposer::start(
        raft.clone(),
        ProposerLimits {
            max_commands_per_entry: config.max_commands_per_entry,
            max_entry_bytes: config.max_entry_bytes,
            max_inflight_entries: config.max_inflight_entries,
            queue_limit: config.proposal_queue_limit,
            linger: std::time::Duration::from_millis(config.group_commit_linger_ms),
        },
    );
    let planted = crate::planted::PlantedBug::from_env();
    let dispatcher = Arc::new(Dispatcher::new(
        raft.clone(),
        state.clone(),
        proposer.clone(),
        DispatchConfig {
            lease_ttl: Duration::from_millis(config.worker_lease_ttl_ms),
            plan: PlanConfig {
                placement: config.placement_strategy().unwrap_or_default(),
                ..PlanConfig::default()
            },
            interval: Duration::from_millis(50),
            stream_limit: config.worker_stream_limit,
        },
        planted,
    ));
    let worker_service = WorkerService {
        dispatcher: dispatcher.clone(),
        proposer: proposer.clone(),
        state: state.clone(),
        planted,
    };
    let api = Api {
        node_id: config.node_id,
        cluster_name: config.cluster_name.clone(),
        raft: raft.clone(),
        state: state.clone(),
        proposer: proposer.clone(),
        wait_max: Duration::from_millis(config.wait_max_ms),
        planted,
        dispatcher: dispatcher.clone(),
        shutdown: shutdown.clone(),
        admission: config.admission(),
        retention_ms: config.retention_ms,
        key_retention_ms: config.key_retention_ms,
    };
    let raft_service = RaftService {
        raft: raft.clone(),
        cluster_name: config.cluster_name.clone(),
    };
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .add_service(
            FlotillaServer::new(api)
                .max_decoding_message_size(config.max_request_bytes)
                .max_encoding_message_size(config.max_request_bytes),
        )
        .add_service(
            WorkersServer::new(worker_service)
                .max_decoding_message_size(config.max_request_bytes)
                .max_encoding_message_size(config.max_request_bytes),
        )
        .add_service(
            RaftServer::new(raft_service)
                .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES),
        );
    let token = shutdown.clone();
    // Nagle's algorithm would hold small replies back for tens of milliseconds.
    let incoming = tonic::transport::server::TcpIncoming::from_listener(listener, true, None)
        .map_err(|e| ServerError::Raft(format!("listener: {e}")))?;
    let server = tokio::spawn(
        router.serve_with_incoming_shutdown(incoming, async move { token.cancelled().await }),
    );

    {
        let token = shutdown.clone();
        tokio::spawn(async move { dispatcher.run(token).await });
    }
    tokio::spawn(tick_loop(
        raft.clone(),
        state.clone(),
        proposer,
        Retention {
            retention_ms: config.retention_ms,
            key_retention_ms: config.key_retention_ms,
            max_removals: config.sweep_max_removals,
        },
        shutdown.clone(),
    ));
    info!(node_id = config.node_id, addr = %local_addr, "replica serving");
    Ok(RunningNode {
        raft,
        state,
        local_addr,
        server,
        shutdown,
    })
}

/// The retention settings the leader's sweeps carry.
#[derive(Debug, Clone, Copy)]
struct Retention {
    retention_ms: u64,
    key_retention_ms: u64,
    max_removals: u32,
}

/// On the leader, proposes a [`Command::Tick`] when a waiting task's time has come, so the
/// state machine learns the time only through the log, and a [`Command::Sweep`] when finished
/// tasks or remembered keys are due for removal (so every replica removes the same tasks at
/// the same index, by the replicated clock).
async fn tick_loop(
    raft: Raft,
    state: SharedState,
    proposer: Proposer,
    retention: Retention,
    shutdown: CancellationToken,
) {
    let mut interval = tokio::time::interval(TICK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        if raft.metrics().borrow().state != ServerState::Leader {
            continue;
        }
        let now = now_ms();
        let (due, sweep_due) = {
            let s = &state.read().state;
            (
                s.next_wakeup_ms().is_some_and(|t| t <= now),
                s.next_sweep_ms(retention.retention_ms, retention.key_retention_ms)
                    .is_some_and(|t| t <= now),
            )
        };
        if due {
            if let Err(e) = proposer.propose(Command::Tick { now_ms: now }).await {
                warn!(error = %e, "tick not committed");
            }
        }
        if sweep_due {
            let sweep = Command::Sweep {
                now_ms: now,
                retention_ms: retention.retention_ms,
                key_retention_ms: retention.key_retention_ms,
                max_removals: retention.max_removals,
            };
            match proposer.propose(sweep).await {
                Ok(flotilla_core::Response::Swept {
                    removed,
                    tombstoned,
                    forgotten,
                }) => debug!(removed, tombstoned, forgotten, "retention sweep"),
                Ok(other) => warn!(response = ?other, "retention sweep refused"),
                Err(e) => warn!(error = %e, "retention sweep not committed"),
            }
        }
    }
}
