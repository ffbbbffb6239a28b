//! Flow control: max_running, the rate limit's bucket and weights, in `apply` and in `plan`.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::{plan, FlowLimits, PlanConfig, RateLimit};

fn set(s: &mut State, now_ms: u64, queue: &str, setting: QueueSetting) -> Response {
    s.apply(&Command::SetQueue {
        now_ms,
        queue: queue.into(),
        setting,
        create: true,
    })
}

fn register(s: &mut State, id: &str, slots: u32) {
    let r = s.apply(&Command::RegisterWorker {
        now_ms: 0,
        worker: wspec(id, slots),
    });
    assert!(matches!(r, Response::WorkerRegistered { .. }), "{r:?}");
}

fn assign(s: &mut State, now_ms: u64, id: TaskId, worker: &str) -> Response {
    let attempt = s.get(id).unwrap().attempts + 1;
    s.apply(&Command::Assign {
        now_ms,
        task_id: id,
        worker_id: worker.into(),
        attempt,
    })
}

fn limit_of(r: &Response) -> &str {
    match r {
        Response::Rejected(CommandError::LimitExceeded { limit, .. }) => limit,
        other => panic!("expected a limit refusal, got {other:?}"),
    }
}

#[test]
fn max_running_refuses_a_start_at_the_limit_and_allows_one_after_a_finish() {
    let mut s = State::new();
    register(&mut s, "w", 10);
    assert_eq!(
        set(&mut s, 1, "q", QueueSetting::MaxRunning(Some(2))),
        Response::QueueSet
    );
    let t = ids(&submit(&mut s, 1, vec![spec("q"), spec("q"), spec("q")]));
    assert!(matches!(
        assign(&mut s, 2, t[0], "w"),
        Response::Assigned { .. }
    ));
    assert!(matches!(
        assign(&mut s, 2, t[1], "w"),
        Response::Assigned { .. }
    ));
    let before = image_bytes(&s);
    let r = assign(&mut s, 2, t[2], "w");
    assert_eq!(limit_of(&r), "max_running");
    assert!(format!("{r:?}").contains("\\\"q\\\""), "{r:?}");
    assert_eq!(image_bytes(&s), before, "a refusal changes nothing");
    let done = s.apply(&Command::Complete {
        now_ms: 4,
        task_id: t[0],
        worker_id: "w".into(),
        attempt: 1,
        result: vec![],
    });
    assert!(matches!(done, Response::Completed { .. }), "{done:?}");
    assert!(matches!(
        assign(&mut s, 5, t[2], "w"),
        Response::Assigned { .. }
    ));
    // Lowering the limit below what runs is allowed: it holds back new starts only.
    assert_eq!(
        set(&mut s, 6, "q", QueueSetting::MaxRunning(Some(1))),
        Response::QueueSet
    );
    assert_eq!(s.flow_room("q", 6), 0);
    s.check_invariants().unwrap();
}

fn with_key(queue: &str, key: &str) -> TaskSpec {
    let mut t = spec(queue);
    t.concurrency_key = Some(key.into());
    t
}

