//! A version of the chain's state: tables, accounts, system tables, and the state root.

use std::collections::BTreeMap;
use std::sync::Arc;

use chainql::{Address, Hash, merkle_root};

use crate::accounts::Accounts;

use crate::contract::Contract;
use crate::parallel::Split;
use crate::provider::{CatalogList, Extras};
use crate::staking::{Staking, Validators};
use crate::system::SystemTables;
use crate::table::Table;
use crate::{Error, Result};

const STATE_ROOT_DOMAIN: &str = "chainql/state/v3";

/// An account's native balance and the nonce its next transaction must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Account {
    pub balance: u64,
    pub nonce: u64,
}

/// The state after a block (height 0: the genesis state). Immutable once built; cloning is
/// cheap, and a block's execution works on a clone.
#[derive(Debug, Clone)]
pub struct State {
    pub(crate) height: u64,
    pub(crate) block_hash: Hash,
    pub(crate) timestamp_ms: u64,
    pub(crate) tables: BTreeMap<String, Arc<Table>>,
    pub(crate) contracts: BTreeMap<String, Arc<Contract>>,
    pub(crate) accounts: Accounts,
    pub(crate) staking: Staking,
    pub(crate) system: SystemTables,
    pub(crate) root: Hash,
}

impl State {
    /// The state before the first block, of a chain without validators (as the executor's own
    /// tests run it).
    pub fn genesis(genesis_hash: Hash, genesis_time_ms: u64, balances: &[(Address, u64)]) -> Result<State> {
        State::genesis_with_validators(genesis_hash, genesis_time_ms, balances, &[])
    }

    /// The state before the first block, with the genesis validators' stake bonded.
    pub fn genesis_with_validators(
        genesis_hash: Hash,
        genesis_time_ms: u64,
        balances: &[(Address, u64)],
        validators: &[(chainql::PublicKey, u64)],
    ) -> Result<State> {
        let staking = Staking::genesis(validators)?;
        let accounts: imbl::OrdMap<Address, Account> = balances
            .iter()
            .map(|(address, balance)| {
                (
                    *address,
                    Account {
                        balance: *balance,
                        nonce: 0,
                    },
                )
            })
            .collect();
        let mut state = State {
            height: 0,
            block_hash: genesis_hash,
            timestamp_ms: genesis_time_ms,
            tables: BTreeMap::new(),
            contracts: BTreeMap::new(),
            system: SystemTables::new(accounts.clone(), staking.clone(), 0),
            accounts: Accounts::new(accounts),
            staking,
            root: Hash::ZERO,
        };
        state.root = state.compute_root()?;
        Ok(state)
    }

    /// Height of the last block applied (0 for genesis).
    pub fn height(&self) -> u64 {
        self.height
    }

    /// Hash of the last block applied (the genesis hash at height 0).
    pub fn block_hash(&self) -> Hash {
        self.block_hash
    }

    /// Timestamp of the last block applied.
    pub fn timestamp_ms(&self) -> u64 {
        self.timestamp_ms
    }

    /// The state root: a blake3 Merkle commitment to every table and account.
    pub fn root(&self) -> Hash {
        self.root
    }

    /// Stake, validator sets and punished offences.
    pub fn staking(&self) -> &Staking {
        &self.staking
    }

    /// The validators that commit `height`, when this version knows them: from the heights of
    /// its oldest kept set up to two past its own (see [`Staking`]).
    pub fn validators_for(&self, height: u64) -> Option<&Validators> {
        self.staking.validators_for(height)
    }

    /// The validator set that the next block must announce, when the epoch that ended with this
    /// version's block changed it.
    pub fn announced_validators(&self) -> Option<&Validators> {
        self.staking.announced(self.height)
    }

    pub fn account(&self, address: &Address) -> Account {
        self.accounts.get(address).copied().unwrap_or_default()
    }

    /// Counts a transaction of `address`: its next transaction carries the next nonce.
    pub(crate) fn use_nonce(&mut self, address: &Address) {
        let mut account = self.account(address);
        account.nonce += 1;
        self.accounts.insert(*address, account);
    }

