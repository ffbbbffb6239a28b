//! liveness: a leader within `leader_bound_ms` of the final heal, and (with workers) the drain
//! finished: every acknowledged task became terminal before the deadline.

use super::{Check, Facts};

pub fn check(facts: &Facts) -> Check {
    let mut c = Check::new("liveness");
    match facts.dump.leader_after_heal_ms {
        None => c.violation(None, "no leader after the final heal".into()),
        Some(ms) if ms > facts.params.leader_bound_ms => c.violation(
            None,
            format!(
                "leader {ms} ms after the final heal (bound {} ms)",
                facts.params.leader_bound_ms
            ),
        ),
        Some(_) => {}
    }
    if facts.params.workers > 0 && !facts.dump.drained {
        c.violation(None, "the drain did not finish before its deadline".into());
    }
    c
}

#[cfg(test)]
mod tests {
    use super::super::fixture::*;
    use super::super::{Facts, Verdict};
    use super::*;

    #[test]
    fn a_prompt_leader_is_live() {
        let (h, p, d) = (H::new(), params(0, &[]), dump(vec![]));
        assert_eq!(check(&Facts::new(&h.ops, &p, &d)).verdict, Verdict::Valid);
    }

    #[test]
    fn a_late_or_missing_leader_is_not() {
        let (h, p, mut d) = (H::new(), params(0, &[]), dump(vec![]));
        d.leader_after_heal_ms = Some(60_000);
        assert_eq!(check(&Facts::new(&h.ops, &p, &d)).verdict, Verdict::Invalid);
        d.leader_after_heal_ms = None;
        assert_eq!(check(&Facts::new(&h.ops, &p, &d)).verdict, Verdict::Invalid);
    }

    #[test]
    fn an_unfinished_drain_with_workers_is_not() {
        let (h, p, mut d) = (H::new(), params(2, &[]), dump(vec![]));
        d.drained = false;
        assert_eq!(check(&Facts::new(&h.ops, &p, &d)).verdict, Verdict::Invalid);
    }
}
