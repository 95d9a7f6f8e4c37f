//! Checkpoints: a state written as Parquet files and a manifest reads back with the same root,
//! the same rows in the same scan order, and goes on to execute blocks exactly as the original;
//! a damaged checkpoint is refused with the file named.

mod common;

use chainql::{Address, Hash, Keypair};
use chainql_executor::{BlockContext, ExecutableTransaction, Executor, QueryLimits, State};
use common::rows;

fn account(i: u8) -> Address {
    Keypair::from_seed([i; 32]).address()
}

/// Executes `statements` as one transaction per statement in one block, and checks each
/// succeeded.
async fn run(executor: &Executor, state: &State, sender: Address, statements: &[&str]) -> State {
    let height = state.height() + 1;
    let block = BlockContext {
        height,
        hash: Hash::tagged("checkpoint-test-block", &[&height.to_le_bytes()]),
        parent_hash: state.block_hash(),
        timestamp_ms: 1_700_000_000_000 + height * 1000,
        transactions_root: Hash::ZERO,
        state_root: state.root(),
        proposer: account(9),
        offences: Vec::new(),
    };
    let nonce = state.account(&sender).nonce;
    let transactions: Vec<ExecutableTransaction> = statements
        .iter()
        .enumerate()
        .map(|(i, sql)| ExecutableTransaction {
            hash: Hash::tagged("checkpoint-test-tx", &[&height.to_le_bytes(), &i.to_le_bytes()]),
            sender,
            sender_key: None,
            nonce: nonce + i as u64,
            gas_limit: 1_000_000_000,
            statements: vec![sql.to_string()],
        })
        .collect();
    let (next, receipts) = executor
        .execute_block(state, &block, &transactions)
        .await
        .expect("block executes");
    for (receipt, sql) in receipts.iter().zip(statements) {
        assert!(receipt.error.is_empty(), "{sql}: {}", receipt.error);
    }
    next
}

const QUERIES: &[&str] = &[
    "SELECT * FROM kinds",
    "SELECT * FROM log",
    "SELECT * FROM chain.accounts ORDER BY address",
    "SELECT * FROM chain.tables ORDER BY table_name",
    "SELECT * FROM chain.grants",
    "SELECT contract_name, owner, source FROM chain.contracts",
    "SELECT height, hash, state_root FROM chain.blocks ORDER BY height",
    "SELECT hash, status, error, gas_used FROM chain.transactions ORDER BY block_height, index",
    "SELECT * FROM chain.events ORDER BY block_height, transaction_index, event_index",
];

async fn history(executor: &Executor) -> State {
    let owner = account(1);
    let genesis = State::genesis(Hash::ZERO, 0, &[(owner, 1_000), (account(2), 5)]).expect("genesis");
    let state = run(
        executor,
        &genesis,
        owner,
        &[
            "CREATE TABLE kinds (id BIGINT PRIMARY KEY, small SMALLINT, flag BOOLEAN, ratio DOUBLE PRECISION, \
             price DECIMAL(12, 3), day DATE, at TIMESTAMP, code VARCHAR(5) NOT NULL DEFAULT 'x', raw BYTEA)",
            "CREATE TABLE log (line TEXT, n INT)",
            "INSERT INTO kinds SELECT value, CAST(value % 100 AS SMALLINT), value % 2 = 0, value / 7.0, \
             CAST(value AS DECIMAL(12, 3)) / 8, DATE '2024-01-01' + CAST(value % 365 AS INT), \
             to_timestamp(1700000000 + value), 'c' || (value % 1000), \
             CAST('raw' AS BYTEA) FROM generate_series(1, 20000)",
            "INSERT INTO kinds (id) VALUES (-1)",
            "INSERT INTO log SELECT 'line ' || value, CAST(value AS INT) FROM generate_series(1, 3000)",
            "GRANT INSERT, DELETE ON log TO '0x00000000000000000000000000000000000000aa'",
            "CREATE CONTRACT note(line TEXT) AS $$ INSERT INTO log VALUES (line, BLOCK_HEIGHT()); \
             EMIT noted(CALLER(), line) $$",
        ],
    )
    .await;
    // Deletes and updates leave chunks with dead rows and new chunks behind them.
    run(
        executor,
        &state,
        owner,
        &[
            "DELETE FROM kinds WHERE id % 3 = 0 AND id < 9000",
            "UPDATE kinds SET code = 'upd' WHERE id BETWEEN 12000 AND 12100",
            "DELETE FROM log WHERE n % 5 = 0",
            "CALL note('hello')",
            "CALL chain.transfer('0x00000000000000000000000000000000000000bb', 7)",
        ],
    )
    .await
}

