//! The node: admission, the log, block production, execution and the committed state.
//!
//! ```text
//! submit ─▶ admission ─▶ log (group commit) ─▶ consensus ─▶ block store (fsync) ─▶ executor ─▶ committed state
//!           decode, size,                       Tendermint     block + commit             receipts, waiters
//!           chain id, signature,                (consensus.rs) certificate
//!           SQL checks, nonce
//! ```
//!
//! Durability points: a transaction is acknowledged once its log entry is fsynced; a block is
//! committed once its record in the block store is fsynced. Everything else (the state, the
//! receipts, the pending nonces) is rebuilt from those two files on start.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chainql::wire::{Block, LogRange, Receipt, SignedTransaction, Transaction};
use chainql::wire::{Evidence, ValidatorPower};
use chainql::{Address, DecodedTransaction, Hash, Keypair, PublicKey, TransactionLimits};
use chainql_consensus::tendermint::codec::PROPOSED_BLOCK_BYTES_MAX;
use chainql_consensus::tendermint::{ChainContext, ValidatorSet};
use chainql_consensus::{
    BlockProposal, BlockStore, Equivocation, Genesis, Parent, check_evidence, verify_block,
};
use chainql_executor::{
    BlockContext, ExecutableTransaction, Executor, Offence, QueryLimits, QueryResult, State, Validators,
};
use chainql_sequencer::{
    FsStorage, Log, LogConfig, PartitionId, Position, Storage, Subscription, partition_of,
};
use prost::Message;
use tokio::sync::{Notify, oneshot, watch};

mod consensus;
mod verifier;

use crate::Client;
use crate::checkpoints::{Checkpoints, StoredReceipts};
use crate::error::{Error, Result};

/// How a node runs. Every field has a default and a command-line flag.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    /// The shortest time between two blocks.
    pub block_interval_ms: u64,
    /// The most transactions in one block.
    pub block_transactions_max: usize,
    pub transaction_limits: TransactionLimits,
    /// Partitions DataFusion uses for queries (execution of blocks always uses one).
    pub query_partitions: usize,
    pub query_limits: QueryLimits,
    /// Size at which a log segment is closed.
    pub log_segment_bytes_max: u64,
    /// The longest a log partition's writer collects appends into one group commit.
    pub log_group_commit_wait_ms: u64,
    /// Recent log entries kept in memory per partition, in bytes.
    pub log_tail_bytes_max: usize,
    /// Log partitions of a chain this node creates (`init_data_dir`); an existing chain keeps
    /// the number its genesis fixed.
    pub log_partitions: u32,
    /// The gas price of a chain this node creates (`init_data_dir`); an existing chain keeps its
    /// genesis's.
    pub gas_price: u64,
    /// The staking epoch length of a chain this node creates (`init_data_dir`); an existing
    /// chain keeps its genesis's.
    pub epoch_blocks: u64,
    /// Committed versions kept in memory for `AS OF BLOCK` queries (the latest included); an
    /// older version is rebuilt from its lineage on demand.
    pub snapshots_kept: u64,
    /// A checkpoint of the state is written every this many blocks (0: never). A restart loads
    /// the newest one and re-executes only the blocks after it.
    pub checkpoint_interval: u64,
    /// Checkpoints kept on disk; older ones are deleted.
    pub checkpoints_kept: usize,
    /// Delete log segments wholly below the newest checkpoint once it is written. Off by
    /// default: the log then keeps every entry for `SubscribeLog` readers starting early.
    pub log_retention: bool,
    /// The gRPC addresses of the other validators (e.g. `http://127.0.0.1:50052`): consensus
    /// messages and admitted transactions go to them, and missed blocks come from them.
    pub peers: Vec<String>,
}

impl NodeConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> NodeConfig {
        NodeConfig {
            data_dir: data_dir.into(),
            block_interval_ms: 10,
            block_transactions_max: 5_000,
            transaction_limits: TransactionLimits::default(),
            query_partitions: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            query_limits: QueryLimits::default(),
            log_segment_bytes_max: 64 << 20,
            log_group_commit_wait_ms: 5,
            log_tail_bytes_max: 64 << 20,
            log_partitions: 4,
            gas_price: 0,
            epoch_blocks: chainql_consensus::DEFAULT_EPOCH_BLOCKS,
            snapshots_kept: 128,
            checkpoint_interval: 1_000,
            checkpoints_kept: 2,
            log_retention: false,
            peers: Vec::new(),
        }
    }

    pub fn genesis_path(&self) -> PathBuf {
        self.data_dir.join("genesis.json")
    }

    pub fn validator_key_path(&self) -> PathBuf {
        self.data_dir.join("keys").join("validator.key")
    }

    fn validate(&self) -> Result<()> {
        if self.block_transactions_max == 0 || self.block_transactions_max > 1_000_000 {
            return Err(Error::Config(
                "block_transactions_max must be between 1 and 1,000,000".into(),
            ));
        }
        if self.block_interval_ms > 60_000 {
            return Err(Error::Config("block_interval_ms must be at most 60,000".into()));
        }
        if self.snapshots_kept == 0 || self.snapshots_kept > 1_000_000 {
            return Err(Error::Config(
                "snapshots_kept must be between 1 and 1,000,000".into(),
            ));
        }
        if self.checkpoints_kept == 0 || self.checkpoints_kept > 1_000 {
            return Err(Error::Config(
                "checkpoints_kept must be between 1 and 1,000".into(),
            ));
        }
        if self.log_group_commit_wait_ms > 1_000 {
            return Err(Error::Config(
                "log_group_commit_wait_ms must be at most 1,000".into(),
            ));
        }
        if self.peers.len() > PEERS_MAX {
            return Err(Error::Config(format!("at most {PEERS_MAX} peers")));
        }
        for peer in &self.peers {
            if !(peer.starts_with("http://") || peer.starts_with("https://")) {
                return Err(Error::Config(format!(
                    "peer {peer:?}: expected a URL such as http://127.0.0.1:50051"
                )));
            }
        }
        Ok(())
    }
}

/// Creates a data directory for a one-validator chain: a validator key and a genesis that gives
/// each of `accounts` its balance. Leaves an existing directory as it is.
pub fn init_data_dir(config: &NodeConfig, chain_id: &str, accounts: &[(Address, u64)]) -> Result<Genesis> {
    let genesis_path = config.genesis_path();
    if genesis_path.exists() {
        return Ok(Genesis::read(&genesis_path)?);
    }
    let (validator, _) = Keypair::load_or_create(&config.validator_key_path())?;
    let mut balances = accounts.to_vec();
    if !balances.iter().any(|(a, _)| *a == validator.address()) {
        balances.push((validator.address(), 0));
    }
    let genesis_time_ms = now_ms();
    let mut genesis =
        Genesis::single_validator(chain_id, genesis_time_ms, &validator.public_key(), &balances);
    genesis.log_partitions = config.log_partitions;
    genesis.gas_price = config.gas_price;
    genesis.epoch_blocks = config.epoch_blocks;
    genesis.validate()?;
    genesis.write(&genesis_path)?;
    Ok(genesis)
}

/// The most peers a validator connects to.
const PEERS_MAX: usize = 256;
/// The most transactions one gossip message may carry.
const GOSSIP_TRANSACTIONS_MAX: usize = 10_000;
/// Gossip messages waiting for admission before new ones are refused.
const GOSSIP_QUEUE: usize = 256;
/// How far ahead of this node's clock a proposed block's timestamp may be.
const CLOCK_DRIFT_MAX_MS: u64 = 5_000;

/// Log entries read at a time while looking for the first one a new block did not settle.
const SETTLED_READ: usize = 32;

/// Room left in a proposed block for its header, signature and certificate.
const BLOCK_ENVELOPE_BYTES: usize = 64 << 10;

/// Runs blocking file I/O without stalling the runtime's other tasks where the runtime allows it.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How the node came back at its last start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// The checkpoint the state was loaded from, if any.
    pub checkpoint: Option<u64>,
    /// Blocks re-executed after it.
    pub blocks_replayed: u64,
}

/// What the node reports about itself.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub chain_id: String,
    pub height: u64,
    pub block_hash: Hash,
    pub state_root: Hash,
    pub block_time_ms: u64,
    pub validator: Address,
    pub pending_transactions: u64,
    /// The partitions of the chain's log.
    pub log_partitions: u32,
}

/// Nonces of senders with transactions admitted but not yet committed.
#[derive(Debug, Default)]
struct Admission {
    next_nonces: HashMap<Address, u64>,
}

impl Admission {
    fn next_nonce(&self, address: &Address, committed: u64) -> u64 {
        self.next_nonces.get(address).copied().unwrap_or(0).max(committed)
    }
}

type Waiters = HashMap<Hash, Vec<(u64, oneshot::Sender<Receipt>)>>;

struct Inner {
    config: NodeConfig,
    genesis: Genesis,
    validator: Keypair,
    /// Signatures of consensus messages name this chain.
    ctx: ChainContext,
    log: Arc<Log>,
    executor: Executor,
    committed: watch::Sender<Arc<State>>,
    /// The height whose block, state and receipts are all visible: what chain followers wait on
    /// (the state becomes visible a moment before the receipts).
    published: watch::Sender<u64>,
    /// The state before block 1: where replays and rebuilds without a checkpoint start.
    genesis_state: Arc<State>,
    /// The last `snapshots_kept` committed versions by height, the latest included.
    snapshots: Mutex<BTreeMap<u64, Arc<State>>>,
    /// The version last rebuilt from its lineage (older than every kept snapshot). The lock also
    /// makes rebuilds run one at a time.
    rebuilt: tokio::sync::Mutex<Option<Arc<State>>>,
    /// Pending nonces, one lock per log partition: a sender's transactions all go to one
    /// partition, so admissions to different partitions never wait for each other.
    admission: Vec<tokio::sync::Mutex<Admission>>,
    /// Receipt of every committed transaction, rebuilt by replay (and read from a checkpoint).
    receipts: Arc<Mutex<HashMap<Hash, Receipt>>>,
    checkpoints: Checkpoints,
    /// Set while a checkpoint is being written in the background.
    checkpointing: Arc<AtomicBool>,
    waiters: Mutex<Waiters>,
    next_waiter: AtomicU64,
    blocks: Mutex<BlockStore>,
    /// Per partition, the first log entry not yet in a block.
    next_seqnos: Vec<AtomicU64>,
    stopping: AtomicBool,
    stop: Notify,
    /// Set when the block producer stopped on an error; the node then refuses new work.
    halted: Mutex<Option<String>>,
    metrics: Arc<crate::metrics::Metrics>,
    /// Transactions this node admitted (signature and statements checked) and has not seen
    /// committed, by hash, with their signatures: a proposal holding one with the same
    /// signature need not check it again (the hash does not cover the signature).
    checked: Mutex<HashMap<Hash, Vec<u8>>>,
    /// Checks the signatures of transactions admitted one at a time, in batches.
    verifier: verifier::Verifier,
    /// The other validators.
    peers: crate::validator::Peers,
    /// Messages from the other validators, for the consensus task.
    inbox: tokio::sync::mpsc::Sender<consensus::Inbound>,
    /// Transactions other validators gossiped, for the admission worker.
    gossiped: tokio::sync::mpsc::Sender<Vec<SignedTransaction>>,
    /// Conflicting votes this validator saw and no block has punished yet, for its next
    /// proposals (at most [`EVIDENCE_KEPT`]).
    evidence: Mutex<Vec<(Equivocation, Evidence)>>,
    /// Set to stop copying the first peer's log, when this node takes its log over or stops.
    replicating: watch::Sender<bool>,
    /// The task that copies it.
    follower: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// While the log is a replica: the first peer, which admits the transactions this node is
    /// sent.
    leader_client: tokio::sync::Mutex<Option<Client>>,
    /// Per partition, the turn to hand a transaction on to that peer.
    forwarding: Vec<tokio::sync::Mutex<()>>,
}

