//! Errors opening a data dir, reading a backup and restoring one. Runtime storage errors are
//! openraft `StorageError`s.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data dir {path}: {message}")]
    Refused { path: PathBuf, message: String },
    #[error("data dir {path} is corrupt or unreadable: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("data dir {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A backup (snapshot file) that cannot be read whole or does not check out.
    #[error("backup {path}: {message}")]
    BadBackup { path: PathBuf, message: String },
    /// A restore that cannot be done as asked (the members given, say).
    #[error("restore: {0}")]
    Restore(String),
}
