//! Batch admission: signatures verified in batches per partition, each transaction judged on its
//! own, refusals never reaching the log.

use chainql::{Keypair, TransactionBuilder};
use chainql_server::{Error, Node, NodeConfig, init_data_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_admitted_transaction_by_transaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = NodeConfig::new(dir.path());
    config.block_interval_ms = 1;
    init_data_dir(&config, "batch-test", &[]).expect("init");
    let node = Node::open(config).await.expect("open");
    let senders: Vec<Keypair> = (0..6u8).map(|i| Keypair::from_seed([70 + i; 32])).collect();
    // The table's creator lets the six senders insert into it.
    let grantees: Vec<String> = senders.iter().map(|k| format!("'{}'", k.address())).collect();
    let setup = TransactionBuilder::new("batch-test", Keypair::from_seed([60; 32]));
    let receipt = node
        .submit_and_wait(setup.build(
            0,
            vec![
                "CREATE TABLE t (id INT PRIMARY KEY, sender INT)".into(),
                format!("GRANT INSERT ON t TO {}", grantees.join(", ")),
            ],
        ))
        .await
        .expect("setup");
    assert!(receipt.error.is_empty(), "{}", receipt.error);

    let senders: Vec<TransactionBuilder> = senders
        .into_iter()
        .map(|key| TransactionBuilder::new("batch-test", key))
        .collect();
    let mut batch = Vec::new();
    let mut id = 0;
    for nonce in 0..3u64 {
        for (s, builder) in senders.iter().enumerate() {
            id += 1;
            batch.push(builder.build(nonce, vec![format!("INSERT INTO t VALUES ({id}, {s})")]));
        }
    }
    let mut bad_signature = senders[0].build(3, vec!["INSERT INTO t VALUES (100, 0)".into()]);
    bad_signature.signature[1] ^= 4;
    batch.push(bad_signature);
    batch.push(senders[1].build(9, vec!["INSERT INTO t VALUES (101, 1)".into()]));
    let foreign = TransactionBuilder::new("other-chain", Keypair::from_seed([70; 32]));
    batch.push(foreign.build(3, vec!["INSERT INTO t VALUES (102, 0)".into()]));
    batch.push(senders[2].build(3, vec!["INSERT INTO t VALUES (random(), 2)".into()]));
    // A valid one after the refused ones of the same senders.
    batch.push(senders[0].build(3, vec!["INSERT INTO t VALUES (103, 0)".into()]));

    let results = node.submit_many(batch).await;
    assert_eq!(results.len(), 23);
    assert!(results[..18].iter().all(Result::is_ok), "{results:?}");
    assert!(
        matches!(
            &results[18],
            Err(Error::Transaction(chainql::Error::BadSignature))
        ),
        "{:?}",
        results[18]
    );
    assert!(
        matches!(
            &results[19],
            Err(Error::Nonce {
                found: 9,
                expected: 3
            })
        ),
        "{:?}",
        results[19]
    );
    assert!(
        matches!(
            &results[20],
            Err(Error::Transaction(chainql::Error::WrongChain { .. }))
        ),
        "{:?}",
        results[20]
    );
    assert!(
        matches!(
            &results[21],
            Err(Error::Transaction(chainql::Error::NonDeterministic(_)))
        ),
        "{:?}",
        results[21]
    );
    results[22].as_ref().expect("the last one is admitted");

    // Wait for every admitted transaction's block (the partitions' entries may be ordered into
    // different blocks), then check what was committed.
    for hash in results.iter().filter_map(|r| r.as_ref().ok()) {
        while node.transaction(hash).expect("lookup").is_none() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    let (rows, _) = node
        .query("SELECT count(*), count(DISTINCT sender), max(id) FROM t")
        .await
        .expect("query");
    let cells: Vec<String> = (0..3)
        .map(|c| chainql_server::format::cell_text(rows.batches[0].column(c), 0).unwrap_or_default())
        .collect();
    assert_eq!(cells, ["19", "6", "103"]);
    let (failed, _) = node
        .query("SELECT count(*) FROM chain.transactions WHERE status <> 'success'")
        .await
        .expect("query");
    assert_eq!(
        chainql_server::format::cell_text(failed.batches[0].column(0), 0).as_deref(),
        Some("0")
    );
    node.shutdown().await;
}

/// A key whose sender goes to log partition `partition` of 4, searched from seed `from`.
fn key_in_partition(partition: u32, from: u8) -> Keypair {
    (from..=u8::MAX)
        .map(|seed| Keypair::from_seed([seed; 32]))
        .find(|key| chainql_sequencer::partition_of(&key.address().0, 4).0 == partition)
        .expect("some seed maps to every partition")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admissions_to_one_partition_never_wait_for_another() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = NodeConfig::new(dir.path());
    config.block_interval_ms = 1;
    config.log_partitions = 4;
    init_data_dir(&config, "partitions-test", &[]).expect("init");
    let disk = chainql_sequencer::FaultyStorage::new();
    let node = Node::open_with_log_storage(config, std::sync::Arc::new(disk.clone()))
        .await
        .expect("open");
    let senders: Vec<TransactionBuilder> = (0..4)
        .map(|p| TransactionBuilder::new("partitions-test", key_in_partition(p, 10 + 40 * p as u8)))
        .collect();
    let create = |p: usize, nonce: u64| {
        senders[p].build(
            nonce,
            vec![format!("CREATE TABLE t{p}_{nonce} (id INT PRIMARY KEY)")],
        )
    };

    // Partition 0's disk stops acknowledging: its admission waits for the fsync, holding the
    // sender's next nonce, while the other partitions admit and commit as usual.
    disk.stall_under(&dir.path().join("log").join("p0000"));
    let stalled = tokio::spawn({
        let node = node.clone();
        let transaction = create(0, 0);
        async move { node.submit_and_wait(transaction).await }
    });
    for p in 1..4 {
        let receipt = node.submit_and_wait(create(p, 0)).await.expect("admitted");
        assert!(receipt.error.is_empty(), "{}", receipt.error);
    }
    // Batches too: each partition's share is checked and logged on its own.
    let results = node.submit_many((1..4).map(|p| create(p, 1)).collect()).await;
    for result in &results {
        let hash = result.as_ref().expect("admitted");
        while node.transaction(hash).expect("lookup").is_none() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    assert!(
        !stalled.is_finished(),
        "partition 0's transaction was acknowledged before its fsync"
    );
    assert_eq!(node.next_nonce(&senders[0].key.address()).await, 1);
    let (tables, _) = node
        .query("SELECT count(*) FROM information_schema.tables WHERE table_name = 't0_0'")
        .await
        .expect("query");
    assert_eq!(
        chainql_server::format::cell_text(tables.batches[0].column(0), 0).as_deref(),
        Some("0")
    );

    // The disk comes back: partition 0's transaction is acknowledged and committed.
    disk.resume();
    let receipt = stalled.await.expect("task").expect("admitted");
    assert!(receipt.error.is_empty(), "{}", receipt.error);
    let (tables, _) = node
        .query(
            "SELECT count(*) FROM information_schema.tables \
             WHERE table_name IN ('t0_0', 't1_0', 't1_1', 't2_0', 't2_1', 't3_0', 't3_1')",
        )
        .await
        .expect("query");
    assert_eq!(
        chainql_server::format::cell_text(tables.batches[0].column(0), 0).as_deref(),
        Some("7")
    );
    node.shutdown().await;
}
