//! An account's session with a node: signs its writes as transactions, waits for their receipts,
//! and runs its queries. The shell, the test runner and the benchmark all work through it.

use std::sync::Arc;

use chainql::contract::{ChainStatement, call_target, parse_chain_statement};
use chainql::sql::StatementKind;
use chainql::wire::{Receipt, SignedTransaction};
use chainql::{Address, Keypair, TransactionBuilder};
use chainql_executor::QueryResult;
use datafusion::arrow::array::AsArray;
use datafusion::sql::sqlparser::ast::{ObjectName, Statement};

use crate::client::Client;
use crate::error::{Error, Result};
use crate::node::{Node, NodeStatus};

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
    /// Shared by every session that signs with the same key on an embedded node: held from
    /// reading the next nonce until the transaction is admitted, so two sessions of one
    /// account never sign the same nonce.
    signer_lock: Option<Arc<tokio::sync::Mutex<()>>>,
}

impl Session {
    pub async fn new(connection: Connection, key: Keypair) -> Result<Session> {
        let chain_id = connection.chain_id().await?;
        Ok(Session {
            connection,
            builder: TransactionBuilder::new(chain_id, key),
            open_transaction: None,
            signer_lock: None,
        })
    }

    /// Makes this session take `lock` while it signs and submits; give every session of one key
    /// the same lock.
    pub fn with_signer_lock(mut self, lock: Arc<tokio::sync::Mutex<()>>) -> Session {
        self.signer_lock = Some(lock);
        self
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
        let receipt = match (&self.signer_lock, &self.connection) {
            (Some(lock), Connection::Embedded(node)) => {
                let pending = {
                    let _signing = lock.lock().await;
                    let nonce = node.next_nonce(&self.address()).await;
                    node.submit_pending(self.builder.build(nonce, statements)).await?
                };
                pending.await?
            }
            _ => {
                let nonce = self.connection.next_nonce(&self.address()).await?;
                let signed = self.builder.build(nonce, statements);
                self.connection.submit_and_wait(signed).await?
            }
        };
        crate::error::succeeded(receipt)
    }

    /// Runs a query.
    pub async fn query(&self, sql: &str) -> Result<QueryResult> {
        self.connection.query(sql).await
    }

    /// True when `name` is a deployed `VIEW` contract.
    async fn is_view(&self, name: &ObjectName) -> Result<bool> {
        let Ok(name) = call_target(name) else {
            return Ok(false);
        };
        let answer = self
            .query(&format!(
                "SELECT view FROM chain.contracts WHERE contract_name = '{}'",
                name.replace('\'', "''")
            ))
            .await?;
        Ok(answer
            .batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .and_then(|b| b.column(0).as_boolean_opt().map(|c| c.value(0)))
            .unwrap_or(false))
    }

    /// Runs one statement: a query is answered, a write is committed as its own transaction
    /// (or collected, between `BEGIN` and `COMMIT`).
    pub async fn run(&mut self, sql: &str) -> Result<Outcome> {
        // Only the kind is needed here; the node parses and checks the statement itself.
        let statement = match parse_chain_statement(sql) {
            Ok(statement) => Some(statement),
            // ChainQL's own statements (a contract definition, STAKE, UNSTAKE) that do not parse
            // say why here; anything else the node parses again and explains.
            Err(error) if is_chainql_statement(sql) => return Err(error.into()),
            Err(_) => None,
        };
        let mut kind = statement
            .as_ref()
            .map(ChainStatement::kind)
            .unwrap_or(StatementKind::Other);
        if let Some(ChainStatement::Sql(call)) = &statement
            && let Statement::Call(function) = call.as_ref()
            && self.open_transaction.is_none()
            && self.is_view(&function.name).await?
        {
            // A VIEW contract only reads: it is answered as a query, with no transaction.
            kind = StatementKind::Query;
        }
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

/// True when `sql` begins `CREATE CONTRACT` or `DROP CONTRACT`.
fn is_chainql_statement(sql: &str) -> bool {
    let mut words = sql.split_whitespace().map(str::to_ascii_lowercase);
    matches!(
        (words.next().as_deref(), words.next().as_deref()),
        (Some("create" | "drop"), Some("contract")) | (Some("stake" | "unstake"), _)
    )
}

/// Either an embedded node or a remote one, with one interface: what the shell, the test runner
/// and the benchmark talk to.
#[derive(Debug, Clone)]
pub enum Connection {
    Embedded(Node),
    Remote(Arc<Client>),
}

impl Connection {
    pub async fn chain_id(&self) -> Result<String> {
        match self {
            Connection::Embedded(node) => Ok(node.chain_id().to_string()),
            Connection::Remote(remote) => Ok(remote.status().await?.chain_id),
        }
    }

    pub async fn status(&self) -> Result<NodeStatus> {
        match self {
            Connection::Embedded(node) => Ok(node.status()),
            Connection::Remote(remote) => remote.status().await,
        }
    }

    pub async fn next_nonce(&self, address: &Address) -> Result<u64> {
        match self {
            Connection::Embedded(node) => Ok(node.next_nonce(address).await),
            Connection::Remote(remote) => remote.next_nonce(address).await,
        }
    }

    pub async fn submit_and_wait(&self, signed: SignedTransaction) -> Result<Receipt> {
        match self {
            Connection::Embedded(node) => node.submit_and_wait(signed).await,
            Connection::Remote(remote) => remote
                .submit(signed, true)
                .await?
                .1
                .ok_or_else(|| Error::Client("the node returned no receipt".into())),
        }
    }

    pub async fn query(&self, sql: &str) -> Result<QueryResult> {
        match self {
            Connection::Embedded(node) => Ok(node.query(sql).await?.0),
            Connection::Remote(remote) => remote.query(sql).await,
        }
    }
}
