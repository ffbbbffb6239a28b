//! `flotilla bench submit`: submit throughput and latency against a 3-replica cluster.
//!
//! Each point runs `in_flight` concurrent submitters, each sending batches of `batch` tasks
//! through the client library (one idempotency key per task, as in production), until
//! `--tasks` tasks are acknowledged or `--secs` pass. Every acknowledgement means committed on
//! a quorum, fsynced, and applied. Prints a table; `--out FILE` writes a JSON array.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use flotilla_client::{Client, TaskSpec};
use flotilla_testkit::{Cluster, ClusterOptions};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::commands::Ctx;
use crate::payload::CommandPayload;

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Submit throughput and latency with 1 and 64 requests in flight, batches of 1 and 100.
    Submit(SubmitBench),
    /// End to end (submit -> assign -> complete, no-op tasks, 4 in-process workers) and
    /// dispatch latency (submit committed -> started on a worker) at half that rate.
    E2e(E2eBench),
    /// A large backlog: memory, disk, snapshot stalls, restart time, drain rate per policy.
    Scale(crate::bench_scale::ScaleBench),
    /// A steady stream through workers with a short retention: memory and disk over time.
    Steady(crate::bench_steady::SteadyBench),
    /// Repeated leader faults (kill, pause) under steady load: time to a new leader, largest
    /// submit gap, first dispatch by the new leader; lost, doubled, re-run.
    Failover(crate::bench_failover::FailoverBench),
    /// A map-reduce DAG (1,000 maps feeding 10 reducers through their results): end to end,
    /// against the same tasks without dependencies, scheduling overhead and latency per edge.
    Workflow(crate::bench_workflow::WorkflowBench),
    /// A queue rate-limited to R tasks/s beside an unlimited one: the rate holds within 5 %.
    Flow(crate::bench_flow::FlowBench),
}

#[derive(Args)]
pub struct E2eBench {
    /// Tasks in the throughput run.
    #[arg(long, default_value_t = 20_000)]
    tasks: u64,
    /// Workers (in this process, each with 64 slots).
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Seconds of the latency run.
    #[arg(long, default_value_t = 5.0)]
    latency_secs: f64,
    /// Submits per second of the latency run (default: half the end-to-end rate measured).
    #[arg(long)]
    latency_rate: Option<f64>,
    /// Start the cluster with TLS (a CA made for the run); with --cluster, give --ca instead.
    #[arg(long)]
    tls: bool,
    /// The workers report each outcome in its own call instead of in batches (to measure
    /// what batching gives).
    #[arg(long)]
    one_report_per_call: bool,
    /// Write the points as a JSON array to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
pub struct SubmitBench {
    /// Tasks to submit per point, at most.
    #[arg(long, default_value_t = 200_000)]
    tasks: u64,
    /// Seconds per point, at most.
    #[arg(long, default_value_t = 8.0)]
    secs: f64,
    /// Requests in flight to measure (comma separated).
    #[arg(long, default_value = "1,64", value_delimiter = ',')]
    in_flight: Vec<usize>,
    /// Batch sizes to measure (comma separated).
    #[arg(long, default_value = "1,100", value_delimiter = ',')]
    batch: Vec<usize>,
    /// Client APIs to measure (comma separated): `unary` (one SubmitTasks call per request,
    /// `Client::submit`) and `stream` (requests pipelined on SubmitStream, `SubmitPipeline`).
    #[arg(long, default_value = "unary,stream", value_delimiter = ',')]
    api: Vec<Api>,
    /// Start the cluster with TLS (a CA made for the run); with --cluster, give --ca instead.
    #[arg(long)]
    tls: bool,
    /// Write the points as a JSON array to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Draw throughput and latency percentiles against requests in flight to this PNG.
    #[arg(long)]
    png: Option<PathBuf>,
}

/// How the submit bench sends its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    Unary,
    Stream,
}

impl Api {
    fn name(self) -> &'static str {
        match self {
            Api::Unary => "unary",
            Api::Stream => "stream",
        }
    }
}

