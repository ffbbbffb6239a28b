//! `flotilla bench workflow`: a map-reduce DAG through real replicas and in-process workers —
//! `--maps` map tasks feeding `--reducers` reducers, each reducer depending on an equal share
//! of the maps and summing their results (which reach it through `TaskContext::inputs`).
//!
//! Each graph is submitted as one workflow (`SubmitWorkflow`, all or nothing), the flat one
//! without edges. Measures the DAG end to end (its submit to the last reducer succeeded),
//! the same tasks without dependencies (the flat baseline), the scheduling overhead per edge
//! (`(dag - flat) / edges`), and the edge latency: from the last of a reducer's parents
//! returning its result on a worker to the reducer starting on one (the completion's commit,
//! the unblocking, a plan, the assignment's commit, the push and the fetch of the inputs).
//! Every reducer's sum is checked. After a warm-up run, `--rounds` runs of each graph alternate;
//! times are medians. Prints a table; `--out FILE` writes the JSON.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use flotilla_client::{Client, ListQuery, NamedTask, TaskId, TaskSpec, TaskState};
use flotilla_worker::{Outcome, TaskContext};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::commands::Ctx;

#[derive(Args)]
pub struct WorkflowBench {
    /// Map tasks.
    #[arg(long, default_value_t = 1000)]
    maps: usize,
    /// Reduce tasks; each depends on maps/reducers of the maps (at most 256).
    #[arg(long, default_value_t = 10)]
    reducers: usize,
    /// Workers (in this process, each with 64 slots).
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Runs of each graph (after one warm-up run), alternating; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Write the result as JSON to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Serialize)]
struct WorkflowResult {
    scenario: &'static str,
    maps: usize,
    reducers: usize,
    edges: usize,
    workers: usize,
    rounds: usize,
    /// Medians over the rounds.
    dag_ms: f64,
    flat_ms: f64,
    overhead_per_edge_us: f64,
    edge_latency_p50_ms: f64,
    edge_latency_max_ms: f64,
}

/// When each map returned its result and each reducer started, on the workers.
#[derive(Default)]
struct Seen {
    map_done: HashMap<TaskId, Instant>,
    reduce_started: HashMap<TaskId, Instant>,
}

