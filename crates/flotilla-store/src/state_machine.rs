//! The replicated state machine ([`openraft::storage::RaftStateMachine`]).
//!
//! The working copy of [`flotilla_core::State`] lives in memory behind a lock that readers
//! (the server's queries) share. `apply` touches memory only: what makes the state durable is
//! the Raft log (fsynced before anything is acknowledged) plus the latest snapshot file (see
//! `snapshot`). A restarted replica loads that snapshot and openraft re-applies the committed
//! log entries after it (the log is never purged past the snapshot).
//!
//! Building a snapshot holds the lock only to take a frozen view of the state
//! ([`State::view`], one pointer per 256 tasks); the view is encoded into the file on a
//! blocking thread while `apply` goes on.

use std::io::{Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use flotilla_core::{Response, State};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use rocksdb::{WriteOptions, DB};

use crate::codec::{decode, encode};
use crate::db::CF_META;
use crate::snapshot::{self, Pointer};
use crate::{Node, NodeId, TypeConfig};

pub(crate) const SNAPSHOT_KEY: &[u8] = b"snapshot";

type SResult<T> = Result<T, StorageError<NodeId>>;

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
    data_dir: PathBuf,
    db: Arc<DB>,
    applied: Arc<RwLock<Applied>>,
    /// Run [`State::check_invariants`] after every applied entry (tests and fault runs).
    check_invariants: Arc<AtomicBool>,
    /// Serialises the snapshot files' writes, installs and clean-ups.
    files: Arc<Mutex<()>>,
    /// Makes snapshot ids unique when two are built at the same log index.
    builds: Arc<AtomicU64>,
    /// Counts and durations of snapshot builds and installs.
    stats: Arc<crate::stats::StoreStats>,
}

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl StateMachine {
    /// Loads the latest snapshot (an empty state without one); openraft then re-applies the
    /// committed log entries after it.
    ///
    /// The snapshot loaded is the newest complete file in `snapshots/`, which is normally the
    /// one the meta column family points at. The pointer can be older: a WAL damaged in the
    /// middle loses the pointer's last update (see `acked`), while the file it named replaced
    /// the older one. Every complete file holds committed state, so the newest is loaded and
    /// the pointer repaired.
    pub(crate) fn load(
        db: Arc<DB>,
        data_dir: PathBuf,
        stats: Arc<crate::stats::StoreStats>,
    ) -> Result<StateMachine, String> {
        let pointer = read_pointer(&db)?;
        let newest = snapshot::complete_files(&data_dir)
            .map_err(|e| format!("listing snapshot files: {e}"))?
            .into_iter()
            .max_by_key(|(_, meta)| meta.last_log_id);
        let (chosen, repointed) = match (pointer, newest) {
            (Some(p), Some((file, meta))) if meta.last_log_id > p.meta.last_log_id => {
                tracing::warn!(
                    pointed = %p.meta.snapshot_id,
                    newest = %meta.snapshot_id,
                    "the data dir points at an older snapshot than the newest complete file (its WAL lost the update); loading the newest"
                );
                (
                    Some(Pointer {
                        file,
                        meta,
                        bytes: 0,
                    }),
                    true,
                )
            }
            (None, Some((file, meta))) => {
                tracing::warn!(newest = %meta.snapshot_id, "no snapshot pointer, but a complete snapshot file; loading it");
                (
                    Some(Pointer {
                        file,
                        meta,
                        bytes: 0,
                    }),
                    true,
                )
            }
            (p, _) => (p, false),
        };
        let applied = match chosen {
            None => {
                snapshot::remove_others(&data_dir, None).map_err(|e| e.to_string())?;
                Applied {
                    state: State::new(),
                    last_applied: None,
                    membership: StoredMembership::default(),
                }
            }
            Some(mut p) => {
                let path = snapshot::dir_of(&data_dir).join(&p.file);
                let file = std::fs::File::open(&path)
                    .map_err(|e| format!("snapshot file {}: {e}", path.display()))?;
                let (meta, state) = snapshot::read(file, None::<std::fs::File>)
                    .map_err(|e| format!("snapshot file {}: {e}", path.display()))?;
                if meta != p.meta {
                    return Err(format!(
                        "snapshot file {} holds snapshot {}, the data dir points at {}",
                        path.display(),
                        meta.snapshot_id,
                        p.meta.snapshot_id
                    ));
                }
                if repointed {
                    p.bytes = std::fs::metadata(&path).map_err(|e| e.to_string())?.len();
                    let mut wo = WriteOptions::default();
                    wo.set_sync(true);
                    let cf = db.cf_handle(CF_META).expect("meta cf exists");
                    db.put_cf_opt(cf, SNAPSHOT_KEY, encode(&p), &wo)
                        .map_err(|e| format!("repairing the snapshot pointer: {e}"))?;
                }
                snapshot::remove_others(&data_dir, Some(&p.file)).map_err(|e| e.to_string())?;
                Applied {
                    state,
                    last_applied: meta.last_log_id,
                    membership: meta.last_membership,
                }
            }
        };
        Ok(StateMachine {
            data_dir,
            db,
            applied: Arc::new(RwLock::new(applied)),
            check_invariants: Arc::new(AtomicBool::new(false)),
            files: Arc::new(Mutex::new(())),
            builds: Arc::new(AtomicU64::new(0)),
            stats,
        })
    }

    pub fn shared(&self) -> SharedState {
        SharedState(self.applied.clone())
    }

    /// Checks the state's invariants after every applied entry; a violation stops the replica
    /// with a storage error naming it. Costs O(tasks) per entry: for tests and fault runs.
    pub fn set_check_invariants(&self, on: bool) {
        self.check_invariants.store(on, Ordering::Relaxed);
    }

    fn write_lock(&self) -> std::sync::RwLockWriteGuard<'_, Applied> {
        self.applied.write().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_files(&self) -> std::sync::MutexGuard<'_, ()> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `pointer` the current snapshot (synced), unless a newer one already is; returns
    /// the pointer that is current afterwards.
    fn publish(&self, pointer: Pointer) -> std::io::Result<Pointer> {
        let current = read_pointer(&self.db).map_err(io_err)?;
        if let Some(c) = current {
            if c.meta.last_log_id > pointer.meta.last_log_id {
                return Ok(c);
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        let cf = self.db.cf_handle(CF_META).expect("meta cf exists");
        self.db
            .put_cf_opt(cf, SNAPSHOT_KEY, encode(&pointer), &wo)
            .map_err(io_err)?;
        Ok(pointer)
    }

    fn open_snapshot(&self, p: &Pointer) -> std::io::Result<Snapshot<TypeConfig>> {
        let file = std::fs::File::open(snapshot::dir_of(&self.data_dir).join(&p.file))?;
        Ok(Snapshot {
            meta: p.meta.clone(),
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        })
    }

    /// The current snapshot, opened for reading. A newer snapshot may replace it at any time
    /// (it is published, then the older file deleted): a file gone between reading the
    /// pointer and opening it means the pointer moved on, so the pointer is read again. Once
    /// open, the file stays readable to the end even if it is deleted meanwhile (Unix), so a
    /// reader (a follower's transfer, a backup) always gets one whole snapshot.
    fn open_current(&self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        const ATTEMPTS: usize = 8;
        let mut last_error = None;
        for _ in 0..ATTEMPTS {
            let pointer = read_pointer(&self.db)
                .map_err(|e| StorageIOError::read_snapshot(None, &io_err(e)))?;
            let Some(p) = pointer else { return Ok(None) };
            match self.open_snapshot(&p) {
                Ok(s) => return Ok(Some(s)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    last_error = Some((p.meta.signature(), e));
                }
                Err(e) => {
                    return Err(StorageIOError::read_snapshot(Some(p.meta.signature()), &e).into())
                }
            }
        }
        let (signature, e) = last_error.expect("at least one attempt failed");
        Err(StorageIOError::read_snapshot(Some(signature), &e).into())
    }

    /// Makes `state`, written as the snapshot file `file` (of `bytes` bytes) with `meta`, the
    /// current snapshot and the applied state (a restore into a new data dir; see `backup`).
    pub(crate) fn install_restored(
        &self,
        file: String,
        bytes: u64,
        meta: SnapshotMeta<NodeId, Node>,
        state: State,
    ) -> std::io::Result<()> {
        let _files = self.lock_files();
        let current = self.publish(Pointer {
            file,
            meta: meta.clone(),
            bytes,
        })?;
        if current.meta != meta {
            return Err(io_err("a newer snapshot is already current"));
        }
        snapshot::remove_others(&self.data_dir, Some(&current.file))?;
        *self.write_lock() = Applied {
            state,
            last_applied: meta.last_log_id,
            membership: meta.last_membership,
        };
        Ok(())
    }
}

pub(crate) fn read_pointer(db: &DB) -> Result<Option<Pointer>, String> {
    let cf = db.cf_handle(CF_META).expect("meta cf exists");
    db.get_cf(cf, SNAPSHOT_KEY)
        .map_err(|e| e.to_string())?
        .map(|b| decode(&b).map_err(|e| format!("snapshot pointer: {e}")))
        .transpose()
}

impl StateMachine {
    /// The last entry the loaded state holds (from its snapshot).
    pub(crate) fn loaded_last_applied(&self) -> Option<LogId<NodeId>> {
        self.applied
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .last_applied
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> SResult<Snapshot<TypeConfig>> {
        // The only work under the lock: a frozen view (copy-on-write).
        let (view, last_log_id, last_membership) = {
            let a = self.applied.read().unwrap_or_else(|p| p.into_inner());
            (a.state.view(), a.last_applied, a.membership.clone())
        };
        let this = self.clone();
        let started = std::time::Instant::now();
        let built = tokio::task::spawn_blocking(move || {
            let n = this.builds.fetch_add(1, Ordering::Relaxed);
            let snapshot_id = match last_log_id {
                Some(id) => format!(
                    "{}-{}-{}-{n}",
                    id.leader_id.term, id.leader_id.node_id, id.index
                ),
                None => format!("empty-{n}"),
            };
            let meta = SnapshotMeta {
                last_log_id,
                last_membership,
                snapshot_id,
            };
            let fail =
                |e: std::io::Error| StorageIOError::write_snapshot(Some(meta.signature()), &e);
            let _files = this.lock_files();
            let (file, bytes) = snapshot::write(&this.data_dir, &meta, &view).map_err(fail)?;
            let current = this
                .publish(Pointer {
                    file,
                    meta: meta.clone(),
                    bytes,
                })
                .map_err(fail)?;
            snapshot::remove_others(&this.data_dir, Some(&current.file)).map_err(fail)?;
            tracing::info!(
                snapshot = %current.meta.snapshot_id,
                tasks = view.header().tasks,
                bytes = current.bytes,
                "snapshot built"
            );
            Ok(this.open_snapshot(&current).map_err(fail)?)
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(None, &io_err(e)))?;
        self.stats.snapshot_builds.record(started.elapsed());
        built
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
        let check = self.check_invariants.load(Ordering::Relaxed);
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
            if check {
                if let Err(e) = applied.state.check_invariants() {
                    tracing::error!(index = entry.log_id.index, error = %e, "state invariant broken");
                    return Err(StorageIOError::apply(
                        entry.log_id,
                        &io_err(format!("state invariant broken: {e}")),
                    )
                    .into());
                }
            }
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> SResult<Box<tokio::fs::File>> {
        let dir = snapshot::dir_of(&self.data_dir);
        let path = dir.join(format!("incoming-{}.tmp", uuid::Uuid::new_v4()));
        let file = std::fs::create_dir_all(&dir)
            .and_then(|()| {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&path)
            })
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<tokio::fs::File>,
    ) -> SResult<()> {
        let received = snapshot.into_std().await;
        let this = self.clone();
        let meta = meta.clone();
        let signature = meta.signature();
        let started = std::time::Instant::now();
        let state = tokio::task::spawn_blocking(move || {
            let fail =
                |e: std::io::Error| StorageIOError::write_snapshot(Some(meta.signature()), &e);
            let _files = this.lock_files();
            // Decode what was received and keep our own copy of it, in one pass.
            let mut received = received;
            received.seek(SeekFrom::Start(0)).map_err(fail)?;
            let dir = snapshot::dir_of(&this.data_dir);
            std::fs::create_dir_all(&dir).map_err(fail)?;
            let name = snapshot::file_name(&meta);
            let tmp = dir.join(format!("{name}.tmp"));
            let copy = std::fs::File::create(&tmp).map_err(fail)?;
            let mut writer = std::io::BufWriter::with_capacity(1 << 20, copy);
            let (file_meta, state) = snapshot::read(received, Some(&mut writer)).map_err(fail)?;
            if file_meta.last_log_id != meta.last_log_id {
                return Err(fail(io_err(format!(
                    "received snapshot covers {:?}, its meta says {:?}",
                    file_meta.last_log_id, meta.last_log_id
                ))));
            }
            let copy = writer.into_inner().map_err(|e| fail(e.into_error()))?;
            let bytes = copy.metadata().map_err(fail)?.len();
            copy.sync_all().map_err(fail)?;
            drop(copy);
            std::fs::rename(&tmp, dir.join(&name)).map_err(fail)?;
            std::fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(fail)?;
            let current = this
                .publish(Pointer {
                    file: name,
                    meta: meta.clone(),
                    bytes,
                })
                .map_err(fail)?;
            snapshot::remove_others(&this.data_dir, Some(&current.file)).map_err(fail)?;
            Ok::<_, StorageIOError<NodeId>>(Applied {
                state,
                last_applied: meta.last_log_id,
                membership: meta.last_membership.clone(),
            })
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(Some(signature), &io_err(e)))??;
        *self.write_lock() = state;
        self.stats.snapshot_installs.record(started.elapsed());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> SResult<Option<Snapshot<TypeConfig>>> {
        self.open_current()
    }
}

#[cfg(test)]
mod tests {
    use flotilla_core::{Command, Proposal, TaskSpec};
    use openraft::storage::RaftSnapshotBuilder;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

    use super::*;

    fn submit(index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Proposal {
                commands: vec![Command::submit(index, vec![TaskSpec::new("q", vec![1; 8])])],
            }),
        }
    }

    /// A WAL damaged mid-file can roll the snapshot pointer back to a file a later snapshot
    /// replaced; the replica loads the newest complete file instead and repairs the pointer.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_pointer_rolled_back_by_a_damaged_wal_loads_the_newest_snapshot_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("n1");
        let mut opened = crate::open(&dir, "c", 1).unwrap();
        let sm = &mut opened.state_machine;
        sm.apply([submit(1), submit(2)]).await.unwrap();
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let older = read_pointer(&sm.db).unwrap().unwrap();
        sm.apply([submit(3)]).await.unwrap();
        let newer = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(newer.meta.last_log_id.map(|l| l.index), Some(3));
        // The damage: the pointer's last update lost.
        let cf = sm.db.cf_handle(CF_META).unwrap();
        sm.db.put_cf(cf, SNAPSHOT_KEY, encode(&older)).unwrap();
        drop(opened);

        let mut opened = crate::open(&dir, "c", 1).unwrap();
        let (applied, _) = opened.state_machine.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(3));
        assert_eq!(opened.state_machine.shared().read().state.task_count(), 3);
        let repaired = read_pointer(&opened.state_machine.db).unwrap().unwrap();
        assert_eq!(repaired.meta, newer.meta);
        assert!(repaired.bytes > 0);
    }
}
