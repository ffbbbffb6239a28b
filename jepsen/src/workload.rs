//! The workload: concurrent clients that submit tasks under client-chosen idempotency keys,
//! deliberately retry earlier keys, read task status and cancel a few. Every call is recorded
//! as an invoke and exactly one completion: `ok`, `fail` only when the server's answer proves
//! nothing happened, `info` when the outcome is unknown.
//!
//! Also the monitor, which records every leader change it observes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_client::{Client, ClientError, Consistency, TaskId, TaskSpec};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tonic::Code;

use crate::history::{OpType, Recorder};

/// Keys and ids the clients share, to pick retries, reads and cancels from.
#[derive(Default)]
pub struct Shared {
    /// Every key tried so far, with its spec.
    keys: Mutex<Vec<TaskSpec>>,
    /// Ids of acknowledged tasks.
    ids: Mutex<Vec<u64>>,
}

/// What the clients do.
#[derive(Clone)]
pub struct Plan {
    pub seed: u64,
    /// The argv every task runs (the sink reporter when workers run).
    pub argv: Vec<String>,
    /// Pause between two operations of one client.
    pub think_ms: u64,
    /// Cancels are only issued while this is set (turned off before the drain).
    pub cancels: bool,
}

/// Whether the server refused the call before doing anything: only then is it a `fail`.
pub fn is_definite(e: &ClientError) -> bool {
    matches!(
        e.code(),
        Some(
            Code::InvalidArgument
                | Code::NotFound
                | Code::FailedPrecondition
                | Code::AlreadyExists
                | Code::ResourceExhausted
                | Code::OutOfRange
        )
    )
}

fn completion(e: &ClientError) -> OpType {
    if is_definite(e) {
        OpType::Fail
    } else {
        OpType::Info
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs client `n` until `stop` is set.
pub async fn client(
    n: usize,
    cl: Client,
    plan: Plan,
    shared: Arc<Shared>,
    rec: Recorder,
    stop: Arc<AtomicBool>,
) {
    let process = format!("c{n}");
    let mut rng = StdRng::seed_from_u64(plan.seed.wrapping_mul(1_000_003).wrapping_add(n as u64));
    let payload = json!({ "argv": plan.argv }).to_string().into_bytes();
    let mut next_key = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let roll: u32 = rng.gen_range(0..100);
        let known_ids = lock(&shared.ids).len();
        let known_keys = lock(&shared.keys).len();
        if roll < 12 && known_keys > 0 {
            // A deliberate retry of an earlier key (acknowledged or not).
            let spec = lock(&shared.keys)[rng.gen_range(0..known_keys)].clone();
            submit(&process, &cl, vec![spec], true, &shared, &rec).await;
        } else if roll < 30 && known_ids > 0 {
            let id = lock(&shared.ids)[rng.gen_range(0..known_ids)];
            get(&process, &cl, id, &rec).await;
        } else if roll < 34 && known_ids > 0 && plan.cancels {
            let id = lock(&shared.ids)[rng.gen_range(0..known_ids)];
            let inv = json!({ "id": id });
            rec.record(&process, OpType::Invoke, "cancel", inv);
            match cl.cancel(TaskId(id)).await {
                Ok(prev) => rec.record(
                    &process,
                    OpType::Ok,
                    "cancel",
                    json!({ "id": id, "previous": prev.as_str() }),
                ),
                Err(e) => rec.record(
                    &process,
                    completion(&e),
                    "cancel",
                    json!({ "id": id, "error": e.to_string() }),
                ),
            };
        } else {
            let batch = rng.gen_range(1..=3);
            let specs = (0..batch)
                .map(|_| {
                    next_key += 1;
                    let mut s = TaskSpec::new("jepsen", payload.clone());
                    s.idempotency_key = Some(format!("{process}-{next_key}"));
                    s.max_attempts = 10;
                    s
                })
                .collect::<Vec<_>>();
            lock(&shared.keys).extend(specs.iter().cloned());
            submit(&process, &cl, specs, false, &shared, &rec).await;
        }
        tokio::time::sleep(Duration::from_millis(plan.think_ms)).await;
    }
}

async fn submit(
    process: &str,
    cl: &Client,
    specs: Vec<TaskSpec>,
    retry: bool,
    shared: &Shared,
    rec: &Recorder,
) {
    let keys: Vec<String> = specs
        .iter()
        .filter_map(|s| s.idempotency_key.clone())
        .collect();
    rec.record(
        process,
        OpType::Invoke,
        "submit",
        json!({ "keys": keys, "retry": retry }),
    );
    match cl.submit(specs).await {
        Ok(ids) => {
            let ids: Vec<u64> = ids.into_iter().map(|i| i.0).collect();
            lock(&shared.ids).extend(ids.iter().copied().filter(|i| *i > 0));
            rec.record(
                process,
                OpType::Ok,
                "submit",
                json!({ "keys": keys, "ids": ids, "retry": retry }),
            );
        }
        Err(e) => {
            rec.record(
                process,
                completion(&e),
                "submit",
                json!({ "keys": keys, "error": e.to_string(), "retry": retry }),
            );
        }
    }
}

async fn get(process: &str, cl: &Client, id: u64, rec: &Recorder) {
    rec.record(process, OpType::Invoke, "get", json!({ "id": id }));
    match cl.get_with(TaskId(id), Consistency::Linearizable).await {
        Ok(t) => rec.record(
            process,
            OpType::Ok,
            "get",
            json!({ "id": id, "state": t.state.as_str(), "attempts": t.attempts }),
        ),
        Err(e) => rec.record(
            process,
            completion(&e),
            "get",
            json!({ "id": id, "error": e.to_string() }),
        ),
    };
}

/// Records `leader` events: whenever the replica that says it leads (highest term) changes.
pub async fn monitor(addrs: Vec<String>, rec: Recorder, stop: Arc<AtomicBool>) {
    let Ok(cl) = Client::with_config(
        addrs.clone(),
        flotilla_client::ClientConfig {
            token: crate::auth::client_token(),
            tls: crate::auth::client_tls(),
            request_timeout: Duration::from_millis(300),
            ..Default::default()
        },
    ) else {
        return;
    };
    let mut last: Option<(u64, u64)> = None;
    while !stop.load(Ordering::Relaxed) {
        let mut set = tokio::task::JoinSet::new();
        for a in &addrs {
            let (cl, a) = (cl.clone(), a.clone());
            set.spawn(async move { cl.cluster_status_of(&a).await.ok() });
        }
        let mut best: Option<(u64, u64)> = None;
        while let Some(r) = set.join_next().await {
            if let Ok(Some(s)) = r {
                if s.role == "leader" && best.is_none_or(|(t, _)| s.term > t) {
                    best = Some((s.term, s.node_id));
                }
            }
        }
        if let Some((term, leader)) = best {
            if last.is_none_or(|(_, l)| l != leader) || last.is_some_and(|(t, _)| t != term) {
                rec.record(
                    "monitor",
                    OpType::Info,
                    "leader",
                    json!({ "leader": leader, "term": term }),
                );
                last = best;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A phase boundary in the history.
pub fn phase(rec: &Recorder, name: &str) {
    rec.record("harness", OpType::Info, "phase", Value::String(name.into()));
}
