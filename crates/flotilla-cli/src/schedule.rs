//! `flotilla schedule add|list|pause|resume|delete`: cron schedules, replicated objects that
//! create a command task at every tick (UTC), each tick at most once across leader changes.
//!
//! ```text
//! flotilla schedule add nightly --cron "0 3 * * *" --queue batch -- ./backup.sh
//! flotilla schedule add poll --cron "*/10 * * * * *" --overlap allow -- ./poll.sh   (seconds)
//! ```

use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Result;
use clap::{Args, Subcommand};
use flotilla_client::{Consistency, Overlap, Schedule, ScheduleSpec};
use serde_json::{json, Value};

use crate::commands::{Ctx, TaskOptions};
use crate::payload::CommandPayload;

#[derive(Subcommand)]
pub enum ScheduleCmd {
    /// Add a schedule: run CMD at every tick of a cron expression (UTC).
    Add(AddArgs),
    /// List schedules: expression, next and last tick, tasks created, ticks skipped or missed.
    List(ListArgs),
    /// Pause a schedule: its ticks create nothing until it is resumed.
    Pause(NameArgs),
    /// Resume a schedule from its first tick after now (ticks while paused never run).
    Resume(NameArgs),
    /// Delete a schedule (the tasks it created stay).
    Delete(NameArgs),
}

#[derive(Args)]
pub struct AddArgs {
    /// The schedule's name (no whitespace or ':').
    name: String,
    /// Cron expression: `MIN HOUR DAY-OF-MONTH MONTH DAY-OF-WEEK`, or with seconds first
    /// (six fields); UTC.
    #[arg(long)]
    cron: String,
    /// At a tick while the previous tick's task has not finished: skip it, or allow a second.
    #[arg(long, default_value = "skip", value_parser = ["skip", "allow"])]
    overlap: String,
    #[command(flatten)]
    task: TaskOptions,
    /// The command to run, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

#[derive(Args)]
pub struct ListArgs {
    /// Read from the asked replica without a leader round trip (may lag).
    #[arg(long)]
    stale: bool,
}

#[derive(Args)]
pub struct NameArgs {
    /// The schedule's name.
    name: String,
}

pub async fn run(ctx: &Ctx, cmd: ScheduleCmd) -> Result<ExitCode> {
    match cmd {
        ScheduleCmd::Add(args) => add(ctx, args).await,
        ScheduleCmd::List(args) => list(ctx, args).await,
        ScheduleCmd::Pause(args) => pause(ctx, &args.name, true).await,
        ScheduleCmd::Resume(args) => pause(ctx, &args.name, false).await,
        ScheduleCmd::Delete(args) => {
            ctx.client()?.delete_schedule(&args.name).await?;
            ctx.print(
                json!({ "deleted": args.name }),
                format!("deleted {}", args.name),
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn add(ctx: &Ctx, args: AddArgs) -> Result<ExitCode> {
    let task = args.task.spec(args.command)?;
    let spec = ScheduleSpec {
        name: args.name,
        cron: args.cron,
        task,
        overlap: Overlap::parse(&args.overlap).unwrap_or_default(),
    };
    let s = ctx.client()?.add_schedule(spec).await?;
    ctx.print(schedule_json(&s), schedule_line(&s));
    Ok(ExitCode::SUCCESS)
}

async fn list(ctx: &Ctx, args: ListArgs) -> Result<ExitCode> {
    let consistency = if args.stale {
        Consistency::Stale
    } else {
        Consistency::Linearizable
    };
    let all = ctx.client()?.schedules(consistency).await?;
    let json = Value::Array(all.iter().map(schedule_json).collect());
    let text = if all.is_empty() {
        "no schedules".to_string()
    } else {
        all.iter().map(schedule_line).collect::<Vec<_>>().join("\n")
    };
    ctx.print(json, text);
    Ok(ExitCode::SUCCESS)
}

async fn pause(ctx: &Ctx, name: &str, paused: bool) -> Result<ExitCode> {
    let s = ctx.client()?.pause_schedule(name, paused).await?;
    ctx.print(schedule_json(&s), schedule_line(&s));
    Ok(ExitCode::SUCCESS)
}

fn time(ms: Option<u64>) -> String {
    ms.map_or("-".into(), |ms| {
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
    })
}

/// One line: name, expression, state, next and last tick, counts.
fn schedule_line(s: &Schedule) -> String {
    format!(
        "{}  {:?}  {}  queue={}  overlap={}  next={}  last={}  last_task={}  fired={} skipped={} missed={}",
        s.spec.name,
        s.spec.cron,
        if s.paused { "paused" } else { "active" },
        s.spec.task.queue,
        s.spec.overlap.as_str(),
        time(s.next_tick_ms),
        time(s.last_tick_ms),
        s.last_task.map_or("-".into(), |t| t.to_string()),
        s.fired,
        s.skipped,
        s.missed,
    )
}

fn schedule_json(s: &Schedule) -> Value {
    let command = CommandPayload::decode(&s.spec.task.payload)
        .map(|c| json!(c.argv))
        .unwrap_or(Value::Null);
    json!({
        "name": s.spec.name,
        "cron": s.spec.cron,
        "queue": s.spec.task.queue,
        "command": command,
        "overlap": s.spec.overlap.as_str(),
        "paused": s.paused,
        "next_tick_ms": s.next_tick_ms,
        "last_tick_ms": s.last_tick_ms,
        "last_task": s.last_task.map(|t| t.0),
        "fired": s.fired,
        "skipped": s.skipped,
        "missed": s.missed,
        "created_at_ms": s.created_at_ms,
    })
}
