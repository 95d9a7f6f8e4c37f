//! Executor-only speed of contract calls: a pre-ordered block of `transfer` calls (the token
//! contract of `docs/chainql.md`) over a table of 1,000,000 holders, recipients drawn uniformly or
//! from 1% hot keys, through the R2 runtime (100,000 calls) and through the serial path (2,000
//! calls: it is two orders of magnitude slower) in the same run, and a block of 4,992 calls
//! from 64 senders (78 each, in nonce order: at least 78 stages), the shape of the blocks of
//! `chainql bench`. Signatures, the log and
//! consensus are not involved: this is the block execution a validator does. Run with
//! `cargo bench -p chainql-executor`; figures go to BENCHMARKS.md.

use chainql::{Address, Hash};
use chainql_executor::{BlockContext, ExecutableTransaction, Executor, QueryLimits, State};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// The allocator the `chainql` binary uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const HOLDERS: u64 = 1_000_000;
/// Calls in the block R2 runs, each from its own sender.
const CALLS: u64 = 100_000;
/// Calls in the block the serial path runs.
const SERIAL_CALLS: u64 = 2_000;
/// Senders of the few-senders block: the clients of `chainql bench`, whose blocks hold about
/// `FEW_SENDERS_CALLS` calls, each sender's in a chain of nonces, so at least that many
/// over `FEW_SENDERS` stages.
const FEW_SENDERS: u64 = 64;
const FEW_SENDERS_CALLS: u64 = 4_992;

const CONTRACT: &str = "CREATE CONTRACT transfer(to_addr TEXT, amount BIGINT) AS $$
  REQUIRE amount > 0, 'amount must be positive';
  REQUIRE (SELECT balance FROM tokens WHERE owner = CALLER()) >= amount, 'insufficient balance';
  UPDATE tokens SET balance = balance - amount WHERE owner = CALLER();
  INSERT INTO tokens VALUES (to_addr, amount)
    ON CONFLICT (owner) DO UPDATE SET balance = tokens.balance + excluded.balance;
  EMIT transferred(CALLER(), to_addr, amount);
$$";

/// Holder `n`'s address: its first four bytes scattered by a multiplicative hash, its last eight
/// `n`, as the table's rows spell it. Holders' keys then differ early and spread over the whole
/// index, as real addresses (digests of public keys) do.
fn holder(n: u64) -> Address {
    let mut bytes = [0u8; 20];
    bytes[..4].copy_from_slice(&(((n * 2_654_435_761) % (1 << 32)) as u32).to_be_bytes());
    bytes[12..].copy_from_slice(&n.to_be_bytes());
    Address(bytes)
}

fn block(state: &State, proposer: Address) -> BlockContext {
    let height = state.height() + 1;
    BlockContext {
        height,
        hash: Hash::tagged("bench-block", &[&height.to_le_bytes()]),
        parent_hash: state.block_hash(),
        timestamp_ms: 1_700_000_000_000 + height * 1000,
        transactions_root: Hash::ZERO,
        state_root: state.root(),
        proposer,
        offences: Vec::new(),
    }
}

/// A deterministic stream of numbers (xorshift64*).
struct Numbers(u64);

impl Numbers {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % below
    }
}

fn setup(runtime: &tokio::runtime::Runtime, executor: &Executor) -> State {
    let owner = holder(0);
    let mut accounts = vec![(owner, 0)];
    accounts.extend((1..=CALLS).map(|n| (holder(n), 0)));
    let genesis = State::genesis(Hash::ZERO, 0, &accounts).expect("genesis");
    let setup = ExecutableTransaction {
        hash: Hash::tagged("bench-setup", &[]),
        sender: owner,
        sender_key: None,
        nonce: 0,
        gas_limit: 1_000_000_000,
        statements: vec![
            "CREATE TABLE tokens (owner TEXT PRIMARY KEY, balance BIGINT NOT NULL)".into(),
            format!(
                "INSERT INTO tokens SELECT '0x' || lpad(to_hex((value * 2654435761) % 4294967296), 8, '0') \
                 || lpad(to_hex(value), 32, '0'), 1000 FROM generate_series(1, {HOLDERS})"
            ),
            CONTRACT.into(),
        ],
    };
    let (state, receipts) = runtime
        .block_on(executor.execute_block(&genesis, &block(&genesis, owner), &[setup]))
        .expect("setup block");
    assert!(receipts[0].error.is_empty(), "{}", receipts[0].error);
    state
}

