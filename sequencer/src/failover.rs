//! The failover log of a partition: which epoch (term of a leader) started at which sequence
//! number, kept durably in `failover.dat`.
//!
//! Every change of the node that leads a partition starts a new epoch; every entry records the
//! epoch it was written in. A reader that resumes after an entry of epoch E at seqno S is on the
//! current branch unless the history says epoch E ended before S — then it is told to roll back
//! to where E ended (the rule of Kafka's leader epochs): entries from there on belonged to a
//! branch that was abandoned.
//!
//! ```text
//! header: magic "CQLFOV\0\0" (8) | version u32 | crc32c u32
//! record: crc32c u32 | epoch u64 | start_seqno u64 | leader_len u16 | leader
//! ```

use std::path::{Path, PathBuf};

use crate::storage::{Storage, WritableFile};
use crate::{Epoch, Error, Result, SeqNo};

const MAGIC: [u8; 8] = *b"CQLFOV\0\0";
const FORMAT_VERSION: u32 = 1;
const HEADER_BYTES: usize = 16;
/// The longest leader identity recorded.
pub const LEADER_BYTES_MAX: usize = 64;
/// Epochs a partition's history holds at most before it refuses more (a sign of a loop).
const EPOCHS_MAX: usize = 1 << 20;

/// One epoch: who led the partition, from which sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochStart {
    pub epoch: Epoch,
    pub start_seqno: SeqNo,
    pub leader: Vec<u8>,
}

/// A partition's epoch history and its file.
#[derive(Debug)]
pub(crate) struct FailoverLog {
    path: PathBuf,
    entries: Vec<EpochStart>,
    file: Box<dyn WritableFile>,
}

fn encode_header() -> [u8; HEADER_BYTES] {
    let mut header = [0u8; HEADER_BYTES];
    header[0..8].copy_from_slice(&MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    let crc = crc32c::crc32c(&header[0..12]);
    header[12..16].copy_from_slice(&crc.to_le_bytes());
    header
}

fn encode_entry(out: &mut Vec<u8>, entry: &EpochStart) {
    let mut body = Vec::with_capacity(18 + entry.leader.len());
    body.extend_from_slice(&entry.epoch.to_le_bytes());
    body.extend_from_slice(&entry.start_seqno.to_le_bytes());
    body.extend_from_slice(&(entry.leader.len() as u16).to_le_bytes());
    body.extend_from_slice(&entry.leader);
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&body);
}

