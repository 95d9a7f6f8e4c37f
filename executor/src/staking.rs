//! Proof of stake in the chain's state: each account's stake, the validator set of every height
//! that consensus may still ask about, and the offences already punished.
//!
//! Stake moves only at epoch boundaries, so the set is fixed for whole stretches of heights:
//!
//! - `STAKE n` moves `n` from the sender's balance to its *bonding* stake.
//! - `UNSTAKE n` takes back bonding stake at once, then marks bonded stake as *unbonding*.
//! - At the end of a block whose height is a multiple of the epoch length, stake that was
//!   *leaving* returns to its owner's balance, unbonding stake becomes *leaving* (out of the
//!   voting power, still slashable for one more epoch), and bonding stake becomes *bonded*.
//!   The new set is the bonded stake, at most [`VALIDATORS_MAX`] validators by stake.
//! - A set decided at the end of block `b` commits heights from `b + 2` on: block `b + 1`
//!   announces it, and the validators of `b + 1` are still the old ones, so whoever follows the
//!   chain block by block learns each set from blocks the previous set committed.
//!
//! Evidence of a validator that signed two conflicting votes slashes [`SLASH_PERCENT`] of its
//! bonded and leaving stake (rounded up), once per offence (validator, height, round).

use std::sync::Arc;

use chainql::{Address, Hash, PublicKey, merkle_root};

use crate::{Error, Result};

/// The most validators a set holds; stake beyond them waits for a place.
pub const VALIDATORS_MAX: usize = 100;
/// The share of its stake (in percent, rounded up) a validator loses for signing two
/// conflicting votes of one height and round.
pub const SLASH_PERCENT: u64 = 5;
/// How many validator sets the state keeps: the one before the current one (so evidence from
/// just before a change can still be checked), the current one, and one announced.
const SETS_KEPT: usize = 3;

/// A member of a validator set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidatorPower {
    pub public_key: [u8; 32],
    pub address: Address,
    /// Voting power: the validator's bonded stake when the set was made.
    pub power: u64,
}

/// The validators of a stretch of heights, ordered by power (descending), then address.
pub type Validators = Arc<Vec<ValidatorPower>>;

/// An offence punished: the validator, the height and the round of its conflicting votes.
pub(crate) type OffenceKey = (Address, u64, u32);

/// One account's stake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stake {
    /// The validator key: the key of the account that staked.
    pub public_key: [u8; 32],
    /// Stake that counts as voting power (unbonding stake included, until the boundary).
    pub bonded: u64,
    /// Staked since the last boundary; bonded at the next.
    pub bonding: u64,
    /// The part of `bonded` asked back since the last boundary.
    pub unbonding: u64,
    /// Out of the voting power since the last boundary; returned to the balance at the next.
    pub leaving: u64,
    /// Taken as punishment, in all.
    pub slashed: u64,
}

impl Stake {
    fn is_empty(&self) -> bool {
        self.bonded == 0 && self.bonding == 0 && self.unbonding == 0 && self.leaving == 0
    }

    /// What still counts once pending withdrawals take effect.
    fn staying(&self) -> u64 {
        self.bonded - self.unbonding + self.bonding
    }
}

/// Staking state of one state version.
#[derive(Debug, Clone, Default)]
pub struct Staking {
    pub(crate) stakes: imbl::OrdMap<Address, Stake>,
    /// Validator sets by the first height they commit, ascending.
    sets: Vec<(u64, Validators)>,
    /// Offences punished (validator, height, round), so one offence is punished once.
    offences: imbl::OrdSet<OffenceKey>,
}

