//! One validator's Tendermint engine: Malachite's core state machine, with ChainQL doing what the
//! core asks of it. The engine is sans-IO: it takes inputs (messages, fired timeouts, the block
//! to propose) and returns [`Output`]s (messages to broadcast, timeouts to schedule, decisions,
//! write-ahead-log entries) for its host to carry out — the node over gRPC, or the simulation.
//!
//! Signatures are real: votes and proposals are signed with the validator's ed25519 key over
//! domain-separated bytes that name the chain, and every signature and certificate received is
//! checked against the validator set before the core counts it.

use std::collections::BTreeSet;
use std::time::Duration;

use chainql::{Hash, Keypair};
use malachite_core_consensus::{
    Effect, Error as CoreError, Input, LivenessMsg, LocallyProposedValue, Params, Resumable, Resume,
    SignedConsensusMsg, State, ThresholdParams, ValuePayload, process,
};
use malachite_core_types::{
    CertificateError, CommitCertificate, LinearTimeouts, NilOrVal, PolkaCertificate, Round, RoundCertificate,
    RoundCertificateType, SignedProposal, SignedVote, ThresholdParam, Timeout, Timeouts, Validator as _,
    ValidatorSet as _, VoteExtensionPolicy, VoteType,
};
use malachite_signing_ed25519::{PublicKey, Signature};

use super::context::{
    BlockId, ChainContext, Height, PROPOSAL_DOMAIN, Proposal, VOTE_DOMAIN, ValidatorAddress, ValidatorSet,
    Vote,
};

/// What validators send each other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Proposal(SignedProposal<ChainContext>),
    Vote(SignedVote<ChainContext>),
    /// More than 2/3 of prevotes for a block in a round (liveness gossip).
    Polka(PolkaCertificate<ChainContext>),
    /// Votes that let a lagging validator enter a later round (liveness gossip).
    Round(RoundCertificate<ChainContext>),
}

impl Message {
    pub fn height(&self) -> Height {
        match self {
            Message::Proposal(p) => p.message.height,
            Message::Vote(v) => v.message.height,
            Message::Polka(c) => c.height,
            Message::Round(c) => c.height,
        }
    }
}

/// What the host must do for the engine.
#[derive(Clone, Debug)]
pub enum Output {
    /// Make this entry durable before acting on any later output (the engine's write-ahead
    /// log: replaying it after a crash re-derives exactly the votes already sent).
    Wal(Height, Input<ChainContext>),
    /// Send to every other validator.
    Broadcast(Message),
    /// Call [`Engine::timeout`] with this timeout once `after` has passed, unless cancelled.
    Schedule(Timeout, Duration),
    Cancel(Timeout),
    CancelAll,
    /// This validator proposes at `height` and `round`: build a block and call
    /// [`Engine::propose`] with its hash before the propose timeout.
    Propose {
        height: Height,
        round: Round,
    },
    /// More than 2/3 of the stake precommitted `block` at `height`: commit it. The engine moves
    /// on to the next height by itself.
    Decided {
        height: Height,
        round: Round,
        block: Hash,
        certificate: CommitCertificate<ChainContext>,
    },
    /// A validator signed two different votes of one kind for one height and round: both
    /// signed votes, proof for anyone with the validator set (to be recorded in a later block
    /// and slashed).
    Equivocation {
        height: Height,
        offender: ValidatorAddress,
        votes: Vec<(SignedVote<ChainContext>, SignedVote<ChainContext>)>,
    },
}

/// Why a commit certificate does not prove a block.
#[derive(Debug, thiserror::Error)]
pub enum CommitCheckError {
    #[error("the certificate is for height {found}, not {expected}")]
    Height { expected: u64, found: u64 },
    #[error("the certificate commits block {found}, not {expected}")]
    Block { expected: Hash, found: Hash },
    #[error("{0}")]
    Signatures(CertificateError<ChainContext>),
}

fn vote_is_signed(ctx: &ChainContext, vote: &Vote, signature: &Signature, key: &PublicKey) -> bool {
    let bytes = chainql::signing_bytes(VOTE_DOMAIN, &ctx.vote_body(vote));
    key.verify(&bytes, signature).is_ok()
}

