//! ChainQL's types for Malachite's Tendermint core: heights, validators weighted by stake, block
//! hashes as the values voted on, proposals and votes with their canonical signing bytes.

use std::fmt;

use chainql::{Address, Hash};
use malachite_core_types::{self as mc, LinearTimeouts, NilOrVal, Round, ValueId, VoteType, VotingPower};
use malachite_signing_ed25519::{Ed25519, PublicKey};

/// A block height; 1 is the first block after genesis.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Height(pub u64);

impl fmt::Display for Height {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl mc::Height for Height {
    const ZERO: Self = Height(0);
    const INITIAL: Self = Height(1);

    fn increment_by(&self, n: u64) -> Self {
        Height(self.0.saturating_add(n))
    }

    fn decrement_by(&self, n: u64) -> Option<Self> {
        self.0.checked_sub(n).map(Height)
    }

    fn as_u64(&self) -> u64 {
        self.0
    }
}

/// A validator's account address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ValidatorAddress(pub Address);

impl fmt::Display for ValidatorAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl mc::Address for ValidatorAddress {}

/// One validator: its address, its consensus key and its voting power (its bonded stake).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validator {
    pub address: ValidatorAddress,
    pub public_key: PublicKey,
    pub power: VotingPower,
}

impl Validator {
    /// A validator for an ed25519 public key (32 bytes); its address is the account address of
    /// the key.
    pub fn new(public_key: [u8; 32], power: VotingPower) -> Option<Validator> {
        Some(Validator {
            address: ValidatorAddress(Address::of_public_key(&public_key)),
            public_key: PublicKey::from_bytes(public_key).ok()?,
            power,
        })
    }
}

impl mc::Validator<ChainContext> for Validator {
    fn address(&self) -> &ValidatorAddress {
        &self.address
    }

    fn public_key(&self) -> &PublicKey {
        &self.public_key
    }

    fn voting_power(&self) -> VotingPower {
        self.power
    }
}

/// The most voting power a set may hold: quorum arithmetic multiplies it by small constants.
pub const TOTAL_POWER_MAX: VotingPower = u64::MAX / 8;

/// The longest proposer schedule: voting powers are scaled down so that their sum fits.
const SCHEDULE_MAX: u64 = 4096;

/// The validators of a height, in Tendermint's order (power descending, then address), with
/// the proposer schedule their powers give.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidatorSet {
    validators: Vec<Validator>,
    total: VotingPower,
    /// Weighted round-robin: the index of the proposer of each slot; slot `(height + round)`
    /// modulo its length proposes. Each validator holds slots in proportion to its power,
    /// spread evenly (Tendermint's proposer-priority algorithm over one period).
    schedule: Vec<u16>,
}

impl ValidatorSet {
    /// A set of validators with positive power and distinct addresses; `None` otherwise, or when
    /// empty, or over 65,535 validators.
    pub fn new(mut validators: Vec<Validator>) -> Option<ValidatorSet> {
        if validators.is_empty() || validators.len() > u16::MAX as usize {
            return None;
        }
        if validators.iter().any(|v| v.power == 0) {
            return None;
        }
        validators.sort_by(|a, b| b.power.cmp(&a.power).then(a.address.cmp(&b.address)));
        if validators.windows(2).any(|w| w[0].address == w[1].address) {
            return None;
        }
        let total = validators
            .iter()
            .try_fold(0u64, |sum, v| sum.checked_add(v.power))
            .filter(|total| *total <= TOTAL_POWER_MAX)?;
        let schedule = proposer_schedule(&validators, total);
        Some(ValidatorSet {
            validators,
            total,
            schedule,
        })
    }

    pub fn validators(&self) -> &[Validator] {
        &self.validators
    }

    /// The proposer of `height` and `round`.
    pub fn proposer(&self, height: Height, round: Round) -> &Validator {
        let round = round.as_u32().unwrap_or(0) as u64;
        let slot = height.0.wrapping_add(round) % self.schedule.len() as u64;
        &self.validators[self.schedule[slot as usize] as usize]
    }
}

/// Tendermint's proposer priorities over one period: every slot, each validator gains its
/// (scaled) power; the highest priority (ties: the earlier in the set's order) proposes and
/// loses the total. After `total` slots every priority is back at zero, so the schedule repeats.
fn proposer_schedule(validators: &[Validator], total: VotingPower) -> Vec<u16> {
    let scale = total.div_ceil(SCHEDULE_MAX).max(1);
    let powers: Vec<i64> = validators
        .iter()
        .map(|v| (v.power / scale).max(1) as i64)
        .collect();
    let period: i64 = powers.iter().sum();
    let mut priorities = vec![0i64; powers.len()];
    let mut schedule = Vec::with_capacity(period as usize);
    for _ in 0..period {
        for (priority, power) in priorities.iter_mut().zip(&powers) {
            *priority += power;
        }
        let mut chosen = 0;
        for (i, priority) in priorities.iter().enumerate() {
            if *priority > priorities[chosen] {
                chosen = i;
            }
        }
        priorities[chosen] -= period;
        schedule.push(chosen as u16);
    }
    schedule
}

