//! The sqllogictest runner for ChainQL: every `.slt` file in `suites/` runs against a fresh
//! embedded node, through the same [`Session`] the shell uses, so a write is signed, logged,
//! committed in a block and executed before the next record runs.
//!
//! Conventions (DataFusion's): NULL prints as `NULL`, the empty string as `(empty)`, booleans as
//! `true`/`false`. Column types: `I` integer, `R` float or decimal, `T` text, `B` boolean,
//! `D` date or time, `P` timestamp, `?` anything else. A write's result is its row count, so
//! `statement count N` checks rows affected.
//!
//! A record may start with directive comments that change how its transaction is built, to test
//! admission refusals that plain SQL cannot produce:
//!
//! ```text
//! statement error wrong chain id
//! -- chainql: chain_id=another-chain
//! INSERT INTO t VALUES (1)
//! ```
//!
//! Directives: `chain_id=ID`, `nonce=+N` / `nonce=-N` (offset from the expected nonce),
//! `bad_signature`, `gas_limit=N`, `pad_statement=BYTES` (append a comment of that size),
//! `statements=N` (repeat the statement N times in one transaction), and `as_query` (send the
//! record as a query even if it is a write). A record with
//! `connection NAME` runs as another account: each new connection gets the next test key.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use chainql::wire::ReceiptStatus;
use chainql::{Keypair, TransactionBuilder};
use chainql_executor::QueryResult;
use chainql_server::format::cell_text;
use chainql_server::{Connection, Error as ServerError, Outcome, Session};
use datafusion::arrow::datatypes::DataType;
use sqllogictest::{AsyncDB, DBOutput};

/// Column types of query results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnType {
    Boolean,
    Integer,
    Float,
    Text,
    DateTime,
    Timestamp,
    Other,
}

impl sqllogictest::ColumnType for ColumnType {
    fn from_char(value: char) -> Option<Self> {
        Some(match value {
            'B' => ColumnType::Boolean,
            'I' => ColumnType::Integer,
            'R' => ColumnType::Float,
            'T' => ColumnType::Text,
            'D' => ColumnType::DateTime,
            'P' => ColumnType::Timestamp,
            '?' => ColumnType::Other,
            _ => return None,
        })
    }

    fn to_char(&self) -> char {
        match self {
            ColumnType::Boolean => 'B',
            ColumnType::Integer => 'I',
            ColumnType::Float => 'R',
            ColumnType::Text => 'T',
            ColumnType::DateTime => 'D',
            ColumnType::Timestamp => 'P',
            ColumnType::Other => '?',
        }
    }
}

fn column_type(data_type: &DataType) -> ColumnType {
    match data_type {
        DataType::Boolean => ColumnType::Boolean,
        t if t.is_integer() => ColumnType::Integer,
        t if t.is_floating() => ColumnType::Float,
        DataType::Decimal128(_, _) | DataType::Decimal256(_, _) => ColumnType::Float,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => ColumnType::Text,
        DataType::Date32 | DataType::Date64 | DataType::Time32(_) | DataType::Time64(_) => {
            ColumnType::DateTime
        }
        DataType::Timestamp(_, _) => ColumnType::Timestamp,
        _ => ColumnType::Other,
    }
}

/// An error a record can expect with `statement error <regex>`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SltError(String);

impl From<ServerError> for SltError {
    fn from(error: ServerError) -> Self {
        SltError(error.to_string())
    }
}

/// The seed of the `n`th test key (0: the default connection).
pub fn test_key(n: u8) -> Keypair {
    Keypair::from_seed([0x51 ^ n; 32])
}

/// One connection of a test file: an account's session with the file's node.
#[derive(Debug)]
pub struct LedgerDb {
    session: Session,
    builder: TransactionBuilder,
}

impl LedgerDb {
    pub async fn new(connection: Connection, key: Keypair) -> Result<LedgerDb, SltError> {
        let chain_id = connection.chain_id().await?;
        Ok(LedgerDb {
            session: Session::new(connection, key.clone()).await?,
            builder: TransactionBuilder::new(chain_id, key),
        })
    }

