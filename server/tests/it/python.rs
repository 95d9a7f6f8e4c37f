//! The Python example (`examples/python/`) against a node process: stubs generated from the
//! `.proto` files with grpcio-tools, then a script that signs, submits and reads back a
//! transaction. `scripts/test` prepares the Python environment and names its interpreter in
//! `CHAINQL_PYTHON`.

use std::path::Path;
use std::process::Command;

use crate::support::NodeProcess;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_signs_submits_and_reads_back() {
    let python = std::env::var("CHAINQL_PYTHON").unwrap_or_else(|_| "python3".into());
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python");
    let ready = Command::new(&python)
        .args(["-c", "import grpc, grpc_tools, cryptography, blake3"])
        .output()
        .expect("run python");
    assert!(
        ready.status.success(),
        "{python} lacks the example's packages; `bash scripts/test` installs them \
         (or: pip install -r examples/python/requirements.txt)\n{}",
        String::from_utf8_lossy(&ready.stderr)
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let stubs = dir.path().join("stubs");
    let generated = Command::new("bash")
        .arg(examples.join("generate.sh"))
        .arg(&stubs)
        .env("PYTHON", &python)
        .output()
        .expect("generate stubs");
    assert!(
        generated.status.success(),
        "generate.sh failed: {}",
        String::from_utf8_lossy(&generated.stderr)
    );

    let data_dir = dir.path().join("node");
    let node = NodeProcess::init_and_start(&data_dir, "python-test").await;
    let address = node.url.trim_start_matches("http://").to_string();
    let run = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .arg(examples.join("chainql_example.py"))
            .args(["--node", &address])
            .env("PYTHONPATH", &stubs)
            .output()
            .expect("run the example")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "the Python example failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains("committed ") && stdout.ends_with(": ok\n"),
        "{stdout}"
    );

    // What Python wrote is on the chain, signed by the key it made.
    let remote = chainql_server::Client::connect(&node.url).await.expect("connect");
    let rows = remote
        .query("SELECT author, body FROM python_notes")
        .await
        .expect("query");
    assert_eq!(rows.row_count(), 1);
    let author = chainql_server::format::cell_text(rows.batches[0].column(0), 0).expect("author");
    assert!(
        stdout.contains(&author),
        "the row's author {author} is the script's key: {stdout}"
    );
    drop(node);
}
