//! Tests of the simulator: exact figures on small workloads worked out by hand (the textbook
//! case, priority, dependencies, resources), bad input naming its field, the CSV form, traces
//! exported from a state, determinism, and properties on random traces that count the paths
//! they reach.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::test_runner::TestRunner;

use super::*;
use crate::reached::Reached;

/// The textbook workload: four jobs available at once, run times 6, 8, 7 and 3, estimates
/// exact.
fn textbook() -> Vec<TraceTask> {
    [("j1", 6), ("j2", 8), ("j3", 7), ("j4", 3)]
        .into_iter()
        .map(|(name, run)| TraceTask {
            estimate_ms: Some(run),
            ..TraceTask::new(name, 0, run)
        })
        .collect()
}

fn starts(r: &Report) -> Vec<(&str, u64)> {
    r.outcomes
        .iter()
        .map(|o| (o.name.as_str(), o.start_ms))
        .collect()
}

fn waits(r: &Report) -> Vec<u64> {
    r.outcomes.iter().map(|o| o.wait_ms).collect()
}

/// FIFO runs j1, j2, j3, j4: waits 0, 6, 14, 21 (mean 41/4 = 10.25); SJF runs j4, j1, j3, j2:
/// waits 3, 16, 9, 0 in trace order (mean 28/4 = 7). One worker with one slot is busy from 0
/// to 24 either way.
#[test]
fn textbook_sjf_minimises_mean_waiting() {
    let one = SimConfig::new(1, 1);
    let fifo = simulate(&textbook(), Policy::Fifo, &one).unwrap();
    assert_eq!(
        starts(&fifo),
        [("j1", 0), ("j2", 6), ("j3", 14), ("j4", 21)]
    );
    assert_eq!(waits(&fifo), [0, 6, 14, 21]);
    assert_eq!(fifo.wait_ms_mean, 10.25);
    assert_eq!(
        (fifo.wait_ms_p50, fifo.wait_ms_p99, fifo.wait_ms_max),
        (6, 21, 21)
    );
    // Finishes 6, 14, 21, 24.
    assert_eq!(fifo.turnaround_ms_mean, 16.25);
    assert_eq!(fifo.makespan_ms, 24);
    assert_eq!(fifo.busy_slot_ms, 24);
    assert_eq!(fifo.utilisation, 1.0);
    assert_eq!(fifo.tasks, 4);
    assert_eq!(fifo.start_ms, 0);

    let sjf = simulate(&textbook(), Policy::Sjf, &one).unwrap();
    assert_eq!(starts(&sjf), [("j1", 3), ("j2", 16), ("j3", 9), ("j4", 0)]);
    assert_eq!(waits(&sjf), [3, 16, 9, 0]);
    assert_eq!(sjf.wait_ms_mean, 7.0);
    assert_eq!(
        (sjf.wait_ms_p50, sjf.wait_ms_p99, sjf.wait_ms_max),
        (3, 16, 16)
    );
    // Finishes 9, 24, 16, 3.
    assert_eq!(sjf.turnaround_ms_mean, 13.0);
    assert_eq!(sjf.makespan_ms, 24);
    assert_eq!(sjf.utilisation, 1.0);

    // Equal priorities: FIFO among equals.
    let priority = simulate(&textbook(), Policy::Priority, &one).unwrap();
    assert_eq!(starts(&priority), starts(&fifo));

    // The chart's counts at each change: three queued behind one running, then fewer.
    let series: Vec<(u64, u64, u64)> = fifo
        .series
        .iter()
        .map(|p| (p.t_ms, p.pending, p.running))
        .collect();
    assert_eq!(
        series,
        [(0, 3, 1), (6, 2, 1), (14, 1, 1), (21, 0, 1), (24, 0, 0)]
    );
    assert!(fifo.outcomes.iter().all(|o| o.worker == "w1"));
}

