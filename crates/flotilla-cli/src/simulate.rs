//! `flotilla simulate`: replays a workload trace through the core's `apply` and `plan` on
//! simulated time under each queue policy (`flotilla_core::simulate`), prints a table, and
//! writes the reports (JSON) and a chart (PNG). `flotilla trace export`: writes such a trace
//! from a cluster's finished tasks. Everything but reading files, the cluster and drawing is
//! in the core, where it is tested.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use flotilla_client::ListQuery;
use flotilla_core::simulate::{self as sim, Policy, Report, SimConfig, Trace, TraceTask};
use plotters::prelude::*;

use crate::commands::Ctx;

/// Largest trace file read, in bytes.
const MAX_TRACE_BYTES: u64 = 256 * 1024 * 1024;

/// Tasks listed per call by `trace export` (the server's page limit).
const EXPORT_PAGE: usize = 1000;

#[derive(Args)]
pub struct SimulateArgs {
    /// The workload: JSON (`{"tasks": [...]}` or `[...]`) or CSV with a header row
    /// (name,arrival_ms,estimate_ms,run_ms,priority,cpu_millis,mem_mb,depends_on,queue;
    /// depends_on `;`-separated), told apart by the extension, else by the content.
    #[arg(long, value_name = "FILE")]
    trace: PathBuf,
    /// Policies to compare, comma-separated: fifo, priority, sjf.
    #[arg(long, default_value = "fifo,priority,sjf", value_name = "LIST")]
    policy: String,
    /// Simulated workers.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Task slots per worker.
    #[arg(long, default_value_t = 1)]
    slots: u32,
    /// CPU of each worker, in millicores [default: 1000 per slot].
    #[arg(long, value_name = "MILLI")]
    worker_cpu_millis: Option<u32>,
    /// Memory of each worker, in MiB [default: 1024 per slot].
    #[arg(long, value_name = "MB")]
    worker_mem_mb: Option<u32>,
    /// Under priority: a task gains one point per this many ms waited (0: no aging).
    #[arg(long, default_value_t = 0, value_name = "MS")]
    aging_ms: u64,
    /// Write the reports (JSON: per policy the figures, each task's times and the series).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Draw waiting times per policy and queue depth over time (PNG).
    #[arg(long, value_name = "FILE.png")]
    chart: Option<PathBuf>,
}

