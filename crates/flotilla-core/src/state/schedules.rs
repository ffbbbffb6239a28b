//! Schedules in the replicated state: adding, pausing, resuming and deleting one, and firing
//! a tick — the one place a schedule creates a task. The rules that make a tick fire at most
//! once are in [`crate::schedule`]'s docs; `fire_schedule` enforces them.

use super::State;
use crate::schedule::{
    tick_key, validate_schedule, Overlap, Schedule, ScheduleSpec, TickOutcome, MAX_SCHEDULES,
};
use crate::{AdmissionLimits, CommandError, Response};

impl State {
    pub fn schedule(&self, name: &str) -> Option<&Schedule> {
        self.schedules.get(name)
    }

    /// Every schedule, by name.
    pub fn schedules(&self) -> impl Iterator<Item = &Schedule> + '_ {
        self.schedules.values()
    }

    /// The earliest next tick of a schedule that is not paused: the leader proposes a
    /// [`crate::Command::FireSchedule`] once its clock passes it.
    pub fn next_schedule_tick_ms(&self) -> Option<u64> {
        self.due_schedules().map(|s| s.1).min()
    }

    /// Schedules that are not paused and have a next tick, with that tick.
    pub fn due_schedules(&self) -> impl Iterator<Item = (&Schedule, u64)> + '_ {
        self.schedules
            .values()
            .filter(|s| !s.paused)
            .filter_map(|s| s.next_tick_ms.map(|t| (s, t)))
    }

    pub(super) fn add_schedule(
        &mut self,
        now_ms: u64,
        spec: &ScheduleSpec,
        next_tick_ms: Option<u64>,
    ) -> Result<Response, CommandError> {
        validate_schedule(spec)?;
        if let Some(have) = self.schedules.get(&spec.name) {
            // The same add again (a client's retry) changes nothing and succeeds.
            if have.spec == *spec {
                return Ok(Response::ScheduleSet {
                    name: spec.name.clone(),
                });
            }
            return Err(CommandError::invalid(
                "name",
                format!("schedule {:?} exists with another spec", spec.name),
            ));
        }
        if self.schedules.len() >= MAX_SCHEDULES {
            return Err(CommandError::LimitExceeded {
                limit: "max_schedules".into(),
                message: format!("the cluster holds {MAX_SCHEDULES} schedules"),
            });
        }
        if let Some(t) = next_tick_ms.filter(|t| *t <= now_ms) {
            return Err(CommandError::invalid(
                "next_tick_ms",
                format!("first tick {t} is not after the time of the add {now_ms}"),
            ));
        }
        self.schedules.insert(
            spec.name.clone(),
            Schedule {
                spec: spec.clone(),
                created_at_ms: now_ms,
                paused: false,
                next_tick_ms,
                last_tick_ms: None,
                last_task: None,
                fired: 0,
                skipped: 0,
                missed: 0,
            },
        );
        Ok(Response::ScheduleSet {
            name: spec.name.clone(),
        })
    }

    /// Pauses or resumes a schedule; a resumed one next fires at `next_tick_ms` (the first
    /// tick after the resume: ticks while paused never fire). Pausing twice changes nothing.
    pub(super) fn pause_schedule(
        &mut self,
        now_ms: u64,
        name: &str,
        paused: bool,
        next_tick_ms: Option<u64>,
    ) -> Result<Response, CommandError> {
        let s = self
            .schedules
            .get_mut(name)
            .ok_or_else(|| CommandError::UnknownSchedule(name.into()))?;
        if !paused && s.paused {
            let after = s.last_tick_ms.map_or(now_ms, |l| l.max(now_ms));
            if let Some(t) = next_tick_ms.filter(|t| *t <= after) {
                return Err(CommandError::invalid(
                    "next_tick_ms",
                    format!("next tick {t} is not after the resume at {now_ms} and the last tick"),
                ));
            }
            s.next_tick_ms = next_tick_ms;
        }
        s.paused = paused;
        Ok(Response::ScheduleSet { name: name.into() })
    }

    pub(super) fn delete_schedule(&mut self, name: &str) -> Result<Response, CommandError> {
        self.schedules
            .remove(name)
            .ok_or_else(|| CommandError::UnknownSchedule(name.into()))?;
        Ok(Response::ScheduleSet { name: name.into() })
    }

    /// Fires tick `tick_ms` of schedule `name`: at most one task, keyed by the tick.
    pub(super) fn fire_schedule(
        &mut self,
        now_ms: u64,
        name: &str,
        tick_ms: u64,
        next_tick_ms: Option<u64>,
        missed: u32,
        limits: &AdmissionLimits,
    ) -> Result<Response, CommandError> {
        let s = self
            .schedules
            .get(name)
            .ok_or_else(|| CommandError::UnknownSchedule(name.into()))?;
        if s.paused {
            return Err(CommandError::invalid(
                "name",
                format!("schedule {name:?} is paused"),
            ));
        }
        match s.next_tick_ms {
            Some(due) if tick_ms >= due => {}
            Some(due) => {
                return Err(CommandError::invalid(
                    "tick_ms",
                    format!("tick {tick_ms} of {name:?} fired already (next tick {due})"),
                ))
            }
            None => {
                return Err(CommandError::invalid(
                    "tick_ms",
                    format!("schedule {name:?} has no tick left"),
                ))
            }
        }
        if tick_ms > now_ms {
            return Err(CommandError::invalid(
                "tick_ms",
                format!("tick {tick_ms} is ahead of the clock {now_ms}"),
            ));
        }
        if let Some(n) = next_tick_ms.filter(|n| *n <= tick_ms) {
            return Err(CommandError::invalid(
                "next_tick_ms",
                format!("next tick {n} is not after tick {tick_ms}"),
            ));
        }
        let running = s
            .last_task
            .and_then(|t| self.record(t))
            .filter(|t| !t.state.is_terminal())
            .map(|t| (t.id, t.state));
        let outcome = match (s.spec.overlap, running) {
            (Overlap::Skip, Some((id, state))) => TickOutcome::Skipped(format!(
                "overlap skip: task {id} of the previous tick is {state}"
            )),
            _ => {
                let key = tick_key(name, tick_ms);
                if let Some(id) = self.task_by_key(&key) {
                    TickOutcome::Created {
                        task: id,
                        created: false,
                    }
                } else {
                    let mut spec = s.spec.task.clone();
                    spec.idempotency_key = Some(key);
                    match self.admit(&[&spec], limits) {
                        Ok(()) => TickOutcome::Created {
                            task: self.insert_new(now_ms, &spec),
                            created: true,
                        },
                        Err(e) => TickOutcome::Skipped(e.to_string()),
                    }
                }
            }
        };
        let s = self.schedules.get_mut(name).expect("checked above");
        s.last_tick_ms = Some(tick_ms);
        s.next_tick_ms = next_tick_ms;
        s.missed += u64::from(missed);
        match &outcome {
            TickOutcome::Created { task, .. } => {
                s.last_task = Some(*task);
                s.fired += 1;
            }
            TickOutcome::Skipped(_) => s.skipped += 1,
        }
        Ok(Response::ScheduleFired {
            name: name.into(),
            tick_ms,
            outcome,
        })
    }

    /// Checks the schedules: each is keyed by its name, valid, and its ticks in order.
    pub(super) fn check_schedules(&self) -> Result<(), String> {
        if self.schedules.len() > MAX_SCHEDULES {
            return Err(format!("{} schedules", self.schedules.len()));
        }
        for (name, s) in &self.schedules {
            if *name != s.spec.name {
                return Err(format!("schedule {:?} kept under {name:?}", s.spec.name));
            }
            validate_schedule(&s.spec).map_err(|e| format!("schedule {name:?}: {e}"))?;
            if let (Some(last), Some(next)) = (s.last_tick_ms, s.next_tick_ms) {
                if next <= last {
                    return Err(format!(
                        "schedule {name:?}: next tick {next} not after its last {last}"
                    ));
                }
            }
            if s.last_task.is_some() != (s.fired > 0) {
                return Err(format!(
                    "schedule {name:?}: last task and fired count disagree"
                ));
            }
        }
        Ok(())
    }
}
