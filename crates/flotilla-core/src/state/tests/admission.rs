//! Admission limits and the batch size cap: a submit past a limit is refused naming it, and
//! nothing of it is applied.

use super::*;
use crate::{AdmissionLimits, Limits};

fn limited(
    s: &mut State,
    tasks: Vec<TaskSpec>,
    max_pending: Option<u64>,
    per_queue: Option<u64>,
) -> Response {
    s.apply(&Command::Submit {
        now_ms: 1,
        tasks,
        limits: AdmissionLimits {
            max_pending,
            max_pending_per_queue: per_queue,
        },
    })
}

#[test]
fn backlog_caps_refuse_whole_batches_naming_the_limit() {
    let mut s = State::new();
    assert!(matches!(
        limited(&mut s, vec![spec("a"), spec("a")], None, Some(3)),
        Response::Submitted { .. }
    ));
    let before = image_bytes(&s);
    match limited(&mut s, vec![spec("b"), spec("a"), spec("a")], None, Some(3)) {
        Response::Rejected(CommandError::LimitExceeded { limit, message }) => {
            assert_eq!(limit, "max_pending_per_queue");
            assert!(message.contains("queue \"a\" holds 2"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        image_bytes(&s),
        before,
        "nothing of a refused batch is applied"
    );
    // Another queue has room; the cluster-wide cap counts every queue.
    assert!(matches!(
        limited(&mut s, vec![spec("b")], Some(3), Some(3)),
        Response::Submitted { .. }
    ));
    match limited(&mut s, vec![spec("c")], Some(3), None) {
        Response::Rejected(CommandError::LimitExceeded { limit, .. }) => {
            assert_eq!(limit, "max_pending")
        }
        other => panic!("{other:?}"),
    }
    // Finished and running tasks do not count; waiting ones do.
    s.apply(&Command::Cancel {
        now_ms: 2,
        task_id: TaskId(1),
    });
    assert!(matches!(
        limited(&mut s, vec![spec("c")], Some(3), None),
        Response::Submitted { .. }
    ));
}

#[test]
fn resubmits_of_known_keys_create_nothing_and_pass_a_full_queue() {
    let mut s = State::new();
    assert!(matches!(
        limited(
            &mut s,
            vec![keyed("a", "k1"), keyed("a", "k2")],
            None,
            Some(2)
        ),
        Response::Submitted { .. }
    ));
    // The queue is full, but these keys exist already: the original ids come back.
    assert_eq!(
        limited(
            &mut s,
            vec![keyed("a", "k1"), keyed("a", "k2")],
            None,
            Some(2)
        ),
        Response::Submitted {
            ids: vec![TaskId(1), TaskId(2)],
            created: vec![false, false]
        }
    );
    // A key repeated inside one batch creates one task.
    let mut t = State::new();
    assert_eq!(
        limited(
            &mut t,
            vec![keyed("a", "x"), keyed("a", "x")],
            None,
            Some(1)
        ),
        Response::Submitted {
            ids: vec![TaskId(1), TaskId(1)],
            created: vec![true, false]
        }
    );
}

#[test]
fn a_batch_larger_than_one_entry_may_carry_is_refused() {
    let mut s = State::new();
    let big = |n: usize| TaskSpec::new("q", vec![0u8; n]);
    // Exactly at the cap (two 1 MiB payloads minus the queue names) is accepted.
    let at_cap = Limits::MAX_BATCH_BYTES / 2 - 1;
    assert!(matches!(
        submit(&mut s, 1, vec![big(at_cap), big(at_cap)]),
        Response::Submitted { .. }
    ));
    let before = image_bytes(&s);
    match submit(
        &mut s,
        1,
        vec![
            big(Limits::MAX_PAYLOAD_BYTES),
            big(Limits::MAX_PAYLOAD_BYTES),
            big(10),
        ],
    ) {
        Response::Rejected(CommandError::Invalid { field, message }) => {
            assert_eq!(field, "tasks");
            assert!(message.contains("max_batch_bytes"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(image_bytes(&s), before);
}
