//! Block execution: atomic transactions, nonces, gas, determinism of the state root.

mod common;

use chainql::wire::ReceiptStatus;
use chainql::{Address, Hash, Keypair};
use chainql_executor::{BlockContext, ExecutableTransaction, Executor, QueryLimits, State};
use common::rows;

fn alice() -> Address {
    Keypair::from_seed([1; 32]).address()
}

fn block(state: &State, height: u64) -> BlockContext {
    BlockContext {
        height,
        hash: Hash::tagged("test-block", &[&height.to_le_bytes()]),
        parent_hash: state.block_hash(),
        timestamp_ms: 1_700_000_000_000 + height * 1000,
        transactions_root: Hash::ZERO,
        state_root: state.root(),
        proposer: alice(),
        offences: Vec::new(),
    }
}

fn transaction(nonce: u64, statements: &[&str]) -> ExecutableTransaction {
    ExecutableTransaction {
        hash: Hash::tagged("test-tx", &[&nonce.to_le_bytes()]),
        sender: alice(),
        sender_key: None,
        nonce,
        gas_limit: 10_000_000,
        statements: statements.iter().map(|s| s.to_string()).collect(),
    }
}

#[tokio::test]
async fn a_failing_statement_undoes_its_whole_transaction_but_uses_the_nonce() {
    let executor = Executor::new(1, QueryLimits::default()).expect("executor");
    let genesis = State::genesis(Hash::ZERO, 0, &[(alice(), 100)]).expect("genesis");
    let (state, receipts) = executor
        .execute_block(
            &genesis,
            &block(&genesis, 1),
            &[
                transaction(
                    0,
                    &[
                        "CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT)",
                        "INSERT INTO t VALUES (1, 'a')",
                    ],
                ),
                transaction(
                    1,
                    &[
                        "INSERT INTO t VALUES (2, 'b')",
                        "INSERT INTO t VALUES (1, 'duplicate')",
                    ],
                ),
                transaction(2, &["UPDATE t SET v = 'changed' WHERE id = 1"]),
                transaction(9, &["INSERT INTO t VALUES (3, 'c')"]),
            ],
        )
        .await
        .expect("block");
    let statuses: Vec<i32> = receipts.iter().map(|r| r.status).collect();
    let ok = ReceiptStatus::Success as i32;
    let failed = ReceiptStatus::Failed as i32;
    assert_eq!(statuses, [ok, failed, ok, failed]);
    assert!(
        receipts[1].error.contains("duplicate key"),
        "{}",
        receipts[1].error
    );
    assert!(receipts[3].error.contains("nonce"), "{}", receipts[3].error);
    assert_eq!(
        rows(&executor, &state, "SELECT id, v FROM t ORDER BY id").await,
        ["1|changed"]
    );
    assert_eq!(
        state.account(&alice()).nonce,
        3,
        "the failed transaction used nonce 1; nonce 9 was not used"
    );
    assert_eq!(
        receipts[0].statements.iter().map(|s| s.rows).collect::<Vec<_>>(),
        [0, 1]
    );
}

#[tokio::test]
async fn the_same_block_gives_the_same_root_and_different_contents_do_not() {
    let executor = Executor::new(2, QueryLimits::default()).expect("executor");
    let genesis = State::genesis(Hash::ZERO, 0, &[(alice(), 100)]).expect("genesis");
    let transactions = [
        transaction(0, &["CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT)"]),
        transaction(
            1,
            &["INSERT INTO t SELECT value, 'v' || value FROM generate_series(1, 20000)"],
        ),
        transaction(
            2,
            &[
                "DELETE FROM t WHERE id % 3 = 0",
                "UPDATE t SET v = upper(v) WHERE id < 100",
            ],
        ),
    ];
    let (a, _) = executor
        .execute_block(&genesis, &block(&genesis, 1), &transactions)
        .await
        .expect("a");
    let (b, _) = executor
        .execute_block(&genesis, &block(&genesis, 1), &transactions)
        .await
        .expect("b");
    assert_eq!(a.root(), b.root());
    assert_ne!(a.root(), genesis.root());

    // The same rows reached by another history (one insert, in another order) hash the same.
    let other_history = [
        transaction(0, &["CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT)"]),
        transaction(
            1,
            &[
                "INSERT INTO t SELECT value, CASE WHEN value < 100 THEN upper('v' || value) ELSE 'v' || value END FROM generate_series(20000, 1, -1) WHERE value % 3 <> 0",
            ],
        ),
        transaction(2, &["DELETE FROM t WHERE false"]),
    ];
    let (c, receipts) = executor
        .execute_block(&genesis, &block(&genesis, 1), &other_history)
        .await
        .expect("c");
    assert!(receipts.iter().all(|r| r.error.is_empty()), "{receipts:?}");
    assert_eq!(rows(&executor, &c, "SELECT count(*) FROM t").await, ["13334"]);
    assert_eq!(
        c.root(),
        a.root(),
        "the root depends on contents, not on history or layout"
    );

    let different = [
        transaction(0, &["CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT)"]),
        transaction(1, &["INSERT INTO t VALUES (1, 'x')"]),
        transaction(2, &["DELETE FROM t WHERE id = 1"]),
    ];
    let (d, _) = executor
        .execute_block(&genesis, &block(&genesis, 1), &different)
        .await
        .expect("d");
    assert_ne!(d.root(), a.root());
}

