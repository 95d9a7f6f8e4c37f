//! The server's errors, and their translation to gRPC status codes: the one place where
//! ChainQL errors meet a wire protocol's error codes.

/// Everything that can go wrong in the node or its front ends.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Transaction(#[from] chainql::Error),
    #[error("invalid nonce {found}: the sender's next nonce is {expected}")]
    Nonce { found: u64, expected: u64 },
    #[error(
        "insufficient balance for gas: a gas limit of {gas_limit} at price {gas_price} needs {needed}, the sender holds {balance}"
    )]
    InsufficientFunds {
        gas_limit: u64,
        gas_price: u64,
        needed: u128,
        balance: u64,
    },
    #[error(transparent)]
    Log(#[from] chainql_sequencer::Error),
    #[error(transparent)]
    Consensus(#[from] chainql_consensus::Error),
    #[error("consensus write-ahead log: {0}")]
    Wal(#[from] chainql_consensus::tendermint::wal::WalError),
    #[error(transparent)]
    Execution(#[from] chainql_executor::Error),
    #[error("configuration: {0}")]
    Config(String),
    #[error("the node's data is damaged: {0}")]
    Corrupt(String),
    #[error("the node has halted: {0}")]
    Halted(String),
    #[error("block {height} is not committed yet: the chain is at height {tip}")]
    FutureBlock { height: u64, tip: u64 },
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error("the query text is {size} bytes; at most {max} are accepted")]
    QueryTooLarge { size: usize, max: usize },
    #[error("{0}")]
    Client(String),
    /// A committed transaction whose receipt reports failure.
    #[error("{message}")]
    TransactionFailed {
        message: String,
        receipt: Box<chainql::wire::Receipt>,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// A receipt that reports success, or the failure as an error carrying the receipt.
pub fn succeeded(receipt: chainql::wire::Receipt) -> Result<chainql::wire::Receipt> {
    if receipt.status == chainql::wire::ReceiptStatus::Success as i32 {
        return Ok(receipt);
    }
    Err(Error::TransactionFailed {
        message: receipt.error.clone(),
        receipt: Box::new(receipt),
    })
}

impl Error {
    /// The SQLSTATE a PostgreSQL client sees for this error.
    pub fn sqlstate(&self) -> &str {
        use chainql::sqlstate::*;
        match self {
            Error::Transaction(error) => error.sqlstate(),
            Error::Nonce { .. } => SERIALIZATION_FAILURE,
            Error::InsufficientFunds { .. } => CHECK_VIOLATION,
            Error::Execution(error) => error.sqlstate(),
            Error::Log(chainql_sequencer::Error::InvalidPosition(_)) => INVALID_PARAMETER_VALUE,
            Error::Log(chainql_sequencer::Error::Released { .. }) => OBJECT_NOT_IN_PREREQUISITE_STATE,
            Error::Log(_) | Error::Consensus(_) | Error::Wal(_) | Error::Corrupt(_) | Error::Io { .. } => {
                INTERNAL_ERROR
            }
            Error::Halted(_) => OPERATOR_INTERVENTION,
            Error::ShuttingDown => ADMIN_SHUTDOWN,
            Error::Config(_) => CONFIGURATION_LIMIT_EXCEEDED,
            Error::FutureBlock { .. } => INVALID_PARAMETER_VALUE,
            Error::QueryTooLarge { .. } => PROGRAM_LIMIT_EXCEEDED,
            Error::Client(_) => SYNTAX_ERROR_OR_ACCESS_RULE_VIOLATION,
            Error::TransactionFailed { receipt, .. } if !receipt.code.is_empty() => &receipt.code,
            Error::TransactionFailed { .. } => INTERNAL_ERROR,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for tonic::Status {
    fn from(error: Error) -> tonic::Status {
        use tonic::Code;
        let code = match &error {
            Error::Transaction(_) => Code::InvalidArgument,
            Error::Nonce { .. } | Error::InsufficientFunds { .. } => Code::FailedPrecondition,
            Error::Execution(chainql_executor::Error::WriteInQuery(_)) => Code::InvalidArgument,
            Error::Execution(chainql_executor::Error::LimitExceeded(_)) => Code::ResourceExhausted,
            Error::Execution(_) => Code::InvalidArgument,
            Error::Log(
                chainql_sequencer::Error::InvalidPosition(_)
                | chainql_sequencer::Error::NoSuchPartition { .. },
            ) => Code::InvalidArgument,
            Error::Log(chainql_sequencer::Error::Released { .. }) => Code::OutOfRange,
            Error::Log(_) | Error::Halted(_) | Error::ShuttingDown => Code::Unavailable,
            Error::Consensus(_) | Error::Wal(_) | Error::Corrupt(_) | Error::Io { .. } => Code::Internal,
            Error::Config(_) => Code::FailedPrecondition,
            Error::Client(_) => Code::InvalidArgument,
            Error::FutureBlock { .. } => Code::OutOfRange,
            Error::QueryTooLarge { .. } => Code::ResourceExhausted,
            Error::TransactionFailed { .. } => Code::Aborted,
        };
        tonic::Status::new(code, error.to_string())
    }
}
