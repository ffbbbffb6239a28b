//! Schedules: a task created again and again at the ticks of a cron expression. This module
//! owns the shapes, their validation and the [`Calendar`] seam; the replicated record and its
//! life cycle live in `state::schedules`.
//!
//! The core never parses a cron expression. The leader's shell owns a [`Calendar`] (the
//! server's is `croner`, UTC) and stamps every tick it computes into the command:
//!
//! ```text
//!  add:    leader: first tick after now ─▶ AddSchedule{next_tick_ms}
//!  timer:  engine: next_tick_ms ≤ clock ─▶ FireSchedule{tick_ms: latest tick ≤ now,
//!                                                       next_tick_ms: first tick after now}
//!  apply:  tick_ms ≥ the schedule's next tick (else it fired already: refused) ─▶ one task,
//!          idempotency key "schedule:<name>:<tick_ms>"; next tick := next_tick_ms
//! ```
//!
//! So each tick fires at most once whatever the leader changes: a second `FireSchedule` for a
//! tick already fired is refused by `apply`, and the task's key names the tick. Catch-up
//! rule: ticks that passed while no leader could fire them (an outage) create one task, for
//! the latest of them, as soon as a leader is up; the others are counted as missed. A paused
//! schedule fires nothing and, when resumed, starts from the first tick after the resume.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{CommandError, TaskId, TaskSpec};

/// Longest schedule name, in bytes.
pub const MAX_SCHEDULE_NAME_LEN: usize = 128;
/// Longest cron expression, in bytes.
pub const MAX_CRON_LEN: usize = 256;
/// Most schedules a cluster holds.
pub const MAX_SCHEDULES: usize = 1_000;
/// Most missed ticks the leader counts for one fire (the count saturates there).
pub const MAX_MISSED_COUNTED: u32 = 10_000;

/// What to do at a tick while the task of the previous tick has not finished.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Overlap {
    /// Skip the tick (counted as skipped).
    #[default]
    Skip,
    /// Create the task anyway.
    Allow,
}

impl Overlap {
    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Skip => "skip",
            Overlap::Allow => "allow",
        }
    }

    pub fn parse(s: &str) -> Option<Overlap> {
        match s {
            "skip" => Some(Overlap::Skip),
            "allow" => Some(Overlap::Allow),
            _ => None,
        }
    }
}

/// What a client asks for: run `task` at every tick of `cron`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleSpec {
    pub name: String,
    /// The cron expression, as given (5 fields, or 6 with seconds first; UTC).
    pub cron: String,
    /// The task each tick creates. No idempotency key (each tick's is its own), no
    /// `depends_on`, no `not_before_ms`.
    pub task: TaskSpec,
    pub overlap: Overlap,
}

/// A schedule as the replicated state keeps it (and its snapshot image).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub spec: ScheduleSpec,
    pub created_at_ms: u64,
    pub paused: bool,
    /// The next tick to fire (Unix ms); None when the expression has no tick left.
    pub next_tick_ms: Option<u64>,
    /// The last tick fired (a task created, or skipped).
    pub last_tick_ms: Option<u64>,
    /// The task of the last tick that created one.
    pub last_task: Option<TaskId>,
    /// Ticks that created a task.
    pub fired: u64,
    /// Ticks fired that created none (overlap skip, admission limits).
    pub skipped: u64,
    /// Ticks that passed while no leader fired them (the catch-up rule).
    pub missed: u64,
}

/// What a fired tick did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TickOutcome {
    /// The tick's task (`created` false: its key found a task created before).
    Created { task: TaskId, created: bool },
    /// No task: why.
    Skipped(String),
}

/// The prefix of the idempotency keys schedules give their ticks' tasks; reserved.
pub const TICK_KEY_PREFIX: &str = "schedule:";

/// The idempotency key of the task a schedule's tick creates.
pub fn tick_key(name: &str, tick_ms: u64) -> String {
    format!("{TICK_KEY_PREFIX}{name}:{tick_ms}")
}