#[tokio::test]
async fn gas_runs_out_and_time_is_the_block_time() {
    let executor = Executor::new(1, QueryLimits::default()).expect("executor");
    let genesis = State::genesis(Hash::ZERO, 0, &[]).expect("genesis");
    let mut hungry = transaction(
        1,
        &["INSERT INTO t SELECT value, now() FROM generate_series(1, 1000)"],
    );
    hungry.gas_limit = 50_000;
    let (state, receipts) = executor
        .execute_block(
            &genesis,
            &block(&genesis, 1),
            &[
                transaction(
                    0,
                    &[
                        "CREATE TABLE t (id BIGINT PRIMARY KEY, at TIMESTAMP)",
                        "INSERT INTO t VALUES (0, now())",
                    ],
                ),
                hungry,
            ],
        )
        .await
        .expect("block");
    assert!(receipts[0].error.is_empty(), "{}", receipts[0].error);
    assert_eq!(
        receipts[1].error,
        "out of gas: the transaction's gas limit of 50000 is exhausted"
    );
    assert_eq!(receipts[1].gas_used, 50_000);
    assert_eq!(rows(&executor, &state, "SELECT count(*) FROM t").await, ["1"]);
    assert_eq!(
        rows(&executor, &state, "SELECT at FROM t").await,
        ["2023-11-14T22:13:21"]
    );
}

/// With a gas price, the gas limit is reserved up front, the gas used paid to the proposer and
/// the rest refunded; a sender who cannot cover its limit fails at once, pays nothing and uses
/// its nonce.
#[tokio::test]
async fn fees_move_to_the_proposer_and_an_unfunded_sender_pays_nothing() {
    let proposer = Keypair::from_seed([9; 32]).address();
    let poor = Keypair::from_seed([2; 32]).address();
    let genesis = State::genesis(Hash::ZERO, 0, &[(alice(), 50_000_000)]).expect("genesis");
    let executor = Executor::new(1, QueryLimits::default())
        .expect("executor")
        .with_gas_price(2);
    let mut context = block(&genesis, 1);
    context.proposer = proposer;
    let mut unfunded = transaction(0, &["CREATE TABLE u (id INT PRIMARY KEY)"]);
    unfunded.sender = poor;
    unfunded.hash = Hash::tagged("test-tx", &[b"poor"]);
    let (state, receipts) = executor
        .execute_block(
            &genesis,
            &context,
            &[transaction(0, &["CREATE TABLE t (id INT PRIMARY KEY)"]), unfunded],
        )
        .await
        .expect("block");
    assert_eq!(
        receipts[0].status,
        ReceiptStatus::Success as i32,
        "{}",
        receipts[0].error
    );
    let fee = receipts[0].gas_used * 2;
    assert!(fee > 0);
    assert_eq!(receipts[0].fee, fee);
    assert_eq!(state.account(&alice()).balance, 50_000_000 - fee);
    assert_eq!(state.account(&proposer).balance, fee);

    assert_eq!(receipts[1].status, ReceiptStatus::Failed as i32);
    assert!(
        receipts[1]
            .error
            .starts_with("insufficient balance for gas: a gas limit of 10000000 at price 2 needs 20000000"),
        "{}",
        receipts[1].error
    );
    assert_eq!(receipts[1].fee, 0);
    assert_eq!(state.account(&poor).nonce, 1);
    assert_eq!(state.account(&poor).balance, 0);
    assert!(state.table("u").is_none());
}

/// The state root is what validators agree on: its value for a fixed history is pinned here, so
/// any change to how rows, buckets, accounts or tables are encoded and hashed fails this test
/// first (and has to come with a new state-root domain). The table is large enough, and forty
/// accounts share one bucket, so that bucket leaves hash more than one 1 KiB blake3 chunk.
#[tokio::test]
async fn the_state_root_of_a_fixed_history_is_pinned() {
    let executor = Executor::new(2, QueryLimits::default()).expect("executor");
    let mut balances = vec![(alice(), 1_000_000)];
    for n in 0..40u8 {
        let mut bytes = [n; 20];
        bytes[..2].copy_from_slice(&[0x12, 0x30 | (n % 16)]);
        balances.push((Address(bytes), 1_000 + n as u64));
    }
    let genesis = State::genesis(Hash::ZERO, 0, &balances).expect("genesis");
    let transactions = [
        transaction(
            0,
            &["CREATE TABLE t (id BIGINT PRIMARY KEY, name TEXT, score DOUBLE, ok BOOLEAN)"],
        ),
        ExecutableTransaction {
            gas_limit: 100_000_000,
            ..transaction(
                1,
                &["INSERT INTO t SELECT value, 'n' || value, value / 7.0, \
                   CASE WHEN value % 5 = 0 THEN NULL ELSE value % 2 = 0 END \
                   FROM generate_series(1, 150000)"],
            )
        },
        transaction(
            2,
            &[
                "DELETE FROM t WHERE id % 11 = 0",
                "UPDATE t SET name = NULL WHERE id < 50",
            ],
        ),
    ];
    let (state, receipts) = executor
        .execute_block(&genesis, &block(&genesis, 1), &transactions)
        .await
        .expect("block");
    assert!(receipts.iter().all(|r| r.error.is_empty()), "{receipts:?}");
    assert_eq!(
        state.root().to_hex(),
        "0xa348f4d3c989d93c94e0d538190db5af904d3fb174b41c0e288166bb3010956e",
        "the state root changed: a change of encoding needs a new state-root domain"
    );
}
