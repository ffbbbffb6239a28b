//! Opening a data dir: RocksDB with its column families, and the identity check that refuses a
//! data dir of another cluster or node instead of silently reinitialising it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, Options, WriteOptions, DB};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::{LogStore, StateMachine, StoreError};

pub(crate) const CF_META: &str = "meta";
pub(crate) const CF_LOG: &str = "log";
pub(crate) const CF_SM: &str = "sm";
const IDENTITY_KEY: &[u8] = b"identity";

/// Who a data dir belongs to; written once when the dir is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Identity {
    cluster_name: String,
    node_id: u64,
}

/// A data dir opened for a replica.
pub struct Opened {
    pub log_store: LogStore,
    pub state_machine: StateMachine,
    /// True when the data dir was created by this call.
    pub created: bool,
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
    let cfs = [CF_META, CF_LOG, CF_SM]
        .into_iter()
        .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
    let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(|e| {
        let msg = e.to_string();
        if msg.contains("LOCK") || msg.contains("lock") {
            refused(format!("in use by another process ({msg})"))
        } else {
            corrupt(msg)
        }
    })?;
    let db = Arc::new(db);

    let meta = db.cf_handle(CF_META).expect("meta cf exists");
    let wanted = Identity {
        cluster_name: cluster_name.to_string(),
        node_id,
    };
    match db
        .get_cf(meta, IDENTITY_KEY)
        .map_err(|e| corrupt(e.to_string()))?
    {
        None if fresh => {
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            db.put_cf_opt(meta, IDENTITY_KEY, encode(&wanted), &wo)
                .map_err(|e| corrupt(e.to_string()))?;
        }
        None => return Err(corrupt("identity record missing".into())),
        Some(bytes) => {
            let found: Identity =
                decode(&bytes).map_err(|e| corrupt(format!("identity record: {e}")))?;
            if found != wanted {
                return Err(refused(format!(
                    "belongs to node {} of cluster {:?}, not node {} of cluster {:?}",
                    found.node_id, found.cluster_name, node_id, cluster_name
                )));
            }
        }
    }

    let log_store = LogStore::new(db.clone()).map_err(corrupt)?;
    let state_machine = StateMachine::load(db).map_err(corrupt)?;
    Ok(Opened {
        log_store,
        state_machine,
        created: fresh,
    })
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
