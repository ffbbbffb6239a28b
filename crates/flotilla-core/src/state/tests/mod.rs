//! Table-driven tests of `apply` and property tests of determinism and invariants.

use proptest::prelude::*;

mod admission;
mod golden;
mod retention;

use super::super::*;
use crate::{CommandError, ImageHeader, ImageRecord, QueueSetting, TaskSpec};

pub(super) fn spec(queue: &str) -> TaskSpec {
    TaskSpec::new(queue, b"echo hi".to_vec())
}

pub(super) fn keyed(queue: &str, key: &str) -> TaskSpec {
    let mut s = spec(queue);
    s.idempotency_key = Some(key.into());
    s
}

pub(super) fn submit(state: &mut State, now_ms: u64, tasks: Vec<TaskSpec>) -> Response {
    state.apply(&Command::submit(now_ms, tasks))
}

pub(super) fn ids(r: &Response) -> Vec<TaskId> {
    match r {
        Response::Submitted { ids, .. } => ids.clone(),
        other => panic!("expected Submitted, got {other:?}"),
    }
}

/// The snapshot image of `state`, encoded record by record as the store does.
pub(super) fn image_bytes(state: &State) -> Vec<u8> {
    let view = state.view();
    let mut out = Vec::new();
    for r in view.records() {
        bincode::serialize_into(&mut out, &r).unwrap();
    }
    out
}

/// The image's records decoded as owned records (proving borrowed and owned encode alike).
pub(super) fn records(state: &State) -> Vec<ImageRecord> {
    state
        .view()
        .records()
        .map(|r| bincode::deserialize(&bincode::serialize(&r).unwrap()).unwrap())
        .collect()
}

/// Snapshot and restore.
pub(super) fn restore(state: &State) -> State {
    State::from_records(records(state)).unwrap()
}

/// The image of `state` with the clock set to `clock_ms`.
pub(super) fn image_with_clock(state: &State, clock_ms: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for mut r in records(state) {
        if let ImageRecord::Header(h) = &mut r {
            h.clock_ms = clock_ms;
        }
        bincode::serialize_into(&mut out, &r).unwrap();
    }
    out
}

#[test]
fn submit_assigns_sequential_ids_and_pending_state() {
    let mut s = State::new();
    let r = submit(&mut s, 10, vec![spec("a"), spec("b"), spec("a")]);
    assert_eq!(
        r,
        Response::Submitted {
            ids: vec![TaskId(1), TaskId(2), TaskId(3)],
            created: vec![true, true, true]
        }
    );
    assert_eq!(s.count(TaskState::Pending), 3);
    assert_eq!(
        s.pending_in("a").collect::<Vec<_>>(),
        vec![TaskId(1), TaskId(3)]
    );
    let t = s.get(TaskId(2)).unwrap();
    assert_eq!(
        (t.state, t.submitted_at_ms, t.attempts),
        (TaskState::Pending, 10, 0)
    );
}

