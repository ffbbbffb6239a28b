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

use crate::codec::{FORMAT_VERSION, OLDEST_SNAPSHOT_VERSION};
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
    read_counted(input, copy).map(|r| (r.meta, r.state))
}

/// A snapshot as [`read_counted`] read it.
pub(crate) struct ReadBack {
    pub meta: SnapshotMeta<NodeId, Node>,
    pub state: State,
    /// Records in the file, as its end frame confirmed.
    pub records: u64,
    /// Whether bytes follow the end frame (never in a file this crate wrote; a backup with
    /// them is refused, see `backup`).
    pub trailing: bool,
}

/// [`read`], also counting the records and looking past the end frame.
pub(crate) fn read_counted<R: Read, W: Write>(
    input: R,
    copy: Option<W>,
) -> std::io::Result<ReadBack> {
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
    if !(OLDEST_SNAPSHOT_VERSION..=FORMAT_VERSION).contains(&head[8]) {
        return Err(corrupt(format!(
            "format version {} (this release reads {OLDEST_SNAPSHOT_VERSION}..={FORMAT_VERSION})",
            head[8]
        )));
    }
    let mut buf = Vec::new();
    // Versions before 7 hold the frozen version 6 image records.
    let version = head[8];
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
        if version < 7 {
            let frame: crate::format6::Frame = bincode::deserialize(buf).map_err(corrupt)?;
            return Ok(match frame {
                crate::format6::Frame::Meta(m) => Frame::Meta(m),
                crate::format6::Frame::Record(r) => Frame::Record(r.into()),
                crate::format6::Frame::End { records } => Frame::End { records },
            });
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
    let mut rest = [0u8; 1];
    let trailing = input.inner.read(&mut rest)? != 0;
    Ok(ReadBack {
        meta,
        state,
        records,
        trailing,
    })
}

/// The meta of every complete snapshot file in `snapshots/` whose header and meta frame read
/// well (the rest of each file is checked when it is loaded), by file name.
pub(crate) fn complete_files(
    data_dir: &Path,
) -> std::io::Result<Vec<(String, SnapshotMeta<NodeId, Node>)>> {
    let dir = dir_of(data_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".snap") {
            continue;
        }
        if let Ok(meta) = read_meta(File::open(e.path())?) {
            out.push((name, meta));
        }
    }
    Ok(out)
}

