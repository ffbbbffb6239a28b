//! The Raft log and vote in RocksDB ([`openraft::storage::RaftLogStorage`]).
//!
//! An append writes its entries to RocksDB (readable at once) and hands the completion callback
//! to a flusher thread, which fsyncs the WAL once for every callback queued meanwhile, records
//! the last of those entries in the `acked` record (see `acked`), and only then reports the
//! entries flushed. Many appends thus share one fsync (group commit at the disk), and nothing is
//! reported durable before it is.
//!
//! At open, a log that ends before the entry the `acked` record names lost entries this replica
//! acknowledged — its WAL was damaged, and RocksDB's recovery silently stopped at the damage.
//! [`LogStore::damaged`] then names that entry: the replica must neither vote for a candidate
//! behind it nor stand for election until it has caught up again from the others.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogId, StorageError, StorageIOError, Vote};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};

use crate::acked::{AckFile, AckState};
use crate::codec::{decode, encode, index_key, key_index};
use crate::db::{CF_LOG, CF_META};
use crate::{NodeId, TypeConfig};

const VOTE_KEY: &[u8] = b"vote";
const COMMITTED_KEY: &[u8] = b"committed";
const LAST_PURGED_KEY: &[u8] = b"last_purged";
/// Appends whose fsync is still outstanding, at most (openraft keeps far fewer in flight).
const FLUSH_QUEUE_LIMIT: usize = 4096;
/// An unsynced append slower than this is logged: Raft's core (and its heartbeats) waits on it.
const SLOW_APPEND: std::time::Duration = std::time::Duration::from_millis(100);

type SResult<T> = Result<T, StorageError<NodeId>>;

/// Log storage of one replica. Cloning shares the database and the flusher.
#[derive(Clone)]
pub struct LogStore {
    pub(crate) db: Arc<DB>,
    flusher: Arc<Flusher>,
    ack: Arc<Mutex<AckFile>>,
    /// The acknowledged entry the log lost at open, if it lost one.
    damaged: Option<LogId<NodeId>>,
    /// This replica's id: a committed vote for it is read back uncommitted (see `read_vote`).
    node_id: NodeId,
}

/// An append waiting for the WAL fsync: the last entry it wrote, and who to tell.
type Flush = (Option<LogId<NodeId>>, LogFlushed<TypeConfig>);

