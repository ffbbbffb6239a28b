//! What `/healthz` and `/readyz` answer, decided by pure functions of what the replica knows.
//!
//! - healthy: the process serves and its storage takes a synced write (a full or failing disk
//!   shows here, before a client's write fails on it);
//! - ready: it can serve a client now — it knows a leader and has heard from it recently (a
//!   leader: a quorum acknowledged it recently), it has applied close to its log's end, and it
//!   did not stop on a fatal error. A replica cut off from the leader stops being ready within
//!   `contact_bound`, so a load balancer stops sending it clients.

use std::time::Duration;

/// What readiness is judged from.
#[derive(Debug, Clone, Default)]
pub struct ReadyInput {
    pub is_leader: bool,
    pub leader: Option<u64>,
    /// Since a follower last heard from its leader (None: never).
    pub since_contact: Option<Duration>,
    /// Since a quorum last acknowledged this leader (None: never, or not a leader).
    pub since_quorum_ack: Option<Duration>,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub fatal: Option<String>,
}

/// Bounds of readiness.
#[derive(Debug, Clone, Copy)]
pub struct ReadyBounds {
    /// Longest silence from the leader (or, on the leader, from a quorum).
    pub contact: Duration,
    /// Most log entries not yet applied.
    pub max_apply_lag: u64,
}

/// `Ok(what)` when ready, else `Err(why not)`, each one line.
pub fn readiness(i: &ReadyInput, b: ReadyBounds) -> Result<String, String> {
    if let Some(why) = &i.fatal {
        return Err(format!("stopping on a fatal error: {why}"));
    }
    let Some(leader) = i.leader else {
        return Err("no leader known".into());
    };
    let heard = if i.is_leader {
        i.since_quorum_ack
    } else {
        i.since_contact
    };
    match heard {
        Some(d) if d <= b.contact => {}
        Some(d) => {
            return Err(format!(
                "{} not heard for {} ms (bound {} ms)",
                if i.is_leader {
                    "a quorum"
                } else {
                    "the leader"
                },
                d.as_millis(),
                b.contact.as_millis()
            ))
        }
        None => {
            return Err(if i.is_leader {
                "no quorum has acknowledged this leader yet".into()
            } else {
                format!("never heard from leader {leader}")
            })
        }
    }
    let lag = i.last_log_index.saturating_sub(i.applied_index);
    if lag > b.max_apply_lag {
        return Err(format!(
            "{lag} log entries not applied yet (bound {})",
            b.max_apply_lag
        ));
    }
    Ok(if i.is_leader {
        "ready: leader".to_string()
    } else {
        format!("ready: following {leader}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: ReadyBounds = ReadyBounds {
        contact: Duration::from_millis(2400),
        max_apply_lag: 100,
    };

    fn follower() -> ReadyInput {
        ReadyInput {
            leader: Some(2),
            since_contact: Some(Duration::from_millis(100)),
            last_log_index: 50,
            applied_index: 40,
            ..ReadyInput::default()
        }
    }

    #[test]
    fn a_follower_in_touch_and_caught_up_is_ready() {
        assert_eq!(readiness(&follower(), B), Ok("ready: following 2".into()));
    }

    #[test]
    fn each_reason_to_be_unready_is_named() {
        let cases: Vec<(ReadyInput, &str)> = vec![
            (
                ReadyInput {
                    leader: None,
                    ..follower()
                },
                "no leader known",
            ),
            (
                ReadyInput {
                    since_contact: Some(Duration::from_secs(3)),
                    ..follower()
                },
                "the leader not heard for 3000 ms",
            ),
            (
                ReadyInput {
                    since_contact: None,
                    ..follower()
                },
                "never heard from leader 2",
            ),
            (
                ReadyInput {
                    applied_index: 10,
                    last_log_index: 200,
                    ..follower()
                },
                "190 log entries not applied",
            ),
            (
                ReadyInput {
                    fatal: Some("disk full".into()),
                    ..follower()
                },
                "fatal error: disk full",
            ),
            (
                ReadyInput {
                    is_leader: true,
                    leader: Some(1),
                    since_quorum_ack: Some(Duration::from_secs(5)),
                    ..follower()
                },
                "a quorum not heard for 5000 ms",
            ),
        ];
        for (input, want) in cases {
            let got = readiness(&input, B).expect_err("not ready");
            assert!(got.contains(want), "{got:?} should say {want:?}");
        }
    }

    #[test]
    fn a_leader_acknowledged_by_a_quorum_is_ready() {
        let leader = ReadyInput {
            is_leader: true,
            leader: Some(1),
            since_contact: None,
            since_quorum_ack: Some(Duration::from_millis(50)),
            ..follower()
        };
        assert_eq!(readiness(&leader, B), Ok("ready: leader".into()));
    }
}
