//! The Proof-of-Events log: a durable, append-only, partitioned log of admitted transactions.
//!
//! Each partition is a sequence of entries numbered 1, 2, 3, ... and stored in segment files
//! (`<dir>/p0000/<first seqno>.seg`, format in the `segment` module). One writer thread owns
//! all files. Appenders hand it entries through a bounded queue (a full queue makes appenders
//! wait: back-pressure, not memory growth); the writer drains whatever has queued up, writes it,
//! makes it durable with a single fsync (group commit) and only then answers the appenders and
//! makes the entries visible to readers. An entry that has been acknowledged is therefore on
//! disk, and a reader never sees an entry that could still be lost.
//!
//! On open, every segment is scanned and checked. A torn last record (a crash in the middle of a
//! write) is cut off; a bad record anywhere else is refused with the file and offset.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> chainql_sequencer::Result<()> {
//! use chainql_sequencer::{Log, LogConfig, PartitionId};
//! let dir = std::env::temp_dir().join(format!("chainql-doc-log-{}", std::process::id()));
//! # let _ = std::fs::remove_dir_all(&dir);
//! let log = Log::open(&dir, LogConfig::default())?;
//! let seqno = log.append(PartitionId(0), b"hello".to_vec()).await?;
//! assert_eq!(seqno, 1);
//! let entries = log.read(PartitionId(0), 1, 10)?;
//! assert_eq!(&entries[0].payload[..], b"hello");
//! # drop(log); std::fs::remove_dir_all(&dir).unwrap();
//! # Ok(()) }
//! ```

mod segment;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot, watch};

use segment::{ActiveSegment, HEADER_BYTES, RECORD_HEADER_BYTES, scan_segment, segment_path};

/// A partition's sequence number. The first entry of a partition is 1; 0 means "none yet".
pub type SeqNo = u64;

/// A log partition. Transactions of one sender always go to the same partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionId(pub u32);

/// One durable log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub partition: PartitionId,
    pub seqno: SeqNo,
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
    #[error("corrupt log segment {path} at offset {offset}: {reason}")]
    Corrupt {
        path: String,
        offset: u64,
        reason: String,
    },
    #[error("log segment {path} has format version {version}; this build reads version {supported}")]
    UnsupportedVersion {
        path: String,
        version: u32,
        supported: u32,
    },
    #[error("partition {partition} does not exist; the log has {partitions}")]
    NoSuchPartition { partition: u32, partitions: u32 },
    #[error("log record of {size} bytes exceeds the limit of {max}")]
    RecordTooLarge { size: usize, max: usize },
    #[error("invalid log configuration: {0}")]
    InvalidConfig(String),
    #[error("the log has stopped after a write failure and accepts no more appends: {0}")]
    Stopped(String),
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
    /// The most append requests waiting for the writer; more make appenders wait.
    pub queue_depth_max: usize,
    /// Recent entries kept in memory per partition, in payload bytes, so readers that keep up
    /// never read the disk.
    pub tail_bytes_max: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            partitions: 1,
            segment_bytes_max: 64 << 20,
            record_bytes_max: 4 << 20,
            group_commit_entries_max: 16_384,
            queue_depth_max: 1024,
            tail_bytes_max: 64 << 20,
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
        if self.segment_bytes_max < HEADER_BYTES + (RECORD_HEADER_BYTES + self.record_bytes_max) as u64 {
            return invalid("segment_bytes_max must hold at least one record of record_bytes_max");
        }
        if self.group_commit_entries_max == 0 || self.queue_depth_max == 0 {
            return invalid("group_commit_entries_max and queue_depth_max must be positive");
        }
        Ok(())
    }
}

fn writer_gone() -> Error {
    Error::Stopped("the writer is not running".into())
}

/// Entries queued for the writer; [`PendingAppend::durable`] waits for their group commit.
#[derive(Debug)]
pub struct PendingAppend {
    answer: oneshot::Receiver<Result<Vec<SeqNo>>>,
}

