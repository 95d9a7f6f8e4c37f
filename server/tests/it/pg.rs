//! The PostgreSQL wire protocol against an in-process node, with a real driver (tokio-postgres:
//! simple and extended protocol, binary parameters and results) and, in `pg_clients`, with psql
//! and pgbench.

use std::path::Path;

use chainql_server::pg::{PgOptions, serve_listener};
use chainql_server::{Node, NodeConfig, init_data_dir};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

pub struct PgServed {
    pub node: Node,
    pub port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub dir: tempfile::TempDir,
}

impl PgServed {
    pub async fn start(create_keys: bool) -> PgServed {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = NodeConfig::new(dir.path());
        config.block_interval_ms = 1;
        init_data_dir(&config, "pg-test", &[]).expect("init");
        let node = Node::open(config).await.expect("open");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let options = PgOptions {
            keystore: dir.path().join("keys"),
            create_keys,
        };
        tokio::spawn(serve_listener(node.clone(), listener, options, async {
            let _ = stopped.await;
        }));
        PgServed {
            node,
            port,
            stop: Some(stop),
            dir,
        }
    }

    pub async fn connect(&self, user: &str) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::connect(
            &format!("host=127.0.0.1 port={} user={user} dbname=chainql", self.port),
            NoTls,
        )
        .await?;
        tokio::spawn(connection);
        Ok(client)
    }

    pub fn keystore(&self) -> &Path {
        self.dir.path()
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.node.shutdown().await;
    }
}

fn code(error: &tokio_postgres::Error) -> &SqlState {
    error
        .code()
        .unwrap_or_else(|| panic!("a server error with a SQLSTATE, got {error:?}"))
}

fn message(error: &tokio_postgres::Error) -> String {
    error
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default()
}

