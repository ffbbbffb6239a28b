//! Starting and stopping a replica: open the data dir, start openraft, serve gRPC, bootstrap
//! the cluster once, run the leader's engine (`dispatch`), and shut down on a cancellation token.

use std::sync::Arc;
use std::time::Duration;

use flotilla_core::leader::{EngineConfig, RetentionConfig};
use flotilla_core::PlanConfig;
use flotilla_proto::pb::flotilla_server::FlotillaServer;
use flotilla_proto::pb::workers_server::WorkersServer;
use flotilla_proto::raftpb::raft_server::RaftServer;
use flotilla_store::SharedState;
use openraft::{Config, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::Api;
use crate::config::ServerConfig;
use crate::damage::Damage;
use crate::dispatch::{DispatchConfig, Dispatcher};
use crate::fatal::Fatal;
use crate::listener;
use crate::membership::{Me, Membership};
use crate::network::{Network, H2_CONNECTION_WINDOW, H2_STREAM_WINDOW, MAX_RAFT_MESSAGE_BYTES};
use crate::proposer::{Proposer, ProposerLimits};
use crate::raft_service::RaftService;
use crate::worker_service::WorkerService;
use crate::{Raft, ServerError};

/// Most log entries a replica may hold unapplied and still call itself ready.
const READY_MAX_APPLY_LAG: u64 = 10_000;

/// How often the leader's engine looks at the `not_before` timers and the retention sweep.
const TIMERS_EVERY: Duration = Duration::from_millis(100);

/// How long a stopping replica lets calls in flight finish before it closes them. A graceful
/// drain alone can wait forever on a call that waits on this replica's Raft (which is shut
/// down only after the server): a removed replica was seen still running 30 s after it said
/// it stops serving.
const SERVE_DRAIN: Duration = Duration::from_secs(5);

/// A started replica.
pub struct RunningNode {
    pub raft: Raft,
    pub state: SharedState,
    /// The address actually bound (useful with port 0).
    pub local_addr: std::net::SocketAddr,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    shutdown: CancellationToken,
    /// Set (and `shutdown` cancelled) when this replica finds it was removed from the cluster.
    removed: Arc<std::sync::Mutex<Option<String>>>,
    fatal: Fatal,
    membership: Arc<Membership>,
}

impl RunningNode {
    /// Resolves once the replica has stopped: after `shutdown` was cancelled, or on a fatal
    /// error (returned, with its one-line reason).
    pub async fn stopped(mut self) -> Result<(), ServerError> {
        let served = tokio::select! {
            // A stop that was asked for comes first: once `shutdown` is cancelled the server
            // ends too, and when both are ready by the time this is polled, an unbiased select
            // took the server's end for a failure (a SIGTERM exited 1 in 1 run of ~10).
            biased;
            _ = self.shutdown.cancelled() => {
                match tokio::time::timeout(SERVE_DRAIN, &mut self.server).await {
                    Ok(served) => served,
                    Err(_) => {
                        warn!(
                            drain_ms = SERVE_DRAIN.as_millis() as u64,
                            "calls still open after the drain time: closing them"
                        );
                        self.server.abort();
                        Ok(Ok(()))
                    }
                }
            }
            served = &mut self.server => {
                if self.shutdown.is_cancelled() {
                    // Asked to stop while the server was already winding down.
                    return self.finish(served).await;
                }
                // The server ended on its own: the replica cannot be reached any more.
                let why = match &served {
                    Ok(Ok(())) => "the gRPC server stopped".to_string(),
                    Ok(Err(e)) => format!("the gRPC server failed: {e}"),
                    Err(e) => format!("the gRPC server task failed: {e}"),
                };
                self.fatal.fail(why);
                served
            }
        };
        self.finish(served).await
    }

    /// Shuts openraft down and says why the replica stopped.
    async fn finish(
        self,
        served: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
    ) -> Result<(), ServerError> {
        if let Err(e) = self.raft.shutdown().await {
            warn!(error = %e, "raft shutdown");
        }
        if let Some(why) = self
            .removed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            return Err(ServerError::Removed(why));
        }
        if let Some(reason) = self.fatal.reason() {
            return Err(ServerError::Fatal(reason));
        }
        match served {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ServerError::Raft(format!("server: {e}"))),
            Err(e) => Err(ServerError::Raft(format!("server task: {e}"))),
        }
    }

    /// What a graceful stop runs first: a leader hands leadership over (see
    /// [`Handover::run`]).
    pub fn handover(&self) -> Handover {
        Handover(self.membership.clone())
    }

    /// The fatal error the replica stopped on, if any.
    pub fn fatal_reason(&self) -> Option<String> {
        self.fatal.reason()
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
    let tokens = match &config.tokens_file {
        Some(path) => Some(crate::auth::TokensFile::load(path).map_err(ServerError::Config)?),
        None => None,
    };
    let peer_secret = match &config.peer_secret_file {
        Some(path) => Some(crate::peer_auth::PeerSecret::load(path).map_err(ServerError::Config)?),
        None => None,
    };
    let tls = match config.tls_files() {
        Some(files) => {
            Some(flotilla_tls::ReplicaTls::load(files).map_err(|e| ServerError::Config(e.0))?)
        }
        None => None,
    };
    let beyond_loopback = !crate::auth::is_loopback(&config.listen_addr);
    match &tls {
        Some(t) => {
            tracing::info!(
                cert = %t.files().cert.display(),
                "TLS on: peers authenticate each other by certificate (SIGHUP reloads the certificate, key and CA)"
            );
            let t = t.clone();
            tokio::spawn(crate::hangup::reload_on_hangup(
                "tls files",
                shutdown.clone(),
                move || {
                    t.reload()
                        .map(|()| "tls certificate, key and CA reloaded".to_string())
                        .map_err(|e| e.0)
                },
            ));
        }
        None if beyond_loopback => tracing::warn!(
            addr = %config.listen_addr,
            "listening beyond loopback without TLS: calls, tokens and task data cross the network in clear (give --tls-cert, --tls-key and --tls-client-ca)"
        ),
        None => {}
    }
    match &peer_secret {
        Some(_) => tracing::info!("peer calls need this cluster's secret"),
        None if tls.is_none() && beyond_loopback => tracing::warn!(
            addr = %config.listen_addr,
            "listening beyond loopback without a peer secret: anyone who reaches this port may send Raft messages (give --peer-secret-file)"
        ),
        None => {}
    }
    match &tokens {
        Some(t) => {
            tracing::info!(
                tokens = t.current().len(),
                "client and worker calls need a token (SIGHUP reloads the tokens file)"
            );
            tokio::spawn(t.clone().reload_on_hangup(shutdown.clone()));
        }
        None if beyond_loopback => tracing::warn!(
            addr = %config.listen_addr,
            "listening beyond loopback without auth: anyone who reaches this port may submit, cancel, read every task and act as a worker (give --tokens-file)"
        ),
        None => {}
    }

    let requests = crate::inflight::Budget::new(
        config.max_request_bytes_in_flight,
        config.max_request_bytes.saturating_mul(2),
    );
    let fatal = Fatal::new(shutdown.clone());
    let fd_limit = listener::raise_fd_limit();
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
    let store_probe = opened.probe.clone();
    let telemetry = Arc::new(crate::telemetry::Telemetry::new());
    let me = Me {
        node_id: config.node_id,
        cluster_name: config.cluster_name.clone(),
        incarnation: opened.incarnation.clone(),
        peer_secret: peer_secret.clone(),
        tls: tls.clone(),
    };
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
        // A replica whose log lost acknowledged entries stands for election only once it has
        // them again (see `damage`).
        enable_elect: opened.damaged.is_none(),
        ..Default::default()
    }
    .validate()
    .map_err(|e| ServerError::Config(e.to_string()))?;
    let damage = Damage::new(opened.damaged);
    let network = Network {
        cluster_name: config.cluster_name.clone(),
        node_id: config.node_id,
        incarnation: me.incarnation.clone(),
        peer_secret: peer_secret.clone(),
        tls: tls.clone(),
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

    // The operator's HTTP listener, bound before anything is served: a taken port fails the
    // start, naming the address.
    let http_listener = match &config.http_listen {
        Some(addr) => {
            Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServerError::Listen {
                        addr: addr.clone(),
                        source,
                    })?,
            )
        }
        None => None,
    };
    if let Some(l) = &http_listener {
        if let Ok(a) = l.local_addr() {
            info!(addr = %a, "serving the dashboard at /, /metrics, /healthz and /readyz");
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
        telemetry.entry_commands.clone(),
    );
    let planted = crate::planted::PlantedBug::from_env();
    let dispatcher = Arc::new(Dispatcher::new(
        raft.clone(),
        state.clone(),
        proposer.clone(),
        DispatchConfig {
            engine: EngineConfig {
                lease_ttl_ms: config.worker_lease_ttl_ms,
                timers_every_ms: TIMERS_EVERY.as_millis() as u64,
                retention: RetentionConfig {
                    retention_ms: config.retention_ms,
                    key_retention_ms: config.key_retention_ms,
                    max_removals: config.sweep_max_removals,
                },
                plan: PlanConfig {
                    placement: config.placement_strategy().unwrap_or_default(),
                    ..PlanConfig::default()
                },
                push_before_commit: planted
                    == Some(crate::planted::PlantedBug::DispatchBeforeCommit),
                calendar: Arc::new(crate::calendar::CronCalendar),
                admission: config.admission(),
            },
            interval: Duration::from_millis(50),
            stream_limit: config.worker_stream_limit,
        },
        telemetry.dispatch_latency.clone(),
    ));
    let worker_service = WorkerService {
        dispatcher: dispatcher.clone(),
        proposer: proposer.clone(),
        state: state.clone(),
        planted,
    };
    let membership = Arc::new(Membership::new(
        raft.clone(),
        me.clone(),
        proposer.clone(),
        Duration::from_millis(config.election_timeout_max_ms),
        Duration::from_millis(config.heartbeat_interval_ms),
    ));
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
        membership: membership.clone(),
        telemetry: telemetry.clone(),
    };
    let api_membership = membership;
    let contact = crate::leader_watch::Contact::default();
    let closed = crate::listener::Closed::default();
    let raft_service = RaftService {
        raft: raft.clone(),
        cluster_name: config.cluster_name.clone(),
        me: me.clone(),
        damage: damage.clone(),
        contact: contact.clone(),
        handing_to: api_membership.handing_to(),
    };
    if let Some(http_listener) = http_listener {
        let observed = Arc::new(crate::http::Observed {
            telemetry: telemetry.clone(),
            raft: raft.clone(),
            state: state.clone(),
            store: store_probe,
            fatal: fatal.clone(),
            contact: contact.clone(),
            dispatcher: dispatcher.clone(),
            requests: requests.clone(),
            node_id: config.node_id,
            cluster_name: config.cluster_name.clone(),
            tokens: tokens.clone(),
            api: api.clone(),
            bounds: crate::health::ReadyBounds {
                // Two leases: a follower that heard nothing for that long is cut off (an
                // election would have replaced a dead leader by then).
                contact: Duration::from_millis(2 * config.election_timeout_max_ms),
                max_apply_lag: READY_MAX_APPLY_LAG,
            },
        });
        tokio::spawn(crate::http::serve(
            http_listener,
            observed,
            shutdown.clone(),
        ));
    }
    tokio::spawn(crate::leader_watch::run(
        raft.clone(),
        me.clone(),
        contact,
        damage.clone(),
        closed.clone(),
        Duration::from_millis(config.heartbeat_interval_ms),
        // openraft 0.9's leader lease is the largest election timeout.
        Duration::from_millis(config.election_timeout_max_ms),
        // A leader silent for the shortest election timeout is one plain Raft would replace.
        Duration::from_millis(config.election_timeout_min_ms),
        shutdown.clone(),
    ));
    tokio::spawn(damage.watch(raft.clone(), shutdown.clone()));
    tokio::spawn(fatal.clone().watch_raft(raft.clone()));
    let router = tonic::transport::Server::builder()
        .layer(crate::rejections::CountRejections(telemetry.clone()))
        .layer(crate::auth::Authenticate {
            tokens,
            peers: peer_secret.map(Arc::new),
            mutual_tls: tls.is_some(),
        })
        .layer(crate::inflight::BoundRequests(requests))
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
    let incoming = listener::incoming(
        listener,
        listener::connection_bound(config.max_connections, fd_limit),
        tls,
        fatal.clone(),
        closed,
        shutdown.clone(),
    );
    let server = tokio::spawn(
        router.serve_with_incoming_shutdown(incoming, async move { token.cancelled().await }),
    );

    {
        let token = shutdown.clone();
        tokio::spawn(async move { dispatcher.run(token).await });
    }
    // Bootstrap exactly once, now that this replica answers its peers (see `membership`).
    if pristine {
        tokio::spawn(crate::membership::bootstrap(
            raft.clone(),
            me.clone(),
            config.peers.clone(),
            config.join.clone(),
        ));
    }
    let removed = Arc::new(std::sync::Mutex::new(None));
    tokio::spawn(crate::membership::watch(
        raft.clone(),
        me,
        proposer.clone(),
        removed.clone(),
        shutdown.clone(),
    ));
    info!(node_id = config.node_id, addr = %local_addr, "replica serving");
    Ok(RunningNode {
        raft,
        state,
        local_addr,
        server,
        shutdown,
        removed,
        fatal,
        membership: api_membership,
    })
}

/// Hands leadership over before a graceful stop.
#[derive(Clone)]
pub struct Handover(Arc<Membership>);

impl Handover {
    /// If this replica leads, moves leadership to the most caught-up other voter within
    /// `timeout`, so clients wait for a transfer instead of an election timeout; logs the
    /// outcome. Nothing happens on a follower.
    pub async fn run(&self, timeout: Duration) {
        match tokio::time::timeout(timeout, self.0.hand_over()).await {
            Ok(Ok(Some((to, took)))) => info!(
                to,
                took_ms = took.as_millis() as u64,
                "leadership handed over before stopping"
            ),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => warn!(error = %e, "could not hand leadership over before stopping"),
            Err(_) => warn!(?timeout, "leadership hand-over timed out; stopping anyway"),
        }
    }
}