pub fn run(args: SimulateArgs, json: bool) -> Result<ExitCode> {
    let policies = Policy::parse_list(&args.policy).map_err(|e| anyhow!("--policy: {e}"))?;
    let mut config = SimConfig::new(args.workers, args.slots);
    if let Some(cpu) = args.worker_cpu_millis {
        config.worker_cpu_millis = cpu;
    }
    if let Some(mem) = args.worker_mem_mb {
        config.worker_mem_mb = mem;
    }
    config.aging_ms = args.aging_ms;
    config.validate()?;
    // Fail before the run, not after it, when an output cannot be written.
    for (flag, path) in [("--out", &args.out), ("--chart", &args.chart)] {
        if let Some(path) = path {
            check_dir(flag, path)?;
        }
    }
    let what = || format!("--trace {}", args.trace.display());
    let tasks = read_trace(&args.trace).with_context(what)?;
    sim::validate_trace(&tasks).with_context(what)?;
    let mut reports = Vec::with_capacity(policies.len());
    for policy in policies {
        reports.push(sim::simulate(&tasks, policy, &config).with_context(what)?);
    }

    if let Some(path) = &args.out {
        let doc = serde_json::json!({
            "trace": args.trace.display().to_string(),
            "reports": reports,
        });
        let text = serde_json::to_string_pretty(&doc)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write --out {}", path.display()))?;
    }
    if let Some(path) = &args.chart {
        chart_png(path, &reports).with_context(|| format!("--chart {}", path.display()))?;
    }

    if json {
        let summary: Vec<serde_json::Value> = reports.iter().map(summary_json).collect();
        outln!("{}", serde_json::Value::Array(summary));
    } else {
        outln!(
            "{} tasks on {} worker(s) x {} slot(s) ({} mcpu, {} MiB each); times in ms",
            tasks.len(),
            config.workers,
            config.slots,
            config.worker_cpu_millis,
            config.worker_mem_mb
        );
        outln!(
            "{:<9} {:>10} {:>9} {:>9} {:>16} {:>10} {:>12}",
            "policy",
            "wait mean",
            "wait p50",
            "wait p99",
            "turnaround mean",
            "makespan",
            "utilisation"
        );
        for r in &reports {
            outln!(
                "{:<9} {:>10.2} {:>9} {:>9} {:>16.2} {:>10} {:>11.1}%",
                r.policy.as_str(),
                r.wait_ms_mean,
                r.wait_ms_p50,
                r.wait_ms_p99,
                r.turnaround_ms_mean,
                r.makespan_ms,
                r.utilisation * 100.0
            );
        }
        if let Some(path) = &args.out {
            outln!("reports written to {}", path.display());
        }
        if let Some(path) = &args.chart {
            outln!("chart written to {}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A report's figures without the per-task outcomes and the series.
fn summary_json(r: &Report) -> serde_json::Value {
    serde_json::json!({
        "policy": r.policy.as_str(),
        "tasks": r.tasks,
        "wait_ms_mean": r.wait_ms_mean,
        "wait_ms_p50": r.wait_ms_p50,
        "wait_ms_p99": r.wait_ms_p99,
        "wait_ms_max": r.wait_ms_max,
        "turnaround_ms_mean": r.turnaround_ms_mean,
        "makespan_ms": r.makespan_ms,
        "busy_slot_ms": r.busy_slot_ms,
        "utilisation": r.utilisation,
    })
}

/// Reads a trace file, JSON or CSV.
pub fn read_trace(path: &Path) -> Result<Vec<TraceTask>> {
    let len = std::fs::metadata(path)
        .with_context(|| "cannot read it".to_string())?
        .len();
    if len > MAX_TRACE_BYTES {
        bail!("{len} bytes exceed limit {MAX_TRACE_BYTES} (max_trace_bytes)");
    }
    let text = std::fs::read_to_string(path).context("cannot read it")?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    parse_trace(&text, ext.as_deref())
}

/// Parses a trace: JSON when `ext` is `json`, CSV when it is `csv`, else JSON when the text
/// starts with `{` or `[`.
fn parse_trace(text: &str, ext: Option<&str>) -> Result<Vec<TraceTask>> {
    let start = text.trim_start().chars().next();
    let json = match ext {
        Some("json") => true,
        Some("csv") => false,
        _ => matches!(start, Some('{' | '[')),
    };
    if !json {
        return Ok(sim::parse_csv(text)?);
    }
    let tasks = if start == Some('[') {
        serde_json::from_str::<Vec<TraceTask>>(text)
    } else {
        serde_json::from_str::<Trace>(text).map(|t| t.tasks)
    };
    tasks.map_err(|e| anyhow!("invalid JSON trace: {e}"))
}

/// Fails when `path`'s directory does not exist.
fn check_dir(flag: &str, path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!(
            "invalid {flag} {}: directory {} does not exist",
            path.display(),
            dir.display()
        );
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum TraceCmd {
    /// Write a trace of the cluster's succeeded tasks for `flotilla simulate`: arrival =
    /// submitted (from the first), run = finished - started; other tasks are skipped.
    Export(ExportArgs),
}

#[derive(Args)]
pub struct ExportArgs {
    /// Only tasks of this queue.
    #[arg(long)]
    queue: Option<String>,
    /// Where to write the trace: JSON, or CSV when the name ends in `.csv`.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Most tasks to read (from the oldest id on).
    #[arg(long, default_value_t = sim::MAX_TRACE_TASKS)]
    limit: usize,
}

pub async fn trace(ctx: &Ctx, cmd: TraceCmd) -> Result<ExitCode> {
    match cmd {
        TraceCmd::Export(args) => export(ctx, args).await,
    }
}

async fn export(ctx: &Ctx, args: ExportArgs) -> Result<ExitCode> {
    if !(1..=sim::MAX_TRACE_TASKS).contains(&args.limit) {
        bail!(
            "invalid --limit {}: must be 1..={} (max_trace_tasks)",
            args.limit,
            sim::MAX_TRACE_TASKS
        );
    }
    check_dir("--out", &args.out)?;
    let client = ctx.client()?;
    let mut tasks = Vec::new();
    let mut after = None;
    let mut stopped_at_limit = false;
    loop {
        let want = (args.limit - tasks.len()).min(EXPORT_PAGE) as u32;
        let page = client
            .list(&ListQuery {
                queue: args.queue.clone(),
                state: None,
                after,
                limit: want,
                ..Default::default()
            })
            .await?;
        tasks.extend(page.tasks);
        match page.next_after {
            Some(a) if tasks.len() < args.limit => after = Some(a),
            Some(_) => {
                stopped_at_limit = true;
                break;
            }
            None => break,
        }
    }
    let listed = tasks.len();
    let exported = sim::trace_from_tasks(&tasks);
    let csv = args
        .out
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let text = if csv {
        sim::to_csv(&exported.trace.tasks)
    } else {
        serde_json::to_string_pretty(&exported.trace)? + "\n"
    };
    std::fs::write(&args.out, text)
        .with_context(|| format!("cannot write --out {}", args.out.display()))?;
    let written = exported.trace.tasks.len();
    if ctx.json {
        outln!(
            "{}",
            serde_json::json!({
                "out": args.out.display().to_string(),
                "listed": listed,
                "tasks": written,
                "skipped": exported.skipped,
                "dropped_dependencies": exported.dropped_dependencies,
                "stopped_at_limit": stopped_at_limit,
            })
        );
    } else {
        outln!(
            "wrote {written} task(s) to {}; skipped {} that did not succeed (unfinished, failed or cancelled)",
            args.out.display(),
            exported.skipped
        );
        if exported.dropped_dependencies > 0 {
            outln!(
                "dropped {} dependencies on tasks not in the trace",
                exported.dropped_dependencies
            );
        }
        if stopped_at_limit {
            outln!(
                "stopped at --limit {}: later tasks are not in the trace",
                args.limit
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Draws the reports to `path` (PNG, 1400x560): waiting time mean, p50 and p99 per policy
/// (left, bars) and the queue depth — pending plus waiting tasks — over time per policy
/// (right, steps).
pub fn chart_png(path: &Path, reports: &[Report]) -> Result<()> {
    if reports.is_empty() {
        bail!("no reports to draw");
    }
    let text = crate::bench_plot::font();
    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let (left, right) = root.split_horizontally(600);
    let colour = |i: usize| Palette99::pick(i).to_rgba();

    // Waiting time per policy: three bars (mean, p50, p99) in a group per policy.
    let n = reports.len();
    let wait_max = reports
        .iter()
        .map(|r| (r.wait_ms_p99 as f64).max(r.wait_ms_mean))
        .fold(1.0, f64::max)
        * 1.25;
    let mut b = ChartBuilder::on(&left);
    b.margin(15);
    if text {
        b.caption("waiting time (ms) per policy", ("sans-serif", 20))
            .x_label_area_size(20)
            .y_label_area_size(60);
    }
    let mut chart = b
        .build_cartesian_2d(0.0..n as f64, 0.0..wait_max)
        .map_err(|e| anyhow!("{e}"))?;
    if text {
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc("ms")
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
    }
    type Metric = fn(&Report) -> f64;
    let metrics: [(&str, Metric); 3] = [
        ("mean", |r| r.wait_ms_mean),
        ("p50", |r| r.wait_ms_p50 as f64),
        ("p99", |r| r.wait_ms_p99 as f64),
    ];
    for (k, (name, value)) in metrics.iter().enumerate() {
        let c = colour(k);
        let bars: Vec<Rectangle<(f64, f64)>> = reports
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let x0 = i as f64 + 0.1 + 0.27 * k as f64;
                Rectangle::new([(x0, 0.0), (x0 + 0.25, value(r))], c.filled())
            })
            .collect();
        let drawn = chart.draw_series(bars).map_err(|e| anyhow!("{e}"))?;
        if text {
            drawn
                .label(name.to_string())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], c.filled()));
        }
    }
    if text {
        // The policy's name above its group.
        let labels: Vec<Text<'_, (f64, f64), String>> = reports
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let top = (r.wait_ms_p99 as f64).max(r.wait_ms_mean);
                Text::new(
                    r.policy.as_str().to_string(),
                    (i as f64 + 0.35, top + wait_max * 0.04),
                    ("sans-serif", 16),
                )
            })
            .collect();
        chart.draw_series(labels).map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
    }

    // Queue depth over time (from the first arrival), one step line per policy.
    let t_max = reports
        .iter()
        .map(|r| r.makespan_ms)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let depth_max = reports
        .iter()
        .flat_map(|r| r.series.iter().map(|p| p.pending + p.waiting))
        .max()
        .unwrap_or(0)
        .max(1) as f64
        * 1.15;
    let mut b = ChartBuilder::on(&right);
    b.margin(15);
    if text {
        b.caption(
            "queue depth (pending + waiting tasks) over time",
            ("sans-serif", 20),
        )
        .x_label_area_size(35)
        .y_label_area_size(60);
    }
    let mut chart = b
        .build_cartesian_2d(0.0..t_max, 0.0..depth_max)
        .map_err(|e| anyhow!("{e}"))?;
    if text {
        chart
            .configure_mesh()
            .x_desc("ms since the first arrival")
            .y_desc("tasks")
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
    }
    for (i, r) in reports.iter().enumerate() {
        let c = colour(i + 3);
        // A step function: each count holds until the next point.
        let mut line: Vec<(f64, f64)> = Vec::with_capacity(r.series.len() * 2);
        for p in &r.series {
            let t = p.t_ms.saturating_sub(r.start_ms) as f64;
            let depth = (p.pending + p.waiting) as f64;
            if let Some(&(_, before)) = line.last() {
                line.push((t, before));
            }
            line.push((t, depth));
        }
        let drawn = chart
            .draw_series(LineSeries::new(line, c.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?;
        if text {
            drawn
                .label(r.policy.as_str().to_string())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
        }
    }
    if text {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn textbook_json() -> &'static str {
        include_str!("../../../examples/traces/textbook.json")
    }

    /// JSON (object or array) and CSV read the same tasks; the textbook example replays to
    /// the figures worked out in docs/simulator.md.
    #[test]
    fn reads_traces_and_reproduces_the_textbook_figures() {
        let tasks = parse_trace(textbook_json(), Some("json")).unwrap();
        assert_eq!(tasks.len(), 4);
        let array = serde_json::to_string(&tasks).unwrap();
        assert_eq!(parse_trace(&array, None).unwrap(), tasks);
        let csv = sim::to_csv(&tasks);
        assert_eq!(parse_trace(&csv, None).unwrap(), tasks);
        assert_eq!(parse_trace(&csv, Some("csv")).unwrap(), tasks);
        let one = SimConfig::new(1, 1);
        let fifo = sim::simulate(&tasks, Policy::Fifo, &one).unwrap();
        let sjf = sim::simulate(&tasks, Policy::Sjf, &one).unwrap();
        assert_eq!((fifo.wait_ms_mean, sjf.wait_ms_mean), (10.25, 7.0));

        let mixed = include_str!("../../../examples/traces/mixed.csv");
        let tasks = parse_trace(mixed, Some("csv")).unwrap();
        sim::validate_trace(&tasks).unwrap();

        let err = parse_trace("{\"tasks\": [{\"name\": \"a\"}]}", None).unwrap_err();
        assert!(err.to_string().contains("missing field `run_ms`"), "{err}");
        let err = parse_trace(
            "{\"tasks\": [{\"name\": \"a\", \"run_ms\": 1, \"colour\": 2}]}",
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `colour`"), "{err}");
    }

    /// The chart is a PNG of the promised size with something drawn.
    #[test]
    fn draws_a_chart() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("sim.png");
        let tasks = parse_trace(textbook_json(), Some("json")).unwrap();
        let reports: Vec<Report> = Policy::ALL
            .into_iter()
            .map(|p| sim::simulate(&tasks, p, &SimConfig::new(1, 1)).unwrap())
            .collect();
        chart_png(&path, &reports).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG signature");
        let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
        let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
        assert_eq!((w, h), (1400, 560));
        assert!(bytes.len() > 3_000, "{} bytes", bytes.len());
        assert!(chart_png(&path, &[]).is_err());
        assert!(check_dir("--chart", &tmp.path().join("missing/x.png")).is_err());
    }
}
