//! The `chain` schema's system tables: `chain.blocks`, `chain.transactions`, `chain.events`,
//! `chain.accounts`, `chain.validators`, and the descriptions of the catalog (`chain.tables`, `chain.columns`,
//! `chain.grants`, `chain.contracts`).
//!
//! Blocks and transactions are history: each executed block appends a batch, and the batches are
//! held in persistent vectors so every state version shares them. They are derived from the
//! block store, so they are not part of the state root. Accounts are state and are hashed.

use std::collections::BTreeMap;
use std::sync::Arc;

use chainql::contract::Access;
use chainql::{Address, Hash};
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Int32Array, Int64Array, ListBuilder, RecordBatch, StringArray, StringBuilder,
    TimestampMillisecondArray,
};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::contract::{Contract, EmittedEvent};
use crate::staking::Staking;
use crate::state::Account;
use crate::table::{CHUNK_ROWS, Table};
use crate::{Error, Result};

/// Trailing small batches kept before they are merged into one.
const SMALL_BATCHES_MAX: usize = 64;

/// An append-only history table: batches shared between versions.
#[derive(Debug, Clone)]
struct History {
    schema: SchemaRef,
    batches: imbl::Vector<RecordBatch>,
    /// Trailing batches smaller than a chunk.
    small: usize,
}

impl History {
    fn new(schema: SchemaRef) -> History {
        History {
            schema,
            batches: imbl::Vector::new(),
            small: 0,
        }
    }

    fn push(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.batches.push_back(batch);
        self.small += 1;
        if self.small >= SMALL_BATCHES_MAX {
            let mut tail = Vec::with_capacity(self.small);
            while tail.len() < self.small {
                match self.batches.pop_back() {
                    Some(batch) => tail.push(batch),
                    None => break,
                }
            }
            tail.reverse();
            let merged = concat_batches(&self.schema, &tail)?;
            self.small = usize::from(merged.num_rows() < CHUNK_ROWS);
            self.batches.push_back(merged);
        }
        Ok(())
    }

    fn batches(&self) -> Vec<RecordBatch> {
        self.batches.iter().cloned().collect()
    }
}

/// One executed transaction, as `chain.transactions` shows it.
#[derive(Debug, Clone)]
pub struct TransactionRecord {
    pub hash: Hash,
    pub sender: Address,
    pub nonce: u64,
    pub success: bool,
    pub error: Option<String>,
    pub statements: String,
    pub gas_used: u64,
    /// The events its contracts emitted (none when it failed).
    pub events: Vec<EmittedEvent>,
    /// The R2 stage it ran in (from 1, per block), and whether in a vectorized group.
    pub stage: u32,
    pub vectorized: bool,
}

/// One executed block, as `chain.blocks` shows it.
#[derive(Debug, Clone)]
pub struct BlockRecord {
    pub height: u64,
    pub hash: Hash,
    pub parent_hash: Hash,
    pub timestamp_ms: u64,
    pub transaction_count: u32,
    pub transactions_root: Hash,
    pub state_root: Hash,
    pub proposer: Address,
}

/// The system tables of one state version.
#[derive(Debug, Clone)]
pub struct SystemTables {
    blocks: History,
    transactions: History,
    events: History,
    accounts: imbl::OrdMap<Address, Account>,
    staking: Staking,
    /// The height of the version, whose next height `chain.validators` shows the power of.
    height: u64,
}

fn blocks_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("height", DataType::Int64, false),
        Field::new("hash", DataType::Utf8, false),
        Field::new("parent_hash", DataType::Utf8, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into())),
            false,
        ),
        Field::new("transaction_count", DataType::Int32, false),
        Field::new("transactions_root", DataType::Utf8, false),
        Field::new("state_root", DataType::Utf8, false),
        Field::new("proposer", DataType::Utf8, false),
    ]))
}

