//! One child process of the kit (a replica or a worker), the signals it can be sent, its log
//! file, and the free loopback ports a cluster is planned on.

use std::fs::File;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// `n` loopback ports the OS considers free right now (bound together, so distinct).
pub fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// A running (or exited, not yet reaped) child, and whether the kit paused it.
pub(crate) struct Proc {
    child: Child,
    paused: bool,
}

impl Proc {
    /// Spawns `cmd` with stdin closed and stdout and stderr appended to `log`.
    pub(crate) fn spawn(mut cmd: Command, log: &Path) -> std::io::Result<Proc> {
        let out = File::options().create(true).append(true).open(log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        Ok(Proc {
            child,
            paused: false,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn paused(&self) -> bool {
        self.paused
    }

    /// Whether the process still runs (a paused one does).
    pub(crate) fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// How the process ended, once it has.
    pub(crate) fn exited(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    pub(crate) fn signal(&self, sig: Signal) -> std::io::Result<()> {
        kill(Pid::from_raw(self.child.id() as i32), sig).map_err(std::io::Error::other)
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`).
    pub(crate) fn pause(&mut self, pause: bool) -> std::io::Result<()> {
        self.signal(if pause {
            Signal::SIGSTOP
        } else {
            Signal::SIGCONT
        })?;
        self.paused = pause;
        Ok(())
    }

    /// SIGKILL (nothing is flushed) and reap.
    pub(crate) fn kill(mut self) -> std::io::Result<()> {
        // An error here means it already exited; waiting reaps it either way.
        let _ = self.child.kill();
        self.child.wait().map(drop)
    }

    /// SIGTERM (resumed first, should it be paused, so it can act on it) and wait for it to
    /// exit.
    pub(crate) fn terminate(mut self) -> std::io::Result<ExitStatus> {
        self.signal(Signal::SIGTERM)?;
        if self.paused {
            self.signal(Signal::SIGCONT)?;
        }
        self.child.wait()
    }
}
