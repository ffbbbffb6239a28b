//! Rust client for Flotilla.
//!
//! Give it the addresses of some replicas; it finds the leader, follows leader hints, and
//! retries on leader change, unavailability and timeouts with capped exponential backoff.
//! Every submitted task carries an idempotency key (generated when the caller gives none), so a
//! retried submit can never create a task twice.
//!
//! ```no_run
//! # async fn demo() -> Result<(), flotilla_client::ClientError> {
//! use flotilla_client::Client;
//! use flotilla_core::TaskSpec;
//! let client = Client::new(["127.0.0.1:7001", "127.0.0.1:7002"])?;
//! let ids = client.submit(vec![TaskSpec::new("default", b"echo hi".to_vec())]).await?;
//! let task = client.get(ids[0]).await?;
//! # Ok(()) }
//! ```

mod client;
mod error;
mod pipeline;
mod queues;
mod workers;

pub use client::{Client, ClientConfig, ClusterStatus, Consistency, ListPage, ListQuery, Member};
pub use error::ClientError;
pub use flotilla_core::{Task, TaskId, TaskSpec, TaskState};
pub use pipeline::SubmitPipeline;
pub use queues::{QueueInfo, QueueList, TaskStatus};
pub use tonic::Code;
pub use workers::{Assignment, WorkerEvent, WorkerInfo, WorkerStream};