    /// Takes a transaction's `fee` from its sender's balance and counts its nonce, in one update
    /// of the account (the serial path does the two apart, with the same result). Refuses a fee
    /// above the balance, changing nothing.
    pub(crate) fn charge_sender(&mut self, address: &Address, fee: u64) -> Result<()> {
        let refused = |balance| Error::InsufficientBalance {
            account: *address,
            balance,
            needed: fee as u128,
        };
        match self.accounts.get_mut(address) {
            Some(account) => {
                account.balance = account.balance.checked_sub(fee).ok_or(refused(account.balance))?;
                account.nonce += 1;
            }
            None if fee > 0 => return Err(refused(0)),
            None => {
                self.accounts.insert(*address, Account { balance: 0, nonce: 1 });
            }
        }
        Ok(())
    }

    /// Adds `delta` (negative: subtracts) to an account's native balance, creating the account
    /// when it is new. Refuses to go below zero or past `u64::MAX`.
    pub(crate) fn adjust_balance(&mut self, address: &Address, delta: i128) -> Result<()> {
        if delta == 0 {
            return Ok(());
        }
        let mut account = self.account(address);
        let balance = account.balance as i128 + delta;
        if balance < 0 {
            return Err(Error::InsufficientBalance {
                account: *address,
                balance: account.balance,
                needed: delta.unsigned_abs(),
            });
        }
        account.balance = u64::try_from(balance)
            .map_err(|_| Error::LimitExceeded(format!("the balance of {address} would pass {}", u64::MAX)))?;
        self.accounts.insert(*address, account);
        Ok(())
    }

    pub fn table(&self, name: &str) -> Option<&Arc<Table>> {
        self.tables.get(name)
    }

    pub fn contract(&self, name: &str) -> Option<&Arc<Contract>> {
        self.contracts.get(name)
    }

    pub fn contracts(&self) -> impl Iterator<Item = &Arc<Contract>> {
        self.contracts.values()
    }

    pub fn table_names(&self) -> impl Iterator<Item = &str> {
        self.tables.keys().map(String::as_str)
    }

    /// A DataFusion catalog over this version.
    pub(crate) fn catalog(&self, extras: Extras) -> Arc<CatalogList> {
        CatalogList::new(
            self.tables.clone(),
            self.contracts.clone(),
            self.system.clone(),
            extras,
        )
    }

    /// Compacts the tables changed since the last root and computes the new root:
    /// `H(height, Merkle(tables by name), Merkle(account buckets), Merkle(contracts by name),
    /// staking)`.
    pub(crate) fn compute_root(&mut self) -> Result<Hash> {
        self.compute_root_with(Split::SERIAL)
    }

    /// [`State::compute_root`], tables' changed buckets rehashed on the threads `split` allows.
    pub(crate) fn compute_root_with(&mut self, split: Split) -> Result<Hash> {
        let mut table_leaves = Vec::with_capacity(self.tables.len());
        for (name, table) in self.tables.iter_mut() {
            if table.is_dirty() {
                Arc::make_mut(table).compact_with(split)?;
            }
            let digest = match table.cached_digest() {
                Some(digest) => digest,
                None => Arc::make_mut(table).digest_with(split)?,
            };
            table_leaves.push(Hash::tagged(
                "chainql/table-leaf/v1",
                &[name.as_bytes(), digest.as_bytes()],
            ));
        }
        let accounts = self.accounts.digest(split)?;
        let contract_leaves: Vec<Hash> = self.contracts.values().map(|c| c.digest()).collect();
        Ok(Hash::tagged(
            STATE_ROOT_DOMAIN,
            &[
                &self.height.to_le_bytes(),
                merkle_root(&table_leaves).as_bytes(),
                accounts.as_bytes(),
                merkle_root(&contract_leaves).as_bytes(),
                self.staking.digest().as_bytes(),
            ],
        ))
    }
}
