//! The policy simulator: replays a workload (a trace of [`TraceTask`]s) through the real
//! [`State::apply`] and [`plan`] on simulated time, and reports per queue policy the waiting
//! times, turnaround, makespan and utilisation ([`Report`]).
//!
//! Nothing of the scheduler is modelled: the simulator proposes the commands a leader would —
//! `SetQueue` (the policy, on every queue of the trace), `RegisterWorker` (N workers of S
//! slots), a `Submit` per arrival, the `Assign`s `plan` returns, a `Complete` when an
//! attempt's `run_ms` has passed — with the simulated time stamped into each, and applies
//! them to a `State` of its own. A rejected command is a simulator bug and ends the run with
//! [`SimError::Rejected`]. Workers never fail, and nothing but the trace arrives.
//!
//! ```text
//!  t = the earliest arrival: SetQueue per queue, RegisterWorker ×N
//!  loop, t = the next arrival or completion (none left: done):
//!     completions due at t ─▶ Complete      (frees slots, makes children pending)
//!     arrivals due at t    ─▶ Submit        (one per task, parents first)
//!     plan(&state, t)      ─▶ Assign …      (planned again until it assigns nothing)
//!     sample (waiting, pending, running) for the chart
//! ```
//!
//! Definitions (every time in ms, on the trace's clock):
//! - ready = max(arrival, the latest finish among the task's parents): when it could start;
//! - waiting = start − ready (for a task without parents: start − arrival);
//! - turnaround = finish − arrival;
//! - makespan = the last finish − the earliest arrival;
//! - utilisation = busy slot-ms (the sum of `run_ms`) / (workers × slots × makespan), 0 when
//!   the makespan is 0;
//! - p50 and p99 are nearest-rank percentiles: the smallest waiting time that at least 50 %
//!   (99 %) of the tasks do not exceed.
//!
//! Like the rest of the crate it does no I/O and reads no clock: the same trace and
//! configuration give the same report, byte for byte.

mod trace;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

pub use trace::{
    parse_csv, to_csv, trace_from_tasks, validate_trace, ExportedTrace, Trace, TraceTask,
    CSV_COLUMNS, DEFAULT_QUEUE, MAX_NAME_LEN, MAX_TRACE_TASKS,
};

use crate::{
    plan, Capacity, Command, CommandError, Limits, PlanConfig, QueuePolicy, QueueSetting, Response,
    State, TaskId, TaskState, WorkerSpec,
};

/// Most workers in one simulation.
pub const MAX_WORKERS: usize = 10_000;

/// Most points of a report's time series; a run with more changes keeps per time bucket the
/// largest value of each count.
pub const MAX_SERIES_POINTS: usize = 1_000;

/// Why a simulation did not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// The trace or the configuration is malformed; `field` names the offending field (e.g.
    /// `tasks[3].depends_on`, `slots`).
    #[error("invalid {field}: {message}")]
    Invalid { field: String, message: String },
    /// `apply` refused a command the simulator made: a bug in the simulator.
    #[error("simulator bug: {command} was rejected: {error}")]
    Rejected {
        command: String,
        error: CommandError,
    },
    /// Another broken expectation of the simulator.
    #[error("simulator bug: {0}")]
    Bug(String),
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> SimError {
    SimError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// A queue policy as the simulator names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// [`QueuePolicy::Fifo`]: submission order.
    Fifo,
    /// [`QueuePolicy::Priority`]: higher priority first (with [`SimConfig::aging_ms`]).
    Priority,
    /// [`QueuePolicy::ShortestJobFirst`]: shortest estimate first.
    Sjf,
}

impl Policy {
    pub const ALL: [Policy; 3] = [Policy::Fifo, Policy::Priority, Policy::Sjf];

