//! The idempotency-key index: key → the task (or tombstone) created with it.
//!
//! A million tasks with uuid keys would cost ~80 MB more if the index kept its own copy of
//! every key, so it keeps only a 64-bit hash of each key and the ids with that hash; a lookup
//! compares the key stored in the task table. The hash is SipHash-2-4 with fixed keys — the
//! same on every replica and every release — so the index is deterministic, and crafted
//! collisions only cost a longer candidate list, never a wrong answer. The index is never
//! iterated, so its order cannot reach an output.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::table::TaskTable;
use crate::TaskId;

/// Candidates for one hash.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot {
    One(TaskId),
    Many(Vec<TaskId>),
}

/// The map's own hasher: its keys are already SipHash outputs.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct KeyIndex {
    map: HashMap<u64, Slot, BuildHasherDefault<Prehashed>>,
    len: usize,
}

/// SipHash-2-4 of `key` with fixed keys.
fn hash(key: &str) -> u64 {
    #[allow(deprecated)] // SipHasher is SipHash-2-4 by definition; stable across releases
    let mut h = std::hash::SipHasher::new_with_keys(0x666c_6f74_696c_6c61, 0x6964_656d_706f_7421);
    h.write(key.as_bytes());
    h.finish()
}

impl KeyIndex {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The id created with `key`, looked up in `table`.
    pub(crate) fn find(&self, key: &str, table: &TaskTable) -> Option<TaskId> {
        let has = |id: &TaskId| table.get(*id).and_then(|e| e.key()) == Some(key);
        match self.map.get(&hash(key))? {
            Slot::One(id) => has(id).then_some(*id),
            Slot::Many(ids) => ids.iter().copied().find(has),
        }
    }

    pub(crate) fn insert(&mut self, key: &str, id: TaskId) {
        self.len += 1;
        let h = hash(key);
        match self.map.get_mut(&h) {
            None => {
                self.map.insert(h, Slot::One(id));
            }
            Some(slot) => match slot {
                Slot::One(other) => *slot = Slot::Many(vec![*other, id]),
                Slot::Many(ids) => ids.push(id),
            },
        }
    }

    pub(crate) fn remove(&mut self, key: &str, id: TaskId) {
        let h = hash(key);
        let Some(slot) = self.map.get_mut(&h) else {
            return;
        };
        match slot {
            Slot::One(other) if *other == id => {
                self.map.remove(&h);
                self.len -= 1;
            }
            Slot::One(_) => {}
            Slot::Many(ids) => {
                if let Some(pos) = ids.iter().position(|x| *x == id) {
                    ids.remove(pos);
                    self.len -= 1;
                }
                if ids.len() == 1 {
                    *slot = Slot::One(ids[0]);
                }
            }
        }
    }

    /// Whether `key` maps to exactly `id` (for the invariant checks).
    pub(crate) fn maps(&self, key: &str, id: TaskId) -> bool {
        match self.map.get(&hash(key)) {
            Some(Slot::One(x)) => *x == id,
            Some(Slot::Many(ids)) => ids.contains(&id),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED_BUILD_42: u64 = 0x16b9_0a22_89f9_2e38;

    /// The std hasher is SipHash-2-4: the reference test vector of the SipHash paper (key
    /// 00..0f, message 00..0e).
    #[test]
    fn siphasher_is_siphash_2_4() {
        #[allow(deprecated)]
        let mut h =
            std::hash::SipHasher::new_with_keys(0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908);
        h.write(&(0u8..15).collect::<Vec<_>>());
        assert_eq!(h.finish(), 0xa129_ca61_49be_45e5);
    }

    #[test]
    fn hash_is_fixed() {
        // Pinned: a change would make replicas of different releases disagree on nothing
        // visible, but this index must not depend on the toolchain either.
        assert_eq!(hash(""), hash(""));
        assert_ne!(hash("a"), hash("b"));
        assert_eq!(hash("build-42"), PINNED_BUILD_42, "{:#x}", hash("build-42"));
    }

    #[test]
    fn collisions_keep_every_candidate() {
        let mut idx = KeyIndex::default();
        // Force a shared slot by inserting two ids under the same key hash.
        idx.insert("k", TaskId(1));
        idx.insert("k", TaskId(2));
        assert!(idx.maps("k", TaskId(1)) && idx.maps("k", TaskId(2)));
        assert_eq!(idx.len(), 2);
        idx.remove("k", TaskId(1));
        assert!(!idx.maps("k", TaskId(1)) && idx.maps("k", TaskId(2)));
        idx.remove("k", TaskId(2));
        assert_eq!(idx.len(), 0);
        assert!(idx.map.is_empty());
    }
}
