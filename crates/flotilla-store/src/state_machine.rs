//! The replicated state machine on RocksDB ([`openraft::storage::RaftStateMachine`]).
//!
//! The working copy of [`flotilla_core::State`] lives in memory behind a lock that readers
//! (the server's queries) share; every `apply` call also writes the tasks it changed and the
//! applied pointers to the `sm` column family in one atomic batch, so a restarted replica
//! loads its state from disk. Snapshots are the versioned encoding of the state's image.

use std::io::Cursor;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use flotilla_core::{Response, State, StateImage, Task, STATE_IMAGE_VERSION};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use rocksdb::{IteratorMode, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode, index_key};
use crate::db::{CF_META, CF_SM};
use crate::{NodeId, TypeConfig};

const APPLIED_KEY: &[u8] = b"sm_applied";
const MEMBERSHIP_KEY: &[u8] = b"sm_membership";
const SCALARS_KEY: &[u8] = b"sm_scalars";
const SNAPSHOT_KEY: &[u8] = b"snapshot";

type SResult<T> = Result<T, StorageError<NodeId>>;

/// Everything of the state but its tasks, stored beside the per-task records (small: the
/// counters, registered workers and queue policies).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Scalars {
    next_task_id: u64,
    clock_ms: u64,
    workers: Vec<flotilla_core::Worker>,
    queue_policies: Vec<(String, flotilla_core::QueuePolicy)>,
}

/// The current snapshot as stored: openraft's meta plus the encoded image.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

/// What the state machine has applied.
#[derive(Debug)]
pub struct Applied {
    pub state: State,
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, BasicNode>,
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
    pub(crate) fn load(db: Arc<DB>) -> Result<StateMachine, String> {
        let meta = db.cf_handle(CF_META).expect("meta cf exists");
        let get = |key: &[u8]| db.get_cf(meta, key).map_err(|e| e.to_string());
        let last_applied: Option<LogId<NodeId>> = match get(APPLIED_KEY)? {
            Some(b) => decode(&b).map_err(|e| format!("applied pointer: {e}"))?,
            None => None,
        };
        let membership: StoredMembership<NodeId, BasicNode> = match get(MEMBERSHIP_KEY)? {
            Some(b) => decode(&b).map_err(|e| format!("membership: {e}"))?,
            None => StoredMembership::default(),
        };
        let scalars: Option<Scalars> = match get(SCALARS_KEY)? {
            Some(b) => Some(decode(&b).map_err(|e| format!("state scalars: {e}"))?),
            None => None,
        };
        let mut tasks = Vec::new();
        let sm = db.cf_handle(CF_SM).expect("sm cf exists");
        for item in db.iterator_cf(sm, IteratorMode::Start) {
            let (_, value) = item.map_err(|e| e.to_string())?;
            tasks.push(decode::<Task>(&value).map_err(|e| format!("task record: {e}"))?);
        }
        let state = match scalars {
            None if tasks.is_empty() => State::new(),
            None => return Err("task records present without state scalars".into()),
            Some(s) => State::from_image(StateImage {
                version: STATE_IMAGE_VERSION,
                next_task_id: s.next_task_id,
                clock_ms: s.clock_ms,
                tasks,
                workers: s.workers,
                queue_policies: s.queue_policies,
            })
            .map_err(|e| format!("stored state is inconsistent: {e}"))?,
        };
        Ok(StateMachine {
            db,
            applied: Arc::new(RwLock::new(Applied {
                state,
                last_applied,
                membership,
            })),
        })
    }

    pub fn shared(&self) -> SharedState {
        SharedState(self.applied.clone())
    }

    fn write_lock(&self) -> std::sync::RwLockWriteGuard<'_, Applied> {
        self.applied.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Adds the applied pointers and the state's scalars to `batch`.
fn put_pointers(db: &DB, batch: &mut WriteBatch, applied: &Applied) {
    let meta = db.cf_handle(CF_META).expect("meta cf exists");
    batch.put_cf(meta, APPLIED_KEY, encode(&applied.last_applied));
    batch.put_cf(meta, MEMBERSHIP_KEY, encode(&applied.membership));
    let scalars = Scalars {
        next_task_id: applied.state.next_task_id(),
        clock_ms: applied.state.clock_ms(),
        workers: applied.state.workers().cloned().collect(),
        queue_policies: applied.state.queue_policies(),
    };
    batch.put_cf(meta, SCALARS_KEY, encode(&scalars));
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
    ) -> SResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>)> {
        let a = self.applied.read().unwrap_or_else(|p| p.into_inner());
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> SResult<Vec<Vec<Response>>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        let mut batch = WriteBatch::default();
        {
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
            let sm = self.db.cf_handle(CF_SM).expect("sm cf exists");
            for id in applied.state.take_dirty() {
                let task = applied.state.get(id).expect("dirty task exists");
                batch.put_cf(sm, index_key(id.0), encode(task));
            }
            put_pointers(&self.db, &mut batch, &applied);
        }
        // No fsync: the log is the source of truth and is replayed after a crash.
        self.db
            .write(batch)
            .map_err(|e| StorageIOError::write_state_machine(&e))?;
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
        meta: &SnapshotMeta<NodeId, BasicNode>,
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
            let mut batch = WriteBatch::default();
            let sm = db.cf_handle(CF_SM).expect("sm cf exists");
            batch.delete_range_cf(sm, index_key(0), index_key(u64::MAX));
            for task in applied.state.list(None, None, None, usize::MAX) {
                batch.put_cf(sm, index_key(task.id.0), encode(task));
            }
            put_pointers(&db, &mut batch, &applied);
            let meta_cf = db.cf_handle(CF_META).expect("meta cf exists");
            batch.put_cf(meta_cf, SNAPSHOT_KEY, encode(&stored));
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            db.write_opt(batch, &wo)
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