/// Refuses a client's idempotency key in the schedules' reserved space: a task submitted with
/// a tick's key would stand in for that tick's task. Checked at the edge (the API) only, never
/// in `apply`, so that replaying a log written before the prefix was reserved gives the same
/// state.
pub fn refuse_reserved_key(field: &str, spec: &TaskSpec) -> Result<(), CommandError> {
    match &spec.idempotency_key {
        Some(k) if k.starts_with(TICK_KEY_PREFIX) => Err(CommandError::invalid(
            format!("{field}.idempotency_key"),
            format!("the prefix {TICK_KEY_PREFIX:?} is reserved for the tasks of schedules"),
        )),
        _ => Ok(()),
    }
}

/// Checks a schedule: its name, the cron expression's length (its syntax is the calendar's
/// business, checked at the edge), and the task: a valid spec without the fields a schedule
/// sets itself.
pub fn validate_schedule(spec: &ScheduleSpec) -> Result<(), CommandError> {
    validate_schedule_name("name", &spec.name)?;
    if spec.cron.trim().is_empty() {
        return Err(CommandError::invalid("cron", "must not be empty"));
    }
    if spec.cron.len() > MAX_CRON_LEN {
        return Err(CommandError::invalid(
            "cron",
            format!("{} bytes exceeds limit {MAX_CRON_LEN}", spec.cron.len()),
        ));
    }
    crate::validate_spec("task", &spec.task)?;
    if spec.task.idempotency_key.is_some() {
        return Err(CommandError::invalid(
            "task.idempotency_key",
            "a schedule's task may not set one: each tick's task is keyed by its tick",
        ));
    }
    if !spec.task.depends_on.is_empty() {
        return Err(CommandError::invalid(
            "task.depends_on",
            "a schedule's task may not depend on other tasks",
        ));
    }
    if spec.task.not_before_ms.is_some() {
        return Err(CommandError::invalid(
            "task.not_before_ms",
            "a schedule's task starts at its tick",
        ));
    }
    Ok(())
}

/// Checks a schedule name: 1..=128 bytes, no whitespace, control characters or `:`.
pub fn validate_schedule_name(field: &str, name: &str) -> Result<(), CommandError> {
    crate::workflow::validate_task_name(field, name)?;
    if name.len() > MAX_SCHEDULE_NAME_LEN {
        return Err(CommandError::invalid(
            field,
            format!("{} bytes exceeds limit {MAX_SCHEDULE_NAME_LEN}", name.len()),
        ));
    }
    if name.contains(':') {
        return Err(CommandError::invalid(
            field,
            format!("{name:?} holds ':'; schedule names may not"),
        ));
    }
    Ok(())
}

/// Where the leader learns a cron expression's ticks. Pure: the same arguments always give
/// the same answer (no clock), so the engine stays deterministic under test.
pub trait Calendar: fmt::Debug + Send + Sync {
    /// The first tick of `cron` strictly after `after_ms`; None if there is none or the
    /// expression does not parse.
    fn next_after(&self, cron: &str, after_ms: u64) -> Option<u64>;
    /// The last tick of `cron` at or before `at_ms`.
    fn latest_at_or_before(&self, cron: &str, at_ms: u64) -> Option<u64>;
}

/// What the leader proposes for a schedule whose next tick `due_ms` has come at `now_ms`:
/// the tick to fire (the latest at or before now), the next tick after now, and how many
/// ticks between were missed (at most [`MAX_MISSED_COUNTED`]).
pub fn due_tick(
    calendar: &dyn Calendar,
    cron: &str,
    due_ms: u64,
    now_ms: u64,
) -> (u64, Option<u64>, u32) {
    let tick = calendar
        .latest_at_or_before(cron, now_ms)
        .map_or(due_ms, |t| t.max(due_ms));
    let mut missed = 0;
    let mut t = due_ms;
    while missed < MAX_MISSED_COUNTED {
        match calendar.next_after(cron, t) {
            Some(n) if n < tick => {
                missed += 1;
                t = n;
            }
            _ => break,
        }
    }
    if tick > due_ms && missed < MAX_MISSED_COUNTED {
        missed += 1; // `due_ms` itself was passed over for `tick`
    }
    let next = calendar.next_after(cron, now_ms.max(tick));
    (tick, next, missed)
}

