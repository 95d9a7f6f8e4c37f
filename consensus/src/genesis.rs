//! The genesis file: the chain's identity, its first validators and its first balances.

use std::path::Path;

use chainql::{Address, Hash, PublicKey};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

const GENESIS_DOMAIN: &str = "chainql/genesis/v1";
/// A genesis file larger than this is refused before it is parsed.
pub const GENESIS_BYTES_MAX: u64 = 16 << 20;

/// A validator of the genesis set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenesisValidator {
    /// ed25519 public key, `0x` + 64 hex digits.
    pub public_key: String,
    /// Voting power.
    pub stake: u64,
}

/// An account's opening native balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenesisAccount {
    /// `0x` + 40 hex digits.
    pub address: String,
    pub balance: u64,
}

/// The parsed genesis file (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Genesis {
    /// Names the chain; every transaction and block carries it.
    pub chain_id: String,
    /// Milliseconds since the Unix epoch; block 1's timestamp is later than this.
    pub genesis_time_ms: u64,
    /// Partitions of the Proof-of-Events log, fixed for the life of the chain.
    #[serde(default = "default_partitions")]
    pub log_partitions: u32,
    pub validators: Vec<GenesisValidator>,
    #[serde(default)]
    pub accounts: Vec<GenesisAccount>,
    /// Native units a transaction pays per unit of gas it uses, to the block's proposer. 0 (the
    /// default) makes gas free, as on a development chain.
    #[serde(default)]
    pub gas_price: u64,
    /// Blocks per staking epoch: stake bonds and unbonds, and the validator set changes, only at
    /// the end of a block whose height is a multiple of it.
    #[serde(default = "default_epoch_blocks")]
    pub epoch_blocks: u64,
}

fn default_partitions() -> u32 {
    1
}

fn default_epoch_blocks() -> u64 {
    DEFAULT_EPOCH_BLOCKS
}

/// The epoch length of a genesis that does not name one.
pub const DEFAULT_EPOCH_BLOCKS: u64 = 100;

/// A genesis validator, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validator {
    pub public_key: PublicKey,
    pub address: Address,
    pub stake: u64,
}

impl Genesis {
    /// A genesis for a one-validator chain whose validator also holds `balance` in `accounts`.
    pub fn single_validator(
        chain_id: &str,
        genesis_time_ms: u64,
        validator: &PublicKey,
        accounts: &[(Address, u64)],
    ) -> Genesis {
        Genesis {
            chain_id: chain_id.to_string(),
            genesis_time_ms,
            log_partitions: 1,
            gas_price: 0,
            epoch_blocks: DEFAULT_EPOCH_BLOCKS,
            validators: vec![GenesisValidator {
                public_key: format!("0x{}", hex::encode(validator.to_bytes())),
                stake: 100,
            }],
            accounts: accounts
                .iter()
                .map(|(address, balance)| GenesisAccount {
                    address: address.to_hex(),
                    balance: *balance,
                })
                .collect(),
        }
    }

