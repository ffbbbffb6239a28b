//! The suite's cluster: the cluster test kit's ([`flotilla_testkit::Cluster`]: replicas and
//! workers as processes of the release binary, kill, pause, restart, wipe, leader lookup) with
//! every replica behind the partition proxy. With spare replicas planned, the membership
//! nemesis adds and removes replicas: the members are then whatever the last membership change
//! left, and a replica whose data dir was wiped starts empty with `--join` until it is added.
//!
//! [`Cluster`] derefs to the kit's cluster. The few methods defined here wrap the kit's of the
//! same name where the proxy must learn a new process's pid, where the nemesis's own checks
//! apply, or where jepsen numbers its workers (`w1`, `w2`…) rather than naming them.

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_client::{Client, ClientConfig};

use crate::proxy::{Endpoint, Net};

/// How replicas and workers are started.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub bin: PathBuf,
    pub nodes: usize,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
    /// Planted bug to activate (`FLOTILLA_PLANTED_BUG`).
    pub sut_bug: Option<String>,
    /// Worker lease TTL (`--worker-ttl-ms`); only passed when workers run, so binaries
    /// without workers still work.
    pub worker_ttl_ms: Option<u64>,
    /// Put every replica's data dir on its own tmpfs of this many MiB (the disk-full nemesis
    /// fills one); needs root.
    pub tmpfs_mb: Option<u64>,
    /// `--snapshot-every-entries` of the replicas, when set.
    pub snapshot_every_entries: Option<u64>,
    /// Replicas planned (ports, proxy, data dir) beyond `nodes` but not members: the
    /// membership nemesis adds them as fresh replicas.
    pub spares: usize,
    /// Tokens and peer secret (`--auth`).
    pub auth: Option<crate::auth::Auth>,
    /// Certificates (`--tls`).
    pub tls: Option<crate::auth::Tls>,
}

impl ClusterOptions {
    /// The kit's options for these: every replica proxied and checking its invariants after
    /// every applied entry (a violation stops it with the reason in its log, which the
    /// checkers then see); clients with the run's token and TLS.
    fn kit(&self) -> flotilla_testkit::ClusterOptions {
        let path = |p: &Path| p.display().to_string();
        let mut extra_args = Vec::new();
        let mut worker_args = Vec::new();
        if let Some(auth) = &self.auth {
            extra_args.extend([
                "--tokens-file".into(),
                path(&auth.tokens_file),
                "--peer-secret-file".into(),
                path(&auth.peer_secret_file),
            ]);
            worker_args.extend(["--token-file".into(), path(&auth.worker_token_file)]);
        }
        if let Some(tls) = &self.tls {
            extra_args.extend([
                "--tls-cert".into(),
                path(&tls.cert),
                "--tls-key".into(),
                path(&tls.key),
                "--tls-client-ca".into(),
                path(&tls.ca),
            ]);
            worker_args.extend([
                "--ca".into(),
                path(&tls.ca),
                "--tls-server-name".into(),
                crate::auth::SERVER_NAME.into(),
            ]);
        }
        flotilla_testkit::ClusterOptions {
            cluster_name: Some("jepsen".into()),
            heartbeat_ms: Some(self.heartbeat_ms),
            election_timeout_ms: Some(self.election_timeout_ms),
            worker_ttl_ms: self.worker_ttl_ms,
            snapshot_every_entries: self.snapshot_every_entries,
            env: self
                .sut_bug
                .iter()
                .map(|bug| ("FLOTILLA_PLANTED_BUG".to_string(), bug.clone()))
                .collect(),
            check_invariants: true,
            extra_args,
            worker_args,
            proxied: true,
            spares: self.spares,
            tmpfs_mb: self.tmpfs_mb,
            client_token: crate::auth::client_token(),
            client_tls: crate::auth::client_tls(),
            ..flotilla_testkit::ClusterOptions::default()
        }
    }
}

