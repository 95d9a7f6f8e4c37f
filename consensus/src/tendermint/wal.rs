//! A validator's consensus write-ahead log: the core's inputs of the current height, made
//! durable before anything they lead to leaves the node. After a crash, replaying them
//! re-derives exactly the votes the validator had sent, so it never signs a conflicting one.
//!
//! One file holds one height:
//!
//! ```text
//! header: magic "CQLWAL\0\0" (8) | version u32 | height u64 | crc32c of the first 20 bytes u32
//! record: length u32 | crc32c(payload) u32 | payload (a `WalEntry`, consensus.proto)
//! ```
//!
//! Appends are written and then made durable together by [`Wal::sync`], which the host calls
//! before a message leaves the node: an entry only has to be durable once someone else may have
//! seen what it led to. A new height replaces the file atomically (write aside, rename); its
//! header becomes durable with the first sync, so a validator that never sends anything (one
//! alone on its chain) never waits for this log. A file too short to hold a header, or all
//! zeros, was never synced and starts afresh. On open, a torn last record is cut off; damage
//! before the last record is refused with the offset named.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use malachite_core_consensus::Input;

use super::codec::{self, CodecError, PROPOSED_BLOCK_BYTES_MAX, WalRecord};
use super::context::{ChainContext, Height};

const MAGIC: &[u8; 8] = b"CQLWAL\0\0";
const VERSION: u32 = 1;
const HEADER_BYTES: usize = 24;
const RECORD_HEADER_BYTES: usize = 8;
/// The longest record: a block beside its proposal, with room for its envelope.
const RECORD_BYTES_MAX: usize = PROPOSED_BLOCK_BYTES_MAX + 64;

/// Why the log cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Damaged { path: PathBuf, reason: String },
    #[error("{path}: record at offset {offset}: {source}")]
    Entry {
        path: PathBuf,
        offset: u64,
        #[source]
        source: CodecError,
    },
    #[error("cannot log this input: {0}")]
    NotLogged(#[from] CodecError),
}

type Result<T> = std::result::Result<T, WalError>;

/// An open write-ahead log.
#[derive(Debug)]
pub struct Wal {
    path: PathBuf,
    file: File,
    height: Height,
    entries: usize,
    /// The file's length after the last whole record.
    length: u64,
    /// Created since the last sync: the next sync makes its header and name durable too.
    fresh: bool,
}

