//! Opening a data dir: RocksDB with its column families, and the identity check that refuses a
//! data dir of another cluster or node instead of silently reinitialising it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};

use crate::acked::AckFile;
use crate::codec::{decode, decode_version, encode, FORMAT_VERSION};
use crate::migrate;
use crate::{LogStore, StateMachine, StoreError};

pub(crate) const CF_META: &str = "meta";
pub(crate) const CF_LOG: &str = "log";
pub(crate) const CF_SM: &str = "sm";
pub(crate) const IDENTITY_KEY: &[u8] = b"identity";

/// Who a data dir belongs to; written once when the dir is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Identity {
    pub cluster_name: String,
    pub node_id: u64,
    /// Random id of this data dir, made when it was created (or converted from format 1): a
    /// wiped and recreated dir gets a new one (see [`crate::Node`]).
    pub incarnation: String,
}

/// A data dir opened for a replica.
pub struct Opened {
    pub log_store: LogStore,
    pub state_machine: StateMachine,
    /// True when the data dir was created by this call.
    pub created: bool,
    /// This data dir's incarnation (see [`crate::Node`]).
    pub incarnation: String,
    /// Log entries converted from an older format by this open (0 when none was needed).
    pub migrated_entries: usize,
    /// The last entry this replica acknowledged that its log lost at some point before this
    /// open (a damaged WAL): see [`LogStore::damaged`].
    pub damaged: Option<openraft::LogId<crate::NodeId>>,
    /// The storage's operation counters and health check, for the replica's metrics.
    pub probe: crate::stats::StoreProbe,
}

/// Opens (or creates) the data dir of node `node_id` of cluster `cluster_name`.
pub fn open(dir: &Path, cluster_name: &str, node_id: u64) -> Result<Opened, StoreError> {
    let io = |source| StoreError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let refused = |message: String| StoreError::Refused {
        path: dir.to_path_buf(),
        message,
    };
    let corrupt = |message: String| StoreError::Corrupt {
        path: dir.to_path_buf(),
        message,
    };

    let fresh = match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => return Err(io(e)),
    };
    if fresh {
        std::fs::create_dir_all(dir).map_err(io)?;
        probe_writable(dir).map_err(io)?;
    } else if !dir.join("CURRENT").exists() {
        return Err(refused(
            "not empty and not a flotilla data dir (no RocksDB CURRENT file); refusing to touch it"
                .into(),
        ));
    }

    let mut opts = Options::default();
    opts.create_if_missing(fresh);
    opts.create_missing_column_families(fresh);
    opts.set_paranoid_checks(true);
    opts.set_max_background_jobs(2);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    tune_wal(&mut opts);
    let cfs = [CF_META, CF_LOG, CF_SM].into_iter().map(|name| {
        let mut cf = Options::default();
        if name == CF_LOG {
            // The log's memtable switches the WAL, so it sets the size of the reused files.
            cf.set_write_buffer_size(WAL_FILE_BYTES);
        }
        ColumnFamilyDescriptor::new(name, cf)
    });
    let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(|e| open_error(dir, e))?;
    let db = Arc::new(db);

    let meta = db.cf_handle(CF_META).expect("meta cf exists");
    let mut migrated_entries = 0;
    let mut converted = false;
    if fresh {
        let identity = Identity {
            cluster_name: cluster_name.to_string(),
            node_id,
            incarnation: uuid::Uuid::new_v4().to_string(),
        };
        let mut batch = WriteBatch::default();
        batch.put_cf(meta, IDENTITY_KEY, encode(&identity));
        migrate::put_format(&mut batch, &db);
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        db.write_opt(batch, &wo)
            .map_err(|e| corrupt(e.to_string()))?;
    } else {
        match migrate::stored_version(&db).map_err(&corrupt)? {
            FORMAT_VERSION => {}
            1 => {
                // Check the owner before converting anything.
                let old: migrate::v1::Identity = db
                    .get_cf(meta, IDENTITY_KEY)
                    .map_err(|e| corrupt(e.to_string()))?
                    .map(|b| decode_version(1, &b))
                    .transpose()
                    .map_err(|e| corrupt(format!("identity record: {e}")))?
                    .ok_or_else(|| corrupt("identity record missing".into()))?;
                check_owner(&old.cluster_name, old.node_id, cluster_name, node_id)
                    .map_err(&refused)?;
                converted = true;
                migrated_entries = migrate::from_v1(&db, dir, &uuid::Uuid::new_v4().to_string())
                    .map_err(|e| corrupt(format!("converting format 1: {e}")))?;
                tracing::info!(
                    entries = migrated_entries,
                    "data dir converted from format 1"
                );
            }
            v @ (2..=6) => {
                // The acked record exists since format 2: still required.
                migrated_entries = migrate::from_appended(&db, v)
                    .map_err(|e| corrupt(format!("converting format {v}: {e}")))?;
                tracing::info!(entries = migrated_entries, from = v, "data dir converted");
            }
            v => return Err(corrupt(format!("unknown format version {v}"))),
        }
    }
    let identity: Identity = db
        .get_cf(meta, IDENTITY_KEY)
        .map_err(|e| corrupt(e.to_string()))?
        .map(|b| decode(&b))
        .transpose()
        .map_err(|e| corrupt(format!("identity record: {e}")))?
        .ok_or_else(|| corrupt("identity record missing".into()))?;
    check_owner(
        &identity.cluster_name,
        identity.node_id,
        cluster_name,
        node_id,
    )
    .map_err(&refused)?;

    presize_wal(&db).map_err(|e| corrupt(format!("preparing the WAL: {e}")))?;
    let ack = AckFile::open(dir, fresh || converted).map_err(&corrupt)?;
    let stats = Arc::new(crate::stats::StoreStats::default());
    let probe = crate::stats::StoreProbe::new(db.clone(), stats.clone());
    let mut log_store = LogStore::new(db.clone(), node_id, ack, stats.clone()).map_err(corrupt)?;
    let state_machine = StateMachine::load(db, dir.to_path_buf(), stats).map_err(corrupt)?;
    log_store
        .drop_if_unreachable(state_machine.loaded_last_applied())
        .map_err(corrupt)?;
    let damaged = log_store.damaged();
    Ok(Opened {
        log_store,
        state_machine,
        created: fresh,
        incarnation: identity.incarnation,
        migrated_entries,
        damaged,
        probe,
    })
}

