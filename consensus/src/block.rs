//! Building, signing and checking blocks.

use chainql::wire::{Block, BlockHeader, BlockPart, Evidence, LogRange, SignedTransaction, ValidatorPower};
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

/// A Merkle root over encoded messages, each leaf tagged with `tag`; empty bytes for none (so a
/// header without the field encodes as before it existed).
fn root_of<M: Message>(tag: &str, items: &[M]) -> Vec<u8> {
    if items.is_empty() {
        return Vec::new();
    }
    let leaves: Vec<Hash> = items
        .iter()
        .map(|item| Hash::tagged(tag, &[&item.encode_to_vec()]))
        .collect();
    merkle_root(&leaves).0.to_vec()
}

/// The root a header carries over the validator set its block announces.
pub fn next_validators_hash(validators: &[ValidatorPower]) -> Vec<u8> {
    root_of("chainql/next-validator/v1", validators)
}

/// The root a header carries over its block's evidence.
pub fn evidence_hash(evidence: &[Evidence]) -> Vec<u8> {
    root_of("chainql/evidence/v1", evidence)
}

/// The root a header carries over its block's parts.
pub fn parts_hash(parts: &[BlockPart]) -> Vec<u8> {
    root_of("chainql/part/v1", parts)
}

/// Signatures of block parts are made under this domain.
pub const PART_DOMAIN: &str = "chainql/block-part/v1";

/// What the signer of a block part signs.
fn part_signing_bytes(
    chain_id: &str,
    height: u64,
    parent_hash: &Hash,
    partition: u32,
    count: u32,
    root: &[u8],
) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(8 + chain_id.len() + 8 + 32 + 8 + 32);
    bytes.extend_from_slice(&(chain_id.len() as u32).to_be_bytes());
    bytes.extend_from_slice(chain_id.as_bytes());
    bytes.extend_from_slice(&height.to_be_bytes());
    bytes.extend_from_slice(&parent_hash.0);
    bytes.extend_from_slice(&partition.to_be_bytes());
    bytes.extend_from_slice(&count.to_be_bytes());
    bytes.extend_from_slice(root);
    bytes
}

/// Signs `transactions` (all of one partition, in block order) as a part of the block at
/// `height` after `parent_hash`.
pub fn sign_part(
    key: &Keypair,
    chain_id: &str,
    height: u64,
    parent_hash: &Hash,
    partition: u32,
    transactions: &[SignedTransaction],
) -> BlockPart {
    let count = u32::try_from(transactions.len()).expect("a part is bounded by the block's size");
    let root = transactions_root(transactions).0.to_vec();
    let signature = key.sign(
        PART_DOMAIN,
        &part_signing_bytes(chain_id, height, parent_hash, partition, count, &root),
    );
    BlockPart {
        partition,
        validator: key.public_key().to_bytes().to_vec(),
        count,
        transactions_root: root,
        signature: signature.to_vec(),
    }
}

/// Whether `part` is `key`'s signature over `transactions` as the part of partition
/// `part.partition` of the block at `height` after `parent_hash`.
pub fn verify_part(
    part: &BlockPart,
    chain_id: &str,
    height: u64,
    parent_hash: &Hash,
    key: &PublicKey,
    transactions: &[SignedTransaction],
) -> bool {
    part.validator.as_slice() == key.to_bytes().as_slice()
        && part.count as usize == transactions.len()
        && part.transactions_root.as_slice() == transactions_root(transactions).0.as_slice()
        && key
            .verify(
                PART_DOMAIN,
                &part_signing_bytes(
                    chain_id,
                    height,
                    parent_hash,
                    part.partition,
                    part.count,
                    &part.transactions_root,
                ),
                &part.signature,
            )
            .is_ok()
}

