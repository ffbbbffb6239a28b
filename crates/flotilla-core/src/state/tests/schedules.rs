//! Schedules: each tick fires at most once whatever is proposed twice; overlap skip; pause and
//! resume; admission; delete; carried by snapshots; refused input changes nothing.

use super::*;
use crate::schedule::{tick_key, Overlap, ScheduleSpec, TickOutcome};
use crate::AdmissionLimits;

fn every_second(name: &str, overlap: Overlap) -> ScheduleSpec {
    ScheduleSpec {
        name: name.into(),
        cron: "* * * * * *".into(),
        task: spec("cron"),
        overlap,
    }
}

fn add(s: &mut State, now_ms: u64, spec: ScheduleSpec, next: Option<u64>) -> Response {
    s.apply(&Command::AddSchedule {
        now_ms,
        schedule: Box::new(spec),
        next_tick_ms: next,
    })
}

fn fire(s: &mut State, now_ms: u64, name: &str, tick_ms: u64, next: Option<u64>) -> Response {
    s.apply(&Command::FireSchedule {
        now_ms,
        name: name.into(),
        tick_ms,
        next_tick_ms: next,
        missed: 0,
        limits: AdmissionLimits::default(),
    })
}

fn created(task: u64) -> TickOutcome {
    TickOutcome::Created {
        task: TaskId(task),
        created: true,
    }
}

fn fired(name: &str, tick_ms: u64, outcome: TickOutcome) -> Response {
    Response::ScheduleFired {
        name: name.into(),
        tick_ms,
        outcome,
    }
}

fn set(name: &str) -> Response {
    Response::ScheduleSet { name: name.into() }
}

