//! A record, kept apart from RocksDB, of the last log entry this replica reported durable and
//! of its vote — so that a WAL damaged in the middle (which RocksDB's point-in-time recovery
//! cannot tell from a torn tail, and silently truncates) is detected when the replica starts.
//!
//! The record is a small preallocated file, `acked`, of two slots written alternately, each
//! with a sequence number and a checksum; the valid slot with the higher sequence number is
//! current (a torn write of one slot leaves the other). The flusher writes it after each WAL
//! fsync and before it reports the entries flushed, so it never names an entry the WAL does not
//! hold; a vote is written to it before the vote is acted upon. Both writes are overwrites of a
//! block the file already has, synced with `fdatasync`.
//!
//! ```text
//!  slot (512 B): "FLOTACK2" · seq (u64 LE) · len (u32 LE) · bincode(AckState) · crc32 (u32 LE)
//! ```

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use openraft::{LogId, Vote};
use serde::{Deserialize, Serialize};

use crate::NodeId;

const NAME: &str = "acked";
const MAGIC: &[u8; 8] = b"FLOTACK2";
const SLOT: usize = 512;

/// What this replica has promised: entries reported durable, and its vote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckState {
    /// The last log entry reported flushed (lowered when the log is truncated).
    pub acked: Option<LogId<NodeId>>,
    pub vote: Option<Vote<NodeId>>,
}

/// The open record file.
#[derive(Debug)]
pub(crate) struct AckFile {
    file: File,
    seq: u64,
    state: AckState,
}

fn encode_slot(seq: u64, state: &AckState) -> [u8; SLOT] {
    let body = bincode::serialize(state).expect("serializing a small record");
    let mut slot = [0u8; SLOT];
    slot[..8].copy_from_slice(MAGIC);
    slot[8..16].copy_from_slice(&seq.to_le_bytes());
    slot[16..20].copy_from_slice(&(body.len() as u32).to_le_bytes());
    slot[20..20 + body.len()].copy_from_slice(&body);
    let crc = crc32fast::hash(&slot[8..20 + body.len()]);
    slot[20 + body.len()..24 + body.len()].copy_from_slice(&crc.to_le_bytes());
    slot
}

fn decode_slot(slot: &[u8]) -> Option<(u64, AckState)> {
    if slot.len() != SLOT || &slot[..8] != MAGIC {
        return None;
    }
    let seq = u64::from_le_bytes(slot[8..16].try_into().ok()?);
    let len = u32::from_le_bytes(slot[16..20].try_into().ok()?) as usize;
    if 24 + len > SLOT {
        return None;
    }
    let crc = u32::from_le_bytes(slot[20 + len..24 + len].try_into().ok()?);
    if crc32fast::hash(&slot[8..20 + len]) != crc {
        return None;
    }
    Some((seq, bincode::deserialize(&slot[20..20 + len]).ok()?))
}

impl AckFile {
    /// Opens the record of `dir`, creating it when `create` (a new data dir, or one converted
    /// from a format without it). A missing or unreadable record is an error otherwise:
    /// nothing could be checked against it.
    pub(crate) fn open(dir: &Path, create: bool) -> Result<AckFile, String> {
        let path = dir.join(NAME);
        if create && !path.exists() {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| format!("creating {}: {e}", path.display()))?;
            let mut f = AckFile {
                file,
                seq: 0,
                state: AckState::default(),
            };
            // Both slots written once, so that later writes only overwrite.
            f.write(AckState::default()).map_err(|e| e.to_string())?;
            f.write(AckState::default()).map_err(|e| e.to_string())?;
            f.file.sync_all().map_err(|e| e.to_string())?;
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| e.to_string())?;
            return Ok(f);
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| {
                format!(
                    "opening {} (this replica's record of what it acknowledged): {e}",
                    path.display()
                )
            })?;
        let mut buf = vec![0u8; 2 * SLOT];
        file.read_exact_at(&mut buf, 0)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        let best = [decode_slot(&buf[..SLOT]), decode_slot(&buf[SLOT..])]
            .into_iter()
            .flatten()
            .max_by_key(|(seq, _)| *seq)
            .ok_or_else(|| format!("{} is damaged: neither copy is readable", path.display()))?;
        Ok(AckFile {
            file,
            seq: best.0,
            state: best.1,
        })
    }

    pub(crate) fn state(&self) -> AckState {
        self.state
    }

    /// Makes `state` the record, durably.
    pub(crate) fn write(&mut self, state: AckState) -> std::io::Result<()> {
        let seq = self.seq + 1;
        let slot = encode_slot(seq, &state);
        self.file.write_all_at(&slot, (seq % 2) * SLOT as u64)?;
        self.file.sync_data()?;
        self.seq = seq;
        self.state = state;
        Ok(())
    }

    /// Records `acked` as reported flushed, if it is later than what the record holds.
    pub(crate) fn advance(&mut self, acked: LogId<NodeId>) -> std::io::Result<()> {
        if self.state.acked >= Some(acked) {
            return Ok(());
        }
        self.write(AckState {
            acked: Some(acked),
            ..self.state
        })
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    fn id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    #[test]
    fn the_latest_record_survives_reopen_and_one_torn_slot() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = AckFile::open(dir.path(), true).unwrap();
        f.advance(id(1, 5)).unwrap();
        f.advance(id(1, 3)).unwrap(); // never backwards
        f.write(AckState {
            vote: Some(Vote::new_committed(2, 3)),
            ..f.state()
        })
        .unwrap();
        f.advance(id(2, 9)).unwrap();
        let want = AckState {
            acked: Some(id(2, 9)),
            vote: Some(Vote::new_committed(2, 3)),
        };
        assert_eq!(AckFile::open(dir.path(), false).unwrap().state(), want);
        // Tear the slot written last: the previous one is current again.
        let seq = f.seq;
        let off = (seq % 2) * SLOT as u64;
        f.file.write_all_at(&[0xff; 40], off + 10).unwrap();
        let back = AckFile::open(dir.path(), false).unwrap();
        assert_eq!(
            back.state(),
            AckState {
                acked: Some(id(1, 5)),
                vote: Some(Vote::new_committed(2, 3))
            }
        );
        // Both torn: refused, naming the file.
        back.file
            .write_all_at(&[0xff; 40], ((seq - 1) % 2) * SLOT as u64 + 10)
            .unwrap();
        let err = AckFile::open(dir.path(), false).unwrap_err();
        assert!(err.contains("acked is damaged"), "{err}");
    }

    #[test]
    fn slot_encoding_is_pinned() {
        let slot = encode_slot(
            7,
            &AckState {
                acked: Some(id(2, 9)),
                vote: None,
            },
        );
        let hex: String = slot[..60].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, PINNED, "\n{hex}");
    }

    const PINNED: &str = "464c4f5441434b3207000000000000001a00000001020000000000000001000000000000000900000000000000005e7f84e200000000000000000000";
}
