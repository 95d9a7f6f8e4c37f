//! A property test: random interleavings of appends, snapshots, failovers (with rollbacks, after
//! which the new leader proposes some rolled-back entries again and drops the others),
//! restarts, and readers that subscribe, read a little, disconnect and come back. Every reader
//! must see each partition's entries exactly once and in order, follow every rollback, see each
//! snapshot once after the entries it covers, and end up with exactly the log's current branch.
//! A replica follows the log the same way, through its own disconnects and restarts, and ends
//! up holding the same entries, epochs and snapshots.

use std::time::Duration;

use chainql_sequencer::{Delivery, Event, Log, LogConfig, PartitionId, Position, Subscription};

const PARTITIONS: u32 = 3;
const READERS: usize = 3;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn config() -> LogConfig {
    LogConfig {
        partitions: PARTITIONS,
        segment_bytes_max: 1024,
        record_bytes_max: 128,
        tail_bytes_max: 256,
        subscription_buffer: 8,
        ..LogConfig::default()
    }
}

/// What the log should hold.
#[derive(Default)]
struct Model {
    /// Payloads of the current branch, per partition (index i is seqno i + 1).
    branch: Vec<Vec<Vec<u8>>>,
    committed: Vec<u64>,
    /// Every snapshot marked: (height, committed seqno per partition).
    snapshots: Vec<(u64, Vec<u64>)>,
}

struct Reader {
    positions: Vec<Position>,
    views: Vec<Vec<Vec<u8>>>,
    /// (height, seqno) of the snapshots seen, per partition.
    snapshots: Vec<Vec<(u64, u64)>>,
    subscription: Option<Subscription>,
}

impl Reader {
    fn new() -> Reader {
        Reader {
            positions: (0..PARTITIONS).map(|p| Position::start(PartitionId(p))).collect(),
            views: vec![Vec::new(); PARTITIONS as usize],
            snapshots: vec![Vec::new(); PARTITIONS as usize],
            subscription: None,
        }
    }

    /// Takes the next event if one arrives within `wait`; false if none did.
    async fn read_one(&mut self, wait: Duration, context: &str) -> bool {
        let Some(subscription) = self.subscription.as_mut() else {
            return false;
        };
        let delivery = match tokio::time::timeout(wait, subscription.next()).await {
            Err(_) | Ok(None) => return false,
            Ok(Some(delivery)) => delivery.unwrap_or_else(|e| panic!("{context}: stream error {e}")),
        };
        let p = delivery.position.partition.0 as usize;
        match delivery.event {
            Event::Entry(entry) => {
                assert_eq!(
                    entry.seqno,
                    self.views[p].len() as u64 + 1,
                    "{context}: partition {p} delivered seqno {} after {} entries (a duplicate or a gap)",
                    entry.seqno,
                    self.views[p].len()
                );
                self.views[p].push(entry.payload.to_vec());
            }
            Event::Rollback { to_seqno, .. } => {
                assert!(
                    to_seqno >= 1 && to_seqno <= self.views[p].len() as u64 + 1,
                    "{context}: rollback to {to_seqno} with {} entries seen",
                    self.views[p].len()
                );
                self.views[p].truncate(to_seqno as usize - 1);
            }
            Event::Snapshot { seqno, height, .. } => {
                assert!(
                    seqno <= self.views[p].len() as u64,
                    "{context}: snapshot at {seqno} before its entries ({} seen)",
                    self.views[p].len()
                );
                if let Some(&(last, _)) = self.snapshots[p].last() {
                    assert!(height > last, "{context}: snapshot {height} after {last}");
                }
                self.snapshots[p].push((height, seqno));
            }
        }
        self.positions[p] = delivery.position;
        true
    }
}

/// A log that copies the leader's through a subscription, resuming from its own contents.
struct Replica {
    dir: tempfile::TempDir,
    log: Option<Log>,
    subscription: Option<Subscription>,
}

impl Replica {
    fn open(dir: &std::path::Path) -> Log {
        Log::open_replica(std::sync::Arc::new(chainql_sequencer::FsStorage), dir, config())
            .expect("open replica")
    }

    /// Copies what arrives within `wait`, at most `max` deliveries, in one call; false if
    /// nothing did.
    async fn copy(&mut self, leader: &Log, max: usize, wait: Duration, context: &str) -> bool {
        let log = self.log.as_ref().expect("replica log");
        if self.subscription.is_none() {
            self.subscription = Some(leader.subscribe(&log.resume_positions()).expect("subscribe"));
        }
        let subscription = self.subscription.as_mut().expect("subscription");
        let mut batch: Vec<Delivery> = Vec::new();
        while batch.len() < max {
            match tokio::time::timeout(wait, subscription.next()).await {
                Ok(Some(delivery)) => {
                    batch.push(delivery.unwrap_or_else(|e| panic!("{context}: replica stream error {e}")))
                }
                Ok(None) => {
                    self.subscription = None;
                    break;
                }
                Err(_) => break,
            }
        }
        let copied = !batch.is_empty();
        log.replicate(batch, b"node")
            .await
            .unwrap_or_else(|e| panic!("{context}: replicate: {e}"));
        copied
    }
}

