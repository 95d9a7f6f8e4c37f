//! A deterministic simulation of a validator set: one thread, virtual time, and a network that
//! delays, drops, duplicates and reorders messages and can be partitioned and healed, all drawn
//! from one seed. Validators crash (losing everything but their write-ahead log and the blocks
//! they committed) and restart from the log; one that fell behind catches up by fetching
//! committed blocks with their commit certificates and checking them.
//!
//! The same configuration gives the same run, event for event: [`Report::trace`] is a hash of
//! everything that happened, so two runs can be compared by it.

use std::collections::BTreeMap;
use std::time::Duration;

use chainql::{Hash, Keypair};
use malachite_core_types::{CommitCertificate, LinearTimeouts, Round, Timeout};

use super::context::{ChainContext, Height, Validator, ValidatorSet};
use super::engine::{Engine, Message, Output};

/// How the simulated network behaves.
#[derive(Clone, Debug)]
pub struct Network {
    /// Each message takes between these many milliseconds (inclusive), drawn per message.
    pub delay_ms: (u64, u64),
    /// Chance in a thousand that a message is lost.
    pub drop_per_mille: u64,
    /// Chance in a thousand that a message arrives twice.
    pub duplicate_per_mille: u64,
}

impl Default for Network {
    fn default() -> Network {
        Network {
            delay_ms: (1, 40),
            drop_per_mille: 0,
            duplicate_per_mille: 0,
        }
    }
}

/// A cut of the network from `from_ms` to `until_ms`: messages between validators on different
/// sides are lost.
#[derive(Clone, Debug)]
pub struct Partition {
    pub from_ms: u64,
    pub until_ms: u64,
    /// The validators on one side (by index); the rest are on the other.
    pub side: Vec<usize>,
}

/// A validator that stops at `at_ms` and restarts `down_ms` later from its write-ahead log.
#[derive(Clone, Debug)]
pub struct Crash {
    pub validator: usize,
    pub at_ms: u64,
    pub down_ms: u64,
}

/// One simulated run.
#[derive(Clone, Debug)]
pub struct Simulation {
    pub seed: u64,
    /// Voting power of each validator.
    pub powers: Vec<u64>,
    /// Stop once every running validator has committed this many blocks.
    pub heights: u64,
    /// Give up at this virtual time.
    pub time_limit_ms: u64,
    pub network: Network,
    pub partitions: Vec<Partition>,
    pub crashes: Vec<Crash>,
    /// Validators that equivocate: each vote they cast for a block goes to every peer, and a
    /// conflicting vote, for another block, signed all the same, to half of them.
    pub equivocators: Vec<usize>,
    /// Validators that propose invalid blocks (and vote for them): honest validators refuse
    /// such a proposal before the core sees it, as a node refuses a block with a bad
    /// transaction.
    pub invalid_proposers: Vec<usize>,
}

