//! Proof of stake between processes: a node outside the genesis set follows the chain, stakes,
//! and once the epoch ends its stake is voting power. Quorums are counted in stake, not in
//! validators: with the newcomer holding most of the stake, it and one other validator commit
//! blocks while the three genesis validators together cannot. `chainql verify block` checks a
//! block of the new set by following the sets the chain announced from the genesis.
//!
//! Until it joins, the newcomer's log is a replica of validator 0's, and what it is sent goes
//! through validator 0; once it joins, it takes its log over in a new epoch of its own.

use std::time::{Duration, Instant};

use chainql::{Hash, Keypair, TransactionBuilder};
use chainql_server::grpc::proto;

use crate::support::{DevnetProcesses, chainql};

const NODES: usize = 4;
const EPOCH: u64 = 4;

type Devnet = DevnetProcesses;

/// Node i's key, which its devnet wrote.
fn key(devnet: &Devnet, i: usize) -> Keypair {
    Keypair::read_file(&devnet.dir.join(format!("validator-{i}/keys/validator.key"))).expect("key")
}

/// Commits transactions through node `via` until it has committed block `height`.
async fn advance_to(devnet: &Devnet, via: usize, height: u64, writer: &TransactionBuilder) {
    let client = devnet.client(via).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while client.status().await.expect("status").height < height {
        assert!(
            Instant::now() < deadline,
            "height {height} never came (logs in {})",
            devnet.dir.display()
        );
        client
            .execute(writer, vec!["INSERT INTO ticks VALUES (1)".into()])
            .await
            .expect("a tick commits");
    }
}

