//! Snapshot files: the state image streamed to a file record by record, and read back the same
//! way — never one value holding the whole state, never a write into the WAL the Raft log
//! shares.
//!
//! ```text
//!  "FLOTSNAP" · format version (u8) · frame* ;  frame = len (u32 LE) · crc32 (u32 LE) · bytes
//!  frames (bincode): Meta(openraft's snapshot meta) · Record(image record)* · End{records}
//! ```
//!
//! A snapshot is written to `snapshots/NAME.tmp`, synced as it grows (so the final sync is
//! short and the disk is never handed hundreds of megabytes at once), renamed to
//! `snapshots/NAME.snap` and the directory synced; only then does the meta column family point
//! at it. The same bytes are what openraft streams, in chunks, to a follower that needs them.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use flotilla_core::{ImageRecord, ImageRecordRef, State, StateBuilder, StateView};
use openraft::SnapshotMeta;
use serde::{Deserialize, Serialize};

use crate::codec::FORMAT_VERSION;
use crate::{Node, NodeId};

const MAGIC: &[u8; 8] = b"FLOTSNAP";
/// Largest frame accepted when reading (a record holds at most a payload, a result and a
/// checkpoint of 1 MiB each, plus small fields).
const MAX_FRAME_BYTES: u32 = 16 << 20;
/// The writer syncs whenever this much was written since the last sync.
const SYNC_EVERY_BYTES: u64 = 8 << 20;

pub(crate) const DIR: &str = "snapshots";

/// A frame as read.
#[derive(Deserialize)]
enum Frame {
    Meta(SnapshotMeta<NodeId, Node>),
    Record(ImageRecord),
    End { records: u64 },
}

/// A frame to write; encodes exactly as the [`Frame`] it stands for.
#[derive(Serialize)]
enum FrameRef<'a> {
    Meta(&'a SnapshotMeta<NodeId, Node>),
    Record(ImageRecordRef<'a>),
    End { records: u64 },
}

/// Where the meta column family says the current snapshot is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Pointer {
    /// File name inside `snapshots/`.
    pub file: String,
    pub meta: SnapshotMeta<NodeId, Node>,
    pub bytes: u64,
}

pub(crate) fn dir_of(data_dir: &Path) -> PathBuf {
    data_dir.join(DIR)
}

/// A file name for a snapshot with this meta.
pub(crate) fn file_name(meta: &SnapshotMeta<NodeId, Node>) -> String {
    format!("{}.snap", meta.snapshot_id.replace(['/', '.'], "_"))
}

struct Counting<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn write_frame<W: Write>(
    out: &mut W,
    frame: &FrameRef<'_>,
    scratch: &mut Vec<u8>,
) -> std::io::Result<()> {
    scratch.clear();
    bincode::serialize_into(&mut *scratch, frame).map_err(std::io::Error::other)?;
    let len = u32::try_from(scratch.len())
        .ok()
        .filter(|l| *l <= MAX_FRAME_BYTES)
        .ok_or_else(|| {
            std::io::Error::other(format!("snapshot frame of {} bytes", scratch.len()))
        })?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(&crc32fast::hash(scratch).to_le_bytes())?;
    out.write_all(scratch)
}