impl Staking {
    /// The genesis stake: every genesis validator's stake bonded, committing from height 1.
    pub fn genesis(validators: &[(PublicKey, u64)]) -> Result<Staking> {
        let mut stakes = imbl::OrdMap::new();
        for (key, stake) in validators {
            let address = key.address();
            if *stake == 0 || stakes.contains_key(&address) {
                return Err(Error::Invalid(format!(
                    "genesis validator {address} has no stake or is listed twice"
                )));
            }
            stakes.insert(
                address,
                Stake {
                    public_key: key.to_bytes(),
                    bonded: *stake,
                    ..Stake::default()
                },
            );
        }
        let mut staking = Staking {
            stakes,
            sets: Vec::new(),
            offences: imbl::OrdSet::new(),
        };
        let set = staking.bonded_set();
        if !validators.is_empty() {
            staking.sets.push((1, Arc::new(set)));
        }
        Ok(staking)
    }

    /// The validators that commit `height`, when this version knows them (it knows the heights
    /// from the one before its oldest kept set up to two heights past its own).
    pub fn validators_for(&self, height: u64) -> Option<&Validators> {
        self.sets
            .iter()
            .rev()
            .find(|(from, _)| *from <= height)
            .map(|(_, set)| set)
    }

    /// The set announced by the block after `height` (decided at the end of block `height`),
    /// if the boundary there changed it.
    pub fn announced(&self, height: u64) -> Option<&Validators> {
        self.sets
            .last()
            .filter(|(from, _)| *from == height + 2)
            .map(|(_, set)| set)
    }

    pub fn stake(&self, address: &Address) -> Option<&Stake> {
        self.stakes.get(address)
    }

    pub fn stakes(&self) -> impl Iterator<Item = (&Address, &Stake)> {
        self.stakes.iter()
    }

    /// Adds `amount` to `key`'s bonding stake (the caller took it from the balance).
    pub(crate) fn bond(&mut self, key: &PublicKey, amount: u64) -> Result<()> {
        let address = key.address();
        let mut stake = self.stakes.get(&address).copied().unwrap_or(Stake {
            public_key: key.to_bytes(),
            ..Stake::default()
        });
        // Bonding stake joins the bonded stake at the boundary: both together must fit.
        let bonding = stake.bonding.checked_add(amount);
        stake.bonding = bonding
            .filter(|b| stake.bonded.checked_add(*b).is_some())
            .ok_or_else(|| Error::LimitExceeded(format!("the stake of {address} would pass {}", u64::MAX)))?;
        self.stakes.insert(address, stake);
        Ok(())
    }

    /// Withdraws `amount` of `address`'s stake; returns what goes back to the balance at once
    /// (stake not yet bonded). Refuses more than it holds, and the withdrawal that would leave
    /// the chain without stake.
    pub(crate) fn unbond(&mut self, address: &Address, amount: u64) -> Result<u64> {
        let Some(mut stake) = self.stakes.get(address).copied() else {
            return Err(Error::Invalid(format!("UNSTAKE: {address} has no stake")));
        };
        let available = stake.staying();
        if amount > available {
            return Err(Error::Invalid(format!(
                "UNSTAKE {amount}: {address} has {available} staked that is not already leaving"
            )));
        }
        let staying_elsewhere: u128 = self
            .stakes
            .iter()
            .filter(|(a, _)| *a != address)
            .map(|(_, s)| s.staying() as u128)
            .sum();
        if staying_elsewhere == 0 && amount == available {
            return Err(Error::Invalid(
                "UNSTAKE: this is the last stake of the chain, which needs a validator".into(),
            ));
        }
        let returned = amount.min(stake.bonding);
        stake.bonding -= returned;
        stake.unbonding += amount - returned;
        self.stakes.insert(*address, stake);
        Ok(returned)
    }

    /// Starts committing heights from `height` with the set announced for them.
    pub(crate) fn begin_block(&mut self, height: u64) {
        // Keep the sets that commit `height` or later, and one before them.
        let current = self.sets.iter().rposition(|(from, _)| *from <= height);
        if let Some(current) = current
            && current > 0
        {
            self.sets.drain(..current - 1);
        }
    }