impl Simulation {
    /// `validators` validators of equal power on a network with the default delays.
    pub fn new(seed: u64, validators: usize, heights: u64) -> Simulation {
        Simulation {
            seed,
            powers: vec![10; validators],
            heights,
            time_limit_ms: 600_000,
            network: Network::default(),
            partitions: Vec::new(),
            crashes: Vec::new(),
            equivocators: Vec::new(),
            invalid_proposers: Vec::new(),
        }
    }
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct Report {
    /// Per validator, the block it committed at each height.
    pub committed: Vec<BTreeMap<u64, Hash>>,
    /// Heights a validator took from others' certificates instead of deciding them itself.
    pub synced: Vec<u64>,
    /// The virtual time the run ended at.
    pub time_ms: u64,
    pub messages_delivered: u64,
    /// When each height was first committed by some validator (virtual milliseconds).
    pub first_commit_ms: BTreeMap<u64, u64>,
    /// Times a validator signed two different votes of one kind for one height and round
    /// (must be zero for honest validators, crashes and restarts included).
    pub equivocations: u64,
    /// Validators caught signing conflicting votes, by the heights they were caught at.
    pub equivocators: BTreeMap<super::context::ValidatorAddress, Vec<u64>>,
    /// Commits of blocks honest validators judged invalid (must be zero).
    pub invalid_committed: u64,
    /// Proposals honest validators refused as invalid.
    pub refused_proposals: u64,
    /// Log entries that could not be encoded or decoded again (must be zero).
    pub log_errors: u64,
    /// Restarts that replayed a write-ahead log (the rest started their height afresh).
    pub replays: u64,
    /// Per validator, the simulated state root after each height, as it computed it when it
    /// applied the height (again after each restart).
    pub state_roots: Vec<BTreeMap<u64, Hash>>,
    /// Per validator, the last height it applied (the same as the committed height it holds
    /// without a gap, unless it is down).
    pub executed: Vec<u64>,
    /// A hash of every event and decision, in order.
    pub trace: Hash,
}

impl Report {
    /// Heights at which two validators committed different blocks (must be empty).
    pub fn disagreements(&self) -> Vec<u64> {
        let mut by_height: BTreeMap<u64, Hash> = BTreeMap::new();
        let mut conflicts = Vec::new();
        for committed in &self.committed {
            for (height, block) in committed {
                match by_height.get(height) {
                    Some(other) if other != block => conflicts.push(*height),
                    Some(_) => {}
                    None => {
                        by_height.insert(*height, *block);
                    }
                }
            }
        }
        conflicts.sort();
        conflicts.dedup();
        conflicts
    }

    /// Heights at which two validators computed different state roots (must be empty).
    pub fn root_disagreements(&self) -> Vec<u64> {
        let mut by_height: BTreeMap<u64, Hash> = BTreeMap::new();
        let mut conflicts: Vec<u64> = Vec::new();
        for roots in &self.state_roots {
            for (height, root) in roots {
                if *by_height.entry(*height).or_insert(*root) != *root {
                    conflicts.push(*height);
                }
            }
        }
        conflicts.sort();
        conflicts.dedup();
        conflicts
    }

    /// The lowest height every validator committed up to.
    pub fn common_height(&self) -> u64 {
        self.committed.iter().map(contiguous_height).min().unwrap_or(0)
    }
}

/// The height up to which `committed` holds every block.
fn contiguous_height<V>(committed: &BTreeMap<u64, V>) -> u64 {
    let mut height = 0;
    while committed.contains_key(&(height + 1)) {
        height += 1;
    }
    height
}

/// splitmix64: a small, fast, seedable generator (the simulation's only source of chance).
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }

    fn per_mille(&mut self, chance: u64) -> bool {
        self.next() % 1000 < chance
    }
}

#[derive(Debug)]
enum Event {
    Deliver {
        to: usize,
        message: Message,
    },
    Timeout {
        validator: usize,
        timeout: Timeout,
        id: u64,
    },
    Propose {
        validator: usize,
        height: Height,
        round: Round,
    },
    Crash {
        validator: usize,
    },
    Restart {
        validator: usize,
    },
    /// Validators tell their peers their height every second; one that learns it is behind
    /// fetches what it missed.
    Status {
        validator: usize,
    },
}

/// How often validators exchange their heights.
const STATUS_EVERY_MS: u64 = 1_000;

struct Node {
    engine: Engine,
    key: Keypair,
    up: bool,
    /// The write-ahead log of the current height: it survives a crash.
    wal_height: Height,
    /// Entries in their logged form (`codec::encode_wal_entry`), as a node's log file holds them.
    wal: Vec<Vec<u8>>,
    /// Timeouts pending, by id.
    timeouts: Vec<(u64, Timeout)>,
    committed: BTreeMap<u64, (Hash, CommitCertificate<ChainContext>)>,
    /// The simulated execution: the last height applied and the state root after it. A restart
    /// rebuilds it from the committed blocks, as a node replays its block store.
    executed: (u64, Hash),
    /// The state root after each height, as this validator computed it when it applied it.
    roots: BTreeMap<u64, Hash>,
}