#[test]
fn invalid_batch_is_rejected_whole_and_changes_nothing() {
    let cases: Vec<(Vec<TaskSpec>, &str)> = vec![
        (vec![], "tasks"),
        (vec![spec("ok"), spec("")], "tasks[1].queue"),
        (vec![spec(&"q".repeat(129))], "tasks[0].queue"),
        (vec![spec("bad queue")], "tasks[0].queue"),
        (
            vec![TaskSpec::new("q", vec![0u8; Limits::MAX_PAYLOAD_BYTES + 1])],
            "tasks[0].payload",
        ),
        (
            vec![spec("ok"), {
                let mut t = spec("q");
                t.priority = 1001;
                t
            }],
            "tasks[1].priority",
        ),
        (
            vec![{
                let mut t = spec("q");
                t.depends_on = vec![TaskId(99)];
                t
            }],
            "tasks[0].depends_on",
        ),
        (
            vec![{
                let mut t = spec("q");
                t.max_attempts = 0;
                t
            }],
            "tasks[0].max_attempts",
        ),
        (vec![spec("q"); Limits::MAX_BATCH_TASKS + 1], "tasks"),
    ];
    for (batch, field) in cases {
        let mut s = State::new();
        submit(&mut s, 1, vec![keyed("q", "existing")]);
        let before = image_bytes(&s);
        match submit(&mut s, 1, batch) {
            Response::Rejected(CommandError::Invalid { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected rejection naming {field}, got {other:?}"),
        }
        assert_eq!(
            image_bytes(&s),
            before,
            "rejected batch changed state ({field})"
        );
    }
}

#[test]
fn idempotency_key_returns_original_and_creates_nothing() {
    let mut s = State::new();
    let first = ids(&submit(&mut s, 1, vec![keyed("q", "k1"), keyed("q", "k2")]));
    let r = submit(
        &mut s,
        2,
        vec![keyed("q", "k2"), keyed("q", "k3"), keyed("q", "k3")],
    );
    assert_eq!(
        r,
        Response::Submitted {
            ids: vec![first[1], TaskId(3), TaskId(3)],
            created: vec![false, true, false]
        }
    );
    assert_eq!(s.task_count(), 3);
    assert_eq!(s.task_by_key("k3"), Some(TaskId(3)));
}

#[test]
fn dependencies_wait_and_cancel_cascades_upstream_failed() {
    let mut s = State::new();
    let parent = ids(&submit(&mut s, 1, vec![spec("q")]))[0];
    let mut child = spec("q");
    child.depends_on = vec![parent];
    let child = ids(&submit(&mut s, 2, vec![child]))[0];
    let mut grandchild = spec("q");
    grandchild.depends_on = vec![child, parent, child];
    let grandchild = ids(&submit(&mut s, 3, vec![grandchild]))[0];
    assert_eq!(s.get(child).unwrap().state, TaskState::Waiting);
    assert_eq!(
        s.get(grandchild).unwrap().spec.depends_on,
        vec![parent, child]
    );

    let r = s.apply(&Command::Cancel {
        now_ms: 4,
        task_id: parent,
    });
    assert_eq!(
        r,
        Response::Cancelled {
            task_id: parent,
            previous: TaskState::Pending
        }
    );
    for id in [child, grandchild] {
        let t = s.get(id).unwrap();
        assert_eq!(t.state, TaskState::Failed);
        assert_eq!(t.reason.as_deref(), Some(REASON_UPSTREAM_FAILED));
    }
    // A new task depending on a failed one fails at once.
    let mut late = spec("q");
    late.depends_on = vec![child];
    let late = ids(&submit(&mut s, 5, vec![late]))[0];
    assert_eq!(s.get(late).unwrap().state, TaskState::Failed);
}

#[test]
fn cancel_errors_change_nothing() {
    let mut s = State::new();
    let id = ids(&submit(&mut s, 1, vec![spec("q")]))[0];
    s.apply(&Command::Cancel {
        now_ms: 2,
        task_id: id,
    });
    let before = image_bytes(&s);
    // Cancelling again is an idempotent success that changes nothing.
    assert_eq!(
        s.apply(&Command::Cancel {
            now_ms: 3,
            task_id: id
        }),
        Response::Cancelled {
            task_id: id,
            previous: TaskState::Cancelled
        }
    );

    assert_eq!(
        s.apply(&Command::Cancel {
            now_ms: 3,
            task_id: TaskId(77)
        }),
        Response::Rejected(CommandError::NotFound(TaskId(77)))
    );
    // Only the clock may move.
    assert_eq!(image_with_clock(&s, 2), before);
}

#[test]
fn not_before_waits_for_tick() {
    let mut s = State::new();
    let mut later = spec("q");
    later.not_before_ms = Some(100);
    let id = ids(&submit(&mut s, 10, vec![later]))[0];
    assert_eq!(s.get(id).unwrap().state, TaskState::Waiting);
    assert_eq!(s.next_wakeup_ms(), Some(100));
    assert_eq!(
        s.apply(&Command::Tick { now_ms: 99 }),
        Response::Ticked { promoted: 0 }
    );
    assert_eq!(
        s.apply(&Command::Tick { now_ms: 100 }),
        Response::Ticked { promoted: 1 }
    );
    assert_eq!(s.get(id).unwrap().state, TaskState::Pending);
    assert_eq!(s.next_wakeup_ms(), None);
    // A not_before already in the past is pending at once.
    let mut past = spec("q");
    past.not_before_ms = Some(50);
    let id = ids(&submit(&mut s, 101, vec![past]))[0];
    assert_eq!(s.get(id).unwrap().state, TaskState::Pending);
}

#[test]
fn list_filters_and_paginates() {
    let mut s = State::new();
    submit(&mut s, 1, vec![spec("a"), spec("b"), spec("a"), spec("a")]);
    s.apply(&Command::Cancel {
        now_ms: 2,
        task_id: TaskId(3),
    });
    let page = |after, limit| {
        s.list(Some("a"), Some(TaskState::Pending), after, limit)
            .iter()
            .map(|t| t.id.0)
            .collect::<Vec<_>>()
    };
    assert_eq!(page(None, 10), vec![1, 4]);
    assert_eq!(page(None, 1), vec![1]);
    assert_eq!(page(Some(TaskId(1)), 1), vec![4]);
    assert_eq!(s.list(None, None, None, 100).len(), 4);
}

#[test]
fn image_refuses_inconsistent_input() {
    let mut s = State::new();
    submit(&mut s, 1, vec![spec("a")]);
    let with_header = |edit: &dyn Fn(&mut ImageHeader)| {
        let mut rs = records(&s);
        if let ImageRecord::Header(h) = &mut rs[0] {
            edit(h);
        }
        State::from_records(rs)
    };
    assert!(with_header(&|h| h.next_task_id = 1)
        .unwrap_err()
        .contains("outside the allocated id range"));
    assert!(with_header(&|h| h.version = 99)
        .unwrap_err()
        .contains("version"));
    assert!(with_header(&|h| h.tasks = 5)
        .unwrap_err()
        .contains("header says"));
    let mut rs = records(&s);
    rs.swap(0, 1);
    assert!(State::from_records(rs)
        .unwrap_err()
        .contains("before the header"));
    let mut rs = records(&s);
    let dup = rs[1].clone();
    rs.push(dup);
    assert!(State::from_records(rs)
        .unwrap_err()
        .contains("out of order"));
}

// ---------------------------------------------------------------- property tests

/// Mostly valid specs (an invalid one rejects its whole batch), sometimes depending on
/// earlier tasks, sometimes held back in time, with a few keys that repeat.
fn arb_spec(max_id: u64) -> impl Strategy<Value = TaskSpec> {
    (
        prop_oneof![8 => prop_oneof![Just("a"), Just("b"), Just("c")], 1 => Just("")],
        prop_oneof![9 => -5i32..=5, 1 => -1001i32..=1001],
        proptest::option::of(0u8..6),
        prop_oneof![3 => Just(vec![]), 3 => proptest::collection::vec(1u64..8, 1..3), 1 => proptest::collection::vec(0u64..max_id + 3, 0..3)],
        prop_oneof![3 => Just(None), 1 => proptest::option::of(0u64..200)],
        prop_oneof![9 => 1u32..4, 1 => Just(0u32)],
    )
        .prop_map(|(queue, priority, key, deps, not_before, attempts)| {
            let mut s = TaskSpec::new(queue, vec![1, 2, 3]);
            s.priority = priority;
            s.idempotency_key = key.map(|k| format!("key-{k}"));
            s.depends_on = deps.into_iter().map(TaskId).collect();
            s.not_before_ms = not_before;
            s.max_attempts = attempts;
            s
        })
}

fn arb_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        4 => (0u64..200, proptest::collection::vec(arb_spec(30), 0..3), proptest::option::of(1u64..25), proptest::option::of(1u64..12))
            .prop_map(|(now_ms, tasks, max_pending, max_pending_per_queue)| Command::Submit {
                now_ms,
                tasks,
                limits: crate::AdmissionLimits { max_pending, max_pending_per_queue },
            }),
        1 => (0u64..200, 0u64..40).prop_map(|(now_ms, id)| Command::Cancel { now_ms, task_id: TaskId(id) }),
        1 => (0u64..250).prop_map(|now_ms| Command::Tick { now_ms }),
        2 => (0u64..200, 0usize..3, 0u32..3, prop_oneof![5 => 1u32..4, 1 => Just(0u32)]).prop_map(|(now_ms, w, session, slots)| Command::RegisterWorker {
            now_ms,
            worker: crate::WorkerSpec {
                id: format!("w{w}"),
                session: format!("s{session}"),
                capacity: crate::Capacity { slots, cpu_millis: 1000, mem_mb: 1000 },
                labels: Default::default(),
                queues: if w == 2 { vec!["a".into()] } else { vec![] },
            },
        }),
        3 => (0u64..200, 0u64..40, 0usize..3, 0u32..4).prop_map(|(now_ms, id, w, attempt)| Command::Assign {
            now_ms, task_id: TaskId(id), worker_id: format!("w{w}"), attempt,
        }),
        2 => (0u64..200, 0u64..40, 0usize..3, 0u32..4).prop_map(|(now_ms, id, w, attempt)| Command::Complete {
            now_ms, task_id: TaskId(id), worker_id: format!("w{w}"), attempt, result: vec![7],
        }),
        2 => (0u64..200, 0u64..40, 0usize..3, 0u32..4, any::<bool>()).prop_map(|(now_ms, id, w, attempt, retryable)| Command::Fail {
            now_ms, task_id: TaskId(id), worker_id: format!("w{w}"), attempt, error: "boom".into(), retryable,
        }),
        1 => (0u64..200, 0u64..40, 0usize..3, 0u32..4).prop_map(|(now_ms, id, w, attempt)| Command::SaveCheckpoint {
            now_ms, task_id: TaskId(id), worker_id: format!("w{w}"), attempt, progress_permille: 10, data: vec![1],
        }),
        1 => (0u64..200, 0usize..3).prop_map(|(now_ms, w)| Command::ExpireWorker {
            now_ms, worker_id: format!("w{w}"), reason: "lease".into(),
        }),
        2 => (0u64..250, 1u64..60, 1u64..120, 1u32..6).prop_map(|(now_ms, retention_ms, key_retention_ms, max_removals)| Command::Sweep {
            now_ms, retention_ms, key_retention_ms, max_removals,
        }),
        1 => (0u64..200, prop_oneof![Just("a"), Just("b"), Just("x")], 0u8..5, any::<bool>()).prop_map(|(now_ms, queue, what, create)| Command::SetQueue {
            now_ms,
            queue: queue.into(),
            setting: match what {
                0 => QueueSetting::Policy(crate::QueuePolicy::Fifo),
                1 => QueueSetting::Policy(crate::QueuePolicy::Priority { aging_ms: 20 }),
                2 => QueueSetting::Policy(crate::QueuePolicy::ShortestJobFirst),
                3 => QueueSetting::RetentionMs(Some(15)),
                _ => QueueSetting::RetentionMs(None),
            },
            create,
        }),
    ]
}

