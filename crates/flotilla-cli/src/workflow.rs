//! `flotilla workflow submit|status|cancel`: a DAG of command tasks from a JSON or YAML file,
//! submitted in one call (all or nothing), shown task by task, cancelled whole.
//!
//! ```text
//! {"tasks": [
//!   {"name": "count-a", "command": ["sh", "-c", "wc -w < a.txt > $FLOTILLA_OUTPUT"]},
//!   {"name": "sum", "after": ["count-a"], "command": ["sh", "-c", "..."], "queue": "q"}
//! ]}
//! ```
//! Each task takes the options of `flotilla submit` as optional fields (`queue`, `priority`,
//! `key`, `max_attempts`, `estimate` and `timeout` in seconds, `cpu`, `mem_mb`, `labels`,
//! `delay`, `at`, `depends_on` for tasks outside the workflow by id). Unknown fields are refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use flotilla_client::{Consistency, NamedTask, TaskId, TaskSpec, TaskState, WorkflowStatus};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::commands::{not_before_ms, seconds_ms, Ctx};
use crate::payload::CommandPayload;

#[derive(Subcommand)]
pub enum WorkflowCmd {
    /// Submit a workflow from a JSON or YAML file (`-` reads stdin); prints its id.
    Submit(SubmitArgs),
    /// Show every task of a workflow, parents first.
    Status(StatusArgs),
    /// Cancel every unfinished task of a workflow.
    Cancel(CancelArgs),
}

#[derive(Args)]
pub struct SubmitArgs {
    /// The workflow file: `{"tasks": [{"name": ..., "command": [...], "after": [...]}]}`.
    file: PathBuf,
    /// Queue of the tasks that name none.
    #[arg(long, default_value = "default")]
    queue: String,
}

#[derive(Args)]
pub struct StatusArgs {
    /// Workflow id (its first task's id, as `workflow submit` printed it).
    id: u64,
    /// Wait until every task finished, at most this many seconds (exit 2 on timeout, 1 if a
    /// task did not succeed).
    #[arg(long, value_name = "SECS")]
    wait: Option<f64>,
    /// Read from the asked replica without a leader round trip (may lag).
    #[arg(long)]
    stale: bool,
}

#[derive(Args)]
pub struct CancelArgs {
    /// Workflow id.
    id: u64,
}

/// The file's shape.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkflowFile {
    tasks: Vec<TaskEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskEntry {
    name: String,
    command: Vec<String>,
    #[serde(default)]
    after: Vec<String>,
    queue: Option<String>,
    #[serde(default)]
    priority: i32,
    key: Option<String>,
    max_attempts: Option<u32>,
    /// Seconds.
    estimate: Option<f64>,
    /// Seconds.
    timeout: Option<f64>,
    #[serde(default)]
    cpu: u32,
    #[serde(default)]
    mem_mb: u32,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    delay: Option<String>,
    at: Option<String>,
    /// Tasks outside the workflow, by id.
    #[serde(default)]
    depends_on: Vec<u64>,
    concurrency_key: Option<String>,
}

pub async fn run(ctx: &Ctx, cmd: WorkflowCmd) -> Result<ExitCode> {
    match cmd {
        WorkflowCmd::Submit(args) => submit(ctx, args).await,
        WorkflowCmd::Status(args) => status(ctx, args).await,
        WorkflowCmd::Cancel(args) => cancel(ctx, args).await,
    }
}

async fn submit(ctx: &Ctx, args: SubmitArgs) -> Result<ExitCode> {
    let text = if args.file == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("reading the workflow from stdin")?
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("reading {}", args.file.display()))?
    };
    let tasks = parse(&text, &args.file, &args.queue, std::time::SystemTime::now())?;
    let names: Vec<String> = tasks.iter().map(|t| t.name.clone()).collect();
    let submitted = ctx.client()?.submit_workflow(tasks).await?;
    let ids: serde_json::Map<String, Value> = names
        .iter()
        .zip(&submitted.ids)
        .map(|(n, id)| (n.clone(), json!(id.0)))
        .collect();
    ctx.print(
        json!({ "workflow": submitted.id.0, "tasks": ids }),
        submitted.id.to_string(),
    );
    Ok(ExitCode::SUCCESS)
}

