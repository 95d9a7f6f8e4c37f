//! The node's checkpoints (`checkpoints/` in the data directory): every `checkpoint_interval`
//! blocks the committed state is written as a checkpoint (Parquet files and a manifest, see
//! `chainql_executor::State::write_checkpoint`), with the receipts of every block up to it. A
//! restart loads the newest checkpoint that checks out against the block store and re-executes
//! only the blocks after it; `AS OF BLOCK` rebuilds an old version from the newest checkpoint
//! below it.

use std::path::{Path, PathBuf};

use chainql::wire::Receipt;
use chainql_executor::State;
use prost::Message;

use crate::error::{Error, Result};

/// The attachment holding the receipts of every block up to the checkpoint.
const RECEIPTS: &str = "receipts";
/// The largest receipt a checkpoint may hold (a receipt carries a query result in Arrow IPC).
const RECEIPT_BYTES_MAX: usize = 256 << 20;

/// The checkpoint directory of a node.
#[derive(Debug, Clone)]
pub(crate) struct Checkpoints {
    dir: PathBuf,
    kept: usize,
}

impl Checkpoints {
    pub(crate) fn new(dir: PathBuf, kept: usize) -> Checkpoints {
        Checkpoints { dir, kept }
    }

    fn path(&self, height: u64) -> PathBuf {
        self.dir.join(format!("{height:020}"))
    }

    /// The heights of the complete checkpoints, oldest first. Partial ones (a crash while
    /// writing) have another name and are not listed.
    pub(crate) fn heights(&self) -> Result<Vec<u64>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(self.dir.display().to_string(), e)),
        };
        let mut heights = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(self.dir.display().to_string(), e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.len() == 20
                && let Ok(height) = name.parse::<u64>()
            {
                heights.push(height);
            }
        }
        heights.sort_unstable();
        Ok(heights)
    }

    /// Writes `state` and the receipts of its blocks as a checkpoint, then removes the oldest
    /// checkpoints beyond the number kept and any partial one.
    pub(crate) fn write(&self, state: &State, receipts: &[Receipt]) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(self.dir.display().to_string(), e))?;
        let path = self.path(state.height());
        if path.exists() {
            return Ok(());
        }
        let mut encoded = Vec::new();
        for receipt in receipts {
            let bytes = receipt.encode_to_vec();
            encoded.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            encoded.extend_from_slice(&bytes);
        }
        state.write_checkpoint(&path, &[(RECEIPTS, &encoded)])?;
        let heights = self.heights()?;
        for height in &heights[..heights.len().saturating_sub(self.kept)] {
            let old = self.path(*height);
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(old.display().to_string(), e))?;
        }
        for entry in std::fs::read_dir(&self.dir)
            .map_err(|e| Error::io(self.dir.display().to_string(), e))?
            .flatten()
        {
            if entry.file_name().to_string_lossy().ends_with(".partial") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(())
    }

    /// Reads the checkpoint at `height`: the state, and its receipts still encoded (a rebuild
    /// of an old version needs only the state).
    pub(crate) fn read(&self, height: u64) -> Result<(State, StoredReceipts)> {
        let path = self.path(height);
        let (state, mut attachments) = State::read_checkpoint(&path)?;
        if state.height() != height {
            return Err(corrupt(&path, format!("it holds block {}", state.height())));
        }
        let bytes = attachments
            .remove(RECEIPTS)
            .ok_or_else(|| corrupt(&path, "it has no receipts"))?;
        Ok((state, StoredReceipts { path, bytes }))
    }
}

/// A checkpoint's receipts as stored (their digest already checked).
#[derive(Debug)]
pub(crate) struct StoredReceipts {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl StoredReceipts {
    pub(crate) fn decode(self) -> Result<Vec<Receipt>> {
        let mut receipts = Vec::new();
        let mut rest = &self.bytes[..];
        while !rest.is_empty() {
            let (length, body) = rest
                .split_first_chunk::<4>()
                .ok_or_else(|| corrupt(&self.path, "its receipts end inside a length"))?;
            let length = u32::from_le_bytes(*length) as usize;
            if length > RECEIPT_BYTES_MAX || length > body.len() {
                return Err(corrupt(&self.path, "a receipt's length runs past the file"));
            }
            receipts.push(
                Receipt::decode(&body[..length])
                    .map_err(|e| corrupt(&self.path, format!("a receipt does not decode: {e}")))?,
            );
            rest = &body[length..];
        }
        Ok(receipts)
    }
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::Corrupt(format!("checkpoint {}: {what}", path.display()))
}
