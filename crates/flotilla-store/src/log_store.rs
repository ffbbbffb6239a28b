//! The Raft log and vote in RocksDB ([`openraft::storage::RaftLogStorage`]).
//!
//! An append writes its entries to RocksDB (readable at once) and hands the completion callback
//! to a flusher thread, which fsyncs the WAL once for every callback queued meanwhile and only
//! then reports the entries flushed. Many appends thus share one fsync (group commit at the
//! disk), and nothing is reported durable before it is.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::mpsc;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogId, StorageError, StorageIOError, Vote};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};

use crate::codec::{decode, encode, index_key, key_index};
use crate::db::{CF_LOG, CF_META};
use crate::{NodeId, TypeConfig};

const VOTE_KEY: &[u8] = b"vote";
const COMMITTED_KEY: &[u8] = b"committed";
const LAST_PURGED_KEY: &[u8] = b"last_purged";
/// Appends whose fsync is still outstanding, at most.
const FLUSH_QUEUE_LIMIT: usize = 4096;

type SResult<T> = Result<T, StorageError<NodeId>>;

/// Log storage of one replica. Cloning shares the database and the flusher.
#[derive(Clone)]
pub struct LogStore {
    pub(crate) db: Arc<DB>,
    flusher: Arc<Flusher>,
}

/// The fsync thread's handle. Dropping the last one stops the thread and waits for it, so the
/// database is closed (and its lock released) once every handle on it is gone.
struct Flusher {
    tx: Option<mpsc::SyncSender<LogFlushed<TypeConfig>>>,
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
    pub(crate) fn new(db: Arc<DB>) -> Result<LogStore, String> {
        let (tx, rx) = mpsc::sync_channel::<LogFlushed<TypeConfig>>(FLUSH_QUEUE_LIMIT);
        let flush_db = db.clone();
        let thread = std::thread::Builder::new()
            .name("flotilla-wal-fsync".into())
            .spawn(move || run_flusher(flush_db, rx))
            .map_err(|e| format!("cannot start the fsync thread: {e}"))?;
        let flusher = Arc::new(Flusher {
            tx: Some(tx),
            thread: Some(thread),
        });
        let store = LogStore { db, flusher };
        // Fail at open, not later, if the log cannot be read.
        store.last_log_id().map_err(|e| e.to_string())?;
        store
            .read_meta::<LogId<NodeId>>(LAST_PURGED_KEY)
            .map_err(|e| e.to_string())?;
        store
            .read_meta::<Vote<NodeId>>(VOTE_KEY)
            .map_err(|e| e.to_string())?;
        Ok(store)
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

fn run_flusher(db: Arc<DB>, rx: mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = rx.recv() {
        let mut waiting = vec![first];
        waiting.extend(rx.try_iter());
        let result = db.flush_wal(true);
        for callback in waiting {
            callback.log_io_completed(
                result
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| std::io::Error::other(e.to_string())),
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
        // A vote must be on disk before it is acted upon.
        self.write_meta(VOTE_KEY, vote, true).map_err(|_| {
            StorageIOError::write_vote(&std::io::Error::other("vote write failed")).into()
        })
    }

    async fn read_vote(&mut self) -> SResult<Option<Vote<NodeId>>> {
        self.read_meta(VOTE_KEY)
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
        for entry in entries {
            batch.put_cf(
                self.cf_log(),
                index_key(entry.get_log_id().index),
                encode(&entry),
            );
        }
        self.db
            .write(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        // Reported flushed by the flusher thread after the WAL fsync.
        let tx = self
            .flusher
            .tx
            .as_ref()
            .expect("sender lives as long as the flusher");
        if let Err(mpsc::SendError(callback)) = tx.send(callback) {
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
            .map_err(|e| StorageIOError::write_logs(&e).into())
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
