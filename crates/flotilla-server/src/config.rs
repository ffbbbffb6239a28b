//! Replica configuration: one struct, explicit, validated as a whole.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Configuration of one replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// This replica's id; must appear in `peers`.
    pub node_id: u64,
    /// Address the replica listens on for peers and clients (HOST:PORT).
    pub listen_addr: String,
    /// Directory of this replica's RocksDB; created on first start.
    pub data_dir: PathBuf,
    /// Initial members: id -> address that the others reach it at. Empty with `join`.
    pub peers: BTreeMap<u64, String>,
    /// Addresses of replicas of an existing cluster: this replica does not bootstrap and waits
    /// to be added (`flotilla cluster add-replica`). Empty: bootstrap with `peers`.
    #[serde(default)]
    pub join: Vec<String>,
    /// Name of the cluster; a data dir or a peer of another cluster is refused.
    pub cluster_name: String,
    /// Leader heartbeat period.
    pub heartbeat_interval_ms: u64,
    /// A follower that hears no leader for a random time in this range starts an election.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Group commit: most client commands folded into one Raft entry.
    pub max_commands_per_entry: usize,
    /// Group commit: an entry stops growing past this many payload bytes.
    pub max_entry_bytes: usize,
    /// Raft entries proposed but not yet applied, at most.
    pub max_inflight_entries: usize,
    /// Client commands queued for the proposer, at most; beyond it callers get UNAVAILABLE.
    pub proposal_queue_limit: usize,
    /// Group commit: how long the next entry may wait for the commands expected back from the
    /// callers of the entry just answered (0: propose at once).
    pub group_commit_linger_ms: u64,
    /// Longest server-side wait of a WaitTask call.
    pub wait_max_ms: u64,
    /// Largest client API message accepted.
    pub max_request_bytes: usize,
    /// Bytes of request messages received but not yet whole, at most, on this replica (see
    /// `inflight`); each connection may hold up to twice `max_request_bytes` of it.
    #[serde(default = "default_max_request_bytes_in_flight")]
    pub max_request_bytes_in_flight: usize,
    /// Raft log entries since the last snapshot that trigger a new one.
    pub snapshot_every_entries: u64,
    /// A worker not heard from for this long is expired and its tasks reassigned.
    pub worker_lease_ttl_ms: u64,
    /// Placement strategy: "binpack" or "spread".
    pub placement: String,
    /// Assignments queued on one worker's stream, at most; one that does not fit is delivered
    /// again once the worker's heartbeats show it does not run it.
    pub worker_stream_limit: usize,
    /// Finished tasks are removed this long after they finished (a queue may override it).
    pub retention_ms: u64,
    /// Idempotency keys are remembered this long after their task finished; at least
    /// `retention_ms`.
    pub key_retention_ms: u64,
    /// Waiting plus pending tasks in the cluster, at most; past it submits are refused with
    /// RESOURCE_EXHAUSTED. None: no cap.
    pub max_pending: Option<u64>,
    /// Waiting plus pending tasks per queue, at most. None: no cap.
    pub max_pending_per_queue: Option<u64>,
    /// Tasks removed (or keys forgotten) by one retention sweep, at most.
    pub sweep_max_removals: u32,
    /// Check the state machine's invariants after every applied entry (O(tasks) each: for
    /// tests and fault runs).
    pub check_invariants: bool,
    /// Address of the operator's HTTP listener (`/metrics`, `/healthz`, `/readyz`); none when
    /// unset.
    #[serde(default)]
    pub http_listen: Option<String>,
    /// Open client, worker and peer connections, at most (kept under half the open files
    /// limit); one past it is refused with an error naming the limit.
    pub max_connections: usize,
    /// The tokens file (see `auth`): with one, every client and worker call needs a token
    /// whose role allows it; without one, calls are not checked.
    #[serde(default)]
    pub tokens_file: Option<PathBuf>,
    /// The cluster secret file (see `peer_auth`): with one, peer (Raft) calls are accepted
    /// only with the same secret, and this replica's own carry it.
    #[serde(default)]
    pub peer_secret_file: Option<PathBuf>,
    /// TLS (see `flotilla_tls`): this replica's certificate (PEM), valid for `flotilla-peer`
    /// and the names clients dial. With `tls_key` and `tls_client_ca`, every connection to and
    /// from this replica is TLS and peers authenticate each other by certificate.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// The cluster CA (PEM): signed every replica's certificate and any client certificate
    /// accepted.
    #[serde(default)]
    pub tls_client_ca: Option<PathBuf>,
}