/// Checks signed votes of a certificate: every signer a validator, none twice, every signature
/// good, and their power over `threshold` of the total.
fn check_votes<'a>(
    ctx: &ChainContext,
    set: &ValidatorSet,
    votes: impl Iterator<Item = (Vote, &'a Signature)>,
    threshold: ThresholdParam,
    invalid: impl Fn(&Vote, Signature) -> CertificateError<ChainContext>,
) -> Result<(), CertificateError<ChainContext>> {
    let mut seen = BTreeSet::new();
    let mut signed: u64 = 0;
    for (vote, signature) in votes {
        let address = vote.validator;
        let validator = set
            .get_by_address(&address)
            .ok_or(CertificateError::UnknownValidator(address))?;
        if !seen.insert(address) {
            return Err(CertificateError::DuplicateVote(address));
        }
        if !vote_is_signed(ctx, &vote, signature, validator.public_key()) {
            return Err(invalid(&vote, *signature));
        }
        signed = signed.saturating_add(validator.voting_power());
    }
    let total = set.total_voting_power();
    if !threshold.is_met(signed, total) {
        return Err(CertificateError::NotEnoughVotingPower {
            signed,
            total,
            expected: threshold.min_expected(total),
        });
    }
    Ok(())
}

fn check_commit_signatures(
    ctx: &ChainContext,
    certificate: &CommitCertificate<ChainContext>,
    set: &ValidatorSet,
    thresholds: ThresholdParams,
) -> Result<(), CertificateError<ChainContext>> {
    let votes = certificate.commit_signatures.iter().map(|s| {
        let vote = Vote {
            vote_type: VoteType::Precommit,
            height: certificate.height,
            round: certificate.round,
            value: NilOrVal::Val(certificate.value_id),
            validator: s.address,
        };
        (vote, &s.signature)
    });
    let invalid = |vote: &Vote, signature| {
        CertificateError::InvalidCommitSignature(malachite_core_types::CommitSignature::new(
            vote.validator,
            signature,
        ))
    };
    check_votes(ctx, set, votes, thresholds.quorum, invalid)
}

/// Checks who signed a vote or a proposal: a member of `validators`, with a good signature over
/// the message on the chain of `ctx` (a vote signed for another chain fails here). What a node
/// checks on arrival, to refuse with a reason before the engine sees the message; certificates
/// are checked by the engine, signature by signature.
pub fn check_signed(ctx: &ChainContext, validators: &ValidatorSet, message: &Message) -> Result<(), String> {
    let (signer, signed) = match message {
        Message::Vote(vote) => {
            let signer = vote.message.validator;
            let key = validators.get_by_address(&signer).map(|v| *v.public_key());
            (
                signer,
                key.map(|key| vote_is_signed(ctx, &vote.message, &vote.signature, &key)),
            )
        }
        Message::Proposal(proposal) => {
            let signer = proposal.message.proposer;
            let key = validators.get_by_address(&signer).map(|v| *v.public_key());
            let signed = key.map(|key| {
                let bytes = chainql::signing_bytes(PROPOSAL_DOMAIN, &ctx.proposal_body(&proposal.message));
                key.verify(&bytes, &proposal.signature).is_ok()
            });
            (signer, signed)
        }
        Message::Polka(_) | Message::Round(_) => return Ok(()),
    };
    match signed {
        None => Err(format!("signed by {signer}, who is not a validator")),
        Some(false) => Err(format!(
            "{signer}'s signature does not hold on chain {:?} (forged, or signed for another chain)",
            ctx.chain_id
        )),
        Some(true) => Ok(()),
    }
}

/// Checks that `certificate` commits `block` at `height` on the chain of `ctx` under
/// `validators`: precommits of more than 2/3 of the stake, each signed by a distinct member.
/// What anyone holding the validator set does to check a committed block.
pub fn verify_commit(
    ctx: &ChainContext,
    validators: &ValidatorSet,
    height: Height,
    block: Hash,
    certificate: &CommitCertificate<ChainContext>,
) -> Result<(), CommitCheckError> {
    if certificate.height != height {
        return Err(CommitCheckError::Height {
            expected: height.0,
            found: certificate.height.0,
        });
    }
    if certificate.value_id != block {
        return Err(CommitCheckError::Block {
            expected: block,
            found: certificate.value_id,
        });
    }
    check_commit_signatures(ctx, certificate, validators, ThresholdParams::default())
        .map_err(CommitCheckError::Signatures)
}

