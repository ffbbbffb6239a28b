//! `flotilla bench failover`: repeated leader faults under steady load — the failover contract.
//!
//! A 3-replica cluster, 8 submitters (one task in flight each, every task under its own
//! idempotency key) and 4 in-process workers. Every few seconds the leader gets a fault:
//! `kill` (SIGKILL, restarted afterwards), `pause` (SIGSTOP for `--pause-secs`, then
//! SIGCONT) or `isolate` (cut off from its peers for `--pause-secs` while clients still reach
//! it; iptables and cgroup v2, so root). Per fault it reports the time until another replica is leader, the largest gap
//! between two acknowledged submits around the fault, and the time until a task submitted
//! after the fault starts on a worker (the new leader dispatching); at the end, lost (an
//! acknowledged key with no task), doubled (a key with two tasks) and re-runs (a task started
//! more than once). Prints a table and p50/max; `--out FILE` writes one JSON object per fault.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use flotilla_client::{ListQuery, TaskId, TaskSpec};
use flotilla_testkit::{Cluster, ClusterOptions};
use flotilla_worker::{Outcome, TaskContext};
use serde::Serialize;

#[derive(Args)]
pub struct FailoverBench {
    /// Leader faults to inject (spread over the kinds in turn).
    #[arg(long, default_value_t = 10)]
    faults: u32,
    /// Fault kinds, comma-separated: kill, pause, isolate (isolate needs root).
    #[arg(long, default_value = "kill,pause")]
    kinds: String,
    /// How long a paused or isolated leader stays so, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pause_secs: f64,
    /// Quiet time between faults, in seconds.
    #[arg(long, default_value_t = 4.0)]
    settle_secs: f64,
    /// Write one JSON object per fault (a JSON array) to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The replicas' `--heartbeat-ms` (default: the server's).
    #[arg(long)]
    heartbeat_ms: Option<u64>,
    /// The replicas' `--election-timeout-ms` (default: the server's).
    #[arg(long)]
    election_timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Kill,
    Pause,
    Isolate,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Kill => "kill",
            Kind::Pause => "pause",
            Kind::Isolate => "isolate",
        }
    }
}

fn parse_kinds(s: &str) -> Result<Vec<Kind>> {
    let mut out = Vec::new();
    for k in s.split(',').map(str::trim).filter(|k| !k.is_empty()) {
        out.push(match k {
            "kill" => Kind::Kill,
            "pause" => Kind::Pause,
            "isolate" => Kind::Isolate,
            other => {
                bail!("invalid --kinds: unknown fault {other:?} (known: kill, pause, isolate)")
            }
        });
    }
    if out.is_empty() {
        bail!("invalid --kinds: name at least one of kill, pause, isolate");
    }
    Ok(out)
}

#[derive(Serialize, Clone)]
struct FaultResult {
    scenario: &'static str,
    fault: &'static str,
    old_leader: u64,
    new_leader: u64,
    new_leader_ms: f64,
    max_gap_ms: f64,
    first_dispatch_ms: Option<f64>,
    lost: u64,
    doubled: u64,
    reruns: u64,
}

/// What the load saw: acknowledgements (time, key, id) and task starts (time, id, attempt).
#[derive(Default)]
struct Observed {
    acks: Vec<(Instant, String, TaskId)>,
    starts: Vec<(Instant, TaskId, u32)>,
}

