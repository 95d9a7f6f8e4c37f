//! Tendermint between validators, driven through Malachite's sans-IO core
//! (`arc-malachitebft-core-consensus`): ChainQL supplies the types ([`context`]) and carries out
//! what the core asks ([`engine`]); [`sim`] runs validators against a simulated network,
//! deterministically from a seed.

pub mod codec;
pub mod context;
pub mod engine;
pub mod sim;
pub mod wal;

pub use context::{BlockId, ChainContext, Height, Validator, ValidatorAddress, ValidatorSet};
pub use engine::{CommitCheckError, Engine, Message, Output, check_signed, verify_commit};
pub use malachite_core_types::{
    LinearTimeouts, NilOrVal, Round, SignedProposal, SignedVote, Timeout, TimeoutKind, VoteType,
};
pub use malachite_signing_ed25519::Signature;
