//! unexpected: no task exists that no client tried to submit (every task carries a key the
//! workload chose; a task without a key, or with a key no client sent, came from nowhere).

use super::{Check, Facts};

pub fn check(facts: &Facts) -> Check {
    let mut c = Check::new("unexpected");
    let Some(tasks) = &facts.dump.tasks else {
        c.unknown("the final read of every task never succeeded".into());
        return c;
    };
    for t in tasks {
        match &t.key {
            Some(k) if facts.attempted_keys.contains(k) => {}
            Some(k) => c.violation(None, format!("task {} has key {k} no client sent", t.id)),
            None => c.violation(None, format!("task {} has no idempotency key", t.id)),
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
    fn tasks_from_indeterminate_submits_are_expected() {
        let mut h = H::new();
        h.submit_info("c0", &["a"]);
        let (p, d) = (params(0, &[]), dump(vec![task(1, "a", "pending")]));
        assert_eq!(check(&Facts::new(&h.ops, &p, &d)).verdict, Verdict::Valid);
    }

    #[test]
    fn a_task_nobody_submitted_is_unexpected() {
        let mut h = H::new();
        h.submit_ok("c0", &["a"], &[1]);
        let (p, mut d) = (params(0, &[]), dump(vec![task(1, "a", "pending")]));
        d.tasks.as_mut().unwrap().push(task(2, "zzz", "pending"));
        d.tasks.as_mut().unwrap().push(FinalTask {
            key: None,
            ..task(3, "", "pending")
        });
        let c = check(&Facts::new(&h.ops, &p, &d));
        assert_eq!((c.verdict, c.count), (Verdict::Invalid, 2));
    }

    use super::super::FinalTask;
}
