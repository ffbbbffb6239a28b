//! `flotilla bench scale`: a 3-replica cluster holding a large backlog.
//!
//! Queues `--pending` tasks (100-byte payloads, random priorities and estimates) in one queue,
//! then measures, in order: the memory and disk of each replica; the longest wait of a probe
//! that submits one task at a time while every replica builds a snapshot at once; the
//! snapshot's size; the time a whole-cluster restart (SIGKILL of all) takes to serve again;
//! the time a fresh replica takes to join (add-replica) and catch up on the whole backlog;
//! and the rate at which 4 workers drain the backlog under each of fifo, priority and sjf (the
//! same number of tasks each, the backlog still large).
//! Prints a table; `--out FILE` writes a JSON array holding one object with `scenario:
//! "scale"`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use flotilla_client::{Client, ClientConfig, Consistency, TaskSpec};
use flotilla_core::QueuePolicy;
use flotilla_testkit::{Cluster, ClusterOptions};
use flotilla_worker::{Outcome, TaskContext};
use hdrhistogram::Histogram;
use serde::Serialize;

#[derive(Args)]
pub struct ScaleBench {
    /// Tasks queued before measuring.
    #[arg(long, default_value_t = 1_000_000)]
    pending: u64,
    /// Payload bytes per task.
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    /// Tasks each policy drains from the backlog (default: a tenth of --pending, at most
    /// 50,000), timed from the first to the last.
    #[arg(long)]
    drain_tasks: Option<u64>,
    /// Workers (in this process, 64 slots each).
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Write the result as a JSON array to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Serialize, Default)]
struct ScalePoint {
    scenario: &'static str,
    pending: u64,
    fill_secs: f64,
    fill_tasks_per_sec: f64,
    /// Resident memory of each replica after the fill and the snapshots, MiB.
    rss_mb: BTreeMap<u64, f64>,
    rss_mb_max: f64,
    /// Data dir of each replica, MiB.
    disk_mb: BTreeMap<u64, f64>,
    disk_mb_max: f64,
    snapshot_mb: f64,
    /// Time until every replica had built its snapshot.
    snapshot_build_secs: f64,
    /// The probe's longest and median submit latency while the snapshots were being built.
    snapshot_stall_ms_max: f64,
    snapshot_probe_p50_ms: f64,
    probe_submits: u64,
    /// Whole-cluster SIGKILL to a leader serving a linearizable read of the whole backlog.
    restart_s: f64,
    /// A replica whose data dir was lost catching up (from a snapshot) with the others; `None`
    /// when not measured.
    catch_up_s: Option<f64>,
    drain_tasks_per_sec: BTreeMap<String, f64>,
}

pub(crate) fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

pub(crate) fn dir_mb(path: &Path) -> f64 {
    fn walk(p: &Path) -> u64 {
        let Ok(entries) = std::fs::read_dir(p) else {
            return 0;
        };
        entries
            .flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => walk(&e.path()),
                // Allocated blocks, not apparent size: the WAL files are preallocated.
                Ok(m) => {
                    use std::os::unix::fs::MetadataExt;
                    m.blocks() * 512
                }
                Err(_) => 0,
            })
            .sum()
    }
    walk(path) as f64 / 1_048_576.0
}

/// Entries written before the catch-up measurement, more than the log a snapshot leaves
/// behind (1,000 entries), so that the leader purges its log.
const PAD_ENTRIES: u64 = 1_500;

fn spec(payload: &[u8], i: u64) -> TaskSpec {
    let mut s = TaskSpec::new("scale", payload.to_vec());
    // Deterministic spread of priorities and estimates, so the policies have work to do.
    let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    s.priority = (h % 21) as i32 - 10;
    s.estimate_ms = Some(1 + (h >> 20) % 10_000);
    s
}

