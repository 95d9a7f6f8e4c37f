//! Consensus messages and write-ahead-log entries to and from their wire form
//! (`chainql/proto/consensus.proto`). Decoding checks everything a peer or a damaged file could
//! get wrong — lengths of hashes, addresses and signatures, enum values, missing fields,
//! rounds, the number of signatures — and says which.

use chainql::wire::consensus as pb;
use chainql::{Address, Hash};
use malachite_core_consensus::{Input, ProposedValue};
use malachite_core_types::{
    CommitCertificate, CommitSignature, NilOrVal, PolkaCertificate, PolkaSignature, Round, RoundCertificate,
    RoundCertificateType, RoundSignature, SignedProposal, SignedVote, Timeout, TimeoutKind, Validity,
    ValueOrigin, VoteType,
};
use malachite_signing_ed25519::Signature;
use prost::Message as _;

use super::context::{BlockId, ChainContext, Height, Proposal, ValidatorAddress, Vote};
use super::engine::Message;

/// The highest round accepted: far beyond any real run (each round lasts longer than the one
/// before), and far from where the core's round arithmetic would overflow.
pub const ROUND_MAX: u32 = 1_000_000;

/// The most signatures one certificate may carry (far above any validator set ChainQL runs).
pub const CERTIFICATE_SIGNATURES_MAX: usize = 10_000;
/// The largest consensus message or log entry decoded (a block in the log excepted).
pub const ENCODED_BYTES_MAX: usize = 4 << 20;
/// The largest block a proposer builds, a validator accepts beside a proposal, and the
/// write-ahead log keeps.
pub const PROPOSED_BLOCK_BYTES_MAX: usize = 64 << 20;

/// One record of the write-ahead log: an input of the core, or a block a proposal names.
#[derive(Clone, Debug, PartialEq)]
pub enum WalRecord {
    Input(Input<ChainContext>),
    Block(Vec<u8>),
}

/// Encodes an encoded block as a write-ahead-log record.
pub fn encode_wal_block(block: &[u8]) -> Result<Vec<u8>> {
    if block.len() > PROPOSED_BLOCK_BYTES_MAX {
        return Err(CodecError::TooLarge(block.len()));
    }
    Ok(pb::WalEntry {
        entry: Some(pb::wal_entry::Entry::Block(block.to_vec())),
    }
    .encode_to_vec())
}

