//! Proof of Events: the partitioned, durable, restartable log that orders ChainQL's transactions.
//!
//! The log has P partitions (fixed at genesis). A transaction goes to the partition of a hash of
//! its sender, so one sender's transactions keep their order; each partition numbers its entries
//! 1, 2, 3, ... and has its own writer thread, so appends to different partitions proceed in
//! parallel.
//!
//! - **Durability**: each partition is a sequence of segment files (header with magic and
//!   version, CRC-32C per record). Appenders hand entries to the partition's writer through a
//!   bounded queue (a full queue makes them wait: back-pressure, not memory growth); the writer
//!   writes whatever has queued up and makes it durable with one fsync (group commit), and only
//!   then acknowledges it and shows it to readers. On open, a torn last record is cut off and a
//!   bad record anywhere else is refused with the file and offset.
//! - **Snapshots**: when a block commits, the node marks per partition the last sequence number
//!   the block orders; readers see the marker after the entries it covers.
//! - **Failover log**: each partition records (epoch, first seqno, leader) at every change of
//!   leader. Entries not yet committed in a block can be rolled back by a failover; a reader on
//!   the abandoned branch is told where to roll back to.
//! - **Streams**: [`Log::subscribe`] delivers entries, snapshot markers and rollbacks in order,
//!   each with the position to resume from, so a reader continues exactly where it stopped across
//!   its own disconnects and the node's restarts. Recent entries are served from memory (a tail
//!   bounded in bytes per partition); older ones from the segments.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> chainql_sequencer::Result<()> {
//! use chainql_sequencer::{Event, Log, LogConfig, PartitionId, Position};
//! let dir = std::env::temp_dir().join(format!("chainql-doc-log-{}", std::process::id()));
//! # let _ = std::fs::remove_dir_all(&dir);
//! let log = Log::open(&dir, LogConfig { partitions: 2, ..LogConfig::default() })?;
//! let seqno = log.append(PartitionId(1), b"hello".to_vec()).await?;
//! assert_eq!(seqno, 1);
//! log.mark_snapshot(1, &[(PartitionId(0), 0), (PartitionId(1), 1)])?;
//!
//! let mut stream = log.subscribe(&[Position::start(PartitionId(1))])?;
//! let first = stream.next().await.unwrap()?;
//! assert!(matches!(first.event, Event::Entry(ref e) if &e.payload[..] == b"hello"));
//! # drop(stream); log.close(); std::fs::remove_dir_all(&dir).unwrap();
//! # Ok(()) }
//! ```

mod failover;
mod partition;
mod segment;
mod storage;
mod stream;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

pub use failover::{EpochStart, LEADER_BYTES_MAX};
pub use partition::{PartitionRecovery, Snapshot, WaitRecorder};
pub use storage::{FaultyStorage, FsStorage, Storage, WritableFile};
pub use stream::{Delivery, Event, Position, Subscription};

use partition::{Control, PartitionShared, Request, open_partition};

/// A partition's sequence number. The first entry of a partition is 1; 0 means "none yet".
pub type SeqNo = u64;

/// A term of one leader of a partition. The first epoch is 1.
pub type Epoch = u64;

/// A log partition. Transactions of one sender always go to the same partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionId(pub u32);

/// One durable log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub partition: PartitionId,
    pub seqno: SeqNo,
    /// The epoch in which the entry was appended.
    pub epoch: Epoch,
    pub payload: Arc<[u8]>,
}

