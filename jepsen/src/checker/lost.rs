//! lost: every acknowledged submit is present after heal and drain — and, when workers ran,
//! terminal (succeeded, or failed by its own retry policy, or cancelled by a client).

use super::{Check, Facts};

pub fn check(facts: &Facts) -> Check {
    let mut c = Check::new("lost");
    if facts.dump.tasks.is_none() {
        c.unknown("the final read of every task never succeeded".into());
        return c;
    }
    let mut seen = std::collections::BTreeSet::new();
    for (key, id, index) in &facts.acked {
        if !seen.insert(key.as_str()) {
            continue;
        }
        // A task that lost its key (a server bug the unexpected checker reports) is still
        // present under the acknowledged id.
        let keyless = facts
            .dump
            .tasks
            .iter()
            .flatten()
            .find(|t| t.id == *id && t.key.is_none());
        match facts.by_key.get(key) {
            None if keyless.is_some() => {}
            None => c.violation(
                Some(*index),
                format!("key {key} was acknowledged as task {id} but no task has it"),
            ),
            Some(tasks) if facts.params.workers > 0 && !tasks.iter().any(|t| t.is_terminal()) => c
                .violation(
                    Some(*index),
                    format!(
                        "key {key} (task {}) is still {} after the drain",
                        tasks[0].id, tasks[0].state
                    ),
                ),
            Some(_) => {}
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::super::fixture::*;
    use super::super::{Facts, Verdict};
    use super::*;

    #[test]
    fn acknowledged_and_present_is_valid() {
        let mut h = H::new();
        h.submit_ok("c0", &["a"], &[1]);
        let (p, d) = (params(0, &[]), dump(vec![task(1, "a", "pending")]));
        assert_eq!(check(&Facts::new(&h.ops, &p, &d)).verdict, Verdict::Valid);
    }

    #[test]
    fn acknowledged_and_missing_is_lost() {
        let mut h = H::new();
        h.submit_ok("c0", &["a", "b"], &[1, 2]);
        let (p, d) = (params(0, &[]), dump(vec![task(1, "a", "pending")]));
        let c = check(&Facts::new(&h.ops, &p, &d));
        assert_eq!((c.verdict, c.count), (Verdict::Invalid, 1));
        assert_eq!(c.first_violation, Some(1));
    }

    #[test]
    fn unacknowledged_and_missing_is_fine() {
        let mut h = H::new();
        h.submit_info("c0", &["a"]);
        let (p, d) = (params(0, &[]), dump(vec![]));
        assert_eq!(check(&Facts::new(&h.ops, &p, &d)).verdict, Verdict::Valid);
    }

    #[test]
    fn with_workers_an_acknowledged_task_must_be_terminal() {
        let mut h = H::new();
        h.submit_ok("c0", &["a", "b"], &[1, 2]);
        let p = params(2, &[]);
        let d = dump(vec![task(1, "a", "succeeded"), task(2, "b", "running")]);
        let c = check(&Facts::new(&h.ops, &p, &d));
        assert_eq!((c.verdict, c.count), (Verdict::Invalid, 1));
    }

    #[test]
    fn without_a_final_read_it_is_unknown() {
        let mut h = H::new();
        h.submit_ok("c0", &["a"], &[1]);
        let p = params(0, &[]);
        let mut d = dump(vec![]);
        d.tasks = None;
        assert_eq!(check(&Facts::new(&h.ops, &p, &d)).verdict, Verdict::Unknown);
    }
}
