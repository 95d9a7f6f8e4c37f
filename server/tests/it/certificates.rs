//! Every committed block carries the commit certificate its validators signed, and anyone with
//! the genesis can check it: in process, and with `chainql verify block`.

use std::process::Command;

use chainql::wire::ReceiptStatus;
use chainql::{Hash, Keypair, TransactionBuilder};
use chainql_consensus::tendermint::ChainContext;
use chainql_consensus::{Genesis, ValidatorSet, header_hash, verify_committed};
use chainql_server::{Client, Node, NodeConfig, init_data_dir};

use crate::support::{NodeProcess, chainql};

/// A single validator decides each block through Tendermint alone: its blocks carry a
/// certificate of its own precommit, which checks out against the genesis validator set, and
/// every kind of tampering is caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_blocks_carry_certificates_that_verify_and_tampering_is_caught() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = NodeConfig::new(dir.path());
    let genesis = init_data_dir(&config, "certified", &[]).expect("init");
    let node = Node::open(config.clone()).await.expect("open");
    let builder = TransactionBuilder::new("certified", Keypair::from_seed([8; 32]));
    for (nonce, sql) in [
        "CREATE TABLE t (id INT PRIMARY KEY)",
        "INSERT INTO t VALUES (1)",
        "INSERT INTO t VALUES (2)",
    ]
    .into_iter()
    .enumerate()
    {
        let receipt = node
            .submit_and_wait(builder.build(nonce as u64, vec![sql.into()]))
            .await
            .expect("committed");
        assert_eq!(receipt.status, ReceiptStatus::Success as i32, "{receipt:?}");
    }
    let validators = ValidatorSet::from_genesis(&genesis)
        .expect("set")
        .consensus_set()
        .expect("consensus set");
    let ctx = ChainContext::new("certified");
    let validator = Keypair::read_file(&config.validator_key_path()).expect("validator key");
    let height = node.status().height;
    assert!(height >= 3, "one block per transaction at least: {height}");
    let mut parent = genesis.hash();
    for h in 1..=height {
        let block = node.block(h).expect("read").expect("stored");
        let proof = verify_committed(&block, parent, &ctx, &validators).expect("a committed block verifies");
        assert_eq!(proof.signers, [(validator.address(), 100)], "block {h}");
        assert_eq!((proof.signed_stake, proof.total_stake), (100, 100));
        parent = proof.hash;
    }

    let block = node.block(height).expect("read").expect("stored");
    let parent = node
        .block(height - 1)
        .expect("read")
        .and_then(|b| b.header.as_ref().map(header_hash))
        .expect("parent");
    let refused = |block: &chainql::wire::Block, parent: Hash| {
        verify_committed(block, parent, &ctx, &validators)
            .expect_err("tampering is caught")
            .to_string()
    };

    let mut forged = block.clone();
    if let Some(commit) = forged.commit.as_mut() {
        commit.signatures[0].signature[0] ^= 1;
    }
    assert!(refused(&forged, parent).contains("commit certificate"));

    let mut uncertified = block.clone();
    uncertified.commit = None;
    assert!(refused(&uncertified, parent).contains("no commit certificate"));

    let mut other_height = block.clone();
    if let Some(commit) = other_height.commit.as_mut() {
        commit.height += 1;
    }
    assert!(refused(&other_height, parent).contains("height"));

    let mut emptied = block.clone();
    emptied.transactions.clear();
    assert!(refused(&emptied, parent).contains("transactions do not match"));

    assert!(refused(&block, Hash::ZERO).contains("parent hash"));

    // Another chain's validators did not commit it.
    let stranger = Keypair::from_seed([42; 32]);
    let other = Genesis::single_validator("certified", 0, &stranger.public_key(), &[]);
    let strangers = ValidatorSet::from_genesis(&other)
        .expect("set")
        .consensus_set()
        .expect("set");
    assert!(
        verify_committed(&block, parent, &ctx, &strangers)
            .expect_err("unknown validators")
            .to_string()
            .contains("not a validator")
    );
    // Nor did this chain's validators commit it on another chain.
    assert!(
        verify_committed(&block, parent, &ChainContext::new("other"), &validators)
            .expect_err("another chain")
            .to_string()
            .contains("chain id")
    );
    node.shutdown().await;
    assert!(dir.path().join("wal/consensus.wal").exists());
}

/// `chainql verify block N` checks a block read from a running node or from a data directory,
/// prints who signed it, and fails on a block the given genesis's validators did not commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chainql_verify_block_checks_a_block_from_a_node_or_a_data_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("node");
    let process = NodeProcess::init_and_start(&data_dir, "verified").await;
    let client = Client::connect(&process.url).await.expect("connect");
    let key = TransactionBuilder::new("verified", Keypair::from_seed([3; 32]));
    client
        .execute(&key, vec!["CREATE TABLE t (id INT PRIMARY KEY)".into()])
        .await
        .expect("create");
    client
        .execute(&key, vec!["INSERT INTO t VALUES (1)".into()])
        .await
        .expect("insert");
    let data = data_dir.to_str().expect("UTF-8");
    let genesis = data_dir.join("genesis.json");
    let genesis = genesis.to_str().expect("UTF-8");
    let validator = chainql(&["keys", "address", "--key", &format!("{data}/keys/validator.key")]);

    let from_node = chainql(&[
        "verify",
        "block",
        "2",
        "--connect",
        &process.url,
        "--genesis",
        genesis,
    ]);
    assert!(from_node.starts_with("block 2 "), "{from_node}");
    assert!(from_node.contains("is committed"), "{from_node}");
    assert!(
        from_node.contains("precommits of 100 of 100 stake"),
        "{from_node}"
    );
    assert!(
        from_node.contains(&format!("signed by {}", validator.trim())),
        "{from_node}"
    );

    // The block store read beside the running node.
    let from_disk = chainql(&["verify", "block", "1", "--data-dir", data]);
    assert!(
        from_disk.contains("block 1 ") && from_disk.contains("is committed"),
        "{from_disk}"
    );

    // A genesis naming another validator: the block does not verify, and the command fails.
    let stranger = dir.path().join("stranger");
    chainql(&[
        "init",
        "--data-dir",
        stranger.to_str().expect("UTF-8"),
        "--chain-id",
        "verified",
    ]);
    let output = Command::new(env!("CARGO_BIN_EXE_chainql"))
        .args(["verify", "block", "1", "--connect", &process.url, "--genesis"])
        .arg(stranger.join("genesis.json"))
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("does not verify"), "{stdout}");

    // A height not committed yet is an error, not a verdict.
    let output = Command::new(env!("CARGO_BIN_EXE_chainql"))
        .args(["verify", "block", "999", "--data-dir", data])
        .output()
        .expect("run");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("has no block 999"));
}