    /// The name the CLI uses (`fifo`, `priority`, `sjf`).
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Fifo => "fifo",
            Policy::Priority => "priority",
            Policy::Sjf => "sjf",
        }
    }

    pub fn parse(s: &str) -> Result<Policy, SimError> {
        Policy::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                invalid(
                    "policy",
                    format!("unknown policy {s:?} (use fifo, priority or sjf)"),
                )
            })
    }

    /// A comma-separated list (`fifo,sjf`), each policy at most once.
    pub fn parse_list(s: &str) -> Result<Vec<Policy>, SimError> {
        let mut out = Vec::new();
        for name in s.split(',').map(str::trim) {
            if name.is_empty() {
                return Err(invalid("policy", format!("empty name in {s:?}")));
            }
            let p = Policy::parse(name)?;
            if out.contains(&p) {
                return Err(invalid("policy", format!("{name:?} is listed twice")));
            }
            out.push(p);
        }
        Ok(out)
    }

    /// The replicated queue policy it stands for.
    pub fn queue_policy(self, aging_ms: u64) -> QueuePolicy {
        match self {
            Policy::Fifo => QueuePolicy::Fifo,
            Policy::Priority => QueuePolicy::Priority { aging_ms },
            Policy::Sjf => QueuePolicy::ShortestJobFirst,
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The simulated cluster: identical workers serving every queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// Number of workers (1..=[`MAX_WORKERS`]).
    pub workers: usize,
    /// Task slots per worker (1..=`Limits::MAX_WORKER_SLOTS`).
    pub slots: u32,
    /// CPU of each worker, in thousandths of a core.
    pub worker_cpu_millis: u32,
    /// Memory of each worker, in MiB.
    pub worker_mem_mb: u32,
    /// Under `priority`: a task gains one point per this many ms waited (0: no aging).
    pub aging_ms: u64,
}

impl SimConfig {
    /// A worker's CPU per slot unless given: one core.
    pub const CPU_MILLIS_PER_SLOT: u32 = 1000;
    /// A worker's memory per slot unless given: 1 GiB.
    pub const MEM_MB_PER_SLOT: u32 = 1024;

    /// `workers` workers of `slots` slots, each with a core and a GiB per slot, no aging.
    pub fn new(workers: usize, slots: u32) -> SimConfig {
        SimConfig {
            workers,
            slots,
            worker_cpu_millis: slots.saturating_mul(Self::CPU_MILLIS_PER_SLOT),
            worker_mem_mb: slots.saturating_mul(Self::MEM_MB_PER_SLOT),
            aging_ms: 0,
        }
    }

    /// The first problem of the configuration, naming the field.
    pub fn validate(&self) -> Result<(), SimError> {
        if !(1..=MAX_WORKERS).contains(&self.workers) {
            return Err(invalid(
                "workers",
                format!("{} out of range 1..={MAX_WORKERS}", self.workers),
            ));
        }
        if !(1..=Limits::MAX_WORKER_SLOTS).contains(&self.slots) {
            return Err(invalid(
                "slots",
                format!(
                    "{} out of range 1..={}",
                    self.slots,
                    Limits::MAX_WORKER_SLOTS
                ),
            ));
        }
        if self.aging_ms > Limits::MAX_AGING_MS {
            return Err(invalid(
                "aging_ms",
                format!("{} exceeds limit {}", self.aging_ms, Limits::MAX_AGING_MS),
            ));
        }
        Ok(())
    }
}

/// What happened to one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskOutcome {
    pub name: String,
    pub arrival_ms: u64,
    /// When it could start: its arrival or its last parent's finish, whichever is later.
    pub ready_ms: u64,
    pub start_ms: u64,
    pub finish_ms: u64,
    /// start − ready.
    pub wait_ms: u64,
    /// The worker that ran it.
    pub worker: String,
}

/// The counts of tasks at one time, after everything due then was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesPoint {
    pub t_ms: u64,
    /// Submitted, waiting for parents.
    pub waiting: u64,
    /// Ready, not yet started: the queue depth.
    pub pending: u64,
    pub running: u64,
}

/// The result of one simulation (see the module doc for the definitions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub policy: Policy,
    pub config: SimConfig,
    pub tasks: usize,
    /// The earliest arrival: where the makespan and the chart start.
    pub start_ms: u64,
    pub wait_ms_mean: f64,
    pub wait_ms_p50: u64,
    pub wait_ms_p99: u64,
    pub wait_ms_max: u64,
    pub turnaround_ms_mean: f64,
    pub makespan_ms: u64,
    /// The sum of the tasks' run times.
    pub busy_slot_ms: u64,
    /// busy slot-ms / (workers × slots × makespan), in 0..=1.
    pub utilisation: f64,
    /// Per task, in trace order.
    pub outcomes: Vec<TaskOutcome>,
    /// Waiting, pending and running tasks over time, at most [`MAX_SERIES_POINTS`] points.
    pub series: Vec<SeriesPoint>,
}

