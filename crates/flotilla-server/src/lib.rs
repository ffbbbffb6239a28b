//! A Flotilla replica.
//!
//! Owns the I/O shell around the deterministic core: the openraft instance and its peer
//! network over tonic, the client API service, the leader's group-commit [`proposer`], the
//! leader's clock ticks, configuration and shutdown. All of it is served on one listen address.
//!
//! ```text
//!  client ─gRPC─▶ api ──Command──▶ proposer ──Proposal (many commands)──▶ openraft
//!                  │                                                      │ log (RocksDB, fsync)
//!                  └── queries ◀── SharedState ◀── state machine ◀────────┘ commit + apply
//! ```
//!
//! Must not depend on `rocksdb` directly: storage is `flotilla-store`'s.

// `tonic::Status` is the error type tonic's service traits require; boxing it everywhere
// would only add noise at every handler.
#![allow(clippy::result_large_err)]

mod api;
pub mod auth;
pub mod calendar;
mod config;
mod damage;
mod dashboard;
mod dispatch;
mod error;
mod fatal;
mod hangup;
mod health;
mod http;
mod inflight;
mod leader_watch;
mod leadership;
mod listener;
mod membership;
mod network;
mod node;
pub mod peer_auth;
mod peer_wire;
pub mod planted;
pub mod proposer;
mod raft_service;
mod rejections;
mod schedule_api;
mod telemetry;
mod worker_service;
mod workflow_api;

pub use config::{default_max_request_bytes_in_flight, parse_peers, ServerConfig};
pub use error::ServerError;
pub use node::{start, Handover, RunningNode};

/// The openraft instance type of a replica.
pub type Raft = openraft::Raft<flotilla_store::TypeConfig>;
