//! Native accounts (balance and nonce by address), with a digest that rehashes only what
//! changed.
//!
//! Accounts are kept in 4,096 buckets by the top twelve bits of their address. Addresses are
//! digests of public keys, so the buckets fill evenly, and each bucket is a contiguous run of
//! the address order. The digest is a Merkle root over the non-empty buckets' leaves; a leaf
//! hashes its bucket number and its accounts' bytes in address order. Leaves are kept between
//! blocks and every change marks its bucket, so a block rehashes the buckets it changed (about
//! 36 bytes per account in them) and one Merkle root over at most 4,096 leaves, however many
//! accounts the chain holds.

use std::ops::Bound;
use std::sync::Arc;

use chainql::{Address, Hash, merkle_root};

use crate::parallel::Split;
use crate::state::Account;
use crate::{Error, Result};

/// Buckets of the account digest.
const BUCKETS: usize = 4096;
/// Buckets rehashed per thread below which rehashing stays on fewer threads.
const PARALLEL_BUCKETS_MIN: usize = 64;

/// The bucket of `address`: the top twelve bits of its bytes.
fn bucket_of(address: &Address) -> usize {
    (usize::from(address.0[0]) << 4) | usize::from(address.0[1] >> 4)
}

/// The first address of `bucket` (every later byte zero).
fn bucket_start(bucket: usize) -> Address {
    let mut bytes = [0u8; 20];
    bytes[0] = (bucket >> 4) as u8;
    bytes[1] = ((bucket & 0xf) << 4) as u8;
    Address(bytes)
}

/// Every account, by address.
#[derive(Debug, Clone)]
pub(crate) struct Accounts {
    map: imbl::OrdMap<Address, Account>,
    /// Each bucket's leaf, as of the last digest (`None`: empty); shared between versions until
    /// a digest changes one.
    leaves: Arc<Vec<Option<Hash>>>,
    /// Buckets changed since the last digest, one bit each.
    stale: Box<[u64; BUCKETS / 64]>,
    /// The digest, until the next change.
    digest: Option<Hash>,
}

impl Accounts {
    /// `map`'s accounts, every bucket to be hashed at the first digest.
    pub fn new(map: imbl::OrdMap<Address, Account>) -> Accounts {
        Accounts {
            map,
            leaves: Arc::new(vec![None; BUCKETS]),
            stale: Box::new([u64::MAX; BUCKETS / 64]),
            digest: None,
        }
    }

    /// Every account, in address order, to read.
    pub fn map(&self) -> &imbl::OrdMap<Address, Account> {
        &self.map
    }

    pub fn get(&self, address: &Address) -> Option<&Account> {
        self.map.get(address)
    }

    pub fn get_mut(&mut self, address: &Address) -> Option<&mut Account> {
        self.touch(address);
        self.map.get_mut(address)
    }

    pub fn insert(&mut self, address: Address, account: Account) {
        self.touch(&address);
        self.map.insert(address, account);
    }

    fn touch(&mut self, address: &Address) {
        let bucket = bucket_of(address);
        self.stale[bucket / 64] |= 1 << (bucket % 64);
        self.digest = None;
    }

    /// The Merkle root over the non-empty buckets' leaves (the zero hash when there is no
    /// account), rehashing the changed buckets on the threads `split` allows. The result does
    /// not depend on the number of threads, nor on the order in which accounts changed.
    pub fn digest(&mut self, split: Split) -> Result<Hash> {
        if let Some(digest) = self.digest {
            return Ok(digest);
        }
        let mut stale = Vec::new();
        for (word, bits) in self.stale.iter_mut().enumerate() {
            let mut bits = std::mem::take(bits);
            while bits != 0 {
                stale.push(word * 64 + bits.trailing_zeros() as usize);
                bits &= bits - 1;
            }
        }
        let map = &self.map;
        let split = Split {
            min_per_thread: PARALLEL_BUCKETS_MIN,
            ..split
        };
        let leaves = split.map(stale.len(), |range| {
            let mut bytes = Vec::new();
            Ok::<_, Error>(
                stale[range]
                    .iter()
                    .map(|&bucket| (bucket, bucket_leaf(map, bucket, &mut bytes)))
                    .collect(),
            )
        })?;
        let kept = Arc::make_mut(&mut self.leaves);
        for (bucket, leaf) in leaves {
            kept[bucket] = leaf;
        }
        let present: Vec<Hash> = kept.iter().flatten().copied().collect();
        let digest = merkle_root(&present);
        self.digest = Some(digest);
        Ok(digest)
    }
}

