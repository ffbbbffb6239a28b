//! A cluster of `flotilla server` processes on loopback ephemeral ports, each with its own data
//! dir under one base directory and its log in `node-N.log` there. Replicas can be killed
//! (SIGKILL), stopped (SIGTERM), paused (SIGSTOP/SIGCONT) and restarted on the same data.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_client::{Client, ClientConfig};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Extra flags for every replica (e.g. timing).
#[derive(Debug, Clone, Default)]
pub struct ReplicaOptions {
    pub heartbeat_ms: Option<u64>,
    pub election_timeout_ms: Option<u64>,
    /// Worker lease TTL of the replicas.
    pub worker_ttl_ms: Option<u64>,
    /// Assignments queued per worker stream on the replicas.
    pub worker_stream_limit: Option<usize>,
    /// Log entries between snapshots on the replicas.
    pub snapshot_every_entries: Option<u64>,
    /// Extra environment variables, e.g. `RUST_LOG`.
    pub env: Vec<(String, String)>,
    /// Check the state machine's invariants after every applied entry (tests and fault runs;
    /// O(tasks) per entry, so not for benchmarks).
    pub check_invariants: bool,
    /// Further `flotilla server` flags, e.g. `--retention-ms 1000`.
    pub extra_args: Vec<String>,
    /// Give every replica an HTTP listener (`--http-listen`) on a port of its own.
    pub http: bool,
    /// The token [`LocalCluster::client`] sends (for replicas given `--tokens-file`).
    pub client_token: Option<String>,
    /// The TLS [`LocalCluster::client`] uses (for replicas given `--tls-cert`).
    pub client_tls: Option<flotilla_client::ClientTls>,
}

impl ReplicaOptions {
    /// These options with TLS: makes a cluster CA and a replica certificate (for 127.0.0.1
    /// and localhost) under `dir` (`ca.pem`, `ca.key`, `replica.pem`, `replica.key`), starts every
    /// replica with them and gives [`LocalCluster::client`] the CA.
    pub fn with_tls(mut self, dir: &Path) -> Result<ReplicaOptions, String> {
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

    /// What the black-box tests run with: invariant checks on.
    pub fn for_tests() -> ReplicaOptions {
        ReplicaOptions {
            check_invariants: true,
            ..ReplicaOptions::default()
        }
    }
}

pub struct LocalCluster {
    bin: PathBuf,
    base: PathBuf,
    cluster_name: String,
    /// Every planned replica: the initial members and those added later.
    peers: BTreeMap<u64, String>,
    /// The initial members, bootstrapped with `--peers`.
    initial: BTreeMap<u64, String>,
    /// Replicas started with `--join` (planned with [`LocalCluster::plan_replica`]).
    joiners: std::collections::BTreeSet<u64>,
    /// Initial members expected to hold no membership (e.g. restarted on a wiped data dir).
    unjoined: std::collections::BTreeSet<u64>,
    options: ReplicaOptions,
    children: BTreeMap<u64, Child>,
    /// Worker processes by worker id.
    workers: BTreeMap<String, Child>,
    /// HTTP listener addresses by replica (with [`ReplicaOptions::http`]).
    http: BTreeMap<u64, String>,
}

/// Ports the OS considers free right now.
fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

impl LocalCluster {
    /// Plans an `n`-replica cluster of binary `bin` with data under `base`; starts nothing.
    pub fn new(
        bin: &Path,
        n: usize,
        base: &Path,
        options: ReplicaOptions,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(base)?;
        let peers: BTreeMap<u64, String> = free_ports(n)?
            .into_iter()
            .enumerate()
            .map(|(i, port)| (i as u64 + 1, format!("127.0.0.1:{port}")))
            .collect();
        let http = if options.http {
            free_ports(n)?
                .into_iter()
                .enumerate()
                .map(|(i, port)| (i as u64 + 1, format!("127.0.0.1:{port}")))
                .collect()
        } else {
            BTreeMap::new()
        };
        Ok(LocalCluster {
            http,
            bin: bin.to_path_buf(),
            base: base.to_path_buf(),
            cluster_name: "flotilla-local".into(),
            initial: peers.clone(),
            joiners: Default::default(),
            unjoined: Default::default(),
            peers,
            options,
            children: BTreeMap::new(),
            workers: BTreeMap::new(),
        })
    }

    pub fn ids(&self) -> Vec<u64> {
        self.peers.keys().copied().collect()
    }

    pub fn addr(&self, id: u64) -> &str {
        &self.peers[&id]
    }

    /// Replica `id`'s HTTP listener (`/metrics`, `/healthz`, `/readyz`), if it has one.
    pub fn http_addr(&self, id: u64) -> Option<&str> {
        self.http.get(&id).map(String::as_str)
    }

