//! The leader engine on simulated time: each test drives events with chosen clocks and asserts
//! the exact effects, carrying out proposals against a real [`State`] as the shell would.

use std::collections::BTreeMap;

use super::*;
use crate::{Capacity, Limits, TaskSpec, TaskState, WorkerSpec};

const TTL: u64 = 1_000;
const TIMERS: u64 = 100;
/// The wall clock runs this far ahead of the monotonic one in these tests.
const WALL0: u64 = 1_700_000_000_000;

fn at(mono_ms: u64) -> Now {
    Now {
        mono_ms,
        wall_ms: WALL0 + mono_ms,
    }
}

fn config() -> EngineConfig {
    EngineConfig {
        lease_ttl_ms: TTL,
        timers_every_ms: TIMERS,
        retention: RetentionConfig {
            retention_ms: 60_000,
            key_retention_ms: 120_000,
            max_removals: 100,
        },
        plan: PlanConfig::default(),
        push_before_commit: false,
        calendar: std::sync::Arc::new(crate::schedule::IntervalCalendar),
        admission: crate::AdmissionLimits::default(),
    }
}

fn worker(id: &str, slots: u32) -> WorkerSpec {
    WorkerSpec {
        id: id.into(),
        session: format!("s-{id}"),
        capacity: Capacity {
            slots,
            cpu_millis: 4_000,
            mem_mb: 4_096,
        },
        labels: BTreeMap::new(),
        queues: Vec::new(),
    }
}

/// A state, an engine and the shell's part: apply what the engine proposes.
struct Harness {
    state: State,
    engine: LeaderEngine,
}

impl Harness {
    fn new(config: EngineConfig) -> Harness {
        Harness {
            state: State::new(),
            engine: LeaderEngine::new(config),
        }
    }

    fn apply(&mut self, command: Command) -> Response {
        let r = self.state.apply(&command);
        self.state.check_invariants().unwrap();
        r
    }

    fn register(&mut self, w: &WorkerSpec, now: Now) {
        let r = self.apply(Command::RegisterWorker {
            now_ms: now.wall_ms,
            worker: w.clone(),
        });
        assert!(
            matches!(r, Response::WorkerRegistered { .. }),
            "register: {r:?}"
        );
    }

    fn submit(&mut self, now: Now, spec: TaskSpec) -> TaskId {
        match self.apply(Command::submit(now.wall_ms, vec![spec])) {
            Response::Submitted { ids, .. } => ids[0],
            other => panic!("submit: {other:?}"),
        }
    }

    fn event(&mut self, event: Event) -> Vec<Effect> {
        self.engine.handle(&self.state, event)
    }

    /// Registers `w`, opens its stream, and returns the effects of connecting.
    fn connect(&mut self, w: &WorkerSpec, now: Now) -> Vec<Effect> {
        self.register(w, now);
        self.event(Event::WorkerConnected {
            worker: w.id.clone(),
            session: w.session.clone(),
            owner: None,
            now,
        })
    }

    /// One tick as the shell runs it: proposals are applied (committed) and fed back; returns
    /// every effect in order.
    fn tick(&mut self, now: Now) -> Vec<Effect> {
        self.tick_with(now, true)
    }

    /// A tick whose proposals are applied when `commit`, or lost (not committed) otherwise.
    fn tick_with(&mut self, now: Now, commit: bool) -> Vec<Effect> {
        let effects = self.event(Event::Tick { now });
        let mut all = effects.clone();
        for e in effects {
            if let Effect::Propose(command) = e {
                let response = commit.then(|| self.apply(command.clone()));
                all.extend(self.event(Event::Proposed { command, response }));
            }
        }
        all
    }
}

fn proposals(effects: &[Effect]) -> Vec<&Command> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Propose(c) => Some(c),
            _ => None,
        })
        .collect()
}

fn assign(now: Now, task_id: TaskId, worker: &str, attempt: u32) -> Effect {
    Effect::Propose(Command::Assign {
        now_ms: now.wall_ms,
        task_id,
        worker_id: worker.into(),
        attempt,
    })
}

fn push(worker: &str, task_id: TaskId, attempt: u32, reason: PushReason) -> Effect {
    Effect::Push {
        worker: worker.into(),
        task_id,
        attempt,
        reason,
    }
}