#[derive(Serialize)]
struct Point {
    scenario: &'static str,
    api: Api,
    /// Whether the calls went over TLS.
    tls: bool,
    in_flight: usize,
    batch: usize,
    tasks: u64,
    secs: f64,
    tasks_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

pub async fn run(ctx: &Ctx, cmd: BenchCmd) -> Result<ExitCode> {
    match cmd {
        BenchCmd::Submit(args) => submit(ctx, args).await,
        BenchCmd::E2e(args) => e2e(ctx, args).await,
        BenchCmd::Scale(args) => crate::bench_scale::run(args).await,
        BenchCmd::Steady(args) => crate::bench_steady::run(args).await,
        BenchCmd::Failover(args) => crate::bench_failover::run(args).await,
        BenchCmd::Workflow(args) => crate::bench_workflow::run(ctx, args).await,
        BenchCmd::Flow(args) => crate::bench_flow::run(ctx, args).await,
    }
}

async fn submit(ctx: &Ctx, args: SubmitBench) -> Result<ExitCode> {
    if !(args.secs.is_finite() && args.secs > 0.0) {
        bail!("invalid --secs {}: must be positive", args.secs);
    }
    if args.in_flight.contains(&0) || args.batch.contains(&0) {
        bail!("invalid --in-flight/--batch: values must be at least 1");
    }
    if args
        .batch
        .iter()
        .any(|b| *b > flotilla_core::Limits::MAX_BATCH_TASKS)
    {
        bail!(
            "invalid --batch: at most {}",
            flotilla_core::Limits::MAX_BATCH_TASKS
        );
    }
    if let Some(png) = &args.png {
        crate::bench_plot::check_writable(png)?;
    }
    // Keep the cluster (and its temp dir) alive for the whole run.
    let (client, _own) = target_cluster(ctx, args.tls).await?;
    let mut points = Vec::new();
    for &api in &args.api {
        for &batch in &args.batch {
            for &in_flight in &args.in_flight {
                let mut p =
                    run_point(&client, api, in_flight, batch, args.tasks, args.secs).await?;
                p.tls = args.tls || ctx.tls.is_some();
                eprintln!(
                    "api={:<6} in_flight={:<3} batch={:<4} {:>10.0} tasks/s  p50 {:>7.2} ms  p99 {:>7.2} ms",
                    api.name(), p.in_flight, p.batch, p.tasks_per_sec, p.p50_ms, p.p99_ms
                );
                points.push(p);
            }
        }
    }
    outln!(
        "{:<9} {:>6} {:>9} {:>6} {:>10} {:>8} {:>12} {:>9} {:>9}",
        "scenario",
        "api",
        "in_flight",
        "batch",
        "tasks",
        "secs",
        "tasks/s",
        "p50_ms",
        "p99_ms"
    );
    for p in &points {
        outln!(
            "{:<9} {:>6} {:>9} {:>6} {:>10} {:>8.2} {:>12.0} {:>9.2} {:>9.2}",
            p.scenario,
            p.api.name(),
            p.in_flight,
            p.batch,
            p.tasks,
            p.secs,
            p.tasks_per_sec,
            p.p50_ms,
            p.p99_ms
        );
    }
    let json = serde_json::to_string_pretty(&points)?;
    if let Some(out) = &args.out {
        std::fs::write(out, &json).with_context(|| format!("writing {}", out.display()))?;
    }
    if let Some(png) = &args.png {
        let plotted: Vec<crate::bench_plot::PlotPoint> = points
            .iter()
            .map(|p| crate::bench_plot::PlotPoint {
                series: format!("{} batch={}", p.api.name(), p.batch),
                in_flight: p.in_flight,
                tasks_per_sec: p.tasks_per_sec,
                p50_ms: p.p50_ms,
                p99_ms: p.p99_ms,
            })
            .collect();
        crate::bench_plot::submit_png(png, &plotted)
            .with_context(|| format!("drawing {}", png.display()))?;
        eprintln!("drew {}", png.display());
    }
    outln!("{json}");
    Ok(ExitCode::SUCCESS)
}

/// One client connection's way of submitting.
#[derive(Clone)]
enum Submitter {
    Unary(Client),
    Stream(flotilla_client::SubmitPipeline),
}

impl Submitter {
    async fn submit(&self, specs: Vec<TaskSpec>) -> Result<(), flotilla_client::ClientError> {
        match self {
            Submitter::Unary(c) => c.submit(specs).await.map(drop),
            Submitter::Stream(p) => p.submit(specs).await.map(drop),
        }
    }
}

async fn run_point(
    client: &Client,
    api: Api,
    in_flight: usize,
    batch: usize,
    max_tasks: u64,
    secs: f64,
) -> Result<Point> {
    let payload = CommandPayload::new(vec!["true".into()]).encode();
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    // Several connections, as several client processes would open: one HTTP/2 connection is
    // served by one task on the server.
    let clients: Vec<Client> = (0..in_flight.div_ceil(8))
        .map(|_| Client::with_config(client.endpoints().to_vec(), client.config().clone()))
        .collect::<Result<_, _>>()?;
    let submitters: Vec<Submitter> = clients
        .iter()
        .map(|c| match api {
            Api::Unary => Submitter::Unary(c.clone()),
            Api::Stream => Submitter::Stream(c.pipeline()),
        })
        .collect();
    let mut handles = Vec::new();
    for i in 0..in_flight {
        let client = submitters[i % submitters.len()].clone();
        let done = done.clone();
        let payload = payload.clone();
        handles.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).expect("valid histogram");
            while Instant::now() < deadline && done.load(Ordering::Relaxed) < max_tasks {
                let specs = (0..batch)
                    .map(|_| TaskSpec::new("bench", payload.clone()))
                    .collect();
                let t0 = Instant::now();
                client.submit(specs).await?;
                hist.record(t0.elapsed().as_micros() as u64).ok();
                done.fetch_add(batch as u64, Ordering::Relaxed);
            }
            Ok::<_, flotilla_client::ClientError>(hist)
        }));
    }
    let bar = crate::progress::follow(max_tasks, "tasks", done.clone());
    let mut hist = Histogram::<u64>::new(3).expect("valid histogram");
    for h in handles {
        hist.add(h.await??).ok();
    }
    drop(bar);
    let elapsed = start.elapsed().as_secs_f64();
    let tasks = done.load(Ordering::Relaxed);
    Ok(Point {
        scenario: "submit",
        api,
        tls: false,
        in_flight,
        batch,
        tasks,
        secs: elapsed,
        tasks_per_sec: tasks as f64 / elapsed,
        p50_ms: hist.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
    })
}