/// One running task per key: a second task of the same key is refused (naming the limit and
/// the key, changing nothing) while other keys and unkeyed tasks start; a finish, a retryable
/// failure, a cancel and a lost worker each free the key's place.
#[test]
fn max_per_key_refuses_a_second_start_of_a_key_until_its_first_ends() {
    let mut s = State::new();
    register(&mut s, "w", 10);
    assert_eq!(
        set(&mut s, 1, "q", QueueSetting::MaxPerKey(Some(1))),
        Response::QueueSet
    );
    let t = ids(&submit(
        &mut s,
        1,
        vec![
            with_key("q", "alice"),
            with_key("q", "alice"),
            with_key("q", "bob"),
            spec("q"),
            spec("q"),
        ],
    ));
    for id in [t[0], t[2], t[3], t[4]] {
        assert!(matches!(
            assign(&mut s, 2, id, "w"),
            Response::Assigned { .. }
        ));
    }
    assert_eq!(s.key_room("q", Some("alice")), 0);
    assert_eq!(s.key_room("q", Some("carol")), 1);
    assert_eq!(s.key_room("q", None), u64::MAX);
    let before = image_bytes(&s);
    let r = assign(&mut s, 2, t[1], "w");
    assert_eq!(limit_of(&r), "max_per_key");
    assert!(format!("{r:?}").contains("alice"), "{r:?}");
    assert_eq!(image_bytes(&s), before, "a refusal changes nothing");
    // Each way a running attempt ends frees the key: complete, fail (retry), cancel, lost.
    let done = s.apply(&Command::Complete {
        now_ms: 3,
        task_id: t[0],
        worker_id: "w".into(),
        attempt: 1,
        result: vec![],
    });
    assert!(matches!(done, Response::Completed { .. }), "{done:?}");
    assert!(matches!(
        assign(&mut s, 4, t[1], "w"),
        Response::Assigned { .. }
    ));
    let failed = s.apply(&Command::Fail {
        now_ms: 5,
        task_id: t[1],
        worker_id: "w".into(),
        attempt: 1,
        error: "e".into(),
        retryable: true,
    });
    assert!(
        matches!(failed, Response::AttemptFailed { .. }),
        "{failed:?}"
    );
    assert_eq!(s.key_room("q", Some("alice")), 1);
    let mut third = with_key("q", "alice");
    third.max_attempts = 1;
    let late = ids(&submit(&mut s, 6, vec![third]))[0];
    assert!(matches!(
        assign(&mut s, 6, late, "w"),
        Response::Assigned { .. }
    ));
    let r = s.apply(&Command::Cancel {
        now_ms: 7,
        task_id: late,
    });
    assert!(matches!(r, Response::Cancelled { .. }), "{r:?}");
    assert_eq!(s.key_room("q", Some("alice")), 1);
    assert_eq!(s.running_with_key("q", "bob"), 1);
    let r = s.apply(&Command::ExpireWorker {
        now_ms: 8,
        worker_id: "w".into(),
        reason: "lease expired".into(),
    });
    assert!(matches!(r, Response::WorkerExpired { .. }), "{r:?}");
    assert_eq!(s.running_with_key("q", "bob"), 0);
    s.check_invariants().unwrap();
    assert_eq!(image_bytes(&restore(&s)), image_bytes(&s));
    // The limit removed: the key no longer holds anything back.
    assert_eq!(
        set(&mut s, 9, "q", QueueSetting::MaxPerKey(None)),
        Response::QueueSet
    );
    assert_eq!(s.key_room("q", Some("alice")), u64::MAX);
}

/// The planner passes over tasks whose key is at its limit (counting its own starts) and
/// starts the next keys instead; every start it plans is accepted.
#[test]
fn plan_skips_a_key_at_its_limit_and_starts_the_other_keys() {
    let mut s = State::new();
    register(&mut s, "w", 10);
    set(&mut s, 1, "q", QueueSetting::MaxPerKey(Some(2)));
    let mut specs: Vec<TaskSpec> = (0..6).map(|_| with_key("q", "alice")).collect();
    specs.extend((0..3).map(|_| with_key("q", "bob")));
    specs.push(spec("q"));
    submit(&mut s, 1, specs);
    let live: BTreeSet<String> = ["w".to_string()].into();
    let cmds = plan(&s, 2, &live, &PlanConfig::default());
    let mut per_key: BTreeMap<Option<String>, usize> = BTreeMap::new();
    for c in &cmds {
        let Command::Assign { task_id, .. } = c else {
            panic!("{c:?}")
        };
        *per_key
            .entry(s.get(*task_id).unwrap().spec.concurrency_key)
            .or_default() += 1;
        assert!(matches!(s.apply(c), Response::Assigned { .. }), "{c:?}");
    }
    assert_eq!(
        per_key,
        [
            (Some("alice".to_string()), 2),
            (Some("bob".to_string()), 2),
            (None, 1)
        ]
        .into()
    );
    assert!(plan(&s, 3, &live, &PlanConfig::default()).is_empty());
    s.check_invariants().unwrap();
}

