//! Stopping a real node process with `kill -9` and starting it again brings back exactly the
//! committed state, and every transaction it acknowledged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chainql::{Hash, Keypair, TransactionBuilder};
use chainql_server::grpc::proto;
use chainql_server::{Client, Connection, Session, SubscribeOptions};
use futures::StreamExt;

use crate::support::{NodeProcess, chainql};

async fn session(url: &str, key: &Keypair) -> Session {
    let remote = Client::connect(url).await.expect("connect");
    Session::new(Connection::Remote(Arc::new(remote)), key.clone())
        .await
        .expect("session")
}

async fn snapshot(session: &Session) -> (u64, Hash, String) {
    let status = session.connection().status().await.expect("status");
    let rows = session
        .query("SELECT id, v, n FROM t ORDER BY id")
        .await
        .expect("query");
    let mut text = chainql_server::format::aligned_table(&rows);
    // Contracts and their events come back too (replay re-runs the calls and checks each
    // block's state root on the way).
    for sql in [
        "SELECT contract_name, owner, source FROM chain.contracts",
        "SELECT block_height, contract, event, args FROM chain.events",
    ] {
        let rows = session.query(sql).await.expect("query");
        text.push_str(&chainql_server::format::aligned_table(&rows));
    }
    (status.height, status.state_root, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_recovers_the_committed_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("node");
    let data = data_dir.to_str().expect("utf-8 path");
    chainql(&["init", "--data-dir", data, "--chain-id", "restart-test"]);
    let key = Keypair::from_seed([7; 32]);

    let node = NodeProcess::start(&data_dir).await;
    let mut writer = session(&node.url, &key).await;
    for sql in [
        "CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT, n BIGINT)",
        "INSERT INTO t SELECT value, 'row ' || value, value * value FROM generate_series(1, 500)",
        "UPDATE t SET v = upper(v) WHERE id % 7 = 0",
        "DELETE FROM t WHERE id > 450",
        "INSERT INTO t VALUES (1, 'duplicate', 0)",
        "CREATE CONTRACT bump(k BIGINT) AS $$ REQUIRE k > 0, 'k must be positive'; \
         UPDATE t SET n = n + 1 WHERE id = k; EMIT bumped(k, BLOCK_HEIGHT()) $$",
        "CALL bump(3)",
        "CALL bump(0)",
    ] {
        let _ = writer.run(sql).await;
    }
    let before = snapshot(&writer).await;
    assert!(before.0 >= 8, "eight blocks were committed");
    assert!(before.2.contains("bumped"), "{}", before.2);
    node.kill();

    let node = NodeProcess::start(&data_dir).await;
    let reader = session(&node.url, &key).await;
    let after = snapshot(&reader).await;
    assert_eq!(after, before, "same height, same state root, same rows");

    // A log reader takes a few entries now and resumes after the next crash.
    let mut log_reader = Client::connect(&node.url).await.expect("connect").raw();
    let mut stream = log_reader
        .subscribe_log(proto::SubscribeLogRequest::default())
        .await
        .expect("subscribe")
        .into_inner();
    let mut seen_hashes: Vec<Vec<u8>> = Vec::new();
    let mut tokens: HashMap<u32, String> = HashMap::new();
    while seen_hashes.len() < 3 {
        let event = stream.message().await.expect("event").expect("open");
        if let Some(proto::log_event::Event::Entry(entry)) = &event.event {
            seen_hashes.push(entry.transaction_hash.clone());
        }
        tokens.insert(event.partition, event.resume_token);
    }
    drop(stream);

    // A chain follower takes the first three blocks now and resumes by height after the crash.
    let follower = Client::connect(&node.url).await.expect("connect");
    let mut blocks = follower
        .subscribe(1, SubscribeOptions::default())
        .await
        .expect("subscribe");
    let mut followed = Vec::new();
    let mut bumps = 0;
    while followed.len() < 3 {
        let block = blocks.next().await.expect("open").expect("a block");
        bumps += block.events.len();
        followed.push(block.height);
    }
    drop(blocks);

    // Transactions acknowledged (durable in the log) but not yet in a block when the process
    // dies are committed after the restart.
    let chain_id = reader.connection().chain_id().await.expect("chain id");
    let builder = TransactionBuilder::new(chain_id, key.clone());
    let remote = Client::connect(&node.url).await.expect("connect");
    let first_nonce = remote.next_nonce(&key.address()).await.expect("nonce");
    let mut hashes = Vec::new();
    for i in 0..50u64 {
        let signed = builder.build(
            first_nonce + i,
            vec![format!("UPDATE t SET n = n + 1 WHERE id = {}", i + 1)],
        );
        let (hash, _) = remote.submit(signed, false).await.expect("admitted");
        hashes.push(hash);
    }
    node.kill();

    let node = NodeProcess::start(&data_dir).await;
    let remote = Client::connect(&node.url).await.expect("connect");
    let reader = session(&node.url, &key).await;
    let mut waited = 0;
    loop {
        let result = reader
            .query("SELECT count(*) FROM chain.transactions WHERE status = 'success' AND statements LIKE 'UPDATE t SET n = n + 1%'")
            .await
            .expect("query");
        let committed = chainql_server::format::cell_text(result.batches[0].column(0), 0).unwrap_or_default();
        if committed == "50" {
            break;
        }
        waited += 1;
        assert!(
            waited < 600,
            "acknowledged transactions were not all committed: {committed} of 50"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        remote.next_nonce(&key.address()).await.expect("nonce"),
        first_nonce + 50,
        "every acknowledged nonce was used exactly once"
    );
    let sum = reader
        .query("SELECT sum(n) FROM t WHERE id <= 50")
        .await
        .expect("query");
    // Each row got one update, and row 3 one more from `CALL bump(3)`.
    let expected: i64 = (1..=50i64).map(|i| i * i + 1).sum::<i64>() + 1;
    assert_eq!(
        chainql_server::format::cell_text(sum.batches[0].column(0), 0),
        Some(expected.to_string())
    );
    for hash in &hashes {
        let (_, receipt) = remote
            .transaction(hash)
            .await
            .expect("get transaction")
            .expect("every acknowledged transaction has a receipt");
        assert!(receipt.error.is_empty(), "{}", receipt.error);
    }

    // The log reader resumes across two kill -9 restarts: every transaction exactly once.
    let total = reader
        .query("SELECT count(*) FROM chain.transactions")
        .await
        .expect("count");
    let total: usize = chainql_server::format::cell_text(total.batches[0].column(0), 0)
        .and_then(|t| t.parse().ok())
        .expect("a count");
    let mut stream = remote
        .raw()
        .subscribe_log(proto::SubscribeLogRequest {
            resume_tokens: tokens.into_values().collect(),
            partitions: vec![],
        })
        .await
        .expect("resume")
        .into_inner();
    while seen_hashes.len() < total {
        let event = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("an event")
            .expect("no error")
            .expect("open");
        if let Some(proto::log_event::Event::Entry(entry)) = event.event {
            seen_hashes.push(entry.transaction_hash);
        }
    }
    let mut unique = seen_hashes.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen_hashes.len(), "no entry delivered twice");
    for hash in &hashes {
        assert!(
            seen_hashes.contains(&hash.0.to_vec()),
            "the resumed stream has every admitted transaction"
        );
    }

    // The follower resumes after the last height it saw: every block once, in order.
    let tip = remote.status().await.expect("status").height;
    let mut blocks = remote
        .subscribe(followed.len() as u64 + 1, SubscribeOptions::default())
        .await
        .expect("resume");
    while followed.len() < tip as usize {
        let block = tokio::time::timeout(Duration::from_secs(20), blocks.next())
            .await
            .expect("a block")
            .expect("open")
            .expect("no error");
        bumps += block.events.len();
        followed.push(block.height);
    }
    assert_eq!(followed, (1..=tip).collect::<Vec<_>>());
    assert_eq!(bumps, 1, "the one successful CALL bump(3) emitted the one event");
    drop(writer);
}

/// The node logs through `tracing`: one line per committed block at info, with its height,
/// transaction count and state root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_logs_one_line_per_block() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("node");
    chainql(&[
        "init",
        "--data-dir",
        data_dir.to_str().expect("utf-8"),
        "--chain-id",
        "log-test",
    ]);
    let log_path = dir.path().join("node.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let node = NodeProcess::start_logging(&data_dir, log).await;
    let key = Keypair::from_seed([9; 32]);
    let writer = session(&node.url, &key).await;
    for sql in [
        "CREATE TABLE l (id BIGINT PRIMARY KEY)",
        "INSERT INTO l VALUES (1)",
        "INSERT INTO l VALUES (1)",
    ] {
        let _ = writer.execute(vec![sql.to_string()]).await;
    }
    let height = writer.connection().status().await.expect("status").height;
    // A block's line is written just after its receipts are published: wait for the last one.
    let lines = |log: &str| log.lines().filter(|l| l.contains("committed block")).count() as u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while lines(&std::fs::read_to_string(&log_path).unwrap_or_default()) < height
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.kill();
    let log = std::fs::read_to_string(&log_path).expect("read the log");
    let blocks: Vec<&str> = log.lines().filter(|l| l.contains("committed block")).collect();
    assert_eq!(blocks.len() as u64, height, "{log}");
    for (i, line) in blocks.iter().enumerate() {
        assert!(line.contains(" INFO "), "{line}");
        assert!(line.contains(&format!("height={}", i + 1)), "{line}");
        assert!(
            line.contains("transactions=1") && line.contains("state_root=0x"),
            "{line}"
        );
    }
    assert!(
        blocks[2].contains("failed=1"),
        "the duplicate insert failed: {}",
        blocks[2]
    );
}
