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
}

impl ReplicaOptions {
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
    peers: BTreeMap<u64, String>,
    options: ReplicaOptions,
    children: BTreeMap<u64, Child>,
    /// Worker processes by worker id.
    workers: BTreeMap<String, Child>,
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
        let peers = free_ports(n)?
            .into_iter()
            .enumerate()
            .map(|(i, port)| (i as u64 + 1, format!("127.0.0.1:{port}")))
            .collect();
        Ok(LocalCluster {
            bin: bin.to_path_buf(),
            base: base.to_path_buf(),
            cluster_name: "flotilla-local".into(),
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

    pub fn addrs(&self) -> Vec<String> {
        self.peers.values().cloned().collect()
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.base.join(format!("node-{id}"))
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.base.join(format!("node-{id}.log"))
    }

    pub fn peers_flag(&self) -> String {
        self.peers
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
            .arg("--peers")
            .arg(self.peers_flag())
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
                    Ok(s) => leaders.push(s.leader_id.filter(|_| s.role != "candidate")),
                    Err(e) => last = e.to_string(),
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