/// Decodes a write-ahead-log record of either kind.
pub fn decode_wal_record(bytes: &[u8]) -> Result<WalRecord> {
    if bytes.len() > PROPOSED_BLOCK_BYTES_MAX + 64 {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    let decoded = pb::WalEntry::decode(bytes).map_err(|e| CodecError::Protobuf(e.to_string()))?;
    match decoded.entry.ok_or(CodecError::Missing("entry"))? {
        pb::wal_entry::Entry::Block(block) => Ok(WalRecord::Block(block)),
        entry if bytes.len() <= ENCODED_BYTES_MAX => input_from_wire(entry).map(WalRecord::Input),
        _ => Err(CodecError::TooLarge(bytes.len())),
    }
}

/// Why bytes are not a valid consensus message or log entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("malformed protobuf: {0}")]
    Protobuf(String),
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("{what} must be {expected} bytes, not {found}")]
    Length {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("{0} has an unknown value")]
    Unknown(&'static str),
    #[error("{what} has {found} signatures; at most {max}")]
    TooManySignatures {
        what: &'static str,
        found: usize,
        max: usize,
    },
    #[error("{0} bytes is larger than the {ENCODED_BYTES_MAX} bytes accepted")]
    TooLarge(usize),
    #[error("{0} is never written to the log")]
    NotLogged(&'static str),
}

type Result<T> = std::result::Result<T, CodecError>;

fn hash(bytes: &[u8], what: &'static str) -> Result<Hash> {
    Hash::from_slice(bytes).ok_or(CodecError::Length {
        what,
        expected: 32,
        found: bytes.len(),
    })
}

fn address(bytes: &[u8], what: &'static str) -> Result<ValidatorAddress> {
    let array: [u8; 20] = bytes.try_into().map_err(|_| CodecError::Length {
        what,
        expected: 20,
        found: bytes.len(),
    })?;
    Ok(ValidatorAddress(Address(array)))
}

fn signature(bytes: &[u8], what: &'static str) -> Result<Signature> {
    let array: [u8; 64] = bytes.try_into().map_err(|_| CodecError::Length {
        what,
        expected: 64,
        found: bytes.len(),
    })?;
    Ok(Signature::from_bytes(array))
}

fn nil_or_block(bytes: &[u8], what: &'static str) -> Result<NilOrVal<Hash>> {
    if bytes.is_empty() {
        Ok(NilOrVal::Nil)
    } else {
        hash(bytes, what).map(NilOrVal::Val)
    }
}

fn block_bytes(value: &NilOrVal<Hash>) -> Vec<u8> {
    match value {
        NilOrVal::Nil => Vec::new(),
        NilOrVal::Val(hash) => hash.0.to_vec(),
    }
}

fn vote_type(value: i32) -> Result<VoteType> {
    match pb::VoteType::try_from(value) {
        Ok(pb::VoteType::Prevote) => Ok(VoteType::Prevote),
        Ok(pb::VoteType::Precommit) => Ok(VoteType::Precommit),
        _ => Err(CodecError::Unknown("vote type")),
    }
}

fn vote_type_code(vote_type: VoteType) -> i32 {
    match vote_type {
        VoteType::Prevote => pb::VoteType::Prevote as i32,
        VoteType::Precommit => pb::VoteType::Precommit as i32,
    }
}

/// A round number of the wire (-1: none) as the core's.
fn optional_round(round: i64, what: &'static str) -> Result<Round> {
    match round {
        -1 => Ok(Round::Nil),
        0..=0xffff_ffff => self::round(round as u32, what),
        _ => Err(CodecError::Unknown(what)),
    }
}

/// A round of the wire, at most [`ROUND_MAX`].
fn round(round: u32, what: &'static str) -> Result<Round> {
    if round > ROUND_MAX {
        return Err(CodecError::Unknown(what));
    }
    Ok(Round::new(round))
}

fn round_number(round: Round, what: &'static str) -> Result<u32> {
    round.as_u32().ok_or(CodecError::Unknown(what))
}

fn count_ok(found: usize, what: &'static str) -> Result<()> {
    if found > CERTIFICATE_SIGNATURES_MAX {
        return Err(CodecError::TooManySignatures {
            what,
            found,
            max: CERTIFICATE_SIGNATURES_MAX,
        });
    }
    Ok(())
}

/// The signers of a polka or commit certificate in their wire form.
fn signatures_to_wire<'a>(
    signers: impl Iterator<Item = (&'a ValidatorAddress, &'a Signature)>,
) -> Vec<pb::CertificateSignature> {
    signers
        .map(|(address, signature)| pb::CertificateSignature {
            validator: address.0.0.to_vec(),
            signature: signature.to_bytes().to_vec(),
            r#type: 0,
            block: Vec::new(),
        })
        .collect()
}

/// The signers of a polka or commit certificate, checked: at most
/// [`CERTIFICATE_SIGNATURES_MAX`], each address and signature of the right length.
fn signatures_from_wire(
    signatures: &[pb::CertificateSignature],
    what: &'static str,
) -> Result<Vec<(ValidatorAddress, Signature)>> {
    count_ok(signatures.len(), what)?;
    signatures
        .iter()
        .map(|s| {
            Ok((
                address(&s.validator, "certificate signer")?,
                signature(&s.signature, "certificate signature")?,
            ))
        })
        .collect()
}

pub fn vote_to_wire(vote: &SignedVote<ChainContext>) -> Result<pb::SignedVote> {
    let v = &vote.message;
    Ok(pb::SignedVote {
        vote: Some(pb::Vote {
            r#type: vote_type_code(v.vote_type),
            height: v.height.0,
            round: round_number(v.round, "vote round")?,
            block: block_bytes(&v.value),
            validator: v.validator.0.0.to_vec(),
        }),
        signature: vote.signature.to_bytes().to_vec(),
    })
}

