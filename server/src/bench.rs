//! `chainql bench`: end-to-end throughput of signed transactions through an embedded node, with
//! the ed25519 batch-verification rate measured in the same run as the ceiling beside it.
//!
//! The `update` workload: a table of `accounts` rows, and transactions that each carry one
//! `UPDATE accounts SET balance = balance + 1 WHERE id = k`. Every transaction is signed before
//! the clock starts (signing is the clients' work, not the node's); then `clients` tasks submit
//! their transactions in nonce order, each waiting only for its log entry to be durable, and the
//! clock stops when the last transaction's block is committed and executed.
//!
//! The `transfer` workload: a `tokens` table with a row per client and `rows` more holders, the
//! `transfer` contract of `docs/chainql.md` (two `REQUIRE`s, an `UPDATE`, an upsert and an
//! `EMIT`), and transactions that each carry one `CALL transfer('0x…', 1)` to a holder drawn
//! uniformly (a fixed pseudo-random sequence), so calls of different clients rarely touch one
//! key and R2 runs them in vectorized groups.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chainql::wire::SignedTransaction;
use chainql::{DecodedTransaction, Keypair, TransactionBuilder, TransactionLimits, verify_transactions};

use crate::error::{Error, Result};
use crate::node::{Node, NodeConfig, init_data_dir};
use crate::progress::Progress;

/// The transactions a bench sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// `UPDATE accounts SET balance = balance + 1 WHERE id = k`.
    Update,
    /// `CALL transfer('0x…', 1)` of a token contract.
    Transfer,
}

impl std::str::FromStr for Workload {
    type Err = String;

    fn from_str(text: &str) -> Result<Workload, String> {
        match text {
            "update" => Ok(Workload::Update),
            "transfer" => Ok(Workload::Transfer),
            other => Err(format!("unknown workload {other:?}: update or transfer")),
        }
    }
}

/// Holder `n`'s address, as SQL over `value`: its first four bytes scattered by a multiplicative
/// hash, its last eight `n`. Holders' keys then differ early and spread over the whole index, as
/// real addresses (digests of public keys) do, rather than sharing a long prefix of zeros.
const HOLDER_ADDRESS_SQL: &str =
    "'0x' || lpad(to_hex((value * 2654435761) % 4294967296), 8, '0') || lpad(to_hex(value), 32, '0')";

/// Holder `n`'s address, as [`HOLDER_ADDRESS_SQL`] spells it.
fn holder_address(n: u64) -> String {
    format!("0x{:08x}{n:032x}", (n * 2_654_435_761) % (1 << 32))
}

/// The token contract the `transfer` workload calls.
const TRANSFER_CONTRACT: &str = "CREATE CONTRACT transfer(to_addr TEXT, amount BIGINT) AS $$
  REQUIRE amount > 0, 'amount must be positive';
  REQUIRE (SELECT balance FROM tokens WHERE owner = CALLER()) >= amount, 'insufficient balance';
  UPDATE tokens SET balance = balance - amount WHERE owner = CALLER();
  INSERT INTO tokens VALUES (to_addr, amount)
    ON CONFLICT (owner) DO UPDATE SET balance = tokens.balance + excluded.balance;
  EMIT transferred(CALLER(), to_addr, amount);
$$";

/// Tokens each client starts with in the `transfer` workload.
const TOKENS_EACH: u64 = 1_000_000;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub workload: Workload,
    pub transactions: usize,
    pub clients: usize,
    pub rows: usize,
    pub block_interval_ms: u64,
    pub block_transactions_max: usize,
    /// Transactions a client submits per request (1: one at a time; more: `submit_many`, with
    /// batched signature checks).
    pub batch: usize,
    /// Log partitions of the bench chain.
    pub log_partitions: u32,
}

