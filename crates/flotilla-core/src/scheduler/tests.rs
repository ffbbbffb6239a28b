//! Property tests of the pure scheduler: capacity, constraints, policy order, stability.
//!
//! Each property counts in how many runs it reached the paths it is about (plans that assign
//! and plans that leave tasks waiting, a full worker, a completion freeing a slot that the next
//! plan fills, a retry planned after a failure, an attempt timed out, a policy choosing other
//! than submission order) and fails when fewer than [`FLOOR_PERCENT`] of the runs reach one:
//! a generator that stops producing workers or conflicts would otherwise pass on empty plans.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::test_runner::TestRunner;

use super::*;
use crate::reached::Reached;
use crate::{Limits, QueuePolicy, QueueSetting, Response, TaskSpec, WorkerSpec};

/// Runs per property.
const RUNS: u32 = 256;

fn worker(id: &str, slots: u32, cpu: u32, mem: u32, gpu: bool, queues: &[&str]) -> WorkerSpec {
    let mut labels = BTreeMap::new();
    if gpu {
        labels.insert("gpu".to_string(), "yes".to_string());
    }
    WorkerSpec {
        id: id.into(),
        session: format!("s-{id}"),
        capacity: Capacity {
            slots,
            cpu_millis: cpu,
            mem_mb: mem,
        },
        labels,
        queues: queues.iter().map(|q| q.to_string()).collect(),
    }
}

/// Applies a plan; every planned command must be accepted.
fn apply_all(state: &mut State, cmds: &[Command]) -> Result<(), TestCaseError> {
    for c in cmds {
        let r = state.apply(c);
        prop_assert!(
            !matches!(r, Response::Rejected(_)),
            "plan produced a rejected command {c:?}: {r:?}"
        );
    }
    Ok(())
}

fn arb_task() -> impl Strategy<Value = TaskSpec> {
    (
        0usize..3,
        -5i32..5,
        proptest::option::of(1u64..100),
        0u32..1500,
        0u32..600,
        any::<bool>(),
        prop_oneof![2 => Just(None), 1 => (1u64..100).prop_map(Some)],
    )
        .prop_map(|(q, prio, est, cpu, mem, gpu, timeout)| {
            let mut t = TaskSpec::new(["a", "b", "c"][q], vec![]);
            t.priority = prio;
            t.estimate_ms = est;
            t.resources.cpu_millis = cpu;
            t.resources.mem_mb = mem;
            t.timeout_ms = timeout;
            if gpu {
                t.labels.insert("gpu".into(), "yes".into());
            }
            t
        })
}

fn arb_worker(i: usize) -> impl Strategy<Value = WorkerSpec> {
    (
        1u32..4,
        500u32..3000,
        200u32..2000,
        any::<bool>(),
        proptest::sample::subsequence(vec!["a", "b", "c"], 0..3),
    )
        .prop_map(move |(slots, cpu, mem, gpu, queues)| {
            worker(&format!("w{i}"), slots, cpu, mem, gpu, &queues)
        })
}

