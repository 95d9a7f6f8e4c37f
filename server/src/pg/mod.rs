//! The PostgreSQL wire protocol: psql, pgbench and PostgreSQL drivers talk to a node as they
//! would to PostgreSQL.
//!
//! - **Identity.** A connection acts as one account for its whole life: the startup message's
//!   user name names a key in the node's keystore (`DATA_DIR/keys/NAME.key`), and every write of
//!   the connection is a transaction signed with it. The user name cannot change afterwards
//!   (`SET ROLE` and `SET SESSION AUTHORIZATION` are refused). See the README for what this means
//!   outside development.
//! - **Statements.** A query is answered from the committed state; a write is signed, admitted,
//!   committed in a block and executed before its `CommandComplete` is sent. `BEGIN ... COMMIT`
//!   makes the writes between them one transaction; `ROLLBACK` drops them. A simple-protocol
//!   message of several writes and nothing else is one transaction, as PostgreSQL runs such a
//!   message in one implicit transaction.
//! - **Extended protocol.** Parse describes the statement against the committed state (parameter
//!   types and answer columns, see [`Executor::describe`](chainql_executor::Executor::describe));
//!   Bind reads the parameters in text or binary; Execute renders them into the statement as
//!   literals (the signed transaction says exactly what it does) and runs it.
//! - **Errors** carry PostgreSQL's SQLSTATE codes: a failed receipt carries its code, and every
//!   other error maps through `Error::sqlstate`.

mod bind;
mod encode;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex as SyncMutex};

use async_trait::async_trait;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::sql::sqlparser::ast::{Expr, Statement};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use futures::{Sink, stream};
use pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionManager, PgWireServerHandlers, PidSecretKeyGenerator,
    RandomPidSecretKeyGenerator, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult, SEVERITY_ERROR, SEVERITY_FATAL};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tokio::net::TcpListener;
use tokio::sync::Mutex;

use chainql::contract::parse_chain_statement;
use chainql::sql::StatementKind;
use chainql::wire::Receipt;
use chainql::{Keypair, sqlstate};
use chainql_executor::QueryResult;

use crate::error::{Error, Result};
use crate::node::Node;
use crate::session::Connection;
use crate::session::{Outcome, Session};

/// The PostgreSQL version the node reports: psql and drivers pick their catalog queries by it.
pub const SERVER_VERSION: &str = "15.0";

/// How the PostgreSQL front end runs.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Where keys named by user names live.
    pub keystore: PathBuf,
    /// Create a key the first time a user name connects (development), rather than refuse it.
    pub create_keys: bool,
}

/// Serves the PostgreSQL protocol on `listener` until `shutdown` completes.
pub async fn serve_listener(
    node: Node,
    listener: TcpListener,
    options: PgOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let handlers = Arc::new(Handlers::new(node, options));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => {
                let (socket, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accepting a PostgreSQL connection failed");
                        continue;
                    }
                };
                let _ = socket.set_nodelay(true);
                let handlers = Arc::clone(&handlers);
                tokio::spawn(async move {
                    if let Err(error) = pgwire::tokio::process_socket(socket, None, handlers).await {
                        tracing::debug!(%peer, %error, "PostgreSQL connection ended with an error");
                    }
                });
            }
        }
    }
}

/// Binds `address` and serves the PostgreSQL protocol on it until `shutdown` completes.
pub async fn serve(
    node: Node,
    address: SocketAddr,
    options: PgOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let listener = TcpListener::bind(address)
        .await
        .map_err(|e| Error::io(format!("listening for PostgreSQL clients on {address}"), e))?;
    serve_listener(node, listener, options, shutdown).await
}

/// The handlers pgwire calls, shared by every connection.
#[derive(Debug)]
struct Handlers {
    backend: Arc<Backend>,
    cancel: Arc<DefaultCancelHandler>,
}

impl Handlers {
    fn new(node: Node, options: PgOptions) -> Handlers {
        let manager = Arc::new(ConnectionManager::new());
        Handlers {
            backend: Arc::new(Backend {
                node: node.clone(),
                keystore: Keystore {
                    options,
                    signers: SyncMutex::new(HashMap::new()),
                },
                parser: Arc::new(StatementParser { node: node.clone() }),
                manager: Arc::clone(&manager),
                pids: RandomPidSecretKeyGenerator::default(),
            }),
            cancel: Arc::new(DefaultCancelHandler::new(manager)),
        }
    }
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::clone(&self.backend)
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::clone(&self.backend)
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::clone(&self.backend)
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        Arc::clone(&self.cancel)
    }
}