/// One call from each of holders 1..=count, to recipients drawn by `recipient`.
fn calls(count: u64, recipient: impl Fn(&mut Numbers) -> u64) -> Vec<ExecutableTransaction> {
    let mut numbers = Numbers(0x9e37_79b9_7f4a_7c15);
    (1..=count)
        .map(|n| ExecutableTransaction {
            hash: Hash::tagged("bench-call", &[&n.to_le_bytes()]),
            sender: holder(n),
            sender_key: None,
            nonce: 0,
            gas_limit: 10_000_000,
            statements: vec![format!(
                "CALL transfer('{}', 1)",
                holder(recipient(&mut numbers) + 1)
            )],
        })
        .collect()
}

/// `count` calls from holders 1..=`senders` in turn (the n-th call of a sender carries nonce n),
/// to uniformly drawn recipients: the shape of an end-to-end bench block, where a few clients
/// each send many transactions.
fn few_senders_calls(count: u64, senders: u64) -> Vec<ExecutableTransaction> {
    let mut numbers = Numbers(0x9e37_79b9_7f4a_7c15);
    (0..count)
        .map(|i| ExecutableTransaction {
            hash: Hash::tagged("bench-call", &[&i.to_le_bytes()]),
            sender: holder(i % senders + 1),
            sender_key: None,
            nonce: i / senders,
            gas_limit: 10_000_000,
            statements: vec![format!(
                "CALL transfer('{}', 1)",
                holder(numbers.next(HOLDERS) + 1)
            )],
        })
        .collect()
}

fn transfer_calls(c: &mut Criterion) {
    chainql_executor::configure_allocator();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let executor = Executor::new(1, QueryLimits::default()).expect("executor");
    let serial = Executor::new(1, QueryLimits::default())
        .expect("executor")
        .with_serial_execution();
    let state = setup(&runtime, &executor);
    let context = block(&state, holder(0));
    let hot = HOLDERS / 100;
    let mut group = c.benchmark_group("transfer_calls_over_1m_holders");
    group.sample_size(10);
    // Runs a block on `state`; every call must succeed.
    let run = |executor: &Executor, block_calls: &[ExecutableTransaction]| {
        let (_, receipts) = runtime
            .block_on(executor.execute_block(&state, &context, block_calls))
            .expect("block");
        assert!(
            receipts.iter().all(|r| r.error.is_empty()),
            "{}",
            receipts[0].error
        );
    };
    for (path, executor, count) in [("r2", &executor, CALLS), ("serial", &serial, SERIAL_CALLS)] {
        group.throughput(Throughput::Elements(count));
        for (name, block_calls) in [
            ("uniform", calls(count, |n| n.next(HOLDERS))),
            ("hot_1_percent", calls(count, |n| n.next(hot))),
        ] {
            group.bench_with_input(BenchmarkId::new(path, name), &block_calls, |b, block_calls| {
                b.iter(|| run(executor, block_calls));
            });
        }
    }
    group.throughput(Throughput::Elements(FEW_SENDERS_CALLS));
    group.bench_with_input(
        BenchmarkId::new("r2", "64_senders"),
        &few_senders_calls(FEW_SENDERS_CALLS, FEW_SENDERS),
        |b, block_calls| b.iter(|| run(&executor, block_calls)),
    );
    group.finish();
}

criterion_group!(benches, transfer_calls);
criterion_main!(benches);