pub async fn run(args: FailoverBench) -> Result<ExitCode> {
    let kinds = parse_kinds(&args.kinds)?;
    if args.faults == 0 {
        bail!("invalid --faults: must be at least 1");
    }
    if !(args.pause_secs.is_finite()
        && args.pause_secs > 0.0
        && args.settle_secs.is_finite()
        && args.settle_secs >= 0.0)
    {
        bail!("invalid --pause-secs/--settle-secs: must be positive");
    }
    let dir = tempfile::tempdir().context("temp dir")?;
    let bin = std::env::current_exe().context("locating the flotilla binary")?;
    let options = ClusterOptions {
        heartbeat_ms: args.heartbeat_ms,
        election_timeout_ms: args.election_timeout_ms,
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::new(&bin, 3, dir.path(), options)?;
    cluster.start_all()?;
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .map_err(anyhow::Error::msg)?;
    let client = cluster.client();
    let observed = Arc::new(Mutex::new(Observed::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let shutdown = tokio_util::sync::CancellationToken::new();

    for n in 0..4 {
        let observed = observed.clone();
        let handler = move |ctx: TaskContext| {
            observed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .starts
                .push((Instant::now(), ctx.task_id, ctx.attempt));
            async { Outcome::Success(b"ok".to_vec()) }
        };
        crate::bench::spawn_worker(
            &client,
            format!("failover-{n}-{}", std::process::id()),
            16,
            &["failover"],
            Arc::new(handler),
            shutdown.child_token(),
        );
    }
    let mut submitters = tokio::task::JoinSet::new();
    for s in 0..8 {
        let (client, observed, stop) = (client.clone(), observed.clone(), stop.clone());
        submitters.spawn(async move {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("fo-{s}-{seq}");
                let mut spec = TaskSpec::new("failover", b"x".repeat(100));
                spec.idempotency_key = Some(key.clone());
                // The call retries through the failover within its deadline; a call that
                // still fails is retried with the same key (never a new task).
                if let Ok(ids) = client.submit(vec![spec]).await {
                    observed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .acks
                        .push((Instant::now(), key, ids[0]));
                    seq += 1;
                }
            }
        });
    }

    tokio::time::sleep(Duration::from_secs(3)).await;
    outln!(
        "{:>3} {:>6} {:>4} {:>4} {:>14} {:>11} {:>18}",
        "#",
        "fault",
        "old",
        "new",
        "new_leader_ms",
        "max_gap_ms",
        "first_dispatch_ms"
    );
    let mut results = Vec::new();
    let bar = crate::progress::bar(args.faults as u64, "faults");
    for i in 0..args.faults {
        let kind = kinds[i as usize % kinds.len()];
        let old = cluster
            .wait_for_leader(Duration::from_secs(30))
            .await
            .map_err(anyhow::Error::msg)?;
        let replica = |id: u64| -> Result<crate::isolate::Replica> {
            let port = cluster
                .addr(id)
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .context("replica address without a port")?;
            let pid = cluster.pid(id).context("replica not running")?;
            Ok(crate::isolate::Replica { pid, port })
        };
        let mut isolation = None;
        let fault_at = Instant::now();
        match kind {
            Kind::Kill => cluster.kill(old)?,
            Kind::Pause => cluster.pause(old)?,
            Kind::Isolate => {
                let others = cluster
                    .ids()
                    .into_iter()
                    .filter(|id| *id != old)
                    .map(replica)
                    .collect::<Result<Vec<_>>>()?;
                isolation = Some(crate::isolate::Isolation::cut(replica(old)?, &others)?);
            }
        }
        // A new leader: another replica says it leads.
        let others: Vec<u64> = cluster.ids().into_iter().filter(|id| *id != old).collect();
        let (new_leader, new_leader_ms) = loop {
            let mut found = None;
            for id in &others {
                if let Ok(s) = client.cluster_status_of(cluster.addr(*id)).await {
                    if s.role == "leader" {
                        found = Some(*id);
                    }
                }
            }
            if let Some(l) = found {
                break (l, fault_at.elapsed().as_secs_f64() * 1000.0);
            }
            if fault_at.elapsed() > Duration::from_secs(60) {
                bail!("no new leader within 60 s of the fault");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        // Let the load run on the new leader, then heal.
        let window = Duration::from_secs_f64(args.pause_secs.max(2.0) + 1.0);
        tokio::time::sleep(window.saturating_sub(fault_at.elapsed())).await;
        match kind {
            Kind::Kill => cluster.start(old)?,
            Kind::Pause => cluster.resume(old)?,
            Kind::Isolate => {
                if let Some(i) = isolation.take() {
                    i.heal()?;
                }
            }
        }
        let window_end = Instant::now();
        let (max_gap_ms, first_dispatch_ms) = {
            let o = observed.lock().unwrap_or_else(|p| p.into_inner());
            let from = fault_at - Duration::from_millis(500);
            let mut times: Vec<Instant> = o
                .acks
                .iter()
                .map(|a| a.0)
                .filter(|t| *t >= from && *t <= window_end)
                .collect();
            times.sort();
            let gap = times
                .windows(2)
                .map(|w| w[1] - w[0])
                .max()
                .unwrap_or(window_end - from);
            // The first start of a task acknowledged once the new leader was seen: only the
            // new leader could have dispatched it (acks just after the fault may still be the
            // old leader's commits).
            let elected = fault_at + Duration::from_secs_f64(new_leader_ms / 1000.0);
            let after: HashMap<TaskId, Instant> = o
                .acks
                .iter()
                .filter(|a| a.0 > elected)
                .map(|a| (a.2, a.0))
                .collect();
            let first = o
                .starts
                .iter()
                .filter(|s| after.contains_key(&s.1))
                .map(|s| s.0)
                .min()
                .map(|t| (t - fault_at).as_secs_f64() * 1000.0);
            (gap.as_secs_f64() * 1000.0, first)
        };
        bar.inc(1);
        bar.suspend(|| {
            outln!(
                "{:>3} {:>6} {:>4} {:>4} {:>14.0} {:>11.0} {:>18}",
                i + 1,
                kind.name(),
                old,
                new_leader,
                new_leader_ms,
                max_gap_ms,
                first_dispatch_ms.map_or("-".to_string(), |v| format!("{v:.0}"))
            )
        });
        results.push(FaultResult {
            scenario: "failover",
            fault: kind.name(),
            old_leader: old,
            new_leader,
            new_leader_ms,
            max_gap_ms,
            first_dispatch_ms,
            lost: 0,
            doubled: 0,
            reruns: 0,
        });
        tokio::time::sleep(Duration::from_secs_f64(args.settle_secs)).await;
    }
    bar.finish_and_clear();
    stop.store(true, Ordering::Relaxed);
    while submitters.join_next().await.is_some() {}

    // Lost, doubled, re-run: over the whole run, once the cluster is whole again.
    cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .map_err(anyhow::Error::msg)?;
    let mut tasks = Vec::new();
    let mut after = None;
    loop {
        let page = client
            .list(&ListQuery {
                after,
                limit: 1000,
                ..Default::default()
            })
            .await
            .context("listing the tasks")?;
        tasks.extend(page.tasks);
        match page.next_after {
            Some(a) => after = Some(a),
            None => break,
        }
    }
    shutdown.cancel();
    let (lost, doubled, reruns, acked) = {
        let o = observed.lock().unwrap_or_else(|p| p.into_inner());
        let mut by_key: BTreeMap<&str, Vec<TaskId>> = BTreeMap::new();
        for t in &tasks {
            if let Some(k) = &t.spec.idempotency_key {
                by_key.entry(k.as_str()).or_default().push(t.id);
            }
        }
        let lost = o
            .acks
            .iter()
            .filter(|(_, k, id)| by_key.get(k.as_str()).is_none_or(|ids| !ids.contains(id)))
            .count() as u64;
        let doubled = by_key.values().filter(|ids| ids.len() > 1).count() as u64;
        let mut runs: HashMap<TaskId, u32> = HashMap::new();
        for (_, id, _) in &o.starts {
            *runs.entry(*id).or_default() += 1;
        }
        let reruns = runs.values().map(|n| u64::from(n - 1)).sum::<u64>();
        (lost, doubled, reruns, o.acks.len())
    };
    for r in &mut results {
        (r.lost, r.doubled, r.reruns) = (lost, doubled, reruns);
    }
    for kind in &kinds {
        let of: Vec<&FaultResult> = results.iter().filter(|r| r.fault == kind.name()).collect();
        if of.is_empty() {
            continue;
        }
        let stat = |f: &dyn Fn(&FaultResult) -> f64| {
            let mut v: Vec<f64> = of.iter().map(|r| f(r)).collect();
            v.sort_by(f64::total_cmp);
            (v[v.len() / 2], v[v.len() - 1])
        };
        let (nl50, nlmax) = stat(&|r| r.new_leader_ms);
        let (g50, gmax) = stat(&|r| r.max_gap_ms);
        let (d50, dmax) = stat(&|r| r.first_dispatch_ms.unwrap_or(f64::NAN));
        outln!(
            "{:>6} x{:<2} new leader p50 {nl50:.0} ms max {nlmax:.0} ms; largest submit gap p50 {g50:.0} ms max {gmax:.0} ms; first dispatch p50 {d50:.0} ms max {dmax:.0} ms",
            kind.name(),
            of.len()
        );
    }
    outln!("{acked} submits acknowledged; lost {lost}, doubled {doubled}, re-runs {reruns}");
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&results)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    drop(cluster);
    Ok(if lost == 0 && doubled == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_parsed_and_unknown_ones_refused() {
        assert_eq!(
            parse_kinds("kill,pause").unwrap(),
            vec![Kind::Kill, Kind::Pause]
        );
        assert_eq!(parse_kinds(" pause ").unwrap(), vec![Kind::Pause]);
        assert_eq!(
            parse_kinds("isolate,kill").unwrap(),
            vec![Kind::Isolate, Kind::Kill]
        );
        assert!(parse_kinds("kill,flood")
            .unwrap_err()
            .to_string()
            .contains("flood"));
        assert!(parse_kinds("").is_err());
    }
}
