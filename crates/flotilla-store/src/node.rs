//! A member of the replica set as Raft's membership records it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A replica in the membership: where it is reached, and which incarnation of its data dir was
/// made a member.
///
/// The incarnation is a random id a data dir gets when it is created. A replica whose data dir
/// was wiped comes back with a new one, so the others can tell it from the member that
/// acknowledged entries and votes it no longer has, and refuse it until an operator removes the
/// old member and adds the new one. Empty means "not pinned yet": the initial members are listed
/// by address only, and the first leader records their incarnations.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Node {
    /// HOST:PORT that peers and clients reach the replica at.
    pub addr: String,
    /// The member's data dir incarnation; empty until pinned.
    pub incarnation: String,
}

impl Node {
    /// A member known by address only (its incarnation not pinned yet).
    pub fn new(addr: impl Into<String>) -> Node {
        Node {
            addr: addr.into(),
            incarnation: String::new(),
        }
    }

    /// A member pinned to one incarnation of its data dir.
    pub fn pinned(addr: impl Into<String>, incarnation: impl Into<String>) -> Node {
        Node {
            addr: addr.into(),
            incarnation: incarnation.into(),
        }
    }

    pub fn is_pinned(&self) -> bool {
        !self.incarnation.is_empty()
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.incarnation.is_empty() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{} ({})", self.addr, self.incarnation)
        }
    }
}
