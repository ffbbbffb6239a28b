//! Failover: a leader killed with SIGKILL loses nothing that was acknowledged, a new leader
//! takes over within seconds, the killed replica recovers from its data dir and catches up,
//! and resubmitting the same idempotency keys creates nothing.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use flotilla_client::{Consistency, ListQuery, TaskId};
use support::{all_tasks, assert_exactly_acknowledged, spec, TestCluster};

const TASKS: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_leader_sigkill_keeps_every_task_once() {
    let mut tc = TestCluster::start(3).await;
    let client = tc.client();

    // 1000 tasks, 20 concurrent submitters of batches of 10.
    let keys: Vec<String> = (0..TASKS).map(|i| format!("task-{i}")).collect();
    let mut handles = Vec::new();
    for chunk in keys.chunks(50) {
        let client = client.clone();
        let chunk = chunk.to_vec();
        handles.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for group in chunk.chunks(10) {
                let specs = group.iter().map(|k| spec(k)).collect();
                ids.extend(
                    group
                        .iter()
                        .cloned()
                        .zip(client.submit(specs).await.unwrap()),
                );
            }
            ids
        }));
    }
    let mut acked: BTreeMap<String, TaskId> = BTreeMap::new();
    for h in handles {
        acked.extend(h.await.unwrap());
    }
    assert_eq!(acked.len(), TASKS);
    assert_eq!(
        acked.values().collect::<BTreeSet<_>>().len(),
        TASKS,
        "ids are distinct"
    );

    // SIGKILL the leader.
    let old = tc.leader().await;
    tc.cluster.kill(old).unwrap();
    let killed_at = Instant::now();
    let new = tc.leader().await;
    let failover = killed_at.elapsed();
    assert_ne!(new, old);
    assert!(
        failover < Duration::from_secs(10),
        "new leader after {failover:?}"
    );

    // Every acknowledged task is there, exactly once, under its key.
    assert_exactly_acknowledged(&client, &acked).await;

    // Resubmitting every key creates nothing and returns the original ids.
    for group in keys.chunks(100) {
        let ids = client
            .submit(group.iter().map(|k| spec(k)).collect())
            .await
            .unwrap();
        for (k, id) in group.iter().zip(ids) {
            assert_eq!(acked[k], id, "resubmitted {k}");
        }
    }
    assert_eq!(all_tasks(&client).await.len(), TASKS);

    // More work while the old leader is down, then it restarts from its data dir and catches up.
    let extra = client.submit(vec![spec("while-down")]).await.unwrap()[0];
    tc.cluster.start(old).unwrap();
    let rejoined = flotilla_client::Client::new([tc.cluster.addr(old).to_string()]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let caught_up = rejoined.get_with(extra, Consistency::Stale).await.is_ok();
        if caught_up {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restarted replica did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = rejoined
        .cluster_status_of(tc.cluster.addr(old))
        .await
        .unwrap();
    assert_eq!(status.task_count as usize, TASKS + 1);
    assert_eq!(status.leader_id, Some(new));
    let page = rejoined
        .list(&ListQuery {
            limit: 10_000,
            consistency: Consistency::Stale,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.tasks.len(), TASKS + 1);
}

/// Pipelined submits (one SubmitStream, many single-task requests in flight) through a leader
/// SIGKILL: every request is answered, and exactly the acknowledged tasks exist, once each.
/// The client lists a follower first, so the stream is also refused and redirected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_pipelined_submits_survive_leader_sigkill() {
    const SUBMITTERS: usize = 16;
    const PER_SUBMITTER: usize = 100;
    let mut tc = TestCluster::start(3).await;
    let old = tc.leader().await;
    let mut addrs: Vec<String> = tc
        .cluster
        .ids()
        .into_iter()
        .map(|id| tc.cluster.addr(id).to_string())
        .collect();
    let old_addr = tc.cluster.addr(old);
    addrs.sort_by_key(|a| a == old_addr);
    let client = flotilla_client::Client::new(addrs).unwrap();
    let pipeline = client.pipeline();

    let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut handles = Vec::new();
    for s in 0..SUBMITTERS {
        let pipeline = pipeline.clone();
        let acked = acked.clone();
        handles.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..PER_SUBMITTER {
                let key = format!("piped-{s}-{i}");
                let id = pipeline.submit(vec![spec(&key)]).await.unwrap()[0];
                acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                ids.push((key, id));
            }
            ids
        }));
    }
    // Kill the leader while requests are in flight.
    while acked.load(std::sync::atomic::Ordering::Relaxed) < SUBMITTERS * PER_SUBMITTER / 4 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tc.cluster.kill(old).unwrap();
    let mut keyed: BTreeMap<String, TaskId> = BTreeMap::new();
    for h in handles {
        keyed.extend(h.await.unwrap());
    }
    assert_eq!(keyed.len(), SUBMITTERS * PER_SUBMITTER);
    assert_ne!(tc.leader().await, old);
    assert_exactly_acknowledged(&client, &keyed).await;
}
