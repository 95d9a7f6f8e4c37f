//! Evidence of equivocation: two different votes of one kind, for one height and round, both
//! signed by one validator. Anyone who knows the validator set of that height can check it; a
//! block carries it, and executing the block slashes the offender.

use chainql::Address;
use chainql::wire::Evidence;

use crate::tendermint::codec::{vote_from_wire, vote_to_wire};
use crate::tendermint::{ChainContext, Message, SignedVote, ValidatorSet, check_signed};

/// What a piece of evidence proves: who equivocated, at which height and round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Equivocation {
    pub validator: Address,
    pub height: u64,
    pub round: u32,
}

/// Evidence of two conflicting signed votes, as a block carries it.
pub fn evidence_to_wire(
    first: &SignedVote<ChainContext>,
    second: &SignedVote<ChainContext>,
) -> Result<Evidence, String> {
    Ok(Evidence {
        first: Some(vote_to_wire(first).map_err(|e| e.to_string())?),
        second: Some(vote_to_wire(second).map_err(|e| e.to_string())?),
    })
}

/// Checks `evidence` on the chain of `ctx`: two votes that decode, of one kind, height, round
/// and validator, for different blocks, each signed by that validator, a member of the set
/// `set_of` gives for the height. Returns what it proves.
pub fn check_evidence(
    ctx: &ChainContext,
    evidence: &Evidence,
    set_of: impl FnOnce(u64) -> Option<ValidatorSet>,
) -> Result<Equivocation, String> {
    let decode = |vote: &Option<chainql::wire::consensus::SignedVote>, which: &str| {
        vote.as_ref()
            .ok_or_else(|| format!("the {which} vote is missing"))
            .and_then(|v| vote_from_wire(v).map_err(|e| format!("the {which} vote: {e}")))
    };
    let first = decode(&evidence.first, "first")?;
    let second = decode(&evidence.second, "second")?;
    let (a, b) = (&first.message, &second.message);
    if a.height != b.height || a.round != b.round || a.vote_type != b.vote_type || a.validator != b.validator
    {
        return Err("the votes are not of one kind, height, round and validator".into());
    }
    if a.value == b.value {
        return Err("the votes agree: nothing conflicts".into());
    }
    let round = u32::try_from(a.round.as_i64()).map_err(|_| "the votes have no round".to_string())?;
    let set =
        set_of(a.height.0).ok_or_else(|| format!("the validators of height {} are not known", a.height))?;
    let proved = Equivocation {
        validator: a.validator.0,
        height: a.height.0,
        round,
    };
    for vote in [first, second] {
        check_signed(ctx, &set, &Message::Vote(vote))?;
    }
    Ok(proved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tendermint::context::{VOTE_DOMAIN, Vote};
    use crate::tendermint::{Height, NilOrVal, Round, Signature, Validator, ValidatorAddress, VoteType};
    use chainql::{Hash, Keypair};

    fn vote(
        ctx: &ChainContext,
        key: &Keypair,
        height: u64,
        round: u32,
        block: NilOrVal<Hash>,
    ) -> SignedVote<ChainContext> {
        let vote = Vote {
            vote_type: VoteType::Prevote,
            height: Height(height),
            round: Round::new(round),
            value: block,
            validator: ValidatorAddress(key.address()),
        };
        let signature = Signature::from_bytes(key.sign(VOTE_DOMAIN, &ctx.vote_body(&vote)));
        SignedVote::new(vote, signature)
    }

    #[test]
    fn conflicting_signed_votes_prove_an_equivocation() {
        let ctx = ChainContext::new("evidence-test");
        let key = Keypair::from_seed([3; 32]);
        let other = Keypair::from_seed([4; 32]);
        let set = || {
            ValidatorSet::new(vec![
                Validator::new(key.public_key().to_bytes(), 10).expect("validator"),
                Validator::new(other.public_key().to_bytes(), 10).expect("validator"),
            ])
        };
        let a = vote(&ctx, &key, 7, 1, NilOrVal::Val(Hash::tagged("t", &[b"a"])));
        let b = vote(&ctx, &key, 7, 1, NilOrVal::Val(Hash::tagged("t", &[b"b"])));
        let evidence = evidence_to_wire(&a, &b).expect("encodes");
        assert_eq!(
            check_evidence(&ctx, &evidence, |_| set()),
            Ok(Equivocation {
                validator: key.address(),
                height: 7,
                round: 1
            })
        );
        // The same vote twice conflicts with nothing.
        let same = evidence_to_wire(&a, &a).expect("encodes");
        assert!(check_evidence(&ctx, &same, |_| set()).is_err());
        // Votes of two validators, or two rounds, are no evidence.
        let theirs = vote(&ctx, &other, 7, 1, NilOrVal::Nil);
        assert!(check_evidence(&ctx, &evidence_to_wire(&a, &theirs).expect("encodes"), |_| set()).is_err());
        let later = vote(&ctx, &key, 7, 2, NilOrVal::Nil);
        assert!(check_evidence(&ctx, &evidence_to_wire(&a, &later).expect("encodes"), |_| set()).is_err());
        // Not a validator at that height, an unknown height, another chain: refused.
        let outsiders = || {
            ValidatorSet::new(vec![
                Validator::new(other.public_key().to_bytes(), 10).expect("validator"),
            ])
        };
        assert!(check_evidence(&ctx, &evidence, |_| outsiders()).is_err());
        assert!(check_evidence(&ctx, &evidence, |_| None).is_err());
        let elsewhere = ChainContext::new("another-chain");
        assert!(check_evidence(&elsewhere, &evidence, |_| set()).is_err());
        // A forged signature.
        let mut forged = evidence.clone();
        if let Some(first) = forged.first.as_mut() {
            first.signature[0] ^= 1;
        }
        assert!(check_evidence(&ctx, &forged, |_| set()).is_err());
        assert!(check_evidence(&ctx, &chainql::wire::Evidence::default(), |_| set()).is_err());
    }
}