/// The simulated state root after applying `block` at `height` to the state with `root`:
/// execution follows the committed order, so validators that committed the same blocks and
/// applied them in order have the same roots.
fn apply_block(root: Hash, height: u64, block: Hash) -> Hash {
    Hash::tagged(
        "chainql/sim-state/v1",
        &[root.as_bytes(), &height.to_be_bytes(), block.as_bytes()],
    )
}

impl Node {
    /// Applies the committed blocks that follow the last one applied, in height order.
    fn execute(&mut self) {
        while let Some((block, _)) = self.committed.get(&(self.executed.0 + 1)) {
            let height = self.executed.0 + 1;
            let root = apply_block(self.executed.1, height, *block);
            self.executed = (height, root);
            self.roots.insert(height, root);
        }
    }
}

struct World {
    ctx: ChainContext,
    validators: ValidatorSet,
    timeouts: LinearTimeouts,
    nodes: Vec<Node>,
    events: BTreeMap<(u64, u64), Event>,
    now: u64,
    sequence: u64,
    next_timeout: u64,
    rng: Rng,
    sim: Simulation,
    trace: Hash,
    delivered: u64,
    synced: Vec<u64>,
    first_commit_ms: BTreeMap<u64, u64>,
    /// Every vote each validator sent: (validator, height, round, prevote?) → block or nil.
    votes_sent: BTreeMap<(usize, u64, i64, bool), Option<Hash>>,
    equivocations: u64,
    replays: u64,
    evidence: BTreeMap<(u64, super::context::ValidatorAddress), u64>,
    log_errors: u64,
    /// Blocks honest validators judge invalid.
    invalid: std::collections::BTreeSet<Hash>,
    refused: u64,
}

impl World {
    fn schedule(&mut self, after_ms: u64, event: Event) {
        self.sequence += 1;
        self.events.insert((self.now + after_ms, self.sequence), event);
    }

    fn record(&mut self, text: &str) {
        self.trace = Hash::tagged(
            "chainql/sim-trace/v1",
            &[&self.trace.0, &self.now.to_be_bytes(), text.as_bytes()],
        );
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        !self.sim.partitions.iter().any(|p| {
            (p.from_ms..p.until_ms).contains(&self.now) && p.side.contains(&a) != p.side.contains(&b)
        })
    }

    fn broadcast(&mut self, from: usize, message: Message) {
        // An equivocator's conflicting twin of this vote, for the odd-numbered peers.
        let twin = match &message {
            Message::Vote(vote)
                if self.sim.equivocators.contains(&from)
                    && matches!(vote.message.value, malachite_core_types::NilOrVal::Val(_)) =>
            {
                let mut evil = vote.message.clone();
                evil.value = malachite_core_types::NilOrVal::Val(Hash::tagged(
                    "chainql/sim-evil/v1",
                    &[&evil.height.0.to_be_bytes(), &evil.round.as_i64().to_be_bytes()],
                ));
                let body = self.ctx.vote_body(&evil);
                let signature = malachite_signing_ed25519::Signature::from_bytes(
                    self.nodes[from].key.sign(super::context::VOTE_DOMAIN, &body),
                );
                Some(Message::Vote(malachite_core_types::SignedVote::new(
                    evil, signature,
                )))
            }
            _ => None,
        };
        if let Message::Vote(vote) = &message
            && vote.message.validator == self.nodes[from].engine.address()
            && !self.sim.equivocators.contains(&from)
        {
            let vote = &vote.message;
            let key = (
                from,
                vote.height.0,
                vote.round.as_i64(),
                vote.vote_type == malachite_core_types::VoteType::Prevote,
            );
            let value = match vote.value {
                malachite_core_types::NilOrVal::Nil => None,
                malachite_core_types::NilOrVal::Val(block) => Some(block),
            };
            match self.votes_sent.get(&key) {
                Some(sent) if *sent != value => self.equivocations += 1,
                Some(_) => {}
                None => {
                    self.votes_sent.insert(key, value);
                }
            }
        }
        for to in 0..self.nodes.len() {
            if to == from || !self.connected(from, to) || self.rng.per_mille(self.sim.network.drop_per_mille)
            {
                continue;
            }
            let copies = if self.rng.per_mille(self.sim.network.duplicate_per_mille) {
                2
            } else {
                1
            };
            // Odd-numbered peers get the twin too, after the vote: they can prove the double vote.
            let mut messages = vec![message.clone()];
            if let Some(twin) = &twin
                && to % 2 == 1
            {
                messages.push(twin.clone());
            }
            for message in messages {
                for _ in 0..copies {
                    let (low, high) = self.sim.network.delay_ms;
                    let delay = self.rng.between(low, high.max(low));
                    self.schedule(
                        delay,
                        Event::Deliver {
                            to,
                            message: message.clone(),
                        },
                    );
                }
            }
        }
    }

