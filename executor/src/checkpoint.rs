//! Checkpoints: a committed state written to disk as Parquet files and a manifest, and read back
//! into a [`State`] with the same root.
//!
//! A checkpoint is a directory:
//!
//! ```text
//! MANIFEST                 magic "CQLCKPT\0", version u32, crc32c u32, length u32, JSON
//! table-0000.parquet …     one per user table: every chunk's rows (live and deleted) with its
//!                          id and live mask, so the restored table has the original layout
//! accounts.parquet         address, balance, nonce
//! blocks.parquet, transactions.parquet, events.parquet   the history tables
//! attachment-NAME …        opaque files the caller keeps with the state (the node's receipts)
//! ```
//!
//! The manifest names every file with its size and blake3 digest, the tables' definitions,
//! owners and grants, the contracts' sources, the stakes, validator sets and punished offences,
//! and the state root. Reading checks each file
//! against the manifest, rebuilds the state, recomputes its root and refuses a checkpoint whose
//! root differs. A checkpoint is written into a temporary directory, every file fsynced, and
//! renamed into place, so a crash leaves either the whole checkpoint or none.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chainql::{Address, Hash};
use chainql_planner::{ColumnDefinition, ColumnType, Privileges, TableDefinition};
use datafusion::arrow::array::{Array, BinaryArray, BooleanArray, RecordBatch, UInt64Array};
use datafusion::arrow::buffer::BooleanBuffer;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};

use crate::contract::Contract;
use crate::staking::{Stake, Staking, ValidatorPower};
use crate::state::{Account, State};
use crate::system::SystemTables;
use crate::table::Table;
use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"CQLCKPT\0";
const VERSION: u32 = 2;
const MANIFEST: &str = "MANIFEST";
/// A manifest larger than this is refused before it is read.
const MANIFEST_BYTES_MAX: u64 = 256 << 20;
const CHUNK_COLUMN: &str = "__chainql_chunk";
const LIVE_COLUMN: &str = "__chainql_live";

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    height: u64,
    block_hash: String,
    timestamp_ms: u64,
    state_root: String,
    tables: Vec<TableEntry>,
    contracts: Vec<ContractEntry>,
    files: Vec<FileEntry>,
    attachments: Vec<String>,
    staking: StakingEntry,
}

