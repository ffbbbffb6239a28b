//! Checkers: pure functions from a saved run (history + final dump + parameters) to a verdict.
//! No I/O and no cluster access, so `flotilla-jepsen check DIR` re-checks a saved run exactly.
//!
//! ```text
//!  history.jsonl ─┐
//!  final.json ────┼─▶ lost, unexpected, doubled, leases, convergence, liveness, coverage,
//!                 │    membership
//!  run.json ──────┘        └─▶ Verdict: invalid if any is invalid, else unknown if any is
//!                                       unknown, else valid
//! ```

mod convergence;
mod coverage;
mod doubled;
mod leases;
mod liveness;
mod lost;
mod membership;
mod unexpected;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::history::{pairs, Op, OpType};

/// Outcome of one checker, and of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Valid,
    Unknown,
    Invalid,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Valid => "valid",
            Verdict::Unknown => "unknown",
            Verdict::Invalid => "invalid",
        }
    }

    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Valid => 0,
            Verdict::Invalid => 1,
            Verdict::Unknown => 2,
        }
    }
}

/// The parameters of a run that checkers need (saved as `run.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunParams {
    pub scenario: String,
    pub nodes: usize,
    pub workers: usize,
    pub clients: usize,
    pub time_limit_s: u64,
    pub nemesis: Vec<String>,
    pub seed: u64,
    pub sut_bug: Option<String>,
    /// Longest acceptable time from the final heal to an elected leader.
    pub leader_bound_ms: u64,
    /// Whether replicas ran with tokens and a peer secret (`--auth`).
    #[serde(default)]
    pub auth: bool,
    /// Ran with TLS (`--tls`).
    #[serde(default)]
    pub tls: bool,
}

/// One replica as the final dump saw it (stale reads of that replica only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaDump {
    pub node: u64,
    /// `None` when the replica did not answer.
    pub applied_index: Option<u64>,
    /// FNV-1a over (id, key, state, attempts) of every task, in id order.
    pub state_hash: Option<u64>,
    pub task_count: Option<u64>,
}

/// A task as the authoritative (linearizable) final read returned it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalTask {
    pub id: u64,
    pub key: Option<String>,
    pub state: String,
    pub attempts: u32,
    /// The attempt that produced a succeeded task's result, as `sink-report` printed it
    /// (`attempt=N` in the command's stdout).
    #[serde(default)]
    pub result_attempt: Option<u32>,
}

impl FinalTask {
    pub fn is_terminal(&self) -> bool {
        matches!(self.state.as_str(), "succeeded" | "failed" | "cancelled")
    }
}

/// What the harness saw after heal, recovery and drain (saved as `final.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FinalDump {
    pub replicas: Vec<ReplicaDump>,
    /// Every task, from a linearizable read; `None` if the cluster never answered one.
    pub tasks: Option<Vec<FinalTask>>,
    /// Time from the final heal to a leader all running replicas agree on.
    pub leader_after_heal_ms: Option<u64>,
    /// Whether every acknowledged task became terminal before the drain deadline (only
    /// required with workers).
    pub drained: bool,
}

/// The result of one checker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub verdict: Verdict,
    /// Violations found (0 when valid).
    pub count: u64,
    /// Human-readable findings, the first few only.
    pub details: Vec<String>,
    /// History index of the first violating operation, if one op is to blame.
    pub first_violation: Option<u64>,
}

/// Most details a checker keeps.
const MAX_DETAILS: usize = 20;

impl Check {
    fn new(name: &str) -> Check {
        Check {
            name: name.to_string(),
            verdict: Verdict::Valid,
            count: 0,
            details: Vec::new(),
            first_violation: None,
        }
    }

    /// Records a violation: the check becomes invalid.
    fn violation(&mut self, op: Option<u64>, detail: String) {
        self.verdict = Verdict::Invalid;
        self.count += 1;
        if self.details.len() < MAX_DETAILS {
            self.details.push(detail);
        }
        if let Some(i) = op {
            self.first_violation = Some(self.first_violation.map_or(i, |f| f.min(i)));
        }
    }

    /// The check could not decide (missing data, faults that did not happen).
    fn unknown(&mut self, detail: String) {
        if self.verdict == Verdict::Valid {
            self.verdict = Verdict::Unknown;
        }
        if self.details.len() < MAX_DETAILS {
            self.details.push(detail);
        }
    }
}

