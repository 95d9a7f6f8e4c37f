//! `chainql log mirror`: a replica of a node's Proof-of-Events log, kept through `SubscribeLog`.
//!
//! The mirror copies every partition's entries (with their sequence numbers and epochs), its
//! snapshot markers and its rollbacks into a log of its own, a replica ([`Log::open_replica`]).
//! It resumes from what that log holds, so across its own restarts, lost connections and the
//! node's restarts nothing is copied twice and nothing is missed; a node that abandoned entries
//! the mirror holds (a failover) says so first, and the mirror removes them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chainql::TransactionLimits;
use chainql_sequencer::{Delivery, Entry, Event, FsStorage, Log, LogConfig, PartitionId, Position};
use futures::{FutureExt, StreamExt};
use prost::Message;

use crate::grpc::proto;
use crate::{Client, Error, Result};

/// Deliveries copied with one write per partition.
const BATCH_MAX: usize = 4096;
/// The longest pause between attempts to reach the node again.
const RETRY_MAX: Duration = Duration::from_secs(2);

/// When the mirror stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Never: it follows the node, reconnecting whenever the connection is lost.
    Forever,
    /// Once it holds every partition's snapshot marker of this height.
    Height(u64),
    /// Once it holds what the node had committed when the mirror started.
    Committed,
}

/// What a mirror run did.
#[derive(Debug, Clone, Default)]
pub struct MirrorReport {
    pub chain_id: String,
    pub entries_copied: u64,
    pub rollbacks: u64,
    /// Times the connection was lost and made again.
    pub reconnects: u64,
    /// Per partition: the last seqno held, its epoch, and the last snapshot height held.
    pub partitions: Vec<(u64, u64, Option<u64>)>,
}

impl std::fmt::Display for MirrorReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "chain {}: {} entries copied, {} rolled back, {} reconnects",
            self.chain_id, self.entries_copied, self.rollbacks, self.reconnects
        )?;
        for (p, (seqno, epoch, height)) in self.partitions.iter().enumerate() {
            let height = height.map_or_else(|| "none".to_string(), |h| h.to_string());
            writeln!(
                f,
                "partition {p}: through seqno {seqno} (epoch {epoch}), snapshots through height {height}"
            )?;
        }
        Ok(())
    }
}

/// Why copying stopped.
enum Stop {
    /// The connection was lost or refused: try again.
    Lost(String),
    /// The mirror cannot go on (its files, or what the node sent, are wrong).
    Fatal(Error),
}

impl From<Error> for Stop {
    fn from(error: Error) -> Stop {
        Stop::Fatal(error)
    }
}

impl From<chainql_sequencer::Error> for Stop {
    fn from(error: chainql_sequencer::Error) -> Stop {
        Stop::Fatal(error.into())
    }
}

