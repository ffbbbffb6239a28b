//! The replicated state machine on RocksDB ([`openraft::storage::RaftStateMachine`]).
//!
//! The working copy of [`flotilla_core::State`] lives in memory behind a lock that readers
//! (the server's queries) share. `apply` touches memory only: what makes the state durable is
//! the Raft log (fsynced before anything is acknowledged) plus the latest snapshot, the
//! versioned encoding of the state's image, written with a synchronous write. A restarted
//! replica loads that snapshot and openraft re-applies the committed log entries after it
//! (the log is never purged past the snapshot), so nothing applied is lost, and no apply pays
//! for encoding and writing every task it changed a second time.

use std::io::Cursor;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use flotilla_core::{Response, State, StateImage};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use rocksdb::{WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode, index_key};
use crate::db::{CF_META, CF_SM};
use crate::{Node, NodeId, TypeConfig};

const SNAPSHOT_KEY: &[u8] = b"snapshot";
/// Keys of the earlier format, which also wrote every applied task to the `sm` column family;
/// removed on open (the snapshot and the log hold everything they did).
const FORMER_KEYS: [&[u8]; 3] = [b"sm_applied", b"sm_membership", b"sm_scalars"];

type SResult<T> = Result<T, StorageError<NodeId>>;

/// The current snapshot as stored: openraft's meta plus the encoded image.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, Node>,
    data: Vec<u8>,
}

/// What the state machine has applied.
#[derive(Debug)]
pub struct Applied {
    pub state: State,
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, Node>,
}

/// A read handle on the applied state, for queries.
#[derive(Clone)]
pub struct SharedState(Arc<RwLock<Applied>>);

impl SharedState {
    /// Read access; keep it short, `apply` waits for it.
    pub fn read(&self) -> RwLockReadGuard<'_, Applied> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// State machine of one replica. Cloning shares it (the clone is the snapshot builder).
#[derive(Clone)]
pub struct StateMachine {
    db: Arc<DB>,
    applied: Arc<RwLock<Applied>>,
}

impl StateMachine {
    /// Loads the latest snapshot (an empty state without one); openraft then re-applies the
    /// committed log entries after it.
    pub(crate) fn load(db: Arc<DB>) -> Result<StateMachine, String> {
        drop_former_records(&db)?;
        let meta = db.cf_handle(CF_META).expect("meta cf exists");
        let applied = match db.get_cf(meta, SNAPSHOT_KEY).map_err(|e| e.to_string())? {
            None => Applied {
                state: State::new(),
                last_applied: None,
                membership: StoredMembership::default(),
            },
            Some(bytes) => {
                let stored: StoredSnapshot =
                    decode(&bytes).map_err(|e| format!("stored snapshot: {e}"))?;
                let image: StateImage =
                    decode(&stored.data).map_err(|e| format!("stored snapshot image: {e}"))?;
                Applied {
                    state: State::from_image(image)
                        .map_err(|e| format!("stored snapshot is inconsistent: {e}"))?,
                    last_applied: stored.meta.last_log_id,
                    membership: stored.meta.last_membership,
                }
            }
        };
        Ok(StateMachine {
            db,
            applied: Arc::new(RwLock::new(applied)),
        })
    }

    pub fn shared(&self) -> SharedState {
        SharedState(self.applied.clone())
    }

    fn write_lock(&self) -> std::sync::RwLockWriteGuard<'_, Applied> {
        self.applied.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Removes what the earlier format kept beside the snapshot (per-task records and pointers).
fn drop_former_records(db: &DB) -> Result<(), String> {
    let meta = db.cf_handle(CF_META).expect("meta cf exists");
    let sm = db.cf_handle(CF_SM).expect("sm cf exists");
    let mut present = db
        .iterator_cf(sm, rocksdb::IteratorMode::Start)
        .next()
        .is_some();
    for key in FORMER_KEYS {
        present |= db.get_cf(meta, key).map_err(|e| e.to_string())?.is_some();
    }
    if !present {
        return Ok(());
    }
    let mut batch = WriteBatch::default();
    batch.delete_range_cf(sm, index_key(0), index_key(u64::MAX));
    batch.delete_cf(sm, index_key(u64::MAX));
    for key in FORMER_KEYS {
        batch.delete_cf(meta, key);
    }
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    db.write_opt(batch, &wo).map_err(|e| e.to_string())
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> SResult<Snapshot<TypeConfig>> {
        let this = self.clone();
        // Encoding a large state is CPU work: keep it off the async runtime.
        tokio::task::spawn_blocking(move || {
            let (image, last_log_id, last_membership) = {
                let a = this.applied.read().unwrap_or_else(|p| p.into_inner());
                (a.state.to_image(), a.last_applied, a.membership.clone())
            };
            let data = encode(&image);
            let snapshot_id = match last_log_id {
                Some(id) => format!("{}-{}-{}", id.leader_id, id.index, data.len()),
                None => format!("empty-{}", data.len()),
            };
            let meta = SnapshotMeta {
                last_log_id,
                last_membership,
                snapshot_id,
            };
            let stored = StoredSnapshot {
                meta: meta.clone(),
                data,
            };
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            let cf = this.db.cf_handle(CF_META).expect("meta cf exists");
            this.db
                .put_cf_opt(cf, SNAPSHOT_KEY, encode(&stored), &wo)
                .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
            Ok(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(stored.data)),
            })
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(None, &std::io::Error::other(e.to_string())))?
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> SResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, Node>)> {
        let a = self.applied.read().unwrap_or_else(|p| p.into_inner());
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> SResult<Vec<Vec<Response>>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        let mut applied = self.write_lock();
        for entry in entries {
            applied.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => responses.push(Vec::new()),
                EntryPayload::Normal(proposal) => {
                    responses.push(applied.state.apply_proposal(&proposal))
                }
                EntryPayload::Membership(m) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), m);
                    responses.push(Vec::new());
                }
            }
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> SResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> SResult<()> {
        let data = snapshot.into_inner();
        let bad = |e: String| {
            StorageIOError::read_snapshot(Some(meta.signature()), &std::io::Error::other(e))
        };
        let image: StateImage = decode(&data).map_err(bad)?;
        let state = State::from_image(image).map_err(bad)?;
        let applied = Applied {
            state,
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        let db = self.db.clone();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let signature = meta.signature();
        let applied = tokio::task::spawn_blocking(move || {
            let meta_cf = db.cf_handle(CF_META).expect("meta cf exists");
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            db.put_cf_opt(meta_cf, SNAPSHOT_KEY, encode(&stored), &wo)
                .map_err(|e| StorageIOError::write_snapshot(Some(signature), &e))?;
            Ok::<_, StorageError<NodeId>>(applied)
        })
        .await
        .map_err(|e| {
            StorageIOError::write_snapshot(None, &std::io::Error::other(e.to_string()))
        })??;
        *self.write_lock() = applied;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> SResult<Option<Snapshot<TypeConfig>>> {
        let cf = self.db.cf_handle(CF_META).expect("meta cf exists");
        let bytes = self
            .db
            .get_cf(cf, SNAPSHOT_KEY)
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        let Some(bytes) = bytes else { return Ok(None) };
        let stored: StoredSnapshot = decode(&bytes)
            .map_err(|e| StorageIOError::read_snapshot(None, &std::io::Error::other(e)))?;
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}