/// A step of a generated run: a raw command (mostly rejected, which is worth testing too), or
/// an intent resolved against the state it is applied to — assign a pending task to a
/// registered worker with the right attempt, complete or fail a running attempt as its worker
/// — so that runs reach the accepted paths, not only the rejections.
#[derive(Debug, Clone)]
enum Step {
    Raw(Command),
    /// Submit valid specs whose dependencies (given as picks) are resolved to existing tasks.
    Submit(u64, Vec<(TaskSpec, Vec<usize>)>),
    Assign(usize, u64),
    Complete(usize, u64),
    Fail(usize, u64, bool),
    /// Cancel an unfinished task (one that others may wait on).
    Cancel(usize, u64),
}

impl Step {
    fn resolve(&self, s: &State) -> Command {
        let pick = |state: TaskState, i: usize| {
            let tasks = s.list(None, Some(state), None, usize::MAX);
            (!tasks.is_empty()).then(|| tasks[i % tasks.len()].clone())
        };
        let fallback = |now_ms| Command::Tick { now_ms };
        match self {
            Step::Raw(c) => c.clone(),
            Step::Submit(now_ms, specs) => {
                let existing: Vec<TaskId> = s
                    .list(None, None, None, usize::MAX)
                    .iter()
                    .map(|t| t.id)
                    .collect();
                let tasks = specs
                    .iter()
                    .map(|(spec, picks)| {
                        let mut spec = spec.clone();
                        if !existing.is_empty() {
                            spec.depends_on = picks
                                .iter()
                                .map(|p| existing[existing.len() - 1 - p % existing.len()])
                                .collect();
                        }
                        spec
                    })
                    .collect();
                Command::submit(*now_ms, tasks)
            }
            Step::Assign(i, now_ms) => {
                let workers: Vec<_> = s.workers().map(|w| w.spec.id.clone()).collect();
                match pick(TaskState::Pending, *i) {
                    Some(t) if !workers.is_empty() => Command::Assign {
                        now_ms: *now_ms,
                        task_id: t.id,
                        worker_id: workers[i % workers.len()].clone(),
                        attempt: t.attempts + 1,
                    },
                    _ => fallback(*now_ms),
                }
            }
            Step::Complete(i, now_ms) => match pick(TaskState::Running, *i) {
                Some(t) => Command::Complete {
                    now_ms: *now_ms,
                    task_id: t.id,
                    worker_id: t.worker.clone().unwrap_or_default(),
                    attempt: t.attempts,
                    result: vec![7],
                },
                None => fallback(*now_ms),
            },
            Step::Fail(i, now_ms, retryable) => match pick(TaskState::Running, *i) {
                Some(t) => Command::Fail {
                    now_ms: *now_ms,
                    task_id: t.id,
                    worker_id: t.worker.clone().unwrap_or_default(),
                    attempt: t.attempts,
                    error: "boom".into(),
                    retryable: *retryable,
                },
                None => fallback(*now_ms),
            },
            Step::Cancel(i, now_ms) => {
                let live: Vec<_> = s
                    .list(None, None, None, usize::MAX)
                    .into_iter()
                    .filter(|t| !t.state.is_terminal())
                    .collect();
                match live.get(i % live.len().max(1)) {
                    Some(t) => Command::Cancel {
                        now_ms: *now_ms,
                        task_id: t.id,
                    },
                    None => fallback(*now_ms),
                }
            }
        }
    }
}

