//! convergence: after quiescence every replica reports the same applied index and the same
//! hash of its whole task table (read from that replica alone, stale reads).

use super::{Check, Facts};

pub fn check(facts: &Facts) -> Check {
    let mut c = Check::new("convergence");
    let replicas = &facts.dump.replicas;
    if replicas.is_empty() {
        c.unknown("no replica was dumped".into());
        return c;
    }
    for r in replicas {
        if r.applied_index.is_none() || r.state_hash.is_none() {
            c.unknown(format!("replica {} did not answer the final dump", r.node));
        }
    }
    let answered: Vec<_> = replicas
        .iter()
        .filter(|r| r.applied_index.is_some() && r.state_hash.is_some())
        .collect();
    if let Some(first) = answered.first() {
        for r in &answered[1..] {
            if r.applied_index != first.applied_index {
                c.violation(
                    None,
                    format!(
                        "replica {} applied {:?}, replica {} applied {:?}",
                        first.node, first.applied_index, r.node, r.applied_index
                    ),
                );
            } else if r.state_hash != first.state_hash {
                c.violation(
                    None,
                    format!(
                        "replicas {} and {} applied index {:?} but hold different tasks",
                        first.node, r.node, r.applied_index
                    ),
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

    #[test]
    fn identical_replicas_converge() {
        let (h, p, d) = (H::new(), params(0, &[]), dump(vec![]));
        assert_eq!(check(&Facts::new(&h.ops, &p, &d)).verdict, Verdict::Valid);
    }

    #[test]
    fn same_index_different_state_diverged() {
        let (h, p, mut d) = (H::new(), params(0, &[]), dump(vec![]));
        d.replicas[2] = replica(3, 5, 8);
        let c = check(&Facts::new(&h.ops, &p, &d));
        assert_eq!((c.verdict, c.count), (Verdict::Invalid, 1));
    }

    #[test]
    fn a_lagging_replica_has_not_converged() {
        let (h, p, mut d) = (H::new(), params(0, &[]), dump(vec![]));
        d.replicas[1] = replica(2, 4, 7);
        assert_eq!(check(&Facts::new(&h.ops, &p, &d)).verdict, Verdict::Invalid);
    }

    #[test]
    fn a_silent_replica_is_unknown() {
        let (h, p, mut d) = (H::new(), params(0, &[]), dump(vec![]));
        d.replicas[1].applied_index = None;
        assert_eq!(check(&Facts::new(&h.ops, &p, &d)).verdict, Verdict::Unknown);
    }
}