/// Signs and checks consensus messages; collects the outputs of one step.
struct Host {
    ctx: ChainContext,
    key: Keypair,
    validators: ValidatorSet,
    timeouts: LinearTimeouts,
    outputs: Vec<Output>,
}

impl Host {
    fn sign_vote(&self, vote: &Vote) -> Signature {
        Signature::from_bytes(self.key.sign(VOTE_DOMAIN, &self.ctx.vote_body(vote)))
    }

    fn sign_proposal(&self, proposal: &Proposal) -> Signature {
        Signature::from_bytes(self.key.sign(PROPOSAL_DOMAIN, &self.ctx.proposal_body(proposal)))
    }

    fn proposal_is_signed(&self, proposal: &Proposal, signature: &Signature, key: &PublicKey) -> bool {
        let bytes = chainql::signing_bytes(PROPOSAL_DOMAIN, &self.ctx.proposal_body(proposal));
        key.verify(&bytes, signature).is_ok()
    }

    fn handle(&mut self, effect: Effect<ChainContext>) -> Result<Resume<ChainContext>, String> {
        use Effect::*;
        let timeouts = self.timeouts;
        let duration = |timeout: Timeout| Timeouts::<ChainContext>::duration_for(&timeouts, timeout);
        Ok(match effect {
            CancelAllTimeouts(r) => {
                self.outputs.push(Output::CancelAll);
                r.resume_with(())
            }
            CancelTimeout(timeout, r) => {
                self.outputs.push(Output::Cancel(timeout));
                r.resume_with(())
            }
            ScheduleTimeout(timeout, r) => {
                self.outputs.push(Output::Schedule(timeout, duration(timeout)));
                r.resume_with(())
            }
            StartRound(_, _, _, _, r) => r.resume_with(()),
            PublishConsensusMsg(message, r) => {
                self.outputs.push(Output::Broadcast(match message {
                    SignedConsensusMsg::Vote(vote) => Message::Vote(vote),
                    SignedConsensusMsg::Proposal(proposal) => Message::Proposal(proposal),
                }));
                r.resume_with(())
            }
            PublishLivenessMsg(message, r) => {
                self.outputs.push(Output::Broadcast(match message {
                    LivenessMsg::Vote(vote) => Message::Vote(vote),
                    LivenessMsg::PolkaCertificate(certificate) => Message::Polka(certificate),
                    LivenessMsg::SkipRoundCertificate(certificate) => Message::Round(certificate),
                }));
                r.resume_with(())
            }
            RepublishVote(vote, r) => {
                self.outputs.push(Output::Broadcast(Message::Vote(vote)));
                r.resume_with(())
            }
            RepublishRoundCertificate(certificate, r) => {
                self.outputs.push(Output::Broadcast(Message::Round(certificate)));
                r.resume_with(())
            }
            GetValue(height, round, _, r) => {
                self.outputs.push(Output::Propose { height, round });
                r.resume_with(())
            }
            // The core streams no parts (`ProposalOnly`): the host sends a proposal's block
            // beside it, so there is nothing to re-send here.
            RestreamProposal(.., r) => r.resume_with(()),
            // Block sync is not driven through the core (the node fetches committed blocks with
            // their certificates and checks them itself).
            CertVerifiedSyncValue(.., r) | CertRejectedSyncValue(.., r) => r.resume_with(()),
            Decide(certificate, _, r) => {
                self.outputs.push(Output::Decided {
                    height: certificate.height,
                    round: certificate.round,
                    block: certificate.value_id,
                    certificate,
                });
                r.resume_with(())
            }
            Finalize(certificate, _, evidence, r) => {
                for validator in self.validators.validators() {
                    if let Some(votes) = evidence.votes.get(&validator.address) {
                        self.outputs.push(Output::Equivocation {
                            height: certificate.height,
                            offender: validator.address,
                            votes: votes.clone(),
                        });
                    }
                }
                r.resume_with(())
            }
            SignVote(vote, r) => {
                let signature = self.sign_vote(&vote);
                r.resume_with(SignedVote::new(vote, signature))
            }
            SignProposal(proposal, r) => {
                let signature = self.sign_proposal(&proposal);
                r.resume_with(SignedProposal::new(proposal, signature))
            }
            VerifySignature(signed, key, r) => {
                let valid = match &signed.message {
                    malachite_core_consensus::ConsensusMsg::Vote(vote) => {
                        vote_is_signed(&self.ctx, vote, &signed.signature, &key)
                    }
                    malachite_core_consensus::ConsensusMsg::Proposal(proposal) => {
                        self.proposal_is_signed(proposal, &signed.signature, &key)
                    }
                };
                r.resume_with(valid)
            }
            VerifyCommitCertificate(certificate, set, thresholds, r) => {
                r.resume_with(check_commit_signatures(&self.ctx, &certificate, &set, thresholds))
            }
            VerifyExtendedCommitCertificate(certificate, set, thresholds, _, r) => {
                // Vote extensions are disabled: the certificate is its commit signatures.
                let commit = CommitCertificate {
                    height: certificate.height,
                    round: certificate.round,
                    value_id: certificate.value_id,
                    commit_signatures: certificate
                        .commit_signatures
                        .iter()
                        .map(|s| malachite_core_types::CommitSignature::new(s.address, s.signature))
                        .collect(),
                };
                r.resume_with(check_commit_signatures(&self.ctx, &commit, &set, thresholds))
            }
            VerifyPolkaCertificate(certificate, set, thresholds, r) => {
                let votes = certificate.polka_signatures.iter().map(|s| {
                    let vote = Vote {
                        vote_type: VoteType::Prevote,
                        height: certificate.height,
                        round: certificate.round,
                        value: NilOrVal::Val(certificate.value_id),
                        validator: s.address,
                    };
                    (vote, &s.signature)
                });
                let result = check_votes(&self.ctx, &set, votes, thresholds.quorum, |vote, signature| {
                    CertificateError::InvalidPolkaSignature(malachite_core_types::PolkaSignature::new(
                        vote.validator,
                        signature,
                    ))
                });
                r.resume_with(result)
            }
            VerifyRoundCertificate(certificate, set, thresholds, r) => {
                let votes = certificate.round_signatures.iter().map(|s| {
                    let vote = Vote {
                        vote_type: s.vote_type,
                        height: certificate.height,
                        round: certificate.round,
                        value: s.value_id,
                        validator: s.address,
                    };
                    (vote, &s.signature)
                });
                // Precommits of a round need a quorum; a skip needs more than 1/3 in a later round.
                let threshold = match certificate.cert_type {
                    RoundCertificateType::Precommit => thresholds.quorum,
                    RoundCertificateType::Skip => thresholds.honest,
                };
                let result = check_votes(&self.ctx, &set, votes, threshold, |vote, signature| {
                    CertificateError::InvalidRoundSignature(malachite_core_types::RoundSignature::new(
                        vote.vote_type,
                        vote.value,
                        vote.validator,
                        signature,
                    ))
                });
                r.resume_with(result)
            }
            WalAppend(height, input, r) => {
                self.outputs.push(Output::Wal(height, input));
                r.resume_with(())
            }
            ExtendVote(.., r) => r.resume_with(None),
            VerifyVoteExtension(.., r) => r.resume_with(Ok(())),
        })
    }
}