fn arb_valid_spec() -> impl Strategy<Value = (TaskSpec, Vec<usize>)> {
    (
        prop_oneof![Just("a"), Just("b"), Just("c")],
        -3i32..=3,
        proptest::option::of(0u8..6),
        prop_oneof![2 => Just(vec![]), 1 => proptest::collection::vec(0usize..4, 1..3)],
        prop_oneof![3 => Just(None), 1 => proptest::option::of(0u64..200)],
        1u32..4,
    )
        .prop_map(|(queue, priority, key, picks, not_before, attempts)| {
            let mut s = TaskSpec::new(queue, vec![1, 2, 3]);
            s.priority = priority;
            s.idempotency_key = key.map(|k| format!("key-{k}"));
            s.not_before_ms = not_before;
            s.max_attempts = attempts;
            (s, picks)
        })
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u64..200, proptest::collection::vec(arb_valid_spec(), 1..3)).prop_map(|(t, specs)| Step::Submit(t, specs)),
        6 => arb_command().prop_map(Step::Raw),
        3 => (0usize..50, 0u64..200).prop_map(|(i, t)| Step::Assign(i, t)),
        2 => (0usize..50, 0u64..200).prop_map(|(i, t)| Step::Complete(i, t)),
        2 => (0usize..50, 0u64..200, any::<bool>()).prop_map(|(i, t, r)| Step::Fail(i, t, r)),
        1 => (0usize..50, 0u64..200).prop_map(|(i, t)| Step::Cancel(i, t)),
    ]
}

