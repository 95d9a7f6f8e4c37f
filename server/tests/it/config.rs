//! `chainql node --config node.toml`: settings from the file, flags winning over it, and a bad
//! file refused with a message naming it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::free_port;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_reads_its_settings_from_a_file_and_flags_win() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (grpc, pg, metrics) = (free_port(), free_port(), free_port());
    let file = dir.path().join("node.toml");
    let from_file = dir.path().join("from-file");
    let from_flag = dir.path().join("from-flag");
    std::fs::write(
        &file,
        format!(
            "data-dir = {:?}\ninit-chain-id = \"configured\"\nblock-interval-ms = 5\ngrpc-listen = \"127.0.0.1:{grpc}\"\npg-listen = \"127.0.0.1:{pg}\"\npg-create-keys = true\nmetrics-listen = \"127.0.0.1:{metrics}\"\n",
            from_file.display().to_string()
        ),
    )
    .expect("write node.toml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_chainql"))
        .args(["node", "--config"])
        .arg(&file)
        .arg("--data-dir")
        .arg(&from_flag)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chainql node");
    // The PostgreSQL port comes from the file.
    let deadline = Instant::now() + Duration::from_secs(60);
    let client = loop {
        match tokio_postgres::connect(
            &format!("host=127.0.0.1 port={pg} user=alice"),
            tokio_postgres::NoTls,
        )
        .await
        {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                break client;
            }
            Err(error) => {
                assert!(Instant::now() < deadline, "the node did not start: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    client
        .batch_execute("CREATE TABLE t (id BIGINT PRIMARY KEY)")
        .await
        .expect("a write");
    // The gRPC address and the chain id from the file, the data directory from the flag.
    let remote = chainql_server::Client::connect(&format!("http://127.0.0.1:{grpc}"))
        .await
        .expect("gRPC on the file's address");
    assert_eq!(remote.status().await.expect("status").chain_id, "configured");
    assert!(from_flag.join("genesis.json").exists());
    assert!(
        !from_file.exists(),
        "the flag's data directory wins over the file's"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_bad_file_is_refused_with_its_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("node.toml");
    std::fs::write(&file, "block-intervall-ms = 5\n").expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_chainql"))
        .args(["node", "--config"])
        .arg(&file)
        .output()
        .expect("run chainql node");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("node.toml"), "{stderr}");
    assert!(stderr.contains("block-intervall-ms"), "{stderr}");
}

/// A peer that is not a URL, or too many peers, is refused when the node opens, with a message
/// naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_peers_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = chainql_server::NodeConfig::new(dir.path());
    chainql_server::init_data_dir(&config, "peers", &[]).expect("init");
    config.peers = vec!["127.0.0.1:50051".into()];
    let error = chainql_server::Node::open(config.clone())
        .await
        .expect_err("not a URL");
    assert!(error.to_string().contains("expected a URL"), "{error}");
    config.peers = vec!["http://127.0.0.1:1".into(); 257];
    let error = chainql_server::Node::open(config).await.expect_err("too many");
    assert!(error.to_string().contains("at most 256 peers"), "{error}");
}
