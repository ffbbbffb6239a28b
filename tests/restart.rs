//! Restarts: a whole cluster killed at once and restarted keeps every acknowledged task; a data
//! dir is never silently reinitialised or taken over by another node.

mod support;

use std::process::Command;

use flotilla_cli::local_cluster::ReplicaOptions;
use support::{all_tasks, bin, spec, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_whole_cluster_keeps_every_task() {
    let mut tc = TestCluster::start(3).await;
    let client = tc.client();
    let mut ids = Vec::new();
    for i in 0..20 {
        let specs = (0..10).map(|j| spec(&format!("r-{i}-{j}"))).collect();
        ids.extend(client.submit(specs).await.unwrap());
    }
    let cancelled = ids[3];
    client.cancel(cancelled).await.unwrap();

    for id in tc.cluster.ids() {
        tc.cluster.kill(id).unwrap();
    }
    tc.cluster.start_all().unwrap();
    tc.leader().await;

    let tasks = all_tasks(&client).await;
    assert_eq!(tasks.len(), ids.len());
    assert_eq!(
        tasks.iter().map(|t| t.id).collect::<Vec<_>>(),
        ids,
        "same ids, in order"
    );
    let t = client.get(cancelled).await.unwrap();
    assert_eq!(t.state, flotilla_core::TaskState::Cancelled);
    // Ids continue after the restart; nothing is reused.
    let next = client.submit(vec![spec("after-restart")]).await.unwrap()[0];
    assert_eq!(next.0, ids.last().unwrap().0 + 1);
}

/// State is durable as the latest snapshot plus the log after it: with a snapshot every few
/// entries, a whole-cluster restart loads each replica's snapshot, re-applies the committed
/// entries after it, and every task is back in the state it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_from_snapshot_and_log_keeps_every_task() {
    let mut tc = TestCluster::start_with(
        3,
        ReplicaOptions {
            snapshot_every_entries: Some(16),
            ..ReplicaOptions::for_tests()
        },
    )
    .await;
    let client = tc.client();
    let mut ids = Vec::new();
    // One request at a time: one entry each, so snapshots are taken along the way ...
    for i in 0..100 {
        ids.extend(client.submit(vec![spec(&format!("s-{i}"))]).await.unwrap());
    }
    for id in &ids[..10] {
        client.cancel(*id).await.unwrap();
    }
    // ... and the last few entries are only in the log.
    for i in 100..107 {
        ids.extend(client.submit(vec![spec(&format!("s-{i}"))]).await.unwrap());
    }
    let mut before = Vec::new();
    for id in tc.cluster.ids() {
        let s = client.cluster_status_of(tc.cluster.addr(id)).await.unwrap();
        assert!(s.snapshot_index > 0, "replica {id} took no snapshot: {s:?}");
        before.push(s);
    }
    let leader_status = before.iter().find(|s| s.role == "leader").unwrap();
    assert!(
        leader_status.snapshot_index < leader_status.commit_index,
        "entries after the snapshot"
    );

    for id in tc.cluster.ids() {
        tc.cluster.kill(id).unwrap();
    }
    tc.cluster.start_all().unwrap();
    tc.leader().await;

    let tasks = all_tasks(&client).await;
    assert_eq!(tasks.iter().map(|t| t.id).collect::<Vec<_>>(), ids);
    for t in &tasks {
        let want = if ids[..10].contains(&t.id) {
            flotilla_core::TaskState::Cancelled
        } else {
            flotilla_core::TaskState::Pending
        };
        assert_eq!(t.state, want, "task {}", t.id);
    }
    let next = client.submit(vec![spec("after-restart")]).await.unwrap()[0];
    assert_eq!(next.0, ids.last().unwrap().0 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_refuses_foreign_data_dir() {
    let mut tc = TestCluster::start(1).await;
    let dir = tc.cluster.data_dir(1);
    tc.cluster.kill(1).unwrap();
    // Another node id on node 1's data dir.
    let out = Command::new(bin())
        .args([
            "server",
            "--id",
            "2",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&dir)
        .args(["--peers", "2=127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("belongs to node 1"), "{err}");
    // A directory with foreign content.
    let junk = tc.dir.path().join("junk");
    std::fs::create_dir_all(&junk).unwrap();
    std::fs::write(junk.join("important.txt"), "keep me").unwrap();
    let out = Command::new(bin())
        .args([
            "server",
            "--id",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&junk)
        .args(["--peers", "1=127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a flotilla data dir"));
    assert_eq!(
        std::fs::read_to_string(junk.join("important.txt")).unwrap(),
        "keep me"
    );
}
