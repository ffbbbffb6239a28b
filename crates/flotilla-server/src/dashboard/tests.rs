use std::collections::BTreeMap;

use flotilla_core::{
    Capacity, Command, QueuePolicy, QueueSetting, Response, State, TaskId, TaskSpec, WorkerSpec,
};

use super::*;

fn apply(state: &mut State, c: Command) -> Response {
    let r = state.apply(&c);
    assert!(
        !matches!(r, Response::Rejected(_)),
        "{c:?} was rejected: {r:?}"
    );
    r
}

fn replica(now_ms: u64) -> ReplicaView {
    ReplicaView {
        id: 1,
        cluster_name: "test".into(),
        role: "leader".into(),
        term: 3,
        leader: Some(1),
        last_log_index: 10,
        applied_index: 10,
        snapshot_index: 0,
        now_ms,
    }
}

/// Two queues, one worker running one of three tasks, one task finished: every figure the page
/// shows comes out of the state as it should.
#[test]
fn overview_counts_queues_workers_and_recent_tasks() {
    let mut st = State::new();
    apply(
        &mut st,
        Command::SetQueue {
            now_ms: 1_000,
            queue: "urgent".into(),
            setting: QueueSetting::Policy(QueuePolicy::ShortestJobFirst),
            create: true,
        },
    );
    apply(
        &mut st,
        Command::SetQueue {
            now_ms: 1_000,
            queue: "urgent".into(),
            setting: QueueSetting::MaxRunning(Some(2)),
            create: true,
        },
    );
    let mut specs = vec![
        TaskSpec::new("default", b"a".to_vec()),
        TaskSpec::new("default", b"b".to_vec()),
        TaskSpec::new("urgent", b"c".to_vec()),
    ];
    specs[2].priority = 7;
    apply(&mut st, Command::submit(2_000, specs));
    apply(
        &mut st,
        Command::RegisterWorker {
            now_ms: 3_000,
            worker: WorkerSpec {
                id: "w1".into(),
                session: "s".into(),
                capacity: Capacity {
                    slots: 4,
                    cpu_millis: 4000,
                    mem_mb: 4096,
                },
                labels: BTreeMap::from([("zone".into(), "a".into())]),
                queues: vec![],
            },
        },
    );
    for id in [1, 3] {
        apply(
            &mut st,
            Command::Assign {
                now_ms: 4_000,
                task_id: TaskId(id),
                worker_id: "w1".into(),
                attempt: 1,
            },
        );
    }
    apply(
        &mut st,
        Command::Complete {
            now_ms: 5_000,
            task_id: TaskId(1),
            worker_id: "w1".into(),
            attempt: 1,
            result: b"ok".to_vec(),
        },
    );

    let lease = |w: &str| LeaseSeen {
        age_ms: (w == "w1").then_some(120),
        connected: true,
    };
    let o = overview(&st, replica(9_000), vec![], Some(&lease), false);

    assert_eq!(o.totals.submitted, 3);
    assert_eq!(o.totals.finished, 1);
    assert_eq!(o.totals.held, 3);
    assert_eq!(o.totals.by_state["running"], 1);
    assert_eq!(o.totals.by_state["pending"], 1);
    assert_eq!(o.totals.by_state["succeeded"], 1);

    let names: Vec<&str> = o.queues.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(names, ["default", "urgent"]);
    let default = &o.queues[0];
    assert_eq!(default.policy, "fifo");
    assert_eq!(default.by_state["pending"], 1);
    assert_eq!(default.by_state["succeeded"], 1);
    assert_eq!(default.oldest_pending_age_ms, Some(7_000));
    assert_eq!(default.limits, "-");
    let urgent = &o.queues[1];
    assert_eq!(urgent.policy, "sjf");
    assert_eq!(urgent.by_state["running"], 1);
    assert_eq!(urgent.oldest_pending_age_ms, None);
    assert_eq!(urgent.limits, "max 2");

    assert_eq!(
        o.workers,
        vec![WorkerView {
            id: "w1".into(),
            slots: 4,
            running: 1,
            labels: BTreeMap::from([("zone".into(), "a".into())]),
            queues: vec![],
            registered_age_ms: 6_000,
            lease_age_ms: Some(120),
            connected: Some(true),
        }]
    );

    let ids: Vec<u64> = o.tasks.iter().map(|t| t.id).collect();
    assert_eq!(ids, [3, 2, 1], "newest first");
    assert_eq!(o.tasks[0].state, "running");
    assert_eq!(o.tasks[0].worker.as_deref(), Some("w1"));
    assert_eq!(o.tasks[0].priority, 7);
    assert_eq!(o.tasks[2].state, "succeeded");
    assert_eq!(o.tasks[2].attempts, 1);
    assert_eq!(o.tasks[1].age_ms, 7_000);
    // Unfinished tasks say why (as `flotilla why` does); finished ones only their reason.
    assert_eq!(o.tasks[0].why, ["attempt 1 of 3 running on worker w1"]);
    assert!(o.tasks[2].why.is_empty());
    assert_eq!(o.tasks[1].state, "pending", "{:?}", o.tasks[1]);
    assert!(!o.tasks[1].why.is_empty(), "{:?}", o.tasks[1]);
}

