//! Client commands: submit, status, wait, cancel, list, cluster status.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use flotilla_client::{Client, ClientError, ListQuery, TaskId, TaskSpec, TaskState};
use serde_json::Value;

use crate::output::{status_json, status_text, task_json, task_text};
use crate::payload::CommandPayload;

/// Options every client command shares.
pub struct Ctx {
    pub cluster: String,
    /// Whether the cluster came from --cluster or FLOTILLA_CLUSTER rather than the default.
    pub cluster_given: bool,
    pub json: bool,
    /// The token sent with every call (from --token-file, FLOTILLA_TOKEN_FILE or
    /// FLOTILLA_TOKEN), if any.
    pub token: Option<String>,
    /// TLS to the replicas (from --ca, --client-cert, --client-key), if any.
    pub tls: Option<flotilla_client::ClientTls>,
}

impl Ctx {
    /// A client of the cluster that sends the caller's token.
    pub fn client(&self) -> Result<Client> {
        self.client_with(flotilla_client::ClientConfig::default())
    }

    /// [`Ctx::client`] with other settings.
    pub fn client_with(&self, config: flotilla_client::ClientConfig) -> Result<Client> {
        let config = flotilla_client::ClientConfig {
            token: self.token.clone(),
            tls: self.tls.clone(),
            ..config
        };
        Client::with_config(self.cluster.split(','), config).context("invalid --cluster")
    }

    pub(crate) fn print(&self, json: Value, text: String) {
        if self.json {
            outln!("{json}");
        } else {
            outln!("{text}");
        }
    }
}

/// The options of a command task that `submit` and `schedule add` share.
#[derive(Args)]
pub struct TaskOptions {
    /// Queue to submit to.
    #[arg(long, default_value = "default")]
    queue: String,
    /// Priority, -1000..=1000 (higher runs first under the priority policy).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    /// Attempts before the task fails for good.
    #[arg(long, default_value_t = flotilla_core::Limits::DEFAULT_MAX_ATTEMPTS)]
    max_attempts: u32,
    /// Estimated run time in seconds (for shortest-job-first).
    #[arg(long, value_name = "SECS")]
    estimate: Option<f64>,
    /// CPU needed, in millicores.
    #[arg(long, value_name = "MILLI", default_value_t = 0)]
    cpu: u32,
    /// Memory needed, in MiB.
    #[arg(long, value_name = "MB", default_value_t = 0)]
    mem_mb: u32,
    /// Fail an attempt that runs longer than this many seconds (it is retried).
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    /// A label the worker must have, KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Tasks of the queue sharing this key run at most the queue's max-per-key at once (e.g.
    /// a customer id; see `queue max-per-key`).
    #[arg(long, value_name = "KEY")]
    concurrency_key: Option<String>,
}

impl TaskOptions {
    /// A command task of these options running `command`.
    pub fn spec(self, command: Vec<String>) -> Result<TaskSpec> {
        let mut spec = TaskSpec::new(self.queue, CommandPayload::new(command).encode());
        spec.priority = self.priority;
        spec.max_attempts = self.max_attempts;
        spec.resources.cpu_millis = self.cpu;
        spec.resources.mem_mb = self.mem_mb;
        spec.estimate_ms = self
            .estimate
            .map(|secs| seconds_ms("--estimate", secs, false))
            .transpose()?;
        spec.timeout_ms = self
            .timeout
            .map(|secs| seconds_ms("--timeout", secs, true))
            .transpose()?;
        spec.labels = parse_labels(&self.labels)?;
        spec.concurrency_key = self.concurrency_key;
        Ok(spec)
    }
}

#[derive(Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    task: TaskOptions,
    /// Idempotency key: resubmitting with the same key returns the original task.
    #[arg(long)]
    key: Option<String>,
    /// Run only after this task succeeded (repeatable).
    #[arg(long = "after", value_name = "ID")]
    after: Vec<u64>,
    /// Run no earlier than this long from now, e.g. `30s`, `5m`, `1h 30m` (from this machine's
    /// clock; the task waits in state `waiting` until then).
    #[arg(long, value_name = "DURATION", conflicts_with = "at")]
    delay: Option<String>,
    /// Run no earlier than this time: RFC 3339 (`2026-11-28T06:00:00Z`) or Unix seconds.
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
    /// The command to run, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

