//! A seeded mutation fuzzer over everything a replica decodes from untrusted bytes (issue 14,
//! item 7): gRPC requests (prost decoding, then the conversions and validation the API runs,
//! then `apply`), Raft messages (the bincode of openraft's requests, as `raft_service` decodes
//! them), log entries and state-image records (the on-disk codecs, then `apply` and the image
//! rebuild). No input may panic; every outcome must be a value or an error.
//!
//! Inputs are valid encodings with bit flips, byte overwrites, truncations, insertions, splices
//! and big length prefixes, plus pure random bytes. Each target prints how many inputs it ran
//! and how many got through each stage, and asserts that every stage was reached (a fuzzer
//! whose inputs all fail the first decode tests nothing). `FLOTILLA_FUZZ_CASES` sets the cases
//! per target (default 100,000; `scripts/fuzz.sh` runs 10,000,000); `FLOTILLA_FUZZ_SEED` the
//! seed. A failure prints the seed and case to reproduce it.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use flotilla_core::{
    AdmissionLimits, Capacity, Command, ImageRecord, Proposal, State, TaskSpec, WorkerSpec,
};
use flotilla_proto::pb;
use flotilla_store::TypeConfig;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn cases() -> u64 {
    std::env::var("FLOTILLA_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

fn seed() -> u64 {
    std::env::var("FLOTILLA_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(14)
}

/// One mutated input, from a valid `base` or from nothing.
fn mutate(rng: &mut StdRng, bases: &[Vec<u8>]) -> Vec<u8> {
    if rng.gen_ratio(1, 20) {
        let n = rng.gen_range(0..64);
        return (0..n).map(|_| rng.gen()).collect();
    }
    let mut b = bases[rng.gen_range(0..bases.len())].clone();
    for _ in 0..rng.gen_range(1..=4) {
        match rng.gen_range(0..6) {
            0 if !b.is_empty() => {
                let i = rng.gen_range(0..b.len());
                b[i] ^= 1 << rng.gen_range(0..8);
            }
            1 if !b.is_empty() => {
                let i = rng.gen_range(0..b.len());
                b[i] = rng.gen();
            }
            2 if !b.is_empty() => {
                let n = rng.gen_range(0..b.len());
                b.truncate(n);
            }
            3 => {
                let i = rng.gen_range(0..=b.len());
                let extra: Vec<u8> = (0..rng.gen_range(1..8)).map(|_| rng.gen()).collect();
                b.splice(i..i, extra);
            }
            4 if b.len() >= 8 => {
                // A huge length prefix where bincode (little-endian u64) or prost may read one.
                let i = rng.gen_range(0..=b.len() - 8);
                b[i..i + 8].copy_from_slice(&(u64::MAX >> rng.gen_range(0..40)).to_le_bytes());
            }
            _ => {
                let other = &bases[rng.gen_range(0..bases.len())];
                if !other.is_empty() && !b.is_empty() {
                    let from = rng.gen_range(0..other.len());
                    let at = rng.gen_range(0..b.len());
                    b.truncate(at);
                    b.extend_from_slice(&other[from..]);
                }
            }
        }
    }
    b
}

/// Runs `check` on `cases()` mutated inputs; `check` returns the stages an input got through.
/// Panics (naming the case) if any input panics, or if a stage was never reached.
fn fuzz(name: &str, bases: Vec<Vec<u8>>, stages: &[&str], check: impl Fn(&[u8]) -> usize) {
    let (n, seed) = (cases(), seed());
    let mut rng = StdRng::seed_from_u64(seed ^ fnv(name));
    let mut reached = vec![0u64; stages.len() + 1];
    for case in 0..n {
        let input = mutate(&mut rng, &bases);
        match catch_unwind(AssertUnwindSafe(|| check(&input))) {
            Ok(depth) => reached[depth.min(stages.len())] += 1,
            Err(_) => panic!(
                "{name}: case {case} (FLOTILLA_FUZZ_SEED={seed}) panicked on {} bytes: {:02x?}",
                input.len(),
                &input[..input.len().min(256)]
            ),
        }
    }
    let mut line = format!("fuzz {name}: {n} cases, no panic;");
    let mut through = n;
    for (i, stage) in stages.iter().enumerate() {
        through -= reached[i];
        line.push_str(&format!(" {stage} {through}"));
        assert!(
            through > 0,
            "{name}: no input got through {stage}: {reached:?}"
        );
    }
    println!("{line}");
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

fn spec(i: u32) -> TaskSpec {
    let mut s = TaskSpec::new(format!("q{}", i % 3), format!("payload-{i}").into_bytes());
    s.priority = (i % 5) as i32;
    s.idempotency_key = Some(format!("key-{i}"));
    s.labels = BTreeMap::from([("zone".into(), "a".into())]);
    s
}

fn worker(id: &str) -> WorkerSpec {
    WorkerSpec {
        id: id.into(),
        session: format!("{id}-session"),
        capacity: Capacity {
            slots: 4,
            cpu_millis: 4000,
            mem_mb: 4096,
        },
        labels: BTreeMap::new(),
        queues: vec![],
    }
}

/// A state with tasks in every state, for the commands and images to act on.
fn busy_state() -> (State, Vec<Command>) {
    let commands = vec![
        Command::RegisterWorker {
            now_ms: 1,
            worker: worker("w1"),
        },
        Command::Submit {
            now_ms: 2,
            tasks: (0..6).map(spec).collect(),
            limits: AdmissionLimits::default(),
        },
        Command::Assign {
            now_ms: 3,
            task_id: flotilla_core::TaskId(1),
            worker_id: "w1".into(),
            attempt: 1,
        },
        Command::Assign {
            now_ms: 3,
            task_id: flotilla_core::TaskId(2),
            worker_id: "w1".into(),
            attempt: 1,
        },
        Command::Complete {
            now_ms: 4,
            task_id: flotilla_core::TaskId(1),
            worker_id: "w1".into(),
            attempt: 1,
            result: b"done".to_vec(),
        },
        Command::Cancel {
            now_ms: 5,
            task_id: flotilla_core::TaskId(3),
        },
        Command::Tick { now_ms: 6 },
    ];
    let mut state = State::new();
    for c in &commands {
        state.apply(c);
    }
    (state, commands)
}

#[test]
fn grpc_requests_never_panic_the_api_path() {
    let bases: Vec<Vec<u8>> = vec![
        pb::SubmitTasksRequest {
            tasks: (0..3)
                .map(|i| flotilla_proto::spec_to_pb(&spec(i), true))
                .collect(),
        }
        .encode_to_vec(),
        pb::SubmitTasksRequest {
            tasks: vec![flotilla_proto::spec_to_pb(&spec(9), true)],
        }
        .encode_to_vec(),
    ];
    let (state, _) = busy_state();
    fuzz(
        "grpc SubmitTasks",
        bases,
        &["decoded", "converted", "valid", "applied"],
        |bytes| {
            let Ok(req) = pb::SubmitTasksRequest::decode(bytes) else {
                return 0;
            };
            let mut specs = Vec::new();
            for (i, t) in req.tasks.into_iter().enumerate() {
                let field = format!("tasks[{i}]");
                match flotilla_proto::spec_from_pb(&field, t) {
                    Ok(s) => specs.push((field, s)),
                    Err(_) => return 1,
                }
            }
            if specs
                .iter()
                .any(|(f, s)| flotilla_core::validate_spec(f, s).is_err())
            {
                return 2;
            }
            let mut s = state.clone();
            let r = s.apply(&Command::Submit {
                now_ms: 10,
                tasks: specs.into_iter().map(|(_, s)| s).collect(),
                limits: AdmissionLimits::default(),
            });
            s.check_invariants().expect("apply keeps the invariants");
            if matches!(r, flotilla_core::Response::Rejected(_)) {
                3
            } else {
                4
            }
        },
    );

    let worker_bases = vec![
        pb::CompleteTaskRequest {
            worker_id: "w1".into(),
            task_id: 2,
            attempt: 1,
            result: b"ok".to_vec(),
            session: "w1-session".into(),
        }
        .encode_to_vec(),
        pb::ConnectRequest {
            worker: Some(flotilla_proto::worker_spec_to_pb(&worker("w2"))),
        }
        .encode_to_vec(),
        pb::ReportOutcomesRequest {
            worker_id: "w1".into(),
            session: "w1-session".into(),
            outcomes: vec![
                pb::AttemptOutcome {
                    task_id: 2,
                    attempt: 1,
                    outcome: Some(pb::attempt_outcome::Outcome::Result(b"ok".to_vec())),
                },
                pb::AttemptOutcome {
                    task_id: 3,
                    attempt: 2,
                    outcome: Some(pb::attempt_outcome::Outcome::Failure(pb::AttemptFailure {
                        error: "boom".into(),
                        retryable: true,
                    })),
                },
            ],
        }
        .encode_to_vec(),
    ];
    fuzz(
        "grpc worker calls",
        worker_bases,
        &["decoded", "valid"],
        |bytes| {
            let a = pb::CompleteTaskRequest::decode(bytes).is_ok()
                || pb::ReportOutcomesRequest::decode(bytes).is_ok();
            match pb::ConnectRequest::decode(bytes) {
                Ok(c) => match c.worker.map(flotilla_proto::worker_spec_from_pb) {
                    Some(w) if w.validate().is_ok() => 2,
                    _ => 1,
                },
                Err(_) => usize::from(a),
            }
        },
    );
}

#[test]
fn raft_messages_never_panic_their_decoding() {
    let (_, commands) = busy_state();
    let leader = CommittedLeaderId::new(3, 1);
    let entries: Vec<Entry<TypeConfig>> = commands
        .iter()
        .enumerate()
        .map(|(i, c)| Entry {
            log_id: LogId::new(leader, i as u64 + 1),
            payload: EntryPayload::Normal(Proposal {
                commands: vec![c.clone()],
            }),
        })
        .collect();
    let append = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(3, 1),
        prev_log_id: Some(LogId::new(leader, 0)),
        entries: entries.clone(),
        leader_commit: Some(LogId::new(leader, 2)),
    };
    let vote = VoteRequest::<u64>::new(Vote::new(4, 2), Some(LogId::new(leader, 7)));
    let snapshot = InstallSnapshotRequest::<TypeConfig> {
        vote: Vote::new_committed(3, 1),
        meta: Default::default(),
        offset: 0,
        data: vec![1, 2, 3, 4],
        done: true,
    };
    let bases = vec![
        bincode::serialize(&append).unwrap(),
        bincode::serialize(&vote).unwrap(),
        bincode::serialize(&snapshot).unwrap(),
    ];
    fuzz(
        "raft messages",
        bases,
        &["decoded as one of the three"],
        |bytes| {
            let a = bincode::deserialize::<AppendEntriesRequest<TypeConfig>>(bytes).is_ok();
            let v = bincode::deserialize::<VoteRequest<u64>>(bytes).is_ok();
            let s = bincode::deserialize::<InstallSnapshotRequest<TypeConfig>>(bytes).is_ok();
            usize::from(a || v || s)
        },
    );

    // A log entry as the store keeps it (bincode after a version byte), then applied.
    let (state, _) = busy_state();
    let entry_bases: Vec<Vec<u8>> = entries
        .iter()
        .map(|e| bincode::serialize(e).unwrap())
        .collect();
    fuzz(
        "log entries",
        entry_bases,
        &["decoded", "applied"],
        |bytes| {
            let Ok(entry) = bincode::deserialize::<Entry<TypeConfig>>(bytes) else {
                return 0;
            };
            let EntryPayload::Normal(p) = entry.payload else {
                return 1;
            };
            let mut s = state.clone();
            s.apply_proposal(&p);
            s.check_invariants().expect("apply keeps the invariants");
            2
        },
    );
}

#[test]
fn state_image_records_never_panic_the_rebuild() {
    let (state, _) = busy_state();
    let records: Vec<Vec<u8>> = state
        .view()
        .records()
        .map(|r| bincode::serialize(&r).unwrap())
        .collect();
    let valid: Vec<ImageRecord> = records
        .iter()
        .map(|b| bincode::deserialize(b).unwrap())
        .collect();
    assert!(State::from_records(valid.clone()).is_ok());
    let n = valid.len();
    fuzz("state image", records, &["decoded", "rebuilt"], |bytes| {
        let Ok(record) = bincode::deserialize::<ImageRecord>(bytes) else {
            return 0;
        };
        // The damaged record in place of each record in turn.
        let mut rebuilt = false;
        for at in 0..n {
            let mut image = valid.clone();
            image[at] = record.clone();
            if let Ok(s) = State::from_records(image) {
                s.check_invariants()
                    .expect("a rebuilt state keeps the invariants");
                rebuilt = true;
            }
        }
        1 + usize::from(rebuilt)
    });
}
