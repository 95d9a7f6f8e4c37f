//! An account's session with a node: signs its writes as transactions, waits for their receipts,
//! and runs its queries. The shell, the test runner and the benchmark all work through it.

use chainql::sql::{StatementKind, classify, parse_statement};
use chainql::wire::{Receipt, ReceiptStatus};
use chainql::{Address, Keypair, TransactionBuilder};
use chainql_executor::QueryResult;

use crate::error::{Error, Result};
use crate::grpc::Connection;

/// What running one statement produced.
#[derive(Debug)]
pub enum Outcome {
    /// A query's answer.
    Rows(QueryResult),
    /// A committed transaction's receipt.
    Committed(Receipt),
    /// `BEGIN`: writes are collected until `COMMIT`.
    Began,
    /// `ROLLBACK`: the collected writes were dropped.
    RolledBack,
}

/// One account talking to one node.
#[derive(Debug)]
pub struct Session {
    connection: Connection,
    builder: TransactionBuilder,
    /// Writes collected between `BEGIN` and `COMMIT`.
    open_transaction: Option<Vec<String>>,
}

impl Session {
    pub async fn new(connection: Connection, key: Keypair) -> Result<Session> {
        let chain_id = connection.chain_id().await?;
        Ok(Session {
            connection,
            builder: TransactionBuilder::new(chain_id, key),
            open_transaction: None,
        })
    }

    pub fn address(&self) -> Address {
        self.builder.key.address()
    }

    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    pub fn in_transaction(&self) -> bool {
        self.open_transaction.is_some()
    }

    /// Signs `statements` as one transaction, submits it and waits for its receipt. A receipt
    /// that reports failure is returned as an error carrying the receipt.
    pub async fn execute(&self, statements: Vec<String>) -> Result<Receipt> {
        let nonce = self.connection.next_nonce(&self.address()).await?;
        let signed = self.builder.build(nonce, statements);
        let receipt = self.connection.submit_and_wait(signed).await?;
        if receipt.status != ReceiptStatus::Success as i32 {
            return Err(Error::TransactionFailed {
                message: receipt.error.clone(),
                receipt: Box::new(receipt),
            });
        }
        Ok(receipt)
    }

    /// Runs a query.
    pub async fn query(&self, sql: &str) -> Result<QueryResult> {
        self.connection.query(sql).await
    }

    /// Runs one statement: a query is answered, a write is committed as its own transaction
    /// (or collected, between `BEGIN` and `COMMIT`).
    pub async fn run(&mut self, sql: &str) -> Result<Outcome> {
        // Only the kind is needed here; the node parses and checks the statement itself.
        let kind = parse_statement(sql)
            .map(|s| classify(&s))
            .unwrap_or(StatementKind::Other);
        match kind {
            StatementKind::Begin => {
                if self.open_transaction.is_some() {
                    return Err(Error::Client("there is already a transaction in progress".into()));
                }
                self.open_transaction = Some(Vec::new());
                Ok(Outcome::Began)
            }
            StatementKind::Commit => match self.open_transaction.take() {
                Some(statements) if statements.is_empty() => Ok(Outcome::RolledBack),
                Some(statements) => Ok(Outcome::Committed(self.execute(statements).await?)),
                None => Err(Error::Client("there is no transaction in progress".into())),
            },
            StatementKind::Rollback => {
                self.open_transaction = None;
                Ok(Outcome::RolledBack)
            }
            kind if kind.is_write() => match &mut self.open_transaction {
                Some(statements) => {
                    // Check now, so a typo fails at once rather than at COMMIT.
                    chainql::sql::parse_transaction_statement(sql)?;
                    statements.push(sql.to_string());
                    Ok(Outcome::Began)
                }
                None => Ok(Outcome::Committed(self.execute(vec![sql.to_string()]).await?)),
            },
            _ => Ok(Outcome::Rows(self.query(sql).await?)),
        }
    }
}