async fn run(seed: u64, steps: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut log = Some(
        Log::open_with(
            std::sync::Arc::new(chainql_sequencer::FsStorage),
            dir.path(),
            config(),
            b"node",
        )
        .expect("open"),
    );
    let mut model = Model {
        branch: vec![Vec::new(); PARTITIONS as usize],
        committed: vec![0; PARTITIONS as usize],
        snapshots: Vec::new(),
    };
    let mut readers: Vec<Reader> = (0..READERS).map(|_| Reader::new()).collect();
    let replica_dir = tempfile::tempdir().expect("tempdir");
    let mut replica = Replica {
        log: Some(Replica::open(replica_dir.path())),
        dir: replica_dir,
        subscription: None,
    };
    let mut appended = 0u64;
    for step in 0..steps {
        let context = format!("seed {seed} step {step}");
        let current = log.as_ref().expect("open log");
        match rng.below(100) {
            0..=34 => {
                let p = rng.below(u64::from(PARTITIONS)) as u32;
                let count = 1 + rng.below(5);
                let entries: Vec<_> = (0..count)
                    .map(|_| {
                        appended += 1;
                        (PartitionId(p), format!("{seed}-{appended}").into_bytes())
                    })
                    .collect();
                for (_, payload) in &entries {
                    model.branch[p as usize].push(payload.clone());
                }
                current.append_many(entries).await.expect("append");
            }
            35..=44 => {
                let height = model.snapshots.len() as u64 + 1;
                let seqnos: Vec<u64> = (0..PARTITIONS as usize)
                    .map(|p| {
                        let low = model.committed[p];
                        let high = model.branch[p].len() as u64;
                        low + rng.below(high - low + 1)
                    })
                    .collect();
                let ranges: Vec<_> = seqnos
                    .iter()
                    .enumerate()
                    .map(|(p, s)| (PartitionId(p as u32), *s))
                    .collect();
                current.mark_snapshot(height, &ranges).expect("snapshot");
                model.committed.clone_from(&seqnos);
                model.snapshots.push((height, seqnos));
            }
            45..=51 => {
                let p = rng.below(u64::from(PARTITIONS)) as usize;
                let len = model.branch[p].len() as u64;
                let committed = model.committed[p];
                let from = committed + 1 + rng.below(len - committed + 1);
                let truncate = (from <= len).then_some(from);
                let leader = format!("leader-{}", rng.below(3));
                let (_, rolled_back) = current
                    .fail_over(PartitionId(p as u32), leader.as_bytes(), truncate)
                    .await
                    .expect("fail over");
                assert_eq!(rolled_back.len() as u64, len + 1 - from, "{context}");
                model.branch[p].truncate(from as usize - 1);
                // The new leader proposes some of the rolled-back entries again, in its epoch,
                // and drops the rest.
                let again = rng.below(rolled_back.len() as u64 + 1) as usize;
                let proposed: Vec<_> = rolled_back[..again]
                    .iter()
                    .map(|entry| (PartitionId(p as u32), entry.payload.to_vec()))
                    .collect();
                for (_, payload) in &proposed {
                    model.branch[p].push(payload.clone());
                }
                if !proposed.is_empty() {
                    current.append_many(proposed).await.expect("propose again");
                }
            }
            52..=55 => {
                for reader in &mut readers {
                    reader.subscription = None;
                }
                replica.subscription = None;
                log.take().expect("log").close();
                let reopened = Log::open_with(
                    std::sync::Arc::new(chainql_sequencer::FsStorage),
                    dir.path(),
                    config(),
                    b"node",
                )
                .expect("reopen");
                // As the node does while replaying its blocks.
                for (height, seqnos) in &model.snapshots {
                    let ranges: Vec<_> = seqnos
                        .iter()
                        .enumerate()
                        .map(|(p, s)| (PartitionId(p as u32), *s))
                        .collect();
                    reopened.mark_snapshot(*height, &ranges).expect("re-mark");
                }
                log = Some(reopened);
            }
            56..=69 => {
                let r = rng.below(READERS as u64) as usize;
                if readers[r].subscription.is_none() {
                    readers[r].subscription =
                        Some(current.subscribe(&readers[r].positions).expect("subscribe"));
                }
            }
            70..=92 => {
                let r = rng.below(READERS as u64) as usize;
                for _ in 0..rng.below(12) {
                    if !readers[r].read_one(Duration::from_millis(20), &context).await {
                        break;
                    }
                }
            }
            93..=95 => {
                let max = 1 + rng.below(40) as usize;
                replica
                    .copy(current, max, Duration::from_millis(20), &context)
                    .await;
            }
            96 => {
                replica.subscription = None;
                replica.log.take().expect("replica").close();
                replica.log = Some(Replica::open(replica.dir.path()));
            }
            _ => {
                let r = rng.below(READERS as u64) as usize;
                readers[r].subscription = None;
                if rng.below(2) == 0 {
                    replica.subscription = None;
                }
            }
        }
        for (p, branch) in model.branch.iter().enumerate() {
            assert_eq!(
                current_or_reopened(&log)
                    .last_seqno(PartitionId(p as u32))
                    .expect("last"),
                branch.len() as u64,
                "{context}"
            );
        }
    }

    let entries: usize = model.branch.iter().map(Vec::len).sum();
    eprintln!(
        "seed {seed}: {appended} appended, {entries} on the branch, {} snapshots, {} views",
        model.snapshots.len(),
        readers
            .iter()
            .map(|r| r.views.iter().map(Vec::len).sum::<usize>())
            .sum::<usize>()
    );
    // Every reader catches up and holds exactly the current branch, with every snapshot.
    let current = log.as_ref().expect("log");
    for (r, reader) in readers.iter_mut().enumerate() {
        let context = format!("seed {seed} reader {r} catching up");
        if reader.subscription.is_none() {
            reader.subscription = Some(current.subscribe(&reader.positions).expect("subscribe"));
        }
        let caught_up = |reader: &Reader| {
            (0..PARTITIONS as usize).all(|p| {
                reader.views[p] == model.branch[p]
                    && reader.snapshots[p].last().map(|s| s.0) == model.snapshots.last().map(|s| s.0)
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !caught_up(reader) {
            assert!(
                std::time::Instant::now() < deadline,
                "{context}: did not catch up"
            );
            reader.read_one(Duration::from_millis(200), &context).await;
        }
        for p in 0..PARTITIONS as usize {
            // The snapshots a reader saw after its last rollback are the model's, in order.
            let expected: Vec<(u64, u64)> = model.snapshots.iter().map(|(h, s)| (*h, s[p])).collect();
            let seen = &reader.snapshots[p];
            assert_eq!(
                &expected[expected.len() - seen.len().min(expected.len())..],
                &seen[seen.len() - seen.len().min(expected.len())..],
                "{context}"
            );
        }
    }

    // The replica catches up and holds the same entries (with their epochs), the same epoch
    // starts, and the same snapshots.
    let context = format!("seed {seed} replica catching up");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let caught_up = |replica: &Replica| {
        let log = replica.log.as_ref().expect("replica");
        (0..PARTITIONS).all(|p| {
            let p = PartitionId(p);
            log.last_seqno(p).ok() == current.last_seqno(p).ok()
                && log.snapshots(p).ok() == current.snapshots(p).ok()
        })
    };
    while !caught_up(&replica) {
        assert!(
            std::time::Instant::now() < deadline,
            "{context}: did not catch up"
        );
        replica
            .copy(current, 1000, Duration::from_millis(50), &context)
            .await;
    }
    let copy = replica.log.as_ref().expect("replica");
    let copied: u64 = (0..PARTITIONS)
        .map(|p| copy.last_seqno(PartitionId(p)).expect("last"))
        .sum();
    let epochs: usize = (0..PARTITIONS)
        .map(|p| copy.epochs(PartitionId(p)).expect("epochs").len())
        .sum();
    eprintln!("seed {seed}: the replica holds {copied} entries in {epochs} epochs");
    for p in (0..PARTITIONS).map(PartitionId) {
        let last = current.last_seqno(p).expect("last");
        let original = current.read(p, 1, last as usize + 1).expect("read");
        assert_eq!(
            copy.read(p, 1, last as usize + 1).expect("read"),
            original,
            "{context}"
        );
        let starts = |log: &Log| -> Vec<(u64, u64)> {
            let epochs = log.epochs(p).expect("epochs");
            // The epochs some entry was written in, with where they start.
            epochs
                .iter()
                .filter(|e| original.iter().any(|entry| entry.epoch == e.epoch))
                .map(|e| (e.epoch, e.start_seqno))
                .collect()
        };
        assert_eq!(starts(copy), starts(current), "{context}: partition {}", p.0);
    }
}

fn current_or_reopened(log: &Option<Log>) -> &Log {
    log.as_ref().expect("log")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_see_every_committed_entry_exactly_once_in_order() {
    let seeds: u64 = std::env::var("CHAINQL_PROPERTY_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    for seed in 1..=seeds {
        run(seed, 400).await;
    }
}
