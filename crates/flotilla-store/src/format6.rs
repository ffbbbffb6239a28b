//! openraft's types in format 6's shapes, and their conversion to today's: what a replica of
//! the format 6 release (up to e894ec8) stored in its log and sent to its peers.
//!
//! Format 6 entries hold `flotilla_core::compat::v6`'s frozen `Proposal`. The membership and
//! node shapes are today's (unchanged since format 2). The peer wire reads unframed messages
//! and framed ones of format 6 through this (see `flotilla-server`'s `peer_wire`); `migrate`
//! converts the log entries of a version 2 to 6 data dir with it, and `snapshot` reads
//! snapshot files and backups of those versions through [`Frame`].

use std::io::Cursor;

use openraft::raft::AppendEntriesRequest;
use openraft::{Entry, EntryPayload};

use crate::{Node, TypeConfig};

openraft::declare_raft_types!(
    /// openraft's types as format 6 encoded them.
    pub V6:
        D = flotilla_core::compat::v6::Proposal,
        R = (),
        NodeId = u64,
        Node = Node,
        Entry = openraft::Entry<V6>,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A format 6 log entry as today's.
pub fn entry(e: Entry<V6>) -> Entry<TypeConfig> {
    Entry {
        log_id: e.log_id,
        payload: match e.payload {
            EntryPayload::Blank => EntryPayload::Blank,
            EntryPayload::Normal(p) => EntryPayload::Normal(p.into()),
            EntryPayload::Membership(m) => EntryPayload::Membership(m),
        },
    }
}

/// A frame of a snapshot file of version 2 to 6, as read: its image records are version 6's
/// (`flotilla_core::compat::v6_image`). The meta and end frames kept their shape.
#[derive(serde::Deserialize)]
pub(crate) enum Frame {
    Meta(openraft::SnapshotMeta<crate::NodeId, Node>),
    Record(flotilla_core::compat::v6_image::ImageRecordV6),
    End { records: u64 },
}

/// A format 6 AppendEntries request as today's.
pub fn append_entries(r: AppendEntriesRequest<V6>) -> AppendEntriesRequest<TypeConfig> {
    AppendEntriesRequest {
        vote: r.vote,
        prev_log_id: r.prev_log_id,
        entries: r.entries.into_iter().map(entry).collect(),
        leader_commit: r.leader_commit,
    }
}
