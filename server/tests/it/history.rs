//! `AS OF BLOCK n`: queries read any committed version, from the kept snapshots or rebuilt from
//! the stored blocks, and a restarted node answers them the same way.

use chainql::wire::ReceiptStatus;
use chainql::{Keypair, TransactionBuilder};
use chainql_server::{Error, Node, NodeConfig, init_data_dir};

/// The query's rows as text, one line per row, cells separated by `|`.
async fn rows(node: &Node, sql: &str) -> (Vec<String>, u64) {
    let (answer, height) = node.query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut lines = Vec::new();
    for batch in &answer.batches {
        for row in 0..batch.num_rows() {
            let cells: Vec<String> = (0..batch.num_columns())
                .map(|c| chainql_server::format::cell_text(batch.column(c), row).unwrap_or_default())
                .collect();
            lines.push(cells.join("|"));
        }
    }
    (lines, height)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_of_block_reads_kept_and_rebuilt_versions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = NodeConfig::new(dir.path());
    config.snapshots_kept = 2;
    init_data_dir(&config, "history", &[]).expect("init");
    let node = Node::open(config.clone()).await.expect("open");
    let builder = TransactionBuilder::new("history", Keypair::from_seed([3; 32]));
    let statements = [
        "CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT)",
        "INSERT INTO t VALUES (1, 'one'), (2, 'two')",
        "UPDATE t SET v = 'uno' WHERE id = 1",
        "DELETE FROM t WHERE id = 2",
        "INSERT INTO t VALUES (3, 'three')",
    ];
    // One transaction per block: the height after statement i is known from its receipt.
    let mut heights = Vec::new();
    for (nonce, sql) in statements.iter().enumerate() {
        let receipt = node
            .submit_and_wait(builder.build(nonce as u64, vec![sql.to_string()]))
            .await
            .expect("commit");
        assert_eq!(receipt.status, ReceiptStatus::Success as i32, "{sql}");
        heights.push(receipt.block_height);
    }
    let expected = [
        vec![],
        vec!["1|one", "2|two"],
        vec!["1|uno", "2|two"],
        vec!["1|uno"],
        vec!["1|uno", "3|three"],
    ];
    check(&node, &heights, &expected).await;
    node.shutdown().await;
    // After a restart the versions come back from the block store.
    let node = Node::open(config).await.expect("reopen");
    check(&node, &heights, &expected).await;
    node.shutdown().await;
}

async fn check(node: &Node, heights: &[u64], expected: &[Vec<&str>]) {
    {
        // Newest first: the kept snapshots, then versions rebuilt from genesis, then one
        // rebuilt from the version rebuilt before it.
        for (i, height) in heights
            .iter()
            .enumerate()
            .rev()
            .chain([(1, &heights[1]), (3, &heights[3])])
        {
            let (lines, answered) = rows(
                node,
                &format!("SELECT id, v FROM t AS OF BLOCK {height} ORDER BY id"),
            )
            .await;
            assert_eq!(lines, expected[i], "AS OF BLOCK {height}");
            assert_eq!(answered, *height);
        }
        // The whole statement reads the old version, the chain's own tables included.
        let (lines, _) = rows(
            node,
            &format!(
                "SELECT (SELECT count(*) FROM t), (SELECT max(height) FROM chain.blocks) AS OF BLOCK {}",
                heights[1]
            ),
        )
        .await;
        assert_eq!(lines, [format!("2|{}", heights[1])]);
        // Block 0 is the genesis state, before any table existed.
        let error = node
            .query("SELECT * FROM t AS OF BLOCK 0")
            .await
            .expect_err("no table yet");
        assert!(error.to_string().contains("t' not found"), "{error}");
        let tip = node.status().height;
        let error = node
            .query(&format!("SELECT * FROM t AS OF BLOCK {}", tip + 1))
            .await
            .expect_err("a future block");
        assert!(matches!(error, Error::FutureBlock { .. }), "{error}");
        let error = node
            .query("SELECT * FROM t AS OF BLOCK x")
            .await
            .expect_err("not a height");
        assert!(error.to_string().contains("takes a block height"), "{error}");
    }
}
