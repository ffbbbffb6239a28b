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
//!
//! `--calm-secs N` first runs the load for N seconds without a fault and counts the elections
//! it saw (terms and leaders of every replica, sampled every second): a failure detector quick
//! enough for the faults must not replace a healthy leader under load. `--submitters` sets the
//! load (64 saturates the 2-core machine); `--faults 0` with a calm phase runs only that.

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
    /// Before the faults, run the load this long without a fault and count elections.
    #[arg(long, default_value_t = 0)]
    calm_secs: u64,
    /// Concurrent submitters (one task in flight each).
    #[arg(long, default_value_t = 8)]
    submitters: u32,
    /// The replicas' `--retention-ms` (default: the server's, 7 days: every task is kept).
    #[arg(long)]
    retention_ms: Option<u64>,
    /// Keep the replicas' data dirs and logs afterwards (the path is printed).
    #[arg(long)]
    keep_dir: bool,
    /// Write one JSON object per fault (a JSON array) to this file; a calm phase adds one
    /// object with `scenario` "calm".
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

/// What a calm phase saw.
#[derive(Serialize, Clone)]
struct CalmResult {
    scenario: &'static str,
    secs: f64,
    submitters: u32,
    acked: u64,
    acked_per_sec: f64,
    /// Terms started during the phase (each election, won or not, starts one).
    elections: u64,
    /// Changes of the leader the replicas name.
    leader_changes: u64,
    /// The largest gap between two acknowledged submits during the phase.
    max_gap_ms: f64,
    term_before: u64,
    term_after: u64,
}

/// What the load saw: acknowledgements (time, key, id) and task starts (time, id, attempt).
#[derive(Default)]
struct Observed {
    acks: Vec<(Instant, String, TaskId)>,
    starts: Vec<(Instant, TaskId, u32)>,
}

pub async fn run(args: FailoverBench) -> Result<ExitCode> {
    let kinds = parse_kinds(&args.kinds)?;
    if args.faults == 0 && args.calm_secs == 0 {
        bail!("invalid --faults: must be at least 1 (or give --calm-secs)");
    }
    if args.submitters == 0 || args.submitters > 4096 {
        bail!(
            "invalid --submitters: {} (must be 1 to 4096)",
            args.submitters
        );
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
    if args.retention_ms == Some(0) {
        bail!("invalid --retention-ms: must be at least 1");
    }
    let options = ClusterOptions {
        heartbeat_ms: args.heartbeat_ms,
        election_timeout_ms: args.election_timeout_ms,
        extra_args: args
            .retention_ms
            .map(|ms| vec!["--retention-ms".into(), ms.to_string()])
            .unwrap_or_default(),
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
    for s in 0..args.submitters {
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
    let calm = match args.calm_secs {
        0 => None,
        secs => Some(calm(&cluster, &client, &observed, secs, args.submitters).await?),
    };
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
    let listed_at = Instant::now();
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
        // With a retention, tasks finished longer ago than that are gone by design: only the
        // acknowledgements of the last half retention are looked for (the other half leaves
        // the listing time to finish).
        let checked_from = args.retention_ms.map(|ms| {
            listed_at
                .checked_sub(Duration::from_millis(ms / 2))
                .unwrap_or(listed_at)
        });
        let lost = o
            .acks
            .iter()
            .filter(|(t, _, _)| checked_from.is_none_or(|from| *t >= from))
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
    let window = match args.retention_ms {
        Some(ms) => format!(
            " (lost looked for among those of the last {:.1} s: --retention-ms)",
            ms as f64 / 2000.0
        ),
        None => String::new(),
    };
    outln!(
        "{acked} submits acknowledged; lost {lost}, doubled {doubled}, re-runs {reruns}{window}"
    );
    let mut json: Vec<serde_json::Value> = results
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()?;
    if let Some(c) = &calm {
        json.push(serde_json::to_value(c)?);
    }
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    drop(cluster);
    if args.keep_dir {
        outln!(
            "replica data dirs and logs kept in {}",
            dir.keep().display()
        );
    }
    Ok(
        if lost == 0 && doubled == 0 && calm.is_none_or(|c| c.elections == 0) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}

/// The terms and named leaders of every replica that answers.
async fn terms(cluster: &Cluster, client: &flotilla_client::Client) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    for id in cluster.ids() {
        if let Ok(s) = client.cluster_status_of(cluster.addr(id)).await {
            out.push((id, s.term, s.leader_id.unwrap_or(0)));
        }
    }
    out
}

/// Runs the load `secs` seconds without a fault, sampling every replica's term and leader
/// every second.
async fn calm(
    cluster: &Cluster,
    client: &flotilla_client::Client,
    observed: &Mutex<Observed>,
    secs: u64,
    submitters: u32,
) -> Result<CalmResult> {
    let acked_before = observed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .acks
        .len();
    let first = terms(cluster, client).await;
    if first.len() < 3 {
        bail!(
            "calm phase: only {} replicas answered at the start",
            first.len()
        );
    }
    let mut last: HashMap<u64, (u64, u64)> = first.iter().map(|(i, t, l)| (*i, (*t, *l))).collect();
    let term_before = first.iter().map(|r| r.1).max().unwrap_or(0);
    let mut leader_changes = 0u64;
    let mut term_max = term_before;
    let started = Instant::now();
    let bar = crate::progress::bar(secs, "calm seconds");
    while started.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        bar.set_position(started.elapsed().as_secs().min(secs));
        for (id, term, leader) in terms(cluster, client).await {
            let (was_term, was_leader) = last.insert(id, (term, leader)).unwrap_or((term, leader));
            if term != was_term {
                term_max = term_max.max(term);
                bar.suspend(|| outln!("calm: replica {id} moved from term {was_term} to {term}"));
            }
            if leader != was_leader && leader != 0 && was_leader != 0 {
                leader_changes += 1;
            }
        }
    }
    bar.finish_and_clear();
    let secs_run = started.elapsed().as_secs_f64();
    let (acked, max_gap_ms) = {
        let o = observed.lock().unwrap_or_else(|p| p.into_inner());
        let mut times: Vec<Instant> = o.acks[acked_before..].iter().map(|a| a.0).collect();
        times.sort();
        let gap = times
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default();
        (times.len() as u64, gap.as_secs_f64() * 1000.0)
    };
    let term_after = last.values().map(|v| v.0).max().unwrap_or(0).max(term_max);
    // Every election, won or not, starts a new term.
    let elections = term_after - term_before;
    let result = CalmResult {
        scenario: "calm",
        secs: secs_run,
        submitters,
        acked,
        acked_per_sec: acked as f64 / secs_run,
        elections,
        leader_changes,
        max_gap_ms,
        term_before,
        term_after,
    };
    outln!(
        "calm: {secs_run:.0} s of load from {submitters} submitters, {acked} submits acknowledged ({:.0}/s); largest submit gap {max_gap_ms:.0} ms; elections {elections}, leader changes {leader_changes} (term {term_before} -> {term_after})",
        result.acked_per_sec
    );
    Ok(result)
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
