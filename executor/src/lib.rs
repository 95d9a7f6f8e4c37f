//! The ChainQL executor: versioned Arrow state, deterministic block execution, the state root,
//! and queries over any committed version.
//!
//! A [`State`] is one version of everything on chain: user tables (immutable Arrow chunks with a
//! primary-key index, see [`Table`]), accounts, and the `chain.*` system tables. The
//! [`Executor`] applies a block's transactions to a state, in block order, each one atomically,
//! and returns the next state and the receipts. Queries run on whichever version they are given,
//! so they never see a half-applied block.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> chainql_executor::Result<()> {
//! use chainql::{Hash, Keypair};
//! use chainql_executor::{BlockContext, ExecutableTransaction, Executor, QueryLimits, State};
//!
//! let alice = Keypair::from_seed([1; 32]).address();
//! let genesis = State::genesis(Hash::ZERO, 0, &[(alice, 100)])?;
//! let executor = Executor::new(1, QueryLimits::default())?;
//! let block = BlockContext {
//!     height: 1, hash: Hash::ZERO, parent_hash: Hash::ZERO, timestamp_ms: 1,
//!     transactions_root: Hash::ZERO, state_root: genesis.root(), proposer: alice,
//!     offences: Vec::new(),
//! };
//! let transaction = ExecutableTransaction {
//!     hash: Hash::ZERO, sender: alice, sender_key: None, nonce: 0, gas_limit: 1_000_000,
//!     statements: vec![
//!         "CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT)".into(),
//!         "INSERT INTO t VALUES (1, 'one'), (2, 'two')".into(),
//!     ],
//! };
//! let (state, receipts) = executor.execute_block(&genesis, &block, &[transaction]).await?;
//! assert!(receipts[0].error.is_empty());
//! let answer = executor.query(&state, "SELECT count(*) FROM t").await?;
//! assert_eq!(answer.row_count(), 1);
//! # Ok(()) }
//! ```

mod accounts;
mod checkpoint;
mod contract;
mod describe;
mod encode;
mod execute;
mod explain;
mod gas;
mod index;
mod keys;
mod memory;
mod parallel;
mod pg_catalog;
mod provider;
mod r2;
mod staking;
mod state;
mod system;
mod table;

/// Seeded xorshift numbers for the unit tests' random cases: `next(below)` is in `0..below`,
/// the same sequence on every run.
#[cfg(test)]
fn test_numbers(mut state: u64) -> impl FnMut(u64) -> u64 {
    move |below| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % below
    }
}

pub use checkpoint::checkpoint_height;
pub use contract::{CALL_DEPTH_MAX, Contract, EmittedEvent};
pub use describe::{Description, PARAMETERS_MAX, parameter_count};
pub use execute::{
    BlockContext, ExecutableTransaction, Executor, GAS_PER_DDL, GAS_PER_ROW_WRITTEN, GAS_PER_STATEMENT,
    Offence, QueryLimits, QueryResult, TABLES_MAX, VIEW_GAS_LIMIT,
};
pub use gas::{FREE_ROWS_PER_PLAN, GAS_PER_ROW_PROCESSED, GAS_PER_ROW_READ, GasMeter};
pub use memory::configure_allocator;
pub use staking::{SLASH_PERCENT, Stake, Staking, VALIDATORS_MAX, ValidatorPower, Validators};
pub use state::{Account, State};
pub use system::SystemTables;
pub use table::{CHUNK_ROWS, Table};

