//! The `flotilla` binary: run a replica (`server`), a local cluster (`dev`), talk to a
//! cluster (`submit`, `status`, `wait`, `cancel`, `list`, `cluster status`) and measure it
//! (`bench submit`), compare queue policies on a workload (`simulate`, `trace export`), back
//! up and restore its state (`snapshot export`, `restore`).
//! Errors print one line and exit non-zero.

/// `println!` that treats a closed stdout (`flotilla list | head -1`) as the reader being done:
/// exit quietly with success instead of panicking; any other write error exits non-zero.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::stdout_line(format_args!($($arg)*))
    };
}

mod backup;
mod bench;
mod bench_failover;
mod bench_flow;
mod bench_plot;
mod bench_scale;
mod bench_steady;
mod bench_workflow;
mod cert;
mod commands;
mod dev;
mod isolate;
mod output;
mod payload;
mod probe;
mod progress;
mod schedule;
mod server;
mod settings;
mod simulate;
mod token;
mod worker;
mod workflow;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// Addresses of the cluster `flotilla dev` starts; the default for client commands.
pub const DEV_CLUSTER: &str = "127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403";

#[derive(Parser)]
#[command(
    name = "flotilla",
    version,
    about = "A highly available task scheduler"
)]
struct Cli {
    /// Replica addresses (HOST:PORT,...) of the cluster to talk to [default: the dev cluster,
    /// 127.0.0.1:7401-7403].
    #[arg(long, global = true, env = "FLOTILLA_CLUSTER")]
    cluster: Option<String>,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    json: bool,
    /// File holding the token sent with every call (replicas started with --tokens-file need
    /// one) [default: FLOTILLA_TOKEN when set].
    #[arg(long, global = true, env = "FLOTILLA_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<std::path::PathBuf>,
    /// CA certificate (PEM) that signed the replicas' certificates: connect over TLS, trusting
    /// it (replicas started with --tls-cert need it).
    #[arg(long, global = true, env = "FLOTILLA_CA", value_name = "FILE")]
    ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) to present over TLS, with --client-key.
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_CLIENT_CERT",
        value_name = "FILE",
        requires = "ca"
    )]
    client_cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_CLIENT_KEY",
        value_name = "FILE",
        requires = "client_cert"
    )]
    client_key: Option<std::path::PathBuf>,
    /// Name to expect in the replicas' certificates [default: the host dialled].
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_TLS_SERVER_NAME",
        value_name = "NAME",
        requires = "ca"
    )]
    tls_server_name: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

// Parsed once at start: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Run one replica.
    #[command(args_override_self = true)]
    Server(server::ServerArgs),
    /// Run a 3-replica cluster on loopback with data under ./flotilla-data.
    Dev(dev::DevArgs),
    /// Submit a command task; prints its id.
    Submit(commands::SubmitArgs),
    /// Show a task.
    Status(commands::IdArgs),
    /// Why a task is in its state: what it waits for, why it does not start, where it runs,
    /// how it ended.
    Why(commands::IdArgs),
    /// Wait until a task finishes; exit 0 only if it succeeded.
    Wait(commands::WaitArgs),
    /// Cancel a task.
    Cancel(commands::IdArgs),
    /// Workflows: a DAG of tasks from a file in one call (all or nothing), its status, cancel.
    Workflow {
        #[command(subcommand)]
        command: workflow::WorkflowCmd,
    },
    /// Cron schedules: a command task at every tick (UTC), each tick once across leader
    /// changes; add, list, pause, resume, delete.
    Schedule {
        #[command(subcommand)]
        command: schedule::ScheduleCmd,
    },
    /// List tasks.
    List(commands::ListArgs),
    /// Run a worker that executes command tasks.
    #[command(args_override_self = true)]
    Worker(worker::WorkerArgs),
    /// List registered workers with capacity, load and lease age.
    Workers,
    /// Queue settings.
    Queue {
        #[command(subcommand)]
        command: commands::QueueCmd,
    },
    /// Cluster commands.
    Cluster {
        #[command(subcommand)]
        command: commands::ClusterCmd,
    },
    /// Back up the cluster's state (`snapshot export --out FILE`, admin token).
    Snapshot {
        #[command(subcommand)]
        command: backup::SnapshotCmd,
    },
    /// Prepare an empty data dir of a NEW cluster from a backup (once per replica, the same
    /// --peers for each); then start each replica with `flotilla server`.
    Restore(backup::RestoreArgs),
    /// Benchmarks against a cluster (one started for the purpose unless --cluster is given).
    Bench {
        #[command(subcommand)]
        command: bench::BenchCmd,
    },
    /// A cluster CA and certificates for TLS (--tls-cert, --client-cert).
    Cert {
        #[command(subcommand)]
        command: cert::CertCmd,
    },
    /// Ask a replica's HTTP listener for /readyz (a container health check); exit 0 on 200.
    Probe(probe::ProbeArgs),
    /// Tokens for replicas started with --tokens-file.
    Token {
        #[command(subcommand)]
        command: token::TokenCmd,
    },
    /// Replay a workload trace through the scheduler on simulated time, per queue policy.
    Simulate(simulate::SimulateArgs),
    /// Workload traces for `flotilla simulate`.
    Trace {
        #[command(subcommand)]
        command: simulate::TraceCmd,
    },
}