    /// Hands out test keys to connections in the order they are made.
    pub fn key_dealer() -> Arc<AtomicU8> {
        Arc::new(AtomicU8::new(0))
    }

    pub fn next_key(dealer: &AtomicU8) -> Keypair {
        test_key(dealer.fetch_add(1, Ordering::Relaxed))
    }

    /// Builds and submits a transaction with the record's directives applied.
    async fn run_tampered(&self, directives: &[(&str, &str)], sql: &str) -> Result<u64, SltError> {
        let connection = self.session.connection();
        let mut builder = self.builder.clone();
        let mut nonce = connection.next_nonce(&builder.key.address()).await? as i64;
        let mut statement = sql.to_string();
        let mut count = 1;
        let mut bad_signature = false;
        let invalid = |d: &str| SltError(format!("invalid chainql directive {d:?}"));
        for (name, value) in directives {
            match *name {
                "chain_id" => builder.chain_id = value.to_string(),
                "nonce" => nonce += value.parse::<i64>().map_err(|_| invalid(name))?,
                "bad_signature" => bad_signature = true,
                "gas_limit" => builder.gas_limit = value.parse().map_err(|_| invalid(name))?,
                "pad_statement" => {
                    let bytes: usize = value.parse().map_err(|_| invalid(name))?;
                    statement = format!("{sql} /*{}*/", "x".repeat(bytes));
                }
                "statements" => count = value.parse().map_err(|_| invalid(name))?,
                _ => return Err(invalid(name)),
            }
        }
        let mut signed = builder.build(nonce.max(0) as u64, vec![statement; count]);
        if bad_signature {
            signed.signature[0] ^= 1;
        }
        let receipt = connection.submit_and_wait(signed).await?;
        if receipt.status != ReceiptStatus::Success as i32 {
            return Err(SltError(receipt.error));
        }
        Ok(receipt.statements.iter().map(|s| s.rows).sum())
    }
}

/// A cell in sqllogictest's text conventions: NULL as `NULL`, the empty string as `(empty)`.
fn slt_cell(text: Option<String>) -> String {
    match text {
        None => "NULL".to_string(),
        Some(text) if text.is_empty() => "(empty)".to_string(),
        Some(text) => text,
    }
}

/// A query's answer in sqllogictest's text conventions.
fn rows(result: QueryResult) -> DBOutput<ColumnType> {
    let types = result
        .schema
        .fields()
        .iter()
        .map(|f| column_type(f.data_type()))
        .collect();
    let mut rows = Vec::with_capacity(result.row_count());
    for batch in &result.batches {
        for row in 0..batch.num_rows() {
            rows.push(
                batch
                    .columns()
                    .iter()
                    .map(|c| slt_cell(cell_text(c, row)))
                    .collect(),
            );
        }
    }
    DBOutput::Rows { types, rows }
}

/// Splits leading `-- chainql: name[=value]` lines off a record.
fn directives(sql: &str) -> (Vec<(&str, &str)>, &str) {
    let mut found = Vec::new();
    let mut rest = sql;
    loop {
        let trimmed = rest.trim_start();
        let Some(line_end) = trimmed.find('\n') else { break };
        let line = &trimmed[..line_end];
        let Some(directive) = line.trim().strip_prefix("-- chainql:") else {
            break;
        };
        for item in directive.split_whitespace() {
            found.push(item.split_once('=').unwrap_or((item, "")));
        }
        rest = &trimmed[line_end + 1..];
    }
    (found, rest)
}

