//! Counts and durations of the storage's costly operations — WAL fsyncs, snapshot builds and
//! installs — kept in atomics and read by the replica's metrics when scraped (the store itself
//! has no metrics dependency), and the probe `/healthz` runs: is the storage writable?

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rocksdb::{WriteOptions, DB};

use crate::db::CF_META;

/// How often, and for how long in all, one kind of operation ran.
#[derive(Debug, Default)]
pub struct Timed {
    count: AtomicU64,
    micros: AtomicU64,
    max_micros: AtomicU64,
}

impl Timed {
    pub fn record(&self, took: Duration) {
        let us = took.as_micros().min(u64::MAX as u128) as u64;
        self.count.fetch_add(1, Ordering::Relaxed);
        self.micros.fetch_add(us, Ordering::Relaxed);
        self.max_micros.fetch_max(us, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// All durations summed, in seconds.
    pub fn total_secs(&self) -> f64 {
        self.micros.load(Ordering::Relaxed) as f64 / 1e6
    }

    /// The longest one so far, in seconds.
    pub fn max_secs(&self) -> f64 {
        self.max_micros.load(Ordering::Relaxed) as f64 / 1e6
    }
}

/// The storage's operation counters.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// WAL fsyncs (each one serves every append queued while the previous one ran).
    pub fsyncs: Timed,
    /// Writes of the acked record after each WAL fsync (an `fdatasync` of its own), before the
    /// entries are reported durable.
    pub acked_syncs: Timed,
    /// Snapshots built from this replica's state.
    pub snapshot_builds: Timed,
    /// Snapshots received from a leader and installed.
    pub snapshot_installs: Timed,
}

/// The storage's counters and its health check; cheap to clone.
#[derive(Clone)]
pub struct StoreProbe {
    db: Arc<DB>,
    pub stats: Arc<StoreStats>,
}

/// The key the health check writes (a few bytes, overwritten each time).
const PROBE_KEY: &[u8] = b"health_probe";

impl StoreProbe {
    pub(crate) fn new(db: Arc<DB>, stats: Arc<StoreStats>) -> StoreProbe {
        StoreProbe { db, stats }
    }

    /// Writes and fsyncs a small record: fails, naming why, when the disk is full, read-only
    /// or failing.
    pub fn writable(&self) -> Result<(), String> {
        let cf = self
            .db
            .cf_handle(CF_META)
            .ok_or_else(|| "the meta column family is missing".to_string())?;
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.db
            .put_cf_opt(cf, PROBE_KEY, now.to_le_bytes(), &wo)
            .map_err(|e| format!("storage not writable: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timed_counts_sums_and_keeps_the_longest() {
        let t = Timed::default();
        t.record(Duration::from_millis(3));
        t.record(Duration::from_millis(7));
        assert_eq!(t.count(), 2);
        assert!((t.total_secs() - 0.010).abs() < 1e-9);
        assert!((t.max_secs() - 0.007).abs() < 1e-9);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_probe_writes_and_the_stats_see_fsyncs() {
        use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
        let tmp = tempfile::tempdir().unwrap();
        let mut opened = crate::open(&tmp.path().join("n1"), "c", 1).unwrap();
        opened.probe.writable().unwrap();
        let before = opened.probe.stats.fsyncs.count();
        let vote = openraft::Vote::new(1, 1);
        opened.log_store.save_vote(&vote).await.unwrap();
        let entry = openraft::Entry::<crate::TypeConfig> {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), 1),
            payload: openraft::EntryPayload::Blank,
        };
        opened.log_store.blocking_append([entry]).await.unwrap();
        assert!(
            opened.probe.stats.fsyncs.count() > before,
            "an append is fsynced and counted"
        );
    }
}