pub async fn run(args: ScaleBench) -> Result<ExitCode> {
    if args.pending == 0 || args.workers == 0 {
        bail!("invalid --pending/--workers: must be at least 1");
    }
    let drain = args
        .drain_tasks
        .unwrap_or((args.pending / 10).clamp(1, 50_000));
    if drain == 0 || drain * 3 > args.pending {
        bail!("invalid --drain-tasks {drain}: must be at least 1 and at most a third of --pending");
    }
    if args.payload_bytes > flotilla_core::Limits::MAX_PAYLOAD_BYTES {
        bail!(
            "invalid --payload-bytes {}: at most {}",
            args.payload_bytes,
            flotilla_core::Limits::MAX_PAYLOAD_BYTES
        );
    }
    let dir = tempfile::tempdir().context("temp dir")?;
    // FLOTILLA_BENCH_DIR keeps the cluster's data dirs and logs for a look afterwards.
    let base = std::env::var_os("FLOTILLA_BENCH_DIR")
        .map_or_else(|| dir.path().to_path_buf(), PathBuf::from);
    let bin = std::env::current_exe().context("locating the flotilla binary")?;
    let mut cluster = Cluster::new(&bin, 3, &base, ClusterOptions::default())?;
    cluster.start_all()?;
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .map_err(anyhow::Error::msg)?;
    let client = Client::with_config(
        cluster.addrs(),
        ClientConfig {
            call_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(30),
            ..ClientConfig::default()
        },
    )?;
    eprintln!("scale: 3 replicas on {}", cluster.addrs().join(","));
    let mut point = ScalePoint {
        scenario: "scale",
        pending: args.pending,
        ..Default::default()
    };

    // Fill: 8 submitters, batches of 1000.
    let payload = vec![b'x'; args.payload_bytes];
    let t0 = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let queued = Arc::new(AtomicU64::new(0));
    let bar = crate::progress::follow(args.pending, "tasks queued", queued.clone());
    let mut fillers = Vec::new();
    for _ in 0..8 {
        let (client, next, queued, payload, total) = (
            client.clone(),
            next.clone(),
            queued.clone(),
            payload.clone(),
            args.pending,
        );
        fillers.push(tokio::spawn(async move {
            loop {
                let from = next.fetch_add(1000, Ordering::Relaxed);
                if from >= total {
                    return Ok::<_, flotilla_client::ClientError>(());
                }
                let n = (total - from).min(1000);
                client
                    .submit((from..from + n).map(|i| spec(&payload, i)).collect())
                    .await?;
                queued.fetch_add(n, Ordering::Relaxed);
            }
        }));
    }
    for f in fillers {
        f.await??;
    }
    drop(bar);
    point.fill_secs = t0.elapsed().as_secs_f64();
    point.fill_tasks_per_sec = args.pending as f64 / point.fill_secs;
    eprintln!(
        "scale: {} tasks queued in {:.1} s",
        args.pending, point.fill_secs
    );

    // Snapshots on every replica at once, with a probe submitting one task at a time.
    let probing = Arc::new(AtomicBool::new(true));
    let probe = {
        let (client, probing) = (client.clone(), probing.clone());
        tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).expect("valid histogram");
            let mut i = 0u64;
            while probing.load(Ordering::Relaxed) {
                let mut s = TaskSpec::new("probe", b"p".to_vec());
                s.idempotency_key = Some(format!("probe-{i}-{}", std::process::id()));
                let t = Instant::now();
                client.submit(vec![s]).await?;
                hist.record(t.elapsed().as_micros() as u64).ok();
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok::<_, flotilla_client::ClientError>(hist)
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t0 = Instant::now();
    let snaps: Vec<_> = cluster
        .ids()
        .into_iter()
        .map(|id| {
            let (client, addr) = (client.clone(), cluster.addr(id).to_string());
            tokio::spawn(async move { client.take_snapshot(&addr, Duration::from_secs(300)).await })
        })
        .collect();
    for s in snaps {
        s.await??;
    }
    point.snapshot_build_secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    probing.store(false, Ordering::Relaxed);
    let hist = probe.await??;
    point.snapshot_stall_ms_max = hist.max() as f64 / 1000.0;
    point.snapshot_probe_p50_ms = hist.value_at_quantile(0.5) as f64 / 1000.0;
    point.probe_submits = hist.len();
    for id in cluster.ids() {
        let rss = cluster.pid(id).map_or(0.0, rss_mb);
        let disk = dir_mb(&cluster.data_dir(id));
        point.rss_mb.insert(id, rss);
        point.disk_mb.insert(id, disk);
        let snap = dir_mb(&cluster.data_dir(id).join("snapshots"));
        point.snapshot_mb = point.snapshot_mb.max(snap);
    }
    point.rss_mb_max = point.rss_mb.values().copied().fold(0.0, f64::max);
    point.disk_mb_max = point.disk_mb.values().copied().fold(0.0, f64::max);
    eprintln!(
        "scale: snapshots in {:.1} s, probe max {:.0} ms; rss {:?} MB",
        point.snapshot_build_secs, point.snapshot_stall_ms_max, point.rss_mb
    );

    // Whole-cluster restart.
    for id in cluster.ids() {
        cluster.kill(id)?;
    }
    let t0 = Instant::now();
    cluster.start_all()?;
    let total = args.pending + point.probe_submits;
    loop {
        let ok = match client.cluster_status().await {
            Ok(_) => serving_all(&client, total).await,
            Err(_) => false,
        };
        if ok {
            break;
        }
        if t0.elapsed() > Duration::from_secs(300) {
            bail!("the cluster did not serve again within 300 s of a restart");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    point.restart_s = t0.elapsed().as_secs_f64();
    eprintln!("scale: restarted and serving in {:.2} s", point.restart_s);

    // A fresh replica joins (empty, --join), is added, catches up from a snapshot, and is
    // removed again so that the drain runs on the same 3 replicas as before. First enough
    // entries (one task each) that a snapshot lets the leader purge its log: the newcomer
    // then cannot catch up from the log alone.
    let mut total = total;
    for i in 0..PAD_ENTRIES {
        let mut s = TaskSpec::new("pad", b"p".to_vec());
        s.idempotency_key = Some(format!("pad-{i}-{}", std::process::id()));
        client.submit(vec![s]).await?;
        total += 1;
    }
    let leader_addr = client
        .cluster_status()
        .await?
        .leader_addr
        .context("no leader known")?;
    client
        .take_snapshot(&leader_addr, Duration::from_secs(300))
        .await?;
    let t_purge = Instant::now();
    while client.cluster_status_of(&leader_addr).await?.purged_index == 0 {
        if t_purge.elapsed() > Duration::from_secs(30) {
            bail!("the leader did not purge its log after a snapshot");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let joiner = cluster.plan_replica()?;
    cluster.start(joiner)?;
    let joiner_addr = cluster.addr(joiner).to_string();
    let t0 = Instant::now();
    let added = loop {
        match client
            .add_replica(joiner, &joiner_addr, Some(Duration::from_secs(600)))
            .await
        {
            Ok(a) => break a,
            // The joiner may not listen yet.
            Err(e)
                if t0.elapsed() < Duration::from_secs(20)
                    && e.to_string().contains("cannot reach") =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => bail!("adding replica {joiner}: {e}"),
        }
    };
    loop {
        let applied = client
            .cluster_status_of(&joiner_addr)
            .await
            .is_ok_and(|s| s.task_count >= total);
        if applied {
            break;
        }
        if t0.elapsed() > Duration::from_secs(600) {
            bail!("replica {joiner} did not catch up within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    point.catch_up_s = Some(t0.elapsed().as_secs_f64());
    eprintln!(
        "scale: a fresh replica joined and caught up on {total} tasks in {:.2} s (learner caught up in {:.2} s)",
        t0.elapsed().as_secs_f64(),
        added.catch_up.as_secs_f64()
    );
    client.remove_replica(joiner).await?;
    if cluster
        .wait_exit(joiner, Duration::from_secs(30))
        .await?
        .is_none()
    {
        bail!("removed replica {joiner} did not exit");
    }
    cluster.forget(joiner);

    // Drain under each policy.
    let done = Arc::new(AtomicU64::new(0));
    let shutdown = tokio_util::sync::CancellationToken::new();
    for n in 0..args.workers {
        let done = done.clone();
        let handler = move |_ctx: TaskContext| {
            done.fetch_add(1, Ordering::Relaxed);
            async { Outcome::Success(Vec::new()) }
        };
        crate::bench::spawn_worker(
            &client,
            format!("scale-{n}-{}", std::process::id()),
            64,
            &["scale"],
            Arc::new(handler),
            shutdown.child_token(),
        );
    }
    for (name, policy) in [
        ("fifo", QueuePolicy::Fifo),
        ("priority", QueuePolicy::Priority { aging_ms: 60_000 }),
        ("sjf", QueuePolicy::ShortestJobFirst),
    ] {
        client.set_queue_policy("scale", policy, false).await?;
        // Time `drain` completions under this policy (the backlog stays large throughout).
        let from = done.load(Ordering::Relaxed);
        let t = Instant::now();
        while done.load(Ordering::Relaxed) < from + drain {
            if t.elapsed() > Duration::from_secs(600) {
                bail!("{name}: {drain} tasks not drained within 600 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let rate = drain as f64 / t.elapsed().as_secs_f64();
        eprintln!("scale: {name} drains {rate:.0} tasks/s");
        point.drain_tasks_per_sec.insert(name.into(), rate);
    }
    shutdown.cancel();

    outln!(
        "{:<8} {:>9} {:>10} {:>9} {:>10} {:>9} {:>9} {:>10} {:>9} {:>9} {:>8} {:>8}",
        "scenario",
        "pending",
        "rss_mb",
        "disk_mb",
        "snap_mb",
        "stall_ms",
        "restart_s",
        "catch_up_s",
        "fifo/s",
        "prio/s",
        "sjf/s",
        "fill/s"
    );
    outln!(
        "{:<8} {:>9} {:>10.0} {:>9.0} {:>10.0} {:>9.0} {:>9.2} {:>10.2} {:>9.0} {:>9.0} {:>8.0} {:>8.0}",
        point.scenario,
        point.pending,
        point.rss_mb_max,
        point.disk_mb_max,
        point.snapshot_mb,
        point.snapshot_stall_ms_max,
        point.restart_s,
        point.catch_up_s.unwrap_or(0.0),
        point.drain_tasks_per_sec["fifo"],
        point.drain_tasks_per_sec["priority"],
        point.drain_tasks_per_sec["sjf"],
        point.fill_tasks_per_sec,
    );
    let json = serde_json::to_string_pretty(&[&point])?;
    if let Some(out) = &args.out {
        std::fs::write(out, &json).with_context(|| format!("writing {}", out.display()))?;
    }
    outln!("{json}");
    drop(cluster);
    Ok(ExitCode::SUCCESS)
}

/// Whether the cluster answers a linearizable read that sees all `total` tasks.
async fn serving_all(client: &Client, total: u64) -> bool {
    let q = flotilla_client::ListQuery {
        after: Some(flotilla_client::TaskId(total.saturating_sub(1))),
        limit: 1,
        consistency: Consistency::Linearizable,
        ..Default::default()
    };
    client.list(&q).await.is_ok_and(|p| !p.tasks.is_empty())
}