/// Every planned command is accepted by apply, capacity is never exceeded (checked by the
/// state's invariants), constraints hold, and planning again adds no assignment — on a fresh
/// cluster, and again after some attempts completed, failed or overran their timeout.
#[test]
fn plan_respects_capacity_and_is_stable() {
    let reached = RefCell::new(Reached::default());
    let strategy = (
        proptest::collection::vec(arb_task(), 1..40),
        arb_worker(0),
        arb_worker(1),
        arb_worker(2),
        any::<bool>(),
    );
    TestRunner::new(ProptestConfig::with_cases(RUNS))
        .run(&strategy, |(tasks, w0, w1, w2, spread)| {
            let mut paths = BTreeSet::new();
            let mut s = State::new();
            let n = tasks.len();
            let r = s.apply(&Command::submit(1, tasks));
            prop_assert!(
                matches!(&r, Response::Submitted { ids, .. } if ids.len() == n),
                "{r:?}"
            );
            let mut live = BTreeSet::new();
            for w in [w0, w1, w2] {
                live.insert(w.id.clone());
                let r = s.apply(&Command::RegisterWorker {
                    now_ms: 1,
                    worker: w,
                });
                prop_assert!(matches!(r, Response::WorkerRegistered { .. }), "{r:?}");
            }
            let cfg = PlanConfig {
                placement: if spread {
                    Placement::Spread
                } else {
                    Placement::BinPack
                },
                ..Default::default()
            };
            let check = |s: &State, now_ms: u64| -> Result<(), TestCaseError> {
                s.check_invariants().map_err(TestCaseError::fail)?;
                for t in s.list(None, Some(TaskState::Running), None, usize::MAX) {
                    let w = s.worker(t.worker.as_deref().unwrap()).unwrap();
                    prop_assert!(w.spec.serves(&t.spec.queue));
                    prop_assert!(w.spec.matches(&t.spec.labels));
                }
                let again = plan(s, now_ms, &live, &cfg);
                prop_assert!(
                    again.iter().all(|c| !matches!(c, Command::Assign { .. })),
                    "second plan assigned more: {again:?}"
                );
                // Nothing is assigned to a worker that is not live.
                let none_live = plan(s, now_ms, &BTreeSet::new(), &cfg);
                let assigns = none_live
                    .iter()
                    .filter(|c| matches!(c, Command::Assign { .. }))
                    .count();
                prop_assert_eq!(assigns, 0);
                Ok(())
            };

            // Round 1: a fresh cluster.
            let first = plan(&s, 2, &live, &cfg);
            apply_all(&mut s, &first)?;
            check(&s, 2)?;
            if !first.is_empty() {
                paths.insert("plan assigning");
            }
            if s.count(TaskState::Pending) > 0 {
                paths.insert("tasks left pending");
                let full = s
                    .workers()
                    .any(|w| s.worker_usage(&w.spec.id).slots == w.spec.capacity.slots);
                if full {
                    paths.insert("a worker's slots exhausted");
                }
            }

            // Round 2: of the running attempts, one in three completes, one in three fails
            // (retryable), the rest keep running and overrun their timeout, if any.
            let mut finished = 0;
            for t in s.list(None, Some(TaskState::Running), None, usize::MAX) {
                let (worker_id, attempt) = (t.worker.clone().unwrap(), t.attempts);
                match t.id.0 % 3 {
                    0 => {
                        let r = s.apply(&Command::Complete {
                            now_ms: 3,
                            task_id: t.id,
                            worker_id,
                            attempt,
                            result: vec![],
                        });
                        prop_assert_eq!(r, Response::Completed { task_id: t.id });
                        finished += 1;
                    }
                    1 => {
                        let r = s.apply(&Command::Fail {
                            now_ms: 3,
                            task_id: t.id,
                            worker_id,
                            attempt,
                            error: "exit 1".into(),
                            retryable: true,
                        });
                        prop_assert!(
                            matches!(
                                r,
                                Response::AttemptFailed {
                                    retry_at_ms: Some(_),
                                    ..
                                }
                            ),
                            "{r:?}"
                        );
                        finished += 1;
                    }
                    _ => {}
                }
            }
            let later = 3 + Limits::RETRY_BACKOFF_BASE_MS;
            let r = s.apply(&Command::Tick { now_ms: later });
            prop_assert!(matches!(r, Response::Ticked { .. }), "{r:?}");
            // Timeouts free their slots only once applied, so the plan after one may assign
            // more; a plan without timeouts must be the last that assigns.
            let mut second = plan(&s, later, &live, &cfg);
            apply_all(&mut s, &second)?;
            if second.iter().any(|c| matches!(c, Command::Fail { .. })) {
                let more = plan(&s, later, &live, &cfg);
                let only_assigns = more.iter().all(|c| matches!(c, Command::Assign { .. }));
                prop_assert!(only_assigns, "{more:?}");
                apply_all(&mut s, &more)?;
                second.extend(more);
            }
            check(&s, later)?;
            for c in &second {
                match c {
                    Command::Assign { attempt: 1, .. } if finished > 0 => {
                        paths.insert("a freed slot filled by a new task");
                    }
                    Command::Assign { attempt: 2.., .. } => {
                        paths.insert("a retry planned after a failure");
                    }
                    Command::Fail { .. } => {
                        paths.insert("an overrun attempt timed out");
                    }
                    _ => {}
                }
            }
            reached.borrow_mut().add(paths);
            Ok(())
        })
        .unwrap();
    reached.borrow().assert_reached(
        "plan_respects_capacity_and_is_stable",
        &[
            "plan assigning",
            "tasks left pending",
            "a worker's slots exhausted",
            "a freed slot filled by a new task",
            "a retry planned after a failure",
            "an overrun attempt timed out",
        ],
    );
}