/// 256 MiB: four of the largest requests at once.
pub fn default_max_request_bytes_in_flight() -> usize {
    256 * 1024 * 1024
}

/// Seven days, the default retention of finished tasks.
pub const DEFAULT_RETENTION_MS: u64 = 7 * 24 * 3600 * 1000;

impl ServerConfig {
    /// A configuration with defaults for everything but identity and addresses.
    pub fn new(
        node_id: u64,
        listen_addr: String,
        data_dir: PathBuf,
        peers: BTreeMap<u64, String>,
    ) -> Self {
        ServerConfig {
            node_id,
            listen_addr,
            data_dir,
            peers,
            join: Vec::new(),
            cluster_name: "flotilla".into(),
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 600,
            election_timeout_max_ms: 1200,
            max_commands_per_entry: 1024,
            max_entry_bytes: 2 * 1024 * 1024,
            max_inflight_entries: 1,
            proposal_queue_limit: 16 * 1024,
            group_commit_linger_ms: 1,
            wait_max_ms: 60_000,
            max_request_bytes: 64 * 1024 * 1024,
            max_request_bytes_in_flight: default_max_request_bytes_in_flight(),
            snapshot_every_entries: 20_000,
            worker_lease_ttl_ms: 10_000,
            placement: "binpack".into(),
            worker_stream_limit: 1024,
            retention_ms: DEFAULT_RETENTION_MS,
            key_retention_ms: DEFAULT_RETENTION_MS,
            max_pending: None,
            max_pending_per_queue: None,
            sweep_max_removals: 10_000,
            check_invariants: false,
            max_connections: 4096,
            http_listen: None,
            tokens_file: None,
            peer_secret_file: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
        }
    }

    /// The admission limits the leader stamps into submits.
    pub fn admission(&self) -> flotilla_core::AdmissionLimits {
        flotilla_core::AdmissionLimits {
            max_pending: self.max_pending,
            max_pending_per_queue: self.max_pending_per_queue,
        }
    }

