//! `flotilla bench flow`: a queue rate-limited to `--rate` tasks/s beside an unlimited queue,
//! through real replicas and in-process workers.
//!
//! First the unlimited queue runs alone for `--baseline` seconds (its throughput alone). Then the
//! limited queue gets a backlog larger than it may start in `--duration` seconds, and both run
//! for `--duration` seconds. Reported: the limited queue's starts per second over the window
//! against the limit (the deviation must stay within `--tolerance`, 5 % by default: the bucket allows `burst + w x rate`
//! starts in any window of w seconds), the most starts in any one second, and the unlimited
//! queue's throughput alone and beside it. Both queues keep a backlog the whole time, so the
//! limit, not the supply, decides. Prints a table; `--out FILE` writes the JSON.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use flotilla_client::{Client, Consistency, QueueLimit, RateLimit, TaskSpec};
use flotilla_worker::{Outcome, TaskContext};
use serde::Serialize;

use crate::commands::Ctx;

const LIMITED: &str = "flow-limited";
const FREE: &str = "flow-free";

#[derive(Args)]
pub struct FlowBench {
    /// The limited queue's rate, tasks started per second.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Its burst [default: rate / 20, at least 1].
    #[arg(long)]
    burst: Option<u32>,
    /// Seconds both queues run.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Seconds the unlimited queue runs alone first.
    #[arg(long, default_value_t = 10)]
    baseline: u64,
    /// Workers (in this process, each with 64 slots).
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Write the result as JSON to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Fail when the measured rate is further than this from the limit, in % (the published
    /// contract is 5 % over 60 s on an otherwise idle machine).
    #[arg(long, default_value_t = 5.0)]
    tolerance: f64,
}

#[derive(Serialize)]
struct FlowResult {
    scenario: &'static str,
    rate: u32,
    burst: u32,
    duration_s: u64,
    limited_started: u64,
    limited_per_s: f64,
    /// (measured - rate) / rate, in %.
    deviation_pct: f64,
    /// Most starts of the limited queue in one second of the window.
    max_in_one_s: u64,
    free_alone_per_s: f64,
    free_beside_per_s: f64,
}

/// Starts per queue, by whole second since the window opened.
#[derive(Default)]
struct Starts {
    since: Option<Instant>,
    limited: Vec<u64>,
    free: Vec<u64>,
}

impl Starts {
    fn note(&mut self, queue: &str) {
        let Some(since) = self.since else { return };
        let s = since.elapsed().as_secs() as usize;
        let v = if queue == LIMITED {
            &mut self.limited
        } else {
            &mut self.free
        };
        if v.len() <= s {
            v.resize(s + 1, 0);
        }
        v[s] += 1;
    }

    fn open(&mut self) {
        *self = Starts {
            since: Some(Instant::now()),
            ..Starts::default()
        };
    }

