//! Snapshot images: the state proper as a stream of records, and the builder that turns such
//! a stream back into a [`State`] with all its indexes.
//!
//! Taking a snapshot must not stop `apply`: [`State::view`] takes a [`StateView`] — a frozen
//! copy that costs one pointer per 256 tasks (the task table is copy-on-write) — under the
//! state lock, and the caller encodes its records afterwards, record by record, without the
//! lock and without holding the whole image in memory twice. Loading is the same in reverse:
//! [`StateBuilder::push`] takes one record at a time.
//!
//! ```text
//!  Header · Queue* (name order) · Worker* (id order) · (Task | Tombstone)* (id order)
//!         · Flow* (name order; version 3) · Workflow* (id order; version 4)
//!         · Schedule* (name order; version 5) · Attempts* (task id order; version 6)
//! ```
//!
//! Versioning: [`STATE_IMAGE_VERSION`] is in the header; a change to any record's shape bumps
//! it (golden bytes in the tests pin the encoding) and the builder of the new release reads
//! the old one (`crate::compat`). Versions 3 to 6 only added the `Flow`, `Workflow`,
//! `Schedule` and `Attempts` records (record kinds are only ever appended), so a version 2 to 5
//! image is a version 6 image without them. Version 7 changed the shape of the `Task`, `Flow`
//! and `Schedule` records (the concurrency key, `max_per_key`): an image of version 2 to 6 is
//! decoded through [`crate::compat::v6_image`] record by record and given to the same builder.

use serde::{Deserialize, Serialize};

use super::attempts::EndedAttempt;
use super::flow::{Bucket, FlowLimits};
use super::queues::QueueSettings;
use super::record::{Entry, QueueName, TaskRecord, Tombstone};
use super::table::TaskTable;
use super::State;
use crate::{Schedule, TaskId, Worker, Workflow};

/// Version of the image records' encoding.
pub const STATE_IMAGE_VERSION: u32 = 7;
/// The oldest version the builder reads (2 is 6 without `Flow`, `Workflow`, `Schedule` and
/// `Attempts` records; versions before 7 decode through `compat::v6_image`).
pub const OLDEST_STATE_IMAGE_VERSION: u32 = 2;

/// The first record: scalars and how many records of each kind follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageHeader {
    pub version: u32,
    pub next_task_id: u64,
    pub clock_ms: u64,
    pub queues: u64,
    pub workers: u64,
    pub tasks: u64,
    pub tombstones: u64,
}

/// One record of an image, as decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageRecord {
    Header(ImageHeader),
    /// A queue with non-default settings.
    Queue {
        name: String,
        settings: QueueSettings,
    },
    Worker(Worker),
    Task(TaskRecord),
    Tombstone(Tombstone),
    /// A queue with flow-control settings, and its bucket. (Version 3.)
    Flow {
        name: String,
        limits: FlowLimits,
        bucket: Option<Bucket>,
    },
    /// A workflow. (Version 4.)
    Workflow(Workflow),
    /// A schedule. (Version 5.) Boxed: the largest record; a box encodes as what it holds.
    Schedule(Box<Schedule>),
    /// The attempt history of a task listed above (never empty). (Version 6.)
    Attempts {
        task: TaskId,
        ended: Vec<EndedAttempt>,
    },
}