/// What was measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub workload: Workload,
    pub transactions: usize,
    pub clients: usize,
    pub rows: usize,
    pub batch: usize,
    pub log_partitions: u32,
    pub elapsed: Duration,
    /// From the start until the last transaction was admitted (durable in the log).
    pub admitted_elapsed: Duration,
    pub blocks: u64,
    pub failed: u64,
    pub signing_per_second: f64,
    pub batch_verify_per_second: f64,
    pub single_verify_per_second: f64,
    /// Restart after the run: the time to open the node again, replaying every block.
    pub replay_elapsed: Duration,
    /// Every transaction the replay re-executed (the bench's and its set-up's).
    pub replay_transactions: u64,
    /// Writing a checkpoint of the final state, and opening the node again from it.
    pub checkpoint_write_elapsed: Duration,
    pub checkpoint_bytes: u64,
    pub checkpoint_open_elapsed: Duration,
}

impl BenchReport {
    pub fn transactions_per_second(&self) -> f64 {
        self.transactions as f64 / self.elapsed.as_secs_f64()
    }
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.workload {
            Workload::Update => writeln!(
                f,
                "workload             single-statement UPDATE by primary key, {} rows",
                self.rows
            )?,
            Workload::Transfer => writeln!(
                f,
                "workload             CALL transfer(to, 1) of a token contract, {} holders",
                self.clients + self.rows
            )?,
        }
        writeln!(
            f,
            "transactions         {} from {} clients ({} failed)",
            self.transactions, self.clients, self.failed
        )?;
        writeln!(
            f,
            "submission           {} per request, {} log partitions",
            self.batch, self.log_partitions
        )?;
        blocks_and_elapsed(f, self.transactions, self.blocks, self.elapsed)?;
        writeln!(
            f,
            "end-to-end           {:.0} tx/s (signed, admitted, logged, committed, applied)",
            self.transactions_per_second()
        )?;
        writeln!(
            f,
            "admission            {:.0} tx/s (checked and durable in the log)",
            self.transactions as f64 / self.admitted_elapsed.as_secs_f64().max(1e-9)
        )?;
        writeln!(
            f,
            "restart              {:.3} s to replay every block, {} transactions: {:.0} tx/s",
            self.replay_elapsed.as_secs_f64(),
            self.replay_transactions,
            self.replay_transactions as f64 / self.replay_elapsed.as_secs_f64().max(1e-9)
        )?;
        writeln!(
            f,
            "checkpoint           {:.3} s to write ({:.1} MiB), {:.3} s to open the node from it",
            self.checkpoint_write_elapsed.as_secs_f64(),
            self.checkpoint_bytes as f64 / (1 << 20) as f64,
            self.checkpoint_open_elapsed.as_secs_f64()
        )?;
        writeln!(
            f,
            "ed25519 batch verify {:.0} signatures/s on all cores (the ceiling)",
            self.batch_verify_per_second
        )?;
        writeln!(
            f,
            "ed25519 verify       {:.0} signatures/s on all cores, one by one",
            self.single_verify_per_second
        )?;
        write!(
            f,
            "ed25519 sign         {:.0} signatures/s on one core",
            self.signing_per_second
        )
    }
}

/// The owner's set-up transaction of a workload: its tables, rows and contract.
pub(crate) fn setup_statements(bench: &BenchConfig, clients: &[Keypair]) -> Vec<String> {
    match bench.workload {
        Workload::Update => vec![
            "CREATE TABLE accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)".into(),
            format!(
                "INSERT INTO accounts SELECT value, 0 FROM generate_series(1, {})",
                bench.rows
            ),
        ],
        Workload::Transfer => {
            let holders: Vec<String> = clients
                .iter()
                .map(|k| format!("('{}', {TOKENS_EACH})", k.address()))
                .collect();
            vec![
                "CREATE TABLE tokens (owner TEXT PRIMARY KEY, balance BIGINT NOT NULL)".into(),
                format!("INSERT INTO tokens VALUES {}", holders.join(", ")),
                format!(
                    "INSERT INTO tokens SELECT {HOLDER_ADDRESS_SQL}, 0 FROM generate_series(1, {})",
                    bench.rows
                ),
                TRANSFER_CONTRACT.into(),
            ]
        }
    }
}

