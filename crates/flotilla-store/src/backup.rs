//! Backups of the replicated state, and restoring one as the start of a new cluster.
//!
//! A backup is exactly a snapshot file (see `snapshot`), built by the leader and streamed to
//! the operator: its magic, format version, crc32 per frame and end frame (the record count)
//! make it self-checking. [`read_backup`] reads one whole and checks it, writing nothing.
//!
//! [`restore`] turns a backup into the data dir of one replica of a NEW cluster; run with the
//! same backup and members for every replica, it gives them all the same starting point:
//!
//! ```text
//!  backup ─ read whole: magic, version, every crc, the end frame's count, the state's
//!  │        invariants (a bad file is refused here; nothing written yet)
//!  ▼
//!  open the (empty) data dir: a new identity and incarnation
//!  snapshot  the backup's state, meta = { last_log_id (T, I) as in the backup,
//!            membership: the new members, all voters, by address only, at (T, I),
//!            a new snapshot id }  ─▶ the current snapshot and the applied state
//!  log       purged up to (T, I), committed (T, I): empty, yet ending at I
//!  vote      term T, for itself, not committed
//! ```
//!
//! Why this fits openraft 0.9's storage contract:
//! - the log is not pristine (it ends at I), so the replica is never `initialize`d (see the
//!   server's `node.rs`) and its peers see it as initialized; the restored replicas elect a
//!   leader among themselves;
//! - an election runs at the vote's term + 1 = T + 1, so the first leader's entries get log
//!   ids (T + 1, leader, I + 1, ...), above (T, I): log ids keep increasing, as log matching
//!   needs. A vote of term 0 would make them (1, _, I + 1) and order them below the backup's;
//! - every restored replica has the same last log id, so any of them may win;
//! - openraft starts with state machine = snapshot = committed = purged = last log id =
//!   (T, I): nothing to re-apply or purge, and a snapshot to send a peer that lags;
//! - the members are not pinned to incarnations: the first leader pins each to its data
//!   dir's, as after a bootstrap (see the server's `membership.rs`).
//!
//! Refused before anything is written: a bad backup, members that do not name this replica,
//! a data dir that is not empty. A failure after the data dir was made removes what the
//! restore wrote, leaving the dir as it found it (missing or empty).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::Path;

use flotilla_core::State;
use openraft::{LogId, Membership, SnapshotMeta, StoredMembership, Vote};

use crate::snapshot;
use crate::{Node, NodeId, StoreError};

/// What a backup holds, as read and checked by [`read_backup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupInfo {
    /// The last log entry the backup's state includes.
    pub last_log_id: LogId<NodeId>,
    pub snapshot_id: String,
    /// The members of the cluster it was taken from (id → address).
    pub members: BTreeMap<NodeId, String>,
    /// State image records in the file.
    pub records: u64,
    /// Tasks in the state (tombstones of removed ones not counted).
    pub tasks: u64,
    /// Size of the file.
    pub bytes: u64,
}

/// What [`restore`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreSummary {
    /// The backup as read.
    pub backup: BackupInfo,
    /// The new data dir's incarnation.
    pub incarnation: String,
    /// The id of the snapshot the data dir now starts from.
    pub snapshot_id: String,
}

/// Reads the backup at `path` whole and checks it: magic, format version, every frame's
/// checksum, the end frame's record count, no bytes after it, and the invariants of the
/// state it holds. Blocking.
pub fn read_backup(path: &Path) -> Result<BackupInfo, StoreError> {
    read_checked(path).map(|(info, _)| info)
}

fn read_checked(path: &Path) -> Result<(BackupInfo, State), StoreError> {
    let bad = |message: String| StoreError::BadBackup {
        path: path.to_path_buf(),
        message,
    };
    let file = File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
    let bytes = file
        .metadata()
        .map_err(|e| bad(format!("cannot read: {e}")))?
        .len();
    let read = snapshot::read_counted(file, None::<File>).map_err(|e| bad(e.to_string()))?;
    if read.trailing {
        return Err(bad(
            "bytes after the end frame (not a whole snapshot file)".into()
        ));
    }
    let last_log_id = read
        .meta
        .last_log_id
        .ok_or_else(|| bad("covers no log entry (a snapshot of an empty cluster)".into()))?;
    read.state
        .check_invariants()
        .map_err(|e| bad(format!("the state breaks an invariant: {e}")))?;
    let members = read
        .meta
        .last_membership
        .membership()
        .nodes()
        .map(|(id, n)| (*id, n.addr.clone()))
        .collect();
    let info = BackupInfo {
        last_log_id,
        snapshot_id: read.meta.snapshot_id,
        members,
        records: read.records,
        tasks: read.state.task_count() as u64,
        bytes,
    };
    Ok((info, read.state))
}

