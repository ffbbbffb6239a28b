//! Why a task is where it is: what it waits for, why the planner does not start it, which
//! attempt runs where, how it ended. A pure reading of the replicated state by the rules `plan`
//! and `apply` follow, so every replica gives the same answer for the same state and a new
//! leader explains what the old one would have.
//!
//! The past comes from the replicated attempt history (`State::ended_attempts`): each attempt
//! that ended without finishing the task, on which worker, why, and the backoff before the
//! next — the latest `MAX_ENDED_ATTEMPTS` of them. The planner's reasons are explained for the
//! present only: they are not recorded as they change.

use crate::{Lookup, QueuePolicy, State, Task, TaskId, TaskState, MAX_ENDED_ATTEMPTS};

/// Pending tasks ahead of a task counted at most (the rest shown as "+").
const AHEAD_COUNTED: usize = 10_000;

/// One line of an explanation; `at_ms` (ms since the Unix epoch, the replicated clock's) when
/// the line is about a moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhyLine {
    pub at_ms: Option<u64>,
    pub text: String,
}

fn line(at_ms: Option<u64>, text: String) -> WhyLine {
    WhyLine { at_ms, text }
}

/// Why task `task` is in its state at `now_ms` (the caller's clock, never taken behind the
/// replicated one).
pub fn why(state: &State, task: &Task, now_ms: u64) -> Vec<WhyLine> {
    let now = now_ms.max(state.clock_ms());
    let spec = &task.spec;
    let mut out = vec![line(
        Some(task.submitted_at_ms),
        format!(
            "submitted to queue {:?} (priority {}, up to {} attempts)",
            spec.queue, spec.priority, spec.max_attempts
        ),
    )];
    let mut history = ended_attempts(state, task);
    // The last attempt's end is told by the history when it holds it.
    let told = state
        .ended_attempts(task.id)
        .last()
        .is_some_and(|e| e.attempt == task.attempts);
    let last_error = (task.attempts > 0 && !task.state.is_terminal())
        .then_some(task.reason.as_deref())
        .flatten();
    if task.state != TaskState::Waiting {
        out.append(&mut history);
    }
    match task.state {
        TaskState::Waiting => {
            for d in &spec.depends_on {
                out.push(match state.lookup(*d) {
                    Lookup::Task(p) if p.state == TaskState::Succeeded => {
                        line(Some(p.updated_at_ms), format!("task {d} succeeded"))
                    }
                    Lookup::Task(p) => line(None, format!("waits for task {d} ({})", p.state)),
                    Lookup::Removed(_) | Lookup::Unknown => {
                        line(None, format!("task {d} finished and was removed"))
                    }
                });
            }
            // Its parents succeeded before any attempt ran.
            out.append(&mut history);
            if let Some(at) = spec.not_before_ms.filter(|at| *at > now) {
                let text = match last_error {
                    Some(_) if told => format!(
                        "attempt {} of {} waits out its backoff",
                        task.attempts + 1,
                        spec.max_attempts
                    ),
                    Some(e) => format!(
                        "attempt {} failed ({e}); attempt {} of {} waits out its backoff",
                        task.attempts,
                        task.attempts + 1,
                        spec.max_attempts
                    ),
                    None => "held back until then (--delay / --at)".to_string(),
                };
                out.push(line(Some(at), format!("{text}: {} ms from now", at - now)));
            }
        }
        TaskState::Pending => {
            if let Some(e) = last_error.filter(|_| !told) {
                out.push(line(
                    Some(task.updated_at_ms),
                    format!("attempt {} ended: {e}", task.attempts),
                ));
            }
            out.extend(pending_reasons(state, task, now));
        }
        TaskState::Running => {
            out.push(line(
                task.started_at_ms,
                format!(
                    "attempt {} of {} running on worker {}",
                    task.attempts,
                    spec.max_attempts,
                    task.worker.as_deref().unwrap_or("?")
                ),
            ));
            if let (Some(start), Some(timeout)) = (task.started_at_ms, spec.timeout_ms) {
                out.push(line(
                    Some(start.saturating_add(timeout)),
                    "the attempt times out then (--timeout)".into(),
                ));
            }
        }
        TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled => {
            let mut text = format!("{} after {} attempts", task.state, task.attempts);
            if let Some(r) = &task.reason {
                text.push_str(&format!(": {r}"));
            }
            if let Some(r) = &task.result {
                text.push_str(&format!(" (result of {} bytes)", r.len()));
            }
            out.push(line(Some(task.updated_at_ms), text));
        }
    }
    out
}