/// Higher priority first among tasks available together; a running task is never preempted.
#[test]
fn priority_orders_ready_tasks_and_does_not_preempt() {
    let one = SimConfig::new(1, 1);
    let at_once = vec![
        TraceTask {
            priority: 1,
            ..TraceTask::new("a", 0, 5)
        },
        TraceTask {
            priority: 5,
            ..TraceTask::new("b", 0, 3)
        },
        TraceTask {
            priority: 3,
            ..TraceTask::new("c", 0, 2)
        },
    ];
    let r = simulate(&at_once, Policy::Priority, &one).unwrap();
    assert_eq!(starts(&r), [("a", 5), ("b", 0), ("c", 3)]);
    assert_eq!(waits(&r), [5, 0, 3]);
    let r = simulate(&at_once, Policy::Fifo, &one).unwrap();
    assert_eq!(starts(&r), [("a", 0), ("b", 5), ("c", 8)]);

    // x runs from 0 to 10 whatever arrives; then y (priority 9, arrived later) before z.
    let later = vec![
        TraceTask::new("x", 0, 10),
        TraceTask::new("z", 1, 1),
        TraceTask {
            priority: 9,
            ..TraceTask::new("y", 2, 1)
        },
    ];
    let r = simulate(&later, Policy::Priority, &one).unwrap();
    assert_eq!(starts(&r), [("x", 0), ("z", 11), ("y", 10)]);
    assert_eq!(waits(&r), [0, 10, 8]);
    let r = simulate(&later, Policy::Fifo, &one).unwrap();
    assert_eq!(starts(&r), [("x", 0), ("z", 10), ("y", 11)]);

    // With aging of 1 ms per point a task ranks by submitted - priority * aging: at 10, z
    // (1 - 0 = 1) still comes after y (2 - 9 = -7).
    let aging = SimConfig {
        aging_ms: 1,
        ..SimConfig::new(1, 1)
    };
    let r = simulate(&later, Policy::Priority, &aging).unwrap();
    assert_eq!(starts(&r), [("x", 0), ("z", 11), ("y", 10)]);
    // A task that arrived 20 ms earlier with priority 0 beats one of priority 9 under aging of
    // 1 ms per point (key 1 against 21 - 9 = 12).
    let mut old_first = later.clone();
    old_first[2].arrival_ms = 21;
    old_first[0].run_ms = 30;
    let r = simulate(&old_first, Policy::Priority, &aging).unwrap();
    assert_eq!(starts(&r), [("x", 0), ("z", 30), ("y", 31)]);
    let r = simulate(&old_first, Policy::Priority, &one).unwrap();
    assert_eq!(starts(&r), [("x", 0), ("z", 31), ("y", 30)]);
}

