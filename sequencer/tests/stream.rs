//! Subscriptions: order, snapshot markers, exact resumption, rollbacks, bad positions, and
//! back-pressure.

use std::time::Duration;

use chainql_sequencer::{Delivery, Error, Event, Log, LogConfig, PartitionId, Position, Subscription};

const P0: PartitionId = PartitionId(0);
const P1: PartitionId = PartitionId(1);

fn config() -> LogConfig {
    LogConfig {
        partitions: 2,
        segment_bytes_max: 4096,
        record_bytes_max: 256,
        tail_bytes_max: 600,
        ..LogConfig::default()
    }
}

fn payload(i: u64) -> Vec<u8> {
    format!("entry-{i:04}").into_bytes()
}

async fn next(subscription: &mut Subscription) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), subscription.next())
        .await
        .expect("an event within 10 s")
        .expect("the subscription is open")
        .expect("no error")
}

async fn fill(log: &Log, partition: PartitionId, from: u64, to: u64) {
    let entries = (from..=to).map(|i| (partition, payload(i))).collect();
    log.append_many(entries).await.expect("append");
}

fn describe(event: &Event) -> String {
    match event {
        Event::Entry(e) => format!("e{}:{}", e.seqno, String::from_utf8_lossy(&e.payload)),
        Event::Snapshot { seqno, height, .. } => format!("s{height}@{seqno}"),
        Event::Rollback { to_seqno, .. } => format!("r{to_seqno}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_and_snapshots_arrive_in_order_and_resume_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), config()).expect("open");
    fill(&log, P0, 1, 5).await;
    log.mark_snapshot(1, &[(P0, 3), (P1, 0)]).expect("snapshot 1");
    fill(&log, P0, 6, 8).await;
    log.mark_snapshot(2, &[(P0, 8), (P1, 0)]).expect("snapshot 2");

    let mut stream = log.subscribe(&[Position::start(P0)]).expect("subscribe");
    let mut seen = Vec::new();
    let mut resume_at = None;
    for i in 0..7 {
        let delivery = next(&mut stream).await;
        seen.push(describe(&delivery.event));
        if i == 4 {
            resume_at = Some(delivery.position.clone());
        }
    }
    assert_eq!(
        seen,
        [
            "e1:entry-0001",
            "e2:entry-0002",
            "e3:entry-0003",
            "s1@3",
            "e4:entry-0004",
            "e5:entry-0005",
            "e6:entry-0006"
        ]
    );
    drop(stream);

    // Resume from the position after the fifth event: nothing twice, nothing missed.
    let resume_at = resume_at.expect("position");
    assert_eq!(resume_at.next_seqno, 5);
    assert_eq!(resume_at.next_height, 2);
    let mut stream = log.subscribe(&[resume_at]).expect("resubscribe");
    let mut rest = Vec::new();
    for _ in 0..5 {
        rest.push(describe(&next(&mut stream).await.event));
    }
    assert_eq!(
        rest,
        [
            "e5:entry-0005",
            "e6:entry-0006",
            "e7:entry-0007",
            "e8:entry-0008",
            "s2@8"
        ]
    );

    // Live: new entries reach a reader that is waiting.
    fill(&log, P0, 9, 9).await;
    assert_eq!(describe(&next(&mut stream).await.event), "e9:entry-0009");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_resumes_across_a_restart_and_reads_old_entries_from_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let position;
    {
        let log = Log::open(dir.path(), config()).expect("open");
        fill(&log, P1, 1, 200).await;
        log.mark_snapshot(1, &[(P0, 0), (P1, 150)]).expect("snapshot");
        let mut stream = log.subscribe(&[Position::start(P1)]).expect("subscribe");
        let mut last = None;
        for _ in 0..60 {
            last = Some(next(&mut stream).await.position);
        }
        position = last.expect("position");
    }
    let token = position.to_token("chain-a");
    let log = Log::open(dir.path(), config()).expect("reopen");
    // The node replays its blocks, re-marking their snapshots, before serving readers.
    log.mark_snapshot(1, &[(P0, 0), (P1, 150)]).expect("snapshot");
    let position = Position::from_token(&token, "chain-a").expect("token");
    let mut stream = log.subscribe(&[position]).expect("resubscribe");
    let mut seqnos = Vec::new();
    let mut snapshot_after = None;
    while seqnos.len() < 140 {
        match next(&mut stream).await.event {
            Event::Entry(e) => {
                assert_eq!(&e.payload[..], &payload(e.seqno)[..]);
                seqnos.push(e.seqno);
            }
            Event::Snapshot { seqno, .. } => snapshot_after = Some((seqno, seqnos.last().copied())),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        seqnos,
        (61..=200).collect::<Vec<_>>(),
        "the 60 entries read before are not repeated"
    );
    assert_eq!(
        snapshot_after,
        Some((150, Some(150))),
        "the marker follows the entry it covers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_rolls_back_uncommitted_entries_and_tells_readers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), config()).expect("open");
    fill(&log, P0, 1, 10).await;
    log.mark_snapshot(1, &[(P0, 5), (P1, 0)]).expect("snapshot");
    let mut stream = log.subscribe(&[Position::start(P0)]).expect("subscribe");
    let mut last = None;
    for _ in 0..11 {
        last = Some(next(&mut stream).await.position);
    }
    let stale = last.expect("position");
    assert_eq!((stale.next_seqno, stale.epoch), (11, 1));

    // Committed entries cannot be rolled back.
    assert!(matches!(
        log.fail_over(P0, b"other", Some(5)).await,
        Err(Error::InvalidPosition(_))
    ));
    let (epoch, rolled_back) = log.fail_over(P0, b"other", Some(7)).await.expect("fail over");
    assert_eq!(epoch, 2);
    assert_eq!(
        rolled_back.iter().map(|e| e.seqno).collect::<Vec<_>>(),
        [7, 8, 9, 10]
    );
    assert_eq!(log.last_seqno(P0).expect("last"), 6);
    let epochs = log.epochs(P0).expect("epochs");
    assert_eq!(
        epochs
            .iter()
            .map(|e| (e.epoch, e.start_seqno))
            .collect::<Vec<_>>(),
        [(1, 1), (2, 7)]
    );

    // The live reader is told to roll back, then sees the new branch.
    assert_eq!(describe(&next(&mut stream).await.event), "r7");
    log.append(P0, b"new-7".to_vec()).await.expect("append");
    let delivery = next(&mut stream).await;
    assert_eq!(describe(&delivery.event), "e7:new-7");
    assert_eq!(delivery.position.epoch, 2);
    drop(stream);

    // A reader coming back with a position on the abandoned branch is told the same.
    let mut stream = log.subscribe(std::slice::from_ref(&stale)).expect("resume");
    assert_eq!(describe(&next(&mut stream).await.event), "r7");
    assert_eq!(describe(&next(&mut stream).await.event), "e7:new-7");
    drop(stream);

    // The rollback and the new epoch survive a restart. Reopened by another leader (the
    // anonymous one of `Log::open`), the partition starts a third epoch after entry 7.
    drop(log);
    let log = Log::open(dir.path(), config()).expect("reopen");
    let epochs = log.epochs(P0).expect("epochs");
    assert_eq!(
        epochs
            .iter()
            .map(|e| (e.epoch, e.start_seqno))
            .collect::<Vec<_>>(),
        [(1, 1), (2, 7), (3, 8)]
    );
    log.mark_snapshot(1, &[(P0, 5), (P1, 0)]).expect("snapshot");
    let mut stream = log.subscribe(&[stale]).expect("resume after restart");
    assert_eq!(describe(&next(&mut stream).await.event), "r7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_positions_and_tokens_are_refused_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), config()).expect("open");
    fill(&log, P0, 1, 3).await;
    let invalid = |result: Result<Subscription, Error>| match result {
        Err(Error::InvalidPosition(message)) => message,
        other => panic!("expected an invalid position, got {other:?}"),
    };
    let future = Position {
        next_seqno: 5,
        epoch: 1,
        ..Position::start(P0)
    };
    assert!(invalid(log.subscribe(&[future])).contains("seqno 5 is from the future"));
    let no_epoch = Position {
        next_seqno: 2,
        ..Position::start(P0)
    };
    assert!(invalid(log.subscribe(&[no_epoch])).contains("must name that entry's epoch"));
    let future_epoch = Position {
        next_seqno: 2,
        epoch: 9,
        ..Position::start(P0)
    };
    assert!(invalid(log.subscribe(&[future_epoch])).contains("epoch 9 is from the future"));
    let future_height = Position {
        next_height: 3,
        ..Position::start(P0)
    };
    assert!(invalid(log.subscribe(&[future_height])).contains("height 3 is from the future"));
    assert!(invalid(log.subscribe(&[Position::start(P0), Position::start(P0)])).contains("listed twice"));
    assert!(matches!(
        log.subscribe(&[Position::start(PartitionId(7))]),
        Err(Error::NoSuchPartition { partition: 7, .. })
    ));

    let token = Position::start(P1).to_token("chain-a");
    assert_eq!(
        Position::from_token(&token, "chain-a").expect("round trip"),
        Position::start(P1)
    );
    let other_chain = Position::from_token(&token, "chain-b").expect_err("other chain");
    assert!(
        other_chain
            .to_string()
            .contains("the resume token is for chain \"chain-a\""),
        "{other_chain}"
    );
    let mut damaged = token.clone();
    let at = token.len() - 12;
    let flipped = if &token[at..at + 1] == "0" { "1" } else { "0" };
    damaged.replace_range(at..at + 1, flipped);
    assert!(Position::from_token(&damaged, "chain-a").is_err());
    assert!(Position::from_token("cqlpos1.zz", "chain-a").is_err());
    assert!(Position::from_token(&"a".repeat(10_000), "chain-a").is_err());
    // Nothing was lost by any of this.
    assert_eq!(log.read(P0, 1, 10).expect("read").len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_holds_back_only_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(
        dir.path(),
        LogConfig {
            subscription_buffer: 4,
            ..config()
        },
    )
    .expect("open");
    let mut slow = log
        .subscribe(&[Position::start(P0), Position::start(P1)])
        .expect("subscribe");
    // Appends do not wait for the reader that does not read.
    for i in 0..20 {
        fill(&log, P0, i * 50 + 1, i * 50 + 50).await;
    }
    assert_eq!(log.last_seqno(P0).expect("last"), 1000);
    // The reader still gets everything, in order, once it reads.
    let mut expected = 1;
    while expected <= 1000 {
        if let Event::Entry(entry) = next(&mut slow).await.event {
            assert_eq!(entry.seqno, expected);
            expected += 1;
        }
    }
}