impl FailoverLog {
    /// Opens the history in `dir`, or creates it with epoch 1 led by `leader` from seqno 1.
    /// A torn last record is dropped (it was never acknowledged); other damage is refused.
    pub fn open(storage: &dyn Storage, dir: &Path, leader: &[u8]) -> Result<FailoverLog> {
        let path = dir.join("failover.dat");
        if !storage.exists(&path) {
            let first = EpochStart {
                epoch: 1,
                start_seqno: 1,
                leader: leader.to_vec(),
            };
            return FailoverLog::write_new(storage, dir, &path, vec![first]);
        }
        let len = storage.len(&path).map_err(|e| Error::io(&path, e))?;
        let data = storage
            .read_at(&path, 0, len as usize)
            .map_err(|e| Error::io(&path, e))?;
        let corrupt = |offset: usize, reason: &str| Error::Corrupt {
            path: path.display().to_string(),
            offset: offset as u64,
            reason: reason.to_string(),
        };
        if data.len() < HEADER_BYTES || data[0..8] != MAGIC {
            return Err(corrupt(0, "not a ChainQL failover log (bad magic)"));
        }
        if crc32c::crc32c(&data[0..12]) != u32::from_le_bytes(data[12..16].try_into().expect("4 bytes")) {
            return Err(corrupt(0, "header checksum mismatch"));
        }
        let version = u32::from_le_bytes(data[8..12].try_into().expect("4 bytes"));
        if version != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                path: path.display().to_string(),
                version,
                supported: FORMAT_VERSION,
            });
        }
        let mut entries: Vec<EpochStart> = Vec::new();
        let mut offset = HEADER_BYTES;
        let mut torn = false;
        while offset < data.len() {
            if data.len() - offset < 22 {
                torn = true;
                break;
            }
            let crc = u32::from_le_bytes(data[offset..offset + 4].try_into().expect("4 bytes"));
            let leader_len =
                u16::from_le_bytes(data[offset + 20..offset + 22].try_into().expect("2 bytes")) as usize;
            let end = offset + 22 + leader_len;
            if leader_len > LEADER_BYTES_MAX || end > data.len() {
                torn = end > data.len();
                if !torn {
                    return Err(corrupt(offset, "leader identity too long"));
                }
                break;
            }
            if crc32c::crc32c(&data[offset + 4..end]) != crc {
                if end == data.len() {
                    torn = true;
                    break;
                }
                return Err(corrupt(offset, "checksum mismatch"));
            }
            let entry = EpochStart {
                epoch: u64::from_le_bytes(data[offset + 4..offset + 12].try_into().expect("8 bytes")),
                start_seqno: u64::from_le_bytes(data[offset + 12..offset + 20].try_into().expect("8 bytes")),
                leader: data[offset + 22..end].to_vec(),
            };
            if let Some(last) = entries.last()
                && entry.epoch <= last.epoch
            {
                return Err(corrupt(offset, "epochs do not increase"));
            }
            entries.push(entry);
            offset = end;
        }
        if entries.is_empty() {
            return Err(corrupt(HEADER_BYTES, "the history has no epoch"));
        }
        if torn {
            // Rewrite without the torn record.
            return FailoverLog::write_new(storage, dir, &path, entries);
        }
        let file = storage.open_append(&path).map_err(|e| Error::io(&path, e))?;
        Ok(FailoverLog { path, entries, file })
    }

    /// Writes a whole history to a new file and atomically puts it in place.
    fn write_new(
        storage: &dyn Storage,
        dir: &Path,
        path: &Path,
        entries: Vec<EpochStart>,
    ) -> Result<FailoverLog> {
        let temporary = dir.join("failover.dat.new");
        if storage.exists(&temporary) {
            storage.remove(&temporary).map_err(|e| Error::io(&temporary, e))?;
        }
        let mut bytes = encode_header().to_vec();
        for entry in &entries {
            encode_entry(&mut bytes, entry);
        }
        let mut file = storage.create(&temporary).map_err(|e| Error::io(&temporary, e))?;
        file.append(&bytes)
            .and_then(|()| file.sync())
            .map_err(|e| Error::io(&temporary, e))?;
        drop(file);
        storage.rename(&temporary, path).map_err(|e| Error::io(path, e))?;
        storage.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
        let file = storage.open_append(path).map_err(|e| Error::io(path, e))?;
        Ok(FailoverLog {
            path: path.to_path_buf(),
            entries,
            file,
        })
    }

    pub fn entries(&self) -> &[EpochStart] {
        &self.entries
    }

    pub fn current(&self) -> &EpochStart {
        self.entries.last().expect("a history always has an epoch")
    }

    /// Starts a new epoch led by `leader` at `start_seqno`, first forgetting epochs that started
    /// at or after it (their entries are being rolled back). Durable before it returns.
    pub fn start_epoch(
        &mut self,
        storage: &dyn Storage,
        dir: &Path,
        start_seqno: SeqNo,
        leader: &[u8],
    ) -> Result<Epoch> {
        let epoch = self.current().epoch + 1;
        self.record(storage, dir, epoch, start_seqno, leader)?;
        Ok(epoch)
    }

    /// A replica takes on its leader's `epoch`, which started at `start_seqno`: recorded unless
    /// it is the current one. It must be newer than every epoch that started before it.
    pub fn copy_epoch(
        &mut self,
        storage: &dyn Storage,
        dir: &Path,
        epoch: Epoch,
        start_seqno: SeqNo,
        leader: &[u8],
    ) -> Result<()> {
        if epoch == self.current().epoch {
            // A new replica's first epoch names no one until the first copy names its source.
            if self.current().leader.is_empty() && !leader.is_empty() {
                let start_seqno = self.current().start_seqno;
                return self.record(storage, dir, epoch, start_seqno, leader);
            }
            return Ok(());
        }
        if let Some(before) = self.entries.iter().rev().find(|e| e.start_seqno < start_seqno)
            && before.epoch >= epoch
        {
            return Err(Error::InvalidPosition(format!(
                "epoch {epoch} starting at seqno {start_seqno} is not newer than epoch {} before it",
                before.epoch
            )));
        }
        self.record(storage, dir, epoch, start_seqno, leader)
    }

    /// Forgets the epochs that started at or after `seqno` (a replica's entries from there on
    /// were abandoned by its leader). The first epoch stays, so the history is never empty.
    pub fn forget_from(&mut self, storage: &dyn Storage, dir: &Path, seqno: SeqNo) -> Result<()> {
        if self.entries.iter().skip(1).all(|e| e.start_seqno < seqno) {
            return Ok(());
        }
        let entries: Vec<EpochStart> = self
            .entries
            .iter()
            .enumerate()
            .filter(|(i, e)| *i == 0 || e.start_seqno < seqno)
            .map(|(_, e)| e.clone())
            .collect();
        *self = FailoverLog::write_new(storage, dir, &self.path.clone(), entries)?;
        Ok(())
    }

    /// Appends `entry` to the history, first forgetting epochs that started at or after it.
    /// Durable before it returns.
    fn record(
        &mut self,
        storage: &dyn Storage,
        dir: &Path,
        epoch: Epoch,
        start_seqno: SeqNo,
        leader: &[u8],
    ) -> Result<()> {
        let entry = EpochStart {
            epoch,
            start_seqno,
            leader: leader.to_vec(),
        };
        if entry.leader.len() > LEADER_BYTES_MAX {
            return Err(Error::InvalidConfig(format!(
                "a leader identity is at most {LEADER_BYTES_MAX} bytes"
            )));
        }
        if self.entries.len() >= EPOCHS_MAX {
            return Err(Error::InvalidConfig(format!(
                "a partition holds at most {EPOCHS_MAX} epochs"
            )));
        }
        let keeps_all = self.entries.iter().all(|e| e.start_seqno < entry.start_seqno);
        if keeps_all {
            let mut bytes = Vec::new();
            encode_entry(&mut bytes, &entry);
            self.file
                .append(&bytes)
                .and_then(|()| self.file.sync())
                .map_err(|e| Error::io(&self.path, e))?;
            self.entries.push(entry);
        } else {
            let mut entries: Vec<EpochStart> = self
                .entries
                .iter()
                .filter(|e| e.start_seqno < entry.start_seqno)
                .cloned()
                .collect();
            entries.push(entry);
            *self = FailoverLog::write_new(storage, dir, &self.path.clone(), entries)?;
        }
        Ok(())
    }
}

