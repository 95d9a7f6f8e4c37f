//! Four validators as four `chainql node` processes on loopback, written by `chainql devnet`:
//! they commit transactions sent to any of them; one killed with SIGKILL does not stop the
//! others, and after a restart it catches up to the same height and state root; with two
//! stopped there is no quorum and nothing commits until one returns. No committed transaction
//! is lost at any point.

use std::path::Path;
use std::time::{Duration, Instant};

use chainql::{Keypair, TransactionBuilder};

use crate::support::{DevnetProcesses, chainql};

const VALIDATORS: usize = 4;

type Devnet = DevnetProcesses;

/// Checks that every row whose transaction committed is on every running validator.
async fn check_rows(devnet: &Devnet, running: &[usize], committed: &[(usize, u64)]) {
    for &i in running {
        let client = devnet.client(i).await;
        for writer in 0..VALIDATORS {
            let expected: Vec<u64> = committed
                .iter()
                .filter(|(w, _)| *w == writer)
                .map(|(_, id)| *id)
                .collect();
            let result = client
                .query(&format!("SELECT id FROM w{writer} ORDER BY id"))
                .await
                .expect("query");
            let mut found = Vec::new();
            for batch in &result.batches {
                for row in 0..batch.num_rows() {
                    let text = chainql_server::format::cell_text(batch.column(0), row).expect("a value");
                    found.push(text.parse::<u64>().expect("an id"));
                }
            }
            assert_eq!(found, expected, "validator {i}, table w{writer}");
        }
    }
}

fn writer(i: usize) -> TransactionBuilder {
    TransactionBuilder::new("devnet", Keypair::from_seed([i as u8 + 1; 32]))
}

/// Inserts row `id` of writer `w` through validator `via` and waits for its receipt.
async fn insert(devnet: &Devnet, via: usize, w: usize, id: u64, committed: &mut Vec<(usize, u64)>) {
    devnet
        .client(via)
        .await
        .execute(&writer(w), vec![format!("INSERT INTO w{w} VALUES ({id})")])
        .await
        .unwrap_or_else(|e| panic!("insert {id} of writer {w} through validator {via}: {e}"));
    committed.push((w, id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_four_validator_devnet_survives_a_kill_catches_up_and_stops_without_a_quorum() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut devnet = Devnet::write(dir.path(), VALIDATORS, &["--validators", "4"]);
    for i in 0..VALIDATORS {
        devnet.start(i).await;
    }
    let all: Vec<usize> = (0..VALIDATORS).collect();
    let mut committed = Vec::new();

    // Each writer works through its own validator: every validator's transactions commit.
    for w in 0..VALIDATORS {
        devnet
            .client(w)
            .await
            .execute(
                &writer(w),
                vec![format!("CREATE TABLE w{w} (id BIGINT PRIMARY KEY)")],
            )
            .await
            .expect("create");
    }
    for id in 1..=3 {
        for w in 0..VALIDATORS {
            insert(&devnet, w, w, id, &mut committed).await;
        }
    }
    let (height, _) = devnet.wait_agreed(&all).await;
    check_rows(&devnet, &all, &committed).await;
    verify_blocks(&devnet.dir, &devnet.url(1), height);
    forged_by_assignees(&devnet, height, &mut committed).await;

    // kill -9 one validator: the other three hold 3/4 of the stake and go on.
    devnet.kill(3);
    let three = [0, 1, 2];
    for id in 4..=6 {
        for w in 0..VALIDATORS {
            insert(&devnet, w % 3, w, id, &mut committed).await;
        }
    }
    let (height_without, _) = devnet.wait_agreed(&three).await;
    assert!(
        height_without > height,
        "blocks were committed without validator 3"
    );

    // Restarted, it catches up to the same height and state root, with every row.
    devnet.start(3).await;
    let (caught_up, _) = devnet.wait_agreed(&all).await;
    assert!(caught_up >= height_without);
    check_rows(&devnet, &all, &committed).await;

    // Two of four stopped: half the stake is not a quorum, and nothing commits.
    devnet.kill(2);
    devnet.kill(3);
    let client = devnet.client(0).await;
    let nonce = client.next_nonce(&writer(0).key.address()).await.expect("nonce");
    let (hash, _) = client
        .submit(
            writer(0).build(nonce, vec!["INSERT INTO w0 VALUES (7)".into()]),
            false,
        )
        .await
        .expect("admitted: the log still takes transactions");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let statuses = devnet.statuses(&[0, 1]).await;
    assert!(
        statuses.iter().all(|(h, _)| *h == caught_up),
        "no block without a quorum: {statuses:?}, was {caught_up}"
    );
    assert!(client.transaction(&hash).await.expect("lookup").is_none());

    // One returns: a quorum again, and the waiting transaction commits.
    devnet.start(2).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while client.transaction(&hash).await.expect("lookup").is_none() {
        assert!(Instant::now() < deadline, "the transaction never committed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    committed.push((0, 7));
    let running = [0, 1, 2];
    let (last, _) = devnet.wait_agreed(&running).await;
    assert!(last > caught_up);
    check_rows(&devnet, &running, &committed).await;
    verify_blocks(&devnet.dir, &devnet.url(2), last);
}

/// Sharded forging: every block with transactions has parts, and other validators than the
/// proposers forged some of them. A validator learns its peers' identities from their status
/// within a second or two, so the first blocks may be forged by their proposers alone; more
/// blocks are committed until assignees have forged.
async fn forged_by_assignees(devnet: &Devnet, mut height: u64, committed: &mut Vec<(usize, u64)>) {
    let client = devnet.client(0).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut id = 100;
    loop {
        let mut by_others = 0;
        for h in 1..=height {
            let (block, _) = client.block(h).await.expect("fetch").expect("committed");
            let header = block.header.as_ref().expect("header");
            let covered: u32 = block.parts.iter().map(|p| p.count).sum();
            assert_eq!(
                covered as usize,
                block.transactions.len(),
                "block {h}'s parts cover it"
            );
            by_others += block
                .parts
                .iter()
                .filter(|p| p.validator != header.proposer)
                .count();
        }
        if by_others > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "no part was forged by an assignee");
        // More blocks, with transactions in every partition.
        for w in 0..VALIDATORS {
            insert(devnet, w, w, id, committed).await;
        }
        id += 1;
        height = client.status().await.expect("status").height;
    }
}

/// Every block up to `height` verifies against the devnet's genesis: certificates signed by
/// more than 2/3 of the four validators' stake.
fn verify_blocks(dir: &Path, url: &str, height: u64) {
    let genesis = dir.join("genesis.json");
    for h in 1..=height {
        let out = chainql(&[
            "verify",
            "block",
            &h.to_string(),
            "--connect",
            url,
            "--genesis",
            genesis.to_str().expect("UTF-8"),
        ]);
        assert!(out.contains("is committed"), "{out}");
        let signers = out.lines().filter(|l| l.contains("signed by")).count();
        assert!(signers >= 3, "block {h}: {out}");
    }
}