/// The cluster to measure: --cluster if given, else a fresh 3-replica cluster on loopback
/// (returned so that it lives as long as the run).
/// The configuration of a benchmark's in-process worker: `slots` slots (a core and a GB of
/// memory each), serving `queues`.
pub(crate) fn bench_worker_config(
    id: String,
    slots: u32,
    queues: &[&str],
) -> flotilla_worker::WorkerConfig {
    flotilla_worker::WorkerConfig {
        id,
        capacity: flotilla_core::Capacity {
            slots,
            cpu_millis: slots * 1000,
            mem_mb: slots * 1000,
        },
        labels: Default::default(),
        queues: queues.iter().map(|q| q.to_string()).collect(),
        heartbeat_interval: Duration::from_secs(1),
        drain_timeout: flotilla_worker::DEFAULT_DRAIN_TIMEOUT,
        batch_reports: true,
    }
}

/// Starts a benchmark's in-process worker ([`bench_worker_config`]), running `handler`, until
/// `shutdown`.
pub(crate) fn spawn_worker(
    client: &Client,
    id: String,
    slots: u32,
    queues: &[&str],
    handler: Arc<dyn flotilla_worker::Handler>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    tokio::spawn(flotilla_worker::run(
        client.clone(),
        bench_worker_config(id, slots, queues),
        handler,
        shutdown,
    ));
}