    /// Carries out a validator's outputs.
    fn apply(&mut self, validator: usize, outputs: Vec<Output>) {
        let mut decided = None;
        for output in outputs {
            match output {
                Output::Wal(height, input) => {
                    let node = &mut self.nodes[validator];
                    if node.wal_height != height {
                        node.wal_height = height;
                        node.wal.clear();
                    }
                    match super::codec::encode_wal_entry(&input) {
                        Ok(bytes) => node.wal.push(bytes),
                        Err(error) => {
                            self.log_errors += 1;
                            self.record(&format!("{validator} cannot log {input:?}: {error}"));
                        }
                    }
                }
                Output::Broadcast(message) => self.broadcast(validator, message),
                Output::Schedule(timeout, after) => {
                    self.next_timeout += 1;
                    let id = self.next_timeout;
                    self.nodes[validator].timeouts.push((id, timeout));
                    self.schedule(
                        millis(after),
                        Event::Timeout {
                            validator,
                            timeout,
                            id,
                        },
                    );
                }
                Output::Cancel(timeout) => self.nodes[validator].timeouts.retain(|(_, t)| *t != timeout),
                Output::CancelAll => self.nodes[validator].timeouts.clear(),
                Output::Propose { height, round } => {
                    self.schedule(
                        1,
                        Event::Propose {
                            validator,
                            height,
                            round,
                        },
                    );
                }
                Output::Equivocation {
                    height,
                    offender,
                    votes,
                } => {
                    self.record(&format!("{validator} saw {offender} equivocate at {height}"));
                    self.evidence.insert((height.0, offender), votes.len() as u64);
                }
                Output::Decided {
                    height,
                    block,
                    certificate,
                    ..
                } => {
                    self.record(&format!("{validator} decided {height} {block}"));
                    decided = Some(height);
                    self.first_commit_ms.entry(height.0).or_insert(self.now);
                    self.nodes[validator]
                        .committed
                        .insert(height.0, (block, certificate));
                    self.nodes[validator].execute();
                }
            }
        }
        // Simulated validators always have a block to propose: each moves on at once.
        if let Some(height) = decided
            && self.nodes[validator].engine.height() == height
        {
            let outputs = self.nodes[validator].engine.start_height(Height(height.0 + 1));
            self.apply(validator, outputs);
        }
    }

    /// A running validator more than a height behind takes the blocks it missed from one that
    /// committed them, checking each certificate, and restarts its engine above them.
    fn catch_up(&mut self, validator: usize) {
        let mine = self.nodes[validator].engine.height().0;
        let best = (0..self.nodes.len())
            .filter(|&i| i != validator && self.nodes[i].up && self.connected(i, validator))
            .max_by_key(|&i| (self.nodes[i].engine.height().0, std::cmp::Reverse(i)));
        let Some(source) = best else { return };
        if self.nodes[source].engine.height().0 <= mine {
            return;
        }
        let mut height = mine;
        while let Some((block, certificate)) = self.nodes[source].committed.get(&height).cloned() {
            if self.nodes[validator].committed.contains_key(&height) {
                height += 1;
                continue;
            }
            if let Err(error) = self.nodes[validator]
                .engine
                .check_commit(Height(height), block, &certificate)
            {
                self.record(&format!("{validator} refused certificate {height}: {error}"));
                return;
            }
            self.record(&format!("{validator} synced {height} {block}"));
            self.synced[validator] += 1;
            self.nodes[validator]
                .committed
                .insert(height, (block, certificate));
            height += 1;
        }
        self.nodes[validator].execute();
        let next = contiguous_height(&self.nodes[validator].committed) + 1;
        if next > mine {
            self.restart_engine(validator, Height(next));
        }
    }