pub fn vote_from_wire(vote: &pb::SignedVote) -> Result<SignedVote<ChainContext>> {
    let v = vote.vote.as_ref().ok_or(CodecError::Missing("vote"))?;
    Ok(SignedVote::new(
        Vote {
            vote_type: vote_type(v.r#type)?,
            height: Height(v.height),
            round: round(v.round, "vote round")?,
            value: nil_or_block(&v.block, "vote block")?,
            validator: address(&v.validator, "vote validator")?,
        },
        signature(&vote.signature, "vote signature")?,
    ))
}

fn proposal_to_wire(proposal: &SignedProposal<ChainContext>) -> Result<pb::SignedProposal> {
    let p = &proposal.message;
    Ok(pb::SignedProposal {
        proposal: Some(pb::Proposal {
            height: p.height.0,
            round: round_number(p.round, "proposal round")?,
            block: p.value.0.0.to_vec(),
            pol_round: p.pol_round.as_i64(),
            proposer: p.proposer.0.0.to_vec(),
        }),
        signature: proposal.signature.to_bytes().to_vec(),
    })
}

fn proposal_from_wire(proposal: &pb::SignedProposal) -> Result<SignedProposal<ChainContext>> {
    let p = proposal
        .proposal
        .as_ref()
        .ok_or(CodecError::Missing("proposal"))?;
    Ok(SignedProposal::new(
        Proposal {
            height: Height(p.height),
            round: round(p.round, "proposal round")?,
            value: BlockId(hash(&p.block, "proposal block")?),
            pol_round: optional_round(p.pol_round, "proposal POL round")?,
            proposer: address(&p.proposer, "proposer")?,
        },
        signature(&proposal.signature, "proposal signature")?,
    ))
}

fn polka_to_wire(certificate: &PolkaCertificate<ChainContext>) -> Result<pb::PolkaCertificate> {
    Ok(pb::PolkaCertificate {
        height: certificate.height.0,
        round: round_number(certificate.round, "polka round")?,
        block: certificate.value_id.0.to_vec(),
        signatures: signatures_to_wire(
            certificate
                .polka_signatures
                .iter()
                .map(|s| (&s.address, &s.signature)),
        ),
    })
}

fn polka_from_wire(certificate: &pb::PolkaCertificate) -> Result<PolkaCertificate<ChainContext>> {
    Ok(PolkaCertificate {
        height: Height(certificate.height),
        round: round(certificate.round, "polka round")?,
        value_id: hash(&certificate.block, "polka block")?,
        polka_signatures: signatures_from_wire(&certificate.signatures, "polka certificate")?
            .into_iter()
            .map(|(address, signature)| PolkaSignature::new(address, signature))
            .collect(),
    })
}

fn round_to_wire(certificate: &RoundCertificate<ChainContext>) -> Result<pb::RoundCertificate> {
    Ok(pb::RoundCertificate {
        height: certificate.height.0,
        round: round_number(certificate.round, "round certificate round")?,
        skip: certificate.cert_type == RoundCertificateType::Skip,
        signatures: certificate
            .round_signatures
            .iter()
            .map(|s| pb::CertificateSignature {
                validator: s.address.0.0.to_vec(),
                signature: s.signature.to_bytes().to_vec(),
                r#type: vote_type_code(s.vote_type),
                block: block_bytes(&s.value_id),
            })
            .collect(),
    })
}

fn round_from_wire(certificate: &pb::RoundCertificate) -> Result<RoundCertificate<ChainContext>> {
    count_ok(certificate.signatures.len(), "round certificate")?;
    Ok(RoundCertificate {
        height: Height(certificate.height),
        round: round(certificate.round, "round certificate round")?,
        cert_type: if certificate.skip {
            RoundCertificateType::Skip
        } else {
            RoundCertificateType::Precommit
        },
        round_signatures: certificate
            .signatures
            .iter()
            .map(|s| {
                Ok(RoundSignature::new(
                    vote_type(s.r#type)?,
                    nil_or_block(&s.block, "round certificate block")?,
                    address(&s.validator, "round certificate signer")?,
                    signature(&s.signature, "round certificate signature")?,
                ))
            })
            .collect::<Result<_>>()?,
    })
}

/// A commit certificate in its wire form (stored beside its block, served by block sync).
pub fn commit_to_wire(certificate: &CommitCertificate<ChainContext>) -> Result<pb::CommitCertificate> {
    Ok(pb::CommitCertificate {
        height: certificate.height.0,
        round: round_number(certificate.round, "commit round")?,
        block: certificate.value_id.0.to_vec(),
        signatures: signatures_to_wire(
            certificate
                .commit_signatures
                .iter()
                .map(|s| (&s.address, &s.signature)),
        ),
    })
}

/// A commit certificate from its wire form; its signatures are still to be checked
/// (`Engine::check_commit`).
pub fn commit_from_wire(certificate: &pb::CommitCertificate) -> Result<CommitCertificate<ChainContext>> {
    Ok(CommitCertificate {
        height: Height(certificate.height),
        round: round(certificate.round, "commit round")?,
        value_id: hash(&certificate.block, "commit block")?,
        commit_signatures: signatures_from_wire(&certificate.signatures, "commit certificate")?
            .into_iter()
            .map(|(address, signature)| CommitSignature::new(address, signature))
            .collect(),
    })
}

/// Encodes a message for another validator.
pub fn encode_message(message: &Message) -> Result<Vec<u8>> {
    use pb::consensus_message::Message as M;
    let message = match message {
        Message::Vote(vote) => M::Vote(vote_to_wire(vote)?),
        Message::Proposal(proposal) => M::Proposal(proposal_to_wire(proposal)?),
        Message::Polka(certificate) => M::Polka(polka_to_wire(certificate)?),
        Message::Round(certificate) => M::RoundCertificate(round_to_wire(certificate)?),
    };
    Ok(pb::ConsensusMessage {
        message: Some(message),
    }
    .encode_to_vec())
}

/// Decodes a message from another validator (its signatures are checked by the engine).
pub fn decode_message(bytes: &[u8]) -> Result<Message> {
    use pb::consensus_message::Message as M;
    if bytes.len() > ENCODED_BYTES_MAX {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    let decoded = pb::ConsensusMessage::decode(bytes).map_err(|e| CodecError::Protobuf(e.to_string()))?;
    match decoded.message.ok_or(CodecError::Missing("message"))? {
        M::Vote(vote) => vote_from_wire(&vote).map(Message::Vote),
        M::Proposal(proposal) => proposal_from_wire(&proposal).map(Message::Proposal),
        M::Polka(certificate) => polka_from_wire(&certificate).map(Message::Polka),
        M::RoundCertificate(certificate) => round_from_wire(&certificate).map(Message::Round),
    }
}

/// Encodes an input of the core for the write-ahead log.
pub fn encode_wal_entry(input: &Input<ChainContext>) -> Result<Vec<u8>> {
    use pb::wal_entry::Entry as E;
    let entry = match input {
        Input::Vote(vote) => E::Vote(vote_to_wire(vote)?),
        Input::Proposal(proposal) => E::Proposal(proposal_to_wire(proposal)?),
        Input::PolkaCertificate(certificate) => E::Polka(polka_to_wire(certificate)?),
        Input::RoundCertificate(certificate) => E::RoundCertificate(round_to_wire(certificate)?),
        Input::ProposedValue(value, origin) => E::ProposedValue(pb::ProposedValue {
            height: value.height.0,
            round: round_number(value.round, "proposed value round")?,
            valid_round: value.valid_round.as_i64(),
            proposer: value.proposer.0.0.to_vec(),
            block: value.value.0.0.to_vec(),
            valid: value.validity.is_valid(),
            from_sync: origin.is_sync(),
        }),
        Input::TimeoutElapsed(timeout) => E::Timeout(pb::Timeout {
            kind: match timeout.kind {
                TimeoutKind::Propose => pb::TimeoutKind::Propose as i32,
                TimeoutKind::Prevote => pb::TimeoutKind::Prevote as i32,
                TimeoutKind::Precommit => pb::TimeoutKind::Precommit as i32,
                TimeoutKind::Rebroadcast | TimeoutKind::FinalizeHeight(_) => {
                    return Err(CodecError::NotLogged("this timeout"));
                }
            },
            round: round_number(timeout.round, "timeout round")?,
        }),
        Input::StartHeight(..) => return Err(CodecError::NotLogged("a height's start")),
        Input::Propose(..) => return Err(CodecError::NotLogged("a local proposal")),
        Input::SyncValueResponse(..) => return Err(CodecError::NotLogged("a sync response")),
    };
    Ok(pb::WalEntry { entry: Some(entry) }.encode_to_vec())
}

/// Decodes a write-ahead-log entry.
pub fn decode_wal_entry(bytes: &[u8]) -> Result<Input<ChainContext>> {
    if bytes.len() > ENCODED_BYTES_MAX {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    let decoded = pb::WalEntry::decode(bytes).map_err(|e| CodecError::Protobuf(e.to_string()))?;
    input_from_wire(decoded.entry.ok_or(CodecError::Missing("entry"))?)
}

fn input_from_wire(entry: pb::wal_entry::Entry) -> Result<Input<ChainContext>> {
    use pb::wal_entry::Entry as E;
    Ok(match entry {
        E::Vote(vote) => Input::Vote(vote_from_wire(&vote)?),
        E::Proposal(proposal) => Input::Proposal(proposal_from_wire(&proposal)?),
        E::Polka(certificate) => Input::PolkaCertificate(polka_from_wire(&certificate)?),
        E::RoundCertificate(certificate) => Input::RoundCertificate(round_from_wire(&certificate)?),
        E::Block(_) => return Err(CodecError::NotLogged("a block as an input")),
        E::ProposedValue(value) => Input::ProposedValue(
            ProposedValue {
                height: Height(value.height),
                round: round(value.round, "proposed value round")?,
                valid_round: optional_round(value.valid_round, "valid round")?,
                proposer: address(&value.proposer, "proposed value proposer")?,
                value: BlockId(hash(&value.block, "proposed value block")?),
                validity: Validity::from_bool(value.valid),
            },
            if value.from_sync {
                ValueOrigin::Sync
            } else {
                ValueOrigin::Consensus
            },
        ),
        E::Timeout(timeout) => {
            let round = round(timeout.round, "timeout round")?;
            Input::TimeoutElapsed(match pb::TimeoutKind::try_from(timeout.kind) {
                Ok(pb::TimeoutKind::Propose) => Timeout::propose(round),
                Ok(pb::TimeoutKind::Prevote) => Timeout::prevote(round),
                Ok(pb::TimeoutKind::Precommit) => Timeout::precommit(round),
                _ => return Err(CodecError::Unknown("timeout kind")),
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed_vote(block: NilOrVal<Hash>) -> SignedVote<ChainContext> {
        SignedVote::new(
            Vote {
                vote_type: VoteType::Precommit,
                height: Height(9),
                round: Round::new(2),
                value: block,
                validator: ValidatorAddress(Address([5; 20])),
            },
            Signature::from_bytes([6; 64]),
        )
    }

    #[test]
    fn every_message_kind_round_trips() {
        let proposal = SignedProposal::new(
            Proposal {
                height: Height(9),
                round: Round::new(3),
                value: BlockId(Hash([1; 32])),
                pol_round: Round::new(1),
                proposer: ValidatorAddress(Address([2; 20])),
            },
            Signature::from_bytes([3; 64]),
        );
        let polka = PolkaCertificate {
            height: Height(9),
            round: Round::new(1),
            value_id: Hash([1; 32]),
            polka_signatures: vec![PolkaSignature::new(
                ValidatorAddress(Address([2; 20])),
                Signature::from_bytes([4; 64]),
            )],
        };
        let round = RoundCertificate {
            height: Height(9),
            round: Round::new(4),
            cert_type: RoundCertificateType::Skip,
            round_signatures: vec![RoundSignature::new(
                VoteType::Prevote,
                NilOrVal::Nil,
                ValidatorAddress(Address([2; 20])),
                Signature::from_bytes([4; 64]),
            )],
        };
        for message in [
            Message::Vote(signed_vote(NilOrVal::Val(Hash([7; 32])))),
            Message::Vote(signed_vote(NilOrVal::Nil)),
            Message::Proposal(proposal.clone()),
            Message::Polka(polka.clone()),
            Message::Round(round.clone()),
        ] {
            let bytes = encode_message(&message).expect("encode");
            assert_eq!(decode_message(&bytes).expect("decode"), message);
        }
        let commit = CommitCertificate {
            height: Height(9),
            round: Round::new(2),
            value_id: Hash([1; 32]),
            commit_signatures: vec![CommitSignature::new(
                ValidatorAddress(Address([2; 20])),
                Signature::from_bytes([4; 64]),
            )],
        };
        let wire = commit_to_wire(&commit).expect("encode");
        let bytes = wire.encode_to_vec();
        let decoded = pb::CommitCertificate::decode(&bytes[..]).expect("protobuf");
        assert_eq!(commit_from_wire(&decoded).expect("decode"), commit);
        for input in [
            Input::Vote(signed_vote(NilOrVal::Nil)),
            Input::Proposal(proposal),
            Input::PolkaCertificate(polka),
            Input::RoundCertificate(round),
            Input::TimeoutElapsed(Timeout::prevote(Round::new(5))),
        ] {
            let bytes = encode_wal_entry(&input).expect("encode");
            assert_eq!(decode_wal_entry(&bytes).expect("decode"), input);
        }
    }

    #[test]
    fn bad_bytes_are_refused_with_a_reason() {
        let good = pb::SignedVote {
            vote: Some(pb::Vote {
                r#type: pb::VoteType::Prevote as i32,
                height: 1,
                round: 0,
                block: vec![1; 32],
                validator: vec![2; 20],
            }),
            signature: vec![3; 64],
        };
        let encode = |vote: pb::SignedVote| {
            pb::ConsensusMessage {
                message: Some(pb::consensus_message::Message::Vote(vote)),
            }
            .encode_to_vec()
        };
        assert!(decode_message(&encode(good.clone())).is_ok());
        let mut short_block = good.clone();
        if let Some(vote) = short_block.vote.as_mut() {
            vote.block = vec![1; 31];
        }
        let mut long_signature = good.clone();
        long_signature.signature = vec![3; 65];
        let mut no_type = good.clone();
        if let Some(vote) = no_type.vote.as_mut() {
            vote.r#type = 0;
        }
        let mut unknown_type = good.clone();
        if let Some(vote) = unknown_type.vote.as_mut() {
            vote.r#type = 9;
        }
        let mut missing = good;
        missing.vote = None;
        for (bytes, reason) in [
            (encode(short_block), "vote block must be 32 bytes, not 31"),
            (encode(long_signature), "vote signature must be 64 bytes, not 65"),
            (encode(no_type), "vote type has an unknown value"),
            (encode(unknown_type), "vote type has an unknown value"),
            (encode(missing), "vote is missing"),
            (vec![0xff; 10], "malformed protobuf"),
            (Vec::new(), "message is missing"),
            (vec![0; ENCODED_BYTES_MAX + 1], "larger than"),
        ] {
            let error = decode_message(&bytes).expect_err(reason);
            assert!(error.to_string().contains(reason), "{error} / {reason}");
        }
        let many = pb::ConsensusMessage {
            message: Some(pb::consensus_message::Message::Polka(pb::PolkaCertificate {
                height: 1,
                round: 0,
                block: vec![1; 32],
                signatures: vec![pb::CertificateSignature::default(); CERTIFICATE_SIGNATURES_MAX + 1],
            })),
        };
        let error = decode_message(&many.encode_to_vec()).expect_err("too many");
        assert!(matches!(error, CodecError::TooManySignatures { .. }), "{error}");
        let bad_round = pb::WalEntry {
            entry: Some(pb::wal_entry::Entry::ProposedValue(pb::ProposedValue {
                valid_round: -2,
                proposer: vec![1; 20],
                block: vec![1; 32],
                ..Default::default()
            })),
        };
        assert!(decode_wal_entry(&bad_round.encode_to_vec()).is_err());
        let far_round = pb::ConsensusMessage {
            message: Some(pb::consensus_message::Message::Vote(pb::SignedVote {
                vote: Some(pb::Vote {
                    r#type: pb::VoteType::Prevote as i32,
                    height: 1,
                    round: u32::MAX,
                    block: vec![],
                    validator: vec![2; 20],
                }),
                signature: vec![3; 64],
            })),
        };
        let error = decode_message(&far_round.encode_to_vec()).expect_err("round past the bound");
        assert!(error.to_string().contains("vote round"), "{error}");
    }
}
