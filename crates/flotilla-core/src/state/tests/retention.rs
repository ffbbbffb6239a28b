//! Retention: sweeps remove finished tasks by the replicated clock, keep what unfinished tasks
//! depend on, leave tombstones for keys remembered longer, and forget them in time.

use super::*;
use crate::{Lookup, QueueSetting};

const H: u64 = 3_600_000;

fn sweep(s: &mut State, now_ms: u64, retention_ms: u64, key_retention_ms: u64) -> Response {
    s.apply(&Command::Sweep {
        now_ms,
        retention_ms,
        key_retention_ms,
        max_removals: 100,
    })
}

fn cancel(s: &mut State, now_ms: u64, id: TaskId) {
    let r = s.apply(&Command::Cancel {
        now_ms,
        task_id: id,
    });
    assert!(matches!(r, Response::Cancelled { .. }), "{r:?}");
}

#[test]
fn finished_tasks_go_after_their_retention_and_their_ids_say_so() {
    let mut s = State::new();
    let ids = ids(&submit(&mut s, 0, vec![spec("a"), spec("a"), spec("b")]));
    cancel(&mut s, 10, ids[0]);
    cancel(&mut s, 20, ids[2]);
    // Nothing is due before the retention passed.
    assert_eq!(s.next_sweep_ms(H, H), Some(10 + H));
    assert_eq!(
        sweep(&mut s, 10 + H - 1, H, H),
        Response::Swept {
            removed: 0,
            tombstoned: 0,
            forgotten: 0
        }
    );
    assert_eq!(
        sweep(&mut s, 10 + H, H, H),
        Response::Swept {
            removed: 1,
            tombstoned: 0,
            forgotten: 0
        }
    );
    assert_eq!(s.lookup(ids[0]), Lookup::Removed(None));
    assert!(
        matches!(s.lookup(ids[1]), Lookup::Task(_)),
        "pending tasks stay"
    );
    assert_eq!(s.lookup(TaskId(99)), Lookup::Unknown);
    assert_eq!(s.task_count(), 2);
    assert_eq!(s.next_sweep_ms(H, H), Some(20 + H));
    // Commands on a removed task say why it is gone.
    assert_eq!(
        s.apply(&Command::Cancel {
            now_ms: 20 + H,
            task_id: ids[0]
        }),
        Response::Rejected(CommandError::Removed(ids[0]))
    );
    let mut child = spec("a");
    child.depends_on = vec![ids[0]];
    match submit(&mut s, 20 + H, vec![child]) {
        Response::Rejected(CommandError::Invalid { field, message }) => {
            assert_eq!(field, "tasks[0].depends_on");
            assert!(message.contains("removed by retention"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // Queue b emptied: it is forgotten with its last task.
    assert_eq!(
        sweep(&mut s, 20 + H, H, H),
        Response::Swept {
            removed: 1,
            tombstoned: 0,
            forgotten: 0
        }
    );
    assert!(s.queues().all(|(q, _)| q != "b"));
}

#[test]
fn a_queue_keeps_its_own_retention() {
    let mut s = State::new();
    let ids = ids(&submit(&mut s, 0, vec![spec("short"), spec("long")]));
    let r = s.apply(&Command::SetQueue {
        now_ms: 0,
        queue: "short".into(),
        setting: QueueSetting::RetentionMs(Some(1000)),
        create: false,
    });
    assert_eq!(r, Response::QueueSet);
    cancel(&mut s, 1, ids[0]);
    cancel(&mut s, 1, ids[1]);
    assert_eq!(s.next_sweep_ms(H, H), Some(1001));
    assert_eq!(
        sweep(&mut s, 1001, H, H),
        Response::Swept {
            removed: 1,
            tombstoned: 0,
            forgotten: 0
        }
    );
    assert!(matches!(s.lookup(ids[1]), Lookup::Task(_)));
    // Back to the default: the queue entry stays while it has tasks.
    let r = s.apply(&Command::SetQueue {
        now_ms: 1001,
        queue: "long".into(),
        setting: QueueSetting::RetentionMs(None),
        create: false,
    });
    assert_eq!(r, Response::QueueSet);
}

#[test]
fn a_finished_parent_stays_while_a_dependent_is_unfinished() {
    let mut s = State::new();
    let parent = ids(&submit(&mut s, 0, vec![spec("q")]))[0];
    let mut c = spec("q");
    c.depends_on = vec![parent];
    let child = ids(&submit(&mut s, 0, vec![c]))[0];
    let (w, attempt) = assign_to_new_worker(&mut s, parent);
    let r = s.apply(&Command::Complete {
        now_ms: 5,
        task_id: parent,
        worker_id: w,
        attempt,
        result: b"out".to_vec(),
    });
    assert_eq!(r, Response::Completed { task_id: parent });
    assert_eq!(s.get(child).unwrap().state, TaskState::Pending);
    // The parent finished long ago, but its child still needs it (its result is the
    // child's input): kept.
    assert_eq!(s.next_sweep_ms(1, 1), None);
    assert_eq!(
        sweep(&mut s, 10 * H, 1, 1),
        Response::Swept {
            removed: 0,
            tombstoned: 0,
            forgotten: 0
        }
    );
    assert!(matches!(s.lookup(parent), Lookup::Task(_)));
    // Once the child finishes, both go.
    cancel(&mut s, 10 * H, child);
    assert_eq!(s.next_sweep_ms(1, 1), Some(5 + 1));
    assert_eq!(
        sweep(&mut s, 10 * H + 1, 1, 1),
        Response::Swept {
            removed: 2,
            tombstoned: 0,
            forgotten: 0
        }
    );
    assert_eq!(s.task_count(), 0);
}

fn assign_to_new_worker(s: &mut State, id: TaskId) -> (String, u32) {
    let r = s.apply(&Command::RegisterWorker {
        now_ms: 1,
        worker: wspec("rw", 4),
    });
    assert!(matches!(r, Response::WorkerRegistered { .. }), "{r:?}");
    let attempt = s.get(id).unwrap().attempts + 1;
    let r = s.apply(&Command::Assign {
        now_ms: 2,
        task_id: id,
        worker_id: "rw".into(),
        attempt,
    });
    assert_eq!(
        r,
        Response::Assigned {
            task_id: id,
            attempt
        }
    );
    ("rw".into(), attempt)
}

#[test]
fn keys_outlive_their_tasks_as_tombstones_then_are_freed() {
    let mut s = State::new();
    let id = ids(&submit(&mut s, 0, vec![keyed("q", "k1")]))[0];
    let (w, attempt) = assign_to_new_worker(&mut s, id);
    let r = s.apply(&Command::Complete {
        now_ms: 10,
        task_id: id,
        worker_id: w,
        attempt,
        result: b"42".to_vec(),
    });
    assert_eq!(r, Response::Completed { task_id: id });
    // Task retention 1 h, keys 3 h.
    assert_eq!(
        sweep(&mut s, 10 + H, H, 3 * H),
        Response::Swept {
            removed: 1,
            tombstoned: 1,
            forgotten: 0
        }
    );
    assert_eq!(s.task_count(), 0);
    assert_eq!(s.tombstone_count(), 1);
    // Within the key window: the original id, nothing created, and the outcome is known.
    assert_eq!(
        submit(&mut s, 2 * H, vec![keyed("q", "k1")]),
        Response::Submitted {
            ids: vec![id],
            created: vec![false]
        }
    );
    match s.lookup(id) {
        Lookup::Removed(Some(t)) => {
            assert_eq!(
                (t.state, t.result.as_deref()),
                (TaskState::Succeeded, Some(b"42".as_slice()))
            );
            assert_eq!(t.spec.idempotency_key.as_deref(), Some("k1"));
        }
        other => panic!("{other:?}"),
    }
    // The restored state knows the tombstone too.
    assert_eq!(restore(&s).lookup(id), s.lookup(id));
    assert_eq!(s.next_sweep_ms(H, 3 * H), Some(10 + 3 * H));
    assert_eq!(
        sweep(&mut s, 10 + 3 * H, H, 3 * H),
        Response::Swept {
            removed: 0,
            tombstoned: 0,
            forgotten: 1
        }
    );
    assert_eq!(s.lookup(id), Lookup::Removed(None));
    // After it: the key is free.
    assert_eq!(
        submit(&mut s, 4 * H, vec![keyed("q", "k1")]),
        Response::Submitted {
            ids: vec![TaskId(id.0 + 1)],
            created: vec![true]
        }
    );
}

#[test]
fn with_equal_windows_a_key_goes_with_its_task() {
    let mut s = State::new();
    let id = ids(&submit(&mut s, 0, vec![keyed("q", "k")]))[0];
    cancel(&mut s, 1, id);
    assert_eq!(
        sweep(&mut s, 1 + H, H, H),
        Response::Swept {
            removed: 1,
            tombstoned: 0,
            forgotten: 1
        }
    );
    assert_eq!(s.task_by_key("k"), None);
    // A key window shorter than a queue's own retention is stretched to it.
    let id = ids(&submit(&mut s, 2 * H, vec![keyed("q", "k2")]))[0];
    let r = s.apply(&Command::SetQueue {
        now_ms: 2 * H,
        queue: "q".into(),
        setting: QueueSetting::RetentionMs(Some(2 * H)),
        create: false,
    });
    assert_eq!(r, Response::QueueSet);
    cancel(&mut s, 2 * H, id);
    assert_eq!(
        sweep(&mut s, 4 * H, H, H),
        Response::Swept {
            removed: 1,
            tombstoned: 0,
            forgotten: 1
        }
    );
}

#[test]
fn sweeps_are_bounded_and_bad_settings_are_refused() {
    let mut s = State::new();
    let ids = ids(&submit(&mut s, 0, (0..10).map(|_| spec("q")).collect()));
    for id in &ids {
        cancel(&mut s, 1, *id);
    }
    let bounded = Command::Sweep {
        now_ms: 1 + H,
        retention_ms: H,
        key_retention_ms: H,
        max_removals: 4,
    };
    assert_eq!(
        s.apply(&bounded),
        Response::Swept {
            removed: 4,
            tombstoned: 0,
            forgotten: 0
        }
    );
    assert_eq!(s.task_count(), 6);
    // Oldest first: the first four ids went.
    assert!(ids[..4]
        .iter()
        .all(|id| s.lookup(*id) == Lookup::Removed(None)));
    let before = image_with_clock(&s, 2 * H);
    for (bad, field) in [
        (
            Command::Sweep {
                now_ms: 2 * H,
                retention_ms: 0,
                key_retention_ms: H,
                max_removals: 4,
            },
            "retention_ms",
        ),
        (
            Command::Sweep {
                now_ms: 2 * H,
                retention_ms: H,
                key_retention_ms: H,
                max_removals: 0,
            },
            "max_removals",
        ),
        (
            Command::SetQueue {
                now_ms: 2 * H,
                queue: "q".into(),
                setting: QueueSetting::RetentionMs(Some(0)),
                create: false,
            },
            "retention_ms",
        ),
        (
            Command::SetQueue {
                now_ms: 2 * H,
                queue: "nobody".into(),
                setting: QueueSetting::RetentionMs(Some(5)),
                create: false,
            },
            "queue",
        ),
        (
            Command::SetQueue {
                now_ms: 2 * H,
                queue: "bad name".into(),
                setting: QueueSetting::RetentionMs(Some(5)),
                create: true,
            },
            "queue",
        ),
        (
            Command::SetQueue {
                now_ms: 2 * H,
                queue: "q".into(),
                setting: QueueSetting::Policy(crate::QueuePolicy::Priority { aging_ms: u64::MAX }),
                create: false,
            },
            "aging_ms",
        ),
    ] {
        match s.apply(&bad) {
            Response::Rejected(CommandError::Invalid { field: f, message }) => {
                assert_eq!(f, field, "{message}");
            }
            other => panic!("{bad:?} gave {other:?}"),
        }
        assert_eq!(image_bytes(&s), before, "{bad:?} changed the state");
    }
    // An unknown queue can be configured when asked to create it.
    let create = Command::SetQueue {
        now_ms: 2 * H,
        queue: "later".into(),
        setting: QueueSetting::RetentionMs(Some(5)),
        create: true,
    };
    assert_eq!(s.apply(&create), Response::QueueSet);
    assert_eq!(s.queue_settings("later").retention_ms, Some(5));
}

#[test]
fn a_finished_child_outlives_its_removed_parent_and_a_snapshot_of_it_loads() {
    let mut s = State::new();
    let parent = ids(&submit(&mut s, 0, vec![spec("q")]))[0];
    let mut c = spec("keep");
    c.depends_on = vec![parent];
    let child = ids(&submit(&mut s, 0, vec![c]))[0];
    let r = s.apply(&Command::SetQueue {
        now_ms: 0,
        queue: "keep".into(),
        setting: QueueSetting::RetentionMs(Some(10 * H)),
        create: false,
    });
    assert_eq!(r, Response::QueueSet);
    cancel(&mut s, 10, parent);
    assert_eq!(s.get(child).unwrap().state, TaskState::Failed);
    assert_eq!(
        sweep(&mut s, 10 + H, H, H),
        Response::Swept {
            removed: 1,
            tombstoned: 0,
            forgotten: 0
        }
    );
    assert_eq!(s.lookup(parent), Lookup::Removed(None));
    assert_eq!(s.get(child).unwrap().spec.depends_on, vec![parent]);
    let restored = restore(&s);
    assert_eq!(image_bytes(&restored), image_bytes(&s));
}