    fn restart_engine(&mut self, validator: usize, height: Height) {
        let node = &mut self.nodes[validator];
        node.engine = Engine::new(
            self.ctx.clone(),
            node.key.clone(),
            self.validators.clone(),
            self.timeouts,
            height,
        );
        node.timeouts.clear();
        let outputs = if node.wal_height == height && !node.wal.is_empty() {
            let entries: Vec<_> = node
                .wal
                .iter()
                .filter_map(|bytes| super::codec::decode_wal_entry(bytes).ok())
                .collect();
            self.log_errors += (node.wal.len() - entries.len()) as u64;
            self.replays += 1;
            node.engine.replay(entries)
        } else {
            node.engine.start()
        };
        self.apply(validator, outputs);
    }

    /// Every running validator has committed the heights asked for, and none is still to
    /// restart.
    fn done(&self) -> bool {
        let restarting = self
            .events
            .iter()
            .any(|((t, _), e)| matches!(e, Event::Restart { .. }) && *t <= self.sim.time_limit_ms);
        !restarting
            && self
                .nodes
                .iter()
                .filter(|n| n.up)
                .all(|n| n.committed.range(1..=self.sim.heights).count() as u64 == self.sim.heights)
    }
}

fn millis(duration: Duration) -> u64 {
    duration.as_millis().min(u64::MAX as u128) as u64
}

/// The block a validator proposes at a height and round in the simulation.
fn block_for(validator: usize, height: Height, round: Round) -> Hash {
    Hash::tagged(
        "chainql/sim-block/v1",
        &[
            &height.0.to_be_bytes(),
            &round.as_i64().to_be_bytes(),
            &(validator as u64).to_be_bytes(),
        ],
    )
}