    /// The end of an epoch at the end of block `height`: returns every (address, amount) to
    /// credit to balances, and announces the new set (committing from `height + 2`) when it
    /// differs from the current one.
    pub(crate) fn end_epoch(&mut self, height: u64) -> Vec<(Address, u64)> {
        let mut released = Vec::new();
        let addresses: Vec<Address> = self.stakes.keys().copied().collect();
        for address in addresses {
            let Some(mut stake) = self.stakes.get(&address).copied() else {
                continue;
            };
            if stake.leaving > 0 {
                released.push((address, stake.leaving));
            }
            stake.leaving = stake.unbonding;
            stake.bonded -= stake.unbonding;
            stake.unbonding = 0;
            stake.bonded += stake.bonding;
            stake.bonding = 0;
            if stake.is_empty() {
                self.stakes.remove(&address);
            } else {
                self.stakes.insert(address, stake);
            }
        }
        let set = self.bonded_set();
        let changed = self.sets.last().is_none_or(|(_, current)| **current != set);
        // A chain never loses its last validator: without bonded stake the set stays.
        if changed && !set.is_empty() {
            self.sets.push((height + 2, Arc::new(set)));
            if self.sets.len() > SETS_KEPT {
                self.sets.remove(0);
            }
        }
        if let Some((oldest, _)) = self.sets.first() {
            let oldest = *oldest;
            let stale: Vec<_> = self
                .offences
                .iter()
                .filter(|(_, h, _)| *h < oldest)
                .copied()
                .collect();
            for offence in stale {
                self.offences.remove(&offence);
            }
        }
        released
    }

    /// Whether an offence by `validator` at `height` and `round` can be punished by this
    /// version: it knows the set of that height, the validator is in it, and the offence was
    /// not punished already.
    pub fn punishable(&self, validator: &Address, height: u64, round: u32) -> Result<(), String> {
        let oldest = self.sets.first().map_or(u64::MAX, |(from, _)| *from);
        if height < oldest {
            return Err(format!(
                "evidence of height {height} is too old: the validators of heights before {oldest} are forgotten"
            ));
        }
        let Some(set) = self.validators_for(height) else {
            return Err(format!("no validator set is known for height {height}"));
        };
        if !set.iter().any(|v| v.address == *validator) {
            return Err(format!("{validator} was not a validator at height {height}"));
        }
        if self.offences.contains(&(*validator, height, round)) {
            return Err(format!(
                "{validator}'s offence at height {height}, round {round} is already punished"
            ));
        }
        Ok(())
    }

    /// Punishes an offence: burns [`SLASH_PERCENT`] of the validator's bonded and leaving stake
    /// and returns the amount. An offence already punished, or by an account without stake,
    /// costs nothing more.
    pub(crate) fn slash(&mut self, validator: &Address, height: u64, round: u32) -> u64 {
        if self.offences.insert((*validator, height, round)).is_some() {
            return 0;
        }
        let Some(mut stake) = self.stakes.get(validator).copied() else {
            return 0;
        };
        let at_risk = stake.bonded as u128 + stake.leaving as u128;
        let penalty = (at_risk * SLASH_PERCENT as u128).div_ceil(100) as u64;
        let from_bonded = penalty.min(stake.bonded);
        stake.bonded -= from_bonded;
        stake.unbonding = stake.unbonding.min(stake.bonded);
        stake.leaving -= penalty - from_bonded;
        stake.slashed = stake.slashed.saturating_add(penalty);
        self.stakes.insert(*validator, stake);
        penalty
    }

    /// The bonded stake as a set: at most [`VALIDATORS_MAX`], by stake, then address.
    fn bonded_set(&self) -> Vec<ValidatorPower> {
        let mut set: Vec<ValidatorPower> = self
            .stakes
            .iter()
            .filter(|(_, s)| s.bonded > 0)
            .map(|(address, s)| ValidatorPower {
                public_key: s.public_key,
                address: *address,
                power: s.bonded,
            })
            .collect();
        set.sort_by(|a, b| b.power.cmp(&a.power).then(a.address.cmp(&b.address)));
        set.truncate(VALIDATORS_MAX);
        set
    }