/// With one free slot, the task chosen is the first in the queue's policy order.
#[test]
fn plan_follows_policy_order() {
    let reached = RefCell::new(Reached::default());
    // Weighted towards priority, aging most: the choices that differ from submission order.
    let policy = prop_oneof![
        1 => Just(QueuePolicy::Fifo),
        2 => Just(QueuePolicy::Priority { aging_ms: 0 }),
        3 => (1u64..3).prop_map(|a| QueuePolicy::Priority { aging_ms: a * 50 }),
        1 => Just(QueuePolicy::ShortestJobFirst),
    ];
    let strategy = (proptest::collection::vec(arb_task(), 1..20), policy);
    TestRunner::new(ProptestConfig::with_cases(RUNS))
        .run(&strategy, |(tasks, policy)| {
            let mut paths = BTreeSet::new();
            let mut s = State::new();
            let tasks: Vec<TaskSpec> = tasks
                .into_iter()
                .map(|mut t| {
                    t.queue = "a".into();
                    t.labels.clear();
                    t.resources = Default::default();
                    t
                })
                .collect();
            // Submit one by one at increasing times so aging has something to work on.
            for (i, t) in tasks.iter().enumerate() {
                let r = s.apply(&Command::submit(i as u64 * 40, vec![t.clone()]));
                prop_assert!(matches!(r, Response::Submitted { .. }), "{r:?}");
            }
            let r = s.apply(&Command::SetQueue {
                now_ms: 1000,
                queue: "a".into(),
                setting: QueueSetting::Policy(policy),
                create: false,
            });
            prop_assert_eq!(r, Response::QueueSet);
            let r = s.apply(&Command::RegisterWorker {
                now_ms: 1000,
                worker: worker("w", 1, 0, 0, false, &[]),
            });
            prop_assert!(matches!(r, Response::WorkerRegistered { .. }), "{r:?}");
            let live: BTreeSet<String> = ["w".to_string()].into();
            let cmds = plan(&s, 1000, &live, &PlanConfig::default());
            prop_assert_eq!(cmds.len(), 1);
            let Command::Assign { task_id, .. } = &cmds[0] else {
                panic!("expected an assignment")
            };
            let chosen = s.get(*task_id).unwrap();
            let pending = s.list(None, Some(TaskState::Pending), None, usize::MAX);
            // Priority aging's effective priority p + (now - submitted) / aging, compared
            // exactly (times aging): continuous aging, so the order never depends on when one
            // looks.
            let eff = |x: &Task, aging_ms: u64| {
                x.spec.priority as i64 * aging_ms.max(1) as i64
                    + if aging_ms == 0 {
                        0
                    } else {
                        1000 - x.submitted_at_ms as i64
                    }
            };
            for t in &pending {
                let chosen = &chosen;
                let better = match policy {
                    QueuePolicy::Fifo => t.id < chosen.id,
                    QueuePolicy::Priority { aging_ms } => {
                        eff(t, aging_ms) > eff(chosen, aging_ms)
                            || (eff(t, aging_ms) == eff(chosen, aging_ms) && t.id < chosen.id)
                    }
                    QueuePolicy::ShortestJobFirst => {
                        let est = |x: &Task| x.spec.estimate_ms.unwrap_or(u64::MAX);
                        est(t) < est(chosen) || (est(t) == est(chosen) && t.id < chosen.id)
                    }
                };
                prop_assert!(
                    !better,
                    "task {} should have gone before {} under {:?}",
                    t.id,
                    chosen.id,
                    policy
                );
            }
            // Which choices the run put to the test: one other than submission order, and
            // for aging, one other than plain priority.
            let first_submitted = pending.iter().map(|t| t.id).min();
            let by_priority = pending
                .iter()
                .max_by_key(|t| (t.spec.priority, std::cmp::Reverse(t.id)))
                .map(|t| t.id);
            match policy {
                QueuePolicy::Fifo if pending.len() > 1 => {
                    paths.insert("fifo among several");
                }
                QueuePolicy::Priority { aging_ms: 0 } if Some(chosen.id) != first_submitted => {
                    paths.insert("priority over submission order");
                }
                QueuePolicy::Priority { .. } if Some(chosen.id) != by_priority => {
                    paths.insert("aging over plain priority");
                }
                QueuePolicy::ShortestJobFirst if Some(chosen.id) != first_submitted => {
                    paths.insert("shortest job over submission order");
                }
                _ => {}
            }
            reached.borrow_mut().add(paths);
            Ok(())
        })
        .unwrap();
    reached.borrow().assert_reached(
        "plan_follows_policy_order",
        &[
            "fifo among several",
            "priority over submission order",
            "aging over plain priority",
            "shortest job over submission order",
        ],
    );
}

