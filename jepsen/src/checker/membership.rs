//! membership: a replica the membership nemesis removed stopped by itself with exit code 0
//! (it must not linger serving, nor fail), as recorded in the `removed` entries of its
//! `fault` and `heal` events.

use super::{Check, Facts};

pub fn check(facts: &Facts) -> Check {
    let mut c = Check::new("membership");
    for op in facts
        .ops
        .iter()
        .filter(|o| o.process == "nemesis" && (o.f == "fault" || o.f == "heal"))
    {
        let Some(removed) = op.value.get("removed").and_then(|r| r.as_array()) else {
            continue;
        };
        for r in removed {
            let node = r.get("node").and_then(|n| n.as_u64()).unwrap_or(0);
            match r.get("exit_code").and_then(|e| e.as_i64()) {
                Some(0) => {}
                Some(code) => c.violation(
                    Some(op.index),
                    format!("removed replica {node} exited with code {code}, not 0"),
                ),
                None => c.violation(
                    Some(op.index),
                    format!("removed replica {node} did not stop by itself within 30 s"),
                ),
            }
        }
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

    fn removal(exit_code: serde_json::Value) -> H {
        let mut h = H::new();
        h.push(
            "nemesis",
            OpType::Info,
            "fault",
            json!({"family": "membership", "fault": "member-readd", "applied": true,
                   "removed": [{"node": 2, "exit_code": exit_code}]}),
        );
        h
    }

    #[test]
    fn a_removed_replica_that_exited_cleanly_is_valid() {
        let (h, p, d) = (removal(json!(0)), params(0, &[]), dump(vec![]));
        assert_eq!(check(&Facts::new(&h.ops, &p, &d)).verdict, Verdict::Valid);
    }

    #[test]
    fn a_removed_replica_that_failed_or_lingered_is_invalid() {
        for code in [json!(1), json!(null)] {
            let (h, p, d) = (removal(code.clone()), params(0, &[]), dump(vec![]));
            let r = check(&Facts::new(&h.ops, &p, &d));
            assert_eq!(r.verdict, Verdict::Invalid, "exit code {code}");
            assert_eq!(r.count, 1);
        }
    }
}
