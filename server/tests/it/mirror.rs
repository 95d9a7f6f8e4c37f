//! `chainql log mirror` against a real node process: the replica holds, partition by partition,
//! exactly the order the chain committed, across runs that resume where it ends and a `kill -9`
//! of the node while it streams.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chainql::wire::SignedTransaction;
use chainql::{Address, Keypair, TransactionBuilder};
use chainql_sequencer::{FsStorage, Log, LogConfig, PartitionId, partition_of};
use chainql_server::Client;
use prost::Message;

use crate::support::{NodeProcess, chainql, free_port};

const CHAIN: &str = "mirror-test";

/// Submits `count` transactions from each sender and waits until the last one is committed.
async fn submit(remote: &Client, senders: &[TransactionBuilder], count: u64) {
    let mut last = None;
    for (s, builder) in senders.iter().enumerate() {
        let nonce = remote.next_nonce(&builder.key.address()).await.expect("nonce");
        for i in 0..count {
            let statement = format!("CREATE TABLE t_{s}_{} (id INT PRIMARY KEY)", nonce + i);
            let (hash, _) = remote
                .submit(builder.build(nonce + i, vec![statement]), false)
                .await
                .expect("admitted");
            last = Some(hash);
        }
    }
    let last = last.expect("something was submitted");
    let deadline = Instant::now() + Duration::from_secs(60);
    while remote.transaction(&last).await.expect("lookup").is_none() {
        assert!(Instant::now() < deadline, "the transactions were not committed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The committed transactions' hashes, per log partition, in the order the chain committed them.
async fn committed_order(remote: &Client, partitions: u32) -> Vec<Vec<String>> {
    let rows = remote
        .query("SELECT hash, sender FROM chain.transactions ORDER BY block_height, index")
        .await
        .expect("query");
    let mut order = vec![Vec::new(); partitions as usize];
    for batch in &rows.batches {
        for row in 0..batch.num_rows() {
            let hash = chainql_server::format::cell_text(batch.column(0), row).expect("hash");
            let sender = chainql_server::format::cell_text(batch.column(1), row).expect("sender");
            let sender = Address::from_hex(&sender).expect("an address");
            order[partition_of(&sender.0, partitions).0 as usize].push(hash);
        }
    }
    order
}

/// The replica's entries, as transaction hashes per partition, and each partition's epochs.
fn mirrored(dir: &Path, partitions: u32) -> (Vec<Vec<String>>, Vec<Vec<u64>>) {
    let log = Log::open_replica(
        Arc::new(FsStorage),
        &dir.join("log"),
        LogConfig {
            partitions,
            ..LogConfig::default()
        },
    )
    .expect("open the replica");
    let mut hashes = Vec::new();
    let mut epochs = Vec::new();
    for p in (0..partitions).map(PartitionId) {
        let last = log.last_seqno(p).expect("last");
        let entries = log.read(p, 1, last as usize).expect("read");
        assert_eq!(entries.len() as u64, last);
        hashes.push(
            entries
                .iter()
                .map(|entry| {
                    let signed = SignedTransaction::decode(&entry.payload[..]).expect("a transaction");
                    chainql::transaction_hash(&signed.transaction).to_hex()
                })
                .collect(),
        );
        epochs.push(log.epochs(p).expect("epochs").iter().map(|e| e.epoch).collect());
    }
    log.close();
    (hashes, epochs)
}

/// Waits until a mirror process says it streams the node's log; its log lines after that are
/// read and dropped.
fn wait_until_streaming(mirror: &mut std::process::Child) {
    let mut log_lines = BufReader::new(mirror.stderr.take().expect("stderr")).lines();
    loop {
        let line = log_lines.next().expect("the mirror streams").expect("a line");
        if line.contains("streaming the node's log") {
            break;
        }
    }
    std::thread::spawn(move || log_lines.for_each(drop));
}

/// Starts `chainql log mirror` on `url` into `dir`, with `until` (an end, or none), and waits
/// until it streams.
fn start_mirror(url: &str, dir: &str, until: &[&str]) -> std::process::Child {
    let mut mirror = Command::new(env!("CARGO_BIN_EXE_chainql"))
        .args(["log", "mirror", "--connect", url, "--dir", dir])
        .args(until)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the mirror");
    wait_until_streaming(&mut mirror);
    mirror
}

/// Runs `chainql log mirror --until-committed`, which must fail, and returns what it printed.
fn mirror_refused(url: &str, dir: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_chainql"))
        .args(until_committed(url, dir))
        .output()
        .expect("run the mirror");
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).to_string()
}

/// Runs `chainql log mirror --until-committed` and returns its report.
fn mirror_until_committed(url: &str, dir: &str) -> String {
    chainql(&until_committed(url, dir))
}

/// The arguments of `chainql log mirror --until-committed`.
fn until_committed<'a>(url: &'a str, dir: &'a str) -> [&'a str; 7] {
    [
        "log",
        "mirror",
        "--connect",
        url,
        "--dir",
        dir,
        "--until-committed",
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_copies_the_committed_order_and_resumes_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("node");
    let mirror_dir = dir.path().join("mirror");
    let mirror = mirror_dir.to_str().expect("a UTF-8 path");
    chainql(&[
        "init",
        "--data-dir",
        data_dir.to_str().expect("a UTF-8 path"),
        "--chain-id",
        CHAIN,
    ]);
    let port = free_port();
    let node = NodeProcess::start_on(&data_dir, port, Stdio::null()).await;
    let remote = Client::connect(&node.url).await.expect("connect");
    let partitions = remote.status().await.expect("status").log_partitions;
    assert_eq!(partitions, 4);
    let senders: Vec<TransactionBuilder> = (0..6u8)
        .map(|i| TransactionBuilder::new(CHAIN, Keypair::from_seed([30 + i; 32])))
        .collect();

    // A first run copies what is committed, and stops.
    submit(&remote, &senders, 5).await;
    let report = mirror_until_committed(&node.url, mirror);
    assert!(
        report.contains("chain mirror-test: 30 entries copied, 0 rolled back"),
        "{report}"
    );
    assert_eq!(
        mirrored(&mirror_dir, partitions).0,
        committed_order(&remote, partitions).await
    );

    // A second run resumes where the replica ends; the node is killed and restarted under it.
    submit(&remote, &senders, 3).await;
    let height = remote.status().await.expect("status").height;
    let mut following = start_mirror(&node.url, mirror, &["--until-height", &(height + 1).to_string()]);
    node.kill();
    let node = NodeProcess::start_on(&data_dir, port, Stdio::null()).await;
    let remote = Client::connect(&node.url).await.expect("connect");
    submit(&remote, &senders, 2).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = following.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the mirror did not reach height {}",
            height + 1
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success());
    let mut report = String::new();
    std::io::Read::read_to_string(&mut following.stdout.take().expect("stdout"), &mut report)
        .expect("report");
    assert!(report.contains("0 rolled back"), "{report}");
    assert!(
        !report.contains(" 0 reconnects"),
        "the mirror lost the node and came back: {report}"
    );

    // Nothing twice, nothing missed: a last run catches up, and the replica is exactly the
    // committed order of every partition, all in the node's first epoch.
    let report = mirror_until_committed(&node.url, mirror);
    assert!(report.contains(" 0 rolled back"), "{report}");
    let (hashes, epochs) = mirrored(&mirror_dir, partitions);
    assert_eq!(hashes, committed_order(&remote, partitions).await);
    assert_eq!(hashes.iter().map(Vec::len).sum::<usize>(), 60);
    assert!(epochs.iter().all(|e| e == &[1]), "{epochs:?}");

    // Following with no end, Ctrl-C stops it cleanly, with its report.
    let following = start_mirror(&node.url, mirror, &[]);
    let interrupted = Command::new("kill")
        .args(["-INT", &following.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(interrupted.success());
    let output = following.wait_with_output().expect("the mirror ends");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(report.contains("chain mirror-test: 0 entries copied"), "{report}");

    // A mirror directory belongs to one chain.
    let foreign = NodeProcess::init_and_start(&dir.path().join("other"), "other-chain").await;
    let error = mirror_refused(&foreign.url, mirror);
    assert!(
        error.contains("mirrors chain \"mirror-test\", not \"other-chain\""),
        "{error}"
    );

    // Nor does it go on from another node's log, even of a chain with the same name: every log
    // starts at seqno 1 of epoch 1, and the two would be spliced.
    let namesake = NodeProcess::init_and_start(&dir.path().join("namesake"), CHAIN).await;
    let error = mirror_refused(&namesake.url, mirror);
    assert!(error.contains("this replica copies the log of"), "{error}");
}
