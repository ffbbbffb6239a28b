//! Cutting one replica off from its peers on loopback, for `bench failover --kinds isolate`:
//! clients still reach it (so calls can get stuck on a leader that lost its quorum), but no
//! peer message passes either way. Two kinds of iptables rules (OUTPUT chain, DROP):
//! - connections open now between the replica and a peer, found in `/proc` (each process's
//!   socket inodes matched against `/proc/net/tcp`), by their port pair, both directions;
//! - new connections: every replica process goes into its own cgroup (v2), and the isolated
//!   replica's packets to the others' ports and theirs to its port are dropped. (A socket
//!   keeps the cgroup it was created in, hence the first kind for connections already open.)
//!
//! Needs root and a cgroup2 mount; everything made is undone by [`Isolation::heal`] or on
//! drop.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Where cgroup v2 is mounted, if anywhere.
fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, path, fs) = (f.next()?, f.next()?, f.next()?);
        (fs == "cgroup2").then(|| PathBuf::from(path))
    })
}

/// One replica: its process and the port it listens on.
#[derive(Debug, Clone, Copy)]
pub struct Replica {
    pub pid: u32,
    pub port: u16,
}

/// Rules and cgroups in place; removed on heal or drop.
pub struct Isolation {
    root: PathBuf,
    groups: Vec<(PathBuf, u32)>,
    rules: Vec<Vec<String>>,
}

fn iptables(op: &str, rule: &[String]) -> Result<()> {
    let out = Command::new("iptables")
        .arg(op)
        .arg("OUTPUT")
        .args(rule)
        .output()
        .context("running iptables (isolate needs root and iptables)")?;
    if !out.status.success() {
        bail!(
            "iptables {op} OUTPUT {}: {}",
            rule.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Isolation {
    /// Cuts `victim` off from `others`.
    pub fn cut(victim: Replica, others: &[Replica]) -> Result<Isolation> {
        let root = cgroup2_root().context("isolate needs a cgroup2 mount")?;
        let mut iso = Isolation {
            root: root.clone(),
            groups: Vec::new(),
            rules: Vec::new(),
        };
        let group = |iso: &mut Isolation, r: Replica| -> Result<String> {
            let name = format!("flotilla-isolate-{}", r.pid);
            let dir = root.join(&name);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating cgroup {}", dir.display()))?;
            std::fs::write(dir.join("cgroup.procs"), r.pid.to_string())
                .with_context(|| format!("moving process {} into {}", r.pid, dir.display()))?;
            iso.groups.push((dir, r.pid));
            Ok(name)
        };
        let own = |pid: u32| sockets_of(pid);
        let victim_sockets = own(victim.pid)?;
        for o in others {
            let theirs = own(o.pid)?;
            for &(local, remote) in &victim_sockets {
                // The victim's connection to the peer's port, or the peer's to the victim's.
                let peer_link = remote == o.port
                    || (local == victim.port && theirs.iter().any(|(l, _)| *l == remote));
                if !peer_link {
                    continue;
                }
                for (sport, dport) in [(local, remote), (remote, local)] {
                    let rule: Vec<String> = [
                        "-p".to_string(),
                        "tcp".into(),
                        "-s".into(),
                        "127.0.0.1".into(),
                        "--sport".into(),
                        sport.to_string(),
                        "-d".into(),
                        "127.0.0.1".into(),
                        "--dport".into(),
                        dport.to_string(),
                        "-j".into(),
                        "DROP".into(),
                    ]
                    .to_vec();
                    iptables("-I", &rule)?;
                    iso.rules.push(rule);
                }
            }
        }
        let v = group(&mut iso, victim)?;
        for o in others {
            let g = group(&mut iso, *o)?;
            for (from, to) in [(&v, o.port), (&g, victim.port)] {
                let rule: Vec<String> = [
                    "-m",
                    "cgroup",
                    "--path",
                    from,
                    "-p",
                    "tcp",
                    "-d",
                    "127.0.0.1",
                    "--dport",
                ]
                .iter()
                .map(|s| s.to_string())
                .chain([to.to_string(), "-j".into(), "DROP".into()])
                .collect();
                iptables("-I", &rule)?;
                iso.rules.push(rule);
            }
        }
        Ok(iso)
    }

    /// Opens the links again and removes the cgroups.
    pub fn heal(mut self) -> Result<()> {
        self.undo()
    }

    fn undo(&mut self) -> Result<()> {
        let mut first_err = None;
        for rule in std::mem::take(&mut self.rules) {
            if let Err(e) = iptables("-D", &rule) {
                first_err.get_or_insert(e);
            }
        }
        for (dir, pid) in std::mem::take(&mut self.groups) {
            // Back to the root group (a process that exited meanwhile is simply gone).
            let _ = std::fs::write(self.root.join("cgroup.procs"), pid.to_string());
            let _ = remove_group(&dir);
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// The (local port, remote port) of every established IPv4 TCP connection of process `pid`.
fn sockets_of(pid: u32) -> Result<Vec<(u16, u16)>> {
    let mut inodes = std::collections::HashSet::new();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("reading the open files of process {pid}"))?;
    for fd in fds.flatten() {
        if let Ok(target) = std::fs::read_link(fd.path()) {
            let t = target.to_string_lossy();
            if let Some(inode) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                inodes.insert(inode.to_string());
            }
        }
    }
    let table = std::fs::read_to_string("/proc/net/tcp").context("reading /proc/net/tcp")?;
    let port = |addr: &str| {
        addr.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    Ok(table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode; 01 = ESTABLISHED.
            (f.len() > 9 && f[3] == "01" && inodes.contains(f[9]))
                .then(|| Some((port(f[1])?, port(f[2])?)))
                .flatten()
        })
        .collect())
}

fn remove_group(dir: &Path) -> std::io::Result<()> {
    std::fs::remove_dir(dir)
}

impl Drop for Isolation {
    fn drop(&mut self) {
        let _ = self.undo();
    }
}