pub async fn run(ctx: &Ctx, args: WorkflowBench) -> Result<ExitCode> {
    if args.maps == 0 || args.reducers == 0 || args.workers == 0 || args.rounds == 0 {
        bail!("invalid --maps/--reducers/--workers/--rounds: each must be at least 1");
    }
    if args.reducers > args.maps {
        bail!(
            "invalid --reducers {}: at most --maps ({})",
            args.reducers,
            args.maps
        );
    }
    let share = args.maps.div_ceil(args.reducers);
    if share > flotilla_core::Limits::MAX_DEPENDENCIES {
        bail!(
            "invalid --maps/--reducers: each reducer would depend on {share} maps (at most {})",
            flotilla_core::Limits::MAX_DEPENDENCIES
        );
    }
    let (client, _own) = crate::bench::target_cluster(ctx, false).await?;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let shutdown = tokio_util::sync::CancellationToken::new();
    for n in 0..args.workers {
        let seen = seen.clone();
        // A map returns its payload; a reducer sums its inputs.
        let handler = move |ctx: TaskContext| {
            let now = Instant::now();
            let outcome = if ctx.parents.is_empty() {
                Outcome::Success(ctx.payload.clone())
            } else {
                let sum: u64 = ctx
                    .inputs
                    .values()
                    .filter_map(|r| std::str::from_utf8(r).ok()?.parse::<u64>().ok())
                    .sum();
                Outcome::Success(format!("{sum}/{}", ctx.inputs.len()).into_bytes())
            };
            let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
            if ctx.parents.is_empty() {
                s.map_done.insert(ctx.task_id, Instant::now());
            } else {
                s.reduce_started.insert(ctx.task_id, now);
            }
            async move { outcome }
        };
        crate::bench::spawn_worker(
            &client,
            format!("workflow-{n}-{}", std::process::id()),
            64,
            &["workflow-dag", "workflow-flat"],
            Arc::new(handler),
            shutdown.child_token(),
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A warm-up run, then the two graphs in turn.
    run_graph(&client, "workflow-flat", &args, false).await?;
    let (mut flat, mut dag) = (Vec::new(), Vec::new());
    let mut hist = Histogram::<u64>::new(3).expect("valid histogram");
    for _ in 0..args.rounds {
        flat.push(
            run_graph(&client, "workflow-flat", &args, false)
                .await?
                .took,
        );
        let ran = run_graph(&client, "workflow-dag", &args, true).await?;
        dag.push(ran.took);
        // Edge latency: the last parent's result returned -> the reducer started.
        let s = seen.lock().unwrap_or_else(|p| p.into_inner());
        for (reducer, parents) in &ran.reducers {
            let last = parents.iter().filter_map(|p| s.map_done.get(p)).max();
            let Some(start) = s.reduce_started.get(reducer) else {
                bail!("reducer {reducer} succeeded but was not seen starting");
            };
            let Some(last) = last else {
                bail!("no parent of reducer {reducer} was seen finishing");
            };
            hist.record(start.saturating_duration_since(*last).as_micros() as u64)
                .ok();
        }
    }
    shutdown.cancel();
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (flat, dag) = (median(&mut flat), median(&mut dag));
    let edges = args.maps;
    let result = WorkflowResult {
        scenario: "workflow",
        maps: args.maps,
        reducers: args.reducers,
        edges,
        workers: args.workers,
        rounds: args.rounds,
        dag_ms: dag.as_secs_f64() * 1000.0,
        flat_ms: flat.as_secs_f64() * 1000.0,
        overhead_per_edge_us: (dag.as_secs_f64() - flat.as_secs_f64()) * 1e6 / edges as f64,
        edge_latency_p50_ms: hist.value_at_quantile(0.5) as f64 / 1000.0,
        edge_latency_max_ms: hist.max() as f64 / 1000.0,
    };
    outln!(
        "{:<9} {:>6} {:>8} {:>6} {:>10} {:>10} {:>14} {:>12} {:>12}",
        "scenario",
        "maps",
        "reducers",
        "edges",
        "dag_ms",
        "flat_ms",
        "us/edge",
        "edge_p50_ms",
        "edge_max_ms"
    );
    outln!(
        "{:<9} {:>6} {:>8} {:>6} {:>10.1} {:>10.1} {:>14.1} {:>12.2} {:>12.2}",
        result.scenario,
        result.maps,
        result.reducers,
        result.edges,
        result.dag_ms,
        result.flat_ms,
        result.overhead_per_edge_us,
        result.edge_latency_p50_ms,
        result.edge_latency_max_ms
    );
    let json = serde_json::to_string_pretty(&result)?;
    if let Some(out) = &args.out {
        std::fs::write(out, &json).with_context(|| format!("writing {}", out.display()))?;
    }
    outln!("{json}");
    Ok(ExitCode::SUCCESS)
}

/// One run of the graph on `queue`: its time and each reducer's parents.
struct Ran {
    took: Duration,
    reducers: Vec<(TaskId, Vec<TaskId>)>,
}

/// Submits the maps (payload: their number, 1-based) and the reducers as one workflow — each
/// reducer after its share of the maps when `linked`, without edges otherwise — waits for
/// every reducer, and checks their sums.
async fn run_graph(
    client: &Client,
    queue: &str,
    args: &WorkflowBench,
    linked: bool,
) -> Result<Ran> {
    let t0 = Instant::now();
    let numbers: Vec<u64> = (1..=args.maps as u64).collect();
    let share = args.maps.div_ceil(args.reducers);
    // Both graphs go in one workflow call, so that they differ only by their edges.
    let mut tasks: Vec<NamedTask> = numbers
        .iter()
        .map(|n| NamedTask {
            name: format!("map-{n}"),
            spec: TaskSpec::new(queue, n.to_string().into_bytes()),
            after: Vec::new(),
        })
        .collect();
    for (i, ns) in numbers.chunks(share).enumerate() {
        tasks.push(NamedTask {
            name: format!("reduce-{i}"),
            spec: TaskSpec::new(queue, b"reduce".to_vec()),
            after: if linked {
                ns.iter().map(|n| format!("map-{n}")).collect()
            } else {
                Vec::new()
            },
        });
    }
    let w = client.submit_workflow(tasks).await?;
    let (maps, reducers) = w.ids.split_at(args.maps);
    let (maps, reducers) = (maps.to_vec(), reducers.to_vec());
    let groups: Vec<(Vec<TaskId>, u64)> = maps
        .chunks(share)
        .zip(numbers.chunks(share))
        .map(|(ids, ns)| (ids.to_vec(), ns.iter().sum()))
        .collect();
    for (id, (parents, want)) in reducers.iter().zip(&groups) {
        let t = client.wait(*id, Duration::from_secs(600)).await?;
        if t.state != TaskState::Succeeded {
            bail!("reducer {id} ended {}: {:?}", t.state, t.reason);
        }
        if linked {
            let got = String::from_utf8_lossy(t.result.as_deref().unwrap_or_default()).to_string();
            let expected = format!("{want}/{}", parents.len());
            if got != expected {
                bail!("reducer {id} summed {got}, expected {expected}");
            }
        }
    }
    // Every map finished too (a flat reducer need not wait for them).
    loop {
        let mut busy = false;
        for state in [TaskState::Pending, TaskState::Running, TaskState::Waiting] {
            let q = ListQuery {
                queue: Some(queue.into()),
                state: Some(state),
                limit: 1,
                ..Default::default()
            };
            busy |= !client.list(&q).await?.tasks.is_empty();
        }
        if !busy {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let failed = ListQuery {
        queue: Some(queue.into()),
        state: Some(TaskState::Failed),
        limit: 1,
        ..Default::default()
    };
    if let Some(t) = client.list(&failed).await?.tasks.first() {
        bail!("task {} failed: {:?}", t.id, t.reason);
    }
    Ok(Ran {
        took: t0.elapsed(),
        reducers: reducers
            .into_iter()
            .zip(groups.into_iter().map(|(p, _)| p))
            .collect(),
    })
}
