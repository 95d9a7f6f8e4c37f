//! The node's side of Tendermint: it runs the consensus [`Engine`] and carries out what the
//! engine asks — logs its inputs, proposes blocks built from the PoE log, schedules its
//! timeouts, sends its messages to the other validators, and commits what it decides.
//!
//! One validator holding all the stake goes through exactly this path: it proposes, prevotes,
//! precommits and decides alone, a quorum of one, and its blocks carry a commit certificate of
//! its own precommit.
//!
//! A height starts when there is a reason to cut a block: log entries are waiting (and the last
//! block is at least `block_interval_ms` old), or another validator has started the height.
//! Between blocks an idle chain sends nothing.
//!
//! The write-ahead log (`wal/consensus.wal`) holds the engine's inputs of the current height and
//! the blocks its proposals name. It is synced before a message leaves the node; after a crash
//! the engine replays it and signs nothing that contradicts what it sent.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chainql::Hash;
use chainql::wire::Block;
use chainql_consensus::header_hash;
use chainql_consensus::tendermint::codec::{self, WalRecord};
use chainql_consensus::tendermint::wal::Wal;
use chainql_consensus::tendermint::{
    ChainContext, Engine, Height, LinearTimeouts, Message, Output, Timeout, ValidatorSet,
};
use prost::Message as _;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Inner, lock};
use crate::error::{Error, Result};

/// Round timeouts of validators on one network: short enough that a round whose proposer is
/// down costs about a second, growing with each round as Tendermint requires.
pub(crate) fn timeouts() -> LinearTimeouts {
    LinearTimeouts {
        propose: Duration::from_millis(1_000),
        propose_delta: Duration::from_millis(500),
        prevote: Duration::from_millis(500),
        prevote_delta: Duration::from_millis(250),
        precommit: Duration::from_millis(500),
        precommit_delta: Duration::from_millis(250),
        rebroadcast: Duration::from_millis(2_000),
        max_timeout: Duration::from_secs(30),
    }
}

/// The path of the write-ahead log in a data directory.
pub(crate) fn wal_path(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("wal").join("consensus.wal")
}

/// The consensus task of a validator.
pub(super) struct Consensus {
    inner: Arc<Inner>,
    engine: Engine,
    wal: Wal,
    /// Blocks of the height being decided, by header hash: this validator's proposals and the
    /// checked blocks of other validators' proposals.
    candidates: HashMap<Hash, Block>,
    /// Timeouts the engine asked for, with when they fire.
    timers: Vec<(Timeout, Instant)>,
    /// Whether the engine's height (the one after the committed one) has started.
    started: bool,
    last_decision: Instant,
}