/// One validator's consensus.
pub struct Engine {
    state: State<ChainContext>,
    host: Host,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("address", &self.host.key.address())
            .field("height", &self.state.height())
            .field("round", &self.state.round())
            .finish_non_exhaustive()
    }
}

/// Errors of the core; the engine reports them and goes on (a bad input changes nothing).
pub type EngineError = CoreError<ChainContext>;

impl Engine {
    /// An engine for the validator holding `key`, at `height`, with `validators` (a key outside
    /// the set makes a non-voting follower).
    pub fn new(
        ctx: ChainContext,
        key: Keypair,
        validators: ValidatorSet,
        timeouts: LinearTimeouts,
        height: Height,
    ) -> Engine {
        let address = ValidatorAddress(key.address());
        let params = Params {
            address,
            threshold_params: ThresholdParams::default(),
            value_payload: ValuePayload::ProposalOnly,
            enabled: true,
        };
        let state = State::new(ctx.clone(), height, validators.clone(), params, 1000, 1000);
        Engine {
            state,
            host: Host {
                ctx,
                key,
                validators,
                timeouts,
                outputs: Vec::new(),
            },
        }
    }

    pub fn height(&self) -> Height {
        self.state.height()
    }

    pub fn round(&self) -> Round {
        self.state.round()
    }

