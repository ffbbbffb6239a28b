//! doubled: one task per idempotency key; every acknowledgement of a key names the task that
//! holds the key (so a retry returns the same id); and no task is seen succeeded and later
//! not succeeded (a task succeeds once).

use std::collections::BTreeMap;

use super::{Check, Facts};
use crate::history::{pairs, OpType};

pub fn check(facts: &Facts) -> Check {
    let mut c = Check::new("doubled");
    for (key, tasks) in &facts.by_key {
        if tasks.len() > 1 {
            let ids: Vec<String> = tasks.iter().map(|t| t.id.to_string()).collect();
            c.violation(
                None,
                format!("key {key} has {} tasks: {}", tasks.len(), ids.join(", ")),
            );
        }
    }
    let mut first_ack: BTreeMap<&str, u64> = BTreeMap::new();
    for (key, id, index) in &facts.acked {
        match first_ack.get(key.as_str()) {
            Some(first) if first != id => c.violation(
                Some(*index),
                format!("key {key} acknowledged as task {first} and later as task {id}"),
            ),
            Some(_) => {}
            None => {
                first_ack.insert(key, *id);
                if let Some([t]) = facts.by_key.get(key).map(Vec::as_slice) {
                    if t.id != *id {
                        c.violation(
                            Some(*index),
                            format!("key {key} acknowledged as task {id} but is task {}", t.id),
                        );
                    }
                }
            }
        }
    }
    // The state register of a task: once read as succeeded it stays succeeded.
    let mut succeeded_at: BTreeMap<u64, u64> = BTreeMap::new();
    for (invoke, done) in pairs(facts.ops) {
        let Some(done) = done.filter(|d| d.kind == OpType::Ok && invoke.f == "get") else {
            continue;
        };
        let (Some(id), Some(state)) = (done.u64("id"), done.str("state")) else {
            continue;
        };
        if state == "succeeded" {
            succeeded_at.entry(id).or_insert(done.index);
        } else if let Some(at) = succeeded_at.get(&id) {
            // Only a read invoked after the success was observed must see it.
            if invoke.time_ns > facts.ops[*at as usize].time_ns {
                c.violation(
                    Some(done.index),
                    format!("task {id} read as {state} after it was read as succeeded"),
                );
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
    use serde_json::json;

    #[test]
    fn a_retry_that_returns_the_same_id_is_fine() {
        let mut h = H::new();
        h.submit_ok("c0", &["a"], &[1]);
        h.submit_ok("c1", &["a"], &[1]);
        let (p, d) = (params(0, &[]), dump(vec![task(1, "a", "pending")]));
        assert_eq!(check(&Facts::new(&h.ops, &p, &d)).verdict, Verdict::Valid);
    }

    #[test]
    fn two_tasks_for_one_key_are_doubled() {
        let mut h = H::new();
        h.submit_ok("c0", &["a"], &[1]);
        h.submit_ok("c1", &["a"], &[2]);
        let p = params(0, &[]);
        let d = dump(vec![task(1, "a", "pending"), task(2, "a", "pending")]);
        let c = check(&Facts::new(&h.ops, &p, &d));
        assert_eq!(c.verdict, Verdict::Invalid);
        // The doubled key, and the retry that returned another id.
        assert_eq!(c.count, 2);
        assert_eq!(c.first_violation, Some(3));
    }

    #[test]
    fn an_acknowledged_id_that_is_not_the_task_is_a_violation() {
        let mut h = H::new();
        h.submit_ok("c0", &["a"], &[0]);
        let (p, d) = (params(0, &[]), dump(vec![task(1, "a", "pending")]));
        assert_eq!(check(&Facts::new(&h.ops, &p, &d)).count, 1);
    }

    #[test]
    fn a_task_read_as_succeeded_then_running_succeeded_twice() {
        let mut h = H::new();
        h.submit_ok("c0", &["a"], &[1]);
        h.push("c0", OpType::Invoke, "get", json!({"id": 1}));
        h.push(
            "c0",
            OpType::Ok,
            "get",
            json!({"id": 1, "state": "succeeded"}),
        );
        h.push("c1", OpType::Invoke, "get", json!({"id": 1}));
        h.push(
            "c1",
            OpType::Ok,
            "get",
            json!({"id": 1, "state": "running"}),
        );
        let (p, d) = (params(0, &[]), dump(vec![task(1, "a", "succeeded")]));
        let c = check(&Facts::new(&h.ops, &p, &d));
        assert_eq!((c.verdict, c.first_violation), (Verdict::Invalid, Some(5)));
    }
}