/// Checks the parts of a block: in increasing partition order, together covering every
/// transaction once, each transaction of its part's partition (`partition_of`), each part's
/// root and signature good, and each signer one `may_sign` allows for the partition. Returns
/// each part's signer with the range of the block's transactions it covers.
pub fn check_parts(
    block: &Block,
    partition_of: impl Fn(&SignedTransaction) -> Option<u32>,
    may_sign: impl Fn(u32, &PublicKey) -> bool,
) -> Result<Vec<(PublicKey, std::ops::Range<usize>)>> {
    let header = block
        .header
        .as_ref()
        .ok_or_else(|| Error::InvalidBlock("the block has no header".into()))?;
    let invalid = |m: String| Error::InvalidBlock(format!("block {}: {m}", header.height));
    let parent_hash = Hash::from_slice(&header.parent_hash)
        .ok_or_else(|| invalid("its parent hash is not 32 bytes".into()))?;
    let mut signed = Vec::with_capacity(block.parts.len());
    let mut start = 0usize;
    let mut previous: Option<u32> = None;
    for part in &block.parts {
        if previous.is_some_and(|p| p >= part.partition) {
            return Err(invalid("its parts are not in increasing partition order".into()));
        }
        previous = Some(part.partition);
        let end = start + part.count as usize;
        if part.count == 0 || end > block.transactions.len() {
            return Err(invalid(format!(
                "part {} covers no transactions, or too many",
                part.partition
            )));
        }
        let transactions = &block.transactions[start..end];
        if transactions_root(transactions).0.as_slice() != part.transactions_root.as_slice() {
            return Err(invalid(format!(
                "part {}'s root does not match its transactions",
                part.partition
            )));
        }
        if let Some(i) = transactions
            .iter()
            .position(|t| partition_of(t) != Some(part.partition))
        {
            return Err(invalid(format!(
                "transaction {} is not of partition {}",
                start + i,
                part.partition
            )));
        }
        let key = PublicKey::from_bytes(&part.validator)
            .map_err(|e| invalid(format!("part {}'s signer: {e}", part.partition)))?;
        if !may_sign(part.partition, &key) {
            return Err(invalid(format!(
                "part {} is signed by {}, neither its assignee nor the proposer",
                part.partition,
                key.address()
            )));
        }
        let bytes = part_signing_bytes(
            &header.chain_id,
            header.height,
            &parent_hash,
            part.partition,
            part.count,
            &part.transactions_root,
        );
        key.verify(PART_DOMAIN, &bytes, &part.signature)
            .map_err(|_| invalid(format!("part {}'s signature does not hold", part.partition)))?;
        signed.push((key, start..end));
        start = end;
    }
    if start != block.transactions.len() {
        return Err(invalid(format!(
            "its parts cover {start} of its {} transactions",
            block.transactions.len()
        )));
    }
    Ok(signed)
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
    /// The transactions by partition, each part signed by the validator that checked it.
    pub parts: Vec<BlockPart>,
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
            parts_hash: parts_hash(&self.parts),
        };
        let signature = proposer.sign(BLOCK_HEADER_DOMAIN, &header.encode_to_vec());
        Block {
            header: Some(header),
            proposer_signature: signature.to_vec(),
            transactions: self.transactions,
            commit: None,
            next_validators: self.next_validators,
            evidence: self.evidence,
            parts: self.parts,
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
    if header.parts_hash != parts_hash(&block.parts) {
        return invalid("its parts do not match its header".into());
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
            parts: vec![],
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

        let mut with_part = block.clone();
        with_part.parts.push(BlockPart::default());
        assert!(
            verify_block(&with_part, &parent, |p| *p == me).is_err(),
            "parts are committed"
        );

        let wrong_parent = Parent { height: 5, ..parent };
        assert!(verify_block(&block, &wrong_parent, |p| *p == me).is_err());
    }

    #[test]
    fn parts_must_cover_the_block_in_order_each_signed_by_an_allowed_validator() {
        let proposer = Keypair::from_seed([9; 32]);
        let assignee = Keypair::from_seed([10; 32]);
        let (mut proposal, _) = proposal(&proposer);
        let user = chainql::TransactionBuilder::new("c", Keypair::from_seed([11; 32]));
        proposal
            .transactions
            .push(user.build(0, vec!["INSERT INTO t VALUES (3)".into()]));
        // The first two transactions are partition 0's, the third partition 1's.
        let partition_of = |t: &SignedTransaction| Some(u32::from(proposal_sender(t) == user.key.address()));
        let txs = proposal.transactions.clone();
        let parts = |first: &Keypair| {
            vec![
                sign_part(first, "c", 5, &proposal.parent_hash, 0, &txs[..2]),
                sign_part(&proposer, "c", 5, &proposal.parent_hash, 1, &txs[2..]),
            ]
        };
        let may_sign = |partition: u32, key: &PublicKey| {
            *key == proposer.public_key() || (partition == 0 && *key == assignee.public_key())
        };
        let with = |parts: Vec<BlockPart>| {
            let mut p = proposal.clone();
            p.parts = parts;
            p.sign(&proposer)
        };
        let signed = check_parts(&with(parts(&assignee)), partition_of, may_sign).expect("valid parts");
        assert_eq!(signed.len(), 2);
        assert_eq!(signed[0].0, assignee.public_key());
        assert_eq!(signed[1].1, 2..3);

        // A signer the partition was not assigned to.
        let stranger = Keypair::from_seed([12; 32]);
        assert!(check_parts(&with(parts(&stranger)), partition_of, may_sign).is_err());
        // A part missing, parts out of order, a forged signature, a transaction in the wrong part.
        assert!(check_parts(&with(parts(&assignee)[..1].to_vec()), partition_of, may_sign).is_err());
        let mut reversed = parts(&assignee);
        reversed.reverse();
        assert!(check_parts(&with(reversed), partition_of, may_sign).is_err());
        let mut forged = parts(&assignee);
        forged[0].signature[0] ^= 1;
        assert!(check_parts(&with(forged), partition_of, may_sign).is_err());
        let everything_in_one = vec![sign_part(&proposer, "c", 5, &proposal.parent_hash, 0, &txs)];
        assert!(check_parts(&with(everything_in_one), partition_of, may_sign).is_err());
        // Signed for another height.
        let elsewhere = vec![
            sign_part(&assignee, "c", 6, &proposal.parent_hash, 0, &txs[..2]),
            sign_part(&proposer, "c", 5, &proposal.parent_hash, 1, &txs[2..]),
        ];
        assert!(check_parts(&with(elsewhere), partition_of, may_sign).is_err());
    }

    fn proposal_sender(t: &SignedTransaction) -> chainql::Address {
        let body = chainql::wire::Transaction::decode(t.transaction.as_slice()).expect("decodes");
        PublicKey::from_bytes(&body.sender).expect("key").address()
    }
}
