//! Property tests of the pure scheduler: capacity, constraints, policy order, stability.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::{QueuePolicy, QueueSetting, Response, TaskSpec, WorkerSpec};

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

fn apply_all(state: &mut State, cmds: &[Command]) {
    for c in cmds {
        let r = state.apply(c);
        assert!(
            !matches!(r, Response::Rejected(_)),
            "plan produced a rejected command {c:?}: {r:?}"
        );
    }
}

fn arb_task() -> impl Strategy<Value = TaskSpec> {
    (
        0usize..3,
        -5i32..5,
        proptest::option::of(1u64..100),
        0u32..1500,
        0u32..600,
        any::<bool>(),
    )
        .prop_map(|(q, prio, est, cpu, mem, gpu)| {
            let mut t = TaskSpec::new(["a", "b", "c"][q], vec![]);
            t.priority = prio;
            t.estimate_ms = est;
            t.resources.cpu_millis = cpu;
            t.resources.mem_mb = mem;
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

/// Every planned assignment is accepted by apply, capacity is never exceeded (checked by the
/// state's invariants), constraints hold, and planning again adds no assignment. Fails if the
/// generator stops producing plans that assign something and plans that leave tasks waiting.
#[test]
fn plan_respects_capacity_and_is_stable() {
    let (assigned, left) = (std::cell::Cell::new(0u32), std::cell::Cell::new(0u32));
    let strategy = (
        proptest::collection::vec(arb_task(), 1..40),
        arb_worker(0),
        arb_worker(1),
        arb_worker(2),
        any::<bool>(),
    );
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(200));
    runner
        .run(&strategy, |(tasks, w0, w1, w2, spread)| {
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
            let first = plan(&s, 2, &live, &cfg);
            apply_all(&mut s, &first);
            s.check_invariants().map_err(TestCaseError::fail)?;
            for t in s.list(None, Some(TaskState::Running), None, usize::MAX) {
                let w = s.worker(t.worker.as_deref().unwrap()).unwrap();
                prop_assert!(w.spec.serves(&t.spec.queue));
                prop_assert!(w.spec.matches(&t.spec.labels));
            }
            let again = plan(&s, 2, &live, &cfg);
            prop_assert!(
                again.iter().all(|c| !matches!(c, Command::Assign { .. })),
                "second plan assigned more: {again:?}"
            );
            // Nothing is assigned to a worker that is not live.
            let none_live = plan(&s, 2, &BTreeSet::new(), &cfg);
            prop_assert!(none_live.is_empty());
            if !first.is_empty() {
                assigned.set(assigned.get() + 1);
            }
            if s.count(TaskState::Pending) > 0 {
                left.set(left.get() + 1);
            }
            Ok(())
        })
        .unwrap();
    assert!(
        assigned.get() >= 50 && left.get() >= 20,
        "plans assigning: {}, leaving tasks pending: {}",
        assigned.get(),
        left.get()
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// With one free slot, the task chosen is the first in the queue's policy order.
    #[test]
    fn plan_follows_policy_order(
        tasks in proptest::collection::vec(arb_task(), 1..20),
        policy in 0u8..3,
        aging in 0u64..3,
    ) {
        let policy = match policy {
            0 => QueuePolicy::Fifo,
            1 => QueuePolicy::Priority { aging_ms: aging * 50 },
            _ => QueuePolicy::ShortestJobFirst,
        };
        let mut s = State::new();
        let tasks: Vec<TaskSpec> = tasks.into_iter().map(|mut t| { t.queue = "a".into(); t.labels.clear(); t.resources = Default::default(); t }).collect();
        // Submit one by one at increasing times so aging has something to work on.
        for (i, t) in tasks.iter().enumerate() {
            let r = s.apply(&Command::submit(i as u64 * 40, vec![t.clone()]));
            prop_assert!(matches!(r, Response::Submitted { .. }), "{r:?}");
        }
        let r = s.apply(&Command::SetQueue { now_ms: 1000, queue: "a".into(), setting: QueueSetting::Policy(policy), create: false });
        prop_assert_eq!(r, Response::QueueSet);
        let r = s.apply(&Command::RegisterWorker { now_ms: 1000, worker: worker("w", 1, 0, 0, false, &[]) });
        prop_assert!(matches!(r, Response::WorkerRegistered { .. }), "{r:?}");
        let live: BTreeSet<String> = ["w".to_string()].into();
        let cmds = plan(&s, 1000, &live, &PlanConfig::default());
        prop_assert_eq!(cmds.len(), 1);
        let Command::Assign { task_id, .. } = &cmds[0] else { panic!("expected an assignment") };
        let chosen = s.get(*task_id).unwrap();
        for t in &s.list(None, Some(TaskState::Pending), None, usize::MAX) {
            let chosen = &chosen;
            let better = match policy {
                QueuePolicy::Fifo => t.id < chosen.id,
                QueuePolicy::Priority { aging_ms } => {
                    // Effective priority p + (now - submitted) / aging, compared exactly (times
                    // aging): continuous aging, so the order never depends on when one looks.
                    let eff = |x: &Task| x.spec.priority as i64 * aging_ms.max(1) as i64
                        + if aging_ms == 0 { 0 } else { 1000 - x.submitted_at_ms as i64 };
                    eff(t) > eff(chosen) || (eff(t) == eff(chosen) && t.id < chosen.id)
                }
                QueuePolicy::ShortestJobFirst => {
                    let est = |x: &Task| x.spec.estimate_ms.unwrap_or(u64::MAX);
                    est(t) < est(chosen) || (est(t) == est(chosen) && t.id < chosen.id)
                }
            };
            prop_assert!(!better, "task {} should have gone before {} under {:?}", t.id, chosen.id, policy);
        }
    }
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
