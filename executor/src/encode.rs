//! Byte encodings of values: primary keys (bucketed and order-preserving within a bucket, for the
//! index) and rows (canonical, for the state root).
//!
//! Both depend only on the values, never on how rows are laid out in Arrow chunks, so two nodes
//! that reached the same table contents by different histories hash them identically.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type,
    TimeUnit, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType,
};

use crate::{Error, Result};

/// An encoded primary key: the key's bucket (two bytes, big-endian), then the order-preserving
/// encoding of its values. Keys sort by bucket, and within a bucket in the SQL order of their
/// values.
///
/// The first eight bytes are also kept as a big-endian integer (zero-padded), and keys compare
/// by it before their bytes. The order is the bytes' order, but a search through the index
/// decides most comparisons without reading the rest of a key.
///
/// Keys of up to [`KEY_INLINE`] bytes (an integer, a 20-byte address as hex text) are stored in
/// place, so copying an index node (as a write to a shared, persistent index does) is one
/// memory copy, with no reference counts to touch in memory the copy does not otherwise read.
#[derive(Clone)]
pub struct Key {
    head: u64,
    bytes: KeyBytes,
}

/// The longest key stored in place.
const KEY_INLINE: usize = 46;

#[derive(Clone)]
enum KeyBytes {
    Inline { len: u8, bytes: [u8; KEY_INLINE] },
    Shared(Arc<[u8]>),
}

impl Key {
    pub fn new(bytes: &[u8]) -> Key {
        let mut head = [0u8; 8];
        let n = bytes.len().min(8);
        head[..n].copy_from_slice(&bytes[..n]);
        let stored = if bytes.len() <= KEY_INLINE {
            let mut inline = [0u8; KEY_INLINE];
            inline[..bytes.len()].copy_from_slice(bytes);
            KeyBytes::Inline {
                len: bytes.len() as u8,
                bytes: inline,
            }
        } else {
            KeyBytes::Shared(bytes.into())
        };
        Key {
            head: u64::from_be_bytes(head),
            bytes: stored,
        }
    }

    fn bytes(&self) -> &[u8] {
        match &self.bytes {
            KeyBytes::Inline { len, bytes } => &bytes[..*len as usize],
            KeyBytes::Shared(bytes) => bytes,
        }
    }
}

impl From<&[u8]> for Key {
    fn from(bytes: &[u8]) -> Key {
        Key::new(bytes)
    }
}

impl std::ops::Deref for Key {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.bytes()
    }
}

impl std::borrow::Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.bytes()
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Key) -> std::cmp::Ordering {
        // Zero padding sorts before every byte, so unequal heads order as the bytes do.
        self.head
            .cmp(&other.head)
            .then_with(|| self.bytes().cmp(other.bytes()))
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.head == other.head && self.bytes() == other.bytes()
    }
}

impl Eq for Key {}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bytes().hash(state)
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(")?;
        for byte in self.bytes() {
            write!(f, "{byte:02x}")?;
        }
        f.write_str(")")
    }
}

/// Rows of a table are spread over this many buckets by a hash of their key's values: the table
/// digest is a Merkle tree over buckets, so a write rehashes only the buckets it touches.
pub const KEY_BUCKETS: u16 = 4096;

/// The bucket of the encoded key values `values`: the top bits of their [`mixed_fnv`] hash.
/// Part of the state root's definition, so fixed: the same on every machine.
fn bucket_of(values: &[u8]) -> u16 {
    (mixed_fnv(&[values]) >> (64 - KEY_BUCKETS.trailing_zeros())) as u16
}

