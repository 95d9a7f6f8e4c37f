//! `AS OF BLOCK n`: queries read any committed version, from the kept snapshots or rebuilt from
//! the stored blocks, and a restarted node answers them the same way.

use chainql::wire::ReceiptStatus;
use chainql::{Keypair, TransactionBuilder};
use chainql_server::{Error, Node, NodeConfig, Recovery, init_data_dir};

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

/// Waits until the checkpoint of block `height` is on disk (it is written in the background).
async fn checkpoint_written(data_dir: &std::path::Path, height: u64) {
    let path = data_dir.join("checkpoints").join(format!("{height:020}"));
    for _ in 0..1200 {
        if path.join("MANIFEST").exists() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no checkpoint of block {height} appeared at {}", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_and_old_versions_start_from_checkpoints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = NodeConfig::new(dir.path());
    config.snapshots_kept = 1;
    config.checkpoint_interval = 2;
    config.checkpoints_kept = 2;
    init_data_dir(&config, "checkpoints", &[]).expect("init");
    let node = Node::open(config.clone()).await.expect("open");
    assert_eq!(node.recovery().checkpoint, None);
    let builder = TransactionBuilder::new("checkpoints", Keypair::from_seed([4; 32]));
    let mut hashes = Vec::new();
    for nonce in 0..7u64 {
        let sql = match nonce {
            0 => "CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT)".to_string(),
            3 => "DELETE FROM t WHERE id = 1".to_string(),
            n => format!("INSERT INTO t VALUES ({n}, 'v{n}')"),
        };
        let signed = builder.build(nonce, vec![sql]);
        hashes.push(chainql::transaction_hash(&signed.transaction));
        let receipt = node.submit_and_wait(signed).await.expect("commit");
        assert_eq!(receipt.block_height, nonce + 1, "one block per transaction");
        if receipt.block_height % 2 == 0 {
            checkpoint_written(dir.path(), receipt.block_height).await;
        }
    }
    let versions: Vec<Vec<String>> = futures::future::join_all((1..=7).map(|h| rows_at(&node, h))).await;
    let root = node.status().state_root;
    let receipts: Vec<_> = hashes
        .iter()
        .map(|h| node.transaction(h).expect("lookup").expect("committed").1)
        .collect();
    node.shutdown().await;
    let checkpoints = dir.path().join("checkpoints");
    let mut names: Vec<String> = std::fs::read_dir(&checkpoints)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [format!("{:020}", 4), format!("{:020}", 6)],
        "the two newest are kept"
    );

    // Restart from the newest checkpoint, from an older one when the newest is damaged, and
    // from genesis without any: the same state, receipts and versions each time.
    for (damage, expected) in [
        (
            None,
            Recovery {
                checkpoint: Some(6),
                blocks_replayed: 1,
            },
        ),
        (
            Some(6),
            Recovery {
                checkpoint: Some(4),
                blocks_replayed: 3,
            },
        ),
        (
            Some(4),
            Recovery {
                checkpoint: None,
                blocks_replayed: 7,
            },
        ),
    ] {
        if let Some(height) = damage {
            let file = checkpoints.join(format!("{height:020}")).join("accounts.parquet");
            let mut bytes = std::fs::read(&file).expect("read");
            let last = bytes.len() - 1;
            bytes[last / 2] ^= 1;
            std::fs::write(&file, bytes).expect("damage");
        }
        let node = Node::open(config.clone()).await.expect("reopen");
        assert_eq!(node.recovery(), expected);
        assert_eq!(node.status().state_root, root);
        for (hash, receipt) in hashes.iter().zip(&receipts) {
            let (_, again) = node.transaction(hash).expect("lookup").expect("committed");
            assert_eq!(&again, receipt);
        }
        for (h, version) in (1..=7).zip(&versions) {
            assert_eq!(&rows_at(&node, h).await, version, "AS OF BLOCK {h}");
        }
        node.shutdown().await;
    }
}

async fn rows_at(node: &Node, height: u64) -> Vec<String> {
    rows(
        node,
        &format!("SELECT id, v FROM t AS OF BLOCK {height} ORDER BY id"),
    )
    .await
    .0
}

/// The `.seg` files of every log partition.
fn log_segments(data_dir: &std::path::Path) -> usize {
    std::fs::read_dir(data_dir.join("log"))
        .expect("log")
        .flat_map(|p| std::fs::read_dir(p.expect("partition").path()).expect("partition"))
        .filter(|f| {
            f.as_ref()
                .expect("file")
                .path()
                .extension()
                .is_some_and(|e| e == "seg")
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_retention_deletes_segments_below_the_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = NodeConfig::new(dir.path());
    config.transaction_limits.transaction_bytes_max = 2048;
    config.log_segment_bytes_max = 3200;
    config.checkpoint_interval = 4;
    config.log_retention = true;
    init_data_dir(&config, "retention", &[]).expect("init");
    let node = Node::open(config.clone()).await.expect("open");
    let builder = TransactionBuilder::new("retention", Keypair::from_seed([6; 32]));
    let padding = "x".repeat(900);
    let mut created = 0;
    for nonce in 0..13u64 {
        let sql = if nonce == 0 {
            "CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT)".to_string()
        } else {
            format!("INSERT INTO t VALUES ({nonce}, '{padding}')")
        };
        let receipt = node
            .submit_and_wait(builder.build(nonce, vec![sql]))
            .await
            .expect("commit");
        assert_eq!(receipt.status, ReceiptStatus::Success as i32);
        created = created.max(log_segments(dir.path()));
        if receipt.block_height % 4 == 0 {
            checkpoint_written(dir.path(), receipt.block_height).await;
        }
    }
    // Segments go once the checkpoint that covers them is written.
    let mut kept = log_segments(dir.path());
    for _ in 0..1200 {
        if kept < created {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        kept = log_segments(dir.path());
    }
    assert!(kept < created, "{kept} of {created} segments kept");
    let root = node.status().state_root;
    node.shutdown().await;

    let node = Node::open(config).await.expect("reopen");
    assert_eq!(node.recovery().checkpoint, Some(12));
    assert_eq!(node.status().state_root, root);
    let (lines, _) = rows(&node, "SELECT count(*) FROM t").await;
    assert_eq!(lines, ["12"]);
    let receipt = node
        .submit_and_wait(builder.build(13, vec!["DELETE FROM t WHERE id = 1".into()]))
        .await
        .expect("commit after the restart");
    assert_eq!(receipt.status, ReceiptStatus::Success as i32);
    node.shutdown().await;
}