/// Runs a simulation to its end: every validator committed `heights` blocks, or the time limit.
pub fn run(sim: Simulation) -> Report {
    let ctx = ChainContext::new("sim");
    let keys: Vec<Keypair> = (0..sim.powers.len())
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
            Keypair::from_seed(seed)
        })
        .collect();
    let members = keys
        .iter()
        .zip(&sim.powers)
        .map(|(key, power)| Validator::new(key.public_key().to_bytes(), *power).expect("a valid key"))
        .collect();
    let validators = ValidatorSet::new(members).expect("a valid validator set");
    // Short timeouts: virtual time is free, but shorter timeouts make more rounds in a run.
    let timeouts = LinearTimeouts {
        propose: Duration::from_millis(300),
        propose_delta: Duration::from_millis(100),
        prevote: Duration::from_millis(100),
        prevote_delta: Duration::from_millis(50),
        precommit: Duration::from_millis(100),
        precommit_delta: Duration::from_millis(50),
        rebroadcast: Duration::from_millis(500),
        max_timeout: Duration::from_secs(10),
    };
    let nodes = keys
        .iter()
        .map(|key| Node {
            engine: Engine::new(ctx.clone(), key.clone(), validators.clone(), timeouts, Height(1)),
            key: key.clone(),
            up: true,
            wal_height: Height(1),
            wal: Vec::new(),
            timeouts: Vec::new(),
            committed: BTreeMap::new(),
            executed: (0, Hash::ZERO),
            roots: BTreeMap::new(),
        })
        .collect();
    let count = sim.powers.len();
    let mut world = World {
        ctx,
        validators,
        timeouts,
        nodes,
        events: BTreeMap::new(),
        now: 0,
        sequence: 0,
        next_timeout: 0,
        rng: Rng(sim.seed),
        sim,
        trace: Hash::ZERO,
        delivered: 0,
        synced: vec![0; count],
        first_commit_ms: BTreeMap::new(),
        votes_sent: BTreeMap::new(),
        equivocations: 0,
        replays: 0,
        evidence: BTreeMap::new(),
        log_errors: 0,
        invalid: std::collections::BTreeSet::new(),
        refused: 0,
    };
    for crash in world.sim.crashes.clone() {
        world.now = crash.at_ms;
        world.schedule(
            0,
            Event::Crash {
                validator: crash.validator,
            },
        );
        world.schedule(
            crash.down_ms,
            Event::Restart {
                validator: crash.validator,
            },
        );
    }
    world.now = 0;
    for validator in 0..count {
        let outputs = world.nodes[validator].engine.start();
        world.apply(validator, outputs);
        world.schedule(STATUS_EVERY_MS, Event::Status { validator });
    }
    while let Some((&(time, _), _)) = world.events.first_key_value() {
        if time > world.sim.time_limit_ms || world.done() {
            break;
        }
        let Some((_, event)) = world.events.pop_first() else {
            break;
        };
        world.now = time;
        match event {
            Event::Deliver { to, message } => {
                if !world.nodes[to].up {
                    continue;
                }
                world.delivered += 1;
                if let Message::Proposal(proposal) = &message
                    && world.invalid.contains(&proposal.message.value.0)
                    && !world.sim.invalid_proposers.contains(&to)
                {
                    world.record(&format!("{to} refused an invalid block"));
                    world.refused += 1;
                    continue;
                }
                // A message a height ahead is buffered by the core (the last precommits are
                // usually on their way); two or more ahead, the validator fell behind.
                let ahead = message.height().0 > world.nodes[to].engine.height().0 + 1;
                world.record(&format!("deliver {to} {message:?}"));
                let outputs = world.nodes[to].engine.receive(message);
                world.apply(to, outputs);
                if ahead {
                    world.catch_up(to);
                }
            }
            Event::Timeout {
                validator,
                timeout,
                id,
            } => {
                let node = &mut world.nodes[validator];
                let Some(at) = node.timeouts.iter().position(|(i, _)| *i == id) else {
                    continue;
                };
                node.timeouts.remove(at);
                world.record(&format!("timeout {validator} {timeout:?}"));
                let outputs = world.nodes[validator].engine.timeout(timeout);
                world.apply(validator, outputs);
            }
            Event::Propose {
                validator,
                height,
                round,
            } => {
                if !world.nodes[validator].up {
                    continue;
                }
                let block = block_for(validator, height, round);
                if world.sim.invalid_proposers.contains(&validator) {
                    world.invalid.insert(block);
                }
                let outputs = world.nodes[validator].engine.propose(height, round, block);
                world.apply(validator, outputs);
            }
            Event::Status { validator } => {
                if world.nodes[validator].up {
                    world.catch_up(validator);
                }
                world.schedule(STATUS_EVERY_MS, Event::Status { validator });
            }
            Event::Crash { validator } => {
                world.record(&format!("crash {validator}"));
                let node = &mut world.nodes[validator];
                node.up = false;
                node.timeouts.clear();
            }
            Event::Restart { validator } => {
                world.record(&format!("restart {validator}"));
                world.nodes[validator].up = true;
                // What was applied is rebuilt from the committed blocks.
                world.nodes[validator].executed = (0, Hash::ZERO);
                world.nodes[validator].execute();
                let height = contiguous_height(&world.nodes[validator].committed) + 1;
                world.restart_engine(validator, Height(height));
                world.catch_up(validator);
            }
        }
    }
    Report {
        committed: world
            .nodes
            .iter()
            .map(|n| n.committed.iter().map(|(h, (b, _))| (*h, *b)).collect())
            .collect(),
        synced: world.synced.clone(),
        time_ms: world.now,
        messages_delivered: world.delivered,
        first_commit_ms: world.first_commit_ms.clone(),
        equivocations: world.equivocations,
        replays: world.replays,
        log_errors: world.log_errors,
        equivocators: world
            .evidence
            .keys()
            .fold(BTreeMap::new(), |mut caught, (height, offender)| {
                caught.entry(*offender).or_insert_with(Vec::new).push(*height);
                caught
            }),
        invalid_committed: world
            .nodes
            .iter()
            .flat_map(|n| n.committed.values())
            .filter(|(block, _)| world.invalid.contains(block))
            .count() as u64,
        refused_proposals: world.refused,
        state_roots: world.nodes.iter().map(|n| n.roots.clone()).collect(),
        executed: world.nodes.iter().map(|n| n.executed.0).collect(),
        trace: world.trace,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn check(report: &Report, heights: u64) {
        assert!(
            report.disagreements().is_empty(),
            "safety: {:?}",
            report.disagreements()
        );
        assert_eq!(
            report.equivocations, 0,
            "an honest validator signed two different votes"
        );
        assert_eq!(report.log_errors, 0, "every log entry encodes and decodes");
        assert!(
            report.root_disagreements().is_empty(),
            "state roots: {:?}",
            report.root_disagreements()
        );
        for (validator, committed) in report.committed.iter().enumerate() {
            assert_eq!(
                report.executed[validator],
                contiguous_height(committed),
                "validator {validator} applied every block it committed, in order"
            );
        }
        assert!(
            report.common_height() >= heights,
            "liveness: every validator should have committed {heights} blocks: {:?} at {} ms",
            report.committed.iter().map(contiguous_height).collect::<Vec<_>>(),
            report.time_ms
        );
    }

    #[test]
    fn the_checks_see_a_split_and_a_stall() {
        let block = |b: u8| Hash([b; 32]);
        let report = Report {
            committed: vec![
                BTreeMap::from([(1, block(1)), (2, block(2))]),
                BTreeMap::from([(1, block(1)), (2, block(9))]),
                BTreeMap::from([(1, block(1))]),
            ],
            synced: vec![0; 3],
            time_ms: 0,
            messages_delivered: 0,
            first_commit_ms: BTreeMap::new(),
            equivocations: 0,
            equivocators: BTreeMap::new(),
            invalid_committed: 0,
            refused_proposals: 0,
            replays: 0,
            log_errors: 0,
            state_roots: vec![
                BTreeMap::from([(1, block(11)), (2, block(12))]),
                BTreeMap::from([(1, block(11)), (2, block(19))]),
                BTreeMap::from([(1, block(11))]),
            ],
            executed: vec![2, 2, 1],
            trace: Hash::ZERO,
        };
        assert_eq!(report.disagreements(), [2]);
        assert_eq!(report.root_disagreements(), [2]);
        assert_eq!(report.common_height(), 1);
    }

    #[test]
    fn one_validator_commits_alone() {
        let report = run(Simulation::new(1, 1, 5));
        check(&report, 5);
    }

    #[test]
    fn four_validators_agree_on_a_calm_network() {
        let report = run(Simulation::new(7, 4, 10));
        check(&report, 10);
        assert_eq!(report.synced, [0, 0, 0, 0], "nobody fell behind");
    }

    #[test]
    fn the_same_seed_gives_the_same_run() {
        let mut sim = Simulation::new(42, 4, 5);
        sim.network.drop_per_mille = 100;
        sim.network.duplicate_per_mille = 50;
        let a = run(sim.clone());
        let b = run(sim.clone());
        assert_eq!(a.trace, b.trace);
        assert_eq!(a.committed, b.committed);
        sim.seed = 43;
        assert_ne!(run(sim).trace, a.trace, "another seed, another run");
    }
}