/// A user's key and the lock its connections take while they sign (see `Session`).
type Signer = (Keypair, Arc<Mutex<()>>);

/// Keys by user name, and one signing lock per key shared by all its connections.
#[derive(Debug)]
struct Keystore {
    options: PgOptions,
    signers: SyncMutex<HashMap<String, Signer>>,
}

/// The longest user name, in bytes.
const USER_NAME_MAX: usize = 63;

impl Keystore {
    fn signer(&self, user: &str) -> std::result::Result<Signer, String> {
        let valid = !user.is_empty()
            && user.len() <= USER_NAME_MAX
            && !user.starts_with('.')
            && user
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
        if !valid {
            return Err(format!(
                "invalid user name {user:?}: a user name names a key, 1 to {USER_NAME_MAX} letters, digits, '_', '-' or '.'"
            ));
        }
        let mut signers = self.signers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((key, lock)) = signers.get(user) {
            return Ok((key.clone(), Arc::clone(lock)));
        }
        let path = self.options.keystore.join(format!("{user}.key"));
        let key = if path.exists() {
            Keypair::read_file(&path).map_err(|e| e.to_string())?
        } else if self.options.create_keys {
            let key = Keypair::generate();
            key.write_file(&path).map_err(|e| e.to_string())?;
            tracing::info!(user, address = %key.address(), "created a key for a new PostgreSQL user");
            key
        } else {
            return Err(format!(
                "no key for user {user:?}: create one with `chainql keys new --out {}`",
                path.display()
            ));
        };
        let lock = Arc::new(Mutex::new(()));
        signers.insert(user.to_string(), (key.clone(), Arc::clone(&lock)));
        Ok((key, lock))
    }
}

#[derive(Debug)]
struct Backend {
    node: Node,
    keystore: Keystore,
    parser: Arc<StatementParser>,
    manager: Arc<ConnectionManager>,
    pids: RandomPidSecretKeyGenerator,
}

/// One connection's state.
#[derive(Debug)]
struct PgConnection {
    session: Session,
    /// An error happened inside `BEGIN ... COMMIT`: statements are refused until it ends.
    failed: bool,
    /// Settings the client changed with `SET` (they affect only what `SHOW` reports).
    settings: BTreeMap<String, String>,
    user: String,
}

pub(crate) fn user_error(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        SEVERITY_ERROR.to_string(),
        code.to_string(),
        message.into(),
    )))
}

pub(crate) fn internal_error(message: impl Into<String>) -> PgWireError {
    user_error(sqlstate::INTERNAL_ERROR, message)
}

fn aborted() -> PgWireError {
    user_error(
        sqlstate::IN_FAILED_SQL_TRANSACTION,
        "current transaction is aborted, commands ignored until end of transaction block",
    )
}

fn error_info(error: &Error) -> ErrorInfo {
    ErrorInfo::new(
        SEVERITY_ERROR.to_string(),
        error.sqlstate().to_string(),
        error.to_string(),
    )
}

fn into_pg(error: Error) -> PgWireError {
    PgWireError::UserError(Box::new(error_info(&error)))
}

/// The parameters reported at startup, as PostgreSQL 15 reports them.
fn server_parameters() -> DefaultServerParameterProvider {
    let mut parameters = DefaultServerParameterProvider::default();
    parameters.server_version = SERVER_VERSION.to_string();
    parameters.date_style = "ISO, MDY".to_string();
    parameters.is_superuser = false;
    parameters
}

