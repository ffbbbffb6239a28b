//! Workflows: a DAG submitted in one command, all or nothing; retried by key; cancelled
//! children first; forgotten with its last task; carried by snapshots.

use super::*;
use crate::workflow::{resolve, NamedTask};
use crate::{Lookup, WorkflowTask};

fn named(name: &str, after: &[&str]) -> NamedTask {
    NamedTask {
        name: name.into(),
        spec: keyed("q", &format!("key-{name}")),
        after: after.iter().map(|s| s.to_string()).collect(),
    }
}

/// map-reduce: three maps, a reduce after them, written reduce first.
fn map_reduce() -> Vec<WorkflowTask> {
    resolve(vec![
        named("reduce", &["m1", "m2", "m3"]),
        named("m1", &[]),
        named("m2", &[]),
        named("m3", &[]),
    ])
    .unwrap()
    .0
}

fn submit_workflow(s: &mut State, now_ms: u64, tasks: Vec<WorkflowTask>) -> Response {
    s.apply(&Command::SubmitWorkflow {
        now_ms,
        tasks,
        limits: AdmissionLimits::default(),
    })
}

fn register(s: &mut State) {
    let r = s.apply(&Command::RegisterWorker {
        now_ms: 1,
        worker: wspec("w", 8),
    });
    assert!(matches!(r, Response::WorkerRegistered { .. }), "{r:?}");
}

fn run_to_success(s: &mut State, now_ms: u64, id: TaskId) {
    let r = s.apply(&Command::Assign {
        now_ms,
        task_id: id,
        worker_id: "w".into(),
        attempt: 1,
    });
    assert_eq!(
        r,
        Response::Assigned {
            task_id: id,
            attempt: 1
        }
    );
    let r = s.apply(&Command::Complete {
        now_ms,
        task_id: id,
        worker_id: "w".into(),
        attempt: 1,
        result: format!("r{id}").into_bytes(),
    });
    assert_eq!(r, Response::Completed { task_id: id });
}

use crate::AdmissionLimits;

#[test]
fn a_workflow_is_created_whole_its_tasks_depending_on_each_other() {
    let mut s = State::new();
    let before = ids(&submit(&mut s, 1, vec![spec("q")]))[0];
    let r = submit_workflow(&mut s, 2, map_reduce());
    let want = vec![TaskId(2), TaskId(3), TaskId(4), TaskId(5)];
    assert_eq!(
        r,
        Response::WorkflowSubmitted {
            workflow: TaskId(2),
            ids: want.clone(),
            created: vec![true; 4],
        }
    );
    let w = s.workflow(TaskId(2)).unwrap().clone();
    let members: Vec<(&str, TaskId)> = w
        .members
        .iter()
        .map(|m| (m.name.as_str(), m.task))
        .collect();
    assert_eq!(
        members,
        vec![
            ("m1", want[0]),
            ("m2", want[1]),
            ("m3", want[2]),
            ("reduce", want[3])
        ]
    );
    assert_eq!(w.submitted_at_ms, 2);
    let reduce = s.get(want[3]).unwrap();
    assert_eq!(reduce.spec.depends_on, want[..3].to_vec());
    assert_eq!(reduce.state, TaskState::Waiting);
    assert_eq!(s.workflow_of(want[0]), Some(TaskId(2)));
    assert_eq!(s.workflow_of(before), None);
    // The maps run; then the reduce becomes pending.
    register(&mut s);
    for id in &want[..3] {
        assert_eq!(s.get(*id).unwrap().state, TaskState::Pending);
        run_to_success(&mut s, 3, *id);
    }
    assert_eq!(s.get(want[3]).unwrap().state, TaskState::Pending);
    // A snapshot carries the workflow.
    let back = restore(&s);
    assert_eq!(back.workflow(TaskId(2)), Some(&w));
    assert_eq!(image_bytes(&back), image_bytes(&s));
}

