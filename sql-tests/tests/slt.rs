//! Runs every `.slt` file under `sql-tests/suites/` twice, each time against its own fresh node:
//! through the embedded node's sessions, and through the PostgreSQL wire protocol with a real
//! driver.
//!
//! `cargo test -p chainql-sql-tests --test slt [-- FILTER] [-- --complete]`: FILTER runs only the
//! files whose name contains it; `--complete` rewrites the expected output of the files run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use chainql_server::pg::{PgOptions, serve_listener};
use chainql_server::{Connection, Node, NodeConfig, init_data_dir};
use chainql_sql_tests::{ColumnType, LedgerDb, WireDb, test_key, wire_column_validator};

/// The genesis balance of test keys 0 to 3; other test keys start with nothing.
const TEST_BALANCE: u64 = 1_000_000_000_000;

/// How a file's records reach the node.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// Through the embedded node's sessions.
    Embedded,
    /// Through the PostgreSQL wire protocol, with a real driver.
    Wire,
}

async fn run_file(path: &Path, complete: bool, mode: Mode) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut config = NodeConfig::new(dir.path());
    config.block_interval_ms = 1;
    config.query_partitions = 2;
    // A suite may ask for a chain with a gas price, `# genesis: gas_price=N`, and a staking
    // epoch length, `# genesis: epoch_blocks=N`.
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    for line in text.lines() {
        if let Some(price) = line.strip_prefix("# genesis: gas_price=") {
            config.gas_price = price
                .trim()
                .parse()
                .map_err(|e| format!("{}: bad gas_price: {e}", path.display()))?;
        }
        if let Some(blocks) = line.strip_prefix("# genesis: epoch_blocks=") {
            config.epoch_blocks = blocks
                .trim()
                .parse()
                .map_err(|e| format!("{}: bad epoch_blocks: {e}", path.display()))?;
        }
    }
    let accounts: Vec<_> = (0..4).map(|n| (test_key(n).address(), TEST_BALANCE)).collect();
    init_data_dir(&config, "chainql-slt", &accounts).map_err(|e| e.to_string())?;
    let node = Node::open(config).await.map_err(|e| e.to_string())?;
    let dealer = LedgerDb::key_dealer();
    let connection = Connection::Embedded(node.clone());
    let result = match mode {
        Mode::Embedded => {
            let mut runner = sqllogictest::Runner::new(move || {
                let connection = connection.clone();
                let dealer = Arc::clone(&dealer);
                async move { LedgerDb::new(connection, LedgerDb::next_key(&dealer)).await }
            });
            run_records(&mut runner, path, complete, sqllogictest::strict_column_validator).await
        }
        Mode::Wire => {
            let keystore = dir.path().join("keys");
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| e.to_string())?;
            let port = listener.local_addr().map_err(|e| e.to_string())?.port();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let options = PgOptions {
                keystore: keystore.clone(),
                create_keys: false,
            };
            tokio::spawn(serve_listener(node.clone(), listener, options, async {
                let _ = stopped.await;
            }));
            let mut runner = sqllogictest::Runner::new(move || {
                let connection = connection.clone();
                let dealer = Arc::clone(&dealer);
                let keystore = keystore.clone();
                async move {
                    let n = dealer.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    WireDb::connect(port, &keystore, connection, n).await
                }
            });
            let result = run_records(&mut runner, path, false, wire_column_validator).await;
            let _ = stop.send(());
            result
        }
    };
    node.shutdown().await;
    result
}

/// Runs (or, with `complete`, rewrites) one file's records.
async fn run_records<D, M>(
    runner: &mut sqllogictest::Runner<D, M>,
    path: &Path,
    complete: bool,
    validator: sqllogictest::ColumnTypeValidator<ColumnType>,
) -> Result<(), String>
where
    D: sqllogictest::AsyncDB<ColumnType = ColumnType>,
    M: sqllogictest::MakeConnection<Conn = D>,
{
    runner.with_column_validator(validator);
    if complete {
        runner
            .update_test_file(
                path,
                " ",
                sqllogictest::default_validator,
                sqllogictest::default_normalizer,
                sqllogictest::strict_column_validator,
            )
            .await
            .map_err(|e| e.to_string())
    } else {
        runner
            .run_file_async(path)
            .await
            .map_err(|e| e.display(true).to_string())
    }
}

fn main() -> ExitCode {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let complete = arguments.iter().any(|a| a == "--complete");
    let filters: Vec<&String> = arguments.iter().filter(|a| !a.starts_with('-')).collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("suites");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&root) {
        Ok(listing) => listing
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "slt"))
            .filter(|p| {
                filters.is_empty() || filters.iter().any(|f| p.to_string_lossy().contains(f.as_str()))
            })
            .collect(),
        Err(e) => {
            eprintln!("cannot list {}: {e}", root.display());
            return ExitCode::FAILURE;
        }
    };
    files.sort();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut failures = 0;
    for file in &files {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        for mode in [Mode::Embedded, Mode::Wire] {
            if complete && mode == Mode::Wire {
                continue;
            }
            let started = std::time::Instant::now();
            let label = match mode {
                Mode::Embedded => "embedded",
                Mode::Wire => "wire",
            };
            match runtime.block_on(run_file(file, complete, mode)) {
                Ok(()) => println!(
                    "ok      {name} {label} ({:.1} s)",
                    started.elapsed().as_secs_f64()
                ),
                Err(error) => {
                    failures += 1;
                    println!("FAILED  {name} {label}\n{error}\n");
                }
            }
        }
    }
    println!(
        "{} files (embedded and wire), {} runs failed",
        files.len(),
        failures
    );
    if failures == 0 && !files.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