/// The 64-bit FNV-1a hash of the concatenated `parts`, mixed by MurmurHash3's finalizer so that
/// inputs differing only in their last bytes (sequential integers) differ in every bit.
fn mixed_fnv(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &byte in *part {
            hash ^= byte as u64;
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fmix64(hash)
}

/// MurmurHash3's 64-bit finalizer: every input bit affects every output bit.
pub(crate) fn fmix64(mut hash: u64) -> u64 {
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

/// The bucket of an encoded key.
pub fn key_bucket(key: &[u8]) -> u16 {
    u16::from_be_bytes([key[0], key[1]])
}

/// Appends the order-preserving encoding of `column[row]` to `out`. Key columns are never null.
fn encode_key_value(out: &mut Vec<u8>, column: &ArrayRef, row: usize) -> Result<()> {
    // Signed integers: big-endian with the sign bit flipped, so byte order is numeric order.
    macro_rules! signed {
        ($t:ty, $unsigned:ty) => {{
            let v = column.as_primitive::<$t>().value(row);
            let flipped = (v as $unsigned) ^ (1 << (<$unsigned>::BITS - 1));
            out.extend_from_slice(&flipped.to_be_bytes());
        }};
    }
    match column.data_type() {
        DataType::Boolean => out.push(column.as_boolean().value(row) as u8),
        DataType::Int16 => signed!(Int16Type, u16),
        DataType::Int32 => signed!(Int32Type, u32),
        DataType::Int64 => signed!(Int64Type, u64),
        DataType::Date32 => signed!(Date32Type, u32),
        DataType::Decimal128(_, _) => signed!(Decimal128Type, u128),
        DataType::Timestamp(TimeUnit::Second, _) => signed!(TimestampSecondType, u64),
        DataType::Timestamp(TimeUnit::Millisecond, _) => signed!(TimestampMillisecondType, u64),
        DataType::Timestamp(TimeUnit::Microsecond, _) => signed!(TimestampMicrosecondType, u64),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => signed!(TimestampNanosecondType, u64),
        DataType::Utf8 => escape_bytes(out, column.as_string::<i32>().value(row).as_bytes()),
        DataType::Binary => escape_bytes(out, column.as_binary::<i32>().value(row)),
        other => return Err(Error::Internal(format!("{other} cannot be part of a key"))),
    }
    Ok(())
}

/// Byte strings: 0x00 is escaped as 0x00 0xFF and the value ends with 0x00 0x01, so a prefix sorts
/// before its extensions and a multi-column key never runs one value into the next.
fn escape_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xff);
        }
    }
    out.extend_from_slice(&[0, 1]);
}

/// The key of `row`, from the `key_columns` of `batch`.
pub fn encode_key(batch: &RecordBatch, key_columns: &[usize], row: usize) -> Result<Key> {
    let mut out = Vec::with_capacity(48);
    out.extend_from_slice(&[0, 0]);
    for &c in key_columns {
        encode_key_value(&mut out, batch.column(c), row)?;
    }
    let bucket = bucket_of(&out[2..]);
    out[..2].copy_from_slice(&bucket.to_be_bytes());
    Ok(Key::new(&out))
}

/// Renders the key values of `row` for error messages: `(id)=(5)`.
pub fn describe_key(batch: &RecordBatch, key_columns: &[usize], row: usize) -> String {
    let names: Vec<String> = key_columns
        .iter()
        .map(|&c| batch.schema().field(c).name().clone())
        .collect();
    let values: Vec<String> = key_columns
        .iter()
        .map(|&c| {
            datafusion::arrow::util::display::array_value_to_string(batch.column(c), row)
                .unwrap_or_else(|_| "?".into())
        })
        .collect();
    format!("({})=({})", names.join(", "), values.join(", "))
}

/// Appends the canonical encoding of `column[row]`: a null flag, then the value in a fixed-width
/// little-endian form or, for variable-length values, a u32 length and the bytes.
pub fn encode_value(out: &mut Vec<u8>, column: &ArrayRef, row: usize) -> Result<()> {
    if column.is_null(row) {
        out.push(0);
        return Ok(());
    }
    out.push(1);
    macro_rules! fixed {
        ($t:ty) => {
            out.extend_from_slice(&column.as_primitive::<$t>().value(row).to_le_bytes())
        };
    }
    match column.data_type() {
        DataType::Boolean => out.push(column.as_boolean().value(row) as u8),
        DataType::Int16 => fixed!(Int16Type),
        DataType::Int32 => fixed!(Int32Type),
        DataType::Int64 => fixed!(Int64Type),
        DataType::Date32 => fixed!(Date32Type),
        DataType::Decimal128(_, _) => fixed!(Decimal128Type),
        DataType::Timestamp(TimeUnit::Second, _) => fixed!(TimestampSecondType),
        DataType::Timestamp(TimeUnit::Millisecond, _) => fixed!(TimestampMillisecondType),
        DataType::Timestamp(TimeUnit::Microsecond, _) => fixed!(TimestampMicrosecondType),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => fixed!(TimestampNanosecondType),
        // One NaN bit pattern, so equal-looking values hash equally.
        DataType::Float32 => {
            let v = column.as_primitive::<Float32Type>().value(row);
            let v = if v.is_nan() { f32::NAN } else { v };
            out.extend_from_slice(&v.to_bits().to_le_bytes());
        }
        DataType::Float64 => {
            let v = column.as_primitive::<Float64Type>().value(row);
            let v = if v.is_nan() { f64::NAN } else { v };
            out.extend_from_slice(&v.to_bits().to_le_bytes());
        }
        DataType::Utf8 => length_prefixed(out, column.as_string::<i32>().value(row).as_bytes()),
        DataType::Binary => length_prefixed(out, column.as_binary::<i32>().value(row)),
        other => return Err(Error::Internal(format!("no canonical encoding for {other}"))),
    }
    Ok(())
}

