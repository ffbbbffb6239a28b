//! [`Cluster`]: the replicas of a kit cluster, planned on free loopback ports, started as
//! child processes of the `flotilla` binary, and the membership the kit believes they have.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use flotilla_client::{Client, ClientConfig};

use crate::options::ClusterOptions;
use crate::process::{free_ports, Proc};

/// A cluster of `flotilla server` processes on loopback. Dropping it kills every process it
/// started (and unmounts its tmpfs data dirs).
pub struct Cluster {
    pub(crate) bin: PathBuf,
    pub(crate) base: PathBuf,
    pub(crate) options: ClusterOptions,
    /// Every planned replica's advertised address: in `--peers`/`--join`, to clients and
    /// workers.
    public: BTreeMap<u64, String>,
    /// Where each planned replica listens: its advertised address unless proxied.
    listen: BTreeMap<u64, String>,
    /// HTTP listener addresses (with [`ClusterOptions::http`]).
    http: BTreeMap<u64, String>,
    /// The initial members, bootstrapped with `--peers`.
    initial: BTreeSet<u64>,
    /// The members now, as far as the kit knows (membership changes are recorded with
    /// [`Cluster::set_member`]): what [`Cluster::ids`] and [`Cluster::addrs`] return.
    members: BTreeSet<u64>,
    /// Replicas started empty with `--join` (spares, planned replicas, wiped ones) rather
    /// than with `--peers`.
    joiners: BTreeSet<u64>,
    /// Initial members expected to hold no membership (e.g. restarted on a wiped data dir).
    unjoined: BTreeSet<u64>,
    replicas: BTreeMap<u64, Proc>,
    pub(crate) workers: BTreeMap<String, Proc>,
    /// Data dirs mounted as tmpfs.
    mounts: Vec<PathBuf>,
}

impl Cluster {
    /// Plans an `n`-replica cluster (plus [`ClusterOptions::spares`]) of binary `bin` with data
    /// under `base`; starts nothing.
    pub fn new(
        bin: &Path,
        n: usize,
        base: &Path,
        options: ClusterOptions,
    ) -> std::io::Result<Cluster> {
        std::fs::create_dir_all(base)?;
        let mut cluster = Cluster {
            bin: bin.to_path_buf(),
            base: base.to_path_buf(),
            options,
            public: BTreeMap::new(),
            listen: BTreeMap::new(),
            http: BTreeMap::new(),
            initial: (1..=n as u64).collect(),
            members: (1..=n as u64).collect(),
            joiners: BTreeSet::new(),
            unjoined: BTreeSet::new(),
            replicas: BTreeMap::new(),
            workers: BTreeMap::new(),
            mounts: Vec::new(),
        };
        let planned = n + cluster.options.spares;
        let per = cluster.ports_per_replica();
        // All at once, so that no two are the same.
        let ports = free_ports(planned * per)?;
        for (id, ports) in (1..).zip(ports.chunks(per)) {
            cluster.plan(id, ports)?;
            if id > n as u64 {
                cluster.joiners.insert(id);
            }
        }
        Ok(cluster)
    }

    /// The advertised, HTTP and (proxied) listen port.
    fn ports_per_replica(&self) -> usize {
        2 + usize::from(self.options.proxied)
    }

