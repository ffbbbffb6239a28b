//! `flotilla bench steady`: a steady stream of tasks through workers for a long time, with a
//! short retention, sampling each replica's memory and disk — the curve must stay flat.
//!
//! Submits `--rate` tasks per second (paced, in small batches) to 4 in-process workers that
//! complete them at once, on a 3-replica cluster started with `--retention-ms`; every
//! `--sample-secs` it records RSS and data dir size of each replica and the task count. Prints
//! the curve as a table; `--out FILE` writes a JSON array of the samples followed by a summary
//! object (`scenario: "steady"`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use flotilla_client::TaskSpec;
use flotilla_testkit::{Cluster, ClusterOptions};
use flotilla_worker::{Outcome, TaskContext};
use serde::Serialize;

use crate::bench_scale::{dir_mb, rss_mb};

#[derive(Args)]
pub struct SteadyBench {
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 600.0)]
    secs: f64,
    /// Tasks submitted per second.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// The replicas' --retention-ms.
    #[arg(long, default_value_t = 60_000)]
    retention_ms: u64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10.0)]
    sample_secs: f64,
    /// Write the samples and the summary as a JSON array to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Serialize, Clone)]
struct Sample {
    scenario: &'static str,
    at_secs: f64,
    submitted: u64,
    completed: u64,
    /// Tasks the leader holds (finished ones until retention removes them).
    tasks_held: u64,
    rss_mb: BTreeMap<u64, f64>,
    disk_mb: BTreeMap<u64, f64>,
}

#[derive(Serialize)]
struct Summary {
    scenario: &'static str,
    secs: f64,
    rate: u64,
    retention_ms: u64,
    completed_per_sec: f64,
    /// Largest replica RSS over the second half of the run, and its growth from the first
    /// sample after one retention period to the last.
    rss_mb_max: f64,
    rss_mb_growth: f64,
    disk_mb_max: f64,
    disk_mb_growth: f64,
    tasks_held_max: u64,
}