impl PendingAppend {
    /// Waits until the entries are durable and returns their sequence numbers.
    pub async fn durable(self) -> Result<Vec<SeqNo>> {
        self.answer.await.map_err(|_| writer_gone())?
    }
}

/// What recovery found when the log was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Last sequence number per partition.
    pub last_seqnos: Vec<SeqNo>,
    /// Bytes cut off torn segment tails.
    pub truncated_bytes: u64,
}

struct Request {
    entries: Vec<(PartitionId, Vec<u8>)>,
    reply: oneshot::Sender<Result<Vec<SeqNo>>>,
}

#[derive(Debug)]
struct PartitionState {
    dir: PathBuf,
    /// First sequence number of each segment, and its file.
    segments: BTreeMap<SeqNo, PathBuf>,
    /// The most recent durable entries, oldest first.
    tail: VecDeque<Entry>,
    tail_bytes: usize,
    last_seqno: SeqNo,
}

impl PartitionState {
    fn push_tail(&mut self, entry: Entry, tail_bytes_max: usize) {
        self.tail_bytes += entry.payload.len();
        self.last_seqno = entry.seqno;
        self.tail.push_back(entry);
        while self.tail_bytes > tail_bytes_max && self.tail.len() > 1 {
            if let Some(old) = self.tail.pop_front() {
                self.tail_bytes -= old.payload.len();
            }
        }
    }
}

/// Counters of the log since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Entries made durable.
    pub entries: u64,
    /// Group commits: each one write and one fsync per partition it touched.
    pub group_commits: u64,
}

#[derive(Debug)]
struct Shared {
    config: LogConfig,
    entries: std::sync::atomic::AtomicU64,
    group_commits: std::sync::atomic::AtomicU64,
    partitions: Vec<Mutex<PartitionState>>,
    /// Bumped after every group commit; readers wait on it for new entries.
    commits: watch::Sender<u64>,
}

impl Shared {
    fn partition(&self, partition: PartitionId) -> Result<MutexGuard<'_, PartitionState>> {
        let state = self
            .partitions
            .get(partition.0 as usize)
            .ok_or(Error::NoSuchPartition {
                partition: partition.0,
                partitions: self.config.partitions,
            })?;
        // A poisoned lock means a reader panicked; the state it guards is only ever replaced
        // whole, so it is still consistent.
        Ok(state.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }
}

/// The durable, partitioned log. Cheap to share behind an `Arc`; dropping the last handle stops
/// the writer after it has finished what was queued.
#[derive(Debug)]
pub struct Log {
    shared: Arc<Shared>,
    requests: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    recovery: Recovery,
}