/// The largest log record for transactions of at most `transaction_bytes_max`: the signed
/// transaction and its envelope.
pub(crate) fn log_record_bytes_max(transaction_bytes_max: usize) -> usize {
    transaction_bytes_max + 1024
}

/// How long a replica node waits for the node whose log it copies to admit a transaction.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// Pieces of evidence a validator keeps for its proposals.
const EVIDENCE_KEPT: usize = 256;

/// A validator set of the chain's state, as Tendermint weighs it.
pub(crate) fn consensus_set(validators: &Validators) -> Result<ValidatorSet> {
    let members = validators
        .iter()
        .map(|v| {
            chainql_consensus::tendermint::Validator::new(v.public_key, v.power)
                .ok_or_else(|| Error::Corrupt(format!("validator {} has an invalid key", v.address)))
        })
        .collect::<Result<Vec<_>>>()?;
    ValidatorSet::new(members)
        .ok_or_else(|| Error::Corrupt("a validator set is empty, has no power, or a duplicate".into()))
}

/// A validator set of the chain's state, as a block announces it.
fn announced(validators: Option<&Validators>) -> Vec<ValidatorPower> {
    validators.map_or_else(Vec::new, |set| {
        set.iter()
            .map(|v| ValidatorPower {
                public_key: v.public_key.to_vec(),
                power: v.power,
            })
            .collect()
    })
}

/// A block being forged: everything but its parts, and which of its transactions belong to
/// which log partition (consecutive ranges, in partition order).
pub(crate) struct Draft {
    pub(crate) proposal: BlockProposal,
    pub(crate) groups: Vec<(u32, std::ops::Range<usize>)>,
}

/// Sharded forging: the validator that checks and signs `partition`'s part of the block at
/// `height`. The assignment rotates with the height, so every validator takes its turn at every
/// partition.
pub(crate) fn assignee(set: &Validators, height: u64, partition: u32) -> &chainql_executor::ValidatorPower {
    &set[((height + u64::from(partition)) % set.len() as u64) as usize]
}

/// The log partition of a transaction's sender, if the transaction decodes.
fn sender_partition(signed: &SignedTransaction, partitions: u32) -> Option<u32> {
    let body = Transaction::decode(signed.transaction.as_slice()).ok()?;
    let key: &[u8; 32] = body.sender.as_slice().try_into().ok()?;
    Some(partition_of(&Address::of_public_key(key).0, partitions).0)
}

/// Whether `key` is a validator of `height`, as `state` (the version before it) knows.
fn is_validator_at(state: &State, height: u64, key: &PublicKey) -> bool {
    let address = key.address();
    state
        .validators_for(height)
        .is_some_and(|set| set.iter().any(|v| v.address == address))
}

/// A running node. Cheap to clone; the last clone to be dropped does not stop it: call
/// [`Node::shutdown`].
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
    recovery: Recovery,
    producer: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("data_dir", &self.inner.config.data_dir)
            .field("height", &self.state().height())
            .finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded maps are updated by single inserts and removes; a panic elsewhere cannot leave
    // them half-changed, so a poisoned lock is still consistent.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The signed transaction of log entry `seqno` of `partition`. Entries were admitted, so a
/// failure here means the log was damaged.
fn logged(partition: PartitionId, seqno: u64, payload: &[u8]) -> Result<SignedTransaction> {
    SignedTransaction::decode(payload)
        .map_err(|e| Error::Corrupt(format!("log entry {}/{seqno} does not decode: {e}", partition.0)))
}

/// True when `state` has settled `signed`: its sender has used its nonce, so some block
/// committed it (from this log or, through gossip, from another validator's).
fn is_settled(state: &State, signed: &SignedTransaction) -> Result<bool> {
    let (transaction, sender) = executable(signed)?;
    Ok(transaction.nonce < state.account(&sender).nonce)
}

/// Reads the transaction a block or log entry carries. These were admitted, so a failure here
/// means the file was damaged.
fn executable(signed: &SignedTransaction) -> Result<(ExecutableTransaction, Address)> {
    let body = Transaction::decode(signed.transaction.as_slice())
        .map_err(|e| Error::Corrupt(format!("a stored transaction does not decode: {e}")))?;
    // Admission checked the key; committed bytes need its address (and `STAKE` the key).
    let sender_key: [u8; 32] = body.sender.as_slice().try_into().map_err(|_| {
        Error::Corrupt(format!(
            "a stored transaction's sender is {} bytes",
            body.sender.len()
        ))
    })?;
    let sender = Address::of_public_key(&sender_key);
    Ok((
        ExecutableTransaction {
            hash: chainql::transaction_hash(&signed.transaction),
            sender,
            sender_key: Some(sender_key),
            nonce: body.nonce,
            gas_limit: body.gas_limit,
            statements: body.statements,
        },
        sender,
    ))
}

impl Node {
    /// Opens the node in `config.data_dir` (which `init_data_dir` created), replays its blocks
    /// and starts producing blocks.
    pub async fn open(config: NodeConfig) -> Result<Node> {
        Node::open_with_log_storage(config, Arc::new(FsStorage)).await
    }

    /// Opens the node with its log on `storage` instead of the file system: how tests put a
    /// fault-injecting disk under the log.
    pub async fn open_with_log_storage(config: NodeConfig, storage: Arc<dyn Storage>) -> Result<Node> {
        config.validate()?;
        let genesis = Genesis::read(&config.genesis_path()).map_err(|e| {
            Error::Config(format!(
                "{e} (create the data directory with `chainql init --data-dir {}`)",
                config.data_dir.display()
            ))
        })?;
        let validator = Keypair::read_file(&config.validator_key_path())?;
        let genesis_validators: Vec<(PublicKey, u64)> = genesis
            .validators()?
            .into_iter()
            .map(|v| (v.public_key, v.stake))
            .collect();
        // A node outside the genesis set follows the chain through its peers (and may join the
        // set by staking); alone, it could never commit a block.
        if config.peers.is_empty()
            && !genesis_validators
                .iter()
                .any(|(key, _)| *key == validator.public_key())
        {
            return Err(Error::Config(format!(
                "the key in {} is not a validator of chain {}, and no peers are configured to follow",
                config.validator_key_path().display(),
                genesis.chain_id
            )));
        }
        let log_dir = config.data_dir.join("log");
        let log_config = LogConfig {
            partitions: genesis.log_partitions,
            segment_bytes_max: config.log_segment_bytes_max,
            record_bytes_max: log_record_bytes_max(config.transaction_limits.transaction_bytes_max),
            group_commit_wait_max: Duration::from_millis(config.log_group_commit_wait_ms),
            tail_bytes_max: config.log_tail_bytes_max,
            retention: config.log_retention,
            ..LogConfig::default()
        };
        // A genesis validator leads its own log. Any other node keeps its log as a replica of
        // its first peer's until it joins the validator set, and then takes it over
        // (`Inner::take_over_log`).
        let in_genesis = genesis_validators
            .iter()
            .any(|(key, _)| *key == validator.public_key());
        let log = if in_genesis {
            Log::open_with(storage, &log_dir, log_config, &validator.address().0)?
        } else {
            let log = Log::open_replica(storage, &log_dir, log_config)?;
            // Partitions this node took over before a restart lead again before the replay,
            // which then marks their snapshots as a leader's.
            let me = validator.address().0;
            for p in 0..log.partitions() {
                let partition = PartitionId(p);
                if log
                    .epochs(partition)?
                    .last()
                    .is_some_and(|epoch| epoch.leader == me)
                {
                    log.resume_lead(partition, &me).await?;
                }
            }
            log
        };
        let partitions = genesis.log_partitions as usize;
        let blocks = BlockStore::open(&config.data_dir.join("blocks"))?;
        let executor = Executor::new(config.query_partitions, config.query_limits)?
            .with_gas_price(genesis.gas_price)
            .with_epoch_blocks(genesis.epoch_blocks);
        let genesis_state = State::genesis_with_validators(
            genesis.hash(),
            genesis.genesis_time_ms,
            &genesis.accounts()?,
            &genesis_validators,
        )?;
        let genesis_state = Arc::new(genesis_state);
        let (committed, _) = watch::channel(Arc::clone(&genesis_state));
        let checkpoints = Checkpoints::new(config.data_dir.join("checkpoints"), config.checkpoints_kept);
        let peers = config.peers.clone();
        let (inbox, received) = tokio::sync::mpsc::channel(consensus::INBOX);
        let (gossiped, to_admit) = tokio::sync::mpsc::channel(GOSSIP_QUEUE);
        let (replicating, replication_stop) = watch::channel(false);
        let inner = Arc::new(Inner {
            config,
            ctx: ChainContext::new(genesis.chain_id.clone()),
            genesis,
            validator,
            log: Arc::new(log),
            executor,
            committed,
            published: watch::channel(0).0,
            snapshots: Mutex::new(BTreeMap::from([(0, Arc::clone(&genesis_state))])),
            genesis_state,
            rebuilt: tokio::sync::Mutex::new(None),
            admission: (0..partitions)
                .map(|_| tokio::sync::Mutex::new(Admission::default()))
                .collect(),
            receipts: Arc::new(Mutex::new(HashMap::new())),
            checkpoints,
            checkpointing: Arc::new(AtomicBool::new(false)),
            waiters: Mutex::new(HashMap::new()),
            next_waiter: AtomicU64::new(0),
            blocks: Mutex::new(blocks),
            next_seqnos: (0..partitions).map(|_| AtomicU64::new(1)).collect(),
            stopping: AtomicBool::new(false),
            stop: Notify::new(),
            halted: Mutex::new(None),
            metrics: Arc::new(crate::metrics::Metrics::default()),
            checked: Mutex::new(HashMap::new()),
            verifier: verifier::Verifier::start(std::thread::available_parallelism().map_or(1, |n| n.get())),
            peers: crate::validator::Peers::start(&peers),
            inbox,
            gossiped,
            evidence: Mutex::new(Vec::new()),
            replicating,
            follower: tokio::sync::Mutex::new(None),
            leader_client: tokio::sync::Mutex::new(None),
            forwarding: (0..partitions).map(|_| tokio::sync::Mutex::new(())).collect(),
        });
        let recovery = inner.replay().await?;
        inner.recover_pending().await?;
        if inner.log.is_replica() {
            // Taken over only partly before a restart (a crash stopped it halfway), or joined
            // the set while it was down: the log is this node's now.
            let partly = (0..inner.log.partitions())
                .any(|p| !inner.log.is_replica_partition(PartitionId(p)).unwrap_or(true));
            let state = inner.state();
            if partly || is_validator_at(&state, state.height() + 1, &inner.validator.public_key()) {
                inner.take_over_log().await?;
            } else {
                let task = tokio::spawn(Arc::clone(&inner).follow_leader_log(replication_stop));
                *inner.follower.lock().await = Some(task);
            }
        }
        let (consensus, outputs) = consensus::Consensus::open(Arc::clone(&inner), received)?;
        let producer = tokio::spawn(consensus.run(outputs));
        let node = Node {
            inner,
            recovery,
            producer: Arc::new(Mutex::new(Some(producer))),
        };
        tokio::spawn(node.clone().admit_gossip(to_admit));
        Ok(node)
    }