    pub fn addrs(&self) -> Vec<String> {
        self.peers.values().cloned().collect()
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.base.join(format!("node-{id}"))
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.base.join(format!("node-{id}.log"))
    }

    /// Plans one more replica (the next id, a free port) that starts empty with `--join` and
    /// waits to be added; starts nothing. Returns its id.
    pub fn plan_replica(&mut self) -> std::io::Result<u64> {
        let id = self.peers.keys().max().map_or(1, |m| m + 1);
        let port = free_ports(1)?[0];
        self.peers.insert(id, format!("127.0.0.1:{port}"));
        if self.options.http {
            let port = free_ports(1)?[0];
            self.http.insert(id, format!("127.0.0.1:{port}"));
        }
        self.joiners.insert(id);
        Ok(id)
    }

    /// From now on, start replica `id` with `--join` (an empty replica waiting to be added)
    /// rather than `--peers`.
    pub fn set_joiner(&mut self, id: u64) {
        self.joiners.insert(id);
    }

    /// Replica `id` (an initial member) is expected to hold no membership, as an empty replica
    /// waiting to be added does: [`Self::wait_for_leader`] does not wait for it to follow.
    pub fn expect_unjoined(&mut self, id: u64) {
        self.unjoined.insert(id);
    }

    /// Forgets replica `id` (after it was removed): it is no longer among [`Self::addrs`].
    pub fn forget(&mut self, id: u64) {
        self.peers.remove(&id);
    }

