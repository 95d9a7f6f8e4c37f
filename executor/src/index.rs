//! A table's primary-key index: key → where the row is and the hash of its contents, in shards
//! by key bucket.
//!
//! Every encoded key starts with its bucket (two big-endian bytes below [`KEY_BUCKETS`]), so
//! each shard holds a contiguous run of buckets, and the shards in order hold the keys in order.
//! A write's index updates are shared out over the executor's threads shard by shard; each
//! shard is a persistent B-tree, so cloning the index (a new version of the table) costs one
//! reference count per shard, and a version shares every node it did not change.
//!
//! The index also remembers which buckets changed since the table's digest last asked
//! ([`KeyIndex::take_stale`]), so a digest rehashes only those.

use chainql::Hash;

use crate::encode::{KEY_BUCKETS, Key, key_bucket};
use crate::parallel::Split;
use crate::table::RowLocation;

/// Shards of an index. A power of two dividing [`KEY_BUCKETS`]: enough for every core to take
/// a share of a write, few enough that an empty table stays small.
pub(crate) const INDEX_SHARDS: usize = 16;
/// Buckets in one shard.
const SHARD_BUCKETS: usize = KEY_BUCKETS as usize / INDEX_SHARDS;
/// Words of one shard's bitmap of changed buckets.
const SHARD_STALE_WORDS: usize = SHARD_BUCKETS / 64;

/// Where a row is, and the hash of its canonical encoding (key and values), computed once when
/// the row is written so the table's digest never re-reads rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub location: RowLocation,
    pub hash: Hash,
}

#[derive(Debug, Clone, Default)]
struct Shard {
    entries: imbl::OrdMap<Key, IndexEntry>,
    /// The shard's buckets changed since [`KeyIndex::take_stale`] last ran, one bit each.
    stale: [u64; SHARD_STALE_WORDS],
}

impl Shard {
    fn insert(&mut self, key: Key, entry: IndexEntry) -> Option<IndexEntry> {
        self.mark_stale(&key);
        self.entries.insert(key, entry)
    }

    fn remove(&mut self, key: &[u8]) -> Option<IndexEntry> {
        self.mark_stale(key);
        self.entries.remove(key)
    }

    fn mark_stale(&mut self, key: &[u8]) {
        let bucket = key_bucket(key) as usize % SHARD_BUCKETS;
        self.stale[bucket / 64] |= 1 << (bucket % 64);
    }

    /// Inserts `rows` (in key order), stopping after the first whose key held an entry that
    /// `replaceable` refuses. Returns what each insertion replaced (to put back with
    /// [`Shard::undo`]), and the refused row.
    fn insert_all(
        &mut self,
        rows: Vec<(Key, IndexEntry)>,
        replaceable: &(impl Fn(&IndexEntry) -> bool + Sync),
    ) -> (Vec<(Key, Option<IndexEntry>)>, Option<IndexEntry>) {
        let mut undo = Vec::with_capacity(rows.len());
        for (key, entry) in rows {
            let previous = self.insert(key.clone(), entry);
            undo.push((key, previous));
            if previous.is_some_and(|previous| !replaceable(&previous)) {
                return (undo, Some(entry));
            }
        }
        (undo, None)
    }

    /// Takes back insertions, latest first.
    fn undo(&mut self, undo: Vec<(Key, Option<IndexEntry>)>) {
        for (key, previous) in undo.into_iter().rev() {
            match previous {
                Some(previous) => self.entries.insert(key, previous),
                None => self.entries.remove(&key),
            };
        }
    }
}

/// A table's primary-key index.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeyIndex {
    shards: [Shard; INDEX_SHARDS],
}

/// The shard that holds `key`.
fn shard_of(key: &[u8]) -> usize {
    key_bucket(key) as usize / SHARD_BUCKETS
}