/// One record of an image, borrowed from a [`StateView`] for encoding; encodes exactly as the
/// [`ImageRecord`] it stands for.
#[derive(Debug, Clone, Copy, Serialize)]
pub enum ImageRecordRef<'a> {
    Header(&'a ImageHeader),
    Queue {
        name: &'a str,
        settings: &'a QueueSettings,
    },
    Worker(&'a Worker),
    Task(&'a TaskRecord),
    Tombstone(&'a Tombstone),
    Flow {
        name: &'a str,
        limits: &'a FlowLimits,
        bucket: &'a Option<Bucket>,
    },
    Workflow(&'a Workflow),
    Schedule(&'a Schedule),
    Attempts {
        task: TaskId,
        ended: &'a [EndedAttempt],
    },
}

/// A frozen copy of the state proper, cheap to take (see the module docs).
#[derive(Debug, Clone)]
pub struct StateView {
    header: ImageHeader,
    queues: Vec<(QueueName, QueueSettings)>,
    workers: Vec<Worker>,
    tasks: TaskTable,
    flows: Vec<(QueueName, FlowLimits, Option<Bucket>)>,
    workflows: Vec<Workflow>,
    schedules: Vec<Schedule>,
}

impl StateView {
    pub fn header(&self) -> &ImageHeader {
        &self.header
    }

    /// The image's records in order.
    pub fn records(&self) -> impl Iterator<Item = ImageRecordRef<'_>> + '_ {
        std::iter::once(ImageRecordRef::Header(&self.header))
            .chain(
                self.queues
                    .iter()
                    .map(|(name, settings)| ImageRecordRef::Queue { name, settings }),
            )
            .chain(self.workers.iter().map(ImageRecordRef::Worker))
            .chain(self.tasks.iter().map(|e| match e {
                Entry::Task(t) => ImageRecordRef::Task(t),
                Entry::Tombstone(t) => ImageRecordRef::Tombstone(t),
            }))
            .chain(
                self.flows
                    .iter()
                    .map(|(name, limits, bucket)| ImageRecordRef::Flow {
                        name,
                        limits,
                        bucket,
                    }),
            )
            .chain(self.workflows.iter().map(ImageRecordRef::Workflow))
            .chain(self.schedules.iter().map(ImageRecordRef::Schedule))
            .chain(self.tasks.iter().filter_map(|e| match e {
                Entry::Task(t) if !t.ended_attempts().is_empty() => {
                    Some(ImageRecordRef::Attempts {
                        task: t.id,
                        ended: t.ended_attempts(),
                    })
                }
                _ => None,
            }))
    }
}

impl State {
    /// A frozen copy of the state proper for a snapshot; O(tasks / 256).
    pub fn view(&self) -> StateView {
        let queues: Vec<(QueueName, QueueSettings)> = self
            .queues
            .iter()
            .filter(|(_, q)| !q.settings.is_default())
            .map(|(n, q)| (n.clone(), q.settings.clone()))
            .collect();
        StateView {
            header: ImageHeader {
                version: STATE_IMAGE_VERSION,
                next_task_id: self.next_task_id,
                clock_ms: self.clock_ms,
                queues: queues.len() as u64,
                workers: self.workers.len() as u64,
                tasks: self.task_count() as u64,
                tombstones: self.tombstones.len() as u64,
            },
            queues,
            workers: self.workers.values().cloned().collect(),
            tasks: self.tasks.clone(),
            flows: self
                .queues
                .iter()
                .filter(|(_, q)| !q.flow.is_default())
                .map(|(n, q)| (n.clone(), q.flow, q.bucket))
                .collect(),
            workflows: self.workflows.values().cloned().collect(),
            schedules: self.schedules.values().cloned().collect(),
        }
    }

    /// Rebuilds a state from a whole image.
    pub fn from_records(records: impl IntoIterator<Item = ImageRecord>) -> Result<State, String> {
        let mut b = StateBuilder::new();
        for r in records {
            b.push(r)?;
        }
        b.finish()
    }
}

/// Turns image records, pushed in order, into a state; refuses an inconsistent image.
#[derive(Debug)]
pub struct StateBuilder {
    state: State,
    header: Option<ImageHeader>,
    /// Kind of the last record pushed (0 header, 1 queue, 2 worker, 3 task/tombstone, 4 flow,
    /// 5 workflow, 6 schedule, 7 attempts).
    phase: u8,
    last_id: u64,
    /// Task id of the last `Attempts` record.
    last_attempts: u64,
    last_workflow: u64,
    seen: [u64; 4],
}

impl Default for StateBuilder {
    fn default() -> Self {
        StateBuilder::new()
    }
}

impl StateBuilder {
    pub fn new() -> StateBuilder {
        StateBuilder {
            state: State::new(),
            header: None,
            phase: 0,
            last_id: 0,
            last_attempts: 0,
            last_workflow: 0,
            seen: [0; 4],
        }
    }

    fn enter(&mut self, phase: u8, what: &str) -> Result<(), String> {
        if self.header.is_none() {
            return Err(format!("{what} record before the header"));
        }
        if phase < self.phase {
            return Err(format!("{what} record out of order"));
        }
        self.phase = phase;
        Ok(())
    }

    /// Adds the next record.
    pub fn push(&mut self, record: ImageRecord) -> Result<(), String> {
        match record {
            ImageRecord::Header(h) => {
                if self.header.is_some() {
                    return Err("second header record".into());
                }
                if !(OLDEST_STATE_IMAGE_VERSION..=STATE_IMAGE_VERSION).contains(&h.version) {
                    return Err(format!(
                        "state image version {} is not supported (this release reads {}..={})",
                        h.version, OLDEST_STATE_IMAGE_VERSION, STATE_IMAGE_VERSION
                    ));
                }
                if h.next_task_id == 0 {
                    return Err("next task id 0".into());
                }
                self.state.next_task_id = h.next_task_id;
                self.state.clock_ms = h.clock_ms;
                self.header = Some(h);
            }
            ImageRecord::Queue { name, settings } => {
                self.enter(1, "queue")?;
                crate::limits::validate_queue_name("queue", &name).map_err(|e| e.to_string())?;
                let q = self.state.intern(&name);
                let q = self.state.queues.get_mut(&q).expect("interned");
                if !q.settings.is_default() {
                    return Err(format!("queue {name:?} listed twice"));
                }
                q.settings = settings;
                self.seen[0] += 1;
            }
            ImageRecord::Worker(w) => {
                self.enter(2, "worker")?;
                if self.state.workers.insert(w.spec.id.clone(), w).is_some() {
                    return Err("worker listed twice".into());
                }
                self.seen[1] += 1;
            }
            ImageRecord::Task(mut t) => {
                self.enter(3, "task")?;
                self.check_id(t.id)?;
                // An unfinished task holds its parents; a finished one may outlive them.
                let missing = t
                    .depends_on()
                    .iter()
                    .find(|d| self.state.record(**d).is_none());
                if let (false, Some(d)) = (t.state.is_terminal(), missing) {
                    return Err(format!("task {} depends on missing task {d}", t.id));
                }
                t.queue = self.state.intern(&t.queue);
                let s = &mut self.state;
                if let Some(key) = t.key.as_deref() {
                    s.keys.insert(key, t.id);
                }
                if !t.state.is_terminal() {
                    s.take_holds(&t);
                }
                s.index_insert(&t);
                s.counts[t.state.index()] += 1;
                if let Some(q) = s.queues.get_mut(&*t.queue) {
                    q.counts[t.state.index()] += 1;
                }
                s.tasks.insert(t.id, Entry::Task(t));
                self.seen[2] += 1;
            }
            ImageRecord::Tombstone(mut t) => {
                self.enter(3, "tombstone")?;
                self.check_id(t.id)?;
                t.queue = match self.state.queues.get_key_value(&*t.queue) {
                    Some((name, _)) => name.clone(),
                    None => t.queue,
                };
                self.state.keys.insert(&t.key, t.id);
                self.state.tombstones.insert((t.expires_at_ms, t.id));
                self.state.tasks.insert(t.id, Entry::Tombstone(t));
                self.seen[3] += 1;
            }
            ImageRecord::Flow {
                name,
                limits,
                bucket,
            } => {
                self.enter(4, "flow")?;
                if self.header.as_ref().is_some_and(|h| h.version < 3) {
                    return Err("flow record in a version 2 image".into());
                }
                crate::limits::validate_queue_name("queue", &name).map_err(|e| e.to_string())?;
                let bad = |e: crate::CommandError| format!("queue {name:?}: {e}");
                super::flow::validate_max_running(limits.max_running).map_err(bad)?;
                super::flow::validate_weight(limits.weight).map_err(bad)?;
                super::flow::validate_rate(limits.rate).map_err(bad)?;
                if limits.is_default() || limits.rate.is_some() != bucket.is_some() {
                    return Err(format!("queue {name:?}: inconsistent flow record"));
                }
                let q = self.state.intern(&name);
                let q = self.state.queues.get_mut(&q).expect("interned");
                if !q.flow.is_default() {
                    return Err(format!("queue {name:?} has two flow records"));
                }
                q.flow = limits;
                q.bucket = bucket;
            }
            ImageRecord::Workflow(w) => {
                self.enter(5, "workflow")?;
                if self.header.as_ref().is_some_and(|h| h.version < 4) {
                    return Err("workflow record in an image older than version 4".into());
                }
                if w.id.0 <= self.last_workflow {
                    return Err(format!("workflow {} out of order or listed twice", w.id));
                }
                self.last_workflow = w.id.0;
                let mut names = std::collections::BTreeSet::new();
                for (i, m) in w.members.iter().enumerate() {
                    crate::workflow::validate_task_name(&format!("members[{i}].name"), &m.name)
                        .map_err(|e| format!("workflow {}: {e}", w.id))?;
                    if !names.insert(m.name.as_str()) {
                        return Err(format!("workflow {}: name {:?} twice", w.id, m.name));
                    }
                    if self.state.member_of.contains_key(&m.task) {
                        return Err(format!(
                            "workflow {}: task {} in two workflows",
                            w.id, m.task
                        ));
                    }
                }
                if w.members.first().map(|m| m.task) != Some(w.id) {
                    return Err(format!("workflow {} is not named by its first task", w.id));
                }
                let id = w.id;
                self.state.add_workflow(w);
                if self.state.workflow(id).is_none() {
                    return Err(format!("workflow {id} holds no task"));
                }
            }
            ImageRecord::Schedule(s) => {
                self.enter(6, "schedule")?;
                if self.header.as_ref().is_some_and(|h| h.version < 5) {
                    return Err("schedule record in an image older than version 5".into());
                }
                let name = s.spec.name.clone();
                if self
                    .state
                    .schedules
                    .last_key_value()
                    .is_some_and(|(last, _)| *last >= name)
                {
                    return Err(format!("schedule {name:?} out of order or listed twice"));
                }
                crate::schedule::validate_schedule(&s.spec)
                    .map_err(|e| format!("schedule {name:?}: {e}"))?;
                self.state.schedules.insert(name, *s);
            }
            ImageRecord::Attempts { task, ended } => {
                self.enter(7, "attempts")?;
                if self.header.as_ref().is_some_and(|h| h.version < 6) {
                    return Err("attempts record in an image older than version 6".into());
                }
                if task.0 <= self.last_attempts {
                    return Err(format!(
                        "attempts of task {task} out of order or listed twice"
                    ));
                }
                self.last_attempts = task.0;
                self.state.restore_attempts(task, ended)?;
            }
        }
        Ok(())
    }

    fn check_id(&mut self, id: TaskId) -> Result<(), String> {
        let next = self.state.next_task_id;
        if id.0 == 0 || id.0 >= next {
            return Err(format!(
                "task {id} outside the allocated id range 1..{next}"
            ));
        }
        if id.0 <= self.last_id {
            return Err(format!("task {id} out of order or listed twice"));
        }
        self.last_id = id.0;
        Ok(())
    }

    /// The state, once every record was pushed.
    pub fn finish(mut self) -> Result<State, String> {
        let h = self.header.take().ok_or("empty image (no header)")?;
        let want = [h.queues, h.workers, h.tasks, h.tombstones];
        if self.seen != want {
            return Err(format!(
                "image holds {:?} queues/workers/tasks/tombstones, its header says {want:?}",
                self.seen
            ));
        }
        // Queues listed only for their settings stay; any other unused entry goes.
        self.state.check_invariants()?;
        Ok(self.state)
    }
}