pub async fn submit(ctx: &Ctx, args: SubmitArgs) -> Result<ExitCode> {
    let mut spec = args.task.spec(args.command)?;
    spec.idempotency_key = args.key;
    spec.depends_on = args.after.into_iter().map(TaskId).collect();
    spec.not_before_ms = not_before_ms(
        args.delay.as_deref(),
        args.at.as_deref(),
        std::time::SystemTime::now(),
    )?;
    let ids = ctx.client()?.submit(vec![spec]).await?;
    let id = ids[0];
    ctx.print(serde_json::json!({ "id": id.0 }), id.to_string());
    Ok(ExitCode::SUCCESS)
}

/// `secs` seconds in ms; refused naming `what` unless finite and non-negative (positive when
/// `positive`).
pub(crate) fn seconds_ms(what: &str, secs: f64, positive: bool) -> Result<u64> {
    if !(secs.is_finite() && secs >= 0.0 && (secs > 0.0 || !positive)) {
        let kind = if positive { "positive" } else { "non-negative" };
        bail!("invalid {what} {secs}: must be a {kind} number of seconds");
    }
    Ok((secs * 1000.0) as u64)
}

/// Parses repeated `KEY=VALUE` flags.
pub fn parse_labels(raw: &[String]) -> Result<std::collections::BTreeMap<String, String>> {
    raw.iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("invalid --label {l:?}: expected KEY=VALUE"),
        })
        .collect()
}

#[derive(Args)]
pub struct IdArgs {
    /// Task id.
    id: u64,
    /// Read from the asked replica without a leader round trip (may lag).
    #[arg(long)]
    stale: bool,
}

pub async fn status(ctx: &Ctx, args: IdArgs) -> Result<ExitCode> {
    let consistency = if args.stale {
        flotilla_client::Consistency::Stale
    } else {
        flotilla_client::Consistency::Linearizable
    };
    let status = ctx.client()?.status(TaskId(args.id), consistency).await?;
    let mut json = task_json(&status.task);
    json["pending_reason"] = serde_json::json!(status.pending_reason);
    json["removed"] = serde_json::json!(status.removed);
    let mut text = task_text(&status.task);
    if let Some(why) = status.pending_reason {
        text.push_str(&format!("\n  cannot run yet: {why}"));
    }
    if status.removed {
        text.push_str("\n  removed by retention: only the outcome and key are remembered");
    }
    ctx.print(json, text);
    Ok(ExitCode::SUCCESS)
}

/// `flotilla why ID`: the task's state and why it is in it, line by line, from the replicated
/// state (the leader's reading, or the asked replica's with --stale).
pub async fn why(ctx: &Ctx, args: IdArgs) -> Result<ExitCode> {
    let consistency = if args.stale {
        flotilla_client::Consistency::Stale
    } else {
        flotilla_client::Consistency::Linearizable
    };
    let status = ctx
        .client()?
        .status_explained(TaskId(args.id), consistency, true)
        .await?;
    let t = &status.task;
    let json = serde_json::json!({
        "id": t.id.0,
        "state": t.state.as_str(),
        "removed": status.removed,
        "why": status.why.iter().map(|l| serde_json::json!({
            "at_ms": l.at_ms,
            "text": l.text,
        })).collect::<Vec<_>>(),
    });
    let mut text = format!("task {}  {}  queue={}", t.id, t.state, t.spec.queue);
    if status.removed {
        text.push_str(&format!(
            "\n  removed by retention after it {}: only the outcome and key are remembered",
            t.state
        ));
    }
    for l in &status.why {
        let when = l.at_ms.map_or_else(
            || " ".repeat(24),
            |ms| {
                humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms))
                    .to_string()
            },
        );
        text.push_str(&format!("\n  {when}  {}", l.text));
    }
    ctx.print(json, text);
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct WaitArgs {
    /// Task id.
    id: u64,
    /// Give up after this many seconds (exit 2).
    #[arg(long, default_value_t = 3600.0, value_name = "SECS")]
    timeout: f64,
}

