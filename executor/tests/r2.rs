//! Serial equivalence, the contract of the R2 runtime: over random blocks of random calls
//! (transfers with hot keys, inserts, deletes, calls that write and then fail a `REQUIRE`,
//! contract-calls-contract, constraint and gas failures, plain SQL and native transfers), a block
//! run through R2's stages and vectorized groups gives the same state root, the same receipts
//! and the same rows as running its transactions one by one in block order.
//!
//! R2 runs a block on one thread (its speed comes from vectorized groups), so the result cannot
//! depend on the runtime's worker threads; the property is checked on a single-threaded and on a
//! four-thread runtime all the same.

mod common;

use chainql::{Address, Hash, Keypair};
use chainql_executor::{BlockContext, ExecutableTransaction, Executor, QueryLimits, State};
use common::rows;

const ACCOUNTS: u8 = 12;

fn account(i: u8) -> Address {
    Keypair::from_seed([i + 1; 32]).address()
}

/// A small deterministic generator (SplitMix64), so a seed names one run.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn block(state: &State, proposer: Address) -> BlockContext {
    let height = state.height() + 1;
    BlockContext {
        height,
        hash: Hash::tagged("r2-test-block", &[&height.to_le_bytes()]),
        parent_hash: state.block_hash(),
        timestamp_ms: 1_700_000_000_000 + height * 1000,
        transactions_root: Hash::ZERO,
        state_root: state.root(),
        proposer,
        offences: Vec::new(),
    }
}

const SETUP: &[&str] = &[
    "CREATE TABLE tokens (owner TEXT PRIMARY KEY, balance BIGINT NOT NULL)",
    "CREATE TABLE notes (id BIGINT PRIMARY KEY, author TEXT NOT NULL, body VARCHAR(8))",
    "CREATE CONTRACT transfer(to_addr TEXT, amount BIGINT) AS $$
       REQUIRE amount > 0, 'amount must be positive';
       REQUIRE (SELECT balance FROM tokens WHERE owner = CALLER()) >= amount, 'insufficient balance';
       UPDATE tokens SET balance = balance - amount WHERE owner = CALLER();
       INSERT INTO tokens VALUES (to_addr, amount)
         ON CONFLICT (owner) DO UPDATE SET balance = tokens.balance + excluded.balance;
       EMIT transferred(CALLER(), to_addr, amount);
     $$",
    "CREATE CONTRACT risky(to_addr TEXT, amount BIGINT) AS $$
       UPDATE tokens SET balance = balance - amount WHERE owner = CALLER();
       LET left = (SELECT balance FROM tokens WHERE owner = CALLER());
       REQUIRE left >= 0, 'overdrawn';
       INSERT INTO tokens VALUES (to_addr, amount)
         ON CONFLICT (owner) DO UPDATE SET balance = tokens.balance + excluded.balance;
       EMIT risked(left, TX_HASH(), BLOCK_HEIGHT());
     $$",
    "CREATE CONTRACT note(id BIGINT, body TEXT) AS $$
       INSERT INTO notes VALUES (id, CALLER(), body);
       EMIT noted(id, body);
     $$",
    "CREATE CONTRACT unnote(id BIGINT) AS $$
       LET author = (SELECT n.author FROM notes n WHERE n.id = id);
       REQUIRE author = CALLER(), 'not your note';
       DELETE FROM notes WHERE notes.id = id;
     $$",
    "CREATE CONTRACT bump(to_addr TEXT) AS $$
       UPDATE tokens SET balance = balance + 1 WHERE owner = to_addr AND balance < 150;
     $$",
    "CREATE CONTRACT claim(id BIGINT) AS $$
       INSERT INTO notes VALUES (id, CALLER(), 'claimed')
         ON CONFLICT (id) DO UPDATE SET body = 'taken' WHERE notes.author = CALLER();
     $$",
    "CREATE CONTRACT touch(id BIGINT) AS $$
       INSERT INTO notes (id, author) VALUES (id, CALLER()) ON CONFLICT DO NOTHING;
       DELETE FROM notes WHERE notes.id = id AND body IS NULL;
     $$",
    "CREATE CONTRACT census() AS $$
       EMIT counted((SELECT count(*) FROM notes), (SELECT sum(balance) FROM tokens));
     $$",
    "CREATE CONTRACT pay_twice(to_addr TEXT, amount BIGINT) AS $$
       CALL transfer(to_addr, amount);
       CALL transfer(to_addr, amount);
     $$",
];