impl Log {
    /// Opens (or creates) the log in `dir`, recovering every partition.
    pub fn open(dir: &Path, config: LogConfig) -> Result<Log> {
        config.validate()?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut recovery = Recovery::default();
        let mut states = Vec::new();
        let mut actives = Vec::new();
        for p in 0..config.partitions {
            let partition = PartitionId(p);
            let pdir = dir.join(format!("p{p:04}"));
            std::fs::create_dir_all(&pdir).map_err(|e| Error::io(&pdir, e))?;
            let (state, active, truncated) = recover_partition(&pdir, partition, &config)?;
            recovery.last_seqnos.push(state.last_seqno);
            recovery.truncated_bytes += truncated;
            states.push(Mutex::new(state));
            actives.push(active);
        }
        let (commits, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            config: config.clone(),
            entries: Default::default(),
            group_commits: Default::default(),
            partitions: states,
            commits,
        });
        let (sender, receiver) = mpsc::channel(config.queue_depth_max);
        let writer_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("chainql-log-writer".into())
            .spawn(move || Writer::new(writer_shared, actives).run(receiver))
            .map_err(|e| Error::io(dir, e))?;
        Ok(Log {
            shared,
            requests: Some(sender),
            writer: Some(writer),
            recovery,
        })
    }

    /// What recovery found when this log was opened.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// Counters since the log was opened.
    pub fn stats(&self) -> LogStats {
        use std::sync::atomic::Ordering::Relaxed;
        LogStats {
            entries: self.shared.entries.load(Relaxed),
            group_commits: self.shared.group_commits.load(Relaxed),
        }
    }

    pub fn partitions(&self) -> u32 {
        self.shared.config.partitions
    }

    /// Appends one entry and returns its sequence number once it is durable.
    pub async fn append(&self, partition: PartitionId, payload: Vec<u8>) -> Result<SeqNo> {
        let seqnos = self.append_many(vec![(partition, payload)]).await?;
        Ok(seqnos[0])
    }

    /// Appends entries, in order, and returns their sequence numbers once all are durable.
    pub async fn append_many(&self, entries: Vec<(PartitionId, Vec<u8>)>) -> Result<Vec<SeqNo>> {
        self.enqueue(entries).await?.durable().await
    }

    /// Queues entries for the writer and returns once they are queued, not yet durable. Entries
    /// are written in the order their `enqueue` calls completed, so a caller that must keep
    /// several appends in order (one sender's nonces) enqueues them one after another and waits
    /// for durability afterwards, outside its own lock.
    pub async fn enqueue(&self, entries: Vec<(PartitionId, Vec<u8>)>) -> Result<PendingAppend> {
        for (partition, payload) in &entries {
            if partition.0 >= self.shared.config.partitions {
                return Err(Error::NoSuchPartition {
                    partition: partition.0,
                    partitions: self.shared.config.partitions,
                });
            }
            if payload.len() > self.shared.config.record_bytes_max {
                return Err(Error::RecordTooLarge {
                    size: payload.len(),
                    max: self.shared.config.record_bytes_max,
                });
            }
        }
        let (reply, answer) = oneshot::channel();
        if entries.is_empty() {
            let _ = reply.send(Ok(Vec::new()));
            return Ok(PendingAppend { answer });
        }
        let requests = self.requests.as_ref().ok_or_else(writer_gone)?;
        requests
            .send(Request { entries, reply })
            .await
            .map_err(|_| writer_gone())?;
        Ok(PendingAppend { answer })
    }

    /// The last durable sequence number of `partition` (0 if it is empty).
    pub fn last_seqno(&self, partition: PartitionId) -> Result<SeqNo> {
        Ok(self.shared.partition(partition)?.last_seqno)
    }

    /// A receiver that changes after every group commit, to wait for new entries.
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.shared.commits.subscribe()
    }

    /// Reads up to `entries_max` durable entries of `partition`, starting at `from`.
    pub fn read(&self, partition: PartitionId, from: SeqNo, entries_max: usize) -> Result<Vec<Entry>> {
        let from = from.max(1);
        let segments: Vec<PathBuf> = {
            let state = self.shared.partition(partition)?;
            if from > state.last_seqno || entries_max == 0 {
                return Ok(Vec::new());
            }
            if let Some(first) = state.tail.front()
                && first.seqno <= from
            {
                let skip = (from - first.seqno) as usize;
                return Ok(state.tail.iter().skip(skip).take(entries_max).cloned().collect());
            }
            // Older than the in-memory tail: read the segments from the one holding `from`.
            let start = state
                .segments
                .range(..=from)
                .next_back()
                .map(|(first, _)| *first)
                .unwrap_or(1);
            state.segments.range(start..).map(|(_, path)| path.clone()).collect()
        };
        let mut out = Vec::new();
        for path in segments {
            let scanned = scan_segment(&path, partition, self.shared.config.record_bytes_max, true)?;
            for entry in scanned.entries {
                if entry.seqno >= from {
                    out.push(entry);
                    if out.len() == entries_max {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Stops the writer after it has made everything queued durable.
    pub fn close(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.requests.take();
        if let Some(writer) = self.writer.take() {
            // The writer thread never panics on I/O errors (it answers them), so a join error
            // means an invariant failed; surface it.
            if writer.join().is_err() {
                tracing::error!("the log writer thread panicked");
            }
        }
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Scans the segments of one partition and opens its active segment.
fn recover_partition(
    dir: &Path,
    partition: PartitionId,
    config: &LogConfig,
) -> Result<(PartitionState, ActiveSegment, u64)> {
    let mut segments = BTreeMap::new();
    let listing = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for item in listing {
        let item = item.map_err(|e| Error::io(dir, e))?;
        let name = item.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
            continue;
        };
        let first: SeqNo = stem.parse().map_err(|_| Error::Corrupt {
            path: item.path().display().to_string(),
            offset: 0,
            reason: "segment file name is not a sequence number".into(),
        })?;
        segments.insert(first, item.path());
    }

    let mut state = PartitionState {
        dir: dir.to_path_buf(),
        segments: BTreeMap::new(),
        tail: VecDeque::new(),
        tail_bytes: 0,
        last_seqno: 0,
    };
    let count = segments.len();
    let mut truncated = 0;
    let mut active = None;
    for (index, (first, path)) in segments.into_iter().enumerate() {
        let is_last = index + 1 == count;
        let scanned = scan_segment(&path, partition, config.record_bytes_max, true)?;
        if scanned.first_seqno != first {
            return Err(Error::Corrupt {
                path: path.display().to_string(),
                offset: 0,
                reason: format!("header says first seqno {}, file name says {first}", scanned.first_seqno),
            });
        }
        if state.last_seqno != 0 && first != state.last_seqno + 1 {
            return Err(Error::Corrupt {
                path: path.display().to_string(),
                offset: 0,
                reason: format!("starts at seqno {first}, expected {}", state.last_seqno + 1),
            });
        }
        if let Some((offset, reason)) = &scanned.invalid {
            if !is_last {
                return Err(Error::Corrupt {
                    path: path.display().to_string(),
                    offset: *offset,
                    reason: reason.clone(),
                });
            }
            let file_len = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?.len();
            truncated = file_len - scanned.valid_bytes;
            tracing::warn!(
                path = %path.display(),
                offset,
                reason = %reason,
                bytes = truncated,
                "cutting a torn tail off the log"
            );
        }
        for entry in scanned.entries {
            state.push_tail(entry, config.tail_bytes_max);
        }
        if scanned.first_seqno > state.last_seqno {
            // An empty segment: its first seqno is the next one.
            state.last_seqno = scanned.first_seqno - 1;
        }
        if is_last {
            active = Some(ActiveSegment::reopen(path.clone(), scanned.valid_bytes)?);
        }
        state.segments.insert(first, path);
    }
    let active = match active {
        Some(active) => active,
        None => {
            let active = ActiveSegment::create(dir, partition, 1)?;
            state.segments.insert(1, active.path.clone());
            active
        }
    };
    Ok((state, active, truncated))
}

/// The single owner of the segment files.
struct Writer {
    shared: Arc<Shared>,
    actives: Vec<ActiveSegment>,
    next_seqnos: Vec<SeqNo>,
    failure: Option<String>,
}

impl Writer {
    fn new(shared: Arc<Shared>, actives: Vec<ActiveSegment>) -> Writer {
        let next_seqnos = (0..shared.config.partitions)
            .map(|p| {
                shared
                    .partition(PartitionId(p))
                    .map(|s| s.last_seqno + 1)
                    .unwrap_or(1)
            })
            .collect();
        Writer {
            shared,
            actives,
            next_seqnos,
            failure: None,
        }
    }

    fn run(mut self, mut receiver: mpsc::Receiver<Request>) {
        while let Some(first) = receiver.blocking_recv() {
            let mut group = vec![first];
            let mut entries = group[0].entries.len();
            while entries < self.shared.config.group_commit_entries_max {
                match receiver.try_recv() {
                    Ok(request) => {
                        entries += request.entries.len();
                        group.push(request);
                    }
                    Err(_) => break,
                }
            }
            self.commit_group(group);
        }
        for active in &self.actives {
            let _ = active.sync();
        }
    }

    fn commit_group(&mut self, group: Vec<Request>) {
        if let Some(failure) = &self.failure {
            for request in group {
                let _ = request.reply.send(Err(Error::Stopped(failure.clone())));
            }
            return;
        }
        let partitions = self.shared.config.partitions as usize;
        let mut buffers: Vec<Vec<u8>> = vec![Vec::new(); partitions];
        let mut written: Vec<Vec<Entry>> = vec![Vec::new(); partitions];
        let mut replies = Vec::with_capacity(group.len());
        let mut outcome: Result<()> = Ok(());
        for request in group {
            let mut seqnos = Vec::with_capacity(request.entries.len());
            for (partition, payload) in request.entries {
                let p = partition.0 as usize;
                let seqno = self.next_seqnos[p];
                let record_bytes = (RECORD_HEADER_BYTES + payload.len()) as u64;
                let active = &self.actives[p];
                if active.bytes + buffers[p].len() as u64 + record_bytes > self.shared.config.segment_bytes_max
                    && outcome.is_ok()
                {
                    outcome = self.roll_segment(partition, &mut buffers[p], seqno);
                }
                segment::encode_record(&mut buffers[p], seqno, &payload);
                written[p].push(Entry {
                    partition,
                    seqno,
                    payload: payload.into(),
                });
                self.next_seqnos[p] += 1;
                seqnos.push(seqno);
            }
            replies.push((request.reply, seqnos));
        }
        if outcome.is_ok() {
            outcome = self.write_and_sync(&buffers);
        }
        match outcome {
            Ok(()) => {
                use std::sync::atomic::Ordering::Relaxed;
                let count: usize = written.iter().map(Vec::len).sum();
                self.shared.entries.fetch_add(count as u64, Relaxed);
                self.shared.group_commits.fetch_add(1, Relaxed);
                for (p, entries) in written.into_iter().enumerate() {
                    if entries.is_empty() {
                        continue;
                    }
                    let Ok(mut state) = self.shared.partition(PartitionId(p as u32)) else {
                        continue;
                    };
                    for entry in entries {
                        state.push_tail(entry, self.shared.config.tail_bytes_max);
                    }
                }
                self.shared.commits.send_modify(|n| *n += 1);
                for (reply, seqnos) in replies {
                    let _ = reply.send(Ok(seqnos));
                }
            }
            Err(error) => {
                // After a failed write or fsync the state of the file is unknown (the page cache
                // may have dropped the data), so the only safe course is to stop appending; a
                // restart recovers from what is really on disk.
                let message = error.to_string();
                tracing::error!(error = %message, "log write failed; the log stops accepting appends");
                self.failure = Some(message.clone());
                for (reply, _) in replies {
                    let _ = reply.send(Err(Error::Stopped(message.clone())));
                }
            }
        }
    }

    /// Writes what is buffered for `partition` to the current segment, makes it durable, and
    /// starts a new segment at `next_seqno`.
    fn roll_segment(&mut self, partition: PartitionId, buffer: &mut Vec<u8>, next_seqno: SeqNo) -> Result<()> {
        let p = partition.0 as usize;
        let active = &mut self.actives[p];
        active.write(buffer)?;
        active.sync()?;
        buffer.clear();
        let dir = self.shared.partition(partition)?.dir.clone();
        let next = ActiveSegment::create(&dir, partition, next_seqno)?;
        let path = next.path.clone();
        self.actives[p] = next;
        self.shared.partition(partition)?.segments.insert(next_seqno, path);
        Ok(())
    }

    fn write_and_sync(&mut self, buffers: &[Vec<u8>]) -> Result<()> {
        for (active, buffer) in self.actives.iter_mut().zip(buffers) {
            if !buffer.is_empty() {
                active.write(buffer)?;
            }
        }
        for (active, buffer) in self.actives.iter().zip(buffers) {
            if !buffer.is_empty() {
                active.sync()?;
            }
        }
        Ok(())
    }
}

/// The path of the segment of `partition` in a log at `dir` that starts at `first_seqno`, for
/// tools and tests that inspect files.
pub fn segment_file(dir: &Path, partition: PartitionId, first_seqno: SeqNo) -> PathBuf {
    segment_path(&dir.join(format!("p{:04}", partition.0)), first_seqno)
}
