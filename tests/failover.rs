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

/// Submitters with one task in flight each; returns the acknowledged keys with their ids and
/// the times of the acknowledgements, once `stop` is set.
fn submit_loop(
    client: &flotilla_client::Client,
    n: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<(Instant, String, TaskId)>>> {
    (0..n)
        .map(|s| {
            let (client, stop) = (client.clone(), stop.clone());
            tokio::spawn(async move {
                let mut acks = Vec::new();
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = format!("roll-{s}-{i}");
                    if let Ok(ids) = client.submit(vec![spec(&key)]).await {
                        acks.push((Instant::now(), key, ids[0]));
                        i += 1;
                    }
                }
                acks
            })
        })
        .collect()
}

/// The largest gap between `from` or an acknowledgement and the next one, up to `to`.
fn largest_gap(times: &[Instant], from: Instant, to: Instant) -> Duration {
    let mut t: Vec<Instant> = times
        .iter()
        .copied()
        .filter(|t| *t >= from && *t <= to)
        .collect();
    t.push(from);
    t.sort();
    t.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(to - from)
}

/// A rolling restart under load, each replica stopped with SIGTERM in turn: the leader hands
/// leadership over before it exits (exit status 0), nothing acknowledged is lost or doubled.
/// After a SIGKILL of the leader its followers find its port refusing connections and give
/// its lease up at once (`leader_watch`), not after lease + election timeout. The submit gaps
/// are printed (about 105 ms for both with the defaults, against 1.35-1.45 s before the
/// release and 2.65-2.87 s before `leader_watch`); `flotilla bench failover` is where they
/// are measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_with_sigterm_loses_nothing_and_the_leader_hands_over() {
    let mut tc = TestCluster::start(3).await;
    let client = tc.client();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let submitters = submit_loop(&client, 4, stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut leader_stops = Vec::new();
    for id in tc.cluster.ids() {
        let was_leader = tc.leader().await == id;
        let at = Instant::now();
        let status = tc.cluster.stop(id).unwrap();
        assert!(
            status.success(),
            "replica {id} stopped cleanly: {status}\n{}",
            tc.cluster.log_tail(id, 15)
        );
        if was_leader {
            let log = std::fs::read_to_string(tc.cluster.log_path(id)).unwrap();
            assert!(log.contains("leadership handed over"), "{log}");
            leader_stops.push(at);
        }
        tc.leader().await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        tc.cluster.start(id).unwrap();
        tc.leader().await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    // For comparison, a SIGKILL of the leader.
    let leader = tc.leader().await;
    let log_len = |id: u64| std::fs::metadata(tc.cluster.log_path(id)).map_or(0, |m| m.len());
    let logged_before_kill: BTreeMap<u64, u64> = tc
        .cluster
        .ids()
        .into_iter()
        .map(|id| (id, log_len(id)))
        .collect();
    let killed_at = Instant::now();
    tc.cluster.kill(leader).unwrap();
    tc.leader().await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    tc.cluster.start(leader).unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = BTreeMap::new();
    let mut times = Vec::new();
    for s in submitters {
        for (t, k, id) in s.await.unwrap() {
            times.push(t);
            acked.insert(k, id);
        }
    }
    tc.leader().await;
    assert_exactly_acknowledged(&client, &acked).await;

    // The hand-over may land on the replica stopped next: then the leader is stopped again.
    assert!(!leader_stops.is_empty(), "the leader was stopped");
    let window = Duration::from_secs(5);
    let term_gap = leader_stops
        .iter()
        .map(|at| largest_gap(&times, *at, *at + window))
        .max()
        .unwrap();
    let kill_gap = largest_gap(&times, killed_at, killed_at + window);
    eprintln!(
        "rolling restart: largest submit gap when the leader got SIGTERM {term_gap:?}, after a SIGKILL {kill_gap:?}; {} tasks",
        acked.len()
    );
    // How long each stalled is a benchmark's figure (`flotilla bench failover`), not asserted
    // here; what is asserted is that the mechanisms ran and submits resumed after each fault.
    for at in leader_stops.iter().chain([&killed_at]) {
        assert!(
            times.iter().any(|t| *t > *at + Duration::from_millis(100)),
            "submits resumed after the leader stopped"
        );
    }
    let stood = tc.cluster.ids().into_iter().any(|id| {
        let log = std::fs::read(tc.cluster.log_path(id)).unwrap_or_default();
        let from = (logged_before_kill[&id] as usize).min(log.len());
        String::from_utf8_lossy(&log[from..]).contains(
            "the leader's port refuses connections: giving up its lease and standing for election",
        )
    });
    assert!(
        stood,
        "after the SIGKILL a follower found the leader's port refusing and stood for election at once (leader_watch)"
    );
}

/// A leader frozen with SIGSTOP (its connections stay open, it answers nothing): submits
/// waiting on it move to the new leader as soon as the others name it, not after the client's
/// 5 s request timeout. Plain `Client::submit` from 8 submitters; exactly the acknowledged
/// tasks exist afterwards, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_paused_leader_submits_move_to_the_new_leader_without_waiting_out_timeouts() {
    const SUBMITTERS: usize = 8;
    let mut tc = TestCluster::start(3).await;
    let client = tc.client();
    let old = tc.leader().await;
    let old_term = client
        .cluster_status_of(tc.cluster.addr(old))
        .await
        .unwrap()
        .term;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acks = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    let mut handles = Vec::new();
    for s in 0..SUBMITTERS {
        let (client, stop, acks) = (client.clone(), stop.clone(), acks.clone());
        handles.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("paused-{s}-{i}");
                let id = client.submit(vec![spec(&key)]).await.unwrap()[0];
                acks.lock().unwrap().push(Instant::now());
                ids.push((key, id));
                i += 1;
            }
            ids
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    tc.cluster.pause(old).unwrap();
    let paused_at = Instant::now();
    // When a follower leads in a newer term.
    let others: Vec<String> = tc
        .cluster
        .ids()
        .into_iter()
        .filter(|id| *id != old)
        .map(|id| tc.cluster.addr(id).to_string())
        .collect();
    let elected = 'wait: loop {
        for addr in &others {
            if let Ok(s) = client.cluster_status_of(addr).await {
                if s.role == "leader" && s.term > old_term {
                    break 'wait paused_at.elapsed();
                }
            }
        }
        assert!(
            paused_at.elapsed() < Duration::from_secs(20),
            "no new leader"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut keyed: BTreeMap<String, TaskId> = BTreeMap::new();
    for h in handles {
        keyed.extend(h.await.unwrap());
    }
    // The largest gap between two acknowledgements around the pause.
    let mut times = acks.lock().unwrap().clone();
    times.sort();
    let gap = times
        .windows(2)
        .filter(|w| w[1] > paused_at)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .expect("acknowledged after the pause");
    eprintln!("paused leader: new leader after {elected:?}, largest submit gap {gap:?}");
    // The stuck calls moved within about a hedge round of the election (a probe every 100 ms
    // growing to 0.5 s), far below the 5 s request timeout they used to wait out.
    assert!(
        gap < elected + Duration::from_millis(1500),
        "largest submit gap {gap:?}, new leader after {elected:?}"
    );
    // The followers polled each other and gave the frozen leader's lease up after an election
    // timeout of silence (`leader_watch`), not after lease + election timeout.
    let gave_up = others_ids(&tc, old).into_iter().any(|id| {
        std::fs::read_to_string(tc.cluster.log_path(id))
            .unwrap_or_default()
            .contains("a majority of the voters has not heard the leader for an election timeout")
    });
    assert!(
        gave_up,
        "a follower gave the frozen leader's lease up once a majority had not heard it (new leader after {elected:?})"
    );
    tc.cluster.resume(old).unwrap();
    assert_exactly_acknowledged(&client, &keyed).await;
}

fn others_ids(tc: &TestCluster, leader: u64) -> Vec<u64> {
    tc.cluster
        .ids()
        .into_iter()
        .filter(|id| *id != leader)
        .collect()
}
