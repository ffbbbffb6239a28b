//! Converting a data dir written by an older release to the current format, once, at open.
//!
//! Every value this crate writes starts with its format version (see `codec`). A data dir
//! records the version it was last written in (the `format` key in `meta`; a version 1 dir has
//! none). Opening an older dir decodes every stored value in its version, converts it, and
//! writes it back in the current one, in one synced write batch: either the whole dir is
//! converted or none of it. Values are never read in an old version after that.
//!
//! ```text
//!  open ─▶ format key? ──current──▶ done
//!              ├─2..=6─▶ identity, vote, pointers: decode as they are;
//!              │         log: decode as format 6 (`format6`) ─▶ convert ─▶ encode v7
//!              └─absent (v1)─▶ identity, vote, pointers, log, snapshot: decode v1 ─▶ convert ─▶ encode v7
//! ```
//!
//! Formats 3 to 6 only appended enum variants (3: `QueueSetting`'s flow limits, the image's
//! `Flow` record; 4: the workflow commands, the image's `Workflow` record; 5: the schedule
//! commands, the image's `Schedule` record; 6: the image's `Attempts` record), so a version 2
//! to 5 value is a format 6 value. Format 7 added a field (the task's concurrency key), so log
//! entries of versions 2 to 6 decode through format 6's frozen shapes and are converted, and
//! snapshot files of those versions are read through the frozen version 6 image records (see
//! `snapshot`); the other stored values kept their shape.

use std::collections::BTreeMap;
use std::path::Path;

use openraft::{Entry, EntryPayload, LogId, Membership, SnapshotMeta, StoredMembership, Vote};
use rocksdb::{IteratorMode, WriteBatch, WriteOptions, DB};

use crate::codec::{decode_version, encode, version_of, FORMAT_VERSION};
use crate::db::{Identity, CF_LOG, CF_META, IDENTITY_KEY};
use crate::{Node, NodeId, TypeConfig};

/// Meta key holding the format version the whole data dir is written in.
pub(crate) const FORMAT_KEY: &[u8] = b"format";

/// Format version 1's shapes, as that release wrote them.
pub(crate) mod v1 {
    use std::io::Cursor;

    use openraft::{BasicNode, SnapshotMeta};
    use serde::Deserialize;

    openraft::declare_raft_types!(
        /// openraft's types as format version 1 stored them.
        pub V1:
            D = flotilla_core::compat::v1::Proposal,
            R = (),
            NodeId = u64,
            Node = BasicNode,
            Entry = openraft::Entry<V1>,
            SnapshotData = Cursor<Vec<u8>>,
    );

    #[derive(Deserialize)]
    pub struct Identity {
        pub cluster_name: String,
        pub node_id: u64,
    }

    #[derive(Deserialize)]
    pub struct StoredSnapshot {
        pub meta: SnapshotMeta<u64, BasicNode>,
        pub data: Vec<u8>,
    }
}

/// The format version of an opened (not fresh) data dir.
pub(crate) fn stored_version(db: &DB) -> Result<u8, String> {
    let newer = |v: u8| {
        format!(
            "written by a newer release (format version {v}; this release reads up to {FORMAT_VERSION})"
        )
    };
    let meta = db.cf_handle(CF_META).expect("meta cf exists");
    if let Some(bytes) = db.get_cf(meta, FORMAT_KEY).map_err(|e| e.to_string())? {
        if let Some(v) = version_of(&bytes).filter(|v| *v > FORMAT_VERSION) {
            return Err(newer(v));
        }
        // The record is written in the format it names.
        let v: u8 = decode_version(version_of(&bytes).unwrap_or(0), &bytes)
            .map_err(|e| format!("format record: {e}"))?;
        return if v > FORMAT_VERSION {
            Err(newer(v))
        } else {
            Ok(v)
        };
    }
    // Version 1 had no format record; its identity record carries the version byte.
    match db.get_cf(meta, IDENTITY_KEY).map_err(|e| e.to_string())? {
        Some(bytes) => match version_of(&bytes) {
            Some(v) if v > FORMAT_VERSION => Err(newer(v)),
            Some(v) => Ok(v),
            None => Err("empty identity record".into()),
        },
        None => Err("identity record missing".into()),
    }
}