/// The tasks of a workflow file (JSON, or YAML when it does not parse as JSON). Errors name the
/// task: `tasks[2] ("sum"): invalid estimate -1: ...`.
fn parse(
    text: &str,
    file: &Path,
    default_queue: &str,
    now: std::time::SystemTime,
) -> Result<Vec<NamedTask>> {
    let parsed: WorkflowFile = match serde_json::from_str(text) {
        Ok(w) => w,
        Err(json_err) if text.trim_start().starts_with('{') => {
            bail!("{}: invalid workflow: {json_err}", file.display())
        }
        Err(_) => serde_yaml::from_str(text)
            .map_err(|e| anyhow::anyhow!("{}: invalid workflow: {e}", file.display()))?,
    };
    if parsed.tasks.is_empty() {
        bail!("{}: invalid workflow: tasks is empty", file.display());
    }
    parsed
        .tasks
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let which = format!("tasks[{i}] ({:?})", t.name);
            task(t, default_queue, now).with_context(|| format!("{}: {which}", file.display()))
        })
        .collect()
}

fn task(t: TaskEntry, default_queue: &str, now: std::time::SystemTime) -> Result<NamedTask> {
    if t.command.is_empty() {
        bail!("command is empty");
    }
    let queue = t.queue.unwrap_or_else(|| default_queue.to_string());
    let mut spec = TaskSpec::new(queue, CommandPayload::new(t.command).encode());
    spec.priority = t.priority;
    spec.idempotency_key = t.key;
    if let Some(n) = t.max_attempts {
        spec.max_attempts = n;
    }
    spec.estimate_ms = t
        .estimate
        .map(|s| seconds_ms("estimate", s, false))
        .transpose()?;
    spec.timeout_ms = t
        .timeout
        .map(|s| seconds_ms("timeout", s, true))
        .transpose()?;
    spec.resources.cpu_millis = t.cpu;
    spec.resources.mem_mb = t.mem_mb;
    spec.labels = t.labels;
    spec.not_before_ms = not_before_ms(t.delay.as_deref(), t.at.as_deref(), now)?;
    spec.depends_on = t.depends_on.into_iter().map(TaskId).collect();
    spec.concurrency_key = t.concurrency_key;
    Ok(NamedTask {
        name: t.name,
        spec,
        after: t.after,
    })
}

