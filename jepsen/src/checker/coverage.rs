//! coverage: the faults a run asked for really happened. A run whose nemesis never managed to
//! do anything proves nothing, so it is `unknown`, not `valid`. Also unknown: a run in which
//! no submit was acknowledged.
//!
//! Evidence comes from `nemesis` events (`fault` with `"applied": true`, `heal` with
//! `"restarted"`) and from `monitor` events (`leader`, one per observed leader change).

use super::{Check, Facts};
use crate::history::Op;

/// Leader changes the monitor observed (the first leader does not count).
pub fn leader_changes(ops: &[Op]) -> u64 {
    let mut last = None;
    let mut changes = 0;
    for op in ops
        .iter()
        .filter(|o| o.process == "monitor" && o.f == "leader")
    {
        let Some(leader) = op.u64("leader") else {
            continue;
        };
        if last.is_some_and(|l| l != leader) {
            changes += 1;
        }
        last = Some(leader);
    }
    changes
}

fn applied<'a>(ops: &'a [Op], family: &'a str) -> impl Iterator<Item = &'a Op> + 'a {
    ops.iter().filter(move |o| {
        o.process == "nemesis"
            && o.f == "fault"
            && (o.str("family") == Some(family) || o.str("fault") == Some(family))
            && o.value.get("applied").and_then(|v| v.as_bool()) == Some(true)
    })
}

pub fn check(facts: &Facts) -> Check {
    let mut c = Check::new("coverage");
    if facts.acked.is_empty() {
        c.unknown("no submit was acknowledged".into());
    }
    let ops = facts.ops;
    for family in &facts.params.nemesis {
        let family = family.as_str();
        if family == "none" {
            continue;
        }
        let n = applied(ops, family).count();
        if n == 0 {
            c.unknown(format!("no {family} fault was applied"));
            continue;
        }
        match family {
            f if f.starts_with("kill") => {
                let restarted = ops.iter().any(|o| {
                    o.process == "nemesis" && o.f == "heal" && !o.u64s("restarted").is_empty()
                });
                if !restarted {
                    c.unknown("no replica restarted from its data dir".into());
                }
            }
            "worker-kill" | "worker-pause" if facts.params.workers == 0 => {
                c.unknown(format!("{family} asked for but no workers ran"));
            }
            _ => {}
        }
    }
    // Faults aimed at the leader should move leadership at least once.
    let leader_faults = ops.iter().any(|o| {
        o.process == "nemesis"
            && o.f == "fault"
            && o.value.get("applied").and_then(|v| v.as_bool()) == Some(true)
            && o.value.get("leader").and_then(|v| v.as_bool()) == Some(true)
    });
    if leader_faults && leader_changes(ops) == 0 {
        c.unknown("faults hit the leader but no leader change was observed".into());
    }
    c
}

#[cfg(test)]
mod tests {
    use super::super::fixture::*;
    use super::super::{Facts, Verdict};
    use super::*;
    use crate::history::OpType;
    use serde_json::json;

    fn base() -> H {
        let mut h = H::new();
        h.submit_ok("c0", &["a"], &[1]);
        h
    }

    #[test]
    fn a_kill_with_restart_and_leader_change_is_covered() {
        let mut h = base();
        h.push("monitor", OpType::Info, "leader", json!({"leader": 1}));
        h.push(
            "nemesis",
            OpType::Info,
            "fault",
            json!({"family": "kill", "applied": true, "leader": true}),
        );
        h.push("monitor", OpType::Info, "leader", json!({"leader": 2}));
        h.push("nemesis", OpType::Info, "heal", json!({"restarted": [1]}));
        let (p, d) = (params(0, &["kill"]), dump(vec![]));
        assert_eq!(check(&Facts::new(&h.ops, &p, &d)).verdict, Verdict::Valid);
        assert_eq!(leader_changes(&h.ops), 1);
    }

    #[test]
    fn a_single_fault_name_is_covered_by_its_events() {
        let mut h = base();
        h.push(
            "nemesis",
            OpType::Info,
            "fault",
            json!({"family": "pause", "fault": "pause-one", "applied": true}),
        );
        let (p, d) = (params(0, &["pause-one"]), dump(vec![]));
        assert_eq!(check(&Facts::new(&h.ops, &p, &d)).verdict, Verdict::Valid);
    }

    #[test]
    fn a_fault_that_never_applied_is_unknown() {
        let mut h = base();
        h.push(
            "nemesis",
            OpType::Info,
            "fault",
            json!({"family": "partition", "applied": false}),
        );
        let (p, d) = (params(0, &["partition"]), dump(vec![]));
        assert_eq!(check(&Facts::new(&h.ops, &p, &d)).verdict, Verdict::Unknown);
    }

    #[test]
    fn a_leader_fault_without_a_leader_change_is_unknown() {
        let mut h = base();
        h.push("monitor", OpType::Info, "leader", json!({"leader": 1}));
        h.push(
            "nemesis",
            OpType::Info,
            "fault",
            json!({"family": "pause", "applied": true, "leader": true}),
        );
        let (p, d) = (params(0, &["pause"]), dump(vec![]));
        assert_eq!(check(&Facts::new(&h.ops, &p, &d)).verdict, Verdict::Unknown);
    }

    #[test]
    fn no_acknowledged_submit_is_unknown() {
        let h = H::new();
        let (p, d) = (params(0, &[]), dump(vec![]));
        assert_eq!(check(&Facts::new(&h.ops, &p, &d)).verdict, Verdict::Unknown);
    }
}
