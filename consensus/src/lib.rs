//! ChainQL consensus: the validator set, the genesis, building and checking signed blocks and
//! their commit certificates, the durable block store, and Tendermint ([`tendermint`]) between
//! validators. A block is committed once more than 2/3 of the stake precommitted its header hash
//! and it is durably stored with that certificate.
//!
//! ```
//! use chainql::{Hash, Keypair};
//! use chainql_consensus::{BlockProposal, Genesis, Parent, ValidatorSet, verify_block};
//!
//! let key = Keypair::from_seed([1; 32]);
//! let genesis = Genesis::single_validator("devnet", 0, &key.public_key(), &[]);
//! let validators = ValidatorSet::from_genesis(&genesis).unwrap();
//! let block = BlockProposal {
//!     chain_id: "devnet".into(),
//!     height: 1,
//!     parent_hash: genesis.hash(),
//!     timestamp_ms: 1,
//!     state_root: Hash::ZERO,
//!     log_ranges: vec![],
//!     transactions: vec![],
//!     next_validators: vec![],
//!     evidence: vec![],
//!     parts: vec![],
//! }
//! .sign(&key);
//! let parent = Parent { chain_id: "devnet".into(), height: 0, hash: genesis.hash(), timestamp_ms: 0 };
//! verify_block(&block, &parent, |p| validators.contains(p)).unwrap();
//! ```

mod block;
mod evidence;
mod genesis;
mod store;
pub mod tendermint;

use std::io::Write;
use std::path::Path;

use chainql::{Address, PublicKey};

pub use block::{
    BlockProposal, CommitProof, EVIDENCE_PER_BLOCK_MAX, PART_DOMAIN, Parent, announced_set, check_parts,
    evidence_hash, header_hash, next_validators_hash, parts_hash, sign_part, transactions_root, verify_block,
    verify_committed, verify_part,
};
pub use evidence::{Equivocation, check_evidence, evidence_to_wire};
pub use genesis::{
    DEFAULT_EPOCH_BLOCKS, GENESIS_BYTES_MAX, Genesis, GenesisAccount, GenesisValidator, Validator,
};
pub use store::{BLOCK_BYTES_MAX, BlockStore};

/// Errors of the consensus layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid genesis: {0}")]
    InvalidGenesis(String),
    #[error("invalid block: {0}")]
    InvalidBlock(String),
    #[error("corrupt block store {path} at offset {offset}: {reason}")]
    CorruptBlockStore {
        path: String,
        offset: u64,
        reason: String,
    },
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The validators and their voting power.
#[derive(Debug, Clone)]
pub struct ValidatorSet {
    validators: Vec<Validator>,
}

impl ValidatorSet {
    pub fn from_genesis(genesis: &Genesis) -> Result<ValidatorSet> {
        Ok(ValidatorSet {
            validators: genesis.validators()?,
        })
    }

    pub fn validators(&self) -> &[Validator] {
        &self.validators
    }

    pub fn contains(&self, key: &PublicKey) -> bool {
        self.validators.iter().any(|v| v.public_key == *key)
    }

    pub fn get(&self, address: &Address) -> Option<&Validator> {
        self.validators.iter().find(|v| v.address == *address)
    }

    pub fn total_stake(&self) -> u64 {
        self.validators.iter().map(|v| v.stake).sum()
    }

    /// The set as Tendermint weighs it: each validator's stake is its voting power.
    pub fn consensus_set(&self) -> Result<tendermint::ValidatorSet> {
        let members = self
            .validators
            .iter()
            .map(|v| {
                tendermint::Validator::new(v.public_key.to_bytes(), v.stake)
                    .ok_or_else(|| Error::InvalidGenesis(format!("validator {} has no valid key", v.address)))
            })
            .collect::<Result<Vec<_>>>()?;
        tendermint::ValidatorSet::new(members).ok_or_else(|| {
            Error::InvalidGenesis(
                "the validator set is empty, has a zero stake or a duplicate, or too much stake".into(),
            )
        })
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, with fsyncs, so a crash leaves
/// either the old file or the whole new one.
pub fn write_file_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temporary).map_err(|e| Error::io(&temporary, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io(&temporary, e))?;
    std::fs::rename(&temporary, path).map_err(|e| Error::io(path, e))?;
    sync_dir(dir)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}