    /// Starts of `queue` in the first `secs` seconds.
    fn count(v: &[u64], secs: u64) -> u64 {
        v.iter().take(secs as usize).sum()
    }
}

pub async fn run(ctx: &Ctx, args: FlowBench) -> Result<ExitCode> {
    if args.rate == 0 || args.duration == 0 || args.workers == 0 {
        bail!("invalid --rate/--duration/--workers: each must be at least 1");
    }
    if !(args.tolerance >= 0.0 && args.tolerance.is_finite()) {
        bail!(
            "invalid --tolerance {}: must be a percentage, 0 or more",
            args.tolerance
        );
    }
    let burst = args.burst.unwrap_or((args.rate / 20).max(1));
    if burst == 0 {
        bail!("invalid --burst 0: must be at least 1");
    }
    let (client, _own) = crate::bench::target_cluster(ctx, false).await?;
    let starts: Arc<Mutex<Starts>> = Arc::default();
    let shutdown = tokio_util::sync::CancellationToken::new();
    for n in 0..args.workers {
        let starts = starts.clone();
        let handler = move |ctx: TaskContext| {
            let queue = if ctx.payload == LIMITED.as_bytes() {
                LIMITED
            } else {
                FREE
            };
            starts.lock().unwrap_or_else(|p| p.into_inner()).note(queue);
            async move { Outcome::Success(Vec::new()) }
        };
        crate::bench::spawn_worker(
            &client,
            format!("flow-{n}-{}", std::process::id()),
            64,
            &[LIMITED, FREE],
            Arc::new(handler),
            shutdown.child_token(),
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    client
        .set_queue_limit(
            LIMITED,
            QueueLimit::Rate(Some(RateLimit {
                per_sec: args.rate,
                burst,
            })),
            true,
        )
        .await
        .context("setting the rate limit")?;
    let progress = crate::progress::bar(args.baseline + args.duration, "seconds");

    // The unlimited queue alone, kept busy by a feeder.
    let feeding = shutdown.child_token();
    let feeder = tokio::spawn(feed(client.clone(), FREE, feeding.clone()));
    starts.lock().unwrap_or_else(|p| p.into_inner()).open();
    tick(&progress, args.baseline).await;
    let free_alone = {
        let s = starts.lock().unwrap_or_else(|p| p.into_inner());
        Starts::count(&s.free, args.baseline) as f64 / args.baseline.max(1) as f64
    };

    // The limited queue's backlog: 20 % more than it may start in the window.
    let backlog = (u64::from(args.rate) * args.duration * 6 / 5 + u64::from(burst)) as usize;
    let spec = TaskSpec::new(LIMITED, LIMITED.as_bytes().to_vec());
    let mut left = backlog;
    while left > 0 {
        let n = left.min(500);
        client.submit(vec![spec.clone(); n]).await?;
        left -= n;
    }
    // The window opens once the backlog is in, so the submits' own time is not counted.
    starts.lock().unwrap_or_else(|p| p.into_inner()).open();
    tick(&progress, args.duration).await;
    let (limited, max_in_one_s, free_beside) = {
        let s = starts.lock().unwrap_or_else(|p| p.into_inner());
        (
            Starts::count(&s.limited, args.duration),
            s.limited
                .iter()
                .take(args.duration as usize)
                .copied()
                .max()
                .unwrap_or(0),
            Starts::count(&s.free, args.duration) as f64 / args.duration as f64,
        )
    };
    progress.finish_and_clear();
    feeding.cancel();
    feeder.await??;
    // Let the rest drain quickly: the limit off, then wait for both queues to empty.
    client
        .set_queue_limit(LIMITED, QueueLimit::Rate(None), false)
        .await?;
    drain(&client).await?;
    shutdown.cancel();

    let per_s = limited as f64 / args.duration as f64;
    let result = FlowResult {
        scenario: "flow",
        rate: args.rate,
        burst,
        duration_s: args.duration,
        limited_started: limited,
        limited_per_s: per_s,
        deviation_pct: (per_s - f64::from(args.rate)) * 100.0 / f64::from(args.rate),
        max_in_one_s,
        free_alone_per_s: free_alone,
        free_beside_per_s: free_beside,
    };
    outln!(
        "{:<6} {:>6} {:>6} {:>6} {:>10} {:>10} {:>8} {:>10} {:>12} {:>12}",
        "scenario",
        "rate",
        "burst",
        "secs",
        "started",
        "per_s",
        "dev_%",
        "max_1s",
        "free_alone/s",
        "free_beside/s"
    );
    outln!(
        "{:<6} {:>6} {:>6} {:>6} {:>10} {:>10.1} {:>8.2} {:>10} {:>12.0} {:>12.0}",
        result.scenario,
        result.rate,
        result.burst,
        result.duration_s,
        result.limited_started,
        result.limited_per_s,
        result.deviation_pct,
        result.max_in_one_s,
        result.free_alone_per_s,
        result.free_beside_per_s
    );
    let json = serde_json::to_string_pretty(&result)?;
    if let Some(out) = &args.out {
        std::fs::write(out, &json).with_context(|| format!("writing {}", out.display()))?;
    }
    outln!("{json}");
    if result.deviation_pct.abs() > args.tolerance {
        bail!(
            "the limited queue started {per_s:.1}/s against a limit of {}/s: more than {} % off",
            args.rate,
            args.tolerance
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Advances the progress bar once a second for `secs` seconds.
async fn tick(progress: &indicatif::ProgressBar, secs: u64) {
    for _ in 0..secs {
        tokio::time::sleep(Duration::from_secs(1)).await;
        progress.inc(1);
    }
}

/// Keeps `queue` at a backlog of about 2,000 pending tasks until `stop`.
async fn feed(
    client: Client,
    queue: &'static str,
    stop: tokio_util::sync::CancellationToken,
) -> Result<()> {
    let spec = TaskSpec::new(queue, queue.as_bytes().to_vec());
    while !stop.is_cancelled() {
        let pending = pending_of(&client, queue).await?;
        if pending < 2_000 {
            client.submit(vec![spec.clone(); 500]).await?;
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

async fn pending_of(client: &Client, queue: &str) -> Result<u64> {
    let list = client.list_queues(Consistency::Linearizable).await?;
    Ok(list
        .queues
        .iter()
        .find(|q| q.name == queue)
        .map_or(0, |q| q.count(flotilla_client::TaskState::Pending)))
}

/// Waits until neither queue has pending or running tasks.
async fn drain(client: &Client) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let list = client.list_queues(Consistency::Linearizable).await?;
        let busy = list
            .queues
            .iter()
            .filter(|q| q.name == LIMITED || q.name == FREE)
            .any(|q| {
                q.count(flotilla_client::TaskState::Pending)
                    + q.count(flotilla_client::TaskState::Running)
                    > 0
            });
        if !busy {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the queues did not drain within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
