//! Rust client for Flotilla.
//!
//! Give it the addresses of some replicas; it remembers the leader from every successful call,
//! hint and probe, asks every replica at once when it knows none, retries elsewhere at once
//! after a failure (backing off only when every replica failed), skips addresses that refused
//! connections, and moves a call stuck on a leader that stopped answering to a newer leader as
//! soon as another replica names one (`routing`, `client::Client::route`). Every submitted
//! task carries an idempotency key (generated when the caller gives none), so a retried or
//! duplicated submit can never create a task twice. Concurrent `submit` calls share one
//! `SubmitStream` (`pipeline`), each still its own request.
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

mod backup;
mod client;
mod error;
mod membership;
mod pipeline;
mod queues;
mod routing;
mod schedules;
mod workers;
mod workflows;

pub use backup::SnapshotExport;
pub use client::{
    tls_from_env, tls_from_files, token_from_env, token_from_file, Client, ClientConfig,
    ClusterStatus, Consistency, ListPage, ListQuery, Member,
};
pub use error::ClientError;
pub use flotilla_core::{FlowLimits, RateLimit};
pub use flotilla_core::{NamedTask, Task, TaskId, TaskSpec, TaskState, WhyLine};
pub use flotilla_core::{Overlap, Schedule, ScheduleSpec};
pub use flotilla_proto::MAX_OUTCOMES_PER_CALL;
pub use flotilla_tls::ClientTls;
pub use membership::{AddedReplica, Transferred};
pub use pipeline::SubmitPipeline;
pub use queues::{QueueInfo, QueueLimit, QueueList, TaskStatus};
pub use tonic::Code;
pub use workers::{Assignment, Outcome, WorkerEvent, WorkerInfo, WorkerStream};
pub use workflows::{SubmittedWorkflow, WorkflowStatus, WorkflowTaskStatus};