#[derive(Debug, Serialize, Deserialize)]
struct StakingEntry {
    stakes: Vec<StakeEntry>,
    sets: Vec<SetEntry>,
    offences: Vec<OffenceEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StakeEntry {
    address: String,
    public_key: String,
    bonded: u64,
    bonding: u64,
    unbonding: u64,
    leaving: u64,
    slashed: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct SetEntry {
    from_height: u64,
    /// Each member's public key (hex) and power, in the set's order.
    validators: Vec<(String, u64)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct OffenceEntry {
    validator: String,
    height: u64,
    round: u32,
}

impl StakingEntry {
    fn of(staking: &Staking) -> StakingEntry {
        let (sets, offences) = staking.parts();
        StakingEntry {
            stakes: staking
                .stakes()
                .map(|(address, s)| StakeEntry {
                    address: address.to_hex(),
                    public_key: hex::encode(s.public_key),
                    bonded: s.bonded,
                    bonding: s.bonding,
                    unbonding: s.unbonding,
                    leaving: s.leaving,
                    slashed: s.slashed,
                })
                .collect(),
            sets: sets
                .iter()
                .map(|(from_height, set)| SetEntry {
                    from_height: *from_height,
                    validators: set.iter().map(|v| (hex::encode(v.public_key), v.power)).collect(),
                })
                .collect(),
            offences: offences
                .into_iter()
                .map(|(validator, height, round)| OffenceEntry {
                    validator: validator.to_hex(),
                    height,
                    round,
                })
                .collect(),
        }
    }

    fn restore(&self, dir: &Path) -> Result<Staking> {
        let key = |text: &str| -> Result<[u8; 32]> {
            let bytes = hex::decode(text).map_err(|_| corrupt(dir, format!("a validator key {text:?}")))?;
            let key = chainql::PublicKey::from_bytes(&bytes).map_err(|e| corrupt(dir, e))?;
            Ok(key.to_bytes())
        };
        let mut stakes = imbl::OrdMap::new();
        for entry in &self.stakes {
            let address = parse_address(dir, &entry.address)?;
            let public_key = key(&entry.public_key)?;
            if Address::of_public_key(&public_key) != address || entry.unbonding > entry.bonded {
                return Err(corrupt(dir, format!("the stake of {address} is inconsistent")));
            }
            stakes.insert(
                address,
                Stake {
                    public_key,
                    bonded: entry.bonded,
                    bonding: entry.bonding,
                    unbonding: entry.unbonding,
                    leaving: entry.leaving,
                    slashed: entry.slashed,
                },
            );
        }
        let mut sets = Vec::with_capacity(self.sets.len());
        for entry in &self.sets {
            let set = entry
                .validators
                .iter()
                .map(|(text, power)| {
                    let public_key = key(text)?;
                    Ok(ValidatorPower {
                        public_key,
                        address: Address::of_public_key(&public_key),
                        power: *power,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            sets.push((entry.from_height, Arc::new(set)));
        }
        let offences = self
            .offences
            .iter()
            .map(|o| Ok((parse_address(dir, &o.validator)?, o.height, o.round)))
            .collect::<Result<Vec<_>>>()?;
        Staking::restore(stakes, sets, offences).map_err(|e| corrupt(dir, e))
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct TableEntry {
    name: String,
    file: String,
    owner: String,
    columns: Vec<ColumnEntry>,
    primary_key: Vec<usize>,
    grants: Vec<GrantEntry>,
    next_row_id: i64,
    next_chunk_id: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct ColumnEntry {
    name: String,
    nullable: bool,
    max_chars: Option<u32>,
    default: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct GrantEntry {
    account: String,
    insert: bool,
    update: bool,
    delete: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct ContractEntry {
    owner: String,
    source: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct FileEntry {
    name: String,
    bytes: u64,
    blake3: String,
}

fn io(context: impl std::fmt::Display, error: std::io::Error) -> Error {
    Error::Internal(format!("{context}: {error}"))
}

fn corrupt(dir: &Path, what: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("checkpoint {} is damaged: {what}", dir.display()))
}

/// Writes files into a directory, each fsynced, remembering size and digest for the manifest.
struct Files {
    dir: PathBuf,
    written: Vec<FileEntry>,
}

impl Files {
    fn write(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.dir.join(name);
        let mut file = File::create(&path).map_err(|e| io(path.display(), e))?;
        file.write_all(bytes).map_err(|e| io(path.display(), e))?;
        file.sync_all().map_err(|e| io(path.display(), e))?;
        self.written.push(FileEntry {
            name: name.to_string(),
            bytes: bytes.len() as u64,
            blake3: blake3::hash(bytes).to_hex().to_string(),
        });
        Ok(())
    }

    fn parquet(&mut self, name: &str, schema: SchemaRef, batches: &[RecordBatch]) -> Result<()> {
        let mut bytes = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut bytes, schema, None)
            .map_err(|e| Error::Internal(format!("writing {name}: {e}")))?;
        for batch in batches {
            writer
                .write(batch)
                .map_err(|e| Error::Internal(format!("writing {name}: {e}")))?;
        }
        writer
            .close()
            .map_err(|e| Error::Internal(format!("writing {name}: {e}")))?;
        self.write(name, &bytes)
    }
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir.display(), e))
}

fn parse_address(dir: &Path, text: &str) -> Result<Address> {
    Address::from_hex(text).map_err(|e| corrupt(dir, format!("address {text}: {e}")))
}

fn parse_hash(dir: &Path, text: &str) -> Result<Hash> {
    Hash::from_hex(text).ok_or_else(|| corrupt(dir, format!("{text} is not a hash")))
}

impl State {
    /// Writes this state as a checkpoint at `dir` (which must not exist), with `attachments`
    /// stored beside it. The directory appears only once it is complete.
    pub fn write_checkpoint(&self, dir: &Path, attachments: &[(&str, &[u8])]) -> Result<()> {
        if dir.exists() {
            return Err(Error::Invalid(format!(
                "checkpoint {} already exists",
                dir.display()
            )));
        }
        let name = dir
            .file_name()
            .ok_or_else(|| Error::Invalid(format!("{} is not a directory name", dir.display())))?;
        let partial = dir.with_file_name(format!(".{}.partial", name.to_string_lossy()));
        if partial.exists() {
            std::fs::remove_dir_all(&partial).map_err(|e| io(partial.display(), e))?;
        }
        std::fs::create_dir_all(&partial).map_err(|e| io(partial.display(), e))?;
        let mut files = Files {
            dir: partial.clone(),
            written: Vec::new(),
        };

        let mut tables = Vec::with_capacity(self.tables.len());
        for (i, table) in self.tables.values().enumerate() {
            let file = format!("table-{i:04}.parquet");
            let (chunks, next_chunk_id) = table.layout();
            let mut fields: Vec<Field> = table
                .storage_schema()
                .fields()
                .iter()
                .map(|f| f.as_ref().clone())
                .collect();
            fields.push(Field::new(CHUNK_COLUMN, DataType::UInt64, false));
            fields.push(Field::new(LIVE_COLUMN, DataType::Boolean, false));
            let schema = Arc::new(Schema::new(fields));
            let mut batches = Vec::new();
            for (id, batch, live) in chunks {
                let mut columns = batch.columns().to_vec();
                columns.push(Arc::new(UInt64Array::from(vec![id; batch.num_rows()])));
                columns.push(Arc::new(BooleanArray::new(live.clone(), None)));
                batches.push(RecordBatch::try_new(Arc::clone(&schema), columns)?);
            }
            files.parquet(&file, schema, &batches)?;
            let definition = table.definition();
            tables.push(TableEntry {
                name: definition.name.clone(),
                file,
                owner: table.owner().to_hex(),
                columns: definition
                    .columns
                    .iter()
                    .map(|c| ColumnEntry {
                        name: c.name.clone(),
                        nullable: c.nullable,
                        max_chars: c.column_type.max_chars,
                        default: c.default.clone(),
                    })
                    .collect(),
                primary_key: definition.primary_key.clone(),
                grants: table
                    .grants()
                    .map(|(account, p)| GrantEntry {
                        account: account.to_hex(),
                        insert: p.insert,
                        update: p.update,
                        delete: p.delete,
                    })
                    .collect(),
                next_row_id: table.next_row_id(),
                next_chunk_id,
            });
        }

        let accounts_schema = accounts_schema();
        let addresses: Vec<&[u8]> = self.accounts.map().keys().map(|a| a.0.as_slice()).collect();
        let accounts = RecordBatch::try_new(
            Arc::clone(&accounts_schema),
            vec![
                Arc::new(BinaryArray::from(addresses)),
                Arc::new(UInt64Array::from_iter_values(
                    self.accounts.map().values().map(|a| a.balance),
                )),
                Arc::new(UInt64Array::from_iter_values(
                    self.accounts.map().values().map(|a| a.nonce),
                )),
            ],
        )?;
        files.parquet("accounts.parquet", accounts_schema, &[accounts])?;
        for (name, schema, batches) in self.system.history() {
            files.parquet(&format!("{name}.parquet"), schema, &batches)?;
        }
        let mut attachment_names = Vec::with_capacity(attachments.len());
        for (name, bytes) in attachments {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(Error::Invalid(format!("attachment name {name:?}")));
            }
            files.write(&format!("attachment-{name}"), bytes)?;
            attachment_names.push(name.to_string());
        }

        let manifest = Manifest {
            height: self.height,
            block_hash: self.block_hash.to_hex(),
            timestamp_ms: self.timestamp_ms,
            state_root: self.root.to_hex(),
            tables,
            contracts: self
                .contracts
                .values()
                .map(|c| ContractEntry {
                    owner: c.owner.to_hex(),
                    source: c.definition.source.clone(),
                })
                .collect(),
            files: std::mem::take(&mut files.written),
            attachments: attachment_names,
            staking: StakingEntry::of(&self.staking),
        };
        let json = serde_json::to_vec(&manifest).map_err(|e| Error::Internal(format!("manifest: {e}")))?;
        let mut bytes = Vec::with_capacity(20 + json.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&crc32c::crc32c(&json).to_le_bytes());
        bytes.extend_from_slice(&(json.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&json);
        files.write(MANIFEST, &bytes)?;
        fsync_dir(&partial)?;
        std::fs::rename(&partial, dir).map_err(|e| io(dir.display(), e))?;
        if let Some(parent) = dir.parent() {
            fsync_dir(parent)?;
        }
        Ok(())
    }

    /// Reads the checkpoint at `dir`: the state, with its root recomputed and checked against
    /// the manifest, and the attachments by name.
    pub fn read_checkpoint(dir: &Path) -> Result<(State, BTreeMap<String, Vec<u8>>)> {
        let manifest = read_manifest(dir)?;
        let mut digests: BTreeMap<&str, &FileEntry> = BTreeMap::new();
        for file in &manifest.files {
            digests.insert(&file.name, file);
        }
        let read = |name: &str| -> Result<Vec<u8>> {
            let entry = digests
                .get(name)
                .ok_or_else(|| corrupt(dir, format!("the manifest does not list {name}")))?;
            // Only files inside the checkpoint's directory.
            if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
                return Err(corrupt(dir, format!("the manifest names a file {name:?}")));
            }
            let bytes = std::fs::read(dir.join(name)).map_err(|e| io(dir.join(name).display(), e))?;
            if bytes.len() as u64 != entry.bytes || blake3::hash(&bytes).to_hex().as_str() != entry.blake3 {
                return Err(corrupt(dir, format!("{name} does not match its digest")));
            }
            Ok(bytes)
        };

        let mut tables = BTreeMap::new();
        for entry in &manifest.tables {
            let (schema, batches) = read_parquet(dir, &entry.file, read(&entry.file)?)?;
            let user_columns = entry.columns.len();
            let mut key = entry.primary_key.clone();
            key.sort_unstable();
            key.dedup();
            if key.len() != entry.primary_key.len() || key.iter().any(|&c| c >= user_columns) {
                return Err(corrupt(
                    dir,
                    format!("table {} has a bad primary key", entry.name),
                ));
            }
            if schema.fields().len() < user_columns + 2 {
                return Err(corrupt(dir, format!("{} has too few columns", entry.file)));
            }
            let columns = entry
                .columns
                .iter()
                .zip(schema.fields().iter())
                .map(|(c, field)| ColumnDefinition {
                    name: c.name.clone(),
                    column_type: ColumnType {
                        data_type: field.data_type().clone(),
                        max_chars: c.max_chars,
                    },
                    nullable: c.nullable,
                    default: c.default.clone(),
                })
                .collect();
            let definition = TableDefinition {
                name: entry.name.clone(),
                columns,
                primary_key: entry.primary_key.clone(),
            };
            let storage_schema = definition.storage_schema();
            let stored = storage_schema.fields().len();
            if schema.fields().len() != stored + 2 {
                return Err(corrupt(
                    dir,
                    format!("{} has {} columns", entry.file, schema.fields().len()),
                ));
            }
            let all = concat_batches(&schema, &batches)?;
            let chunk_ids = all
                .column(stored)
                .as_any()
                .downcast_ref::<UInt64Array>()
                .ok_or_else(|| corrupt(dir, format!("{}: chunk ids", entry.file)))?;
            let live = all
                .column(stored + 1)
                .as_any()
                .downcast_ref::<BooleanArray>()
                .filter(|l| l.null_count() == 0)
                .ok_or_else(|| corrupt(dir, format!("{}: live masks", entry.file)))?;
            let rows = RecordBatch::try_new(Arc::clone(&storage_schema), all.columns()[..stored].to_vec())
                .map_err(|e| corrupt(dir, format!("{}: {e}", entry.file)))?;
            let mut chunks = Vec::new();
            let mut start = 0;
            while start < rows.num_rows() {
                let id = chunk_ids.value(start);
                let mut end = start + 1;
                while end < rows.num_rows() && chunk_ids.value(end) == id {
                    end += 1;
                }
                let mask: BooleanBuffer = live.values().slice(start, end - start);
                chunks.push((id, rows.slice(start, end - start), mask));
                start = end;
            }
            let mut grants = BTreeMap::new();
            for grant in &entry.grants {
                grants.insert(
                    parse_address(dir, &grant.account)?,
                    Privileges {
                        insert: grant.insert,
                        update: grant.update,
                        delete: grant.delete,
                    },
                );
            }
            let table = Table::restore(
                definition,
                parse_address(dir, &entry.owner)?,
                grants,
                entry.next_row_id,
                entry.next_chunk_id,
                chunks,
            )?;
            tables.insert(entry.name.clone(), Arc::new(table));
        }

        let (_, batches) = read_parquet(dir, "accounts.parquet", read("accounts.parquet")?)?;
        let mut accounts = imbl::OrdMap::new();
        for batch in batches {
            let batch = RecordBatch::try_new(accounts_schema(), batch.columns().to_vec())
                .map_err(|e| corrupt(dir, format!("accounts: {e}")))?;
            let addresses = column::<BinaryArray>(dir, &batch, 0)?;
            let balances = column::<UInt64Array>(dir, &batch, 1)?;
            let nonces = column::<UInt64Array>(dir, &batch, 2)?;
            for row in 0..batch.num_rows() {
                let address: [u8; 20] = addresses
                    .value(row)
                    .try_into()
                    .map_err(|_| corrupt(dir, "an account address is not 20 bytes"))?;
                accounts.insert(
                    Address(address),
                    Account {
                        balance: balances.value(row),
                        nonce: nonces.value(row),
                    },
                );
            }
        }

        let empty = SystemTables::new(imbl::OrdMap::new(), Staking::default(), 0);
        let mut history: [Vec<RecordBatch>; 3] = Default::default();
        for (slot, (name, schema, _)) in history.iter_mut().zip(empty.history()) {
            let file = format!("{name}.parquet");
            let (_, batches) = read_parquet(dir, &file, read(&file)?)?;
            for batch in batches {
                slot.push(
                    RecordBatch::try_new(Arc::clone(&schema), batch.columns().to_vec())
                        .map_err(|e| corrupt(dir, format!("{file}: {e}")))?,
                );
            }
        }

        let mut contracts = BTreeMap::new();
        for entry in &manifest.contracts {
            let chainql::contract::ChainStatement::CreateContract(definition) =
                chainql::contract::parse_chain_statement(&entry.source)?
            else {
                return Err(corrupt(dir, "a contract's source is not CREATE CONTRACT"));
            };
            contracts.insert(
                definition.name.clone(),
                Arc::new(Contract {
                    definition: *definition,
                    owner: parse_address(dir, &entry.owner)?,
                }),
            );
        }

        let mut attachments = BTreeMap::new();
        for name in &manifest.attachments {
            attachments.insert(name.clone(), read(&format!("attachment-{name}"))?);
        }

        let expected_root = parse_hash(dir, &manifest.state_root)?;
        let staking = manifest.staking.restore(dir)?;
        let mut state = State {
            height: manifest.height,
            block_hash: parse_hash(dir, &manifest.block_hash)?,
            timestamp_ms: manifest.timestamp_ms,
            tables,
            contracts,
            system: SystemTables::restore(accounts.clone(), staking.clone(), manifest.height, history)?,
            accounts: crate::accounts::Accounts::new(accounts),
            staking,
            root: Hash::ZERO,
        };
        state.root = state.compute_root()?;
        if state.root != expected_root {
            return Err(corrupt(
                dir,
                format!(
                    "its state computes to root {}, the manifest says {expected_root}",
                    state.root
                ),
            ));
        }
        Ok((state, attachments))
    }
}

/// The height a checkpoint's manifest names, read without loading the state.
pub fn checkpoint_height(dir: &Path) -> Result<u64> {
    Ok(read_manifest(dir)?.height)
}

fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST);
    let length = std::fs::metadata(&path).map_err(|e| io(path.display(), e))?.len();
    if length > MANIFEST_BYTES_MAX {
        return Err(corrupt(dir, format!("its manifest is {length} bytes")));
    }
    let bytes = std::fs::read(&path).map_err(|e| io(path.display(), e))?;
    if bytes.len() < 20 || &bytes[..8] != MAGIC {
        return Err(corrupt(dir, "MANIFEST is not a ChainQL checkpoint manifest"));
    }
    let word = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let version = word(8);
    if version != VERSION {
        return Err(corrupt(
            dir,
            format!("its format version is {version}; this build reads version {VERSION}"),
        ));
    }
    let json = &bytes[20..];
    if word(16) as usize != json.len() || word(12) != crc32c::crc32c(json) {
        return Err(corrupt(dir, "MANIFEST fails its checksum"));
    }
    serde_json::from_slice(json).map_err(|e| corrupt(dir, format!("MANIFEST: {e}")))
}

fn read_parquet(dir: &Path, name: &str, bytes: Vec<u8>) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
        .map_err(|e| corrupt(dir, format!("{name}: {e}")))?;
    let schema = Arc::clone(builder.schema());
    let reader = builder
        .with_batch_size(64 * 1024)
        .build()
        .map_err(|e| corrupt(dir, format!("{name}: {e}")))?;
    let batches = reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| corrupt(dir, format!("{name}: {e}")))?;
    Ok((schema, batches))
}

fn column<'a, T: Array + 'static>(dir: &Path, batch: &'a RecordBatch, i: usize) -> Result<&'a T> {
    batch.column(i).as_any().downcast_ref::<T>().ok_or_else(|| {
        corrupt(
            dir,
            format!("column {i} has type {}", batch.column(i).data_type()),
        )
    })
}

fn accounts_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("address", DataType::Binary, false),
        Field::new("balance", DataType::UInt64, false),
        Field::new("nonce", DataType::UInt64, false),
    ]))
}
