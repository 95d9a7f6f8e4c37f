//! `chainql bench --validators N`: the workload of `chainql bench`, sent over gRPC to a network
//! of N validator processes on this machine (a devnet in a temporary directory), measuring
//! committed transactions per second and each transaction's submit-to-commit latency.
//!
//! Client `c` sends its transactions, in nonce order, to validator `c mod N`, each waiting only
//! for admission (the transaction durable in that validator's log). A subscriber on validator 0
//! notes when each transaction's block arrives; the latency of a transaction is that moment
//! minus the moment its submission started. At the end every validator must report the same
//! height and state root, and the workload's check must hold on each.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chainql::{Hash, Keypair, TransactionBuilder, TransactionLimits};
use futures::StreamExt;

use crate::bench::{
    BenchConfig, Workload, check_query, client_key, grant_batches, setup_statements, sign_work,
};
use crate::client::{Client, SubscribeOptions};
use crate::error::{Error, Result};
use crate::progress::Progress;

/// What was measured.
#[derive(Debug, Clone)]
pub struct NetworkBenchReport {
    pub workload: Workload,
    pub validators: usize,
    pub transactions: usize,
    pub clients: usize,
    pub block_interval_ms: u64,
    pub elapsed: Duration,
    pub blocks: u64,
    pub failed: u64,
    /// Submit-to-commit latencies, sorted.
    latencies: Vec<Duration>,
}

impl NetworkBenchReport {
    pub fn transactions_per_second(&self) -> f64 {
        self.transactions as f64 / self.elapsed.as_secs_f64()
    }

    /// The latency below which `fraction` of the transactions committed.
    pub fn latency(&self, fraction: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let index = ((self.latencies.len() as f64 * fraction).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[index - 1]
    }
}

impl std::fmt::Display for NetworkBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        writeln!(
            f,
            "network              {} validator process(es), equal stake, block interval {} ms",
            self.validators, self.block_interval_ms
        )?;
        writeln!(
            f,
            "workload             {}",
            match self.workload {
                Workload::Update => "single-statement UPDATE by primary key",
                Workload::Transfer => "CALL transfer(to, 1) of a token contract",
            }
        )?;
        writeln!(
            f,
            "transactions         {} from {} clients over gRPC ({} failed)",
            self.transactions, self.clients, self.failed
        )?;
        crate::bench::blocks_and_elapsed(f, self.transactions, self.blocks, self.elapsed)?;
        writeln!(
            f,
            "committed            {:.0} tx/s (first submission to last commit)",
            self.transactions_per_second()
        )?;
        write!(
            f,
            "submit → commit      p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            ms(self.latency(0.5)),
            ms(self.latency(0.9)),
            ms(self.latency(0.99)),
            ms(self.latency(1.0))
        )
    }
}

