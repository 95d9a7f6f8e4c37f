//! The block store: committed blocks, durably, in height order.
//!
//! One append-only file, `blocks.dat`:
//!
//! ```text
//! header: magic "CQLBLK\0\0" (8) | version u32 | crc32c of the first 12 bytes u32
//! record: block_len u32 | crc32c(height || block) u32 | height u64 | encoded Block
//! ```
//!
//! A block is acknowledged only after its record is fsynced. On open the file is scanned: a torn
//! last record (a crash while writing it) is cut off; it was never acknowledged, and its
//! transactions are still in the log, so they are ordered again. Any other damage is refused.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use chainql::wire::Block;
use prost::Message;

use crate::{Error, Result};

const MAGIC: [u8; 8] = *b"CQLBLK\0\0";
const FORMAT_VERSION: u32 = 1;
const HEADER_BYTES: u64 = 16;
const RECORD_HEADER_BYTES: usize = 16;
/// The largest encoded block the store accepts.
pub const BLOCK_BYTES_MAX: usize = 256 << 20;

/// Committed blocks on disk, with an in-memory index of their offsets.
#[derive(Debug)]
pub struct BlockStore {
    path: PathBuf,
    file: File,
    /// `offsets[h - 1]` is the offset of the record of block `h`.
    offsets: Vec<u64>,
    end: u64,
    /// Bytes cut off a torn tail when the store was opened.
    truncated_bytes: u64,
    /// Opened beside a writer: never written or cut.
    read_only: bool,
}

impl BlockStore {
    /// Opens the store in `dir` to read it beside a node that may be writing it: nothing is
    /// created or cut (a torn or half-written last block is left out).
    pub fn open_read_only(dir: &Path) -> Result<BlockStore> {
        let path = dir.join("blocks.dat");
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        BlockStore::recovered(path, file, true)
    }

