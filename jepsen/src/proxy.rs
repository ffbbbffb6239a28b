//! Partitions: a harness-owned TCP proxy in front of every replica.
//!
//! Every replica listens on a private port; its *public* address (the one in `--peers`, in
//! Raft's membership and in leader hints) is a proxy listener in this process. When the proxy
//! accepts a connection it finds which process opened it — the socket's inode from
//! `/proc/net/tcp`, then the `/proc/PID/fd` of each replica and worker the harness started —
//! so it knows the directed link (source → replica) every byte travels on. A partition is a
//! set of blocked directed links: the proxy stops reading from a blocked direction, so the
//! bytes stay in kernel buffers exactly as with packets dropped and retransmitted, and flow
//! again at heal. One-way partitions block one direction only.
//!
//! ```text
//!  replica 1 ──▶ proxy(public addr of 2) ──▶ replica 2 (private addr)
//!                 │ blocked(1→2)? stall reads from 1; blocked(2→1)? stall reads from 2
//! ```
//!
//! Only loopback addresses are used. Depends on nothing else in the harness.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// One end of a directed link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Endpoint {
    Node(u64),
    Worker(u64),
    /// The harness's clients and anything the proxy cannot attribute; never partitioned
    /// unless asked explicitly.
    Client,
}

/// The shared table of blocked links. Cheap to clone.
#[derive(Clone)]
pub struct Net {
    inner: Arc<Shared>,
}

struct Shared {
    blocked: Mutex<BTreeSet<(Endpoint, Endpoint)>>,
    /// Bumped on every change so stalled pumps re-check.
    generation: watch::Sender<u64>,
    /// Processes the harness started, by pid.
    pids: Mutex<BTreeMap<i32, Endpoint>>,
}

/// Size of one forwarded chunk.
const CHUNK_BYTES: usize = 64 * 1024;

impl Net {
    pub fn new() -> Net {
        Net {
            inner: Arc::new(Shared {
                blocked: Mutex::new(BTreeSet::new()),
                generation: watch::channel(0).0,
                pids: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    pub fn register_pid(&self, pid: u32, who: Endpoint) {
        let mut pids = self.inner.pids.lock().unwrap_or_else(|p| p.into_inner());
        pids.retain(|_, e| *e != who);
        pids.insert(pid as i32, who);
    }

    /// Replaces the blocked links.
    pub fn set_blocked(&self, links: BTreeSet<(Endpoint, Endpoint)>) {
        *self.inner.blocked.lock().unwrap_or_else(|p| p.into_inner()) = links;
        self.inner.generation.send_modify(|g| *g += 1);
    }

    pub fn heal(&self) {
        self.set_blocked(BTreeSet::new());
    }

    fn is_blocked(&self, from: Endpoint, to: Endpoint) -> bool {
        self.inner
            .blocked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(from, to))
    }

    /// Returns once `from → to` is open.
    async fn wait_open(&self, from: Endpoint, to: Endpoint) {
        let mut rx = self.inner.generation.subscribe();
        while self.is_blocked(from, to) {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Starts a proxy: connections to `public` are forwarded to `private` (replica `node`).
    pub async fn listen(
        &self,
        node: Endpoint,
        public: &str,
        private: String,
    ) -> std::io::Result<()> {
        let listener = TcpListener::bind(public).await?;
        let net = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((inbound, peer)) = listener.accept().await else {
                    continue;
                };
                let net = net.clone();
                let private = private.clone();
                tokio::spawn(async move {
                    let local = inbound.local_addr().ok();
                    let from = match local {
                        Some(local) => net.identify(peer, local),
                        None => Endpoint::Client,
                    };
                    net.wait_open(from, node).await;
                    let Ok(outbound) = TcpStream::connect(&private).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    net.pump(inbound, outbound, from, node).await;
                });
            }
        });
        Ok(())
    }

    async fn pump(&self, a: TcpStream, b: TcpStream, from: Endpoint, to: Endpoint) {
        let (ar, aw) = a.into_split();
        let (br, bw) = b.into_split();
        let forward = self.clone().copy(ar, bw, from, to);
        let backward = self.clone().copy(br, aw, to, from);
        // Either side closing ends the connection.
        tokio::select! {
            _ = forward => {}
            _ = backward => {}
        }
    }

    async fn copy(
        self,
        mut r: tokio::net::tcp::OwnedReadHalf,
        mut w: tokio::net::tcp::OwnedWriteHalf,
        from: Endpoint,
        to: Endpoint,
    ) {
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            self.wait_open(from, to).await;
            let n = match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // A partition that began during the read holds this chunk too.
            self.wait_open(from, to).await;
            if w.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }

    /// Which process opened the connection from `peer` to `local`.
    fn identify(&self, peer: SocketAddr, local: SocketAddr) -> Endpoint {
        let Some(inode) = socket_inode(peer, local) else {
            return Endpoint::Client;
        };
        let needle = format!("socket:[{inode}]");
        let pids = self
            .inner
            .pids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (pid, who) in pids {
            let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                if fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == needle) {
                    return who;
                }
            }
        }
        Endpoint::Client
    }
}