fn expire(now: Now, worker: &str) -> Effect {
    Effect::Propose(Command::ExpireWorker {
        now_ms: now.wall_ms,
        worker_id: worker.into(),
        reason: format!("no heartbeat for {TTL} ms"),
    })
}

fn heartbeat(worker: &str, running: &[(TaskId, u32)], now: Now) -> Event {
    Event::Heartbeat {
        worker: worker.into(),
        running: running.to_vec(),
        draining: false,
        now,
    }
}

#[test]
fn a_follower_engine_decides_nothing() {
    let mut h = Harness::new(config());
    let w = worker("w1", 4);
    h.connect(&w, at(0));
    h.submit(at(0), TaskSpec::new("q", b"x".to_vec()));
    assert_eq!(h.tick(at(10)), vec![]);
    assert_eq!(h.tick(at(10 * TTL)), vec![], "no expiry either");
    assert!(!h.engine.is_leader());
}

#[test]
fn an_assignment_is_pushed_only_after_its_assign_commits() {
    let mut h = Harness::new(config());
    h.event(Event::BecameLeader { now: at(0) });
    let w = worker("w1", 4);
    assert_eq!(h.connect(&w, at(0)), vec![], "nothing to redeliver");
    let t = h.submit(at(1), TaskSpec::new("q", b"x".to_vec()));

    // Not committed: nothing is pushed, and the task stays pending.
    let lost = h.tick_with(at(5), false);
    assert_eq!(lost, vec![assign(at(5), t, "w1", 1)]);
    assert_eq!(h.state.get(t).unwrap().state, TaskState::Pending);

    // Committed: pushed, once, after the proposal.
    let done = h.tick(at(10));
    assert_eq!(
        done,
        vec![
            assign(at(10), t, "w1", 1),
            push("w1", t, 1, PushReason::Committed)
        ]
    );
    assert_eq!(
        h.tick(at(20)),
        vec![],
        "a running task is not planned again"
    );
}

#[test]
fn the_planted_bug_pushes_before_the_commit() {
    let mut h = Harness::new(EngineConfig {
        push_before_commit: true,
        ..config()
    });
    h.event(Event::BecameLeader { now: at(0) });
    h.connect(&worker("w1", 4), at(0));
    let t = h.submit(at(1), TaskSpec::new("q", b"x".to_vec()));
    assert_eq!(
        h.tick_with(at(5), false),
        vec![
            push("w1", t, 1, PushReason::Planted),
            assign(at(5), t, "w1", 1)
        ]
    );
}

#[test]
fn only_workers_streaming_to_this_leader_and_not_draining_get_work() {
    let mut h = Harness::new(config());
    h.event(Event::BecameLeader { now: at(0) });
    let w = worker("w1", 4);
    h.register(&w, at(0));
    let t = h.submit(at(0), TaskSpec::new("q", b"x".to_vec()));
    assert_eq!(
        h.tick(at(5)),
        vec![],
        "registered, but no stream to this leader"
    );

    // A stream under another session (an older process) does not count either.
    h.event(Event::WorkerConnected {
        worker: "w1".into(),
        session: "stale".into(),
        owner: None,
        now: at(6),
    });
    assert_eq!(h.tick(at(7)), vec![]);

    h.event(Event::WorkerConnected {
        worker: "w1".into(),
        session: w.session.clone(),
        owner: None,
        now: at(8),
    });
    h.event(Event::Heartbeat {
        worker: "w1".into(),
        running: vec![],
        draining: true,
        now: at(9),
    });
    assert_eq!(h.tick(at(10)), vec![], "draining");
    assert!(h.engine.lease("w1").unwrap().draining);

    // Connecting again ends the drain; a closed stream ends the worker's turn again.
    h.event(Event::WorkerConnected {
        worker: "w1".into(),
        session: w.session.clone(),
        owner: None,
        now: at(11),
    });
    h.event(Event::StreamClosed {
        worker: "w1".into(),
    });
    assert_eq!(h.tick(at(12)), vec![]);
    h.event(Event::WorkerConnected {
        worker: "w1".into(),
        session: w.session.clone(),
        owner: None,
        now: at(13),
    });
    assert_eq!(
        h.tick(at(14)),
        vec![
            assign(at(14), t, "w1", 1),
            push("w1", t, 1, PushReason::Committed)
        ]
    );
}