#[test]
fn the_rate_bucket_allows_the_burst_then_refills_from_the_replicated_clock() {
    let mut s = State::new();
    register(&mut s, "w", 100);
    let rate = RateLimit {
        per_sec: 2,
        burst: 3,
    };
    assert_eq!(
        set(&mut s, 1_000, "q", QueueSetting::Rate(Some(rate))),
        Response::QueueSet
    );
    let t = ids(&submit(&mut s, 1_000, (0..10).map(|_| spec("q")).collect()));
    assert_eq!(s.flow_room("q", 1_000), 3, "a full bucket: the burst");
    for id in &t[..3] {
        assert!(matches!(
            assign(&mut s, 1_000, *id, "w"),
            Response::Assigned { .. }
        ));
    }
    assert_eq!(limit_of(&assign(&mut s, 1_000, t[3], "w")), "rate");
    // 2 per second: one start per 500 ms.
    assert_eq!(s.flow_room("q", 1_499), 0);
    assert_eq!(s.flow_room("q", 1_500), 1);
    assert_eq!(limit_of(&assign(&mut s, 1_499, t[3], "w")), "rate");
    assert!(matches!(
        assign(&mut s, 1_500, t[3], "w"),
        Response::Assigned { .. }
    ));
    assert_eq!(limit_of(&assign(&mut s, 1_500, t[4], "w")), "rate");
    // A command stamped earlier (a new leader whose clock is behind) refills nothing: the
    // bucket follows the replicated clock, which never goes back.
    assert_eq!(limit_of(&assign(&mut s, 900, t[4], "w")), "rate");
    // A long pause fills it to the burst, no more.
    assert_eq!(s.flow_room("q", 60_000), 3);
    // The bucket is state proper: a restored state has the same.
    let restored = restore(&s);
    assert_eq!(restored.queue_flow("q"), s.queue_flow("q"));
    assert_eq!(restored.flow_room("q", 1_700), s.flow_room("q", 1_700));
    // A new rate keeps what the bucket holds, up to its burst; removing it empties the record.
    set(
        &mut s,
        2_000,
        "q",
        QueueSetting::Rate(Some(RateLimit {
            per_sec: 1,
            burst: 1,
        })),
    );
    assert_eq!(s.queue_flow("q").1.unwrap().milli, 1_000);
    set(&mut s, 2_000, "q", QueueSetting::Rate(None));
    assert_eq!(s.queue_flow("q"), (FlowLimits::default(), None));
    s.check_invariants().unwrap();
}

#[test]
fn zero_and_absurd_limits_are_refused_naming_the_field() {
    let mut s = State::new();
    let cases = [
        (QueueSetting::MaxRunning(Some(0)), "max_running"),
        (
            QueueSetting::MaxRunning(Some(crate::MAX_RUNNING_LIMIT + 1)),
            "max_running",
        ),
        (QueueSetting::Weight(0), "weight"),
        (QueueSetting::Weight(crate::MAX_WEIGHT + 1), "weight"),
        (QueueSetting::MaxPerKey(Some(0)), "max_per_key"),
        (
            QueueSetting::MaxPerKey(Some(crate::MAX_RUNNING_LIMIT + 1)),
            "max_per_key",
        ),
        (
            QueueSetting::Rate(Some(RateLimit {
                per_sec: 0,
                burst: 1,
            })),
            "rate.per_sec",
        ),
        (
            QueueSetting::Rate(Some(RateLimit {
                per_sec: 1,
                burst: 0,
            })),
            "rate.burst",
        ),
    ];
    for (setting, field) in cases {
        match set(&mut s, 1, "q", setting.clone()) {
            Response::Rejected(CommandError::Invalid { field: f, .. }) => {
                assert_eq!(f, field, "{setting:?}")
            }
            other => panic!("{setting:?}: {other:?}"),
        }
    }
    assert_eq!(s.queues().count(), 0, "nothing was created");
    assert_eq!(s.flows().count(), 0);
}

#[test]
fn a_queue_kept_only_for_its_limits_is_in_the_image_and_goes_with_them() {
    let mut s = State::new();
    set(&mut s, 1, "idle", QueueSetting::Weight(4));
    set(&mut s, 1, "idle", QueueSetting::MaxRunning(Some(7)));
    let flows: Vec<_> = s.flows().map(|(n, f, _)| (n.to_string(), f)).collect();
    assert_eq!(
        flows,
        vec![(
            "idle".to_string(),
            FlowLimits {
                max_running: Some(7),
                weight: 4,
                rate: None,
                max_per_key: None,
            }
        )]
    );
    assert_eq!(image_bytes(&restore(&s)), image_bytes(&s));
    set(&mut s, 2, "idle", QueueSetting::Weight(1));
    set(&mut s, 2, "idle", QueueSetting::MaxRunning(None));
    assert_eq!(s.flows().count(), 0);
    s.check_invariants().unwrap();
}