/// How often a run reached the paths worth testing; a property whose generator stops
/// reaching them fails instead of passing vacuously.
#[derive(Default, Debug)]
struct Reached {
    completed: std::cell::Cell<u32>,
    retried: std::cell::Cell<u32>,
    cascaded: std::cell::Cell<u32>,
    swept: std::cell::Cell<u32>,
    tombstoned: std::cell::Cell<u32>,
    key_from_tombstone: std::cell::Cell<u32>,
    limited: std::cell::Cell<u32>,
    rejected: std::cell::Cell<u32>,
}

impl Reached {
    fn bump(c: &std::cell::Cell<u32>) {
        c.set(c.get() + 1);
    }

    /// Counts what `r`, the response to `c` on the state before (`prev`), shows.
    fn note(&self, prev: &State, c: &Command, r: &Response, after: &State) {
        match r {
            Response::Completed { .. } => Self::bump(&self.completed),
            Response::AttemptFailed {
                retry_at_ms: Some(_),
                ..
            } => Self::bump(&self.retried),
            Response::Swept {
                removed,
                tombstoned,
                ..
            } => {
                if *removed > 0 {
                    Self::bump(&self.swept);
                }
                if *tombstoned > 0 {
                    Self::bump(&self.tombstoned);
                }
            }
            Response::Rejected(CommandError::LimitExceeded { .. }) => Self::bump(&self.limited),
            Response::Rejected(_) => Self::bump(&self.rejected),
            Response::Submitted { ids, created } => {
                for (id, new) in ids.iter().zip(created) {
                    if !new && matches!(prev.lookup(*id), crate::Lookup::Removed(Some(_))) {
                        Self::bump(&self.key_from_tombstone);
                    }
                }
            }
            _ => {}
        }
        let upstream = |s: &State| {
            s.list(None, Some(TaskState::Failed), None, usize::MAX)
                .iter()
                .filter(|t| t.reason.as_deref() == Some(crate::REASON_UPSTREAM_FAILED))
                .count()
        };
        if !matches!(c, Command::Submit { .. }) && upstream(after) > upstream(prev) {
            Self::bump(&self.cascaded);
        }
    }

    fn assert_reached(&self, what: &str) {
        eprintln!("{what}: {self:?}");
        for (name, n) in [
            ("accepted completion", &self.completed),
            ("retry after failure", &self.retried),
            ("dependency cascade", &self.cascaded),
            ("sweep removing tasks", &self.swept),
            ("tombstone left", &self.tombstoned),
            (
                "resubmit answered from a tombstone",
                &self.key_from_tombstone,
            ),
            ("admission limit", &self.limited),
            ("rejection", &self.rejected),
        ] {
            assert!(
                n.get() >= 10,
                "{what}: the generator reached {name} only {} times: {self:?}",
                n.get()
            );
        }
    }
}

