//! Segment files: the on-disk format of one partition's log.
//!
//! A segment starts with a 32-byte header and holds records back to back:
//!
//! ```text
//! header: magic "CQLPOE\0\0" (8) | version u32 | partition u32 | first_seqno u64 | reserved u32 | crc32c u32
//! record: payload_len u32 | crc32c u32 | seqno u64 | epoch u64 | payload
//! ```
//!
//! All integers are little-endian. A record's checksum covers its sequence number, epoch and
//! payload, so a record moved to another position, or a torn write, is detected.

use std::path::{Path, PathBuf};

use crate::storage::Storage;
use crate::{Epoch, Error, PartitionId, Result, SeqNo};

pub(crate) const MAGIC: [u8; 8] = *b"CQLPOE\0\0";
/// Version 2 added the epoch to each record.
pub(crate) const FORMAT_VERSION: u32 = 2;
pub(crate) const HEADER_BYTES: u64 = 32;
pub(crate) const RECORD_HEADER_BYTES: usize = 24;
/// Bytes read from disk at a time when reading old entries.
const READ_CHUNK_BYTES: usize = 1 << 20;
/// A sparse index entry is kept every this many bytes of a segment.
pub(crate) const INDEX_INTERVAL_BYTES: u64 = 64 << 10;
/// When a bad record is found in the last segment, at most this many bytes after it are
/// searched for a valid record (which would make it corruption, not a torn tail).
const RESYNC_SCAN_BYTES_MAX: usize = 64 << 20;

/// The file name of the segment whose first record has `first_seqno`.
pub(crate) fn segment_path(dir: &Path, first_seqno: SeqNo) -> PathBuf {
    dir.join(format!("{first_seqno:020}.seg"))
}

pub(crate) fn encode_header(partition: PartitionId, first_seqno: SeqNo) -> [u8; HEADER_BYTES as usize] {
    let mut header = [0u8; HEADER_BYTES as usize];
    header[0..8].copy_from_slice(&MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[12..16].copy_from_slice(&partition.0.to_le_bytes());
    header[16..24].copy_from_slice(&first_seqno.to_le_bytes());
    let crc = crc32c::crc32c(&header[0..28]);
    header[28..32].copy_from_slice(&crc.to_le_bytes());
    header
}

fn record_crc(seqno: SeqNo, epoch: Epoch, payload: &[u8]) -> u32 {
    let mut fixed = [0u8; 16];
    fixed[0..8].copy_from_slice(&seqno.to_le_bytes());
    fixed[8..16].copy_from_slice(&epoch.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c(&fixed), payload)
}

/// Appends the encoding of one record to `buffer`.
pub(crate) fn encode_record(buffer: &mut Vec<u8>, seqno: SeqNo, epoch: Epoch, payload: &[u8]) {
    let length = u32::try_from(payload.len()).expect("payload length is bounded by the config");
    buffer.extend_from_slice(&length.to_le_bytes());
    buffer.extend_from_slice(&record_crc(seqno, epoch, payload).to_le_bytes());
    buffer.extend_from_slice(&seqno.to_le_bytes());
    buffer.extend_from_slice(&epoch.to_le_bytes());
    buffer.extend_from_slice(payload);
}

/// A record as read back.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Record<'a> {
    pub seqno: SeqNo,
    pub epoch: Epoch,
    pub payload: &'a [u8],
}

/// What parsing at an offset found.
#[derive(Debug)]
pub(crate) enum Parsed<'a> {
    /// A valid record and the offset just past it.
    Record(Record<'a>, usize),
    /// The bytes end before a whole record: more may come, or this is a torn tail.
    Incomplete,
    /// Not a valid record.
    Invalid(String),
}