#[async_trait::async_trait]
impl AsyncDB for LedgerDb {
    type Error = SltError;
    type ColumnType = ColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<ColumnType>, SltError> {
        let (directives, sql) = directives(sql);
        if directives.iter().any(|(name, _)| *name == "as_query") {
            return Ok(rows(self.session.query(sql.trim()).await?));
        }
        if !directives.is_empty() {
            return Ok(DBOutput::StatementComplete(
                self.run_tampered(&directives, sql.trim()).await?,
            ));
        }
        // A record holding several statements is one transaction: that is how suites test
        // multi-statement atomicity.
        let split = chainql::sql::split_statements(sql);
        let mut statements: Vec<String> = split.statements.iter().map(|s| s.to_string()).collect();
        if split.has_unfinished_statement() {
            statements.push(split.remainder.trim().to_string());
        }
        if statements.len() > 1 {
            let receipt = self.session.execute(statements).await?;
            return Ok(DBOutput::StatementComplete(
                receipt.statements.iter().map(|s| s.rows).sum(),
            ));
        }
        let statement = statements.pop().unwrap_or_default();
        match self.session.run(&statement).await? {
            Outcome::Rows(result) => Ok(rows(result)),
            Outcome::Committed(receipt) if !receipt.result.is_empty() => Ok(rows(
                chainql_executor::QueryResult::from_ipc(&receipt.result)
                    .map_err(|e| SltError(format!("a CALL's result does not decode: {e}")))?,
            )),
            Outcome::Committed(receipt) => Ok(DBOutput::StatementComplete(
                receipt.statements.iter().map(|s| s.rows).sum(),
            )),
            Outcome::Began | Outcome::RolledBack => Ok(DBOutput::StatementComplete(0)),
        }
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "chainql"
    }

    async fn sleep(duration: std::time::Duration) {
        tokio::time::sleep(duration).await;
    }
}

/// One connection of a test file over the PostgreSQL wire protocol: the same records, sent by
/// a real driver to the node's PostgreSQL front end, as the account of the connection's test key.
/// Records with directives craft transactions no PostgreSQL client can send (a wrong chain id, a
/// bad signature), so they go through the embedded session of the same key.
#[derive(Debug)]
pub struct WireDb {
    client: tokio_postgres::Client,
    embedded: LedgerDb,
}

impl WireDb {
    /// Connects as the user named `slt{n}`, writing test key `n` to `keystore` first.
    pub async fn connect(
        port: u16,
        keystore: &std::path::Path,
        connection: Connection,
        n: u8,
    ) -> Result<WireDb, SltError> {
        let key = test_key(n);
        let user = format!("slt{n}");
        let path = keystore.join(format!("{user}.key"));
        if !path.exists() {
            key.write_file(&path).map_err(|e| SltError(e.to_string()))?;
        }
        let (client, driver) = tokio_postgres::connect(
            &format!("host=127.0.0.1 port={port} user={user} dbname=chainql"),
            tokio_postgres::NoTls,
        )
        .await
        .map_err(|e| SltError(format!("connecting over the wire: {e}")))?;
        tokio::spawn(driver);
        Ok(WireDb {
            client,
            embedded: LedgerDb::new(connection, key).await?,
        })
    }
}

/// Column types over the wire: as strict as embedded, except that an expected `?` (a type with no
/// sqllogictest letter, such as a list) matches whatever PostgreSQL type it was sent as (text).
#[allow(clippy::ptr_arg)] // the signature sqllogictest asks for
pub fn wire_column_validator(actual: &Vec<ColumnType>, expected: &Vec<ColumnType>) -> bool {
    actual.len() == expected.len()
        && actual
            .iter()
            .zip(expected)
            .all(|(actual, expected)| *expected == ColumnType::Other || actual == expected)
}

/// The message of a driver error: the server's own text, as the embedded runner reports it.
fn wire_error(error: tokio_postgres::Error) -> SltError {
    match error.as_db_error() {
        Some(db) => SltError(db.message().to_string()),
        None => SltError(error.to_string()),
    }
}

/// The sqllogictest column type of a PostgreSQL type.
fn wire_column_type(pg: &tokio_postgres::types::Type) -> ColumnType {
    use tokio_postgres::types::Type;
    match *pg {
        Type::BOOL => ColumnType::Boolean,
        Type::INT2 | Type::INT4 | Type::INT8 => ColumnType::Integer,
        Type::FLOAT4 | Type::FLOAT8 | Type::NUMERIC => ColumnType::Float,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => ColumnType::Text,
        Type::DATE | Type::TIME => ColumnType::DateTime,
        Type::TIMESTAMP | Type::TIMESTAMPTZ => ColumnType::Timestamp,
        _ => ColumnType::Other,
    }
}