fn transactions_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("hash", DataType::Utf8, false),
        Field::new("block_height", DataType::Int64, false),
        Field::new("index", DataType::Int32, false),
        Field::new("sender", DataType::Utf8, false),
        Field::new("nonce", DataType::Int64, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("error", DataType::Utf8, true),
        Field::new("statements", DataType::Utf8, false),
        Field::new("gas_used", DataType::Int64, false),
        Field::new("stage", DataType::Int32, false),
        Field::new("vectorized", DataType::Boolean, false),
    ]))
}

fn events_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("block_height", DataType::Int64, false),
        Field::new("transaction_hash", DataType::Utf8, false),
        Field::new("transaction_index", DataType::Int32, false),
        Field::new("event_index", DataType::Int32, false),
        Field::new("contract", DataType::Utf8, false),
        Field::new("event", DataType::Utf8, false),
        Field::new(
            "args",
            DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
            false,
        ),
    ]))
}

fn contracts_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("contract_name", DataType::Utf8, false),
        Field::new("signature", DataType::Utf8, false),
        Field::new("returns", DataType::Utf8, true),
        Field::new("access", DataType::Utf8, false),
        Field::new("view", DataType::Boolean, false),
        Field::new("owner", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
    ]))
}

fn accounts_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("address", DataType::Utf8, false),
        Field::new("balance", DataType::Int64, false),
        Field::new("nonce", DataType::Int64, false),
    ]))
}