fn u32_at(data: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(data: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(data[at..at + 8].try_into().expect("8 bytes"))
}

/// Parses the record at `offset` of `data`.
pub(crate) fn parse_record(data: &[u8], offset: usize, record_bytes_max: usize) -> Parsed<'_> {
    if data.len() - offset < RECORD_HEADER_BYTES {
        return Parsed::Incomplete;
    }
    let length = u32_at(data, offset) as usize;
    let crc = u32_at(data, offset + 4);
    let seqno = u64_at(data, offset + 8);
    let epoch = u64_at(data, offset + 16);
    if length > record_bytes_max {
        return Parsed::Invalid(format!(
            "record length {length} exceeds the limit {record_bytes_max}"
        ));
    }
    let start = offset + RECORD_HEADER_BYTES;
    if data.len() - start < length {
        return Parsed::Incomplete;
    }
    let payload = &data[start..start + length];
    if record_crc(seqno, epoch, payload) != crc {
        return Parsed::Invalid("checksum mismatch".into());
    }
    Parsed::Record(
        Record {
            seqno,
            epoch,
            payload,
        },
        start + length,
    )
}

/// Checks a segment header and returns the segment's first sequence number.
pub(crate) fn check_header(path: &Path, header: &[u8], partition: PartitionId) -> Result<SeqNo> {
    let corrupt = |reason: String| Error::Corrupt {
        path: path.display().to_string(),
        offset: 0,
        reason,
    };
    if header.len() < HEADER_BYTES as usize {
        return Err(corrupt("the segment header is incomplete".into()));
    }
    if header[0..8] != MAGIC {
        return Err(corrupt("not a ChainQL log segment (bad magic)".into()));
    }
    if crc32c::crc32c(&header[0..28]) != u32_at(header, 28) {
        return Err(corrupt("segment header checksum mismatch".into()));
    }
    let version = u32_at(header, 8);
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            path: path.display().to_string(),
            version,
            supported: FORMAT_VERSION,
        });
    }
    let found = u32_at(header, 12);
    if found != partition.0 {
        return Err(corrupt(format!(
            "segment belongs to partition {found}, found in the folder of partition {}",
            partition.0
        )));
    }
    Ok(u64_at(header, 16))
}

/// One segment as recovery found it.
#[derive(Debug)]
pub(crate) struct ScannedSegment {
    pub first_seqno: SeqNo,
    /// The valid records: (seqno, epoch, payload).
    pub records: Vec<(SeqNo, Epoch, Vec<u8>)>,
    /// Offset just past the last valid record.
    pub valid_bytes: u64,
    /// Sparse (seqno, offset) index of the valid records.
    pub index: Vec<(SeqNo, u64)>,
    /// The first invalid record after `valid_bytes`: its offset and what was wrong.
    pub invalid: Option<(u64, String)>,
    /// Whether a valid record follows the invalid one (which makes it corruption, not a tear).
    pub valid_after_invalid: bool,
}

/// Reads and checks a whole segment.
pub(crate) fn scan_segment(
    storage: &dyn Storage,
    path: &Path,
    partition: PartitionId,
    record_bytes_max: usize,
    segment_bytes_max: u64,
) -> Result<ScannedSegment> {
    let len = storage.len(path).map_err(|e| Error::io(path, e))?;
    if len > segment_bytes_max.saturating_mul(2) {
        return Err(Error::Corrupt {
            path: path.display().to_string(),
            offset: 0,
            reason: format!("segment is {len} bytes, far over the {segment_bytes_max}-byte segment size"),
        });
    }
    let data = storage
        .read_at(path, 0, len as usize)
        .map_err(|e| Error::io(path, e))?;
    let first_seqno = check_header(path, &data, partition)?;
    let mut records = Vec::new();
    let mut index = Vec::new();
    let mut offset = HEADER_BYTES as usize;
    let mut next_index_at = 0u64;
    let mut expected = first_seqno;
    let mut last_epoch = 0;
    let invalid = loop {
        if offset == data.len() {
            break None;
        }
        match parse_record(&data, offset, record_bytes_max) {
            Parsed::Record(record, next) => {
                if record.seqno != expected {
                    break Some((
                        offset as u64,
                        format!("sequence number {}, expected {expected}", record.seqno),
                    ));
                }
                if record.epoch < last_epoch {
                    break Some((
                        offset as u64,
                        format!("epoch {} after epoch {last_epoch}", record.epoch),
                    ));
                }
                if offset as u64 >= next_index_at {
                    index.push((record.seqno, offset as u64));
                    next_index_at = offset as u64 + INDEX_INTERVAL_BYTES;
                }
                records.push((record.seqno, record.epoch, record.payload.to_vec()));
                last_epoch = record.epoch;
                expected += 1;
                offset = next;
            }
            Parsed::Incomplete => break Some((offset as u64, "the record is incomplete".to_string())),
            Parsed::Invalid(reason) => break Some((offset as u64, reason)),
        }
    };
    let valid_after_invalid = match &invalid {
        Some((at, _)) => any_valid_record_after(&data, *at as usize + 1, expected, record_bytes_max),
        None => false,
    };
    Ok(ScannedSegment {
        first_seqno,
        records,
        valid_bytes: offset as u64,
        index,
        invalid,
        valid_after_invalid,
    })
}