/// glibc's allocator cost ~15% of a replica's CPU under load (many small, short-lived
/// allocations across threads: requests, entries, responses); mimalloc halves that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let argv = match settings::expand(&Cli::command(), argv, &env) {
        Ok(argv) => argv,
        Err(problems) => {
            for p in problems {
                eprintln!("error: {p}");
            }
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(argv);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let token = read_token(cli.token_file.as_deref())?;
        // Only the commands that call a cluster read the TLS files (a replica's environment
        // may hold FLOTILLA_CA for other tools).
        let calls_cluster = !matches!(
            cli.command,
            Cmd::Server(_)
                | Cmd::Dev(_)
                | Cmd::Token { .. }
                | Cmd::Cert { .. }
                | Cmd::Simulate(_)
                | Cmd::Probe(_)
                | Cmd::Restore(_)
        );
        let tls = match cli.ca.as_ref().filter(|_| calls_cluster) {
            Some(ca) => Some(flotilla_client::tls_from_files(
                ca,
                cli.client_cert.as_deref(),
                cli.client_key.as_deref(),
                cli.tls_server_name.as_deref(),
            )?),
            None => None,
        };
        let ctx = commands::Ctx {
            tls,
            cluster_given: cli.cluster.is_some(),
            cluster: cli.cluster.unwrap_or_else(|| DEV_CLUSTER.to_string()),
            json: cli.json,
            token,
        };
        match cli.command {
            Cmd::Server(args) => server::run(args).await,
            Cmd::Dev(args) => dev::run(args).await,
            Cmd::Submit(args) => commands::submit(&ctx, args).await,
            Cmd::Status(args) => commands::status(&ctx, args).await,
            Cmd::Why(args) => commands::why(&ctx, args).await,
            Cmd::Wait(args) => commands::wait(&ctx, args).await,
            Cmd::Workflow { command } => workflow::run(&ctx, command).await,
            Cmd::Schedule { command } => schedule::run(&ctx, command).await,
            Cmd::Cancel(args) => commands::cancel(&ctx, args).await,
            Cmd::List(args) => commands::list(&ctx, args).await,
            Cmd::Cluster { command } => commands::cluster(&ctx, command).await,
            Cmd::Worker(args) => worker::run(&ctx, args).await,
            Cmd::Workers => commands::workers(&ctx).await,
            Cmd::Queue { command } => commands::queue(&ctx, command).await,
            Cmd::Snapshot { command } => backup::snapshot(&ctx, command).await,
            Cmd::Restore(args) => backup::restore(&ctx, args).await,
            Cmd::Bench { command } => bench::run(&ctx, command).await,
            Cmd::Token { command } => token::run(command),
            Cmd::Probe(args) => probe::run(args).await,
            Cmd::Cert { command } => cert::run(command),
            Cmd::Simulate(args) => simulate::run(args, ctx.json),
            Cmd::Trace { command } => simulate::trace(&ctx, command).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The caller's token: the first line of `file` (--token-file or FLOTILLA_TOKEN_FILE), else
/// FLOTILLA_TOKEN; none without either.
fn read_token(file: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    Ok(match file {
        Some(f) => Some(
            flotilla_client::token_from_file(f)
                .map_err(|e| anyhow::anyhow!("--token-file: {e}"))?,
        ),
        None => flotilla_client::token_from_env()?,
    })
}

/// Writes one line to stdout; see [`outln!`].
pub(crate) fn stdout_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{args}").and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(1);
    }
}

/// An error and its causes on one line.
fn one_line(e: &anyhow::Error) -> String {
    e.chain()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ")
        .replace('\n', " ")
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, message and every field, e.g.
    /// `task`, `term`, `node_id`), for log collectors.
    Json,
}

/// Installs the log subscriber on stderr; `RUST_LOG` overrides `default`.
pub fn init_tracing(default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
