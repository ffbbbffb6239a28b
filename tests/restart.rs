//! Restarts: a whole cluster killed at once and restarted keeps every acknowledged task; a data
//! dir is never silently reinitialised or taken over by another node.

mod support;

use std::process::Command;
use std::time::Duration;

use flotilla_testkit::ClusterOptions;
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
        ClusterOptions {
            snapshot_every_entries: Some(16),
            ..ClusterOptions::for_tests()
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

/// Flips bytes of every WAL file of `dir` where `marker` is written, in the middle of the
/// records RocksDB will replay; returns how many places were damaged.
fn damage_wal_at(dir: &std::path::Path, marker: &[u8]) -> usize {
    let mut damaged = 0;
    for entry in std::fs::read_dir(dir).expect("data dir") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_none_or(|x| x != "log") {
            continue;
        }
        let mut bytes = std::fs::read(&path).expect("read WAL");
        if let Some(at) = bytes.windows(marker.len()).position(|w| w == marker) {
            for b in &mut bytes[at..at + 64] {
                *b ^= 0x5a;
            }
            std::fs::write(&path, bytes).expect("write WAL");
            damaged += 1;
        }
    }
    damaged
}

/// A single damaged replica plus ordinary lag never loses an acknowledged task. Replica D
/// acknowledged every task (with the leader L) while replica G was down; then L is lost and
/// D's WAL is damaged in the middle, which RocksDB's recovery takes for a torn tail: D comes
/// back without the later tasks. D and G must not elect a leader (either would lack tasks
/// the cluster acknowledged); once L is back, every task is there, and D catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_replica_and_a_lagging_one_never_elect_a_leader_without_acknowledged_tasks() {
    let mut tc = TestCluster::start(3).await;
    let leader = tc.leader().await;
    let others: Vec<u64> = tc
        .cluster
        .ids()
        .into_iter()
        .filter(|i| *i != leader)
        .collect();
    let (damaged, lagging) = (others[0], others[1]);
    tc.cluster.kill(lagging).unwrap();
    let client = tc.client();
    let mut ids = Vec::new();
    for i in 0..20 {
        let specs = (0..100)
            .map(|j| spec(&format!("dmg-{i:02}-{j:02}")))
            .collect();
        ids.extend(
            client
                .submit(specs)
                .await
                .expect("submit with a quorum of two"),
        );
    }
    assert_eq!(ids.len(), 2000);
    tc.cluster.kill(leader).unwrap();
    tc.cluster.kill(damaged).unwrap();
    let places = damage_wal_at(&tc.cluster.data_dir(damaged), b"dmg-08-00");
    assert!(places >= 1, "the tasks' records were found in the WAL");

    tc.cluster.start(damaged).unwrap();
    tc.cluster.start(lagging).unwrap();
    let no_leader = tc.cluster.wait_for_leader(Duration::from_secs(5)).await;
    assert!(
        no_leader.is_err(),
        "a leader was elected without the lost tasks: {no_leader:?}\n{}\n{}",
        tc.cluster.log_tail(damaged, 20),
        tc.cluster.log_tail(lagging, 20)
    );
    let log = std::fs::read_to_string(tc.cluster.log_path(damaged)).unwrap();
    assert!(
        log.contains("damaged log"),
        "the damage was detected:\n{log}"
    );
    assert!(
        log.contains("vote refused"),
        "a lagging candidate was refused:\n{log}"
    );

    tc.cluster.start(leader).unwrap();
    tc.leader().await;
    let tasks = all_tasks(&client).await;
    assert_eq!(
        tasks.iter().map(|t| t.id).collect::<Vec<_>>(),
        ids,
        "every acknowledged task, once"
    );
    // The damaged replica catches up from the others, and elections are on again there.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(tc.cluster.log_path(damaged)).unwrap();
        if log.contains("caught up past the damage") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never caught up:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every task replica `addr` holds (its own state, not the leader's), as (id, key).
async fn tasks_on(addr: &str) -> Vec<(u64, String)> {
    let client = flotilla_client::Client::new(vec![addr.to_string()]).expect("client");
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = client
            .list(&flotilla_client::ListQuery {
                after,
                limit: 1000,
                consistency: flotilla_client::Consistency::Stale,
                ..Default::default()
            })
            .await
            .expect("list a replica's tasks");
        out.extend(page.tasks.into_iter().map(|t| {
            let key = t.spec.idempotency_key.clone().unwrap_or_default();
            (t.id.0, key)
        }));
        match page.next_after {
            Some(a) => after = Some(a),
            None => return out,
        }
    }
}