/// Where a reader that last read an entry of `epoch`, and wants `next_seqno` next, must continue
/// from, if its position is not on the current branch: a later epoch started before its position.
/// (Every rollback starts a new epoch, so a position past the end of its own, still current,
/// epoch is not a lost branch but a position from the future.)
pub(crate) fn divergence(epochs: &[EpochStart], epoch: Epoch, next_seqno: SeqNo) -> Option<SeqNo> {
    if next_seqno <= 1 {
        return None;
    }
    // The last epoch of the current branch that is not newer than the reader's.
    let position = epochs.partition_point(|e| e.epoch <= epoch);
    if position == 0 {
        return Some(1);
    }
    match epochs.get(position).map(|next| next.start_seqno) {
        Some(end) if next_seqno > end => Some(end),
        _ => None,
    }
}

/// The epoch in which entry `seqno` of the current branch was written.
pub(crate) fn epoch_of(epochs: &[EpochStart], seqno: SeqNo) -> Epoch {
    let position = epochs.partition_point(|e| e.start_seqno <= seqno);
    epochs
        .get(position.saturating_sub(1))
        .map(|e| e.epoch)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(starts: &[(Epoch, SeqNo)]) -> Vec<EpochStart> {
        starts
            .iter()
            .map(|&(epoch, start_seqno)| EpochStart {
                epoch,
                start_seqno,
                leader: vec![],
            })
            .collect()
    }

    #[test]
    fn readers_on_abandoned_branches_are_sent_back() {
        // Epoch 2 started at 50 and was abandoned from 40 on: epoch 3 starts at 40.
        let epochs = history(&[(1, 1), (3, 40)]);
        assert_eq!(divergence(&epochs, 1, 30), None, "on the branch");
        assert_eq!(
            divergence(&epochs, 1, 40),
            None,
            "read up to 39, the last of epoch 1"
        );
        assert_eq!(
            divergence(&epochs, 1, 45),
            Some(40),
            "read 40..44 of a dead epoch 1 tail"
        );
        assert_eq!(
            divergence(&epochs, 2, 55),
            Some(40),
            "epoch 2 is gone: back to where epoch 1 ended"
        );
        assert_eq!(divergence(&epochs, 3, 61), None);
        assert_eq!(divergence(&epochs, 0, 1), None);
        assert_eq!(epoch_of(&epochs, 39), 1);
        assert_eq!(epoch_of(&epochs, 40), 3);
    }
}