    /// Deletes replica `id`'s data dir (stop it first): a lost or wiped disk.
    pub fn wipe(&mut self, id: u64) -> std::io::Result<()> {
        match std::fs::remove_dir_all(self.data_dir(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Waits until replica `id`'s process exits on its own; returns its status, or None if it
    /// still runs after `timeout`.
    pub async fn wait_exit(
        &mut self,
        id: u64,
        timeout: Duration,
    ) -> std::io::Result<Option<std::process::ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(child) = self.children.get_mut(&id) else {
                return Err(std::io::Error::other(format!("replica {id} not started")));
            };
            if let Some(status) = child.try_wait()? {
                self.children.remove(&id);
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn cluster_name(&self) -> &str {
        &self.cluster_name
    }

    pub fn peers_flag(&self) -> String {
        self.initial
            .iter()
            .map(|(id, a)| format!("{id}={a}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The command line that runs replica `id`.
    pub fn command(&self, id: u64) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("server")
            .arg("--id")
            .arg(id.to_string())
            .arg("--listen")
            .arg(self.addr(id))
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .args(if self.joiners.contains(&id) {
                let others: Vec<&str> = self
                    .peers
                    .iter()
                    .filter(|(other, _)| **other != id)
                    .map(|(_, a)| a.as_str())
                    .collect();
                ["--join".to_string(), others.join(",")]
            } else {
                ["--peers".to_string(), self.peers_flag()]
            })
            .arg("--cluster-name")
            .arg(&self.cluster_name);
        if let Some(h) = self.options.heartbeat_ms {
            cmd.arg("--heartbeat-ms").arg(h.to_string());
        }
        if let Some(e) = self.options.election_timeout_ms {
            cmd.arg("--election-timeout-ms").arg(e.to_string());
        }
        if let Some(t) = self.options.worker_ttl_ms {
            cmd.arg("--worker-ttl-ms").arg(t.to_string());
        }
        if let Some(n) = self.options.worker_stream_limit {
            cmd.arg("--worker-stream-limit").arg(n.to_string());
        }
        if let Some(n) = self.options.snapshot_every_entries {
            cmd.arg("--snapshot-every-entries").arg(n.to_string());
        }
        if self.options.check_invariants {
            cmd.arg("--check-invariants");
        }
        if let Some(a) = self.http.get(&id) {
            cmd.arg("--http-listen").arg(a);
        }
        cmd.args(&self.options.extra_args);
        for (k, v) in &self.options.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts (or restarts, on the same data dir) replica `id`.
    pub fn start(&mut self, id: u64) -> std::io::Result<()> {
        if let Some(mut old) = self.children.remove(&id) {
            let _ = old.kill();
            let _ = old.wait();
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path(id))?;
        let child = self
            .command(id)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.children.insert(id, child);
        Ok(())
    }

    pub fn start_all(&mut self) -> std::io::Result<()> {
        for id in self.ids() {
            self.start(id)?;
        }
        Ok(())
    }

    /// The process id of replica `id`, while it runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.children.get(&id).map(Child::id)
    }

    pub fn is_running(&mut self, id: u64) -> bool {
        self.children
            .get_mut(&id)
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// How replica `id` exited, once it has (on its own: a fatal error, or being removed).
    pub fn exit_status(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        self.children
            .get_mut(&id)
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn signal(&self, id: u64, sig: Signal) -> std::io::Result<()> {
        let child = self
            .children
            .get(&id)
            .ok_or_else(|| std::io::Error::other(format!("replica {id} not running")))?;
        kill(Pid::from_raw(child.id() as i32), sig).map_err(std::io::Error::other)
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self, id: u64) -> std::io::Result<()> {
        if let Some(mut child) = self.children.remove(&id) {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn stop(&mut self, id: u64) -> std::io::Result<std::process::ExitStatus> {
        self.signal(id, Signal::SIGTERM)?;
        let mut child = self.children.remove(&id).expect("signalled child exists");
        child.wait()
    }

    pub fn pause(&self, id: u64) -> std::io::Result<()> {
        self.signal(id, Signal::SIGSTOP)
    }

    pub fn resume(&self, id: u64) -> std::io::Result<()> {
        self.signal(id, Signal::SIGCONT)
    }

    /// Starts `flotilla worker --id ID` against this cluster, with `extra` flags; its log goes
    /// to `worker-ID.log`.
    pub fn start_worker(&mut self, id: &str, extra: &[&str]) -> std::io::Result<()> {
        self.kill_worker(id)?;
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.base.join(format!("worker-{id}.log")))?;
        let child = Command::new(&self.bin)
            .arg("worker")
            .arg("--cluster")
            .arg(self.addrs().join(","))
            .arg("--id")
            .arg(id)
            .args(extra)
            .envs(self.options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.workers.insert(id.to_string(), child);
        Ok(())
    }

    /// SIGKILL a worker (its running commands are orphaned, as in a machine loss).
    pub fn kill_worker(&mut self, id: &str) -> std::io::Result<()> {
        if let Some(mut child) = self.workers.remove(id) {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM a worker (it drains) without waiting for it.
    pub fn terminate_worker(&self, id: &str) -> std::io::Result<()> {
        let child = self
            .workers
            .get(id)
            .ok_or_else(|| std::io::Error::other(format!("worker {id} not running")))?;
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).map_err(std::io::Error::other)
    }

    /// The exit status of a worker once it has exited, `None` while it runs.
    pub fn worker_exited(&mut self, id: &str) -> std::io::Result<Option<std::process::ExitStatus>> {
        let child = self
            .workers
            .get_mut(id)
            .ok_or_else(|| std::io::Error::other(format!("worker {id} not started")))?;
        child.try_wait()
    }

    /// SIGSTOP / SIGCONT a worker.
    pub fn pause_worker(&self, id: &str, pause: bool) -> std::io::Result<()> {
        let child = self
            .workers
            .get(id)
            .ok_or_else(|| std::io::Error::other(format!("worker {id} not running")))?;
        let sig = if pause {
            Signal::SIGSTOP
        } else {
            Signal::SIGCONT
        };
        kill(Pid::from_raw(child.id() as i32), sig).map_err(std::io::Error::other)
    }

    /// A client over every replica, with a generous retry budget for fault tests.
    pub fn client(&self) -> Client {
        let config = ClientConfig {
            call_timeout: Duration::from_secs(60),
            token: self.options.client_token.clone(),
            tls: self.options.client_tls.clone(),
            ..ClientConfig::default()
        };
        Client::with_config(self.addrs(), config).expect("loopback addresses are valid")
    }

    /// Waits until the running replicas agree on a leader; returns its id.
    pub async fn wait_for_leader(&mut self, timeout: Duration) -> Result<u64, String> {
        let deadline = Instant::now() + timeout;
        let client = self.client();
        let mut last = String::from("no replica answered");
        while Instant::now() < deadline {
            let mut leaders = Vec::new();
            for id in self.ids() {
                if !self.is_running(id) {
                    continue;
                }
                match client.cluster_status_of(self.addr(id)).await {
                    // An empty replica waiting to be added has no membership and no leader.
                    Ok(s)
                        if s.members.is_empty()
                            && (self.joiners.contains(&id) || self.unjoined.contains(&id)) => {}
                    Ok(s) => leaders.push(s.leader_id.filter(|_| s.role != "candidate")),
                    // A running replica that does not answer yet (still starting) has not
                    // agreed on anything.
                    Err(e) => {
                        last = e.to_string();
                        leaders.push(None);
                    }
                }
            }
            if let Some(Some(l)) = leaders.first().copied() {
                if leaders.iter().all(|x| *x == Some(l)) && self.is_running(l) {
                    let s = client.cluster_status_of(self.addr(l)).await;
                    if s.is_ok_and(|s| s.role == "leader") {
                        return Ok(l);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("no leader within {timeout:?}: {last}"))
    }

    /// The tail of replica `id`'s log, for failure messages.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path(id)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let workers = std::mem::take(&mut self.workers).into_values();
        for mut child in std::mem::take(&mut self.children)
            .into_values()
            .chain(workers)
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