/// A child starts only once all its parents finished; its waiting time counts from then.
#[test]
fn children_wait_for_their_parents() {
    let trace = vec![
        TraceTask::new("a", 0, 5),
        TraceTask::new("b", 0, 10),
        TraceTask {
            depends_on: vec!["a".into(), "b".into()],
            ..TraceTask::new("c", 0, 1)
        },
        TraceTask::new("e", 0, 4),
        TraceTask {
            depends_on: vec!["a".into()],
            ..TraceTask::new("d", 7, 1)
        },
    ];
    // Two workers of one slot, FIFO: a on w1 and b on w2 at 0; e on w1 at 5 (c still waits
    // for b); d arrives at 7 (a finished at 5) and waits for w1 until 9; c is ready at 10,
    // when b finishes, and starts at once.
    let r = simulate(&trace, Policy::Fifo, &SimConfig::new(2, 1)).unwrap();
    let got: Vec<(&str, u64, u64, u64, u64, &str)> = r
        .outcomes
        .iter()
        .map(|o| {
            (
                o.name.as_str(),
                o.ready_ms,
                o.start_ms,
                o.finish_ms,
                o.wait_ms,
                o.worker.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("a", 0, 0, 5, 0, "w1"),
            ("b", 0, 0, 10, 0, "w2"),
            ("c", 10, 10, 11, 0, "w1"),
            ("e", 0, 5, 9, 5, "w1"),
            ("d", 7, 9, 10, 2, "w1"),
        ]
    );
    assert_eq!(r.makespan_ms, 11);
    assert_eq!(r.busy_slot_ms, 21);
    assert_eq!(r.utilisation, 21.0 / 22.0);
    assert_eq!(r.wait_ms_mean, 7.0 / 5.0);
    // c waits for its parents in state waiting until 10.
    let at = |t: u64| r.series.iter().rfind(|p| p.t_ms <= t).copied().unwrap();
    assert_eq!((at(0).waiting, at(0).pending, at(0).running), (1, 1, 2));
    assert_eq!((at(9).waiting, at(9).pending, at(9).running), (1, 0, 2));
    assert_eq!((at(10).waiting, at(10).pending, at(10).running), (0, 0, 1));
}

/// Two tasks of 600 mcpu cannot share a worker of 1000 mcpu, free slot or not; a small one
/// can.
#[test]
fn resources_keep_tasks_apart() {
    let config = SimConfig {
        worker_cpu_millis: 1000,
        ..SimConfig::new(1, 2)
    };
    let trace = vec![
        TraceTask {
            cpu_millis: 600,
            ..TraceTask::new("p", 0, 4)
        },
        TraceTask {
            cpu_millis: 600,
            ..TraceTask::new("q", 0, 4)
        },
        TraceTask {
            cpu_millis: 400,
            ..TraceTask::new("r", 0, 4)
        },
    ];
    let r = simulate(&trace, Policy::Fifo, &config).unwrap();
    assert_eq!(starts(&r), [("p", 0), ("q", 4), ("r", 0)]);
    assert_eq!(r.makespan_ms, 8);
    assert_eq!(r.utilisation, 12.0 / 16.0);
    // Memory the same way.
    let config = SimConfig {
        worker_mem_mb: 100,
        ..SimConfig::new(1, 2)
    };
    let trace: Vec<TraceTask> = ["m", "n"]
        .into_iter()
        .map(|n| TraceTask {
            mem_mb: 60,
            ..TraceTask::new(n, 0, 3)
        })
        .collect();
    let r = simulate(&trace, Policy::Fifo, &config).unwrap();
    assert_eq!(starts(&r), [("m", 0), ("n", 3)]);
    // With room for both they share the worker.
    let r = simulate(&trace, Policy::Fifo, &SimConfig::new(1, 2)).unwrap();
    assert_eq!(starts(&r), [("m", 0), ("n", 0)]);
}

/// Zero-length tasks and traces whose clock does not start at 0.
#[test]
fn zero_run_times_and_a_late_origin() {
    let trace = vec![
        TraceTask::new("a", 1_000, 0),
        TraceTask {
            depends_on: vec!["a".into()],
            ..TraceTask::new("b", 1_000, 0)
        },
        TraceTask::new("c", 1_005, 2),
    ];
    let r = simulate(&trace, Policy::Fifo, &SimConfig::new(1, 1)).unwrap();
    assert_eq!(starts(&r), [("a", 1_000), ("b", 1_000), ("c", 1_005)]);
    assert_eq!(r.start_ms, 1_000);
    assert_eq!(r.makespan_ms, 7);
    assert_eq!(r.wait_ms_mean, 0.0);
    assert_eq!(r.utilisation, 2.0 / 7.0);

    let instant = vec![TraceTask::new("z", 5, 0)];
    let r = simulate(&instant, Policy::Sjf, &SimConfig::new(3, 2)).unwrap();
    assert_eq!((r.makespan_ms, r.utilisation), (0, 0.0));
}

fn err(trace: &[TraceTask], config: &SimConfig) -> String {
    simulate(trace, Policy::Fifo, config)
        .expect_err("must be refused")
        .to_string()
}

/// Each kind of bad input is refused with one line naming the field, before anything runs.
#[test]
fn bad_input_names_the_field() {
    let one = SimConfig::new(1, 1);
    let t = |name: &str| TraceTask::new(name, 0, 1);
    let after = |name: &str, parents: &[&str]| TraceTask {
        depends_on: parents.iter().map(|p| p.to_string()).collect(),
        ..t(name)
    };
    let cases: Vec<(&str, Vec<TraceTask>, SimConfig, &str)> = vec![
        ("empty", vec![], one.clone(), "invalid tasks: the trace holds no task"),
        (
            "unnamed",
            vec![t("")],
            one.clone(),
            "invalid tasks[0].name: must not be empty",
        ),
        (
            "duplicate",
            vec![t("a"), t("b"), t("a")],
            one.clone(),
            "invalid tasks[2].name: duplicate name \"a\" (also tasks[0])",
        ),
        (
            "unknown parent",
            vec![t("a"), after("b", &["a", "x"])],
            one.clone(),
            "invalid tasks[1].depends_on: unknown task \"x\"",
        ),
        (
            "itself",
            vec![after("a", &["a"])],
            one.clone(),
            "invalid tasks[0].depends_on: task \"a\" depends on itself",
        ),
        (
            "cycle",
            vec![after("a", &["b"]), after("b", &["c"]), after("c", &["a"]), t("d")],
            one.clone(),
            "invalid tasks[0].depends_on: dependency cycle \"a\" -> \"b\" -> \"c\" -> \"a\" (each depends on the next)",
        ),
        (
            "cycle behind a task",
            vec![after("a", &["b"]), after("b", &["c"]), after("c", &["b"])],
            one.clone(),
            "invalid tasks[1].depends_on: dependency cycle \"b\" -> \"c\" -> \"b\" (each depends on the next)",
        ),
        (
            "parent arrives later",
            vec![TraceTask::new("a", 5, 1), after("b", &["a"])],
            one.clone(),
            "invalid tasks[1].depends_on: task \"a\" arrives at 5 ms, after this task (0 ms): a task may depend only on tasks submitted no later than itself",
        ),
        (
            "priority",
            vec![TraceTask { priority: 5000, ..t("a") }],
            one.clone(),
            "invalid tasks[0].priority: 5000 out of range -1000..=1000",
        ),
        (
            "queue",
            vec![t("a"), TraceTask { queue: Some("no spaces".into()), ..t("b") }],
            one.clone(),
            "invalid tasks[1].queue: character ' ' not allowed (use letters, digits, - _ . /)",
        ),
        (
            "cpu over the limit",
            vec![TraceTask { cpu_millis: 2_000_000, ..t("a") }],
            one.clone(),
            "invalid tasks[0].cpu_millis: 2000000 exceeds limit 1000000",
        ),
        (
            "cpu over a worker",
            vec![t("a"), TraceTask { cpu_millis: 1500, ..t("b") }],
            one.clone(),
            "invalid tasks[1].cpu_millis: 1500 exceeds a worker's 1000 (worker_cpu_millis): the task could never run",
        ),
        (
            "memory over a worker",
            vec![TraceTask { mem_mb: 2048, ..t("a") }],
            one.clone(),
            "invalid tasks[0].mem_mb: 2048 exceeds a worker's 1024 (worker_mem_mb): the task could never run",
        ),
        (
            "time overflow",
            vec![TraceTask::new("a", u64::MAX - 5, 3), TraceTask::new("b", 0, 3)],
            one.clone(),
            "invalid tasks[1].run_ms: the trace's arrivals and run times add up past 2^64 ms",
        ),
        (
            "no workers",
            vec![t("a")],
            SimConfig::new(0, 1),
            "invalid workers: 0 out of range 1..=10000",
        ),
        (
            "no slots",
            vec![t("a")],
            SimConfig::new(1, 0),
            "invalid slots: 0 out of range 1..=100000",
        ),
        (
            "aging",
            vec![t("a")],
            SimConfig { aging_ms: u64::MAX, ..one.clone() },
            "invalid aging_ms: 18446744073709551615 exceeds limit 2592000000",
        ),
    ];
    for (what, trace, config, want) in cases {
        assert_eq!(err(&trace, &config), want, "{what}");
    }
    let many: Vec<TraceTask> = (0..=MAX_TRACE_TASKS).map(|i| t(&i.to_string())).collect();
    assert_eq!(
        validate_trace(&many).unwrap_err().to_string(),
        "invalid tasks: 100001 tasks exceed limit 100000 (max_trace_tasks)"
    );
    assert!(validate_trace(&textbook()).is_ok());
}

#[test]
fn policies_parse_by_name() {
    assert_eq!(
        Policy::parse_list("fifo,priority,sjf").unwrap(),
        Policy::ALL
    );
    assert_eq!(
        Policy::parse_list(" sjf , fifo").unwrap(),
        [Policy::Sjf, Policy::Fifo]
    );
    let e = |s: &str| Policy::parse_list(s).unwrap_err().to_string();
    assert_eq!(
        e("fifo,lifo"),
        "invalid policy: unknown policy \"lifo\" (use fifo, priority or sjf)"
    );
    assert_eq!(
        e("fifo,,sjf"),
        "invalid policy: empty name in \"fifo,,sjf\""
    );
    assert_eq!(e("sjf,sjf"), "invalid policy: \"sjf\" is listed twice");
    assert_eq!(
        Policy::Priority.queue_policy(7),
        QueuePolicy::Priority { aging_ms: 7 }
    );
}

/// The CSV form reads what the JSON form holds, and writes what it reads.
#[test]
fn csv_reads_and_writes_traces() {
    let text = "\
# the textbook workload, and a child
name,arrival_ms,estimate_ms,run_ms,priority,cpu_millis,mem_mb,depends_on,queue
j1,0,6,6,0,0,0,,
j2,0,8,8,0,0,0,,
j3,0,7,7,0,0,0,,

j4,0,3,3,0,0,0,,
k,2,,1,-3,250,64,j1;j4,batch
";
    let tasks = parse_csv(text).unwrap();
    let mut want = textbook();
    want.push(TraceTask {
        priority: -3,
        cpu_millis: 250,
        mem_mb: 64,
        depends_on: vec!["j1".into(), "j4".into()],
        queue: Some("batch".into()),
        ..TraceTask::new("k", 2, 1)
    });
    assert_eq!(tasks, want);
    assert_eq!(parse_csv(&to_csv(&tasks)).unwrap(), tasks);

    // Columns in any order, optional ones left out, quotes removed.
    let short = parse_csv("run_ms,\"name\"\r\n6,\"j1\"\r\n").unwrap();
    assert_eq!(short, [TraceTask::new("j1", 0, 6)]);

    let e = |s: &str| parse_csv(s).unwrap_err().to_string();
    assert_eq!(
        e(""),
        "invalid csv: no header row (expected name,arrival_ms,estimate_ms,run_ms,priority,cpu_millis,mem_mb,depends_on,queue)"
    );
    assert_eq!(
        e("name,run_ms,colour\n"),
        "invalid csv header: unknown column \"colour\" (columns: name,arrival_ms,estimate_ms,run_ms,priority,cpu_millis,mem_mb,depends_on,queue)"
    );
    assert_eq!(
        e("name,arrival_ms\n"),
        "invalid csv header: missing column \"run_ms\""
    );
    assert_eq!(
        e("name,run_ms,name\n"),
        "invalid csv header: column \"name\" appears twice"
    );
    assert_eq!(
        e("name,run_ms\na,1\nb,-4\n"),
        "invalid tasks[1].run_ms (line 3): \"-4\" is not a whole number"
    );
    assert_eq!(
        e("name,run_ms\na,\n"),
        "invalid tasks[0].run_ms (line 2): must be given"
    );
    assert_eq!(
        e("name,run_ms,priority\na,1,high\n"),
        "invalid tasks[0].priority (line 2): \"high\" is not an integer"
    );
    assert_eq!(
        e("name,run_ms\na,1,2\n"),
        "invalid tasks[0] (line 2): 3 cells, but the header has 2 columns"
    );
}

/// A trace made from a state's tasks: succeeded tasks only, arrivals from the first one,
/// run = finished - started, parents kept when they are in the trace.
#[test]
fn traces_export_from_finished_tasks() {
    let mut s = State::new();
    let ok = |r: Response| assert!(!matches!(r, Response::Rejected(_)), "{r:?}");
    ok(s.apply(&Command::RegisterWorker {
        now_ms: 900,
        worker: WorkerSpec {
            id: "w".into(),
            session: "s".into(),
            capacity: Capacity {
                slots: 4,
                cpu_millis: 4000,
                mem_mb: 4096,
            },
            labels: BTreeMap::new(),
            queues: Vec::new(),
        },
    }));
    let spec = |deps: Vec<TaskId>| {
        let mut t = crate::TaskSpec::new("q", Vec::new());
        t.estimate_ms = Some(5);
        t.priority = 2;
        t.resources.cpu_millis = 100;
        t.depends_on = deps;
        t
    };
    ok(s.apply(&Command::submit(1_000, vec![spec(vec![])]))); // 1
    ok(s.apply(&Command::submit(1_002, vec![spec(vec![TaskId(1)])]))); // 2
    ok(s.apply(&Command::submit(1_003, vec![spec(vec![])]))); // 3: never runs
    let assign = |s: &mut State, now_ms, id| {
        s.apply(&Command::Assign {
            now_ms,
            task_id: TaskId(id),
            worker_id: "w".into(),
            attempt: 1,
        })
    };
    let complete = |s: &mut State, now_ms, id| {
        s.apply(&Command::Complete {
            now_ms,
            task_id: TaskId(id),
            worker_id: "w".into(),
            attempt: 1,
            result: vec![],
        })
    };
    ok(assign(&mut s, 1_010, 1));
    ok(complete(&mut s, 1_015, 1));
    ok(assign(&mut s, 1_020, 2));
    ok(complete(&mut s, 1_050, 2));
    let tasks = s.list(None, None, None, usize::MAX);
    let exported = trace_from_tasks(&tasks);
    let task = |name: &str, arrival, run, deps: Vec<String>| TraceTask {
        estimate_ms: Some(5),
        priority: 2,
        cpu_millis: 100,
        depends_on: deps,
        queue: Some("q".into()),
        ..TraceTask::new(name, arrival, run)
    };
    assert_eq!(
        exported,
        ExportedTrace {
            trace: Trace {
                tasks: vec![task("1", 0, 5, vec![]), task("2", 2, 30, vec!["1".into()])],
            },
            skipped: 1,
            dropped_dependencies: 0,
        }
    );
    // Without the parent, the dependency is dropped and counted.
    let exported = trace_from_tasks(&tasks[1..]);
    assert_eq!(exported.trace.tasks, [task("2", 0, 30, vec![])]);
    assert_eq!((exported.skipped, exported.dropped_dependencies), (1, 1));
    // It replays.
    let r = simulate(
        &trace_from_tasks(&tasks).trace.tasks,
        Policy::Sjf,
        &SimConfig::new(1, 1),
    )
    .unwrap();
    assert_eq!(r.makespan_ms, 35);
}

fn mixed() -> Vec<TraceTask> {
    let mut out = Vec::new();
    for i in 0..40u64 {
        let mut t = TraceTask::new(format!("t{i}"), (i * 7) % 50, 3 + (i * 13) % 29);
        t.estimate_ms = Some(t.run_ms + (i % 5));
        t.priority = (i % 4) as i32;
        t.cpu_millis = [0, 300, 700][(i % 3) as usize];
        t.queue = Some(["a", "b"][(i % 2) as usize].to_string());
        if i >= 5 && i % 4 == 0 {
            // A parent that arrives no later.
            let p = (0..i).find(|&p| (p * 7) % 50 <= t.arrival_ms).unwrap();
            t.depends_on.push(format!("t{p}"));
        }
        out.push(t);
    }
    out
}

/// The same input gives the same report, to the byte.
#[test]
fn simulation_is_deterministic() {
    let config = SimConfig::new(3, 2);
    for policy in Policy::ALL {
        let a = simulate(&mixed(), policy, &config).unwrap();
        let b = simulate(&mixed(), policy, &config).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            serde_json::to_vec(&a).unwrap(),
            serde_json::to_vec(&b).unwrap()
        );
        assert_eq!(a.tasks, 40);
        assert!(
            a.utilisation > 0.0 && a.utilisation <= 1.0,
            "{}",
            a.utilisation
        );
    }
    // The policies do differ on this workload.
    let fifo = simulate(&mixed(), Policy::Fifo, &config).unwrap();
    let sjf = simulate(&mixed(), Policy::Sjf, &config).unwrap();
    assert_ne!(starts(&fifo), starts(&sjf));
}

