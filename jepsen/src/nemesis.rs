//! Nemeses: a fault schedule drawn from the seed (pure, reproducible), and its execution
//! against the cluster, every fault followed by its healing step. Faults are recorded in the
//! history (`nemesis` process): `fault` with what was done and whether it applied, `heal` with
//! what was undone (replicas restarted from their data dirs, processes resumed, links opened).
//!
//! ```text
//!  warm-up │ quiet ─ fault ─ heal ─ quiet ─ fault ─ heal ... │ final heal
//! ```
//!
//! Which replica "the leader" is can only be known when the fault fires; everything else
//! (which fault, when, for how long, which random node or halves) comes from the seed.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Mutex;

use crate::cluster::Cluster;
use crate::history::{OpType, Recorder};
use crate::proxy::{cut_between, Endpoint};

/// Every fault the suite knows, by family.
pub const FAULTS: &[(&str, &[&str])] = &[
    (
        "kill",
        &["kill-one", "kill-leader", "kill-minority", "kill-all"],
    ),
    (
        "partition",
        &[
            "partition-one",
            "partition-leader",
            "partition-halves",
            "partition-ring",
            "partition-bridge",
            "partition-one-way",
        ],
    ),
    ("pause", &["pause-leader", "pause-one"]),
    ("worker-kill", &["worker-kill"]),
    ("worker-pause", &["worker-pause"]),
    ("worker-partition", &["worker-partition"]),
];

/// The family of a fault name (`kill-leader` → `kill`).
pub fn family_of(fault: &str) -> Option<&'static str> {
    FAULTS
        .iter()
        .find(|(family, faults)| *family == fault || faults.contains(&fault))
        .map(|(family, _)| *family)
}

/// Expands `--nemesis` items (families or single faults) into fault names.
pub fn expand(items: &[String]) -> Result<Vec<&'static str>, String> {
    let mut out = Vec::new();
    for item in items {
        if item == "none" {
            continue;
        }
        let found = FAULTS.iter().find_map(|(family, faults)| {
            if family == item {
                Some(faults.to_vec())
            } else {
                faults.iter().find(|f| *f == item).map(|f| vec![*f])
            }
        });
        match found {
            Some(f) => out.extend(f),
            None => return Err(format!("unknown nemesis {item:?}")),
        }
    }
    Ok(out)
}

/// One scheduled fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// When the fault starts, from the start of the chaos phase.
    pub at_ms: u64,
    pub fault: String,
    /// How long until its heal.
    pub duration_ms: u64,
    /// Seeded randomness for the fault's own choices (which node, which halves).
    pub pick: u64,
}

/// Timing bounds of the schedule.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub chaos_ms: u64,
    /// Quiet time between a heal and the next fault.
    pub quiet_ms: (u64, u64),
    pub fault_ms: (u64, u64),
}

/// The fault schedule of a run: a pure function of its arguments.
pub fn schedule(seed: u64, faults: &[&str], timing: Timing) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6e65_6d65_7369_7300);
    let mut steps = Vec::new();
    if faults.is_empty() {
        return steps;
    }
    let mut t = rng.gen_range(timing.quiet_ms.0..=timing.quiet_ms.1) / 2;
    loop {
        let duration_ms = rng.gen_range(timing.fault_ms.0..=timing.fault_ms.1);
        if t + duration_ms > timing.chaos_ms {
            break;
        }
        steps.push(Step {
            at_ms: t,
            fault: faults[rng.gen_range(0..faults.len())].to_string(),
            duration_ms,
            pick: rng.gen(),
        });
        t += duration_ms + rng.gen_range(timing.quiet_ms.0..=timing.quiet_ms.1);
    }
    steps
}

/// `ids` shuffled by `pick`.
fn shuffled(ids: &[u64], pick: u64) -> Vec<u64> {
    let mut v = ids.to_vec();
    v.shuffle(&mut StdRng::seed_from_u64(pick));
    v
}

/// The links a partition fault cuts, given the replicas and (if known) the leader. Pure.
pub fn partition_links(
    fault: &str,
    ids: &[u64],
    leader: Option<u64>,
    pick: u64,
) -> BTreeSet<(Endpoint, Endpoint)> {
    let order = shuffled(ids, pick);
    let n = ids.len();
    let target = leader.unwrap_or(order[0]);
    let rest = |x: u64| ids.iter().copied().filter(|i| *i != x).collect::<Vec<_>>();
    match fault {
        "partition-one" => cut_between(&[vec![order[0]], rest(order[0])]),
        "partition-leader" => cut_between(&[vec![target], rest(target)]),
        "partition-halves" => cut_between(&[order[..n / 2].to_vec(), order[n / 2..].to_vec()]),
        // Every replica sees a majority (itself and its ring neighbours) but no two see the
        // same one. With 3 replicas every pair is adjacent, so it degenerates to a bridge.
        "partition-ring" if n >= 5 => {
            let mut cut = BTreeSet::new();
            for (i, a) in order.iter().enumerate() {
                for (j, b) in order.iter().enumerate() {
                    let d = (i as i64 - j as i64).rem_euclid(n as i64);
                    let d = d.min(n as i64 - d);
                    if d > 1 {
                        cut.insert((Endpoint::Node(*a), Endpoint::Node(*b)));
                    }
                }
            }
            cut
        }
        // Two sides that only one bridge replica connects.
        "partition-bridge" | "partition-ring" => {
            let bridge = order[0];
            let side_a = order[1..]
                .iter()
                .copied()
                .take((n - 1) / 2)
                .collect::<Vec<_>>();
            let side_b = order[1 + side_a.len()..].to_vec();
            cut_between(&[side_a, side_b])
                .into_iter()
                .filter(|(a, b)| *a != Endpoint::Node(bridge) && *b != Endpoint::Node(bridge))
                .collect()
        }
        // The leader can hear everyone, but nothing it sends arrives.
        "partition-one-way" => rest(target)
            .into_iter()
            .map(|o| (Endpoint::Node(target), Endpoint::Node(o)))
            .collect(),
        _ => BTreeSet::new(),
    }
}

