//! The log's public behaviour: durability across reopen, group commit, torn tails, corruption.

use std::io::Write;
use std::sync::Arc;

use chainql_sequencer::{Error, FaultyStorage, Log, LogConfig, PartitionId, Position, segment_file};

const P0: PartitionId = PartitionId(0);

fn payload(i: u64) -> Vec<u8> {
    format!("entry-{i:05}-{}", "x".repeat((i % 50) as usize)).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_survive_reopen_and_continue_numbering() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        partitions: 2,
        ..LogConfig::default()
    };
    {
        let log = Log::open(dir.path(), config.clone()).expect("open");
        for i in 1..=20 {
            assert_eq!(log.append(P0, payload(i)).await.expect("append"), i);
        }
        assert_eq!(
            log.append(PartitionId(1), b"other".to_vec())
                .await
                .expect("append"),
            1
        );
        assert!(matches!(
            log.append(PartitionId(2), b"x".to_vec()).await,
            Err(Error::NoSuchPartition { .. })
        ));
    }
    let log = Log::open(dir.path(), config).expect("reopen");
    assert_eq!(log.recovery().last_seqnos(), [20, 1]);
    assert_eq!(log.recovery().truncated_bytes(), 0);
    let entries = log.read(P0, 5, 3).expect("read");
    assert_eq!(entries.iter().map(|e| e.seqno).collect::<Vec<_>>(), [5, 6, 7]);
    assert_eq!(&entries[0].payload[..], &payload(5)[..]);
    assert_eq!(log.append(P0, payload(21)).await.expect("append"), 21);
    assert_eq!(log.read(P0, 21, 10).expect("read").len(), 1);
    assert!(log.read(P0, 22, 10).expect("read").is_empty());
}