/// The fsync thread's handle. Dropping the last one stops the thread and waits for it, so the
/// database is closed (and its lock released) once every handle on it is gone.
struct Flusher {
    tx: Option<tokio::sync::mpsc::Sender<Flush>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Flusher {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl LogStore {
    pub(crate) fn new(
        db: Arc<DB>,
        node_id: NodeId,
        ack: AckFile,
        stats: Arc<crate::stats::StoreStats>,
    ) -> Result<LogStore, String> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Flush>(FLUSH_QUEUE_LIMIT);
        let ack = Arc::new(Mutex::new(ack));
        let (flush_db, flush_ack) = (db.clone(), ack.clone());
        let thread = std::thread::Builder::new()
            .name("flotilla-wal-fsync".into())
            .spawn(move || run_flusher(flush_db, flush_ack, rx, stats))
            .map_err(|e| format!("cannot start the fsync thread: {e}"))?;
        let flusher = Arc::new(Flusher {
            tx: Some(tx),
            thread: Some(thread),
        });
        let mut store = LogStore {
            db,
            flusher,
            ack,
            damaged: None,
            node_id,
        };
        // Entries after a hole are unusable (openraft reads the log as one run); a WAL damaged
        // mid-file can leave one, since column families flush to table files independently.
        if let Some(from) = store.drop_after_hole().map_err(|e| e.to_string())? {
            tracing::warn!(
                from,
                "the log has a hole (damaged WAL); dropped the entries from there on, the leader sends them again"
            );
        }
        // Fail at open, not later, if the log cannot be read.
        let last = store.last_log_id().map_err(|e| e.to_string())?;
        let purged = store
            .read_meta::<LogId<NodeId>>(LAST_PURGED_KEY)
            .map_err(|e| e.to_string())?;
        let vote = store
            .read_meta::<Vote<NodeId>>(VOTE_KEY)
            .map_err(|e| e.to_string())?;
        let record = store.lock_ack().state();
        // The vote: whichever of the two is later (a damaged WAL may have lost the newer).
        if let Some(recorded) = record.vote.filter(|v| Some(*v) > vote) {
            tracing::warn!(recorded = %recorded, stored = ?vote, "vote lost from the log store; restoring it from the acked record");
            store
                .write_meta(VOTE_KEY, &recorded, true)
                .map_err(|e| e.to_string())?;
        }
        // The committed pointer must not run ahead of the log: column families flush to table
        // files independently, so a WAL damaged mid-file can lose log entries while the meta
        // family's table file keeps a later pointer, and openraft would then re-apply entries
        // the log no longer holds. The pointer only saves re-applying; lowering it is safe.
        let held = last.or(purged);
        if let Some(committed) = store
            .read_meta::<Option<LogId<NodeId>>>(COMMITTED_KEY)
            .map_err(|e| e.to_string())?
            .flatten()
        {
            if Some(committed) > held {
                tracing::warn!(committed = %committed, held = ?held, "the committed pointer is past the log (damaged WAL); lowering it");
                store
                    .write_meta(COMMITTED_KEY, &held, true)
                    .map_err(|e| e.to_string())?;
            }
        }
        if let Some(acked) = record.acked {
            if last.or(purged) < Some(acked) {
                tracing::error!(
                    acknowledged = %acked,
                    recovered = ?last.or(purged),
                    "the log lost entries this replica acknowledged (damaged WAL); it will not vote for a replica behind them nor stand for election until it has caught up"
                );
                store.damaged = Some(acked);
            }
        }
        Ok(store)
    }

    /// At open, with the state machine's end `applied`: when the log no longer holds the entry
    /// after it — a damaged WAL can roll the snapshot back behind the log's purge point — the
    /// log cannot bring the state forward (openraft would stop on the missing entry). The log
    /// is then dropped, its purge point and the committed pointer put at `applied`, and what
    /// this replica acknowledged counts as lost: the leader sends it again.
    pub(crate) fn drop_if_unreachable(
        &mut self,
        applied: Option<LogId<NodeId>>,
    ) -> Result<bool, String> {
        let purged = self
            .read_meta::<LogId<NodeId>>(LAST_PURGED_KEY)
            .map_err(|e| e.to_string())?;
        let first = match self
            .db
            .iterator_cf(self.cf_log(), IteratorMode::Start)
            .next()
        {
            Some(item) => {
                let (key, _) = item.map_err(|e| e.to_string())?;
                Some(key_index(&key)?)
            }
            None => None,
        };
        let behind_purge = purged.is_some() && purged > applied;
        let gap = match (applied, first) {
            (Some(a), Some(f)) => f > a.index + 1,
            _ => false,
        };
        if !(behind_purge || gap) {
            return Ok(false);
        }
        tracing::warn!(applied = ?applied, purged = ?purged, first_entry = ?first, "the log starts after the state machine ends (damaged WAL); dropping the log, the leader sends it again");
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.cf_log(), index_key(0), index_key(u64::MAX));
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo).map_err(|e| e.to_string())?;
        match applied {
            Some(a) => self
                .write_meta(LAST_PURGED_KEY, &a, true)
                .map_err(|e| e.to_string())?,
            None => self
                .db
                .delete_cf_opt(self.cf_meta(), LAST_PURGED_KEY, &wo)
                .map_err(|e| e.to_string())?,
        }
        self.write_meta(COMMITTED_KEY, &applied, true)
            .map_err(|e| e.to_string())?;
        let acked = self.lock_ack().state().acked;
        if acked > applied {
            self.damaged = acked;
        }
        Ok(true)
    }

    /// The last entry this replica had acknowledged that its log lost (a damaged WAL), as found
    /// at open; `None` when the log holds everything it acknowledged.
    pub fn damaged(&self) -> Option<LogId<NodeId>> {
        self.damaged
    }

    /// What the `acked` record holds now.
    pub fn acked(&self) -> AckState {
        self.lock_ack().state()
    }

    fn lock_ack(&self) -> std::sync::MutexGuard<'_, AckFile> {
        self.ack.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes this (pristine) log the continuation of a restored snapshot covering `last`: the
    /// log purged up to `last` (so it holds nothing, yet ends at `last`), `last` committed,
    /// and `vote` saved — in the store and in the acked record, which also names `last` as
    /// the last entry held. Every write is synced. See `backup`.
    pub(crate) fn restore_point(
        &self,
        last: LogId<NodeId>,
        vote: Vote<NodeId>,
    ) -> Result<(), String> {
        if !self.is_pristine().map_err(|e| e.to_string())? {
            return Err("the log is not pristine".into());
        }
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf_meta(), LAST_PURGED_KEY, encode(&last));
        batch.put_cf(self.cf_meta(), COMMITTED_KEY, encode(&Some(last)));
        batch.put_cf(self.cf_meta(), VOTE_KEY, encode(&vote));
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo).map_err(|e| e.to_string())?;
        self.lock_ack()
            .write(AckState {
                acked: Some(last),
                vote: Some(vote),
            })
            .map_err(|e| format!("writing the acked record: {e}"))
    }

    /// True when this replica has never voted nor held a log entry: the only state in which
    /// the cluster may be bootstrapped from it.
    pub fn is_pristine(&self) -> SResult<bool> {
        Ok(self.read_meta::<Vote<NodeId>>(VOTE_KEY)?.is_none()
            && self.read_meta::<LogId<NodeId>>(LAST_PURGED_KEY)?.is_none()
            && self.last_log_id()?.is_none())
    }

    fn cf_log(&self) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(CF_LOG).expect("log cf exists")
    }

    fn cf_meta(&self) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(CF_META).expect("meta cf exists")
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> SResult<Option<T>> {
        let bytes = self
            .db
            .get_cf(self.cf_meta(), key)
            .map_err(|e| StorageIOError::read(&e))?;
        bytes
            .map(|b| decode(&b).map_err(|e| StorageIOError::read(&std::io::Error::other(e)).into()))
            .transpose()
    }

    fn write_meta<T: serde::Serialize>(&self, key: &[u8], value: &T, sync: bool) -> SResult<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db
            .put_cf_opt(self.cf_meta(), key, encode(value), &wo)
            .map_err(|e| StorageIOError::write(&e).into())
    }

    /// Deletes every entry after the first hole in the log's indexes; returns where the hole
    /// starts, if there was one.
    fn drop_after_hole(&self) -> SResult<Option<u64>> {
        let mut prev: Option<u64> = None;
        let mut hole = None;
        for item in self.db.iterator_cf(self.cf_log(), IteratorMode::Start) {
            let (key, _) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            let index = key_index(&key)
                .map_err(|e| StorageIOError::read_logs(&std::io::Error::other(e)))?;
            if let Some(p) = prev.filter(|p| index != p + 1) {
                hole = Some(p + 1);
                break;
            }
            prev = Some(index);
        }
        if let Some(from) = hole {
            let mut batch = WriteBatch::default();
            batch.delete_range_cf(self.cf_log(), index_key(from), index_key(u64::MAX));
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            self.db
                .write_opt(batch, &wo)
                .map_err(|e| StorageIOError::write_logs(&e))?;
        }
        Ok(hole)
    }

    fn last_log_id(&self) -> SResult<Option<LogId<NodeId>>> {
        let mut it = self.db.iterator_cf(self.cf_log(), IteratorMode::End);
        match it.next() {
            None => Ok(None),
            Some(item) => {
                let (_, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
                let entry: Entry<TypeConfig> = decode(&value)
                    .map_err(|e| StorageIOError::read_logs(&std::io::Error::other(e)))?;
                Ok(Some(*entry.get_log_id()))
            }
        }
    }
}