#[test]
fn a_retried_workflow_gets_the_same_ids_and_creates_nothing() {
    let mut s = State::new();
    let first = submit_workflow(&mut s, 1, map_reduce());
    let before = image_bytes(&s);
    let again = submit_workflow(&mut s, 1, map_reduce());
    let Response::WorkflowSubmitted { workflow, ids, .. } = first else {
        panic!("{first:?}")
    };
    assert_eq!(
        again,
        Response::WorkflowSubmitted {
            workflow,
            ids,
            created: vec![false; 4]
        }
    );
    assert_eq!(image_bytes(&s), before, "a retry changes nothing");
    // Another workflow reusing the first key with other tasks is refused.
    let mut other = map_reduce();
    other.pop();
    let r = submit_workflow(&mut s, 1, other);
    assert!(
        matches!(&r, Response::Rejected(CommandError::Invalid { field, .. }) if field == "tasks[0].idempotency_key"),
        "{r:?}"
    );
    // A task of one workflow cannot join another.
    let tasks = resolve(vec![named("x", &[]), named("m2", &[])]).unwrap().0;
    let r = submit_workflow(&mut s, 1, tasks);
    assert_eq!(
        r,
        Response::Rejected(CommandError::invalid(
            "tasks[1].idempotency_key",
            "task 2 belongs to workflow 1"
        ))
    );
    assert_eq!(image_bytes(&s), before);
}

#[test]
fn bad_workflows_are_rejected_whole_and_change_nothing() {
    let mut s = State::new();
    submit(&mut s, 1, vec![spec("q")]);
    s.apply(&Command::Tick { now_ms: 2 });
    let before = image_bytes(&s);
    let cases: Vec<(Vec<WorkflowTask>, CommandError)> = {
        let ok = map_reduce();
        let mut forward = ok.clone();
        forward[1].after = vec![3];
        let mut dup = ok.clone();
        dup[2].name = "m1".into();
        let mut dup_key = ok.clone();
        dup_key[3].spec.idempotency_key = Some("key-m1".into());
        let mut bad_queue = ok.clone();
        bad_queue[3].spec.queue = String::new();
        let mut unknown_parent = ok.clone();
        unknown_parent[2].spec.depends_on = vec![TaskId(99)];
        vec![
            (
                forward,
                CommandError::invalid(
                    "tasks[1].after",
                    "task \"m2\" runs after position 3, which is not before it",
                ),
            ),
            (
                dup,
                CommandError::invalid("tasks[2].name", "\"m1\" is also the name of tasks[0]"),
            ),
            (
                dup_key,
                CommandError::invalid(
                    "tasks[3].idempotency_key",
                    "\"key-m1\" is also the key of tasks[0]",
                ),
            ),
            (
                bad_queue,
                CommandError::invalid("tasks[3].queue", "must not be empty"),
            ),
            (
                unknown_parent,
                CommandError::invalid("tasks[2].depends_on", "unknown task 99"),
            ),
            (vec![], CommandError::invalid("tasks", "batch is empty")),
        ]
    };
    for (tasks, want) in cases {
        assert_eq!(submit_workflow(&mut s, 2, tasks), Response::Rejected(want));
        assert_eq!(image_bytes(&s), before);
    }
    // Admission limits count only the tasks the workflow would create.
    let r = s.apply(&Command::SubmitWorkflow {
        now_ms: 3,
        tasks: map_reduce(),
        limits: AdmissionLimits {
            max_pending: Some(4),
            max_pending_per_queue: None,
        },
    });
    assert!(
        matches!(&r, Response::Rejected(CommandError::LimitExceeded { limit, .. }) if limit == "max_pending"),
        "{r:?}"
    );
    assert_eq!(s.workflow_count(), 0);
    assert_eq!(s.task_count(), 1);
}