#[test]
fn a_new_leader_grants_a_full_lease_of_grace_then_expires_exactly_after_the_ttl() {
    let mut h = Harness::new(config());
    let w = worker("w1", 4);
    h.register(&w, at(0));
    let t = h.submit(at(0), TaskSpec::new("q", b"x".to_vec()));
    h.apply(Command::Assign {
        now_ms: WALL0,
        task_id: t,
        worker_id: "w1".into(),
        attempt: 1,
    });
    // Heard long ago by an earlier leader; this one is elected at 5,000.
    h.event(Event::BecameLeader { now: at(5_000) });
    assert_eq!(h.tick(at(5_000 + TTL)), vec![], "within the grace period");
    let effects = h.tick(at(5_000 + TTL + 1));
    assert_eq!(
        effects,
        vec![
            expire(at(5_000 + TTL + 1), "w1"),
            Effect::CloseStream {
                worker: "w1".into()
            }
        ]
    );
    assert_eq!(
        h.state.get(t).unwrap().state,
        TaskState::Pending,
        "its task goes back to pending"
    );
    assert!(h.state.worker("w1").is_none());
    assert_eq!(h.engine.lease("w1"), None);
}

#[test]
fn a_worker_registering_with_a_long_standing_leader_is_not_expired_before_its_stream_opens() {
    // The leader was elected long ago. A worker's `RegisterWorker` commits; its stream opens
    // a moment later. A tick in between must not count the lease from the election.
    let mut h = Harness::new(config());
    h.event(Event::BecameLeader { now: at(0) });
    let w = worker("w1", 4);
    let asked = at(10 * TTL);
    assert_eq!(
        h.event(Event::WorkerRegistering {
            worker: w.id.clone(),
            session: w.session.clone(),
            now: asked,
        }),
        vec![]
    );
    h.register(&w, asked);
    assert_eq!(
        proposals(&h.tick(at(10 * TTL + 1))),
        Vec::<&Command>::new(),
        "registered a moment ago, stream not yet open"
    );
    assert!(h.state.worker("w1").is_some());
    // Never connected: the lease runs out a TTL after it asked.
    assert_eq!(proposals(&h.tick(at(11 * TTL))), Vec::<&Command>::new());
    assert_eq!(
        proposals(&h.tick(at(11 * TTL + 1))),
        vec![&Command::ExpireWorker {
            now_ms: at(11 * TTL + 1).wall_ms,
            worker_id: "w1".into(),
            reason: format!("no heartbeat for {TTL} ms"),
        }]
    );
}

#[test]
fn another_session_asking_for_a_live_workers_id_does_not_renew_its_lease() {
    let mut h = Harness::new(config());
    h.event(Event::BecameLeader { now: at(0) });
    let w = worker("w1", 4);
    h.connect(&w, at(0));
    // The worker died; a second process with the same id keeps asking (and is refused).
    for t in 1..=5 {
        h.event(Event::WorkerRegistering {
            worker: w.id.clone(),
            session: "another".into(),
            now: at(t * TTL / 4),
        });
    }
    assert_eq!(h.engine.lease("w1").unwrap().heard_ms, Some(0));
    assert_eq!(
        proposals(&h.tick(at(TTL + 1))),
        vec![&Command::ExpireWorker {
            now_ms: at(TTL + 1).wall_ms,
            worker_id: "w1".into(),
            reason: format!("no heartbeat for {TTL} ms"),
        }]
    );
}

#[test]
fn heartbeats_renew_the_lease() {
    let mut h = Harness::new(config());
    h.event(Event::BecameLeader { now: at(0) });
    h.connect(&worker("w1", 4), at(0));
    for beat in 1..=10 {
        let now = at(beat * TTL / 2);
        assert_eq!(h.event(heartbeat("w1", &[], now)), vec![]);
        assert_eq!(proposals(&h.tick(now)), Vec::<&Command>::new());
    }
    assert_eq!(
        h.engine.lease("w1").unwrap().heard_ms,
        Some(5 * TTL),
        "heard at the last beat"
    );
    let late = at(5 * TTL + TTL + 1);
    assert_eq!(
        proposals(&h.tick(late)),
        vec![&Command::ExpireWorker {
            now_ms: late.wall_ms,
            worker_id: "w1".into(),
            reason: format!("no heartbeat for {TTL} ms"),
        }]
    );
}

