//! pb <-> core conversions.

use flotilla_core::{Limits, Resources, Task, TaskId, TaskSpec, TaskState};

use crate::pb;

/// A wire message that cannot become a core value; names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {message}")]
pub struct ConvertError {
    pub field: String,
    pub message: String,
}

/// Converts a submitted spec; `field` names it in errors (e.g. `tasks[2]`). Zero values mean
/// "not given" for optional fields, as proto3 has no presence for scalars.
pub fn spec_from_pb(field: &str, spec: pb::TaskSpec) -> Result<TaskSpec, ConvertError> {
    if spec.depends_on.contains(&0) {
        return Err(ConvertError {
            field: format!("{field}.depends_on"),
            message: "task id 0 does not exist".into(),
        });
    }
    Ok(TaskSpec {
        queue: spec.queue,
        payload: spec.payload,
        priority: spec.priority,
        idempotency_key: Some(spec.idempotency_key).filter(|k| !k.is_empty()),
        estimate_ms: Some(spec.estimate_ms).filter(|e| *e > 0),
        resources: Resources {
            cpu_millis: spec.cpu_millis,
            mem_mb: spec.mem_mb,
        },
        labels: spec.labels.into_iter().collect(),
        depends_on: spec.depends_on.into_iter().map(TaskId).collect(),
        max_attempts: if spec.max_attempts == 0 {
            Limits::DEFAULT_MAX_ATTEMPTS
        } else {
            spec.max_attempts
        },
        not_before_ms: Some(spec.not_before_ms).filter(|t| *t > 0),
        timeout_ms: Some(spec.timeout_ms).filter(|t| *t > 0),
        concurrency_key: Some(spec.concurrency_key).filter(|k| !k.is_empty()),
    })
}

pub fn spec_to_pb(spec: &TaskSpec, with_payload: bool) -> pb::TaskSpec {
    pb::TaskSpec {
        queue: spec.queue.clone(),
        payload: if with_payload {
            spec.payload.clone()
        } else {
            Vec::new()
        },
        priority: spec.priority,
        idempotency_key: spec.idempotency_key.clone().unwrap_or_default(),
        estimate_ms: spec.estimate_ms.unwrap_or(0),
        cpu_millis: spec.resources.cpu_millis,
        mem_mb: spec.resources.mem_mb,
        labels: spec
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        depends_on: spec.depends_on.iter().map(|d| d.0).collect(),
        max_attempts: spec.max_attempts,
        not_before_ms: spec.not_before_ms.unwrap_or(0),
        timeout_ms: spec.timeout_ms.unwrap_or(0),
        concurrency_key: spec.concurrency_key.clone().unwrap_or_default(),
    }
}

pub fn task_to_pb(task: &Task, with_payload: bool) -> pb::Task {
    pb::Task {
        id: task.id.0,
        spec: Some(spec_to_pb(&task.spec, with_payload)),
        state: state_to_pb(task.state) as i32,
        attempts: task.attempts,
        submitted_at_ms: task.submitted_at_ms,
        updated_at_ms: task.updated_at_ms,
        has_result: task.result.is_some(),
        result: task.result.clone().unwrap_or_default(),
        reason: task.reason.clone().unwrap_or_default(),
        worker: task.worker.clone().unwrap_or_default(),
        started_at_ms: task.started_at_ms.unwrap_or(0),
        checkpoint_progress_permille: task.checkpoint.as_ref().map_or(0, |c| c.progress_permille),
        has_checkpoint: task.checkpoint.is_some(),
        pending_reason: String::new(),
    }
}

pub fn worker_spec_from_pb(w: pb::WorkerSpec) -> flotilla_core::WorkerSpec {
    flotilla_core::WorkerSpec {
        id: w.id,
        session: w.session,
        capacity: flotilla_core::Capacity {
            slots: w.slots,
            cpu_millis: w.cpu_millis,
            mem_mb: w.mem_mb,
        },
        labels: w.labels.into_iter().collect(),
        queues: w.queues,
    }
}

pub fn worker_spec_to_pb(w: &flotilla_core::WorkerSpec) -> pb::WorkerSpec {
    pb::WorkerSpec {
        id: w.id.clone(),
        session: w.session.clone(),
        slots: w.capacity.slots,
        cpu_millis: w.capacity.cpu_millis,
        mem_mb: w.capacity.mem_mb,
        labels: w
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        queues: w.queues.clone(),
    }
}