/// Facts derived once from the history and shared by the checkers.
pub struct Facts<'a> {
    pub ops: &'a [Op],
    pub params: &'a RunParams,
    pub dump: &'a FinalDump,
    /// Acknowledged submits: (key, id the server returned, index of the ok op).
    pub acked: Vec<(String, u64, u64)>,
    /// Every key any client ever tried to submit.
    pub attempted_keys: BTreeSet<String>,
    /// Final tasks by idempotency key.
    pub by_key: BTreeMap<String, Vec<FinalTask>>,
}

impl<'a> Facts<'a> {
    pub fn new(ops: &'a [Op], params: &'a RunParams, dump: &'a FinalDump) -> Facts<'a> {
        let mut acked = Vec::new();
        let mut attempted_keys = BTreeSet::new();
        for (invoke, done) in pairs(ops) {
            if invoke.f != "submit" {
                continue;
            }
            attempted_keys.extend(invoke.strings("keys"));
            if let Some(done) = done.filter(|d| d.kind == OpType::Ok) {
                for (k, id) in done.strings("keys").into_iter().zip(done.u64s("ids")) {
                    acked.push((k, id, done.index));
                }
            }
        }
        let mut by_key: BTreeMap<String, Vec<FinalTask>> = BTreeMap::new();
        for t in dump.tasks.iter().flatten() {
            if let Some(k) = &t.key {
                by_key.entry(k.clone()).or_default().push(t.clone());
            }
        }
        Facts {
            ops,
            params,
            dump,
            acked,
            attempted_keys,
            by_key,
        }
    }

    /// Distinct acknowledged keys.
    pub fn acked_keys(&self) -> BTreeSet<&str> {
        self.acked.iter().map(|(k, _, _)| k.as_str()).collect()
    }
}

/// Every checker's result and the counts `results.json` reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub verdict: Verdict,
    pub scenario: String,
    pub seed: u64,
    pub sut_bug: Option<String>,
    pub acknowledged: u64,
    pub completed: u64,
    pub lost: u64,
    pub unexpected: u64,
    pub doubled: u64,
    pub lease_overlaps: u64,
    pub leader_changes: u64,
    pub unavailability_windows: Vec<(f64, f64)>,
    pub ops: BTreeMap<String, BTreeMap<String, u64>>,
    pub checks: Vec<Check>,
}

/// Longest gap without a successful client operation that still counts as available.
const UNAVAILABLE_GAP_NS: u64 = 1_000_000_000;