fn validators_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("address", DataType::Utf8, false),
        Field::new("public_key", DataType::Utf8, false),
        Field::new("power", DataType::Int64, false),
        Field::new("bonded", DataType::Int64, false),
        Field::new("bonding", DataType::Int64, false),
        Field::new("unbonding", DataType::Int64, false),
        Field::new("leaving", DataType::Int64, false),
        Field::new("slashed", DataType::Int64, false),
    ]))
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl SystemTables {
    /// The names of the tables in the `chain` schema.
    pub const NAMES: &'static [&'static str] = &[
        "accounts",
        "blocks",
        "columns",
        "contracts",
        "events",
        "grants",
        "tables",
        "transactions",
        "validators",
    ];

    pub fn new(accounts: imbl::OrdMap<Address, Account>, staking: Staking, height: u64) -> SystemTables {
        SystemTables {
            blocks: History::new(blocks_schema()),
            transactions: History::new(transactions_schema()),
            events: History::new(events_schema()),
            accounts,
            staking,
            height,
        }
    }

    pub(crate) fn set_accounts(&mut self, accounts: imbl::OrdMap<Address, Account>) {
        self.accounts = accounts;
    }

    pub(crate) fn set_staking(&mut self, staking: Staking, height: u64) {
        self.staking = staking;
        self.height = height;
    }

    /// The history tables (`blocks`, `transactions`, `events`) as a checkpoint stores them.
    pub(crate) fn history(&self) -> [(&'static str, SchemaRef, Vec<RecordBatch>); 3] {
        [
            ("blocks", self.blocks.schema.clone(), self.blocks.batches()),
            (
                "transactions",
                self.transactions.schema.clone(),
                self.transactions.batches(),
            ),
            ("events", self.events.schema.clone(), self.events.batches()),
        ]
    }

    /// System tables rebuilt from a checkpoint: the accounts and the history tables' rows, in
    /// the order [`SystemTables::history`] names them.
    pub(crate) fn restore(
        accounts: imbl::OrdMap<Address, Account>,
        staking: Staking,
        height: u64,
        history: [Vec<RecordBatch>; 3],
    ) -> Result<SystemTables> {
        let mut tables = SystemTables::new(accounts, staking, height);
        let [blocks, transactions, events] = history;
        for (target, batches) in [
            (&mut tables.blocks, blocks),
            (&mut tables.transactions, transactions),
            (&mut tables.events, events),
        ] {
            for batch in batches {
                if batch.schema().fields() != target.schema.fields() {
                    return Err(Error::Invalid(format!(
                        "a stored history batch has columns {:?}, expected {:?}",
                        batch.schema().fields(),
                        target.schema.fields()
                    )));
                }
                target.push(batch.with_schema(target.schema.clone())?)?;
            }
        }
        Ok(tables)
    }

    /// Appends an executed block and its transactions.
    pub fn push_block(&mut self, block: &BlockRecord, transactions: &[TransactionRecord]) -> Result<()> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![to_i64(block.height)])),
            Arc::new(StringArray::from(vec![block.hash.to_hex()])),
            Arc::new(StringArray::from(vec![block.parent_hash.to_hex()])),
            Arc::new(
                TimestampMillisecondArray::from(vec![to_i64(block.timestamp_ms)]).with_timezone("+00:00"),
            ),
            Arc::new(Int32Array::from(vec![block.transaction_count as i32])),
            Arc::new(StringArray::from(vec![block.transactions_root.to_hex()])),
            Arc::new(StringArray::from(vec![block.state_root.to_hex()])),
            Arc::new(StringArray::from(vec![block.proposer.to_hex()])),
        ];
        self.blocks
            .push(RecordBatch::try_new(blocks_schema(), columns)?)?;
        let height = to_i64(block.height);
        // The two tables' rows are built side by side: a block's records are a good part of
        // its serial work.
        let (transaction_rows, event_rows) = rayon::join(
            || transaction_rows(height, transactions),
            || event_rows(height, transactions),
        );
        self.transactions.push(transaction_rows?)?;
        self.events.push(event_rows?)
    }

    /// The schema and rows of system table `name`; `tables` are the user tables of the same
    /// version, which `chain.tables` and `chain.columns` describe.
    pub fn get(
        &self,
        name: &str,
        tables: &BTreeMap<String, Arc<Table>>,
        contracts: &BTreeMap<String, Arc<Contract>>,
    ) -> Result<Option<(SchemaRef, Vec<RecordBatch>)>> {
        Ok(match name {
            "contracts" => Some(describe_contracts(contracts)?),
            "events" => Some((self.events.schema.clone(), self.events.batches())),
            "tables" => Some(describe_tables(tables)?),
            "grants" => Some(describe_grants(tables)?),
            "columns" => Some(describe_columns(tables)?),
            "blocks" => Some((self.blocks.schema.clone(), self.blocks.batches())),
            "transactions" => Some((self.transactions.schema.clone(), self.transactions.batches())),
            "validators" => Some(self.describe_validators()?),
            "accounts" => {
                let schema = accounts_schema();
                let columns: Vec<ArrayRef> = vec![
                    Arc::new(StringArray::from_iter_values(
                        self.accounts.keys().map(Address::to_hex),
                    )),
                    Arc::new(Int64Array::from_iter_values(
                        self.accounts.values().map(|a| to_i64(a.balance)),
                    )),
                    Arc::new(Int64Array::from_iter_values(
                        self.accounts.values().map(|a| to_i64(a.nonce)),
                    )),
                ];
                let batch = RecordBatch::try_new(schema.clone(), columns).map_err(Error::from)?;
                Some((schema, vec![batch]))
            }
            _ => None,
        })
    }
}

impl SystemTables {
    /// `chain.validators`: every account with stake, and its voting power at the next height
    /// (0 outside the set).
    fn describe_validators(&self) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let schema = validators_schema();
        let set = self.staking.validators_for(self.height + 1);
        let power = |address: &Address| {
            set.and_then(|set| set.iter().find(|v| v.address == *address))
                .map_or(0, |v| to_i64(v.power))
        };
        let stakes: Vec<_> = self.staking.stakes().collect();
        let number = |f: fn(&crate::staking::Stake) -> u64| -> ArrayRef {
            Arc::new(Int64Array::from_iter_values(
                stakes.iter().map(|(_, s)| to_i64(f(s))),
            ))
        };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                stakes.iter().map(|(a, _)| a.to_hex()),
            )),
            Arc::new(StringArray::from_iter_values(
                stakes
                    .iter()
                    .map(|(_, s)| format!("0x{}", hex::encode(s.public_key))),
            )),
            Arc::new(Int64Array::from_iter_values(stakes.iter().map(|(a, _)| power(a)))),
            number(|s| s.bonded),
            number(|s| s.bonding),
            number(|s| s.unbonding),
            number(|s| s.leaving),
            number(|s| s.slashed),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        Ok((schema, vec![batch]))
    }
}