/// The replica that says it is leader, asking each running one.
pub async fn find_leader(cluster: &Arc<Mutex<Cluster>>) -> Option<u64> {
    let (client, targets) = {
        let mut c = cluster.lock().await;
        let mut targets: Vec<(u64, String)> = Vec::new();
        for id in c.ids() {
            if c.is_running(id) && !c.is_paused(id) {
                targets.push((id, c.addr(id).to_string()));
            }
        }
        (c.client(Duration::from_millis(500)), targets)
    };
    for (id, addr) in targets {
        if let Ok(s) = client.cluster_status_of(&addr).await {
            if s.role == "leader" {
                return Some(id);
            }
        }
    }
    None
}

/// What a fault did, so its heal can undo exactly that.
#[derive(Debug, Default)]
struct Applied {
    killed: Vec<u64>,
    paused: Vec<u64>,
    workers_killed: Vec<u64>,
    workers_paused: Vec<u64>,
    partitioned: bool,
}

async fn apply(
    cluster: &Arc<Mutex<Cluster>>,
    step: &Step,
    rec: &Recorder,
) -> anyhow::Result<Applied> {
    let family = family_of(&step.fault).unwrap_or("unknown");
    let wants_leader = step.fault.ends_with("-leader") || step.fault == "partition-one-way";
    let leader = if wants_leader {
        find_leader(cluster).await
    } else {
        None
    };
    let mut c = cluster.lock().await;
    let ids = c.ids();
    let order = shuffled(&ids, step.pick);
    let mut applied = Applied::default();
    let mut detail = json!({});
    match step.fault.as_str() {
        "kill-one" | "kill-leader" | "kill-minority" | "kill-all" => {
            let victims = match step.fault.as_str() {
                "kill-one" => vec![order[0]],
                "kill-leader" => vec![leader.unwrap_or(order[0])],
                "kill-minority" => order[..(ids.len() - 1) / 2].to_vec(),
                _ => ids.clone(),
            };
            for v in &victims {
                if c.is_running(*v) {
                    c.kill(*v)?;
                    applied.killed.push(*v);
                }
            }
            detail = json!({ "nodes": applied.killed });
        }
        "pause-leader" | "pause-one" => {
            let v = if step.fault == "pause-leader" {
                leader.unwrap_or(order[0])
            } else {
                order[0]
            };
            if c.is_running(v) {
                c.pause(v)?;
                applied.paused.push(v);
            }
            detail = json!({ "nodes": applied.paused });
        }
        f if f.starts_with("partition-") => {
            let links = partition_links(f, &ids, leader, step.pick);
            applied.partitioned = !links.is_empty();
            detail = json!({ "links": links.iter().map(|(a, b)| format!("{a:?}->{b:?}")).collect::<Vec<_>>() });
            c.net.set_blocked(links);
        }
        "worker-kill" | "worker-pause" | "worker-partition" => {
            let workers = c.worker_ids();
            if let Some(&w) = workers.get((step.pick % workers.len().max(1) as u64) as usize) {
                match step.fault.as_str() {
                    "worker-kill" => {
                        c.kill_worker(w)?;
                        applied.workers_killed.push(w);
                    }
                    "worker-pause" => {
                        c.pause_worker(w, true)?;
                        applied.workers_paused.push(w);
                    }
                    _ => {
                        drop(c);
                        let l = find_leader(cluster).await.unwrap_or(order[0]);
                        c = cluster.lock().await;
                        c.net.set_blocked(cut_between_worker(w, l));
                        applied.partitioned = true;
                    }
                }
                detail = json!({ "workers": [w] });
            }
        }
        other => anyhow::bail!("unknown fault {other}"),
    }
    let did = !applied.killed.is_empty()
        || !applied.paused.is_empty()
        || !applied.workers_killed.is_empty()
        || !applied.workers_paused.is_empty()
        || applied.partitioned;
    let hit_leader = leader.is_some()
        && (applied.killed.contains(&leader.unwrap_or(0))
            || applied.paused.contains(&leader.unwrap_or(0))
            || (applied.partitioned && step.fault != "worker-partition"));
    let mut value = json!({
        "family": family,
        "fault": step.fault,
        "applied": did,
        "leader": hit_leader,
        "duration_ms": step.duration_ms,
    });
    if let (Some(v), Some(d)) = (value.as_object_mut(), detail.as_object()) {
        v.extend(d.clone());
    }
    rec.record("nemesis", OpType::Info, "fault", value);
    Ok(applied)
}

