//! The history of a run: every client operation as an `invoke` followed by exactly one of
//! `ok` (it happened), `fail` (the server proved nothing happened) or `info` (unknown outcome),
//! plus nemesis, monitor and sink events, all on one monotonic clock (ns since the run began).
//!
//! Written as JSON lines while the run goes on (`history.jsonl`), so a crashed harness still
//! leaves a checkable prefix. Must not depend on the cluster or the checkers.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What an entry says about its operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// Position in the history, from 0.
    pub index: u64,
    /// Nanoseconds since the run started (monotonic).
    pub time_ns: u64,
    /// Who did it: `c0`, `c1`... for clients, `nemesis`, `monitor`, `sink`, `harness`.
    pub process: String,
    #[serde(rename = "type")]
    pub kind: OpType,
    /// The operation: `submit`, `get`, `cancel`, `fault`, `heal`, `leader`, `report`, `phase`.
    pub f: String,
    pub value: Value,
}

impl Op {
    pub fn u64(&self, field: &str) -> Option<u64> {
        self.value.get(field).and_then(Value::as_u64)
    }

    pub fn str(&self, field: &str) -> Option<&str> {
        self.value.get(field).and_then(Value::as_str)
    }

    pub fn strings(&self, field: &str) -> Vec<String> {
        self.value
            .get(field)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn u64s(&self, field: &str) -> Vec<u64> {
        self.value
            .get(field)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default()
    }

    pub fn time_s(&self) -> f64 {
        self.time_ns as f64 / 1e9
    }
}

/// Appends operations to `history.jsonl` and keeps them in memory. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Mutex<Inner>>,
    start: Instant,
}

struct Inner {
    ops: Vec<Op>,
    out: BufWriter<File>,
}

impl Recorder {
    pub fn create(path: &Path) -> std::io::Result<Recorder> {
        let out = BufWriter::new(File::create(path)?);
        Ok(Recorder {
            inner: Arc::new(Mutex::new(Inner {
                ops: Vec::new(),
                out,
            })),
            start: Instant::now(),
        })
    }

    /// Nanoseconds since the run started.
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Records an entry and returns its index.
    pub fn record(&self, process: &str, kind: OpType, f: &str, value: Value) -> u64 {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // Take the time under the lock so indices and times are ordered alike.
        let op = Op {
            index: inner.ops.len() as u64,
            time_ns: self.now_ns(),
            process: process.to_string(),
            kind,
            f: f.to_string(),
            value,
        };
        let line = serde_json::to_string(&op).expect("an op always encodes");
        // A write error here would lose history silently; fail loudly instead.
        writeln!(inner.out, "{line}").expect("write history.jsonl");
        let index = op.index;
        inner.ops.push(op);
        index
    }

    pub fn flush(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.out.flush().expect("flush history.jsonl");
    }

    pub fn ops(&self) -> Vec<Op> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ops
            .clone()
    }
}

/// Reads a saved history.
pub fn load(path: &Path) -> anyhow::Result<Vec<Op>> {
    let mut ops = Vec::new();
    for (n, line) in BufReader::new(File::open(path)?).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        ops.push(
            serde_json::from_str(&line)
                .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), n + 1))?,
        );
    }
    Ok(ops)
}

/// Pairs every invoke with its completion (by process, in order). Returns
/// `(invoke, Some(completion))`, or `None` for an invoke the run never completed.
pub fn pairs(ops: &[Op]) -> Vec<(&Op, Option<&Op>)> {
    use std::collections::BTreeMap;
    let mut open: BTreeMap<&str, usize> = BTreeMap::new();
    let mut out: Vec<(&Op, Option<&Op>)> = Vec::new();
    for op in ops {
        if !op.process.starts_with('c') {
            continue;
        }
        match op.kind {
            OpType::Invoke => {
                open.insert(&op.process, out.len());
                out.push((op, None));
            }
            _ => {
                if let Some(i) = open.remove(op.process.as_str()) {
                    out[i].1 = Some(op);
                }
            }
        }
    }
    out
}
