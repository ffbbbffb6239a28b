//! Cluster control: replicas and workers as real OS processes of the release binary, each
//! replica with its own data dir and log under the run directory, behind the partition proxy.
//! Kill (SIGKILL), pause (SIGSTOP/SIGCONT), restart on the same data dir, wipe. With spare
//! replicas planned, the membership nemesis adds and removes replicas: the members are then
//! whatever the last membership change left, and a replica whose data dir was wiped starts
//! empty with `--join` until it is added.

use std::collections::BTreeSet;

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
    /// The replicas bootstrapped with `--peers`.
    initial: BTreeSet<u64>,
    /// The members now, as the membership nemesis left them: what `ids` returns.
    members: BTreeSet<u64>,
    /// Replicas started empty with `--join` (spares, and removed members whose data dir was
    /// wiped) rather than with `--peers`.
    joiners: BTreeSet<u64>,
    replicas: BTreeMap<u64, Proc>,
    workers: BTreeMap<u64, Proc>,
    /// Argv of a worker, without the binary.
    worker_args: Vec<String>,
    pub net: Net,
    /// Data dirs mounted as tmpfs, unmounted when the cluster is dropped.
    mounts: Vec<PathBuf>,
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
        let planned = opts.nodes + opts.spares;
        let ports = free_ports(2 * planned)?;
        let mut public = BTreeMap::new();
        let mut private = BTreeMap::new();
        for i in 0..planned {
            let id = i as u64 + 1;
            public.insert(id, format!("127.0.0.1:{}", ports[2 * i]));
            private.insert(id, format!("127.0.0.1:{}", ports[2 * i + 1]));
        }
        let net = Net::new();
        for (id, addr) in &public {
            net.listen(Endpoint::Node(*id), addr, private[id].clone())
                .await?;
        }
        let initial: BTreeSet<u64> = (1..=opts.nodes as u64).collect();
        let joiners = public
            .keys()
            .copied()
            .filter(|id| !initial.contains(id))
            .collect();
        let mut cluster = Cluster {
            opts,
            base: base.to_path_buf(),
            public,
            private,
            members: initial.clone(),
            initial,
            joiners,
            replicas: BTreeMap::new(),
            workers: BTreeMap::new(),
            worker_args: Vec::new(),
            net,
            mounts: Vec::new(),
        };
        if let Some(mb) = cluster.opts.tmpfs_mb {
            for id in cluster.public.keys().copied().collect::<Vec<_>>() {
                let dir = cluster.data_dir(id);
                std::fs::create_dir_all(&dir)?;
                let out = Command::new("mount")
                    .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
                    .arg(&dir)
                    .output()?;
                anyhow::ensure!(
                    out.status.success(),
                    "mounting a tmpfs at {} for the disk-full nemesis (needs root): {}",
                    dir.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                cluster.mounts.push(dir);
            }
        }
        Ok(cluster)
    }

    /// The members now.
    pub fn ids(&self) -> Vec<u64> {
        self.members.iter().copied().collect()
    }

    /// Planned replicas that are not members now (spares, removed members).
    pub fn non_members(&self) -> Vec<u64> {
        self.public
            .keys()
            .copied()
            .filter(|id| !self.members.contains(id))
            .collect()
    }

    /// Records a membership change the nemesis made.
    pub fn set_member(&mut self, id: u64, member: bool) {
        if member {
            self.members.insert(id);
        } else {
            self.members.remove(&id);
        }
    }

    /// From now on replica `id` starts with `--join` (its data dir is empty).
    pub fn set_joiner(&mut self, id: u64) {
        self.joiners.insert(id);
    }

    pub fn addr(&self, id: u64) -> &str {
        &self.public[&id]
    }

    /// The members' public addresses.
    pub fn addrs(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|id| self.public[id].clone())
            .collect()
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
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
        let (out, err) = self.log(&format!("node-{id}"))?;
        let mut cmd = Command::new(&self.opts.bin);
        cmd.arg("server")
            .args(["--id", &id.to_string()])
            .args(["--listen", &self.private[&id]])
            .arg("--data-dir")
            .arg(self.data_dir(id));
        if self.joiners.contains(&id) {
            let join = self
                .members
                .iter()
                .filter(|m| **m != id)
                .map(|m| self.public[m].clone())
                .collect::<Vec<_>>()
                .join(",");
            cmd.args(["--join", &join]);
        } else {
            let peers = self
                .initial
                .iter()
                .map(|id| format!("{id}={}", self.public[id]))
                .collect::<Vec<_>>()
                .join(",");
            cmd.args(["--peers", &peers]);
        }
        cmd.args(["--cluster-name", "jepsen"])
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
        if let Some(n) = self.opts.snapshot_every_entries {
            cmd.args(["--snapshot-every-entries", &n.to_string()]);
        }
        if let Some(bug) = &self.opts.sut_bug {
            cmd.env("FLOTILLA_PLANTED_BUG", bug);
        }
        if let Some(auth) = &self.opts.auth {
            cmd.arg("--tokens-file")
                .arg(&auth.tokens_file)
                .arg("--peer-secret-file")
                .arg(&auth.peer_secret_file);
        }
        if let Some(tls) = &self.opts.tls {
            cmd.arg("--tls-cert")
                .arg(&tls.cert)
                .arg("--tls-key")
                .arg(&tls.key)
                .arg("--tls-client-ca")
                .arg(&tls.ca);
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

    /// Deletes replica `id`'s data dir (its contents, when it is a mount point); the replica
    /// must be down and must not be a member (a wiped voter could vote twice in a term): the
    /// membership nemesis wipes a removed replica before adding it back.
    pub fn wipe(&mut self, id: u64) -> std::io::Result<()> {
        assert!(!self.is_running(id), "wipe of running replica {id}");
        assert!(!self.members.contains(&id), "wipe of member {id}");
        let dir = self.data_dir(id);
        let entries = match std::fs::read_dir(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            r => r?,
        };
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    /// How replica `id`'s process ended, if it has (None: running or never started).
    pub fn exit_code(&mut self, id: u64) -> Option<Option<i32>> {
        let child = self.replicas.get_mut(&id)?.child.as_mut()?;
        child.try_wait().ok().flatten().map(|s| s.code())
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
        if let Some(auth) = &self.opts.auth {
            args.push("--token-file".into());
            args.push(auth.worker_token_file.display().to_string());
        }
        if let Some(tls) = &self.opts.tls {
            args.push("--ca".into());
            args.push(tls.ca.display().to_string());
            args.push("--tls-server-name".into());
            args.push(crate::auth::SERVER_NAME.into());
        }
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
            token: crate::auth::client_token(),
            tls: crate::auth::client_tls(),
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
        for dir in &self.mounts {
            let _ = Command::new("umount").arg("-l").arg(dir).status();
        }
    }
}