#[test]
fn percentiles_are_nearest_rank() {
    assert_eq!(percentile(&[], 50), 0);
    assert_eq!(percentile(&[7], 99), 7);
    let v: Vec<u64> = (1..=100).collect();
    assert_eq!((percentile(&v, 50), percentile(&v, 99)), (50, 99));
    let v: Vec<u64> = (1..=1000).collect();
    assert_eq!(percentile(&v, 99), 990);
    assert_eq!(percentile(&[0, 3, 9, 16], 50), 3);
}

#[test]
fn the_series_is_bounded_and_keeps_peaks() {
    let points: Vec<SeriesPoint> = (0..5_000u64)
        .map(|t| SeriesPoint {
            t_ms: t * 3,
            waiting: 0,
            pending: if t == 2_345 { 99 } else { t % 7 },
            running: 1,
        })
        .collect();
    let out = downsample(points.clone(), MAX_SERIES_POINTS);
    assert!(out.len() <= MAX_SERIES_POINTS, "{}", out.len());
    assert_eq!(out.iter().map(|p| p.pending).max(), Some(99));
    assert!(out.windows(2).all(|w| w[0].t_ms < w[1].t_ms));
    assert_eq!(
        downsample(points[..10].to_vec(), MAX_SERIES_POINTS),
        points[..10]
    );
}