/// Replays `trace` under `policy` on the cluster `config` describes.
///
/// Errors: [`SimError::Invalid`] for a malformed trace or configuration, or a task that
/// needs more CPU or memory than a worker has (it could never run); the other variants are
/// simulator bugs.
pub fn simulate(
    trace: &[TraceTask],
    policy: Policy,
    config: &SimConfig,
) -> Result<Report, SimError> {
    config.validate()?;
    let checked = trace::check(trace)?;
    for (i, t) in trace.iter().enumerate() {
        if t.cpu_millis > config.worker_cpu_millis {
            return Err(invalid(
                format!("tasks[{i}].cpu_millis"),
                format!(
                    "{} exceeds a worker's {} (worker_cpu_millis): the task could never run",
                    t.cpu_millis, config.worker_cpu_millis
                ),
            ));
        }
        if t.mem_mb > config.worker_mem_mb {
            return Err(invalid(
                format!("tasks[{i}].mem_mb"),
                format!(
                    "{} exceeds a worker's {} (worker_mem_mb): the task could never run",
                    t.mem_mb, config.worker_mem_mb
                ),
            ));
        }
    }

    let start_ms = trace[checked.order[0]].arrival_ms;
    let mut run = Run::new(trace);
    run.set_up(start_ms, policy, config, &checked.queues)?;
    let mut arrivals = checked.order.iter().copied().peekable();
    loop {
        let next_arrival = arrivals.peek().map(|&i| trace[i].arrival_ms);
        let next_completion = run.running.first().map(|&(end, _)| end);
        let Some(now) = next_arrival.into_iter().chain(next_completion).min() else {
            break;
        };
        run.complete_due(now)?;
        while let Some(&i) = arrivals.peek() {
            if trace[i].arrival_ms > now {
                break;
            }
            arrivals.next();
            run.submit(now, i, &checked.parents[i])?;
        }
        run.plan_all(now)?;
        run.sample(now);
    }
    run.report(policy, config, start_ms, &checked.parents)
}

/// One simulation in progress.
struct Run<'a> {
    trace: &'a [TraceTask],
    state: State,
    /// Every registered worker: simulated workers never lose their connection.
    live: BTreeSet<String>,
    /// Per trace task: its id once submitted, start, finish and worker.
    ids: Vec<Option<TaskId>>,
    start: Vec<Option<u64>>,
    finish: Vec<Option<u64>>,
    worker: Vec<String>,
    /// Task id -> trace index.
    index_of: BTreeMap<TaskId, usize>,
    /// Running attempts by the time they finish.
    running: BTreeSet<(u64, TaskId)>,
    series: Vec<SeriesPoint>,
}

