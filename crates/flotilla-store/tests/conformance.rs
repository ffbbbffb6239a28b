//! openraft's storage conformance suite against the RocksDB store, plus persistence checks
//! that reopen a data dir.

use flotilla_core::{Command, Proposal, TaskSpec, TaskState};
use flotilla_store::{LogStore, StateMachine, TypeConfig};
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder, StorageError};
use tempfile::TempDir;

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let opened = flotilla_store::open(&dir.path().join("data"), "suite", 0).expect("open");
        Ok((dir, opened.log_store, opened.state_machine))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(RocksBuilder).unwrap();
}

fn entry(index: u64, commands: Vec<Command>) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Proposal { commands }),
    }
}

fn submit(n: usize) -> Command {
    Command::submit(
        5,
        (0..n).map(|_| TaskSpec::new("q", b"x".to_vec())).collect(),
    )
}

/// The state machine persists through snapshots only: a reopened data dir holds the state of
/// its latest snapshot, and entries applied after it are not on disk as state (openraft
/// re-applies them from the log at start-up; tests/restart.rs covers that end to end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_machine_reopens_at_its_latest_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    let cancel = |id| Command::Cancel {
        now_ms: 6,
        task_id: flotilla_core::TaskId(id),
    };
    let snap = {
        let mut opened = flotilla_store::open(&path, "c", 1).unwrap();
        let entries = vec![entry(1, vec![submit(3)]), entry(2, vec![submit(2)])];
        let responses = opened.state_machine.apply(entries).await.unwrap();
        assert_eq!(responses.len(), 2);
        opened
            .state_machine
            .apply(vec![entry(3, vec![cancel(2)])])
            .await
            .unwrap();
        let snap = opened
            .state_machine
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        // Applied after the snapshot: only in memory (and, in a real replica, in the log).
        opened
            .state_machine
            .apply(vec![entry(4, vec![cancel(3)])])
            .await
            .unwrap();
        assert_eq!(opened.state_machine.shared().read().state.task_count(), 5);
        snap
    };
    let mut reopened = flotilla_store::open(&path, "c", 1).unwrap();
    let (applied, _) = reopened.state_machine.applied_state().await.unwrap();
    assert_eq!(applied.unwrap().index, 3, "state as of the snapshot");
    {
        let shared = reopened.state_machine.shared();
        let a = shared.read();
        assert_eq!(a.state.task_count(), 5);
        assert_eq!(a.state.count(TaskState::Cancelled), 1);
        assert_eq!(a.state.next_task_id(), 6);
        a.state.check_invariants().unwrap();
    }
    let current = reopened
        .state_machine
        .get_current_snapshot()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(current.meta, snap.meta);

    // The snapshot, installed into a fresh store, reproduces the state there, durably.
    let other = tempfile::tempdir().unwrap();
    let mut target = flotilla_store::open(&other.path().join("d"), "c", 2).unwrap();
    target
        .state_machine
        .install_snapshot(&snap.meta, snap.snapshot)
        .await
        .unwrap();
    drop(target);
    let target = flotilla_store::open(&other.path().join("d"), "c", 2).unwrap();
    {
        let shared = target.state_machine.shared();
        let a = shared.read();
        assert_eq!(a.state.task_count(), 5);
        assert_eq!(a.last_applied.unwrap().index, 3);
    }
    assert!(reopened.log_store.is_pristine().unwrap());
    let _ = reopened.log_store.get_log_state().await.unwrap();
}
