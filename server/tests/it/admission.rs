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
