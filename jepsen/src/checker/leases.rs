//! leases: judged from what the harness-owned sink saw (`report` events from process `sink`,
//! one per side effect a worker attempted): the sink never accepts an attempt below the
//! highest it accepted for that task; accepted attempts of a task never decrease; and no
//! attempt (a fencing token, so a lease) is used by two workers — that would be two live
//! leases on one task at once.

use std::collections::BTreeMap;

use super::{Check, Facts};

/// Reports in history order: (op index, task, attempt, worker, accepted).
fn reports(facts: &Facts) -> Vec<(u64, u64, u64, String, bool)> {
    facts
        .ops
        .iter()
        .filter(|o| o.process == "sink" && o.f == "report")
        .filter_map(|o| {
            Some((
                o.index,
                o.u64("task")?,
                o.u64("attempt")?,
                o.str("worker")?.to_string(),
                o.value.get("accepted")?.as_bool()?,
            ))
        })
        .collect()
}

/// Attempts of one task that two different workers used.
pub fn overlaps(facts: &Facts) -> u64 {
    let mut holders: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
    for (_, task, attempt, worker, _) in reports(facts) {
        let h = holders.entry((task, attempt)).or_default();
        if !h.contains(&worker) {
            h.push(worker);
        }
    }
    holders.values().filter(|h| h.len() > 1).count() as u64
}

pub fn check(facts: &Facts) -> Check {
    let mut c = Check::new("leases");
    if facts.params.workers == 0 {
        return c;
    }
    let mut highest: BTreeMap<u64, u64> = BTreeMap::new();
    let mut holder: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let mut any = false;
    for (index, task, attempt, worker, accepted) in reports(facts) {
        any = true;
        let top = highest.get(&task).copied().unwrap_or(0);
        if accepted && attempt < top {
            c.violation(
                Some(index),
                format!("sink accepted attempt {attempt} of task {task} after attempt {top}"),
            );
        }
        if !accepted && attempt >= top {
            c.violation(
                Some(index),
                format!("sink rejected attempt {attempt} of task {task}, highest was {top}"),
            );
        }
        if accepted {
            highest.insert(task, top.max(attempt));
        }
        match holder.get(&(task, attempt)) {
            Some(w) if *w != worker => c.violation(
                Some(index),
                format!("attempt {attempt} of task {task} used by workers {w} and {worker}"),
            ),
            Some(_) => {}
            None => {
                holder.insert((task, attempt), worker);
            }
        }
    }
    // A task succeeds only through its current attempt: a result produced by an earlier
    // attempt means a stale completion was accepted (the fencing token was ignored).
    for t in facts.dump.tasks.iter().flatten() {
        if let Some(a) = t.result_attempt.filter(|_| t.state == "succeeded") {
            if a != t.attempts {
                c.violation(
                    None,
                    format!(
                        "task {} succeeded with the result of attempt {a}, but its current attempt is {}: a stale completion was accepted",
                        t.id, t.attempts
                    ),
                );
            }
        }
    }
    if !any {
        c.unknown("workers ran but the sink saw no side effect".into());
    }
    c
}

#[cfg(test)]
mod tests {
    use super::super::fixture::*;
    use super::super::{Facts, FinalTask, Verdict};
    use super::*;
    use crate::history::OpType;
    use serde_json::json;

    fn report(h: &mut H, task: u64, attempt: u64, worker: &str, accepted: bool) {
        h.push(
            "sink",
            OpType::Info,
            "report",
            json!({"task": task, "attempt": attempt, "worker": worker, "accepted": accepted}),
        );
    }

    #[test]
    fn increasing_attempts_on_distinct_workers_are_fine() {
        let mut h = H::new();
        report(&mut h, 1, 1, "w1", true);
        report(&mut h, 1, 2, "w2", true);
        report(&mut h, 1, 1, "w1", false);
        let (p, d) = (params(2, &[]), dump(vec![]));
        let f = Facts::new(&h.ops, &p, &d);
        assert_eq!(check(&f).verdict, Verdict::Valid);
        assert_eq!(overlaps(&f), 0);
    }

    #[test]
    fn accepting_a_stale_attempt_is_invalid() {
        let mut h = H::new();
        report(&mut h, 1, 2, "w2", true);
        report(&mut h, 1, 1, "w1", true);
        let (p, d) = (params(2, &[]), dump(vec![]));
        let c = check(&Facts::new(&h.ops, &p, &d));
        assert_eq!((c.verdict, c.first_violation), (Verdict::Invalid, Some(1)));
    }

    #[test]
    fn one_attempt_on_two_workers_is_a_lease_overlap() {
        let mut h = H::new();
        report(&mut h, 1, 1, "w1", true);
        report(&mut h, 1, 1, "w2", true);
        let (p, d) = (params(2, &[]), dump(vec![]));
        let f = Facts::new(&h.ops, &p, &d);
        assert_eq!(check(&f).verdict, Verdict::Invalid);
        assert_eq!(overlaps(&f), 1);
    }

    #[test]
    fn a_success_from_a_stale_attempt_is_invalid() {
        let mut h = H::new();
        report(&mut h, 1, 1, "w1", true);
        report(&mut h, 1, 2, "w2", true);
        let good = FinalTask {
            attempts: 2,
            result_attempt: Some(2),
            ..task(1, "a", "succeeded")
        };
        let p = params(2, &[]);
        let d = dump(vec![good.clone()]);
        assert_eq!(check(&Facts::new(&h.ops, &p, &d)).verdict, Verdict::Valid);
        let stale = FinalTask {
            result_attempt: Some(1),
            ..good
        };
        let d = dump(vec![stale]);
        assert_eq!(check(&Facts::new(&h.ops, &p, &d)).verdict, Verdict::Invalid);
    }

    #[test]
    fn without_workers_there_is_nothing_to_check() {
        let h = H::new();
        let (p, d) = (params(0, &[]), dump(vec![]));
        assert_eq!(check(&Facts::new(&h.ops, &p, &d)).verdict, Verdict::Valid);
    }
}
