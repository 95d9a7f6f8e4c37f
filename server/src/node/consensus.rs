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
//!
//! Messages from the other validators arrive through a bounded queue. A proposal's block is
//! checked ([`Inner::check_proposal`]) before the engine sees the proposal; a block that fails is
//! refused, and this validator prevotes nil when the round times out. Messages of an older
//! height are dropped; of the next height, a proposal is kept until that height starts (votes
//! are buffered by the engine); further ahead, this validator has fallen behind. Then, and when
//! the engine decided a block this validator never received, or when a peer is ahead and the
//! height has not moved for a while, block sync asks the peers for their height and fetches the
//! missing blocks through their public API, checks each one's certificate, commits them and
//! restarts the engine above them.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use chainql::Hash;
use chainql::wire::Block;
use chainql_consensus::header_hash;
use chainql_consensus::tendermint::codec::{self, WalRecord};
use chainql_consensus::tendermint::wal::Wal;
use chainql_consensus::tendermint::{
    ChainContext, Engine, Height, LinearTimeouts, Message, Output, Timeout, ValidatorSet, check_signed,
};
use prost::Message as _;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Draft, Inner, assignee, consensus_set, lock};
use crate::client::Client;
use crate::error::{Error, Result};
use crate::validator::proto::ForgeRequest;
use crate::validator::proto::validator_client::ValidatorClient;
use chainql::wire::BlockPart;
use chainql_executor::Validators;

/// Messages from other validators queued for the consensus task before new ones are dropped.
pub(crate) const INBOX: usize = 8_192;
/// A message more heights ahead than this is refused as implausible (a validator this far
/// behind learns the heights from block sync, not from votes).
const FAR_AHEAD: u64 = 1_000;
/// Proposals of the next height kept until it starts.
const EARLY_PROPOSALS_MAX: usize = 16;
/// How often the peers are asked for their height.
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// A peer ahead by one height is caught up with only after the height has not moved for this
/// long (normally the engine decides it a moment later by itself).
const STALLED: Duration = Duration::from_secs(3);
/// The most blocks fetched in one round of block sync.
const SYNC_BLOCKS_MAX: u64 = 512;
/// How long a peer has to answer one request of block sync.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a proposer waits for the parts it asked other validators to forge; it signs the
/// parts that did not come itself.
const FORGE_WAIT: Duration = Duration::from_millis(300);

/// A message from another validator, decoded.
pub(crate) enum Inbound {
    Message(Message),
    /// A proposal, with the block it names.
    Proposal(Message, Box<Block>),
}

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
    ctx: ChainContext,
    /// Validator sets of the chain's state already weighed for Tendermint, newest last.
    sets: Vec<(Validators, ValidatorSet)>,
    engine: Engine,
    wal: Wal,
    inbox: mpsc::Receiver<Inbound>,
    /// Proposals of the height after the one being decided, with their blocks.
    early: Vec<(Message, Block)>,
    /// A decided height whose block this validator does not hold (block sync fetches it).
    missing: Option<Height>,
    /// Set when a message showed that the other validators are ahead.
    behind: bool,
    /// Clients of the peers' public APIs, for block sync.
    clients: HashMap<String, Client>,
    /// Clients of the peers' validator services, for sharded forging.
    forgers: HashMap<String, ValidatorClient<tonic::transport::Channel>>,
    /// Which validator answers at which peer URL (learned by [`poll_peers`]).
    identities: Arc<std::sync::Mutex<HashMap<chainql::Address, String>>>,
    /// The highest committed height a peer reported, and that peer (kept by [`poll_peers`]).
    best_peer: watch::Receiver<Option<(u64, String)>>,
    /// Blocks of the height being decided, by header hash: this validator's proposals and the
    /// checked blocks of other validators' proposals.
    candidates: HashMap<Hash, Block>,
    /// Timeouts the engine asked for, with when they fire.
    timers: Vec<(Timeout, Instant)>,
    /// Whether the engine's height (the one after the committed one) has started.
    started: bool,
    /// When the committed height last moved (by a decision or by block sync).
    last_commit: Instant,
}