/// A value in PostgreSQL's text format, written as the embedded runner writes it (Arrow's
/// display): booleans as `true`/`false`, floats as Arrow renders them.
fn wire_cell(pg: &tokio_postgres::types::Type, text: Option<&str>) -> String {
    use datafusion::arrow::array::{ArrayRef, Float64Array};
    use tokio_postgres::types::Type;
    let Some(text) = text else {
        return slt_cell(None);
    };
    let normalized = match *pg {
        Type::BOOL => match text {
            "t" => "true".to_string(),
            "f" => "false".to_string(),
            other => other.to_string(),
        },
        // PostgreSQL writes bytes as `\x` and hex digits, Arrow as the hex digits.
        Type::BYTEA => text.strip_prefix("\\x").unwrap_or(text).to_string(),
        Type::FLOAT4 | Type::FLOAT8 => match text.parse::<f64>() {
            Ok(value) => {
                let column: ArrayRef = std::sync::Arc::new(Float64Array::from(vec![value]));
                cell_text(&column, 0).unwrap_or_else(|| text.to_string())
            }
            Err(_) => text.to_string(),
        },
        _ => text.to_string(),
    };
    slt_cell(Some(normalized))
}

#[async_trait::async_trait]
impl AsyncDB for WireDb {
    type Error = SltError;
    type ColumnType = ColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<ColumnType>, SltError> {
        let (found, _) = directives(sql);
        if !found.is_empty() {
            return self.embedded.run(sql).await;
        }
        use tokio_postgres::SimpleQueryMessage;
        let sql = sql.trim();
        // Describe first (the simple protocol's rows carry no types), then run as psql would.
        let split = chainql::sql::split_statements(sql);
        let single = split.statements.len() + usize::from(split.has_unfinished_statement()) == 1;
        let types = if single {
            match self.client.prepare(sql).await {
                Ok(statement) => Some(
                    statement
                        .columns()
                        .iter()
                        .map(|c| c.type_().clone())
                        .collect::<Vec<_>>(),
                ),
                Err(error) => return Err(wire_error(error)),
            }
        } else {
            None
        };
        let messages = self.client.simple_query(sql).await.map_err(wire_error)?;
        let mut rows = Vec::new();
        let mut affected = 0;
        let mut answered = false;
        for message in messages {
            match message {
                SimpleQueryMessage::RowDescription(_) => answered = true,
                SimpleQueryMessage::Row(row) => {
                    answered = true;
                    let types = types.as_deref().unwrap_or(&[]);
                    rows.push(
                        (0..row.len())
                            .map(|i| {
                                let pg = types.get(i).cloned().unwrap_or(tokio_postgres::types::Type::TEXT);
                                wire_cell(&pg, row.get(i))
                            })
                            .collect(),
                    );
                }
                SimpleQueryMessage::CommandComplete(count) => affected += count,
                _ => {}
            }
        }
        match types {
            Some(types) if answered || !types.is_empty() => Ok(DBOutput::Rows {
                types: types.iter().map(wire_column_type).collect(),
                rows,
            }),
            None if answered => Ok(DBOutput::Rows {
                types: Vec::new(),
                rows,
            }),
            _ => Ok(DBOutput::StatementComplete(affected)),
        }
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "chainql-wire"
    }

    async fn sleep(duration: std::time::Duration) {
        tokio::time::sleep(duration).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_are_split_off() {
        let (found, rest) = directives(
            "-- chainql: chain_id=x bad_signature\n-- chainql: nonce=+1\nINSERT INTO t VALUES (1)",
        );
        assert_eq!(found, [("chain_id", "x"), ("bad_signature", ""), ("nonce", "+1")]);
        assert_eq!(rest, "INSERT INTO t VALUES (1)");
        let (found, rest) = directives("-- an ordinary comment\nSELECT 1");
        assert!(found.is_empty());
        assert_eq!(rest, "-- an ordinary comment\nSELECT 1");
    }
}