/// `chain.tables`: every user table, its row count and its key.
fn describe_tables(tables: &BTreeMap<String, Arc<Table>>) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("table_name", DataType::Utf8, false),
        Field::new("row_count", DataType::Int64, false),
        Field::new("primary_key", DataType::Utf8, true),
        Field::new("owner", DataType::Utf8, false),
    ]));
    let keys: Vec<Option<String>> = tables
        .values()
        .map(|t| {
            let definition = t.definition();
            (!definition.has_hidden_row_id()).then(|| {
                definition
                    .primary_key
                    .iter()
                    .map(|&c| definition.columns[c].name.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
        })
        .collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(tables.keys())),
        Arc::new(Int64Array::from_iter_values(
            tables.values().map(|t| t.row_count() as i64),
        )),
        Arc::new(StringArray::from(keys)),
        Arc::new(StringArray::from_iter_values(
            tables.values().map(|t| t.owner().to_hex()),
        )),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    Ok((schema, vec![batch]))
}

/// `chain.contracts`: every deployed contract.
fn describe_contracts(contracts: &BTreeMap<String, Arc<Contract>>) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let schema = contracts_schema();
    let returns: Vec<Option<String>> = contracts
        .values()
        .map(|c| {
            c.definition.returns.as_ref().map(|columns| {
                let columns: Vec<String> = columns.iter().map(|(n, t)| format!("{n} {t}")).collect();
                format!("TABLE({})", columns.join(", "))
            })
        })
        .collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(contracts.keys())),
        Arc::new(StringArray::from_iter_values(
            contracts.values().map(|c| c.definition.signature()),
        )),
        Arc::new(StringArray::from(returns)),
        Arc::new(StringArray::from_iter_values(contracts.values().map(
            |c| match c.definition.access {
                Access::Public => "PUBLIC",
                Access::Owner => "OWNER",
            },
        ))),
        Arc::new(BooleanArray::from_iter(
            contracts.values().map(|c| Some(c.definition.view)),
        )),
        Arc::new(StringArray::from_iter_values(
            contracts.values().map(|c| c.owner.to_hex()),
        )),
        Arc::new(StringArray::from_iter_values(
            contracts.values().map(|c| c.definition.source.as_str()),
        )),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    Ok((schema, vec![batch]))
}

/// `chain.grants`: the privileges accounts hold on tables they do not own.
fn describe_grants(tables: &BTreeMap<String, Arc<Table>>) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("table_name", DataType::Utf8, false),
        Field::new("grantee", DataType::Utf8, false),
        Field::new("privileges", DataType::Utf8, false),
    ]));
    let mut names = Vec::new();
    let mut grantees = Vec::new();
    let mut privileges = Vec::new();
    for (name, table) in tables {
        for (account, held) in table.grants() {
            names.push(name.clone());
            grantees.push(account.to_hex());
            privileges.push(held.names());
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(names)),
        Arc::new(StringArray::from(grantees)),
        Arc::new(StringArray::from(privileges)),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    Ok((schema, vec![batch]))
}