    /// The store over an open file, scanned (and, unless read-only, its torn tail cut).
    fn recovered(path: PathBuf, file: File, read_only: bool) -> Result<BlockStore> {
        let mut store = BlockStore {
            path,
            file,
            offsets: Vec::new(),
            end: HEADER_BYTES,
            truncated_bytes: 0,
            read_only,
        };
        store.recover()?;
        Ok(store)
    }

    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<BlockStore> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join("blocks.dat");
        let exists = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        if !exists || file.metadata().map_err(|e| Error::io(&path, e))?.len() == 0 {
            let mut header = [0u8; HEADER_BYTES as usize];
            header[0..8].copy_from_slice(&MAGIC);
            header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
            let crc = crc32c::crc32c(&header[0..12]);
            header[12..16].copy_from_slice(&crc.to_le_bytes());
            file.write_all(&header)
                .and_then(|()| file.sync_all())
                .map_err(|e| Error::io(&path, e))?;
            crate::sync_dir(dir)?;
        }
        BlockStore::recovered(path, file, false)
    }

    fn corrupt(&self, offset: u64, reason: impl Into<String>) -> Error {
        Error::CorruptBlockStore {
            path: self.path.display().to_string(),
            offset,
            reason: reason.into(),
        }
    }

    fn recover(&mut self) -> Result<()> {
        let len = self.file.metadata().map_err(|e| Error::io(&self.path, e))?.len();
        let mut header = [0u8; HEADER_BYTES as usize];
        self.file
            .seek(SeekFrom::Start(0))
            .and_then(|_| self.file.read_exact(&mut header))
            .map_err(|_| self.corrupt(0, "the file header is incomplete"))?;
        if header[0..8] != MAGIC {
            return Err(self.corrupt(0, "not a ChainQL block store (bad magic)"));
        }
        if crc32c::crc32c(&header[0..12]) != u32::from_le_bytes(header[12..16].try_into().expect("4 bytes")) {
            return Err(self.corrupt(0, "header checksum mismatch"));
        }
        let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        if version != FORMAT_VERSION {
            return Err(self.corrupt(
                0,
                format!("format version {version}; this build reads {FORMAT_VERSION}"),
            ));
        }
        let mut offset = HEADER_BYTES;
        loop {
            if offset == len {
                break;
            }
            match self.read_record_at(offset, self.offsets.len() as u64 + 1, len)? {
                Some((_, next)) => {
                    self.offsets.push(offset);
                    offset = next;
                }
                None if self.read_only => break,
                None => {
                    // Only the last record can be torn: it is the only one that was being
                    // written when the node stopped.
                    self.truncated_bytes = len - offset;
                    tracing::warn!(
                        path = %self.path.display(),
                        offset,
                        bytes = self.truncated_bytes,
                        "cutting a torn block off the block store"
                    );
                    self.file
                        .set_len(offset)
                        .and_then(|()| self.file.sync_all())
                        .map_err(|e| Error::io(&self.path, e))?;
                    break;
                }
            }
        }
        self.end = offset;
        Ok(())
    }

    /// Reads the record at `offset`, expected to hold block `height`. Returns `None` for a record
    /// that runs past the end of the file or fails its checksum while being the last one.
    fn read_record_at(&mut self, offset: u64, height: u64, file_len: u64) -> Result<Option<(Block, u64)>> {
        let mut head = [0u8; RECORD_HEADER_BYTES];
        if file_len - offset < RECORD_HEADER_BYTES as u64 {
            return Ok(None);
        }
        self.file
            .seek(SeekFrom::Start(offset))
            .and_then(|_| self.file.read_exact(&mut head))
            .map_err(|e| Error::io(&self.path, e))?;
        let block_len = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
        let found_height = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
        let next = offset + RECORD_HEADER_BYTES as u64 + block_len as u64;
        if next > file_len {
            return Ok(None);
        }
        if block_len > BLOCK_BYTES_MAX {
            return Err(self.corrupt(offset, format!("block length {block_len} is out of range")));
        }
        let mut bytes = vec![0u8; block_len];
        self.file
            .read_exact(&mut bytes)
            .map_err(|e| Error::io(&self.path, e))?;
        if crc32c::crc32c_append(crc32c::crc32c(&found_height.to_le_bytes()), &bytes) != crc {
            return if next == file_len {
                Ok(None)
            } else {
                Err(self.corrupt(offset, "checksum mismatch"))
            };
        }
        if found_height != height {
            return Err(self.corrupt(offset, format!("holds block {found_height}, expected {height}")));
        }
        let block = Block::decode(bytes.as_slice())
            .map_err(|e| self.corrupt(offset, format!("block does not decode: {e}")))?;
        Ok(Some((block, next)))
    }

    /// Height of the last stored block (0 when there is none).
    pub fn height(&self) -> u64 {
        self.offsets.len() as u64
    }

    /// Bytes cut off a torn tail when the store was opened.
    pub fn truncated_bytes(&self) -> u64 {
        self.truncated_bytes
    }

    /// Appends block `height() + 1` and makes it durable before returning.
    pub fn append(&mut self, block: &Block) -> Result<()> {
        if self.read_only {
            return Err(Error::InvalidBlock("the block store was opened read-only".into()));
        }
        let height = self.height() + 1;
        let found = block.header.as_ref().map(|h| h.height);
        assert_eq!(found, Some(height), "blocks are stored in height order");
        let bytes = block.encode_to_vec();
        if bytes.len() > BLOCK_BYTES_MAX {
            return Err(Error::InvalidBlock(format!(
                "block {height} is {} bytes; the limit is {BLOCK_BYTES_MAX}",
                bytes.len()
            )));
        }
        let mut record = Vec::with_capacity(RECORD_HEADER_BYTES + bytes.len());
        record.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&height.to_le_bytes()), &bytes);
        record.extend_from_slice(&crc.to_le_bytes());
        record.extend_from_slice(&height.to_le_bytes());
        record.extend_from_slice(&bytes);
        let offset = self.end;
        self.file
            .seek(SeekFrom::Start(offset))
            .and_then(|_| self.file.write_all(&record))
            .and_then(|()| self.file.sync_data())
            .map_err(|e| Error::io(&self.path, e))?;
        self.offsets.push(offset);
        self.end = offset + record.len() as u64;
        Ok(())
    }

    /// Reads block `height`, or `None` if it is not stored.
    pub fn get(&mut self, height: u64) -> Result<Option<Block>> {
        if height == 0 || height > self.height() {
            return Ok(None);
        }
        let offset = self.offsets[(height - 1) as usize];
        let end = self.end;
        match self.read_record_at(offset, height, end)? {
            Some((block, _)) => Ok(Some(block)),
            None => Err(self.corrupt(offset, "a stored block no longer reads back")),
        }
    }
}