/// One random transaction of `sender`.
fn random_statement(random: &mut Random) -> String {
    let target = |random: &mut Random| -> String {
        if random.chance(30) {
            // A hot key.
            account(0).to_hex()
        } else if random.chance(15) {
            // A holder that does not exist yet.
            Keypair::from_seed([200 + random.below(20) as u8; 32])
                .address()
                .to_hex()
        } else {
            account(random.below(ACCOUNTS as u64) as u8).to_hex()
        }
    };
    match random.below(100) {
        0..=39 => format!(
            "CALL transfer('{}', {})",
            target(random),
            random.below(130) as i64 - 5
        ),
        40..=49 => format!("CALL risky('{}', {})", target(random), random.below(150)),
        50..=61 => {
            let body = if random.chance(20) { "far too long" } else { "hi" };
            format!("CALL note({}, '{body}')", random.below(24))
        }
        62..=67 => format!("CALL unnote({})", random.below(24)),
        68..=71 => format!("CALL claim({})", random.below(24)),
        72..=73 => format!("CALL touch({})", random.below(24)),
        74 => "CALL census()".to_string(),
        75..=79 => format!("CALL bump('{}')", target(random)),
        80..=85 => format!("CALL pay_twice('{}', {})", target(random), random.below(40)),
        86..=90 => format!(
            "UPDATE tokens SET balance = balance + 1 WHERE owner = '{}'",
            target(random)
        ),
        91..=94 => format!(
            "CALL chain.transfer('{}', {})",
            target(random),
            1 + random.below(50)
        ),
        95..=97 => format!("CALL transfer({}, 1)", random.below(5)),
        _ => format!("INSERT INTO notes VALUES ({}, 'x', 'direct')", random.below(24)),
    }
}