/// Records that the dir is written in the current format (part of a migration's batch, or of
/// a new dir's first write).
pub(crate) fn put_format(batch: &mut WriteBatch, db: &DB) {
    let meta = db.cf_handle(CF_META).expect("meta cf exists");
    batch.put_cf(meta, FORMAT_KEY, encode(&FORMAT_VERSION));
}

/// Converts a version 1 dir to the current format; `incarnation` becomes the dir's incarnation.
/// Its snapshot becomes a snapshot file (written and synced before the batch that points at
/// it). Returns how many log entries were converted.
pub(crate) fn from_v1(db: &DB, dir: &Path, incarnation: &str) -> Result<usize, String> {
    let meta = db.cf_handle(CF_META).expect("meta cf exists");
    let log = db.cf_handle(CF_LOG).expect("log cf exists");
    let mut batch = WriteBatch::default();

    let identity: v1::Identity = read_v1(db, IDENTITY_KEY)?.ok_or("identity record missing")?;
    batch.put_cf(
        meta,
        IDENTITY_KEY,
        encode(&Identity {
            cluster_name: identity.cluster_name,
            node_id: identity.node_id,
            incarnation: incarnation.to_string(),
        }),
    );
    // Same shapes in both versions: re-encode.
    if let Some(vote) = read_v1::<Vote<NodeId>>(db, b"vote")? {
        batch.put_cf(meta, b"vote", encode(&vote));
    }
    if let Some(c) = read_v1::<Option<LogId<NodeId>>>(db, b"committed")? {
        batch.put_cf(meta, b"committed", encode(&c));
    }
    if let Some(p) = read_v1::<LogId<NodeId>>(db, b"last_purged")? {
        batch.put_cf(meta, b"last_purged", encode(&p));
    }
    if let Some(s) = read_v1::<v1::StoredSnapshot>(db, b"snapshot")? {
        let image: flotilla_core::compat::v1::StateImage =
            decode_version(1, &s.data).map_err(|e| format!("version 1 snapshot image: {e}"))?;
        let state = flotilla_core::State::from_records(image.into_records()?)
            .map_err(|e| format!("version 1 snapshot image: {e}"))?;
        let snap_meta = SnapshotMeta {
            last_log_id: s.meta.last_log_id,
            last_membership: membership_from_v1(&s.meta.last_membership),
            snapshot_id: format!("{}-v1", s.meta.snapshot_id),
        };
        let (file, bytes) = crate::snapshot::write(dir, &snap_meta, &state.view())
            .map_err(|e| format!("writing the converted snapshot: {e}"))?;
        let pointer = crate::snapshot::Pointer {
            file,
            meta: snap_meta,
            bytes,
        };
        batch.put_cf(meta, crate::state_machine::SNAPSHOT_KEY, encode(&pointer));
    }
    let mut entries = 0;
    for item in db.iterator_cf(log, IteratorMode::Start) {
        let (key, value) = item.map_err(|e| e.to_string())?;
        let old: Entry<v1::V1> =
            decode_version(1, &value).map_err(|e| format!("version 1 log entry: {e}"))?;
        batch.put_cf(log, key, encode(&entry_from_v1(old)));
        entries += 1;
    }
    write_converted(db, batch)?;
    Ok(entries)
}

