//! A table's data: immutable Arrow chunks with deletion masks, and a primary-key index.
//!
//! A [`Table`] value is one version of a table. Cloning it is cheap (the chunk map holds `Arc`s
//! and the index is a persistent B-tree that shares structure), so a transaction clones the
//! versions it writes, changes its private copies, and either publishes them or drops them. A
//! write never changes a chunk in place: deleting rows makes a new mask for the chunk, inserting
//! rows adds a chunk. Readers of older versions are never disturbed.

use std::collections::BTreeMap;
use std::sync::Arc;

use chainql::{Address, Hash};
use chainql_planner::{Privileges, ROW_POSITION_COLUMN, TableDefinition};
use datafusion::arrow::array::BooleanBufferBuilder;
use datafusion::arrow::array::new_null_array;
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, UInt64Array};
use datafusion::arrow::buffer::BooleanBuffer;
use datafusion::arrow::compute::{concat_batches, filter_record_batch, interleave};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::encode::{Key, describe_key, encode_key, encode_value};
use crate::index::{IndexEntry, KeyIndex};
use crate::parallel::Split;
use crate::{Error, Result};

/// Rows per chunk once chunks are compacted.
pub const CHUNK_ROWS: usize = 8192;

/// Where a row is stored: a chunk and a row within it. Packed into a `u64` for the position
/// column that `UPDATE` and `DELETE` row queries read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RowLocation {
    pub chunk: u64,
    pub row: u32,
}

impl RowLocation {
    pub fn pack(self) -> u64 {
        (self.chunk << 32) | self.row as u64
    }

    pub fn unpack(packed: u64) -> RowLocation {
        RowLocation {
            chunk: packed >> 32,
            row: packed as u32,
        }
    }
}

#[derive(Debug)]
struct Chunk {
    /// Rows in the storage schema.
    batch: RecordBatch,
    /// Which rows are still live.
    live: BooleanBuffer,
    live_rows: usize,
}

impl Chunk {
    fn new(batch: RecordBatch) -> Chunk {
        let rows = batch.num_rows();
        Chunk {
            batch,
            live: BooleanBuffer::new_set(rows),
            live_rows: rows,
        }
    }

    /// The live rows.
    fn live_batch(&self) -> Result<RecordBatch> {
        if self.live_rows == self.batch.num_rows() {
            return Ok(self.batch.clone());
        }
        Ok(filter_record_batch(
            &self.batch,
            &BooleanArray::new(self.live.clone(), None),
        )?)
    }
}

/// The hash of row `row` of `batch` under `key`: what the table digest is built from.
fn row_hash(key: &[u8], batch: &RecordBatch, row: usize, scratch: &mut Vec<u8>) -> Result<Hash> {
    scratch.clear();
    scratch.extend_from_slice(&(key.len() as u32).to_le_bytes());
    scratch.extend_from_slice(key);
    for column in batch.columns() {
        encode_value(scratch, column, row)?;
    }
    Ok(Hash::tagged("chainql/row/v1", &[scratch]))
}

/// One version of a table.
#[derive(Debug, Clone)]
pub struct Table {
    definition: Arc<TableDefinition>,
    storage_schema: SchemaRef,
    key_columns: Arc<[usize]>,
    chunks: BTreeMap<u64, Arc<Chunk>>,
    next_chunk_id: u64,
    index: KeyIndex,
    /// Per non-empty bucket, its Merkle leaf: the bucket number and the digest of its rows'
    /// hashes in key order. Up to date except for the buckets the index reports changed.
    bucket_leaves: imbl::OrdMap<u16, Hash>,
    /// The next hidden row id, for tables without a primary key.
    next_row_id: i64,
    /// The digest of the contents, or `None` once they changed.
    digest: Option<Hash>,
    /// Set by writes, cleared by compaction.
    dirty: bool,
    /// The account that created the table: it alone may drop it and grant privileges on it.
    owner: Address,
    /// Privileges other accounts hold, by account.
    grants: BTreeMap<Address, Privileges>,
}

/// What a table was before a change, to take it back: see [`Table::replace_undoable`].
#[derive(Debug)]
pub(crate) struct TableUndo {
    next_chunk_id: u64,
    next_row_id: i64,
    digest: Option<Hash>,
    dirty: bool,
    noted: Noted,
}

/// What a change set, noted as it sets it, with what was there before, in the order set.
#[derive(Debug, Default)]
struct Noted {
    index: Vec<(Key, Option<IndexEntry>)>,
    chunks: Vec<(u64, Option<Arc<Chunk>>)>,
}

impl Table {
    /// A new, empty table owned by `owner`.
    pub fn new(definition: TableDefinition, owner: Address) -> Table {
        let storage_schema = definition.storage_schema();
        let key_columns: Arc<[usize]> = definition.key_columns().into();
        Table {
            definition: Arc::new(definition),
            storage_schema,
            key_columns,
            chunks: BTreeMap::new(),
            next_chunk_id: 0,
            index: KeyIndex::default(),
            bucket_leaves: imbl::OrdMap::new(),
            next_row_id: 1,
            digest: None,
            dirty: true,
            owner,
            grants: BTreeMap::new(),
        }
    }

    pub fn owner(&self) -> Address {
        self.owner
    }

    /// What `account` may write: everything for the owner, its grants for anyone else.
    pub fn privileges_of(&self, account: &Address) -> Privileges {
        if *account == self.owner {
            return Privileges::ALL;
        }
        self.grants.get(account).copied().unwrap_or_default()
    }