    /// The commitment to all of it, a leaf of the state root.
    pub(crate) fn digest(&self) -> Hash {
        let stakes: Vec<Hash> = self
            .stakes
            .iter()
            .map(|(address, s)| {
                Hash::tagged(
                    "chainql/stake/v1",
                    &[
                        &address.0,
                        &s.public_key,
                        &s.bonded.to_le_bytes(),
                        &s.bonding.to_le_bytes(),
                        &s.unbonding.to_le_bytes(),
                        &s.leaving.to_le_bytes(),
                        &s.slashed.to_le_bytes(),
                    ],
                )
            })
            .collect();
        let sets: Vec<Hash> = self
            .sets
            .iter()
            .map(|(from, set)| {
                Hash::tagged(
                    "chainql/validator-set/v1",
                    &[&from.to_le_bytes(), set_hash(set).as_bytes()],
                )
            })
            .collect();
        let offences: Vec<Hash> = self
            .offences
            .iter()
            .map(|(address, height, round)| {
                Hash::tagged(
                    "chainql/offence/v1",
                    &[&address.0, &height.to_le_bytes(), &round.to_le_bytes()],
                )
            })
            .collect();
        Hash::tagged(
            "chainql/staking/v1",
            &[
                merkle_root(&stakes).as_bytes(),
                merkle_root(&sets).as_bytes(),
                merkle_root(&offences).as_bytes(),
            ],
        )
    }

    /// The parts a checkpoint stores.
    pub(crate) fn parts(&self) -> (Vec<(u64, Validators)>, Vec<OffenceKey>) {
        (self.sets.clone(), self.offences.iter().copied().collect())
    }

    /// Staking restored from a checkpoint's parts.
    pub(crate) fn restore(
        stakes: imbl::OrdMap<Address, Stake>,
        sets: Vec<(u64, Validators)>,
        offences: Vec<OffenceKey>,
    ) -> Result<Staking> {
        if sets.windows(2).any(|w| w[0].0 >= w[1].0) || sets.len() > SETS_KEPT {
            return Err(Error::Invalid("the validator sets are out of order".into()));
        }
        Ok(Staking {
            stakes,
            sets,
            offences: offences.into_iter().collect(),
        })
    }
}

