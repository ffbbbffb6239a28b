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
use std::time::{Duration, Instant};

use flotilla_client::{Client, ClientConfig};

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
    ("disk-full", &["disk-full-one", "disk-full-leader"]),
    ("disk-corrupt", &["corrupt-wal-one", "corrupt-wal-leader"]),
    (
        "membership",
        &["member-readd", "member-add-fresh", "member-transfer-leader"],
    ),
];

/// Size of each replica's tmpfs when the disk-full nemesis runs.
pub const DISK_FULL_TMPFS_MB: u64 = 192;

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
    /// Filler files that fill a replica's disk, by replica.
    filled: Vec<(u64, std::path::PathBuf)>,
    /// Members removed (their data dir wiped), to add back at the heal.
    removed: Vec<u64>,
    /// Fresh replicas added, to remove at the heal.
    added: Vec<u64>,
    /// Leadership was handed to another voter.
    transferred: bool,
}

/// Fills the file system of `dir` with one file; returns it and the bytes written.
fn fill_disk(dir: &std::path::Path) -> std::io::Result<(std::path::PathBuf, u64)> {
    use std::io::Write;
    let path = dir.join("nemesis-filler");
    let mut f = std::fs::File::create(&path)?;
    let chunk = vec![0xa5u8; 1 << 20];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n as u64,
        }
    }
    let _ = f.sync_all();
    Ok((path, written))
}

/// How many leading bytes of a RocksDB WAL file hold records written to this file (a reused
/// file keeps records of its previous use after them). Records are in 32 KiB blocks: a header
/// of checksum (4), length (2), type (1) and, for the recyclable types 5–8, the file's log
/// number (4); the live part ends at the first record that is not one of this file's.
fn live_wal_len(bytes: &[u8], log_number: u32) -> usize {
    const BLOCK: usize = 32 * 1024;
    let (mut off, mut live_end) = (0, 0);
    while off + 7 <= bytes.len() {
        let left_in_block = BLOCK - off % BLOCK;
        // A block's tail too short for a header is zero padding.
        if left_in_block < 11
            && bytes[off..(off + left_in_block).min(bytes.len())]
                .iter()
                .all(|b| *b == 0)
        {
            off += left_in_block;
            continue;
        }
        let len = u16::from_le_bytes([bytes[off + 4], bytes[off + 5]]) as usize;
        let header = match bytes[off + 6] {
            1..=4 => 7,
            5..=8 if off + 11 <= bytes.len() => {
                let number = u32::from_le_bytes([
                    bytes[off + 7],
                    bytes[off + 8],
                    bytes[off + 9],
                    bytes[off + 10],
                ]);
                if number != log_number {
                    break;
                }
                11
            }
            _ => break,
        };
        if off + header + len > bytes.len() {
            break;
        }
        off += header + len;
        live_end = off;
    }
    live_end
}

/// Damages the newest WAL file of `dir` in the middle of what was written to it: `spans` runs
/// of 64 bytes flipped at offsets drawn from `pick` in the later three quarters of its live
/// records (so recovery keeps some and drops the rest). Returns the file and the offsets, or
/// None when the file holds too little to damage.
fn corrupt_wal(
    dir: &std::path::Path,
    pick: u64,
    spans: usize,
) -> std::io::Result<Option<(std::path::PathBuf, Vec<u64>)>> {
    let newest = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .filter_map(|p| {
            let n = p.file_stem()?.to_str()?.parse::<u32>().ok()?;
            Some((n, p))
        })
        .max();
    let Some((number, path)) = newest else {
        return Ok(None);
    };
    let mut bytes = std::fs::read(&path)?;
    let live = live_wal_len(&bytes, number) as u64;
    if live < 4096 {
        return Ok(None);
    }
    let mut rng = StdRng::seed_from_u64(pick);
    let mut offsets: Vec<u64> = (0..spans)
        .map(|_| rng.gen_range(live / 4..live - 64))
        .collect();
    offsets.sort_unstable();
    for &at in &offsets {
        for b in &mut bytes[at as usize..at as usize + 64] {
            *b ^= 0x5a;
        }
    }
    std::fs::write(&path, bytes)?;
    Ok(Some((path, offsets)))
}

