//! The kit's worker processes: `flotilla worker --cluster ADDRS --id ID`, each with its log in
//! `worker-ID.log` under the cluster's base directory.

use std::path::PathBuf;
use std::process::{Command, ExitStatus};

use crate::cluster::{tail, Cluster};
use crate::process::Proc;

impl Cluster {
    /// Starts (or restarts) worker `id` against the members now, with
    /// [`crate::ClusterOptions::worker_args`] and then `extra` flags.
    pub fn start_worker(&mut self, id: &str, extra: &[&str]) -> std::io::Result<()> {
        self.kill_worker(id)?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("worker")
            .args(["--cluster", &self.addrs().join(",")])
            .args(&self.options.worker_args)
            .args(["--id", id])
            .args(extra)
            .envs(self.options.env.iter().map(|(k, v)| (k, v)));
        let proc = Proc::spawn(cmd, &self.worker_log_path(id))?;
        self.workers.insert(id.to_string(), proc);
        Ok(())
    }

    pub fn worker_log_path(&self, id: &str) -> PathBuf {
        self.base.join(format!("worker-{id}.log"))
    }

    /// The last `lines` lines of worker `id`'s log.
    pub fn worker_log_tail(&self, id: &str, lines: usize) -> String {
        tail(&self.worker_log_path(id), lines)
    }

    /// The workers started and not killed.
    pub fn worker_ids(&self) -> Vec<String> {
        self.workers.keys().cloned().collect()
    }

    /// The process id of worker `id`, while it runs.
    pub fn worker_pid(&self, id: &str) -> Option<u32> {
        self.workers.get(id).map(Proc::pid)
    }

    fn worker(&mut self, id: &str) -> std::io::Result<&mut Proc> {
        self.workers
            .get_mut(id)
            .ok_or_else(|| std::io::Error::other(format!("worker {id} not running")))
    }

    /// SIGKILL worker `id` (its running commands are orphaned, as in a machine loss). A worker
    /// that is not running is left alone.
    pub fn kill_worker(&mut self, id: &str) -> std::io::Result<()> {
        match self.workers.remove(id) {
            Some(proc) => proc.kill(),
            None => Ok(()),
        }
    }

    /// SIGTERM worker `id` (it drains) without waiting for it.
    pub fn terminate_worker(&mut self, id: &str) -> std::io::Result<()> {
        self.worker(id)?.signal(nix::sys::signal::Signal::SIGTERM)
    }

    /// The exit status of worker `id` once it has exited, `None` while it runs.
    pub fn worker_exited(&mut self, id: &str) -> std::io::Result<Option<ExitStatus>> {
        self.worker(id)?.exited()
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`) worker `id`.
    pub fn pause_worker(&mut self, id: &str, pause: bool) -> std::io::Result<()> {
        self.worker(id)?.pause(pause)
    }
}
