//! Real PostgreSQL clients against a node: psql in scripted mode and pgbench with a custom
//! transfer script. Both must be on the PATH (`.ci/run` installs them).

use std::path::PathBuf;
use std::process::{Command, Output};

use crate::pg::PgServed;

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("pg")
        .join(name)
}

fn run(program: &str, arguments: &[&str]) -> Output {
    Command::new(program)
        .args(arguments)
        .env("PGCONNECT_TIMEOUT", "20")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}): install the PostgreSQL client tools"))
}

/// Runs psql against the node on `port` as user alice, with `arguments` after the connection's.
async fn psql(port: u16, arguments: &[&str]) -> Output {
    let mut all: Vec<String> = [
        "-X",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        "127.0.0.1",
        "-U",
        "alice",
        "-d",
        "chainql",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    all.extend(["-p".to_string(), port.to_string()]);
    all.extend(arguments.iter().map(|a| a.to_string()));
    tokio::task::spawn_blocking(move || {
        let arguments: Vec<&str> = all.iter().map(String::as_str).collect();
        run("psql", &arguments)
    })
    .await
    .expect("psql")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_runs_a_script() {
    let served = PgServed::start(false).await;
    // A fixed key, so the tables' owner in `\dt` is always the same address.
    chainql::Keypair::from_seed([7; 32])
        .write_file(&served.keystore().join("keys").join("alice.key"))
        .expect("write key");
    let path = script("tour.sql");
    let output = psql(served.port, &["-f", path.to_str().expect("a UTF-8 path")]).await;
    assert!(
        output.status.success(),
        "psql failed: {}\n{}",
        text(&output.stderr),
        text(&output.stdout)
    );
    // CHAINQL_BLESS=1 rewrites the expected output after a deliberate change.
    if std::env::var_os("CHAINQL_BLESS").is_some() {
        std::fs::write(script("tour.out"), &output.stdout).expect("write tour.out");
    }
    let expected = std::fs::read_to_string(script("tour.out")).expect("tour.out");
    assert_eq!(text(&output.stdout), expected);
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_stops_at_the_first_error() {
    let served = PgServed::start(true).await;
    let output = psql(
        served.port,
        &[
            "-c",
            "CREATE TABLE t (id BIGINT PRIMARY KEY)",
            "-c",
            "INSERT INTO t VALUES (1), (1)",
            "-c",
            "INSERT INTO t VALUES (2)",
        ],
    )
    .await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stdout));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("ERROR:  duplicate key value"), "{stderr}");
    let alice = served.connect("alice").await.expect("connect");
    let rows = alice.query("SELECT count(*) FROM t", &[]).await.expect("count");
    assert_eq!(rows[0].get::<_, i64>(0), 0, "nothing after the error ran");
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_runs_transfers_without_errors() {
    let served = PgServed::start(true).await;
    let alice = served.connect("alice").await.expect("connect");
    alice
        .batch_execute("CREATE TABLE accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)")
        .await
        .expect("create");
    let values: Vec<String> = (1..=100).map(|id| format!("({id}, 1000)")).collect();
    alice
        .batch_execute(&format!("INSERT INTO accounts VALUES {}", values.join(", ")))
        .await
        .expect("fill");
    for mode in ["simple", "extended", "prepared"] {
        let port = served.port.to_string();
        let path = script("transfer.pgbench");
        let output = tokio::task::spawn_blocking(move || {
            run(
                "pgbench",
                &[
                    "-n",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-U",
                    "alice",
                    "-c",
                    "4",
                    "-j",
                    "2",
                    "-t",
                    "25",
                    "-M",
                    mode,
                    "-D",
                    "accounts=100",
                    "-f",
                    path.to_str().expect("a UTF-8 path"),
                    "chainql",
                ],
            )
        })
        .await
        .expect("pgbench");
        let stdout = text(&output.stdout);
        assert!(
            output.status.success(),
            "pgbench -M {mode} failed: {}\n{stdout}",
            text(&output.stderr)
        );
        assert!(
            stdout.contains("number of transactions actually processed: 100/100"),
            "{stdout}"
        );
        assert!(stdout.contains("number of failed transactions: 0"), "{stdout}");
    }
    // Every transfer moved one unit between two accounts: the total is unchanged, and 300
    // two-statement transactions were committed.
    let row = alice
        .query_one("SELECT sum(balance) FROM accounts", &[])
        .await
        .expect("sum");
    assert_eq!(row.get::<_, i64>(0), 100_000);
    let row = alice
        .query_one(
            "SELECT count(*) FROM chain.transactions WHERE statements LIKE 'UPDATE accounts%' AND status = 'success'",
            &[],
        )
        .await
        .expect("count");
    assert_eq!(row.get::<_, i64>(0), 300);
    served.stop().await;
}