impl Wal {
    /// Opens the log at `path`, creating it for `height` if it does not exist. Returns the log
    /// and the records it holds for its height (to replay when that is the height to resume).
    pub fn open(path: &Path, height: Height) -> Result<(Wal, Vec<WalRecord>)> {
        if !path.exists() {
            let wal = Wal::create(path, height)?;
            return Ok((wal, Vec::new()));
        }
        let io = |source| WalError::Io {
            path: path.to_path_buf(),
            source,
        };
        let damaged = |reason: String| WalError::Damaged {
            path: path.to_path_buf(),
            reason,
        };
        let mut file = OpenOptions::new().read(true).write(true).open(path).map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        if bytes.len() < HEADER_BYTES || bytes.iter().all(|b| *b == 0) {
            // The header is written with the first sync: nothing in this file was ever synced,
            // so nothing it led to left the node.
            tracing::warn!(path = %path.display(), bytes = bytes.len(), "starting a never-synced consensus log afresh");
            return Ok((Wal::create(path, height)?, Vec::new()));
        }
        if &bytes[0..8] != MAGIC {
            return Err(damaged("not a consensus write-ahead log".into()));
        }
        let version = u32::from_be_bytes(bytes[8..12].try_into().unwrap_or_default());
        if version != VERSION {
            return Err(damaged(format!(
                "format version {version}; this node reads {VERSION}"
            )));
        }
        let crc = u32::from_be_bytes(bytes[20..24].try_into().unwrap_or_default());
        if crc32c::crc32c(&bytes[0..20]) != crc {
            return Err(damaged("the header's checksum does not match".into()));
        }
        let stored = Height(u64::from_be_bytes(bytes[12..20].try_into().unwrap_or_default()));
        let mut entries = Vec::new();
        let mut offset = HEADER_BYTES;
        while offset < bytes.len() {
            let rest = &bytes[offset..];
            let torn = |what: &str| format!("{what} at offset {offset}");
            if rest.len() < RECORD_HEADER_BYTES {
                break; // a torn record header at the end
            }
            if rest.iter().all(|b| *b == 0) {
                break; // space the file system gave the file but the write never filled
            }
            let length = u32::from_be_bytes(rest[0..4].try_into().unwrap_or_default()) as usize;
            let crc = u32::from_be_bytes(rest[4..8].try_into().unwrap_or_default());
            if length == 0 || length > RECORD_BYTES_MAX {
                // A torn append leaves a prefix of a good record, never a bad length.
                return Err(damaged(torn("an impossible record length")));
            }
            let end = offset + RECORD_HEADER_BYTES + length;
            if end > bytes.len() {
                // The last record was cut short, unless the length itself is damaged and good
                // records follow: cutting those would forget votes already sent.
                if later_record(&bytes, offset + 1) {
                    return Err(damaged(torn("a record length that runs past good records")));
                }
                break;
            }
            let payload = &bytes[offset + RECORD_HEADER_BYTES..end];
            if crc32c::crc32c(payload) != crc {
                if end == bytes.len() {
                    break; // the last record was torn
                }
                return Err(damaged(torn("a record whose checksum does not match")));
            }
            let entry = codec::decode_wal_record(payload).map_err(|source| WalError::Entry {
                path: path.to_path_buf(),
                offset: offset as u64,
                source,
            })?;
            entries.push(entry);
            offset = end;
        }
        if offset < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                cut = bytes.len() - offset,
                "cut a torn record off the consensus log"
            );
            file.set_len(offset as u64).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        file.seek(SeekFrom::End(0)).map_err(io)?;
        let mut wal = Wal {
            path: path.to_path_buf(),
            file,
            height: stored,
            entries: entries.len(),
            length: offset as u64,
            fresh: false,
        };
        if stored > height {
            // Votes of a height the node has not reached: its committed blocks were lost, and
            // starting afresh could sign against what it already sent.
            return Err(damaged(format!(
                "the log is for height {}, above the height {} to resume; the block store is behind it",
                stored.0, height.0
            )));
        }
        if stored < height {
            // The log's height is decided: its entries are of no use to the next.
            wal.reset(height)?;
            entries.clear();
        }
        Ok((wal, entries))
    }

    fn create(path: &Path, height: Height) -> Result<Wal> {
        let io = |source| WalError::Io {
            path: path.to_path_buf(),
            source,
        };
        let aside = path.with_extension("new");
        let mut file = File::create(&aside).map_err(io)?;
        file.write_all(&header(height)).map_err(io)?;
        std::fs::rename(&aside, path).map_err(io)?;
        let file = OpenOptions::new().append(true).open(path).map_err(io)?;
        Ok(Wal {
            path: path.to_path_buf(),
            file,
            height,
            entries: 0,
            length: HEADER_BYTES as u64,
            fresh: true,
        })
    }

    /// The height the log is for.
    pub fn height(&self) -> Height {
        self.height
    }

    /// Entries written for this height.
    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Starts the log afresh for `height` (the previous height is decided).
    pub fn reset(&mut self, height: Height) -> Result<()> {
        *self = Wal::create(&self.path, height)?;
        Ok(())
    }

    /// Writes an entry; it is durable after the next [`Wal::sync`].
    pub fn append(&mut self, input: &Input<ChainContext>) -> Result<()> {
        self.write_record(&codec::encode_wal_entry(input)?)
    }

    /// Writes an encoded block (see [`WalRecord::Block`]); durable after the next sync.
    pub fn append_block(&mut self, block: &[u8]) -> Result<()> {
        self.write_record(&codec::encode_wal_block(block)?)
    }

    fn write_record(&mut self, payload: &[u8]) -> Result<()> {
        let mut record = Vec::with_capacity(RECORD_HEADER_BYTES + payload.len());
        record.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        record.extend_from_slice(&crc32c::crc32c(payload).to_be_bytes());
        record.extend_from_slice(payload);
        if let Err(source) = self.file.write_all(&record) {
            // Leave no partial record for later ones to land behind.
            let _ = self.file.set_len(self.length);
            let _ = self.file.seek(SeekFrom::Start(self.length));
            return Err(WalError::Io {
                path: self.path.clone(),
                source,
            });
        }
        self.length += record.len() as u64;
        self.entries += 1;
        Ok(())
    }

    /// Makes every entry written so far durable (with the file's header and name, the first
    /// time after the file was created).
    pub fn sync(&mut self) -> Result<()> {
        let io = |source| WalError::Io {
            path: self.path.clone(),
            source,
        };
        if self.fresh {
            self.file.sync_all().map_err(io)?;
            if let Some(dir) = self.path.parent() {
                File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
            }
            self.fresh = false;
            return Ok(());
        }
        self.file.sync_data().map_err(io)
    }
}