impl mc::ValidatorSet<ChainContext> for ValidatorSet {
    fn count(&self) -> usize {
        self.validators.len()
    }

    fn total_voting_power(&self) -> VotingPower {
        self.total
    }

    fn get_by_address(&self, address: &ValidatorAddress) -> Option<&Validator> {
        self.validators.iter().find(|v| &v.address == address)
    }

    fn get_by_index(&self, index: usize) -> Option<&Validator> {
        self.validators.get(index)
    }
}

/// What validators agree on: the hash of a block's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockId(pub Hash);

impl mc::Value for BlockId {
    type Id = Hash;

    fn id(&self) -> Hash {
        self.0
    }
}

/// A proposal of a block at a height and round (`pol_round`: the round of the polka that
/// justifies re-proposing it, or nil).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    pub height: Height,
    pub round: Round,
    pub value: BlockId,
    pub pol_round: Round,
    pub proposer: ValidatorAddress,
}

impl mc::Proposal<ChainContext> for Proposal {
    fn height(&self) -> Height {
        self.height
    }

    fn round(&self) -> Round {
        self.round
    }

    fn value(&self) -> &BlockId {
        &self.value
    }

    fn take_value(self) -> BlockId {
        self.value
    }

    fn pol_round(&self) -> Round {
        self.pol_round
    }

    fn validator_address(&self) -> &ValidatorAddress {
        &self.proposer
    }
}

/// A prevote or precommit for a block (or for nil).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vote {
    pub vote_type: VoteType,
    pub height: Height,
    pub round: Round,
    pub value: NilOrVal<Hash>,
    pub validator: ValidatorAddress,
}

impl mc::Vote<ChainContext> for Vote {
    fn height(&self) -> Height {
        self.height
    }

    fn round(&self) -> Round {
        self.round
    }

    fn value(&self) -> &NilOrVal<Hash> {
        &self.value
    }

    fn take_value(self) -> NilOrVal<Hash> {
        self.value
    }

    fn vote_type(&self) -> VoteType {
        self.vote_type
    }

    fn validator_address(&self) -> &ValidatorAddress {
        &self.validator
    }

    fn extension(&self) -> Option<&mc::SignedExtension<ChainContext>> {
        None
    }

    fn take_extension(&mut self) -> Option<mc::SignedExtension<ChainContext>> {
        None
    }

    fn extend(self, _extension: mc::SignedExtension<ChainContext>) -> Self {
        // ChainQL does not use vote extensions (the policy is always `Disabled`).
        self
    }
}

/// The core sees no parts (`ValuePayload::ProposalOnly`): a proposal names its block by hash,
/// and the host carries the block beside the proposal and checks it before the engine sees the
/// proposal, because the core takes every proposal it is given as valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoParts {}

impl mc::ProposalPart<ChainContext> for NoParts {
    fn is_first(&self) -> bool {
        match *self {}
    }

    fn is_last(&self) -> bool {
        match *self {}
    }
}

/// The context Malachite's core runs in: one chain, whose id is in every signed message so a
/// vote for one chain is worthless on another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainContext {
    pub chain_id: String,
}

/// Domain tags of consensus signatures (see `signing_bytes`).
pub const PROPOSAL_DOMAIN: &str = "chainql/consensus-proposal/v1";
pub const VOTE_DOMAIN: &str = "chainql/consensus-vote/v1";

impl ChainContext {
    pub fn new(chain_id: impl Into<String>) -> ChainContext {
        ChainContext {
            chain_id: chain_id.into(),
        }
    }

    /// What a proposal's signature covers after its domain tag ([`PROPOSAL_DOMAIN`], signed as
    /// `chainql::signing_bytes` lays out): the chain id, height, round, block hash, POL round and
    /// proposer, each fixed-width or length-prefixed, big-endian.
    pub fn proposal_body(&self, proposal: &Proposal) -> Vec<u8> {
        let mut bytes = self.chain_prefix();
        bytes.extend_from_slice(&proposal.height.0.to_be_bytes());
        bytes.extend_from_slice(&proposal.round.as_i64().to_be_bytes());
        bytes.extend_from_slice(proposal.value.0.as_bytes());
        bytes.extend_from_slice(&proposal.pol_round.as_i64().to_be_bytes());
        bytes.extend_from_slice(&proposal.proposer.0.0);
        bytes
    }

    /// What a vote's signature covers after its domain tag ([`VOTE_DOMAIN`]), laid out like a
    /// proposal's; nil is a zero flag byte.
    pub fn vote_body(&self, vote: &Vote) -> Vec<u8> {
        let mut bytes = self.chain_prefix();
        bytes.push(match vote.vote_type {
            VoteType::Prevote => 1,
            VoteType::Precommit => 2,
        });
        bytes.extend_from_slice(&vote.height.0.to_be_bytes());
        bytes.extend_from_slice(&vote.round.as_i64().to_be_bytes());
        match &vote.value {
            NilOrVal::Nil => bytes.push(0),
            NilOrVal::Val(hash) => {
                bytes.push(1);
                bytes.extend_from_slice(hash.as_bytes());
            }
        }
        bytes.extend_from_slice(&vote.validator.0.0);
        bytes
    }