/// Runs six random blocks of at least `size` transactions both ways and compares them; returns
/// how many transactions R2 ran vectorized and how many succeeded. R2 shares its work over
/// `threads` threads, splitting even the smallest groups.
async fn equivalent_over_seed(seed: u64, size: usize, threads: usize) -> (usize, usize) {
    let mut random = Random(seed);
    let balances: Vec<(Address, u64)> = (0..ACCOUNTS).map(|i| (account(i), 1_000_000_000)).collect();
    let genesis = State::genesis(Hash::ZERO, 0, &balances).expect("genesis");
    let r2 = Executor::new(1, QueryLimits::default())
        .expect("executor")
        .with_gas_price(1)
        .with_threads(threads, 1);
    let serial = Executor::new(1, QueryLimits::default())
        .expect("executor")
        .with_gas_price(1)
        .with_serial_execution();
    let deployer = account(1);
    let mut nonces = vec![0u64; ACCOUNTS as usize];
    let mut setup: Vec<ExecutableTransaction> = Vec::new();
    let mut statements: Vec<String> = SETUP.iter().map(|s| s.to_string()).collect();
    for i in 0..ACCOUNTS {
        statements.push(format!(
            "INSERT INTO tokens VALUES ('{}', 100)",
            account(i).to_hex()
        ));
    }
    for statement in statements {
        setup.push(ExecutableTransaction {
            hash: Hash::tagged("r2-setup", &[statement.as_bytes()]),
            sender: deployer,
            sender_key: None,
            nonce: nonces[1],
            gas_limit: 10_000_000,
            statements: vec![statement],
        });
        nonces[1] += 1;
    }
    let context = block(&genesis, account(0));
    let (mut a, receipts) = serial
        .execute_block(&genesis, &context, &setup)
        .await
        .expect("setup");
    assert!(receipts.iter().all(|r| r.error.is_empty()), "{receipts:?}");
    let mut b = a.clone();
    for round in 0..6u64 {
        // The proposer is sometimes a sender too, sometimes not.
        let proposer = if round % 2 == 0 {
            account(0)
        } else {
            account(ACCOUNTS + 5)
        };
        let count = size + random.below(60) as usize;
        let mut transactions = Vec::with_capacity(count);
        for n in 0..count {
            let sender = random.below(ACCOUNTS as u64) as usize;
            let nonce = if random.chance(3) {
                nonces[sender] + 7
            } else {
                nonces[sender] += 1;
                nonces[sender] - 1
            };
            let gas_limit = if random.chance(8) {
                2_000 + random.below(8_000)
            } else {
                1_000_000
            };
            transactions.push(ExecutableTransaction {
                hash: Hash::tagged(
                    "r2-tx",
                    &[
                        &seed.to_le_bytes(),
                        &round.to_le_bytes(),
                        &(n as u64).to_le_bytes(),
                    ],
                ),
                sender: account(sender as u8),
                sender_key: None,
                nonce,
                gas_limit,
                statements: vec![random_statement(&mut random)],
            });
        }
        let context = block(&a, proposer);
        let (next_a, receipts_a) = serial
            .execute_block(&a, &context, &transactions)
            .await
            .expect("serial");
        let (next_b, receipts_b) = r2.execute_block(&b, &context, &transactions).await.expect("r2");
        for (i, (x, y)) in receipts_a.iter().zip(&receipts_b).enumerate() {
            assert_eq!(
                x, y,
                "seed {seed} round {round}: receipt {i} of {:?} differs",
                transactions[i].statements
            );
        }
        assert_eq!(
            next_a.root(),
            next_b.root(),
            "seed {seed} round {round}: state roots differ"
        );
        for sql in [
            "SELECT owner, balance FROM tokens ORDER BY owner",
            "SELECT id, author, body FROM notes ORDER BY id",
            "SELECT address, balance, nonce FROM chain.accounts ORDER BY address",
            "SELECT hash, status, error, gas_used FROM chain.transactions ORDER BY block_height, index",
            "SELECT * FROM chain.events ORDER BY block_height, transaction_index, event_index",
        ] {
            assert_eq!(
                rows(&serial, &next_a, sql).await,
                rows(&r2, &next_b, sql).await,
                "{sql}"
            );
        }
        a = next_a;
        b = next_b;
    }
    let ran = rows(
        &r2,
        &b,
        "SELECT count(*) FILTER (WHERE vectorized), count(*) FILTER (WHERE status = 'success') FROM chain.transactions",
    )
    .await;
    let counts: Vec<usize> = ran[0].split('|').map(|n| n.parse().expect("count")).collect();
    (counts[0], counts[1])
}

#[tokio::test(flavor = "current_thread")]
async fn r2_equals_serial_execution_on_one_thread() {
    let (mut vectorized, mut succeeded) = (0, 0);
    for seed in 1..=6 {
        let (v, s) = equivalent_over_seed(seed, 20, 1).await;
        vectorized += v;
        succeeded += s;
    }
    // The blocks exercise both paths: groups, and failures handed to the serial path.
    assert!(
        succeeded > 100,
        "the random blocks should mostly succeed: {succeeded}"
    );
    assert!(
        vectorized > 50,
        "calls should run in vectorized groups: {vectorized}"
    );
    eprintln!("{vectorized} of {succeeded} successful transactions ran vectorized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r2_equals_serial_execution_on_several_threads() {
    for seed in 7..=11 {
        equivalent_over_seed(seed, 20, 3).await;
    }
    // Blocks long enough that their key sets are analyzed on several threads.
    equivalent_over_seed(12, 300, 3).await;
}
