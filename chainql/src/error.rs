use std::path::Path;

/// Everything that can go wrong in the language layer. Each variant is an admission refusal a
/// client can act on, so the messages say what was wrong and what the bound was.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("transaction is {size} bytes; the limit is {max}")]
    TransactionTooLarge { size: usize, max: usize },
    #[error("statement {index} is {size} bytes; the limit is {max}")]
    StatementTooLarge { index: usize, size: usize, max: usize },
    #[error("transaction has {count} statements; the limit is {max}")]
    TooManyStatements { count: usize, max: usize },
    #[error("gas limit {gas_limit} is out of range: it must be between 1 and {max}")]
    InvalidGasLimit { gas_limit: u64, max: u64 },
    #[error("malformed {0}")]
    Malformed(String),
    #[error("wrong chain id: this chain is {expected:?}, the transaction is for {found:?}")]
    WrongChain { expected: String, found: String },
    #[error("invalid public key: {0}")]
    InvalidPublicKey(String),
    #[error("invalid signature")]
    BadSignature,
    #[error("invalid address {0:?}: expected 0x followed by 40 hex digits")]
    InvalidAddress(String),
    #[error("SQL error: {0}")]
    Sql(String),
    #[error(
        "{0} is not a statement a transaction can carry (CREATE TABLE, DROP TABLE, INSERT, UPDATE, DELETE, GRANT, REVOKE, CREATE CONTRACT, DROP CONTRACT, CALL); queries run outside transactions"
    )]
    NotATransactionStatement(String),
    #[error("function {0}() is not deterministic and cannot run inside a transaction")]
    NonDeterministic(String),
    #[error("invalid key file {path}: {reason}")]
    InvalidKeyFile { path: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