#[async_trait]
impl StartupHandler for Backend {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let PgWireFrontendMessage::Startup(startup) = message else {
            return Ok(());
        };
        protocol_negotiation(client, &startup).await?;
        save_startup_parameters_to_metadata(client, &startup);
        let user = client.metadata().get("user").cloned().unwrap_or_default();
        let fatal = |code: &str, message: String| {
            PgWireError::UserError(Box::new(ErrorInfo::new(
                SEVERITY_FATAL.to_string(),
                code.to_string(),
                message,
            )))
        };
        let (key, lock) = self
            .keystore
            .signer(&user)
            .map_err(|message| fatal(sqlstate::INVALID_AUTHORIZATION_SPECIFICATION, message))?;
        let session = Session::new(Connection::Embedded(self.node.clone()), key)
            .await
            .map_err(|error| fatal(error.sqlstate(), error.to_string()))?
            .with_signer_lock(lock);
        tracing::debug!(user, account = %session.address(), "PostgreSQL client connected");
        client
            .session_extensions()
            .insert(Connected::new(Arc::clone(self.node.metrics())));
        client.session_extensions().insert(Mutex::new(PgConnection {
            session,
            failed: false,
            settings: BTreeMap::new(),
            user,
        }));
        let (pid, secret) = self.pids.generate(client);
        client.set_pid_and_secret_key(pid, secret.clone());
        let (handle, guard) = self.manager.register(pid, secret);
        client.session_extensions().insert(handle);
        client.session_extensions().insert(guard);
        finish_authentication(client, &server_parameters()).await
    }
}

/// Counts a connected client for the metrics while it lives.
#[derive(Debug)]
struct Connected(Arc<crate::metrics::Metrics>);

