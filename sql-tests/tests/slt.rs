//! Runs every `.slt` file under `sql-tests/suites/` against its own fresh embedded node.
//!
//! `cargo test -p chainql-sql-tests --test slt [-- FILTER] [-- --complete]`: FILTER runs only the
//! files whose name contains it; `--complete` rewrites the expected output of the files run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use chainql_server::{Connection, Node, NodeConfig, init_data_dir};
use chainql_sql_tests::{LedgerDb, test_key};

/// The genesis balance of test keys 0 to 3; other test keys start with nothing.
const TEST_BALANCE: u64 = 1_000_000_000_000;

async fn run_file(path: &Path, complete: bool) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut config = NodeConfig::new(dir.path());
    config.block_interval_ms = 1;
    config.query_partitions = 2;
    // A suite may ask for a chain with a gas price: `# genesis: gas_price=N`.
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    for line in text.lines() {
        if let Some(price) = line.strip_prefix("# genesis: gas_price=") {
            config.gas_price = price
                .trim()
                .parse()
                .map_err(|e| format!("{}: bad gas_price: {e}", path.display()))?;
        }
    }
    let accounts: Vec<_> = (0..4).map(|n| (test_key(n).address(), TEST_BALANCE)).collect();
    init_data_dir(&config, "chainql-slt", &accounts).map_err(|e| e.to_string())?;
    let node = Node::open(config).await.map_err(|e| e.to_string())?;
    let dealer = LedgerDb::key_dealer();
    let connection = Connection::Embedded(node.clone());
    let mut runner = sqllogictest::Runner::new(move || {
        let connection = connection.clone();
        let dealer = Arc::clone(&dealer);
        async move { LedgerDb::new(connection, LedgerDb::next_key(&dealer)).await }
    });
    runner.with_column_validator(sqllogictest::strict_column_validator);
    let result = if complete {
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
    };
    node.shutdown().await;
    result
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
        let started = std::time::Instant::now();
        match runtime.block_on(run_file(file, complete)) {
            Ok(()) => println!("ok      {name} ({:.1} s)", started.elapsed().as_secs_f64()),
            Err(error) => {
                failures += 1;
                println!("FAILED  {name}\n{error}\n");
            }
        }
    }
    println!("{} files, {} failed", files.len(), failures);
    if failures == 0 && !files.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