#[test]
fn aging_lets_low_priority_win_eventually() {
    let mut s = State::new();
    let mut low = TaskSpec::new("a", vec![]);
    low.priority = 0;
    assert!(matches!(
        s.apply(&Command::submit(0, vec![low])),
        Response::Submitted { .. }
    ));
    let mut high = TaskSpec::new("a", vec![]);
    high.priority = 10;
    assert!(matches!(
        s.apply(&Command::submit(10_000, vec![high])),
        Response::Submitted { .. }
    ));
    let set = |s: &mut State, policy| {
        let r = s.apply(&Command::SetQueue {
            now_ms: 10_000,
            queue: "a".into(),
            setting: QueueSetting::Policy(policy),
            create: false,
        });
        assert_eq!(r, Response::QueueSet);
    };
    set(&mut s, QueuePolicy::Priority { aging_ms: 500 });
    // The low task has waited 10 s = 20 points; it beats priority 10.
    assert_eq!(
        queue_order(&s, "a", 10_000).collect::<Vec<_>>(),
        vec![TaskId(1), TaskId(2)]
    );
    set(&mut s, QueuePolicy::Priority { aging_ms: 0 });
    assert_eq!(
        queue_order(&s, "a", 10_000).collect::<Vec<_>>(),
        vec![TaskId(2), TaskId(1)]
    );
}

#[test]
fn unplaceable_tasks_say_why() {
    let mut s = State::new();
    let mut big = TaskSpec::new("a", vec![]);
    big.resources.cpu_millis = 64_000;
    assert!(matches!(
        s.apply(&Command::submit(1, vec![big, TaskSpec::new("z", vec![])])),
        Response::Submitted { .. }
    ));
    assert!(unplaceable_reason(&s, &s.get(TaskId(1)).unwrap())
        .unwrap()
        .contains("serves queue"));
    assert!(matches!(
        s.apply(&Command::RegisterWorker {
            now_ms: 1,
            worker: worker("w", 4, 4000, 4000, false, &["a"]),
        }),
        Response::WorkerRegistered { .. }
    ));
    let why = unplaceable_reason(&s, &s.get(TaskId(1)).unwrap()).unwrap();
    assert!(why.contains("64000 mcpu"), "{why}");
    let live: BTreeSet<String> = ["w".to_string()].into();
    assert!(plan(&s, 2, &live, &PlanConfig::default()).is_empty());
}