/// Converts a version 2 to 6 dir to the current format: log entries decode through the frozen
/// format 6 shapes (formats 3 to 6 only appended enum variants, so versions 2 to 5 are a subset
/// of 6) and are converted; every other value keeps its shape. All are written again with the
/// current version byte, in one synced batch. Returns how many log entries were converted.
pub(crate) fn from_appended(db: &DB, version: u8) -> Result<usize, String> {
    debug_assert!((2..FORMAT_VERSION).contains(&version));
    let log = db.cf_handle(CF_LOG).expect("log cf exists");
    let mut batch = WriteBatch::default();
    fn again<T: serde::Serialize + serde::de::DeserializeOwned>(
        db: &DB,
        batch: &mut WriteBatch,
        version: u8,
        key: &[u8],
    ) -> Result<(), String> {
        let meta = db.cf_handle(CF_META).expect("meta cf exists");
        if let Some(bytes) = db.get_cf(meta, key).map_err(|e| e.to_string())? {
            let value: T = decode_version(version, &bytes).map_err(|e| {
                format!(
                    "version {version} {} record: {e}",
                    String::from_utf8_lossy(key)
                )
            })?;
            batch.put_cf(meta, key, encode(&value));
        }
        Ok(())
    }
    again::<Identity>(db, &mut batch, version, IDENTITY_KEY)?;
    again::<Vote<NodeId>>(db, &mut batch, version, b"vote")?;
    again::<Option<LogId<NodeId>>>(db, &mut batch, version, b"committed")?;
    again::<LogId<NodeId>>(db, &mut batch, version, b"last_purged")?;
    again::<crate::snapshot::Pointer>(db, &mut batch, version, crate::state_machine::SNAPSHOT_KEY)?;
    let mut entries = 0;
    for item in db.iterator_cf(log, IteratorMode::Start) {
        let (key, value) = item.map_err(|e| e.to_string())?;
        // Formats 2 to 6 wrote entries in format 6's shapes (or a subset of them).
        let entry: Entry<crate::format6::V6> = decode_version(version, &value)
            .map_err(|e| format!("version {version} log entry: {e}"))?;
        let entry: Entry<TypeConfig> = crate::format6::entry(entry);
        batch.put_cf(log, key, encode(&entry));
        entries += 1;
    }
    write_converted(db, batch)?;
    Ok(entries)
}

/// Adds the current format record to `batch` and writes it, synced: the conversion happens
/// whole or not at all.
fn write_converted(db: &DB, mut batch: WriteBatch) -> Result<(), String> {
    put_format(&mut batch, db);
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    db.write_opt(batch, &wo).map_err(|e| e.to_string())
}

fn read_v1<T: serde::de::DeserializeOwned>(db: &DB, key: &[u8]) -> Result<Option<T>, String> {
    let meta = db.cf_handle(CF_META).expect("meta cf exists");
    db.get_cf(meta, key)
        .map_err(|e| e.to_string())?
        .map(|bytes| {
            decode_version(1, &bytes).map_err(|e| {
                format!(
                    "version 1 record {:?}: {e}",
                    String::from_utf8_lossy(key).as_ref()
                )
            })
        })
        .transpose()
}

/// A version 1 member list (address only) as unpinned members.
fn membership_v1(m: &Membership<u64, openraft::BasicNode>) -> Membership<NodeId, Node> {
    let nodes: BTreeMap<NodeId, Node> = m
        .nodes()
        .map(|(id, n)| (*id, Node::new(n.addr.clone())))
        .collect();
    Membership::new(m.get_joint_config().clone(), nodes)
}

fn membership_from_v1(
    m: &StoredMembership<u64, openraft::BasicNode>,
) -> StoredMembership<NodeId, Node> {
    StoredMembership::new(*m.log_id(), membership_v1(m.membership()))
}

