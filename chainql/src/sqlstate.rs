//! SQLSTATE codes: the five-character error classes PostgreSQL reports, so that clients speaking
//! its wire protocol (psql, drivers) can tell a syntax error from a missing table or a duplicate
//! key. Each crate's error type maps its own variants to these (`sqlstate()`); failed receipts
//! carry the code.

pub const SUCCESSFUL_COMPLETION: &str = "00000";
pub const PROTOCOL_VIOLATION: &str = "08P01";
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
pub const CARDINALITY_VIOLATION: &str = "21000";
pub const DATA_EXCEPTION: &str = "22000";
pub const STRING_DATA_RIGHT_TRUNCATION: &str = "22001";
pub const NUMERIC_VALUE_OUT_OF_RANGE: &str = "22003";
pub const DIVISION_BY_ZERO: &str = "22012";
pub const INVALID_PARAMETER_VALUE: &str = "22023";
pub const INVALID_TEXT_REPRESENTATION: &str = "22P02";
pub const NOT_NULL_VIOLATION: &str = "23502";
pub const UNIQUE_VIOLATION: &str = "23505";
pub const CHECK_VIOLATION: &str = "23514";
pub const ACTIVE_SQL_TRANSACTION: &str = "25001";
pub const NO_ACTIVE_SQL_TRANSACTION: &str = "25P01";
pub const IN_FAILED_SQL_TRANSACTION: &str = "25P02";
pub const READ_ONLY_SQL_TRANSACTION: &str = "25006";
pub const INVALID_AUTHORIZATION_SPECIFICATION: &str = "28000";
pub const SERIALIZATION_FAILURE: &str = "40001";
pub const SYNTAX_ERROR_OR_ACCESS_RULE_VIOLATION: &str = "42000";
pub const SYNTAX_ERROR: &str = "42601";
pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
pub const UNDEFINED_COLUMN: &str = "42703";
pub const UNDEFINED_FUNCTION: &str = "42883";
pub const UNDEFINED_TABLE: &str = "42P01";
pub const UNDEFINED_PARAMETER: &str = "42P02";
pub const UNDEFINED_OBJECT: &str = "42704";
pub const DATATYPE_MISMATCH: &str = "42804";
pub const AMBIGUOUS_COLUMN: &str = "42702";
pub const DUPLICATE_FUNCTION: &str = "42723";
pub const DUPLICATE_TABLE: &str = "42P07";
pub const INVALID_FUNCTION_DEFINITION: &str = "42P13";
pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
pub const CONFIGURATION_LIMIT_EXCEEDED: &str = "53400";
pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
pub const OPERATOR_INTERVENTION: &str = "57000";
pub const QUERY_CANCELED: &str = "57014";
pub const ADMIN_SHUTDOWN: &str = "57P01";
pub const RAISE_EXCEPTION: &str = "P0001";
pub const INTERNAL_ERROR: &str = "XX000";

impl crate::Error {
    /// The SQLSTATE a PostgreSQL client sees for this error.
    pub fn sqlstate(&self) -> &'static str {
        use crate::Error;
        match self {
            Error::TransactionTooLarge { .. }
            | Error::StatementTooLarge { .. }
            | Error::TooManyStatements { .. } => PROGRAM_LIMIT_EXCEEDED,
            Error::InvalidGasLimit { .. } => INVALID_PARAMETER_VALUE,
            Error::Malformed(_) | Error::WrongChain { .. } => PROTOCOL_VIOLATION,
            Error::InvalidPublicKey(_) | Error::BadSignature => INVALID_AUTHORIZATION_SPECIFICATION,
            Error::InvalidAddress(_) => INVALID_TEXT_REPRESENTATION,
            Error::Sql(_) => SYNTAX_ERROR,
            Error::NotATransactionStatement(_) | Error::NonDeterministic(_) => FEATURE_NOT_SUPPORTED,
            Error::InvalidKeyFile { .. } | Error::Io { .. } => INTERNAL_ERROR,
        }
    }
}
