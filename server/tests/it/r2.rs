//! `EXPLAIN BLOCK n` over real multi-transaction blocks: calls on distinct keys share one stage
//! and run as one vectorized group; calls on one hot key are ordered into a stage each.

use chainql::{Hash, Keypair, TransactionBuilder};
use chainql_server::{Node, NodeConfig, init_data_dir};

const TRANSFER: &str = "CREATE CONTRACT transfer(to_addr TEXT, amount BIGINT) AS $$
  REQUIRE (SELECT balance FROM tokens WHERE owner = CALLER()) >= amount, 'insufficient balance';
  UPDATE tokens SET balance = balance - amount WHERE owner = CALLER();
  INSERT INTO tokens VALUES (to_addr, amount)
    ON CONFLICT (owner) DO UPDATE SET balance = tokens.balance + excluded.balance;
$$";

async fn block_of(node: &Node, hashes: &[Hash]) -> u64 {
    let mut heights = Vec::new();
    for hash in hashes {
        loop {
            if let Some((_, receipt)) = node.transaction(hash).expect("lookup") {
                assert!(receipt.error.is_empty(), "{}", receipt.error);
                heights.push(receipt.block_height);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    heights.dedup();
    assert_eq!(heights.len(), 1, "the batch landed in one block: {heights:?}");
    heights[0]
}

/// Admits a batch and returns the height of the one block it landed in.
async fn commit_in_one_block(node: &Node, batch: Vec<chainql::wire::SignedTransaction>) -> u64 {
    let hashes: Vec<Hash> = node
        .submit_many(batch)
        .await
        .into_iter()
        .map(|r| r.expect("admitted"))
        .collect();
    block_of(node, &hashes).await
}

async fn stages(node: &Node, height: u64) -> Vec<String> {
    let (answer, _) = node
        .query(&format!("EXPLAIN BLOCK {height}"))
        .await
        .expect("explain");
    let mut rows = Vec::new();
    for batch in &answer.batches {
        for row in 0..batch.num_rows() {
            let stage = chainql_server::format::cell_text(batch.column(0), row).unwrap_or_default();
            let count = chainql_server::format::cell_text(batch.column(1), row).unwrap_or_default();
            let vectorized = chainql_server::format::cell_text(batch.column(2), row).unwrap_or_default();
            rows.push(format!("{stage}:{count}:{vectorized}"));
        }
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_block_cuts_stages_by_key_conflicts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = NodeConfig::new(dir.path());
    // Long enough that a batch submitted right after a block waits for the next one whole.
    config.block_interval_ms = 400;
    init_data_dir(&config, "r2-test", &[]).expect("init");
    let node = Node::open(config).await.expect("open");
    let senders: Vec<Keypair> = (0..6u8).map(|i| Keypair::from_seed([90 + i; 32])).collect();
    let holders: Vec<String> = senders
        .iter()
        .map(|k| format!("('{}', 100)", k.address()))
        .collect();
    let owner = TransactionBuilder::new("r2-test", Keypair::from_seed([89; 32]));
    let receipt = node
        .submit_and_wait(owner.build(
            0,
            vec![
                "CREATE TABLE tokens (owner TEXT PRIMARY KEY, balance BIGINT NOT NULL)".into(),
                format!("INSERT INTO tokens VALUES {}", holders.join(", ")),
                TRANSFER.into(),
            ],
        ))
        .await
        .expect("setup");
    assert!(receipt.error.is_empty(), "{}", receipt.error);
    let builders: Vec<TransactionBuilder> = senders
        .iter()
        .map(|k| TransactionBuilder::new("r2-test", k.clone()))
        .collect();

    // Six senders, six distinct recipients: no conflicts, one stage.
    let batch: Vec<_> = builders
        .iter()
        .enumerate()
        .map(|(i, b)| b.build(0, vec![format!("CALL transfer('0x{:040x}', 1)", 1000 + i)]))
        .collect();
    let distinct = commit_in_one_block(&node, batch).await;
    assert_eq!(stages(&node, distinct).await, ["1:6:6"]);

    // Four senders paying one hot recipient: each conflicts with the ones before it, and runs
    // as a vectorized group of one in its own stage.
    let batch: Vec<_> = builders[..4]
        .iter()
        .map(|b| {
            b.build(
                1,
                vec!["CALL transfer('0x00000000000000000000000000000000000000aa', 1)".into()],
            )
        })
        .collect();
    let hot = commit_in_one_block(&node, batch).await;
    assert_eq!(stages(&node, hot).await, ["1:1:1", "2:1:1", "3:1:1", "4:1:1"]);

    // The setup block changed the catalog: a barrier, alone in its stage.
    assert_eq!(stages(&node, 1).await, ["1:1:0"]);
    node.shutdown().await;
}
