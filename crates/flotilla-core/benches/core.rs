//! Criterion micro-benchmarks of the deterministic core: `apply` of one 100-task submit (what
//! one group commit of a busy submitter carries), `plan` over 100,000 pending tasks and 1,000
//! workers, under FIFO, priority and shortest-job-first, and encoding a 100,000-task snapshot
//! image, without attempt histories and with one on every tenth task.
//!
//! Run with `cargo bench -p flotilla-core --bench core` (or `./scripts/bench.sh core`); CI
//! builds it (`--all-targets`) and `cargo test` runs each once as a smoke check.

use std::collections::BTreeSet;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flotilla_core::{
    plan, Capacity, Command, ImageRecordRef, PlanConfig, QueuePolicy, QueueSetting, Resources,
    Response, State, TaskId, TaskSpec, WorkerSpec,
};

const NOW: u64 = 1_000_000;

fn spec(i: u64) -> TaskSpec {
    let mut s = TaskSpec::new("q", vec![0u8; 64]);
    s.priority = (i % 17) as i32;
    s.estimate_ms = Some(1 + i % 1000);
    s.resources = Resources {
        cpu_millis: 100,
        mem_mb: 64,
    };
    s.max_attempts = 3;
    s
}

fn batch(from: u64, n: u64) -> Vec<TaskSpec> {
    (from..from + n).map(spec).collect()
}

/// A state holding `pending` tasks on queue `q` (policy `policy`) and `workers` live workers.
fn loaded(pending: u64, workers: usize, policy: QueuePolicy) -> (State, BTreeSet<String>) {
    let mut s = State::new();
    for start in (0..pending).step_by(1000) {
        let r = s.apply(&Command::submit(
            NOW,
            batch(start, 1000.min(pending - start)),
        ));
        assert!(matches!(r, Response::Submitted { .. }), "{r:?}");
    }
    let r = s.apply(&Command::SetQueue {
        now_ms: NOW,
        queue: "q".into(),
        setting: QueueSetting::Policy(policy),
        create: true,
    });
    assert_eq!(r, Response::QueueSet);
    let mut live = BTreeSet::new();
    for w in 0..workers {
        let id = format!("w{w}");
        let r = s.apply(&Command::RegisterWorker {
            now_ms: NOW,
            worker: WorkerSpec {
                id: id.clone(),
                session: format!("s{w}"),
                capacity: Capacity {
                    slots: 4,
                    cpu_millis: 4000,
                    mem_mb: 4096,
                },
                labels: Default::default(),
                queues: vec!["q".to_string()],
            },
        });
        assert!(matches!(r, Response::WorkerRegistered { .. }), "{r:?}");
        live.insert(id);
    }
    (s, live)
}

fn apply_submit_batch(c: &mut Criterion) {
    let mut g = c.benchmark_group("apply");
    g.throughput(Throughput::Elements(100));
    // On an empty state and on one already holding 100,000 tasks (indexes deeper). Each run
    // of up to `CHUNK` applies starts from a fresh clone of the base state (not timed), so the
    // state stays near its base size however many iterations criterion asks for.
    const CHUNK: u64 = 1000;
    for held in [0u64, 100_000] {
        let (base, _) = loaded(held, 0, QueuePolicy::Fifo);
        let cmd = Command::submit(NOW + 1, batch(held, 100));
        g.bench_function(format!("submit_100_tasks/held_{held}"), |b| {
            b.iter_custom(|iters| {
                let mut timed = std::time::Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(CHUNK);
                    let mut s = base.clone();
                    let started = std::time::Instant::now();
                    for _ in 0..n {
                        black_box(s.apply(black_box(&cmd)));
                    }
                    timed += started.elapsed();
                    left -= n;
                }
                timed
            })
        });
    }
    g.finish();
}

