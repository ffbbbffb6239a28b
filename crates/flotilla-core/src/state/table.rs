//! The task table: every task (and tombstone) by id, copy-on-write.
//!
//! Ids are dense and increasing, so slots live in fixed-size chunks indexed by `id / CHUNK`,
//! with chunks before the oldest live id dropped. Each chunk and each entry sits behind an
//! `Arc`: cloning the table (what a snapshot does under the state lock) copies one pointer
//! per chunk — a few thousand for a million tasks — and the first later write to a shared
//! chunk or entry copies just that one (`Arc::make_mut`). The snapshot then encodes its own
//! frozen copy while `apply` goes on.
//!
//! ```text
//!  chunks: [None][Arc<Chunk>][Arc<Chunk>]...      chunk: [Option<Arc<Entry>>; CHUNK]
//!           ^ first_chunk (ids below: removed)
//! ```

use std::collections::VecDeque;
use std::sync::Arc;

use super::record::Entry;
use crate::TaskId;

/// Slots per chunk.
const CHUNK: u64 = 256;

#[derive(Debug, Clone)]
struct Chunk {
    slots: Box<[Option<Arc<Entry>>]>,
    live: u32,
}

impl Chunk {
    fn new() -> Chunk {
        Chunk {
            slots: (0..CHUNK).map(|_| None).collect(),
            live: 0,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct TaskTable {
    /// Chunk number of `chunks[0]`.
    first_chunk: u64,
    chunks: VecDeque<Option<Arc<Chunk>>>,
    /// Live entries (tasks and tombstones).
    len: usize,
}

impl TaskTable {
    fn locate(&self, id: TaskId) -> Option<(usize, usize)> {
        let c = id.0 / CHUNK;
        let i = c.checked_sub(self.first_chunk)?;
        (i < self.chunks.len() as u64).then_some((i as usize, (id.0 % CHUNK) as usize))
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn get(&self, id: TaskId) -> Option<&Entry> {
        let (c, s) = self.locate(id)?;
        self.chunks[c].as_ref()?.slots[s].as_deref()
    }

    /// The entry for writing; copies the chunk and the entry first if a snapshot shares them.
    pub(crate) fn get_mut(&mut self, id: TaskId) -> Option<&mut Entry> {
        let (c, s) = self.locate(id)?;
        let chunk = self.chunks[c].as_mut()?;
        let slot = Arc::make_mut(chunk).slots[s].as_mut()?;
        Some(Arc::make_mut(slot))
    }

    /// Puts `entry` at `id`; returns the entry it replaced.
    pub(crate) fn insert(&mut self, id: TaskId, entry: Entry) -> Option<Entry> {
        let c = id.0 / CHUNK;
        if self.chunks.is_empty() {
            self.first_chunk = c;
        }
        while c < self.first_chunk {
            self.chunks.push_front(None);
            self.first_chunk -= 1;
        }
        while c >= self.first_chunk + self.chunks.len() as u64 {
            self.chunks.push_back(None);
        }
        let ci = (c - self.first_chunk) as usize;
        let chunk = Arc::make_mut(self.chunks[ci].get_or_insert_with(|| Arc::new(Chunk::new())));
        let old = chunk.slots[(id.0 % CHUNK) as usize].replace(Arc::new(entry));
        if old.is_none() {
            chunk.live += 1;
            self.len += 1;
        }
        old.map(unwrap_or_clone)
    }

    /// Takes the entry at `id` out of the table.
    pub(crate) fn remove(&mut self, id: TaskId) -> Option<Entry> {
        let (ci, s) = self.locate(id)?;
        let chunk = Arc::make_mut(self.chunks[ci].as_mut()?);
        let old = chunk.slots[s].take()?;
        chunk.live -= 1;
        self.len -= 1;
        if chunk.live == 0 {
            self.chunks[ci] = None;
            while matches!(self.chunks.front(), Some(None)) {
                self.chunks.pop_front();
                self.first_chunk += 1;
            }
            while matches!(self.chunks.back(), Some(None)) {
                self.chunks.pop_back();
            }
        }
        Some(unwrap_or_clone(old))
    }

    /// Entries with id at least `from`, in id order.
    pub(crate) fn range_from(&self, from: TaskId) -> impl Iterator<Item = &Entry> + '_ {
        let start_chunk = (from.0 / CHUNK).max(self.first_chunk);
        let skip = (start_chunk - self.first_chunk) as usize;
        self.chunks
            .iter()
            .skip(skip)
            .filter_map(|c| c.as_deref())
            .flat_map(|c| c.slots.iter().filter_map(|s| s.as_deref()))
            .filter(move |e| entry_id(e) >= from)
    }

    /// Every entry, in id order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Entry> + '_ {
        self.range_from(TaskId(0))
    }
}

fn unwrap_or_clone(e: Arc<Entry>) -> Entry {
    Arc::try_unwrap(e).unwrap_or_else(|shared| (*shared).clone())
}

pub(crate) fn entry_id(e: &Entry) -> TaskId {
    match e {
        Entry::Task(t) => t.id,
        Entry::Tombstone(t) => t.id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::record::TaskRecord;
    use crate::TaskSpec;

    fn entry(id: u64) -> Entry {
        Entry::Task(TaskRecord::new(
            TaskId(id),
            &TaskSpec::new("q", vec![id as u8]),
            "q".into(),
            id,
        ))
    }

    fn ids(t: &TaskTable) -> Vec<u64> {
        t.iter().map(|e| entry_id(e).0).collect()
    }

    #[test]
    fn insert_get_remove_across_chunks() {
        let mut t = TaskTable::default();
        for id in [1, 2, 255, 256, 600, 1000] {
            assert!(t.insert(TaskId(id), entry(id)).is_none());
        }
        assert_eq!(t.len(), 6);
        assert_eq!(ids(&t), [1, 2, 255, 256, 600, 1000]);
        assert_eq!(
            t.range_from(TaskId(256))
                .map(|e| entry_id(e).0)
                .collect::<Vec<_>>(),
            [256, 600, 1000]
        );
        assert!(t.get(TaskId(3)).is_none() && t.get(TaskId(100_000)).is_none());
        assert_eq!(t.remove(TaskId(1)), Some(entry(1)));
        assert_eq!(t.remove(TaskId(1)), None);
        for id in [2, 255] {
            t.remove(TaskId(id)).unwrap();
        }
        // The first chunk emptied: it is gone, and ids below still read as absent.
        assert_eq!(t.first_chunk, 1);
        assert!(t.get(TaskId(2)).is_none());
        assert_eq!(ids(&t), [256, 600, 1000]);
        // An id below the first chunk can come back (a restore inserts in any order).
        t.insert(TaskId(5), entry(5));
        assert_eq!(ids(&t), [5, 256, 600, 1000]);
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn a_clone_is_a_frozen_copy() {
        let mut t = TaskTable::default();
        for id in 1..=600 {
            t.insert(TaskId(id), entry(id));
        }
        let frozen = t.clone();
        let Some(Entry::Task(r)) = t.get_mut(TaskId(300)) else {
            panic!()
        };
        r.attempts = 9;
        t.remove(TaskId(1));
        t.insert(TaskId(601), entry(601));
        let Some(Entry::Task(r)) = frozen.get(TaskId(300)) else {
            panic!()
        };
        assert_eq!(r.attempts, 0, "the copy does not see later writes");
        assert_eq!(frozen.len(), 600);
        assert!(frozen.get(TaskId(1)).is_some() && frozen.get(TaskId(601)).is_none());
        assert_eq!(t.len(), 600);
    }
}