    pub fn address(&self) -> ValidatorAddress {
        ValidatorAddress(self.host.key.address())
    }

    /// Sets the validators of the next height to start (a set changes only between heights).
    pub fn set_validators(&mut self, validators: ValidatorSet) {
        self.host.validators = validators;
    }

    /// Starts the engine's height.
    pub fn start(&mut self) -> Vec<Output> {
        self.start_height(self.state.height())
    }

    /// Starts `height`, the one after the height just decided. The engine does not move on by
    /// itself after a decision: its host starts the next height when it has a reason to (blocks
    /// are cut only when transactions wait, or when another validator has started the height).
    /// Messages for `height` that arrived in between were buffered and are processed now.
    pub fn start_height(&mut self, height: Height) -> Vec<Output> {
        self.feed(Input::StartHeight(
            height,
            self.host.validators.clone(),
            false,
            None,
            VoteExtensionPolicy::Disabled,
        ))
    }

    /// Replays write-ahead-log entries of the current height after a restart, as the core
    /// requires: it re-derives the votes this validator already sent, and signs nothing new
    /// that contradicts them. Outputs for the host (timeouts to schedule) come back; entries are
    /// not logged again.
    pub fn replay(&mut self, entries: Vec<Input<ChainContext>>) -> Vec<Output> {
        let mut outputs = self.start();
        self.state.index_wal_entries(entries.iter());
        for entry in entries {
            outputs.extend(self.feed(entry));
        }
        self.state.reset_entries_index();
        outputs.retain(|o| !matches!(o, Output::Wal(..)));
        outputs
    }

    /// Checks that `certificate` commits `block` at `height` under this engine's validator set:
    /// what a validator that fell behind does with each block it fetches.
    pub fn check_commit(
        &self,
        height: Height,
        block: Hash,
        certificate: &CommitCertificate<ChainContext>,
    ) -> Result<(), CommitCheckError> {
        verify_commit(&self.host.ctx, &self.host.validators, height, block, certificate)
    }

    /// A message from another validator.
    pub fn receive(&mut self, message: Message) -> Vec<Output> {
        let input = match message {
            Message::Proposal(proposal) => Input::Proposal(proposal),
            Message::Vote(vote) => Input::Vote(vote),
            Message::Polka(certificate) => Input::PolkaCertificate(certificate),
            Message::Round(certificate) => Input::RoundCertificate(certificate),
        };
        self.feed(input)
    }

    /// A timeout that [`Output::Schedule`] asked for has elapsed.
    pub fn timeout(&mut self, timeout: Timeout) -> Vec<Output> {
        self.feed(Input::TimeoutElapsed(timeout))
    }

    /// The block this validator proposes, after [`Output::Propose`].
    pub fn propose(&mut self, height: Height, round: Round, block: Hash) -> Vec<Output> {
        self.feed(Input::Propose(LocallyProposedValue::new(
            height,
            round,
            BlockId(block),
        )))
    }