/// Mirrors the log of the node at `url` into `dir` until `until` holds or `stop` turns true
/// (what was copied by then is kept, and reported).
pub async fn run_mirror(
    url: &str,
    dir: &Path,
    until: Until,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<MirrorReport> {
    // The first contact must succeed (a wrong address is an error); later ones are retried.
    let client = Client::connect(url).await?;
    let status = client.status().await?;
    let chain_id = status.chain_id.clone();
    check_chain(dir, &chain_id)?;
    let log = Log::open_replica(
        Arc::new(FsStorage),
        &dir.join("log"),
        LogConfig {
            partitions: status.log_partitions,
            record_bytes_max: crate::node::log_record_bytes_max(
                TransactionLimits::default().transaction_bytes_max,
            ),
            ..LogConfig::default()
        },
    )?;
    let target = match until {
        Until::Forever => None,
        Until::Height(height) => Some(height),
        Until::Committed => Some(status.height),
    };
    let source = Source {
        url: url.to_string(),
        chain_id: chain_id.clone(),
        leader: status.validator.0.to_vec(),
    };
    let mut report = MirrorReport {
        chain_id,
        ..MirrorReport::default()
    };
    let outcome = follow(&source, Some(client), &log, target, stop, &mut report).await;
    report.partitions = held(&log)?;
    log.close();
    outcome.map(|()| report)
}

/// The node a replica copies.
#[derive(Debug, Clone)]
pub struct Source {
    pub url: String,
    pub chain_id: String,
    /// Its identity, recorded as the leader of the epochs the replica copies.
    pub leader: Vec<u8>,
}

/// Copies `source`'s log into the replica `log` until it holds every partition's snapshot of
/// `target` (never, without one) or `stop` turns true. A lost connection is made again, with
/// growing pauses, and copying resumes where the replica ends; what the replica cannot take
/// (a bad event, a refused position, a write failure) ends it with the error.
pub async fn follow(
    source: &Source,
    mut client: Option<Client>,
    log: &Log,
    target: Option<u64>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    report: &mut MirrorReport,
) -> Result<()> {
    // Every log numbers its entries from 1 in epoch 1: a replica that went on from another
    // node's log would splice two logs without anything to tell. The epochs it copied name
    // their source.
    for p in 0..log.partitions() {
        if let Some(copied) = log.epochs(PartitionId(p))?.last()
            && !copied.leader.is_empty()
            && copied.leader != source.leader
        {
            return Err(Error::Config(format!(
                "this replica copies the log of {}, not of {} at {}",
                hex::encode(&copied.leader),
                hex::encode(&source.leader),
                source.url
            )));
        }
    }
    let mut pause = Duration::from_millis(100);
    loop {
        if *stop.borrow_and_update() || reached(log, target)? {
            return Ok(());
        }
        let connected = match client.take() {
            Some(client) => client,
            None => match Client::connect(&source.url).await {
                Ok(client) => client,
                Err(error) => {
                    tracing::warn!(%error, "the node is unreachable; trying again");
                    back_off(&mut pause, &mut stop).await;
                    continue;
                }
            },
        };
        let copied = tokio::select! {
            copied = copy(&connected, log, source, target, report) => copied,
            _ = stop.changed() => return Ok(()),
        };
        match copied {
            Ok(()) => return Ok(()),
            Err(Stop::Fatal(error)) => return Err(error),
            Err(Stop::Lost(why)) => {
                tracing::warn!(why, "lost the node's log stream; resuming from the replica's end");
                report.reconnects += 1;
                back_off(&mut pause, &mut stop).await;
            }
        }
    }
}

/// A mirror directory holds one chain's log: the first run records the chain's id, and later
/// runs refuse another chain.
fn check_chain(dir: &Path, chain_id: &str) -> Result<()> {
    let path: PathBuf = dir.join("chain-id");
    std::fs::create_dir_all(dir).map_err(|e| Error::Config(format!("{}: {e}", dir.display())))?;
    match std::fs::read_to_string(&path) {
        Ok(recorded) if recorded.trim() == chain_id => Ok(()),
        Ok(recorded) => Err(Error::Config(format!(
            "{} mirrors chain {:?}, not {chain_id:?}",
            dir.display(),
            recorded.trim()
        ))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            std::fs::write(&path, format!("{chain_id}\n"))
                .and_then(|()| std::fs::File::open(&path)?.sync_all())
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))
        }
        Err(error) => Err(Error::Config(format!("{}: {error}", path.display()))),
    }
}

/// Waits `pause` (or until `stop` changes), then doubles it, up to [`RETRY_MAX`].
pub(crate) async fn back_off(pause: &mut Duration, stop: &mut tokio::sync::watch::Receiver<bool>) {
    tokio::select! {
        () = tokio::time::sleep(*pause) => {}
        _ = stop.changed() => {}
    }
    *pause = (*pause * 2).min(RETRY_MAX);
}