/// Whether a valid record with a sequence number at or after `expected` starts anywhere from
/// `from` on. A torn write leaves only garbage after the tear; finding a whole, checksummed
/// record there means the damage is in the middle of the log.
fn any_valid_record_after(data: &[u8], from: usize, expected: SeqNo, record_bytes_max: usize) -> bool {
    let end = data.len().min(from.saturating_add(RESYNC_SCAN_BYTES_MAX));
    let mut at = from;
    while at + RECORD_HEADER_BYTES <= end {
        let seqno = u64_at(data, at + 8);
        let plausible = seqno >= expected && seqno - expected < 1 << 32;
        if plausible && let Parsed::Record(..) = parse_record(&data[..end], at, record_bytes_max) {
            return true;
        }
        at += 1;
    }
    false
}

/// Reads records of one segment sequentially from an offset, a chunk at a time.
#[derive(Debug)]
pub(crate) struct SegmentReader {
    path: PathBuf,
    /// File offset of `buffer[0]`.
    base: u64,
    buffer: Vec<u8>,
    position: usize,
    /// Bytes of the file known to hold whole, durable records.
    end: u64,
    record_bytes_max: usize,
}

impl SegmentReader {
    pub fn new(path: PathBuf, offset: u64, end: u64, record_bytes_max: usize) -> SegmentReader {
        SegmentReader {
            path,
            base: offset,
            buffer: Vec::new(),
            position: 0,
            end,
            record_bytes_max,
        }
    }

    /// The next record, or `None` at the end of the durable part of the segment.
    pub fn next(&mut self, storage: &dyn Storage) -> Result<Option<(SeqNo, Epoch, Vec<u8>)>> {
        loop {
            let at = self.base + self.position as u64;
            if at >= self.end {
                return Ok(None);
            }
            match parse_record(&self.buffer, self.position, self.record_bytes_max) {
                Parsed::Record(record, next) => {
                    let out = (record.seqno, record.epoch, record.payload.to_vec());
                    self.position = next;
                    return Ok(Some(out));
                }
                Parsed::Incomplete => {
                    // Refill: keep the unread bytes, read the next chunk after them.
                    let unread = self.buffer.split_off(self.position);
                    self.base += self.position as u64;
                    self.position = 0;
                    let want = READ_CHUNK_BYTES.max(RECORD_HEADER_BYTES + self.record_bytes_max);
                    let read_from = self.base + unread.len() as u64;
                    let length = (self.end.saturating_sub(read_from) as usize).min(want);
                    if length == 0 {
                        return Err(Error::Corrupt {
                            path: self.path.display().to_string(),
                            offset: self.base,
                            reason: "a record runs past the durable end of the segment".into(),
                        });
                    }
                    let more = storage
                        .read_at(&self.path, read_from, length)
                        .map_err(|e| Error::io(&self.path, e))?;
                    if more.is_empty() {
                        return Err(Error::Corrupt {
                            path: self.path.display().to_string(),
                            offset: read_from,
                            reason: "the segment is shorter than recorded".into(),
                        });
                    }
                    self.buffer = unread;
                    self.buffer.extend_from_slice(&more);
                }
                Parsed::Invalid(reason) => {
                    return Err(Error::Corrupt {
                        path: self.path.display().to_string(),
                        offset: at,
                        reason,
                    });
                }
            }
        }
    }
}
