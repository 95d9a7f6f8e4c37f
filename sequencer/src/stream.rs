//! Subscriptions: a reader's ordered view of a partition, resumable exactly where it stopped.
//!
//! A reader holds a [`Position`] per partition: the next sequence number it wants, the epoch of
//! the last entry it read, and the next snapshot height it wants. Every event it receives carries
//! the position just after it, so a reader that stores the position of the last event it handled
//! resumes — after its own disconnect or the node's restart — with nothing twice and nothing
//! missed. If the entries after its position were rolled back (a failover abandoned that
//! branch), the stream first says where to roll back to.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::failover;
use crate::partition::PartitionShared;
use crate::{Entry, Epoch, Error, PartitionId, Result, SeqNo};

/// Events a subscription reads at a time.
const READ_BATCH_ENTRIES: usize = 1024;

/// Where a reader is in one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub partition: PartitionId,
    /// The next sequence number to deliver.
    pub next_seqno: SeqNo,
    /// The epoch of the last entry delivered (0 before the first).
    pub epoch: Epoch,
    /// The next snapshot height to deliver.
    pub next_height: u64,
}

impl Position {
    /// The start of a partition.
    pub fn start(partition: PartitionId) -> Position {
        Position {
            partition,
            next_seqno: 1,
            epoch: 0,
            next_height: 0,
        }
    }
}

const TOKEN_PREFIX: &str = "cqlpos1.";
/// The longest chain id a token carries.
const TOKEN_CHAIN_ID_BYTES_MAX: usize = 64;

impl Position {
    /// The position as a text token a client can store and hand back to resume, bound to
    /// `chain_id` so it cannot be used on another chain.
    pub fn to_token(&self, chain_id: &str) -> String {
        let chain = &chain_id.as_bytes()[..chain_id.len().min(TOKEN_CHAIN_ID_BYTES_MAX)];
        let mut bytes = Vec::with_capacity(1 + chain.len() + 28 + 4);
        bytes.push(chain.len() as u8);
        bytes.extend_from_slice(chain);
        bytes.extend_from_slice(&self.partition.0.to_le_bytes());
        bytes.extend_from_slice(&self.next_seqno.to_le_bytes());
        bytes.extend_from_slice(&self.epoch.to_le_bytes());
        bytes.extend_from_slice(&self.next_height.to_le_bytes());
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!("{TOKEN_PREFIX}{hex}")
    }

    /// Reads a token made by [`Position::to_token`], refusing one that is damaged or was made
    /// for another chain.
    pub fn from_token(token: &str, chain_id: &str) -> Result<Position> {
        let malformed = |why: &str| Error::InvalidPosition(format!("malformed resume token: {why}"));
        let hex = token
            .strip_prefix(TOKEN_PREFIX)
            .ok_or_else(|| malformed("unknown prefix"))?;
        if hex.len() > 2 * (1 + TOKEN_CHAIN_ID_BYTES_MAX + 32) || hex.len() % 2 != 0 {
            return Err(malformed("wrong length"));
        }
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
            .collect::<Result<_, _>>()
            .map_err(|_| malformed("not hex"))?;
        let chain_len = *bytes.first().ok_or_else(|| malformed("empty"))? as usize;
        if bytes.len() != 1 + chain_len + 32 {
            return Err(malformed("wrong length"));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Err(malformed("checksum mismatch"));
        }
        let chain = String::from_utf8_lossy(&body[1..1 + chain_len]);
        if chain != chain_id {
            return Err(Error::InvalidPosition(format!(
                "the resume token is for chain {chain:?}; this is chain {chain_id:?}"
            )));
        }
        let at = 1 + chain_len;
        let u64_at = |o: usize| u64::from_le_bytes(body[o..o + 8].try_into().expect("8 bytes"));
        Ok(Position {
            partition: PartitionId(u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes"))),
            next_seqno: u64_at(at + 4),
            epoch: u64_at(at + 12),
            next_height: u64_at(at + 20),
        })
    }
}

/// What a subscription delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The next entry of the partition.
    Entry(Entry),
    /// Every entry up to `seqno` is ordered by blocks up to `height`.
    Snapshot {
        partition: PartitionId,
        seqno: SeqNo,
        height: u64,
    },
    /// Entries from `to_seqno` on that were delivered belong to an abandoned branch: forget
    /// them; the stream goes on from `to_seqno` on the current branch.
    Rollback { partition: PartitionId, to_seqno: SeqNo },
}

/// An event and the reader's position just after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub event: Event,
    pub position: Position,
}

