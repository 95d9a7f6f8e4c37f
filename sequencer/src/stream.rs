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
    if position.next_seqno > state.last_seqno + 1 {
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
    failover::divergence(&state.epochs, state.last_seqno, position.epoch, position.next_seqno)
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
            let from = state.snapshots.partition_point(|s| s.height < position.next_height);
            state.snapshots[from..].iter().map(|s| (s.height, s.seqno)).collect()
        };
        let mut snapshots = snapshots.into_iter().peekable();
        let mut progressed = false;
        // Interleave: a snapshot goes out once every entry it covers has.
        for entry in entries {
            while let Some(&(height, seqno)) = snapshots.peek() {
                if seqno >= entry.seqno {
                    break;
                }
                snapshots.next();
                position.next_height = height + 1;
                let event = Event::Snapshot {
                    partition: position.partition,
                    seqno,
                    height,
                };
                if !send(sender, event, &position).await {
                    return Ok(());
                }
            }
            position.next_seqno = entry.seqno + 1;
            position.epoch = entry.epoch;
            progressed = true;
            if !send(sender, Event::Entry(entry), &position).await {
                return Ok(());
            }
        }
        for (height, seqno) in snapshots {
            if seqno >= position.next_seqno {
                break;
            }
            position.next_height = height + 1;
            progressed = true;
            let event = Event::Snapshot {
                partition: position.partition,
                seqno,
                height,
            };
            if !send(sender, event, &position).await {
                return Ok(());
            }
        }
        if !progressed && changes.changed().await.is_err() {
            return Ok(());
        }
    }
}

fn epoch_of(partition: &PartitionShared, seqno: SeqNo) -> Epoch {
    failover::epoch_of(&partition.lock().epochs, seqno)
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

pub(crate) fn subscription(receiver: mpsc::Receiver<Result<Delivery>>, tasks: Vec<tokio::task::JoinHandle<()>>) -> Subscription {
    Subscription { receiver, tasks }
}
