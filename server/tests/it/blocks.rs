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

    let (blocks, _) = numbers(
        &node,
        "SELECT height, transaction_count, CAST(timestamp AS BIGINT) FROM chain.blocks ORDER BY height",
    )
    .await;
    let rows: Vec<(i64, i64, i64)> = blocks.iter().map(|r| (r[0], r[1], r[2])).collect();
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

/// The numbers of a query's rows, one `Vec` per row.
async fn numbers(node: &Node, sql: &str) -> (Vec<Vec<i64>>, u64) {
    let (answer, height) = node.query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut rows = Vec::new();
    for batch in &answer.batches {
        for row in 0..batch.num_rows() {
            rows.push(
                (0..batch.num_columns())
                    .map(|c| {
                        chainql_server::format::cell_text(batch.column(c), row)
                            .and_then(|t| t.parse::<i64>().ok())
                            .expect("a number")
                    })
                    .collect(),
            );
        }
    }
    (rows, height)
}

/// Queries read whole committed blocks, never a block half applied: while blocks of many
/// increments commit, every answer equals the count of increments committed up to the height
/// it was answered at. And each block's header carries the state root after the block before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_see_whole_blocks_and_headers_carry_the_previous_state_root() {
    const INCREMENTS: u64 = 300;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = NodeConfig::new(dir.path());
    config.block_transactions_max = 40;
    config.block_interval_ms = 5;
    init_data_dir(&config, "whole-blocks", &[]).expect("init");
    let node = std::sync::Arc::new(Node::open(config).await.expect("open"));
    let builder = TransactionBuilder::new("whole-blocks", Keypair::from_seed([9; 32]));
    node.submit_and_wait(builder.build(
        0,
        vec![
            "CREATE TABLE counter (id BIGINT PRIMARY KEY, v BIGINT NOT NULL)".into(),
            "INSERT INTO counter VALUES (1, 0)".into(),
        ],
    ))
    .await
    .expect("create");

    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (node, done) = (std::sync::Arc::clone(&node), std::sync::Arc::clone(&done));
        tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let (rows, height) = numbers(&node, "SELECT v FROM counter").await;
                seen.push((height, rows[0][0]));
                if finished {
                    return seen;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    for nonce in 1..INCREMENTS {
        node.submit(builder.build(nonce, vec!["UPDATE counter SET v = v + 1 WHERE id = 1".into()]))
            .await
            .expect("admitted");
    }
    let last = node
        .submit_and_wait(builder.build(
            INCREMENTS,
            vec!["UPDATE counter SET v = v + 1 WHERE id = 1".into()],
        ))
        .await
        .expect("last");
    assert_eq!(last.status, ReceiptStatus::Success as i32);
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = reader.await.expect("reader");

    // Increments committed by each height, from the chain's own record of its transactions.
    let (per_block, _) = numbers(
        &node,
        "SELECT block_height, count(*) FROM chain.transactions \
         WHERE statements LIKE 'UPDATE counter%' AND status = 'success' GROUP BY block_height ORDER BY block_height",
    )
    .await;
    let mut by_height = std::collections::BTreeMap::new();
    let mut total = 0;
    for row in &per_block {
        total += row[1];
        by_height.insert(row[0] as u64, total);
    }
    assert_eq!(total, INCREMENTS as i64);
    assert!(by_height.len() >= 8, "40 per block at most: {by_height:?}");
    let committed_by = |height: u64| by_height.range(..=height).next_back().map_or(0, |(_, n)| *n);
    for (height, v) in &seen {
        assert_eq!(*v, committed_by(*height), "the answer at height {height}");
    }
    let heights: std::collections::BTreeSet<u64> = seen.iter().map(|(h, _)| *h).collect();
    assert!(heights.len() >= 2, "{heights:?}");

    // Header h carries the root after block h - 1 (for block 1, the genesis state's).
    let top = node.state().height();
    for height in 1..=top {
        let block = node.block(height).expect("read").expect("stored block");
        let header = block.header.expect("header");
        let before = node.state_at(height - 1).await.expect("state before");
        assert_eq!(
            header.state_root,
            before.root().0.to_vec(),
            "header of block {height}"
        );
    }
    node.shutdown().await;
}
