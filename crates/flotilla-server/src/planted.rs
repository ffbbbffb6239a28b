//! Planted bugs, for proving that the fault-injection suite (jepsen/) can fail.
//!
//! Compiled only with the `planted-bugs` cargo feature (off by default); even then a bug is
//! active only when `FLOTILLA_PLANTED_BUG` names it at start-up. A normal build contains none
//! of this code's effects: [`PlantedBug::from_env`] returns `None`.

/// A deliberately broken behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlantedBug {
    /// Acknowledge a submit before it is committed (and commit it only a little later).
    AckBeforeCommit,
    /// Ignore idempotency keys: a retried submit creates a second task.
    NoIdempotency,
    /// Push an assignment to the worker before (and whether or not) it is committed.
    DispatchBeforeCommit,
    /// Accept a completion carrying a stale attempt (the leader stamps the current one).
    SkipAttemptCheck,
}

impl PlantedBug {
    pub const ENV: &'static str = "FLOTILLA_PLANTED_BUG";

    pub fn parse(name: &str) -> Option<PlantedBug> {
        match name {
            "ack-before-commit" => Some(PlantedBug::AckBeforeCommit),
            "no-idempotency" => Some(PlantedBug::NoIdempotency),
            "dispatch-before-commit" => Some(PlantedBug::DispatchBeforeCommit),
            "skip-attempt-check" => Some(PlantedBug::SkipAttemptCheck),
            _ => None,
        }
    }

    /// The bug named in the environment, in a `planted-bugs` build; `None` otherwise.
    pub fn from_env() -> Option<PlantedBug> {
        #[cfg(feature = "planted-bugs")]
        {
            let bug = std::env::var(Self::ENV)
                .ok()
                .and_then(|n| PlantedBug::parse(&n));
            if let Some(b) = bug {
                tracing::warn!(bug = ?b, "PLANTED BUG ACTIVE: this replica is deliberately unsafe");
            }
            bug
        }
        #[cfg(not(feature = "planted-bugs"))]
        {
            None
        }
    }
}