/// Errors of the log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt log file {path} at offset {offset}: {reason}")]
    Corrupt {
        path: String,
        offset: u64,
        reason: String,
    },
    #[error("log file {path} has format version {version}; this build reads version {supported}")]
    UnsupportedVersion {
        path: String,
        version: u32,
        supported: u32,
    },
    #[error("partition {partition} does not exist; the log has {partitions}")]
    NoSuchPartition { partition: u32, partitions: u32 },
    #[error("log record of {size} bytes exceeds the limit of {max}")]
    RecordTooLarge { size: usize, max: usize },
    #[error("invalid position: {0}")]
    InvalidPosition(String),
    #[error(
        "partition {partition}: entries before seqno {first_kept} were released after a checkpoint; \
         seqno {seqno} can no longer be read (resume from a checkpoint's position instead)"
    )]
    Released {
        partition: u32,
        seqno: SeqNo,
        first_kept: SeqNo,
    },
    #[error("invalid log configuration: {0}")]
    InvalidConfig(String),
    #[error("the log has stopped after a write failure and accepts no more appends: {0}")]
    Stopped(String),
    /// An append to a replica, or a replication into a leader.
    #[error("{0}")]
    Role(String),
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How the log is laid out and bounded.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Number of partitions. Fixed for the life of a chain.
    pub partitions: u32,
    /// A segment is closed and a new one started once it reaches this size.
    pub segment_bytes_max: u64,
    /// The largest payload of one entry.
    pub record_bytes_max: usize,
    /// The most entries one group commit writes before it fsyncs.
    pub group_commit_entries_max: usize,
    /// The longest a writer keeps collecting appends into a group before it writes and fsyncs
    /// it; bounds how long an append waits for its group to start.
    pub group_commit_wait_max: Duration,
    /// The most append requests waiting for a partition's writer; more make appenders wait.
    pub queue_depth_max: usize,
    /// Recent entries kept in memory per partition, in payload bytes, so readers that keep up
    /// never read the disk.
    pub tail_bytes_max: usize,
    /// Events buffered per subscription before the reader task waits for its consumer.
    pub subscription_buffer: usize,
    /// Delete segments wholly below a partition's checkpoint when one is set.
    pub retention: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            partitions: 1,
            segment_bytes_max: 64 << 20,
            record_bytes_max: 4 << 20,
            group_commit_entries_max: 16_384,
            group_commit_wait_max: Duration::from_millis(5),
            queue_depth_max: 1024,
            tail_bytes_max: 64 << 20,
            subscription_buffer: 4096,
            retention: true,
        }
    }
}

impl LogConfig {
    fn validate(&self) -> Result<()> {
        let invalid = |m: &str| Err(Error::InvalidConfig(m.to_string()));
        if self.partitions == 0 || self.partitions > 1024 {
            return invalid("partitions must be between 1 and 1024");
        }
        if self.record_bytes_max == 0 || self.record_bytes_max > u32::MAX as usize {
            return invalid("record_bytes_max must be between 1 and 4 GiB");
        }
        let record_max =
            segment::HEADER_BYTES + (segment::RECORD_HEADER_BYTES + self.record_bytes_max) as u64;
        if self.segment_bytes_max < record_max {
            return invalid("segment_bytes_max must hold at least one record of record_bytes_max");
        }
        if self.group_commit_entries_max == 0 || self.queue_depth_max == 0 || self.subscription_buffer == 0 {
            return invalid(
                "group_commit_entries_max, queue_depth_max and subscription_buffer must be positive",
            );
        }
        if self.group_commit_wait_max > Duration::from_secs(1) {
            return invalid("group_commit_wait_max must be at most one second");
        }
        Ok(())
    }
}

/// What recovery found when the log was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    pub partitions: Vec<PartitionRecovery>,
    /// How long opening took.
    pub elapsed: Duration,
}

impl Recovery {
    /// Last sequence number per partition.
    pub fn last_seqnos(&self) -> Vec<SeqNo> {
        self.partitions.iter().map(|p| p.last_seqno).collect()
    }

    /// Bytes cut off torn segment tails.
    pub fn truncated_bytes(&self) -> u64 {
        self.partitions.iter().map(|p| p.truncated_bytes).sum()
    }

    /// Entries scanned.
    pub fn entries(&self) -> u64 {
        self.partitions.iter().map(|p| p.entries).sum()
    }
}

/// Counters of the log since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Entries made durable.
    pub entries: u64,
    /// Group commits: each one write and one fsync.
    pub group_commits: u64,
}

#[derive(Debug)]
struct PartitionHandle {
    shared: Arc<PartitionShared>,
    requests: Option<mpsc::Sender<Request>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

/// A partition writer's answer, and where its seqnos go in the caller's order.
type AppendAnswer = (oneshot::Receiver<Result<Vec<SeqNo>>>, Vec<usize>);

/// Entries queued for the writers; [`PendingAppend::durable`] waits for their group commits.
#[derive(Debug)]
pub struct PendingAppend {
    /// For each partition touched: the reply, and where its seqnos go in the input order.
    answers: Vec<AppendAnswer>,
    count: usize,
}

impl PendingAppend {
    /// Waits until the entries are durable and returns their sequence numbers, in the order
    /// they were given.
    pub async fn durable(self) -> Result<Vec<SeqNo>> {
        let mut seqnos = vec![0; self.count];
        for (answer, positions) in self.answers {
            let assigned = answer.await.map_err(|_| writer_gone())??;
            for (position, seqno) in positions.into_iter().zip(assigned) {
                seqnos[position] = seqno;
            }
        }
        Ok(seqnos)
    }
}

fn writer_gone() -> Error {
    Error::Stopped("the writer is not running".into())
}

/// The durable, partitioned log.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    config: LogConfig,
    partitions: Vec<PartitionHandle>,
    recovery: Recovery,
    waits: Arc<WaitRecorder>,
}

