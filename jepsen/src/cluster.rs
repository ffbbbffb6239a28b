//! Cluster control: replicas and workers as real OS processes of the release binary, each
//! replica with its own data dir and log under the run directory, behind the partition proxy.
//! Kill (SIGKILL), pause (SIGSTOP/SIGCONT), restart on the same data dir, wipe.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_client::{Client, ClientConfig};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

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
}

struct Proc {
    child: Option<Child>,
    paused: bool,
}

pub struct Cluster {
    opts: ClusterOptions,
    base: PathBuf,
    /// Addresses in `--peers`: the proxy listeners.
    public: BTreeMap<u64, String>,
    /// Where each replica really listens.
    private: BTreeMap<u64, String>,
    replicas: BTreeMap<u64, Proc>,
    workers: BTreeMap<u64, Proc>,
    /// Argv of a worker, without the binary.
    worker_args: Vec<String>,
    pub net: Net,
}

fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

fn signal(child: &Child, sig: Signal) -> std::io::Result<()> {
    kill(Pid::from_raw(child.id() as i32), sig).map_err(std::io::Error::other)
}

impl Cluster {
    /// Plans the cluster and starts its proxies; starts no process.
    pub async fn new(opts: ClusterOptions, base: &Path) -> anyhow::Result<Cluster> {
        std::fs::create_dir_all(base)?;
        let ports = free_ports(2 * opts.nodes)?;
        let mut public = BTreeMap::new();
        let mut private = BTreeMap::new();
        for i in 0..opts.nodes {
            let id = i as u64 + 1;
            public.insert(id, format!("127.0.0.1:{}", ports[2 * i]));
            private.insert(id, format!("127.0.0.1:{}", ports[2 * i + 1]));
        }
        let net = Net::new();
        for (id, addr) in &public {
            net.listen(Endpoint::Node(*id), addr, private[id].clone())
                .await?;
        }
        Ok(Cluster {
            opts,
            base: base.to_path_buf(),
            public,
            private,
            replicas: BTreeMap::new(),
            workers: BTreeMap::new(),
            worker_args: Vec::new(),
            net,
        })
    }

    pub fn ids(&self) -> Vec<u64> {
        self.public.keys().copied().collect()
    }

    pub fn addr(&self, id: u64) -> &str {
        &self.public[&id]
    }

    pub fn addrs(&self) -> Vec<String> {
        self.public.values().cloned().collect()
    }

    fn data_dir(&self, id: u64) -> PathBuf {
        self.base.join(format!("node-{id}"))
    }

    fn log(&self, name: &str) -> std::io::Result<(File, File)> {
        let f = File::options()
            .create(true)
            .append(true)
            .open(self.base.join(format!("{name}.log")))?;
        Ok((f.try_clone()?, f))
    }

