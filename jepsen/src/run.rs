//! One test run, phase by phase, writing everything under its store directory:
//!
//! ```text
//!  start cluster ─▶ warm-up ─▶ chaos (nemesis schedule) ─▶ heal ─▶ recovery ─▶ drain
//!     ─▶ quiescence ─▶ final dump of every replica ─▶ check ─▶ results.json + report
//! ```
//!
//! Clients run from warm-up until the end of recovery; the monitor until the final dump.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use flotilla_client::{Client, ClientConfig, Consistency, ListQuery, Task};
use tokio::sync::Mutex;

use crate::binaries::{fnv1a, FNV_OFFSET};
use crate::checker::{self, FinalDump, FinalTask, ReplicaDump, Results, RunParams};
use crate::cluster::{Cluster, ClusterOptions};
use crate::history::Recorder;
use crate::nemesis::{self, Timing};
use crate::workload::{self, phase, Plan, Shared};

/// Everything `test` was asked to do.
#[derive(Debug, Clone)]
pub struct TestConfig {
    pub params: RunParams,
    pub bin: PathBuf,
    /// This executable, which workers run as their task (`sink-report`).
    pub jepsen_bin: PathBuf,
    pub out: PathBuf,
    pub warmup_s: u64,
    pub recovery_s: u64,
    pub drain_s: u64,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
    pub think_ms: u64,
    pub task_work_ms: u64,
}