pub struct Cluster {
    kit: flotilla_testkit::Cluster,
    pub net: Net,
    /// Flags of every worker after the kit's (queue, heartbeat).
    worker_extra: Vec<String>,
}

impl Deref for Cluster {
    type Target = flotilla_testkit::Cluster;
    fn deref(&self) -> &Self::Target {
        &self.kit
    }
}

impl DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.kit
    }
}

/// Jepsen's worker `w` in the kit.
fn worker_name(w: u64) -> String {
    format!("w{w}")
}

impl Cluster {
    /// Plans the cluster and starts its proxies; starts no process.
    pub async fn new(opts: ClusterOptions, base: &Path) -> anyhow::Result<Cluster> {
        let kit = flotilla_testkit::Cluster::new(&opts.bin, opts.nodes, base, opts.kit())?;
        let net = Net::new();
        for id in kit.ids().into_iter().chain(kit.non_members()) {
            net.listen(
                Endpoint::Node(id),
                kit.addr(id),
                kit.listen_addr(id).to_string(),
            )
            .await?;
        }
        Ok(Cluster {
            kit,
            net,
            worker_extra: Vec::new(),
        })
    }

    /// Starts (or restarts on the same data dir) replica `id`, known to the proxy by its pid.
    pub fn start(&mut self, id: u64) -> std::io::Result<()> {
        self.kit.start(id)?;
        if let Some(pid) = self.kit.pid(id) {
            self.net.register_pid(pid, Endpoint::Node(id));
        }
        Ok(())
    }

    pub fn start_all(&mut self) -> std::io::Result<()> {
        for id in self.ids() {
            self.start(id)?;
        }
        Ok(())
    }

    /// Deletes replica `id`'s data; it must be down and must not be a member (a wiped voter
    /// could vote twice in a term): the membership nemesis wipes a removed replica before
    /// adding it back.
    pub fn wipe(&mut self, id: u64) -> std::io::Result<()> {
        assert!(!self.ids().contains(&id), "wipe of member {id}");
        self.kit.wipe(id)
    }

    /// How replica `id`'s process ended, if it has (None: running or never started).
    pub fn exit_code(&mut self, id: u64) -> Option<Option<i32>> {
        self.kit.exit_status(id).map(|s| s.code())
    }

    /// Flags every worker gets after the kit's (queue, heartbeat…).
    pub fn set_worker_args(&mut self, extra: Vec<String>) {
        self.worker_extra = extra;
    }

    pub fn start_worker(&mut self, w: u64) -> std::io::Result<()> {
        let extra: Vec<&str> = self.worker_extra.iter().map(String::as_str).collect();
        self.kit.start_worker(&worker_name(w), &extra)?;
        if let Some(pid) = self.kit.worker_pid(&worker_name(w)) {
            self.net.register_pid(pid, Endpoint::Worker(w));
        }
        Ok(())
    }

    pub fn worker_ids(&self) -> Vec<u64> {
        self.kit
            .worker_ids()
            .iter()
            .filter_map(|name| name.strip_prefix('w')?.parse().ok())
            .collect()
    }

    pub fn kill_worker(&mut self, w: u64) -> std::io::Result<()> {
        self.kit.kill_worker(&worker_name(w))
    }

    /// SIGSTOP / SIGCONT worker `w`; nothing to do for one that is not running.
    pub fn pause_worker(&mut self, w: u64, pause: bool) -> std::io::Result<()> {
        if !self.worker_ids().contains(&w) {
            return Ok(());
        }
        self.kit.pause_worker(&worker_name(w), pause)
    }

    /// A client of the members' public (proxied) addresses.
    pub fn client(&self, call_timeout: Duration) -> Client {
        self.kit.client_with(ClientConfig {
            request_timeout: Duration::from_secs(1).min(call_timeout),
            call_timeout,
            ..self.kit.client_config()
        })
    }
}
