//! Durable Raft storage for Flotilla, on RocksDB.
//!
//! Owns everything a replica keeps on disk, in one RocksDB instance per data dir:
//!
//! ```text
//!  column family  key                     value
//!  meta           identity                cluster name + node id (refuse foreign data dirs)
//!                 vote, committed,        openraft's vote / committed / purge pointers
//!                 last_purged
//!                 snapshot                which file in snapshots/ is the latest snapshot
//!                 format                  the format version of the whole data dir
//!  log            index (u64 BE)          versioned bincode of an openraft entry
//!  sm             (empty)                 per-task records of the earlier format, removed on
//!                                         open; kept so older data dirs still open
//!  snapshots/NAME.snap                    the latest snapshot, streamed (see `snapshot`)
//!  acked                                  the last entry reported durable and the vote, kept
//!                                         apart from the WAL (see `acked`)
//! ```
//!
//! A backup is a snapshot file taken from the leader; `backup` reads and checks one, and
//! restores it into a new data dir as the starting point of a new cluster.
//!
//! Durability: a log append is reported flushed only after the WAL is fsynced (a dedicated
//! flusher thread groups fsyncs); votes and snapshot pointers are written with a synchronous write, snapshot files are
//! synced before they are pointed at.
//! The state machine itself writes nothing when it applies: its durable form is the latest
//! snapshot plus the committed log after it, which openraft re-applies at start-up (the log
//! is never purged past the snapshot).
//!
//! Only this crate depends on `rocksdb`.

// openraft's `StorageError` is the error type its storage traits require; it is large by
// design and every caller goes through those traits.
#![allow(clippy::result_large_err)]

mod acked;
mod backup;
mod codec;
mod db;
mod error;
pub mod format6;
mod log_store;
mod migrate;
mod node;
mod snapshot;
mod state_machine;
mod stats;

pub use acked::AckState;
pub use backup::{read_backup, restore, BackupInfo, RestoreSummary};
pub use codec::FORMAT_VERSION;
pub use db::{open, Opened};
pub use error::StoreError;
pub use log_store::LogStore;
pub use node::Node;
pub use state_machine::{SharedState, StateMachine};
pub use stats::{StoreProbe, StoreStats, Timed};

use flotilla_core::{Proposal, Response};

openraft::declare_raft_types!(
    /// Openraft's type configuration for Flotilla.
    pub TypeConfig:
        D = Proposal,
        R = Vec<Response>,
        NodeId = u64,
        Node = Node,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
);

/// Node id type of the cluster.
pub type NodeId = u64;