/// The rows of a simple query, as text (NULL as `None`).
async fn simple_rows(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    client
        .simple_query(sql)
        .await
        .expect("query")
        .into_iter()
        .filter_map(|message| match message {
            SimpleQueryMessage::Row(row) => {
                Some((0..row.len()).map(|i| row.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

/// The command tags of a simple query, in order.
async fn tags(client: &Client, sql: &str) -> Vec<u64> {
    client
        .simple_query(sql)
        .await
        .expect("statement")
        .into_iter()
        .filter_map(|message| match message {
            SimpleQueryMessage::CommandComplete(rows) => Some(rows),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_writes_reads_and_prepares() {
    let served = PgServed::start(true).await;
    let alice = served.connect("alice").await.expect("connect");

    assert_eq!(
        tags(
            &alice,
            "CREATE TABLE items (id BIGINT PRIMARY KEY, name TEXT, price DOUBLE, ok BOOLEAN)"
        )
        .await,
        [0]
    );
    assert_eq!(
        tags(
            &alice,
            "INSERT INTO items VALUES (1, 'one', 1.5, true), (2, 'two', 2.25, false), (3, NULL, 0.1, NULL)"
        )
        .await,
        [3]
    );
    assert_eq!(
        simple_rows(&alice, "SELECT id, name, price, ok FROM items ORDER BY id").await,
        [
            vec![
                Some("1".into()),
                Some("one".into()),
                Some("1.5".into()),
                Some("t".into())
            ],
            vec![
                Some("2".into()),
                Some("two".into()),
                Some("2.25".into()),
                Some("f".into())
            ],
            vec![Some("3".into()), None, Some("0.1".into()), None],
        ]
    );

    // Extended protocol: parameters inferred from the plan, sent and answered in binary.
    let by_id = alice
        .prepare("SELECT name, price, ok FROM items WHERE id = $1")
        .await
        .expect("prepare");
    assert_eq!(by_id.params(), [tokio_postgres::types::Type::INT8]);
    let row = alice.query_one(&by_id, &[&2i64]).await.expect("query");
    assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("two"));
    assert_eq!(row.get::<_, f64>(1), 2.25);
    assert_eq!(row.get::<_, Option<bool>>(2), Some(false));
    // The same prepared statement, reused with another value.
    let row = alice.query_one(&by_id, &[&3i64]).await.expect("query");
    assert_eq!(row.get::<_, Option<String>>(0), None);

    // A parameterized write: the values become literals of the signed transaction.
    let updated = alice
        .execute(
            "UPDATE items SET name = $1 WHERE id = $2",
            &[&"it's three", &3i64],
        )
        .await
        .expect("update");
    assert_eq!(updated, 1);
    let inserted = alice
        .execute(
            "INSERT INTO items VALUES ($1, $2, $3, $4)",
            &[&4i64, &"four", &4.0f64, &true],
        )
        .await
        .expect("insert");
    assert_eq!(inserted, 1);
    let rows = alice
        .query("SELECT id, name FROM items WHERE id >= $1 ORDER BY id", &[&3i64])
        .await
        .expect("query");
    let names: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(names, [(3, "it's three".to_string()), (4, "four".to_string())]);

    // Aggregates and expressions keep their types through binary results.
    let row = alice
        .query_one("SELECT count(*), sum(id), max(name) FROM items", &[])
        .await
        .expect("aggregate");
    assert_eq!(row.get::<_, i64>(0), 4);
    assert_eq!(row.get::<_, i64>(1), 10);
    assert_eq!(row.get::<_, String>(2), "two");

    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_postgres_sqlstates() {
    let served = PgServed::start(true).await;
    let alice = served.connect("alice").await.expect("connect");
    let bob = served.connect("bob").await.expect("connect");
    alice
        .batch_execute("CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT)")
        .await
        .expect("create");
    alice
        .batch_execute("INSERT INTO t VALUES (1, 'a')")
        .await
        .expect("insert");

    let cases: [(&Client, &str, SqlState); 6] = [
        (&alice, "SELEC 1", SqlState::SYNTAX_ERROR),
        (&alice, "SELECT * FROM missing", SqlState::UNDEFINED_TABLE),
        (&alice, "SELECT nope FROM t", SqlState::UNDEFINED_COLUMN),
        (
            &alice,
            "INSERT INTO t VALUES (1, 'again')",
            SqlState::UNIQUE_VIOLATION,
        ),
        // t belongs to alice: bob may read it but not change it.
        (
            &bob,
            "INSERT INTO t VALUES (2, 'b')",
            SqlState::INSUFFICIENT_PRIVILEGE,
        ),
        (&alice, "SET ROLE bob", SqlState::INSUFFICIENT_PRIVILEGE),
    ];
    for (client, sql, expected) in cases {
        let error = client.batch_execute(sql).await.expect_err(sql);
        assert_eq!(code(&error), &expected, "{sql}: {error:?}");
    }
    assert_eq!(
        simple_rows(&bob, "SELECT v FROM t").await,
        [vec![Some("a".to_string())]]
    );

    // A failed REQUIRE is a raised exception, with the contract's message.
    alice
        .batch_execute(
            "CREATE CONTRACT guarded(n BIGINT) AS $$ REQUIRE n > 0, 'n must be positive'; INSERT INTO t VALUES (n, 'called'); $$",
        )
        .await
        .expect("deploy");
    let error = alice
        .batch_execute("CALL guarded(-1)")
        .await
        .expect_err("require");
    assert_eq!(code(&error), &SqlState::RAISE_EXCEPTION);
    assert!(message(&error).contains("n must be positive"), "{error:?}");
    // The extended protocol reports the same, and the connection goes on.
    let error = alice
        .execute("CALL guarded($1)", &[&-5i64])
        .await
        .expect_err("require");
    assert_eq!(code(&error), &SqlState::RAISE_EXCEPTION);
    assert_eq!(
        alice.execute("CALL guarded($1)", &[&5i64]).await.expect("call"),
        0
    );
    assert_eq!(
        simple_rows(&alice, "SELECT v FROM t WHERE id = 5").await,
        [vec![Some("called".to_string())]]
    );
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn begin_commit_is_one_transaction() {
    let served = PgServed::start(true).await;
    let mut alice = served.connect("alice").await.expect("connect");
    alice
        .batch_execute("CREATE TABLE acct (id BIGINT PRIMARY KEY, balance BIGINT)")
        .await
        .expect("create");
    alice
        .batch_execute("INSERT INTO acct VALUES (1, 100), (2, 0)")
        .await
        .expect("insert");

    // Committed together.
    let transaction = alice.transaction().await.expect("begin");
    transaction
        .execute("UPDATE acct SET balance = balance - $1 WHERE id = 1", &[&30i64])
        .await
        .expect("debit");
    transaction
        .execute("UPDATE acct SET balance = balance + $1 WHERE id = 2", &[&30i64])
        .await
        .expect("credit");
    // Reads inside see the committed state: nothing is applied before COMMIT.
    let row = transaction
        .query_one("SELECT balance FROM acct WHERE id = 1", &[])
        .await
        .expect("read");
    assert_eq!(row.get::<_, i64>(0), 100);
    transaction.commit().await.expect("commit");
    let balances = simple_rows(&alice, "SELECT balance FROM acct ORDER BY id").await;
    assert_eq!(
        balances,
        [vec![Some("70".to_string())], vec![Some("30".to_string())]]
    );

    // Rolled back: nothing happens.
    let transaction = alice.transaction().await.expect("begin");
    transaction
        .execute("UPDATE acct SET balance = 0 WHERE id = 1", &[])
        .await
        .expect("update");
    transaction.rollback().await.expect("rollback");

    // A failing statement inside a block fails the block: later statements are refused until
    // ROLLBACK, and COMMIT rolls back.
    alice.batch_execute("BEGIN").await.expect("begin");
    alice
        .batch_execute("UPDATE acct SET balance = 0 WHERE id = 2")
        .await
        .expect("collected");
    let error = alice.batch_execute("SELEC 1").await.expect_err("syntax");
    assert_eq!(code(&error), &SqlState::SYNTAX_ERROR);
    let error = alice.batch_execute("SELECT 1").await.expect_err("aborted");
    assert_eq!(code(&error), &SqlState::IN_FAILED_SQL_TRANSACTION);
    alice
        .batch_execute("COMMIT")
        .await
        .expect("commit of a failed block");
    let balances = simple_rows(&alice, "SELECT balance FROM acct ORDER BY id").await;
    assert_eq!(
        balances,
        [vec![Some("70".to_string())], vec![Some("30".to_string())]]
    );

    // A transaction that fails at COMMIT (its second statement violates the key) leaves no
    // effect, and the connection is idle again.
    alice.batch_execute("BEGIN").await.expect("begin");
    alice
        .batch_execute("UPDATE acct SET balance = 1 WHERE id = 1")
        .await
        .expect("collected");
    alice
        .batch_execute("INSERT INTO acct VALUES (2, 5)")
        .await
        .expect("collected");
    let error = alice.batch_execute("COMMIT").await.expect_err("commit fails");
    assert_eq!(code(&error), &SqlState::UNIQUE_VIOLATION);
    let balances = simple_rows(&alice, "SELECT balance FROM acct ORDER BY id").await;
    assert_eq!(
        balances,
        [vec![Some("70".to_string())], vec![Some("30".to_string())]]
    );
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_one_account_and_unknown_users_are_refused() {
    let served = PgServed::start(false).await;
    // No key named "mallory": refused at startup.
    let error = served.connect("mallory").await.expect_err("unknown user");
    assert_eq!(code(&error), &SqlState::INVALID_AUTHORIZATION_SPECIFICATION);
    let error = served
        .connect("../etc")
        .await
        .expect_err("a path is not a user name");
    assert_eq!(code(&error), &SqlState::INVALID_AUTHORIZATION_SPECIFICATION);

    // With a key in the keystore, the user connects and signs with it.
    let key = chainql::Keypair::generate();
    key.write_file(&served.keystore().join("keys").join("carol.key"))
        .expect("write key");
    let carol = served.connect("carol").await.expect("connect");
    carol
        .batch_execute("CREATE TABLE notes (id BIGINT PRIMARY KEY)")
        .await
        .expect("create");
    let owner = simple_rows(
        &carol,
        "SELECT owner FROM chain.tables WHERE table_name = 'notes'",
    )
    .await;
    assert_eq!(owner, [vec![Some(key.address().to_hex())]]);

    // Two connections of one account write concurrently: each gets its own nonce.
    let other = served.connect("carol").await.expect("connect");
    let (a, b) = tokio::join!(
        carol.batch_execute("INSERT INTO notes VALUES (1)"),
        other.batch_execute("INSERT INTO notes VALUES (2)")
    );
    a.expect("first");
    b.expect("second");
    assert_eq!(
        simple_rows(&carol, "SELECT count(*) FROM notes").await,
        [vec![Some("2".to_string())]]
    );
    assert_eq!(
        simple_rows(&carol, "SHOW session_authorization").await,
        [vec![Some("carol".to_string())]]
    );
    served.stop().await;
}

/// Serves the node's `/metrics` on a free port, until the test ends; returns the port.
async fn serve_metrics(served: &PgServed) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(chainql_server::metrics::serve_listener(
        served.node.clone(),
        listener,
        std::future::pending(),
    ));
    port
}

/// `GET /metrics` over a plain TCP connection: the response body.
async fn scrape(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    socket
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("request");
    let mut response = String::new();
    socket.read_to_string(&mut response).await.expect("response");
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in\n{body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_the_node_does() {
    let served = PgServed::start(true).await;
    let port = serve_metrics(&served).await;
    let alice = served.connect("alice").await.expect("connect");
    alice
        .batch_execute("CREATE TABLE m (id BIGINT PRIMARY KEY)")
        .await
        .expect("create");
    alice
        .batch_execute("INSERT INTO m VALUES (1)")
        .await
        .expect("insert");
    let _ = alice
        .batch_execute("INSERT INTO m VALUES (1)")
        .await
        .expect_err("duplicate");
    alice.batch_execute("SELECT * FROM m").await.expect("query");
    let _ = alice
        .batch_execute("SELECT * FROM nowhere")
        .await
        .expect_err("no table");
    // A transaction with a stale nonce is refused at admission.
    let key = chainql::Keypair::read_file(&served.keystore().join("keys").join("alice.key")).expect("key");
    let stale =
        chainql::TransactionBuilder::new("pg-test", key).build(0, vec!["INSERT INTO m VALUES (9)".into()]);
    served.node.submit(stale).await.expect_err("stale nonce");

    let body = scrape(port).await;
    assert_eq!(
        metric(&body, "chainql_transactions_admitted_total"),
        3.0,
        "{body}"
    );
    assert_eq!(
        metric(&body, "chainql_transactions_committed_total"),
        2.0,
        "{body}"
    );
    assert_eq!(metric(&body, "chainql_transactions_failed_total"), 1.0, "{body}");
    assert_eq!(
        metric(&body, "chainql_admission_refusals_total{reason=\"nonce\"}"),
        1.0,
        "{body}"
    );
    assert!(metric(&body, "chainql_blocks_total") >= 1.0);
    assert_eq!(
        metric(&body, "chainql_commit_latency_seconds_count"),
        3.0,
        "{body}"
    );
    assert!(metric(&body, "chainql_query_errors_total") >= 1.0, "{body}");
    assert!(metric(&body, "chainql_log_appends_total") >= 3.0, "{body}");
    assert_eq!(metric(&body, "chainql_pg_connections"), 1.0, "{body}");
    drop(alice);
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_stops_the_running_query() {
    let served = PgServed::start(true).await;
    let client = served.connect("alice").await.expect("connect");
    let token = client.cancel_token();
    let running = tokio::spawn(async move {
        let result = client
            .simple_query("SELECT count(*) FROM generate_series(1, 100000000000)")
            .await;
        (client, result)
    });
    // Cancel until the query has stopped: a request that arrives before the query starts
    // cancels nothing.
    while !running.is_finished() {
        token.cancel_query(NoTls).await.expect("send a cancel request");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (client, result) = running.await.expect("join");
    let error = result.expect_err("cancelled");
    assert_eq!(code(&error), &SqlState::QUERY_CANCELED, "{error:?}");
    // The connection goes on.
    assert_eq!(
        simple_rows(&client, "SELECT 1").await,
        [vec![Some("1".to_string())]]
    );
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_clients_do_not_disturb_the_node() {
    use tokio::io::AsyncWriteExt;
    let served = PgServed::start(true).await;
    let startup = |user: &str| {
        let mut body = Vec::new();
        body.extend_from_slice(&196_608i32.to_be_bytes()); // protocol 3.0
        for (key, value) in [("user", user), ("database", "chainql")] {
            body.extend_from_slice(key.as_bytes());
            body.push(0);
            body.extend_from_slice(value.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut message = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        message.extend_from_slice(&body);
        message
    };
    // A query message cut off mid-way, then the connection dropped.
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", served.port))
        .await
        .expect("connect");
    socket.write_all(&startup("alice")).await.expect("startup");
    let mut truncated = vec![b'Q'];
    truncated.extend_from_slice(&1000i32.to_be_bytes());
    truncated.extend_from_slice(b"SELECT 1");
    socket.write_all(&truncated).await.expect("write");
    drop(socket);
    // Garbage instead of a startup message.
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", served.port))
        .await
        .expect("connect");
    socket.write_all(&[0xff; 64]).await.expect("write");
    drop(socket);
    // A message claiming to be larger than any the server accepts.
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", served.port))
        .await
        .expect("connect");
    socket.write_all(&startup("alice")).await.expect("startup");
    let mut huge = vec![b'P'];
    huge.extend_from_slice(&i32::MAX.to_be_bytes());
    socket.write_all(&huge).await.expect("write");
    drop(socket);
    // A client that disconnects while its write waits for its block: the write still commits.
    let client = served.connect("alice").await.expect("connect");
    client
        .batch_execute("CREATE TABLE t (id BIGINT PRIMARY KEY)")
        .await
        .expect("create");
    let pending = tokio::spawn(async move { client.batch_execute("INSERT INTO t VALUES (1)").await });
    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    pending.abort();

    // A query text over the node's bound (PostgreSQL's own is 1 GiB): a clear error with
    // SQLSTATE 54000, in the simple and the extended protocol, and the connection goes on.
    let client = served.connect("carol").await.expect("connect");
    let long = format!("SELECT '{}'", "x".repeat(chainql_server::QUERY_BYTES_MAX));
    let error = client.simple_query(&long).await.expect_err("too long");
    assert_eq!(
        code(&error),
        &SqlState::PROGRAM_LIMIT_EXCEEDED,
        "{}",
        message(&error)
    );
    assert!(message(&error).contains("at most 4194304"), "{}", message(&error));
    let error = client.prepare(&long).await.expect_err("too long to prepare");
    assert_eq!(
        code(&error),
        &SqlState::PROGRAM_LIMIT_EXCEEDED,
        "{}",
        message(&error)
    );
    assert_eq!(
        simple_rows(&client, "SELECT 2").await,
        [vec![Some("2".to_string())]]
    );

    // The node still serves everyone.
    let other = served.connect("bob").await.expect("connect");
    assert_eq!(
        simple_rows(&other, "SELECT 1").await,
        [vec![Some("1".to_string())]]
    );
    other
        .batch_execute("CREATE TABLE u (id BIGINT PRIMARY KEY)")
        .await
        .expect("a write after the broken clients");
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_refuses_bad_requests_and_keeps_serving() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let served = PgServed::start(true).await;
    let port = serve_metrics(&served).await;
    let ask = |request: Vec<u8>| async move {
        let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        // The server may answer and close before it has read everything: ignore write errors.
        let _ = socket.write_all(&request).await;
        let _ = socket.shutdown().await;
        let mut response = Vec::new();
        let _ = socket.read_to_end(&mut response).await;
        String::from_utf8_lossy(&response).to_string()
    };
    let cases: [(Vec<u8>, &str); 4] = [
        (
            b"GET /secrets HTTP/1.1\r\n\r\n".to_vec(),
            "HTTP/1.1 404 Not Found",
        ),
        (
            b"POST /metrics HTTP/1.1\r\n\r\n".to_vec(),
            "HTTP/1.1 404 Not Found",
        ),
        // A head that never ends, larger than any scrape's.
        (
            [b"GET /metrics HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 1 << 20]].concat(),
            "HTTP/1.1 400 Bad Request",
        ),
        // Not HTTP at all, cut off.
        (vec![0xff; 100], "HTTP/1.1 400 Bad Request"),
    ];
    for (request, expected) in cases {
        let response = ask(request).await;
        assert!(response.starts_with(expected), "{response:?}");
    }
    let body = scrape(port).await;
    assert!(body.contains("chainql_blocks_total"), "{body}");
    served.stop().await;
}
