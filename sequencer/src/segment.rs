//! Segment files: the on-disk format of one partition's log.
//!
//! A segment starts with a 32-byte header and holds records back to back:
//!
//! ```text
//! header: magic "CQLPOE\0\0" (8) | version u32 | partition u32 | first_seqno u64 | reserved u32 | crc32c u32
//! record: payload_len u32 | crc32c u32 | seqno u64 | payload
//! ```
//!
//! All integers are little-endian. A record's checksum covers its sequence number and payload, so
//! a record moved to another position, or a torn write, is detected.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::{Entry, Error, PartitionId, Result, SeqNo};

pub(crate) const MAGIC: [u8; 8] = *b"CQLPOE\0\0";
pub(crate) const FORMAT_VERSION: u32 = 1;
pub(crate) const HEADER_BYTES: u64 = 32;
pub(crate) const RECORD_HEADER_BYTES: usize = 16;

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

/// Appends the encoding of one record to `buffer`.
pub(crate) fn encode_record(buffer: &mut Vec<u8>, seqno: SeqNo, payload: &[u8]) {
    let length = u32::try_from(payload.len()).expect("payload length is bounded by the config");
    let crc = crc32c::crc32c_append(crc32c::crc32c(&seqno.to_le_bytes()), payload);
    buffer.extend_from_slice(&length.to_le_bytes());
    buffer.extend_from_slice(&crc.to_le_bytes());
    buffer.extend_from_slice(&seqno.to_le_bytes());
    buffer.extend_from_slice(payload);
}

/// What scanning a segment found.
#[derive(Debug)]
pub(crate) struct ScannedSegment {
    pub first_seqno: SeqNo,
    pub entries: Vec<Entry>,
    /// Offset just past the last valid record.
    pub valid_bytes: u64,
    /// Offset and reason of the first invalid record, if the file goes on past `valid_bytes`.
    pub invalid: Option<(u64, String)>,
}

/// Reads and checks a whole segment. Entries are returned only when `keep_entries` is set (a
/// recovery scan only needs the positions).
pub(crate) fn scan_segment(
    path: &Path,
    partition: PartitionId,
    record_bytes_max: usize,
    keep_entries: bool,
) -> Result<ScannedSegment> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut header = [0u8; HEADER_BYTES as usize];
    file.read_exact(&mut header).map_err(|_| Error::Corrupt {
        path: path.display().to_string(),
        offset: 0,
        reason: "the segment header is incomplete".into(),
    })?;
    let first_seqno = check_header(path, &header, partition)?;

    // Segments are bounded in size by the config, so reading one whole is bounded too.
    let mut data = Vec::with_capacity((file_len - HEADER_BYTES) as usize);
    file.read_to_end(&mut data).map_err(|e| Error::io(path, e))?;

    let mut entries = Vec::new();
    let mut offset = 0usize;
    let mut expected_seqno = first_seqno;
    let invalid = loop {
        if offset == data.len() {
            break None;
        }
        let at = HEADER_BYTES + offset as u64;
        if data.len() - offset < RECORD_HEADER_BYTES {
            break Some((at, "the record header is incomplete".to_string()));
        }
        let length = u32::from_le_bytes(data[offset..offset + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(data[offset + 4..offset + 8].try_into().expect("4 bytes"));
        let seqno = u64::from_le_bytes(data[offset + 8..offset + 16].try_into().expect("8 bytes"));
        if length > record_bytes_max {
            break Some((at, format!("record length {length} exceeds the limit {record_bytes_max}")));
        }
        let body_start = offset + RECORD_HEADER_BYTES;
        if data.len() - body_start < length {
            break Some((at, "the record is incomplete".to_string()));
        }
        let payload = &data[body_start..body_start + length];
        if crc32c::crc32c_append(crc32c::crc32c(&seqno.to_le_bytes()), payload) != crc {
            break Some((at, "checksum mismatch".to_string()));
        }
        if seqno != expected_seqno {
            break Some((at, format!("sequence number {seqno}, expected {expected_seqno}")));
        }
        if keep_entries {
            entries.push(Entry {
                partition,
                seqno,
                payload: payload.into(),
            });
        }
        expected_seqno += 1;
        offset = body_start + length;
    };
    Ok(ScannedSegment {
        first_seqno,
        entries,
        valid_bytes: HEADER_BYTES + offset as u64,
        invalid,
    })
}

fn check_header(path: &Path, header: &[u8], partition: PartitionId) -> Result<SeqNo> {
    let corrupt = |reason: String| Error::Corrupt {
        path: path.display().to_string(),
        offset: 0,
        reason,
    };
    if header[0..8] != MAGIC {
        return Err(corrupt("not a ChainQL log segment (bad magic)".into()));
    }
    let crc = u32::from_le_bytes(header[28..32].try_into().expect("4 bytes"));
    if crc32c::crc32c(&header[0..28]) != crc {
        return Err(corrupt("segment header checksum mismatch".into()));
    }
    let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            path: path.display().to_string(),
            version,
            supported: FORMAT_VERSION,
        });
    }
    let found = u32::from_le_bytes(header[12..16].try_into().expect("4 bytes"));
    if found != partition.0 {
        return Err(corrupt(format!(
            "segment belongs to partition {found}, found in the folder of partition {}",
            partition.0
        )));
    }
    Ok(u64::from_le_bytes(header[16..24].try_into().expect("8 bytes")))
}

/// An open segment that records are appended to.
#[derive(Debug)]
pub(crate) struct ActiveSegment {
    pub file: File,
    pub path: PathBuf,
    pub bytes: u64,
}

impl ActiveSegment {
    /// Creates a new segment file and makes its existence durable (file and directory fsync).
    pub fn create(dir: &Path, partition: PartitionId, first_seqno: SeqNo) -> Result<ActiveSegment> {
        let path = segment_path(dir, first_seqno);
        let mut file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        file.write_all(&encode_header(partition, first_seqno))
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io(&path, e))?;
        sync_dir(dir)?;
        Ok(ActiveSegment {
            file,
            path,
            bytes: HEADER_BYTES,
        })
    }

    /// Reopens an existing segment for appending, cutting it to `valid_bytes` first.
    pub fn reopen(path: PathBuf, valid_bytes: u64) -> Result<ActiveSegment> {
        let mut file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        if len != valid_bytes {
            file.set_len(valid_bytes)
                .and_then(|()| file.sync_all())
                .map_err(|e| Error::io(&path, e))?;
        }
        file.seek(SeekFrom::Start(valid_bytes))
            .map_err(|e| Error::io(&path, e))?;
        Ok(ActiveSegment {
            file,
            path,
            bytes: valid_bytes,
        })
    }

    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all(bytes)
            .map_err(|e| Error::io(&self.path, e))?;
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    pub fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(|e| Error::io(&self.path, e))
    }
}

/// Makes the creation or removal of files in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}