/// The grants that let each client update the `update` workload's table, a transaction's worth
/// of statements at a time.
pub(crate) fn grant_batches(clients: &[Keypair]) -> Vec<Vec<String>> {
    let limit = TransactionLimits::default().statements_max;
    clients
        .chunks(limit)
        .map(|chunk| {
            chunk
                .iter()
                .map(|k| format!("GRANT UPDATE ON accounts TO '{}'", k.address()))
                .collect()
        })
        .collect()
}

/// Every client's transactions, signed, in nonce order.
pub(crate) fn sign_work(
    bench: &BenchConfig,
    clients: &[Keypair],
    chain_id: &str,
) -> Vec<Vec<SignedTransaction>> {
    let per_client = bench.transactions / bench.clients;
    let mut work: Vec<Vec<SignedTransaction>> = Vec::with_capacity(bench.clients);
    for (c, key) in clients.iter().enumerate() {
        let builder = TransactionBuilder::new(chain_id.to_string(), key.clone());
        let mut signed = Vec::with_capacity(per_client);
        // xorshift64*, seeded per client: the same recipients in every run.
        let mut draw = 0x9e37_79b9_7f4a_7c15u64 ^ (c as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d);
        for n in 0..per_client {
            let statement = match bench.workload {
                Workload::Update => {
                    let id = (c * per_client + n) % bench.rows + 1;
                    format!("UPDATE accounts SET balance = balance + 1 WHERE id = {id}")
                }
                Workload::Transfer => {
                    draw ^= draw >> 12;
                    draw ^= draw << 25;
                    draw ^= draw >> 27;
                    let holder = draw.wrapping_mul(0x2545_f491_4f6c_dd1d) % bench.rows.max(1) as u64 + 1;
                    format!("CALL transfer('{}', 1)", holder_address(holder))
                }
            };
            signed.push(builder.build(n as u64, vec![statement]));
        }
        work.push(signed);
    }
    work
}

/// The query that checks a workload's result, and the value it must give.
pub(crate) fn check_query(bench: &BenchConfig, total: usize) -> (&'static str, u64) {
    match bench.workload {
        Workload::Update => ("SELECT sum(balance) FROM accounts", total as u64),
        Workload::Transfer => (
            "SELECT sum(balance) + (SELECT count(*) FROM chain.events) FROM tokens",
            bench.clients as u64 * TOKENS_EACH + total as u64,
        ),
    }
}

/// The report lines of the blocks a run took and its elapsed time.
pub(crate) fn blocks_and_elapsed(
    f: &mut std::fmt::Formatter<'_>,
    transactions: usize,
    blocks: u64,
    elapsed: Duration,
) -> std::fmt::Result {
    writeln!(
        f,
        "blocks               {blocks} ({:.0} transactions per block)",
        transactions as f64 / blocks.max(1) as f64
    )?;
    writeln!(f, "elapsed              {:.3} s", elapsed.as_secs_f64())
}

pub(crate) fn client_key(i: usize) -> Keypair {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    seed[8] = 0xbe;
    Keypair::from_seed(seed)
}