/// A calendar of fixed intervals for tests and simulations: the expression `every:N` ticks
/// at every multiple of N ms.
#[derive(Debug, Clone, Copy, Default)]
pub struct IntervalCalendar;

impl IntervalCalendar {
    fn every(cron: &str) -> Option<u64> {
        cron.strip_prefix("every:")?.parse().ok().filter(|n| *n > 0)
    }
}

impl Calendar for IntervalCalendar {
    fn next_after(&self, cron: &str, after_ms: u64) -> Option<u64> {
        let n = Self::every(cron)?;
        (after_ms / n).checked_add(1)?.checked_mul(n)
    }

    fn latest_at_or_before(&self, cron: &str, at_ms: u64) -> Option<u64> {
        let n = Self::every(cron)?;
        Some(at_ms / n * n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_may_not_use_a_tick_key() {
        let mut t = TaskSpec::new("q", b"x".to_vec());
        assert_eq!(refuse_reserved_key("tasks[0]", &t), Ok(()));
        t.idempotency_key = Some(tick_key("n", 400));
        let err = refuse_reserved_key("tasks[0]", &t).unwrap_err();
        assert!(
            matches!(&err, CommandError::Invalid { field, .. } if field == "tasks[0].idempotency_key"),
            "{err:?}"
        );
        t.idempotency_key = Some("my-schedule:1".into());
        assert_eq!(refuse_reserved_key("tasks[0]", &t), Ok(()));
    }

    #[test]
    fn due_tick_fires_the_latest_passed_tick_and_counts_the_others() {
        let c = IntervalCalendar;
        // On time: the due tick itself, nothing missed.
        assert_eq!(
            due_tick(&c, "every:1000", 5000, 5000),
            (5000, Some(6000), 0)
        );
        assert_eq!(
            due_tick(&c, "every:1000", 5000, 5999),
            (5000, Some(6000), 0)
        );
        // An outage from 5000 to 9500: 5000..=8000 missed, 9000 fires.
        assert_eq!(
            due_tick(&c, "every:1000", 5000, 9500),
            (9000, Some(10000), 4)
        );
        // A huge gap saturates the count.
        let (tick, next, missed) = due_tick(&c, "every:1", 0, 1_000_000);
        assert_eq!(
            (tick, next, missed),
            (1_000_000, Some(1_000_001), MAX_MISSED_COUNTED)
        );
        // An expression the calendar cannot read still fires the due tick once, then stops.
        assert_eq!(due_tick(&c, "nonsense", 5000, 9000), (5000, None, 0));
    }

    #[test]
    fn a_schedule_is_refused_naming_the_field() {
        let ok = ScheduleSpec {
            name: "nightly".into(),
            cron: "0 3 * * *".into(),
            task: TaskSpec::new("q", b"x".to_vec()),
            overlap: Overlap::Skip,
        };
        assert_eq!(validate_schedule(&ok), Ok(()));
        let field = |f: fn(&mut ScheduleSpec)| {
            let mut s = ok.clone();
            f(&mut s);
            match validate_schedule(&s) {
                Err(CommandError::Invalid { field, .. }) => field,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(field(|s| s.name = String::new()), "name");
        assert_eq!(field(|s| s.name = "a:b".into()), "name");
        assert_eq!(field(|s| s.name = "a b".into()), "name");
        assert_eq!(field(|s| s.cron = " ".into()), "cron");
        assert_eq!(field(|s| s.cron = "*".repeat(300)), "cron");
        assert_eq!(field(|s| s.task.queue = String::new()), "task.queue");
        assert_eq!(
            field(|s| s.task.idempotency_key = Some("k".into())),
            "task.idempotency_key"
        );
        assert_eq!(
            field(|s| s.task.depends_on = vec![TaskId(1)]),
            "task.depends_on"
        );
        assert_eq!(
            field(|s| s.task.not_before_ms = Some(1)),
            "task.not_before_ms"
        );
    }
}