#[cfg(test)]
mod faults {
    use super::tests::check;
    use super::*;

    #[test]
    fn a_lossy_reordering_network_over_many_seeds() {
        for seed in 0..16 {
            let mut sim = Simulation::new(seed, 4, 5);
            sim.network = Network {
                delay_ms: (1, 120),
                drop_per_mille: 100,
                duplicate_per_mille: 50,
            };
            check(&run(sim), 5);
        }
    }

    #[test]
    fn a_partitioned_minority_catches_up_after_the_heal() {
        let mut sim = Simulation::new(3, 4, 12);
        sim.partitions.push(Partition {
            from_ms: 0,
            until_ms: 4_000,
            side: vec![3],
        });
        let report = run(sim);
        check(&report, 12);
        // The majority went on without it; the minority took those blocks from certificates.
        assert!(report.synced[3] > 0, "{:?}", report.synced);
        assert!(report.first_commit_ms[&1] < 4_000);
    }

    #[test]
    fn an_even_split_commits_nothing_until_it_heals() {
        let mut sim = Simulation::new(5, 4, 3);
        sim.partitions.push(Partition {
            from_ms: 0,
            until_ms: 6_000,
            side: vec![0, 1],
        });
        let report = run(sim);
        check(&report, 3);
        assert!(
            report.first_commit_ms[&1] >= 6_000,
            "{:?}",
            report.first_commit_ms
        );
    }