/// The validator processes, killed when dropped.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn wait_ready(url: &str) -> Result<Client> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(client) = Client::connect(url).await
            && client.status().await.is_ok()
        {
            return Ok(client);
        }
        if Instant::now() > deadline {
            return Err(Error::Client(format!("the validator at {url} did not start")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the bench on a new network of `validators` processes of `exe` in `dir`.
pub async fn run_network_bench(
    dir: &Path,
    bench: &BenchConfig,
    validators: usize,
    exe: &Path,
) -> Result<NetworkBenchReport> {
    if bench.clients == 0 || bench.transactions < bench.clients || bench.rows == 0 {
        return Err(Error::Config(
            "bench needs clients ≥ 1, transactions ≥ clients and rows ≥ 1".into(),
        ));
    }
    let base = crate::devnet::free_base_port(validators)?;
    let devnet = crate::devnet::write(dir, validators, base, "chainql-bench")?;
    let mut processes = Processes(Vec::new());
    for validator in &devnet.validators {
        let log = std::fs::File::create(&validator.log)
            .map_err(|e| Error::io(format!("creating {}", validator.log.display()), e))?;
        let child = Command::new(exe)
            .arg("node")
            .arg("--config")
            .arg(&validator.config)
            .args(["--no-pg", "--no-metrics", "--checkpoint-interval", "0"])
            .arg("--block-interval-ms")
            .arg(bench.block_interval_ms.to_string())
            .arg("--block-transactions-max")
            .arg(bench.block_transactions_max.to_string())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| Error::io("starting a validator", e))?;
        processes.0.push(child);
    }
    let urls: Vec<String> = devnet.validators.iter().map(|v| v.grpc_url.clone()).collect();
    let mut first = None;
    for url in &urls {
        let client = wait_ready(url).await?;
        first.get_or_insert(client);
    }
    let first = first.ok_or_else(|| Error::Config("no validators".into()))?;
    let chain_id = first.status().await?.chain_id;

    let owner = client_key(usize::MAX - 1);
    let clients: Vec<Keypair> = (0..bench.clients).map(client_key).collect();
    let mut setup = TransactionBuilder::new(chain_id.clone(), owner);
    setup.gas_limit = TransactionLimits::default().gas_limit_max;
    first.execute(&setup, setup_statements(bench, &clients)).await?;
    if bench.workload == Workload::Update {
        for grants in grant_batches(&clients) {
            first.execute(&setup, grants).await?;
        }
    }
    let work = sign_work(bench, &clients, &chain_id);
    let total: usize = work.iter().map(Vec::len).sum();

    let start_height = first.status().await?.height;
    let mut blocks = first
        .subscribe(
            start_height + 1,
            SubscribeOptions {
                receipts: true,
                ..SubscribeOptions::default()
            },
        )
        .await?;
    let observer = tokio::spawn(async move {
        let mut committed: HashMap<Hash, Instant> = HashMap::with_capacity(total);
        let mut failed = 0u64;
        let mut last_height = start_height;
        let mut progress = Progress::new("bench", total as u64, "transactions");
        while committed.len() < total {
            let Some(block) = blocks.next().await else { break };
            let block = block?;
            let now = Instant::now();
            last_height = block.height;
            for receipt in &block.receipts {
                if let Some(hash) = Hash::from_slice(&receipt.transaction_hash) {
                    committed.insert(hash, now);
                }
                if !receipt.error.is_empty() {
                    failed += 1;
                }
            }
            progress.inc(block.receipts.len() as u64);
        }
        progress.finish();
        Ok::<_, Error>((committed, failed, last_height))
    });

    let started = Instant::now();
    let mut tasks = Vec::with_capacity(work.len());
    for (c, transactions) in work.into_iter().enumerate() {
        let url = urls[c % urls.len()].clone();
        tasks.push(tokio::spawn(async move {
            let client = Client::connect(&url).await?;
            let mut submitted = Vec::with_capacity(transactions.len());
            for signed in transactions {
                let hash = chainql::transaction_hash(&signed.transaction);
                let at = Instant::now();
                client.submit(signed, false).await?;
                submitted.push((hash, at));
            }
            Ok::<_, Error>(submitted)
        }));
    }
    let mut submitted = Vec::with_capacity(total);
    for task in tasks {
        submitted.extend(
            task.await
                .map_err(|e| Error::Client(format!("bench client: {e}")))??,
        );
    }
    let (committed, failed, last_height) = tokio::time::timeout(Duration::from_secs(600), observer)
        .await
        .map_err(|_| Error::Client("the bench's transactions did not all commit in 10 minutes".into()))?
        .map_err(|e| Error::Client(format!("bench observer: {e}")))??;
    let mut latencies = Vec::with_capacity(total);
    let mut last_commit = started;
    for (hash, at) in &submitted {
        let done = committed
            .get(hash)
            .ok_or_else(|| Error::Client(format!("transaction {hash} was never committed")))?;
        latencies.push(done.duration_since(*at));
        last_commit = last_commit.max(*done);
    }
    latencies.sort();
    let elapsed = last_commit.duration_since(started);

    // Every validator at the same height and state root, and the work done on each.
    let deadline = Instant::now() + Duration::from_secs(120);
    let agreed = loop {
        let mut statuses = Vec::new();
        for url in &urls {
            let status = Client::connect(url).await?.status().await?;
            statuses.push((status.height, status.state_root));
        }
        if statuses.windows(2).all(|w| w[0] == w[1]) && statuses[0].0 >= last_height {
            break statuses[0];
        }
        if Instant::now() > deadline {
            return Err(Error::Client(format!(
                "the validators did not agree: {statuses:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (check, expected) = check_query(bench, total);
    for url in &urls {
        let result = Client::connect(url).await?.query(check).await?;
        let sum: u64 = crate::format::cell_text(result.batches[0].column(0), 0)
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        if sum != expected {
            return Err(Error::Client(format!(
                "bench check failed on {url}: {check} gave {sum}, expected {expected}"
            )));
        }
    }
    drop(processes);
    Ok(NetworkBenchReport {
        workload: bench.workload,
        validators,
        transactions: total,
        clients: bench.clients,
        block_interval_ms: bench.block_interval_ms,
        elapsed,
        blocks: agreed.0.saturating_sub(start_height),
        failed,
        latencies,
    })
}