/// Runs per property.
const RUNS: u32 = 256;

/// On one worker with one slot, jobs all available at 0 and exact estimates, SJF's mean
/// waiting time is never above FIFO's (the textbook result), and SJF starts them in order of
/// run time.
#[test]
fn sjf_never_waits_longer_than_fifo_for_jobs_available_at_once() {
    let reached = RefCell::new(Reached::default());
    // One run in four already in SJF order, where the two policies must agree.
    let strategy = (
        proptest::collection::vec(0u64..60, 1..25),
        prop_oneof![3 => Just(false), 1 => Just(true)],
    );
    TestRunner::new(ProptestConfig::with_cases(RUNS))
        .run(&strategy, |(mut runs, sorted)| {
            if sorted {
                runs.sort_unstable();
            }
            let trace: Vec<TraceTask> = runs
                .iter()
                .enumerate()
                .map(|(i, &run)| TraceTask {
                    estimate_ms: Some(run),
                    ..TraceTask::new(format!("j{i}"), 0, run)
                })
                .collect();
            let one = SimConfig::new(1, 1);
            let fifo = simulate(&trace, Policy::Fifo, &one).unwrap();
            let sjf = simulate(&trace, Policy::Sjf, &one).unwrap();
            let total = |r: &Report| r.outcomes.iter().map(|o| o.wait_ms).sum::<u64>();
            prop_assert!(
                total(&sjf) <= total(&fifo),
                "{} > {}",
                total(&sjf),
                total(&fifo)
            );
            prop_assert!(sjf.wait_ms_mean <= fifo.wait_ms_mean);
            prop_assert_eq!(sjf.makespan_ms, fifo.makespan_ms);
            let mut by_start: Vec<&TaskOutcome> = sjf.outcomes.iter().collect();
            by_start.sort_by_key(|o| (o.start_ms, o.finish_ms));
            let ordered: Vec<u64> = by_start.iter().map(|o| o.finish_ms - o.start_ms).collect();
            prop_assert!(ordered.windows(2).all(|w| w[0] <= w[1]), "{ordered:?}");

            if sorted {
                prop_assert_eq!(total(&sjf), total(&fifo));
            }
            let mut paths = BTreeSet::new();
            if total(&sjf) < total(&fifo) {
                paths.insert("sjf waits strictly less");
            } else {
                paths.insert("sjf and fifo wait the same");
            }
            reached.borrow_mut().add(paths);
            Ok(())
        })
        .unwrap();
    reached.borrow().assert_reached(
        "sjf_never_waits_longer_than_fifo_for_jobs_available_at_once",
        &["sjf waits strictly less", "sjf and fifo wait the same"],
    );
}