async fn apply(
    cluster: &Arc<Mutex<Cluster>>,
    step: &Step,
    rec: &Recorder,
) -> anyhow::Result<Applied> {
    let family = family_of(&step.fault).unwrap_or("unknown");
    if family == "membership" {
        return apply_membership(cluster, step, rec).await;
    }
    let wants_leader = step.fault.ends_with("-leader") || step.fault == "partition-one-way";
    let leader = if wants_leader {
        find_leader(cluster).await
    } else {
        None
    };
    let mut c = cluster.lock().await;
    let ids = c.ids();
    let order = shuffled(&ids, step.pick);
    // A fault aimed at "one replica" hits the first in the seeded order that is up: one that
    // a previous fault left down (it exited on a full disk after its heal looked) would make
    // the fault a no-op, and a run whose only kill missed proves nothing about kills.
    let up = order
        .iter()
        .copied()
        .find(|id| c.is_running(*id) && !c.is_paused(*id))
        .unwrap_or(order[0]);
    let mut applied = Applied::default();
    let mut detail = json!({});
    match step.fault.as_str() {
        "kill-one" | "kill-leader" | "kill-minority" | "kill-all" => {
            let victims = match step.fault.as_str() {
                "kill-one" => vec![up],
                "kill-leader" => vec![leader.unwrap_or(up)],
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
                leader.unwrap_or(up)
            } else {
                up
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
        "disk-full-one" | "disk-full-leader" => {
            let v = if step.fault == "disk-full-leader" {
                leader.unwrap_or(up)
            } else {
                up
            };
            let (path, bytes) = fill_disk(&c.data_dir(v))?;
            applied.filled.push((v, path));
            detail = json!({ "nodes": [v], "filler_bytes": bytes });
        }
        // A stopped replica's newest WAL damaged mid-file, then (at the heal) restarted.
        "corrupt-wal-one" | "corrupt-wal-leader" => {
            let v = if step.fault == "corrupt-wal-leader" {
                leader.unwrap_or(up)
            } else {
                up
            };
            if c.is_running(v) {
                c.kill(v)?;
                applied.killed.push(v);
                detail = match corrupt_wal(&c.data_dir(v), step.pick, 4)? {
                    Some((file, offsets)) => {
                        json!({ "nodes": [v], "wal": file.display().to_string(), "offsets": offsets })
                    }
                    None => json!({ "nodes": [v], "wal": null }),
                };
            }
        }
        other => anyhow::bail!("unknown fault {other}"),
    }
    let did = !applied.killed.is_empty()
        || !applied.paused.is_empty()
        || !applied.workers_killed.is_empty()
        || !applied.workers_paused.is_empty()
        || !applied.filled.is_empty()
        || applied.partitioned;
    let hit_leader = leader.is_some()
        && (applied.killed.contains(&leader.unwrap_or(0))
            || applied.paused.contains(&leader.unwrap_or(0))
            || applied.filled.iter().any(|(v, _)| Some(*v) == leader)
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
    if !applied.removed.is_empty() || !applied.added.is_empty() || applied.transferred {
        return heal_membership(cluster, applied, rec).await;
    }
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
    // Space back; a replica that exited on the full disk (as it must, rather than linger) is
    // restarted.
    let mut exited = Vec::new();
    for (v, filler) in &applied.filled {
        std::fs::remove_file(filler)?;
        if !c.is_running(*v) {
            exited.push(*v);
            c.start(*v)?;
        }
    }
    rec.record(
        "nemesis",
        OpType::Info,
        "heal",
        json!({
            "exited_on_full_disk": exited,
            "restarted": applied.killed,
            "resumed": applied.paused,
            "workers_restarted": applied.workers_killed,
            "workers_resumed": applied.workers_paused,
            "net": applied.partitioned,
        }),
    );
    Ok(())
}

/// A client for membership calls, of the members now: long timeouts, since adding a replica
/// answers only once it has caught up.
fn membership_client(c: &Cluster) -> anyhow::Result<Client> {
    Ok(Client::with_config(
        c.addrs(),
        ClientConfig {
            token: crate::auth::client_token(),
            tls: crate::auth::client_tls(),
            request_timeout: Duration::from_secs(30),
            call_timeout: Duration::from_secs(60),
            ..ClientConfig::default()
        },
    )?)
}

/// How long a membership change may keep being retried (no leader for a while, a joiner not
/// listening yet) before the run fails.
const MEMBERSHIP_RETRY: Duration = Duration::from_secs(60);

/// Removes member `v`, waits for it to stop by itself (a removed replica must exit, code 0),
/// then wipes its data dir so it can only come back as a fresh replica. Returns how it exited
/// (None: it did not stop within 30 s and was killed) and how long the removal took.
async fn remove_member(
    cluster: &Arc<Mutex<Cluster>>,
    v: u64,
) -> anyhow::Result<(Option<i32>, u64)> {
    let client = membership_client(&*cluster.lock().await)?;
    let started = Instant::now();
    loop {
        match client.remove_replica(v).await {
            Ok(_) => break,
            // An earlier try whose answer was lost went through.
            Err(e) if e.to_string().contains("is not a member") => break,
            Err(e) if started.elapsed() < MEMBERSHIP_RETRY => {
                eprintln!("nemesis: remove-replica {v}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => anyhow::bail!("removing replica {v}: {e}"),
        }
    }
    let removed_ms = started.elapsed().as_millis() as u64;
    let stop_deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(code) = cluster.lock().await.exit_code(v) {
            break code;
        }
        if Instant::now() >= stop_deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut c = cluster.lock().await;
    c.set_member(v, false);
    c.kill(v)?;
    c.wipe(v)?;
    c.set_joiner(v);
    Ok((exit, removed_ms))
}

/// Starts replica `v` empty with `--join` and adds it (learner, catch-up, voter); returns how
/// long that took.
async fn add_member(cluster: &Arc<Mutex<Cluster>>, v: u64) -> anyhow::Result<u64> {
    let (client, addr) = {
        let mut c = cluster.lock().await;
        c.start(v)?;
        (membership_client(&c)?, c.addr(v).to_string())
    };
    let started = Instant::now();
    loop {
        match client.add_replica(v, &addr, Some(MEMBERSHIP_RETRY)).await {
            Ok(_) => break,
            Err(e) if e.to_string().contains("is already a member (voter") => break,
            Err(e) if started.elapsed() < MEMBERSHIP_RETRY => {
                eprintln!("nemesis: add-replica {v}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => anyhow::bail!("adding replica {v}: {e}"),
        }
    }
    cluster.lock().await.set_member(v, true);
    Ok(started.elapsed().as_millis() as u64)
}

/// The membership faults: remove a member (to add back at the heal), add a fresh replica (to
/// remove at the heal), or hand leadership to another voter.
async fn apply_membership(
    cluster: &Arc<Mutex<Cluster>>,
    step: &Step,
    rec: &Recorder,
) -> anyhow::Result<Applied> {
    let leader = find_leader(cluster).await;
    let (order, spare) = {
        let c = cluster.lock().await;
        (
            shuffled(&c.ids(), step.pick),
            c.non_members().first().copied(),
        )
    };
    let mut applied = Applied::default();
    let mut detail = json!({});
    match step.fault.as_str() {
        "member-readd" => {
            let v = order[0];
            let (exit, took_ms) = remove_member(cluster, v).await?;
            applied.removed.push(v);
            detail = json!({ "nodes": [v], "removed": [{ "node": v, "exit_code": exit }], "took_ms": took_ms });
        }
        "member-add-fresh" => match spare {
            Some(v) => {
                let took_ms = add_member(cluster, v).await?;
                applied.added.push(v);
                detail = json!({ "nodes": [v], "took_ms": took_ms });
            }
            None => detail = json!({ "error": "no spare replica planned" }),
        },
        _ => {
            let target = order.iter().copied().find(|id| Some(*id) != leader);
            if let (Some(_), Some(target)) = (leader, target) {
                let client = membership_client(&*cluster.lock().await)?;
                match client.transfer_leader(target).await {
                    Ok(t) => {
                        applied.transferred = true;
                        detail = json!({ "nodes": [target], "took_ms": t.took.as_millis() as u64 });
                    }
                    Err(e) => detail = json!({ "nodes": [target], "error": e.to_string() }),
                }
            }
        }
    }
    let did = !applied.removed.is_empty() || !applied.added.is_empty() || applied.transferred;
    let hit_leader = applied.transferred || applied.removed.iter().any(|v| Some(*v) == leader);
    let mut value = json!({
        "family": "membership",
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

/// Undoes a membership fault: removed members are added back as fresh replicas, added ones
/// removed again, so every run ends with its initial members.
async fn heal_membership(
    cluster: &Arc<Mutex<Cluster>>,
    applied: Applied,
    rec: &Recorder,
) -> anyhow::Result<()> {
    let mut readded = Vec::new();
    for v in &applied.removed {
        let took_ms = add_member(cluster, *v).await?;
        readded.push(json!({ "node": v, "took_ms": took_ms }));
    }
    let mut removed = Vec::new();
    for v in &applied.added {
        let (exit, took_ms) = remove_member(cluster, *v).await?;
        removed.push(json!({ "node": v, "exit_code": exit, "took_ms": took_ms }));
    }
    rec.record(
        "nemesis",
        OpType::Info,
        "heal",
        json!({ "readded": readded, "removed": removed, "transferred": applied.transferred }),
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

    /// A WAL of `records` recyclable records for log number `number`, then `stale` records of
    /// a previous use; 128 bytes each with the header, so they tile the 32 KiB blocks.
    fn wal(number: u32, records: usize, stale: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..records + stale {
            let n = if i < records { number } else { number - 3 };
            out.extend_from_slice(&[0, 0, 0, 0, 117, 0, 5]);
            out.extend_from_slice(&n.to_le_bytes());
            out.extend_from_slice(&[7u8; 117]);
        }
        out
    }

    #[test]
    fn the_live_part_of_a_reused_wal_ends_at_the_first_stale_record() {
        let w = wal(10, 500, 300);
        let live = live_wal_len(&w, 10);
        assert_eq!(live, 500 * 128);
        assert_eq!(live_wal_len(&w, 11), 0);
        assert_eq!(live_wal_len(&wal(10, 0, 10), 10), 0);
    }

    #[test]
    fn wal_damage_hits_the_live_records_of_the_newest_wal() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("000009.log"), wal(9, 500, 0)).unwrap();
        std::fs::write(dir.path().join("000010.log"), wal(10, 500, 300)).unwrap();
        let (file, offsets) = corrupt_wal(dir.path(), 3, 4).unwrap().unwrap();
        assert!(file.ends_with("000010.log"));
        assert_eq!(offsets.len(), 4);
        let live = live_wal_len(&wal(10, 500, 300), 10) as u64;
        assert!(offsets.iter().all(|at| *at >= live / 4 && *at + 64 <= live));
        assert_ne!(std::fs::read(&file).unwrap(), wal(10, 500, 300));
        assert_eq!(
            std::fs::read(dir.path().join("000009.log")).unwrap(),
            wal(9, 500, 0),
            "older WAL untouched"
        );
        // The offsets are a function of the pick.
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("000010.log"), wal(10, 500, 300)).unwrap();
        assert_eq!(corrupt_wal(other.path(), 3, 4).unwrap().unwrap().1, offsets);
        // Too little log: left alone.
        let small = tempfile::tempdir().unwrap();
        std::fs::write(small.path().join("000010.log"), wal(10, 10, 300)).unwrap();
        assert!(corrupt_wal(small.path(), 3, 4).unwrap().is_none());
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