    pub fn chain_id(&self) -> &str {
        &self.inner.genesis.chain_id
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.config.data_dir
    }

    /// Writes a checkpoint of the latest committed state now (whatever the interval), and
    /// returns its height.
    pub async fn write_checkpoint(&self) -> Result<u64> {
        /// Clears the flag however the write ends, the caller giving up included.
        struct Writing<'a>(&'a AtomicBool);
        impl Drop for Writing<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        // One checkpoint is written at a time: wait for a background one to finish.
        while self.inner.checkpointing.swap(true, Ordering::AcqRel) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _writing = Writing(&self.inner.checkpointing);
        let state = self.state();
        let height = state.height();
        let checkpoints = self.inner.checkpoints.clone();
        let receipts = Arc::clone(&self.inner.receipts);
        tokio::task::spawn_blocking(move || write_checkpoint(&checkpoints, &receipts, &state))
            .await
            .map_err(|e| Error::Corrupt(format!("writing checkpoint {height}: {e}")))??;
        Ok(height)
    }

    /// How the node came back at start: from which checkpoint, re-executing how many blocks.
    pub fn recovery(&self) -> Recovery {
        self.recovery
    }

    /// The latest committed state.
    pub fn state(&self) -> Arc<State> {
        self.inner.committed.borrow().clone()
    }

    /// A receiver that changes whenever a block is committed.
    pub fn committed(&self) -> watch::Receiver<Arc<State>> {
        self.inner.committed.subscribe()
    }

    pub fn status(&self) -> NodeStatus {
        let state = self.state();
        let pending = (0..self.inner.log.partitions())
            .map(|p| {
                let last = self.inner.log.last_seqno(PartitionId(p)).unwrap_or(0);
                let next = self.inner.next_seqnos[p as usize].load(Ordering::Acquire);
                (last + 1).saturating_sub(next)
            })
            .sum();
        NodeStatus {
            chain_id: self.inner.genesis.chain_id.clone(),
            height: state.height(),
            block_hash: state.block_hash(),
            state_root: state.root(),
            block_time_ms: state.timestamp_ms(),
            validator: self.inner.validator.address(),
            pending_transactions: pending,
            log_partitions: self.inner.log.partitions(),
        }
    }

    /// The nonce the node expects next from `address`, counting admitted transactions.
    pub async fn next_nonce(&self, address: &Address) -> u64 {
        let committed = self.state().account(address).nonce;
        let partition = self.inner.partition_of(address);
        self.inner.admission[partition.0 as usize]
            .lock()
            .await
            .next_nonce(address, committed)
    }

    /// Admits a transaction: checks it, appends it to the log, and returns its hash once the log
    /// entry is durable. Nothing refused reaches the log.
    pub async fn submit(&self, signed: SignedTransaction) -> Result<Hash> {
        if self.inner.log.is_replica() {
            let result = self.forward(signed).await;
            self.count_admission(&result);
            return result;
        }
        let copy = (!self.inner.peers.is_empty()).then(|| signed.clone());
        let result = self.admit(signed).await;
        self.count_admission(&result);
        if let (Ok(_), Some(copy)) = (&result, copy) {
            self.inner.peers.gossip(vec![copy]);
        }
        result
    }

    /// Checks what a replica node can check on its own, then hands the transaction to the
    /// node whose log it copies.
    async fn forward(&self, signed: SignedTransaction) -> Result<Hash> {
        let decoded = self.check_alone(signed).await?;
        self.inner.forward(decoded.signed).await
    }

    /// The checks a transaction gets on its own: a running node, its size, chain and
    /// signature, and statements that parse.
    async fn check_alone(&self, signed: SignedTransaction) -> Result<DecodedTransaction> {
        self.inner.check_running()?;
        let limits = &self.inner.config.transaction_limits;
        let decoded = DecodedTransaction::from_signed(signed, limits, &self.inner.genesis.chain_id)?;
        let decoded = self.inner.verifier.verify(decoded).await?;
        for statement in &decoded.body.statements {
            chainql::sql::parse_transaction_statement(statement)?;
        }
        Ok(decoded)
    }

    fn count_admission(&self, result: &Result<Hash>) {
        let metrics = &self.inner.metrics;
        match result {
            Ok(_) => {
                metrics.transactions_admitted.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => metrics.refused(error),
        }
    }

    async fn admit(&self, signed: SignedTransaction) -> Result<Hash> {
        let decoded = self.check_alone(signed).await?;
        self.inner.check_gas_funds(&self.state(), &decoded)?;
        let payload = decoded.signed.encode_to_vec();
        let partition = self.inner.partition_of(&decoded.address);
        let pending = {
            let mut admission = self.inner.admission[partition.0 as usize].lock().await;
            let committed = self.state().account(&decoded.address).nonce;
            let expected = admission.next_nonce(&decoded.address, committed);
            if decoded.body.nonce != expected {
                return Err(Error::Nonce {
                    found: decoded.body.nonce,
                    expected,
                });
            }
            // Queued under the admission lock, so one sender's transactions enter the log in
            // nonce order; the fsync is awaited outside it, so admissions overlap.
            let pending = self.inner.log.enqueue(vec![(partition, payload)]).await?;
            admission.next_nonces.insert(decoded.address, expected + 1);
            pending
        };
        pending.durable().await?;
        if !self.inner.peers.is_empty() {
            lock(&self.inner.checked).insert(decoded.hash, decoded.signed.signature);
        }
        Ok(decoded.hash)
    }

    /// Admits many transactions at once: signatures are checked in the verifier's batches
    /// (ed25519 batch verification, about twice as fast as one by one, on every core), and each
    /// log partition's transactions enter the log in one request, under that partition's lock
    /// only. Returns one result
    /// per transaction, in order; a refused transaction does not hold back the others.
    pub async fn submit_many(&self, transactions: Vec<SignedTransaction>) -> Vec<Result<Hash>> {
        if self.inner.log.is_replica() {
            let mut results = Vec::with_capacity(transactions.len());
            for signed in transactions {
                let result = self.forward(signed).await;
                self.count_admission(&result);
                results.push(result);
            }
            return results;
        }
        let copies = (!self.inner.peers.is_empty()).then(|| transactions.clone());
        let results = self.admit_many(transactions).await;
        for result in &results {
            self.count_admission(result);
        }
        if let Some(copies) = copies {
            let admitted = copies
                .into_iter()
                .zip(&results)
                .filter(|(_, r)| r.is_ok())
                .map(|(t, _)| t)
                .collect();
            self.inner.peers.gossip(admitted);
        }
        results
    }

    /// Acts on a message from another validator: transactions go through admission into this
    /// node's log (refusals are expected: a transaction may already be here or committed);
    /// consensus messages go to the consensus task, dropped when its queue is full. An error
    /// says why the message was refused.
    pub async fn receive_from_peer(
        &self,
        message: crate::validator::proto::PeerMessage,
    ) -> std::result::Result<(), String> {
        use crate::validator::Received;
        match crate::validator::decode(message)? {
            Received::Transactions(transactions) => {
                if self.inner.log.is_replica() {
                    // A replica takes transactions through its leader's log.
                    return Ok(());
                }
                if transactions.len() > GOSSIP_TRANSACTIONS_MAX {
                    return Err(format!(
                        "{} transactions in one message; at most {GOSSIP_TRANSACTIONS_MAX}",
                        transactions.len()
                    ));
                }
                // Admitted by a worker, so that the peer's stream goes on to its consensus
                // messages meanwhile.
                self.inner.gossiped.try_send(transactions).map_err(|e| match e {
                    tokio::sync::mpsc::error::TrySendError::Full(_) => "the gossip queue is full".to_string(),
                    tokio::sync::mpsc::error::TrySendError::Closed(_) => "the node is stopping".to_string(),
                })
            }
            Received::Consensus(message) => self.to_consensus(consensus::Inbound::Message(message)),
            Received::Proposal(proposal, block) => {
                self.to_consensus(consensus::Inbound::Proposal(proposal, block))
            }
        }
    }

    /// Sharded forging: checks and signs a part of the next block for its proposer.
    pub(crate) async fn forge_part(
        &self,
        request: crate::validator::proto::ForgeRequest,
    ) -> std::result::Result<chainql::wire::BlockPart, String> {
        self.inner.check_running().map_err(|e| e.to_string())?;
        self.inner.forge_part(request).await
    }

    /// The gossip admission worker: admits what other validators passed on, as batches, until
    /// the node stops.
    async fn admit_gossip(self, mut to_admit: tokio::sync::mpsc::Receiver<Vec<SignedTransaction>>) {
        while let Some(mut transactions) = to_admit.recv().await {
            if self.inner.stopping.load(Ordering::Acquire) {
                return;
            }
            while transactions.len() < GOSSIP_TRANSACTIONS_MAX {
                match to_admit.try_recv() {
                    Ok(more) => transactions.extend(more),
                    Err(_) => break,
                }
            }
            let results = self.admit_many(transactions).await;
            let admitted = results.iter().filter(|r| r.is_ok()).count();
            self.inner
                .metrics
                .transactions_gossiped
                .fetch_add(admitted as u64, Ordering::Relaxed);
        }
    }

    fn to_consensus(&self, inbound: consensus::Inbound) -> std::result::Result<(), String> {
        self.inner.inbox.try_send(inbound).map_err(|e| match e {
            tokio::sync::mpsc::error::TrySendError::Full(_) => "the consensus queue is full".to_string(),
            tokio::sync::mpsc::error::TrySendError::Closed(_) => "consensus has stopped".to_string(),
        })
    }

    async fn admit_many(&self, transactions: Vec<SignedTransaction>) -> Vec<Result<Hash>> {
        if let Err(error) = self.inner.check_running() {
            let message = error.to_string();
            return transactions
                .iter()
                .map(|_| Err(Error::Halted(message.clone())))
                .collect();
        }
        let count = transactions.len();
        let mut results: Vec<Option<Result<Hash>>> = (0..count).map(|_| None).collect();
        let partitions = self.inner.log.partitions() as usize;
        let limits = self.inner.config.transaction_limits;
        let mut decoded = Vec::with_capacity(count);
        let mut indices = Vec::with_capacity(count);
        for (i, signed) in transactions.into_iter().enumerate() {
            match DecodedTransaction::from_signed(signed, &limits, &self.inner.genesis.chain_id) {
                Ok(transaction) => {
                    decoded.push(transaction);
                    indices.push(i);
                }
                Err(error) => results[i] = Some(Err(error.into())),
            }
        }
        // Stateless checks: signatures in the verifier's batches, then the statements.
        let mut admitted: Vec<Vec<(usize, DecodedTransaction)>> =
            (0..partitions).map(|_| Vec::new()).collect();
        let verdicts = self.inner.verifier.verify_many(decoded).await;
        for (i, verdict) in indices.into_iter().zip(verdicts) {
            let checked = verdict.and_then(|transaction| {
                for statement in &transaction.body.statements {
                    chainql::sql::parse_transaction_statement(statement)?;
                }
                Ok(transaction)
            });
            match checked {
                Ok(transaction) => {
                    admitted[self.inner.partition_of(&transaction.address).0 as usize].push((i, transaction))
                }
                Err(error) => results[i] = Some(Err(error)),
            }
        }
        // Nonces and the log, partition by partition.
        let mut pending = Vec::new();
        for accepted in admitted {
            let Some((_, first)) = accepted.first() else {
                continue;
            };
            let partition = self.inner.partition_of(&first.address);
            let mut admission = self.inner.admission[partition.0 as usize].lock().await;
            let state = self.state();
            let mut entries = Vec::new();
            let mut indices = Vec::new();
            let mut reserved: Vec<(Address, u64)> = Vec::new();
            for (i, decoded) in accepted {
                if let Err(error) = self.inner.check_gas_funds(&state, &decoded) {
                    results[i] = Some(Err(error));
                    continue;
                }
                let committed = state.account(&decoded.address).nonce;
                let reserved_next = reserved
                    .iter()
                    .rev()
                    .find(|(a, _)| *a == decoded.address)
                    .map(|(_, n)| *n);
                let expected =
                    reserved_next.unwrap_or_else(|| admission.next_nonce(&decoded.address, committed));
                if decoded.body.nonce != expected {
                    results[i] = Some(Err(Error::Nonce {
                        found: decoded.body.nonce,
                        expected,
                    }));
                    continue;
                }
                reserved.push((decoded.address, expected + 1));
                entries.push((partition, decoded.signed.encode_to_vec()));
                indices.push((i, decoded.hash, decoded.signed.signature.clone()));
            }
            match self.inner.log.enqueue(entries).await {
                Ok(queued) => {
                    for (address, next) in reserved {
                        admission.next_nonces.insert(address, next);
                    }
                    pending.push((queued, indices));
                }
                Err(error) => {
                    let message = error.to_string();
                    for (i, _, _) in indices {
                        results[i] = Some(Err(Error::Halted(message.clone())));
                    }
                }
            }
        }
        for (queued, indices) in pending {
            match queued.durable().await {
                Ok(_) => {
                    let mut checked = (!self.inner.peers.is_empty()).then(|| lock(&self.inner.checked));
                    for (i, hash, signature) in indices {
                        if let Some(checked) = checked.as_mut() {
                            checked.insert(hash, signature);
                        }
                        results[i] = Some(Ok(hash));
                    }
                }
                Err(error) => {
                    let message = error.to_string();
                    for (i, _, _) in indices {
                        results[i] = Some(Err(Error::Halted(message.clone())));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Halted("admission was interrupted".into()))))
            .collect()
    }

    /// Admits a transaction and waits until it is committed; returns its receipt.
    pub async fn submit_and_wait(&self, signed: SignedTransaction) -> Result<Receipt> {
        self.submit_pending(signed).await?.await
    }

    /// Admits a transaction; once it is in the log, returns a future of its receipt. Between the
    /// two the sender may sign its next transaction: the node already counts this one's nonce.
    pub async fn submit_pending(
        &self,
        signed: SignedTransaction,
    ) -> Result<impl Future<Output = Result<Receipt>> + Send + use<>> {
        let admitted = Instant::now();
        let hash = chainql::transaction_hash(&signed.transaction);
        let id = self.inner.next_waiter.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        lock(&self.inner.waiters)
            .entry(hash)
            .or_default()
            .push((id, sender));
        if let Err(error) = self.submit(signed).await {
            let mut waiters = lock(&self.inner.waiters);
            if let Some(list) = waiters.get_mut(&hash) {
                list.retain(|(other, _)| *other != id);
                if list.is_empty() {
                    waiters.remove(&hash);
                }
            }
            return Err(error);
        }
        let metrics = Arc::clone(&self.inner.metrics);
        Ok(async move {
            let receipt = receiver.await.map_err(|_| Error::ShuttingDown)?;
            metrics.commit_latency.observe(admitted.elapsed());
            Ok(receipt)
        })
    }

    /// Answers a read-only query on the latest committed state, or with `AS OF BLOCK n` on the
    /// state after block `n`. Returns the answer and the height it describes.
    pub async fn query(&self, sql: &str) -> Result<(QueryResult, u64)> {
        let started = Instant::now();
        let result = self.answer(sql).await;
        let metrics = &self.inner.metrics;
        metrics.queries.fetch_add(1, Ordering::Relaxed);
        if result.is_err() {
            metrics.query_errors.fetch_add(1, Ordering::Relaxed);
        }
        metrics.query_duration.observe(started.elapsed());
        result
    }

    /// The node's metrics, to count what front ends see (connected clients).
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.inner.metrics
    }

    /// Every metric in Prometheus' text format.
    pub fn metrics_text(&self) -> String {
        self.inner
            .metrics
            .render(self.state().height(), self.inner.log.stats())
    }

    async fn answer(&self, sql: &str) -> Result<(QueryResult, u64)> {
        check_query_size(sql)?;
        let (sql, as_of) = chainql::sql::split_as_of(sql)?;
        let state = match as_of {
            Some(height) => self.state_at(height).await?,
            None => self.state(),
        };
        let result = self.inner.executor.query(&state, &sql).await?;
        Ok((result, state.height()))
    }

    /// Describes a statement against the latest committed state: its parameters' types and its
    /// answer's columns (see `Executor::describe`).
    pub async fn describe(&self, sql: &str) -> Result<chainql_executor::Description> {
        check_query_size(sql)?;
        let (sql, as_of) = chainql::sql::split_as_of(sql)?;
        let state = match as_of {
            Some(height) => self.state_at(height).await?,
            None => self.state(),
        };
        Ok(self.inner.executor.describe(&state, &sql).await?)
    }

    /// The committed state after block `height` (0: the genesis state). The last
    /// `snapshots_kept` versions are at hand; an older one is rebuilt from its lineage (see
    /// `Inner::rebuild`).
    pub async fn state_at(&self, height: u64) -> Result<Arc<State>> {
        let tip = self.state().height();
        if height > tip {
            return Err(Error::FutureBlock { height, tip });
        }
        if let Some(state) = lock(&self.inner.snapshots).get(&height) {
            return Ok(Arc::clone(state));
        }
        self.inner.rebuild(height).await
    }

    /// A committed block; height 0 means the latest.
    pub fn block(&self, height: u64) -> Result<Option<Block>> {
        let mut blocks = lock(&self.inner.blocks);
        let height = if height == 0 { blocks.height() } else { height };
        Ok(blocks.get(height)?)
    }

    /// A committed block and the hash of its header; height 0 means the latest.
    pub fn block_and_hash(&self, height: u64) -> Result<Option<(Block, Hash)>> {
        let Some(block) = self.block(height)? else {
            return Ok(None);
        };
        let hash = block
            .header
            .as_ref()
            .map(chainql_consensus::header_hash)
            .ok_or_else(|| Error::Corrupt(format!("block {height} has no header")))?;
        Ok(Some((block, hash)))
    }

    /// A receiver of the height up to which blocks, states and receipts are all visible.
    pub fn published(&self) -> watch::Receiver<u64> {
        self.inner.published.subscribe()
    }

    /// A committed block with its hash and its receipts in block order, once published (see
    /// [`Node::published`]); `None` for a height not yet published.
    pub fn committed_block(&self, height: u64) -> Result<Option<(Block, Hash, Vec<Receipt>)>> {
        if height == 0 || height > *self.inner.published.borrow() {
            return Ok(None);
        }
        let (block, hash) = self
            .block_and_hash(height)?
            .ok_or_else(|| Error::Corrupt(format!("published block {height} is missing")))?;
        let known = lock(&self.inner.receipts);
        let receipts = block
            .transactions
            .iter()
            .map(|signed| {
                let tx = chainql::transaction_hash(&signed.transaction);
                known
                    .get(&tx)
                    .cloned()
                    .ok_or_else(|| Error::Corrupt(format!("block {height} lacks the receipt of {tx}")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some((block, hash, receipts)))
    }

    /// A committed transaction and its receipt.
    pub fn transaction(&self, hash: &Hash) -> Result<Option<(SignedTransaction, Receipt)>> {
        let Some(receipt) = lock(&self.inner.receipts).get(hash).cloned() else {
            return Ok(None);
        };
        let block = self.block(receipt.block_height)?.ok_or_else(|| {
            Error::Corrupt(format!("block {} of a receipt is missing", receipt.block_height))
        })?;
        let signed = block
            .transactions
            .get(receipt.index as usize)
            .cloned()
            .ok_or_else(|| {
                Error::Corrupt(format!(
                    "block {} lacks transaction {}",
                    receipt.block_height, receipt.index
                ))
            })?;
        Ok(Some((signed, receipt)))
    }

    /// Streams the log from `positions` (see [`chainql_sequencer::Log::subscribe`]).
    pub fn subscribe_log(&self, positions: &[Position]) -> Result<Subscription> {
        Ok(self.inner.log.subscribe(positions)?)
    }

    /// Positions to subscribe from: the partitions named by `tokens` resume there, and the
    /// `partitions` they do not name (all, when empty) start at the beginning.
    pub fn log_positions(&self, tokens: &[String], partitions: &[u32]) -> Result<Vec<Position>> {
        let count = self.inner.log.partitions();
        if tokens.len() > count as usize || partitions.len() > count as usize {
            return Err(Error::Client(format!("the log has {count} partitions")));
        }
        let mut positions = Vec::new();
        for token in tokens {
            let position = Position::from_token(token, self.chain_id())?;
            if position.partition.0 >= count {
                return Err(Error::Client(format!(
                    "the resume token is for partition {}; the log has {count}",
                    position.partition.0
                )));
            }
            positions.push(position);
        }
        let wanted: Vec<u32> = if partitions.is_empty() {
            (0..count).collect()
        } else {
            partitions.to_vec()
        };
        for partition in wanted {
            if partition >= count {
                return Err(Error::Client(format!(
                    "partition {partition} does not exist; the log has {count}"
                )));
            }
            if !positions.iter().any(|p| p.partition.0 == partition) {
                positions.push(Position::start(PartitionId(partition)));
            }
        }
        Ok(positions)
    }

    /// Waits until the committed height reaches `height`.
    pub async fn wait_for_height(&self, height: u64) -> Result<()> {
        let mut committed = self.committed();
        loop {
            if committed.borrow_and_update().height() >= height {
                return Ok(());
            }
            committed.changed().await.map_err(|_| Error::ShuttingDown)?;
        }
    }

    /// Stops producing blocks, after the block in progress, and closes the log.
    pub async fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::Release);
        // `notify_one` leaves a permit when the producer is not waiting at this instant (it may
        // be between its check of `stopping` and its wait), so the wake-up cannot be lost.
        self.inner.stop.notify_one();
        let producer = lock(&self.producer).take();
        if let Some(producer) = producer {
            let _ = producer.await;
        }
        self.inner.stop_following().await;
    }
}

impl Inner {
    /// The log partition of a sender.
    fn partition_of(&self, address: &Address) -> PartitionId {
        partition_of(&address.0, self.log.partitions())
    }

    fn check_running(&self) -> Result<()> {
        if self.stopping.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        if let Some(reason) = lock(&self.halted).as_ref() {
            return Err(Error::Halted(reason.clone()));
        }
        Ok(())
    }

    fn state(&self) -> Arc<State> {
        self.committed.borrow().clone()
    }

    /// Refuses a transaction whose sender cannot cover its gas limit at the chain's gas price
    /// with its committed balance. (Execution checks again against the balance at that point.)
    fn check_gas_funds(&self, state: &State, decoded: &DecodedTransaction) -> Result<()> {
        let price = self.genesis.gas_price;
        if price == 0 {
            return Ok(());
        }
        let needed = decoded.body.gas_limit as u128 * price as u128;
        let balance = state.account(&decoded.address).balance;
        if needed > balance as u128 {
            return Err(Error::InsufficientFunds {
                gas_limit: decoded.body.gas_limit,
                gas_price: price,
                needed,
                balance,
            });
        }
        Ok(())
    }

    /// Re-executes every stored block, checking each against its parent and the state root its
    /// successor carries, and marks the log ranges each orders as snapshots.
    async fn replay(&self) -> Result<Recovery> {
        let height = lock(&self.blocks).height();
        let partitions = self.log.partitions() as usize;
        let mut next_seqnos = vec![1u64; partitions];
        let started = Instant::now();
        let mut transactions = 0u64;
        let mut state = self.state();
        let start = match self.load_checkpoint(height, 0).await? {
            Some((checkpoint, receipts)) => {
                let checkpoint = Arc::new(checkpoint);
                self.publish(Arc::clone(&checkpoint), receipts.decode()?);
                state = checkpoint;
                state.height()
            }
            None => 0,
        };
        let mut progress = (height > start)
            .then(|| crate::progress::Progress::new("replaying blocks", height - start, "blocks"));
        for h in 1..=height {
            let block = lock(&self.blocks)
                .get(h)?
                .ok_or_else(|| Error::Corrupt(format!("block {h} is missing")))?;
            next_seqnos = self.ordered_by(&block, &state, next_seqnos)?;
            if h < start {
                // In the checkpoint: only the log's snapshot markers are needed.
                self.mark_snapshot(h, &next_seqnos)?;
                continue;
            }
            if h == start {
                self.skip_settled(&state, &mut next_seqnos)?;
                self.mark_snapshot(h, &next_seqnos)?;
                continue;
            }
            transactions += block.transactions.len() as u64;
            let (next, receipts) = self.apply_block(&state, &block).await?;
            self.skip_settled(&next, &mut next_seqnos)?;
            self.mark_snapshot(h, &next_seqnos)?;
            let next = Arc::new(next);
            self.publish(Arc::clone(&next), receipts);
            state = next;
            if let Some(progress) = &mut progress {
                progress.inc(1);
            }
        }
        if let Some(progress) = progress {
            progress.finish();
            let elapsed = started.elapsed().as_secs_f64();
            tracing::info!(
                blocks = height - start,
                transactions,
                elapsed_ms = (elapsed * 1e3) as u64,
                rate = format!("{:.0} tx/s", transactions as f64 / elapsed.max(1e-9)),
                "replayed blocks"
            );
        }
        for (p, next) in next_seqnos.iter().enumerate() {
            let last = self.log.last_seqno(PartitionId(p as u32))?;
            if last + 1 < *next {
                return Err(Error::Corrupt(format!(
                    "log partition {p} ends at entry {last} but this validator's blocks order entries up to {}",
                    next - 1
                )));
            }
            self.next_seqnos[p].store(*next, Ordering::Release);
        }
        Ok(Recovery {
            checkpoint: (start > 0).then_some(start),
            blocks_replayed: height - start,
        })
    }

    /// The newest checkpoint at or below `height`, and above `above`, that checks out against
    /// the block store: its block hash is that of the stored block, and the next stored block
    /// carries its state root. A checkpoint that does not is skipped with a warning (an older
    /// start and the blocks rebuild its state).
    async fn load_checkpoint(&self, height: u64, above: u64) -> Result<Option<(State, StoredReceipts)>> {
        for candidate in self.checkpoints.heights()?.into_iter().rev() {
            if candidate <= above || candidate > height {
                continue;
            }
            let checkpoints = self.checkpoints.clone();
            let loaded = tokio::task::spawn_blocking(move || checkpoints.read(candidate))
                .await
                .map_err(|e| Error::Corrupt(format!("reading checkpoint {candidate}: {e}")))?
                .and_then(|(state, receipts)| {
                    self.check_against_blocks(&state)?;
                    Ok((state, receipts))
                });
            match loaded {
                Ok(loaded) => {
                    tracing::info!(height = candidate, "loaded checkpoint");
                    return Ok(Some(loaded));
                }
                Err(error) => {
                    tracing::warn!(height = candidate, %error, "skipping a checkpoint that does not check out")
                }
            }
        }
        Ok(None)
    }

    /// Checks `state`'s root against the one the next stored block carries, if there is one.
    fn check_root_carried(&self, state: &State) -> Result<()> {
        let height = state.height();
        let next = lock(&self.blocks).get(height + 1)?;
        if let Some(header) = next.as_ref().and_then(|block| block.header.as_ref())
            && Hash::from_slice(&header.state_root) != Some(state.root())
        {
            return Err(Error::Corrupt(format!(
                "the state of block {height} has root {}, but block {} carries {}",
                state.root(),
                height + 1,
                hex::encode(&header.state_root)
            )));
        }
        Ok(())
    }

    /// Checks a state read from a checkpoint against the stored blocks.
    fn check_against_blocks(&self, state: &State) -> Result<()> {
        let height = state.height();
        let header = lock(&self.blocks)
            .get(height)?
            .and_then(|block| block.header)
            .ok_or_else(|| Error::Corrupt(format!("block {height} of a checkpoint is not stored")))?;
        if chainql_consensus::header_hash(&header) != state.block_hash() {
            return Err(Error::Corrupt(format!(
                "the checkpoint of block {height} names another block"
            )));
        }
        self.check_root_carried(state)
    }

    /// Writes a checkpoint of `state` in the background, unless one is being written; then,
    /// with log retention on, deletes the log segments wholly below `next_seqnos` (per
    /// partition, the first entry after the checkpoint's block).
    fn start_checkpoint(&self, state: Arc<State>, next_seqnos: Vec<u64>) {
        if self.checkpointing.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                height = state.height(),
                "skipping a checkpoint: the last one is still being written"
            );
            return;
        }
        let checkpoints = self.checkpoints.clone();
        let receipts = Arc::clone(&self.receipts);
        let flag = Arc::clone(&self.checkpointing);
        let log = Arc::clone(&self.log);
        tokio::task::spawn_blocking(move || {
            if let Err(error) = write_checkpoint(&checkpoints, &receipts, &state) {
                tracing::error!(height = state.height(), %error, "writing a checkpoint failed");
            } else {
                for (p, next) in next_seqnos.iter().enumerate() {
                    match log.release_below(PartitionId(p as u32), *next) {
                        Ok(0) => {}
                        Ok(deleted) => tracing::info!(partition = p, deleted, "released log segments"),
                        Err(error) => tracing::error!(partition = p, %error, "releasing log segments failed"),
                    }
                }
            }
            flag.store(false, Ordering::Release);
        });
    }

    /// Tells the log that every entry before `next_seqnos` is ordered by block `height`. A
    /// replica's markers are its leader's; a log taken over from a leader keeps those the
    /// leader made, and the node's own continue above them.
    fn mark_snapshot(&self, height: u64, next_seqnos: &[u64]) -> Result<()> {
        if self.log.is_replica() {
            return Ok(());
        }
        // Partitions copied from a leader may hold its markers of later heights (each
        // partition's copy went at its own pace): those heights keep the leader's.
        let mut ranges = Vec::with_capacity(next_seqnos.len());
        for (p, next) in next_seqnos.iter().enumerate() {
            let partition = PartitionId(p as u32);
            if self
                .log
                .last_snapshot(partition)?
                .is_none_or(|last| last.height < height)
            {
                ranges.push((partition, next - 1));
            }
        }
        Ok(self.log.mark_snapshot(height, &ranges)?)
    }

    /// Copies the first peer's log into this node's replica, until the node takes the log over
    /// or stops: every entry, snapshot marker and rollback, resuming where the replica ends
    /// after a lost connection or a restart of either node.
    async fn follow_leader_log(self: Arc<Inner>, mut stop: watch::Receiver<bool>) {
        let Some(url) = self.config.peers.first().cloned() else {
            return;
        };
        let mut pause = Duration::from_millis(100);
        while !*stop.borrow_and_update() && !self.stopping.load(Ordering::Acquire) {
            let copy_stop = stop.clone();
            let attempt = async {
                let client = Client::connect(&url).await?;
                let status = client.status().await?;
                if status.chain_id != self.genesis.chain_id {
                    return Err(Error::Config(format!(
                        "peer {url} serves chain {:?}, not {:?}",
                        status.chain_id, self.genesis.chain_id
                    )));
                }
                let source = crate::mirror::Source {
                    url: url.clone(),
                    chain_id: status.chain_id,
                    leader: status.validator.0.to_vec(),
                };
                let mut report = crate::mirror::MirrorReport::default();
                crate::mirror::follow(&source, Some(client), &self.log, None, copy_stop, &mut report).await
            };
            let attempted = tokio::select! {
                attempted = attempt => attempted,
                _ = stop.changed() => return,
            };
            match attempted {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(peer = %url, %error, "copying the peer's log failed; trying again");
                    crate::mirror::back_off(&mut pause, &mut stop).await;
                }
            }
        }
    }

    /// Stops copying the first peer's log, and waits until the copying task has ended.
    async fn stop_following(&self) {
        let _ = self.replicating.send(true);
        let task = self.follower.lock().await.take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Takes over the log this node kept as a replica of its first peer's, now that it is a
    /// validator: each partition fails over to a new epoch led by this node, rolling back the
    /// copied entries no block this node knows has settled. Those are proposed again from this
    /// log, unless the committed state has used their nonce (then they are dropped). Partitions
    /// that lead already are left as they are, so a take-over a crash stopped halfway finishes.
    async fn take_over_log(&self) -> Result<()> {
        // Nothing may be copied (entries or snapshot markers) once the rollback point is chosen.
        self.stop_following().await;
        // No transaction is handed on or admitted until the rolled-back ones are back in the
        // log and the pending nonces are this log's: a sender's nonces stay in order.
        let mut turns = Vec::with_capacity(self.forwarding.len());
        for turn in &self.forwarding {
            turns.push(turn.lock().await);
        }
        let mut admissions = Vec::with_capacity(self.admission.len());
        for admission in &self.admission {
            admissions.push(admission.lock().await);
        }
        let me = self.validator.address().0;
        let mut rolled_back = Vec::new();
        for p in 0..self.log.partitions() {
            let partition = PartitionId(p);
            // Partitions taken over before a restart lead already (`Node::open`).
            if !self.log.is_replica_partition(partition)? {
                continue;
            }
            // Copies the stopped task had already queued are carried out first.
            self.log.barrier(partition).await?;
            // Settled: what the leader's snapshots cover, and what this node's blocks settled.
            let last = self.log.last_seqno(partition)?;
            let committed = self.log.committed_seqno(partition)?;
            let from = (committed + 1)
                .max(self.next_seqnos[p as usize].load(Ordering::Acquire))
                .min(last + 1);
            let (epoch, entries) = self.log.fail_over(partition, &me, Some(from)).await?;
            self.next_seqnos[p as usize].store(from, Ordering::Release);
            tracing::info!(
                partition = p,
                epoch,
                from,
                rolled_back = entries.len(),
                "took over the log partition"
            );
            rolled_back.extend(entries);
        }
        let state = self.state();
        let mut again = Vec::new();
        for entry in &rolled_back {
            if !is_settled(&state, &logged(entry.partition, entry.seqno, &entry.payload)?)? {
                again.push((entry.partition, entry.payload.to_vec()));
            }
        }
        let proposed = again.len();
        if !again.is_empty() {
            self.log.append_many(again).await?;
        }
        if !rolled_back.is_empty() {
            tracing::info!(
                proposed_again = proposed,
                dropped = rolled_back.len() - proposed,
                "rolled-back log entries"
            );
        }
        // The pending nonces are now those of this log.
        for (p, admission) in admissions.iter_mut().enumerate() {
            admission.next_nonces.clear();
            self.count_pending(PartitionId(p as u32), admission)?;
        }
        *self.leader_client.lock().await = None;
        drop(turns);
        Ok(())
    }

    /// While the log is a replica: hands a transaction to the first peer, which admits it into
    /// the log this one copies, and counts its nonce as pending here once it is admitted. One
    /// partition's transactions are handed on one at a time, so a sender's keep their order;
    /// the admission lock is not held meanwhile, so commits never wait on the peer.
    async fn forward(&self, signed: SignedTransaction) -> Result<Hash> {
        let (transaction, sender) = executable(&signed).map_err(|_| {
            Error::Transaction(chainql::Error::Malformed(
                "the transaction does not decode".into(),
            ))
        })?;
        let partition = self.partition_of(&sender);
        let _turn = self.forwarding[partition.0 as usize].lock().await;
        if !self.log.is_replica_partition(partition)? {
            return Err(Error::Client(
                "this node has just joined the validators and taken its log over; submit again".into(),
            ));
        }
        let handed = tokio::time::timeout(FORWARD_TIMEOUT, async {
            let client = {
                let mut cached = self.leader_client.lock().await;
                match cached.as_ref() {
                    Some(client) => client.clone(),
                    None => {
                        let url = self
                            .config
                            .peers
                            .first()
                            .ok_or_else(|| Error::Config("a replica node needs a peer".into()))?;
                        let client = Client::connect(url).await?;
                        *cached = Some(client.clone());
                        client
                    }
                }
            };
            client.submit(signed, false).await
        })
        .await;
        match handed {
            Ok(Ok((hash, _))) => {
                let mut admission = self.admission[partition.0 as usize].lock().await;
                let next = admission.next_nonces.entry(sender).or_default();
                *next = (*next).max(transaction.nonce + 1);
                Ok(hash)
            }
            Ok(Err(error)) => {
                *self.leader_client.lock().await = None;
                Err(error)
            }
            Err(_) => {
                *self.leader_client.lock().await = None;
                Err(Error::Client(format!(
                    "the node whose log this one copies did not admit the transaction within {} s",
                    FORWARD_TIMEOUT.as_secs()
                )))
            }
        }
    }

    /// Rebuilds the pending nonces from log entries not yet in a block.
    async fn recover_pending(&self) -> Result<()> {
        for p in 0..self.log.partitions() {
            let mut admission = self.admission[p as usize].lock().await;
            self.count_pending(PartitionId(p), &mut admission)?;
        }
        Ok(())
    }

    /// Counts the nonces of `partition`'s log entries not yet in a block as pending.
    fn count_pending(&self, partition: PartitionId, admission: &mut Admission) -> Result<()> {
        let p = partition.0;
        let mut from = self.next_seqnos[p as usize].load(Ordering::Acquire);
        loop {
            let entries = self.log.read(partition, from, 4096)?;
            let Some(last) = entries.last() else { break };
            from = last.seqno + 1;
            for entry in &entries {
                let (transaction, sender) = executable(&logged(partition, entry.seqno, &entry.payload)?)?;
                let next = admission.next_nonces.entry(sender).or_default();
                *next = (*next).max(transaction.nonce + 1);
            }
        }
        Ok(())
    }

    /// The checks every block gets against the state before it, proposed or committed: its link
    /// to that state's block, a proposer that is a validator of its height, its transaction root
    /// and signature (`verify_block`), the validator set it must announce, its evidence, and the
    /// state root it carries. Returns its hash, its header and the offences its evidence proves;
    /// a failure of the checks beyond `verify_block` is made by `fail`.
    fn check_on_state<'b>(
        &self,
        state: &State,
        block: &'b Block,
        fail: impl Fn(String) -> Error,
    ) -> Result<(Hash, &'b chainql::wire::BlockHeader, Vec<Offence>)> {
        let parent = Parent {
            chain_id: self.genesis.chain_id.clone(),
            height: state.height(),
            hash: state.block_hash(),
            timestamp_ms: state.timestamp_ms(),
        };
        let height = parent.height + 1;
        let hash = verify_block(block, &parent, |key| is_validator_at(state, height, key))?;
        let header = block
            .header
            .as_ref()
            .ok_or_else(|| fail(format!("block {height} has no header")))?;
        if block.next_validators != announced(state.announced_validators()) {
            return Err(fail(format!(
                "block {height} does not announce the validator set the last epoch decided"
            )));
        }
        let offences = self
            .offences(state, block)
            .map_err(|reason| fail(format!("block {height}: {reason}")))?;
        if Hash::from_slice(&header.state_root) != Some(state.root()) {
            return Err(fail(format!(
                "block {height} carries state root {}, but the state before it has root {}",
                hex::encode(&header.state_root),
                state.root()
            )));
        }
        Ok((hash, header, offences))
    }

    /// Checks `block` against the committed chain and executes it on `state`.
    async fn apply_block(&self, state: &State, block: &Block) -> Result<(State, Vec<Receipt>)> {
        let (hash, header, offences) = self.check_on_state(state, block, Error::Corrupt)?;
        let transactions = block
            .transactions
            .iter()
            .map(|signed| executable(signed).map(|(t, _)| t))
            .collect::<Result<Vec<_>>>()?;
        let context = BlockContext {
            height: header.height,
            hash,
            parent_hash: state.block_hash(),
            timestamp_ms: header.timestamp_ms,
            transactions_root: Hash::from_slice(&header.transactions_root).unwrap_or_default(),
            state_root: state.root(),
            proposer: PublicKey::from_bytes(&header.proposer)?.address(),
            offences,
        };
        Ok(self
            .executor
            .execute_block(state, &context, &transactions)
            .await?)
    }

    /// The offences a block's evidence proves, each checked against the validators of its
    /// height as `state` (the version before the block) knows them.
    fn offences(&self, state: &State, block: &Block) -> std::result::Result<Vec<Offence>, String> {
        block
            .evidence
            .iter()
            .map(|evidence| {
                let proved = check_evidence(&self.ctx, evidence, |height| {
                    state
                        .validators_for(height)
                        .and_then(|set| consensus_set(set).ok())
                })?;
                Ok(Offence {
                    validator: proved.validator,
                    height: proved.height,
                    round: proved.round,
                })
            })
            .collect()
    }

    /// Keeps evidence of conflicting votes for this validator's next proposals.
    pub(crate) fn keep_evidence(&self, proved: Equivocation, evidence: Evidence) {
        let mut kept = lock(&self.evidence);
        if kept.len() < EVIDENCE_KEPT && !kept.iter().any(|(p, _)| *p == proved) {
            tracing::warn!(
                validator = %proved.validator,
                height = proved.height,
                round = proved.round,
                "a validator signed conflicting votes: the evidence goes into the next block this validator proposes"
            );
            kept.push((proved, evidence));
        }
    }

    /// Re-executes the stored blocks up to `height` from the newest start at or below it: the
    /// version rebuilt last, a checkpoint, or the genesis state.
    async fn rebuild(&self, height: u64) -> Result<Arc<State>> {
        let mut rebuilt = self.rebuilt.lock().await;
        let cached = rebuilt.as_ref().filter(|s| s.height() <= height).map(Arc::clone);
        if let Some(state) = &cached
            && state.height() == height
        {
            return Ok(Arc::clone(state));
        }
        let above = cached.as_ref().map_or(0, |s| s.height());
        let checkpoint = self.load_checkpoint(height, above).await?;
        let mut state = match (checkpoint, cached) {
            (Some((state, _)), _) => Arc::new(state),
            (None, Some(state)) => state,
            (None, None) => Arc::clone(&self.genesis_state),
        };
        let started = Instant::now();
        let from = state.height();
        while state.height() < height {
            let h = state.height() + 1;
            let block = lock(&self.blocks)
                .get(h)?
                .ok_or_else(|| Error::Corrupt(format!("block {h} is missing")))?;
            state = Arc::new(self.apply_block(&state, &block).await?.0);
        }
        self.check_root_carried(&state)?;
        tracing::info!(
            height,
            from,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "rebuilt a state version from its lineage"
        );
        *rebuilt = Some(Arc::clone(&state));
        Ok(state)
    }

    /// Makes an executed block visible: first the new state, then its receipts and the waiters'
    /// answers, so whoever sees a receipt can already query the state that includes it.
    fn publish(&self, state: Arc<State>, receipts: Vec<Receipt>) {
        let height = state.height();
        {
            let mut snapshots = lock(&self.snapshots);
            snapshots.insert(height, Arc::clone(&state));
            let oldest_kept = (height + 1).saturating_sub(self.config.snapshots_kept);
            while snapshots.first_key_value().is_some_and(|(h, _)| *h < oldest_kept) {
                snapshots.pop_first();
            }
        }
        self.committed.send_replace(state);
        let mut waiting = Vec::new();
        {
            let mut known = lock(&self.receipts);
            let mut waiters = lock(&self.waiters);
            for receipt in receipts {
                let hash = Hash::from_slice(&receipt.transaction_hash).unwrap_or_default();
                if let Some(list) = waiters.remove(&hash) {
                    waiting.push((list, receipt.clone()));
                }
                known.insert(hash, receipt);
            }
        }
        self.published.send_replace(height);
        for (list, receipt) in waiting {
            for (_, sender) in list {
                let _ = sender.send(receipt.clone());
            }
        }
    }

    /// True when some partition has entries not yet in a block.
    fn entries_waiting(&self) -> bool {
        (0..self.log.partitions()).any(|p| {
            let last = self.log.last_seqno(PartitionId(p)).unwrap_or(0);
            last >= self.next_seqnos[p as usize].load(Ordering::Acquire)
        })
    }

    /// Checks a block another validator proposed for the height after the committed one, before
    /// this validator votes for it: its link to the committed block, its header, the proposer's
    /// signature, the state root, a timestamp not ahead of this node's clock, and every
    /// transaction: decodes within limits, for this chain, correctly signed (checked as a
    /// batch), statements that parse, and each sender's nonces in sequence from its committed
    /// nonce.
    async fn check_proposal(&self, block: &Block) -> Result<()> {
        let state = self.state();
        let height = state.height() + 1;
        let invalid = |m: String| Error::Consensus(chainql_consensus::Error::InvalidBlock(m));
        let (_, header, offences) = self.check_on_state(&state, block, invalid)?;
        let mut seen = std::collections::BTreeSet::new();
        for offence in &offences {
            if !seen.insert((offence.validator, offence.height, offence.round)) {
                return Err(invalid(format!("block {height} carries one offence twice")));
            }
            state
                .staking()
                .punishable(&offence.validator, offence.height, offence.round)
                .map_err(|reason| invalid(format!("block {height}: {reason}")))?;
        }
        if header.timestamp_ms > now_ms() + CLOCK_DRIFT_MAX_MS {
            return Err(invalid(format!(
                "block {} is timestamped {} ms ahead of this node's clock",
                header.height,
                header.timestamp_ms - now_ms()
            )));
        }
        if block.transactions.len() > self.config.block_transactions_max {
            return Err(invalid(format!(
                "block {} holds {} transactions; at most {}",
                header.height,
                block.transactions.len(),
                self.config.block_transactions_max
            )));
        }
        // Parts: each partition's transactions signed by the validator assigned the partition
        // at this height, or by the proposer. What this validator signed itself it checked then.
        let proposer = PublicKey::from_bytes(&header.proposer)?;
        let set = state
            .validators_for(height)
            .ok_or_else(|| invalid(format!("the validators of height {height} are not known")))?;
        let partitions = self.log.partitions();
        let parts = chainql_consensus::check_parts(
            block,
            |t| sender_partition(t, partitions),
            |partition, key| {
                *key == proposer || assignee(set, height, partition).public_key == key.to_bytes()
            },
        )?;
        let me = self.validator.public_key();
        let mut forged_here = vec![false; block.transactions.len()];
        for (signer, range) in parts {
            if signer == me {
                forged_here[range].fill(true);
            }
        }
        self.check_transactions(&state, &block.transactions, &forged_here)
            .await
            .map_err(|e| match e {
                Error::Consensus(e) => Error::Consensus(e),
                other => invalid(format!("block {height}: {other}")),
            })
    }

    /// Checks transactions in block order against `state` (the committed one): each decodes
    /// within limits, is for this chain, is signed (batch-verified), has statements that parse,
    /// and carries its sender's next nonce. Transactions this node admitted itself (with the same
    /// signature), and those `checked_already` marks, are checked only for their nonces.
    async fn check_transactions(
        &self,
        state: &State,
        transactions: &[SignedTransaction],
        checked_already: &[bool],
    ) -> Result<()> {
        let limits = self.config.transaction_limits;
        let decoded = transactions
            .iter()
            .map(|signed| DecodedTransaction::from_signed(signed.clone(), &limits, &self.genesis.chain_id))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let unchecked: Vec<bool> = {
            let checked = lock(&self.checked);
            decoded
                .iter()
                .zip(checked_already)
                .map(|(d, already)| !already && checked.get(&d.hash) != Some(&d.signed.signature))
                .collect()
        };
        // Signatures in the verifier's batches (on every core), then the statements.
        let mut kept: Vec<Option<DecodedTransaction>> = Vec::with_capacity(decoded.len());
        let mut positions = Vec::new();
        let mut to_verify = Vec::new();
        for (i, (transaction, unchecked)) in decoded.into_iter().zip(&unchecked).enumerate() {
            if *unchecked {
                positions.push(i);
                to_verify.push(transaction);
                kept.push(None);
            } else {
                kept.push(Some(transaction));
            }
        }
        let mut verified = Vec::with_capacity(positions.len());
        for (i, verdict) in positions
            .into_iter()
            .zip(self.verifier.verify_many(to_verify).await)
        {
            verified.push(i);
            kept[i] = Some(verdict?);
        }
        let decoded: Vec<DecodedTransaction> = kept.into_iter().flatten().collect();
        let decoded = tokio::task::spawn_blocking(move || {
            for &i in &verified {
                for statement in &decoded[i].body.statements {
                    chainql::sql::parse_transaction_statement(statement)?;
                }
            }
            Ok::<_, chainql::Error>(decoded)
        })
        .await
        .map_err(|e| Error::Client(format!("checking transactions: {e}")))??;
        let mut next: HashMap<Address, u64> = HashMap::new();
        for (index, transaction) in decoded.iter().enumerate() {
            let expected = next
                .entry(transaction.address)
                .or_insert_with(|| state.account(&transaction.address).nonce);
            if transaction.body.nonce != *expected {
                return Err(Error::Client(format!(
                    "transaction {index} has nonce {}, its sender's next is {expected}",
                    transaction.body.nonce
                )));
            }
            *expected += 1;
        }
        Ok(())
    }

    /// Sharded forging, the assignee's side: checks a partition's transactions that the proposer
    /// of the next height assigned to this validator, and signs them as a part of its block.
    pub(crate) async fn forge_part(
        &self,
        request: crate::validator::proto::ForgeRequest,
    ) -> std::result::Result<chainql::wire::BlockPart, String> {
        let state = self.state();
        let height = state.height() + 1;
        if request.height != height || Hash::from_slice(&request.parent_hash) != Some(state.block_hash()) {
            return Err(format!(
                "this validator is at height {height}, not {} after the block named",
                request.height
            ));
        }
        let set = state
            .validators_for(height)
            .ok_or_else(|| format!("the validators of height {height} are not known"))?;
        let partitions = self.log.partitions();
        if request.partition >= partitions
            || assignee(set, height, request.partition).address != self.validator.address()
        {
            return Err(format!(
                "partition {} is not assigned to this validator at height {height}",
                request.partition
            ));
        }
        if request.transactions.is_empty() || request.transactions.len() > self.config.block_transactions_max
        {
            return Err(format!(
                "a part of {} transactions (1 to {})",
                request.transactions.len(),
                self.config.block_transactions_max
            ));
        }
        if let Some(i) = request
            .transactions
            .iter()
            .position(|t| sender_partition(t, partitions) != Some(request.partition))
        {
            return Err(format!(
                "transaction {i} is not of partition {}",
                request.partition
            ));
        }
        self.check_transactions(
            &state,
            &request.transactions,
            &vec![false; request.transactions.len()],
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok(chainql_consensus::sign_part(
            &self.validator,
            &self.genesis.chain_id,
            height,
            &state.block_hash(),
            request.partition,
            &request.transactions,
        ))
    }

    /// The block this validator proposes for the height after the committed one: waiting log
    /// entries from every partition, at most `block_transactions_max` in all (each partition
    /// gets an equal share first, then the rest) and at most `PROPOSED_BLOCK_BYTES_MAX` bytes,
    /// ordered partition by partition. Entries an earlier block already committed (another
    /// validator proposed them from its own log) are skipped.
    fn draft_block(&self) -> Result<Draft> {
        let partitions = self.log.partitions() as usize;
        let firsts: Vec<u64> = self
            .next_seqnos
            .iter()
            .map(|n| n.load(Ordering::Acquire))
            .collect();
        let waiting: Vec<u64> = (0..partitions)
            .map(|p| {
                let last = self.log.last_seqno(PartitionId(p as u32)).unwrap_or(0);
                (last + 1).saturating_sub(firsts[p])
            })
            .collect();
        let mut budget = self.config.block_transactions_max as u64;
        let share = (budget / partitions as u64).max(1);
        let mut counts: Vec<u64> = waiting.iter().map(|w| (*w).min(share)).collect();
        budget = budget.saturating_sub(counts.iter().sum());
        for (count, wait) in counts.iter_mut().zip(&waiting) {
            let more = (wait - *count).min(budget);
            *count += more;
            budget -= more;
        }
        let state = self.state();
        let gossiping = !self.peers.is_empty();
        let mut transactions = Vec::new();
        let mut log_ranges = Vec::new();
        let mut groups = Vec::new();
        let mut bytes = 0usize;
        for p in 0..partitions {
            if counts[p] == 0 {
                continue;
            }
            let entries = self
                .log
                .read(PartitionId(p as u32), firsts[p], counts[p] as usize)?;
            if entries.len() as u64 != counts[p] {
                return Err(Error::Corrupt(format!(
                    "log partition {p} returned {} entries from {}, expected {}",
                    entries.len(),
                    firsts[p],
                    counts[p]
                )));
            }
            let mut taken = 0u64;
            let first = transactions.len();
            for entry in &entries {
                if bytes + entry.payload.len() > PROPOSED_BLOCK_BYTES_MAX - BLOCK_ENVELOPE_BYTES {
                    break;
                }
                taken += 1;
                let signed = logged(PartitionId(p as u32), entry.seqno, &entry.payload)?;
                // Only gossip puts entries in this log that another validator's block can order;
                // without peers every waiting entry is unordered.
                if gossiping && is_settled(&state, &signed)? {
                    continue; // committed already, from another validator's log
                }
                bytes += entry.payload.len() + 8;
                transactions.push(signed);
            }
            if transactions.len() > first {
                groups.push((p as u32, first..transactions.len()));
            }
            if taken > 0 {
                log_ranges.push(LogRange {
                    partition: p as u32,
                    first_seqno: firsts[p],
                    count: taken,
                });
            }
        }
        let evidence = {
            let mut kept = lock(&self.evidence);
            kept.retain(|(proved, _)| {
                state
                    .staking()
                    .punishable(&proved.validator, proved.height, proved.round)
                    .is_ok()
            });
            kept.iter()
                .take(chainql_consensus::EVIDENCE_PER_BLOCK_MAX)
                .map(|(_, evidence)| evidence.clone())
                .collect()
        };
        Ok(Draft {
            proposal: BlockProposal {
                chain_id: self.genesis.chain_id.clone(),
                height: state.height() + 1,
                parent_hash: state.block_hash(),
                timestamp_ms: now_ms().max(state.timestamp_ms() + 1),
                state_root: state.root(),
                log_ranges,
                transactions,
                next_validators: announced(state.announced_validators()),
                evidence,
                parts: Vec::new(),
            },
            groups,
        })
    }

    /// Commits a decided block that carries its certificate: stores it durably, executes it,
    /// moves the log cursors past what it ordered and publishes the new state.
    async fn commit_block(&self, block: Block) -> Result<()> {
        let started = Instant::now();
        let state = self.state();
        blocking(|| lock(&self.blocks).append(&block))?;
        let stored = started.elapsed();
        let (next, receipts) = self.apply_block(&state, &block).await?;
        let count = block.transactions.len();
        let failed = receipts.iter().filter(|r| !r.error.is_empty()).count();
        let senders: Vec<Address> = block
            .transactions
            .iter()
            .filter_map(|signed| executable(signed).ok().map(|(_, sender)| sender))
            .collect();
        if !self.peers.is_empty() {
            let mut checked = lock(&self.checked);
            for receipt in &receipts {
                if let Some(hash) = Hash::from_slice(&receipt.transaction_hash) {
                    checked.remove(&hash);
                }
            }
        }
        let height = next.height();
        let root = next.root();
        let mut next_seqnos = self.ordered_by(&block, &state, self.current_seqnos())?;
        self.skip_settled(&next, &mut next_seqnos)?;
        for (slot, next) in self.next_seqnos.iter().zip(&next_seqnos) {
            slot.store(*next, Ordering::Release);
        }
        self.mark_snapshot(height, &next_seqnos)?;
        let next = Arc::new(next);
        self.publish(Arc::clone(&next), receipts);
        if self.log.is_replica() && is_validator_at(&next, height + 1, &self.validator.public_key()) {
            self.take_over_log().await?;
        }
        if self.config.checkpoint_interval > 0 && height % self.config.checkpoint_interval == 0 {
            self.start_checkpoint(next, next_seqnos);
        }
        self.forget_committed_nonces(&senders).await;
        let metrics = &self.metrics;
        metrics.blocks.fetch_add(1, Ordering::Relaxed);
        metrics
            .transactions_committed
            .fetch_add((count - failed) as u64, Ordering::Relaxed);
        metrics
            .transactions_failed
            .fetch_add(failed as u64, Ordering::Relaxed);
        metrics.block_duration.observe(started.elapsed());
        tracing::info!(
            height,
            transactions = count,
            failed,
            state_root = %root,
            store_ms = stored.as_secs_f64() * 1e3,
            total_ms = started.elapsed().as_secs_f64() * 1e3,
            "committed block"
        );
        Ok(())
    }

    fn current_seqnos(&self) -> Vec<u64> {
        self.next_seqnos
            .iter()
            .map(|n| n.load(Ordering::Acquire))
            .collect()
    }

    /// The log cursors after `block`: a block this validator proposed names ranges of its own
    /// log, and the cursors move past them; another validator's ranges name that validator's
    /// log and leave them where they are. Checks that own ranges follow the cursors.
    ///
    /// An own range may start before a cursor, over entries `settled` (the state before the
    /// block, or a later one) already holds: which settled entries the cursor skipped depends
    /// on what the log held when it was moved (`skip_settled`), so a replay, reading the whole
    /// log, can skip entries that had not arrived when the block was proposed. Those entries
    /// are in no block's transactions twice: the proposer left them out as settled.
    fn ordered_by(&self, block: &Block, settled: &State, mut next_seqnos: Vec<u64>) -> Result<Vec<u64>> {
        let header = block
            .header
            .as_ref()
            .ok_or_else(|| Error::Corrupt("a block has no header".into()))?;
        if header.proposer != self.validator.public_key().to_bytes() {
            return Ok(next_seqnos);
        }
        for range in &header.log_ranges {
            let slot = next_seqnos.get_mut(range.partition as usize).ok_or_else(|| {
                Error::Corrupt(format!(
                    "block {} names log partition {}, which does not exist",
                    header.height, range.partition
                ))
            })?;
            if range.first_seqno < *slot
                && !self.all_settled(settled, PartitionId(range.partition), range.first_seqno, *slot)?
            {
                return Err(Error::Corrupt(format!(
                    "block {} orders partition {} from seqno {}, before the first entry not yet ordered ({})",
                    header.height, range.partition, range.first_seqno, slot
                )));
            }
            *slot = (*slot).max(range.first_seqno + range.count);
        }
        Ok(next_seqnos)
    }

    /// True when `state` has settled every entry of `partition` from `from` up to (not
    /// including) `until` that the log still keeps (entries released below a checkpoint were
    /// all ordered or settled).
    fn all_settled(&self, state: &State, partition: PartitionId, from: u64, until: u64) -> Result<bool> {
        let mut next = from;
        while next < until {
            let entries = match self.log.read(partition, next, SETTLED_READ) {
                Err(chainql_sequencer::Error::Released { first_kept, .. }) if first_kept > next => {
                    next = first_kept;
                    continue;
                }
                read => read?,
            };
            let Some(last) = entries.last() else {
                // Entries the log does not hold were never settled by this node's cursor.
                return Ok(false);
            };
            next = last.seqno + 1;
            for entry in entries.iter().filter(|entry| entry.seqno < until) {
                if !is_settled(state, &logged(partition, entry.seqno, &entry.payload)?)? {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Moves each log cursor past entries that `state` has settled: transactions committed by
    /// another validator's block, whose nonce the sender has used. (A validator's log holds the
    /// transactions it admitted and those gossiped to it, so a block proposed elsewhere orders
    /// entries of this log at positions of its own.)
    fn skip_settled(&self, state: &State, next_seqnos: &mut [u64]) -> Result<()> {
        for (p, next) in next_seqnos.iter_mut().enumerate() {
            let partition = PartitionId(p as u32);
            'partition: loop {
                // Usually the first entry is already unsettled: read a few at a time.
                let entries = self.log.read(partition, *next, SETTLED_READ)?;
                if entries.is_empty() {
                    break;
                }
                for entry in &entries {
                    if !is_settled(state, &logged(partition, entry.seqno, &entry.payload)?)? {
                        break 'partition;
                    }
                    *next = entry.seqno + 1;
                }
            }
        }
        Ok(())
    }

    /// Drops pending-nonce entries that the committed state has caught up with.
    async fn forget_committed_nonces(&self, senders: &[Address]) {
        let state = self.state();
        for sender in senders {
            let mut admission = self.admission[self.partition_of(sender).0 as usize].lock().await;
            if let Some(next) = admission.next_nonces.get(sender)
                && *next <= state.account(sender).nonce
            {
                admission.next_nonces.remove(sender);
            }
        }
    }
}

/// Writes `state` as a checkpoint with the receipts of its blocks, in block order.
fn write_checkpoint(
    checkpoints: &Checkpoints,
    receipts: &Mutex<HashMap<Hash, Receipt>>,
    state: &State,
) -> Result<()> {
    let started = Instant::now();
    let height = state.height();
    let mut kept: Vec<Receipt> = lock(receipts)
        .values()
        .filter(|r| r.block_height <= height)
        .cloned()
        .collect();
    kept.sort_by_key(|r| (r.block_height, r.index));
    checkpoints.write(state, &kept)?;
    tracing::info!(
        height,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "wrote checkpoint"
    );
    Ok(())
}

/// The longest query text the node accepts (a transaction's statements have their own, smaller
/// bound): PostgreSQL takes up to 1 GiB, but nothing useful needs more than this.
pub const QUERY_BYTES_MAX: usize = 4 << 20;

/// Refuses query text over [`QUERY_BYTES_MAX`] before anything parses it.
pub fn check_query_size(sql: &str) -> Result<()> {
    if sql.len() > QUERY_BYTES_MAX {
        return Err(Error::QueryTooLarge {
            size: sql.len(),
            max: QUERY_BYTES_MAX,
        });
    }
    Ok(())
}

/// Prepares a key for the shell and node: the key at `path`, created on first use.
pub fn load_or_create_key(path: &Path) -> Result<Keypair> {
    let (key, created) = Keypair::load_or_create(path)?;
    if created {
        tracing::info!(path = %path.display(), address = %key.address(), "created a new key");
    }
    Ok(key)
}