fn runner(cases: u32) -> proptest::test_runner::TestRunner {
    proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(cases))
}

/// The same log applied to two fresh states gives byte-identical snapshots and responses.
#[test]
fn apply_is_deterministic() {
    let reached = Reached::default();
    runner(256)
        .run(&proptest::collection::vec(arb_step(), 0..120), |steps| {
            let (mut a, mut b) = (State::new(), State::new());
            for step in &steps {
                let c = &step.resolve(&a);
                let before = a.clone();
                let r = a.apply(c);
                prop_assert_eq!(&r, &b.apply(c));
                reached.note(&before, c, &r, &a);
            }
            prop_assert_eq!(image_bytes(&a), image_bytes(&b));
            Ok(())
        })
        .unwrap();
    reached.assert_reached("apply_is_deterministic");
}

/// Snapshot -> restore -> continue equals continue.
#[test]
fn restore_then_continue_equals_continue() {
    let reached = Reached::default();
    let strategy = (
        proptest::collection::vec(arb_step(), 0..80),
        proptest::collection::vec(arb_step(), 0..80),
    );
    runner(256)
        .run(&strategy, |(prefix, suffix)| {
            let mut live = State::new();
            for step in &prefix {
                let c = step.resolve(&live);
                live.apply(&c);
            }
            let mut restored = restore(&live);
            prop_assert_eq!(image_bytes(&live), image_bytes(&restored));
            for step in &suffix {
                let c = &step.resolve(&live);
                let before = live.clone();
                let r = live.apply(c);
                prop_assert_eq!(&r, &restored.apply(c));
                reached.note(&before, c, &r, &live);
            }
            prop_assert_eq!(image_bytes(&live), image_bytes(&restored));
            restored.check_invariants().map_err(TestCaseError::fail)?;
            Ok(())
        })
        .unwrap();
    reached.assert_reached("restore_then_continue_equals_continue");
}