    fn chain_prefix(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(128);
        bytes.extend_from_slice(&(self.chain_id.len() as u32).to_be_bytes());
        bytes.extend_from_slice(self.chain_id.as_bytes());
        bytes
    }
}

impl mc::Context for ChainContext {
    type Address = ValidatorAddress;
    type Height = Height;
    type ProposalPart = NoParts;
    type Proposal = Proposal;
    type Validator = Validator;
    type ValidatorSet = ValidatorSet;
    type Timeouts = LinearTimeouts;
    type Value = BlockId;
    type Vote = Vote;
    type Extension = ();
    type SigningScheme = Ed25519;

    fn select_proposer<'a>(&self, set: &'a ValidatorSet, height: Height, round: Round) -> &'a Validator {
        set.proposer(height, round)
    }

    fn new_proposal(
        &self,
        height: Height,
        round: Round,
        value: BlockId,
        pol_round: Round,
        address: ValidatorAddress,
    ) -> Proposal {
        Proposal {
            height,
            round,
            value,
            pol_round,
            proposer: address,
        }
    }

    fn new_prevote(
        &self,
        height: Height,
        round: Round,
        value_id: NilOrVal<ValueId<Self>>,
        address: ValidatorAddress,
    ) -> Vote {
        Vote {
            vote_type: VoteType::Prevote,
            height,
            round,
            value: value_id,
            validator: address,
        }
    }

    fn new_precommit(
        &self,
        height: Height,
        round: Round,
        value_id: NilOrVal<ValueId<Self>>,
        address: ValidatorAddress,
    ) -> Vote {
        Vote {
            vote_type: VoteType::Precommit,
            height,
            round,
            value: value_id,
            validator: address,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validator(seed: u8, power: u64) -> Validator {
        let key = chainql::Keypair::from_seed([seed; 32]);
        Validator::new(key.public_key().to_bytes(), power).expect("a valid key")
    }

    #[test]
    fn proposers_are_chosen_in_proportion_to_stake_and_spread_out() {
        let set = ValidatorSet::new(vec![validator(1, 3), validator(2, 1), validator(3, 2)]).expect("a set");
        let order: Vec<u64> = (0..6)
            .map(|h| set.proposer(Height(h), Round::new(0)).power)
            .collect();
        let count = |p: u64| order.iter().filter(|&&x| x == p).count();
        assert_eq!((count(3), count(2), count(1)), (3, 2, 1), "{order:?}");
        assert!(order.windows(2).all(|w| w[0] != w[1] || w[0] == 3), "{order:?}");
        // A new round moves to the next slot; the same height and round, the same proposer.
        assert_eq!(
            set.proposer(Height(4), Round::new(1)),
            set.proposer(Height(5), Round::new(0))
        );
    }

    #[test]
    fn large_stakes_are_scaled_into_a_bounded_schedule() {
        let set =
            ValidatorSet::new(vec![validator(1, 3_000_000_000), validator(2, 1_000_000_000)]).expect("a set");
        assert!(set.schedule.len() as u64 <= SCHEDULE_MAX);
        let first = set.validators()[0].address;
        let share = set
            .schedule
            .iter()
            .filter(|&&i| set.validators[i as usize].address == first)
            .count();
        // Scaling keeps the shares to within one slot in a thousand.
        let ratio = share as f64 / set.schedule.len() as f64;
        assert!((ratio - 0.75).abs() < 0.001, "{ratio}");
    }

    #[test]
    fn bad_sets_are_refused() {
        assert!(ValidatorSet::new(vec![]).is_none());
        assert!(ValidatorSet::new(vec![validator(1, 0)]).is_none());
        assert!(ValidatorSet::new(vec![validator(1, 1), validator(1, 2)]).is_none());
        assert!(ValidatorSet::new(vec![validator(1, u64::MAX), validator(2, 1)]).is_none());
    }

    #[test]
    fn signing_bytes_bind_the_chain_and_every_field() {
        let a = ChainContext::new("a");
        let vote = Vote {
            vote_type: VoteType::Prevote,
            height: Height(7),
            round: Round::new(1),
            value: NilOrVal::Val(Hash([9; 32])),
            validator: validator(1, 1).address,
        };
        let base = a.vote_body(&vote);
        assert_ne!(base, ChainContext::new("b").vote_body(&vote));
        let mut precommit = vote.clone();
        precommit.vote_type = VoteType::Precommit;
        assert_ne!(base, a.vote_body(&precommit));
        let mut nil = vote.clone();
        nil.value = NilOrVal::Nil;
        assert_ne!(base, a.vote_body(&nil));
        let mut later = vote;
        later.round = Round::new(2);
        assert_ne!(base, a.vote_body(&later));
    }
}