    /// Accounts holding privileges, in address order.
    pub fn grants(&self) -> impl Iterator<Item = (&Address, &Privileges)> {
        self.grants.iter()
    }

    /// Adds (`grant`) or removes privileges of `account`.
    pub fn change_grant(&mut self, account: Address, privileges: Privileges, grant: bool) {
        let current = self.grants.get(&account).copied().unwrap_or_default();
        let next = if grant {
            current.union(privileges)
        } else {
            current.without(privileges)
        };
        if next.is_empty() {
            self.grants.remove(&account);
        } else {
            self.grants.insert(account, next);
        }
        self.digest = None;
    }

    pub fn definition(&self) -> &TableDefinition {
        &self.definition
    }

    pub fn name(&self) -> &str {
        &self.definition.name
    }

    pub fn storage_schema(&self) -> &SchemaRef {
        &self.storage_schema
    }

    pub fn row_count(&self) -> usize {
        self.index.len()
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Reserves `n` hidden row ids and returns them as a column.
    pub fn allocate_row_ids(&mut self, n: usize) -> ArrayRef {
        let first = self.next_row_id;
        self.next_row_id += n as i64;
        Arc::new(Int64Array::from_iter_values(first..first + n as i64))
    }

    /// Live rows in the user's schema (the hidden row id left out), in storage order.
    pub fn scan(&self) -> Result<Vec<RecordBatch>> {
        let user_columns: Vec<usize> = (0..self.definition.columns.len()).collect();
        let mut out = Vec::with_capacity(self.chunks.len());
        for chunk in self.chunks.values() {
            if chunk.live_rows == 0 {
                continue;
            }
            out.push(chunk.live_batch()?.project(&user_columns)?);
        }
        Ok(out)
    }

    /// The schema of [`Table::scan_with_positions`]: the user's columns and the position column.
    pub fn schema_with_positions(&self) -> SchemaRef {
        let mut fields: Vec<Field> = self
            .definition
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(ROW_POSITION_COLUMN, DataType::UInt64, false));
        Arc::new(Schema::new(fields))
    }

    /// Live rows in the user's schema plus each row's packed [`RowLocation`].
    pub fn scan_with_positions(&self) -> Result<Vec<RecordBatch>> {
        let schema = self.schema_with_positions();
        let user_columns = self.definition.columns.len();
        let mut out = Vec::with_capacity(self.chunks.len());
        for (&id, chunk) in &self.chunks {
            if chunk.live_rows == 0 {
                continue;
            }
            let positions: Vec<u64> = chunk
                .live
                .set_indices()
                .map(|row| {
                    RowLocation {
                        chunk: id,
                        row: row as u32,
                    }
                    .pack()
                })
                .collect();
            let live = chunk.live_batch()?;
            let mut columns: Vec<ArrayRef> = live.columns()[..user_columns].to_vec();
            columns.push(Arc::new(UInt64Array::from(positions)));
            out.push(RecordBatch::try_new(schema.clone(), columns)?);
        }
        Ok(out)
    }

    /// Where the row with primary key `key` is, if it exists.
    pub fn locate(&self, key: &Key) -> Option<RowLocation> {
        self.index.get(key).map(|entry| entry.location)
    }

    /// The live row at `location` in the user's schema, with its packed position as a last
    /// column when `with_position` is set (the layout of [`Table::scan_with_positions`]).
    pub fn user_row(&self, location: RowLocation, with_position: bool) -> Result<RecordBatch> {
        let row = self
            .row_at(location)
            .ok_or_else(|| Error::Internal(format!("row {location:?} is not live")))?;
        let user_columns: Vec<usize> = (0..self.definition.columns.len()).collect();
        let row = row.project(&user_columns)?;
        if !with_position {
            return Ok(row);
        }
        let mut columns = row.columns().to_vec();
        columns.push(Arc::new(UInt64Array::from(vec![location.pack()])));
        Ok(RecordBatch::try_new(self.schema_with_positions(), columns)?)
    }

    /// The user's columns of the rows at `locations`, null where a location is `None`: one
    /// array per column, taken from the chunks with one `interleave` each (no batch per row).
    pub fn gather(&self, locations: &[Option<RowLocation>]) -> Result<Vec<ArrayRef>> {
        let columns = self.definition.columns.len();
        let nulls: Vec<ArrayRef> = self
            .definition
            .columns
            .iter()
            .map(|c| new_null_array(&c.column_type.data_type, 1))
            .collect();
        // Source 0 is the null row; then each chunk read, in the order first needed.
        let mut sources: Vec<&Chunk> = Vec::new();
        let mut source_of: BTreeMap<u64, usize> = BTreeMap::new();
        let mut indices = Vec::with_capacity(locations.len());
        for location in locations {
            let Some(location) = location else {
                indices.push((0, 0));
                continue;
            };
            let row = location.row as usize;
            let source = match source_of.get(&location.chunk) {
                Some(&source) => source,
                None => {
                    let chunk = self
                        .chunks
                        .get(&location.chunk)
                        .ok_or_else(|| Error::Internal(format!("row {location:?} is not stored")))?;
                    sources.push(chunk);
                    source_of.insert(location.chunk, sources.len());
                    sources.len()
                }
            };
            let chunk = sources[source - 1];
            if row >= chunk.batch.num_rows() || !chunk.live.value(row) {
                return Err(Error::Internal(format!("row {location:?} is not live")));
            }
            indices.push((source, row));
        }
        (0..columns)
            .map(|c| {
                let mut arrays: Vec<&dyn Array> = Vec::with_capacity(sources.len() + 1);
                arrays.push(nulls[c].as_ref());
                arrays.extend(sources.iter().map(|chunk| chunk.batch.column(c).as_ref()));
                Ok(interleave(&arrays, &indices)?)
            })
            .collect()
    }