    /// Reads and validates a genesis file.
    pub fn read(path: &Path) -> Result<Genesis> {
        let metadata = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if metadata.len() > GENESIS_BYTES_MAX {
            return Err(Error::InvalidGenesis(format!(
                "{} is {} bytes; the limit is {GENESIS_BYTES_MAX}",
                path.display(),
                metadata.len()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let genesis: Genesis = serde_json::from_str(&text)
            .map_err(|e| Error::InvalidGenesis(format!("{}: {e}", path.display())))?;
        genesis.validate()?;
        Ok(genesis)
    }

    /// Writes the genesis as pretty JSON, durably.
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::InvalidGenesis(e.to_string()))?;
        crate::write_file_durably(path, text.as_bytes())
    }

    /// Checks everything a node relies on.
    pub fn validate(&self) -> Result<()> {
        let invalid = |m: String| Err(Error::InvalidGenesis(m));
        let id_ok = !self.chain_id.is_empty()
            && self.chain_id.len() <= 64
            && self
                .chain_id
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
        if !id_ok {
            return invalid(format!(
                "chain_id {:?} must be 1 to 64 letters, digits, '-', '_' or '.'",
                self.chain_id
            ));
        }
        if self.log_partitions == 0 || self.log_partitions > 1024 {
            return invalid("log_partitions must be between 1 and 1024".into());
        }
        if self.epoch_blocks == 0 || self.epoch_blocks > 1_000_000 {
            return invalid("epoch_blocks must be between 1 and 1000000".into());
        }
        if self.validators.is_empty() {
            return invalid("at least one validator is needed".into());
        }
        let validators = self.validators()?;
        let mut total: u64 = 0;
        for (i, v) in validators.iter().enumerate() {
            if v.stake == 0 {
                return invalid(format!("validator {} has no stake", v.address));
            }
            total = total
                .checked_add(v.stake)
                .ok_or_else(|| Error::InvalidGenesis("total stake overflows".into()))?;
            if validators[..i].iter().any(|w| w.address == v.address) {
                return invalid(format!("validator {} is listed twice", v.address));
            }
        }
        let accounts = self.accounts()?;
        for (i, (address, _)) in accounts.iter().enumerate() {
            if accounts[..i].iter().any(|(a, _)| a == address) {
                return invalid(format!("account {address} is listed twice"));
            }
        }
        Ok(())
    }

    pub fn validators(&self) -> Result<Vec<Validator>> {
        self.validators
            .iter()
            .map(|v| {
                let digits = v.public_key.strip_prefix("0x").unwrap_or(&v.public_key);
                let bytes = hex::decode(digits).map_err(|_| {
                    Error::InvalidGenesis(format!("validator key {:?} is not hex", v.public_key))
                })?;
                let public_key = PublicKey::from_bytes(&bytes)
                    .map_err(|e| Error::InvalidGenesis(format!("validator key {:?}: {e}", v.public_key)))?;
                Ok(Validator {
                    address: public_key.address(),
                    public_key,
                    stake: v.stake,
                })
            })
            .collect()
    }

    pub fn accounts(&self) -> Result<Vec<(Address, u64)>> {
        self.accounts
            .iter()
            .map(|a| {
                let address =
                    Address::from_hex(&a.address).map_err(|e| Error::InvalidGenesis(e.to_string()))?;
                Ok((address, a.balance))
            })
            .collect()
    }

    /// The genesis hash: block 1's parent. Computed over the canonical JSON encoding (fields in
    /// declaration order, no whitespace), so reformatting the file does not change it.
    pub fn hash(&self) -> Hash {
        let canonical = serde_json::to_vec(self).expect("a genesis always serializes");
        Hash::tagged(GENESIS_DOMAIN, &[&canonical])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainql::Keypair;

    #[test]
    fn validation_catches_bad_genesis() {
        let key = Keypair::from_seed([1; 32]);
        let good = Genesis::single_validator("test-chain", 0, &key.public_key(), &[(key.address(), 5)]);
        good.validate().expect("valid");
        let mut bad = good.clone();
        bad.chain_id = "spaces are bad".into();
        assert!(bad.validate().is_err());
        let mut bad = good.clone();
        bad.validators[0].stake = 0;
        assert!(bad.validate().is_err());
        let mut bad = good.clone();
        bad.validators[0].public_key = "0x1234".into();
        assert!(bad.validate().is_err());
        let mut bad = good.clone();
        bad.accounts.push(bad.accounts[0].clone());
        assert!(bad.validate().is_err());
        for epoch_blocks in [0, 1_000_001] {
            let bad = Genesis {
                epoch_blocks,
                ..good.clone()
            };
            let error = bad.validate().expect_err("a bad epoch length").to_string();
            assert!(error.contains("epoch_blocks"), "{error}");
        }
        let mut other = good.clone();
        other.genesis_time_ms = 1;
        assert_ne!(good.hash(), other.hash());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("genesis.json");
        std::fs::write(
            &path,
            r#"{"chain_id":"x","genesis_time_ms":0,"validators":[],"surprise":1}"#,
        )
        .expect("write");
        let error = Genesis::read(&path).expect_err("unknown field");
        assert!(error.to_string().contains("surprise"), "{error}");
    }
}
