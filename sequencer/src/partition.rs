//! One partition: its segments, its in-memory tail, its failover history and snapshot markers,
//! and the writer thread that owns its files.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use crate::failover::{EpochStart, FailoverLog};
use crate::segment::{self, HEADER_BYTES, RECORD_HEADER_BYTES, SegmentReader, scan_segment, segment_path};
use crate::storage::{Storage, WritableFile};
use crate::{Entry, Epoch, Error, LogConfig, PartitionId, Result, SeqNo};

/// A committed block's range end in one partition: every entry up to `seqno` is ordered by a
/// block at or before `height`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub height: u64,
    pub seqno: SeqNo,
}

#[derive(Debug, Clone)]
pub(crate) struct SegmentInfo {
    pub path: PathBuf,
    /// Bytes holding whole, durable records.
    pub durable_bytes: u64,
    /// Sparse (seqno, offset) index.
    pub index: Vec<(SeqNo, u64)>,
    /// Last seqno in the segment (first - 1 when empty).
    pub last_seqno: SeqNo,
}

impl SegmentInfo {
    /// The offset of a record at or before `seqno`, from the sparse index: where to start
    /// reading to find `seqno`.
    pub fn offset_before(&self, seqno: SeqNo) -> u64 {
        self.index
            .iter()
            .rev()
            .find(|(indexed, _)| *indexed <= seqno)
            .map(|(_, offset)| *offset)
            .unwrap_or(HEADER_BYTES)
    }
}

/// What readers see of a partition, behind one lock.
#[derive(Debug)]
pub(crate) struct PartitionState {
    pub segments: BTreeMap<SeqNo, SegmentInfo>,
    pub tail: VecDeque<Entry>,
    pub tail_bytes: usize,
    pub last_seqno: SeqNo,
    pub epochs: Vec<EpochStart>,
    pub snapshots: Vec<Snapshot>,
    /// Bumped by every rollback, so live readers re-check their position.
    pub rollbacks: u64,
}

impl PartitionState {
    pub fn committed_seqno(&self) -> SeqNo {
        self.snapshots.last().map(|s| s.seqno).unwrap_or(0)
    }

    /// The first seqno still readable: retention releases whole segments from the front.
    pub fn first_kept_seqno(&self) -> SeqNo {
        self.segments.keys().next().copied().unwrap_or(1)
    }

    /// Refuses a read from before the first kept entry: what a reader there would miss is
    /// gone, and skipping it silently would break "nothing missed".
    pub fn check_kept(&self, partition: PartitionId, from: SeqNo) -> Result<()> {
        let first = self.first_kept_seqno();
        if from < first {
            return Err(Error::Released {
                partition: partition.0,
                seqno: from,
                first_kept: first,
            });
        }
        Ok(())
    }

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

/// The parts of a partition shared between the writer, the log and readers.
#[derive(Debug)]
pub(crate) struct PartitionShared {
    pub id: PartitionId,
    pub dir: PathBuf,
    pub config: LogConfig,
    pub storage: Arc<dyn Storage>,
    state: Mutex<PartitionState>,
    /// Held shared while segments are read, exclusively while they are truncated or removed.
    pub files: std::sync::RwLock<()>,
    /// Bumped after every group commit, snapshot and rollback.
    pub changes: watch::Sender<u64>,
    pub appended: AtomicU64,
    pub group_commits: AtomicU64,
    /// Set while the partition copies a leader's entries instead of taking appends. Changed
    /// only by the writer, so a request is judged by the role the partition had when it ran.
    pub replica: AtomicBool,
}

impl PartitionShared {
    pub fn lock(&self) -> MutexGuard<'_, PartitionState> {
        // The state is replaced field by field under the lock with no panicking code in
        // between, so a poisoned lock still guards a consistent state.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn notify(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Records a snapshot marker; idempotent for a height already recorded.
    pub fn mark_snapshot(&self, height: u64, seqno: SeqNo) -> Result<()> {
        {
            let mut state = self.lock();
            if let Some(last) = state.snapshots.last().copied() {
                if height <= last.height {
                    // Replaying a height already recorded: it must say the same.
                    let known = state
                        .snapshots
                        .binary_search_by_key(&height, |s| s.height)
                        .ok()
                        .map(|i| state.snapshots[i].seqno);
                    return match known {
                        Some(known) if known == seqno => Ok(()),
                        _ => Err(Error::InvalidPosition(format!(
                            "partition {}: a snapshot at height {height} ending at {seqno} conflicts with the recorded ones",
                            self.id.0
                        ))),
                    };
                }
                if seqno < last.seqno {
                    return Err(Error::InvalidPosition(format!(
                        "partition {}: snapshot at height {height} ends at seqno {seqno}, before the previous one ({})",
                        self.id.0, last.seqno
                    )));
                }
            }
            if seqno > state.last_seqno {
                return Err(Error::InvalidPosition(format!(
                    "partition {}: snapshot at height {height} ends at seqno {seqno}, past the end of the log ({})",
                    self.id.0, state.last_seqno
                )));
            }
            state.snapshots.push(Snapshot { height, seqno });
        }
        self.notify();
        Ok(())
    }