fn check_owner(
    found_cluster: &str,
    found_node: u64,
    cluster_name: &str,
    node_id: u64,
) -> Result<(), String> {
    if found_cluster == cluster_name && found_node == node_id {
        return Ok(());
    }
    Err(format!(
        "belongs to node {found_node} of cluster {found_cluster:?}, not node {node_id} of cluster {cluster_name:?}"
    ))
}

/// Names the real cause of a failed open: another process holding the dir's lock is told apart
/// from damage (a checksum mismatch is not "in use") and from I/O errors.
fn open_error(dir: &Path, e: rocksdb::Error) -> StoreError {
    let message = e.to_string();
    let path = dir.to_path_buf();
    match e.kind() {
        rocksdb::ErrorKind::IOError
            if message.contains("/LOCK") || message.contains("lock hold by current process") =>
        {
            StoreError::Refused {
                path,
                message: format!("in use by another process ({message})"),
            }
        }
        rocksdb::ErrorKind::IOError => StoreError::Corrupt {
            path,
            message: format!("I/O error: {message}"),
        },
        _ => StoreError::Corrupt { path, message },
    }
}

/// Bytes a WAL file holds before RocksDB switches to the next one (about).
const WAL_FILE_BYTES: usize = 8 << 20;
/// Retired WAL files kept for reuse.
const RECYCLED_WALS: usize = 4;
const WAL_FILLER_KEY: &[u8] = b"wal-filler";

/// Every acknowledged write waits on an fsync of the WAL. Appending to a file makes that fsync
/// also commit the file's new size through the filesystem journal; overwriting blocks a file
/// already has does not (ext4 here: ~230 µs against ~120 µs, and several ms when the disk is
/// busy). So retired WAL files are reused rather than deleted (as PostgreSQL recycles its
/// zero-filled WAL segments). Point-in-time recovery stops at the first record of a reused
/// file's previous life, which RocksDB tells apart by the log number in each record.
fn tune_wal(opts: &mut Options) {
    opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::PointInTime);
    opts.set_recycle_log_file_num(RECYCLED_WALS);
    // Flush the small column families once the WAL grows past this, so that old WAL files
    // retire (and become reusable) even when only the log is busy.
    opts.set_max_total_wal_size(2 * WAL_FILE_BYTES as u64);
}