/// Runs the bench's workload on a fresh node in `data_dir`.
pub async fn run_bench(data_dir: &std::path::Path, bench: &BenchConfig) -> Result<BenchReport> {
    if bench.clients == 0 || bench.transactions < bench.clients || bench.rows == 0 {
        return Err(Error::Config(
            "bench needs clients ≥ 1, transactions ≥ clients and rows ≥ 1".into(),
        ));
    }
    let mut config = NodeConfig::new(data_dir);
    // No checkpoints: the run measures the path of transactions alone, and the restart after it
    // replays every block.
    config.checkpoint_interval = 0;
    config.block_interval_ms = bench.block_interval_ms;
    config.block_transactions_max = bench.block_transactions_max;
    config.log_partitions = bench.log_partitions;
    let owner = client_key(usize::MAX - 1);
    let clients: Vec<Keypair> = (0..bench.clients).map(client_key).collect();
    let mut accounts: Vec<_> = clients.iter().map(|k| (k.address(), 0)).collect();
    accounts.push((owner.address(), 0));
    init_data_dir(&config, "chainql-bench", &accounts)?;
    let node = Node::open(config.clone()).await?;
    let chain_id = node.chain_id().to_string();

    let mut setup = TransactionBuilder::new(chain_id.clone(), owner);
    setup.gas_limit = TransactionLimits::default().gas_limit_max;
    let setup_statements = setup_statements(bench, &clients);
    let receipt = node.submit_and_wait(setup.build(0, setup_statements)).await?;
    if !receipt.error.is_empty() {
        return Err(Error::Client(format!("bench setup failed: {}", receipt.error)));
    }
    if bench.workload == Workload::Update {
        // The table is the owner's: the clients update it by grant.
        for (n, grants) in grant_batches(&clients).into_iter().enumerate() {
            let receipt = node.submit_and_wait(setup.build(n as u64 + 1, grants)).await?;
            if !receipt.error.is_empty() {
                return Err(Error::Client(format!("bench setup failed: {}", receipt.error)));
            }
        }
    }

    // Sign every transaction up front.
    let per_client = bench.transactions / bench.clients;
    let signing_started = Instant::now();
    let work = sign_work(bench, &clients, &chain_id);
    let total = per_client * bench.clients;
    let signing_per_second = total as f64 / signing_started.elapsed().as_secs_f64();
    let (batch_verify_per_second, single_verify_per_second) = verification_rates(&work, &chain_id)?;

    let start_height = node.state().height();
    // Read before any client starts, so the progress count covers exactly the bench's work.
    let committed_before = committed_count(&node);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(work.len());
    let batch = bench.batch.max(1);
    for transactions in work {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            let count = transactions.len();
            if batch == 1 {
                for (i, signed) in transactions.into_iter().enumerate() {
                    if i + 1 == count {
                        let receipt = node.submit_pending(signed).await?;
                        let admitted = Instant::now();
                        receipt.await?;
                        return Ok::<Instant, Error>(admitted);
                    }
                    node.submit(signed).await?;
                }
                return Ok(Instant::now());
            }
            let mut last = None;
            let mut transactions = transactions.into_iter().peekable();
            while transactions.peek().is_some() {
                let chunk: Vec<_> = transactions.by_ref().take(batch).collect();
                for result in node.submit_many(chunk).await {
                    last = Some(result?);
                }
            }
            let admitted = Instant::now();
            if let Some(last) = last {
                while node.transaction(&last)?.is_none() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            Ok(admitted)
        }));
    }
    // Progress: transactions committed since the clock started, read from the node's counters
    // until the clients are done.
    let counted = node.clone();
    let (done, mut finished) = tokio::sync::oneshot::channel::<()>();
    let watcher = tokio::spawn(async move {
        let mut progress = Progress::new("bench", total as u64, "transactions");
        let mut shown = 0;
        loop {
            let stop = tokio::select! {
                _ = &mut finished => true,
                () = tokio::time::sleep(Duration::from_millis(50)) => false,
            };
            let now = committed_count(&counted).saturating_sub(committed_before);
            progress.inc(now.saturating_sub(shown));
            shown = shown.max(now);
            if stop {
                break;
            }
        }
        progress.finish();
    });
    let mut outcome = Ok(());
    let mut last_admitted = started;
    for task in tasks {
        let result = task
            .await
            .map_err(|e| Error::Client(format!("bench client: {e}")))
            .and_then(|r| r);
        match result {
            Ok(admitted) => last_admitted = last_admitted.max(admitted),
            Err(error) if outcome.is_ok() => outcome = Err(error),
            Err(_) => {}
        }
    }
    let _ = done.send(());
    let _ = watcher.await;
    outcome?;
    let elapsed = started.elapsed();
    let admitted_elapsed = last_admitted - started;
    let state = node.state();
    let blocks = state.height() - start_height;
    let (failed, _) = node
        .query("SELECT count(*) FROM chain.transactions WHERE status <> 'success'")
        .await?;
    let failed = crate::format::cell_text(failed.batches[0].column(0), 0)
        .and_then(|t| t.parse().ok())
        .unwrap_or(u64::MAX);
    // Check the work was done: every update counted, every token conserved and every
    // transfer's event recorded.
    let (check, expected) = check_query(bench, total);
    let (sum, _) = node.query(check).await?;
    let sum: u64 = crate::format::cell_text(sum.batches[0].column(0), 0)
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let root = node.state().root();
    node.shutdown().await;
    if sum != expected {
        return Err(Error::Client(format!(
            "bench check failed: {check} gave {sum}, expected {expected}"
        )));
    }
    let replay_started = Instant::now();
    let node = Node::open(config.clone()).await?;
    let replay_elapsed = replay_started.elapsed();
    let replayed = node.state();
    let (count, _) = node.query("SELECT count(*) FROM chain.transactions").await?;
    let replay_transactions = crate::format::cell_text(count.batches[0].column(0), 0)
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let checkpoint_started = Instant::now();
    let checkpoint_height = node.write_checkpoint().await?;
    let checkpoint_write_elapsed = checkpoint_started.elapsed();
    node.shutdown().await;
    if replayed.root() != root {
        return Err(Error::Client(format!(
            "bench check failed: the restarted node has state root {}, expected {root}",
            replayed.root()
        )));
    }
    let checkpoint_bytes = directory_bytes(&data_dir.join("checkpoints"));
    let open_started = Instant::now();
    let node = Node::open(config).await?;
    let checkpoint_open_elapsed = open_started.elapsed();
    let recovery = node.recovery();
    let reopened = node.state().root();
    node.shutdown().await;
    if recovery.checkpoint != Some(checkpoint_height) || reopened != root {
        return Err(Error::Client(format!(
            "bench check failed: the node reopened from {recovery:?} with root {reopened}, expected \
             checkpoint {checkpoint_height} and root {root}"
        )));
    }
    Ok(BenchReport {
        workload: bench.workload,
        transactions: total,
        clients: bench.clients,
        rows: bench.rows,
        batch,
        log_partitions: bench.log_partitions,
        elapsed,
        admitted_elapsed,
        blocks,
        failed,
        signing_per_second,
        batch_verify_per_second,
        single_verify_per_second,
        replay_elapsed,
        replay_transactions,
        checkpoint_write_elapsed,
        checkpoint_bytes,
        checkpoint_open_elapsed,
    })
}