/// Whether the mirror holds every partition's snapshot of the target height.
fn reached(log: &Log, target: Option<u64>) -> Result<bool> {
    let Some(target) = target else {
        return Ok(false);
    };
    if target == 0 {
        return Ok(true);
    }
    for p in 0..log.partitions() {
        let last = log.last_snapshot(PartitionId(p))?.map(|s| s.height);
        if last.is_none_or(|height| height < target) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Per partition: last seqno, its epoch, last snapshot height.
fn held(log: &Log) -> Result<Vec<(u64, u64, Option<u64>)>> {
    log.resume_positions()
        .into_iter()
        .map(|position| {
            let height = log.last_snapshot(position.partition)?.map(|s| s.height);
            Ok((position.next_seqno - 1, position.epoch, height))
        })
        .collect()
}

/// Copies the node's stream from where the mirror ends, until the target or an interruption.
async fn copy(
    client: &Client,
    log: &Log,
    source: &Source,
    target: Option<u64>,
    report: &mut MirrorReport,
) -> std::result::Result<(), Stop> {
    let chain_id = &source.chain_id;
    let resume_tokens = log
        .resume_positions()
        .iter()
        .map(|position| position.to_token(chain_id))
        .collect();
    let mut stream = client
        .raw()
        .subscribe_log(proto::SubscribeLogRequest {
            resume_tokens,
            partitions: Vec::new(),
        })
        .await
        .map_err(|status| lost_or_refused(&status))?
        .into_inner();
    tracing::info!(url = client.url(), "streaming the node's log");
    loop {
        let Some(first) = stream.next().await else {
            return Err(Stop::Lost("the node ended the stream".into()));
        };
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX {
            match stream.next().now_or_never() {
                Some(Some(next)) => batch.push(next),
                _ => break,
            }
        }
        let mut deliveries = Vec::with_capacity(batch.len());
        let mut failure = None;
        for event in batch {
            match event {
                Ok(event) => deliveries.push(delivery(event, chain_id)?),
                Err(status) => {
                    failure = Some(lost_or_refused(&status));
                    break;
                }
            }
        }
        for delivery in &deliveries {
            match delivery.event {
                Event::Entry(_) => report.entries_copied += 1,
                Event::Rollback { .. } => report.rollbacks += 1,
                Event::Snapshot { .. } => {}
            }
        }
        // What arrived before an error is still copied.
        log.replicate(deliveries, &source.leader).await?;
        if let Some(failure) = failure {
            return Err(failure);
        }
        if reached(log, target)? {
            return Ok(());
        }
    }
}

/// A refusal the node would repeat (a bad position, released entries) stops the mirror; anything
/// else is a lost connection.
fn lost_or_refused(status: &tonic::Status) -> Stop {
    use tonic::Code;
    match status.code() {
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition | Code::NotFound => {
            Stop::Fatal(Error::Client(format!(
                "the node refused the mirror's position: {}",
                status.message()
            )))
        }
        _ => Stop::Lost(status.message().to_string()),
    }
}

/// Reads one event of the node's stream back into the log's terms, checking what it can.
fn delivery(event: proto::LogEvent, chain_id: &str) -> std::result::Result<Delivery, Stop> {
    let malformed = |why: String| {
        Stop::Fatal(Error::Client(format!(
            "the node sent a malformed log event: {why}"
        )))
    };
    let position =
        Position::from_token(&event.resume_token, chain_id).map_err(|e| malformed(e.to_string()))?;
    let partition = PartitionId(event.partition);
    if position.partition != partition {
        return Err(malformed(format!(
            "an event of partition {} carries a position in partition {}",
            partition.0, position.partition.0
        )));
    }
    let event = match event.event {
        Some(proto::log_event::Event::Entry(entry)) => {
            let transaction = entry
                .transaction
                .ok_or_else(|| malformed(format!("entry {} has no transaction", entry.seqno)))?;
            if chainql::transaction_hash(&transaction.transaction).0[..] != entry.transaction_hash[..] {
                return Err(malformed(format!(
                    "entry {} does not match its transaction hash",
                    entry.seqno
                )));
            }
            Event::Entry(Entry {
                partition,
                seqno: entry.seqno,
                epoch: entry.epoch,
                payload: transaction.encode_to_vec().into(),
            })
        }
        Some(proto::log_event::Event::Snapshot(snapshot)) => Event::Snapshot {
            partition,
            seqno: snapshot.seqno,
            height: snapshot.height,
        },
        Some(proto::log_event::Event::Rollback(rollback)) => Event::Rollback {
            partition,
            to_seqno: rollback.to_seqno,
        },
        None => return Err(malformed("no event".into())),
    };
    Ok(Delivery { event, position })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainql::{Keypair, TransactionBuilder};

    fn event(partition: u32, seqno: u64, token_partition: u32) -> proto::LogEvent {
        let transaction =
            TransactionBuilder::new("mirror", Keypair::from_seed([3; 32])).build(0, vec!["SELECT 1".into()]);
        proto::LogEvent {
            partition,
            event: Some(proto::log_event::Event::Entry(proto::LogEntry {
                seqno,
                epoch: 1,
                transaction_hash: chainql::transaction_hash(&transaction.transaction).0.to_vec(),
                transaction: Some(transaction),
            })),
            resume_token: Position {
                next_seqno: seqno + 1,
                epoch: 1,
                ..Position::start(PartitionId(token_partition))
            }
            .to_token("mirror"),
        }
    }

    fn refusal(event: proto::LogEvent, chain_id: &str) -> String {
        match delivery(event, chain_id) {
            Err(Stop::Fatal(error)) => error.to_string(),
            Err(Stop::Lost(why)) => panic!("a malformed event is not a lost connection: {why}"),
            Ok(delivery) => panic!("accepted {delivery:?}"),
        }
    }

    #[test]
    fn events_are_checked_before_they_are_copied() {
        let good = delivery(event(1, 7, 1), "mirror").unwrap_or_else(|_| panic!("a good event"));
        assert!(
            matches!(good.event, Event::Entry(ref entry) if entry.seqno == 7 && entry.partition == PartitionId(1))
        );
        assert_eq!(good.position.next_seqno, 8);

        let mut forged = event(1, 7, 1);
        if let Some(proto::log_event::Event::Entry(entry)) = &mut forged.event {
            entry.transaction_hash[0] ^= 1;
        }
        assert!(refusal(forged, "mirror").contains("does not match its transaction hash"));
        assert!(refusal(event(1, 7, 2), "mirror").contains("carries a position in partition 2"));
        assert!(refusal(event(1, 7, 1), "another-chain").contains("malformed log event"));
        let mut empty = event(1, 7, 1);
        empty.event = None;
        assert!(refusal(empty, "mirror").contains("no event"));
    }
}
