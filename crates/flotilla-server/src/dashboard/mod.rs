//! The web dashboard each replica serves on its HTTP listener: three static files embedded in
//! the binary (no front-end build step) and the one JSON document they poll, `/api/overview`.
//!
//! The overview is what this replica knows, read in one pass over its applied state: the
//! members with roles, terms and indexes; queues with their depth by state, oldest pending age
//! and policy; workers with their load (and, on the leader, how long ago their lease was
//! renewed); the schedules with their next tick and counts; the most recent tasks. A follower's applied state trails the leader's by the
//! entries it has not applied yet; the page says which replica answered and in what role.
//! Building it is a pure function of those inputs ([`overview`]), tested below; the handlers in
//! `http` only gather the inputs.
//!
//! The page is read-only. Its one action, cancelling a task, needs an admin token from the
//! replica's tokens file and goes through the same code as the `CancelTask` call.

use std::collections::BTreeMap;

use flotilla_core::{QueuePolicy, State, TaskId, TaskState};
use serde::Serialize;

/// The page, its script and its style sheet.
pub const INDEX_HTML: &str = include_str!("index.html");
pub const SCRIPT_JS: &str = include_str!("dashboard.js");
pub const STYLE_CSS: &str = include_str!("dashboard.css");

/// Most recent tasks listed.
pub const RECENT_TASKS: usize = 50;

/// The JSON document the page polls.
#[derive(Debug, Serialize)]
pub struct Overview {
    pub replica: ReplicaView,
    pub members: Vec<MemberView>,
    pub totals: Totals,
    pub queues: Vec<QueueView>,
    pub workers: Vec<WorkerView>,
    /// Every schedule, by name.
    pub schedules: Vec<ScheduleView>,
    /// The most recent tasks, newest first.
    pub tasks: Vec<TaskView>,
    /// Whether actions can be enabled at all (the replica has a tokens file).
    pub actions: bool,
}

/// The replica that answered, as its Raft metrics say.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaView {
    pub id: u64,
    pub cluster_name: String,
    pub role: String,
    pub term: u64,
    pub leader: Option<u64>,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    /// Wall-clock time of the answer (ms since the epoch).
    pub now_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemberView {
    pub id: u64,
    pub addr: String,
    pub voter: bool,
    pub leader: bool,
    /// The last entry the leader knows this member holds (reported by the leader only).
    pub matched_index: Option<u64>,
}