    /// The row at `location`, in the storage schema, if it is live.
    pub fn row_at(&self, location: RowLocation) -> Option<RecordBatch> {
        let chunk = self.chunks.get(&location.chunk)?;
        let row = location.row as usize;
        (row < chunk.batch.num_rows() && chunk.live.value(row)).then(|| chunk.batch.slice(row, 1))
    }

    /// Adds rows given in the storage schema. Refuses the whole batch if any key is already
    /// present or repeats within it.
    pub fn insert(&mut self, batch: RecordBatch) -> Result<usize> {
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(0);
        }
        self.replace_noting(&[], batch, Split::SERIAL, &mut Noted::default())?;
        Ok(rows)
    }

    /// Adds `batch` as the next chunk, with its rows' keys and hashes in the index: one index
    /// update per row. A key already in the index is refused unless its row is among `freed`
    /// (rows being deleted, by chunk, sorted), whose keys may move to the new chunk; a key that
    /// repeats within the batch is refused. A refusal leaves the index as it was. Returns the
    /// freed rows whose key moved. Rows are keyed and hashed as `split` says; the index is
    /// updated in key order.
    fn add_chunk(
        &mut self,
        batch: RecordBatch,
        freed: &BTreeMap<u64, Vec<u32>>,
        split: Split,
        noted: &mut Noted,
    ) -> Result<Vec<RowLocation>> {
        let rows = batch.num_rows();
        if batch.schema().fields() != self.storage_schema.fields() {
            return Err(Error::Internal(
                "rows written to a table are not in its storage schema".into(),
            ));
        }
        let chunk = self.next_chunk_id;
        let is_freed = |location: &RowLocation| {
            freed
                .get(&location.chunk)
                .is_some_and(|rows| rows.binary_search(&location.row).is_ok())
        };
        let key_columns = &self.key_columns;
        let mut keyed = split.map(rows, |range| {
            let mut scratch = Vec::with_capacity(128);
            range
                .map(|row| {
                    let key = encode_key(&batch, key_columns, row)?;
                    let hash = row_hash(&key, &batch, row, &mut scratch)?;
                    Ok((key, hash, row as u32))
                })
                .collect::<Result<Vec<_>>>()
        })?;
        // In key order, each shard's updates walk its tree from one end to the other instead
        // of jumping between far leaves. The resulting index is the same in any order. Ties
        // (a key repeated in the batch) go by row, so the order is total and the same however
        // the sort is shared out.
        let by_key_then_row = |a: &(Key, Hash, u32), b: &(Key, Hash, u32)| a.0.cmp(&b.0).then(a.2.cmp(&b.2));
        if split.threads > 1 && rows >= 2 * split.min_per_thread {
            use rayon::slice::ParallelSliceMut;
            keyed.par_sort_unstable_by(by_key_then_row);
        } else {
            keyed.sort_unstable_by(by_key_then_row);
        }
        let rows: Vec<(Key, IndexEntry)> = keyed
            .into_iter()
            .map(|(key, hash, row)| {
                let location = RowLocation { chunk, row };
                (key, IndexEntry { location, hash })
            })
            .collect();
        // A key may move here from a freed row; any other entry it has (elsewhere, or earlier
        // in this batch) makes it a duplicate.
        let replaceable =
            |previous: &IndexEntry| previous.location.chunk != chunk && is_freed(&previous.location);
        let first = noted.index.len();
        if let Err(refused) = self
            .index
            .insert_sorted_noting(rows, split, replaceable, &mut noted.index)
        {
            return Err(self.duplicate(&batch, refused.location.row as usize));
        }
        let moved = noted.index[first..]
            .iter()
            .filter_map(|(_, previous)| previous.map(|entry| entry.location))
            .collect();
        let previous = self.chunks.insert(chunk, Arc::new(Chunk::new(batch)));
        noted.chunks.push((chunk, previous));
        self.next_chunk_id += 1;
        Ok(moved)
    }

    /// Splits rows (in the storage schema) into those whose key is new and those whose key
    /// already exists. A key proposed twice is refused when `strict` (an upsert's update may not
    /// touch a row twice); otherwise the first proposal wins.
    pub fn split_conflicts(&self, batch: &RecordBatch, strict: bool) -> Result<(RecordBatch, RecordBatch)> {
        let mut fresh = Vec::with_capacity(batch.num_rows());
        let mut conflicting = Vec::with_capacity(batch.num_rows());
        // Membership only: iteration order of the set is never observed.
        let mut seen = std::collections::HashSet::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            let key = encode_key(batch, &self.key_columns, row)?;
            if !seen.insert(key.clone()) {
                if strict {
                    return Err(Error::Invalid(format!(
                        "ON CONFLICT DO UPDATE cannot affect a row a second time: key {} is proposed twice",
                        describe_key(batch, &self.key_columns, row)
                    )));
                }
                fresh.push(false);
                conflicting.push(false);
                continue;
            }
            let exists = self.index.contains_key(&key);
            fresh.push(!exists);
            conflicting.push(exists);
        }
        Ok((
            filter_record_batch(batch, &BooleanArray::from(fresh))?,
            filter_record_batch(batch, &BooleanArray::from(conflicting))?,
        ))
    }

    fn duplicate(&self, batch: &RecordBatch, row: usize) -> Error {
        Error::UniqueViolation {
            constraint: format!("{}_pkey", self.definition.name),
            key: describe_key(batch, &self.key_columns, row),
        }
    }

    /// The hidden row ids of the rows at `locations` (tables without a primary key).
    pub fn row_ids_at(&self, locations: &[RowLocation]) -> Result<ArrayRef> {
        let column = self.definition.columns.len();
        let mut ids = Vec::with_capacity(locations.len());
        for location in locations {
            let chunk = self
                .chunks
                .get(&location.chunk)
                .ok_or_else(|| Error::Internal(format!("row {location:?} does not exist")))?;
            let values = chunk
                .batch
                .column(column)
                .as_any()
                .downcast_ref::<Int64Array>()
                .ok_or_else(|| Error::Internal("the hidden row id is not BIGINT".into()))?;
            ids.push(values.value(location.row as usize));
        }
        Ok(Arc::new(Int64Array::from(ids)))
    }

    /// Deletes the live rows at `locations`. Refuses a location that is not a live row or that
    /// appears twice, leaving the table unchanged.
    pub fn delete(&mut self, locations: &[RowLocation]) -> Result<usize> {
        let nothing = RecordBatch::new_empty(Arc::clone(&self.storage_schema));
        self.delete_and_insert(locations, nothing, Split::SERIAL, &mut Noted::default())?;
        Ok(locations.len())
    }

    /// Deletes the rows at `deleted` and inserts `batch` (in the storage schema) as one change:
    /// a key may move from a deleted row to an inserted one, which then costs one index update
    /// instead of a removal and an insertion. Refused as a whole, leaving the table unchanged,
    /// when a location is not live or repeats, or an inserted key exists (outside the deleted
    /// rows) or repeats.
    /// Rows are keyed and hashed as `split` says.
    #[cfg(test)]
    pub(crate) fn replace(
        &mut self,
        deleted: &[RowLocation],
        batch: RecordBatch,
        split: Split,
    ) -> Result<()> {
        self.replace_noting(deleted, batch, split, &mut Noted::default())
    }

    /// [`Table::replace`], noting each index entry and chunk it sets, with what was there.
    fn replace_noting(
        &mut self,
        deleted: &[RowLocation],
        batch: RecordBatch,
        split: Split,
        noted: &mut Noted,
    ) -> Result<()> {
        if deleted.is_empty() {
            if batch.num_rows() > 0 {
                self.add_chunk(batch, &BTreeMap::new(), Split::SERIAL, noted)?;
                self.touch();
            }
            return Ok(());
        }
        self.delete_and_insert(deleted, batch, split, noted)
    }

    /// [`Table::replace`], returning what takes it back ([`Table::take_back`]): the counters as
    /// they were, and what each index entry and chunk the change set held before (noted as the
    /// change goes, not looked up first). A refused change leaves the table as it was and
    /// returns the error.
    ///
    /// R2 writes a group's steps in place with these, instead of on a copy of the state kept
    /// for a redo: while a copy shares the index, every write copies the nodes it touches.
    pub(crate) fn replace_undoable(
        &mut self,
        deleted: &[RowLocation],
        batch: RecordBatch,
        split: Split,
    ) -> Result<TableUndo> {
        let mut undo = TableUndo {
            next_chunk_id: self.next_chunk_id,
            next_row_id: self.next_row_id,
            digest: self.digest,
            dirty: self.dirty,
            noted: Noted::default(),
        };
        match self.replace_noting(deleted, batch, split, &mut undo.noted) {
            Ok(()) => Ok(undo),
            Err(error) => {
                self.take_back(undo);
                Err(error)
            }
        }
    }

    /// Takes back a change [`Table::replace_undoable`] made, and any made after it that are
    /// taken back first. The index's changed buckets stay marked: rehashing them gives the
    /// digests they had.
    pub(crate) fn take_back(&mut self, undo: TableUndo) {
        let Noted { index, chunks } = undo.noted;
        for (key, previous) in index.into_iter().rev() {
            match previous {
                Some(entry) => self.index.insert(key, entry),
                None => self.index.remove(&key),
            };
        }
        for (id, previous) in chunks.into_iter().rev() {
            match previous {
                Some(chunk) => self.chunks.insert(id, chunk),
                None => self.chunks.remove(&id),
            };
        }
        self.next_chunk_id = undo.next_chunk_id;
        self.next_row_id = undo.next_row_id;
        self.digest = undo.digest;
        self.dirty = undo.dirty;
    }

    /// What [`Table::replace`] and [`Table::delete`] share: every location checked before
    /// anything changes, then the batch added (keys of deleted rows may move to it), then the
    /// deleted rows masked out and their unmoved keys taken out of the index.
    fn delete_and_insert(
        &mut self,
        deleted: &[RowLocation],
        batch: RecordBatch,
        split: Split,
        noted: &mut Noted,
    ) -> Result<()> {
        let mut by_chunk: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
        for location in deleted {
            if self.row_at(*location).is_none() {
                return Err(Error::Internal(format!("row {location:?} is not live")));
            }
            by_chunk.entry(location.chunk).or_default().push(location.row);
        }
        for rows in by_chunk.values_mut() {
            rows.sort_unstable();
            if rows.windows(2).any(|w| w[0] == w[1]) {
                return Err(Error::RowChangedTwice);
            }
        }
        let mut moved = if batch.num_rows() > 0 {
            self.add_chunk(batch, &by_chunk, split, noted)?
        } else {
            Vec::new()
        };
        moved.sort_unstable();
        for (chunk_id, rows) in by_chunk {
            let chunk = self.chunks[&chunk_id].clone();
            let mut live = BooleanBufferBuilder::new(chunk.live.len());
            live.append_buffer(&chunk.live);
            for &row in &rows {
                live.set_bit(row as usize, false);
                let location = RowLocation { chunk: chunk_id, row };
                // A deleted row whose key did not move to an inserted row leaves the index.
                if moved.binary_search(&location).is_err() {
                    let key = encode_key(&chunk.batch, &self.key_columns, row as usize)?;
                    let previous = self.index.remove(&key);
                    noted.index.push((key, previous));
                }
            }
            let previous = self.chunks.insert(
                chunk_id,
                Arc::new(Chunk {
                    batch: chunk.batch.clone(),
                    live: live.finish(),
                    live_rows: chunk.live_rows - rows.len(),
                }),
            );
            noted.chunks.push((chunk_id, previous));
        }
        self.touch();
        Ok(())
    }

    fn touch(&mut self) {
        self.digest = None;
        self.dirty = true;
    }

    /// Rewrites chunks that are small or mostly deleted into full ones, so the number of chunks
    /// stays proportional to the number of rows. Deterministic: it depends only on the table.
    #[cfg(test)]
    pub fn compact(&mut self) -> Result<()> {
        self.compact_with(Split::SERIAL)
    }

    /// [`Table::compact`], the moved rows keyed as `split` says and their index entries moved in
    /// key order, shard by shard on its threads. The result does not depend on the threads.
    pub(crate) fn compact_with(&mut self, split: Split) -> Result<()> {
        self.dirty = false;
        let candidates: Vec<u64> = self
            .chunks
            .iter()
            .filter(|(_, c)| c.batch.num_rows() < CHUNK_ROWS / 2 || c.live_rows * 2 < c.batch.num_rows())
            .map(|(&id, _)| id)
            .collect();
        let fully_deleted = candidates.iter().any(|id| self.chunks[id].live_rows == 0);
        if candidates.len() < 2 && !fully_deleted {
            return Ok(());
        }
        let mut live = Vec::with_capacity(candidates.len());
        for id in &candidates {
            if let Some(chunk) = self.chunks.remove(id)
                && chunk.live_rows > 0
            {
                live.push(chunk.live_batch()?);
            }
        }
        if live.is_empty() {
            return Ok(());
        }
        let merged = concat_batches(&self.storage_schema, &live)?;
        // Row `r` of `merged` goes to chunk `first + r / CHUNK_ROWS`, row `r % CHUNK_ROWS`.
        let first = self.next_chunk_id;
        let key_columns = &self.key_columns;
        let mut moves = split.map(merged.num_rows(), |range| {
            range
                .map(|r| {
                    let location = RowLocation {
                        chunk: first + (r / CHUNK_ROWS) as u64,
                        row: (r % CHUNK_ROWS) as u32,
                    };
                    Ok((encode_key(&merged, key_columns, r)?, location))
                })
                .collect::<Result<Vec<_>>>()
        })?;
        if split.threads > 1 && moves.len() >= 2 * split.min_per_thread {
            use rayon::slice::ParallelSliceMut;
            moves.par_sort_unstable_by(|a, b| a.0.cmp(&b.0));
        } else {
            moves.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        }
        if self.index.relocate_sorted(moves, split).is_err() {
            return Err(Error::Internal(
                "a compacted row is missing from the index".into(),
            ));
        }
        let mut offset = 0;
        while offset < merged.num_rows() {
            let length = CHUNK_ROWS.min(merged.num_rows() - offset);
            let chunk_id = self.next_chunk_id;
            self.next_chunk_id += 1;
            self.chunks
                .insert(chunk_id, Arc::new(Chunk::new(merged.slice(offset, length))));
            offset += length;
        }
        Ok(())
    }

    /// The chunks as they are laid out (id, rows in the storage schema, live mask), in id order,
    /// and the id the next chunk gets: what a checkpoint stores so a restored table has the same
    /// layout, and therefore the same scan order and compactions, as the original.
    pub(crate) fn layout(&self) -> (impl Iterator<Item = (u64, &RecordBatch, &BooleanBuffer)>, u64) {
        (
            self.chunks.iter().map(|(id, c)| (*id, &c.batch, &c.live)),
            self.next_chunk_id,
        )
    }

    pub(crate) fn next_row_id(&self) -> i64 {
        self.next_row_id
    }

    /// A table rebuilt from a checkpoint: its chunks exactly as [`Table::layout`] gave them. The
    /// index and row hashes are computed again from the rows; a duplicate key, a chunk of another
    /// schema or ids out of order are refused.
    pub(crate) fn restore(
        definition: TableDefinition,
        owner: Address,
        grants: BTreeMap<Address, Privileges>,
        next_row_id: i64,
        next_chunk_id: u64,
        chunks: Vec<(u64, RecordBatch, BooleanBuffer)>,
    ) -> Result<Table> {
        let mut table = Table::new(definition, owner);
        table.grants = grants;
        table.next_row_id = next_row_id;
        let mut scratch = Vec::with_capacity(128);
        // Every live row's key and entry, indexed in key order once all are read.
        let mut rows: Vec<(Key, IndexEntry)> = Vec::new();
        for (id, batch, live) in chunks {
            if batch.schema().fields() != table.storage_schema.fields() {
                return Err(Error::Invalid(format!(
                    "a stored chunk of table {} has columns {:?}, not the table's",
                    table.name(),
                    batch.schema().fields()
                )));
            }
            if live.len() != batch.num_rows()
                || id >= next_chunk_id
                || table.chunks.last_key_value().is_some_and(|(last, _)| *last >= id)
            {
                return Err(Error::Invalid(format!(
                    "stored chunk {id} of table {} is out of order or has a wrong mask",
                    table.name()
                )));
            }
            for row in live.set_indices() {
                let key = encode_key(&batch, &table.key_columns, row)?;
                let hash = row_hash(&key, &batch, row, &mut scratch)?;
                let location = RowLocation {
                    chunk: id,
                    row: row as u32,
                };
                rows.push((key, IndexEntry { location, hash }));
            }
            let live_rows = live.count_set_bits();
            table.chunks.insert(
                id,
                Arc::new(Chunk {
                    batch,
                    live,
                    live_rows,
                }),
            );
        }
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (key, entry) in rows {
            if table.index.insert(key, entry).is_some() {
                let location = entry.location;
                let batch = &table.chunks[&location.chunk].batch;
                return Err(table.duplicate(batch, location.row as usize));
            }
        }
        table.next_chunk_id = next_chunk_id;
        // A checkpointed table was compacted when its block ended, as every node's was.
        table.dirty = false;
        Ok(table)
    }

    /// The digest of the table: its definition, its access rights, and a Merkle root over its
    /// buckets, each the hash of its rows' hashes in key order. Independent of how rows are laid
    /// out in chunks. Row hashes are kept in the index and bucket leaves between writes, so this
    /// reads 32 bytes per row of the buckets written since the last digest, not the rows; it is
    /// cached until the next write.
    pub fn digest(&mut self) -> Result<Hash> {
        self.digest_with(Split::SERIAL)
    }

    /// [`Table::digest`], the changed buckets rehashed on the threads `split` allows (each
    /// bucket's leaf on its own, so the result is the same on any number).
    pub(crate) fn digest_with(&mut self, split: Split) -> Result<Hash> {
        if let Some(digest) = self.digest {
            return Ok(digest);
        }
        let stale = self.index.take_stale();
        let index = &self.index;
        let leaves = split.map(stale.len(), |range| {
            // A bucket's row hashes are gathered and hashed in one call, which lets blake3 hash
            // its 1 KiB chunks side by side (SIMD) rather than one 32-byte update at a time.
            let mut rows = Vec::new();
            Ok::<_, Error>(
                stale[range]
                    .iter()
                    .map(|&bucket| {
                        rows.clear();
                        for entry in index.bucket(bucket) {
                            rows.extend_from_slice(entry.hash.as_bytes());
                        }
                        let leaf = (!rows.is_empty()).then(|| {
                            Hash::tagged(
                                "chainql/bucket/v1",
                                &[&bucket.to_be_bytes(), blake3::hash(&rows).as_bytes()],
                            )
                        });
                        (bucket, leaf)
                    })
                    .collect(),
            )
        })?;
        for (bucket, leaf) in leaves {
            match leaf {
                Some(leaf) => self.bucket_leaves.insert(bucket, leaf),
                None => self.bucket_leaves.remove(&bucket),
            };
        }
        let leaves: Vec<Hash> = self.bucket_leaves.values().copied().collect();
        let definition = format!("{:?}", self.definition);
        let mut access = Vec::with_capacity(20 + self.grants.len() * 23);
        access.extend_from_slice(&self.owner.0);
        for (account, privileges) in &self.grants {
            access.extend_from_slice(&account.0);
            access.extend_from_slice(&[
                privileges.insert as u8,
                privileges.update as u8,
                privileges.delete as u8,
            ]);
        }
        let digest = Hash::tagged(
            "chainql/table/v1",
            &[
                definition.as_bytes(),
                &access,
                &(self.index.len() as u64).to_le_bytes(),
                &self.next_row_id.to_le_bytes(),
                chainql::merkle_root(&leaves).as_bytes(),
            ],
        );
        self.digest = Some(digest);
        Ok(digest)
    }

    /// The digest, if it is known without hashing.
    pub fn cached_digest(&self) -> Option<Hash> {
        self.digest
    }

    /// Looks up the row with the same key as `batch[row]`.
    pub fn contains_key_of(&self, batch: &RecordBatch, row: usize) -> Result<bool> {
        Ok(self
            .index
            .contains_key(&encode_key(batch, &self.key_columns, row)?))
    }

    /// The live rows with the same keys as the rows of `batch` (in the storage schema), in the
    /// user's schema with their positions: the layout of [`Table::scan_with_positions`],
    /// restricted to those keys. Rows of `batch` whose key is absent are skipped.
    pub fn rows_with_keys_of(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let mut rows = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            if let Some(location) = self.locate(&encode_key(batch, &self.key_columns, row)?) {
                rows.push(self.user_row(location, true)?);
            }
        }
        let schema = self.schema_with_positions();
        Ok(concat_batches(&schema, &rows)?)
    }

    /// Number of chunks, for tests of compaction.
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }
}

