//! Counting how often a property test reaches the paths it is meant to exercise, so that a
//! generator that stops producing the interesting cases fails the test instead of passing
//! vacuously. Test builds only.

use std::collections::{BTreeMap, BTreeSet};

/// The share of runs (%) that must reach each counted path.
pub(crate) const FLOOR_PERCENT: u64 = 5;

/// In how many runs each named path was reached.
#[derive(Default)]
pub(crate) struct Reached {
    runs: u64,
    runs_reaching: BTreeMap<&'static str, u64>,
}

impl Reached {
    /// Notes one run that reached `paths`.
    pub(crate) fn add(&mut self, paths: BTreeSet<&'static str>) {
        self.runs += 1;
        for p in paths {
            *self.runs_reaching.entry(p).or_default() += 1;
        }
    }

    /// Prints the counts; fails unless each of `required` was reached in at least
    /// [`FLOOR_PERCENT`] of the runs.
    pub(crate) fn assert_reached(&self, what: &str, required: &[&str]) {
        eprintln!("{what}: {} runs; path: runs reaching it", self.runs);
        for (p, n) in &self.runs_reaching {
            eprintln!("  {p}: {n}");
        }
        let floor = (self.runs * FLOOR_PERCENT).div_ceil(100);
        for p in required {
            let n = self.runs_reaching.get(p).copied().unwrap_or(0);
            assert!(
                n >= floor,
                "{what}: only {n} of {} runs reached {p:?} (floor {floor}, {FLOOR_PERCENT}%): the generator no longer reaches it",
                self.runs
            );
        }
    }
}