/// The inode of the socket whose local end is `peer` and remote end is `local`, from
/// `/proc/net/tcp` (IPv4 loopback only).
fn socket_inode(peer: SocketAddr, local: SocketAddr) -> Option<u64> {
    let want_local = hex_addr(peer)?;
    let want_remote = hex_addr(local)?;
    let table = fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols.len() > 9 && cols[1] == want_local && cols[2] == want_remote)
            .then(|| cols[9].parse().ok())
            .flatten()
    })
}

/// `127.0.0.1:8080` as `/proc/net/tcp` writes it: `0100007F:1F90`.
fn hex_addr(addr: SocketAddr) -> Option<String> {
    match addr {
        SocketAddr::V4(v4) => {
            let ip = u32::from_le_bytes(v4.ip().octets());
            Some(format!("{ip:08X}:{:04X}", v4.port()))
        }
        SocketAddr::V6(_) => None,
    }
}

/// The blocked links of a named partition. `groups` are components: links between different
/// components are cut both ways. Used by the nemesis; pure.
pub fn cut_between(groups: &[Vec<u64>]) -> BTreeSet<(Endpoint, Endpoint)> {
    let mut out = BTreeSet::new();
    for (i, a) in groups.iter().enumerate() {
        for (j, b) in groups.iter().enumerate() {
            if i == j {
                continue;
            }
            for x in a {
                for y in b {
                    out.insert((Endpoint::Node(*x), Endpoint::Node(*y)));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_addresses_are_little_endian_hex() {
        let a: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(hex_addr(a).unwrap(), "0100007F:1F90");
    }

    #[test]
    fn cutting_two_groups_blocks_both_directions_only_across() {
        let cut = cut_between(&[vec![1], vec![2, 3]]);
        assert_eq!(cut.len(), 4);
        assert!(cut.contains(&(Endpoint::Node(1), Endpoint::Node(2))));
        assert!(cut.contains(&(Endpoint::Node(3), Endpoint::Node(1))));
        assert!(!cut.contains(&(Endpoint::Node(2), Endpoint::Node(3))));
    }

    #[tokio::test]
    async fn a_blocked_link_stalls_and_heal_delivers() {
        let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let private = backend.local_addr().unwrap().to_string();
        let public = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let net = Net::new();
        net.register_pid(std::process::id(), Endpoint::Node(9));
        net.listen(Endpoint::Node(1), &public, private)
            .await
            .unwrap();
        let mut client = TcpStream::connect(&public).await.unwrap();
        let (mut server, _) = backend.accept().await.unwrap();
        client.write_all(b"a").await.unwrap();
        let mut b = [0u8; 1];
        server.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"a");

        net.set_blocked([(Endpoint::Node(9), Endpoint::Node(1))].into());
        client.write_all(b"b").await.unwrap();
        let stalled = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            server.read_exact(&mut b),
        )
        .await;
        assert!(stalled.is_err(), "bytes crossed a blocked link");
        // The other direction is still open: a one-way partition.
        server.write_all(b"c").await.unwrap();
        client.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"c");

        net.heal();
        server.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"b");
    }
}