#[test]
fn plan_shares_free_slots_by_weight() {
    let mut s = State::new();
    register(&mut s, "w", 8);
    set(&mut s, 1, "a", QueueSetting::Weight(3));
    submit(&mut s, 1, (0..20).map(|_| spec("a")).collect());
    submit(&mut s, 1, (0..20).map(|_| spec("b")).collect());
    let live: BTreeSet<String> = ["w".to_string()].into();
    let cmds = plan(&s, 2, &live, &PlanConfig::default());
    let mut per_queue: BTreeMap<String, usize> = BTreeMap::new();
    for c in &cmds {
        let Command::Assign { task_id, .. } = c else {
            continue;
        };
        *per_queue
            .entry(s.get(*task_id).unwrap().spec.queue)
            .or_default() += 1;
    }
    assert_eq!(
        per_queue,
        [("a".to_string(), 6), ("b".to_string(), 2)].into(),
        "weight 3 against 1 over 8 slots"
    );
}

#[test]
fn plan_holds_back_a_queue_at_its_limits_and_lets_others_run() {
    let mut s = State::new();
    register(&mut s, "w", 10);
    set(&mut s, 1, "a", QueueSetting::MaxRunning(Some(2)));
    set(
        &mut s,
        1,
        "b",
        QueueSetting::Rate(Some(RateLimit {
            per_sec: 1,
            burst: 1,
        })),
    );
    submit(&mut s, 1, (0..5).map(|_| spec("a")).collect());
    submit(&mut s, 1, (0..5).map(|_| spec("b")).collect());
    submit(&mut s, 1, (0..5).map(|_| spec("c")).collect());
    let live: BTreeSet<String> = ["w".to_string()].into();
    let cmds = plan(&s, 2, &live, &PlanConfig::default());
    let mut per_queue: BTreeMap<String, usize> = BTreeMap::new();
    for c in &cmds {
        let Command::Assign { task_id, .. } = c else {
            continue;
        };
        *per_queue
            .entry(s.get(*task_id).unwrap().spec.queue)
            .or_default() += 1;
        assert!(matches!(s.apply(c), Response::Assigned { .. }), "{c:?}");
    }
    assert_eq!(
        per_queue,
        [
            ("a".to_string(), 2),
            ("b".to_string(), 1),
            ("c".to_string(), 5)
        ]
        .into()
    );
}

