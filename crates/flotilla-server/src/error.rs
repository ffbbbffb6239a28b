//! Server errors, and their mapping to gRPC statuses — the only place that mapping happens.

use flotilla_core::CommandError;
use flotilla_proto::LEADER_HINT_KEY;
use tonic::{Code, Status};

/// Fatal errors starting or running a replica.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] flotilla_store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("raft: {0}")]
    Raft(String),
    /// This replica was removed from the membership; it stopped serving.
    #[error("{0}")]
    Removed(String),
    /// The replica stopped on an error it cannot recover from (see `fatal`).
    #[error("replica stopped: {0}")]
    Fatal(String),
}

/// Why an API call did not succeed; converted to a [`Status`] in one place.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("invalid {field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// This replica is not the leader; `leader` is the hint (id, address) when known.
    #[error("not the leader")]
    NotLeader { leader: Option<(u64, String)> },
    /// Retryable: no quorum, shutting down, overloaded.
    #[error("{0}")]
    Unavailable(String),
    /// A limit was hit (the message names it); retry later, after the backlog drained.
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Internal(String),
    /// The caller's token does not allow this (see `auth`).
    #[error("{0}")]
    PermissionDenied(String),
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Invalid { field, message } => ApiError::Invalid { field, message },
            CommandError::NotFound(id) => ApiError::NotFound(format!("task {id} not found")),
            e @ CommandError::Removed(_) => ApiError::NotFound(e.to_string()),
            e @ CommandError::LimitExceeded { .. } => ApiError::ResourceExhausted(e.to_string()),
            e @ (CommandError::WrongState { .. }
            | CommandError::StaleAttempt { .. }
            | CommandError::DoesNotFit { .. }) => ApiError::FailedPrecondition(e.to_string()),
            e @ CommandError::UnknownWorker(_) => ApiError::NotFound(e.to_string()),
            e @ CommandError::DuplicateWorker(_) => ApiError::AlreadyExists(e.to_string()),
            e @ CommandError::UnknownWorkflow(_) => ApiError::NotFound(e.to_string()),
            e @ CommandError::UnknownSchedule(_) => ApiError::NotFound(e.to_string()),
        }
    }
}

impl From<flotilla_proto::ConvertError> for ApiError {
    fn from(e: flotilla_proto::ConvertError) -> Self {
        ApiError::Invalid {
            field: e.field,
            message: e.message,
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        match e {
            ApiError::Invalid { field, message } => {
                Status::invalid_argument(format!("invalid {field}: {message}"))
            }
            ApiError::NotFound(m) => Status::not_found(m),
            ApiError::FailedPrecondition(m) => Status::failed_precondition(m),
            ApiError::AlreadyExists(m) => Status::already_exists(m),
            ApiError::NotLeader { leader } => {
                let mut status = Status::new(
                    Code::Unavailable,
                    match &leader {
                        Some((id, addr)) => format!("not the leader; leader is {id} at {addr}"),
                        None => "not the leader; no leader known yet".to_string(),
                    },
                );
                if let Some((id, addr)) = leader {
                    if let Ok(v) = format!("{id}={addr}").parse() {
                        status.metadata_mut().insert(LEADER_HINT_KEY, v);
                    }
                }
                status
            }
            ApiError::Unavailable(m) => Status::unavailable(m),
            ApiError::ResourceExhausted(m) => Status::resource_exhausted(m),
            ApiError::Internal(m) => Status::internal(m),
            ApiError::PermissionDenied(m) => Status::permission_denied(m),
        }
    }
}
