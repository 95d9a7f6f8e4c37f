//! Crash consistency: the disk fails at the n-th fsync and the last writes are torn at random
//! points. For every n, recovery finds every acknowledged append, in order, and nothing else but
//! a clean prefix of the appends that were not acknowledged.

use std::path::Path;
use std::sync::Arc;

use chainql_sequencer::{FaultyStorage, Log, LogConfig, PartitionId};

const PARTITIONS: u32 = 2;

fn config() -> LogConfig {
    LogConfig {
        partitions: PARTITIONS,
        // Small segments, so crashes also hit segment rollover.
        segment_bytes_max: 2048,
        record_bytes_max: 256,
        tail_bytes_max: 512,
        ..LogConfig::default()
    }
}

fn payload(partition: u32, i: usize) -> Vec<u8> {
    format!("p{partition}-entry-{i:04}-{}", "x".repeat(i % 37)).into_bytes()
}

/// A small deterministic generator (xorshift64*), so every run cuts the same way.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Appends batches to one partition until the disk fails; returns how many entries were
/// acknowledged.
async fn append_until_failure(log: Arc<Log>, partition: u32, seed: u64) -> usize {
    let mut rng = Rng(seed | 1);
    let mut acknowledged = 0;
    let mut next = 0;
    for _ in 0..200 {
        let batch = 1 + (rng.next() % 6) as usize;
        let entries: Vec<_> = (next..next + batch)
            .map(|i| (PartitionId(partition), payload(partition, i)))
            .collect();
        next += batch;
        match log.append_many(entries).await {
            Ok(seqnos) => {
                assert_eq!(
                    seqnos.first().copied(),
                    Some(acknowledged as u64 + 1),
                    "seqnos follow on"
                );
                acknowledged += batch;
            }
            Err(_) => break,
        }
    }
    acknowledged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_append_survives_a_crash_at_any_fsync() {
    let dir = Path::new("/chainql-crash-test");
    for n in 1..=120u64 {
        let disk = FaultyStorage::new();
        let log = Arc::new(Log::open_with(Arc::new(disk.clone()), dir, config(), b"leader").expect("open"));
        disk.fail_at_sync(n);
        let tasks: Vec<_> = (0..PARTITIONS)
            .map(|p| tokio::spawn(append_until_failure(Arc::clone(&log), p, n * 31 + u64::from(p))))
            .collect();
        let mut acknowledged = Vec::new();
        for task in tasks {
            acknowledged.push(task.await.expect("appender"));
        }
        drop(log);

        let mut rng = Rng(n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let after = disk.crash(|_, pending| (rng.next() % (pending as u64 + 1)) as usize);
        let log = Log::open_with(Arc::new(after), dir, config(), b"leader")
            .unwrap_or_else(|e| panic!("recovery after a crash at fsync {n} failed: {e}"));
        for p in 0..PARTITIONS {
            let entries = log.read(PartitionId(p), 1, 100_000).expect("read");
            assert!(
                entries.len() >= acknowledged[p as usize],
                "crash at fsync {n}: partition {p} lost acknowledged entries ({} of {})",
                entries.len(),
                acknowledged[p as usize]
            );
            for (i, entry) in entries.iter().enumerate() {
                assert_eq!(entry.seqno, i as u64 + 1);
                assert_eq!(
                    &entry.payload[..],
                    &payload(p, i)[..],
                    "crash at fsync {n}: partition {p} entry {} is not the {i}th append",
                    entry.seqno
                );
            }
            assert_eq!(
                log.last_seqno(PartitionId(p)).expect("last"),
                entries.len() as u64
            );
        }
        // The recovered log takes appends again, numbered after what survived.
        let last = log.last_seqno(PartitionId(0)).expect("last");
        assert_eq!(
            log.append(PartitionId(0), b"after".to_vec())
                .await
                .expect("append"),
            last + 1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_creating_the_log_leaves_a_log_that_opens() {
    let dir = Path::new("/chainql-crash-open");
    for n in 1..=12u64 {
        let disk = FaultyStorage::new();
        disk.fail_at_sync(n);
        let opened = Log::open_with(Arc::new(disk.clone()), dir, config(), b"leader");
        drop(opened);
        let after = disk.crash(|_, pending| pending / 2);
        let log = Log::open_with(Arc::new(after), dir, config(), b"leader").unwrap_or_else(|e| {
            panic!("a crash at fsync {n} while creating the log left it unopenable: {e}")
        });
        assert_eq!(log.recovery().entries(), 0);
        assert_eq!(
            log.append(PartitionId(1), b"first".to_vec())
                .await
                .expect("append"),
            1
        );
    }
}