impl Consensus {
    /// Opens the write-ahead log for the height after the committed one and, when it holds
    /// entries of that height, replays them (the node stopped in the middle of the height).
    pub(super) fn open(
        inner: Arc<Inner>,
        inbox: mpsc::Receiver<Inbound>,
    ) -> Result<(Consensus, Vec<Output>)> {
        let height = Height(inner.state().height() + 1);
        let path = wal_path(&inner.config.data_dir);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display().to_string(), e))?;
        }
        let (wal, records) = Wal::open(&path, height)?;
        let ctx = inner.ctx.clone();
        let mut sets = Vec::new();
        let validators = validators_for(&inner, &mut sets, height)?;
        let engine = Engine::new(
            ctx.clone(),
            inner.validator.clone(),
            validators,
            timeouts(),
            height,
        );
        let mut consensus = Consensus {
            inner,
            ctx,
            sets,
            engine,
            wal,
            inbox,
            early: Vec::new(),
            missing: None,
            behind: false,
            clients: HashMap::new(),
            forgers: HashMap::new(),
            identities: Arc::default(),
            best_peer: watch::channel(None).1,
            candidates: HashMap::new(),
            timers: Vec::new(),
            started: false,
            last_commit: Instant::now(),
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

    /// The validators of `height`, which the committed state knows up to two heights ahead.
    fn validators(&mut self, height: Height) -> Result<ValidatorSet> {
        validators_for(&self.inner, &mut self.sets, height)
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
        let mut sync_tick = tokio::time::interval(SYNC_EVERY);
        sync_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let has_peers = !inner.peers.is_empty();
        if has_peers {
            let (best, best_peer) = watch::channel(None);
            self.best_peer = best_peer;
            let urls: Vec<String> = inner.peers.urls().map(str::to_string).collect();
            tokio::spawn(poll_peers(urls, best, Arc::clone(&self.identities)));
        }
        loop {
            if inner.stopping.load(std::sync::atomic::Ordering::Acquire) {
                return Ok(());
            }
            if has_peers && (self.behind || self.missing.is_some()) {
                self.sync().await?;
            }
            if !self.started {
                for receiver in &mut changes {
                    receiver.borrow_and_update();
                }
                if inner.entries_waiting() {
                    let due = self.last_commit + interval;
                    if Instant::now() >= due {
                        self.start().await?;
                        continue;
                    }
                    tokio::select! {
                        () = tokio::time::sleep_until(due) => {}
                        Some(inbound) = self.inbox.recv() => self.receive(inbound).await?,
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
                Some(inbound) = self.inbox.recv() => self.receive(inbound).await?,
                _ = sync_tick.tick(), if has_peers => self.sync().await?,
                () = inner.stop.notified() => {}
            }
        }
    }

    /// Acts on a message from another validator.
    async fn receive(&mut self, inbound: Inbound) -> Result<()> {
        let (message, block) = match inbound {
            Inbound::Message(message) => (message, None),
            Inbound::Proposal(message, block) => (message, Some(*block)),
        };
        let height = message.height();
        let current = self.height();
        // Beyond what the committed state knows, the current set stands in: such a message only
        // tells this validator that it is behind.
        let validators = self.validators(height.min(Height(current.0 + 1)))?;
        if let Err(reason) = check_signed(&self.ctx, &validators, &message) {
            return self.refuse(format!("a consensus message for height {height}: {reason}"));
        }
        if height < current {
            return Ok(()); // a height already committed: late, and harmless
        }
        if height.0 > current.0 + FAR_AHEAD {
            return self.refuse(format!(
                "a consensus message for height {height}, far ahead of height {current}"
            ));
        }
        if height > current {
            if height.0 == current.0 + 1 {
                if let Some(block) = block {
                    if self.early.len() < EARLY_PROPOSALS_MAX {
                        self.early.push((message, block));
                    }
                } else if self.started {
                    // The engine keeps votes of the next height until it gets there.
                    let outputs = self.engine.receive(message);
                    self.act(outputs).await?;
                }
            } else {
                self.behind = true;
            }
            return Ok(());
        }
        if let Some(block) = &block {
            let Message::Proposal(proposal) = &message else {
                return Ok(());
            };
            let Some(header) = block.header.as_ref() else {
                return self.refuse("a proposed block without a header".into());
            };
            let hash = header_hash(header);
            if hash != proposal.message.value.0 {
                return self.refuse(format!(
                    "a proposal names block {}, but carries block {hash}",
                    proposal.message.value.0
                ));
            }
            let proposer = chainql::PublicKey::from_bytes(&header.proposer).map(|key| key.address());
            if proposer.ok() != Some(proposal.message.proposer.0) {
                return self.refuse(format!(
                    "the block of {}'s proposal was signed by another proposer",
                    proposal.message.proposer
                ));
            }
            if !self.candidates.contains_key(&hash) {
                if let Err(error) = self.inner.check_proposal(block).await {
                    return self.refuse(format!(
                        "an invalid block proposed by {} at height {height}: {error}",
                        proposal.message.proposer
                    ));
                }
                self.wal.append_block(&block.encode_to_vec())?;
                self.candidates.insert(hash, block.clone());
            }
        }
        // Another validator is at this height: so is this one.
        if !self.started {
            self.start().await?;
        }
        let outputs = self.engine.receive(message);
        self.act(outputs).await
    }

    /// Logs why a message from a peer was refused, and counts it. (A refusal is not an error
    /// of this validator: it goes on.)
    fn refuse(&self, reason: String) -> Result<()> {
        self.inner
            .metrics
            .peer_messages_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(%reason, "refused a consensus message");
        Ok(())
    }

    /// Block sync: asks the peers for their height; when one is ahead (two heights or more,
    /// or one height while this validator is stalled or misses a decided block), fetches the
    /// blocks this validator lacks from it, checks each one's commit certificate, commits them
    /// and restarts the engine above them.
    async fn sync(&mut self) -> Result<()> {
        self.behind = false;
        let committed = self.inner.state().height();
        let best = self.best_peer.borrow_and_update().clone();
        let Some((best, url)) = best else { return Ok(()) };
        let stalled = self.last_commit.elapsed() >= STALLED || self.missing.is_some();
        if best < committed + 2 && !(best > committed && stalled) {
            return Ok(());
        }
        if !self.clients.contains_key(&url) {
            match tokio::time::timeout(PEER_TIMEOUT, Client::connect(&url)).await {
                Ok(Ok(client)) => {
                    self.clients.insert(url.clone(), client);
                }
                _ => return Ok(()),
            }
        }
        let Some(client) = self.clients.get(&url) else {
            return Ok(());
        };
        let mut synced = 0;
        for height in committed + 1..=best.min(committed + SYNC_BLOCKS_MAX) {
            let fetched = tokio::time::timeout(PEER_TIMEOUT, client.block(height)).await;
            let block = match fetched {
                Ok(Ok(Some((block, _)))) => block,
                Ok(Ok(None)) => break,
                Ok(Err(error)) => {
                    tracing::info!(peer = %url, height, %error, "block sync: fetching a block failed");
                    self.clients.remove(&url);
                    break;
                }
                Err(_) => {
                    tracing::info!(peer = %url, height, "block sync: the peer did not answer in time");
                    self.clients.remove(&url);
                    break;
                }
            };
            let parent = self.inner.state().block_hash();
            let validators = validators_for(&self.inner, &mut self.sets, Height(height))?;
            if let Err(error) = chainql_consensus::verify_committed(&block, parent, &self.ctx, &validators) {
                self.refuse(format!("block sync: block {height} from {url}: {error}"))?;
                break;
            }
            self.inner.commit_block(block).await?;
            synced += 1;
        }
        if synced > 0 {
            let height = Height(self.inner.state().height() + 1);
            tracing::info!(peer = %url, blocks = synced, next = height.0, "caught up by block sync");
            let validators = self.validators(height)?;
            self.engine = Engine::new(
                self.ctx.clone(),
                self.inner.validator.clone(),
                validators,
                timeouts(),
                height,
            );
            self.timers.clear();
            self.candidates.clear();
            self.early.clear();
            self.started = false;
            self.missing = None;
            self.last_commit = Instant::now();
            self.wal.reset(height)?;
            // Still behind: go on at the next turn of the loop.
            self.behind = best >= height.0;
        }
        Ok(())
    }

    /// Starts the height after the committed one.
    async fn start(&mut self) -> Result<()> {
        self.started = true;
        let height = self.height();
        let validators = self.validators(height)?;
        self.engine.set_validators(validators);
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
                    let draft = self.inner.draft_block()?;
                    let parts = self.forge(&draft).await;
                    let mut proposal = draft.proposal;
                    proposal.parts = parts;
                    let block = proposal.sign(&self.inner.validator);
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
                        tracing::info!(
                            height = height.0,
                            %block,
                            "decided a block this validator did not receive: fetching it"
                        );
                        self.missing = Some(height);
                        continue;
                    };
                    decided.commit = Some(codec::commit_to_wire(&certificate).map_err(|e| {
                        Error::Corrupt(format!("the commit certificate of height {height}: {e}"))
                    })?);
                    self.inner.commit_block(decided).await?;
                    self.candidates.clear();
                    self.started = false;
                    self.last_commit = Instant::now();
                    let next = Height(height.0 + 1);
                    self.wal.reset(next)?;
                    // Proposals of the new height that came early: the height starts with them.
                    for (message, block) in std::mem::take(&mut self.early) {
                        if message.height() == next {
                            Box::pin(self.receive(Inbound::Proposal(message, Box::new(block)))).await?;
                        }
                    }
                }
                Output::Equivocation { votes, .. } => {
                    for (first, second) in &votes {
                        let height = first.message.height;
                        let proved =
                            chainql_consensus::evidence_to_wire(first, second).and_then(|evidence| {
                                let validators = self.validators(height).map_err(|e| e.to_string())?;
                                chainql_consensus::check_evidence(&self.ctx, &evidence, |_| Some(validators))
                                    .map(|proved| (proved, evidence))
                            });
                        match proved {
                            Ok((proved, evidence)) => self.inner.keep_evidence(proved, evidence),
                            Err(reason) => tracing::warn!(%reason, "conflicting votes that prove nothing"),
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Sharded forging, the proposer's side: each partition of the draft goes to the validator
    /// assigned it at this height, all at once. A part that comes back signed by the assignee
    /// over exactly the transactions sent is used; the proposer signs the others itself (it
    /// checked every transaction in its log when it admitted it). A lone validator signs all.
    async fn forge(&mut self, draft: &Draft) -> Vec<BlockPart> {
        let proposal = &draft.proposal;
        let (height, parent) = (proposal.height, proposal.parent_hash);
        let state = self.inner.state();
        let me = self.inner.validator.address();
        let mut asked = Vec::new();
        if let Some(set) = state.validators_for(height)
            && !self.inner.peers.is_empty()
        {
            for (partition, range) in &draft.groups {
                let who = assignee(set, height, *partition);
                let url = lock(&self.identities).get(&who.address).cloned();
                let Some(url) = url.filter(|_| who.address != me) else {
                    continue;
                };
                let Some(mut client) = self.forger(&url).await else {
                    continue;
                };
                let request = ForgeRequest {
                    height,
                    parent_hash: parent.0.to_vec().into(),
                    partition: *partition,
                    transactions: proposal.transactions[range.clone()].to_vec(),
                };
                let (partition, key, range) = (*partition, who.public_key, range.clone());
                asked.push(async move {
                    let reply = tokio::time::timeout(FORGE_WAIT, client.forge(request)).await;
                    (partition, range, key, url, reply)
                });
            }
        }
        let mut forged: HashMap<u32, BlockPart> = HashMap::new();
        for (partition, range, key, url, reply) in futures::future::join_all(asked).await {
            let refused = match reply {
                Ok(Ok(reply)) => {
                    let reply = reply.into_inner();
                    match (reply.part, chainql::PublicKey::from_bytes(&key)) {
                        (Some(part), Ok(key)) => {
                            let transactions = &proposal.transactions[range];
                            if chainql_consensus::verify_part(
                                &part,
                                &proposal.chain_id,
                                height,
                                &parent,
                                &key,
                                transactions,
                            ) && part.partition == partition
                            {
                                forged.insert(partition, part);
                                continue;
                            }
                            "a part that does not match what was sent".to_string()
                        }
                        _ => reply.refused,
                    }
                }
                Ok(Err(status)) => status.message().to_string(),
                Err(_) => "no answer in time".to_string(),
            };
            tracing::info!(peer = %url, partition, height, reason = %refused, "a part was not forged by its assignee: the proposer signs it");
        }
        let metrics = &self.inner.metrics;
        metrics
            .parts_forged_by_peers
            .fetch_add(forged.len() as u64, std::sync::atomic::Ordering::Relaxed);
        metrics.parts_forged_here.fetch_add(
            (draft.groups.len() - forged.len()) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        draft
            .groups
            .iter()
            .map(|(partition, range)| {
                forged.remove(partition).unwrap_or_else(|| {
                    chainql_consensus::sign_part(
                        &self.inner.validator,
                        &proposal.chain_id,
                        height,
                        &parent,
                        *partition,
                        &proposal.transactions[range.clone()],
                    )
                })
            })
            .collect()
    }

    /// A client of a peer's validator service, connected once and kept.
    async fn forger(&mut self, url: &str) -> Option<ValidatorClient<tonic::transport::Channel>> {
        if let Some(client) = self.forgers.get(url) {
            return Some(client.clone());
        }
        let connected = tokio::time::timeout(PEER_TIMEOUT, ValidatorClient::connect(url.to_string())).await;
        let client = connected
            .ok()?
            .ok()?
            .max_encoding_message_size(crate::validator::PEER_MESSAGE_BYTES_MAX)
            .max_decoding_message_size(1 << 20);
        self.forgers.insert(url.to_string(), client.clone());
        Some(client)
    }

    /// Sends a message to the other validators, once the log entries it follows from are
    /// durable. A validator alone on its chain has no one to send to.
    fn broadcast(&mut self, message: Message) -> Result<()> {
        if self.inner.peers.is_empty() {
            return Ok(());
        }
        self.wal.sync()?;
        let block = match &message {
            Message::Proposal(proposal) => self.candidates.get(&proposal.message.value.0),
            _ => None,
        };
        self.inner.peers.broadcast(&message, block);
        Ok(())
    }
}

/// The validators of `height` from the committed state, weighed for Tendermint once per set.
fn validators_for(
    inner: &Inner,
    sets: &mut Vec<(Validators, ValidatorSet)>,
    height: Height,
) -> Result<ValidatorSet> {
    let state = inner.state();
    let Some(validators) = state.validators_for(height.0) else {
        return Err(Error::Corrupt(format!(
            "the state of height {} does not know the validators of height {height}",
            state.height()
        )));
    };
    if let Some((_, set)) = sets.iter().find(|(v, _)| Arc::ptr_eq(v, validators)) {
        return Ok(set.clone());
    }
    let set = consensus_set(validators)?;
    if sets.len() >= 4 {
        sets.remove(0);
    }
    sets.push((Arc::clone(validators), set.clone()));
    Ok(set)
}

/// Asks the peers for their committed height every `SYNC_EVERY`, and keeps the highest (with
/// the peer that reported it) in `best`, off the consensus task: a busy peer's slow answer
/// never holds up this validator's votes.
async fn poll_peers(
    urls: Vec<String>,
    best: watch::Sender<Option<(u64, String)>>,
    identities: Arc<std::sync::Mutex<HashMap<chainql::Address, String>>>,
) {
    let mut clients: HashMap<String, Client> = HashMap::new();
    let mut tick = tokio::time::interval(SYNC_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if best.is_closed() {
            return;
        }
        let mut highest: Option<(u64, String)> = None;
        for url in &urls {
            if !clients.contains_key(url) {
                match tokio::time::timeout(PEER_TIMEOUT, Client::connect(url)).await {
                    Ok(Ok(client)) => {
                        clients.insert(url.clone(), client);
                    }
                    _ => continue,
                }
            }
            let Some(client) = clients.get(url) else { continue };
            match tokio::time::timeout(PEER_TIMEOUT, client.status()).await {
                Ok(Ok(status)) => {
                    lock(&identities).insert(status.validator, url.clone());
                    if highest.as_ref().is_none_or(|(h, _)| status.height > *h) {
                        highest = Some((status.height, url.clone()));
                    }
                }
                _ => {
                    clients.remove(url);
                }
            }
        }
        best.send_replace(highest);
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