/// Runs every checker.
pub fn check(ops: &[Op], params: &RunParams, dump: &FinalDump) -> Results {
    let facts = Facts::new(ops, params, dump);
    let checks = vec![
        lost::check(&facts),
        unexpected::check(&facts),
        doubled::check(&facts),
        leases::check(&facts),
        convergence::check(&facts),
        liveness::check(&facts),
        coverage::check(&facts),
        membership::check(&facts),
    ];
    let verdict = checks
        .iter()
        .map(|c| c.verdict)
        .max()
        .unwrap_or(Verdict::Unknown);
    let count = |name: &str| {
        checks
            .iter()
            .find(|c| c.name == name)
            .map_or(0, |c| c.count)
    };
    let acked_keys = facts.acked_keys();
    let completed = acked_keys
        .iter()
        .filter(|k| {
            facts
                .by_key
                .get(**k)
                .is_some_and(|ts| ts.iter().any(FinalTask::is_terminal))
        })
        .count() as u64;
    let mut op_counts: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for op in ops.iter().filter(|o| o.process.starts_with('c')) {
        let kind = serde_json::to_value(op.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        *op_counts
            .entry(op.f.clone())
            .or_default()
            .entry(kind)
            .or_default() += 1;
    }
    Results {
        verdict,
        scenario: params.scenario.clone(),
        seed: params.seed,
        sut_bug: params.sut_bug.clone(),
        acknowledged: acked_keys.len() as u64,
        completed,
        lost: count("lost"),
        unexpected: count("unexpected"),
        doubled: count("doubled"),
        lease_overlaps: leases::overlaps(&facts),
        leader_changes: coverage::leader_changes(ops),
        unavailability_windows: unavailability_windows(ops),
        ops: op_counts,
        checks,
    }
}

/// Intervals (seconds) of the client workload in which no operation succeeded for longer than
/// [`UNAVAILABLE_GAP_NS`].
pub fn unavailability_windows(ops: &[Op]) -> Vec<(f64, f64)> {
    let client = |o: &&Op| o.process.starts_with('c');
    let Some(first) = ops.iter().filter(client).map(|o| o.time_ns).min() else {
        return Vec::new();
    };
    let last = ops
        .iter()
        .filter(client)
        .map(|o| o.time_ns)
        .max()
        .unwrap_or(first);
    let mut oks: Vec<u64> = ops
        .iter()
        .filter(client)
        .filter(|o| o.kind == OpType::Ok)
        .map(|o| o.time_ns)
        .collect();
    oks.sort_unstable();
    let mut windows = Vec::new();
    let mut prev = first;
    for t in oks.into_iter().chain(std::iter::once(last)) {
        if t.saturating_sub(prev) > UNAVAILABLE_GAP_NS {
            windows.push((prev as f64 / 1e9, t as f64 / 1e9));
        }
        prev = prev.max(t);
    }
    windows
}

#[cfg(test)]
pub(crate) mod fixture {
    //! Hand-written histories for the checkers' tests.
    use super::*;
    use serde_json::{json, Value};

    pub struct H {
        pub ops: Vec<Op>,
    }

    impl H {
        pub fn new() -> H {
            H { ops: Vec::new() }
        }

        pub fn push(&mut self, process: &str, kind: OpType, f: &str, value: Value) -> u64 {
            let index = self.ops.len() as u64;
            self.ops.push(Op {
                index,
                time_ns: index * 1_000_000,
                process: process.into(),
                kind,
                f: f.into(),
                value,
            });
            index
        }

        /// A submit of `keys` that was acknowledged with `ids`.
        pub fn submit_ok(&mut self, p: &str, keys: &[&str], ids: &[u64]) {
            self.push(p, OpType::Invoke, "submit", json!({ "keys": keys }));
            self.push(p, OpType::Ok, "submit", json!({ "keys": keys, "ids": ids }));
        }

        pub fn submit_info(&mut self, p: &str, keys: &[&str]) {
            self.push(p, OpType::Invoke, "submit", json!({ "keys": keys }));
            self.push(
                p,
                OpType::Info,
                "submit",
                json!({ "keys": keys, "error": "timeout" }),
            );
        }
    }

    pub fn task(id: u64, key: &str, state: &str) -> FinalTask {
        FinalTask {
            id,
            key: Some(key.into()),
            state: state.into(),
            attempts: 0,
            result_attempt: None,
        }
    }

    pub fn params(workers: usize, nemesis: &[&str]) -> RunParams {
        RunParams {
            scenario: "test".into(),
            nodes: 3,
            workers,
            clients: 2,
            time_limit_s: 10,
            nemesis: nemesis.iter().map(|s| s.to_string()).collect(),
            seed: 1,
            sut_bug: None,
            leader_bound_ms: 10_000,
            auth: false,
            tls: false,
        }
    }

    pub fn replica(node: u64, applied: u64, hash: u64) -> ReplicaDump {
        ReplicaDump {
            node,
            applied_index: Some(applied),
            state_hash: Some(hash),
            task_count: Some(1),
        }
    }

    pub fn dump(tasks: Vec<FinalTask>) -> FinalDump {
        FinalDump {
            replicas: vec![replica(1, 5, 7), replica(2, 5, 7), replica(3, 5, 7)],
            tasks: Some(tasks),
            leader_after_heal_ms: Some(300),
            drained: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::*;
    use super::*;

    #[test]
    fn a_clean_run_without_faults_requested_is_valid() {
        let mut h = H::new();
        h.submit_ok("c0", &["a", "b"], &[1, 2]);
        h.submit_info("c1", &["c"]);
        let d = dump(vec![task(1, "a", "pending"), task(2, "b", "pending")]);
        let r = check(&h.ops, &params(0, &[]), &d);
        assert_eq!(r.verdict, Verdict::Valid, "{:#?}", r.checks);
        assert_eq!(r.acknowledged, 2);
        assert_eq!(r.lost, 0);
    }

    #[test]
    fn one_invalid_check_makes_the_run_invalid() {
        let mut h = H::new();
        h.submit_ok("c0", &["a"], &[1]);
        let r = check(&h.ops, &params(0, &[]), &dump(vec![]));
        assert_eq!(r.verdict, Verdict::Invalid);
        assert_eq!(r.lost, 1);
    }

    #[test]
    fn gaps_without_successes_are_unavailability_windows() {
        let mut h = H::new();
        h.submit_ok("c0", &["a"], &[1]);
        h.ops[1].time_ns = 100;
        h.submit_ok("c0", &["b"], &[2]);
        h.ops[2].time_ns = 200;
        h.ops[3].time_ns = 3_000_000_000;
        let w = unavailability_windows(&h.ops);
        assert_eq!(w.len(), 1);
        assert!((w[0].1 - 3.0).abs() < 1e-9);
    }
}