pub(crate) async fn target_cluster(
    ctx: &Ctx,
    tls: bool,
) -> Result<(Client, Option<(Cluster, tempfile::TempDir)>)> {
    if ctx.cluster_given {
        if tls {
            bail!("--tls starts a cluster with TLS; with --cluster, give --ca instead");
        }
        let client = ctx.client()?;
        // Say so within seconds when no replica answers, not after the client's retries.
        let probes = client
            .endpoints()
            .iter()
            .map(|a| tokio::time::timeout(Duration::from_secs(3), client.cluster_status_of(a)));
        let answers = futures::future::join_all(probes).await;
        if !answers.iter().any(|a| matches!(a, Ok(Ok(_)))) {
            let why: Vec<String> = client
                .endpoints()
                .iter()
                .zip(&answers)
                .map(|(addr, a)| match a {
                    Ok(Err(e)) => format!("{addr}: {e}"),
                    _ => format!("{addr}: no answer in 3 s"),
                })
                .collect();
            bail!("cannot reach the cluster: {}", why.join("; "));
        }
        return Ok((client, None));
    }
    let dir = tempfile::tempdir().context("temp dir")?;
    let bin = std::env::current_exe().context("locating the flotilla binary")?;
    let options = match tls {
        true => ClusterOptions::default()
            .with_tls(&dir.path().join("tls"))
            .map_err(anyhow::Error::msg)?,
        false => ClusterOptions::default(),
    };
    let mut cluster = Cluster::new(&bin, 3, dir.path(), options)?;
    cluster.start_all()?;
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .map_err(anyhow::Error::msg)?;
    eprintln!(
        "started a 3-replica cluster on {}{}",
        cluster.addrs().join(","),
        if tls { " with TLS" } else { "" }
    );
    let client = cluster.client();
    Ok((client, Some((cluster, dir))))
}

#[derive(Serialize)]
struct E2ePoint {
    scenario: &'static str,
    /// Whether the calls went over TLS.
    tls: bool,
    workers: usize,
    /// Whether workers sent their outcomes in batches.
    batched_reports: bool,
    tasks: u64,
    secs: f64,
    tasks_per_sec: f64,
    dispatch_p50_ms: Option<f64>,
    dispatch_p99_ms: Option<f64>,
}