/// The task's attempts that ended without finishing it, two lines each: where it started, and
/// how it ended and when the task could go on.
fn ended_attempts(state: &State, task: &Task) -> Vec<WhyLine> {
    let ended = state.ended_attempts(task.id);
    let mut out = Vec::new();
    if let Some(first) = ended.first().filter(|e| e.attempt > 1) {
        out.push(line(
            None,
            format!(
                "attempts 1 to {} ended earlier (the history keeps the latest {MAX_ENDED_ATTEMPTS})",
                first.attempt - 1
            ),
        ));
    }
    for e in ended {
        out.push(line(
            Some(e.started_at_ms),
            format!("attempt {} started on worker {}", e.attempt, e.worker),
        ));
        let next = match e.retry_at_ms {
            Some(at) => format!(
                "a backoff of {} ms before attempt {}",
                at.saturating_sub(e.ended_at_ms),
                e.attempt + 1
            ),
            None => "the task went back to pending at once".to_string(),
        };
        out.push(line(
            Some(e.ended_at_ms),
            format!("attempt {} ended: {}; {next}", e.attempt, e.error),
        ));
    }
    out
}

/// Why the planner does not start a pending task, in the order it checks: a worker that could
/// ever run it, the queue's flow limits, a fitting worker with room now, the tasks ahead of it.
fn pending_reasons(state: &State, task: &Task, now: u64) -> Vec<WhyLine> {
    let spec = &task.spec;
    let queue = spec.queue.as_str();
    let mut out = Vec::new();
    if let Some(r) = super::unplaceable_reason(state, task) {
        out.push(line(
            None,
            format!("cannot run on any registered worker: {r}"),
        ));
        return out;
    }
    let (limits, bucket) = state.queue_flow(queue);
    let running = state.queue_count(queue, TaskState::Running);
    if let Some(max) = limits.max_running.filter(|m| running >= u64::from(*m)) {
        out.push(line(
            None,
            format!("queue {queue:?} runs {running} tasks, its max_running of {max}"),
        ));
    }
    if let (Some(max), Some(key)) = (limits.max_per_key, spec.concurrency_key.as_deref()) {
        let running = state.running_with_key(queue, key);
        if running >= u64::from(max) {
            out.push(line(
                None,
                format!(
                    "queue {queue:?} runs {running} tasks with concurrency key {key:?}, its max_per_key of {max}"
                ),
            ));
        }
    }
    if let (Some(rate), Some(b)) = (limits.rate, bucket) {
        let level = b.level(rate, now);
        if level < 1000 {
            let wait_ms = (1000 - level).div_ceil(u64::from(rate.per_sec));
            out.push(line(
                Some(now + wait_ms),
                format!(
                    "queue {queue:?} is rate limited ({}/s, burst {}): its next start is allowed then",
                    rate.per_sec, rate.burst
                ),
            ));
        }
    }
    let fitting: Vec<_> = state
        .workers()
        .filter(|w| {
            w.spec.serves(queue)
                && w.spec.matches(&spec.labels)
                && w.spec.could_fit(&spec.resources)
        })
        .collect();
    let with_room = fitting
        .iter()
        .filter(|w| {
            let used = state.worker_usage(&w.spec.id);
            let cap = w.spec.capacity;
            used.slots < cap.slots
                && used.cpu_millis + spec.resources.cpu_millis <= cap.cpu_millis
                && used.mem_mb + spec.resources.mem_mb <= cap.mem_mb
        })
        .count();
    if with_room == 0 {
        out.push(line(
            None,
            format!(
                "every fitting worker is full ({} registered)",
                fitting.len()
            ),
        ));
    }
    // Counted up to a bound: the dashboard explains its recent tasks on every refresh.
    let ahead = state
        .pending_in(queue)
        .take_while(|id| *id != task.id)
        .take(AHEAD_COUNTED)
        .count();
    if ahead > 0 {
        let more = if ahead == AHEAD_COUNTED { "+" } else { "" };
        out.push(line(
            None,
            format!(
                "{ahead}{more} pending tasks are ahead of it in queue {queue:?} ({})",
                match state.queue_policy(queue) {
                    QueuePolicy::Fifo => "fifo",
                    QueuePolicy::Priority { .. } => "priority",
                    QueuePolicy::ShortestJobFirst => "sjf",
                }
            ),
        ));
    }
    if out.is_empty() {
        out.push(line(
            None,
            format!("{with_room} fitting workers have room: it starts at the next planning round"),
        ));
    }
    out
}

