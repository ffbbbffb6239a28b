//! Client errors.

/// Why a call failed. `Rejected` is final (the server refused the request and nothing
/// happened); `Unavailable` means the outcome is unknown after every retry.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("no replica addresses given")]
    NoEndpoints,
    #[error("invalid replica address {addr:?}: {message}")]
    BadAddress { addr: String, message: String },
    #[error("invalid token: {0}")]
    BadToken(String),
    /// The TLS files cannot be used (the message names the file and the problem).
    #[error("invalid tls settings: {0}")]
    BadTls(String),
    /// The server answered with a final error (invalid argument, not found, ...).
    #[error("{}", .0.message())]
    Rejected(Box<tonic::Status>),
    /// No replica could complete the call before the deadline.
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    #[error("bad response from server: {0}")]
    BadResponse(String),
    /// Refused before sending: the request itself is invalid.
    #[error("{0}")]
    BadRequest(String),
}

impl ClientError {
    /// The gRPC code of a server rejection.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Rejected(s) => Some(s.code()),
            _ => None,
        }
    }
}