/// Placement through the free-slot index chooses exactly what a scan of every live worker
/// would: of the workers that fit (slot, CPU, memory, queue, labels), the fewest free slots
/// (binpack) or the most (spread), ties to the smallest id.
#[test]
fn placement_matches_a_scan_of_every_worker() {
    let reached = RefCell::new(Reached::default());
    let strategy = (
        proptest::collection::vec(arb_task(), 1..60),
        (
            arb_worker(0),
            arb_worker(1),
            arb_worker(2),
            arb_worker(3),
            arb_worker(4),
            arb_worker(5),
        ),
        any::<bool>(),
    );
    TestRunner::new(ProptestConfig::with_cases(RUNS))
        .run(&strategy, |(tasks, (w0, w1, w2, w3, w4, w5), spread)| {
            let mut paths = BTreeSet::new();
            let mut s = State::new();
            let n = tasks.len();
            let r = s.apply(&Command::submit(1, tasks));
            prop_assert!(
                matches!(&r, Response::Submitted { ids, .. } if ids.len() == n),
                "{r:?}"
            );
            let mut live = BTreeSet::new();
            for (i, w) in [w0, w1, w2, w3, w4, w5].into_iter().enumerate() {
                // Worker 5 is registered but not live.
                if i < 5 {
                    live.insert(w.id.clone());
                }
                let r = s.apply(&Command::RegisterWorker {
                    now_ms: 1,
                    worker: w,
                });
                prop_assert!(matches!(r, Response::WorkerRegistered { .. }), "{r:?}");
            }
            let placement = if spread {
                Placement::Spread
            } else {
                Placement::BinPack
            };
            let cfg = PlanConfig {
                placement,
                ..Default::default()
            };
            let planned = plan(&s, 2, &live, &cfg);
            // The reference: every live worker's free capacity, scanned in full per task.
            let mut free: BTreeMap<String, Capacity> = s
                .workers()
                .filter(|w| live.contains(&w.spec.id))
                .map(|w| (w.spec.id.clone(), w.spec.capacity))
                .collect();
            for c in &planned {
                let Command::Assign {
                    task_id, worker_id, ..
                } = c
                else {
                    continue;
                };
                let t = s.get(*task_id).expect("planned task exists");
                let needs = t.spec.resources;
                let fitting: Vec<(&String, &Capacity)> = free
                    .iter()
                    .filter(|(id, f)| {
                        let w = &s.worker(id).unwrap().spec;
                        f.slots >= 1
                            && f.cpu_millis >= needs.cpu_millis
                            && f.mem_mb >= needs.mem_mb
                            && w.serves(&t.spec.queue)
                            && w.matches(&t.spec.labels)
                    })
                    .collect();
                let want = match placement {
                    Placement::BinPack => fitting.iter().min_by_key(|(_, f)| f.slots),
                    Placement::Spread => fitting
                        .iter()
                        .max_by_key(|(id, f)| (f.slots, std::cmp::Reverse(*id))),
                }
                .map(|(id, _)| (*id).clone());
                prop_assert_eq!(want.as_ref(), Some(worker_id), "task {:?}", task_id);
                if fitting.len() > 1 {
                    paths.insert("several workers fit");
                    if fitting[0].0 != worker_id {
                        paths.insert("not the first fitting worker by id");
                    }
                }
                let f = free.get_mut(worker_id).unwrap();
                f.slots -= 1;
                f.cpu_millis -= needs.cpu_millis;
                f.mem_mb -= needs.mem_mb;
            }
            // Nothing left pending fits anywhere (up to the per-queue skip bound, far above
            // these sizes).
            apply_all(&mut s, &planned)?;
            let again = plan(&s, 2, &live, &cfg);
            prop_assert!(
                again.iter().all(|c| !matches!(c, Command::Assign { .. })),
                "a second plan assigned more: {again:?}"
            );
            reached.borrow_mut().add(paths);
            Ok(())
        })
        .unwrap();
    reached.borrow().assert_reached(
        "placement_matches_a_scan_of_every_worker",
        &["several workers fit", "not the first fitting worker by id"],
    );
}