    /// Starts (or restarts on the same data dir) replica `id`.
    pub fn start(&mut self, id: u64) -> std::io::Result<()> {
        self.kill(id)?;
        let peers = self
            .public
            .iter()
            .map(|(id, a)| format!("{id}={a}"))
            .collect::<Vec<_>>()
            .join(",");
        let (out, err) = self.log(&format!("node-{id}"))?;
        let mut cmd = Command::new(&self.opts.bin);
        cmd.arg("server")
            .args(["--id", &id.to_string()])
            .args(["--listen", &self.private[&id]])
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .args(["--peers", &peers])
            .args(["--cluster-name", "jepsen"])
            // Every applied entry is checked against the state's invariants: a violation stops
            // the replica with the reason in its log, which the checkers then see.
            .arg("--check-invariants")
            .args(["--heartbeat-ms", &self.opts.heartbeat_ms.to_string()])
            .args([
                "--election-timeout-ms",
                &self.opts.election_timeout_ms.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if let Some(ttl) = self.opts.worker_ttl_ms {
            cmd.args(["--worker-ttl-ms", &ttl.to_string()]);
        }
        if let Some(bug) = &self.opts.sut_bug {
            cmd.env("FLOTILLA_PLANTED_BUG", bug);
        }
        let child = cmd.spawn()?;
        self.net.register_pid(child.id(), Endpoint::Node(id));
        self.replicas.insert(
            id,
            Proc {
                child: Some(child),
                paused: false,
            },
        );
        Ok(())
    }

    pub fn start_all(&mut self) -> std::io::Result<()> {
        for id in self.ids() {
            self.start(id)?;
        }
        Ok(())
    }

    pub fn is_running(&mut self, id: u64) -> bool {
        self.replicas
            .get_mut(&id)
            .and_then(|p| p.child.as_mut())
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn is_paused(&self, id: u64) -> bool {
        self.replicas.get(&id).is_some_and(|p| p.paused)
    }

    /// Replicas that are not running (killed, or exited by themselves).
    pub fn down(&mut self) -> Vec<u64> {
        self.ids()
            .into_iter()
            .filter(|id| !self.is_running(*id))
            .collect()
    }

    /// SIGKILL: nothing is flushed.
    pub fn kill(&mut self, id: u64) -> std::io::Result<()> {
        if let Some(mut p) = self.replicas.remove(&id) {
            if let Some(mut c) = p.child.take() {
                let _ = c.kill();
                c.wait()?;
            }
        }
        Ok(())
    }

    /// Deletes replica `id`'s data dir; the replica must be down. No nemesis uses it yet: a
    /// wiped voter that rejoins can vote twice in a term, which Raft does not tolerate; it is
    /// for the membership nemesis (remove, wipe, re-add) once membership changes exist.
    #[allow(dead_code)]
    pub fn wipe(&mut self, id: u64) -> std::io::Result<()> {
        assert!(!self.is_running(id), "wipe of running replica {id}");
        match std::fs::remove_dir_all(self.data_dir(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    pub fn pause(&mut self, id: u64) -> std::io::Result<()> {
        if let Some(p) = self.replicas.get_mut(&id) {
            if let Some(c) = &p.child {
                signal(c, Signal::SIGSTOP)?;
                p.paused = true;
            }
        }
        Ok(())
    }

    pub fn resume(&mut self, id: u64) -> std::io::Result<()> {
        if let Some(p) = self.replicas.get_mut(&id) {
            if let Some(c) = &p.child {
                signal(c, Signal::SIGCONT)?;
            }
            p.paused = false;
        }
        Ok(())
    }

    /// How workers are started: `flotilla worker --cluster ADDRS` plus `extra`.
    pub fn set_worker_args(&mut self, extra: Vec<String>) {
        let mut args = vec![
            "worker".to_string(),
            "--cluster".to_string(),
            self.addrs().join(","),
        ];
        args.extend(extra);
        self.worker_args = args;
    }

    pub fn start_worker(&mut self, w: u64) -> std::io::Result<()> {
        self.kill_worker(w)?;
        let (out, err) = self.log(&format!("worker-{w}"))?;
        let child = Command::new(&self.opts.bin)
            .args(&self.worker_args)
            .args(["--id", &format!("w{w}")])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()?;
        self.net.register_pid(child.id(), Endpoint::Worker(w));
        self.workers.insert(
            w,
            Proc {
                child: Some(child),
                paused: false,
            },
        );
        Ok(())
    }

    pub fn worker_ids(&self) -> Vec<u64> {
        self.workers.keys().copied().collect()
    }

    pub fn kill_worker(&mut self, w: u64) -> std::io::Result<()> {
        if let Some(mut p) = self.workers.remove(&w) {
            if let Some(mut c) = p.child.take() {
                let _ = c.kill();
                c.wait()?;
            }
        }
        Ok(())
    }

    pub fn pause_worker(&mut self, w: u64, pause: bool) -> std::io::Result<()> {
        if let Some(p) = self.workers.get_mut(&w) {
            if let Some(c) = &p.child {
                signal(
                    c,
                    if pause {
                        Signal::SIGSTOP
                    } else {
                        Signal::SIGCONT
                    },
                )?;
                p.paused = pause;
            }
        }
        Ok(())
    }

    /// A client of the public (proxied) addresses.
    pub fn client(&self, call_timeout: Duration) -> Client {
        let config = ClientConfig {
            request_timeout: Duration::from_secs(1).min(call_timeout),
            call_timeout,
            ..ClientConfig::default()
        };
        Client::with_config(self.addrs(), config).expect("loopback addresses are valid")
    }

    /// Waits until every running, unpaused replica names the same leader and it says so.
    pub async fn wait_for_leader(&mut self, timeout: Duration) -> Option<u64> {
        let deadline = Instant::now() + timeout;
        let client = self.client(Duration::from_secs(1));
        while Instant::now() < deadline {
            if let Some(l) = self.agreed_leader(&client).await {
                return Some(l);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    async fn agreed_leader(&mut self, client: &Client) -> Option<u64> {
        let mut leader = None;
        for id in self.ids() {
            if !self.is_running(id) || self.is_paused(id) {
                continue;
            }
            let s = client.cluster_status_of(self.addr(id)).await.ok()?;
            let l = s.leader_id?;
            if leader.is_some_and(|x| x != l) {
                return None;
            }
            leader = Some(l);
        }
        let l = leader?;
        let s = client.cluster_status_of(self.addr(l)).await.ok()?;
        (s.role == "leader").then_some(l)
    }

    /// Stops everything (resuming paused processes first so none is left stopped).
    pub fn shutdown(&mut self) {
        for p in self.replicas.values().chain(self.workers.values()) {
            if let Some(c) = &p.child {
                let _ = signal(c, Signal::SIGCONT);
            }
        }
        for (_, mut p) in std::mem::take(&mut self.replicas)
            .into_iter()
            .chain(std::mem::take(&mut self.workers))
        {
            if let Some(mut c) = p.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}