/// Checks shared by every write: `NOT NULL` and `VARCHAR(n)` bounds of the user's columns, given
/// in table order.
pub fn check_constraints(definition: &TableDefinition, columns: &[ArrayRef]) -> Result<()> {
    for (column, values) in definition.columns.iter().zip(columns) {
        if !column.nullable && values.null_count() > 0 {
            return Err(Error::NotNullViolation {
                table: definition.name.clone(),
                column: column.name.clone(),
            });
        }
        if let Some(max) = column.column_type.max_chars {
            let strings = values
                .as_any()
                .downcast_ref::<datafusion::arrow::array::StringArray>();
            if let Some(strings) = strings {
                for value in strings.iter().flatten() {
                    if value.chars().count() > max as usize {
                        return Err(Error::ValueTooLong {
                            column: column.name.clone(),
                            max,
                        });
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainql_planner::{ColumnDefinition, ColumnType};
    use datafusion::arrow::array::StringArray;

    fn table() -> Table {
        let column = |name: &str, data_type: DataType| ColumnDefinition {
            name: name.into(),
            column_type: ColumnType {
                data_type,
                max_chars: None,
            },
            nullable: false,
            default: None,
        };
        Table::new(
            TableDefinition {
                name: "t".into(),
                columns: vec![column("k", DataType::Int64), column("v", DataType::Utf8)],
                primary_key: vec![0],
            },
            Address([1; 20]),
        )
    }

    fn rows(table: &Table, keys: &[i64], values: &[&str]) -> RecordBatch {
        RecordBatch::try_new(
            Arc::clone(table.storage_schema()),
            vec![
                Arc::new(Int64Array::from(keys.to_vec())),
                Arc::new(StringArray::from(values.to_vec())),
            ],
        )
        .expect("batch")
    }

    fn key(k: i64) -> Key {
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)])),
            vec![Arc::new(Int64Array::from(vec![k]))],
        )
        .expect("batch");
        encode_key(&batch, &[0], 0).expect("key")
    }

    /// The digest kept up to date bucket by bucket equals the digest of a table built afresh
    /// from the same rows, after every one of many random writes.
    #[test]
    fn incremental_digest_equals_a_fresh_one() {
        let mut table = table();
        let mut next = crate::test_numbers(0x9e37_79b9_7f4a_7c15u64);
        for round in 0..60 {
            let keys: std::collections::BTreeSet<i64> = (0..1 + next(40)).map(|_| next(300) as i64).collect();
            let present: Vec<RowLocation> = keys.iter().filter_map(|k| table.locate(&key(*k))).collect();
            let fresh: Vec<i64> = keys
                .iter()
                .copied()
                .filter(|k| table.locate(&key(*k)).is_none())
                .collect();
            let text = format!("v{round}");
            match next(3) {
                0 => {
                    let values = vec![text.as_str(); fresh.len()];
                    table.insert(rows(&table, &fresh, &values)).expect("insert");
                }
                1 => {
                    table.delete(&present).expect("delete");
                }
                _ => {
                    // Rewrite the present keys, delete nothing else, add the fresh ones.
                    let all: Vec<i64> = keys.iter().copied().collect();
                    let values = vec![text.as_str(); all.len()];
                    table
                        .replace(
                            &present,
                            rows(&table, &all, &values),
                            Split {
                                threads: 2,
                                min_per_thread: 1,
                            },
                        )
                        .expect("replace");
                }
            }
            if next(4) == 0 {
                table.compact().expect("compact");
            }
            let mut afresh = super::tests::table();
            for batch in table.scan().expect("scan") {
                afresh.insert(batch).expect("insert");
            }
            // Rehashed on two threads, incrementally; against one thread, from scratch.
            let two = Split {
                threads: 2,
                min_per_thread: 1,
            };
            assert_eq!(
                table.digest_with(two).expect("digest"),
                afresh.digest().expect("digest"),
                "round {round}"
            );
        }
        assert!(table.row_count() > 50, "{}", table.row_count());
    }

    /// Compaction moves the same rows to the same places on any number of threads, and every
    /// index entry then points at its own row.
    #[test]
    fn compaction_is_the_same_on_any_number_of_threads() {
        let mut table = table();
        // Many small chunks, some rows of each deleted.
        for round in 0..40i64 {
            let keys: Vec<i64> = (0..30).map(|n| round * 1_000 + n * 7).collect();
            let values: Vec<String> = keys.iter().map(|k| format!("v{k}")).collect();
            let values: Vec<&str> = values.iter().map(String::as_str).collect();
            table.insert(rows(&table, &keys, &values)).expect("insert");
            let gone: Vec<RowLocation> = keys
                .iter()
                .step_by(3)
                .map(|k| table.locate(&key(*k)).expect("present"))
                .collect();
            table.delete(&gone).expect("delete");
        }
        let layout = |t: &Table| {
            let (chunks, next) = t.layout();
            let chunks: Vec<(u64, RecordBatch, Vec<bool>)> = chunks
                .map(|(id, batch, live)| (id, batch.clone(), live.iter().collect()))
                .collect();
            (chunks, next)
        };
        let mut serial = table.clone();
        serial.compact_with(Split::SERIAL).expect("compact");
        assert!(serial.chunk_count() < table.chunk_count());
        for threads in [2, 3, 8] {
            let mut parallel = table.clone();
            parallel
                .compact_with(Split {
                    threads,
                    min_per_thread: 1,
                })
                .expect("compact");
            assert_eq!(layout(&parallel), layout(&serial), "{threads} threads");
        }
        for batch in serial.scan_with_positions().expect("scan") {
            let keys = batch
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("keys");
            let positions = batch
                .column(batch.num_columns() - 1)
                .as_any()
                .downcast_ref::<UInt64Array>()
                .expect("positions");
            for row in 0..batch.num_rows() {
                assert_eq!(
                    serial.locate(&key(keys.value(row))),
                    Some(RowLocation::unpack(positions.value(row)))
                );
            }
        }
        assert_eq!(serial.row_count(), 40 * 20);
        assert_eq!(
            serial.clone().digest().expect("digest"),
            table.clone().digest().expect("digest")
        );
    }

    /// Changes taken back, latest first, leave the table as it was: the same rows, index,
    /// digest and next chunk; a refused change is taken back by itself.
    #[test]
    fn changes_taken_back_leave_the_table_as_it_was() {
        let split = Split {
            threads: 2,
            min_per_thread: 1,
        };
        let mut table = table();
        table
            .insert(rows(&table, &[1, 2, 3], &["a", "b", "c"]))
            .expect("insert");
        let digest = table.clone().digest().expect("digest");
        let scan = |t: &Table| format!("{:?}", t.scan().expect("scan"));
        let before = scan(&table);
        let next_chunk = table.next_chunk_id;

        // Key 1 changes value, key 2 goes, key 4 arrives; then key 4 changes and 5 arrives.
        let first = [
            table.locate(&key(1)).expect("1"),
            table.locate(&key(2)).expect("2"),
        ];
        let one = table
            .replace_undoable(&first, rows(&table, &[1, 4], &["A", "d"]), split)
            .expect("first change");
        let second = [table.locate(&key(4)).expect("4")];
        let two = table
            .replace_undoable(&second, rows(&table, &[4, 5], &["D", "e"]), split)
            .expect("second change");
        assert_ne!(table.clone().digest().expect("digest"), digest);
        assert!(table.locate(&key(2)).is_none());

        // A refused change (key 3 exists) leaves the two before it.
        let changed = table.clone().digest().expect("digest");
        let third = [table.locate(&key(5)).expect("5")];
        table
            .replace_undoable(&third, rows(&table, &[3], &["x"]), split)
            .expect_err("duplicate");
        assert_eq!(table.clone().digest().expect("digest"), changed);

        table.take_back(two);
        table.take_back(one);
        assert_eq!(scan(&table), before);
        assert_eq!(table.clone().digest().expect("digest"), digest);
        assert_eq!(table.next_chunk_id, next_chunk);
        assert_eq!(table.row_count(), 3);
        for k in [1, 2, 3] {
            let location = table.locate(&key(k)).expect("indexed again");
            assert!(table.row_at(location).is_some(), "key {k} points at a live row");
        }
        assert!(table.locate(&key(4)).is_none() && table.locate(&key(5)).is_none());
    }

    /// `replace` equals `delete` then `insert`: same rows, same digest; and a refused one
    /// changes nothing.
    #[test]
    fn replace_is_delete_then_insert() {
        let mut base = table();
        base.insert(rows(&base, &[1, 2, 3], &["a", "b", "c"]))
            .expect("insert");
        let moved = [base.locate(&key(1)).expect("1"), base.locate(&key(2)).expect("2")];
        let mut replaced = base.clone();
        // Key 1 keeps its row with a new value, key 2 goes, key 4 arrives.
        replaced
            .replace(
                &moved,
                rows(&base, &[1, 4], &["A", "d"]),
                Split {
                    threads: 2,
                    min_per_thread: 1,
                },
            )
            .expect("replace");
        let mut reference = base.clone();
        reference.delete(&moved).expect("delete");
        reference
            .insert(rows(&base, &[1, 4], &["A", "d"]))
            .expect("insert");
        assert_eq!(
            replaced.digest().expect("digest"),
            reference.digest().expect("digest")
        );
        assert_eq!(replaced.row_count(), 3);
        assert!(replaced.locate(&key(2)).is_none());

        // Key 3 exists and is not among the deleted rows: refused, nothing changed.
        let mut refused = base.clone();
        let before = refused.digest().expect("digest");
        let error = refused
            .replace(
                &moved,
                rows(&base, &[1, 3], &["x", "y"]),
                Split {
                    threads: 2,
                    min_per_thread: 1,
                },
            )
            .expect_err("duplicate");
        assert!(error.to_string().contains("duplicate key"), "{error}");
        assert_eq!(refused.digest().expect("digest"), before);
        assert!(refused.locate(&key(2)).is_some());
        // A location named twice is refused too.
        let error = refused
            .replace(
                &[moved[0], moved[0]],
                rows(&base, &[], &[]),
                Split {
                    threads: 2,
                    min_per_thread: 1,
                },
            )
            .expect_err("twice");
        assert!(matches!(error, Error::RowChangedTwice), "{error}");
        assert_eq!(refused.digest().expect("digest"), before);
        // Refusals found after some rows were indexed undo those rows: a key repeated within
        // the batch, and an existing key after a fresh one.
        let error = refused
            .replace(
                &moved,
                rows(&base, &[1, 5, 5], &["x", "y", "z"]),
                Split {
                    threads: 2,
                    min_per_thread: 1,
                },
            )
            .expect_err("repeated");
        assert!(error.to_string().contains("duplicate key"), "{error}");
        let error = refused
            .insert(rows(&base, &[6, 3], &["x", "y"]))
            .expect_err("existing");
        assert!(error.to_string().contains("duplicate key"), "{error}");
        assert_eq!(refused.digest().expect("digest"), before);
        assert_eq!(refused.locate(&key(1)), base.locate(&key(1)));
        assert!(refused.locate(&key(5)).is_none() && refused.locate(&key(6)).is_none());
        assert_eq!(refused.row_count(), 3);
    }
}