    fn feed(&mut self, input: Input<ChainContext>) -> Vec<Output> {
        let host = &mut self.host;
        let result: Result<(), EngineError> = process!(
            input: input,
            state: &mut self.state,
            metrics: &(),
            with: effect => host.handle(effect)
        );
        if let Err(error) = result {
            tracing::warn!(%error, "consensus input refused");
        }
        std::mem::take(&mut self.host.outputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tendermint::context::Validator;

    fn single(chain: &str, key: &Keypair) -> Engine {
        let validator = Validator::new(key.public_key().to_bytes(), 10).expect("key");
        let set = ValidatorSet::new(vec![validator]).expect("set");
        Engine::new(
            ChainContext::new(chain),
            key.clone(),
            set,
            LinearTimeouts::default(),
            Height(1),
        )
    }

    /// One validator with all the stake decides alone: asked to propose, it proposes, votes and
    /// decides, and its commit certificate checks out; a tampered one does not.
    #[test]
    fn a_single_validator_decides_and_certificates_are_checked() {
        let key = Keypair::from_seed([5; 32]);
        let mut engine = single("one", &key);
        let outputs = engine.start();
        let (height, round) = outputs
            .iter()
            .find_map(|o| match o {
                Output::Propose { height, round } => Some((*height, *round)),
                _ => None,
            })
            .expect("asked to propose");
        let block = Hash([7; 32]);
        let outputs = engine.propose(height, round, block);
        let certificate = outputs
            .iter()
            .find_map(|o| match o {
                Output::Decided {
                    block: b,
                    certificate,
                    ..
                } if *b == block => Some(certificate.clone()),
                _ => None,
            })
            .expect("decided");
        assert!(
            outputs.iter().any(|o| matches!(o, Output::Wal(..))),
            "votes are logged"
        );
        assert_eq!(engine.height(), Height(1), "the host starts the next height");
        let _ = engine.start_height(Height(2));
        assert_eq!(engine.height(), Height(2));
        engine
            .check_commit(Height(1), block, &certificate)
            .expect("a good certificate");
        assert!(matches!(
            engine.check_commit(Height(2), block, &certificate),
            Err(CommitCheckError::Height {
                expected: 2,
                found: 1
            })
        ));
        assert!(matches!(
            engine.check_commit(Height(1), Hash([9; 32]), &certificate),
            Err(CommitCheckError::Block { .. })
        ));

        let mut forged = certificate.clone();
        let mut bytes = forged.commit_signatures[0].signature.to_bytes();
        bytes[0] ^= 1;
        forged.commit_signatures[0].signature = Signature::from_bytes(bytes);
        assert!(
            engine.check_commit(Height(1), block, &forged).is_err(),
            "a forged signature"
        );

        let mut other_block = certificate.clone();
        other_block.value_id = Hash([8; 32]);
        assert!(
            engine
                .check_commit(Height(1), Hash([8; 32]), &other_block)
                .is_err(),
            "signatures over another block"
        );

        let mut empty = certificate.clone();
        empty.commit_signatures.clear();
        assert!(matches!(
            engine.check_commit(Height(1), block, &empty),
            Err(CommitCheckError::Signatures(
                CertificateError::NotEnoughVotingPower { .. }
            ))
        ));

        // The same key and votes on another chain: the signatures do not carry over.
        let elsewhere = single("two", &key);
        assert!(
            elsewhere.check_commit(Height(1), block, &certificate).is_err(),
            "another chain's certificate"
        );
        let stranger = single("one", &Keypair::from_seed([6; 32]));
        assert!(matches!(
            stranger.check_commit(Height(1), block, &certificate),
            Err(CommitCheckError::Signatures(CertificateError::UnknownValidator(
                _
            )))
        ));
    }

    /// Messages that are not what they claim change nothing: a vote with a bad signature, a
    /// vote from a non-validator, a vote for a far-future height.
    #[test]
    fn bad_votes_are_refused() {
        let key = Keypair::from_seed([5; 32]);
        let mut engine = single("one", &key);
        let _ = engine.start();
        let stranger = Keypair::from_seed([6; 32]);
        let vote = Vote {
            vote_type: VoteType::Prevote,
            height: Height(1),
            round: Round::new(0),
            value: NilOrVal::Val(Hash([1; 32])),
            validator: ValidatorAddress(stranger.address()),
        };
        let host = &engine.host;
        let signature = Signature::from_bytes(stranger.sign(VOTE_DOMAIN, &host.ctx.vote_body(&vote)));
        for message in [
            Message::Vote(SignedVote::new(vote.clone(), signature)),
            Message::Vote(SignedVote::new(
                Vote {
                    validator: ValidatorAddress(key.address()),
                    ..vote.clone()
                },
                signature,
            )),
            Message::Vote(SignedVote::new(
                Vote {
                    height: Height(1_000_000),
                    ..vote
                },
                signature,
            )),
        ] {
            let outputs = engine.receive(message);
            assert!(
                !outputs
                    .iter()
                    .any(|o| matches!(o, Output::Decided { .. } | Output::Wal(..))),
                "{outputs:?}"
            );
        }
        assert_eq!((engine.height(), engine.round()), (Height(1), Round::new(0)));
    }
}