/// Converts a task read from the API back into the core type.
pub fn task_from_pb(task: pb::Task) -> Result<Task, ConvertError> {
    let state = state_from_pb("task.state", task.state)?.ok_or_else(|| ConvertError {
        field: "task.state".into(),
        message: "state missing".into(),
    })?;
    let spec = spec_from_pb("task.spec", task.spec.unwrap_or_default())?;
    Ok(Task {
        id: TaskId(task.id),
        spec,
        state,
        attempts: task.attempts,
        submitted_at_ms: task.submitted_at_ms,
        updated_at_ms: task.updated_at_ms,
        result: task.has_result.then_some(task.result),
        reason: Some(task.reason).filter(|r| !r.is_empty()),
        worker: Some(task.worker).filter(|w| !w.is_empty()),
        started_at_ms: Some(task.started_at_ms).filter(|t| *t > 0),
        // The checkpoint's bytes go to workers only; readers see its progress.
        checkpoint: task.has_checkpoint.then(|| flotilla_core::Checkpoint {
            attempt: 0,
            progress_permille: task.checkpoint_progress_permille,
            data: Vec::new(),
        }),
    })
}

pub fn state_to_pb(state: TaskState) -> pb::TaskState {
    match state {
        TaskState::Waiting => pb::TaskState::Waiting,
        TaskState::Pending => pb::TaskState::Pending,
        TaskState::Running => pb::TaskState::Running,
        TaskState::Succeeded => pb::TaskState::Succeeded,
        TaskState::Failed => pb::TaskState::Failed,
        TaskState::Cancelled => pb::TaskState::Cancelled,
    }
}

/// `Ok(None)` for UNSPECIFIED (no filter); an error for a number outside the enum.
pub fn state_from_pb(field: &str, raw: i32) -> Result<Option<TaskState>, ConvertError> {
    let state = pb::TaskState::try_from(raw).map_err(|_| ConvertError {
        field: field.into(),
        message: format!("unknown task state {raw}"),
    })?;
    Ok(match state {
        pb::TaskState::Unspecified => None,
        pb::TaskState::Waiting => Some(TaskState::Waiting),
        pb::TaskState::Pending => Some(TaskState::Pending),
        pb::TaskState::Running => Some(TaskState::Running),
        pb::TaskState::Succeeded => Some(TaskState::Succeeded),
        pb::TaskState::Failed => Some(TaskState::Failed),
        pb::TaskState::Cancelled => Some(TaskState::Cancelled),
    })
}

/// A schedule as the API shows it (the task's payload included).
pub fn schedule_to_pb(s: &flotilla_core::Schedule) -> pb::Schedule {
    pb::Schedule {
        name: s.spec.name.clone(),
        cron: s.spec.cron.clone(),
        task: Some(spec_to_pb(&s.spec.task, true)),
        overlap: s.spec.overlap.as_str().into(),
        paused: s.paused,
        next_tick_ms: s.next_tick_ms.unwrap_or(0),
        last_tick_ms: s.last_tick_ms.unwrap_or(0),
        last_task_id: s.last_task.map_or(0, |t| t.0),
        fired: s.fired,
        skipped: s.skipped,
        missed: s.missed,
        created_at_ms: s.created_at_ms,
    }
}

/// Converts an add request's schedule (not yet checked beyond its shape).
pub fn schedule_from_pb(
    req: pb::AddScheduleRequest,
) -> Result<flotilla_core::ScheduleSpec, ConvertError> {
    let overlap = match req.overlap.as_str() {
        "" => flotilla_core::Overlap::Skip,
        o => flotilla_core::Overlap::parse(o).ok_or_else(|| ConvertError {
            field: "overlap".into(),
            message: format!("{o:?} is not skip or allow"),
        })?,
    };
    let task = req.task.ok_or_else(|| ConvertError {
        field: "task".into(),
        message: "missing".into(),
    })?;
    Ok(flotilla_core::ScheduleSpec {
        name: req.name,
        cron: req.cron,
        task: spec_from_pb("task", task)?,
        overlap,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips_and_zero_means_absent() {
        let mut spec = TaskSpec::new("q", b"x".to_vec());
        spec.idempotency_key = Some("k".into());
        spec.depends_on = vec![TaskId(4)];
        spec.labels.insert("gpu".into(), "yes".into());
        let back = spec_from_pb("t", spec_to_pb(&spec, true)).unwrap();
        assert_eq!(back, spec);
        let empty = spec_from_pb("t", pb::TaskSpec::default()).unwrap();
        assert_eq!(empty.idempotency_key, None);
        assert_eq!(empty.max_attempts, Limits::DEFAULT_MAX_ATTEMPTS);
        assert_eq!(empty.not_before_ms, None);
    }

    #[test]
    fn bad_wire_values_name_the_field() {
        let bad = pb::TaskSpec {
            depends_on: vec![0],
            ..Default::default()
        };
        assert_eq!(
            spec_from_pb("tasks[1]", bad).unwrap_err().field,
            "tasks[1].depends_on"
        );
        assert_eq!(state_from_pb("state", 42).unwrap_err().field, "state");
        assert_eq!(state_from_pb("state", 0).unwrap(), None);
    }
}