pub async fn run(args: SteadyBench) -> Result<ExitCode> {
    if !(args.secs.is_finite()
        && args.secs > 0.0
        && args.sample_secs.is_finite()
        && args.sample_secs > 0.0)
    {
        bail!("invalid --secs/--sample-secs: must be positive");
    }
    if args.rate == 0 || args.retention_ms == 0 {
        bail!("invalid --rate/--retention-ms: must be at least 1");
    }
    let dir = tempfile::tempdir().context("temp dir")?;
    let bin = std::env::current_exe().context("locating the flotilla binary")?;
    let options = ClusterOptions {
        extra_args: vec!["--retention-ms".into(), args.retention_ms.to_string()],
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::new(&bin, 3, dir.path(), options)?;
    cluster.start_all()?;
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .map_err(anyhow::Error::msg)?;
    let client = cluster.client();
    let completed = Arc::new(AtomicU64::new(0));
    let shutdown = tokio_util::sync::CancellationToken::new();
    for n in 0..4 {
        let completed = completed.clone();
        let handler = move |_ctx: TaskContext| {
            completed.fetch_add(1, Ordering::Relaxed);
            async { Outcome::Success(b"ok".to_vec()) }
        };
        crate::bench::spawn_worker(
            &client,
            format!("steady-{n}-{}", std::process::id()),
            64,
            &["steady"],
            Arc::new(handler),
            shutdown.child_token(),
        );
    }

    // Submitters: 100 batches a second, paced.
    let submitted = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.secs);
    let submitter = {
        let (client, submitted, rate) = (client.clone(), submitted.clone(), args.rate);
        tokio::spawn(async move {
            let tick = Duration::from_millis(10);
            let mut next = tokio::time::Instant::now();
            let mut owed = 0.0f64;
            let mut inflight = tokio::task::JoinSet::new();
            while Instant::now() < end {
                owed += rate as f64 / 100.0;
                let n = owed.floor() as usize;
                owed -= n as f64;
                if n > 0 {
                    let (client, submitted) = (client.clone(), submitted.clone());
                    inflight.spawn(async move {
                        let specs = (0..n)
                            .map(|_| TaskSpec::new("steady", b"payload-100-bytes".repeat(6)))
                            .collect();
                        if client.submit(specs).await.is_ok() {
                            submitted.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    });
                }
                while inflight.len() > 256 {
                    inflight.join_next().await;
                }
                next += tick;
                tokio::time::sleep_until(next).await;
            }
            while inflight.join_next().await.is_some() {}
        })
    };

    let mut samples = Vec::new();
    outln!(
        "{:>7} {:>10} {:>10} {:>9} {:>28} {:>22}",
        "at_s",
        "submitted",
        "completed",
        "held",
        "rss_mb (per replica)",
        "disk_mb (per replica)"
    );
    let bar = crate::progress::bar(args.secs.ceil() as u64, "s");
    while Instant::now() < end {
        tokio::time::sleep(
            Duration::from_secs_f64(args.sample_secs)
                .min(end.saturating_duration_since(Instant::now())),
        )
        .await;
        let leader = cluster
            .wait_for_leader(Duration::from_secs(10))
            .await
            .map_err(anyhow::Error::msg)?;
        let held = client
            .cluster_status_of(cluster.addr(leader))
            .await
            .map(|s| s.task_count)
            .unwrap_or(0);
        let mut s = Sample {
            scenario: "steady_sample",
            at_secs: start.elapsed().as_secs_f64(),
            submitted: submitted.load(Ordering::Relaxed),
            completed: completed.load(Ordering::Relaxed),
            tasks_held: held,
            rss_mb: BTreeMap::new(),
            disk_mb: BTreeMap::new(),
        };
        for id in cluster.ids() {
            s.rss_mb.insert(id, cluster.pid(id).map_or(0.0, rss_mb));
            s.disk_mb.insert(id, dir_mb(&cluster.data_dir(id)));
        }
        let fmt = |m: &BTreeMap<u64, f64>| {
            m.values()
                .map(|v| format!("{v:>6.0}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        bar.set_position(s.at_secs as u64);
        bar.suspend(|| {
            outln!(
                "{:>7.0} {:>10} {:>10} {:>9} {:>28} {:>22}",
                s.at_secs,
                s.submitted,
                s.completed,
                s.tasks_held,
                fmt(&s.rss_mb),
                fmt(&s.disk_mb)
            )
        });
        samples.push(s);
    }
    bar.finish_and_clear();
    submitter.await?;
    shutdown.cancel();

    let max =
        |f: &dyn Fn(&Sample) -> f64, from: usize| samples[from..].iter().map(f).fold(0.0, f64::max);
    let rss = |s: &Sample| s.rss_mb.values().copied().fold(0.0, f64::max);
    let disk = |s: &Sample| s.disk_mb.values().copied().fold(0.0, f64::max);
    // Growth is measured once retention has had a period to start removing tasks.
    let settled = samples
        .iter()
        .position(|s| s.at_secs * 1000.0 >= args.retention_ms as f64 * 1.5)
        .unwrap_or(0);
    let last = samples
        .last()
        .context("no sample taken: --secs shorter than --sample-secs?")?;
    let summary = Summary {
        scenario: "steady",
        secs: args.secs,
        rate: args.rate,
        retention_ms: args.retention_ms,
        completed_per_sec: last.completed as f64 / last.at_secs,
        rss_mb_max: max(&rss, samples.len() / 2),
        rss_mb_growth: rss(last) - rss(&samples[settled]),
        disk_mb_max: max(&disk, samples.len() / 2),
        disk_mb_growth: disk(last) - disk(&samples[settled]),
        tasks_held_max: samples.iter().map(|s| s.tasks_held).max().unwrap_or(0),
    };
    outln!(
        "steady: {:.0} tasks/s completed; rss max {:.0} MB (growth {:+.0} MB after {:.0} s), disk max {:.0} MB (growth {:+.0} MB), at most {} tasks held",
        summary.completed_per_sec, summary.rss_mb_max, summary.rss_mb_growth, samples[settled].at_secs,
        summary.disk_mb_max, summary.disk_mb_growth, summary.tasks_held_max
    );
    let mut json: Vec<serde_json::Value> = samples
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()?;
    json.push(serde_json::to_value(&summary)?);
    let json = serde_json::to_string_pretty(&json)?;
    if let Some(out) = &args.out {
        std::fs::write(out, &json).with_context(|| format!("writing {}", out.display()))?;
    }
    drop(cluster);
    Ok(ExitCode::SUCCESS)
}