impl<'a> Run<'a> {
    fn new(trace: &'a [TraceTask]) -> Run<'a> {
        let n = trace.len();
        Run {
            trace,
            state: State::new(),
            live: BTreeSet::new(),
            ids: vec![None; n],
            start: vec![None; n],
            finish: vec![None; n],
            worker: vec![String::new(); n],
            index_of: BTreeMap::new(),
            running: BTreeSet::new(),
            series: Vec::new(),
        }
    }

    /// Applies a command the simulator made; a rejection is a simulator bug.
    fn apply(&mut self, command: Command) -> Result<Response, SimError> {
        match self.state.apply(&command) {
            Response::Rejected(error) => Err(SimError::Rejected {
                command: describe(&command),
                error,
            }),
            r => Ok(r),
        }
    }

    /// The policy on every queue of the trace, and the workers.
    fn set_up(
        &mut self,
        now: u64,
        policy: Policy,
        config: &SimConfig,
        queues: &BTreeSet<String>,
    ) -> Result<(), SimError> {
        for queue in queues {
            let command = Command::SetQueue {
                now_ms: now,
                queue: queue.clone(),
                setting: QueueSetting::Policy(policy.queue_policy(config.aging_ms)),
                create: true,
            };
            expect(&command, self.apply(command.clone())?, |r| {
                matches!(r, Response::QueueSet)
            })?;
        }
        // Zero-padded ids sort in number order (binpack breaks ties by the smallest id).
        let width = config.workers.to_string().len();
        for w in 1..=config.workers {
            let id = format!("w{w:0width$}");
            let command = Command::RegisterWorker {
                now_ms: now,
                worker: WorkerSpec {
                    id: id.clone(),
                    session: "simulated".into(),
                    capacity: Capacity {
                        slots: config.slots,
                        cpu_millis: config.worker_cpu_millis,
                        mem_mb: config.worker_mem_mb,
                    },
                    labels: BTreeMap::new(),
                    queues: Vec::new(),
                },
            };
            expect(&command, self.apply(command.clone())?, |r| {
                matches!(r, Response::WorkerRegistered { resumed: false, .. })
            })?;
            self.live.insert(id);
        }
        Ok(())
    }

    /// Completes every attempt whose run time has passed by `now`.
    fn complete_due(&mut self, now: u64) -> Result<(), SimError> {
        while let Some(&(end, id)) = self.running.first() {
            if end > now {
                break;
            }
            self.running.pop_first();
            let (attempt, worker) = self
                .state
                .running_attempt(id)
                .map(|(a, w)| (a, w.to_string()))
                .ok_or_else(|| SimError::Bug(format!("task {id} is not running when due")))?;
            let command = Command::Complete {
                now_ms: end,
                task_id: id,
                worker_id: worker,
                attempt,
                result: Vec::new(),
            };
            expect(&command, self.apply(command.clone())?, |r| {
                *r == Response::Completed { task_id: id }
            })?;
            self.finish[self.index_of[&id]] = Some(end);
        }
        Ok(())
    }

    /// Submits trace task `i`, whose parents (all submitted before it) are `parents`.
    fn submit(&mut self, now: u64, i: usize, parents: &[usize]) -> Result<(), SimError> {
        let depends_on = parents
            .iter()
            .map(|&p| {
                self.ids[p].ok_or_else(|| {
                    SimError::Bug(format!("parent tasks[{p}] of tasks[{i}] not submitted"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let command = Command::submit(now, vec![self.trace[i].spec(depends_on)]);
        match self.apply(command.clone())? {
            Response::Submitted { ids, created } if ids.len() == 1 && created == [true] => {
                self.ids[i] = Some(ids[0]);
                self.index_of.insert(ids[0], i);
                Ok(())
            }
            other => Err(unexpected(&command, &other)),
        }
    }

    /// Applies what `plan` returns at `now` until it returns nothing: every slot that can be
    /// filled is.
    fn plan_all(&mut self, now: u64) -> Result<(), SimError> {
        loop {
            let commands = plan(&self.state, now, &self.live, &PlanConfig::default());
            if commands.is_empty() {
                return Ok(());
            }
            for command in commands {
                let Command::Assign {
                    task_id,
                    ref worker_id,
                    attempt,
                    ..
                } = command
                else {
                    return Err(SimError::Bug(format!(
                        "plan returned {}, which a simulation without timeouts never needs",
                        describe(&command)
                    )));
                };
                let worker = worker_id.clone();
                expect(&command, self.apply(command.clone())?, |r| {
                    *r == Response::Assigned { task_id, attempt }
                })?;
                let i = *self.index_of.get(&task_id).ok_or_else(|| {
                    SimError::Bug(format!("plan assigned task {task_id}, not of the trace"))
                })?;
                // Within the horizon `trace::check` bounds.
                let end = now.checked_add(self.trace[i].run_ms).ok_or_else(|| {
                    SimError::Bug(format!("tasks[{i}] would finish past 2^64 ms"))
                })?;
                self.start[i] = Some(now);
                self.worker[i] = worker;
                self.running.insert((end, task_id));
            }
        }
    }

    /// Notes the counts at `now` when they changed.
    fn sample(&mut self, now: u64) {
        let point = SeriesPoint {
            t_ms: now,
            waiting: self.state.count(TaskState::Waiting),
            pending: self.state.count(TaskState::Pending),
            running: self.state.count(TaskState::Running),
        };
        let same = |a: &SeriesPoint| {
            (a.waiting, a.pending, a.running) == (point.waiting, point.pending, point.running)
        };
        match self.series.last_mut() {
            Some(last) if last.t_ms == now => *last = point,
            Some(last) if same(last) => {}
            _ => self.series.push(point),
        }
    }

    fn report(
        self,
        policy: Policy,
        config: &SimConfig,
        start_ms: u64,
        parents: &[Vec<usize>],
    ) -> Result<Report, SimError> {
        let n = self.trace.len();
        let mut outcomes = Vec::with_capacity(n);
        for (i, t) in self.trace.iter().enumerate() {
            let (Some(start), Some(finish)) = (self.start[i], self.finish[i]) else {
                let state = self.ids[i]
                    .and_then(|id| self.state.get(id))
                    .map_or("not submitted".to_string(), |t| t.state.to_string());
                return Err(SimError::Bug(format!(
                    "tasks[{i}] ({:?}) never finished: it is {state}",
                    t.name
                )));
            };
            let ready = parents[i]
                .iter()
                .filter_map(|&p| self.finish[p])
                .fold(t.arrival_ms, u64::max);
            let wait_ms = start.checked_sub(ready).ok_or_else(|| {
                SimError::Bug(format!(
                    "tasks[{i}] started at {start} ms, before it was ready at {ready} ms"
                ))
            })?;
            outcomes.push(TaskOutcome {
                name: t.name.clone(),
                arrival_ms: t.arrival_ms,
                ready_ms: ready,
                start_ms: start,
                finish_ms: finish,
                wait_ms,
                worker: self.worker[i].clone(),
            });
        }
        let mut waits: Vec<u64> = outcomes.iter().map(|o| o.wait_ms).collect();
        waits.sort_unstable();
        let mean = |sum: u128| sum as f64 / n as f64;
        let end_ms = outcomes
            .iter()
            .map(|o| o.finish_ms)
            .max()
            .unwrap_or(start_ms);
        let makespan_ms = end_ms - start_ms;
        let busy_slot_ms: u64 = self.trace.iter().map(|t| t.run_ms).sum();
        let capacity = config.workers as f64 * f64::from(config.slots) * makespan_ms as f64;
        Ok(Report {
            policy,
            config: config.clone(),
            tasks: n,
            start_ms,
            wait_ms_mean: mean(waits.iter().map(|&w| u128::from(w)).sum()),
            wait_ms_p50: percentile(&waits, 50),
            wait_ms_p99: percentile(&waits, 99),
            wait_ms_max: waits.last().copied().unwrap_or(0),
            turnaround_ms_mean: mean(
                outcomes
                    .iter()
                    .map(|o| u128::from(o.finish_ms - o.arrival_ms))
                    .sum(),
            ),
            makespan_ms,
            busy_slot_ms,
            utilisation: if makespan_ms == 0 {
                0.0
            } else {
                busy_slot_ms as f64 / capacity
            },
            outcomes,
            series: downsample(self.series, MAX_SERIES_POINTS),
        })
    }
}

/// Checks a response against what the command must get.
fn expect(
    command: &Command,
    response: Response,
    ok: impl FnOnce(&Response) -> bool,
) -> Result<(), SimError> {
    if ok(&response) {
        Ok(())
    } else {
        Err(unexpected(command, &response))
    }
}

fn unexpected(command: &Command, response: &Response) -> SimError {
    SimError::Bug(format!(
        "{} got the unexpected response {response:?}",
        describe(command)
    ))
}

/// A command in a few words, for errors.
fn describe(command: &Command) -> String {
    match command {
        Command::Submit { now_ms, tasks, .. } => {
            format!("Submit of {} task(s) at {now_ms} ms", tasks.len())
        }
        Command::Assign {
            now_ms,
            task_id,
            worker_id,
            attempt,
        } => format!("Assign of task {task_id} attempt {attempt} to {worker_id} at {now_ms} ms"),
        Command::Complete {
            now_ms,
            task_id,
            worker_id,
            attempt,
            ..
        } => format!("Complete of task {task_id} attempt {attempt} on {worker_id} at {now_ms} ms"),
        Command::RegisterWorker { worker, .. } => format!("RegisterWorker of {}", worker.id),
        Command::SetQueue { queue, setting, .. } => format!("SetQueue {queue:?} {setting:?}"),
        other => format!("{other:?}"),
    }
}

/// The nearest-rank percentile `p` (1..=100) of ascending `sorted`: the smallest value that
/// at least p % of the values do not exceed; 0 for no values.
fn percentile(sorted: &[u64], p: u64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (sorted.len() as u64 * p).div_ceil(100).max(1);
    sorted[rank as usize - 1]
}

/// At most `max` points: when there are more, time is cut into `max` equal buckets and each
/// bucket keeps, at its start, the largest value of each count within it.
fn downsample(points: Vec<SeriesPoint>, max: usize) -> Vec<SeriesPoint> {
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return points;
    };
    if points.len() <= max || max == 0 {
        return points;
    }
    let origin = first.t_ms;
    // (last - origin) / width < max, so there are at most `max` buckets.
    let width = (last.t_ms - origin) / max as u64 + 1;
    let mut out: Vec<SeriesPoint> = Vec::with_capacity(max);
    let mut bucket = None;
    for p in points {
        let b = (p.t_ms - origin) / width;
        match out.last_mut() {
            Some(q) if bucket == Some(b) => {
                q.waiting = q.waiting.max(p.waiting);
                q.pending = q.pending.max(p.pending);
                q.running = q.running.max(p.running);
            }
            _ => {
                bucket = Some(b);
                out.push(SeriesPoint {
                    t_ms: origin + b * width,
                    ..p
                });
            }
        }
    }
    out
}
