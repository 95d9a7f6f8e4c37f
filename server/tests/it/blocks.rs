//! The block producer's cut rules: at most M transactions per block, at most one block every N ms,
//! and no empty blocks.

use chainql::wire::ReceiptStatus;
use chainql::{Keypair, TransactionBuilder};
use chainql_server::{Node, NodeConfig, init_data_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_hold_at_most_m_transactions_and_come_at_most_every_n_ms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = NodeConfig::new(dir.path());
    config.block_transactions_max = 3;
    config.block_interval_ms = 40;
    init_data_dir(&config, "cut-rules", &[]).expect("init");
    let node = Node::open(config).await.expect("open");
    let builder = TransactionBuilder::new("cut-rules", Keypair::from_seed([5; 32]));
    node.submit_and_wait(builder.build(0, vec!["CREATE TABLE t (id INT PRIMARY KEY)".into()]))
        .await
        .expect("create");
    // Ten transactions admitted at once: they need at least four blocks.
    for nonce in 1..=10u64 {
        node.submit(builder.build(nonce, vec![format!("INSERT INTO t VALUES ({nonce})")]))
            .await
            .expect("admitted");
    }
    let last = node
        .submit_and_wait(builder.build(11, vec!["INSERT INTO t VALUES (11)".into()]))
        .await
        .expect("last");
    assert_eq!(last.status, ReceiptStatus::Success as i32);

    let (blocks, _) = node
        .query(
            "SELECT height, transaction_count, CAST(timestamp AS BIGINT) FROM chain.blocks ORDER BY height",
        )
        .await
        .expect("blocks");
    let mut rows = Vec::new();
    for batch in &blocks.batches {
        for row in 0..batch.num_rows() {
            let cell = |c: usize| {
                chainql_server::format::cell_text(batch.column(c), row)
                    .and_then(|t| t.parse::<i64>().ok())
                    .expect("a number")
            };
            rows.push((cell(0), cell(1), cell(2)));
        }
    }
    let total: i64 = rows.iter().map(|r| r.1).sum();
    assert_eq!(total, 12, "every transaction is in exactly one block: {rows:?}");
    assert!(
        rows.iter().all(|r| (1..=3).contains(&r.1)),
        "1 to 3 transactions per block, never empty: {rows:?}"
    );
    assert!(rows.len() >= 4, "{rows:?}");
    for pair in rows.windows(2) {
        assert!(
            pair[1].2 - pair[0].2 >= 40,
            "blocks {} and {} are less than 40 ms apart: {rows:?}",
            pair[0].0,
            pair[1].0
        );
    }
    // No transactions waiting: no new blocks.
    let height = node.state().height();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(node.state().height(), height, "no empty blocks");
    node.shutdown().await;
}