/// A leader whose log comes back shorter than what it had sent (its WAL damaged in the
/// middle) must not resume leading its old term, as openraft does for a replica whose stored
/// vote is a committed one for itself: it would write new entries under log ids its followers
/// already hold for other entries, which they take for the same ones — the replicas diverge
/// (seen in the fault suite: acknowledged tasks lost, others under other ids, replicas holding
/// different tasks at one applied index). Restarted first and alone, it is not a leader; with
/// the others back, every acknowledged task is there once, and every replica holds the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_restarted_with_a_damaged_log_does_not_resume_leading() {
    let mut tc = TestCluster::start(3).await;
    let leader = tc.leader().await;
    let client = tc.client();
    let mut acked = std::collections::BTreeMap::new();
    for i in 0..20 {
        let keys: Vec<String> = (0..100).map(|j| format!("lead-{i:02}-{j:02}")).collect();
        let ids = client
            .submit(keys.iter().map(|k| spec(k)).collect())
            .await
            .expect("submit");
        acked.extend(keys.into_iter().zip(ids));
    }
    for id in tc.cluster.ids() {
        tc.cluster.kill(id).unwrap();
    }
    let places = damage_wal_at(&tc.cluster.data_dir(leader), b"lead-08-00");
    assert!(places >= 1, "the tasks' records were found in the WAL");

    tc.cluster.start(leader).unwrap();
    let alone = support::eventually("the old leader answers", Duration::from_secs(20), || {
        let client = client.clone();
        let addr = tc.cluster.addr(leader).to_string();
        async move { client.cluster_status_of(&addr).await.ok() }
    })
    .await;
    assert_ne!(
        alone.role,
        "leader",
        "the restarted leader resumed leading term {} with a damaged log:\n{}",
        alone.term,
        tc.cluster.log_tail(leader, 20)
    );
    let log = std::fs::read_to_string(tc.cluster.log_path(leader)).unwrap();
    assert!(
        log.contains("damaged log"),
        "the damage was detected:\n{log}"
    );

    for id in tc.cluster.ids().into_iter().filter(|i| *i != leader) {
        tc.cluster.start(id).unwrap();
    }
    tc.leader().await;
    let keys: Vec<String> = (0..10).map(|j| format!("after-{j}")).collect();
    let ids = client
        .submit(keys.iter().map(|k| spec(k)).collect())
        .await
        .expect("submit after the restart");
    acked.extend(keys.into_iter().zip(ids));
    support::assert_exactly_acknowledged(&client, &acked).await;

    // Every replica, once it has applied everything, holds exactly those tasks.
    let want: Vec<(u64, String)> = {
        let mut v: Vec<_> = acked.iter().map(|(k, id)| (id.0, k.clone())).collect();
        v.sort();
        v
    };
    for id in tc.cluster.ids() {
        let addr = tc.cluster.addr(id).to_string();
        let got = support::eventually(
            &format!("replica {id} to hold every acknowledged task"),
            Duration::from_secs(30),
            || {
                let addr = addr.clone();
                let want = want.len();
                async move {
                    let got = tasks_on(&addr).await;
                    (got.len() >= want).then_some(got)
                }
            },
        )
        .await;
        assert_eq!(
            got, want,
            "replica {id} holds exactly the acknowledged tasks"
        );
    }
}

/// A replica asked to stop while a client waits on it (a WaitTask of up to 60 s, on a task no
/// worker will ever run) exits within its bounds — the hand-over of leadership (≤ 5 s) plus the
/// drain of open calls (≤ 5 s) — not when the wait would have ended: the wait blocks on this
/// replica's Raft, which stops only after the server. Without the drain bound this stop took
/// the full 60 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_replica_does_not_wait_for_open_calls() {
    let mut tc = TestCluster::start(3).await;
    let leader = tc.leader().await;
    let client = tc.client();
    let id = client.submit(vec![spec("never-runs")]).await.unwrap()[0];
    let waiting = client.clone();
    let waiter = tokio::spawn(async move { waiting.wait(id, Duration::from_secs(60)).await });
    // Time for the call to reach the leader (it then blocks there until a change or 60 s).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiter.is_finished(),
        "the wait ended early: {:?}",
        waiter.await
    );

    let started = std::time::Instant::now();
    let status = tokio::task::block_in_place(|| tc.cluster.stop(leader)).unwrap();
    let took = started.elapsed();
    assert!(status.success(), "replica {leader} exited with {status}");
    assert!(
        took < Duration::from_secs(15),
        "replica {leader} took {took:?} to stop with a call open:\n{}",
        tc.cluster.log_tail(leader, 20)
    );
    waiter.abort();
}