#[test]
fn an_expiry_is_proposed_once_while_in_flight_and_again_if_it_was_lost() {
    let mut h = Harness::new(config());
    h.event(Event::BecameLeader { now: at(0) });
    h.register(&worker("w1", 4), at(0));
    let late = at(TTL + 1);
    let first = h.event(Event::Tick { now: late });
    assert_eq!(first, vec![expire(late, "w1")]);
    assert_eq!(
        h.event(Event::Tick { now: at(TTL + 2) }),
        vec![],
        "not proposed twice while the first is in flight"
    );
    let command = match &first[0] {
        Effect::Propose(c) => c.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        h.event(Event::Proposed {
            command,
            response: None
        }),
        vec![]
    );
    assert_eq!(
        h.event(Event::Tick { now: at(TTL + 3) }),
        vec![expire(at(TTL + 3), "w1")],
        "lost: proposed again"
    );
}

#[test]
fn a_reconnecting_worker_is_sent_every_attempt_the_state_says_it_runs() {
    let mut h = Harness::new(config());
    h.event(Event::BecameLeader { now: at(0) });
    let w = worker("w1", 4);
    h.connect(&w, at(0));
    let a = h.submit(at(0), TaskSpec::new("q", b"a".to_vec()));
    let b = h.submit(at(0), TaskSpec::new("q", b"b".to_vec()));
    let effects = h.tick(at(1));
    assert_eq!(proposals(&effects).len(), 2, "{effects:?}");
    h.event(Event::StreamClosed {
        worker: "w1".into(),
    });
    assert_eq!(
        h.event(Event::WorkerConnected {
            worker: "w1".into(),
            session: w.session.clone(),
            owner: None,
            now: at(2),
        }),
        vec![
            push("w1", a, 1, PushReason::Reconnected),
            push("w1", b, 1, PushReason::Reconnected)
        ]
    );
}

#[test]
fn an_attempt_two_heartbeats_do_not_list_is_pushed_again_then_counted_afresh() {
    let mut h = Harness::new(config());
    h.event(Event::BecameLeader { now: at(0) });
    h.connect(&worker("w1", 4), at(0));
    let t = h.submit(at(0), TaskSpec::new("q", b"x".to_vec()));
    h.tick(at(1));
    assert_eq!(
        h.event(heartbeat("w1", &[], at(100))),
        vec![],
        "once: maybe in flight"
    );
    assert_eq!(
        h.event(heartbeat("w1", &[], at(200))),
        vec![push("w1", t, 1, PushReason::Unreported)]
    );
    assert_eq!(
        h.event(heartbeat("w1", &[], at(300))),
        vec![],
        "counted afresh"
    );
    assert_eq!(
        h.event(heartbeat("w1", &[], at(400))),
        vec![push("w1", t, 1, PushReason::Unreported)]
    );
    assert_eq!(h.event(heartbeat("w1", &[(t, 1)], at(500))), vec![]);
    assert_eq!(h.event(heartbeat("w1", &[(t, 1)], at(600))), vec![]);
}

#[test]
fn a_heartbeat_is_told_to_stop_attempts_that_are_not_current() {
    let mut h = Harness::new(config());
    h.event(Event::BecameLeader { now: at(0) });
    h.connect(&worker("w1", 4), at(0));
    let t = h.submit(at(0), TaskSpec::new("q", b"x".to_vec()));
    h.tick(at(1));
    let r = h.apply(Command::Cancel {
        now_ms: WALL0 + 2,
        task_id: t,
    });
    assert!(matches!(r, Response::Cancelled { .. }), "{r:?}");
    let stale = TaskId(999);
    assert_eq!(
        h.event(heartbeat("w1", &[(t, 1), (stale, 3)], at(3))),
        vec![
            Effect::Cancel {
                worker: "w1".into(),
                task_id: t,
                attempt: 1
            },
            Effect::Cancel {
                worker: "w1".into(),
                task_id: stale,
                attempt: 3
            }
        ]
    );
}

