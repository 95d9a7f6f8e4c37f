//! The ChainQL planner: turns ChainQL statements into what the executor runs.
//!
//! - Write statements (`CREATE TABLE`, `DROP TABLE`, `INSERT`, `UPDATE`, `DELETE`) become a
//!   [`WritePlan`]: table definitions with resolved keys and types, and, for `UPDATE` and `DELETE`,
//!   a row query that DataFusion evaluates to find the rows and their new values.
//! - [`SessionTemplates`] holds the DataFusion sessions for deterministic transaction execution
//!   and for read-only queries.
//!
//! ```
//! use chainql_planner::{WritePlan, plan_write};
//!
//! let statement = chainql::sql::parse_statement("CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT)").unwrap();
//! let WritePlan::CreateTable { definition, .. } = plan_write(&statement).unwrap() else { panic!() };
//! assert_eq!(definition.name, "t");
//! assert_eq!(definition.primary_key, [0]);
//! ```

mod session;
pub mod sqlstate;
mod types;
mod write;

pub use session::{ChainContext, SessionTemplates, register_chain_functions};
pub use types::{ColumnType, column_type, sql_type_name};
pub use write::{
    COLUMNS_MAX, ColumnDefinition, ConflictUpdate, DeletePlan, EXCLUDED_TABLE, InsertPlan, NAME_BYTES_MAX,
    OnConflictPlan, Privileges, RESERVED_PREFIX, ROW_ID_COLUMN, ROW_POSITION_COLUMN, SYSTEM_SCHEMA,
    TableDefinition, USER_SCHEMA, UpdatePlan, WRITE_TARGET_TABLE, WritePlan, is_key_type, normalize_ident,
    plan_write, quote_ident, user_table_name,
};

/// Errors of planning.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not supported: {0}")]
    Unsupported(String),
    #[error("{0}")]
    Invalid(String),
    #[error("relation {0:?} does not exist")]
    UndefinedTable(String),
    #[error("column {column:?} of relation {table:?} does not exist")]
    UndefinedColumn { table: String, column: String },
    #[error("{0}")]
    ReadOnly(String),
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
