//! Benchmarks of the Proof-of-Events log: durable append throughput by partition count, the
//! wait of an append for its group commit, subscription reads from memory and from disk, and
//! recovery (scan) speed. Run with `cargo bench -p chainql-sequencer`; figures go to
//! BENCHMARKS.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chainql_sequencer::{Event, Log, LogConfig, PartitionId, Position};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const RECORD_BYTES: usize = 200;
/// Entries per measured iteration of the append benchmark.
const APPENDS_PER_ITERATION: usize = 100_000;
/// Entries each appender hands over per request (the node's admission batches like this).
const APPEND_BATCH: usize = 1_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn record(i: usize) -> Vec<u8> {
    let mut payload = vec![0u8; RECORD_BYTES];
    payload[..8].copy_from_slice(&(i as u64).to_le_bytes());
    payload
}

/// Appends `total` records spread over `partitions`, from one task per partition, in batches.
async fn append_all(log: &Arc<Log>, partitions: u32, total: usize) {
    let per_partition = total / partitions as usize;
    let tasks: Vec<_> = (0..partitions)
        .map(|p| {
            let log = Arc::clone(log);
            tokio::spawn(async move {
                let mut sent = 0;
                while sent < per_partition {
                    let n = APPEND_BATCH.min(per_partition - sent);
                    let batch = (sent..sent + n).map(|i| (PartitionId(p), record(i))).collect();
                    log.append_many(batch).await.expect("append");
                    sent += n;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("appender");
    }
}

fn durable_appends(c: &mut Criterion) {
    let runtime = runtime();
    let mut group = c.benchmark_group("durable_appends_200_bytes");
    group.throughput(Throughput::Elements(APPENDS_PER_ITERATION as u64));
    group.sample_size(10);
    for partitions in [1u32, 2, 4] {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Arc::new(
            Log::open(
                dir.path(),
                LogConfig {
                    partitions,
                    tail_bytes_max: 16 << 20,
                    ..LogConfig::default()
                },
            )
            .expect("open"),
        );
        group.bench_with_input(
            BenchmarkId::from_parameter(partitions),
            &partitions,
            |b, &partitions| {
                b.iter(|| runtime.block_on(append_all(&log, partitions, APPENDS_PER_ITERATION)));
            },
        );
        let stats = log.stats();
        eprintln!(
            "{partitions} partitions: {} entries in {} group commits ({:.0} entries per fsync)",
            stats.entries,
            stats.group_commits,
            stats.entries as f64 / stats.group_commits.max(1) as f64
        );
    }
    group.finish();
}

/// Many small appenders, one entry per request: how long an append waits for its group commit.
fn group_commit_wait(c: &mut Criterion) {
    let runtime = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Arc::new(
        Log::open(
            dir.path(),
            LogConfig {
                partitions: 4,
                ..LogConfig::default()
            },
        )
        .expect("open"),
    );
    log.wait_recorder().enable();
    let mut group = c.benchmark_group("group_commit_wait");
    group.sample_size(10);
    const APPENDERS: usize = 256;
    const EACH: usize = 40;
    group.throughput(Throughput::Elements((APPENDERS * EACH) as u64));
    group.bench_function("256_appenders_single_entries", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let tasks: Vec<_> = (0..APPENDERS)
                    .map(|a| {
                        let log = Arc::clone(&log);
                        tokio::spawn(async move {
                            for i in 0..EACH {
                                log.append(PartitionId((a % 4) as u32), record(i))
                                    .await
                                    .expect("append");
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await.expect("appender");
                }
            })
        });
    });
    group.finish();
    let mut waits = log.wait_recorder().take();
    if waits.is_empty() {
        // The benchmark was filtered out: nothing to report.
        return;
    }
    waits.sort();
    let percentile = |p: f64| waits[((waits.len() as f64 - 1.0) * p) as usize];
    eprintln!(
        "group-commit wait over {} appends: p50 {:?}, p99 {:?}, max {:?}",
        waits.len(),
        percentile(0.50),
        percentile(0.99),
        waits.last().copied().unwrap_or_default()
    );
}

fn subscription_reads(c: &mut Criterion) {
    let runtime = runtime();
    const ENTRIES: usize = 200_000;
    let mut group = c.benchmark_group("subscription_read_200_bytes");
    group.throughput(Throughput::Elements(ENTRIES as u64));
    group.sample_size(10);
    for (name, tail_bytes_max) in [("memory", 256usize << 20), ("disk", 64 << 10)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Arc::new(
            Log::open(
                dir.path(),
                LogConfig {
                    tail_bytes_max,
                    segment_bytes_max: 16 << 20,
                    ..LogConfig::default()
                },
            )
            .expect("open"),
        );
        runtime.block_on(append_all(&log, 1, ENTRIES));
        group.bench_function(name, |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let mut stream = log
                        .subscribe(&[Position::start(PartitionId(0))])
                        .expect("subscribe");
                    let mut read = 0;
                    while read < ENTRIES {
                        let delivery = stream.next().await.expect("open").expect("event");
                        if let Event::Entry(_) = delivery.event {
                            read += 1;
                        }
                    }
                })
            });
        });
    }
    group.finish();
}

fn recovery(c: &mut Criterion) {
    let runtime = runtime();
    const ENTRIES: usize = 500_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        partitions: 4,
        ..LogConfig::default()
    };
    {
        let log = Arc::new(Log::open(dir.path(), config.clone()).expect("open"));
        runtime.block_on(append_all(&log, 4, ENTRIES));
    }
    let mut group = c.benchmark_group("recovery_scan");
    group.throughput(Throughput::Elements(ENTRIES as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("500k_entries_4_partitions", |b| {
        b.iter(|| {
            let started = Instant::now();
            let log = Log::open(dir.path(), config.clone()).expect("recover");
            assert_eq!(log.recovery().entries(), ENTRIES as u64);
            started.elapsed()
        });
    });
    group.finish();
}

criterion_group!(
    benches,
    durable_appends,
    group_commit_wait,
    subscription_reads,
    recovery
);
criterion_main!(benches);
