//! Backups: the leader's snapshot file, streamed to the caller ([`Client::export_snapshot`]).
//!
//! The client checks the stream's framing only (chunks in order, no gap, the announced size
//! reached); the file itself is self-checking and the caller verifies it once written (the
//! `flotilla` binary reads it back through `flotilla-store`).

use std::time::Duration;

use flotilla_proto::pb;
use tonic::Streaming;

use crate::{Client, ClientError};

/// Longest wait for the next chunk once the export has started.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(30);

/// A snapshot file arriving from the leader, chunk by chunk ([`SnapshotExport::next_chunk`]).
pub struct SnapshotExport {
    /// The last log entry the snapshot covers.
    pub last_log_index: u64,
    pub last_log_term: u64,
    /// Size of the whole file.
    pub total_bytes: u64,
    /// Bytes handed out so far.
    received: u64,
    /// The first chunk, read to learn the above, not yet handed out.
    first: Option<Vec<u8>>,
    stream: Streaming<pb::SnapshotChunk>,
}

impl Client {
    /// Asks the leader for a backup: it builds a snapshot covering everything acknowledged so
    /// far (waiting up to `build_timeout`) and streams the file. Needs an admin token when the
    /// cluster checks tokens.
    pub async fn export_snapshot(
        &self,
        build_timeout: Duration,
    ) -> Result<SnapshotExport, ClientError> {
        let req = pb::ExportSnapshotRequest {
            timeout_ms: u64::try_from(build_timeout.as_millis()).unwrap_or(u64::MAX),
        };
        let mut stream = self
            .call("export snapshot", build_timeout, |mut c| async move {
                c.export_snapshot(req).await
            })
            .await?;
        let first = next(&mut stream)
            .await?
            .ok_or_else(|| ClientError::BadResponse("snapshot export sent no data".into()))?;
        if first.offset != 0 || first.data.is_empty() {
            return Err(ClientError::BadResponse(format!(
                "snapshot export started at byte {} with {} bytes",
                first.offset,
                first.data.len()
            )));
        }
        Ok(SnapshotExport {
            last_log_index: first.last_log_index,
            last_log_term: first.last_log_term,
            total_bytes: first.total_bytes,
            received: 0,
            first: Some(first.data),
            stream,
        })
    }
}

async fn next(
    stream: &mut Streaming<pb::SnapshotChunk>,
) -> Result<Option<pb::SnapshotChunk>, ClientError> {
    tokio::time::timeout(CHUNK_TIMEOUT, stream.message())
        .await
        .map_err(|_| {
            ClientError::Unavailable(format!(
                "snapshot export: no data for {}s",
                CHUNK_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|s| ClientError::Unavailable(format!("snapshot export: {}", s.message())))
}

impl SnapshotExport {
    /// The next piece of the file, in order; `None` once the whole file arrived. An error
    /// means the export broke off: what was received is not a whole file.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        let data = match self.first.take() {
            Some(d) => d,
            None => match next(&mut self.stream).await? {
                None if self.received == self.total_bytes => return Ok(None),
                None => {
                    return Err(ClientError::Unavailable(format!(
                        "snapshot export ended at byte {} of {}",
                        self.received, self.total_bytes
                    )))
                }
                Some(c) if c.offset != self.received || c.total_bytes != self.total_bytes => {
                    return Err(ClientError::BadResponse(format!(
                        "snapshot chunk at byte {} of {} where byte {} of {} was expected",
                        c.offset, c.total_bytes, self.received, self.total_bytes
                    )))
                }
                Some(c) => c.data,
            },
        };
        self.received += data.len() as u64;
        if self.received > self.total_bytes {
            return Err(ClientError::BadResponse(format!(
                "snapshot export sent more than the {} bytes it announced",
                self.total_bytes
            )));
        }
        Ok(Some(data))
    }
}