    /// Addresses on `ports` (and a tmpfs, if asked) for replica `id`.
    fn plan(&mut self, id: u64, ports: &[u16]) -> std::io::Result<()> {
        let public = format!("127.0.0.1:{}", ports[0]);
        let listen = match self.options.proxied {
            true => format!("127.0.0.1:{}", ports[2]),
            false => public.clone(),
        };
        self.public.insert(id, public);
        self.listen.insert(id, listen);
        if self.options.http {
            self.http.insert(id, format!("127.0.0.1:{}", ports[1]));
        }
        if let Some(mb) = self.options.tmpfs_mb {
            let dir = self.data_dir(id);
            std::fs::create_dir_all(&dir)?;
            let out = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
                .arg(&dir)
                .output()?;
            if !out.status.success() {
                return Err(std::io::Error::other(format!(
                    "mounting a tmpfs at {} (needs root): {}",
                    dir.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            self.mounts.push(dir);
        }
        Ok(())
    }

    /// Plans one more replica (the next id, free ports) that starts empty with `--join` and
    /// waits to be added; it counts as a member from now on. Starts nothing. Returns its id.
    pub fn plan_replica(&mut self) -> std::io::Result<u64> {
        let id = self.public.keys().max().map_or(1, |m| m + 1);
        let taken: BTreeSet<&str> = self
            .public
            .values()
            .chain(self.listen.values())
            .chain(self.http.values())
            .map(String::as_str)
            .collect();
        let ports = loop {
            let ports = free_ports(self.ports_per_replica())?;
            if ports
                .iter()
                .all(|p| !taken.contains(format!("127.0.0.1:{p}").as_str()))
            {
                break ports;
            }
        };
        self.plan(id, &ports)?;
        self.joiners.insert(id);
        self.members.insert(id);
        Ok(id)
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

    /// Records a membership change made through the API.
    pub fn set_member(&mut self, id: u64, member: bool) {
        if member {
            self.members.insert(id);
        } else {
            self.members.remove(&id);
        }
    }

    /// Forgets replica `id` (after it was removed): it is no longer among [`Self::addrs`].
    pub fn forget(&mut self, id: u64) {
        self.set_member(id, false);
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

    /// Replica `id`'s advertised address (what peers, clients and workers dial).
    pub fn addr(&self, id: u64) -> &str {
        &self.public[&id]
    }

    /// Where replica `id` listens: its advertised address, or with
    /// [`ClusterOptions::proxied`] the address a proxy at [`Self::addr`] forwards to.
    pub fn listen_addr(&self, id: u64) -> &str {
        &self.listen[&id]
    }

    /// The members' advertised addresses.
    pub fn addrs(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|id| self.public[id].clone())
            .collect()
    }

    /// Replica `id`'s HTTP listener (`/metrics`, `/healthz`, `/readyz`), if it has one.
    pub fn http_addr(&self, id: u64) -> Option<&str> {
        self.http.get(&id).map(String::as_str)
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.base.join(format!("node-{id}"))
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.base.join(format!("node-{id}.log"))
    }

    pub fn cluster_name(&self) -> &str {
        self.options.cluster_name()
    }

    /// The `--peers` flag of the initial members.
    pub fn peers_flag(&self) -> String {
        self.initial
            .iter()
            .map(|id| format!("{id}={}", self.public[id]))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The command line that runs replica `id`.
    pub fn command(&self, id: u64) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("server")
            .args(["--id", &id.to_string()])
            .args(["--listen", self.listen_addr(id)])
            .arg("--data-dir")
            .arg(self.data_dir(id));
        if self.joiners.contains(&id) {
            let others: Vec<&str> = self
                .members
                .iter()
                .filter(|m| **m != id)
                .map(|m| self.addr(*m))
                .collect();
            cmd.args(["--join", &others.join(",")]);
        } else {
            cmd.args(["--peers", &self.peers_flag()]);
        }
        cmd.args(self.options.server_flags());
        if let Some(a) = self.http.get(&id) {
            cmd.args(["--http-listen", a]);
        }
        cmd.envs(self.options.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Starts (or restarts, on the same data dir) replica `id`; its output goes to
    /// [`Self::log_path`].
    pub fn start(&mut self, id: u64) -> std::io::Result<()> {
        self.kill(id)?;
        let proc = Proc::spawn(self.command(id), &self.log_path(id))?;
        self.replicas.insert(id, proc);
        Ok(())
    }

    /// Starts every member.
    pub fn start_all(&mut self) -> std::io::Result<()> {
        for id in self.ids() {
            self.start(id)?;
        }
        Ok(())
    }

    /// The process id of replica `id`, while it runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.replicas.get(&id).map(Proc::pid)
    }

    /// Whether replica `id` runs (a paused one does).
    pub fn is_running(&mut self, id: u64) -> bool {
        self.replicas.get_mut(&id).is_some_and(Proc::running)
    }

    pub fn is_paused(&self, id: u64) -> bool {
        self.replicas.get(&id).is_some_and(Proc::paused)
    }

    /// Members that are not running (killed, or exited by themselves).
    pub fn down(&mut self) -> Vec<u64> {
        self.ids()
            .into_iter()
            .filter(|id| !self.is_running(*id))
            .collect()
    }

    /// How replica `id` exited, once it has (on its own: a fatal error, or being removed).
    pub fn exit_status(&mut self, id: u64) -> Option<ExitStatus> {
        self.replicas
            .get_mut(&id)
            .and_then(|p| p.exited().ok().flatten())
    }

    /// Waits until replica `id`'s process exits on its own; returns its status, or None if it
    /// still runs after `timeout`.
    pub async fn wait_exit(
        &mut self,
        id: u64,
        timeout: Duration,
    ) -> std::io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(proc) = self.replicas.get_mut(&id) else {
                return Err(std::io::Error::other(format!("replica {id} not started")));
            };
            if let Some(status) = proc.exited()? {
                self.replicas.remove(&id);
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn running(&self, id: u64) -> std::io::Result<&Proc> {
        self.replicas
            .get(&id)
            .ok_or_else(|| std::io::Error::other(format!("replica {id} not running")))
    }

    /// SIGKILL: no chance to flush anything. A replica that is not running is left alone.
    pub fn kill(&mut self, id: u64) -> std::io::Result<()> {
        match self.replicas.remove(&id) {
            Some(proc) => proc.kill(),
            None => Ok(()),
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn stop(&mut self, id: u64) -> std::io::Result<ExitStatus> {
        self.running(id)?;
        let proc = self.replicas.remove(&id).expect("checked above");
        proc.terminate()
    }

    /// SIGSTOP replica `id`.
    pub fn pause(&mut self, id: u64) -> std::io::Result<()> {
        self.running(id)?;
        self.replicas
            .get_mut(&id)
            .expect("checked above")
            .pause(true)
    }

    /// SIGCONT replica `id` (nothing to do for one killed since it was paused).
    pub fn resume(&mut self, id: u64) -> std::io::Result<()> {
        match self.replicas.get_mut(&id) {
            Some(proc) => proc.pause(false),
            None => Ok(()),
        }
    }

    /// Deletes what replica `id`'s data dir holds (a lost or wiped disk); it must not run.
    pub fn wipe(&mut self, id: u64) -> std::io::Result<()> {
        if self.is_running(id) {
            return Err(std::io::Error::other(format!(
                "wipe of replica {id}, which still runs"
            )));
        }
        let entries = match std::fs::read_dir(self.data_dir(id)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            r => r?,
        };
        // The contents, not the dir: it may be a mount point.
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

    /// The client configuration [`Self::client`] uses: the options' token and TLS, and a
    /// generous retry budget for fault tests. Callers adjust the timeouts from it.
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig {
            call_timeout: Duration::from_secs(60),
            token: self.options.client_token.clone(),
            tls: self.options.client_tls.clone(),
            ..ClientConfig::default()
        }
    }

    /// A client of the members' advertised addresses.
    pub fn client(&self) -> Client {
        self.client_with(self.client_config())
    }

    /// A client of the members' advertised addresses with `config`.
    pub fn client_with(&self, config: ClientConfig) -> Client {
        Client::with_config(self.addrs(), config).expect("loopback addresses are valid")
    }

    /// Waits until every running, unpaused member names the same leader and that one says it
    /// leads; returns its id.
    pub async fn wait_for_leader(&mut self, timeout: Duration) -> Result<u64, String> {
        let deadline = Instant::now() + timeout;
        let client = self.client_with(ClientConfig {
            request_timeout: Duration::from_secs(1),
            call_timeout: Duration::from_secs(1),
            ..self.client_config()
        });
        let mut last = String::from("no replica answered");
        while Instant::now() < deadline {
            match self.agreed_leader(&client).await {
                Ok(l) => return Ok(l),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("no leader within {timeout:?}: {last}"))
    }

    /// The leader every running, unpaused member names, once it says it leads.
    async fn agreed_leader(&mut self, client: &Client) -> Result<u64, String> {
        let mut leader = None;
        for id in self.ids() {
            if !self.is_running(id) || self.is_paused(id) {
                continue;
            }
            // A running replica that does not answer yet (still starting) has not agreed on
            // anything.
            let s = client
                .cluster_status_of(self.addr(id))
                .await
                .map_err(|e| format!("replica {id}: {e}"))?;
            // An empty replica waiting to be added has no membership and no leader.
            let waiting = self.joiners.contains(&id) || self.unjoined.contains(&id);
            if s.members.is_empty() && waiting {
                continue;
            }
            let named = s
                .leader_id
                .filter(|_| s.role != "candidate")
                .ok_or_else(|| format!("replica {id} knows no leader"))?;
            if leader.is_some_and(|l| l != named) {
                return Err(format!("replicas name leaders {leader:?} and {named}"));
            }
            leader = Some(named);
        }
        let l = leader.ok_or("no running replica")?;
        if !self.is_running(l) {
            return Err(format!("the named leader {l} is not running"));
        }
        let s = client
            .cluster_status_of(self.addr(l))
            .await
            .map_err(|e| format!("leader {l}: {e}"))?;
        match s.role.as_str() {
            "leader" => Ok(l),
            role => Err(format!("replica {l} is named leader but is {role}")),
        }
    }

    /// The last `lines` lines of replica `id`'s log, for failure messages.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        tail(&self.log_path(id), lines)
    }

    /// Stops every process (resuming paused ones first so none is left stopped).
    pub fn shutdown(&mut self) {
        let replicas = std::mem::take(&mut self.replicas).into_values();
        let workers = std::mem::take(&mut self.workers).into_values();
        for mut proc in replicas.chain(workers) {
            if proc.paused() {
                let _ = proc.pause(false);
            }
            let _ = proc.kill();
        }
    }
}

/// The last `lines` lines of the file at `path` (empty if it cannot be read).
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
        for dir in &self.mounts {
            let _ = Command::new("umount").arg("-l").arg(dir).status();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cmd: &Command) -> Vec<String> {
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
        let at = args.iter().position(|a| a == name)?;
        args.get(at + 1).map(String::as_str)
    }

    #[test]
    fn a_proxied_cluster_listens_apart_from_where_it_is_advertised() {
        let dir = tempfile::tempdir().unwrap();
        let options = ClusterOptions {
            proxied: true,
            http: true,
            spares: 1,
            ..ClusterOptions::default()
        };
        let c = Cluster::new(Path::new("flotilla"), 3, dir.path(), options).unwrap();
        assert_eq!(c.ids(), [1, 2, 3]);
        assert_eq!(c.non_members(), [4]);
        let mut all: Vec<&str> = Vec::new();
        for id in 1..=4 {
            assert_ne!(c.addr(id), c.listen_addr(id));
            all.extend([c.addr(id), c.listen_addr(id), c.http_addr(id).unwrap()]);
        }
        let distinct: BTreeSet<&str> = all.iter().copied().collect();
        assert_eq!(distinct.len(), all.len(), "every planned port is distinct");

        // A member listens on its own address and is bootstrapped with the advertised ones.
        let one = args(&c.command(1));
        assert_eq!(flag(&one, "--listen"), Some(c.listen_addr(1)));
        assert_eq!(
            flag(&one, "--peers").unwrap(),
            format!("1={},2={},3={}", c.addr(1), c.addr(2), c.addr(3))
        );
        assert_eq!(flag(&one, "--http-listen"), c.http_addr(1));
        // A spare joins through the members' advertised addresses.
        let spare = args(&c.command(4));
        assert_eq!(flag(&spare, "--peers"), None);
        assert_eq!(
            flag(&spare, "--join").unwrap(),
            [c.addr(1), c.addr(2), c.addr(3)].join(",")
        );
    }

    #[test]
    fn a_planned_replica_is_a_member_that_joins_and_an_unproxied_one_listens_where_advertised() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Cluster::new(
            Path::new("flotilla"),
            2,
            dir.path(),
            ClusterOptions::default(),
        )
        .unwrap();
        let id = c.plan_replica().unwrap();
        assert_eq!(id, 3);
        assert_eq!(c.ids(), [1, 2, 3]);
        assert_eq!(c.addr(3), c.listen_addr(3));
        assert_eq!(c.http_addr(3), None);
        let three = args(&c.command(3));
        assert_eq!(
            flag(&three, "--join").unwrap(),
            [c.addr(1), c.addr(2)].join(",")
        );
        c.forget(3);
        assert_eq!(c.addrs(), [c.addr(1), c.addr(2)]);
        assert_eq!(c.non_members(), [3]);
    }

    #[test]
    fn signalling_a_replica_that_was_never_started_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Cluster::new(
            Path::new("flotilla"),
            1,
            dir.path(),
            ClusterOptions::default(),
        )
        .unwrap();
        assert_eq!(c.pause(1).unwrap_err().to_string(), "replica 1 not running");
        assert_eq!(c.stop(1).unwrap_err().to_string(), "replica 1 not running");
        assert!(c.kill(1).is_ok(), "killing what is not running is a no-op");
        assert!(!c.is_running(1));
        assert_eq!(c.down(), [1]);
    }
}