/// A random trace: arrivals, run times, priorities, CPU needs and parents among earlier tasks
/// (arriving no later).
fn arb_trace() -> impl Strategy<Value = Vec<TraceTask>> {
    proptest::collection::vec(
        (
            0u64..40,
            0u64..30,
            proptest::option::of(0u64..30),
            -3i32..3,
            prop_oneof![2 => Just(0u32), 1 => 100u32..1000],
            proptest::collection::vec(any::<prop::sample::Index>(), 0..3),
            0usize..2,
        ),
        1..30,
    )
    .prop_map(|rows| {
        let mut out: Vec<TraceTask> = Vec::with_capacity(rows.len());
        for (i, (arrival, run, estimate, priority, cpu, parents, queue)) in
            rows.into_iter().enumerate()
        {
            let mut t = TraceTask::new(format!("t{i}"), arrival, run);
            t.estimate_ms = estimate;
            t.priority = priority;
            t.cpu_millis = cpu;
            t.queue = Some(["a", "b"][queue].to_string());
            if i > 0 {
                for p in parents {
                    let p = p.index(i);
                    t.arrival_ms = t.arrival_ms.max(out[p].arrival_ms);
                    t.depends_on.push(out[p].name.clone());
                }
            }
            out.push(t);
        }
        out
    })
}