/// Whether a whole record with a good checksum starts anywhere from `from` on.
fn later_record(bytes: &[u8], from: usize) -> bool {
    (from..bytes.len().saturating_sub(RECORD_HEADER_BYTES)).any(|at| {
        let length = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_be_bytes(bytes[at + 4..at + 8].try_into().unwrap_or_default());
        let end = at + RECORD_HEADER_BYTES + length;
        length > 0
            && length <= RECORD_BYTES_MAX
            && end <= bytes.len()
            && crc32c::crc32c(&bytes[at + RECORD_HEADER_BYTES..end]) == crc
    })
}

fn header(height: Height) -> [u8; HEADER_BYTES] {
    let mut header = [0u8; HEADER_BYTES];
    header[0..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&VERSION.to_be_bytes());
    header[12..20].copy_from_slice(&height.0.to_be_bytes());
    let crc = crc32c::crc32c(&header[0..20]);
    header[20..24].copy_from_slice(&crc.to_be_bytes());
    header
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tendermint::context::{Validator, ValidatorSet};
    use crate::tendermint::engine::{Engine, Output};
    use chainql::{Hash, Keypair};
    use malachite_core_types::LinearTimeouts;

    fn inputs(records: Vec<WalRecord>) -> Vec<Input<ChainContext>> {
        records
            .into_iter()
            .map(|r| match r {
                WalRecord::Input(input) => input,
                WalRecord::Block(_) => panic!("no blocks were logged"),
            })
            .collect()
    }

    fn engine(key: &Keypair) -> Engine {
        let validator = Validator::new(key.public_key().to_bytes(), 10).expect("key");
        let set = ValidatorSet::new(vec![validator]).expect("set");
        Engine::new(
            ChainContext::new("wal"),
            key.clone(),
            set,
            LinearTimeouts::default(),
            Height(1),
        )
    }

    /// A single validator deciding height 1: its log entries, and the block it decided.
    fn decide_height_one(key: &Keypair) -> (Vec<Input<ChainContext>>, Hash) {
        let mut engine = engine(key);
        let mut outputs = engine.start();
        let block = Hash([4; 32]);
        outputs.extend(engine.propose(Height(1), malachite_core_types::Round::new(0), block));
        let entries = outputs
            .into_iter()
            .filter_map(|o| match o {
                Output::Wal(Height(1), input) => Some(input),
                _ => None,
            })
            .collect();
        (entries, block)
    }

    #[test]
    fn entries_survive_a_reopen_and_a_replay_decides_the_same_block() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("consensus.wal");
        let key = Keypair::from_seed([3; 32]);
        let (entries, block) = decide_height_one(&key);
        assert!(entries.len() >= 3, "proposal, prevote, precommit: {entries:?}");
        let (mut wal, found) = Wal::open(&path, Height(1)).expect("create");
        assert!(found.is_empty());
        for entry in &entries {
            wal.append(entry).expect("append");
        }
        wal.sync().expect("sync");
        drop(wal);

        let (wal, found) = Wal::open(&path, Height(1)).expect("reopen");
        let found = inputs(found);
        assert_eq!(found, entries);
        assert_eq!(wal.len(), entries.len());

        // A fresh engine replaying the log comes to the same decision, signing nothing new.
        let mut restarted = engine(&key);
        let outputs = restarted.replay(found);
        let decided: Vec<Hash> = outputs
            .iter()
            .filter_map(|o| match o {
                Output::Decided { block, .. } => Some(*block),
                _ => None,
            })
            .collect();
        assert_eq!(decided, [block]);
        assert!(!outputs.iter().any(|o| matches!(o, Output::Wal(..))));
    }

    #[test]
    fn a_torn_tail_is_cut_and_damage_before_it_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("consensus.wal");
        let key = Keypair::from_seed([3; 32]);
        let (entries, _) = decide_height_one(&key);
        let (mut wal, _) = Wal::open(&path, Height(1)).expect("create");
        for entry in &entries {
            wal.append(entry).expect("append");
        }
        wal.sync().expect("sync");
        drop(wal);
        let full = std::fs::read(&path).expect("read");

        // Every cut inside the last record loses that record only.
        let last_start = {
            let mut offset = HEADER_BYTES;
            let mut starts = Vec::new();
            while offset < full.len() {
                starts.push(offset);
                let length = u32::from_be_bytes(full[offset..offset + 4].try_into().expect("4")) as usize;
                offset += RECORD_HEADER_BYTES + length;
            }
            *starts.last().expect("records")
        };
        for cut in [1, 5, full.len() - last_start - 1] {
            std::fs::write(&path, &full[..full.len() - cut]).expect("write");
            let (_, found) = Wal::open(&path, Height(1)).expect("a torn tail is cut");
            assert_eq!(inputs(found), entries[..entries.len() - 1], "cut {cut}");
            assert_eq!(std::fs::metadata(&path).expect("meta").len() as usize, last_start);
        }

        // A flipped byte in the first record, with records after it: refused, naming the offset.
        let mut damaged = full.clone();
        damaged[HEADER_BYTES + RECORD_HEADER_BYTES + 2] ^= 0x40;
        std::fs::write(&path, &damaged).expect("write");
        let error = Wal::open(&path, Height(1)).expect_err("damage in the middle");
        assert!(
            error.to_string().contains(&format!("offset {HEADER_BYTES}")),
            "{error}"
        );

        // A wrong magic, version or header checksum.
        for (at, what) in [
            (0, "not a consensus write-ahead log"),
            (11, "format version"),
            (15, "checksum"),
        ] {
            let mut bad = full.clone();
            bad[at] ^= 1;
            std::fs::write(&path, &bad).expect("write");
            let error = Wal::open(&path, Height(1)).expect_err("bad header");
            assert!(error.to_string().contains(what), "{error}");
        }
        // A header never synced: the file is short, or all zeros. Nothing was sent from it.
        for never_synced in [&b"short"[..], &[0u8; 40][..], &[][..]] {
            std::fs::write(&path, never_synced).expect("write");
            let (wal, found) = Wal::open(&path, Height(3)).expect("starts afresh");
            assert!(found.is_empty());
            assert_eq!(wal.height(), Height(3));
        }

        // A damaged length in the first record: one pointing past the end, and zero. Good
        // records follow, so neither may be taken for a torn tail.
        for length in [u32::MAX / 2, full.len() as u32, 0] {
            let mut bad = full.clone();
            bad[HEADER_BYTES..HEADER_BYTES + 4].copy_from_slice(&length.to_be_bytes());
            std::fs::write(&path, &bad).expect("write");
            let error = Wal::open(&path, Height(1)).expect_err("a damaged length");
            assert!(
                error.to_string().contains(&format!("offset {HEADER_BYTES}")),
                "{error}"
            );
        }

        // Zeros the file system left after the last record (its size grew, its data did not
        // land): cut, keeping every record.
        let mut zeros = full.clone();
        zeros.extend_from_slice(&[0; 700]);
        std::fs::write(&path, &zeros).expect("write");
        let (_, found) = Wal::open(&path, Height(1)).expect("a zero tail is cut");
        assert_eq!(inputs(found), entries);
        assert_eq!(std::fs::metadata(&path).expect("meta").len() as usize, full.len());
    }

    /// A crash can stop a write at any byte: for every prefix of a log, opening it gives
    /// exactly the records wholly inside the prefix, in order, and never an error.
    #[test]
    fn every_prefix_of_a_log_opens_to_its_whole_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("consensus.wal");
        let key = Keypair::from_seed([3; 32]);
        let (entries, _) = decide_height_one(&key);
        let mut records: Vec<WalRecord> = entries.into_iter().map(WalRecord::Input).collect();
        records.insert(0, WalRecord::Block(b"an encoded block".repeat(20)));
        let (mut wal, _) = Wal::open(&path, Height(1)).expect("create");
        let mut ends = vec![HEADER_BYTES];
        for record in &records {
            match record {
                WalRecord::Input(input) => wal.append(input).expect("append"),
                WalRecord::Block(block) => wal.append_block(block).expect("append a block"),
            }
            wal.sync().expect("sync");
            ends.push(std::fs::metadata(&path).expect("meta").len() as usize);
        }
        drop(wal);
        let full = std::fs::read(&path).expect("read");
        for cut in 0..=full.len() {
            std::fs::write(&path, &full[..cut]).expect("write");
            let (_, found) = Wal::open(&path, Height(1)).expect("every prefix opens");
            let whole = ends.iter().filter(|end| **end <= cut).count().saturating_sub(1);
            assert_eq!(found, records[..whole], "cut at {cut}");
        }
    }

    /// A log of a height above the one to resume means the block store lost blocks the
    /// validator voted on: refused, never started afresh.
    #[test]
    fn a_log_ahead_of_the_chain_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("consensus.wal");
        let (_, _) = Wal::open(&path, Height(5)).expect("create");
        let error = Wal::open(&path, Height(4)).expect_err("behind the log");
        assert!(error.to_string().contains("above the height 4"), "{error}");
        let (wal, _) = Wal::open(&path, Height(5)).expect("the same height");
        assert_eq!(wal.height(), Height(5));
    }

    #[test]
    fn a_log_of_another_height_starts_afresh() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("consensus.wal");
        let key = Keypair::from_seed([3; 32]);
        let (entries, _) = decide_height_one(&key);
        let (mut wal, _) = Wal::open(&path, Height(1)).expect("create");
        wal.append(&entries[0]).expect("append");
        wal.sync().expect("sync");
        drop(wal);
        let (wal, found) = Wal::open(&path, Height(2)).expect("open at the next height");
        assert!(found.is_empty());
        assert_eq!(wal.height(), Height(2));
        assert_eq!(
            std::fs::metadata(&path).expect("meta").len() as usize,
            HEADER_BYTES
        );
        // Start-of-height inputs are never logged.
        let start = Input::StartHeight(
            Height(2),
            ValidatorSet::new(vec![Validator::new(key.public_key().to_bytes(), 1).expect("v")]).expect("set"),
            false,
            None,
            Default::default(),
        );
        let mut wal = wal;
        assert!(matches!(wal.append(&start), Err(WalError::NotLogged(_))));
    }
}