impl KeyIndex {
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.entries.len()).sum()
    }

    pub fn get(&self, key: &[u8]) -> Option<&IndexEntry> {
        self.shards[shard_of(key)].entries.get(key)
    }

    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.get(key).is_some()
    }

    /// Each shard that `rows` (in key order) reach, with its rows, still in key order.
    fn by_shard<T>(&mut self, rows: Vec<(Key, T)>) -> Vec<(&mut Shard, Vec<(Key, T)>)> {
        let mut by_shard: [Vec<(Key, T)>; INDEX_SHARDS] = Default::default();
        for row in rows {
            by_shard[shard_of(&row.0)].push(row);
        }
        self.shards
            .iter_mut()
            .zip(by_shard)
            .filter(|(_, rows)| !rows.is_empty())
            .collect()
    }

    /// Moves existing entries to new locations (their hashes stay, so no bucket is marked):
    /// `moves` in key order, each shard's on one of the threads `split` allows, so each shard's
    /// updates walk its tree from one end to the other. A key without an entry is an error,
    /// returned after every other move is made (the caller treats the index as broken).
    pub fn relocate_sorted(&mut self, moves: Vec<(Key, RowLocation)>, split: Split) -> Result<(), Key> {
        let count = moves.len();
        let missing = split.map_each(self.by_shard(moves), count, |(shard, moves)| {
            let mut missing = None;
            for (key, location) in moves {
                match shard.entries.get_mut(&key) {
                    Some(entry) => entry.location = location,
                    None => missing = missing.or(Some(key)),
                }
            }
            missing
        });
        match missing.into_iter().flatten().next() {
            Some(key) => Err(key),
            None => Ok(()),
        }
    }

    pub fn insert(&mut self, key: Key, entry: IndexEntry) -> Option<IndexEntry> {
        self.shards[shard_of(&key)].insert(key, entry)
    }

    pub fn remove(&mut self, key: &[u8]) -> Option<IndexEntry> {
        self.shards[shard_of(key)].remove(key)
    }

    /// The entries of `bucket`, in key order.
    pub fn bucket(&self, bucket: u16) -> impl Iterator<Item = &IndexEntry> {
        let low = bucket.to_be_bytes();
        let high = (bucket + 1).to_be_bytes();
        let range = (
            std::ops::Bound::Included(&low[..]),
            std::ops::Bound::Excluded(&high[..]),
        );
        self.shards[bucket as usize / SHARD_BUCKETS]
            .entries
            .range::<_, [u8]>(range)
            .map(|(_, entry)| entry)
    }

    /// The buckets changed since the last call, in order; forgets them.
    pub fn take_stale(&mut self) -> Vec<u16> {
        let mut buckets = Vec::new();
        for (s, shard) in self.shards.iter_mut().enumerate() {
            for (word, bits) in shard.stale.iter_mut().enumerate() {
                let mut bits = std::mem::take(bits);
                while bits != 0 {
                    let bucket = s * SHARD_BUCKETS + word * 64 + bits.trailing_zeros() as usize;
                    buckets.push(bucket as u16);
                    bits &= bits - 1;
                }
            }
        }
        buckets
    }

    /// Inserts `rows` (in key order: each shard's updates walk its tree from one end to the
    /// other), each shard's on one of the threads `split` allows. A key that already has an
    /// entry is refused unless `replaceable` accepts that entry; a refusal leaves the index as
    /// it was and returns the refused row first in key order, as inserting the rows one by one
    /// would. Otherwise returns the entries replaced, in key order. The result does not depend
    /// on the number of threads.
    #[cfg(test)]
    pub fn insert_sorted(
        &mut self,
        rows: Vec<(Key, IndexEntry)>,
        split: Split,
        replaceable: impl Fn(&IndexEntry) -> bool + Sync,
    ) -> Result<Vec<IndexEntry>, IndexEntry> {
        let mut changed = Vec::new();
        self.insert_sorted_noting(rows, split, replaceable, &mut changed)?;
        Ok(changed.into_iter().filter_map(|(_, previous)| previous).collect())
    }

    /// [`KeyIndex::insert_sorted`], noting in `changed` each key inserted and the entry it had
    /// (in key order by shard), for taking the insertion back later; a refusal notes nothing.
    pub fn insert_sorted_noting(
        &mut self,
        rows: Vec<(Key, IndexEntry)>,
        split: Split,
        replaceable: impl Fn(&IndexEntry) -> bool + Sync,
        changed: &mut Vec<(Key, Option<IndexEntry>)>,
    ) -> Result<(), IndexEntry> {
        let count = rows.len();
        let results = split.map_each(self.by_shard(rows), count, |(shard, rows)| {
            let (undo, refused) = shard.insert_all(rows, &replaceable);
            (shard, undo, refused)
        });
        if let Some(refused) = results.iter().find_map(|(_, _, refused)| *refused) {
            // The first refusal in key order is the answer; every shard gives its rows back.
            for (shard, undo, _) in results {
                shard.undo(undo);
            }
            return Err(refused);
        }
        for (_, undo, _) in results {
            changed.extend(undo);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(bucket: u16, n: u32) -> Key {
        let mut bytes = bucket.to_be_bytes().to_vec();
        bytes.extend_from_slice(&n.to_be_bytes());
        Key::new(&bytes)
    }

    fn entry(chunk: u64, row: u32) -> IndexEntry {
        IndexEntry {
            location: RowLocation { chunk, row },
            hash: Hash::tagged("test-row", &[&chunk.to_le_bytes(), &row.to_le_bytes()]),
        }
    }

    /// Every entry, in key order.
    fn contents(index: &KeyIndex) -> Vec<IndexEntry> {
        (0..KEY_BUCKETS)
            .flat_map(|b| index.bucket(b).copied().collect::<Vec<_>>())
            .collect()
    }

    /// What inserting `rows` one by one in key order gives: the entries replaced, or the first
    /// refused row with the index unchanged.
    fn one_by_one(
        index: &mut KeyIndex,
        mut rows: Vec<(Key, IndexEntry)>,
        replaceable: impl Fn(&IndexEntry) -> bool,
    ) -> Result<Vec<IndexEntry>, IndexEntry> {
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        let before = index.clone();
        let mut replaced = Vec::new();
        for (key, entry) in rows {
            if let Some(previous) = index.insert(key, entry) {
                if !replaceable(&previous) {
                    *index = before;
                    return Err(entry);
                }
                replaced.push(previous);
            }
        }
        Ok(replaced)
    }

    /// Sharded insertion on any number of threads equals insertion one by one: the same
    /// entries replaced, the same refused row (the first in key order, wherever the shards
    /// refusing are), the same index after, and nothing changed by a refusal.
    #[test]
    fn sharded_insertion_equals_one_by_one_on_any_number_of_threads() {
        let mut next = crate::test_numbers(0x2545_f491_4f6c_dd1du64);
        // Chunk 0 holds the existing rows; a row of it is "freed" (its key may move) unless
        // its number is a multiple of 7.
        let replaceable =
            |previous: &IndexEntry| previous.location.chunk == 0 && previous.location.row % 7 != 0;
        let mut refusals = 0;
        for round in 0..60 {
            let mut base = KeyIndex::default();
            // Keys in four buckets of each shard, ten keys a bucket: new rows often meet them.
            let any_key = |next: &mut dyn FnMut(u64) -> u64| {
                key((next(16) * 256 + next(4) * 64) as u16, next(10) as u32)
            };
            for row in 0..300u32 {
                base.insert(any_key(&mut next), entry(0, row));
            }
            let _ = base.take_stale();
            // New rows over every shard, many existing, some repeated within the batch.
            let count = 1 + next(20) as u32;
            let mut sorted: Vec<(Key, IndexEntry)> = (0..count)
                .map(|row| (any_key(&mut next), entry(1, row)))
                .collect();
            sorted.sort_by(|a, b| a.0.cmp(&b.0));
            let mut expected_index = base.clone();
            let expected = one_by_one(&mut expected_index, sorted.clone(), replaceable);
            refusals += usize::from(expected.is_err());
            for threads in [1, 2, 3, 8] {
                let mut index = base.clone();
                let split = Split {
                    threads,
                    min_per_thread: 1,
                };
                let result = index.insert_sorted(sorted.clone(), split, replaceable);
                assert_eq!(result, expected, "round {round}, {threads} threads");
                assert_eq!(contents(&index), contents(&expected_index), "round {round}");
                assert_eq!(index.len(), expected_index.len());
            }
        }
        assert!(
            (5..55).contains(&refusals),
            "both outcomes are tried: {refusals} refusals"
        );
    }

    /// Changes mark their buckets, and only those, until the digest takes them.
    #[test]
    fn changed_buckets_are_reported_once() {
        let mut index = KeyIndex::default();
        index.insert(key(5, 1), entry(0, 0));
        index.insert(key(4095, 1), entry(0, 1));
        index.insert(key(300, 1), entry(0, 2));
        assert_eq!(index.take_stale(), vec![5, 300, 4095]);
        assert!(index.take_stale().is_empty());
        index.remove(&key(300, 1));
        // A move changes no hash, so it marks nothing; a key without an entry is refused.
        index
            .relocate_sorted(vec![(key(5, 1), RowLocation { chunk: 7, row: 3 })], Split::SERIAL)
            .expect("present");
        assert_eq!(
            index.get(&key(5, 1)).map(|e| e.location),
            Some(RowLocation { chunk: 7, row: 3 })
        );
        assert_eq!(
            index.relocate_sorted(vec![(key(6, 1), RowLocation { chunk: 7, row: 4 })], Split::SERIAL),
            Err(key(6, 1))
        );
        assert_eq!(index.take_stale(), vec![300]);
        assert_eq!(index.len(), 2);
        assert_eq!(index.bucket(5).count(), 1);
        assert_eq!(index.bucket(300).count(), 0);
    }
}