/// The bytes of the files under `dir`.
fn directory_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        total += if path.is_dir() {
            directory_bytes(&path)
        } else {
            entry.metadata().map_or(0, |m| m.len())
        };
    }
    total
}

/// Verifies the bench's signatures on every core, in batches of 64 and one by one.
fn verification_rates(work: &[Vec<SignedTransaction>], chain_id: &str) -> Result<(f64, f64)> {
    let limits = TransactionLimits::default();
    let decoded: Vec<DecodedTransaction> = work
        .iter()
        .flatten()
        .take(20_000)
        .map(|s| DecodedTransaction::from_signed(s.clone(), &limits, chain_id))
        .collect::<std::result::Result<_, _>>()?;
    let decoded = Arc::new(decoded);
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let rate = |batched: bool| -> f64 {
        let started = Instant::now();
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let decoded = Arc::clone(&decoded);
                std::thread::spawn(move || {
                    let mine: Vec<&DecodedTransaction> = decoded.iter().skip(t).step_by(threads).collect();
                    if batched {
                        for chunk in mine.chunks(64) {
                            assert!(verify_transactions(chunk).iter().all(|r| r.is_ok()));
                        }
                    } else {
                        for d in &mine {
                            assert!(d.verify_signature().is_ok());
                        }
                    }
                    mine.len()
                })
            })
            .collect();
        let verified: usize = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
        verified as f64 / started.elapsed().as_secs_f64()
    };
    Ok((rate(true), rate(false)))
}

/// Transactions the node has committed (successful or failed) since it opened.
fn committed_count(node: &Node) -> u64 {
    let metrics = node.metrics();
    metrics
        .transactions_committed
        .load(std::sync::atomic::Ordering::Relaxed)
        + metrics
            .transactions_failed
            .load(std::sync::atomic::Ordering::Relaxed)
}