/// [`why`] of the task with id `id`, or `None` when the state holds no such task.
pub fn why_id(state: &State, id: TaskId, now_ms: u64) -> Option<Vec<WhyLine>> {
    state.get(id).map(|t| why(state, &t, now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Capacity, Command, QueueSetting, RateLimit, Response, TaskSpec, WorkerSpec};

    fn texts(s: &State, id: TaskId, now: u64) -> Vec<String> {
        why_id(s, id, now)
            .unwrap()
            .into_iter()
            .skip(1) // "submitted ..."
            .map(|l| l.text)
            .collect()
    }

    fn worker(id: &str, slots: u32, labels: &[(&str, &str)]) -> Command {
        Command::RegisterWorker {
            now_ms: 1,
            worker: WorkerSpec {
                id: id.into(),
                session: "s".into(),
                capacity: Capacity {
                    slots,
                    cpu_millis: 1000,
                    mem_mb: 1000,
                },
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                queues: vec![],
            },
        }
    }

    fn submit(s: &mut State, spec: TaskSpec) -> TaskId {
        match s.apply(&Command::submit(1, vec![spec])) {
            Response::Submitted { ids, .. } => ids[0],
            r => panic!("{r:?}"),
        }
    }

    fn assign(s: &mut State, id: TaskId, w: &str, attempt: u32) {
        let r = s.apply(&Command::Assign {
            now_ms: 2,
            task_id: id,
            worker_id: w.into(),
            attempt,
        });
        assert!(matches!(r, Response::Assigned { .. }), "{r:?}");
    }

    #[test]
    fn a_task_held_by_its_concurrency_key_is_told_so() {
        let mut s = State::new();
        s.apply(&worker("w", 4, &[]));
        let r = s.apply(&Command::SetQueue {
            now_ms: 1,
            queue: "q".into(),
            setting: QueueSetting::MaxPerKey(Some(1)),
            create: true,
        });
        assert_eq!(r, Response::QueueSet);
        let keyed = |key: &str| {
            let mut t = TaskSpec::new("q", key.as_bytes().to_vec());
            t.concurrency_key = Some(key.into());
            t
        };
        let a1 = submit(&mut s, keyed("alice"));
        let a2 = submit(&mut s, keyed("alice"));
        let b1 = submit(&mut s, keyed("bob"));
        assign(&mut s, a1, "w", 1);
        assert_eq!(
            texts(&s, a2, 2),
            ["queue \"q\" runs 1 tasks with concurrency key \"alice\", its max_per_key of 1"]
        );
        assert_eq!(
            texts(&s, b1, 2),
            ["1 pending tasks are ahead of it in queue \"q\" (fifo)"]
        );
    }

    #[test]
    fn each_reason_the_planner_has_is_named() {
        let mut s = State::new();
        let a = submit(&mut s, TaskSpec::new("q", b"a".to_vec()));
        assert_eq!(
            texts(&s, a, 1),
            ["cannot run on any registered worker: no registered worker serves queue \"q\""]
        );
        s.apply(&worker("w", 1, &[]));
        assert_eq!(
            texts(&s, a, 1),
            ["1 fitting workers have room: it starts at the next planning round"]
        );
        let b = submit(&mut s, TaskSpec::new("q", b"b".to_vec()));
        assert_eq!(
            texts(&s, b, 1),
            ["1 pending tasks are ahead of it in queue \"q\" (fifo)"]
        );
        assign(&mut s, a, "w", 1);
        assert_eq!(
            texts(&s, b, 2),
            ["every fitting worker is full (1 registered)"]
        );
        assert_eq!(texts(&s, a, 2), ["attempt 1 of 3 running on worker w"]);
        // Labels nobody has.
        let mut gpu = TaskSpec::new("q", b"g".to_vec());
        gpu.labels = [("gpu".to_string(), "yes".to_string())].into();
        let g = submit(&mut s, gpu);
        assert_eq!(
            texts(&s, g, 2),
            ["cannot run on any registered worker: no registered worker of this queue has the required labels"]
        );
        // Flow limits: max_running, then a rate whose bucket is empty.
        s.apply(&worker("w2", 4, &[]));
        s.apply(&Command::SetQueue {
            now_ms: 3,
            queue: "q".into(),
            setting: QueueSetting::MaxRunning(Some(1)),
            create: false,
        });
        assert_eq!(
            texts(&s, b, 3),
            ["queue \"q\" runs 1 tasks, its max_running of 1"]
        );
        s.apply(&Command::SetQueue {
            now_ms: 3,
            queue: "q".into(),
            setting: QueueSetting::MaxRunning(None),
            create: false,
        });
        s.apply(&Command::SetQueue {
            now_ms: 3,
            queue: "q".into(),
            setting: QueueSetting::Rate(Some(RateLimit {
                per_sec: 2,
                burst: 1,
            })),
            create: false,
        });
        assign(&mut s, b, "w2", 1);
        let c = submit(&mut s, TaskSpec::new("q", b"c".to_vec()));
        let lines = why_id(&s, c, 3).unwrap();
        assert_eq!(
            lines[1],
            WhyLine {
                at_ms: Some(3 + 500),
                text: "queue \"q\" is rate limited (2/s, burst 1): its next start is allowed then"
                    .into()
            }
        );
    }

    #[test]
    fn waiting_tasks_name_their_parents_and_backoff_and_finished_ones_their_end() {
        let mut s = State::new();
        s.apply(&worker("w", 2, &[]));
        let p = submit(&mut s, TaskSpec::new("q", b"p".to_vec()));
        let mut child = TaskSpec::new("q", b"c".to_vec());
        child.depends_on = vec![p];
        let c = submit(&mut s, child);
        assert_eq!(texts(&s, c, 1), ["waits for task 1 (pending)"]);
        assign(&mut s, p, "w", 1);
        let r = s.apply(&Command::Fail {
            now_ms: 10,
            task_id: p,
            worker_id: "w".into(),
            attempt: 1,
            error: "boom".into(),
            retryable: true,
        });
        let Response::AttemptFailed {
            retry_at_ms: Some(at),
            ..
        } = r
        else {
            panic!("{r:?}")
        };
        assert_eq!(at, 510);
        let lines = why_id(&s, p, 10).unwrap();
        assert_eq!(
            lines[1..],
            [
                WhyLine {
                    at_ms: Some(2),
                    text: "attempt 1 started on worker w".into()
                },
                WhyLine {
                    at_ms: Some(10),
                    text: "attempt 1 ended: boom; a backoff of 500 ms before attempt 2".into()
                },
                WhyLine {
                    at_ms: Some(at),
                    text: "attempt 2 of 3 waits out its backoff: 500 ms from now".into()
                },
            ]
        );
        let r = s.apply(&Command::Cancel {
            now_ms: 11,
            task_id: p,
        });
        assert!(matches!(r, Response::Cancelled { .. }));
        assert_eq!(
            why_id(&s, p, 11).unwrap().last().unwrap(),
            &WhyLine {
                at_ms: Some(11),
                text: "cancelled after 1 attempts: cancelled".into()
            }
        );
        assert_eq!(
            texts(&s, c, 11),
            ["failed after 0 attempts: upstream_failed"]
        );
        assert_eq!(why_id(&s, TaskId(99), 11), None);
    }

    /// The history tells every retried attempt: a lost worker, a failure with its backoff,
    /// then the attempt that runs now; beyond the bound it says that earlier ones are gone.
    #[test]
    fn the_history_tells_each_ended_attempt_up_to_its_bound() {
        let mut s = State::new();
        s.apply(&worker("w", 2, &[]));
        let mut spec = TaskSpec::new("q", b"p".to_vec());
        spec.max_attempts = 20;
        let p = submit(&mut s, spec);
        assign(&mut s, p, "w", 1);
        let r = s.apply(&Command::ExpireWorker {
            now_ms: 5,
            worker_id: "w".into(),
            reason: "lease expired".into(),
        });
        assert!(matches!(r, Response::WorkerExpired { .. }), "{r:?}");
        assert_eq!(
            texts(&s, p, 5),
            [
                "attempt 1 started on worker w",
                "attempt 1 ended: worker w lost: lease expired; the task went back to pending at once",
                "cannot run on any registered worker: no registered worker serves queue \"q\"",
            ],
            "the pending task's last error is told once, by the history"
        );
        s.apply(&worker("w", 2, &[]));
        // Attempts 2 to 11 fail at once; each waits out its backoff.
        for attempt in 2..=11 {
            let now = s.clock_ms() + 60_000;
            s.apply(&Command::Tick { now_ms: now });
            let r = s.apply(&Command::Assign {
                now_ms: now,
                task_id: p,
                worker_id: "w".into(),
                attempt,
            });
            assert!(matches!(r, Response::Assigned { .. }), "{r:?}");
            let r = s.apply(&Command::Fail {
                now_ms: now + 1,
                task_id: p,
                worker_id: "w".into(),
                attempt,
                error: format!("e{attempt}"),
                retryable: true,
            });
            assert!(
                matches!(
                    r,
                    Response::AttemptFailed {
                        retry_at_ms: Some(_),
                        ..
                    }
                ),
                "{r:?}"
            );
        }
        let ended = s.ended_attempts(p);
        assert_eq!(ended.len(), MAX_ENDED_ATTEMPTS);
        assert_eq!(
            ended.iter().map(|e| e.attempt).collect::<Vec<_>>(),
            (4..=11).collect::<Vec<_>>()
        );
        let lines = texts(&s, p, s.clock_ms());
        assert_eq!(
            lines[0],
            "attempts 1 to 3 ended earlier (the history keeps the latest 8)"
        );
        assert_eq!(lines[1], "attempt 4 started on worker w");
        assert!(
            lines[2].starts_with("attempt 4 ended: e4; a backoff of "),
            "{lines:?}"
        );
        assert_eq!(lines.len(), 1 + 2 * MAX_ENDED_ATTEMPTS + 1, "{lines:?}");
    }
}
