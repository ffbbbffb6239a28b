//! Format version 6's snapshot image (state image version 6, up to commit 787ce3b): the
//! records whose shape format 7 changed, as that release encoded them, and the image record
//! enum that holds them.
//!
//! Format 7 added a concurrency key to the task (in the `Task` record's boxed spec extras), a
//! `max_per_key` limit to a queue's flow limits (the `Flow` record), and the key to a
//! schedule's task spec (the `Schedule` record, through [`super::v6::ScheduleSpec`]). A
//! snapshot file or backup of format 2 to 6 is read through these. Every other record kept
//! its shape, so those variants hold today's types; the golden version 6 image in the state
//! tests pins them, and a change to one of them must first freeze it here. Field order and
//! variant order are what bincode relied on; never change them.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::state::record::{RunInfo, TaskRecord};
use crate::{
    Bucket, EndedAttempt, ImageHeader, ImageRecord, QueueSettings, RateLimit, Resources, TaskId,
    TaskState, Tombstone, Worker, Workflow,
};

/// A task as format 6 stored it.
#[derive(Debug, Deserialize)]
pub struct TaskRecordV6 {
    id: TaskId,
    state: TaskState,
    attempts: u32,
    submitted_at_ms: u64,
    updated_at_ms: u64,
    queue: String,
    payload: Vec<u8>,
    key: Option<String>,
    priority: i32,
    max_attempts: u32,
    resources: Resources,
    estimate_ms: Option<u64>,
    extra: Option<SpecExtraV6>,
    run: Option<RunInfo>,
}

#[derive(Debug, Deserialize)]
struct SpecExtraV6 {
    labels: BTreeMap<String, String>,
    depends_on: Vec<TaskId>,
    not_before_ms: Option<u64>,
    timeout_ms: Option<u64>,
}

/// A queue's flow limits as format 6 stored them.
#[derive(Debug, Deserialize)]
pub struct FlowLimitsV6 {
    max_running: Option<u32>,
    weight: u32,
    rate: Option<RateLimit>,
}

/// A schedule as format 6 stored it.
#[derive(Debug, Deserialize)]
pub struct ScheduleV6 {
    spec: super::v6::ScheduleSpec,
    created_at_ms: u64,
    paused: bool,
    next_tick_ms: Option<u64>,
    last_tick_ms: Option<u64>,
    last_task: Option<TaskId>,
    fired: u64,
    skipped: u64,
    missed: u64,
}

/// One record of a format 6 image.
#[derive(Debug, Deserialize)]
pub enum ImageRecordV6 {
    Header(ImageHeader),
    Queue {
        name: String,
        settings: QueueSettings,
    },
    Worker(Worker),
    /// Boxed (a box encodes as what it holds): a read record is converted at once.
    Task(Box<TaskRecordV6>),
    Tombstone(Tombstone),
    Flow {
        name: String,
        limits: FlowLimitsV6,
        bucket: Option<Bucket>,
    },
    Workflow(Workflow),
    /// Boxed as today's is; a box encodes as what it holds.
    Schedule(Box<ScheduleV6>),
    Attempts {
        task: TaskId,
        ended: Vec<EndedAttempt>,
    },
}

impl From<TaskRecordV6> for TaskRecord {
    fn from(t: TaskRecordV6) -> Self {
        let TaskRecordV6 {
            id,
            state,
            attempts,
            submitted_at_ms,
            updated_at_ms,
            queue,
            payload,
            key,
            priority,
            max_attempts,
            resources,
            estimate_ms,
            extra,
            run,
        } = t;
        TaskRecord {
            id,
            state,
            attempts,
            submitted_at_ms,
            updated_at_ms,
            queue: queue.into(),
            payload: payload.into_boxed_slice(),
            key: key.map(String::into_boxed_str),
            priority,
            max_attempts,
            resources,
            estimate_ms,
            extra: extra.map(|e| {
                let SpecExtraV6 {
                    labels,
                    depends_on,
                    not_before_ms,
                    timeout_ms,
                } = e;
                Box::new(crate::state::record::SpecExtra {
                    labels,
                    depends_on,
                    not_before_ms,
                    timeout_ms,
                    // Format 7: a format 6 task has no key.
                    concurrency_key: None,
                })
            }),
            run: run.map(Box::new),
        }
    }
}

impl From<FlowLimitsV6> for crate::FlowLimits {
    fn from(f: FlowLimitsV6) -> Self {
        let FlowLimitsV6 {
            max_running,
            weight,
            rate,
        } = f;
        crate::FlowLimits {
            max_running,
            weight,
            rate,
            // Format 7: no per-key limit before it.
            max_per_key: None,
        }
    }
}

impl From<ScheduleV6> for crate::Schedule {
    fn from(s: ScheduleV6) -> Self {
        let ScheduleV6 {
            spec,
            created_at_ms,
            paused,
            next_tick_ms,
            last_tick_ms,
            last_task,
            fired,
            skipped,
            missed,
        } = s;
        crate::Schedule {
            spec: spec.into(),
            created_at_ms,
            paused,
            next_tick_ms,
            last_tick_ms,
            last_task,
            fired,
            skipped,
            missed,
        }
    }
}

impl From<ImageRecordV6> for ImageRecord {
    fn from(r: ImageRecordV6) -> Self {
        match r {
            ImageRecordV6::Header(h) => ImageRecord::Header(h),
            ImageRecordV6::Queue { name, settings } => ImageRecord::Queue { name, settings },
            ImageRecordV6::Worker(w) => ImageRecord::Worker(w),
            ImageRecordV6::Task(t) => ImageRecord::Task((*t).into()),
            ImageRecordV6::Tombstone(t) => ImageRecord::Tombstone(t),
            ImageRecordV6::Flow {
                name,
                limits,
                bucket,
            } => ImageRecord::Flow {
                name,
                limits: limits.into(),
                bucket,
            },
            ImageRecordV6::Workflow(w) => ImageRecord::Workflow(w),
            ImageRecordV6::Schedule(s) => ImageRecord::Schedule(Box::new((*s).into())),
            ImageRecordV6::Attempts { task, ended } => ImageRecord::Attempts { task, ended },
        }
    }
}
