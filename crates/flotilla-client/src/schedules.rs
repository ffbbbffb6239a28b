//! Schedules: a task created at every tick of a cron expression (UTC), each tick at most once
//! across leader changes; added, listed, paused, resumed and deleted by name.

use std::time::Duration;

use flotilla_core::{Overlap, Schedule, ScheduleSpec, TaskId};
use flotilla_proto::{pb, spec_from_pb, spec_to_pb};

use crate::client::Consistency;
use crate::{Client, ClientError};

impl Client {
    /// Adds a schedule. The same spec again under the same name succeeds (a retry); another
    /// spec under it is refused naming `name`; an expression the server cannot read is refused
    /// naming `cron`.
    pub async fn add_schedule(&self, spec: ScheduleSpec) -> Result<Schedule, ClientError> {
        let req = pb::AddScheduleRequest {
            name: spec.name,
            cron: spec.cron,
            task: Some(spec_to_pb(&spec.task, true)),
            overlap: spec.overlap.as_str().into(),
        };
        let resp = self
            .call("add schedule", Duration::ZERO, |mut c| {
                let req = req.clone();
                async move { c.add_schedule(req).await }
            })
            .await?;
        schedule_from_pb(resp.schedule)
    }

    /// Every schedule, by name.
    pub async fn schedules(&self, consistency: Consistency) -> Result<Vec<Schedule>, ClientError> {
        let req = pb::ListSchedulesRequest {
            consistency: consistency.to_pb(),
        };
        let resp = self
            .read(consistency, "list schedules", |mut c| async move {
                c.list_schedules(req).await
            })
            .await?;
        resp.schedules
            .into_iter()
            .map(|s| schedule_from_pb(Some(s)))
            .collect()
    }

    /// Pauses (`paused`) or resumes a schedule; a resumed one starts from its first tick after
    /// the resume.
    pub async fn pause_schedule(&self, name: &str, paused: bool) -> Result<Schedule, ClientError> {
        let req = pb::PauseScheduleRequest {
            name: name.into(),
            paused,
        };
        let what = if paused {
            "pause schedule"
        } else {
            "resume schedule"
        };
        let resp = self
            .call(what, Duration::ZERO, |mut c| {
                let req = req.clone();
                async move { c.pause_schedule(req).await }
            })
            .await?;
        schedule_from_pb(resp.schedule)
    }

    /// Deletes a schedule; the tasks it created stay.
    pub async fn delete_schedule(&self, name: &str) -> Result<(), ClientError> {
        let req = pb::DeleteScheduleRequest { name: name.into() };
        self.call("delete schedule", Duration::ZERO, |mut c| {
            let req = req.clone();
            async move { c.delete_schedule(req).await }
        })
        .await?;
        Ok(())
    }
}

fn schedule_from_pb(s: Option<pb::Schedule>) -> Result<Schedule, ClientError> {
    let bad = |m: String| ClientError::BadResponse(m);
    let s = s.ok_or_else(|| bad("no schedule in the answer".into()))?;
    let overlap =
        Overlap::parse(&s.overlap).ok_or_else(|| bad(format!("overlap {:?}", s.overlap)))?;
    let task = spec_from_pb("task", s.task.ok_or_else(|| bad("no task".into()))?)
        .map_err(|e| bad(e.to_string()))?;
    let some = |v: u64| (v > 0).then_some(v);
    Ok(Schedule {
        spec: ScheduleSpec {
            name: s.name,
            cron: s.cron,
            task,
            overlap,
        },
        created_at_ms: s.created_at_ms,
        paused: s.paused,
        next_tick_ms: some(s.next_tick_ms),
        last_tick_ms: some(s.last_tick_ms),
        last_task: some(s.last_task_id).map(TaskId),
        fired: s.fired,
        skipped: s.skipped,
        missed: s.missed,
    })
}
