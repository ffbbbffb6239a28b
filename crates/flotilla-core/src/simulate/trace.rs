//! Traces: the workload a simulation replays — what each task's client said (arrival,
//! estimate, priority, resources, parents, queue) and how long it really ran — their checks,
//! the CSV form, and a trace made from a cluster's finished tasks.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::SimError;
use crate::{validate_spec, CommandError, Limits, Resources, Task, TaskId, TaskSpec, TaskState};

/// The queue of a task that names none (the CLI's default queue).
pub const DEFAULT_QUEUE: &str = "default";

/// Most tasks in one trace.
pub const MAX_TRACE_TASKS: usize = 100_000;

/// Longest task name, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// The columns of the CSV form, in the order [`to_csv`] writes them.
pub const CSV_COLUMNS: [&str; 9] = [
    "name",
    "arrival_ms",
    "estimate_ms",
    "run_ms",
    "priority",
    "cpu_millis",
    "mem_mb",
    "depends_on",
    "queue",
];

/// One task of a workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceTask {
    /// Unique within the trace; what other tasks' `depends_on` names.
    pub name: String,
    /// When the task is submitted (ms, any origin: reports count from the earliest arrival).
    #[serde(default)]
    pub arrival_ms: u64,
    /// The run time the scheduler is told, which `sjf` orders by; `None`: unknown (`sjf`
    /// runs such tasks last).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate_ms: Option<u64>,
    /// How long the task really runs once started (0 is allowed).
    pub run_ms: u64,
    /// Higher runs first under the `priority` policy (-1000..=1000).
    #[serde(default)]
    pub priority: i32,
    /// CPU the task needs, in thousandths of a core.
    #[serde(default)]
    pub cpu_millis: u32,
    /// Memory the task needs, in MiB.
    #[serde(default)]
    pub mem_mb: u32,
    /// Names of tasks that must finish before this one starts; each must arrive no later
    /// than this task (as in a cluster, where a parent must exist when its child is
    /// submitted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// The task's queue; `None`: [`DEFAULT_QUEUE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
}

impl TraceTask {
    /// A task arriving at `arrival_ms` that runs for `run_ms`, with defaults for the rest.
    pub fn new(name: impl Into<String>, arrival_ms: u64, run_ms: u64) -> TraceTask {
        TraceTask {
            name: name.into(),
            arrival_ms,
            estimate_ms: None,
            run_ms,
            priority: 0,
            cpu_millis: 0,
            mem_mb: 0,
            depends_on: Vec::new(),
            queue: None,
        }
    }

    /// The queue the task is submitted to.
    pub fn queue(&self) -> &str {
        self.queue.as_deref().unwrap_or(DEFAULT_QUEUE)
    }

    /// What the simulator submits for this task, its parents being `depends_on`.
    pub(super) fn spec(&self, depends_on: Vec<TaskId>) -> TaskSpec {
        let mut spec = TaskSpec::new(self.queue(), Vec::new());
        spec.priority = self.priority;
        spec.estimate_ms = self.estimate_ms;
        spec.resources = Resources {
            cpu_millis: self.cpu_millis,
            mem_mb: self.mem_mb,
        };
        spec.depends_on = depends_on;
        // A simulated attempt never fails: one attempt is all it needs.
        spec.max_attempts = 1;
        spec
    }
}

/// A trace as a JSON document holds it: `{"tasks": [...]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trace {
    pub tasks: Vec<TraceTask>,
}