impl Log {
    /// Opens (or creates) the log in `dir` on the real file system, with an anonymous leader.
    pub fn open(dir: &Path, config: LogConfig) -> Result<Log> {
        Log::open_with(Arc::new(FsStorage), dir, config, b"")
    }

    /// Opens (or creates) the log in `dir` on `storage`, led by `leader`: if the partitions
    /// were last led by another node, each starts a new epoch.
    pub fn open_with(storage: Arc<dyn Storage>, dir: &Path, config: LogConfig, leader: &[u8]) -> Result<Log> {
        Log::open_role(storage, dir, config, Some(leader))
    }

    /// Opens (or creates) the log in `dir` on `storage` as a replica of another log: it takes
    /// entries only through [`Log::replicate`] (appends are refused) and keeps the epochs it
    /// copied, until [`Log::fail_over`] makes it a leader.
    pub fn open_replica(storage: Arc<dyn Storage>, dir: &Path, config: LogConfig) -> Result<Log> {
        Log::open_role(storage, dir, config, None)
    }

    fn open_role(
        storage: Arc<dyn Storage>,
        dir: &Path,
        config: LogConfig,
        leader: Option<&[u8]>,
    ) -> Result<Log> {
        config.validate()?;
        if leader.is_some_and(|leader| leader.len() > LEADER_BYTES_MAX) {
            return Err(Error::InvalidConfig(format!(
                "a leader identity is at most {LEADER_BYTES_MAX} bytes"
            )));
        }
        let started = Instant::now();
        storage.create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let waits = Arc::new(WaitRecorder::default());
        let mut partitions = Vec::new();
        let mut recovery = Recovery::default();
        for p in 0..config.partitions {
            let pdir = dir.join(format!("p{p:04}"));
            let (shared, requests, writer, found) = open_partition(
                Arc::clone(&storage),
                &pdir,
                PartitionId(p),
                &config,
                leader,
                Arc::clone(&waits),
            )?;
            recovery.partitions.push(found);
            partitions.push(PartitionHandle {
                shared,
                requests: Some(requests),
                writer: Some(writer),
            });
        }
        recovery.elapsed = started.elapsed();
        Ok(Log {
            dir: dir.to_path_buf(),
            config,
            partitions,
            recovery,
            waits,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What recovery found when this log was opened.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    pub fn partitions(&self) -> u32 {
        self.config.partitions
    }

    /// Records how long each append waits for its group commit (for benchmarks).
    pub fn wait_recorder(&self) -> &Arc<WaitRecorder> {
        &self.waits
    }

    fn partition(&self, partition: PartitionId) -> Result<&PartitionHandle> {
        self.partitions
            .get(partition.0 as usize)
            .ok_or(Error::NoSuchPartition {
                partition: partition.0,
                partitions: self.config.partitions,
            })
    }

    /// Counters since the log was opened.
    pub fn stats(&self) -> LogStats {
        let mut stats = LogStats::default();
        for p in &self.partitions {
            stats.entries += p.shared.appended.load(Ordering::Relaxed);
            stats.group_commits += p.shared.group_commits.load(Ordering::Relaxed);
        }
        stats
    }

    /// Appends one entry and returns its sequence number once it is durable.
    pub async fn append(&self, partition: PartitionId, payload: Vec<u8>) -> Result<SeqNo> {
        let seqnos = self.append_many(vec![(partition, payload)]).await?;
        Ok(seqnos[0])
    }

    /// Appends entries and returns their sequence numbers once all are durable. Entries of one
    /// partition keep their order.
    pub async fn append_many(&self, entries: Vec<(PartitionId, Vec<u8>)>) -> Result<Vec<SeqNo>> {
        self.enqueue(entries).await?.durable().await
    }

    /// Queues entries for the writers and returns once they are queued, not yet durable. Entries
    /// of a partition are written in the order their `enqueue` calls completed, so a caller that
    /// must keep appends in order (one sender's nonces) enqueues them one after another and waits
    /// for durability afterwards, outside its own lock.
    pub async fn enqueue(&self, entries: Vec<(PartitionId, Vec<u8>)>) -> Result<PendingAppend> {
        if self.is_replica() {
            return Err(partition::replica_append());
        }
        let count = entries.len();
        let mut by_partition: Vec<(Vec<Vec<u8>>, Vec<usize>)> = (0..self.config.partitions)
            .map(|_| (Vec::new(), Vec::new()))
            .collect();
        for (position, (partition, payload)) in entries.into_iter().enumerate() {
            self.partition(partition)?;
            if payload.len() > self.config.record_bytes_max {
                return Err(Error::RecordTooLarge {
                    size: payload.len(),
                    max: self.config.record_bytes_max,
                });
            }
            let slot = &mut by_partition[partition.0 as usize];
            slot.0.push(payload);
            slot.1.push(position);
        }
        let mut answers = Vec::new();
        for (p, (payloads, positions)) in by_partition.into_iter().enumerate() {
            if payloads.is_empty() {
                continue;
            }
            let (reply, answer) = oneshot::channel();
            let requests = self.partitions[p].requests.as_ref().ok_or_else(writer_gone)?;
            requests
                .send(Request::Append {
                    payloads,
                    queued_at: Instant::now(),
                    reply,
                })
                .await
                .map_err(|_| writer_gone())?;
            answers.push((answer, positions));
        }
        Ok(PendingAppend { answers, count })
    }

    /// The last durable sequence number of `partition` (0 if it is empty).
    pub fn last_seqno(&self, partition: PartitionId) -> Result<SeqNo> {
        Ok(self.partition(partition)?.shared.lock().last_seqno)
    }

    /// The last sequence number of `partition` committed in a block (0 if none).
    pub fn committed_seqno(&self, partition: PartitionId) -> Result<SeqNo> {
        Ok(self.partition(partition)?.shared.lock().committed_seqno())
    }

    /// The partition's epoch history, oldest first.
    pub fn epochs(&self, partition: PartitionId) -> Result<Vec<EpochStart>> {
        Ok(self.partition(partition)?.shared.lock().epochs.clone())
    }

    /// A receiver that changes after every group commit, snapshot or rollback of `partition`.
    pub fn changes(&self, partition: PartitionId) -> Result<watch::Receiver<u64>> {
        Ok(self.partition(partition)?.shared.changes.subscribe())
    }

    /// Reads up to `entries_max` durable entries of `partition`, starting at `from`.
    pub fn read(&self, partition: PartitionId, from: SeqNo, entries_max: usize) -> Result<Vec<Entry>> {
        self.partition(partition)?.shared.read(from, entries_max)
    }

    /// Marks that the block at `height` orders, per partition, every entry up to the given
    /// seqno. Idempotent for a height already marked with the same ranges (replay).
    pub fn mark_snapshot(&self, height: u64, ranges: &[(PartitionId, SeqNo)]) -> Result<()> {
        for (partition, _) in ranges {
            self.partition(*partition)?;
        }
        for (partition, seqno) in ranges {
            self.partitions[partition.0 as usize]
                .shared
                .mark_snapshot(height, *seqno)?;
        }
        Ok(())
    }

    /// The snapshots recorded for `partition`, oldest first.
    pub fn snapshots(&self, partition: PartitionId) -> Result<Vec<Snapshot>> {
        Ok(self.partition(partition)?.shared.lock().snapshots.clone())
    }

    /// Starts a new epoch of `partition` led by `leader`. With `truncate_from`, first rolls back
    /// the entries from that seqno on (they must not be committed in a block) and returns them,
    /// so the caller can propose them again or drop them.
    pub async fn fail_over(
        &self,
        partition: PartitionId,
        leader: &[u8],
        truncate_from: Option<SeqNo>,
    ) -> Result<(Epoch, Vec<Entry>)> {
        if leader.len() > LEADER_BYTES_MAX {
            return Err(Error::InvalidConfig(format!(
                "a leader identity is at most {LEADER_BYTES_MAX} bytes"
            )));
        }
        self.ask(partition, |reply| Control::FailOver {
            truncate_from,
            leader: leader.to_vec(),
            reply,
        })
        .await?
    }

    /// Sends `partition`'s writer the request `make` builds around a reply channel, and waits
    /// for the answer: requests are carried out in the order they were queued.
    async fn ask<T>(
        &self,
        partition: PartitionId,
        make: impl FnOnce(oneshot::Sender<T>) -> Control,
    ) -> Result<T> {
        let handle = self.partition(partition)?;
        let (reply, answer) = oneshot::channel();
        let requests = handle.requests.as_ref().ok_or_else(writer_gone)?;
        requests
            .send(Request::Control(make(reply)))
            .await
            .map_err(|_| writer_gone())?;
        answer.await.map_err(|_| writer_gone())
    }

    /// Whether some partition is a replica of another log (see [`Log::open_replica`]), not yet
    /// failed over.
    pub fn is_replica(&self) -> bool {
        self.partitions
            .iter()
            .any(|p| p.shared.replica.load(Ordering::Acquire))
    }

    /// Whether `partition` is a replica of another log, not yet failed over.
    pub fn is_replica_partition(&self, partition: PartitionId) -> Result<bool> {
        Ok(self.partition(partition)?.shared.replica.load(Ordering::Acquire))
    }

    /// Makes a replica partition that failed over before a restart lead again: its current
    /// epoch must be `leader`'s (no new epoch starts).
    pub async fn resume_lead(&self, partition: PartitionId, leader: &[u8]) -> Result<()> {
        self.ask(partition, |reply| Control::TakeLead {
            leader: leader.to_vec(),
            reply,
        })
        .await?
    }

    /// Waits until every request queued to `partition`'s writer before this call (appends,
    /// copies, rollbacks) has been carried out.
    pub async fn barrier(&self, partition: PartitionId) -> Result<()> {
        self.ask(partition, |reply| Control::Barrier { reply }).await
    }

    /// The last snapshot recorded for `partition`, if any.
    pub fn last_snapshot(&self, partition: PartitionId) -> Result<Option<Snapshot>> {
        Ok(self.partition(partition)?.shared.lock().snapshots.last().copied())
    }

    /// Copies what a subscription to another log (its leader) delivered into this log, a replica
    /// of it: entries keep their seqnos and epochs (each partition's run written with one
    /// fsync), snapshot markers are recorded, and a rollback removes the entries the leader
    /// abandoned. `leader` names the source in the epochs the replica copies. Deliveries must
    /// continue the replica exactly where [`Log::resume_positions`] left it; anything else is
    /// refused and nothing after it is applied.
    pub async fn replicate(&self, deliveries: Vec<Delivery>, leader: &[u8]) -> Result<()> {
        if leader.len() > LEADER_BYTES_MAX {
            return Err(Error::InvalidConfig(format!(
                "a leader identity is at most {LEADER_BYTES_MAX} bytes"
            )));
        }
        let mut run: Vec<Entry> = Vec::new();
        for delivery in deliveries {
            match delivery.event {
                Event::Entry(entry) => {
                    self.partition(entry.partition)?;
                    if entry.payload.len() > self.config.record_bytes_max {
                        return Err(Error::RecordTooLarge {
                            size: entry.payload.len(),
                            max: self.config.record_bytes_max,
                        });
                    }
                    if run.last().is_some_and(|last| last.partition != entry.partition) {
                        self.copy_entries(std::mem::take(&mut run), leader).await?;
                    }
                    run.push(entry);
                }
                Event::Snapshot {
                    partition,
                    seqno,
                    height,
                } => {
                    self.copy_entries(std::mem::take(&mut run), leader).await?;
                    let shared = &self.partition(partition)?.shared;
                    if !shared.replica.load(Ordering::Acquire) {
                        return Err(Error::Role(format!(
                            "partition {} is led by this log; it marks its own snapshots",
                            partition.0
                        )));
                    }
                    shared.mark_snapshot(height, seqno)?;
                }
                Event::Rollback { partition, to_seqno } => {
                    self.copy_entries(std::mem::take(&mut run), leader).await?;
                    self.ask(partition, |reply| Control::RollBack {
                        from: to_seqno,
                        reply,
                    })
                    .await??;
                }
            }
        }
        self.copy_entries(run, leader).await
    }

    /// Writes a run of one partition's replicated entries.
    async fn copy_entries(&self, entries: Vec<Entry>, leader: &[u8]) -> Result<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let partition = first.partition;
        self.ask(partition, |reply| Control::Replicate {
            entries,
            leader: leader.to_vec(),
            reply,
        })
        .await?
    }

    /// Where a replica resumes reading its leader, per partition: after its last entry (in
    /// that entry's epoch) and after its last snapshot marker. Subscribing the leader from these
    /// positions and handing every delivery to [`Log::replicate`] keeps the replica exact across
    /// disconnects and restarts of either side.
    pub fn resume_positions(&self) -> Vec<Position> {
        self.partitions
            .iter()
            .map(|handle| {
                let state = handle.shared.lock();
                let last = state.last_seqno;
                Position {
                    partition: handle.shared.id,
                    next_seqno: last + 1,
                    epoch: if last == 0 {
                        0
                    } else {
                        failover::epoch_of(&state.epochs, last)
                    },
                    next_height: state.snapshots.last().map_or(0, |s| s.height + 1),
                }
            })
            .collect()
    }

    /// Deletes the segments of `partition` that hold only entries below `checkpoint_seqno`,
    /// when retention is on. Entries not yet committed in a block are never deleted. Returns the
    /// number of segments deleted.
    pub fn release_below(&self, partition: PartitionId, checkpoint_seqno: SeqNo) -> Result<usize> {
        if !self.config.retention {
            return Ok(0);
        }
        let handle = self.partition(partition)?;
        let shared = &handle.shared;
        let doomed: Vec<(SeqNo, PathBuf)> = {
            let state = shared.lock();
            let limit = checkpoint_seqno.min(state.committed_seqno() + 1);
            let active = state.segments.keys().next_back().copied();
            state
                .segments
                .iter()
                .filter(|(first, info)| Some(**first) != active && info.last_seqno < limit)
                .map(|(first, info)| (*first, info.path.clone()))
                .collect()
        };
        let _files = shared
            .files
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (first, path) in &doomed {
            shared.lock().segments.remove(first);
            shared.storage.remove(path).map_err(|e| Error::io(path, e))?;
        }
        if !doomed.is_empty() {
            shared
                .storage
                .sync_dir(&shared.dir)
                .map_err(|e| Error::io(&shared.dir, e))?;
        }
        Ok(doomed.len())
    }

    /// Subscribes to the partitions of `positions`, each from its position. Every delivery
    /// carries the position to resume from after it.
    pub fn subscribe(&self, positions: &[Position]) -> Result<Subscription> {
        if positions.is_empty() {
            return Err(Error::InvalidPosition(
                "subscribe to at least one partition".into(),
            ));
        }
        for (i, position) in positions.iter().enumerate() {
            let handle = self.partition(position.partition)?;
            if positions[..i].iter().any(|p| p.partition == position.partition) {
                return Err(Error::InvalidPosition(format!(
                    "partition {} is listed twice",
                    position.partition.0
                )));
            }
            stream::check_position(&handle.shared, position)?;
        }
        let (sender, receiver) = mpsc::channel(self.config.subscription_buffer);
        let tasks = positions
            .iter()
            .map(|position| {
                let shared = Arc::clone(&self.partitions[position.partition.0 as usize].shared);
                stream::spawn_reader(shared, position.clone(), sender.clone())
            })
            .collect();
        Ok(stream::subscription(receiver, tasks))
    }

    /// Stops the writers after they have made everything queued durable.
    pub fn close(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        for partition in &mut self.partitions {
            partition.requests.take();
        }
        for partition in &mut self.partitions {
            if let Some(writer) = partition.writer.take()
                && writer.join().is_err()
            {
                tracing::error!(partition = partition.shared.id.0, "a log writer thread panicked");
            }
        }
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The partition of a sender: a hash of its identity, so its transactions stay in one order.
pub fn partition_of(sender: &[u8], partitions: u32) -> PartitionId {
    let digest = blake3::hash(sender);
    let value = u64::from_le_bytes(digest.as_bytes()[..8].try_into().expect("8 bytes"));
    PartitionId((value % u64::from(partitions.max(1))) as u32)
}

/// The path of the segment of `partition` in a log at `dir` that starts at `first_seqno`, for
/// tools and tests that inspect files.
pub fn segment_file(dir: &Path, partition: PartitionId, first_seqno: SeqNo) -> PathBuf {
    segment::segment_path(&dir.join(format!("p{:04}", partition.0)), first_seqno)
}
