//! Building, signing and checking blocks.

use chainql::wire::{Block, BlockHeader, Evidence, LogRange, SignedTransaction, ValidatorPower};
use chainql::{BLOCK_HEADER_DOMAIN, Hash, Keypair, PublicKey, merkle_root, transaction_hash};
use prost::Message;

use crate::tendermint::{ChainContext, Height, ValidatorSet, codec, verify_commit};
use crate::{Error, Result};

const BLOCK_HASH_DOMAIN: &str = "chainql/block-hash/v1";
/// The most pieces of evidence one block carries.
pub const EVIDENCE_PER_BLOCK_MAX: usize = 64;

/// The hash of a block: a tagged digest of its canonically encoded header.
pub fn header_hash(header: &BlockHeader) -> Hash {
    Hash::tagged(BLOCK_HASH_DOMAIN, &[&header.encode_to_vec()])
}

/// The Merkle root of the hashes of `transactions`, in order.
pub fn transactions_root(transactions: &[SignedTransaction]) -> Hash {
    let hashes: Vec<Hash> = transactions
        .iter()
        .map(|t| transaction_hash(&t.transaction))
        .collect();
    merkle_root(&hashes)
}

/// The Merkle root a header carries over the validator set its block announces (empty when it
/// announces none).
pub fn next_validators_hash(validators: &[ValidatorPower]) -> Vec<u8> {
    if validators.is_empty() {
        return Vec::new();
    }
    let leaves: Vec<Hash> = validators
        .iter()
        .map(|v| {
            Hash::tagged(
                "chainql/next-validator/v1",
                &[&v.public_key, &v.power.to_le_bytes()],
            )
        })
        .collect();
    merkle_root(&leaves).0.to_vec()
}

/// The Merkle root a header carries over its block's evidence (empty when there is none).
pub fn evidence_hash(evidence: &[Evidence]) -> Vec<u8> {
    if evidence.is_empty() {
        return Vec::new();
    }
    let leaves: Vec<Hash> = evidence
        .iter()
        .map(|e| Hash::tagged("chainql/evidence/v1", &[&e.encode_to_vec()]))
        .collect();
    merkle_root(&leaves).0.to_vec()
}

/// The validator set a block announces, as Tendermint weighs it.
pub fn announced_set(validators: &[ValidatorPower]) -> Result<ValidatorSet> {
    let members = validators
        .iter()
        .map(|v| {
            let key: [u8; 32] = v
                .public_key
                .as_slice()
                .try_into()
                .map_err(|_| Error::InvalidBlock("an announced validator key is not 32 bytes".into()))?;
            crate::tendermint::Validator::new(key, v.power)
                .ok_or_else(|| Error::InvalidBlock("an announced validator key is not a valid key".into()))
        })
        .collect::<Result<Vec<_>>>()?;
    ValidatorSet::new(members).ok_or_else(|| {
        Error::InvalidBlock("the announced validator set is empty, has no power or a duplicate".into())
    })
}

/// Everything a proposer decides about a new block.
#[derive(Debug, Clone)]
pub struct BlockProposal {
    pub chain_id: String,
    pub height: u64,
    pub parent_hash: Hash,
    pub timestamp_ms: u64,
    pub state_root: Hash,
    pub log_ranges: Vec<LogRange>,
    pub transactions: Vec<SignedTransaction>,
    /// The validator set the block announces, if any.
    pub next_validators: Vec<ValidatorPower>,
    pub evidence: Vec<Evidence>,
}

impl BlockProposal {
    /// Fills in the derived header fields and signs the header with the proposer's key.
    pub fn sign(self, proposer: &Keypair) -> Block {
        let header = BlockHeader {
            chain_id: self.chain_id,
            height: self.height,
            parent_hash: self.parent_hash.0.to_vec(),
            timestamp_ms: self.timestamp_ms,
            transactions_root: transactions_root(&self.transactions).0.to_vec(),
            transaction_count: u32::try_from(self.transactions.len())
                .expect("block size is bounded by the block producer's config"),
            state_root: self.state_root.0.to_vec(),
            proposer: proposer.public_key().to_bytes().to_vec(),
            log_ranges: self.log_ranges,
            next_validators_hash: next_validators_hash(&self.next_validators),
            evidence_hash: evidence_hash(&self.evidence),
        };
        let signature = proposer.sign(BLOCK_HEADER_DOMAIN, &header.encode_to_vec());
        Block {
            header: Some(header),
            proposer_signature: signature.to_vec(),
            transactions: self.transactions,
            commit: None,
            next_validators: self.next_validators,
            evidence: self.evidence,
        }
    }
}