fn plan_large(c: &mut Criterion) {
    let mut g = c.benchmark_group("plan");
    g.sample_size(10);
    let cfg = PlanConfig::default();
    for (name, policy) in [
        ("fifo", QueuePolicy::Fifo),
        ("priority", QueuePolicy::Priority { aging_ms: 60_000 }),
        ("sjf", QueuePolicy::ShortestJobFirst),
    ] {
        let (s, live) = loaded(100_000, 1_000, policy);
        let planned = plan(&s, NOW + 1, &live, &cfg);
        assert!(
            !planned.is_empty(),
            "plan over 100,000 pending and 1,000 workers assigns something"
        );
        g.bench_function(format!("100k_pending_1k_workers/{name}"), |b| {
            b.iter(|| plan(black_box(&s), NOW + 1, &live, &cfg))
        });
    }
    // FIFO with every task keyed and one running per key: 1,000 keys (a plan starts one task
    // of each, then passes over the next ones up to the skip bound), or one key for all (one
    // start, then only passing over).
    for (name, keys) in [
        ("fifo_1k_keys_1_per_key", 1_000u64),
        ("fifo_1_key_1_per_key", 1),
    ] {
        let (mut s, live) = loaded(0, 1_000, QueuePolicy::Fifo);
        let r = s.apply(&Command::SetQueue {
            now_ms: NOW,
            queue: "q".into(),
            setting: QueueSetting::MaxPerKey(Some(1)),
            create: true,
        });
        assert_eq!(r, Response::QueueSet);
        for start in (0..100_000u64).step_by(1000) {
            let mut tasks = batch(start, 1000);
            for (i, t) in (start..).zip(&mut tasks) {
                t.concurrency_key = Some(format!("c{}", i % keys));
            }
            let r = s.apply(&Command::submit(NOW, tasks));
            assert!(matches!(r, Response::Submitted { .. }), "{r:?}");
        }
        let planned = plan(&s, NOW + 1, &live, &cfg);
        assert_eq!(planned.len() as u64, keys, "one start per key");
        g.bench_function(format!("100k_pending_1k_workers/{name}"), |b| {
            b.iter(|| plan(black_box(&s), NOW + 1, &live, &cfg))
        });
    }
    g.finish();
}

/// `state` with every `every`-th task assigned to worker `w0` and failed once (retryable), so
/// it waits for its retry with one ended attempt in its history.
fn with_histories(mut s: State, tasks: u64, every: u64) -> State {
    for id in (1..=tasks).step_by(every as usize) {
        for c in [
            Command::Assign {
                now_ms: NOW + 1,
                task_id: TaskId(id),
                worker_id: "w0".into(),
                attempt: 1,
            },
            Command::Fail {
                now_ms: NOW + 2,
                task_id: TaskId(id),
                worker_id: "w0".into(),
                attempt: 1,
                error: "exit code 1: connection refused".into(),
                retryable: true,
            },
        ] {
            let r = s.apply(&c);
            assert!(!matches!(r, Response::Rejected(_)), "{r:?}");
        }
    }
    s
}

/// Encoding a snapshot image record by record, as the store's snapshot writer does; and the
/// walk over its records alone, which bounds what the `Attempts` records' extra pass over the
/// task table costs.
fn image_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("image");
    g.sample_size(10);
    const TASKS: u64 = 100_000;
    let (base, _) = loaded(TASKS, 1, QueuePolicy::Fifo);
    let retried = with_histories(base.clone(), TASKS, 10);
    g.throughput(Throughput::Elements(TASKS));
    for (name, s) in [("no_history", &base), ("history_every_10th", &retried)] {
        let histories = s
            .view()
            .records()
            .filter(|r| matches!(r, ImageRecordRef::Attempts { .. }))
            .count();
        assert_eq!(
            histories as u64,
            if name == "no_history" { 0 } else { TASKS / 10 }
        );
        g.bench_function(format!("encode_100k_tasks/{name}"), |b| {
            b.iter(|| {
                let view = s.view();
                let mut out = Vec::with_capacity(32 << 20);
                for r in view.records() {
                    bincode::serialize_into(&mut out, &r).expect("encodes into a Vec");
                }
                black_box(out.len())
            })
        });
        g.bench_function(format!("walk_100k_tasks/{name}"), |b| {
            b.iter(|| black_box(s.view().records().count()))
        });
    }
    g.finish();
}

criterion_group!(benches, apply_submit_batch, plan_large, image_encode);
criterion_main!(benches);