/// `chain.columns`: every column of every user table, in order, with its SQL type.
fn describe_columns(tables: &BTreeMap<String, Arc<Table>>) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("table_name", DataType::Utf8, false),
        Field::new("column_name", DataType::Utf8, false),
        Field::new("ordinal", DataType::Int32, false),
        Field::new("data_type", DataType::Utf8, false),
        Field::new("nullable", DataType::Boolean, false),
        Field::new("default_value", DataType::Utf8, true),
        Field::new("key_ordinal", DataType::Int32, true),
    ]));
    let mut table_names = Vec::new();
    let mut names = Vec::new();
    let mut ordinals = Vec::new();
    let mut types = Vec::new();
    let mut nullable = Vec::new();
    let mut defaults = Vec::new();
    let mut key_ordinals = Vec::new();
    for (table_name, table) in tables {
        let definition = table.definition();
        for (i, column) in definition.columns.iter().enumerate() {
            table_names.push(table_name.clone());
            names.push(column.name.clone());
            ordinals.push(i as i32 + 1);
            types.push(column.column_type.sql_name());
            nullable.push(column.nullable);
            defaults.push(column.default.clone());
            key_ordinals.push(
                definition
                    .primary_key
                    .iter()
                    .position(|&k| k == i)
                    .map(|p| p as i32 + 1),
            );
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(table_names)),
        Arc::new(StringArray::from(names)),
        Arc::new(Int32Array::from(ordinals)),
        Arc::new(StringArray::from(types)),
        Arc::new(BooleanArray::from(nullable)),
        Arc::new(StringArray::from(defaults)),
        Arc::new(Int32Array::from(key_ordinals)),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    Ok((schema, vec![batch]))
}

/// The `chain.transactions` rows of a block's transactions.
fn transaction_rows(height: i64, transactions: &[TransactionRecord]) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            transactions.iter().map(|t| t.hash.to_hex()),
        )),
        Arc::new(Int64Array::from(vec![height; transactions.len()])),
        Arc::new(Int32Array::from_iter_values(0..transactions.len() as i32)),
        Arc::new(StringArray::from_iter_values(
            transactions.iter().map(|t| t.sender.to_hex()),
        )),
        Arc::new(Int64Array::from_iter_values(
            transactions.iter().map(|t| to_i64(t.nonce)),
        )),
        Arc::new(StringArray::from_iter_values(
            transactions
                .iter()
                .map(|t| if t.success { "success" } else { "failed" }),
        )),
        Arc::new(StringArray::from_iter(
            transactions.iter().map(|t| t.error.as_deref()),
        )),
        Arc::new(StringArray::from_iter_values(
            transactions.iter().map(|t| t.statements.as_str()),
        )),
        Arc::new(Int64Array::from_iter_values(
            transactions.iter().map(|t| to_i64(t.gas_used)),
        )),
        Arc::new(Int32Array::from_iter_values(
            transactions.iter().map(|t| t.stage as i32),
        )),
        Arc::new(BooleanArray::from_iter(
            transactions.iter().map(|t| Some(t.vectorized)),
        )),
    ];
    Ok(RecordBatch::try_new(transactions_schema(), columns)?)
}

/// The `chain.events` rows of the events a block's transactions emitted.
fn event_rows(height: i64, transactions: &[TransactionRecord]) -> Result<RecordBatch> {
    let mut hashes = Vec::new();
    let mut transaction_indexes = Vec::new();
    let mut event_indexes = Vec::new();
    let mut contracts = Vec::new();
    let mut names = Vec::new();
    let mut args = ListBuilder::new(StringBuilder::new());
    for (t, transaction) in transactions.iter().enumerate() {
        for (e, event) in transaction.events.iter().enumerate() {
            hashes.push(transaction.hash.to_hex());
            transaction_indexes.push(t as i32);
            event_indexes.push(e as i32);
            contracts.push(event.contract.as_str());
            names.push(event.name.as_str());
            for arg in &event.args {
                args.values().append_option(arg.as_deref());
            }
            args.append(true);
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![height; hashes.len()])),
        Arc::new(StringArray::from(hashes)),
        Arc::new(Int32Array::from(transaction_indexes)),
        Arc::new(Int32Array::from(event_indexes)),
        Arc::new(StringArray::from(contracts)),
        Arc::new(StringArray::from(names)),
        Arc::new(args.finish()),
    ];
    Ok(RecordBatch::try_new(events_schema(), columns)?)
}