/// When appenders outrun the disk, they wait for room in the writer's bounded queue instead of
/// piling up in memory; once the disk catches up, every append completes, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appenders_that_outrun_the_disk_wait_in_a_bounded_queue() {
    const APPENDERS: u64 = 50;
    let disk = FaultyStorage::new();
    let config = LogConfig {
        queue_depth_max: 4,
        group_commit_entries_max: 2,
        ..LogConfig::default()
    };
    let log = Arc::new(
        Log::open_with(Arc::new(disk.clone()), std::path::Path::new("/log"), config, b"").expect("open"),
    );
    disk.stall();
    let queued = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut appenders = Vec::new();
    for i in 1..=APPENDERS {
        let (log, queued) = (Arc::clone(&log), Arc::clone(&queued));
        appenders.push(tokio::spawn(async move {
            let pending = log.enqueue(vec![(P0, payload(i))]).await.expect("enqueue");
            queued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            pending.durable().await.expect("durable")
        }));
    }
    // Let the appenders run as far as they can against the stalled disk.
    let mut seen = 0;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let now = queued.load(std::sync::atomic::Ordering::SeqCst);
        if now == seen {
            break;
        }
        seen = now;
    }
    // The writer holds one group of at most 2 entries in its stalled fsync; the queue holds 4.
    assert!(
        (5..=6).contains(&seen),
        "{seen} of {APPENDERS} appends were accepted while the disk was stalled"
    );
    assert_eq!(log.last_seqno(P0).expect("last"), 0, "nothing is durable yet");
    disk.resume();
    let mut seqnos = Vec::new();
    for appender in appenders {
        seqnos.extend(appender.await.expect("appender"));
    }
    seqnos.sort_unstable();
    assert_eq!(seqnos, (1..=APPENDERS).collect::<Vec<_>>());
    assert_eq!(log.last_seqno(P0).expect("last"), APPENDERS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appenders_get_distinct_consecutive_seqnos() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Arc::new(Log::open(dir.path(), LogConfig::default()).expect("open"));
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let log = Arc::clone(&log);
        tasks.push(tokio::spawn(async move {
            let mut seqnos = Vec::new();
            for i in 0..100 {
                seqnos.push(log.append(P0, payload(t * 1000 + i)).await.expect("append"));
            }
            seqnos
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        let seqnos = task.await.expect("task");
        assert!(
            seqnos.windows(2).all(|w| w[0] < w[1]),
            "one appender's entries stay in order"
        );
        all.extend(seqnos);
    }
    all.sort();
    assert_eq!(all, (1..=800).collect::<Vec<_>>());
    let stats = log.stats();
    assert_eq!(stats.entries, 800);
    assert!(
        stats.group_commits < stats.entries,
        "concurrent appends share fsyncs: {stats:?}"
    );
    let batch = log
        .append_many((0..5).map(|i| (P0, payload(i))).collect())
        .await
        .expect("append many");
    assert_eq!(batch, [801, 802, 803, 804, 805]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_cut_off_and_appends_resume() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = Log::open(dir.path(), LogConfig::default()).expect("open");
        for i in 1..=10 {
            log.append(P0, payload(i)).await.expect("append");
        }
    }
    // A crash in the middle of the next write leaves half a record.
    let path = segment_file(dir.path(), P0, 1);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open segment");
    file.write_all(&[40, 0, 0, 0, 1, 2, 3, 4, 11, 0, 0, 0, 0, 0, 0, 0, b'p', b'a', b'r'])
        .expect("write torn record");
    drop(file);
    let log = Log::open(dir.path(), LogConfig::default()).expect("reopen");
    assert_eq!(log.recovery().last_seqnos(), [10]);
    assert_eq!(log.recovery().truncated_bytes(), 19);
    assert_eq!(log.append(P0, payload(11)).await.expect("append"), 11);
    drop(log);
    let log = Log::open(dir.path(), LogConfig::default()).expect("reopen again");
    let entries = log.read(P0, 1, 100).expect("read");
    assert_eq!(entries.len(), 11);
    assert_eq!(&entries[10].payload[..], &payload(11)[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_roll_over_and_old_ones_are_read_from_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        segment_bytes_max: 1024,
        record_bytes_max: 256,
        tail_bytes_max: 200,
        ..LogConfig::default()
    };
    let log = Log::open(dir.path(), config.clone()).expect("open");
    for i in 1..=100 {
        log.append(P0, payload(i)).await.expect("append");
    }
    let segments = std::fs::read_dir(dir.path().join("p0000")).expect("list").count();
    assert!(segments > 5, "rolled over into {segments} segments");
    let entries = log.read(P0, 1, 1000).expect("read from disk");
    assert_eq!(entries.len(), 100);
    for (i, entry) in entries.iter().enumerate() {
        assert_eq!(entry.seqno, i as u64 + 1);
        assert_eq!(&entry.payload[..], &payload(i as u64 + 1)[..]);
    }
    drop(log);
    let log = Log::open(dir.path(), config).expect("reopen");
    assert_eq!(log.recovery().last_seqnos(), [100]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_before_the_tail_is_refused_with_file_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        segment_bytes_max: 1024,
        record_bytes_max: 256,
        ..LogConfig::default()
    };
    {
        let log = Log::open(dir.path(), config.clone()).expect("open");
        for i in 1..=50 {
            log.append(P0, payload(i)).await.expect("append");
        }
    }
    let first = segment_file(dir.path(), P0, 1);
    let mut bytes = std::fs::read(&first).expect("read segment");
    bytes[32 + 16 + 2] ^= 0xff; // inside the payload of the first record
    std::fs::write(&first, &bytes).expect("write");
    match Log::open(dir.path(), config) {
        Err(Error::Corrupt { path, offset, reason }) => {
            assert!(path.ends_with("00000000000000000001.seg"), "{path}");
            assert_eq!(offset, 32);
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected a corruption error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_format_version_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = Log::open(dir.path(), LogConfig::default()).expect("open");
        log.append(P0, payload(1)).await.expect("append");
    }
    let path = segment_file(dir.path(), P0, 1);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[8] = 9;
    let crc = crc32c_of(&bytes[0..28]);
    bytes[28..32].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, &bytes).expect("write");
    assert!(matches!(
        Log::open(dir.path(), LogConfig::default()),
        Err(Error::UnsupportedVersion { version: 9, .. })
    ));
    std::fs::write(&path, b"garbage that is not a segment at all").expect("write");
    assert!(matches!(
        Log::open(dir.path(), LogConfig::default()),
        Err(Error::Corrupt { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_records_are_refused_before_writing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        record_bytes_max: 100,
        ..LogConfig::default()
    };
    let log = Log::open(dir.path(), config).expect("open");
    assert!(matches!(
        log.append(P0, vec![0; 101]).await,
        Err(Error::RecordTooLarge { size: 101, max: 100 })
    ));
    assert_eq!(log.last_seqno(P0).expect("seqno"), 0);
}

fn crc32c_of(bytes: &[u8]) -> u32 {
    // CRC-32C (Castagnoli), bitwise: independent of the implementation under test.
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_in_the_middle_of_the_last_segment_is_corruption_not_a_tear() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = Log::open(dir.path(), LogConfig::default()).expect("open");
        for i in 1..=10 {
            log.append(P0, payload(i)).await.expect("append");
        }
    }
    let path = segment_file(dir.path(), P0, 1);
    let mut bytes = std::fs::read(&path).expect("read");
    // The third record: header 32, then records of 24 + payload bytes.
    let third = 32 + (24 + payload(1).len()) + (24 + payload(2).len());
    bytes[third + 24 + 3] ^= 0x01;
    std::fs::write(&path, &bytes).expect("write");
    match Log::open(dir.path(), LogConfig::default()) {
        Err(Error::Corrupt { path, offset, reason }) => {
            assert!(path.ends_with("00000000000000000001.seg"), "{path}");
            assert_eq!(offset, third as u64);
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    // Nothing was cut: the file is as it was.
    assert_eq!(std::fs::read(&path).expect("read"), bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_only_committed_segments_below_the_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        segment_bytes_max: 1024,
        record_bytes_max: 256,
        tail_bytes_max: 256,
        ..LogConfig::default()
    };
    let log = Log::open(dir.path(), config.clone()).expect("open");
    for i in 1..=100 {
        log.append(P0, payload(i)).await.expect("append");
    }
    let segments = || {
        std::fs::read_dir(dir.path().join("p0000"))
            .expect("list")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "seg"))
            })
            .count()
    };
    let before = segments();
    // Nothing is committed yet: nothing may go.
    assert_eq!(log.release_below(P0, 90).expect("release"), 0);
    log.mark_snapshot(1, &[(P0, 50)]).expect("snapshot");
    let released = log.release_below(P0, 90).expect("release");
    assert!(released > 0, "segments wholly below seqno 50 were released");
    assert_eq!(segments(), before - released);
    // A read or a resume from before the first kept entry is refused, not silently moved up.
    let first = match log.read(P0, 1, 1000) {
        Err(Error::Released {
            partition: 0,
            seqno: 1,
            first_kept,
        }) => first_kept,
        other => panic!("expected a released position, got {other:?}"),
    };
    assert!(
        first > 1 && first <= 50,
        "everything not yet committed is kept (first kept: {first})"
    );
    assert!(matches!(log.read(P0, first - 1, 1), Err(Error::Released { .. })));
    let resume = Position {
        partition: P0,
        next_seqno: first - 1,
        epoch: 1,
        next_height: 1,
    };
    match log.subscribe(&[resume]) {
        Err(error @ Error::Released { .. }) => {
            assert!(
                error.to_string().contains("released after a checkpoint"),
                "{error}"
            )
        }
        Err(other) => panic!("expected a released position, got {other}"),
        Ok(_) => panic!("a resume from a released entry was accepted"),
    }
    // Entries from the oldest kept segment on are all still readable, in order.
    let entries = log.read(P0, first, 1000).expect("read");
    assert_eq!(
        entries.iter().map(|e| e.seqno).collect::<Vec<_>>(),
        (first..=100).collect::<Vec<_>>()
    );
    drop(log);
    let log = Log::open(dir.path(), config).expect("reopen after retention");
    assert_eq!(log.last_seqno(P0).expect("last"), 100);
    let disabled = Log::open(
        tempfile::tempdir().expect("tempdir").path(),
        LogConfig {
            retention: false,
            ..LogConfig::default()
        },
    )
    .expect("open");
    assert_eq!(disabled.release_below(P0, 100).expect("release"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_copies_its_leader_exactly_and_refuses_anything_else() {
    use chainql_sequencer::{Delivery, Event};
    let storage = Arc::new(FaultyStorage::new());
    let config = LogConfig {
        partitions: 1,
        ..LogConfig::default()
    };
    let leader = Log::open_with(storage.clone(), "/leader".as_ref(), config.clone(), b"a").expect("leader");
    let replica = Log::open_replica(storage.clone(), "/replica".as_ref(), config.clone()).expect("replica");
    for i in 1..=3 {
        leader.append(P0, payload(i)).await.expect("append");
    }
    leader.fail_over(P0, b"b", Some(3)).await.expect("fail over");
    leader.append(P0, payload(4)).await.expect("append");
    let entries = leader.read(P0, 1, 10).expect("read");
    assert_eq!(entries.iter().map(|e| e.epoch).collect::<Vec<_>>(), [1, 1, 2]);
    let deliver = |events: Vec<Event>| -> Vec<Delivery> {
        events
            .into_iter()
            .map(|event| Delivery {
                event,
                position: Position::start(P0),
            })
            .collect()
    };

    // Who may write where.
    let refused = replica
        .append(P0, payload(9))
        .await
        .expect_err("a replica takes no appends");
    assert!(matches!(refused, Error::Role(_)), "{refused}");
    let refused = leader
        .replicate(deliver(vec![Event::Entry(entries[0].clone())]), b"a")
        .await
        .expect_err("a leader copies nothing");
    assert!(matches!(refused, Error::Role(_)), "{refused}");
    for event in [
        Event::Rollback {
            partition: P0,
            to_seqno: 2,
        },
        Event::Snapshot {
            partition: P0,
            seqno: 1,
            height: 9,
        },
    ] {
        let refused = leader
            .replicate(deliver(vec![event]), b"a")
            .await
            .expect_err("a leader takes no rollback or snapshot from elsewhere");
        assert!(matches!(refused, Error::Role(_)), "{refused}");
    }
    assert_eq!(leader.last_seqno(P0).expect("last"), 3);
    assert!(leader.snapshots(P0).expect("snapshots").is_empty());

    // A gap, or an entry of an older epoch, is refused and changes nothing.
    let refused = replica
        .replicate(deliver(vec![Event::Entry(entries[1].clone())]), b"a")
        .await
        .expect_err("a gap");
    assert!(refused.to_string().contains("must be 0/1"), "{refused}");
    assert_eq!(replica.last_seqno(P0).expect("last"), 0);

    // The leader's entries, epochs and snapshots, copied.
    leader.mark_snapshot(1, &[(P0, 2)]).expect("snapshot");
    let mut events: Vec<Event> = entries.iter().cloned().map(Event::Entry).collect();
    events.push(Event::Snapshot {
        partition: P0,
        seqno: 2,
        height: 1,
    });
    replica.replicate(deliver(events), b"a").await.expect("replicate");
    assert_eq!(replica.read(P0, 1, 10).expect("read"), entries);
    let starts = |log: &Log| -> Vec<(u64, u64)> {
        log.epochs(P0)
            .expect("epochs")
            .iter()
            .map(|e| (e.epoch, e.start_seqno))
            .collect()
    };
    assert_eq!(starts(&replica), [(1, 1), (2, 3)]);
    assert_eq!(
        replica.snapshots(P0).expect("snapshots"),
        leader.snapshots(P0).expect("snapshots")
    );
    let older = chainql_sequencer::Entry {
        seqno: 4,
        epoch: 1,
        ..entries[0].clone()
    };
    let refused = replica
        .replicate(deliver(vec![Event::Entry(older)]), b"a")
        .await
        .expect_err("an older epoch");
    assert!(
        refused.to_string().contains("older than the replica's epoch 2"),
        "{refused}"
    );

    // The leader abandons entry 3; the replica rolls it back. A committed entry cannot be.
    leader.fail_over(P0, b"a", Some(3)).await.expect("fail over");
    let rollback = |to_seqno| {
        deliver(vec![Event::Rollback {
            partition: P0,
            to_seqno,
        }])
    };
    let refused = replica.replicate(rollback(2), b"a").await.expect_err("committed");
    assert!(refused.to_string().contains("committed in a block"), "{refused}");
    replica.replicate(rollback(3), b"a").await.expect("roll back");
    assert_eq!(replica.last_seqno(P0).expect("last"), 2);
    assert_eq!(starts(&replica), [(1, 1)]);

    // Reopened, the replica keeps the leader's epochs (it starts none of its own) and resumes
    // after its last entry.
    replica.close();
    let replica = Log::open_replica(storage.clone(), "/replica".as_ref(), config.clone()).expect("reopen");
    assert_eq!(starts(&replica), [(1, 1)]);
    let resume = &replica.resume_positions()[0];
    assert_eq!((resume.next_seqno, resume.epoch, resume.next_height), (3, 1, 0));

    // Failing over makes the replica a leader that takes appends in a new epoch.
    replica.fail_over(P0, b"r", None).await.expect("promote");
    assert!(!replica.is_replica());
    assert_eq!(replica.append(P0, payload(5)).await.expect("append"), 3);
    assert_eq!(starts(&replica), [(1, 1), (2, 3)]);

    // Reopened as a replica after that, it leads again only as the node that failed it over.
    replica.close();
    let replica = Log::open_replica(storage.clone(), "/replica".as_ref(), config).expect("reopen");
    assert!(replica.is_replica());
    let refused = replica.resume_lead(P0, b"x").await.expect_err("another node");
    assert!(matches!(refused, Error::Role(_)), "{refused}");
    replica.resume_lead(P0, b"r").await.expect("lead again");
    assert!(!replica.is_replica_partition(P0).expect("partition"));
    assert_eq!(replica.append(P0, payload(6)).await.expect("append"), 4);
    assert_eq!(starts(&replica), [(1, 1), (2, 3)]);
    leader.close();
    replica.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_cut_off_by_a_crash_is_finished_when_the_log_reopens() {
    use chainql_sequencer::Event;
    let storage = FaultyStorage::new();
    let config = LogConfig {
        partitions: 1,
        ..LogConfig::default()
    };
    let dir: &std::path::Path = "/log".as_ref();
    let log = Log::open_with(Arc::new(storage.clone()), dir, config.clone(), b"a").expect("open");
    for i in 1..=5 {
        log.append(P0, payload(i)).await.expect("append");
    }
    log.fail_over(P0, b"a", None).await.expect("epoch 2 at 6");
    for i in 6..=10 {
        log.append(P0, payload(i)).await.expect("append");
    }
    // The rollback to 4 cuts the entries (a truncate and a directory sync), then dies while
    // writing the new history.
    storage.fail_at_sync(3);
    log.fail_over(P0, b"a", Some(4))
        .await
        .expect_err("the disk fails");
    log.close();
    let disk = storage.crash(|_, _| 0);

    let log = Log::open_with(Arc::new(disk), dir, config, b"a").expect("reopens");
    assert_eq!(log.last_seqno(P0).expect("last"), 3);
    let starts: Vec<(u64, u64)> = log
        .epochs(P0)
        .expect("epochs")
        .iter()
        .map(|e| (e.epoch, e.start_seqno))
        .collect();
    assert_eq!(starts, [(1, 1), (3, 4)], "epoch 2 is never reused");
    // A reader that had read up to entry 10 of epoch 2 is sent back to 4.
    let mut stream = log
        .subscribe(&[Position {
            next_seqno: 11,
            epoch: 2,
            ..Position::start(P0)
        }])
        .expect("subscribe");
    let first = stream.next().await.expect("an event").expect("no error");
    assert_eq!(
        first.event,
        Event::Rollback {
            partition: P0,
            to_seqno: 4
        }
    );
    drop(stream);
    log.close();
}
