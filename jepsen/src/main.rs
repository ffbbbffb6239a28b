//! `flotilla-jepsen`: Flotilla's fault-injection suite. Starts real replicas (and workers) as
//! OS processes behind a partitioning proxy, runs a recorded client workload while a seeded
//! nemesis kills, pauses and partitions them, then checks the history and the replicas' final
//! state. See jepsen/README.md.
//!
//! ```text
//!  main ─▶ run (phases) ─▶ cluster (processes) ─▶ proxy (links)
//!            │              nemesis (schedule, faults, heals)
//!            │              workload (clients, monitor) ─▶ history ◀─ sink (side effects)
//!            └─▶ checker (pure) ─▶ report (results.json, timeline.html, PNGs)
//! ```
//!
//! Exit status of `test` and `check`: 0 valid, 1 invalid, 2 unknown (3: the harness failed).

mod auth;
mod binaries;
mod checker;
mod cluster;
mod history;
mod nemesis;
mod proxy;
mod report;
mod run;
mod sink;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};

use crate::checker::{Results, RunParams};

#[derive(Parser)]
#[command(
    name = "flotilla-jepsen",
    about = "Fault-injection tests of a Flotilla cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a test and check it.
    Test(TestArgs),
    /// Re-check a saved run directory (rewrites its results and report).
    Check { dir: PathBuf },
    /// The task workers run: report this attempt's side effect to the sink.
    SinkReport {
        #[arg(long)]
        addr: String,
        /// Simulated work before the report, in ms.
        #[arg(long, default_value_t = 200)]
        work_ms: u64,
    },
}

#[derive(clap::Args)]
struct TestArgs {
    /// Replicas (3 or 5).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Worker processes (0: no workers, tasks stay pending and leases are not checked).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Length of the chaos phase, in seconds.
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    /// Faults, comma separated: families (kill, partition, pause, worker-kill, worker-pause,
    /// worker-partition) or single faults (kill-leader, partition-one-way...), or none.
    #[arg(long, value_delimiter = ',', default_value = "kill,partition,pause")]
    nemesis: Vec<String>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Run a planted-bug build with this bug active (ack-before-commit, no-idempotency, ...).
    #[arg(long)]
    sut_bug: Option<String>,
    /// Run directory (default: jepsen/store/<scenario>/<time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Name of the scenario in the store and report.
    #[arg(long)]
    scenario: Option<String>,
    /// The flotilla binary to test (default: found, or built, in the cargo target dir).
    #[arg(long)]
    bin: Option<PathBuf>,
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    #[arg(long, default_value_t = 5)]
    recovery: u64,
    /// Longest wait for every acknowledged task to become terminal (with workers).
    #[arg(long, default_value_t = 60)]
    drain: u64,
    /// Pause between two operations of one client, in ms (default 20; 150 with workers, so
    /// the workers keep up and the drain can finish).
    #[arg(long)]
    think_ms: Option<u64>,
    /// How long each task's command works, in ms; half before its side effect, half after.
    #[arg(long, default_value_t = 200)]
    task_work_ms: u64,
    #[arg(long, default_value_t = 100)]
    heartbeat_ms: u64,
    #[arg(long, default_value_t = 600)]
    election_timeout_ms: u64,
    /// Run with tokens and a peer secret: clients send an admin token, workers a worker token,
    /// replicas accept peers only with the cluster secret.
    #[arg(long)]
    auth: bool,
    /// Run with TLS: a CA made for the run, replicas with certificates (peers authenticate
    /// each other by certificate), clients and workers trusting the CA.
    #[arg(long)]
    tls: bool,
}

fn verdict_line(r: &Results, dir: &std::path::Path) -> String {
    format!(
        "{} scenario={} seed={} acknowledged={} lost={} unexpected={} doubled={} lease_overlaps={} leader_changes={} dir={}",
        r.verdict.as_str(),
        r.scenario,
        r.seed,
        r.acknowledged,
        r.lost,
        r.unexpected,
        r.doubled,
        r.lease_overlaps,
        r.leader_changes,
        dir.display()
    )
}

async fn test(a: TestArgs) -> anyhow::Result<(Results, PathBuf)> {
    if a.nodes == 0 {
        anyhow::bail!("--nodes must be at least 1");
    }
    nemesis::expand(&a.nemesis).map_err(anyhow::Error::msg)?;
    let root = binaries::workspace_root();
    let bin = match (&a.bin, &a.sut_bug) {
        (Some(b), _) => b.clone(),
        (None, Some(_)) => binaries::planted(&root)?,
        (None, None) => binaries::flotilla(&root)?,
    };
    let scenario = a.scenario.clone().unwrap_or_else(|| {
        let mut s = a.nemesis.join("+");
        if let Some(b) = &a.sut_bug {
            s = format!("{s}+bug-{b}");
        }
        s
    });
    let out = a.out.clone().unwrap_or_else(|| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        root.join("jepsen/store")
            .join(&scenario)
            .join(now.to_string())
    });
    let cfg = run::TestConfig {
        params: RunParams {
            scenario,
            nodes: a.nodes,
            workers: a.workers,
            clients: a.clients,
            time_limit_s: a.time_limit,
            nemesis: a.nemesis.clone(),
            seed: a.seed,
            sut_bug: a.sut_bug.clone(),
            leader_bound_ms: 15_000,
            auth: a.auth,
            tls: a.tls,
        },
        bin,
        jepsen_bin: std::env::current_exe()?,
        out: out.clone(),
        warmup_s: a.warmup,
        recovery_s: a.recovery,
        drain_s: a.drain,
        heartbeat_ms: a.heartbeat_ms,
        election_timeout_ms: a.election_timeout_ms,
        think_ms: a.think_ms.unwrap_or(if a.workers > 0 { 150 } else { 20 }),
        task_work_ms: a.task_work_ms,
    };
    Ok((run::test(cfg).await?, out))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        match cli.command {
            Cmd::SinkReport { addr, work_ms } => ExitCode::from(sink::report(&addr, work_ms).await),
            Cmd::Check { dir } => match run::recheck(&dir) {
                Ok(r) => {
                    println!("{}", verdict_line(&r, &dir));
                    ExitCode::from(r.verdict.exit_code())
                }
                Err(e) => {
                    eprintln!("flotilla-jepsen: {e:#}");
                    ExitCode::from(3)
                }
            },
            Cmd::Test(a) => match test(a).await {
                Ok((r, dir)) => {
                    println!("{}", verdict_line(&r, &dir));
                    ExitCode::from(r.verdict.exit_code())
                }
                Err(e) => {
                    eprintln!("flotilla-jepsen: {e:#}");
                    ExitCode::from(3)
                }
            },
        }
    })
}