pub async fn wait(ctx: &Ctx, args: WaitArgs) -> Result<ExitCode> {
    if !(args.timeout.is_finite() && args.timeout >= 0.0) {
        bail!(
            "invalid --timeout {}: must be a non-negative number of seconds",
            args.timeout
        );
    }
    let task = ctx
        .client()?
        .wait(TaskId(args.id), Duration::from_secs_f64(args.timeout))
        .await?;
    ctx.print(task_json(&task), task_text(&task));
    Ok(match task.state {
        TaskState::Succeeded => ExitCode::SUCCESS,
        s if s.is_terminal() => ExitCode::from(1),
        _ => {
            eprintln!(
                "timed out after {}s; task {} is {}",
                args.timeout, task.id, task.state
            );
            ExitCode::from(2)
        }
    })
}

pub async fn cancel(ctx: &Ctx, args: IdArgs) -> Result<ExitCode> {
    let previous = ctx.client()?.cancel(TaskId(args.id)).await?;
    ctx.print(
        serde_json::json!({ "id": args.id, "previous": previous.as_str() }),
        format!("task {} cancelled (was {previous})", args.id),
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct ListArgs {
    /// Only this queue.
    #[arg(long)]
    queue: Option<String>,
    /// Only this state: waiting, pending, running, succeeded, failed, cancelled.
    #[arg(long)]
    state: Option<String>,
    /// Most tasks to show.
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// Start after this task id.
    #[arg(long, value_name = "ID")]
    after: Option<u64>,
}

pub async fn list(ctx: &Ctx, args: ListArgs) -> Result<ExitCode> {
    let state = match args.state.as_deref() {
        None => None,
        Some(s) => Some(TaskState::parse(s).with_context(|| {
            format!("invalid --state {s:?}: use waiting, pending, running, succeeded, failed or cancelled")
        })?),
    };
    let client = ctx.client()?;
    let mut tasks = Vec::new();
    let mut after = args.after.map(TaskId);
    // Page through the server's limit until we have what was asked for.
    while tasks.len() < args.limit as usize {
        let want = (args.limit as usize - tasks.len()).min(1000) as u32;
        let page = client
            .list(&ListQuery {
                queue: args.queue.clone(),
                state,
                after,
                limit: want,
                ..Default::default()
            })
            .await?;
        tasks.extend(page.tasks);
        match page.next_after {
            Some(a) => after = Some(a),
            None => break,
        }
    }
    if ctx.json {
        outln!("{}", Value::Array(tasks.iter().map(task_json).collect()));
    } else if tasks.is_empty() {
        outln!("no tasks");
    } else {
        for t in &tasks {
            let cmd = CommandPayload::decode(&t.spec.payload)
                .map(|p| p.argv.join(" "))
                .unwrap_or_else(|| format!("{} bytes", t.spec.payload.len()));
            outln!(
                "{:>8}  {:<10} {:<12} {}",
                t.id,
                t.state.as_str(),
                t.spec.queue,
                cmd
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand)]
pub enum ClusterCmd {
    /// What a replica says about itself and the cluster (the first that answers, or --node).
    Status {
        /// Ask the replica at this address instead.
        #[arg(long, value_name = "HOST:PORT")]
        node: Option<String>,
    },
    /// Add a replica (started with `flotilla server --join`, its data dir empty): it joins as a
    /// learner, catches up, then votes.
    AddReplica {
        /// The new replica's id.
        id: u64,
        /// HOST:PORT it serves at.
        addr: String,
        /// Longest wait for it to catch up, in seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Remove a replica (voter or learner); it stops and exits.
    RemoveReplica {
        /// The replica's id.
        id: u64,
    },
    /// Hand leadership to a caught-up voter.
    TransferLeader {
        /// The voter that should lead.
        id: u64,
    },
}

pub async fn cluster(ctx: &Ctx, cmd: ClusterCmd) -> Result<ExitCode> {
    match cmd {
        ClusterCmd::Status { node } => {
            let client = ctx.client()?;
            let status = match node {
                Some(addr) => client.cluster_status_of(&addr).await,
                None => client.cluster_status().await,
            }
            .map_err(|e: ClientError| anyhow::anyhow!(e))?;
            ctx.print(status_json(&status), status_text(&status));
            Ok(ExitCode::SUCCESS)
        }
        ClusterCmd::AddReplica { id, addr, timeout } => {
            let added = ctx
                .client()?
                .add_replica(id, &addr, Some(Duration::from_secs(timeout)))
                .await?;
            ctx.print(
                serde_json::json!({
                    "id": id,
                    "addr": addr,
                    "incarnation": added.incarnation,
                    "catch_up_ms": added.catch_up.as_millis() as u64,
                    "membership_index": added.membership_index,
                }),
                format!(
                    "replica {id} at {addr} added as a voter (caught up in {:.1} s, data dir {})",
                    added.catch_up.as_secs_f64(),
                    added.incarnation
                ),
            );
            Ok(ExitCode::SUCCESS)
        }
        ClusterCmd::RemoveReplica { id } => {
            let index = ctx.client()?.remove_replica(id).await?;
            ctx.print(
                serde_json::json!({ "id": id, "membership_index": index }),
                format!("replica {id} removed"),
            );
            Ok(ExitCode::SUCCESS)
        }
        ClusterCmd::TransferLeader { id } => {
            let t = ctx.client()?.transfer_leader(id).await?;
            ctx.print(
                serde_json::json!({ "leader": id, "term": t.term, "transfer_ms": t.took.as_millis() as u64 }),
                format!(
                    "replica {id} leads (term {}, transfer took {} ms)",
                    t.term,
                    t.took.as_millis()
                ),
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub async fn workers(ctx: &Ctx) -> Result<ExitCode> {
    let workers = ctx.client()?.list_workers().await?;
    if ctx.json {
        let arr: Vec<Value> = workers
            .iter()
            .map(|w| {
                serde_json::json!({
                    "id": w.spec.id,
                    "slots": w.spec.capacity.slots,
                    "cpu_millis": w.spec.capacity.cpu_millis,
                    "mem_mb": w.spec.capacity.mem_mb,
                    "labels": w.spec.labels,
                    "queues": w.spec.queues,
                    "running": w.running,
                    "used_cpu_millis": w.used_cpu_millis,
                    "used_mem_mb": w.used_mem_mb,
                    "connected": w.connected,
                    "lease_age_ms": w.lease_age.map(|a| a.as_millis() as u64),
                })
            })
            .collect();
        outln!("{}", Value::Array(arr));
    } else if workers.is_empty() {
        outln!("no workers registered");
    } else {
        outln!(
            "{:<20} {:>9} {:>13} {:>13} {:>10}  queues",
            "worker",
            "slots",
            "cpu (m)",
            "mem (MB)",
            "lease age"
        );
        for w in &workers {
            let c = w.spec.capacity;
            let queues = if w.spec.queues.is_empty() {
                "*".to_string()
            } else {
                w.spec.queues.join(",")
            };
            outln!(
                "{:<20} {:>4}/{:<4} {:>6}/{:<6} {:>6}/{:<6} {:>10}  {}",
                w.spec.id,
                w.running,
                c.slots,
                w.used_cpu_millis,
                c.cpu_millis,
                w.used_mem_mb,
                c.mem_mb,
                w.lease_age
                    .map_or("-".to_string(), |a| format!("{:.1}s", a.as_secs_f64())),
                queues
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand)]
pub enum QueueCmd {
    /// Set how a queue orders its pending tasks.
    Policy {
        queue: String,
        /// fifo, priority or sjf.
        policy: String,
        /// With priority: gain one point per this many ms waited (0: no aging).
        #[arg(long, default_value_t = 0)]
        aging_ms: u64,
        /// Configure a queue no task was submitted to yet.
        #[arg(long)]
        create: bool,
    },
    /// Set how long a queue keeps finished tasks: a duration (e.g. 90s, 12h, 7d, or ms) or
    /// "default" for the cluster's --retention-ms.
    Retention {
        queue: String,
        retention: String,
        /// Configure a queue no task was submitted to yet.
        #[arg(long)]
        create: bool,
    },
    /// Limit how many tasks of a queue run at once: a number, or "none" to remove the limit.
    MaxRunning {
        queue: String,
        limit: String,
        /// Configure a queue no task was submitted to yet.
        #[arg(long)]
        create: bool,
    },
    /// Limit how many tasks of a queue sharing a concurrency key run at once: a number, or
    /// "none" to remove the limit (tasks get their key with `submit --concurrency-key`).
    MaxPerKey {
        queue: String,
        limit: String,
        /// Configure a queue no task was submitted to yet.
        #[arg(long)]
        create: bool,
    },
    /// Set a queue's share of free slots against other queues with pending tasks (default 1;
    /// a queue of weight 3 gets three times the slots of one of weight 1).
    Weight {
        queue: String,
        weight: u32,
        /// Configure a queue no task was submitted to yet.
        #[arg(long)]
        create: bool,
    },
    /// Limit how many tasks of a queue start per second (e.g. 10 or 10/s), or "none".
    Rate {
        queue: String,
        rate: String,
        /// Most starts at once after a quiet period [default: the rate, at least 1].
        #[arg(long)]
        burst: Option<u32>,
        /// Configure a queue no task was submitted to yet.
        #[arg(long)]
        create: bool,
    },
    /// List queues: policy, retention, limits, tasks by state.
    List,
}

/// `N` or "none" for `queue max-running` and `queue max-per-key` (`what`).
fn parse_limit(what: &str, s: &str) -> Result<Option<u32>> {
    match s {
        "none" => Ok(None),
        _ => match s.parse::<u32>() {
            Ok(0) => {
                bail!("invalid {what} 0: must be at least 1 (\"none\" removes the limit)")
            }
            Ok(n) => Ok(Some(n)),
            Err(_) => bail!("invalid {what} {s:?}: expected a number or \"none\""),
        },
    }
}

/// `R`, `R/s` or "none" for `queue rate`, with its burst.
fn parse_rate(s: &str, burst: Option<u32>) -> Result<Option<flotilla_client::RateLimit>> {
    if s == "none" {
        if burst.is_some() {
            bail!("invalid --burst: there is no rate to burst (\"none\" removes the limit)");
        }
        return Ok(None);
    }
    let per_sec = match s.strip_suffix("/s").unwrap_or(s).parse::<u32>() {
        Ok(0) => {
            bail!("invalid rate {s:?}: must be at least 1 task/s (\"none\" removes the limit)")
        }
        Ok(n) => n,
        Err(_) => {
            bail!("invalid rate {s:?}: expected tasks per second (e.g. 10 or 10/s) or \"none\"")
        }
    };
    let burst = match burst {
        Some(0) => bail!("invalid --burst 0: must be at least 1"),
        Some(b) => b,
        None => per_sec,
    };
    Ok(Some(flotilla_client::RateLimit { per_sec, burst }))
}

/// Parses `500ms`, `90s`, `15m`, `12h`, `7d`, or a plain number of milliseconds.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().with_context(|| {
        format!("invalid duration {s:?}: expected e.g. 500ms, 90s, 15m, 12h, 7d")
    })?;
    let ms = match unit {
        "" | "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        other => bail!("invalid duration {s:?}: unknown unit {other:?} (use ms, s, m, h or d)"),
    }
    .with_context(|| format!("invalid duration {s:?}: too large"))?;
    Ok(Duration::from_millis(ms))
}

pub async fn queue(ctx: &Ctx, cmd: QueueCmd) -> Result<ExitCode> {
    match cmd {
        QueueCmd::Policy {
            queue,
            policy,
            aging_ms,
            create,
        } => {
            let p = match policy.as_str() {
                "fifo" => flotilla_core::QueuePolicy::Fifo,
                "priority" => flotilla_core::QueuePolicy::Priority { aging_ms },
                "sjf" => flotilla_core::QueuePolicy::ShortestJobFirst,
                other => bail!("invalid policy {other:?}: use fifo, priority or sjf"),
            };
            ctx.client()?.set_queue_policy(&queue, p, create).await?;
            ctx.print(
                serde_json::json!({"queue": queue, "policy": policy}),
                format!("queue {queue}: {policy}"),
            );
            Ok(ExitCode::SUCCESS)
        }
        QueueCmd::Retention {
            queue,
            retention,
            create,
        } => {
            let r = match retention.as_str() {
                "default" => None,
                other => {
                    let d = parse_duration(other)?;
                    if d.is_zero() {
                        bail!("invalid retention {other:?}: must be at least 1 ms");
                    }
                    Some(d)
                }
            };
            ctx.client()?.set_queue_retention(&queue, r, create).await?;
            ctx.print(
                serde_json::json!({"queue": queue, "retention_ms": r.map(|d| d.as_millis() as u64)}),
                match r {
                    Some(d) => format!("queue {queue}: finished tasks kept {}", human(d)),
                    None => format!("queue {queue}: finished tasks kept for the cluster default"),
                },
            );
            Ok(ExitCode::SUCCESS)
        }
        QueueCmd::MaxRunning {
            queue,
            limit,
            create,
        } => {
            let m = parse_limit("max-running", &limit)?;
            ctx.client()?
                .set_queue_limit(&queue, flotilla_client::QueueLimit::MaxRunning(m), create)
                .await?;
            ctx.print(
                serde_json::json!({"queue": queue, "max_running": m}),
                match m {
                    Some(m) => format!("queue {queue}: at most {m} running"),
                    None => format!("queue {queue}: no limit on running tasks"),
                },
            );
            Ok(ExitCode::SUCCESS)
        }
        QueueCmd::MaxPerKey {
            queue,
            limit,
            create,
        } => {
            let m = parse_limit("max-per-key", &limit)?;
            ctx.client()?
                .set_queue_limit(&queue, flotilla_client::QueueLimit::MaxPerKey(m), create)
                .await?;
            ctx.print(
                serde_json::json!({"queue": queue, "max_per_key": m}),
                match m {
                    Some(m) => format!("queue {queue}: at most {m} running per concurrency key"),
                    None => format!("queue {queue}: no limit per concurrency key"),
                },
            );
            Ok(ExitCode::SUCCESS)
        }
        QueueCmd::Weight {
            queue,
            weight,
            create,
        } => {
            if weight == 0 {
                bail!("invalid weight 0: must be at least 1");
            }
            ctx.client()?
                .set_queue_limit(&queue, flotilla_client::QueueLimit::Weight(weight), create)
                .await?;
            ctx.print(
                serde_json::json!({"queue": queue, "weight": weight}),
                format!("queue {queue}: weight {weight}"),
            );
            Ok(ExitCode::SUCCESS)
        }
        QueueCmd::Rate {
            queue,
            rate,
            burst,
            create,
        } => {
            let r = parse_rate(&rate, burst)?;
            ctx.client()?
                .set_queue_limit(&queue, flotilla_client::QueueLimit::Rate(r), create)
                .await?;
            ctx.print(
                serde_json::json!({
                    "queue": queue,
                    "rate_per_sec": r.map(|r| r.per_sec),
                    "rate_burst": r.map(|r| r.burst),
                }),
                match r {
                    Some(r) => format!(
                        "queue {queue}: at most {}/s started (burst {})",
                        r.per_sec, r.burst
                    ),
                    None => format!("queue {queue}: no rate limit"),
                },
            );
            Ok(ExitCode::SUCCESS)
        }
        QueueCmd::List => {
            let list = ctx
                .client()?
                .list_queues(flotilla_client::Consistency::Linearizable)
                .await?;
            if ctx.json {
                let queues: Vec<Value> = list
                    .queues
                    .iter()
                    .map(|q| {
                        let mut v = serde_json::json!({
                            "name": q.name,
                            "policy": policy_name(q.policy),
                            "retention_ms": q.retention.map(|d| d.as_millis() as u64),
                            "oldest_pending_ms": q.oldest_pending_ms,
                            "max_running": q.flow.max_running,
                            "weight": q.flow.weight,
                            "rate_per_sec": q.flow.rate.map(|r| r.per_sec),
                            "rate_burst": q.flow.rate.map(|r| r.burst),
                            "max_per_key": q.flow.max_per_key,
                        });
                        for st in TaskState::ALL {
                            v[st.as_str()] = serde_json::json!(q.count(st));
                        }
                        v
                    })
                    .collect();
                outln!(
                    "{}",
                    serde_json::json!({
                        "queues": queues,
                        "retention_ms": list.retention.as_millis() as u64,
                        "key_retention_ms": list.key_retention.as_millis() as u64,
                    })
                );
            } else {
                outln!(
                    "finished tasks kept {} by default, idempotency keys {}",
                    human(list.retention),
                    human(list.key_retention)
                );
                outln!(
                    "{:<20} {:<10} {:>10} {:<22} {:>8} {:>8} {:>8} {:>10} {:>8} {:>9}",
                    "queue",
                    "policy",
                    "retention",
                    "limits",
                    "waiting",
                    "pending",
                    "running",
                    "succeeded",
                    "failed",
                    "cancelled"
                );
                for q in &list.queues {
                    outln!(
                        "{:<20} {:<10} {:>10} {:<22} {:>8} {:>8} {:>8} {:>10} {:>8} {:>9}",
                        q.name,
                        policy_name(q.policy),
                        q.retention.map_or("default".to_string(), human),
                        q.flow.to_string(),
                        q.count(TaskState::Waiting),
                        q.count(TaskState::Pending),
                        q.count(TaskState::Running),
                        q.count(TaskState::Succeeded),
                        q.count(TaskState::Failed),
                        q.count(TaskState::Cancelled),
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn policy_name(p: flotilla_core::QueuePolicy) -> String {
    match p {
        flotilla_core::QueuePolicy::Fifo => "fifo".into(),
        flotilla_core::QueuePolicy::Priority { aging_ms: 0 } => "priority".into(),
        flotilla_core::QueuePolicy::Priority { aging_ms } => format!("priority/{aging_ms}ms"),
        flotilla_core::QueuePolicy::ShortestJobFirst => "sjf".into(),
    }
}

/// A duration as the largest whole unit that fits it exactly.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    for (unit, n) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms >= n && ms.is_multiple_of(n) {
            return format!("{}{unit}", ms / n);
        }
    }
    format!("{ms}ms")
}

/// The wall-clock time (Unix ms) a task submitted at `now` with `--delay` or `--at` may start
/// from; `None` without either.
pub(crate) fn not_before_ms(
    delay: Option<&str>,
    at: Option<&str>,
    now: std::time::SystemTime,
) -> Result<Option<u64>> {
    let when = match (delay, at) {
        (None, None) => return Ok(None),
        (Some(d), _) => {
            let d = humantime::parse_duration(d)
                .map_err(|e| anyhow::anyhow!("invalid --delay {d:?}: {e} (e.g. 30s, 5m, 1h)"))?;
            now.checked_add(d)
                .ok_or_else(|| anyhow::anyhow!("invalid --delay {d:?}: too long"))?
        }
        (None, Some(t)) => match t.parse::<u64>() {
            Ok(secs) => std::time::UNIX_EPOCH
                .checked_add(Duration::from_secs(secs))
                .ok_or_else(|| anyhow::anyhow!("invalid --at {t:?}: too far away"))?,
            Err(_) => humantime::parse_rfc3339_weak(t).map_err(|e| {
                anyhow::anyhow!(
                    "invalid --at {t:?}: {e} (RFC 3339, e.g. 2026-11-28T06:00:00Z, or Unix seconds)"
                )
            })?,
        },
    };
    let ms = when
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| anyhow::anyhow!("invalid --at: before 1970"))?
        .as_millis();
    let flag = if delay.is_some() { "--delay" } else { "--at" };
    Ok(Some(u64::try_from(ms).map_err(|_| {
        anyhow::anyhow!("invalid {flag}: too far away")
    })?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_and_at_become_the_time_a_task_may_start() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(not_before_ms(None, None, now).unwrap(), None);
        assert_eq!(
            not_before_ms(Some("30s"), None, now).unwrap(),
            Some(1_030_000)
        );
        assert_eq!(
            not_before_ms(Some("1h 30m 250ms"), None, now).unwrap(),
            Some(1_000_000 + 5_400_250)
        );
        assert_eq!(
            not_before_ms(None, Some("1764309600"), now).unwrap(),
            Some(1_764_309_600_000)
        );
        assert_eq!(
            not_before_ms(None, Some("2025-11-28T06:00:00Z"), now).unwrap(),
            Some(1_764_309_600_000)
        );
        for (delay, at, field) in [
            (Some("soon"), None, "invalid --delay \"soon\""),
            (Some("30"), None, "invalid --delay \"30\""),
            (Some("99999999999999999999s"), None, "invalid --delay"),
            (Some("600000000y"), None, "invalid --delay: too far away"),
            (None, Some("tomorrow"), "invalid --at \"tomorrow\""),
            (None, Some("18446744073709551615"), "invalid --at"),
        ] {
            let err = not_before_ms(delay, at, now).unwrap_err().to_string();
            assert!(err.starts_with(field), "{delay:?} {at:?}: {err}");
        }
    }

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(parse_duration("250").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("1w")
            .unwrap_err()
            .to_string()
            .contains("unknown unit"));
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        assert_eq!(human(Duration::from_secs(7 * 86_400)), "7d");
        assert_eq!(human(Duration::from_millis(1500)), "1500ms");
    }
}