fn length_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};

    /// Within a bucket, key order is value order (compared here without the bucket prefix).
    #[test]
    fn key_order_is_value_order() {
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![-5, -1, 0, 1, 300, i64::MIN, i64::MAX]));
        let texts: ArrayRef = Arc::new(StringArray::from(vec!["", "a", "a\0", "ab", "b", "B", "ba"]));
        let schema = Arc::new(Schema::new(vec![
            Field::new("i", DataType::Int64, false),
            Field::new("t", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(schema, vec![ints.clone(), texts.clone()]).expect("batch");
        let values = |key: Key| -> Key { Key::from(&key[2..]) };
        let int_keys: Vec<Key> = (0..7)
            .map(|r| values(encode_key(&batch, &[0], r).expect("key")))
            .collect();
        let mut sorted: Vec<i64> = ints.as_primitive::<Int64Type>().values().to_vec();
        sorted.sort();
        let mut by_key: Vec<(Key, i64)> = int_keys
            .into_iter()
            .zip(ints.as_primitive::<Int64Type>().values().iter().copied())
            .collect();
        by_key.sort();
        assert_eq!(by_key.into_iter().map(|(_, v)| v).collect::<Vec<_>>(), sorted);

        let mut text_keys: Vec<(Key, String)> = (0..7)
            .map(|r| {
                (
                    values(encode_key(&batch, &[1], r).expect("key")),
                    texts.as_string::<i32>().value(r).to_string(),
                )
            })
            .collect();
        text_keys.sort();
        let mut expected: Vec<String> = texts
            .as_string::<i32>()
            .iter()
            .flatten()
            .map(String::from)
            .collect();
        expected.sort();
        assert_eq!(
            text_keys.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
            expected
        );
        assert_eq!(describe_key(&batch, &[0, 1], 1), "(i, t)=(-1, a)");
    }

    #[test]
    fn composite_keys_do_not_run_together() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Utf8, false),
            Field::new("b", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["ab", "a"])),
                Arc::new(StringArray::from(vec!["c", "bc"])),
            ],
        )
        .expect("batch");
        assert_ne!(
            encode_key(&batch, &[0, 1], 0).expect("key"),
            encode_key(&batch, &[0, 1], 1).expect("key")
        );
    }

    /// Buckets are part of the state root: pinned, so a change to the hash fails here first.
    #[test]
    fn buckets_are_fixed() {
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("i", DataType::Int64, false),
                Field::new("t", DataType::Utf8, false),
            ])),
            vec![
                Arc::new(Int64Array::from(vec![0, 1, 2, 1_000_000])),
                Arc::new(StringArray::from(vec!["", "a", "0xab", "carol"])),
            ],
        )
        .expect("batch");
        let buckets = |column: usize| -> Vec<u16> {
            (0..4)
                .map(|r| key_bucket(&encode_key(&batch, &[column], r).expect("key")))
                .collect()
        };
        assert!(buckets(0).iter().chain(&buckets(1)).all(|b| *b < KEY_BUCKETS));
        assert_eq!(buckets(0), vec![1989, 2883, 2596, 1875], "pinned values");
        assert_eq!(buckets(1), vec![983, 3008, 122, 34], "pinned values");
        // Sequential keys spread: 10,000 of them fill about 91% of the buckets.
        let sequential = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("i", DataType::Int64, false)])),
            vec![Arc::new(Int64Array::from_iter_values(0..10_000))],
        )
        .expect("batch");
        let used: std::collections::BTreeSet<u16> = (0..10_000)
            .map(|r| key_bucket(&encode_key(&sequential, &[0], r).expect("key")))
            .collect();
        assert!(used.len() > 3_500, "{} buckets used", used.len());
    }

    /// The inline head must never change the order: keys compare exactly as their bytes do,
    /// including prefixes, zero bytes and strings shorter than the head.
    #[test]
    fn keys_compare_as_their_bytes() {
        let mut strings: Vec<Vec<u8>> = vec![vec![], vec![0], vec![0, 0], vec![1], vec![0, 1]];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..400 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Short keys, and keys around the longest stored in place.
            let len = match state % 3 {
                0 => (state >> 8) as usize % 13,
                _ => KEY_INLINE - 4 + (state >> 8) as usize % 9,
            };
            // Few distinct byte values (zero, one, and a run of ones), so keys often share heads
            // and differ late.
            strings.push(
                (0..len)
                    .map(|i| {
                        if i < 8 {
                            ((state >> (i * 3)) % 2) as u8
                        } else {
                            ((state >> (i % 60)) % 2) as u8
                        }
                    })
                    .collect(),
            );
        }
        for a in &strings {
            for b in &strings {
                let (ka, kb) = (Key::from(&a[..]), Key::from(&b[..]));
                assert_eq!(ka.cmp(&kb), a.cmp(b), "{a:?} vs {b:?}");
                assert_eq!(ka == kb, a == b);
            }
        }
    }
}