/// Errors of execution. Every variant but `Internal` is a transaction's own fault and ends up in
/// its receipt.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("relation \"{0}\" does not exist")]
    UndefinedTable(String),
    #[error("column \"{column}\" of relation \"{table}\" does not exist")]
    UndefinedColumn { table: String, column: String },
    #[error("relation \"{0}\" already exists")]
    DuplicateTable(String),
    #[error("duplicate key value violates unique constraint \"{constraint}\": key {key} already exists")]
    UniqueViolation { constraint: String, key: String },
    #[error("null value in column \"{column}\" of relation \"{table}\" violates not-null constraint")]
    NotNullViolation { table: String, column: String },
    #[error("value too long for type character varying({max}) in column \"{column}\"")]
    ValueTooLong { column: String, max: u32 },
    #[error("invalid value for column \"{column}\" of type {column_type}: {reason}")]
    InvalidValue {
        column: String,
        column_type: String,
        reason: String,
    },
    #[error("permission denied for table {table}: {account} may not {action} (the owner can GRANT it)")]
    PermissionDenied {
        table: String,
        account: chainql::Address,
        action: String,
    },
    #[error("insufficient balance: {account} holds {balance}, needs {needed}")]
    InsufficientBalance {
        account: chainql::Address,
        balance: u64,
        needed: u128,
    },
    #[error("contract \"{0}\" does not exist")]
    UndefinedContract(String),
    #[error("contract \"{0}\" already exists")]
    DuplicateContract(String),
    #[error("permission denied for contract {contract}: {account} may not call it (it is OWNER only)")]
    CallDenied {
        contract: String,
        account: chainql::Address,
    },
    #[error("permission denied for contract {contract}: only its owner may drop it")]
    DropDenied { contract: String },
    #[error("{contract}: REQUIRE failed: {message}")]
    RequireFailed { contract: String, message: String },
    #[error("contract {contract} cannot be deployed: {reason}")]
    DeployFailed { contract: String, reason: String },
    #[error("UPDATE would change the same row more than once: its FROM clause matches a row twice")]
    RowChangedTwice,
    #[error("out of gas: the transaction's gas limit of {limit} is exhausted")]
    OutOfGas { limit: u64 },
    #[error("{0}")]
    Invalid(String),
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    #[error("{0} changes state: send it as a transaction, not as a query")]
    WriteInQuery(String),
    #[error(transparent)]
    Language(#[from] chainql::Error),
    #[error(transparent)]
    Plan(#[from] chainql_planner::Error),
    #[error(transparent)]
    DataFusion(datafusion::error::DataFusionError),
    #[error(transparent)]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The SQLSTATE a PostgreSQL client sees for this error; failed receipts carry it.
    pub fn sqlstate(&self) -> &'static str {
        use chainql_planner::sqlstate::*;
        match self {
            Error::UndefinedTable(_) => UNDEFINED_TABLE,
            Error::UndefinedColumn { .. } => UNDEFINED_COLUMN,
            Error::DuplicateTable(_) => DUPLICATE_TABLE,
            Error::UniqueViolation { .. } => UNIQUE_VIOLATION,
            Error::NotNullViolation { .. } => NOT_NULL_VIOLATION,
            Error::ValueTooLong { .. } => STRING_DATA_RIGHT_TRUNCATION,
            Error::InvalidValue { .. } => INVALID_TEXT_REPRESENTATION,
            Error::PermissionDenied { .. } | Error::CallDenied { .. } | Error::DropDenied { .. } => {
                INSUFFICIENT_PRIVILEGE
            }
            Error::InsufficientBalance { .. } => CHECK_VIOLATION,
            Error::UndefinedContract(_) => UNDEFINED_FUNCTION,
            Error::DuplicateContract(_) => DUPLICATE_FUNCTION,
            Error::RequireFailed { .. } => RAISE_EXCEPTION,
            Error::DeployFailed { .. } => INVALID_FUNCTION_DEFINITION,
            Error::RowChangedTwice => CARDINALITY_VIOLATION,
            Error::OutOfGas { .. } | Error::LimitExceeded(_) => PROGRAM_LIMIT_EXCEEDED,
            Error::Invalid(_) => SYNTAX_ERROR_OR_ACCESS_RULE_VIOLATION,
            Error::WriteInQuery(_) => READ_ONLY_SQL_TRANSACTION,
            Error::Language(error) => error.sqlstate(),
            Error::Plan(error) => error.sqlstate(),
            Error::DataFusion(error) => of_datafusion(error),
            Error::Arrow(error) => of_arrow(error),
            Error::Internal(_) => INTERNAL_ERROR,
        }
    }
}

impl From<datafusion::error::DataFusionError> for Error {
    /// Unwraps errors of ours that travelled through DataFusion (running out of gas inside a
    /// plan), so they keep their meaning.
    fn from(error: datafusion::error::DataFusionError) -> Self {
        if let datafusion::error::DataFusionError::External(inner) = error.find_root()
            && let Some(Error::OutOfGas { limit }) = inner.downcast_ref::<Error>()
        {
            return Error::OutOfGas { limit: *limit };
        }
        Error::DataFusion(error)
    }
}

impl From<Error> for datafusion::error::DataFusionError {
    fn from(error: Error) -> Self {
        match error {
            Error::DataFusion(inner) => inner,
            other => datafusion::error::DataFusionError::External(Box::new(other)),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