/// What a block is checked against: the block before it.
#[derive(Debug, Clone)]
pub struct Parent {
    pub chain_id: String,
    pub height: u64,
    pub hash: Hash,
    pub timestamp_ms: u64,
}

/// Checks a block's structure, its link to `parent`, its transaction root and its proposer's
/// signature, with `proposer_allowed` deciding whether the signer may propose. Returns the
/// block's hash.
pub fn verify_block(
    block: &Block,
    parent: &Parent,
    proposer_allowed: impl Fn(&PublicKey) -> bool,
) -> Result<Hash> {
    let header = check_block(block, &parent.chain_id, parent.hash, proposer_allowed)?;
    let invalid = |m: &str| Err(Error::InvalidBlock(format!("block {}: {m}", header.height)));
    if header.height != parent.height + 1 {
        return invalid(&format!("height follows {}", parent.height));
    }
    if header.timestamp_ms <= parent.timestamp_ms {
        return invalid("timestamp is not after the parent's");
    }
    if header.state_root.len() != 32 {
        return invalid("state root is not 32 bytes");
    }
    Ok(header_hash(header))
}

/// The checks a block needs on its own and against its parent's hash: header present, chain
/// id, parent hash, transaction count and root, a proposer `proposer_allowed` admits, and its
/// signature.
fn check_block<'a>(
    block: &'a Block,
    chain_id: &str,
    parent_hash: Hash,
    proposer_allowed: impl Fn(&PublicKey) -> bool,
) -> Result<&'a BlockHeader> {
    let header = block
        .header
        .as_ref()
        .ok_or_else(|| Error::InvalidBlock("the block has no header".into()))?;
    let invalid = |m: String| Err(Error::InvalidBlock(format!("block {}: {m}", header.height)));
    if header.chain_id != chain_id {
        return invalid(format!("chain id {:?}, expected {chain_id:?}", header.chain_id));
    }
    if Hash::from_slice(&header.parent_hash) != Some(parent_hash) {
        return invalid("its parent hash is not the previous block's hash".into());
    }
    if header.transaction_count as usize != block.transactions.len()
        || Hash::from_slice(&header.transactions_root) != Some(transactions_root(&block.transactions))
    {
        return invalid("its transactions do not match its header".into());
    }
    if header.next_validators_hash != next_validators_hash(&block.next_validators) {
        return invalid("its announced validator set does not match its header".into());
    }
    if header.evidence_hash != evidence_hash(&block.evidence) {
        return invalid("its evidence does not match its header".into());
    }
    if block.evidence.len() > EVIDENCE_PER_BLOCK_MAX {
        return invalid(format!(
            "it carries {} pieces of evidence; at most {EVIDENCE_PER_BLOCK_MAX}",
            block.evidence.len()
        ));
    }
    let proposer = PublicKey::from_bytes(&header.proposer)
        .map_err(|e| Error::InvalidBlock(format!("block {}: proposer: {e}", header.height)))?;
    if !proposer_allowed(&proposer) {
        return invalid(format!("its proposer {} is not a validator", proposer.address()));
    }
    proposer
        .verify(
            BLOCK_HEADER_DOMAIN,
            &header.encode_to_vec(),
            &block.proposer_signature,
        )
        .map_err(|_| Error::InvalidBlock(format!("block {}: bad proposer signature", header.height)))?;
    Ok(header)
}

/// What checking a committed block found: its hash, and who committed it.
#[derive(Debug, Clone)]
pub struct CommitProof {
    pub hash: Hash,
    /// The round the block was decided in.
    pub round: u32,
    /// The validators whose precommits the certificate carries, with their stake.
    pub signers: Vec<(chainql::Address, u64)>,
    pub signed_stake: u64,
    pub total_stake: u64,
}