impl Consensus {
    /// Opens the write-ahead log for the height after the committed one and, when it holds
    /// entries of that height, replays them (the node stopped in the middle of the height).
    pub(super) fn open(inner: Arc<Inner>, validators: ValidatorSet) -> Result<(Consensus, Vec<Output>)> {
        let height = Height(inner.state().height() + 1);
        let path = wal_path(&inner.config.data_dir);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display().to_string(), e))?;
        }
        let (wal, records) = Wal::open(&path, height)?;
        let engine = Engine::new(
            ChainContext::new(inner.genesis.chain_id.clone()),
            inner.validator.clone(),
            validators,
            timeouts(),
            height,
        );
        let mut consensus = Consensus {
            inner,
            engine,
            wal,
            candidates: HashMap::new(),
            timers: Vec::new(),
            started: false,
            last_decision: Instant::now(),
        };
        let mut inputs = Vec::new();
        for record in records {
            match record {
                WalRecord::Input(input) => inputs.push(input),
                WalRecord::Block(bytes) => {
                    let block = Block::decode(bytes.as_slice()).map_err(|e| {
                        Error::Corrupt(format!("a block in the consensus log does not decode: {e}"))
                    })?;
                    let hash =
                        block.header.as_ref().map(header_hash).ok_or_else(|| {
                            Error::Corrupt("a block in the consensus log has no header".into())
                        })?;
                    consensus.candidates.insert(hash, block);
                }
            }
        }
        let outputs = if inputs.is_empty() {
            Vec::new()
        } else {
            tracing::info!(
                height = height.0,
                entries = inputs.len(),
                "resuming consensus from its write-ahead log"
            );
            consensus.started = true;
            consensus.engine.replay(inputs)
        };
        Ok((consensus, outputs))
    }

    /// The height being decided: the one after the committed one.
    fn height(&self) -> Height {
        Height(self.inner.state().height() + 1)
    }

    /// Runs until the node stops, or halts the node on an error it cannot go past (a block
    /// that cannot be stored or executed, a log that cannot be written).
    pub(super) async fn run(mut self, outputs: Vec<Output>) {
        if let Err(error) = self.drive(outputs).await {
            let message = error.to_string();
            tracing::error!(error = %message, "consensus stopped");
            *lock(&self.inner.halted) = Some(message);
        }
    }

    async fn drive(&mut self, outputs: Vec<Output>) -> Result<()> {
        self.act(outputs).await?;
        let inner = Arc::clone(&self.inner);
        let interval = Duration::from_millis(inner.config.block_interval_ms);
        let mut changes: Vec<watch::Receiver<u64>> = (0..inner.log.partitions())
            .filter_map(|p| inner.log.changes(chainql_sequencer::PartitionId(p)).ok())
            .collect();
        loop {
            if inner.stopping.load(std::sync::atomic::Ordering::Acquire) {
                return Ok(());
            }
            if !self.started {
                for receiver in &mut changes {
                    receiver.borrow_and_update();
                }
                if inner.entries_waiting() {
                    let due = self.last_decision + interval;
                    if Instant::now() >= due {
                        self.start().await?;
                        continue;
                    }
                    tokio::select! {
                        () = tokio::time::sleep_until(due) => {}
                        () = inner.stop.notified() => {}
                    }
                    continue;
                }
            }
            let next_timer = self.timers.iter().map(|(_, at)| *at).min();
            let any_change = futures::future::select_all(changes.iter_mut().map(|r| Box::pin(r.changed())));
            tokio::select! {
                (changed, _, _) = any_change, if !self.started => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
                () = sleep_until_some(next_timer) => {
                    let now = Instant::now();
                    let due: Vec<Timeout> =
                        self.timers.iter().filter(|(_, at)| *at <= now).map(|(t, _)| *t).collect();
                    self.timers.retain(|(_, at)| *at > now);
                    for timeout in due {
                        let outputs = self.engine.timeout(timeout);
                        self.act(outputs).await?;
                    }
                }
                () = inner.stop.notified() => {}
            }
        }
    }

    /// Starts the height after the committed one.
    async fn start(&mut self) -> Result<()> {
        self.started = true;
        let height = self.height();
        let outputs = self.engine.start_height(height);
        self.act(outputs).await
    }

    /// Carries out the engine's outputs in order, and those of the inputs they lead to.
    async fn act(&mut self, outputs: Vec<Output>) -> Result<()> {
        let mut queue = VecDeque::from(outputs);
        while let Some(output) = queue.pop_front() {
            match output {
                Output::Wal(height, input) => {
                    if height == self.wal.height() {
                        self.wal.append(&input)?;
                    }
                }
                Output::Broadcast(message) => self.broadcast(message)?,
                Output::Schedule(timeout, after) => {
                    self.timers.retain(|(t, _)| *t != timeout);
                    self.timers.push((timeout, Instant::now() + after));
                }
                Output::Cancel(timeout) => self.timers.retain(|(t, _)| *t != timeout),
                Output::CancelAll => self.timers.clear(),
                Output::Propose { height, round } => {
                    if height != self.height() {
                        continue;
                    }
                    let block = self.inner.build_block()?;
                    let header = block
                        .header
                        .as_ref()
                        .ok_or_else(|| Error::Corrupt("a built block has no header".into()))?;
                    let hash = header_hash(header);
                    self.wal.append_block(&block.encode_to_vec())?;
                    self.candidates.insert(hash, block);
                    queue.extend(self.engine.propose(height, round, hash));
                }
                Output::Decided {
                    height,
                    block,
                    certificate,
                    ..
                } => {
                    if height != self.height() {
                        continue;
                    }
                    let Some(mut decided) = self.candidates.remove(&block) else {
                        return Err(Error::Corrupt(format!(
                            "height {height} decided block {block}, which this validator does not hold"
                        )));
                    };
                    decided.commit = Some(codec::commit_to_wire(&certificate).map_err(|e| {
                        Error::Corrupt(format!("the commit certificate of height {height}: {e}"))
                    })?);
                    self.inner.commit_block(decided).await?;
                    self.candidates.clear();
                    self.started = false;
                    self.last_decision = Instant::now();
                    self.wal.reset(Height(height.0 + 1))?;
                }
                Output::Equivocation {
                    height,
                    offender,
                    votes,
                } => {
                    tracing::warn!(
                        height = height.0,
                        %offender,
                        votes = votes.len(),
                        "a validator signed conflicting votes"
                    );
                }
            }
        }
        Ok(())
    }

    /// Sends a message to the other validators, once the log entries it follows from are
    /// durable. A validator alone on its chain has no one to send to.
    fn broadcast(&mut self, message: Message) -> Result<()> {
        if self.inner.validators.validators().len() == 1 {
            return Ok(());
        }
        self.wal.sync()?;
        tracing::debug!(?message, "consensus message for the other validators");
        Ok(())
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