    /// Every problem with this configuration, or Ok.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.node_id == 0 {
            problems.push("node id must be at least 1".to_string());
        }
        let tls = [&self.tls_cert, &self.tls_key, &self.tls_client_ca];
        if tls.iter().any(|f| f.is_some()) && !tls.iter().all(|f| f.is_some()) {
            problems.push(
                "tls_cert, tls_key and tls_client_ca go together: give all three or none".into(),
            );
        }
        if self.group_commit_linger_ms > 1000 {
            problems.push("group_commit_linger_ms must be at most 1000".to_string());
        }
        if let Some(a) = &self.http_listen {
            if a.parse::<SocketAddr>().is_err() {
                problems.push(format!(
                    "invalid http_listen {a:?}: expected HOST:PORT, e.g. 127.0.0.1:9464"
                ));
            }
        }
        if self.listen_addr.parse::<SocketAddr>().is_err() {
            problems.push(format!(
                "listen address {:?} is not HOST:PORT with a numeric host",
                self.listen_addr
            ));
        }
        if !self.join.is_empty() {
            if !self.peers.is_empty() {
                problems.push(
                    "give either peers (a new cluster) or join (an existing one), not both".into(),
                );
            }
            for addr in &self.join {
                if addr
                    .rsplit_once(':')
                    .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
                {
                    problems.push(format!("join address {addr:?} is not HOST:PORT"));
                }
            }
        } else if self.peers.is_empty() {
            problems.push("peers must list at least this replica".into());
        } else if !self.peers.contains_key(&self.node_id) {
            problems.push(format!(
                "node id {} is missing from peers ({})",
                self.node_id,
                self.peers
                    .keys()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
        for (id, addr) in &self.peers {
            if addr
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                problems.push(format!("peer {id} address {addr:?} is not HOST:PORT"));
            }
        }
        if self.worker_lease_ttl_ms < 100 {
            problems.push("worker_lease_ttl_ms must be at least 100".into());
        }
        if self.placement_strategy().is_none() {
            problems.push(format!(
                "placement {:?} is not \"binpack\" or \"spread\"",
                self.placement
            ));
        }
        if self.cluster_name.is_empty() {
            problems.push("cluster name must not be empty".into());
        }
        if self.heartbeat_interval_ms == 0
            || self.election_timeout_min_ms <= self.heartbeat_interval_ms
            || self.election_timeout_max_ms <= self.election_timeout_min_ms
        {
            problems.push(
                "timing must satisfy 0 < heartbeat_interval_ms < election_timeout_min_ms < election_timeout_max_ms"
                    .into(),
            );
        }
        for (name, v) in [
            ("max_commands_per_entry", self.max_commands_per_entry),
            ("max_entry_bytes", self.max_entry_bytes),
            ("max_inflight_entries", self.max_inflight_entries),
            ("proposal_queue_limit", self.proposal_queue_limit),
            ("max_request_bytes", self.max_request_bytes),
            ("worker_stream_limit", self.worker_stream_limit),
            (
                "snapshot_every_entries",
                self.snapshot_every_entries as usize,
            ),
        ] {
            if v == 0 {
                problems.push(format!("{name} must be at least 1"));
            }
        }
        if self.retention_ms == 0 {
            problems.push("retention_ms must be at least 1".into());
        }
        if self.max_request_bytes_in_flight < self.max_request_bytes {
            problems.push(format!(
                "max_request_bytes_in_flight ({}) must be at least max_request_bytes ({})",
                self.max_request_bytes_in_flight, self.max_request_bytes
            ));
        }
        if self.key_retention_ms < self.retention_ms {
            problems.push(format!(
                "key_retention_ms ({}) must not be shorter than retention_ms ({})",
                self.key_retention_ms, self.retention_ms
            ));
        }
        if self.max_pending == Some(0) {
            problems.push("max_pending must be at least 1".into());
        }
        if self.max_pending_per_queue == Some(0) {
            problems.push("max_pending_per_queue must be at least 1".into());
        }
        if self.sweep_max_removals == 0 {
            problems.push("sweep_max_removals must be at least 1".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// The TLS files, when TLS is on (all three given).
    pub fn tls_files(&self) -> Option<flotilla_tls::ReplicaFiles> {
        Some(flotilla_tls::ReplicaFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone()?,
        })
    }

    pub fn placement_strategy(&self) -> Option<flotilla_core::Placement> {
        match self.placement.as_str() {
            "binpack" => Some(flotilla_core::Placement::BinPack),
            "spread" => Some(flotilla_core::Placement::Spread),
            _ => None,
        }
    }
}

/// Parses `1=HOST:PORT,2=HOST:PORT`.
pub fn parse_peers(s: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut peers = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("peer {part:?} is not ID=HOST:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("peer id {id:?} is not a number"))?;
        if peers.insert(id, addr.trim().to_string()).is_some() {
            return Err(format!("peer id {id} listed twice"));
        }
    }
    if peers.is_empty() {
        return Err("no peers given".into());
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_reports_every_problem() {
        let peers = parse_peers("1=127.0.0.1:1,2=127.0.0.1:2").unwrap();
        let mut c = ServerConfig::new(3, "nonsense".into(), "/tmp/x".into(), peers);
        c.heartbeat_interval_ms = 0;
        c.group_commit_linger_ms = 5000;
        c.retention_ms = 1000;
        c.key_retention_ms = 999;
        c.max_pending = Some(0);
        c.tls_cert = Some("cert.pem".into());
        let problems = c.validate().unwrap_err();
        assert_eq!(problems.len(), 7, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("go together")));
        assert!(problems
            .iter()
            .any(|p| p.contains("key_retention_ms (999)")));
        assert!(problems
            .iter()
            .any(|p| p.contains("max_pending must be at least 1")));
        assert!(problems.iter().any(|p| p.contains("missing from peers")));
        assert!(problems.iter().any(|p| p.contains("listen address")));
        assert!(problems
            .iter()
            .any(|p| p.contains("group_commit_linger_ms")));
    }

    #[test]
    fn join_replaces_peers() {
        let mut c = ServerConfig::new(4, "127.0.0.1:1".into(), "/tmp/x".into(), BTreeMap::new());
        assert!(c.validate().unwrap_err()[0].contains("peers must list"));
        c.join = vec!["127.0.0.1:2".into()];
        assert_eq!(c.validate(), Ok(()));
        c.join.push("nonsense".into());
        assert!(c.validate().unwrap_err()[0].contains("join address \"nonsense\""));
        c.join.pop();
        c.peers = parse_peers("4=127.0.0.1:1").unwrap();
        assert!(c.validate().unwrap_err()[0].contains("not both"));
    }

    #[test]
    fn parse_peers_rejects_garbage() {
        assert!(parse_peers("1=a:1,1=b:2").unwrap_err().contains("twice"));
        assert!(parse_peers("x=a:1").unwrap_err().contains("not a number"));
        assert!(parse_peers("a:1").unwrap_err().contains("ID=HOST:PORT"));
        assert_eq!(parse_peers(" 2=h:5 , 1=h:4").unwrap().len(), 2);
    }
}