#[test]
fn cancelling_a_workflow_cancels_what_has_not_finished_children_first() {
    let mut s = State::new();
    register(&mut s);
    let Response::WorkflowSubmitted { workflow, ids, .. } =
        submit_workflow(&mut s, 1, map_reduce())
    else {
        panic!()
    };
    run_to_success(&mut s, 2, ids[0]);
    let r = s.apply(&Command::Assign {
        now_ms: 3,
        task_id: ids[1],
        worker_id: "w".into(),
        attempt: 1,
    });
    assert!(matches!(r, Response::Assigned { .. }));
    let r = s.apply(&Command::CancelWorkflow {
        now_ms: 4,
        workflow,
    });
    assert_eq!(
        r,
        Response::WorkflowCancelled {
            workflow,
            cancelled: vec![
                (ids[3], TaskState::Waiting),
                (ids[2], TaskState::Pending),
                (ids[1], TaskState::Running),
            ]
        }
    );
    let states: Vec<TaskState> = ids.iter().map(|i| s.get(*i).unwrap().state).collect();
    assert_eq!(
        states,
        vec![
            TaskState::Succeeded,
            TaskState::Cancelled,
            TaskState::Cancelled,
            TaskState::Cancelled
        ]
    );
    assert_eq!(
        s.worker_usage("w").slots,
        0,
        "the running attempt let go of its slot"
    );
    // Again: nothing left to cancel. An unknown workflow is named.
    assert_eq!(
        s.apply(&Command::CancelWorkflow {
            now_ms: 5,
            workflow
        }),
        Response::WorkflowCancelled {
            workflow,
            cancelled: vec![]
        }
    );
    assert_eq!(
        s.apply(&Command::CancelWorkflow {
            now_ms: 5,
            workflow: ids[1]
        }),
        Response::Rejected(CommandError::UnknownWorkflow(ids[1]))
    );
}

#[test]
fn a_workflow_is_forgotten_when_retention_removed_its_last_task() {
    let mut s = State::new();
    let Response::WorkflowSubmitted { workflow, ids, .. } =
        submit_workflow(&mut s, 1, map_reduce())
    else {
        panic!()
    };
    // Maps finish early, the reduce later: the workflow stays while the reduce is held.
    register(&mut s);
    for id in &ids[..3] {
        run_to_success(&mut s, 10, *id);
    }
    let sweep = |s: &mut State, now_ms| {
        s.apply(&Command::Sweep {
            now_ms,
            retention_ms: 100,
            key_retention_ms: 10_000,
            max_removals: 100,
        })
    };
    let r = sweep(&mut s, 500);
    assert!(
        matches!(r, Response::Swept { removed: 0, .. }),
        "held by the reduce: {r:?}"
    );
    run_to_success(&mut s, 1_000, ids[3]);
    let r = sweep(&mut s, 1_050);
    assert!(matches!(r, Response::Swept { removed: 3, .. }), "{r:?}");
    assert_eq!(s.workflow_of(ids[3]), Some(workflow));
    assert_eq!(s.workflow_of(ids[0]), None);
    assert!(
        s.workflow(workflow).is_some(),
        "kept while the reduce is held"
    );
    let r = sweep(&mut s, 1_101);
    assert!(matches!(r, Response::Swept { removed: 1, .. }), "{r:?}");
    assert_eq!(s.workflow(workflow), None);
    assert_eq!(s.workflow_count(), 0);
    assert!(matches!(s.lookup(ids[3]), Lookup::Removed(_)));
    // A retry while the keys are remembered finds only removed tasks: nothing is created, no
    // workflow kept.
    let r = submit_workflow(&mut s, 1_102, map_reduce());
    let Response::WorkflowSubmitted { created, .. } = r else {
        panic!("{r:?}")
    };
    assert_eq!(created, vec![false; 4]);
    assert_eq!(s.workflow_count(), 0);
}

#[test]
fn a_workflow_record_has_no_place_in_an_older_image_and_bad_ones_are_refused() {
    let mut s = State::new();
    submit_workflow(&mut s, 1, map_reduce());
    let mut recs = records(&s);
    assert!(matches!(recs.last(), Some(ImageRecord::Workflow(_))));
    let mut old = recs.clone();
    if let ImageRecord::Header(h) = &mut old[0] {
        h.version = 3;
    }
    let err = State::from_records(old).unwrap_err();
    assert!(err.contains("older than version 4"), "{err}");
    // A workflow not named by its first task.
    if let Some(ImageRecord::Workflow(w)) = recs.last_mut() {
        w.members.swap(0, 1);
    }
    let err = State::from_records(recs.clone()).unwrap_err();
    assert!(err.contains("not named by its first task"), "{err}");
    // Twice.
    if let Some(ImageRecord::Workflow(w)) = recs.last_mut() {
        w.members.swap(0, 1);
    }
    let last = recs.last().unwrap().clone();
    recs.push(last);
    let err = State::from_records(recs).unwrap_err();
    assert!(err.contains("listed twice"), "{err}");
}