fn cut_between_worker(w: u64, leader: u64) -> BTreeSet<(Endpoint, Endpoint)> {
    [
        (Endpoint::Worker(w), Endpoint::Node(leader)),
        (Endpoint::Node(leader), Endpoint::Worker(w)),
    ]
    .into()
}

async fn heal(
    cluster: &Arc<Mutex<Cluster>>,
    applied: Applied,
    rec: &Recorder,
) -> anyhow::Result<()> {
    let mut c = cluster.lock().await;
    if applied.partitioned {
        c.net.heal();
    }
    for id in &applied.paused {
        c.resume(*id)?;
    }
    for id in &applied.killed {
        c.start(*id)?;
    }
    for w in &applied.workers_paused {
        c.pause_worker(*w, false)?;
    }
    for w in &applied.workers_killed {
        c.start_worker(*w)?;
    }
    rec.record(
        "nemesis",
        OpType::Info,
        "heal",
        json!({
            "restarted": applied.killed,
            "resumed": applied.paused,
            "workers_restarted": applied.workers_killed,
            "workers_resumed": applied.workers_paused,
            "net": applied.partitioned,
        }),
    );
    Ok(())
}

/// Runs the schedule from now (the start of the chaos phase); returns after its last heal.
pub async fn run(
    cluster: Arc<Mutex<Cluster>>,
    steps: Vec<Step>,
    rec: Recorder,
) -> anyhow::Result<()> {
    let start = tokio::time::Instant::now();
    for step in steps {
        tokio::time::sleep_until(start + Duration::from_millis(step.at_ms)).await;
        let applied = apply(&cluster, &step, &rec).await?;
        tokio::time::sleep(Duration::from_millis(step.duration_ms)).await;
        heal(&cluster, applied, &rec).await?;
    }
    Ok(())
}

/// The final heal: every link open, every process resumed, every replica and worker running.
pub async fn heal_all(
    cluster: &Arc<Mutex<Cluster>>,
    workers: u64,
    rec: &Recorder,
) -> anyhow::Result<()> {
    let mut c = cluster.lock().await;
    c.net.heal();
    let mut resumed = Vec::new();
    for id in c.ids() {
        if c.is_paused(id) {
            c.resume(id)?;
            resumed.push(id);
        }
    }
    let down = c.down();
    for id in &down {
        c.start(*id)?;
    }
    for w in 1..=workers {
        c.pause_worker(w, false)?;
        if !c.worker_ids().contains(&w) {
            c.start_worker(w)?;
        }
    }
    rec.record(
        "nemesis",
        OpType::Info,
        "heal",
        json!({ "final": true, "restarted": down, "resumed": resumed, "net": true }),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        chaos_ms: 60_000,
        quiet_ms: (2_000, 4_000),
        fault_ms: (3_000, 6_000),
    };

    #[test]
    fn the_schedule_is_a_function_of_the_seed() {
        let faults = expand(&["kill".into(), "partition".into()]).unwrap();
        assert_eq!(schedule(7, &faults, T), schedule(7, &faults, T));
        assert_ne!(schedule(7, &faults, T), schedule(8, &faults, T));
        let s = schedule(7, &faults, T);
        assert!(s.len() >= 5, "{s:?}");
        assert!(s.iter().all(|st| st.at_ms + st.duration_ms <= T.chaos_ms));
        assert!(s
            .windows(2)
            .all(|w| w[0].at_ms + w[0].duration_ms < w[1].at_ms));
    }

    #[test]
    fn nemesis_names_expand_to_faults() {
        assert_eq!(
            expand(&["kill-leader".into()]).unwrap(),
            vec!["kill-leader"]
        );
        assert_eq!(expand(&["pause".into()]).unwrap().len(), 2);
        assert!(expand(&["flood".into()]).is_err());
        assert_eq!(family_of("partition-bridge"), Some("partition"));
    }

    #[test]
    fn partitions_cut_what_they_say() {
        let ids = [1, 2, 3];
        let one_way = partition_links("partition-one-way", &ids, Some(2), 0);
        assert_eq!(one_way.len(), 2);
        assert!(one_way.iter().all(|(a, _)| *a == Endpoint::Node(2)));
        let leader = partition_links("partition-leader", &ids, Some(3), 0);
        assert_eq!(leader.len(), 4);
        // A bridge of 3: the two ends cannot talk, the bridge talks to both.
        let bridge = partition_links("partition-bridge", &ids, None, 5);
        assert_eq!(bridge.len(), 2);
        // A ring of 5: each replica loses the 2 that are not its neighbours, both ways.
        let ring = partition_links("partition-ring", &[1, 2, 3, 4, 5], None, 1);
        assert_eq!(ring.len(), 10);
        let halves = partition_links("partition-halves", &[1, 2, 3, 4, 5], None, 1);
        assert_eq!(halves.len(), 12);
    }
}