/// Random command sequences never break invariants (capacity included), a rejected command
/// changes nothing but what the passing of time does (a Tick to the same time), and no task
/// ever succeeds twice or leaves a terminal state (until retention removes it).
#[test]
fn invariants_hold_and_rejections_change_nothing() {
    let reached = Reached::default();
    runner(256)
        .run(&proptest::collection::vec(arb_step(), 0..150), |steps| {
            let mut s = State::new();
            let mut terminal: std::collections::BTreeMap<TaskId, TaskState> = Default::default();
            for step in &steps {
                let c = &step.resolve(&s);
                let mut only_time = s.clone();
                only_time.apply(&Command::Tick { now_ms: c.now_ms() });
                let before = s.clone();
                let r = s.apply(c);
                reached.note(&before, c, &r, &s);
                s.check_invariants().map_err(TestCaseError::fail)?;
                if let Response::Rejected(_) = r {
                    prop_assert_eq!(image_bytes(&s), image_bytes(&only_time));
                }
                let total: u64 = TaskState::ALL.iter().map(|st| s.count(*st)).sum();
                prop_assert_eq!(total as usize, s.task_count());
                for t in s.list(None, None, None, usize::MAX) {
                    if let Some(prev) = terminal.get(&t.id) {
                        prop_assert_eq!(*prev, t.state, "task {} left terminal state", t.id);
                    } else if t.state.is_terminal() {
                        terminal.insert(t.id, t.state);
                    }
                }
                // A terminal task may only disappear through retention, never come back.
                for id in terminal.keys() {
                    if !matches!(s.lookup(*id), crate::Lookup::Task(_)) {
                        let by_sweep = matches!(c, Command::Sweep { .. });
                        let was_there = matches!(before.lookup(*id), crate::Lookup::Task(_));
                        prop_assert!(by_sweep || !was_there, "task {} vanished", id);
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    reached.assert_reached("invariants_hold_and_rejections_change_nothing");
}

// ---------------------------------------------------------------- workers and attempts

pub(super) fn wspec(id: &str, slots: u32) -> crate::WorkerSpec {
    crate::WorkerSpec {
        id: id.into(),
        session: format!("session-{id}"),
        capacity: crate::Capacity {
            slots,
            cpu_millis: 4000,
            mem_mb: 4096,
        },
        labels: Default::default(),
        queues: vec![],
    }
}

fn running_task(s: &mut State, worker: &str, max_attempts: u32) -> TaskId {
    let mut t = spec("q");
    t.max_attempts = max_attempts;
    let id = ids(&submit(s, 1, vec![t]))[0];
    if s.worker(worker).is_none() {
        s.apply(&Command::RegisterWorker {
            now_ms: 1,
            worker: wspec(worker, 4),
        });
    }
    let attempt = s.get(id).unwrap().attempts + 1;
    let r = s.apply(&Command::Assign {
        now_ms: 2,
        task_id: id,
        worker_id: worker.into(),
        attempt,
    });
    assert_eq!(
        r,
        Response::Assigned {
            task_id: id,
            attempt
        }
    );
    id
}

#[test]
fn stale_or_foreign_completion_is_rejected_and_changes_nothing() {
    let mut s = State::new();
    let id = running_task(&mut s, "w1", 3);
    s.apply(&Command::RegisterWorker {
        now_ms: 2,
        worker: wspec("w2", 1),
    });
    // The worker is lost; the task goes back to pending and runs again as attempt 2 on w2.
    let r = s.apply(&Command::ExpireWorker {
        now_ms: 3,
        worker_id: "w1".into(),
        reason: "lease".into(),
    });
    assert_eq!(
        r,
        Response::WorkerExpired {
            worker_id: "w1".into(),
            requeued: vec![id],
            failed: vec![]
        }
    );
    s.apply(&Command::Assign {
        now_ms: 4,
        task_id: id,
        worker_id: "w2".into(),
        attempt: 2,
    });
    let before = image_bytes(&s);
    let late = Command::Complete {
        now_ms: 4,
        task_id: id,
        worker_id: "w1".into(),
        attempt: 1,
        result: b"old".to_vec(),
    };
    assert_eq!(
        s.apply(&late),
        Response::Rejected(CommandError::StaleAttempt {
            task_id: id,
            attempt: 1,
            current: 2
        })
    );
    let wrong_worker = Command::Complete {
        now_ms: 4,
        task_id: id,
        worker_id: "w1".into(),
        attempt: 2,
        result: vec![],
    };
    assert!(matches!(
        s.apply(&wrong_worker),
        Response::Rejected(CommandError::WrongState { .. })
    ));
    let unknown = Command::Complete {
        now_ms: 4,
        task_id: TaskId(99),
        worker_id: "w2".into(),
        attempt: 1,
        result: vec![],
    };
    assert_eq!(
        s.apply(&unknown),
        Response::Rejected(CommandError::NotFound(TaskId(99)))
    );
    assert_eq!(image_bytes(&s), before);
    // The current attempt succeeds, once; the same completion retried (its reply lost) is
    // acknowledged again and changes nothing; the same attempt claimed by another worker, or
    // with another result, is not applied.
    let ok = Command::Complete {
        now_ms: 5,
        task_id: id,
        worker_id: "w2".into(),
        attempt: 2,
        result: b"new".to_vec(),
    };
    assert_eq!(s.apply(&ok), Response::Completed { task_id: id });
    let done = image_bytes(&s);
    assert_eq!(s.apply(&ok), Response::Completed { task_id: id });
    assert_eq!(image_bytes(&s), done);
    let foreign = Command::Complete {
        now_ms: 5,
        task_id: id,
        worker_id: "w1".into(),
        attempt: 2,
        result: b"forged".to_vec(),
    };
    assert!(matches!(
        s.apply(&foreign),
        Response::Rejected(CommandError::WrongState { .. })
    ));
    assert_eq!(image_bytes(&s), done);
    let t = s.get(id).unwrap();
    assert_eq!(
        (t.state, t.result.as_deref(), t.worker.as_deref()),
        (TaskState::Succeeded, Some(&b"new"[..]), None)
    );
    // A finished task cannot be cancelled (only a cancelled one, idempotently).
    assert!(matches!(
        s.apply(&Command::Cancel {
            now_ms: 6,
            task_id: id
        }),
        Response::Rejected(CommandError::WrongState {
            state: TaskState::Succeeded,
            ..
        })
    ));
}

#[test]
fn failures_retry_with_backoff_then_dead_letter() {
    let mut s = State::new();
    let id = running_task(&mut s, "w", 2);
    let r = s.apply(&Command::Fail {
        now_ms: 10,
        task_id: id,
        worker_id: "w".into(),
        attempt: 1,
        error: "exit 1".into(),
        retryable: true,
    });
    assert_eq!(
        r,
        Response::AttemptFailed {
            task_id: id,
            retry_at_ms: Some(10 + Limits::RETRY_BACKOFF_BASE_MS)
        }
    );
    assert_eq!(s.get(id).unwrap().state, TaskState::Waiting);
    s.apply(&Command::Tick {
        now_ms: 10 + Limits::RETRY_BACKOFF_BASE_MS,
    });
    assert_eq!(s.get(id).unwrap().state, TaskState::Pending);
    s.apply(&Command::Assign {
        now_ms: 600,
        task_id: id,
        worker_id: "w".into(),
        attempt: 2,
    });
    let r = s.apply(&Command::Fail {
        now_ms: 700,
        task_id: id,
        worker_id: "w".into(),
        attempt: 2,
        error: "exit 2".into(),
        retryable: true,
    });
    assert_eq!(
        r,
        Response::AttemptFailed {
            task_id: id,
            retry_at_ms: None
        }
    );
    let t = s.get(id).unwrap();
    assert_eq!(
        (t.state, t.reason.as_deref()),
        (TaskState::Failed, Some("exit 2"))
    );
    // A worker lost on the last attempt dead-letters the task too.
    let last = running_task(&mut s, "w", 1);
    let r = s.apply(&Command::ExpireWorker {
        now_ms: 800,
        worker_id: "w".into(),
        reason: "lease expired".into(),
    });
    assert_eq!(
        r,
        Response::WorkerExpired {
            worker_id: "w".into(),
            requeued: vec![],
            failed: vec![last]
        }
    );
    assert!(s
        .get(last)
        .unwrap()
        .reason
        .as_deref()
        .unwrap()
        .contains("lease expired"));
}

#[test]
fn checkpoint_reaches_the_next_attempt_and_children_run_after_parent() {
    let mut s = State::new();
    let parent = running_task(&mut s, "w", 3);
    let mut child = spec("q");
    child.depends_on = vec![parent];
    let child = ids(&submit(&mut s, 3, vec![child]))[0];
    s.apply(&Command::SaveCheckpoint {
        now_ms: 4,
        task_id: parent,
        worker_id: "w".into(),
        attempt: 1,
        progress_permille: 500,
        data: b"half".to_vec(),
    });
    s.apply(&Command::ExpireWorker {
        now_ms: 5,
        worker_id: "w".into(),
        reason: "gone".into(),
    });
    s.apply(&Command::RegisterWorker {
        now_ms: 6,
        worker: wspec("w", 2),
    });
    s.apply(&Command::Assign {
        now_ms: 6,
        task_id: parent,
        worker_id: "w".into(),
        attempt: 2,
    });
    let cp = s.get(parent).unwrap().checkpoint.clone().unwrap();
    assert_eq!(
        (cp.attempt, cp.progress_permille, cp.data),
        (1, 500, b"half".to_vec())
    );
    assert_eq!(s.get(child).unwrap().state, TaskState::Waiting);
    s.apply(&Command::Complete {
        now_ms: 7,
        task_id: parent,
        worker_id: "w".into(),
        attempt: 2,
        result: vec![],
    });
    assert_eq!(s.get(child).unwrap().state, TaskState::Pending);
}

#[test]
fn worker_registration_rules() {
    let mut s = State::new();
    let mut zero = wspec("w", 0);
    assert!(matches!(
        s.apply(&Command::RegisterWorker {
            now_ms: 1,
            worker: zero.clone()
        }),
        Response::Rejected(CommandError::Invalid { .. })
    ));
    zero.capacity.slots = 2;
    assert_eq!(
        s.apply(&Command::RegisterWorker {
            now_ms: 1,
            worker: zero.clone()
        }),
        Response::WorkerRegistered {
            worker_id: "w".into(),
            resumed: false
        }
    );
    assert_eq!(
        s.apply(&Command::RegisterWorker {
            now_ms: 2,
            worker: zero.clone()
        }),
        Response::WorkerRegistered {
            worker_id: "w".into(),
            resumed: true
        }
    );
    zero.session = "another process".into();
    assert_eq!(
        s.apply(&Command::RegisterWorker {
            now_ms: 2,
            worker: zero
        }),
        Response::Rejected(CommandError::DuplicateWorker("w".into()))
    );
    // Capacity is enforced by apply, whatever the planner said.
    let a = running_task(&mut s, "w", 1);
    let _b = running_task(&mut s, "w", 1);
    let c = ids(&submit(&mut s, 3, vec![spec("q")]))[0];
    assert!(matches!(
        s.apply(&Command::Assign {
            now_ms: 3,
            task_id: c,
            worker_id: "w".into(),
            attempt: 1
        }),
        Response::Rejected(CommandError::DoesNotFit { .. })
    ));
    // Cancelling a running task frees its slot.
    s.apply(&Command::Cancel {
        now_ms: 4,
        task_id: a,
    });
    assert_eq!(s.worker_usage("w").slots, 1);
}