/// Cluster-wide counts. `submitted` and `finished` only grow, so the page charts their rates.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Totals {
    pub submitted: u64,
    pub finished: u64,
    pub by_state: BTreeMap<&'static str, u64>,
    pub held: u64,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct QueueView {
    pub name: String,
    pub policy: String,
    pub retention_ms: Option<u64>,
    /// Flow limits in one cell ("max 3, w 2, 5/s burst 10", or "-").
    pub limits: String,
    pub by_state: BTreeMap<&'static str, u64>,
    pub oldest_pending_age_ms: Option<u64>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct WorkerView {
    pub id: String,
    pub slots: u32,
    pub running: u64,
    pub labels: BTreeMap<String, String>,
    pub queues: Vec<String>,
    pub registered_age_ms: u64,
    /// Since the leader last heard from the worker (on the leader only).
    pub lease_age_ms: Option<u64>,
    pub connected: Option<bool>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct TaskView {
    pub id: u64,
    pub queue: String,
    pub state: &'static str,
    pub attempts: u32,
    pub priority: i32,
    pub age_ms: u64,
    pub worker: Option<String>,
    pub reason: Option<String>,
    pub progress_permille: Option<u32>,
    /// For an unfinished task: why it is in its state (`flotilla why`, without the line that it
    /// was submitted).
    pub why: Vec<String>,
}

/// A schedule as `flotilla schedule list` shows it.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ScheduleView {
    pub name: String,
    pub cron: String,
    pub queue: String,
    pub overlap: &'static str,
    pub paused: bool,
    /// When it fires next (ms since the epoch); `None` when paused or out of ticks.
    pub next_tick_ms: Option<u64>,
    pub last_tick_ms: Option<u64>,
    /// The task its last fired tick created.
    pub last_task: Option<u64>,
    pub fired: u64,
    pub skipped: u64,
    pub missed: u64,
}

/// What the leader knows of a worker's lease (nothing on a follower).
#[derive(Debug, Clone, Copy, Default)]
pub struct LeaseSeen {
    pub age_ms: Option<u64>,
    pub connected: bool,
}

/// Builds the overview from the applied state and what Raft and the leader's engine report.
/// `lease` is `None` on a replica that does not lead.
pub fn overview(
    state: &State,
    replica: ReplicaView,
    members: Vec<MemberView>,
    lease: Option<&dyn Fn(&str) -> LeaseSeen>,
    actions: bool,
) -> Overview {
    let now = replica.now_ms;
    let by_state = |count: &dyn Fn(TaskState) -> u64| {
        TaskState::ALL
            .into_iter()
            .map(|s| (s.as_str(), count(s)))
            .collect::<BTreeMap<_, _>>()
    };
    let submitted = state.next_task_id().saturating_sub(1);
    let active: u64 = [TaskState::Waiting, TaskState::Pending, TaskState::Running]
        .into_iter()
        .map(|s| state.count(s))
        .sum();
    let totals = Totals {
        submitted,
        // Every task ever submitted is active, finished, or removed after finishing.
        finished: submitted.saturating_sub(active),
        by_state: by_state(&|s| state.count(s)),
        held: state.task_count() as u64,
    };
    let queues = state
        .queues()
        .map(|(name, settings)| QueueView {
            name: name.to_string(),
            policy: policy_name(settings.policy),
            retention_ms: settings.retention_ms,
            limits: state.queue_flow(name).0.to_string(),
            by_state: by_state(&|s| state.queue_count(name, s)),
            oldest_pending_age_ms: state.oldest_pending_ms(name).map(|t| now.saturating_sub(t)),
        })
        .collect();
    let workers = state
        .workers()
        .map(|w| {
            let seen = lease.map(|f| f(&w.spec.id));
            WorkerView {
                id: w.spec.id.clone(),
                slots: w.spec.capacity.slots,
                running: state.attempts_on(&w.spec.id).len() as u64,
                labels: w.spec.labels.clone(),
                queues: w.spec.queues.clone(),
                registered_age_ms: now.saturating_sub(w.registered_at_ms),
                lease_age_ms: seen.and_then(|s| s.age_ms),
                connected: seen.map(|s| s.connected),
            }
        })
        .collect();
    let schedules = state
        .schedules()
        .map(|s| ScheduleView {
            name: s.spec.name.clone(),
            cron: s.spec.cron.clone(),
            queue: s.spec.task.queue.clone(),
            overlap: s.spec.overlap.as_str(),
            paused: s.paused,
            next_tick_ms: s.next_tick_ms,
            last_tick_ms: s.last_tick_ms,
            last_task: s.last_task.map(|t| t.0),
            fired: s.fired,
            skipped: s.skipped,
            missed: s.missed,
        })
        .collect();
    let after = state.next_task_id().saturating_sub(RECENT_TASKS as u64 + 1);
    let mut tasks: Vec<TaskView> = state
        .list(None, None, Some(TaskId(after)), RECENT_TASKS)
        .into_iter()
        .map(|t| TaskView {
            id: t.id.0,
            queue: t.spec.queue.clone(),
            state: t.state.as_str(),
            attempts: t.attempts,
            priority: t.spec.priority,
            age_ms: now.saturating_sub(t.submitted_at_ms),
            worker: t.worker.clone(),
            reason: t.reason.clone(),
            progress_permille: t.checkpoint.as_ref().map(|c| c.progress_permille),
            why: if t.state.is_terminal() {
                Vec::new()
            } else {
                flotilla_core::why(state, &t, now)
                    .into_iter()
                    .skip(1)
                    .map(|l| l.text)
                    .collect()
            },
        })
        .collect();
    tasks.reverse();
    Overview {
        replica,
        members,
        totals,
        queues,
        workers,
        schedules,
        tasks,
        actions,
    }
}

/// A policy as the CLI writes it.
pub fn policy_name(p: QueuePolicy) -> String {
    match p {
        QueuePolicy::Fifo => "fifo".into(),
        QueuePolicy::Priority { aging_ms: 0 } => "priority".into(),
        QueuePolicy::Priority { aging_ms } => format!("priority (aging {aging_ms} ms)"),
        QueuePolicy::ShortestJobFirst => "sjf".into(),
    }
}

#[cfg(test)]
mod tests;