/// Prepares the empty (or missing) data dir `dir` of replica `node_id` of the new cluster
/// `cluster_name`, whose replicas are `members` (id → HOST:PORT), to start from the backup at
/// `backup` (see the module docs). Blocking.
pub fn restore(
    dir: &Path,
    cluster_name: &str,
    node_id: NodeId,
    backup: &Path,
    members: BTreeMap<NodeId, String>,
) -> Result<RestoreSummary, StoreError> {
    check_members(node_id, &members).map_err(StoreError::Restore)?;
    let existed = match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if let Some(entry) = entries.next() {
                let name = entry
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .unwrap_or_else(|e| format!("unreadable: {e}"));
                return Err(StoreError::Refused {
                    path: dir.to_path_buf(),
                    message: format!(
                        "not empty (holds {name}); a restore needs an empty or missing data dir"
                    ),
                });
            }
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            return Err(StoreError::Io {
                path: dir.to_path_buf(),
                source: e,
            })
        }
    };
    let (info, state) = read_checked(backup)?;
    let written = write_restored(dir, cluster_name, node_id, info, state, &members);
    if written.is_err() {
        remove_written(dir, existed);
    }
    written
}

fn check_members(node_id: NodeId, members: &BTreeMap<NodeId, String>) -> Result<(), String> {
    if !members.contains_key(&node_id) {
        return Err(format!(
            "the members ({}) do not include this replica's id {node_id}",
            members
                .keys()
                .map(|k| k.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    if let Some((id, _)) = members.iter().find(|(_, addr)| addr.trim().is_empty()) {
        return Err(format!("member {id} has an empty address"));
    }
    Ok(())
}

fn write_restored(
    dir: &Path,
    cluster_name: &str,
    node_id: NodeId,
    info: BackupInfo,
    state: State,
    members: &BTreeMap<NodeId, String>,
) -> Result<RestoreSummary, StoreError> {
    let corrupt = |message: String| StoreError::Corrupt {
        path: dir.to_path_buf(),
        message,
    };
    let opened = crate::open(dir, cluster_name, node_id)?;
    if !opened.created {
        // Checked empty above; another process got there in between.
        return Err(StoreError::Refused {
            path: dir.to_path_buf(),
            message: "was made by another process during the restore".into(),
        });
    }
    let last = info.last_log_id;
    let voters: BTreeSet<NodeId> = members.keys().copied().collect();
    let nodes: BTreeMap<NodeId, Node> = members
        .iter()
        .map(|(id, addr)| (*id, Node::new(addr.clone())))
        .collect();
    let meta = SnapshotMeta {
        last_log_id: Some(last),
        last_membership: StoredMembership::new(Some(last), Membership::new(vec![voters], nodes)),
        snapshot_id: format!(
            "restored-{}-{}-{}-{}",
            last.leader_id.term,
            last.leader_id.node_id,
            last.index,
            uuid::Uuid::new_v4().simple()
        ),
    };
    let (file, bytes) = snapshot::write(dir, &meta, &state.view())
        .map_err(|e| corrupt(format!("writing the snapshot: {e}")))?;
    let snapshot_id = meta.snapshot_id.clone();
    opened
        .state_machine
        .install_restored(file, bytes, meta, state)
        .map_err(|e| corrupt(format!("installing the snapshot: {e}")))?;
    opened
        .log_store
        .restore_point(last, Vote::new(last.leader_id.term, node_id))
        .map_err(|e| corrupt(format!("writing the log's start: {e}")))?;
    tracing::info!(
        node_id,
        index = last.index,
        term = last.leader_id.term,
        records = info.records,
        "data dir restored from a backup"
    );
    Ok(RestoreSummary {
        backup: info,
        incarnation: opened.incarnation.clone(),
        snapshot_id,
    })
}

/// Removes what a failed restore wrote into `dir` (which was missing, or empty).
fn remove_written(dir: &Path, existed: bool) {
    let removed = if existed {
        std::fs::read_dir(dir).and_then(|entries| {
            for e in entries {
                let path = e?.path();
                if path.is_dir() {
                    std::fs::remove_dir_all(&path)?;
                } else {
                    std::fs::remove_file(&path)?;
                }
            }
            Ok(())
        })
    } else {
        std::fs::remove_dir_all(dir)
    };
    if let Err(e) = removed {
        tracing::warn!(dir = %dir.display(), error = %e, "could not remove what the failed restore wrote");
    }
}

#[cfg(test)]
mod tests {
    use flotilla_core::{Command, Proposal, QueuePolicy, QueueSetting, TaskId, TaskSpec};
    use openraft::storage::{RaftLogReader, RaftLogStorage, RaftStateMachine};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, RaftSnapshotBuilder};

    use super::*;

    const TERM: u64 = 4;
    const LEADER: u64 = 2;

    fn entry(index: u64, commands: Vec<Command>) -> Entry<crate::TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(TERM, LEADER), index),
            payload: EntryPayload::Normal(Proposal { commands }),
        }
    }

    fn image(s: &State) -> Vec<u8> {
        let mut out = Vec::new();
        for r in s.view().records() {
            bincode::serialize_into(&mut out, &r).unwrap();
        }
        out
    }

    fn members() -> BTreeMap<NodeId, String> {
        (1..=3)
            .map(|i| (i, format!("127.0.0.1:{}", 7500 + i)))
            .collect()
    }

    /// A source data dir with tasks in several states, a queue setting and keys, snapshotted
    /// by the store itself; returns the snapshot file (a backup) and the state it holds.
    async fn source(base: &Path) -> (std::path::PathBuf, State) {
        let dir = base.join("source");
        let mut opened = crate::open(&dir, "old", LEADER).unwrap();
        let sm = &mut opened.state_machine;
        let mut keyed = TaskSpec::new("q", b"keyed".to_vec());
        keyed.idempotency_key = Some("the-key".into());
        sm.apply([
            entry(
                1,
                vec![Command::submit(
                    100,
                    vec![
                        keyed,
                        TaskSpec::new("q", b"b".to_vec()),
                        TaskSpec::new("q", b"c".to_vec()),
                    ],
                )],
            ),
            entry(
                2,
                vec![
                    Command::SetQueue {
                        now_ms: 200,
                        queue: "q".into(),
                        setting: QueueSetting::Policy(QueuePolicy::Priority { aging_ms: 500 }),
                        create: false,
                    },
                    Command::Cancel {
                        now_ms: 300,
                        task_id: TaskId(2),
                    },
                ],
            ),
        ])
        .await
        .unwrap();
        let built = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(built.meta.last_log_id.map(|l| l.index), Some(2));
        let state = image_state(&opened.state_machine);
        let pointer = crate::state_machine::read_pointer(&opened.log_store.db)
            .unwrap()
            .unwrap();
        let file = crate::snapshot::dir_of(&dir).join(pointer.file);
        let backup = base.join("backup.snap");
        std::fs::copy(file, &backup).unwrap();
        (backup, state)
    }

    fn image_state(sm: &crate::StateMachine) -> State {
        sm.shared().read().state.clone()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_restored_data_dir_continues_the_backup() {
        let tmp = tempfile::tempdir().unwrap();
        let (backup, state) = source(tmp.path()).await;
        let last = LogId::new(CommittedLeaderId::new(TERM, LEADER), 2);

        let info = read_backup(&backup).unwrap();
        assert_eq!(info.last_log_id, last);
        assert_eq!(info.tasks, 3);
        assert_eq!(info.bytes, std::fs::metadata(&backup).unwrap().len());
        assert!(info.records > 0);

        let dir = tmp.path().join("new-2");
        let summary = restore(&dir, "new", 2, &backup, members()).unwrap();
        assert_eq!(summary.backup, info);
        assert!(summary.snapshot_id.starts_with("restored-4-2-2-"));

        // Reopened as the server would open it.
        let mut opened = crate::open(&dir, "new", 2).unwrap();
        assert!(!opened.created);
        assert_eq!(opened.damaged, None);
        assert_eq!(opened.incarnation, summary.incarnation);
        assert_eq!(image(&image_state(&opened.state_machine)), image(&state));
        let (applied, membership) = opened.state_machine.applied_state().await.unwrap();
        assert_eq!(applied, Some(last));
        assert_eq!(membership.log_id(), &Some(last));
        let m = membership.membership();
        assert_eq!(
            m.voter_ids().collect::<Vec<_>>(),
            vec![1, 2, 3],
            "every member votes"
        );
        for (id, node) in m.nodes() {
            assert_eq!(node, &Node::new(members()[id].clone()), "unpinned");
        }
        let snap = opened
            .state_machine
            .get_current_snapshot()
            .await
            .unwrap()
            .unwrap();
        assert_eq!(snap.meta.last_log_id, Some(last));
        assert_eq!(snap.meta.snapshot_id, summary.snapshot_id);

        let log = &mut opened.log_store;
        assert!(!log.is_pristine().unwrap(), "never initialized again");
        let st = log.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(last));
        assert_eq!(st.last_log_id, Some(last));
        assert!(log.try_get_log_entries(0..10).await.unwrap().is_empty());
        assert_eq!(log.read_committed().await.unwrap(), Some(last));
        let vote = log.read_vote().await.unwrap().unwrap();
        assert_eq!(vote, Vote::new(TERM, 2));
        assert!(!vote.is_committed());

        // The next entries (a new leader's, at term T + 1) follow on and survive a reopen.
        let next = Entry::<crate::TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(TERM + 1, 3), 3),
            payload: EntryPayload::Blank,
        };
        assert!(next.log_id > last, "log ids keep increasing");
        use openraft::storage::RaftLogStorageExt;
        log.blocking_append([next.clone()]).await.unwrap();
        drop(opened);
        let mut opened = crate::open(&dir, "new", 2).unwrap();
        let st = opened.log_store.get_log_state().await.unwrap();
        assert_eq!(st.last_log_id, Some(next.log_id));
        assert_eq!(opened.damaged, None);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn bad_backups_are_refused_naming_the_damage_and_nothing_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let (backup, _) = source(tmp.path()).await;
        let good = std::fs::read(&backup).unwrap();
        let dir = tmp.path().join("new-1");
        let bad = tmp.path().join("bad.snap");
        let refuse = |bytes: &[u8]| {
            std::fs::write(&bad, bytes).unwrap();
            let e = restore(&dir, "new", 1, &bad, members())
                .unwrap_err()
                .to_string();
            assert!(!dir.exists(), "nothing written for {e}");
            assert!(e.starts_with(&format!("backup {}: ", bad.display())), "{e}");
            e
        };
        let mut flipped = good.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x01;
        assert!(refuse(&flipped).contains("checksum mismatch"));
        assert!(refuse(&good[..good.len() - 5]).contains("truncated"));
        assert!(refuse(&[good.as_slice(), b"x"].concat()).contains("bytes after the end frame"));
        assert!(refuse(b"hello").contains("shorter than its header"));
        assert!(refuse(&[b"NOTASNAP", &good[8..]].concat()).contains("bad magic"));
        let mut version = good.clone();
        version[8] = 9;
        assert!(refuse(&version).contains("format version 9"));

        let e = restore(&dir, "new", 1, &tmp.path().join("missing.snap"), members())
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.snap: cannot open"), "{e}");
        assert!(!dir.exists());

        // An empty dir that exists is fine to restore into, and stays empty on a refusal.
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&bad, &flipped).unwrap();
        let e = restore(&dir, "new", 1, &bad, members())
            .unwrap_err()
            .to_string();
        assert!(e.contains("checksum mismatch"), "{e}");
        assert!(dir.exists() && std::fs::read_dir(&dir).unwrap().next().is_none());
        restore(&dir, "new", 1, &backup, members()).unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_non_empty_dir_or_members_without_this_replica_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (backup, _) = source(tmp.path()).await;

        let dir = tmp.path().join("used");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("notes.txt"), "keep me").unwrap();
        let e = restore(&dir, "new", 1, &backup, members())
            .unwrap_err()
            .to_string();
        assert!(e.contains(&dir.display().to_string()), "{e}");
        assert!(e.contains("not empty (holds notes.txt)"), "{e}");
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec!["notes.txt"], "untouched");

        // A data dir already restored (or in use) is not empty either.
        let restored = tmp.path().join("restored");
        restore(&restored, "new", 1, &backup, members()).unwrap();
        let e = restore(&restored, "new", 1, &backup, members())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not empty"), "{e}");

        let fresh = tmp.path().join("fresh");
        let e = restore(&fresh, "new", 4, &backup, members())
            .unwrap_err()
            .to_string();
        assert!(e.contains("do not include this replica's id 4"), "{e}");
        assert!(!fresh.exists());
    }
}