/// Reads only the header and the meta frame of a snapshot.
fn read_meta<R: Read>(input: R) -> std::io::Result<SnapshotMeta<NodeId, Node>> {
    let mut input = BufReader::new(input);
    let mut head = [0u8; 17];
    input.read_exact(&mut head)?;
    if &head[..8] != MAGIC || !(OLDEST_SNAPSHOT_VERSION..=FORMAT_VERSION).contains(&head[8]) {
        return Err(corrupt("not a snapshot file of this format"));
    }
    let len = u32::from_le_bytes(head[9..13].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(head[13..17].try_into().expect("4 bytes"));
    if len > MAX_FRAME_BYTES {
        return Err(corrupt(format!("frame of {len} bytes")));
    }
    let mut buf = vec![0u8; len as usize];
    input.read_exact(&mut buf)?;
    if crc32fast::hash(&buf) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    match bincode::deserialize(&buf).map_err(corrupt)? {
        Frame::Meta(meta) => Ok(meta),
        _ => Err(corrupt("first frame is not the meta")),
    }
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

#[cfg(test)]
mod tests {
    use flotilla_core::{Command, TaskSpec};
    use openraft::{CommittedLeaderId, LogId, Membership, StoredMembership};

    use super::*;

    fn meta(index: u64) -> SnapshotMeta<NodeId, Node> {
        let nodes: std::collections::BTreeMap<u64, Node> =
            [(1, Node::pinned("10.0.0.1:7400", "inc-1"))].into();
        SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(2, 1), index)),
            last_membership: StoredMembership::new(
                Some(LogId::new(CommittedLeaderId::new(1, 1), 1)),
                Membership::new(vec![[1].into()], nodes),
            ),
            snapshot_id: format!("2-1-{index}-0"),
        }
    }

    fn state(n: usize) -> State {
        let mut s = State::new();
        let mut spec = TaskSpec::new("q", vec![5u8; 100]);
        for i in 0..n {
            spec.idempotency_key = Some(format!("k{i}"));
            s.apply(&Command::submit(1, vec![spec.clone()]));
        }
        s
    }

    fn image(s: &State) -> Vec<u8> {
        let mut out = Vec::new();
        for r in s.view().records() {
            bincode::serialize_into(&mut out, &r).unwrap();
        }
        out
    }

    #[test]
    fn written_snapshots_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let s = state(1000);
        let (name, bytes) = write(dir.path(), &meta(7), &s.view()).unwrap();
        let path = dir_of(dir.path()).join(&name);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), bytes);
        let (m, back) = read(File::open(&path).unwrap(), None::<File>).unwrap();
        assert_eq!(m, meta(7));
        assert_eq!(image(&back), image(&s));
        // A copy made while reading is the same file.
        let mut copy = Vec::new();
        read(File::open(&path).unwrap(), Some(&mut copy)).unwrap();
        assert_eq!(copy, std::fs::read(&path).unwrap());
    }

    /// The view is what gets written, whatever `apply` does to the state meanwhile.
    #[test]
    fn the_snapshot_holds_the_view_not_later_writes() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = state(600);
        let view = s.view();
        let frozen = image(&s);
        for i in 0..300 {
            s.apply(&Command::Cancel {
                now_ms: 2,
                task_id: flotilla_core::TaskId(i + 1),
            });
        }
        s.apply(&Command::submit(
            3,
            vec![TaskSpec::new("q", b"later".to_vec())],
        ));
        let (name, _) = write(dir.path(), &meta(9), &view).unwrap();
        let (_, back) = read(
            File::open(dir_of(dir.path()).join(name)).unwrap(),
            None::<File>,
        )
        .unwrap();
        assert_eq!(image(&back), frozen);
        assert_ne!(image(&s), frozen);
    }

    #[test]
    fn damaged_snapshots_are_refused_naming_the_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (name, _) = write(dir.path(), &meta(7), &state(50).view()).unwrap();
        let path = dir_of(dir.path()).join(&name);
        let good = std::fs::read(&path).unwrap();
        let refuse = |bytes: Vec<u8>| read(&bytes[..], None::<File>).unwrap_err().to_string();

        let mut flipped = good.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x40;
        assert!(refuse(flipped).contains("checksum mismatch"));
        assert!(refuse(good[..good.len() - 3].to_vec()).contains("truncated"));
        let mut magic = good.clone();
        magic[0] = b'X';
        assert!(refuse(magic).contains("bad magic"));
        let mut version = good.clone();
        version[8] = 9;
        assert!(refuse(version).contains("format version 9"));
        let mut huge = good.clone();
        huge[9..13].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(refuse(huge).contains("frame of"));
    }

    /// Pinned bytes: the file header and the meta frame of a snapshot. A change of either is a
    /// format change (bump `codec::FORMAT_VERSION`).
    #[test]
    fn snapshot_file_encoding_is_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let (name, _) = write(dir.path(), &meta(7), &State::new().view()).unwrap();
        let bytes = std::fs::read(dir_of(dir.path()).join(name)).unwrap();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, PINNED_EMPTY, "\n{hex}");
    }

    /// A snapshot file of the format 6 release holding every record kind (the core's golden
    /// version 6 image: tasks with spec extras, a flow record, a schedule, an attempt history)
    /// is read through the frozen version 6 records; today's decoder alone would not read it.
    #[test]
    fn a_format_6_snapshot_file_with_every_record_kind_is_read() {
        let hex = include_str!("../../flotilla-core/testdata/image_v6.hex");
        let image: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        // The file as format 6 wrote it: magic, version 6, the meta frame, one frame per
        // record (the `Record` variant, then the record's bytes), the end frame.
        let mut file = Vec::new();
        file.extend_from_slice(MAGIC);
        file.push(6);
        let mut scratch = Vec::new();
        write_frame(&mut file, &FrameRef::Meta(&meta(7)), &mut scratch).unwrap();
        let mut cursor = std::io::Cursor::new(&image[..]);
        let mut records = 0u64;
        while (cursor.position() as usize) < image.len() {
            let start = cursor.position() as usize;
            let _: flotilla_core::compat::v6_image::ImageRecordV6 =
                bincode::deserialize_from(&mut cursor).unwrap();
            let mut frame = 1u32.to_le_bytes().to_vec();
            frame.extend_from_slice(&image[start..cursor.position() as usize]);
            file.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            file.extend_from_slice(&crc32fast::hash(&frame).to_le_bytes());
            file.extend_from_slice(&frame);
            records += 1;
        }
        write_frame(&mut file, &FrameRef::End { records }, &mut scratch).unwrap();
        let back = read_counted(&file[..], None::<std::io::Sink>).unwrap();
        assert_eq!(back.meta, meta(7));
        assert_eq!(back.records, records);
        let task = back.state.get(flotilla_core::TaskId(7)).unwrap();
        assert_eq!(task.spec.concurrency_key, None);
        assert_eq!(back.state.ended_attempts(flotilla_core::TaskId(7)).len(), 1);
        assert_eq!(back.state.schedules().count(), 1);
        back.state.check_invariants().unwrap();
        // Read as version 7 (today's records), the same bytes do not give this state.
        let mut as_today = file.clone();
        as_today[8] = 7;
        let misread = read_counted(&as_today[..], None::<std::io::Sink>);
        assert!(
            misread.map_or(true, |r| r.state.get(flotilla_core::TaskId(7))
                != Some(task)),
            "version 6 records read as today's"
        );
    }

    /// Snapshot files of the format 2 to 6 releases are read (through format 6's records, of
    /// which 2 to 5 hold a subset): same meta, same (empty) state.
    #[test]
    fn format_2_to_6_snapshot_files_are_read() {
        for (version, pinned) in [
            (2, PINNED_EMPTY_V2),
            (3, PINNED_EMPTY_V3),
            (4, PINNED_EMPTY_V4),
            (5, PINNED_EMPTY_V5),
            (6, PINNED_EMPTY_V6),
        ] {
            let bytes: Vec<u8> = (0..pinned.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&pinned[i..i + 2], 16).unwrap())
                .collect();
            assert_eq!(bytes[8], version);
            let (m, state) = read(&bytes[..], None::<std::io::Sink>).unwrap();
            assert_eq!(m, meta(7));
            assert_eq!(state.task_count(), 0);
            assert_eq!(read_meta(&bytes[..]).unwrap(), meta(7));
        }
    }

    const PINNED_EMPTY: &str = "464c4f54534e4150078f0000005431f9a5000000000102000000000000000100000000000000070000000000000001010000000000000001000000000000000100000000000000010000000000000001000000000000000100000000000000010000000000000001000000000000000d0000000000000031302e302e302e313a373430300500000000000000696e632d310700000000000000322d312d372d303c000000391967350100000000000000070000000100000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000c0000006e58445b020000000100000000000000";

    const PINNED_EMPTY_V6: &str = "464c4f54534e4150068f0000005431f9a5000000000102000000000000000100000000000000070000000000000001010000000000000001000000000000000100000000000000010000000000000001000000000000000100000000000000010000000000000001000000000000000d0000000000000031302e302e302e313a373430300500000000000000696e632d310700000000000000322d312d372d303c00000034e5ab5c0100000000000000060000000100000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000c0000006e58445b020000000100000000000000";

    const PINNED_EMPTY_V5: &str = "464c4f54534e4150058f0000005431f9a5000000000102000000000000000100000000000000070000000000000001010000000000000001000000000000000100000000000000010000000000000001000000000000000100000000000000010000000000000001000000000000000d0000000000000031302e302e302e313a373430300500000000000000696e632d310700000000000000322d312d372d303c00000023e1fee60100000000000000050000000100000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000c0000006e58445b020000000100000000000000";

    const PINNED_EMPTY_V4: &str = "464c4f54534e4150048f0000005431f9a5000000000102000000000000000100000000000000070000000000000001010000000000000001000000000000000100000000000000010000000000000001000000000000000100000000000000010000000000000001000000000000000d0000000000000031302e302e302e313a373430300500000000000000696e632d310700000000000000322d312d372d303c0000002e1d328f0100000000000000040000000100000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000c0000006e58445b020000000100000000000000";

    const PINNED_EMPTY_V3: &str = "464c4f54534e4150038f0000005431f9a5000000000102000000000000000100000000000000070000000000000001010000000000000001000000000000000100000000000000010000000000000001000000000000000100000000000000010000000000000001000000000000000d0000000000000031302e302e302e313a373430300500000000000000696e632d310700000000000000322d312d372d303c0000004cef25490100000000000000030000000100000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000c0000006e58445b020000000100000000000000";

    const PINNED_EMPTY_V2: &str = "464c4f54534e4150028f0000005431f9a5000000000102000000000000000100000000000000070000000000000001010000000000000001000000000000000100000000000000010000000000000001000000000000000100000000000000010000000000000001000000000000000d0000000000000031302e302e302e313a373430300500000000000000696e632d310700000000000000322d312d372d303c0000004113e9200100000000000000020000000100000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000c0000006e58445b020000000100000000000000";

    #[test]
    fn other_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (name, _) = write(dir.path(), &meta(7), &State::new().view()).unwrap();
        let (old, _) = write(dir.path(), &meta(3), &State::new().view()).unwrap();
        std::fs::write(dir_of(dir.path()).join("incoming-x.tmp"), b"partial").unwrap();
        remove_others(dir.path(), Some(&name)).unwrap();
        let left: Vec<String> = std::fs::read_dir(dir_of(dir.path()))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert_eq!(left, vec![name]);
        assert_ne!(old, left[0]);
    }
}