async fn e2e(ctx: &Ctx, args: E2eBench) -> Result<ExitCode> {
    use flotilla_client::{Consistency, TaskId};
    use flotilla_worker::{Outcome, TaskContext};
    use std::collections::HashMap;
    use std::sync::Mutex;

    if args.workers == 0 || args.tasks == 0 {
        bail!("invalid --workers/--tasks: must be at least 1");
    }
    if !(args.latency_secs.is_finite() && args.latency_secs > 0.0) {
        bail!(
            "invalid --latency-secs {}: must be positive",
            args.latency_secs
        );
    }
    if let Some(r) = args.latency_rate {
        if !(r.is_finite() && r > 0.0) {
            bail!("invalid --latency-rate {r}: must be positive");
        }
    }
    let (client, _own) = target_cluster(ctx, args.tls).await?;
    // Start times of tasks on workers, to measure dispatch latency.
    let started: Arc<Mutex<HashMap<TaskId, Instant>>> = Arc::default();
    let shutdown = tokio_util::sync::CancellationToken::new();
    for n in 0..args.workers {
        let started = started.clone();
        let handler = move |ctx: TaskContext| {
            started
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(ctx.task_id, Instant::now());
            async { Outcome::Success(Vec::new()) }
        };
        let mut config =
            bench_worker_config(format!("bench-{n}-{}", std::process::id()), 64, &["e2e"]);
        config.batch_reports = !args.one_report_per_call;
        tokio::spawn(flotilla_worker::run(
            client.clone(),
            config,
            Arc::new(handler),
            shutdown.child_token(),
        ));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Throughput: submit everything (64 in flight, batches of 50), wait until all succeeded.
    let t0 = Instant::now();
    let per = (args.tasks as usize).div_ceil(64);
    let mut handles = Vec::new();
    for i in 0..64usize {
        let client = client.clone();
        let n = per.min((args.tasks as usize).saturating_sub(i * per));
        handles.push(tokio::spawn(async move {
            let mut left = n;
            while left > 0 {
                let b = left.min(50);
                let specs = (0..b).map(|_| TaskSpec::new("e2e", Vec::new())).collect();
                client.submit(specs).await?;
                left -= b;
            }
            Ok::<_, flotilla_client::ClientError>(())
        }));
    }
    for h in handles {
        h.await??;
    }
    // Done when the queue holds no waiting, pending or running task. The queue's counts are
    // kept as tasks change state; listing tasks by state would scan every finished task on
    // the leader each time, and the bench would measure its own polling.
    loop {
        let queues = client.list_queues(Consistency::Linearizable).await?;
        let busy = queues
            .queues
            .iter()
            .find(|q| q.name == "e2e")
            .is_none_or(|q| q.counts[..3].iter().any(|n| *n > 0));
        if !busy {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let rate = args.tasks as f64 / secs;
    let mut points = vec![E2ePoint {
        scenario: "e2e",
        tls: args.tls || ctx.tls.is_some(),
        workers: args.workers,
        batched_reports: !args.one_report_per_call,
        tasks: args.tasks,
        secs,
        tasks_per_sec: rate,
        dispatch_p50_ms: None,
        dispatch_p99_ms: None,
    }];

    // Dispatch latency at half that rate (or the one given): single-task submits, paced.
    let half = args.latency_rate.unwrap_or(rate / 2.0).max(1.0);
    let gap = Duration::from_secs_f64(1.0 / half);
    let acked: Arc<Mutex<Vec<(TaskId, Instant)>>> = Arc::default();
    let end = Instant::now() + Duration::from_secs_f64(args.latency_secs);
    let mut next = Instant::now();
    let mut inflight = Vec::new();
    while Instant::now() < end {
        let client = client.clone();
        let acked = acked.clone();
        inflight.push(tokio::spawn(async move {
            if let Ok(ids) = client.submit(vec![TaskSpec::new("e2e", Vec::new())]).await {
                acked
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((ids[0], Instant::now()));
            }
        }));
        next += gap;
        tokio::time::sleep_until(next.into()).await;
    }
    for h in inflight {
        let _ = h.await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut hist = Histogram::<u64>::new(3).expect("valid histogram");
    let acked = acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
    {
        let started = started.lock().unwrap_or_else(|p| p.into_inner());
        for (id, ack) in &acked {
            if let Some(s) = started.get(id) {
                hist.record(s.saturating_duration_since(*ack).as_micros() as u64)
                    .ok();
            }
        }
    }
    points.push(E2ePoint {
        scenario: "dispatch_latency",
        tls: args.tls || ctx.tls.is_some(),
        workers: args.workers,
        batched_reports: !args.one_report_per_call,
        tasks: acked.len() as u64,
        secs: args.latency_secs,
        tasks_per_sec: acked.len() as f64 / args.latency_secs,
        dispatch_p50_ms: Some(hist.value_at_quantile(0.5) as f64 / 1000.0),
        dispatch_p99_ms: Some(hist.value_at_quantile(0.99) as f64 / 1000.0),
    });
    shutdown.cancel();

    outln!(
        "{:<17} {:>7} {:>8} {:>8} {:>10} {:>12} {:>12}",
        "scenario",
        "workers",
        "tasks",
        "secs",
        "tasks/s",
        "p50_ms",
        "p99_ms"
    );
    for p in &points {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        outln!(
            "{:<17} {:>7} {:>8} {:>8.2} {:>10.0} {:>12} {:>12}",
            p.scenario,
            p.workers,
            p.tasks,
            p.secs,
            p.tasks_per_sec,
            f(p.dispatch_p50_ms),
            f(p.dispatch_p99_ms)
        );
    }
    let json = serde_json::to_string_pretty(&points)?;
    if let Some(out) = &args.out {
        std::fs::write(out, &json).with_context(|| format!("writing {}", out.display()))?;
    }
    outln!("{json}");
    Ok(ExitCode::SUCCESS)
}