async fn status(ctx: &Ctx, args: StatusArgs) -> Result<ExitCode> {
    let client = ctx.client()?;
    let consistency = if args.stale {
        Consistency::Stale
    } else {
        Consistency::Linearizable
    };
    let id = TaskId(args.id);
    let mut timed_out = false;
    if let Some(secs) = args.wait {
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(seconds_ms("--wait", secs, false)?);
        // Long-poll each unfinished task in turn: parents first, so most are done by then.
        let w = client.workflow(id, consistency).await?;
        for m in w.members.iter().filter(|m| !m.removed) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let t = client.wait(m.id, left).await?;
            if !t.state.is_terminal() {
                timed_out = true;
                break;
            }
        }
    }
    let w = client.workflow(id, consistency).await?;
    ctx.print(status_json(&w), status_text(&w));
    if timed_out || (args.wait.is_some() && !w.is_finished()) {
        eprintln!("timed out: workflow {id} has unfinished tasks");
        return Ok(ExitCode::from(2));
    }
    let failed = w.members.iter().any(|m| {
        m.task
            .as_ref()
            .is_some_and(|t| t.state.is_terminal() && t.state != TaskState::Succeeded)
    });
    Ok(if args.wait.is_some() && failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn status_json(w: &WorkflowStatus) -> Value {
    json!({
        "workflow": w.id.0,
        "submitted_at_ms": w.submitted_at_ms,
        "finished": w.is_finished(),
        "tasks": w.members.iter().map(|m| json!({
            "name": m.name,
            "id": m.id.0,
            "after": m.after,
            "removed": m.removed,
            "state": m.task.as_ref().map(|t| t.state.as_str()),
            "attempts": m.task.as_ref().map(|t| t.attempts),
            "worker": m.task.as_ref().and_then(|t| t.worker.clone()),
            "reason": m.task.as_ref().and_then(|t| t.reason.clone()),
            "result": m.task.as_ref().and_then(|t| t.result.as_ref()).map(|r| String::from_utf8_lossy(r).to_string()),
        })).collect::<Vec<_>>(),
    })
}

/// A table, parents first; a child's AFTER column names its parents.
fn status_text(w: &WorkflowStatus) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for m in &w.members {
        let state = m.task.as_ref().map_or("removed", |t| t.state.as_str());
        *counts.entry(state).or_default() += 1;
    }
    let summary: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let name_w = w
        .members
        .iter()
        .map(|m| m.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut out = format!(
        "workflow {}  {} tasks: {}\n{:<name_w$}  {:>8}  {:<10}  {:>8}  AFTER / REASON",
        w.id,
        w.members.len(),
        summary.join(", "),
        "NAME",
        "ID",
        "STATE",
        "ATTEMPTS"
    );
    for m in &w.members {
        let (state, attempts, reason) = match &m.task {
            Some(t) => (
                t.state.as_str(),
                t.attempts.to_string(),
                t.reason.clone().unwrap_or_default(),
            ),
            None => ("removed", "-".into(), String::new()),
        };
        let mut tail = m.after.join(",");
        if !reason.is_empty() {
            if !tail.is_empty() {
                tail.push_str("  ");
            }
            tail.push_str(&format!("({reason})"));
        }
        out.push_str(&format!(
            "\n{:<name_w$}  {:>8}  {:<10}  {:>8}  {tail}",
            m.name, m.id.0, state, attempts
        ));
    }
    out
}

async fn cancel(ctx: &Ctx, args: CancelArgs) -> Result<ExitCode> {
    let cancelled = ctx.client()?.cancel_workflow(TaskId(args.id)).await?;
    ctx.print(
        json!({ "workflow": args.id, "cancelled": cancelled.iter().map(|t| t.0).collect::<Vec<_>>() }),
        format!("workflow {}: {} tasks cancelled", args.id, cancelled.len()),
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> std::time::SystemTime {
        std::time::UNIX_EPOCH + Duration::from_secs(1_000)
    }

    #[test]
    fn a_json_or_yaml_file_gives_the_same_tasks() {
        let json = r#"{"tasks": [
            {"name": "a", "command": ["sh", "-c", "echo a"], "queue": "q", "estimate": 1.5, "labels": {"gpu": "yes"}},
            {"name": "b", "command": ["echo", "b"], "after": ["a"], "delay": "30s", "key": "k", "max_attempts": 5}
        ]}"#;
        let yaml = "
tasks:
  - name: a
    command: [sh, -c, echo a]
    queue: q
    estimate: 1.5
    labels: {gpu: 'yes'}
  - name: b
    command: [echo, b]
    after: [a]
    delay: 30s
    key: k
    max_attempts: 5
";
        let file = Path::new("w.json");
        let from_json = parse(json, file, "default", at()).unwrap();
        let from_yaml = parse(yaml, file, "default", at()).unwrap();
        assert_eq!(from_json, from_yaml);
        let (a, b) = (&from_json[0], &from_json[1]);
        assert_eq!((a.name.as_str(), a.spec.queue.as_str()), ("a", "q"));
        assert_eq!(a.spec.estimate_ms, Some(1500));
        assert_eq!(a.spec.labels.get("gpu").map(String::as_str), Some("yes"));
        assert_eq!(
            CommandPayload::decode(&a.spec.payload).unwrap().argv,
            vec!["sh", "-c", "echo a"]
        );
        assert_eq!(b.after, vec!["a"]);
        assert_eq!(b.spec.queue, "default");
        assert_eq!(b.spec.not_before_ms, Some(1_030_000));
        assert_eq!(b.spec.idempotency_key.as_deref(), Some("k"));
        assert_eq!(b.spec.max_attempts, 5);
    }

    #[test]
    fn bad_files_are_refused_naming_the_task_or_field() {
        let err = |text: &str| {
            format!(
                "{:#}",
                parse(text, Path::new("w.json"), "default", at()).unwrap_err()
            )
        };
        let e = err(r#"{"tasks": [{"name": "a", "command": ["x"], "priorty": 1}]}"#);
        assert!(e.contains("unknown field `priorty`"), "{e}");
        let e =
            err(r#"{"tasks": [{"name": "a", "command": ["x"]}, {"name": "b", "command": []}]}"#);
        assert_eq!(e, "w.json: tasks[1] (\"b\"): command is empty");
        let e = err(r#"{"tasks": [{"name": "a", "command": ["x"], "estimate": -1}]}"#);
        assert!(
            e.starts_with("w.json: tasks[0] (\"a\"): invalid estimate -1"),
            "{e}"
        );
        let e = err(r#"{"tasks": []}"#);
        assert_eq!(e, "w.json: invalid workflow: tasks is empty");
        let e = err("tasks: [{name: a}]");
        assert!(e.contains("missing field `command`"), "{e}");
        let e = err(r#"{"tasks": [}"#);
        assert!(e.starts_with("w.json: invalid workflow:"), "{e}");
    }
}
