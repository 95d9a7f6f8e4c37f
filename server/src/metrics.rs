//! The node's metrics, served in Prometheus' text format on `/metrics`: blocks, transactions
//! admitted, committed and failed, admission refusals by reason, commit latency, log appends and
//! group commits, queries and their durations, connected PostgreSQL clients.
//!
//! Metrics observe the node and never feed back into what it executes or hashes, so they may
//! read the wall clock.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::error::{Error, Result};
use crate::node::Node;

/// Upper bounds of the latency histograms' buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A cumulative histogram of durations.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// The sum, in microseconds.
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            if seconds <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(duration.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        let total = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {total}");
    }
}

/// Counters the node keeps as it works.
#[derive(Debug, Default)]
pub struct Metrics {
    pub blocks: AtomicU64,
    pub transactions_admitted: AtomicU64,
    /// Transactions other validators passed on that entered this node's log.
    pub transactions_gossiped: AtomicU64,
    /// Messages from other validators that were refused or dropped.
    pub peer_messages_refused: AtomicU64,
    /// Parts of this validator's proposals that the partitions' assignees forged.
    pub parts_forged_by_peers: AtomicU64,
    /// Parts of this validator's proposals it signed itself (its own partitions, or an assignee
    /// that did not answer in time).
    pub parts_forged_here: AtomicU64,
    pub transactions_committed: AtomicU64,
    pub transactions_failed: AtomicU64,
    refusals: Mutex<BTreeMap<&'static str, u64>>,
    /// From admission to the receipt, for transactions a client waits on.
    pub commit_latency: Histogram,
    /// Storing and executing one block.
    pub block_duration: Histogram,
    pub queries: AtomicU64,
    pub query_errors: AtomicU64,
    pub query_duration: Histogram,
    pub pg_connections: AtomicI64,
}

impl Metrics {
    /// Counts a refused admission under its reason.
    pub fn refused(&self, error: &Error) {
        let reason = refusal_reason(error);
        *self
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason)
            .or_default() += 1;
    }

    /// The text exposition of every metric, with the chain height and the log's counters.
    pub fn render(&self, height: u64, log: chainql_sequencer::LogStats) -> String {
        let mut out = String::with_capacity(4096);
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        };
        let gauge = |out: &mut String, name: &str, help: &str, value: i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        };
        let load = |value: &AtomicU64| value.load(Ordering::Relaxed);
        gauge(
            &mut out,
            "chainql_height",
            "Height of the last committed block.",
            height as i64,
        );
        counter(
            &mut out,
            "chainql_blocks_total",
            "Blocks committed since start.",
            load(&self.blocks),
        );
        counter(
            &mut out,
            "chainql_transactions_admitted_total",
            "Transactions admitted to the log.",
            load(&self.transactions_admitted),
        );
        counter(
            &mut out,
            "chainql_transactions_gossiped_total",
            "Transactions other validators passed on that entered the log.",
            load(&self.transactions_gossiped),
        );
        counter(
            &mut out,
            "chainql_peer_messages_refused_total",
            "Messages from other validators refused (malformed, not from a validator, invalid) or dropped (queue full).",
            load(&self.peer_messages_refused),
        );
        counter(
            &mut out,
            "chainql_parts_forged_by_peers_total",
            "Parts of this validator's proposed blocks forged by the validators their partitions were assigned to.",
            load(&self.parts_forged_by_peers),
        );
        counter(
            &mut out,
            "chainql_parts_forged_here_total",
            "Parts of this validator's proposed blocks it signed itself.",
            load(&self.parts_forged_here),
        );
        counter(
            &mut out,
            "chainql_transactions_committed_total",
            "Transactions committed in blocks that succeeded.",
            load(&self.transactions_committed),
        );
        counter(
            &mut out,
            "chainql_transactions_failed_total",
            "Transactions committed in blocks that failed (their receipt says why).",
            load(&self.transactions_failed),
        );
        let _ = writeln!(
            out,
            "# HELP chainql_admission_refusals_total Transactions refused at admission, by reason.\n# TYPE chainql_admission_refusals_total counter"
        );
        for (reason, count) in self.refusals.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(
                out,
                "chainql_admission_refusals_total{{reason=\"{reason}\"}} {count}"
            );
        }
        self.commit_latency.render(
            &mut out,
            "chainql_commit_latency_seconds",
            "From admission to receipt, for transactions a client waited on.",
        );
        self.block_duration.render(
            &mut out,
            "chainql_block_duration_seconds",
            "Storing and executing one block.",
        );
        counter(
            &mut out,
            "chainql_log_appends_total",
            "Entries made durable in the log.",
            log.entries,
        );
        counter(
            &mut out,
            "chainql_log_group_commits_total",
            "Group commits of the log (one write and one fsync each).",
            log.group_commits,
        );
        counter(
            &mut out,
            "chainql_queries_total",
            "Queries answered or refused.",
            load(&self.queries),
        );
        counter(
            &mut out,
            "chainql_query_errors_total",
            "Queries that failed.",
            load(&self.query_errors),
        );
        self.query_duration.render(
            &mut out,
            "chainql_query_duration_seconds",
            "Time to answer a query.",
        );
        gauge(
            &mut out,
            "chainql_pg_connections",
            "Connected PostgreSQL clients.",
            self.pg_connections.load(Ordering::Relaxed),
        );
        out
    }
}

/// A short label for why admission refused a transaction.
fn refusal_reason(error: &Error) -> &'static str {
    use chainql::Error as Tx;
    match error {
        Error::Transaction(Tx::BadSignature | Tx::InvalidPublicKey(_)) => "signature",
        Error::Transaction(Tx::WrongChain { .. }) => "chain_id",
        Error::Transaction(
            Tx::TransactionTooLarge { .. } | Tx::StatementTooLarge { .. } | Tx::TooManyStatements { .. },
        ) => "size",
        Error::Transaction(Tx::Sql(_) | Tx::NotATransactionStatement(_) | Tx::NonDeterministic(_)) => "sql",
        Error::Transaction(_) => "malformed",
        Error::Nonce { .. } => "nonce",
        Error::InsufficientFunds { .. } => "funds",
        Error::ShuttingDown | Error::Halted(_) => "unavailable",
        _ => "other",
    }
}

/// The largest request head read, in bytes.
const REQUEST_MAX: usize = 8 * 1024;

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
pub async fn serve_listener(
    node: Node,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => {
                let Ok((mut socket, _)) = accepted else { continue };
                let node = node.clone();
                tokio::spawn(async move {
                    let mut request = Vec::with_capacity(1024);
                    let mut buffer = [0u8; 1024];
                    let head_complete = loop {
                        match tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buffer)).await {
                            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break false,
                            Ok(Ok(n)) => {
                                request.extend_from_slice(&buffer[..n]);
                                if request.windows(4).any(|w| w == b"\r\n\r\n") {
                                    break true;
                                }
                                if request.len() > REQUEST_MAX {
                                    break false;
                                }
                            }
                        }
                    };
                    let response = if !head_complete {
                        "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
                    } else if request.starts_with(b"GET /metrics ") || request.starts_with(b"GET /metrics?") {
                        let body = node.metrics_text();
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    } else {
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
                    };
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        }
    }
}

/// Binds `address` and serves `/metrics` until `shutdown` completes.
pub async fn serve(
    node: Node,
    address: std::net::SocketAddr,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let listener = TcpListener::bind(address)
        .await
        .map_err(|e| Error::io(format!("listening for metrics scrapes on {address}"), e))?;
    serve_listener(node, listener, shutdown).await
}