    /// Reads up to `entries_max` entries from `from`: from the tail when it holds them, otherwise
    /// from the segments.
    pub fn read(&self, from: SeqNo, entries_max: usize) -> Result<Vec<Entry>> {
        // Segments are read outside the state lock but under the files lock, which a failover
        // takes exclusively while it truncates or removes segments.
        let _files = self.files.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (plan, last) = {
            let state = self.lock();
            let from = from.max(1);
            state.check_kept(self.id, from)?;
            if from > state.last_seqno || entries_max == 0 {
                return Ok(Vec::new());
            }
            if let Some(first) = state.tail.front()
                && first.seqno <= from
            {
                let skip = (from - first.seqno) as usize;
                return Ok(state.tail.iter().skip(skip).take(entries_max).cloned().collect());
            }
            let start = state
                .segments
                .range(..=from)
                .next_back()
                .map(|(first, _)| *first)
                .unwrap_or_else(|| state.first_kept_seqno());
            let plan: Vec<SegmentInfo> = state.segments.range(start..).map(|(_, s)| s.clone()).collect();
            (plan, state.last_seqno)
        };
        self.read_segments(&plan, from.max(1), last, entries_max)
    }

    fn read_segments(
        &self,
        plan: &[SegmentInfo],
        from: SeqNo,
        last: SeqNo,
        entries_max: usize,
    ) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        for info in plan {
            if info.last_seqno < from {
                continue;
            }
            let offset = info.offset_before(from);
            let mut reader = SegmentReader::new(
                info.path.clone(),
                offset,
                info.durable_bytes,
                self.config.record_bytes_max,
            );
            while let Some((seqno, epoch, payload)) = reader.next(self.storage.as_ref())? {
                if seqno > last {
                    break;
                }
                if seqno >= from {
                    out.push(Entry {
                        partition: self.id,
                        seqno,
                        epoch,
                        payload: payload.into(),
                    });
                    if out.len() == entries_max {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// A request to a partition's writer.
pub(crate) enum Request {
    Append {
        payloads: Vec<Vec<u8>>,
        queued_at: Instant,
        reply: oneshot::Sender<Result<Vec<SeqNo>>>,
    },
    /// Anything else, carried out alone, in order with the appends around it.
    Control(Control),
}

/// A request to a partition's writer other than an append.
pub(crate) enum Control {
    /// Roll back entries from `truncate_from` (if any) and start a new epoch led by `leader`.
    FailOver {
        truncate_from: Option<SeqNo>,
        leader: Vec<u8>,
        reply: oneshot::Sender<Result<(Epoch, Vec<Entry>)>>,
    },
    /// Copy a leader's entries into this replica, keeping their seqnos and epochs; a newer epoch
    /// is recorded as led by `leader`.
    Replicate {
        entries: Vec<Entry>,
        leader: Vec<u8>,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Remove this replica's entries from `from` on: the leader abandoned them.
    RollBack {
        from: SeqNo,
        reply: oneshot::Sender<Result<Vec<Entry>>>,
    },
    /// Lead again, without a new epoch: the current one is `leader`'s.
    TakeLead {
        leader: Vec<u8>,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Answer once every request queued before this one has been carried out.
    Barrier { reply: oneshot::Sender<()> },
}

pub(crate) fn replica_append() -> Error {
    Error::Role("a replica takes entries only from its leader".into())
}

/// A partition opened: its shared state, its writer's queue and thread, and what recovery found.
pub(crate) type OpenedPartition = (
    Arc<PartitionShared>,
    mpsc::Sender<Request>,
    std::thread::JoinHandle<()>,
    PartitionRecovery,
);

/// An append waiting in a group: its payloads, when it was queued, and where to answer.
type QueuedAppend = (Vec<Vec<u8>>, Instant, oneshot::Sender<Result<Vec<SeqNo>>>);

/// What recovery found in one partition.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PartitionRecovery {
    pub last_seqno: SeqNo,
    pub truncated_bytes: u64,
    pub segments: usize,
    pub entries: u64,
}

/// Opens a partition: scans its segments, cuts a torn tail, refuses corruption, loads its
/// failover history, and starts its writer thread.
pub(crate) fn open_partition(
    storage: Arc<dyn Storage>,
    dir: &Path,
    id: PartitionId,
    config: &LogConfig,
    leader: Option<&[u8]>,
    waits: Arc<WaitRecorder>,
) -> Result<OpenedPartition> {
    storage.create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut failover = FailoverLog::open(storage.as_ref(), dir, leader.unwrap_or_default())?;
    let mut files: BTreeMap<SeqNo, PathBuf> = BTreeMap::new();
    for path in storage.list(dir).map_err(|e| Error::io(dir, e))? {
        let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".seg"))
        else {
            continue;
        };
        let first: SeqNo = stem.parse().map_err(|_| Error::Corrupt {
            path: path.display().to_string(),
            offset: 0,
            reason: "segment file name is not a sequence number".into(),
        })?;
        files.insert(first, path);
    }

    // A crash while a segment was being created can leave the last segment shorter than its
    // header. It holds no record, so it is a torn tail: remove it.
    if let Some((&first, path)) = files.iter().next_back() {
        let len = storage.len(path).map_err(|e| Error::io(path, e))?;
        if len < HEADER_BYTES {
            tracing::warn!(path = %path.display(), bytes = len, "removing a segment torn while it was created");
            storage.remove(path).map_err(|e| Error::io(path, e))?;
            storage.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
            files.remove(&first);
        }
    }

    let mut state = PartitionState {
        segments: BTreeMap::new(),
        tail: VecDeque::new(),
        tail_bytes: 0,
        last_seqno: 0,
        epochs: Vec::new(),
        snapshots: Vec::new(),
        rollbacks: 0,
    };
    let mut recovery = PartitionRecovery::default();
    let count = files.len();
    let mut active: Option<(Box<dyn WritableFile>, PathBuf, u64)> = None;
    for (i, (first, path)) in files.into_iter().enumerate() {
        let is_last = i + 1 == count;
        let scanned = scan_segment(
            storage.as_ref(),
            &path,
            id,
            config.record_bytes_max,
            config.segment_bytes_max,
        )?;
        let corrupt = |offset: u64, reason: String| Error::Corrupt {
            path: path.display().to_string(),
            offset,
            reason,
        };
        if scanned.first_seqno != first {
            return Err(corrupt(
                0,
                format!(
                    "header says first seqno {}, file name says {first}",
                    scanned.first_seqno
                ),
            ));
        }
        if state.last_seqno != 0 && first != state.last_seqno + 1 {
            return Err(corrupt(
                0,
                format!("starts at seqno {first}, expected {}", state.last_seqno + 1),
            ));
        }
        if let Some((offset, reason)) = &scanned.invalid {
            if !is_last || scanned.valid_after_invalid {
                return Err(corrupt(*offset, reason.clone()));
            }
            let file_len = storage.len(&path).map_err(|e| Error::io(&path, e))?;
            recovery.truncated_bytes += file_len - scanned.valid_bytes;
            tracing::warn!(path = %path.display(), offset, reason = %reason, "cutting a torn tail off the log");
            storage
                .truncate(&path, scanned.valid_bytes)
                .map_err(|e| Error::io(&path, e))?;
        }
        let last_seqno = scanned.first_seqno + scanned.records.len() as u64 - 1;
        recovery.entries += scanned.records.len() as u64;
        for (seqno, epoch, payload) in scanned.records {
            state.push_tail(
                Entry {
                    partition: id,
                    seqno,
                    epoch,
                    payload: payload.into(),
                },
                config.tail_bytes_max,
            );
        }
        state.last_seqno = last_seqno;
        if is_last {
            let file = storage.open_append(&path).map_err(|e| Error::io(&path, e))?;
            active = Some((file, path.clone(), scanned.valid_bytes));
        }
        state.segments.insert(
            first,
            SegmentInfo {
                path,
                durable_bytes: scanned.valid_bytes,
                index: scanned.index,
                last_seqno,
            },
        );
    }
    let (file, path, bytes) = match active {
        Some(active) => active,
        None => {
            let (file, info) = create_segment(storage.as_ref(), dir, id, 1)?;
            let path = info.path.clone();
            state.segments.insert(1, info);
            (file, path, HEADER_BYTES)
        }
    };
    // Epochs that start past the end: a rollback cut the entries, then stopped before the
    // history changed. Entries of those epochs may have been read, so their numbers are never
    // reused: a leader goes on in a new epoch after them (readers on the cut branch are told to
    // roll back); a replica forgets them and takes its leader's next epoch as it comes.
    if failover.current().start_seqno > state.last_seqno + 1 {
        let next = state.last_seqno + 1;
        tracing::warn!(
            partition = id.0,
            epoch_start = failover.current().start_seqno,
            log_end = state.last_seqno,
            "finishing a rollback that was interrupted"
        );
        if leader.is_some() {
            let current = failover.current().leader.clone();
            failover.start_epoch(storage.as_ref(), dir, next, &current)?;
        } else {
            failover.forget_from(storage.as_ref(), dir, next + 1)?;
        }
    }
    // A leader of its own starts an epoch when the partition was last led by another node; a
    // replica keeps the epochs it copied.
    if let Some(leader) = leader
        && failover.current().leader != leader
    {
        failover.start_epoch(storage.as_ref(), dir, state.last_seqno + 1, leader)?;
    }
    state.epochs = failover.entries().to_vec();
    recovery.last_seqno = state.last_seqno;
    recovery.segments = state.segments.len();

    let (changes, _) = watch::channel(0);
    let shared = Arc::new(PartitionShared {
        id,
        dir: dir.to_path_buf(),
        config: config.clone(),
        storage,
        state: Mutex::new(state),
        files: std::sync::RwLock::new(()),
        changes,
        appended: AtomicU64::new(0),
        group_commits: AtomicU64::new(0),
        replica: AtomicBool::new(leader.is_none()),
    });
    let (sender, receiver) = mpsc::channel(config.queue_depth_max);
    let writer = Writer {
        next_seqno: recovery.last_seqno + 1,
        shared: Arc::clone(&shared),
        active: ActiveSegment { file, path, bytes },
        failover,
        failure: None,
        waits,
    };
    let handle = std::thread::Builder::new()
        .name(format!("chainql-log-p{}", id.0))
        .spawn(move || writer.run(receiver))
        .map_err(|e| Error::io(dir, e))?;
    Ok((shared, sender, handle, recovery))
}

fn create_segment(
    storage: &dyn Storage,
    dir: &Path,
    id: PartitionId,
    first_seqno: SeqNo,
) -> Result<(Box<dyn WritableFile>, SegmentInfo)> {
    let path = segment_path(dir, first_seqno);
    let mut file = storage.create(&path).map_err(|e| Error::io(&path, e))?;
    file.append(&segment::encode_header(id, first_seqno))
        .and_then(|()| file.sync())
        .map_err(|e| Error::io(&path, e))?;
    storage.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
    Ok((
        file,
        SegmentInfo {
            path,
            durable_bytes: HEADER_BYTES,
            index: Vec::new(),
            last_seqno: first_seqno - 1,
        },
    ))
}

#[derive(Debug)]
struct ActiveSegment {
    file: Box<dyn WritableFile>,
    path: PathBuf,
    bytes: u64,
}

/// Records how long appends waited for their group commit, for benchmarks.
#[derive(Debug, Default)]
pub struct WaitRecorder {
    samples: Mutex<Vec<Duration>>,
    enabled: std::sync::atomic::AtomicBool,
}

impl WaitRecorder {
    /// Starts recording waits (off by default: it costs a lock per group commit).
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }

    /// Takes the waits recorded so far.
    pub fn take(&self) -> Vec<Duration> {
        std::mem::take(&mut *self.samples.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn record(&self, waits: impl Iterator<Item = Duration>) {
        if self.enabled.load(Ordering::Relaxed) {
            self.samples
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(waits);
        }
    }
}

/// The single owner of a partition's files.
struct Writer {
    shared: Arc<PartitionShared>,
    active: ActiveSegment,
    failover: FailoverLog,
    next_seqno: SeqNo,
    failure: Option<String>,
    waits: Arc<WaitRecorder>,
}

impl Writer {
    fn run(mut self, mut receiver: mpsc::Receiver<Request>) {
        let limit = self.shared.config.group_commit_entries_max;
        let wait_max = self.shared.config.group_commit_wait_max;
        while let Some(first) = receiver.blocking_recv() {
            let mut group = Vec::new();
            let mut entries = 0;
            let started = Instant::now();
            let mut next = Some(first);
            while let Some(request) = next.take() {
                match request {
                    Request::Append {
                        payloads,
                        queued_at,
                        reply,
                    } => {
                        entries += payloads.len();
                        group.push((payloads, queued_at, reply));
                    }
                    Request::Control(control) => {
                        // Commit what came before, carry it out, then go on.
                        self.commit_group(std::mem::take(&mut group));
                        entries = 0;
                        self.control(control);
                    }
                }
                if entries < limit && started.elapsed() < wait_max {
                    next = receiver.try_recv().ok();
                }
            }
            self.commit_group(group);
        }
        let _ = self.active.file.sync();
    }

    /// Carries out a request other than an append, and answers it.
    fn control(&mut self, control: Control) {
        match control {
            Control::FailOver {
                truncate_from,
                leader,
                reply,
            } => {
                let _ = reply.send(self.fail_over(truncate_from, &leader));
            }
            Control::Replicate {
                entries,
                leader,
                reply,
            } => {
                let _ = reply.send(self.replicate(entries, &leader));
            }
            Control::RollBack { from, reply } => {
                let _ = reply.send(self.roll_back(from));
            }
            Control::TakeLead { leader, reply } => {
                let _ = reply.send(self.take_lead(&leader));
            }
            Control::Barrier { reply } => {
                let _ = reply.send(());
            }
        }
    }

    fn commit_group(&mut self, group: Vec<QueuedAppend>) {
        if group.is_empty() {
            return;
        }
        if let Some(failure) = &self.failure {
            for (_, _, reply) in group {
                let _ = reply.send(Err(Error::Stopped(failure.clone())));
            }
            return;
        }
        if self.shared.replica.load(Ordering::Acquire) {
            for (_, _, reply) in group {
                let _ = reply.send(Err(replica_append()));
            }
            return;
        }
        let epoch = self.failover.current().epoch;
        let partition = self.shared.id;
        let mut next = self.next_seqno;
        let mut written: Vec<Entry> = Vec::new();
        let mut replies = Vec::with_capacity(group.len());
        for (payloads, queued_at, reply) in group {
            let first = next;
            for payload in payloads {
                written.push(Entry {
                    partition,
                    seqno: next,
                    epoch,
                    payload: payload.into(),
                });
                next += 1;
            }
            replies.push((reply, (first..next).collect::<Vec<SeqNo>>(), queued_at));
        }
        match self.write(written) {
            Ok(()) => {
                let now = Instant::now();
                self.waits
                    .record(replies.iter().map(|(_, _, queued)| now - *queued));
                for (reply, seqnos, _) in replies {
                    let _ = reply.send(Ok(seqnos));
                }
            }
            Err(error) => {
                let message = self.failure.clone().unwrap_or_else(|| error.to_string());
                for (reply, _, _) in replies {
                    let _ = reply.send(Err(Error::Stopped(message.clone())));
                }
            }
        }
    }

    /// Writes `entries` (numbered from the next seqno on) with one fsync, rolling segments at
    /// their size limit, and shows them to readers. A failure stops the partition: after a
    /// failed write or fsync the file's state is unknown (the page cache may have dropped the
    /// data), so the only safe course is to stop; a restart recovers from what is really on disk.
    fn write(&mut self, entries: Vec<Entry>) -> Result<()> {
        let partition = self.shared.id;
        let mut buffer = Vec::new();
        let mut new_index: Vec<(SeqNo, u64)> = Vec::new();
        let mut outcome: Result<()> = Ok(());
        for entry in &entries {
            debug_assert_eq!(entry.seqno, self.next_seqno);
            let record_bytes = (RECORD_HEADER_BYTES + entry.payload.len()) as u64;
            if outcome.is_ok()
                && self.active.bytes + buffer.len() as u64 + record_bytes
                    > self.shared.config.segment_bytes_max
            {
                outcome = self.roll_segment(&mut buffer, &mut new_index, entry.seqno);
            }
            let offset = self.active.bytes + buffer.len() as u64;
            let index_due = new_index
                .last()
                .map(|(_, o)| offset >= o + segment::INDEX_INTERVAL_BYTES)
                .unwrap_or(true);
            if index_due {
                new_index.push((entry.seqno, offset));
            }
            segment::encode_record(&mut buffer, entry.seqno, entry.epoch, &entry.payload);
            self.next_seqno += 1;
        }
        if outcome.is_ok() {
            outcome = self
                .active
                .file
                .append(&buffer)
                .and_then(|()| self.active.file.sync())
                .map_err(|e| Error::io(&self.active.path, e));
        }
        if let Err(error) = outcome {
            let message = error.to_string();
            tracing::error!(partition = partition.0, error = %message, "log write failed; the partition stops accepting appends");
            self.failure = Some(message.clone());
            return Err(Error::Stopped(message));
        }
        self.active.bytes += buffer.len() as u64;
        let count = entries.len() as u64;
        {
            let mut state = self.shared.lock();
            let last = self.next_seqno - 1;
            if let Some(info) = state.segments.values_mut().next_back() {
                info.durable_bytes = self.active.bytes;
                info.last_seqno = last;
                merge_index(&mut info.index, new_index);
            }
            for entry in entries {
                state.push_tail(entry, self.shared.config.tail_bytes_max);
            }
        }
        self.shared.appended.fetch_add(count, Ordering::Relaxed);
        self.shared.group_commits.fetch_add(1, Ordering::Relaxed);
        self.shared.notify();
        Ok(())
    }

    /// Copies a leader's entries into this replica. They must continue it exactly, in epochs
    /// that never go back; an entry of a newer epoch first records that epoch's start.
    fn replicate(&mut self, entries: Vec<Entry>, leader: &[u8]) -> Result<()> {
        if let Some(failure) = &self.failure {
            return Err(Error::Stopped(failure.clone()));
        }
        if !self.shared.replica.load(Ordering::Acquire) {
            return Err(Error::Role(format!(
                "partition {} is led by this log; only a replica copies another log",
                self.shared.id.0
            )));
        }
        let partition = self.shared.id;
        let mut epoch = self.failover.current().epoch;
        for (next, entry) in (self.next_seqno..).zip(&entries) {
            if entry.partition != partition || entry.seqno != next {
                return Err(Error::InvalidPosition(format!(
                    "partition {}: a replicated entry must be {}/{next}, not {}/{}",
                    partition.0, partition.0, entry.partition.0, entry.seqno
                )));
            }
            if entry.epoch < epoch {
                return Err(Error::InvalidPosition(format!(
                    "partition {}: replicated entry {} is of epoch {}, older than the replica's epoch {epoch}",
                    partition.0, entry.seqno, entry.epoch
                )));
            }
            epoch = entry.epoch;
        }
        // Each epoch's start is recorded just before its first entry is written, so a crash
        // leaves at most one epoch starting past the last entry, right after it.
        let storage = Arc::clone(&self.shared.storage);
        let mut entries = entries.into_iter().peekable();
        while let Some(first) = entries.next() {
            let epoch = first.epoch;
            let current = self.failover.current();
            if epoch > current.epoch || current.leader.is_empty() {
                self.failover
                    .copy_epoch(storage.as_ref(), &self.shared.dir, epoch, first.seqno, leader)?;
                self.shared.lock().epochs = self.failover.entries().to_vec();
            }
            let mut run = vec![first];
            while let Some(next) = entries.next_if(|e| e.epoch == epoch) {
                run.push(next);
            }
            self.write(run)?;
        }
        Ok(())
    }

    /// Writes and syncs what is buffered, then starts a new segment at `next_seqno`.
    fn roll_segment(
        &mut self,
        buffer: &mut Vec<u8>,
        index: &mut Vec<(SeqNo, u64)>,
        next_seqno: SeqNo,
    ) -> Result<()> {
        self.active
            .file
            .append(buffer)
            .and_then(|()| self.active.file.sync())
            .map_err(|e| Error::io(&self.active.path, e))?;
        self.active.bytes += buffer.len() as u64;
        buffer.clear();
        let storage = Arc::clone(&self.shared.storage);
        let (file, info) = create_segment(storage.as_ref(), &self.shared.dir, self.shared.id, next_seqno)?;
        let path = info.path.clone();
        {
            let mut state = self.shared.lock();
            if let Some(previous) = state.segments.values_mut().next_back() {
                previous.durable_bytes = self.active.bytes;
                previous.last_seqno = next_seqno - 1;
                merge_index(&mut previous.index, std::mem::take(index));
            }
            state.segments.insert(next_seqno, info);
        }
        self.active = ActiveSegment {
            file,
            path,
            bytes: HEADER_BYTES,
        };
        Ok(())
    }

    /// Rolls back entries from `truncate_from` and starts a new epoch.
    fn fail_over(&mut self, truncate_from: Option<SeqNo>, leader: &[u8]) -> Result<(Epoch, Vec<Entry>)> {
        let rolled_back = self.cut(truncate_from.unwrap_or(self.next_seqno))?;
        let storage = Arc::clone(&self.shared.storage);
        let from = self.next_seqno;
        let epoch = self
            .failover
            .start_epoch(storage.as_ref(), &self.shared.dir, from, leader)?;
        // A replica that fails over leads from now on.
        self.shared.replica.store(false, Ordering::Release);
        self.rolled_back();
        Ok((epoch, rolled_back))
    }

    /// A replica that failed over before a restart leads again, in the epoch it started.
    fn take_lead(&mut self, leader: &[u8]) -> Result<()> {
        if self.failover.current().leader != leader {
            return Err(Error::Role(format!(
                "partition {}'s current epoch is led by another node",
                self.shared.id.0
            )));
        }
        self.shared.replica.store(false, Ordering::Release);
        Ok(())
    }

    /// Rolls back a replica's entries from `from` on, with the epochs that started there.
    fn roll_back(&mut self, from: SeqNo) -> Result<Vec<Entry>> {
        if !self.shared.replica.load(Ordering::Acquire) {
            return Err(Error::Role(format!(
                "partition {} is led by this log; only a replica rolls back at its leader's word",
                self.shared.id.0
            )));
        }
        let rolled_back = self.cut(from)?;
        let storage = Arc::clone(&self.shared.storage);
        self.failover
            .forget_from(storage.as_ref(), &self.shared.dir, from)?;
        self.rolled_back();
        Ok(rolled_back)
    }

    /// Removes the entries from `from` on (none committed in a block) and returns them.
    fn cut(&mut self, from: SeqNo) -> Result<Vec<Entry>> {
        if let Some(failure) = &self.failure {
            return Err(Error::Stopped(failure.clone()));
        }
        let last = self.next_seqno - 1;
        {
            let state = self.shared.lock();
            if from <= state.committed_seqno() {
                return Err(Error::InvalidPosition(format!(
                    "partition {}: entries up to {} are committed in a block and cannot be rolled back (asked from {from})",
                    self.shared.id.0,
                    state.committed_seqno()
                )));
            }
        }
        if from > last + 1 {
            return Err(Error::InvalidPosition(format!(
                "partition {}: cannot roll back from {from}, past the end of the log ({last})",
                self.shared.id.0
            )));
        }
        if from > last {
            return Ok(Vec::new());
        }
        let rolled_back = self.shared.read(from, (last - from + 1) as usize)?;
        self.truncate(from)?;
        Ok(rolled_back)
    }

    /// Shows readers the history after a rollback or failover.
    fn rolled_back(&mut self) {
        {
            let mut state = self.shared.lock();
            state.epochs = self.failover.entries().to_vec();
            state.rollbacks += 1;
        }
        self.shared.notify();
    }

    /// Removes entries from `from` on, from the files and from memory.
    fn truncate(&mut self, from: SeqNo) -> Result<()> {
        let shared = Arc::clone(&self.shared);
        let _files = shared
            .files
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let storage = Arc::clone(&self.shared.storage);
        let (keep_segment, drop_segments): (Option<SegmentInfo>, Vec<SegmentInfo>) = {
            let state = self.shared.lock();
            let containing = state.segments.range(..=from).next_back().map(|(_, s)| s.clone());
            let later = state.segments.range(from + 1..).map(|(_, s)| s.clone()).collect();
            (containing, later)
        };
        for info in &drop_segments {
            storage.remove(&info.path).map_err(|e| Error::io(&info.path, e))?;
        }
        let Some(info) = keep_segment else {
            return Err(Error::InvalidPosition(format!("no segment holds seqno {from}")));
        };
        // Find the offset of record `from` in its segment.
        let offset = info.offset_before(from);
        let mut reader = SegmentReader::new(
            info.path.clone(),
            offset,
            info.durable_bytes,
            self.shared.config.record_bytes_max,
        );
        let mut cut = offset;
        loop {
            let before = cut;
            match reader.next(storage.as_ref())? {
                Some((seqno, _, payload)) => {
                    if seqno >= from {
                        cut = before;
                        break;
                    }
                    cut = before + (RECORD_HEADER_BYTES + payload.len()) as u64;
                }
                None => break,
            }
        }
        storage
            .truncate(&info.path, cut)
            .map_err(|e| Error::io(&info.path, e))?;
        storage
            .sync_dir(&self.shared.dir)
            .map_err(|e| Error::io(&self.shared.dir, e))?;
        let file = storage
            .open_append(&info.path)
            .map_err(|e| Error::io(&info.path, e))?;
        self.active = ActiveSegment {
            file,
            path: info.path.clone(),
            bytes: cut,
        };
        self.next_seqno = from;
        let mut state = self.shared.lock();
        let first = state
            .segments
            .range(..=from)
            .next_back()
            .map(|(f, _)| *f)
            .unwrap_or(1);
        state.segments.retain(|f, _| *f <= first);
        if let Some(kept) = state.segments.get_mut(&first) {
            kept.durable_bytes = cut;
            kept.last_seqno = from - 1;
            kept.index.retain(|(seqno, _)| *seqno < from);
        }
        while state.tail.back().is_some_and(|e| e.seqno >= from) {
            if let Some(entry) = state.tail.pop_back() {
                state.tail_bytes -= entry.payload.len();
            }
        }
        state.last_seqno = from - 1;
        Ok(())
    }
}

fn merge_index(index: &mut Vec<(SeqNo, u64)>, new: Vec<(SeqNo, u64)>) {
    for (seqno, offset) in new {
        let due = index
            .last()
            .map(|(_, o)| offset >= o + segment::INDEX_INTERVAL_BYTES)
            .unwrap_or(true);
        if due {
            index.push((seqno, offset));
        }
    }
}