#[test]
fn a_cancellation_goes_down_the_stream_at_once_when_the_worker_has_one() {
    let mut h = Harness::new(config());
    h.event(Event::BecameLeader { now: at(0) });
    h.connect(&worker("w1", 4), at(0));
    let cancelled = Event::TaskCancelled {
        task_id: TaskId(7),
        worker: "w1".into(),
        attempt: 2,
    };
    assert_eq!(
        h.event(cancelled.clone()),
        vec![Effect::Cancel {
            worker: "w1".into(),
            task_id: TaskId(7),
            attempt: 2
        }]
    );
    h.event(Event::StreamClosed {
        worker: "w1".into(),
    });
    assert_eq!(
        h.event(cancelled),
        vec![],
        "no stream: the next heartbeat says it"
    );
}

#[test]
fn an_overdue_attempt_is_failed_and_retried_after_its_backoff_through_a_tick() {
    let mut h = Harness::new(config());
    h.event(Event::BecameLeader { now: at(0) });
    h.connect(&worker("w1", 4), at(0));
    let mut spec = TaskSpec::new("q", b"x".to_vec());
    spec.timeout_ms = Some(500);
    spec.max_attempts = 2;
    let t = h.submit(at(0), spec);
    h.tick(at(10));
    for beat in [200, 400] {
        h.event(heartbeat("w1", &[(t, 1)], at(beat)));
        assert_eq!(h.tick(at(beat)), vec![], "within its time");
    }
    // Strictly past the deadline: failed as timed out, retryable.
    let now = at(511);
    let effects = h.tick(now);
    assert_eq!(
        proposals(&effects),
        vec![&Command::Fail {
            now_ms: now.wall_ms,
            task_id: t,
            worker_id: "w1".into(),
            attempt: 1,
            error: "attempt 1 timed out after 500 ms".into(),
            retryable: true,
        }]
    );
    assert_eq!(h.state.get(t).unwrap().state, TaskState::Waiting);
    let retry_at = h.state.next_wakeup_ms().expect("a retry is scheduled");
    assert_eq!(retry_at, now.wall_ms + Limits::RETRY_BACKOFF_BASE_MS);

    // No tick command before the backoff has passed; one at the first look after it (the
    // timers are looked at every `TIMERS` ms); then the assignment.
    let before = retry_at - WALL0 - 1;
    h.event(heartbeat("w1", &[], at(before)));
    assert_eq!(h.tick(at(before)), vec![]);
    let due = at(before + TIMERS);
    h.event(heartbeat("w1", &[], due));
    let effects = h.tick(due);
    assert_eq!(
        effects,
        vec![Effect::Propose(Command::Tick {
            now_ms: due.wall_ms
        })]
    );
    assert_eq!(h.state.get(t).unwrap().state, TaskState::Pending);
    let next = at(due.mono_ms + 1);
    assert_eq!(
        h.tick(next),
        vec![
            assign(next, t, "w1", 2),
            push("w1", t, 2, PushReason::Committed)
        ]
    );
}

#[test]
fn timers_and_sweeps_are_looked_at_once_per_period() {
    let mut h = Harness::new(config());
    h.event(Event::BecameLeader { now: at(0) });
    let mut spec = TaskSpec::new("q", b"x".to_vec());
    spec.not_before_ms = Some(WALL0 + 50);
    let t = h.submit(at(0), spec);
    assert_eq!(h.tick(at(0)), vec![], "looked at, not due");
    // Due at 50, but the timers are next looked at 100 ms after the last look.
    assert_eq!(h.tick(at(60)), vec![]);
    assert_eq!(
        h.tick(at(TIMERS)),
        vec![Effect::Propose(Command::Tick {
            now_ms: WALL0 + TIMERS
        })]
    );
    assert_eq!(h.state.get(t).unwrap().state, TaskState::Pending);

    // A finished task is swept once its retention has passed.
    h.apply(Command::Cancel {
        now_ms: WALL0 + TIMERS,
        task_id: t,
    });
    let due = h
        .state
        .next_sweep_ms(60_000, 120_000)
        .expect("a sweep is scheduled");
    let now = at(due - WALL0);
    assert_eq!(
        h.tick(now),
        vec![Effect::Propose(Command::Sweep {
            now_ms: now.wall_ms,
            retention_ms: 60_000,
            key_retention_ms: 120_000,
            max_removals: 100,
        })]
    );
    assert!(h.state.get(t).is_none(), "swept");
}