/// RocksDB reuses only WAL files retired since it opened, so without this a replica would
/// append (the slow fsync) for its first `WAL_FILE_BYTES` of log after every start. Two rounds
/// of filler, each flushed: the first retires a full-size file, the second switches the live
/// WAL to it and retires a second full-size one behind it. The filler is deleted in the same
/// round; only junk in retired WAL files remains, which recovery never reads as live records.
fn presize_wal(db: &DB) -> Result<(), rocksdb::Error> {
    const CHUNK: usize = 1 << 20;
    let meta = db.cf_handle(CF_META).expect("meta cf exists");
    let cfs: Vec<_> = [CF_META, CF_LOG, CF_SM]
        .into_iter()
        .map(|name| db.cf_handle(name).expect("cf exists"))
        .collect();
    let filler = vec![0u8; CHUNK];
    for _ in 0..2 {
        for _ in 0..WAL_FILE_BYTES / CHUNK {
            db.put_cf(meta, WAL_FILLER_KEY, &filler)?;
        }
        db.delete_cf(meta, WAL_FILLER_KEY)?;
        db.flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())?;
    }
    Ok(())
}

fn probe_writable(dir: &Path) -> std::io::Result<()> {
    let probe: PathBuf = dir.join(".write-probe");
    std::fs::write(&probe, b"ok")?;
    std::fs::remove_file(&probe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_foreign_and_unknown_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("n1");
        let opened = open(&dir, "c", 1).unwrap();
        assert!(opened.created);
        drop(opened);
        assert!(!open(&dir, "c", 1).unwrap().created);

        let err = open(&dir, "c", 2).err().unwrap().to_string();
        assert!(err.contains("belongs to node 1"), "{err}");
        let err = open(&dir, "other", 1).err().unwrap().to_string();
        assert!(err.contains("cluster \"c\""), "{err}");

        let junk = tmp.path().join("junk");
        std::fs::create_dir_all(&junk).unwrap();
        std::fs::write(junk.join("notes.txt"), "hello").unwrap();
        let err = open(&junk, "c", 1).err().unwrap().to_string();
        assert!(err.contains("not a flotilla data dir"), "{err}");
    }

    /// Size of the newest WAL file in `dir`: the live one.
    fn live_wal_bytes(dir: &Path) -> u64 {
        let newest = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .max()
            .expect("a WAL file");
        std::fs::metadata(newest).unwrap().len()
    }

    #[test]
    fn reused_wal_files_replay_exactly_what_was_written() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("n1");
        let opened = open(&dir, "c", 1).unwrap();
        // Writes overwrite a full-size file from the start, instead of appending to a new one.
        assert!(live_wal_bytes(&dir) >= WAL_FILE_BYTES as u64);

        // Enough records to pass through several reused files; the last ones live only in the
        // WAL when the db closes, so reopening replays a reused file with its old tail behind.
        // (In the meta column family, under keys nothing else uses: the stores read theirs.)
        let key = |i: u64| [b"test/".as_slice(), &i.to_be_bytes()].concat();
        let db = opened.log_store.db.clone();
        let meta = db.cf_handle(CF_META).unwrap();
        let records = 3 * WAL_FILE_BYTES / 4096;
        for i in 0..records as u64 {
            let value = vec![(i % 251) as u8; 4096];
            db.put_cf(meta, key(i), value).unwrap();
        }
        db.flush_wal(true).unwrap();
        drop(db);
        drop(opened);

        let reopened = open(&dir, "c", 1).unwrap();
        let db = reopened.log_store.db.clone();
        let meta = db.cf_handle(CF_META).unwrap();
        let mut seen = 0u64;
        for item in db.prefix_iterator_cf(meta, b"test/") {
            let (k, value) = item.unwrap();
            let Some(i) = k.strip_prefix(b"test/".as_slice()) else {
                break;
            };
            let i = u64::from_be_bytes(i.try_into().unwrap());
            assert_eq!(i, seen, "records come back in order, none missing or extra");
            assert_eq!(value.as_ref(), vec![(i % 251) as u8; 4096].as_slice());
            seen += 1;
        }
        assert_eq!(seen, records as u64);
    }

    #[test]
    fn refuses_corrupt_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("n1");
        drop(open(&dir, "c", 1).unwrap());
        // Overwrite every SST/manifest with garbage.
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with("MANIFEST") {
                std::fs::write(&path, b"garbage garbage garbage").unwrap();
            }
        }
        let err = open(&dir, "c", 1).err().unwrap().to_string();
        assert!(err.contains("corrupt"), "{err}");
    }
}
