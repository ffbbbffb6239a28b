//! The schedule calls of the client API: add, list, pause or resume, delete.
//!
//! The cron expression is read here, at the edge, by the leader's [`CronCalendar`]: an
//! expression it cannot read, or one with no tick ahead, is refused naming `cron`. The leader
//! stamps the first tick (after now) into the command; `apply` checks everything else.

use flotilla_core::schedule::{validate_schedule, Calendar};
use flotilla_core::{Command, Response as CoreResponse};
use flotilla_proto::pb;
use flotilla_proto::{schedule_from_pb, schedule_to_pb};

use crate::api::Api;
use crate::auth::Principal;
use crate::calendar::{parse_cron, CronCalendar};
use crate::error::ApiError;
use crate::leadership::{ensure_leader, now_ms};

impl Api {
    pub(crate) async fn add_schedule_call(
        &self,
        req: pb::AddScheduleRequest,
        caller: Option<&Principal>,
    ) -> Result<pb::AddScheduleResponse, ApiError> {
        let spec = schedule_from_pb(req)?;
        validate_schedule(&spec)?;
        parse_cron(&spec.cron).map_err(|message| ApiError::Invalid {
            field: "cron".into(),
            message,
        })?;
        if let Some(why) = caller.and_then(|c| c.refuses_queue(&spec.task.queue)) {
            return Err(ApiError::PermissionDenied(format!("task.queue: {why}")));
        }
        let now = now_ms();
        let next_tick_ms = CronCalendar.next_after(&spec.cron, now);
        if next_tick_ms.is_none() {
            return Err(ApiError::Invalid {
                field: "cron".into(),
                message: format!("{:?} has no tick after now", spec.cron),
            });
        }
        let name = spec.name.clone();
        expect_set(
            self.propose(Command::AddSchedule {
                now_ms: now,
                schedule: Box::new(spec),
                next_tick_ms,
            })
            .await?,
        )?;
        Ok(pb::AddScheduleResponse {
            schedule: Some(self.schedule_pb(&name)?),
        })
    }

    pub(crate) async fn list_schedules_call(
        &self,
        req: pb::ListSchedulesRequest,
    ) -> Result<pb::ListSchedulesResponse, ApiError> {
        self.read_consistency(req.consistency).await?;
        let applied = self.state.read();
        Ok(pb::ListSchedulesResponse {
            schedules: applied.state.schedules().map(schedule_to_pb).collect(),
        })
    }

    pub(crate) async fn pause_schedule_call(
        &self,
        req: pb::PauseScheduleRequest,
        caller: Option<&Principal>,
    ) -> Result<pb::PauseScheduleResponse, ApiError> {
        self.check_schedule_queue(&req.name, caller)?;
        let now = now_ms();
        let next_tick_ms = {
            let applied = self.state.read();
            applied
                .state
                .schedule(&req.name)
                .and_then(|s| CronCalendar.next_after(&s.spec.cron, now))
        };
        expect_set(
            self.propose(Command::PauseSchedule {
                now_ms: now,
                name: req.name.clone(),
                paused: req.paused,
                next_tick_ms,
            })
            .await?,
        )?;
        Ok(pb::PauseScheduleResponse {
            schedule: Some(self.schedule_pb(&req.name)?),
        })
    }

    pub(crate) async fn delete_schedule_call(
        &self,
        req: pb::DeleteScheduleRequest,
        caller: Option<&Principal>,
    ) -> Result<pb::DeleteScheduleResponse, ApiError> {
        self.check_schedule_queue(&req.name, caller)?;
        expect_set(
            self.propose(Command::DeleteSchedule {
                now_ms: now_ms(),
                name: req.name,
            })
            .await?,
        )?;
        Ok(pb::DeleteScheduleResponse {})
    }

    /// A token limited to some queues may only act on schedules creating tasks in them.
    fn check_schedule_queue(&self, name: &str, caller: Option<&Principal>) -> Result<(), ApiError> {
        let Some(caller) = caller.filter(|c| c.queues.is_some()) else {
            return Ok(());
        };
        ensure_leader(&self.raft)?;
        let applied = self.state.read();
        if let Some(s) = applied.state.schedule(name) {
            if let Some(why) = caller.refuses_queue(&s.spec.task.queue) {
                return Err(ApiError::PermissionDenied(format!(
                    "schedule {name:?}: {why}"
                )));
            }
        }
        Ok(())
    }

    /// The schedule as applied on this replica (the leader, just after its command applied).
    fn schedule_pb(&self, name: &str) -> Result<pb::Schedule, ApiError> {
        let applied = self.state.read();
        applied
            .state
            .schedule(name)
            .map(schedule_to_pb)
            .ok_or_else(|| ApiError::NotFound(format!("schedule {name:?} not found")))
    }
}

/// What `apply` answers a schedule command it did not refuse.
fn expect_set(r: CoreResponse) -> Result<(), ApiError> {
    match r {
        CoreResponse::ScheduleSet { .. } => Ok(()),
        other => Err(ApiError::Internal(format!("unexpected response {other:?}"))),
    }
}