/// A follower reports no lease; the recent-task window holds the newest tasks only.
#[test]
fn overview_on_a_follower_lists_only_the_newest_tasks() {
    let mut st = State::new();
    let specs = (0..RECENT_TASKS + 7)
        .map(|i| TaskSpec::new("q", vec![i as u8]))
        .collect();
    apply(&mut st, Command::submit(1_000, specs));
    apply(
        &mut st,
        Command::RegisterWorker {
            now_ms: 1_000,
            worker: WorkerSpec {
                id: "w".into(),
                session: "s".into(),
                capacity: Capacity {
                    slots: 1,
                    cpu_millis: 1000,
                    mem_mb: 100,
                },
                labels: BTreeMap::new(),
                queues: vec!["q".into()],
            },
        },
    );
    let o = overview(&st, replica(1_500), vec![], None, true);
    assert!(o.actions);
    assert_eq!(o.tasks.len(), RECENT_TASKS);
    assert_eq!(o.tasks[0].id, (RECENT_TASKS + 7) as u64);
    assert_eq!(o.tasks[RECENT_TASKS - 1].id, 8);
    assert_eq!(o.workers[0].lease_age_ms, None);
    assert_eq!(o.workers[0].connected, None);
    assert_eq!(o.totals.finished, 0);
    let json = serde_json::to_value(&o).expect("serializes");
    assert_eq!(json["replica"]["role"], "leader");
    assert_eq!(json["queues"][0]["by_state"]["pending"], RECENT_TASKS + 7);
}

/// A schedule shows as `flotilla schedule list` shows it: its expression, queue, state, ticks
/// and counts.
#[test]
fn overview_lists_schedules_with_their_ticks_and_counts() {
    let mut st = State::new();
    apply(
        &mut st,
        Command::AddSchedule {
            now_ms: 1_000,
            schedule: Box::new(flotilla_core::ScheduleSpec {
                name: "nightly".into(),
                cron: "0 3 * * *".into(),
                task: TaskSpec::new("reports", b"r".to_vec()),
                overlap: flotilla_core::Overlap::Allow,
            }),
            next_tick_ms: Some(2_000),
        },
    );
    apply(
        &mut st,
        Command::FireSchedule {
            now_ms: 5_000,
            name: "nightly".into(),
            tick_ms: 4_000,
            next_tick_ms: Some(6_000),
            missed: 2,
            limits: Default::default(),
        },
    );
    let o = overview(&st, replica(5_500), vec![], None, false);
    assert_eq!(
        o.schedules,
        [ScheduleView {
            name: "nightly".into(),
            cron: "0 3 * * *".into(),
            queue: "reports".into(),
            overlap: "allow",
            paused: false,
            next_tick_ms: Some(6_000),
            last_tick_ms: Some(4_000),
            last_task: Some(1),
            fired: 1,
            skipped: 0,
            missed: 2,
        }]
    );
    let json = serde_json::to_value(&o).expect("serializes");
    assert_eq!(json["schedules"][0]["name"], "nightly");
}

#[test]
fn policy_names_match_the_cli() {
    assert_eq!(policy_name(QueuePolicy::Fifo), "fifo");
    assert_eq!(
        policy_name(QueuePolicy::Priority { aging_ms: 0 }),
        "priority"
    );
    assert_eq!(
        policy_name(QueuePolicy::Priority { aging_ms: 500 }),
        "priority (aging 500 ms)"
    );
    assert_eq!(policy_name(QueuePolicy::ShortestJobFirst), "sjf");
}