impl Connected {
    fn new(metrics: Arc<crate::metrics::Metrics>) -> Connected {
        metrics
            .pg_connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Connected(metrics)
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.0
            .pg_connections
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

fn connection<C: ClientInfo>(client: &C) -> PgWireResult<Arc<Mutex<PgConnection>>> {
    client
        .session_extensions()
        .get::<Mutex<PgConnection>>()
        .ok_or_else(|| internal_error("the connection has no session"))
}

/// What kind of statement `sql` is, for routing.
fn kind_of(sql: &str) -> StatementKind {
    parse_chain_statement(sql)
        .map(|statement| statement.kind())
        .unwrap_or(StatementKind::Other)
}

/// A receipt's command tag, as PostgreSQL writes it (`INSERT 0 3`, `UPDATE 2`, `CREATE TABLE`).
fn tag_of(command: &str, rows: u64) -> Tag {
    match command {
        "INSERT" => Tag::new("INSERT").with_oid(0).with_rows(rows as usize),
        "UPDATE" | "DELETE" | "SELECT" => Tag::new(command).with_rows(rows as usize),
        other => Tag::new(other),
    }
}

/// The answer of a query as a response, with the given row description.
fn rows_response(
    result: QueryResult,
    fields: Arc<Vec<FieldInfo>>,
    tag: Option<&str>,
) -> PgWireResult<Response> {
    let mut rows = Vec::with_capacity(result.row_count());
    for batch in &result.batches {
        rows.extend(encode::encode_batch(batch, &fields)?.into_iter().map(Ok));
    }
    let mut response = QueryResponse::new(fields, stream::iter(rows));
    if let Some(tag) = tag {
        response.set_command_tag(tag);
    }
    Ok(Response::Query(response))
}

/// A session-level statement answered by the front end itself: `SET`, `SHOW`, and the like.
enum Local {
    Set(String, String),
    Show(String),
    Refused(String),
    Ignored(&'static str),
}

fn local_statement(statement: &Statement) -> Option<Local> {
    use datafusion::sql::sqlparser::ast::Set;
    match statement {
        Statement::Set(set) => Some(match set {
            Set::SingleAssignment { variable, values, .. } => {
                let name = variable.to_string().to_ascii_lowercase();
                if name == "role" || name == "session_authorization" {
                    Local::Refused(name)
                } else {
                    let value = values
                        .iter()
                        .map(|v| v.to_string().trim_matches('\'').to_string())
                        .collect::<Vec<_>>()
                        .join(", ");
                    Local::Set(name, value)
                }
            }
            Set::SetRole { .. } => Local::Refused("role".into()),
            Set::SetSessionAuthorization(_) => Local::Refused("session_authorization".into()),
            Set::SetTimeZone { value, .. } => Local::Set(
                "timezone".into(),
                value.to_string().trim_matches('\'').to_string(),
            ),
            Set::SetNames { charset_name, .. } => {
                Local::Set("client_encoding".into(), charset_name.to_string())
            }
            _ => Local::Ignored("SET"),
        }),
        Statement::ShowVariable { variable } => Some(Local::Show(
            variable
                .iter()
                .map(|part| part.value.to_ascii_lowercase())
                .collect::<Vec<_>>()
                .join(" "),
        )),
        Statement::Discard { .. } => Some(Local::Ignored("DISCARD ALL")),
        _ => None,
    }
}

/// The answer's columns of `SHOW name`: one text column named after the setting.
fn show_schema(name: &str) -> SchemaRef {
    Arc::new(Schema::new(vec![datafusion::arrow::datatypes::Field::new(
        name,
        datafusion::arrow::datatypes::DataType::Utf8,
        false,
    )]))
}

/// The value `SHOW name` reports.
fn setting(connection: &PgConnection, name: &str) -> Option<String> {
    if let Some(value) = connection.settings.get(name) {
        return Some(value.clone());
    }
    Some(match name {
        "server_version" => SERVER_VERSION.to_string(),
        "server_version_num" => "150000".to_string(),
        "server_encoding" | "client_encoding" => "UTF8".to_string(),
        "datestyle" => "ISO, MDY".to_string(),
        "timezone" => "UTC".to_string(),
        "intervalstyle" => "postgres".to_string(),
        "integer_datetimes" | "standard_conforming_strings" => "on".to_string(),
        "is_superuser" | "default_transaction_read_only" | "transaction_read_only" => "off".to_string(),
        "transaction_isolation" | "default_transaction_isolation" => "serializable".to_string(),
        "search_path" => "public".to_string(),
        "max_identifier_length" => "63".to_string(),
        "session_authorization" => connection.user.clone(),
        "application_name" => String::new(),
        _ => return None,
    })
}

impl PgConnection {
    /// Runs one statement and says what the client sees.
    async fn run(&mut self, sql: &str, format: &Format, described: Option<&Schema>) -> Response {
        match self.try_run(sql, format, described).await {
            Ok(response) => response,
            Err(error) => {
                if self.session.in_transaction() {
                    self.failed = true;
                }
                Response::Error(Box::new(match error {
                    PgWireError::UserError(info) => *info,
                    other => ErrorInfo::new(
                        SEVERITY_ERROR.to_string(),
                        sqlstate::INTERNAL_ERROR.to_string(),
                        other.to_string(),
                    ),
                }))
            }
        }
    }

    async fn try_run(
        &mut self,
        sql: &str,
        format: &Format,
        described: Option<&Schema>,
    ) -> PgWireResult<Response> {
        let kind = kind_of(sql);
        match kind {
            StatementKind::Begin => {
                if !self.session.in_transaction() {
                    self.session.run(sql).await.map_err(into_pg)?;
                }
                return Ok(Response::TransactionStart(Tag::new("BEGIN")));
            }
            StatementKind::Rollback => {
                if self.session.in_transaction() {
                    self.session.run(sql).await.map_err(into_pg)?;
                }
                self.failed = false;
                return Ok(Response::TransactionEnd(Tag::new("ROLLBACK")));
            }
            StatementKind::Commit => {
                if !self.session.in_transaction() {
                    return Ok(Response::TransactionEnd(Tag::new("COMMIT")));
                }
                if self.failed {
                    self.session.run("ROLLBACK").await.map_err(into_pg)?;
                    self.failed = false;
                    return Ok(Response::TransactionEnd(Tag::new("ROLLBACK")));
                }
                // The transaction ends here whether it commits or fails.
                return match self.session.run(sql).await {
                    Ok(_) => Ok(Response::TransactionEnd(Tag::new("COMMIT"))),
                    Err(error) => {
                        self.failed = true;
                        Err(into_pg(error))
                    }
                };
            }
            _ if self.failed => return Err(aborted()),
            _ => {}
        }
        if kind == StatementKind::Other
            && let Ok(mut parsed) = Parser::parse_sql(&PostgreSqlDialect {}, sql)
            && parsed.len() == 1
            && let Some(local) = local_statement(&parsed.remove(0))
        {
            return self.run_local(local);
        }
        match self.session.run(sql).await.map_err(into_pg)? {
            Outcome::Rows(result) => {
                let fields = fields_for(&result.schema, described, format);
                rows_response(result, fields, None)
            }
            Outcome::Committed(receipt) => receipt_response(receipt, format, described),
            // A write collected inside BEGIN: its rows are counted when COMMIT runs it.
            Outcome::Began => Ok(Response::Execution(tag_of(kind.command_tag(), 0))),
            Outcome::RolledBack => Ok(Response::TransactionEnd(Tag::new("ROLLBACK"))),
        }
    }

    fn run_local(&mut self, local: Local) -> PgWireResult<Response> {
        match local {
            Local::Set(name, value) => {
                self.settings.insert(name, value);
                Ok(Response::Execution(Tag::new("SET")))
            }
            Local::Refused(name) => Err(user_error(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!(
                    "permission denied to set {name}: a connection acts as the account of its user name ({}) for its whole life",
                    self.user
                ),
            )),
            Local::Ignored(tag) => Ok(Response::Execution(Tag::new(tag))),
            Local::Show(name) => {
                let value = setting(self, &name).ok_or_else(|| {
                    user_error(
                        sqlstate::UNDEFINED_OBJECT,
                        format!("unrecognized configuration parameter \"{name}\""),
                    )
                })?;
                let schema = show_schema(&name);
                let batch = datafusion::arrow::array::RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![Arc::new(datafusion::arrow::array::StringArray::from(vec![value]))],
                )
                .map_err(|e| internal_error(e.to_string()))?;
                let result = QueryResult {
                    schema,
                    batches: vec![batch],
                };
                let fields = Arc::new(encode::fields(&result.schema, &Format::UnifiedText));
                rows_response(result, fields, Some("SHOW"))
            }
        }
    }
}

/// The row description of an answer: as described at Parse when it was (the client decodes by
/// that), else from the answer's own schema.
fn fields_for(actual: &Schema, described: Option<&Schema>, format: &Format) -> Arc<Vec<FieldInfo>> {
    let schema = match described {
        Some(described) if described.fields().len() == actual.fields().len() => described,
        _ => actual,
    };
    Arc::new(encode::fields(schema, format))
}

/// A committed transaction as the client sees it: a called contract's rows, or a command tag.
fn receipt_response(receipt: Receipt, format: &Format, described: Option<&Schema>) -> PgWireResult<Response> {
    if !receipt.result.is_empty() {
        let result = QueryResult::from_ipc(&receipt.result).map_err(|e| internal_error(e.to_string()))?;
        let fields = fields_for(&result.schema, described, format);
        return rows_response(result, fields, Some("CALL"));
    }
    Ok(match receipt.statements.as_slice() {
        [] => Response::Execution(Tag::new("COMMIT")),
        [statement] => Response::Execution(tag_of(&statement.command, statement.rows)),
        [.., last] => Response::Execution(tag_of(&last.command, last.rows)),
    })
}

#[async_trait]
impl SimpleQueryHandler for Backend {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        crate::node::check_query_size(query).map_err(into_pg)?;
        let connection = connection(client)?;
        let mut connection = connection.lock().await;
        let split = chainql::sql::split_statements(query);
        let mut statements: Vec<String> = split.statements.iter().map(|s| s.to_string()).collect();
        if split.has_unfinished_statement() {
            statements.push(split.remainder.trim().to_string());
        }
        statements.retain(|s| !s.trim().is_empty());
        // Several writes and nothing else: one transaction, as PostgreSQL runs one message.
        if statements.len() > 1
            && !connection.session.in_transaction()
            && statements.iter().all(|s| kind_of(s).is_write())
        {
            return Ok(match connection.session.execute(statements.clone()).await {
                // One CommandComplete per statement, as PostgreSQL sends.
                Ok(receipt) if receipt.result.is_empty() => receipt
                    .statements
                    .iter()
                    .map(|statement| Response::Execution(tag_of(&statement.command, statement.rows)))
                    .collect(),
                Ok(receipt) => vec![receipt_response(receipt, &Format::UnifiedText, None)?],
                Err(error) => vec![Response::Error(Box::new(error_info(&error)))],
            });
        }
        let mut responses = Vec::with_capacity(statements.len());
        for sql in &statements {
            let was_in_transaction = connection.session.in_transaction();
            let response = connection.run(sql, &Format::UnifiedText, None).await;
            let failed = matches!(response, Response::Error(_));
            responses.push(response);
            if failed {
                // A COMMIT that failed ended its transaction: say so, so the client is idle.
                if was_in_transaction && !connection.session.in_transaction() {
                    connection.failed = false;
                    responses.push(Response::TransactionEnd(Tag::new("ROLLBACK")));
                }
                break;
            }
        }
        Ok(responses)
    }
}

/// A statement prepared by Parse.
#[derive(Debug, Clone)]
pub struct Prepared {
    sql: String,
    /// The parsed statement, when the SQL parser reads it (a contract definition it does not).
    statement: Option<Statement>,
    parameters: Vec<Type>,
    /// The answer's columns; `None` for a statement that answers with no rows.
    columns: Option<SchemaRef>,
}

#[derive(Debug)]
struct StatementParser {
    node: Node,
}

#[async_trait]
impl QueryParser for StatementParser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        if let Some(connection) = client.session_extensions().get::<Mutex<PgConnection>>()
            && connection.lock().await.failed
        {
            return Err(aborted());
        }
        crate::node::check_query_size(sql).map_err(into_pg)?;
        prepare(&self.node, sql, types).await.map(Some)
    }

    fn get_parameter_types(&self, statement: &Prepared) -> PgWireResult<Vec<Type>> {
        Ok(statement.parameters.clone())
    }

    fn get_result_schema(
        &self,
        statement: &Prepared,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        Ok(match &statement.columns {
            Some(schema) => encode::fields(schema, format.unwrap_or(&Format::UnifiedBinary)),
            None => Vec::new(),
        })
    }
}