    #[test]
    fn quorums_are_of_stake_not_of_head_count() {
        // Three validators of four are up, but they hold only half the stake: nothing commits
        // until the big one is back.
        let mut sim = Simulation::new(9, 4, 3);
        sim.powers = vec![50, 20, 20, 10];
        sim.crashes.push(Crash {
            validator: 0,
            at_ms: 0,
            down_ms: 5_000,
        });
        let report = run(sim);
        check(&report, 3);
        assert!(
            report.first_commit_ms[&1] >= 5_000,
            "{:?}",
            report.first_commit_ms
        );
    }

    #[test]
    fn crashed_validators_restart_from_their_log_without_equivocating() {
        let mut replays = 0;
        for seed in 0..8 {
            let mut sim = Simulation::new(100 + seed, 4, 10);
            sim.network.drop_per_mille = 50;
            for validator in 0..4 {
                sim.crashes.push(Crash {
                    validator,
                    at_ms: 400 + 900 * validator as u64 + seed * 37,
                    down_ms: 300 + 200 * validator as u64,
                });
            }
            let report = run(sim);
            check(&report, 10);
            replays += report.replays;
        }
        assert!(replays > 0, "some crash came in the middle of a height");
    }
}

#[cfg(test)]
mod byzantine {
    use super::*;

    /// Safety and liveness while validators holding less than a third of the stake misbehave:
    /// one equivocates on every vote, or one is silent from the start.
    #[test]
    fn less_than_a_third_byzantine_cannot_split_or_stop_the_chain() {
        for seed in 0..8 {
            let mut sim = Simulation::new(200 + seed, 4, 6);
            sim.network.drop_per_mille = 30;
            sim.equivocators = vec![(seed % 4) as usize];
            let report = run(sim);
            assert!(
                report.disagreements().is_empty(),
                "seed {seed}: {:?}",
                report.disagreements()
            );
            assert_eq!(report.equivocations, 0, "honest validators stayed honest");
            assert!(report.common_height() >= 6, "seed {seed}: {:?}", report.committed);
            // The conflicting votes were caught, and only the equivocator's.
            assert_eq!(
                report.equivocators.len(),
                1,
                "seed {seed}: {:?}",
                report.equivocators
            );
        }
        // A proposer of invalid blocks: its rounds time out and others propose.
        for seed in 0..4 {
            let mut sim = Simulation::new(250 + seed, 4, 6);
            sim.invalid_proposers = vec![seed as usize];
            let report = run(sim);
            assert_eq!(report.invalid_committed, 0, "seed {seed}");
            assert!(report.refused_proposals > 0, "seed {seed}: it did propose");
            assert!(report.disagreements().is_empty(), "seed {seed}");
            assert!(report.common_height() >= 6, "seed {seed}: {:?}", report.committed);
        }
        let mut silent = Simulation::new(300, 4, 6);
        silent.crashes.push(Crash {
            validator: 2,
            at_ms: 0,
            down_ms: u64::MAX / 4,
        });
        let report = run(silent);
        assert!(report.disagreements().is_empty());
        let honest: Vec<u64> = [0, 1, 3]
            .iter()
            .map(|&i| contiguous_height(&report.committed[i]))
            .collect();
        assert!(honest.iter().all(|&h| h >= 6), "{honest:?}");
    }
}