/// The hash of a validator set, as a block that announces it carries it: each member's key and
/// power, in the set's order.
fn set_hash(set: &[ValidatorPower]) -> Hash {
    let leaves: Vec<Hash> = set
        .iter()
        .map(|v| Hash::tagged("chainql/validator/v1", &[&v.public_key, &v.power.to_le_bytes()]))
        .collect();
    merkle_root(&leaves)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainql::Keypair;

    fn key(seed: u8) -> PublicKey {
        Keypair::from_seed([seed; 32]).public_key()
    }

    fn powers(set: &Validators) -> Vec<(Address, u64)> {
        set.iter().map(|v| (v.address, v.power)).collect()
    }

    #[test]
    fn stake_moves_at_epoch_boundaries_and_sets_commit_two_heights_later() {
        let (a, b) = (key(1), key(2));
        let mut staking = Staking::genesis(&[(a, 100)]).expect("genesis");
        assert_eq!(
            powers(staking.validators_for(1).expect("set")),
            [(a.address(), 100)]
        );

        staking.bond(&b, 50).expect("bond");
        assert_eq!(staking.stake(&b.address()).expect("stake").bonding, 50);
        // Before the boundary, nothing changes in the set.
        assert!(staking.announced(9).is_none());
        let released = staking.end_epoch(10);
        assert!(released.is_empty());
        let announced = staking.announced(10).expect("a new set").clone();
        assert_eq!(powers(&announced), [(a.address(), 100), (b.address(), 50)]);
        // Height 11 is still committed by the old set; 12 by the new one.
        assert_eq!(staking.validators_for(11).expect("set").len(), 1);
        assert_eq!(staking.validators_for(12).expect("set").len(), 2);

        // Unstaking: out of the set at the next boundary, back to the balance one epoch later.
        staking.begin_block(12);
        assert_eq!(staking.unbond(&b.address(), 30).expect("unbond"), 0);
        assert!(staking.end_epoch(20).is_empty());
        assert_eq!(
            powers(staking.validators_for(22).expect("set")),
            [(a.address(), 100), (b.address(), 20)]
        );
        assert_eq!(staking.stake(&b.address()).expect("stake").leaving, 30);
        assert_eq!(staking.end_epoch(30), [(b.address(), 30)]);
        // Nothing changed at this boundary: no announcement.
        assert!(staking.announced(30).is_none());
    }

    #[test]
    fn unstaking_refuses_more_than_held_and_the_chains_last_stake() {
        let (a, b) = (key(1), key(2));
        let mut staking = Staking::genesis(&[(a, 100)]).expect("genesis");
        assert!(staking.unbond(&b.address(), 1).is_err());
        assert!(staking.unbond(&a.address(), 101).is_err());
        let error = staking.unbond(&a.address(), 100).expect_err("last stake");
        assert!(error.to_string().contains("last stake"), "{error}");
        // Bonding stake comes back at once.
        staking.bond(&b, 10).expect("bond");
        assert_eq!(staking.unbond(&b.address(), 4).expect("unbond"), 4);
        assert_eq!(staking.stake(&b.address()).expect("stake").bonding, 6);
        // With other stake staying, all of one's stake may leave.
        assert_eq!(staking.unbond(&a.address(), 100).expect("unbond"), 0);
        assert!(staking.unbond(&a.address(), 1).is_err(), "already all leaving");
    }

    #[test]
    fn an_offence_is_slashed_once_and_only_while_its_set_is_known() {
        let (a, b) = (key(1), key(2));
        let mut staking = Staking::genesis(&[(a, 100), (b, 41)]).expect("genesis");
        assert!(staking.punishable(&b.address(), 5, 0).is_ok());
        assert!(staking.punishable(&key(3).address(), 5, 0).is_err());
        assert_eq!(staking.slash(&b.address(), 5, 0), 3, "5% of 41, rounded up");
        assert_eq!(staking.stake(&b.address()).expect("stake").bonded, 38);
        assert_eq!(staking.stake(&b.address()).expect("stake").slashed, 3);
        assert!(staking.punishable(&b.address(), 5, 0).is_err());
        assert_eq!(staking.slash(&b.address(), 5, 0), 0);
        // A different round is a different offence.
        assert_eq!(staking.slash(&b.address(), 5, 1), 2);
        // Sets change three times: the one of height 5 is forgotten, and so is its evidence.
        for (boundary, extra) in [(10, 1), (20, 2), (30, 3)] {
            staking.bond(&a, extra).expect("bond");
            staking.end_epoch(boundary);
            staking.begin_block(boundary + 2);
        }
        let error = staking.punishable(&b.address(), 5, 2).expect_err("too old");
        assert!(error.contains("too old"), "{error}");
    }

    #[test]
    fn the_set_keeps_the_largest_stakes() {
        let keys: Vec<PublicKey> = (1..=(VALIDATORS_MAX as u8 + 5)).map(key).collect();
        let genesis: Vec<(PublicKey, u64)> =
            keys.iter().enumerate().map(|(i, k)| (*k, i as u64 + 1)).collect();
        let staking = Staking::genesis(&genesis).expect("genesis");
        let set = staking.validators_for(1).expect("set");
        assert_eq!(set.len(), VALIDATORS_MAX);
        assert_eq!(set[0].power, VALIDATORS_MAX as u64 + 5);
        assert_eq!(set.last().expect("member").power, 6);
    }
}