/// Parses and describes `sql` for the extended protocol.
async fn prepare(node: &Node, sql: &str, types: &[Option<Type>]) -> PgWireResult<Prepared> {
    let statement = match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
        Ok(mut statements) if statements.len() == 1 => Some(statements.remove(0)),
        Ok(statements) if statements.len() > 1 => {
            return Err(user_error(
                sqlstate::SYNTAX_ERROR,
                "cannot insert multiple commands into a prepared statement",
            ));
        }
        _ => None,
    };
    let kind = kind_of(sql);
    let local = statement.as_ref().and_then(local_statement);
    let description = match (&statement, kind, &local) {
        (Some(_), _, Some(Local::Show(name))) => Some(chainql_executor::Description {
            parameters: Vec::new(),
            columns: Some(show_schema(name)),
        }),
        (Some(_), _, Some(_)) => None,
        (
            _,
            StatementKind::CreateContract
            | StatementKind::DropContract
            | StatementKind::Stake
            | StatementKind::Unstake,
            _,
        ) => None,
        (Some(_), _, _) => Some(node.describe(sql).await.map_err(into_pg)?),
        // ChainQL syntax the SQL parser does not read alone (`AS OF BLOCK n`, `EXPLAIN BLOCK n`):
        // the node describes it; if it cannot, the statement's error comes when it runs.
        (None, _, _) => node.describe(sql).await.ok(),
    };
    let count = match &statement {
        Some(statement) => {
            chainql_executor::parameter_count(statement).map_err(|e| into_pg(Error::Execution(e)))?
        }
        None => 0,
    };
    let parameters = (0..count.max(types.len()))
        .map(|i| {
            types
                .get(i)
                .cloned()
                .flatten()
                .filter(|t| *t != Type::UNKNOWN)
                .or_else(|| {
                    description
                        .as_ref()
                        .and_then(|d| d.parameters.get(i).cloned().flatten())
                        .map(|t| encode::pg_type(&t))
                })
                // As PostgreSQL does for a parameter nothing constrains.
                .unwrap_or(Type::TEXT)
        })
        .collect();
    Ok(Prepared {
        sql: sql.to_string(),
        statement,
        parameters,
        columns: description.and_then(|d| d.columns),
    })
}

#[async_trait]
impl ExtendedQueryHandler for Backend {
    type Statement = Prepared;
    type QueryParser = StatementParser;

    fn query_parser(&self) -> Arc<StatementParser> {
        Arc::clone(&self.parser)
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let prepared = &portal.statement.statement;
        let sql = match &prepared.statement {
            Some(statement) if !prepared.parameters.is_empty() => {
                let values = prepared
                    .parameters
                    .iter()
                    .enumerate()
                    .map(|(i, pg)| bind::literal(portal, i, pg))
                    .collect::<PgWireResult<Vec<Expr>>>()?;
                let mut statement = statement.clone();
                bind::substitute(&mut statement, &values)?;
                statement.to_string()
            }
            _ => prepared.sql.clone(),
        };
        let connection = connection(client)?;
        let mut connection = connection.lock().await;
        // Rows go out as the statement was described, whatever types the run produced.
        Ok(connection
            .run(&sql, &portal.result_column_format, prepared.columns.as_deref())
            .await)
    }
}