/// Waits until node `via` has committed block `height`: validators decide a block at moments
/// apart, and a follower copies it after some validator has.
async fn wait_height(devnet: &Devnet, via: usize, height: u64) {
    let client = devnet.client(via).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while client.status().await.expect("status").height < height {
        assert!(
            Instant::now() < deadline,
            "node {via} never reached height {height} (logs in {})",
            devnet.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One log entry as `SubscribeLog` shows it: partition, seqno, epoch and transaction hash.
type Logged = (u32, u64, u64, Vec<u8>);

/// Reads node `via`'s log from the start until `until` holds for what was read; returns every
/// entry read, by partition and seqno.
async fn read_log(devnet: &Devnet, via: usize, until: impl Fn(&[Logged]) -> bool) -> Vec<Logged> {
    let mut stream = devnet
        .client(via)
        .await
        .raw()
        .subscribe_log(proto::SubscribeLogRequest::default())
        .await
        .expect("subscribe")
        .into_inner();
    let mut entries = Vec::new();
    while !until(&entries) {
        let event = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("a log event in time")
            .expect("no error")
            .expect("open");
        if let Some(proto::log_event::Event::Entry(entry)) = event.event {
            entries.push((event.partition, entry.seqno, entry.epoch, entry.transaction_hash));
        }
    }
    entries.sort();
    entries
}

/// The power a node reports for `address` at its next height.
async fn power(devnet: &Devnet, via: usize, address: &chainql::Address) -> i64 {
    let result = devnet
        .client(via)
        .await
        .query(&format!(
            "SELECT power FROM chain.validators WHERE address = '{}'",
            address.to_hex()
        ))
        .await
        .expect("query");
    let batch = result
        .batches
        .first()
        .filter(|b| b.num_rows() == 1)
        .expect("one row");
    chainql_server::format::cell_text(batch.column(0), 0)
        .expect("a value")
        .parse()
        .expect("a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_stakes_into_the_set_and_stake_not_head_count_makes_the_quorum() {
    let dir = tempfile::tempdir().expect("tempdir");
    let epoch = EPOCH.to_string();
    let args = ["--validators", "3", "--followers", "1", "--epoch-blocks", &epoch];
    let mut devnet = Devnet::write(dir.path(), NODES, &args);
    for i in 0..NODES {
        devnet.start(i).await;
    }
    let newcomer = TransactionBuilder::new("devnet", key(&devnet, 3));
    let address = newcomer.key.address();
    let writer = TransactionBuilder::new("devnet", key(&devnet, 0));
    devnet
        .client(0)
        .await
        .execute(&writer, vec!["CREATE TABLE ticks (n BIGINT)".into()])
        .await
        .expect("create");

    // The follower stakes through its own node: its stake is bonding, with no power yet.
    let receipt = devnet
        .client(3)
        .await
        .execute(&newcomer, vec!["STAKE 500".into()])
        .await
        .expect("stake");
    assert!(receipt.error.is_empty(), "{}", receipt.error);
    wait_height(&devnet, 0, receipt.block_height).await;
    assert_eq!(power(&devnet, 0, &address).await, 0);

    // Its node handed the stake to validator 0, whose log it copies: both logs hold the
    // table's creation and the stake, at the same seqnos and in validator 0's first epoch.
    let stake = receipt.transaction_hash.clone();
    let copied = read_log(&devnet, 3, |entries| entries.len() == 2).await;
    assert_eq!(copied, read_log(&devnet, 0, |entries| entries.len() == 2).await);
    assert!(
        copied
            .iter()
            .any(|(_, _, epoch, hash)| *hash == stake && *epoch == 1),
        "{copied:?}"
    );

    // Restarted, the replica keeps what it copied (no epoch of its own) and goes on copying.
    devnet.kill(3);
    devnet.start(3).await;
    devnet
        .client(0)
        .await
        .execute(&writer, vec!["INSERT INTO ticks VALUES (0)".into()])
        .await
        .expect("a tick");
    let copied = read_log(&devnet, 3, |entries| entries.len() == 3).await;
    assert_eq!(copied, read_log(&devnet, 0, |entries| entries.len() == 3).await);
    assert!(copied.iter().all(|(_, _, epoch, _)| *epoch == 1), "{copied:?}");

    // The epoch ends at the next multiple of EPOCH; the set it makes commits two heights later.
    let boundary = receipt.block_height.div_ceil(EPOCH) * EPOCH;
    advance_to(&devnet, 0, boundary + 1, &writer).await;
    assert_eq!(power(&devnet, 0, &address).await, 500);
    wait_height(&devnet, 3, boundary + 1).await;
    assert_eq!(power(&devnet, 3, &address).await, 500, "the follower agrees");

    // A validator now, it took its log over: what it admits goes into epoch 2, led by itself,
    // after the entries it copied (the stake still among them, in epoch 1).
    let nonce = devnet.client(3).await.next_nonce(&address).await.expect("nonce");
    let receipt = devnet
        .client(3)
        .await
        .execute(
            &newcomer,
            vec!["CREATE TABLE newcomer_table (id INT PRIMARY KEY)".into()],
        )
        .await
        .expect("admitted by the newcomer");
    assert!(receipt.error.is_empty(), "{}", receipt.error);
    let own = Hash::from_slice(&receipt.transaction_hash)
        .expect("a hash")
        .0
        .to_vec();
    let log = read_log(&devnet, 3, |entries| entries.iter().any(|e| e.3 == own)).await;
    let (partition, seqno, epoch, _) = log.iter().find(|e| e.3 == own).expect("logged").clone();
    assert_eq!(epoch, 2, "{log:?}");
    assert!(
        log.iter()
            .any(|e| e.3 == stake && e.2 == 1 && (e.0, e.1) < (partition, seqno))
    );
    assert_eq!(
        nonce + 1,
        devnet.client(3).await.next_nonce(&address).await.expect("nonce")
    );

    // 500 of 800: the newcomer and any one validator are more than 2/3 of the stake...
    devnet.kill(1);
    devnet.kill(2);
    advance_to(&devnet, 0, boundary + 4, &writer).await;
    let height = devnet.client(0).await.status().await.expect("status").height;
    let genesis = devnet.dir.join("genesis.json");
    let out = chainql(&[
        "verify",
        "block",
        &height.to_string(),
        "--connect",
        &devnet.url(0),
        "--genesis",
        genesis.to_str().expect("UTF-8"),
    ]);
    assert!(out.contains("is committed"), "{out}");
    assert!(out.contains(&format!("signed by {address}")), "{out}");
    assert!(
        out.contains(&format!("as block {} announced them", boundary + 1)),
        "{out}"
    );

    // ...while the three genesis validators, 300 of 800, are not.
    devnet.start(1).await;
    devnet.start(2).await;
    devnet.kill(3);
    let client = devnet.client(0).await;
    let before = client.status().await.expect("status").height;
    let nonce = client.next_nonce(&writer.key.address()).await.expect("nonce");
    let (hash, _) = client
        .submit(
            writer.build(nonce, vec!["INSERT INTO ticks VALUES (2)".into()]),
            false,
        )
        .await
        .expect("admitted");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        client.status().await.expect("status").height,
        before,
        "no quorum without the newcomer"
    );
    assert!(client.transaction(&hash).await.expect("lookup").is_none());

    // The newcomer returns and the waiting transaction commits.
    devnet.start(3).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while client.transaction(&hash).await.expect("lookup").is_none() {
        assert!(Instant::now() < deadline, "the transaction never committed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