pub async fn test(cfg: TestConfig) -> Result<Results> {
    std::fs::create_dir_all(&cfg.out)?;
    let p = &cfg.params;
    std::fs::write(cfg.out.join("run.json"), serde_json::to_vec_pretty(p)?)?;
    let faults = nemesis::expand(&p.nemesis).map_err(anyhow::Error::msg)?;
    let timing = Timing {
        chaos_ms: p.time_limit_s * 1000,
        quiet_ms: (2_000, 4_000),
        fault_ms: (3_000, 6_000),
    };
    let steps = nemesis::schedule(p.seed, &faults, timing);
    std::fs::write(
        cfg.out.join("schedule.json"),
        serde_json::to_vec_pretty(&steps)?,
    )?;

    let rec = Recorder::create(&cfg.out.join("history.jsonl"))?;
    let mut cluster = Cluster::new(
        ClusterOptions {
            bin: cfg.bin.clone(),
            nodes: p.nodes,
            heartbeat_ms: cfg.heartbeat_ms,
            election_timeout_ms: cfg.election_timeout_ms,
            sut_bug: p.sut_bug.clone(),
            // Shorter than a worker-pause (3-6 s), so a paused worker's lease expires.
            worker_ttl_ms: (p.workers > 0).then_some(2_500),
            tmpfs_mb: faults
                .iter()
                .any(|f| nemesis::family_of(f) == Some("disk-full"))
                .then_some(nemesis::DISK_FULL_TMPFS_MB),
            // With disk faults, snapshots every few seconds: a full disk then bites (a reused
            // WAL file needs no new space, a snapshot file does) and a damaged replica also
            // catches up from snapshots; so does a replica the membership nemesis adds.
            snapshot_every_entries: faults
                .iter()
                .any(|f| {
                    matches!(
                        nemesis::family_of(f),
                        Some("disk-full" | "disk-corrupt" | "membership")
                    )
                })
                .then_some(300),
            // A replica to add fresh (membership nemesis).
            spares: usize::from(faults.contains(&"member-add-fresh")),
            auth: if p.auth {
                Some(crate::auth::setup(&cfg.bin, &cfg.out.join("auth"))?)
            } else {
                None
            },
            tls: if p.tls {
                Some(crate::auth::setup_tls(&cfg.bin, &cfg.out.join("tls"))?)
            } else {
                None
            },
        },
        &cfg.out.join("cluster"),
    )
    .await?;
    phase(&rec, "setup");
    cluster.start_all()?;
    cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .map_err(anyhow::Error::msg)
        .context("no leader after start-up")?;

    let sink = crate::sink::start(rec.clone()).await?;
    let argv: Vec<String> = if p.workers > 0 {
        vec![
            cfg.jepsen_bin.to_string_lossy().into_owned(),
            "sink-report".into(),
            "--addr".into(),
            sink.clone(),
            "--work-ms".into(),
            cfg.task_work_ms.to_string(),
        ]
    } else {
        vec!["true".into()]
    };
    if p.workers > 0 {
        cluster.set_worker_args(vec![
            "--queue".into(),
            "jepsen".into(),
            "--heartbeat-ms".into(),
            "500".into(),
        ]);
        for w in 1..=p.workers as u64 {
            cluster.start_worker(w)?;
        }
    }
    let addrs = cluster.addrs();
    let cluster = Arc::new(Mutex::new(cluster));

    // Warm-up: clients and monitor start.
    phase(&rec, "warm-up");
    let stop_clients = Arc::new(AtomicBool::new(false));
    let stop_monitor = Arc::new(AtomicBool::new(false));
    let monitor = tokio::spawn(workload::monitor(
        addrs.clone(),
        rec.clone(),
        stop_monitor.clone(),
    ));
    let shared = Arc::new(Shared::default());
    let mut clients = Vec::new();
    for n in 0..p.clients {
        let cl = Client::with_config(
            addrs.clone(),
            ClientConfig {
                token: crate::auth::client_token(),
                tls: crate::auth::client_tls(),
                request_timeout: Duration::from_secs(1),
                call_timeout: Duration::from_secs(5),
                ..ClientConfig::default()
            },
        )?;
        let plan = Plan {
            seed: p.seed,
            argv: argv.clone(),
            think_ms: cfg.think_ms,
            cancels: true,
        };
        clients.push(tokio::spawn(workload::client(
            n,
            cl,
            plan,
            shared.clone(),
            rec.clone(),
            stop_clients.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_secs(cfg.warmup_s)).await;

    phase(&rec, "chaos");
    let chaos_end = tokio::time::Instant::now() + Duration::from_millis(timing.chaos_ms);
    nemesis::run(cluster.clone(), steps, rec.clone()).await?;
    tokio::time::sleep_until(chaos_end).await;

    phase(&rec, "heal");
    nemesis::heal_all(&cluster, p.workers as u64, &rec).await?;
    let healed = Instant::now();
    let leader = cluster
        .lock()
        .await
        .wait_for_leader(Duration::from_secs(30))
        .await
        .ok();
    let leader_after_heal_ms = leader.map(|_| healed.elapsed().as_millis() as u64);

    phase(&rec, "recovery");
    tokio::time::sleep(Duration::from_secs(cfg.recovery_s)).await;
    stop_clients.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }

    phase(&rec, "drain");
    let final_client = cluster.lock().await.client(Duration::from_secs(10));
    let drained = if p.workers > 0 {
        drain(&final_client, &rec, Duration::from_secs(cfg.drain_s)).await
    } else {
        true
    };

    phase(&rec, "final");
    let tasks = all_tasks(&final_client, Consistency::Linearizable, 5).await;
    let replicas = dump_replicas(&addrs).await;
    stop_monitor.store(true, Ordering::Relaxed);
    let _ = monitor.await;
    cluster.lock().await.shutdown();
    rec.flush();

    let dump = FinalDump {
        replicas,
        tasks: tasks.map(|ts| ts.iter().map(final_task).collect()),
        leader_after_heal_ms,
        drained,
    };
    std::fs::write(
        cfg.out.join("final.json"),
        serde_json::to_vec_pretty(&dump)?,
    )?;
    let ops = rec.ops();
    let results = checker::check(&ops, p, &dump);
    crate::report::write(&cfg.out, &ops, &results)?;
    Ok(results)
}

/// Re-checks a saved run.
pub fn recheck(dir: &Path) -> Result<Results> {
    let ops = crate::history::load(&dir.join("history.jsonl"))?;
    let params: RunParams = serde_json::from_slice(&std::fs::read(dir.join("run.json"))?)?;
    let dump: FinalDump = serde_json::from_slice(&std::fs::read(dir.join("final.json"))?)?;
    let results = checker::check(&ops, &params, &dump);
    crate::report::write(dir, &ops, &results)?;
    Ok(results)
}

fn final_task(t: &Task) -> FinalTask {
    FinalTask {
        id: t.id.0,
        key: t.spec.idempotency_key.clone(),
        state: t.state.as_str().to_string(),
        attempts: t.attempts,
        result_attempt: t.result.as_deref().and_then(result_attempt),
    }
}

/// The `attempt=N` that `sink-report` printed, found in a command task's result.
fn result_attempt(result: &[u8]) -> Option<u32> {
    let text = String::from_utf8_lossy(result);
    let at = text.find("attempt=")? + "attempt=".len();
    let digits: String = text[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// Every task, paging through `ListTasks`; `None` if some page failed `tries` times.
async fn all_tasks(cl: &Client, consistency: Consistency, tries: u32) -> Option<Vec<Task>> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let mut page = None;
        for _ in 0..tries {
            let q = ListQuery {
                after,
                limit: 1000,
                consistency,
                ..Default::default()
            };
            match cl.list(&q).await {
                Ok(p) => {
                    page = Some(p);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        let page = page?;
        out.extend(page.tasks);
        match page.next_after {
            Some(a) => after = Some(a),
            None => return Some(out),
        }
    }
}

/// Waits until every acknowledged task in the cluster is terminal, or `deadline` passes.
async fn drain(cl: &Client, rec: &Recorder, deadline: Duration) -> bool {
    let acked: BTreeSet<String> =
        crate::checker::Facts::new(&rec.ops(), &RunParams::default(), &FinalDump::default())
            .acked
            .into_iter()
            .map(|(k, _, _)| k)
            .collect();
    let start = Instant::now();
    while start.elapsed() < deadline {
        if let Some(tasks) = all_tasks(cl, Consistency::Linearizable, 1).await {
            let open = tasks
                .iter()
                .filter(|t| {
                    t.spec
                        .idempotency_key
                        .as_ref()
                        .is_some_and(|k| acked.contains(k))
                        && !t.state.is_terminal()
                })
                .count();
            if open == 0 {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

/// Waits for quiescence (every replica at the same applied index, twice in a row), then
/// reads every replica's whole task table from that replica alone and hashes it.
async fn dump_replicas(addrs: &[String]) -> Vec<ReplicaDump> {
    let cfg = ClientConfig {
        token: crate::auth::client_token(),
        tls: crate::auth::client_tls(),
        request_timeout: Duration::from_secs(2),
        call_timeout: Duration::from_secs(4),
        ..ClientConfig::default()
    };
    let clients: Vec<Client> = addrs
        .iter()
        .map(|a| Client::with_config([a.clone()], cfg.clone()).expect("loopback address"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut previous = None;
    while Instant::now() < deadline {
        let mut applied = Vec::new();
        for (c, a) in clients.iter().zip(addrs) {
            applied.push(c.cluster_status_of(a).await.ok().map(|s| s.applied_index));
        }
        let same = applied.iter().all(|x| x.is_some() && *x == applied[0]);
        if same && previous.as_ref() == Some(&applied) {
            break;
        }
        previous = Some(applied);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut out = Vec::new();
    for (i, (c, a)) in clients.iter().zip(addrs).enumerate() {
        let status = c.cluster_status_of(a).await.ok();
        let tasks = all_tasks(c, Consistency::Stale, 3).await;
        out.push(ReplicaDump {
            node: status.as_ref().map_or(i as u64 + 1, |s| s.node_id),
            applied_index: status.as_ref().map(|s| s.applied_index),
            state_hash: tasks.as_ref().map(|ts| state_hash(ts)),
            task_count: tasks.as_ref().map(|ts| ts.len() as u64),
        });
    }
    out
}

/// FNV-1a over every task's replicated fields, in id order.
pub fn state_hash(tasks: &[Task]) -> u64 {
    let mut sorted: Vec<&Task> = tasks.iter().collect();
    sorted.sort_by_key(|t| t.id);
    sorted.iter().fold(FNV_OFFSET, |h, t| {
        let line = format!(
            "{}|{:?}|{}|{}|{}|{}|{:?}|{:?}\n",
            t.id,
            t.spec.idempotency_key,
            t.state.as_str(),
            t.attempts,
            t.submitted_at_ms,
            t.updated_at_ms,
            t.result,
            t.reason
        );
        fnv1a(h, line.as_bytes())
    })
}