/// A live subscription. Dropping it stops the reader task.
#[derive(Debug)]
pub struct Subscription {
    receiver: mpsc::Receiver<Result<Delivery>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Subscription {
    /// The next delivery; `None` once the log is closed.
    pub async fn next(&mut self) -> Option<Result<Delivery>> {
        self.receiver.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl futures::Stream for Subscription {
    type Item = Result<Delivery>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.receiver.poll_recv(cx)
    }
}

/// Checks a resume position against a partition, before any event is sent.
pub(crate) fn check_position(partition: &PartitionShared, position: &Position) -> Result<()> {
    let state = partition.lock();
    if position.next_seqno == 0 {
        return Err(Error::InvalidPosition("sequence numbers start at 1".into()));
    }
    if position.next_seqno > 1 && position.epoch == 0 {
        return Err(Error::InvalidPosition(format!(
            "partition {}: a position after entry {} must name that entry's epoch",
            position.partition.0,
            position.next_seqno - 1
        )));
    }
    state.check_kept(position.partition, position.next_seqno)?;
    let diverged = failover::divergence(&state.epochs, position.epoch, position.next_seqno).is_some();
    if position.next_seqno > state.last_seqno + 1 && !diverged {
        return Err(Error::InvalidPosition(format!(
            "partition {}: seqno {} is from the future: the log ends at {}",
            position.partition.0, position.next_seqno, state.last_seqno
        )));
    }
    let last_height = state.snapshots.last().map(|s| s.height).unwrap_or(0);
    if position.next_height > last_height + 1 {
        return Err(Error::InvalidPosition(format!(
            "partition {}: height {} is from the future: the last snapshot is at height {last_height}",
            position.partition.0, position.next_height
        )));
    }
    let current = state.epochs.last().map(|e| e.epoch).unwrap_or(1);
    if position.epoch > current {
        return Err(Error::InvalidPosition(format!(
            "partition {}: epoch {} is from the future: the partition is at epoch {current}",
            position.partition.0, position.epoch
        )));
    }
    Ok(())
}

/// Starts the reader task of one partition, sending into `sender`.
pub(crate) fn spawn_reader(
    partition: Arc<PartitionShared>,
    position: Position,
    sender: mpsc::Sender<Result<Delivery>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(error) = read_loop(&partition, position, &sender).await {
            let _ = sender.send(Err(error)).await;
        }
    })
}

/// The divergence point for `position` on the partition's current branch, if any.
fn divergence(partition: &PartitionShared, position: &Position) -> Option<SeqNo> {
    let state = partition.lock();
    failover::divergence(&state.epochs, position.epoch, position.next_seqno)
}

async fn read_loop(
    partition: &PartitionShared,
    mut position: Position,
    sender: &mpsc::Sender<Result<Delivery>>,
) -> Result<()> {
    let mut changes = partition.changes.subscribe();
    loop {
        // Mark the current state as seen before reading it, so a change during the read wakes
        // the wait below.
        changes.borrow_and_update();
        if let Some(to_seqno) = divergence(partition, &position) {
            position.next_seqno = to_seqno;
            position.epoch = if to_seqno > 1 {
                epoch_of(partition, to_seqno - 1)
            } else {
                0
            };
            let event = Event::Rollback {
                partition: position.partition,
                to_seqno,
            };
            if !send(sender, event, &position).await {
                return Ok(());
            }
            continue;
        }
        let entries = partition.read(position.next_seqno, READ_BATCH_ENTRIES)?;
        let snapshots: Vec<(u64, SeqNo)> = {
            let state = partition.lock();
            let from = state
                .snapshots
                .partition_point(|s| s.height < position.next_height);
            state.snapshots[from..]
                .iter()
                .map(|s| (s.height, s.seqno))
                .collect()
        };
        let mut snapshots = snapshots.into_iter().peekable();
        let mut progressed = false;
        // Interleave: a snapshot goes out once every entry it covers has.
        for entry in entries {
            if send_covered_snapshots(&mut snapshots, &mut position, sender)
                .await
                .is_none()
            {
                return Ok(());
            }
            position.next_seqno = entry.seqno + 1;
            position.epoch = entry.epoch;
            progressed = true;
            if !send(sender, Event::Entry(entry), &position).await {
                return Ok(());
            }
        }
        match send_covered_snapshots(&mut snapshots, &mut position, sender).await {
            None => return Ok(()),
            Some(sent) => progressed |= sent,
        }
        if !progressed && changes.changed().await.is_err() {
            return Ok(());
        }
    }
}

fn epoch_of(partition: &PartitionShared, seqno: SeqNo) -> Epoch {
    failover::epoch_of(&partition.lock().epochs, seqno)
}

/// Sends the snapshots all of whose entries have been delivered (seqno below the next one).
/// Returns whether any was sent, or `None` once the reader is gone.
async fn send_covered_snapshots(
    snapshots: &mut std::iter::Peekable<std::vec::IntoIter<(u64, SeqNo)>>,
    position: &mut Position,
    sender: &mpsc::Sender<Result<Delivery>>,
) -> Option<bool> {
    let mut sent = false;
    while let Some(&(height, seqno)) = snapshots.peek() {
        if seqno >= position.next_seqno {
            break;
        }
        snapshots.next();
        position.next_height = height + 1;
        let event = Event::Snapshot {
            partition: position.partition,
            seqno,
            height,
        };
        if !send(sender, event, position).await {
            return None;
        }
        sent = true;
    }
    Some(sent)
}

/// Sends an event; false once the reader is gone.
async fn send(sender: &mpsc::Sender<Result<Delivery>>, event: Event, position: &Position) -> bool {
    sender
        .send(Ok(Delivery {
            event,
            position: position.clone(),
        }))
        .await
        .is_ok()
}

pub(crate) fn subscription(
    receiver: mpsc::Receiver<Result<Delivery>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
) -> Subscription {
    Subscription { receiver, tasks }
}
