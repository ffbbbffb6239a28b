//! The attempt history: what `apply` records when an attempt ends without finishing its task,
//! and how a snapshot image carries it.

use super::*;
use crate::EndedAttempt;

fn fail(s: &mut State, now_ms: u64, id: TaskId, attempt: u32, error: &str) -> Response {
    s.apply(&Command::Fail {
        now_ms,
        task_id: id,
        worker_id: "w".into(),
        attempt,
        error: error.into(),
        retryable: true,
    })
}

/// A failure with its backoff, then a lost worker, then success: two ended attempts, exactly,
/// which survive a snapshot; the attempt that finished the task is not repeated.
#[test]
fn retries_and_lost_workers_are_recorded_and_survive_a_snapshot() {
    let mut s = State::new();
    let id = running_task(&mut s, "w", 5); // attempt 1 from 2
    let long = "x".repeat(5000);
    let r = fail(&mut s, 40, id, 1, &long);
    assert_eq!(
        r,
        Response::AttemptFailed {
            task_id: id,
            retry_at_ms: Some(540)
        }
    );
    s.apply(&Command::Tick { now_ms: 600 });
    let r = s.apply(&Command::Assign {
        now_ms: 600,
        task_id: id,
        worker_id: "w".into(),
        attempt: 2,
    });
    assert!(matches!(r, Response::Assigned { .. }), "{r:?}");
    let r = s.apply(&Command::ExpireWorker {
        now_ms: 700,
        worker_id: "w".into(),
        reason: "lease expired".into(),
    });
    assert!(
        matches!(&r, Response::WorkerExpired { requeued, .. } if requeued == &[id]),
        "{r:?}"
    );
    let want = [
        EndedAttempt {
            attempt: 1,
            worker: "w".into(),
            started_at_ms: 2,
            ended_at_ms: 40,
            error: "x".repeat(crate::MAX_HISTORY_ERROR_CHARS),
            retry_at_ms: Some(540),
        },
        EndedAttempt {
            attempt: 2,
            worker: "w".into(),
            started_at_ms: 600,
            ended_at_ms: 700,
            error: "worker w lost: lease expired".into(),
            retry_at_ms: None,
        },
    ];
    assert_eq!(s.ended_attempts(id), want);
    assert_eq!(
        s.get(id).unwrap().reason.as_deref(),
        Some("worker w lost: lease expired")
    );
    let restored = restore(&s);
    assert_eq!(restored.ended_attempts(id), want);
    assert_eq!(image_bytes(&restored), image_bytes(&s));

    s.apply(&Command::RegisterWorker {
        now_ms: 800,
        worker: wspec("w", 4),
    });
    for c in [
        Command::Assign {
            now_ms: 800,
            task_id: id,
            worker_id: "w".into(),
            attempt: 3,
        },
        Command::Complete {
            now_ms: 900,
            task_id: id,
            worker_id: "w".into(),
            attempt: 3,
            result: vec![],
        },
    ] {
        let r = s.apply(&c);
        assert!(!matches!(r, Response::Rejected(_)), "{r:?}");
    }
    assert_eq!(s.ended_attempts(id), want, "success adds nothing");
    // The task's first submit had no history: a task that never retried keeps none.
    let other = running_task(&mut s, "w", 1);
    assert!(s.ended_attempts(other).is_empty());
}

/// A failure stamped by a leader whose clock lags the attempt's start ends the attempt at the
/// replicated clock, never before it started.
#[test]
fn an_attempt_ends_on_the_replicated_clock() {
    let mut s = State::new();
    let id = running_task(&mut s, "w", 3);
    s.apply(&Command::Tick { now_ms: 1000 });
    let r = fail(&mut s, 10, id, 1, "late");
    assert!(matches!(r, Response::AttemptFailed { .. }), "{r:?}");
    let e = &s.ended_attempts(id)[0];
    assert_eq!((e.started_at_ms, e.ended_at_ms), (2, 1000));
}

/// An image's attempts records are checked: each must name a task listed before it, in id
/// order, non-empty, within the bound, for attempts the task has had.
#[test]
fn bad_attempts_records_are_refused() {
    let mut s = State::new();
    let id = running_task(&mut s, "w", 3);
    let r = fail(&mut s, 10, id, 1, "boom");
    assert!(matches!(r, Response::AttemptFailed { .. }), "{r:?}");
    let good = records(&s);
    assert!(matches!(good.last(), Some(ImageRecord::Attempts { .. })));
    let ended = s.ended_attempts(id).to_vec();
    let with_last = |last: ImageRecord| {
        let mut r = good.clone();
        *r.last_mut().unwrap() = last;
        State::from_records(r).unwrap_err()
    };
    let attempts = |task: TaskId, ended: Vec<EndedAttempt>| ImageRecord::Attempts { task, ended };
    let cases = [
        (attempts(TaskId(9), ended.clone()), "which the image lacks"),
        (attempts(id, vec![]), "empty attempts record"),
        (
            attempts(id, vec![ended[0].clone(), ended[0].clone()]),
            "out of order",
        ),
        (
            attempts(
                id,
                vec![EndedAttempt {
                    attempt: 2,
                    ..ended[0].clone()
                }],
            ),
            "the task is at attempt 1",
        ),
        (
            attempts(
                id,
                (1..=9)
                    .map(|attempt| EndedAttempt {
                        attempt,
                        ..ended[0].clone()
                    })
                    .collect(),
            ),
            "the bound is 8",
        ),
        (
            attempts(
                id,
                vec![EndedAttempt {
                    ended_at_ms: 1,
                    ..ended[0].clone()
                }],
            ),
            "ended before it started",
        ),
    ];
    for (record, want) in cases {
        let err = with_last(record);
        assert!(err.contains(want), "{want:?}: {err}");
    }
    // Twice for one task.
    let mut twice = good.clone();
    twice.push(good.last().unwrap().clone());
    let err = State::from_records(twice).unwrap_err();
    assert!(err.contains("out of order or listed twice"), "{err}");
    // Before its task.
    let mut early = good.clone();
    let last = early.pop().unwrap();
    early.insert(1, last);
    let err = State::from_records(early).unwrap_err();
    assert!(err.contains("which the image lacks"), "{err}");
}
