//! The cluster test kit: a cluster of real `flotilla server` processes (and `flotilla worker`
//! processes) on loopback, each replica with its own port, data dir and log under one base
//! directory. One kit for the three programs that start clusters: the black-box tests in
//! `tests/`, `flotilla bench` and the jepsen suite.
//!
//! ```text
//!   ClusterOptions ──► Cluster::new (plans ports, data dirs; starts nothing)
//!                        │ start / start_all / start_worker
//!                        ▼
//!   child processes ◄── kill (SIGKILL) · stop (SIGTERM) · pause/resume (SIGSTOP/SIGCONT)
//!                        · wipe · restart on the same data · wait_for_leader · client
//! ```
//!
//! With [`ClusterOptions::proxied`] every replica listens on an address of its own and is
//! advertised (in `--peers`/`--join`, to clients and to workers) at another: the fault suite
//! puts its partition proxy between the two.
//!
//! Dev-only: the server crates do not depend on it. It depends on the client library (leader
//! lookup) and the TLS crate (test certificates), never on the server's internals: what it
//! drives is the binary, as an operator would.

mod cluster;
mod options;
mod process;
mod workers;

pub use cluster::Cluster;
pub use options::ClusterOptions;
pub use process::free_ports;