/// Checks a committed block on its own, as anyone holding the chain's validator set can: its
/// chain, its link to its parent (`parent_hash`: the previous block's hash, or the genesis hash
/// for block 1), its transaction count and root, its proposer's signature, and its commit
/// certificate (precommits of more than 2/3 of `validators`' stake, on the chain of `ctx`, for
/// this block's height and header hash). What `chainql verify block` and block sync do.
pub fn verify_committed(
    block: &Block,
    parent_hash: Hash,
    ctx: &ChainContext,
    validators: &ValidatorSet,
) -> Result<CommitProof> {
    let is_validator = |key: &PublicKey| {
        validators
            .validators()
            .iter()
            .any(|v| v.address.0 == key.address())
    };
    let header = check_block(block, &ctx.chain_id, parent_hash, is_validator)?;
    let invalid = |m: String| Error::InvalidBlock(format!("block {}: {m}", header.height));
    let wire = block
        .commit
        .as_ref()
        .ok_or_else(|| invalid("it carries no commit certificate".into()))?;
    let certificate =
        codec::commit_from_wire(wire).map_err(|e| invalid(format!("commit certificate: {e}")))?;
    let hash = header_hash(header);
    verify_commit(ctx, validators, Height(header.height), hash, &certificate)
        .map_err(|e| invalid(format!("commit certificate: {e}")))?;
    let stake_of = |address: chainql::Address| {
        validators
            .validators()
            .iter()
            .find(|v| v.address.0 == address)
            .map_or(0, |v| v.power)
    };
    let signers: Vec<(chainql::Address, u64)> = certificate
        .commit_signatures
        .iter()
        .map(|s| (s.address.0, stake_of(s.address.0)))
        .collect();
    Ok(CommitProof {
        hash,
        round: wire.round,
        signed_stake: signers.iter().map(|(_, s)| s).sum(),
        signers,
        total_stake: validators.validators().iter().map(|v| v.power).sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainql::TransactionBuilder;

    fn proposal(key: &Keypair) -> (BlockProposal, Parent) {
        let builder = TransactionBuilder::new("c", key.clone());
        let parent = Parent {
            chain_id: "c".into(),
            height: 4,
            hash: Hash::tagged("t", &[b"parent"]),
            timestamp_ms: 1000,
        };
        let proposal = BlockProposal {
            chain_id: "c".into(),
            height: 5,
            parent_hash: parent.hash,
            timestamp_ms: 1001,
            state_root: Hash::ZERO,
            log_ranges: vec![],
            transactions: vec![
                builder.build(0, vec!["INSERT INTO t VALUES (1)".into()]),
                builder.build(1, vec!["INSERT INTO t VALUES (2)".into()]),
            ],
            next_validators: vec![ValidatorPower {
                public_key: key.public_key().to_bytes().to_vec(),
                power: 7,
            }],
            evidence: vec![],
        };
        (proposal, parent)
    }

    #[test]
    fn a_signed_block_verifies_and_tampering_is_caught() {
        let key = Keypair::from_seed([9; 32]);
        let (proposal, parent) = proposal(&key);
        let block = proposal.sign(&key);
        let me = key.public_key();
        let hash = verify_block(&block, &parent, |p| *p == me).expect("valid block");
        assert_eq!(Some(hash), block.header.as_ref().map(header_hash));

        assert!(
            verify_block(&block, &parent, |_| false).is_err(),
            "proposer not allowed"
        );

        let mut swapped = block.clone();
        swapped.transactions.swap(0, 1);
        assert!(
            verify_block(&swapped, &parent, |p| *p == me).is_err(),
            "order is committed"
        );

        let mut later = block.clone();
        if let Some(h) = later.header.as_mut() {
            h.timestamp_ms += 1;
        }
        assert!(
            verify_block(&later, &parent, |p| *p == me).is_err(),
            "signature covers the header"
        );

        let mut other_set = block.clone();
        other_set.next_validators[0].power = 8;
        assert!(
            verify_block(&other_set, &parent, |p| *p == me).is_err(),
            "the announced set is committed"
        );

        let mut with_evidence = block.clone();
        with_evidence.evidence.push(Evidence::default());
        assert!(
            verify_block(&with_evidence, &parent, |p| *p == me).is_err(),
            "evidence is committed"
        );

        let wrong_parent = Parent { height: 5, ..parent };
        assert!(verify_block(&block, &wrong_parent, |p| *p == me).is_err());
    }
}
