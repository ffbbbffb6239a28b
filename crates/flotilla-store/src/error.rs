//! Errors opening a data dir. Runtime storage errors are openraft `StorageError`s.

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
}
