//! How a kit cluster's replicas and workers are started: [`ClusterOptions`].

use std::path::Path;
use std::time::Duration;

/// How replicas and workers are started. `Default` starts plain replicas with the server's own
/// defaults; every `None` leaves the server's default in place.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// `--cluster-name` of every replica (default `flotilla-local`).
    pub cluster_name: Option<String>,
    pub heartbeat_ms: Option<u64>,
    pub election_timeout_ms: Option<u64>,
    /// Worker lease TTL of the replicas.
    pub worker_ttl_ms: Option<u64>,
    /// Assignments queued per worker stream on the replicas.
    pub worker_stream_limit: Option<usize>,
    /// Log entries between snapshots on the replicas.
    pub snapshot_every_entries: Option<u64>,
    /// Extra environment variables of every replica and worker, e.g. `RUST_LOG` or
    /// `FLOTILLA_PLANTED_BUG`.
    pub env: Vec<(String, String)>,
    /// Check the state machine's invariants after every applied entry (tests and fault runs;
    /// O(tasks) per entry, so not for benchmarks).
    pub check_invariants: bool,
    /// Further `flotilla server` flags, e.g. `--retention-ms 1000`.
    pub extra_args: Vec<String>,
    /// Flags every worker gets before its own (e.g. `--token-file`, `--ca`).
    pub worker_args: Vec<String>,
    /// Give every replica an HTTP listener (`--http-listen`) on a port of its own.
    pub http: bool,
    /// Every replica listens on a port of its own and is advertised at another, where a proxy
    /// (the fault suite's) forwards: see [`crate::Cluster::listen_addr`].
    pub proxied: bool,
    /// Replicas planned (ports, data dir) beyond the initial members but not members: they
    /// start empty with `--join`, to be added by a membership change.
    pub spares: usize,
    /// Put every replica's data dir on a tmpfs of its own of this many MiB (a disk that can
    /// fill up); needs root. Unmounted when the cluster is dropped.
    pub tmpfs_mb: Option<u64>,
    /// The token [`crate::Cluster::client`] sends (for replicas given `--tokens-file`).
    pub client_token: Option<String>,
    /// The TLS [`crate::Cluster::client`] uses (for replicas given `--tls-cert`).
    pub client_tls: Option<flotilla_client::ClientTls>,
}

impl ClusterOptions {
    /// What the black-box tests run with: invariant checks on.
    pub fn for_tests() -> ClusterOptions {
        ClusterOptions {
            check_invariants: true,
            ..ClusterOptions::default()
        }
    }

    /// These options with TLS: makes a cluster CA and a replica certificate (for 127.0.0.1
    /// and localhost) under `dir` (`ca.pem`, `ca.key`, `replica.pem`, `replica.key`), starts every
    /// replica with them and gives [`crate::Cluster::client`] the CA.
    pub fn with_tls(mut self, dir: &Path) -> Result<ClusterOptions, String> {
        use flotilla_tls::issue::{issue, new_ca, Spec};
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let year = Duration::from_secs(365 * 86_400);
        let ca = new_ca("flotilla test CA", year).map_err(|e| e.0)?;
        let replica = issue(
            &ca,
            &Spec {
                name: "replica".into(),
                hosts: vec!["127.0.0.1".into(), "localhost".into()],
                peer: true,
                valid_for: year,
            },
        )
        .map_err(|e| e.0)?;
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text)
                .map(|()| path.display().to_string())
                .map_err(|e| format!("{}: {e}", path.display()))
        };
        let ca_path = write("ca.pem", &ca.cert)?;
        write("ca.key", &ca.key)?;
        let cert = write("replica.pem", &replica.cert)?;
        let key = write("replica.key", &replica.key)?;
        self.extra_args.extend([
            "--tls-cert".into(),
            cert,
            "--tls-key".into(),
            key,
            "--tls-client-ca".into(),
            ca_path.clone(),
        ]);
        self.client_tls = Some(
            flotilla_client::tls_from_files(Path::new(&ca_path), None, None, None)
                .map_err(|e| e.to_string())?,
        );
        Ok(self)
    }

    /// The `flotilla server` flags these options give every replica (not its own addresses,
    /// data dir or membership).
    pub(crate) fn server_flags(&self) -> Vec<String> {
        let mut flags = vec![
            "--cluster-name".to_string(),
            self.cluster_name().to_string(),
        ];
        let mut flag = |name: &str, value: Option<String>| {
            if let Some(v) = value {
                flags.push(name.to_string());
                flags.push(v);
            }
        };
        flag("--heartbeat-ms", self.heartbeat_ms.map(|v| v.to_string()));
        flag(
            "--election-timeout-ms",
            self.election_timeout_ms.map(|v| v.to_string()),
        );
        flag("--worker-ttl-ms", self.worker_ttl_ms.map(|v| v.to_string()));
        flag(
            "--worker-stream-limit",
            self.worker_stream_limit.map(|v| v.to_string()),
        );
        flag(
            "--snapshot-every-entries",
            self.snapshot_every_entries.map(|v| v.to_string()),
        );
        if self.check_invariants {
            flags.push("--check-invariants".into());
        }
        flags.extend(self.extra_args.iter().cloned());
        flags
    }

    pub fn cluster_name(&self) -> &str {
        self.cluster_name.as_deref().unwrap_or("flotilla-local")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_flags_carry_every_option_that_is_set_and_nothing_else() {
        let plain = ClusterOptions::default().server_flags();
        assert_eq!(plain, ["--cluster-name", "flotilla-local"]);
        let all = ClusterOptions {
            cluster_name: Some("c".into()),
            heartbeat_ms: Some(50),
            election_timeout_ms: Some(300),
            worker_ttl_ms: Some(2_500),
            worker_stream_limit: Some(8),
            snapshot_every_entries: Some(300),
            check_invariants: true,
            extra_args: vec!["--retention-ms".into(), "1000".into()],
            ..ClusterOptions::default()
        }
        .server_flags();
        assert_eq!(
            all.join(" "),
            "--cluster-name c --heartbeat-ms 50 --election-timeout-ms 300 --worker-ttl-ms 2500 \
             --worker-stream-limit 8 --snapshot-every-entries 300 --check-invariants \
             --retention-ms 1000"
        );
    }
}