/// Writes the snapshot of `view` with `meta` into `snapshots/` and returns its file name and
/// size. Blocking: call from a blocking thread.
pub(crate) fn write(
    data_dir: &Path,
    meta: &SnapshotMeta<NodeId, Node>,
    view: &StateView,
) -> std::io::Result<(String, u64)> {
    let dir = dir_of(data_dir);
    std::fs::create_dir_all(&dir)?;
    let name = file_name(meta);
    let tmp = dir.join(format!("{name}.tmp"));
    let file = File::create(&tmp)?;
    let mut out = Counting {
        inner: BufWriter::with_capacity(1 << 20, file),
        written: 0,
    };
    out.write_all(MAGIC)?;
    out.write_all(&[FORMAT_VERSION])?;
    let mut scratch = Vec::new();
    write_frame(&mut out, &FrameRef::Meta(meta), &mut scratch)?;
    let mut records = 0u64;
    let mut synced = 0u64;
    for r in view.records() {
        write_frame(&mut out, &FrameRef::Record(r), &mut scratch)?;
        records += 1;
        if out.written - synced >= SYNC_EVERY_BYTES {
            out.flush()?;
            out.inner.get_ref().sync_data()?;
            synced = out.written;
        }
    }
    write_frame(&mut out, &FrameRef::End { records }, &mut scratch)?;
    out.flush()?;
    let bytes = out.written;
    let file = out.inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, dir.join(&name))?;
    File::open(&dir)?.sync_all()?;
    Ok((name, bytes))
}

fn corrupt(what: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("snapshot: {what}"))
}

/// Copies every byte read from `inner` to `copy` (when given).
struct Tee<R, W> {
    inner: R,
    copy: Option<W>,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(c) = &mut self.copy {
            c.write_all(&buf[..n])?;
        }
        Ok(n)
    }
}

/// Reads a whole snapshot from `input` (from its start), checking every frame, and builds the
/// state; with `copy`, every byte read is also written there. Blocking.
pub(crate) fn read<R: Read, W: Write>(
    input: R,
    copy: Option<W>,
) -> std::io::Result<(SnapshotMeta<NodeId, Node>, State)> {
    let mut input = Tee {
        inner: BufReader::with_capacity(1 << 20, input),
        copy,
    };
    let mut head = [0u8; 9];
    input
        .read_exact(&mut head)
        .map_err(|_| corrupt("shorter than its header"))?;
    if &head[..8] != MAGIC {
        return Err(corrupt("not a snapshot file (bad magic)"));
    }
    if head[8] != FORMAT_VERSION {
        return Err(corrupt(format!(
            "format version {} (this release reads {FORMAT_VERSION})",
            head[8]
        )));
    }
    let mut buf = Vec::new();
    let mut next = |buf: &mut Vec<u8>| -> std::io::Result<Frame> {
        let mut h = [0u8; 8];
        input.read_exact(&mut h).map_err(|_| corrupt("truncated"))?;
        let len = u32::from_le_bytes(h[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(h[4..].try_into().expect("4 bytes"));
        if len > MAX_FRAME_BYTES {
            return Err(corrupt(format!("frame of {len} bytes")));
        }
        buf.resize(len as usize, 0);
        input.read_exact(buf).map_err(|_| corrupt("truncated"))?;
        if crc32fast::hash(buf) != crc {
            return Err(corrupt("checksum mismatch"));
        }
        bincode::deserialize(buf).map_err(corrupt)
    };
    let Frame::Meta(meta) = next(&mut buf)? else {
        return Err(corrupt("first frame is not the meta"));
    };
    let mut builder = StateBuilder::new();
    let mut records = 0u64;
    loop {
        match next(&mut buf)? {
            Frame::Record(r) => {
                builder.push(r).map_err(corrupt)?;
                records += 1;
            }
            Frame::End { records: n } if n == records => break,
            Frame::End { records: n } => {
                return Err(corrupt(format!(
                    "{records} records, the end frame says {n}"
                )))
            }
            Frame::Meta(_) => return Err(corrupt("second meta frame")),
        }
    }
    let state = builder.finish().map_err(corrupt)?;
    if let Some(c) = &mut input.copy {
        c.flush()?;
    }
    Ok((meta, state))
}

/// Deletes every file in `snapshots/` except `keep`: older snapshots, unfinished writes and
/// transfers.
pub(crate) fn remove_others(data_dir: &Path, keep: Option<&str>) -> std::io::Result<()> {
    let dir = dir_of(data_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        let name = e.file_name();
        if Some(name.to_string_lossy().as_ref()) != keep {
            std::fs::remove_file(e.path())?;
        }
    }
    Ok(())
}