/// Queues take turns by how many tasks they run, not by name: when a slot frees, the queue
/// running fewer gets it, so a queue that sorts first by name does not keep every slot it
/// frees while another waits (what the policy simulator showed of round robin by name, which
/// restarted at the first queue on every plan).
#[test]
fn a_freed_slot_goes_to_the_queue_running_fewest() {
    let mut s = State::new();
    for q in ["a-batch", "b-etl"] {
        let tasks: Vec<TaskSpec> = (0..3).map(|_| TaskSpec::new(q, vec![])).collect();
        let r = s.apply(&Command::submit(1, tasks));
        assert!(matches!(r, Response::Submitted { .. }), "{r:?}");
    }
    let w = worker("w", 2, 0, 0, false, &[]);
    let r = s.apply(&Command::RegisterWorker {
        now_ms: 1,
        worker: w,
    });
    assert!(!matches!(r, Response::Rejected(_)), "{r:?}");
    let live: BTreeSet<String> = ["w".to_string()].into();
    let assigned = |cmds: &[Command]| -> Vec<TaskId> {
        cmds.iter()
            .map(|c| match c {
                Command::Assign { task_id, .. } => *task_id,
                other => panic!("not an assignment: {other:?}"),
            })
            .collect()
    };
    // Both queues run nothing: one each, the tie to the name.
    let first = plan(&s, 2, &live, &PlanConfig::default());
    assert_eq!(assigned(&first), [TaskId(1), TaskId(4)]);
    for c in &first {
        assert!(!matches!(s.apply(c), Response::Rejected(_)));
    }
    // b-etl's task finishes: the freed slot goes to b-etl again (it runs 0, a-batch 1),
    // where round robin by name gave it to a-batch.
    let r = s.apply(&Command::Complete {
        now_ms: 3,
        task_id: TaskId(4),
        worker_id: "w".into(),
        attempt: 1,
        result: vec![],
    });
    assert!(matches!(r, Response::Completed { .. }), "{r:?}");
    let second = plan(&s, 4, &live, &PlanConfig::default());
    assert_eq!(assigned(&second), [TaskId(5)]);
    // a-batch's task finishes: now it runs none and b-etl one, so a-batch gets the slot.
    for c in &second {
        assert!(!matches!(s.apply(c), Response::Rejected(_)));
    }
    let r = s.apply(&Command::Complete {
        now_ms: 5,
        task_id: TaskId(1),
        worker_id: "w".into(),
        attempt: 1,
        result: vec![],
    });
    assert!(matches!(r, Response::Completed { .. }), "{r:?}");
    let third = plan(&s, 6, &live, &PlanConfig::default());
    assert_eq!(assigned(&third), [TaskId(2)]);
}