/// Random workloads planned and applied as the leader does, with random limits: no queue ever
/// runs more than its `max_running` because of a start, no queue starts more than its bucket
/// allows in any window, and `plan` never proposes a start its limits refuse.
#[test]
fn no_limit_is_ever_exceeded() {
    #[derive(Debug, Clone)]
    struct Queue {
        max_running: Option<u32>,
        weight: u32,
        rate: Option<RateLimit>,
    }
    let arb_queue = (
        proptest::option::of(1u32..4),
        1u32..4,
        proptest::option::of((1u32..20, 1u32..4)),
    )
        .prop_map(|(max_running, weight, rate)| Queue {
            max_running,
            weight,
            rate: rate.map(|(per_sec, burst)| RateLimit { per_sec, burst }),
        });
    // Steps: submit to a queue, advance time by some ms, finish some running tasks, plan.
    let arb_step = prop_oneof![
        (0usize..3, 1usize..6).prop_map(|(q, n)| (0u8, q, n)),
        (0usize..3, 1usize..400).prop_map(|(q, n)| (1u8, q, n)),
        (0usize..3, 1usize..4).prop_map(|(q, n)| (2u8, q, n)),
        (0usize..3, 0usize..1).prop_map(|(q, n)| (3u8, q, n)),
    ];
    let reached = std::cell::RefCell::new(crate::reached::Reached::default());
    runner(RUNS)
        .run(
            &(
                proptest::collection::vec(arb_queue, 3),
                1u32..8,
                proptest::collection::vec(arb_step, 1..80),
            ),
            |(queues, slots, steps)| {
                let names = ["a", "b", "c"];
                let mut s = State::new();
                let mut paths = BTreeSet::new();
                register(&mut s, "w1", slots);
                register(&mut s, "w2", slots);
                let live: BTreeSet<String> = ["w1".to_string(), "w2".to_string()].into();
                let mut now = 1_000u64;
                for (q, limits) in names.iter().zip(&queues) {
                    for setting in [
                        QueueSetting::MaxRunning(limits.max_running),
                        QueueSetting::Weight(limits.weight),
                        QueueSetting::Rate(limits.rate),
                    ] {
                        prop_assert_eq!(set(&mut s, now, q, setting), Response::QueueSet);
                    }
                }
                // Start times per queue, to check every window against the rate.
                let mut starts: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
                for (kind, q, n) in steps {
                    match kind {
                        0 => {
                            submit(&mut s, now, (0..n).map(|_| spec(names[q])).collect());
                        }
                        1 => now += n as u64,
                        2 => {
                            let running: Vec<TaskId> = (1..s.next_task_id)
                                .map(TaskId)
                                .filter(|id| {
                                    s.get(*id).is_some_and(|t| {
                                        t.state == TaskState::Running && t.spec.queue == names[q]
                                    })
                                })
                                .take(n)
                                .collect();
                            for id in running {
                                let t = s.get(id).unwrap();
                                let r = s.apply(&Command::Complete {
                                    now_ms: now,
                                    task_id: id,
                                    worker_id: t.worker.clone().unwrap(),
                                    attempt: t.attempts,
                                    result: vec![],
                                });
                                prop_assert!(matches!(r, Response::Completed { .. }), "{:?}", r);
                            }
                        }
                        _ => {
                            let pending_before: Vec<u64> = names
                                .iter()
                                .map(|q| s.queue_count(q, TaskState::Pending))
                                .collect();
                            for c in plan(&s, now, &live, &PlanConfig::default()) {
                                let Command::Assign { task_id, .. } = &c else {
                                    continue;
                                };
                                let qi = names
                                    .iter()
                                    .position(|n| *n == s.get(*task_id).unwrap().spec.queue)
                                    .unwrap();
                                let r = s.apply(&c);
                                prop_assert!(
                                    matches!(r, Response::Assigned { .. }),
                                    "plan proposed a start apply refused: {:?} -> {:?}",
                                    c,
                                    r
                                );
                                starts.entry(qi).or_default().push(now);
                                let running = s.queue_count(names[qi], TaskState::Running);
                                if let Some(m) = queues[qi].max_running {
                                    prop_assert!(running <= u64::from(m));
                                }
                            }
                            s.check_invariants().map_err(TestCaseError::fail)?;
                            // Held back by its limits while slots were free?
                            for (qi, q) in names.iter().enumerate() {
                                let free = s.count(TaskState::Running) < u64::from(slots) * 2;
                                if free
                                    && pending_before[qi] > 0
                                    && s.queue_count(q, TaskState::Pending) > 0
                                {
                                    if queues[qi].max_running.is_some_and(|m| {
                                        s.queue_count(q, TaskState::Running) >= u64::from(m)
                                    }) {
                                        paths.insert("held at max_running");
                                    } else if queues[qi].rate.is_some() {
                                        paths.insert("held by the rate");
                                    }
                                }
                            }
                        }
                    }
                    // Every apply re-checks: a start the limits refuse is refused.
                    for q in names {
                        if s.flow_room(q, now) == 0 {
                            if let Some(id) = (1..s.next_task_id).map(TaskId).find(|id| {
                                s.get(*id).is_some_and(|t| {
                                    t.state == TaskState::Pending && t.spec.queue == q
                                })
                            }) {
                                let mut copy = s.clone();
                                let r = assign(&mut copy, now, id, "w1");
                                let refused = matches!(
                                    r,
                                    Response::Rejected(CommandError::LimitExceeded { .. })
                                );
                                prop_assert!(
                                    refused
                                        || matches!(
                                            r,
                                            Response::Rejected(CommandError::DoesNotFit { .. })
                                        ),
                                    "{:?}",
                                    r
                                );
                                if refused {
                                    paths.insert("apply refused a start");
                                }
                            }
                        }
                    }
                }
                // No window of any rate-limited queue holds more starts than the bucket allows.
                for (qi, times) in &starts {
                    let Some(rate) = queues[*qi].rate else {
                        continue;
                    };
                    for (i, first) in times.iter().enumerate() {
                        for (j, last) in times.iter().enumerate().skip(i) {
                            let allowed = u64::from(rate.burst)
                                + (last - first) * u64::from(rate.per_sec) / 1000;
                            prop_assert!(
                                (j - i + 1) as u64 <= allowed,
                                "queue {} started {} tasks in [{}, {}] ms at {:?}",
                                names[*qi],
                                j - i + 1,
                                first,
                                last,
                                rate
                            );
                        }
                    }
                }
                reached.borrow_mut().add(paths);
                Ok(())
            },
        )
        .unwrap();
    reached.borrow().assert_reached(
        "no_limit_is_ever_exceeded",
        &[
            "held at max_running",
            "held by the rate",
            "apply refused a start",
        ],
    );
}