#[tokio::test]
async fn a_checkpoint_reads_back_as_the_same_state_and_goes_on_identically() {
    let executor = Executor::new(1, QueryLimits::default()).expect("executor");
    let original = history(&executor).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("checkpoint");
    original
        .write_checkpoint(&path, &[("notes", b"kept beside the state")])
        .expect("write");
    assert_eq!(
        chainql_executor::checkpoint_height(&path).expect("height"),
        original.height()
    );
    let (restored, attachments) = State::read_checkpoint(&path).expect("read");
    assert_eq!(restored.root(), original.root());
    assert_eq!(restored.height(), original.height());
    assert_eq!(restored.block_hash(), original.block_hash());
    assert_eq!(attachments["notes"], b"kept beside the state");
    for sql in QUERIES {
        // Without ORDER BY the rows come in storage order: the layout came back too.
        assert_eq!(
            rows(&executor, &restored, sql).await,
            rows(&executor, &original, sql).await,
            "{sql}"
        );
    }
    // The next blocks (writes whose results depend on scan order, compaction, a contract call)
    // give the same roots on both.
    let mut states = [original, restored];
    for statements in [
        &[
            "DELETE FROM kinds WHERE id > 15000",
            "INSERT INTO log SELECT line || '!', n FROM log LIMIT 7",
            "CALL note('again')",
        ][..],
        &[
            "UPDATE kinds SET small = 1 WHERE id < 100",
            "DELETE FROM log WHERE n < 2000",
        ][..],
    ] {
        for state in states.iter_mut() {
            *state = run(&executor, state, account(1), statements).await;
        }
        assert_eq!(states[0].root(), states[1].root());
        for sql in QUERIES {
            assert_eq!(
                rows(&executor, &states[0], sql).await,
                rows(&executor, &states[1], sql).await,
                "{sql}"
            );
        }
    }
}

#[tokio::test]
async fn damaged_checkpoints_are_refused() {
    let executor = Executor::new(1, QueryLimits::default()).expect("executor");
    let state = history(&executor).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("checkpoint");
    state.write_checkpoint(&path, &[]).expect("write");
    let error = state.write_checkpoint(&path, &[]).expect_err("exists");
    assert!(error.to_string().contains("already exists"), "{error}");

    let copy = |name: &str| {
        let target = dir.path().join(name);
        std::fs::create_dir(&target).expect("mkdir");
        for entry in std::fs::read_dir(&path).expect("list") {
            let entry = entry.expect("entry");
            std::fs::copy(entry.path(), target.join(entry.file_name())).expect("copy");
        }
        target
    };
    let flip = |file: &std::path::Path, at: usize| {
        let mut bytes = std::fs::read(file).expect("read");
        let at = at.min(bytes.len() - 1);
        bytes[at] ^= 0x40;
        std::fs::write(file, bytes).expect("write");
    };
    let damaged = copy("table");
    flip(&damaged.join("table-0000.parquet"), 100);
    let error = State::read_checkpoint(&damaged).expect_err("a damaged table file");
    assert!(
        error
            .to_string()
            .contains("table-0000.parquet does not match its digest"),
        "{error}"
    );

    let damaged = copy("manifest");
    flip(&damaged.join("MANIFEST"), 40);
    let error = State::read_checkpoint(&damaged).expect_err("a damaged manifest");
    assert!(error.to_string().contains("checksum"), "{error}");

    let damaged = copy("version");
    flip(&damaged.join("MANIFEST"), 8);
    let error = State::read_checkpoint(&damaged).expect_err("another version");
    assert!(error.to_string().contains("format version"), "{error}");

    let damaged = copy("missing");
    std::fs::remove_file(damaged.join("accounts.parquet")).expect("remove");
    let error = State::read_checkpoint(&damaged).expect_err("a missing file");
    assert!(error.to_string().contains("accounts.parquet"), "{error}");

    // A manifest that checks out but describes an impossible table or a file outside the
    // checkpoint is refused, not followed.
    let rewrite = |name: &str, from: &str, to: &str| {
        let damaged = copy(name);
        let bytes = std::fs::read(damaged.join("MANIFEST")).expect("read");
        let json = String::from_utf8(bytes[20..].to_vec()).expect("json");
        assert!(json.contains(from), "{from} in {json}");
        let json = json.replace(from, to);
        let mut manifest = bytes[..12].to_vec();
        manifest.extend_from_slice(&crc32c::crc32c(json.as_bytes()).to_le_bytes());
        manifest.extend_from_slice(&(json.len() as u32).to_le_bytes());
        manifest.extend_from_slice(json.as_bytes());
        std::fs::write(damaged.join("MANIFEST"), manifest).expect("write");
        State::read_checkpoint(&damaged).expect_err("refused").to_string()
    };
    let error = rewrite("key", "\"primary_key\":[0]", "\"primary_key\":[99]");
    assert!(error.contains("bad primary key"), "{error}");
    let error = rewrite("escape", "\"table-0000.parquet\"", "\"../table-0000.parquet\"");
    assert!(error.contains("names a file"), "{error}");

    let error = State::read_checkpoint(&dir.path().join("nowhere")).expect_err("no checkpoint");
    assert!(error.to_string().contains("MANIFEST"), "{error}");
}