/// Per-key concurrency: tasks of queues `a` and `b` with a few concurrency keys, `a` limited to
/// `max_per_key` running per key. Over rounds of plan, apply and completions, every planned
/// start is accepted, no key of `a` ever runs more than its limit, a task held back by its key
/// is started once its key frees, and a plan never leaves a slot idle while a task whose key
/// has room could run there (planning again assigns nothing).
#[test]
fn plan_holds_each_key_to_its_limit_and_starts_held_tasks_when_it_frees() {
    let reached = RefCell::new(Reached::default());
    let strategy = (
        proptest::collection::vec((0usize..2, proptest::option::of(0u8..3)), 1..40),
        1u32..3,
        2u32..8,
        2u32..8,
    );
    TestRunner::new(ProptestConfig::with_cases(RUNS))
        .run(&strategy, |(tasks, limit, slots0, slots1)| {
            let mut paths = BTreeSet::new();
            let mut s = State::new();
            let r = s.apply(&Command::SetQueue {
                now_ms: 1,
                queue: "a".into(),
                setting: QueueSetting::MaxPerKey(Some(limit)),
                create: true,
            });
            prop_assert_eq!(r, Response::QueueSet);
            let specs: Vec<TaskSpec> = tasks
                .iter()
                .map(|(q, k)| {
                    let mut t = TaskSpec::new(["a", "b"][*q], vec![]);
                    t.concurrency_key = k.map(|k| format!("k{k}"));
                    t
                })
                .collect();
            let r = s.apply(&Command::submit(1, specs));
            prop_assert!(matches!(r, Response::Submitted { .. }), "{r:?}");
            let mut live = BTreeSet::new();
            for (id, slots) in [("w0", slots0), ("w1", slots1)] {
                live.insert(id.to_string());
                let r = s.apply(&Command::RegisterWorker {
                    now_ms: 1,
                    worker: worker(id, slots, 0, 0, false, &[]),
                });
                prop_assert!(matches!(r, Response::WorkerRegistered { .. }), "{r:?}");
            }
            let cfg = PlanConfig::default();
            let mut held_before: BTreeSet<TaskId> = BTreeSet::new();
            for round in 0..6u64 {
                let now = 2 + round;
                let cmds = plan(&s, now, &live, &cfg);
                apply_all(&mut s, &cmds)?;
                s.check_invariants().map_err(TestCaseError::fail)?;
                let started: BTreeSet<TaskId> = cmds
                    .iter()
                    .filter_map(|c| match c {
                        Command::Assign { task_id, .. } => Some(*task_id),
                        _ => None,
                    })
                    .collect();
                if held_before.iter().any(|id| started.contains(id)) {
                    paths.insert("a held task started once its key freed");
                }
                // No key of `a` over its limit.
                let mut per_key: BTreeMap<String, u32> = BTreeMap::new();
                for t in s.list(Some("a"), Some(TaskState::Running), None, usize::MAX) {
                    if let Some(k) = t.spec.concurrency_key {
                        *per_key.entry(k).or_default() += 1;
                    }
                }
                for (k, n) in &per_key {
                    prop_assert!(*n <= limit, "key {} runs {} over {}", k, n, limit);
                    if *n == limit {
                        paths.insert("a key at its limit");
                    }
                }
                // Nothing more to start: a second plan assigns nothing.
                let again = plan(&s, now, &live, &cfg);
                prop_assert!(again.is_empty(), "second plan assigned more: {again:?}");
                // Pending tasks of `a` held back by their key while a slot is free.
                let free = s
                    .workers()
                    .any(|w| s.worker_usage(&w.spec.id).slots < w.spec.capacity.slots);
                held_before = s
                    .list(Some("a"), Some(TaskState::Pending), None, usize::MAX)
                    .into_iter()
                    .filter(|t| s.key_room("a", t.spec.concurrency_key.as_deref()) == 0)
                    .map(|t| t.id)
                    .collect();
                if free && !held_before.is_empty() {
                    paths.insert("a task held back by its key beside a free slot");
                }
                // Half the running tasks complete.
                for t in s.list(None, Some(TaskState::Running), None, usize::MAX) {
                    if t.id.0 % 2 == round % 2 {
                        let r = s.apply(&Command::Complete {
                            now_ms: now,
                            task_id: t.id,
                            worker_id: t.worker.clone().unwrap(),
                            attempt: t.attempts,
                            result: vec![],
                        });
                        prop_assert_eq!(r, Response::Completed { task_id: t.id });
                    }
                }
            }
            reached.borrow_mut().add(paths);
            Ok(())
        })
        .unwrap();
    reached.borrow().assert_reached(
        "plan_holds_each_key_to_its_limit_and_starts_held_tasks_when_it_frees",
        &[
            "a key at its limit",
            "a task held back by its key beside a free slot",
            "a held task started once its key freed",
        ],
    );
}