/// The leaf of `bucket`: its number and its accounts (address, balance and nonce, the numbers
/// little-endian) in address order; `None` when it holds no account. The accounts are encoded
/// into `bytes` (cleared first) and hashed in one call, so blake3 hashes whole chunks side by side.
fn bucket_leaf(map: &imbl::OrdMap<Address, Account>, bucket: usize, bytes: &mut Vec<u8>) -> Option<Hash> {
    let end = match bucket + 1 {
        BUCKETS => Bound::Unbounded,
        next => Bound::Excluded(bucket_start(next)),
    };
    bytes.clear();
    for (address, account) in map.range((Bound::Included(bucket_start(bucket)), end)) {
        bytes.extend_from_slice(&address.0);
        bytes.extend_from_slice(&account.balance.to_le_bytes());
        bytes.extend_from_slice(&account.nonce.to_le_bytes());
    }
    (!bytes.is_empty()).then(|| {
        Hash::tagged(
            "chainql/account-bucket/v1",
            &[&(bucket as u16).to_be_bytes(), blake3::hash(bytes).as_bytes()],
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(numbers: &mut impl FnMut(u64) -> u64) -> Address {
        let mut bytes = [0u8; 20];
        for byte in &mut bytes {
            *byte = numbers(256) as u8;
        }
        // Some addresses at the ends of the address space and of a bucket.
        match numbers(16) {
            0 => bytes[..2].copy_from_slice(&[0xff, 0xff]),
            1 => bytes[..2].copy_from_slice(&[0, 0]),
            2 => bytes[2..].fill(0),
            _ => {}
        }
        Address(bytes)
    }

    /// The digest computed from scratch on one thread.
    fn from_scratch(accounts: &Accounts) -> Hash {
        Accounts::new(accounts.map().clone())
            .digest(Split::SERIAL)
            .expect("digest")
    }

    #[test]
    fn buckets_are_contiguous_runs_of_the_address_order() {
        let mut numbers = crate::test_numbers(7);
        let mut addresses: Vec<Address> = (0..5_000).map(|_| address(&mut numbers)).collect();
        addresses.sort();
        let buckets: Vec<usize> = addresses.iter().map(bucket_of).collect();
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]));
        assert!(buckets.iter().all(|&b| b < BUCKETS));
        for (address, bucket) in addresses.iter().zip(&buckets) {
            assert!(bucket_start(*bucket) <= *address);
            if bucket + 1 < BUCKETS {
                assert!(*address < bucket_start(bucket + 1));
            }
        }
    }

    #[test]
    fn the_incremental_digest_is_the_digest_from_scratch() {
        let mut numbers = crate::test_numbers(11);
        let mut accounts = Accounts::new(imbl::OrdMap::new());
        assert_eq!(accounts.digest(Split::SERIAL).expect("digest"), Hash::ZERO);
        let mut known = Vec::new();
        for round in 0..40 {
            // New accounts, and changes to known ones, in any order.
            for _ in 0..(round * 7 % 50) {
                let address = address(&mut numbers);
                known.push(address);
                accounts.insert(
                    address,
                    Account {
                        balance: numbers(1000),
                        nonce: 0,
                    },
                );
            }
            for _ in 0..(round * 13 % 30) {
                let address = known[numbers(known.len() as u64) as usize];
                if let Some(account) = accounts.get_mut(&address) {
                    account.nonce += 1;
                }
            }
            let threads = 1 + round % 3;
            let split = Split {
                threads,
                min_per_thread: 1,
            };
            let before = accounts.clone();
            let digest = accounts.digest(split).expect("digest");
            assert_eq!(digest, from_scratch(&accounts), "round {round}");
            assert_eq!(accounts.digest(split).expect("digest"), digest, "cached");
            // The version before the digest still computes its own.
            let mut before = before;
            assert_eq!(before.digest(Split::SERIAL).expect("digest"), digest);
        }
        // Any change moves the digest; changing it back restores it.
        let digest = accounts.digest(Split::SERIAL).expect("digest");
        let target = known[3];
        let original = *accounts.get(&target).expect("known");
        accounts.insert(
            target,
            Account {
                balance: original.balance + 1,
                ..original
            },
        );
        let changed = accounts.digest(Split::SERIAL).expect("digest");
        assert_ne!(changed, digest);
        accounts.insert(target, original);
        assert_eq!(accounts.digest(Split::SERIAL).expect("digest"), digest);
    }
}