/// `vote` as this replica may start from: not a committed vote for itself (see `read_vote`).
fn demote_own(vote: Vote<NodeId>, node_id: NodeId) -> Vote<NodeId> {
    if vote.is_committed() && vote.leader_id().voted_for() == Some(node_id) {
        Vote::new(vote.leader_id().term, node_id)
    } else {
        vote
    }
}

fn run_flusher(
    db: Arc<DB>,
    ack: Arc<Mutex<AckFile>>,
    mut rx: tokio::sync::mpsc::Receiver<Flush>,
    stats: Arc<crate::stats::StoreStats>,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut waiting = vec![first];
        while let Ok(next) = rx.try_recv() {
            waiting.push(next);
        }
        let last = waiting.iter().filter_map(|(id, _)| *id).max();
        let started = std::time::Instant::now();
        let synced = db.flush_wal(true);
        stats.fsyncs.record(started.elapsed());
        let result = synced
            .map_err(|e| std::io::Error::other(format!("WAL fsync: {e}")))
            .and_then(|()| match last {
                Some(id) => {
                    let started = std::time::Instant::now();
                    let written = ack
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .advance(id)
                        .map_err(|e| {
                            std::io::Error::other(format!("writing the acked record: {e}"))
                        });
                    stats.acked_syncs.record(started.elapsed());
                    written
                }
                None => Ok(()),
            });
        for (_, callback) in waiting {
            callback.log_io_completed(
                result
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| std::io::Error::new(e.kind(), e.to_string())),
            );
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> SResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        let it = self.db.iterator_cf(
            self.cf_log(),
            IteratorMode::From(&index_key(start), Direction::Forward),
        );
        for item in it {
            let (key, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            let index = key_index(&key)
                .map_err(|e| StorageIOError::read_logs(&std::io::Error::other(e)))?;
            if !range.contains(&index) {
                break;
            }
            let entry: Entry<TypeConfig> = decode(&value)
                .map_err(|e| StorageIOError::read_log_at_index(index, &std::io::Error::other(e)))?;
            out.push(entry);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> SResult<LogState<TypeConfig>> {
        let last_purged_log_id = self.read_meta::<LogId<NodeId>>(LAST_PURGED_KEY)?;
        let last_log_id = self.last_log_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> SResult<()> {
        // A vote must be on disk before it is acted upon: in the log store, and in the acked
        // record, which survives a damaged WAL.
        self.write_meta(VOTE_KEY, vote, true)
            .map_err(|_| StorageIOError::write_vote(&std::io::Error::other("vote write failed")))?;
        let mut ack = self.lock_ack();
        let state = AckState {
            vote: Some(*vote),
            ..ack.state()
        };
        ack.write(state)
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    /// The vote openraft starts from. A committed vote for this replica is read back
    /// uncommitted: openraft would otherwise resume as leader of that term at once, appending
    /// after whatever its log holds now. A log that lost entries the leader had already sent
    /// (a damaged WAL, or power lost before their fsync) would then write different entries
    /// under the log ids the followers hold — which they take for the same entries, so the
    /// replicas diverge. Uncommitted, the replica starts as a follower and leads again only
    /// after winning an election, in a new term whose log ids nobody holds.
    async fn read_vote(&mut self) -> SResult<Option<Vote<NodeId>>> {
        Ok(self
            .read_meta::<Vote<NodeId>>(VOTE_KEY)?
            .map(|v| demote_own(v, self.node_id)))
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> SResult<()> {
        // Only an optimisation for re-applying on restart; it never runs ahead of durable logs.
        self.write_meta(COMMITTED_KEY, &committed, false)
    }

    async fn read_committed(&mut self) -> SResult<Option<LogId<NodeId>>> {
        Ok(self
            .read_meta::<Option<LogId<NodeId>>>(COMMITTED_KEY)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> SResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let mut last = None;
        for entry in entries {
            last = Some(*entry.get_log_id());
            batch.put_cf(
                self.cf_log(),
                index_key(entry.get_log_id().index),
                encode(&entry),
            );
        }
        let started = std::time::Instant::now();
        self.db
            .write(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        let took = started.elapsed();
        if took >= SLOW_APPEND {
            // Raft's core waits on this write: no heartbeats go out meanwhile.
            tracing::warn!(
                ms = took.as_millis() as u64,
                "appending to the log blocked (a saturated disk?)"
            );
        }
        // Reported flushed by the flusher thread after the WAL fsync. The queue is bounded;
        // when it is full this waits without blocking the runtime.
        let tx = self
            .flusher
            .tx
            .as_ref()
            .expect("sender lives as long as the flusher");
        if let Err(tokio::sync::mpsc::error::SendError((_, callback))) =
            tx.send((last, callback)).await
        {
            callback.log_io_completed(Err(std::io::Error::other("fsync thread stopped")));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> SResult<()> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.cf_log(), index_key(log_id.index), index_key(u64::MAX));
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db
            .write_opt(batch, &wo)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        // Entries from `log_id` on were uncommitted and are gone: the record must not claim
        // them, or the next start would take their absence for damage.
        let remaining = match self.last_log_id()? {
            Some(l) => Some(l),
            None => self.read_meta::<LogId<NodeId>>(LAST_PURGED_KEY)?,
        };
        let mut ack = self.lock_ack();
        let state = ack.state();
        if state.acked > remaining {
            ack.write(AckState {
                acked: remaining,
                ..state
            })
            .map_err(|e| StorageIOError::write_logs(&e))?;
        }
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> SResult<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf_meta(), LAST_PURGED_KEY, encode(&log_id));
        batch.delete_range_cf(self.cf_log(), index_key(0), index_key(log_id.index + 1));
        self.db
            .write(batch)
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use flotilla_core::{Command, Proposal};
    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn entry(index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Proposal {
                commands: vec![Command::Tick { now_ms: index }; 200],
            }),
        }
    }

    /// The WAL file our appends went to: the newest one.
    fn live_wal(dir: &Path) -> std::path::PathBuf {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .max()
            .unwrap()
    }

    async fn append_all(store: &mut LogStore, range: std::ops::RangeInclusive<u64>) {
        for i in range {
            store.blocking_append([entry(i)]).await.unwrap();
        }
    }

    /// RocksDB's recovery stops at damage in the middle of its WAL and drops what follows,
    /// silently; the acked record tells: the reopened store names the entry it lost.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_wal_damaged_mid_file_is_detected_at_open() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("n1");
        let mut opened = crate::open(&dir, "c", 1).unwrap();
        assert_eq!(opened.damaged, None);
        append_all(&mut opened.log_store, 1..=300).await;
        assert_eq!(opened.log_store.acked().acked.map(|l| l.index), Some(300));
        drop(opened);

        // Damage the records in the middle of the live WAL (entries are only there: the log's
        // memtable was never flushed, and a reopen would have flushed them to a table file).
        let wal = live_wal(&dir);
        let mut bytes = std::fs::read(&wal).unwrap();
        for b in &mut bytes[300_000..300_064] {
            *b ^= 0x5a;
        }
        std::fs::write(&wal, bytes).unwrap();
        let mut opened = crate::open(&dir, "c", 1).unwrap();
        let last = opened.log_store.get_log_state().await.unwrap().last_log_id;
        assert!(
            last.map_or(0, |l| l.index) < 300,
            "recovery dropped the tail: {last:?}"
        );
        assert_eq!(opened.damaged.map(|l| l.index), Some(300));
        assert_eq!(opened.log_store.damaged().map(|l| l.index), Some(300));
    }

    /// A committed pointer past the log (kept by a table file while the WAL lost the entries)
    /// is lowered to the log's end at open, so nothing asks for entries the log lost.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_committed_pointer_past_the_log_is_lowered_at_open() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("n1");
        let mut opened = crate::open(&dir, "c", 1).unwrap();
        append_all(&mut opened.log_store, 1..=10).await;
        let ahead = Some(LogId::new(CommittedLeaderId::new(1, 1), 25));
        opened.log_store.save_committed(ahead).await.unwrap();
        drop(opened);
        let mut opened = crate::open(&dir, "c", 1).unwrap();
        let committed = opened.log_store.read_committed().await.unwrap();
        assert_eq!(committed.map(|l| l.index), Some(10));
    }

    /// A hole in the log (entries lost in the middle while later ones survived in a table
    /// file) is cut at open: the entries after it go, and the acknowledged ones count as lost.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_hole_in_the_log_drops_what_follows_at_open() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("n1");
        let mut opened = crate::open(&dir, "c", 1).unwrap();
        append_all(&mut opened.log_store, 1..=10).await;
        let store = &opened.log_store;
        store
            .db
            .delete_range_cf(store.cf_log(), index_key(4), index_key(7))
            .unwrap();
        drop(opened);
        let mut opened = crate::open(&dir, "c", 1).unwrap();
        let last = opened.log_store.get_log_state().await.unwrap().last_log_id;
        assert_eq!(last.map(|l| l.index), Some(3));
        let entries = opened.log_store.try_get_log_entries(1..11).await.unwrap();
        assert_eq!(entries.len(), 3, "nothing after the hole is left");
        assert_eq!(opened.damaged.map(|l| l.index), Some(10));
    }

    /// A state machine that ends before the log starts (a damaged WAL rolled the snapshot back
    /// behind the purge point) cannot be brought forward by the log: the log is dropped, its
    /// purge point and the committed pointer go to the state's end, and what was acknowledged
    /// counts as lost. A state that the log continues is left alone.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_log_that_starts_after_the_state_ends_is_dropped_at_open() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("n1");
        let mut opened = crate::open(&dir, "c", 1).unwrap();
        append_all(&mut opened.log_store, 1..=10).await;
        let at = |i| Some(LogId::new(CommittedLeaderId::new(1, 1), i));
        opened.log_store.save_committed(at(10)).await.unwrap();
        opened.log_store.purge(at(5).unwrap()).await.unwrap();
        let store = &mut opened.log_store;

        // The log continues a state at 5 (the purge point) or later: nothing to do.
        assert!(!store.drop_if_unreachable(at(5)).unwrap());
        assert!(!store.drop_if_unreachable(at(8)).unwrap());
        assert_eq!(store.try_get_log_entries(6..11).await.unwrap().len(), 5);
        assert_eq!(store.damaged(), None);

        // A state at 3 cannot reach entry 6.
        assert!(store.drop_if_unreachable(at(3)).unwrap());
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, at(3));
        assert_eq!(
            state.last_log_id,
            at(3),
            "the log is empty after its purge point"
        );
        assert!(store.try_get_log_entries(1..11).await.unwrap().is_empty());
        assert_eq!(store.read_committed().await.unwrap(), at(3));
        assert_eq!(store.damaged().map(|l| l.index), Some(10));
    }

    /// Entries removed by a truncation (a new leader's log won) are no longer claimed.
    #[tokio::test(flavor = "multi_thread")]
    async fn truncation_lowers_the_record() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("n1");
        let mut opened = crate::open(&dir, "c", 1).unwrap();
        append_all(&mut opened.log_store, 1..=10).await;
        opened
            .log_store
            .truncate(LogId::new(CommittedLeaderId::new(1, 1), 6))
            .await
            .unwrap();
        assert_eq!(opened.log_store.acked().acked.map(|l| l.index), Some(5));
        drop(opened);
        assert_eq!(crate::open(&dir, "c", 1).unwrap().damaged, None);
    }

    /// A vote the log store lost comes back from the record.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_lost_vote_is_restored_from_the_record() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("n1");
        let mut opened = crate::open(&dir, "c", 1).unwrap();
        let vote = Vote::new(7, 2);
        opened.log_store.save_vote(&vote).await.unwrap();
        // Simulate the WAL losing that write: an older vote in the store.
        opened
            .log_store
            .write_meta(VOTE_KEY, &Vote::<NodeId>::new(3, 1), true)
            .unwrap();
        drop(opened);
        let mut opened = crate::open(&dir, "c", 1).unwrap();
        assert_eq!(opened.log_store.read_vote().await.unwrap(), Some(vote));
    }

    /// A replica never starts as the leader it was: its committed vote for itself comes back
    /// uncommitted (openraft would resume leading that term, reusing log ids its followers
    /// hold), while other votes come back as they were.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_committed_vote_for_itself_is_read_back_uncommitted() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("n1");
        let mut opened = crate::open(&dir, "c", 1).unwrap();
        opened
            .log_store
            .save_vote(&Vote::new_committed(7, 1))
            .await
            .unwrap();
        drop(opened);
        let mut opened = crate::open(&dir, "c", 1).unwrap();
        let vote = opened.log_store.read_vote().await.unwrap().unwrap();
        assert_eq!(vote, Vote::new(7, 1));
        assert!(!vote.is_committed());
        // A committed vote for another replica, and an uncommitted one, are kept.
        for kept in [Vote::new_committed(8, 2), Vote::new(9, 1)] {
            opened.log_store.save_vote(&kept).await.unwrap();
            assert_eq!(opened.log_store.read_vote().await.unwrap(), Some(kept));
        }
    }
}