/// A checked trace, ready to replay.
#[derive(Debug, Clone)]
pub(super) struct Checked {
    /// Parents of each task as trace indexes, ascending, without repeats.
    pub parents: Vec<Vec<usize>>,
    /// The order of submission: by arrival, parents before children among equal arrivals
    /// (then trace order).
    pub order: Vec<usize>,
    /// Every queue the trace uses.
    pub queues: BTreeSet<String>,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> SimError {
    SimError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Checks a trace on its own (the fit of tasks on workers is checked by
/// [`super::simulate`]): at least one and at most [`MAX_TRACE_TASKS`] tasks, names unique and
/// non-empty, the fields within the limits a submit has, every parent known, no cycle, no
/// parent arriving after its child, and times that fit in a `u64`. The first problem is
/// returned, naming the field (`tasks[3].depends_on`).
pub fn validate_trace(tasks: &[TraceTask]) -> Result<(), SimError> {
    check(tasks).map(|_| ())
}

pub(super) fn check(tasks: &[TraceTask]) -> Result<Checked, SimError> {
    if tasks.is_empty() {
        return Err(invalid("tasks", "the trace holds no task"));
    }
    if tasks.len() > MAX_TRACE_TASKS {
        return Err(invalid(
            "tasks",
            format!(
                "{} tasks exceed limit {MAX_TRACE_TASKS} (max_trace_tasks)",
                tasks.len()
            ),
        ));
    }
    let field = |i: usize, name: &str| format!("tasks[{i}].{name}");
    let mut by_name: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, t) in tasks.iter().enumerate() {
        if t.name.is_empty() {
            return Err(invalid(field(i, "name"), "must not be empty"));
        }
        if t.name.len() > MAX_NAME_LEN {
            return Err(invalid(
                field(i, "name"),
                format!("{} bytes exceeds limit {MAX_NAME_LEN}", t.name.len()),
            ));
        }
        if let Some(j) = by_name.insert(&t.name, i) {
            return Err(invalid(
                field(i, "name"),
                format!("duplicate name {:?} (also tasks[{j}])", t.name),
            ));
        }
        if t.depends_on.len() > Limits::MAX_DEPENDENCIES {
            return Err(invalid(
                field(i, "depends_on"),
                format!(
                    "{} dependencies exceed limit {}",
                    t.depends_on.len(),
                    Limits::MAX_DEPENDENCIES
                ),
            ));
        }
        // The limits of a real submit (queue name, priority range, resources), with the
        // trace's field names.
        if let Err(e) = validate_spec(&format!("tasks[{i}]"), &t.spec(Vec::new())) {
            return Err(match e {
                CommandError::Invalid { field, message } => SimError::Invalid {
                    field: field.replace(".resources.", "."),
                    message,
                },
                other => invalid(format!("tasks[{i}]"), other.to_string()),
            });
        }
    }

    let mut parents: Vec<Vec<usize>> = Vec::with_capacity(tasks.len());
    for (i, t) in tasks.iter().enumerate() {
        let mut ps = BTreeSet::new();
        for d in &t.depends_on {
            let Some(&p) = by_name.get(d.as_str()) else {
                return Err(invalid(
                    field(i, "depends_on"),
                    format!("unknown task {d:?}"),
                ));
            };
            if p == i {
                return Err(invalid(
                    field(i, "depends_on"),
                    format!("task {d:?} depends on itself"),
                ));
            }
            ps.insert(p);
        }
        parents.push(ps.into_iter().collect());
    }

    let topo = topological_positions(tasks, &parents)?;

    for (i, ps) in parents.iter().enumerate() {
        for &p in ps {
            if tasks[p].arrival_ms > tasks[i].arrival_ms {
                return Err(invalid(
                    field(i, "depends_on"),
                    format!(
                        "task {:?} arrives at {} ms, after this task ({} ms): a task may depend only on tasks submitted no later than itself",
                        tasks[p].name, tasks[p].arrival_ms, tasks[i].arrival_ms
                    ),
                ));
            }
        }
    }

    // Every time the simulation reaches is at most the last arrival plus all the work (after
    // the last arrival some task runs until all are done: every task fits an idle worker).
    let last_arrival = tasks.iter().map(|t| t.arrival_ms).max().unwrap_or(0);
    let mut horizon = last_arrival;
    for (i, t) in tasks.iter().enumerate() {
        horizon = horizon.checked_add(t.run_ms).ok_or_else(|| {
            invalid(
                field(i, "run_ms"),
                "the trace's arrivals and run times add up past 2^64 ms",
            )
        })?;
    }

    let mut order: Vec<usize> = (0..tasks.len()).collect();
    order.sort_by_key(|&i| (tasks[i].arrival_ms, topo[i]));
    let queues = tasks.iter().map(|t| t.queue().to_string()).collect();
    Ok(Checked {
        parents,
        order,
        queues,
    })
}

/// Each task's position in a topological order (parents first, otherwise trace order), or
/// the error naming a cycle.
fn topological_positions(
    tasks: &[TraceTask],
    parents: &[Vec<usize>],
) -> Result<Vec<usize>, SimError> {
    const UNPLACED: usize = usize::MAX;
    let n = tasks.len();
    let mut missing: Vec<usize> = parents.iter().map(Vec::len).collect();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (c, ps) in parents.iter().enumerate() {
        for &p in ps {
            children[p].push(c);
        }
    }
    let mut ready: BTreeSet<usize> = (0..n).filter(|&i| missing[i] == 0).collect();
    let mut position = vec![UNPLACED; n];
    let mut next = 0;
    while let Some(i) = ready.pop_first() {
        position[i] = next;
        next += 1;
        for &c in &children[i] {
            missing[c] -= 1;
            if missing[c] == 0 {
                ready.insert(c);
            }
        }
    }
    if next == n {
        return Ok(position);
    }
    // Every task left over has a parent left over, so walking parents from one of them must
    // come back to a task already seen: that loop is a cycle.
    let start = (0..n)
        .find(|&i| position[i] == UNPLACED)
        .expect("a task is left over");
    let mut path = vec![start];
    let mut seen = BTreeMap::from([(start, 0usize)]);
    let cycle = loop {
        let v = *path.last().expect("the path starts with one task");
        let p = parents[v]
            .iter()
            .copied()
            .find(|&p| position[p] == UNPLACED)
            .expect("a task left over has a parent left over");
        if let Some(&at) = seen.get(&p) {
            let mut cycle = path[at..].to_vec();
            cycle.push(p);
            break cycle;
        }
        seen.insert(p, path.len());
        path.push(p);
    };
    let names: Vec<String> = cycle
        .iter()
        .map(|&i| format!("{:?}", tasks[i].name))
        .collect();
    Err(invalid(
        format!("tasks[{}].depends_on", cycle[0]),
        format!(
            "dependency cycle {} (each depends on the next)",
            names.join(" -> ")
        ),
    ))
}

/// Reads the CSV form: a header row naming the columns (any order; `name` and `run_ms` are
/// required, the others of [`CSV_COLUMNS`] optional), then one task per row. `depends_on`
/// holds names separated by `;`; an empty cell takes the field's default. Blank lines and
/// lines starting with `#` are skipped. Cells cannot contain commas (no quoting beyond a pair
/// of surrounding double quotes, which are removed).
pub fn parse_csv(text: &str) -> Result<Vec<TraceTask>, SimError> {
    let mut rows = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    let Some((_, header)) = rows.next() else {
        return Err(invalid(
            "csv",
            format!("no header row (expected {})", CSV_COLUMNS.join(",")),
        ));
    };
    let columns: Vec<&str> = header.split(',').map(cell).collect();
    for (k, c) in columns.iter().enumerate() {
        if !CSV_COLUMNS.contains(c) {
            return Err(invalid(
                "csv header",
                format!("unknown column {c:?} (columns: {})", CSV_COLUMNS.join(",")),
            ));
        }
        if columns[..k].contains(c) {
            return Err(invalid("csv header", format!("column {c:?} appears twice")));
        }
    }
    for required in ["name", "run_ms"] {
        if !columns.contains(&required) {
            return Err(invalid(
                "csv header",
                format!("missing column {required:?}"),
            ));
        }
    }

    let mut tasks = Vec::new();
    for (line, row) in rows {
        let i = tasks.len();
        let cells: Vec<&str> = row.split(',').map(cell).collect();
        if cells.len() != columns.len() {
            return Err(invalid(
                format!("tasks[{i}] (line {line})"),
                format!(
                    "{} cells, but the header has {} columns",
                    cells.len(),
                    columns.len()
                ),
            ));
        }
        let mut t = TraceTask::new("", 0, 0);
        for (&column, &value) in columns.iter().zip(&cells) {
            let at = || format!("tasks[{i}].{column} (line {line})");
            let number = |what: &str| invalid(at(), format!("{value:?} is not {what}"));
            let whole = "a whole number";
            if column == "run_ms" && value.is_empty() {
                return Err(invalid(at(), "must be given"));
            }
            match column {
                "name" => t.name = value.to_string(),
                "depends_on" => {
                    t.depends_on = value
                        .split(';')
                        .map(str::trim)
                        .filter(|d| !d.is_empty())
                        .map(str::to_string)
                        .collect()
                }
                "queue" => t.queue = Some(value.to_string()).filter(|q| !q.is_empty()),
                _ if value.is_empty() => {} // the default
                "arrival_ms" => t.arrival_ms = value.parse().map_err(|_| number(whole))?,
                "estimate_ms" => t.estimate_ms = Some(value.parse().map_err(|_| number(whole))?),
                "run_ms" => t.run_ms = value.parse().map_err(|_| number(whole))?,
                "priority" => t.priority = value.parse().map_err(|_| number("an integer"))?,
                "cpu_millis" => t.cpu_millis = value.parse().map_err(|_| number(whole))?,
                "mem_mb" => t.mem_mb = value.parse().map_err(|_| number(whole))?,
                other => unreachable!("column {other:?} was checked against CSV_COLUMNS"),
            }
        }
        tasks.push(t);
    }
    Ok(tasks)
}

/// One CSV cell: trimmed, a pair of surrounding double quotes removed.
fn cell(raw: &str) -> &str {
    let c = raw.trim();
    match c.strip_prefix('"').and_then(|c| c.strip_suffix('"')) {
        Some(inner) => inner,
        None => c,
    }
}

/// Writes the CSV form (header row, then one row per task) that [`parse_csv`] reads back.
pub fn to_csv(tasks: &[TraceTask]) -> String {
    let mut out = CSV_COLUMNS.join(",");
    out.push('\n');
    for t in tasks {
        let row = [
            t.name.clone(),
            t.arrival_ms.to_string(),
            t.estimate_ms.map(|e| e.to_string()).unwrap_or_default(),
            t.run_ms.to_string(),
            t.priority.to_string(),
            t.cpu_millis.to_string(),
            t.mem_mb.to_string(),
            t.depends_on.join(";"),
            t.queue.clone().unwrap_or_default(),
        ];
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

/// A trace made from a cluster's tasks, and what was left out of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedTrace {
    pub trace: Trace,
    /// Tasks left out because they did not succeed: still waiting, pending or running, or
    /// failed or cancelled (their run time is not known).
    pub skipped: usize,
    /// Dependencies left out because the parent is not in the trace (removed by retention,
    /// or not among the tasks given).
    pub dropped_dependencies: usize,
}

/// A trace of the succeeded tasks among `tasks` (by id): the task id as its name, arrival =
/// submitted (counted from the earliest one kept; never before a parent's, as leaders'
/// clocks may differ), run = finished − started of the successful attempt, and its estimate,
/// priority, resources, parents and queue as submitted.
pub fn trace_from_tasks(tasks: &[Task]) -> ExportedTrace {
    let finished = |t: &&Task| t.state == TaskState::Succeeded && t.started_at_ms.is_some();
    let mut kept: Vec<&Task> = tasks.iter().filter(finished).collect();
    let skipped = tasks.len() - kept.len();
    kept.sort_by_key(|t| t.id);
    kept.dedup_by_key(|t| t.id);
    let origin = kept.iter().map(|t| t.submitted_at_ms).min().unwrap_or(0);
    let mut arrivals: BTreeMap<TaskId, u64> = BTreeMap::new();
    let mut dropped_dependencies = 0;
    let mut out = Vec::with_capacity(kept.len());
    for t in kept {
        let mut arrival_ms = t.submitted_at_ms - origin;
        let mut depends_on = Vec::new();
        for d in &t.spec.depends_on {
            // Parents have smaller ids, so a kept parent was seen already.
            match arrivals.get(d) {
                Some(&a) => {
                    arrival_ms = arrival_ms.max(a);
                    depends_on.push(d.to_string());
                }
                None => dropped_dependencies += 1,
            }
        }
        arrivals.insert(t.id, arrival_ms);
        let started = t.started_at_ms.expect("kept tasks have started");
        out.push(TraceTask {
            name: t.id.to_string(),
            arrival_ms,
            estimate_ms: t.spec.estimate_ms,
            run_ms: t.updated_at_ms.saturating_sub(started),
            priority: t.spec.priority,
            cpu_millis: t.spec.resources.cpu_millis,
            mem_mb: t.spec.resources.mem_mb,
            depends_on,
            queue: Some(t.spec.queue.clone()),
        });
    }
    ExportedTrace {
        trace: Trace { tasks: out },
        skipped,
        dropped_dependencies,
    }
}