#[test]
fn losing_leadership_forgets_every_lease_and_closes_every_stream() {
    let mut h = Harness::new(config());
    h.event(Event::BecameLeader { now: at(0) });
    h.event(Event::WorkerConnected {
        worker: "w1".into(),
        session: "s".into(),
        owner: Some("alice".into()),
        now: at(0),
    });
    assert_eq!(h.engine.owner("w1"), Some("alice"));
    assert_eq!(
        h.event(Event::LostLeadership),
        vec![Effect::CloseAllStreams]
    );
    assert_eq!(h.engine.owner("w1"), None);
    assert_eq!(h.engine.lease("w1"), None);
    assert!(!h.engine.is_leader());
}

#[test]
fn a_worker_that_left_is_forgotten_and_its_stream_closed() {
    let mut h = Harness::new(config());
    h.event(Event::BecameLeader { now: at(0) });
    h.connect(&worker("w1", 4), at(0));
    assert_eq!(
        h.event(Event::WorkerLeft {
            worker: "w1".into()
        }),
        vec![Effect::CloseStream {
            worker: "w1".into()
        }]
    );
    assert_eq!(h.engine.lease("w1"), None);
}

fn add_schedule(h: &mut Harness, now: Now, name: &str, every_ms: u64) {
    let r = h.apply(Command::AddSchedule {
        now_ms: now.wall_ms,
        schedule: Box::new(crate::ScheduleSpec {
            name: name.into(),
            cron: format!("every:{every_ms}"),
            task: TaskSpec::new("cron", b"x".to_vec()),
            overlap: crate::Overlap::Allow,
        }),
        next_tick_ms: Some((now.wall_ms / every_ms + 1) * every_ms),
    });
    assert_eq!(r, Response::ScheduleSet { name: name.into() });
}

fn fire(now: Now, name: &str, tick_ms: u64, next_tick_ms: u64, missed: u32) -> Effect {
    Effect::Propose(Command::FireSchedule {
        now_ms: now.wall_ms,
        name: name.into(),
        tick_ms,
        next_tick_ms: Some(next_tick_ms),
        missed,
        limits: crate::AdmissionLimits::default(),
    })
}

#[test]
fn a_due_tick_is_fired_once_and_a_late_leader_fires_only_the_latest() {
    let mut h = Harness::new(config());
    h.event(Event::BecameLeader { now: at(0) });
    add_schedule(&mut h, at(0), "s", 1_000);
    let first = (WALL0 / 1_000 + 1) * 1_000;
    let before = at(first - WALL0 - 1);
    assert_eq!(h.tick(before), vec![], "not due yet");
    let on_time = at(first - WALL0 + 1 + TIMERS);
    assert_eq!(
        h.tick(on_time),
        vec![fire(on_time, "s", first, first + 1_000, 0)]
    );
    // Proposed again by a leader that did not see the commit: refused, nothing created.
    let again = h.apply(match fire(on_time, "s", first, first + 1_000, 0) {
        Effect::Propose(c) => c,
        _ => unreachable!(),
    });
    assert!(matches!(again, Response::Rejected(_)), "{again:?}");
    assert_eq!(h.state.task_count(), 1);
    assert_eq!(
        h.tick(at(on_time.mono_ms + TIMERS)),
        vec![],
        "fired: next due later"
    );

    // The leader goes away for 5.5 s; a new one fires the latest tick once, 4 missed.
    h.event(Event::LostLeadership);
    h.event(Event::BecameLeader {
        now: at(on_time.mono_ms + 5_500),
    });
    let late = at(first - WALL0 + 5_500);
    assert_eq!(
        h.tick(late),
        vec![fire(late, "s", first + 5_000, first + 6_000, 4)]
    );
    let s = h.state.schedule("s").unwrap();
    assert_eq!(
        (s.fired, s.missed, s.next_tick_ms),
        (2, 4, Some(first + 6_000))
    );
    assert_eq!(h.state.task_count(), 2);
    assert!(h
        .state
        .task_by_key(&crate::schedule::tick_key("s", first + 5_000))
        .is_some());
    // A paused schedule is not fired.
    h.apply(Command::PauseSchedule {
        now_ms: late.wall_ms,
        name: "s".into(),
        paused: true,
        next_tick_ms: None,
    });
    assert_eq!(h.tick(at(late.mono_ms + 10_000)), vec![]);
}