/// On random traces and clusters, under every policy: no more than workers × slots tasks run
/// at once, no task starts before it arrived or before its parents finished, each runs for
/// its run time, and every task finishes.
#[test]
fn simulation_respects_capacity_and_dependencies() {
    let reached = RefCell::new(Reached::default());
    let policy = prop_oneof![
        Just(Policy::Fifo),
        Just(Policy::Priority),
        Just(Policy::Sjf)
    ];
    let strategy = (arb_trace(), 1usize..4, 1u32..3, policy);
    TestRunner::new(ProptestConfig::with_cases(RUNS))
        .run(&strategy, |(trace, workers, slots, policy)| {
            let config = SimConfig::new(workers, slots);
            let r = simulate(&trace, policy, &config).unwrap();
            let capacity = workers as u64 * u64::from(slots);
            let mut paths = BTreeSet::new();
            prop_assert_eq!(r.outcomes.len(), trace.len());
            let finish: BTreeMap<&str, u64> = r
                .outcomes
                .iter()
                .map(|o| (o.name.as_str(), o.finish_ms))
                .collect();
            for (t, o) in trace.iter().zip(&r.outcomes) {
                prop_assert_eq!(&t.name, &o.name);
                prop_assert!(o.start_ms >= t.arrival_ms);
                prop_assert_eq!(o.finish_ms - o.start_ms, t.run_ms);
                let ready = t
                    .depends_on
                    .iter()
                    .map(|p| finish[p.as_str()])
                    .fold(t.arrival_ms, u64::max);
                prop_assert_eq!(o.ready_ms, ready);
                prop_assert!(
                    o.start_ms >= ready,
                    "{} started before its parents finished",
                    t.name
                );
                if ready > t.arrival_ms {
                    paths.insert("a child waited for its parent");
                }
                if o.wait_ms > 0 {
                    paths.insert("a task waited for a slot");
                }
            }
            // Tasks running at each time: [start, finish) intervals, finishes first at a tie.
            let mut events: Vec<(u64, i64)> = r
                .outcomes
                .iter()
                .flat_map(|o| [(o.start_ms, 1), (o.finish_ms, -1)])
                .collect();
            events.sort();
            let mut now_running = 0i64;
            let mut most = 0i64;
            for (_, d) in events {
                now_running += d;
                most = most.max(now_running);
            }
            prop_assert!(
                most as u64 <= capacity,
                "{most} running on {capacity} slots"
            );
            prop_assert!(r.series.iter().all(|p| p.running <= capacity));
            if most as u64 == capacity {
                paths.insert("every slot busy at once");
            }
            prop_assert!(r.utilisation <= 1.0);
            reached.borrow_mut().add(paths);
            Ok(())
        })
        .unwrap();
    reached.borrow().assert_reached(
        "simulation_respects_capacity_and_dependencies",
        &[
            "a child waited for its parent",
            "a task waited for a slot",
            "every slot busy at once",
        ],
    );
}