pub(crate) fn entry_from_v1(e: Entry<v1::V1>) -> Entry<TypeConfig> {
    Entry {
        log_id: e.log_id,
        payload: match e.payload {
            EntryPayload::Blank => EntryPayload::Blank,
            EntryPayload::Normal(p) => EntryPayload::Normal(p.into()),
            EntryPayload::Membership(m) => EntryPayload::Membership(membership_v1(&m)),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use flotilla_core::{Command, TaskState};
    use openraft::storage::{RaftLogReader, RaftLogStorage};

    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/v1")
            .join(name)
    }

    fn read(name: &str) -> Vec<u8> {
        std::fs::read(fixture(name)).unwrap()
    }

    /// The values the format 1 release wrote still decode, and convert to what they meant.
    #[test]
    fn format_1_values_convert() {
        let normal: Entry<v1::V1> = decode_version(1, &read("entry_normal.bin")).unwrap();
        let normal = entry_from_v1(normal);
        assert_eq!(normal.log_id.index, 41);
        let EntryPayload::Normal(p) = &normal.payload else {
            panic!("normal entry expected")
        };
        assert_eq!(p.commands.len(), 13, "every command of the fixture");
        assert!(
            matches!(&p.commands[0], Command::Submit { tasks, .. } if tasks.len() == 2
            && tasks[0].idempotency_key.as_deref() == Some("key-1")
            && tasks[0].labels.get("gpu").map(String::as_str) == Some("yes"))
        );
        assert!(
            matches!(&p.commands[12], Command::ExpireWorker { worker_id, .. } if worker_id == "w1")
        );

        let m: Entry<v1::V1> = decode_version(1, &read("entry_membership.bin")).unwrap();
        let EntryPayload::Membership(m) = entry_from_v1(m).payload else {
            panic!("membership entry expected")
        };
        let nodes: Vec<(u64, Node)> = m.nodes().map(|(i, n)| (*i, n.clone())).collect();
        assert_eq!(
            nodes,
            (1..=3)
                .map(|i| (i, Node::new(format!("10.0.0.{i}:7400"))))
                .collect::<Vec<_>>()
        );
        let blank: Entry<v1::V1> = decode_version(1, &read("entry_blank.bin")).unwrap();
        assert!(matches!(entry_from_v1(blank).payload, EntryPayload::Blank));

        let vote: Vote<u64> = decode_version(1, &read("vote.bin")).unwrap();
        assert_eq!(vote, Vote::new_committed(3, 2));
        let id: v1::Identity = decode_version(1, &read("identity.bin")).unwrap();
        assert_eq!((id.cluster_name.as_str(), id.node_id), ("prod", 2));
        let snap: v1::StoredSnapshot = decode_version(1, &read("stored_snapshot.bin")).unwrap();
        let image: flotilla_core::compat::v1::StateImage = decode_version(1, &snap.data).unwrap();
        assert_eq!(image.next_task_id, 4);
        let state = flotilla_core::State::from_records(image.into_records().unwrap()).unwrap();
        let states: Vec<TaskState> = state
            .list(None, None, None, 10)
            .iter()
            .map(|t| t.state)
            .collect();
        assert_eq!(
            states,
            [
                TaskState::Succeeded,
                TaskState::Cancelled,
                TaskState::Waiting
            ]
        );
        let t1 = state.get(flotilla_core::TaskId(1)).unwrap();
        assert_eq!(t1.result.as_deref(), Some(b"done".as_slice()));
        assert_eq!(t1.checkpoint.unwrap().data, b"half");
        assert_eq!(
            state.queue_policy("builds"),
            flotilla_core::QueuePolicy::Priority { aging_ms: 60_000 }
        );
        // Replaying the same commands on this release reaches the same state.
        let mut replayed = flotilla_core::State::new();
        replayed.apply_proposal(p);
        assert_eq!(
            replayed.list(None, None, None, 10),
            state.list(None, None, None, 10)
        );
    }

    /// A whole data dir of the format 1 release opens: it is converted once, and every
    /// acknowledged task of it is there.
    #[tokio::test(flavor = "multi_thread")]
    async fn format_1_data_dir_is_converted_in_place() {
        let tmp = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("tar")
            .arg("xzf")
            .arg(fixture("datadir.tar.gz"))
            .arg("-C")
            .arg(tmp.path())
            .status()
            .unwrap();
        assert!(status.success());
        let dir = tmp.path().join("node-1");

        let err = crate::open(&dir, "v1fixture", 2).err().unwrap().to_string();
        assert!(err.contains("belongs to node 1"), "{err}");

        let mut opened = crate::open(&dir, "v1fixture", 1).unwrap();
        assert!(opened.migrated_entries >= 16, "log entries converted");
        assert!(!opened.incarnation.is_empty());
        let incarnation = opened.incarnation.clone();
        let state = opened.state_machine.shared();
        assert_eq!(state.read().last_applied.map(|l| l.index), Some(19));
        assert!(
            state.read().state.task_count() > 0,
            "the snapshot's tasks are loaded"
        );
        let log = opened.log_store.get_log_state().await.unwrap();
        assert_eq!(log.last_log_id.map(|l| l.index), Some(35));
        let entries = opened.log_store.try_get_log_entries(20..=35).await.unwrap();
        assert_eq!(entries.len(), 16);
        drop(opened);

        // Converted once: the second open finds the current format and keeps the incarnation.
        let again = crate::open(&dir, "v1fixture", 1).unwrap();
        assert_eq!(again.migrated_entries, 0);
        assert_eq!(again.incarnation, incarnation);
    }

    /// Pinned bytes of what format 2 writes to the log (a normal and a membership entry) and
    /// for the identity: a change of shape must bump `codec::FORMAT_VERSION` and add a
    /// conversion here, as for format 1.
    #[test]
    fn format_2_encodings_are_pinned() {
        let leader = openraft::CommittedLeaderId::new(3, 2);
        let normal: Entry<TypeConfig> = Entry {
            log_id: LogId::new(leader, 41),
            payload: EntryPayload::Normal(flotilla_core::Proposal {
                commands: vec![flotilla_core::Command::Tick { now_ms: 5 }],
            }),
        };
        let nodes: BTreeMap<u64, Node> = [
            (1, Node::pinned("10.0.0.1:7400", "i1")),
            (2, Node::new("10.0.0.2:7400")),
        ]
        .into();
        let membership: Entry<TypeConfig> = Entry {
            log_id: LogId::new(leader, 40),
            payload: EntryPayload::Membership(Membership::new(vec![[1, 2].into()], nodes)),
        };
        let identity = Identity {
            cluster_name: "c".into(),
            node_id: 1,
            incarnation: "i1".into(),
        };
        let hex = |b: Vec<u8>| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let got = [
            hex(encode(&normal)),
            hex(encode(&membership)),
            hex(encode(&identity)),
        ];
        // What format 7 writes for values without a task spec: format 2's bytes with the new
        // version (3 to 6 only appended variants; 7 changed the spec), a flow-limit command
        // (format 3), a workflow command (format 4) and a schedule command (format 5) pinned.
        let want: Vec<String> = PINNED_V2.iter().map(|h| format!("07{}", &h[2..])).collect();
        assert_eq!(got.to_vec(), want, "\n{got:#?}");
        let flow: Entry<TypeConfig> = Entry {
            log_id: LogId::new(leader, 42),
            payload: EntryPayload::Normal(flotilla_core::Proposal {
                commands: vec![flotilla_core::Command::SetQueue {
                    now_ms: 5,
                    queue: "q".into(),
                    setting: flotilla_core::QueueSetting::Rate(Some(flotilla_core::RateLimit {
                        per_sec: 5,
                        burst: 10,
                    })),
                    create: true,
                }],
            }),
        };
        assert_eq!(hex(encode(&flow)), format!("07{}", &PINNED_V3_FLOW[2..]));
        let workflow: Entry<TypeConfig> = Entry {
            log_id: LogId::new(leader, 43),
            payload: EntryPayload::Normal(flotilla_core::Proposal {
                commands: vec![Command::CancelWorkflow {
                    now_ms: 6,
                    workflow: flotilla_core::TaskId(7),
                }],
            }),
        };
        assert_eq!(
            hex(encode(&workflow)),
            format!("07{}", &PINNED_V4_WORKFLOW[2..])
        );
        let schedule: Entry<TypeConfig> = Entry {
            log_id: LogId::new(leader, 44),
            payload: EntryPayload::Normal(flotilla_core::Proposal {
                commands: vec![Command::DeleteSchedule {
                    now_ms: 8,
                    name: "n".into(),
                }],
            }),
        };
        assert_eq!(
            hex(encode(&schedule)),
            format!("07{}", &PINNED_V5_SCHEDULE[2..])
        );
        // The previous releases' bytes decode as this release's types, unchanged.
        let unhex = |h: &str| -> Vec<u8> {
            (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                .collect()
        };
        let old: Entry<TypeConfig> = decode_version(3, &unhex(PINNED_V3_FLOW)).unwrap();
        assert_eq!(old, flow);
        let old: Entry<TypeConfig> = decode_version(4, &unhex(PINNED_V4_WORKFLOW)).unwrap();
        assert_eq!(old, workflow);
        let old: Entry<TypeConfig> = decode_version(5, &unhex(PINNED_V5_SCHEDULE)).unwrap();
        assert_eq!(old, schedule);
        let old: Entry<TypeConfig> = decode_version(2, &unhex(PINNED_V2[0])).unwrap();
        assert_eq!(old, normal);
        let old: Entry<TypeConfig> = decode_version(2, &unhex(PINNED_V2[1])).unwrap();
        assert_eq!(old, membership);
        let old: Identity = decode_version(2, &unhex(PINNED_V2[2])).unwrap();
        assert_eq!(old, identity);
    }

    const PINNED_V5_SCHEDULE: &str = "05030000000000000002000000000000002c000000000000000100000001000000000000000f000000080000000000000001000000000000006e";

    const PINNED_V4_WORKFLOW: &str = "04030000000000000002000000000000002b000000000000000100000001000000000000000c00000006000000000000000700000000000000";

    const PINNED_V3_FLOW: &str = "03030000000000000002000000000000002a000000000000000100000001000000000000000900000005000000000000000100000000000000710400000001050000000a00000001";

    /// A data dir of the format 2 release (its log entries and identity in the bytes that
    /// release wrote) opens: converted once, in place, every entry readable.
    #[tokio::test(flavor = "multi_thread")]
    async fn format_2_data_dir_is_converted_in_place() {
        converted_in_place(2, PINNED_V2[2]).await;
    }

    /// The same for the format 3 release: its identity has format 2's shape; its log also holds
    /// a flow-limit entry.
    #[tokio::test(flavor = "multi_thread")]
    async fn format_3_data_dir_is_converted_in_place() {
        let identity = format!("03{}", &PINNED_V2[2][2..]);
        converted_in_place(3, &identity).await;
    }

    /// The same for the format 4 release: its log also holds a flow-limit and a workflow entry.
    #[tokio::test(flavor = "multi_thread")]
    async fn format_4_data_dir_is_converted_in_place() {
        let identity = format!("04{}", &PINNED_V2[2][2..]);
        converted_in_place(4, &identity).await;
    }

    /// The same for the format 5 release: its log also holds a schedule entry.
    #[tokio::test(flavor = "multi_thread")]
    async fn format_5_data_dir_is_converted_in_place() {
        let identity = format!("05{}", &PINNED_V2[2][2..]);
        converted_in_place(5, &identity).await;
    }

    /// The same for the format 6 release: its log also holds a submit, whose task spec has
    /// format 6's shape (no concurrency key); it reads back as today's submit.
    #[tokio::test(flavor = "multi_thread")]
    async fn format_6_data_dir_is_converted_in_place() {
        let identity = format!("06{}", &PINNED_V2[2][2..]);
        converted_in_place(6, &identity).await;
    }

    /// A format 6 submit entry (index 45), encoded in format 6's frozen shapes.
    fn v6_submit() -> Vec<u8> {
        use flotilla_core::compat::v6;
        let entry: Entry<crate::format6::V6> = Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(3, 2), 45),
            payload: EntryPayload::Normal(v6::Proposal {
                commands: vec![v6::Command::Submit {
                    now_ms: 9,
                    tasks: vec![v6::TaskSpec {
                        queue: "q".into(),
                        payload: b"p".to_vec(),
                        priority: 2,
                        idempotency_key: Some("k".into()),
                        estimate_ms: None,
                        resources: v6::Resources::default(),
                        labels: BTreeMap::new(),
                        depends_on: vec![],
                        max_attempts: 3,
                        not_before_ms: None,
                        timeout_ms: Some(5),
                    }],
                    limits: v6::AdmissionLimits {
                        max_pending: None,
                        max_pending_per_queue: None,
                    },
                }],
            }),
        };
        let mut out = vec![6];
        out.extend(bincode::serialize(&entry).unwrap());
        out
    }

    async fn converted_in_place(version: u8, identity: &str) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("node-1");
        drop(crate::open(&dir, "c", 1).unwrap());
        let unhex = |h: &str| -> Vec<u8> {
            (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                .collect()
        };
        {
            // Make it a format `version` dir: its identity, format record and entries (a format 2
            // entry's bytes are those of format 3 but for the version byte).
            let db = DB::open_cf(
                &rocksdb::Options::default(),
                &dir,
                [CF_META, CF_LOG, crate::db::CF_SM],
            )
            .unwrap();
            let meta = db.cf_handle(CF_META).unwrap();
            let log = db.cf_handle(CF_LOG).unwrap();
            let at = |h: &str| unhex(&format!("{version:02x}{}", &h[2..]));
            db.put_cf(meta, IDENTITY_KEY, unhex(identity)).unwrap();
            db.put_cf(meta, FORMAT_KEY, [version, version]).unwrap();
            db.put_cf(log, crate::codec::index_key(40), at(PINNED_V2[1]))
                .unwrap();
            db.put_cf(log, crate::codec::index_key(41), at(PINNED_V2[0]))
                .unwrap();
            if version >= 3 {
                db.put_cf(log, crate::codec::index_key(42), at(PINNED_V3_FLOW))
                    .unwrap();
            }
            if version >= 4 {
                db.put_cf(log, crate::codec::index_key(43), at(PINNED_V4_WORKFLOW))
                    .unwrap();
            }
            if version >= 5 {
                db.put_cf(log, crate::codec::index_key(44), at(PINNED_V5_SCHEDULE))
                    .unwrap();
            }
            if version >= 6 {
                db.put_cf(log, crate::codec::index_key(45), v6_submit())
                    .unwrap();
            }
            db.flush_cf(meta).unwrap();
            db.flush_cf(log).unwrap();
        }
        let mut opened = crate::open(&dir, "c", 1).unwrap();
        let n = version as usize; // 2 entries in format 2, one more per format since
        assert_eq!(opened.migrated_entries, n);
        assert_eq!(opened.incarnation, "i1", "the old identity, kept");
        let entries = opened
            .log_store
            .try_get_log_entries(40..40 + n as u64)
            .await
            .unwrap();
        assert_eq!(entries.len(), n);
        assert!(matches!(
            &entries[1].payload,
            EntryPayload::Normal(p) if p.commands == vec![Command::Tick { now_ms: 5 }]
        ));
        if version >= 6 {
            let EntryPayload::Normal(p) = &entries[5].payload else {
                panic!("{:?}", entries[5])
            };
            let Command::Submit { tasks, .. } = &p.commands[0] else {
                panic!("{p:?}")
            };
            let mut want = flotilla_core::TaskSpec::new("q", b"p".to_vec());
            want.priority = 2;
            want.idempotency_key = Some("k".into());
            want.timeout_ms = Some(5);
            assert_eq!(tasks, &vec![want]);
        }
        drop(opened);
        let again = crate::open(&dir, "c", 1).unwrap();
        assert_eq!(again.migrated_entries, 0, "converted once");
        drop(again);
        let db = DB::open_cf(
            &rocksdb::Options::default(),
            &dir,
            [CF_META, CF_LOG, crate::db::CF_SM],
        )
        .unwrap();
        let log = db.cf_handle(CF_LOG).unwrap();
        for item in db.iterator_cf(log, IteratorMode::Start) {
            assert_eq!(item.unwrap().1[0], FORMAT_VERSION, "every entry rewritten");
        }
    }

    const PINNED_V2: [&str; 3] = [
        "02030000000000000002000000000000002900000000000000010000000100000000000000020000000500000000000000",
        "02030000000000000002000000000000002800000000000000020000000100000000000000020000000000000001000000000000000200000000000000020000000000000001000000000000000d0000000000000031302e302e302e313a373430300200000000000000693102000000000000000d0000000000000031302e302e302e323a373430300000000000000000",
        "02010000000000000063010000000000000002000000000000006931",
    ];
}