fn invalid_field(r: &Response) -> &str {
    match r {
        Response::Rejected(CommandError::Invalid { field, .. }) => field,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn each_tick_fires_once_and_a_second_proposal_of_it_is_refused() {
    let mut s = State::new();
    assert_eq!(
        add(&mut s, 500, every_second("t", Overlap::Allow), Some(1000)),
        set("t")
    );
    assert_eq!(s.next_schedule_tick_ms(), Some(1000));
    // Not yet: the tick is ahead of the clock.
    let before = s.clone();
    assert_eq!(
        invalid_field(&fire(&mut s, 999, "t", 1000, Some(2000))),
        "tick_ms"
    );
    assert_eq!(
        image_bytes(&s),
        image_with_clock(&before, 999),
        "only the clock moved"
    );
    assert_eq!(
        fire(&mut s, 1000, "t", 1000, Some(2000)),
        fired("t", 1000, created(1))
    );
    // The same tick again (a new leader proposing what the old one did): refused.
    let before = s.clone();
    let r = fire(&mut s, 1001, "t", 1000, Some(2000));
    assert_eq!(invalid_field(&r), "tick_ms");
    assert!(
        r_text(&r).contains("fired already (next tick 2000)"),
        "{r:?}"
    );
    assert_eq!(image_bytes(&s), image_with_clock(&before, 1001));
    assert_eq!(s.task_count(), 1);
    let t = s.get(TaskId(1)).unwrap();
    assert_eq!(t.spec.idempotency_key.as_deref(), Some("schedule:t:1000"));
    assert_eq!(t.spec.queue, "cron");
    assert_eq!(s.task_by_key(&tick_key("t", 1000)), Some(TaskId(1)));
    // The next tick fires while the first task still runs: overlap allow.
    assert_eq!(
        fire(&mut s, 2000, "t", 2000, Some(3000)),
        fired("t", 2000, created(2))
    );
    let sc = s.schedule("t").unwrap();
    assert_eq!(
        (
            sc.fired,
            sc.skipped,
            sc.missed,
            sc.last_tick_ms,
            sc.next_tick_ms,
            sc.last_task
        ),
        (2, 0, 0, Some(2000), Some(3000), Some(TaskId(2)))
    );
}

fn r_text(r: &Response) -> String {
    match r {
        Response::Rejected(e) => e.to_string(),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn overlap_skip_passes_over_a_tick_while_the_last_task_is_unfinished() {
    let mut s = State::new();
    assert_eq!(
        add(&mut s, 0, every_second("t", Overlap::Skip), Some(1000)),
        set("t")
    );
    assert_eq!(
        fire(&mut s, 1000, "t", 1000, Some(2000)),
        fired("t", 1000, created(1))
    );
    assert_eq!(
        fire(&mut s, 2000, "t", 2000, Some(3000)),
        fired(
            "t",
            2000,
            TickOutcome::Skipped("overlap skip: task 1 of the previous tick is pending".into())
        )
    );
    assert_eq!(s.task_count(), 1);
    // Once it finished, the next tick creates a task again.
    assert!(matches!(
        s.apply(&Command::Cancel {
            now_ms: 2500,
            task_id: TaskId(1)
        }),
        Response::Cancelled { .. }
    ));
    assert_eq!(
        fire(&mut s, 3000, "t", 3000, Some(4000)),
        fired("t", 3000, created(2))
    );
    let sc = s.schedule("t").unwrap();
    assert_eq!((sc.fired, sc.skipped), (2, 1));
}

#[test]
fn a_late_fire_takes_the_latest_tick_and_counts_the_missed() {
    let mut s = State::new();
    assert_eq!(
        add(&mut s, 0, every_second("t", Overlap::Skip), Some(1000)),
        set("t")
    );
    // The leader was down from before 1000 until 5500: it fires 5000 once, 4 missed.
    let r = s.apply(&Command::FireSchedule {
        now_ms: 5500,
        name: "t".into(),
        tick_ms: 5000,
        next_tick_ms: Some(6000),
        missed: 4,
        limits: AdmissionLimits::default(),
    });
    assert_eq!(r, fired("t", 5000, created(1)));
    let sc = s.schedule("t").unwrap();
    assert_eq!((sc.fired, sc.missed, sc.next_tick_ms), (1, 4, Some(6000)));
    // Earlier ticks can no longer fire.
    for tick in [1000, 3000, 5000] {
        assert_eq!(
            invalid_field(&fire(&mut s, 5600, "t", tick, Some(6000))),
            "tick_ms"
        );
    }
    // A next tick not after the tick is refused.
    assert_eq!(
        invalid_field(&fire(&mut s, 6000, "t", 6000, Some(6000))),
        "next_tick_ms"
    );
    assert_eq!(s.task_count(), 1);
}

#[test]
fn a_paused_schedule_fires_nothing_and_resumes_from_the_next_tick() {
    let mut s = State::new();
    assert_eq!(
        add(&mut s, 0, every_second("t", Overlap::Allow), Some(1000)),
        set("t")
    );
    let pause = |s: &mut State, now_ms, paused, next| {
        s.apply(&Command::PauseSchedule {
            now_ms,
            name: "t".into(),
            paused,
            next_tick_ms: next,
        })
    };
    assert_eq!(pause(&mut s, 500, true, None), set("t"));
    assert_eq!(
        s.next_schedule_tick_ms(),
        None,
        "a paused schedule is never due"
    );
    assert_eq!(
        invalid_field(&fire(&mut s, 1000, "t", 1000, Some(2000))),
        "name"
    );
    // Resuming at 7200: ticks 1000..=7000 passed while paused and never fire.
    assert_eq!(
        invalid_field(&pause(&mut s, 7200, false, Some(7000))),
        "next_tick_ms"
    );
    assert_eq!(pause(&mut s, 7200, false, Some(8000)), set("t"));
    assert_eq!(s.next_schedule_tick_ms(), Some(8000));
    assert_eq!(
        invalid_field(&fire(&mut s, 7300, "t", 7000, Some(8000))),
        "tick_ms"
    );
    assert_eq!(
        fire(&mut s, 8000, "t", 8000, Some(9000)),
        fired("t", 8000, created(1))
    );
    // Resuming a running schedule changes nothing.
    assert_eq!(pause(&mut s, 8100, false, Some(99_000)), set("t"));
    assert_eq!(s.schedule("t").unwrap().next_tick_ms, Some(9000));
    let unknown = s.apply(&Command::PauseSchedule {
        now_ms: 8200,
        name: "nope".into(),
        paused: true,
        next_tick_ms: None,
    });
    assert_eq!(
        unknown,
        Response::Rejected(CommandError::UnknownSchedule("nope".into()))
    );
}

#[test]
fn a_tick_over_the_admission_limit_is_skipped_and_said_why() {
    let mut s = State::new();
    assert_eq!(
        add(&mut s, 0, every_second("t", Overlap::Allow), Some(1000)),
        set("t")
    );
    let r = s.apply(&Command::FireSchedule {
        now_ms: 1000,
        name: "t".into(),
        tick_ms: 1000,
        next_tick_ms: Some(2000),
        missed: 0,
        limits: AdmissionLimits {
            max_pending: Some(0),
            max_pending_per_queue: None,
        },
    });
    let Response::ScheduleFired {
        outcome: TickOutcome::Skipped(why),
        ..
    } = &r
    else {
        panic!("{r:?}")
    };
    assert!(why.contains("max_pending"), "{why}");
    assert_eq!(s.task_count(), 0);
    assert_eq!(s.schedule("t").unwrap().skipped, 1);
}

#[test]
fn a_deleted_and_re_added_schedule_does_not_fire_a_tick_twice() {
    let mut s = State::new();
    assert_eq!(
        add(&mut s, 0, every_second("t", Overlap::Allow), Some(1000)),
        set("t")
    );
    assert_eq!(
        fire(&mut s, 1000, "t", 1000, Some(2000)),
        fired("t", 1000, created(1))
    );
    let del = s.apply(&Command::DeleteSchedule {
        now_ms: 1100,
        name: "t".into(),
    });
    assert_eq!(del, set("t"));
    assert!(s.schedule("t").is_none());
    assert_eq!(
        s.get(TaskId(1)).map(|t| t.state),
        Some(TaskState::Pending),
        "its task stays"
    );
    // Added again with a first tick it already fired: the key finds the first task.
    assert_eq!(
        add(&mut s, 900, every_second("t", Overlap::Allow), Some(1000)),
        set("t")
    );
    assert_eq!(
        fire(&mut s, 1200, "t", 1000, Some(2000)),
        fired(
            "t",
            1000,
            TickOutcome::Created {
                task: TaskId(1),
                created: false
            }
        )
    );
    assert_eq!(s.task_count(), 1);
    assert_eq!(
        s.apply(&Command::DeleteSchedule {
            now_ms: 1300,
            name: "nope".into()
        }),
        Response::Rejected(CommandError::UnknownSchedule("nope".into()))
    );
}

#[test]
fn bad_schedules_are_refused_naming_the_field_and_change_nothing() {
    let mut s = State::new();
    assert_eq!(
        add(&mut s, 100, every_second("t", Overlap::Allow), Some(1000)),
        set("t")
    );
    let before = image_with_clock(&s, 200);
    let mut keyed_task = every_second("k", Overlap::Allow);
    keyed_task.task.idempotency_key = Some("x".into());
    let mut bad_queue = every_second("k", Overlap::Allow);
    bad_queue.task.queue = "no spaces".into();
    // The same add again is a retry: it succeeds and changes nothing.
    assert_eq!(
        add(&mut s, 200, every_second("t", Overlap::Allow), Some(1000)),
        set("t")
    );
    assert_eq!(image_bytes(&s), before);
    for (spec, next, field) in [
        (every_second("t", Overlap::Skip), Some(1000), "name"),
        (every_second("a:b", Overlap::Allow), Some(1000), "name"),
        (keyed_task, Some(1000), "task.idempotency_key"),
        (bad_queue, Some(1000), "task.queue"),
        (every_second("k", Overlap::Allow), Some(200), "next_tick_ms"),
    ] {
        let r = add(&mut s, 200, spec, next);
        assert_eq!(invalid_field(&r), field, "{r:?}");
        assert_eq!(image_bytes(&s), before);
    }
    assert_eq!(
        fire(&mut s, 1000, "nope", 1000, None),
        Response::Rejected(CommandError::UnknownSchedule("nope".into()))
    );
}

#[test]
fn schedules_are_carried_by_snapshots_and_refused_in_an_older_image() {
    let mut s = State::new();
    assert_eq!(
        add(&mut s, 0, every_second("b", Overlap::Skip), Some(1000)),
        set("b")
    );
    assert_eq!(
        add(&mut s, 0, every_second("a", Overlap::Allow), None),
        set("a")
    );
    assert_eq!(
        fire(&mut s, 1000, "b", 1000, Some(2000)),
        fired("b", 1000, created(1))
    );
    let back = restore(&s);
    assert_eq!(image_bytes(&back), image_bytes(&s));
    assert_eq!(back.schedule("b"), s.schedule("b"));
    assert_eq!(back.next_schedule_tick_ms(), Some(2000));
    // A schedule record in a version 4 image is refused; out of order too.
    let mut recs = records(&s);
    let ImageRecord::Header(h) = &mut recs[0] else {
        unreachable!()
    };
    h.version = 4;
    let err = State::from_records(recs).unwrap_err();
    assert!(err.contains("older than version 5"), "{err}");
    let mut recs = records(&s);
    let n = recs.len();
    recs.swap(n - 1, n - 2);
    let err = State::from_records(recs).unwrap_err();
    assert!(err.contains("out of order"), "{err}");
}
