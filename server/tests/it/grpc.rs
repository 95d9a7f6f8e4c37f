//! The gRPC API against an in-process node: submit, query (Arrow IPC and rows), blocks,
//! transactions, accounts, status, and refusals with their status codes.

use std::sync::Arc;

use chainql::wire::ReceiptStatus;
use chainql::{Keypair, TransactionBuilder};
use chainql_server::grpc::{from_ipc, proto, serve_listener};
use chainql_server::{Client, Connection, Node, NodeConfig, Session, init_data_dir};
use tonic::Code;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

struct Served {
    node: Node,
    remote: Client,
    url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<chainql_server::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn serve() -> Served {
    serve_with(|_| {}).await
}

async fn serve_with(configure: impl FnOnce(&mut NodeConfig)) -> Served {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = NodeConfig::new(dir.path());
    config.block_interval_ms = 1;
    configure(&mut config);
    init_data_dir(&config, "grpc-test", &[]).expect("init");
    let node = Node::open(config).await.expect("open");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = node.clone();
    let server = tokio::spawn(async move {
        serve_listener(served, listener, async {
            let _ = stopped.await;
        })
        .await
    });
    let remote = Client::connect(&url).await.expect("connect");
    Served {
        node,
        remote,
        url,
        stop,
        server,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_query_and_read_back_over_grpc() {
    let served = serve().await;
    let key = Keypair::from_seed([11; 32]);
    let builder = TransactionBuilder::new("grpc-test", key.clone());
    let remote = &served.remote;

    let (hash, receipt) = remote
        .submit(
            builder.build(
                0,
                vec![
                    "CREATE TABLE kv (k TEXT PRIMARY KEY, v BIGINT)".into(),
                    "INSERT INTO kv VALUES ('a', 1), ('b', NULL)".into(),
                ],
            ),
            true,
        )
        .await
        .expect("submit");
    let receipt = receipt.expect("a receipt was asked for");
    assert_eq!(receipt.status, ReceiptStatus::Success as i32);
    assert_eq!(receipt.statements[1].rows, 2);

    // Without waiting: the hash comes back at once; the transaction commits soon after.
    let (second, none) = remote
        .submit(
            builder.build(1, vec!["UPDATE kv SET v = 5 WHERE k = 'b'".into()]),
            false,
        )
        .await
        .expect("submit");
    assert!(none.is_none());
    served.node.wait_for_height(2).await.expect("height 2");

    // Query: Arrow IPC and text rows.
    let response = remote
        .raw()
        .query(proto::QueryRequest {
            sql: "SELECT k, v FROM kv ORDER BY k".into(),
            include_rows: true,
        })
        .await
        .expect("query")
        .into_inner();
    assert_eq!(response.row_count, 2);
    assert_eq!(
        response
            .columns
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["k", "v"]
    );
    let texts: Vec<Vec<Option<String>>> = response
        .rows
        .iter()
        .map(|r| r.cells.iter().map(|c| c.text.clone()).collect())
        .collect();
    assert_eq!(
        texts,
        [
            [Some("a".to_string()), Some("1".to_string())],
            [Some("b".to_string()), Some("5".to_string())]
        ]
    );
    let decoded = from_ipc(&response.arrow_ipc).expect("ipc");
    assert_eq!(decoded.row_count(), 2);
    assert_eq!(decoded.schema.field(1).name(), "v");

    // Transactions and blocks by hash and height.
    let (signed, receipt) = remote.transaction(&hash).await.expect("get").expect("committed");
    assert_eq!(chainql::transaction_hash(&signed.transaction), hash);
    assert_eq!(receipt.block_height, 1);
    let (_, receipt) = remote
        .transaction(&second)
        .await
        .expect("get")
        .expect("committed");
    assert_eq!(receipt.block_height, 2);
    let (block, block_hash) = remote.block(1).await.expect("block").expect("block 1");
    assert_eq!(block.transactions.len(), 1);
    assert_eq!(
        block.header.as_ref().map(chainql_consensus::header_hash),
        Some(block_hash)
    );
    assert!(remote.block(99).await.expect("block").is_none());
    let missing = chainql::Hash([9; 32]);
    assert!(remote.transaction(&missing).await.expect("get").is_none());

    // Status and accounts.
    let status = remote.status().await.expect("status");
    assert_eq!(status.chain_id, "grpc-test");
    assert_eq!(status.height, 2);
    assert_eq!(status.state_root, served.node.state().root());
    assert_eq!(remote.next_nonce(&key.address()).await.expect("nonce"), 2);

    // The same session API the shell uses, over gRPC.
    let mut session = Session::new(Connection::Remote(Arc::new(remote.clone())), key.clone())
        .await
        .expect("session");
    session.run("DELETE FROM kv WHERE k = 'a'").await.expect("delete");
    let rows = session
        .query("SELECT count(*) AS n FROM kv")
        .await
        .expect("count");
    assert_eq!(
        chainql_server::format::cell_text(rows.batches[0].column(0), 0).as_deref(),
        Some("1")
    );
    let _ = served.stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_status_codes_and_the_node_survives_them() {
    let served = serve().await;
    let key = Keypair::from_seed([12; 32]);
    let builder = TransactionBuilder::new("grpc-test", key.clone());
    let mut client = served.remote.raw();

    let submit = |signed| proto::SubmitTransactionRequest {
        transaction: Some(signed),
        wait_for_receipt: true,
    };
    let mut bad = builder.build(0, vec!["CREATE TABLE t (id INT PRIMARY KEY)".into()]);
    bad.signature[3] ^= 0x10;
    let status = client
        .submit_transaction(submit(bad))
        .await
        .expect_err("bad signature");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("invalid signature"),
        "{}",
        status.message()
    );

    let ahead = builder.build(5, vec!["CREATE TABLE t (id INT PRIMARY KEY)".into()]);
    let status = client.submit_transaction(submit(ahead)).await.expect_err("nonce");
    assert_eq!(status.code(), Code::FailedPrecondition);

    let status = client
        .submit_transaction(proto::SubmitTransactionRequest {
            transaction: None,
            wait_for_receipt: false,
        })
        .await
        .expect_err("missing transaction");
    assert_eq!(status.code(), Code::InvalidArgument);

    let status = client
        .query(proto::QueryRequest {
            sql: "DROP TABLE t".into(),
            include_rows: false,
        })
        .await
        .expect_err("a write as a query");
    assert_eq!(status.code(), Code::InvalidArgument);

    let status = client
        .query(proto::QueryRequest {
            sql: "SELEC nonsense".into(),
            include_rows: false,
        })
        .await
        .expect_err("not SQL");
    assert_eq!(status.code(), Code::InvalidArgument);

    // A message over the size limit is refused by the transport, not decoded.
    let status = client
        .clone()
        .max_encoding_message_size(usize::MAX)
        .query(proto::QueryRequest {
            sql: "x".repeat(chainql_server::grpc::REQUEST_BYTES_MAX + 1),
            include_rows: false,
        })
        .await
        .expect_err("oversize");
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{status:?}"
    );

    let status = client
        .get_transaction(proto::GetTransactionRequest {
            transaction_hash: vec![1, 2, 3],
        })
        .await
        .expect_err("short hash");
    assert_eq!(status.code(), Code::InvalidArgument);

    // Nothing refused reached the chain, and the node still works.
    assert_eq!(served.node.state().height(), 0);
    let ok = builder.build(0, vec!["CREATE TABLE t (id INT PRIMARY KEY)".into()]);
    let response = client
        .submit_transaction(submit(ok))
        .await
        .expect("valid")
        .into_inner();
    assert_eq!(
        response.receipt.map(|r| r.status),
        Some(ReceiptStatus::Success as i32)
    );
    let _ = served.stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_streams_over_grpc_and_resumes_from_tokens() {
    use std::collections::HashMap;
    let served = serve().await;
    let mut client = served.remote.raw();
    // Eight senders: their transactions spread over the log's partitions.
    let mut hashes = Vec::new();
    for i in 0..8u8 {
        let builder = TransactionBuilder::new("grpc-test", Keypair::from_seed([40 + i; 32]));
        let sql = if i == 0 {
            "CREATE TABLE t (id INT PRIMARY KEY)".to_string()
        } else {
            format!("INSERT INTO t VALUES ({i})")
        };
        let receipt = served
            .node
            .submit_and_wait(builder.build(0, vec![sql]))
            .await
            .expect("commit");
        hashes.push(receipt.transaction_hash);
    }
    let mut stream = client
        .subscribe_log(proto::SubscribeLogRequest::default())
        .await
        .expect("subscribe")
        .into_inner();
    let mut seen: Vec<Vec<u8>> = Vec::new();
    let mut tokens: HashMap<u32, String> = HashMap::new();
    let mut snapshots = 0;
    while seen.len() < 8 || snapshots < 4 {
        let event = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
            .await
            .expect("an event")
            .expect("no error")
            .expect("the stream is open");
        match event.event.expect("an event") {
            proto::log_event::Event::Entry(entry) => {
                let transaction = entry.transaction.expect("the transaction");
                assert_eq!(
                    chainql::transaction_hash(&transaction.transaction).0.to_vec(),
                    entry.transaction_hash
                );
                seen.push(entry.transaction_hash);
                // Stop taking tokens after the fourth entry: the rest is read again on resume.
                if seen.len() <= 4 {
                    tokens.insert(event.partition, event.resume_token.clone());
                }
            }
            proto::log_event::Event::Snapshot(_) => snapshots += 1,
            proto::log_event::Event::Rollback(_) => panic!("no rollbacks here"),
        }
    }
    let mut all = seen.clone();
    all.sort();
    let mut expected = hashes.clone();
    expected.sort();
    assert_eq!(all, expected, "every committed transaction, exactly once");
    drop(stream);

    // Resuming from the tokens gives exactly the entries not covered by them.
    let mut resumed = client
        .subscribe_log(proto::SubscribeLogRequest {
            resume_tokens: tokens.values().cloned().collect(),
            partitions: vec![],
        })
        .await
        .expect("resume")
        .into_inner();
    let mut rest = Vec::new();
    while rest.len() < 4 {
        let event = tokio::time::timeout(std::time::Duration::from_secs(10), resumed.message())
            .await
            .expect("an event")
            .expect("no error")
            .expect("open");
        if let Some(proto::log_event::Event::Entry(entry)) = event.event {
            rest.push(entry.transaction_hash);
        }
    }
    let mut first_four = seen[..4].to_vec();
    first_four.extend(rest);
    first_four.sort();
    assert_eq!(
        first_four, expected,
        "the first four plus the resumed rest are all, without repeats"
    );

    // Bad tokens are refused with a reason.
    let status = client
        .subscribe_log(proto::SubscribeLogRequest {
            resume_tokens: vec!["not a token".into()],
            partitions: vec![],
        })
        .await
        .expect_err("malformed");
    assert_eq!(status.code(), Code::InvalidArgument);
    let foreign =
        chainql_sequencer::Position::start(chainql_sequencer::PartitionId(0)).to_token("another-chain");
    let status = client
        .subscribe_log(proto::SubscribeLogRequest {
            resume_tokens: vec![foreign],
            partitions: vec![],
        })
        .await
        .expect_err("another chain");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("another-chain"), "{}", status.message());
    let other_partition =
        chainql_sequencer::Position::start(chainql_sequencer::PartitionId(9)).to_token("grpc-test");
    let status = client
        .subscribe_log(proto::SubscribeLogRequest {
            resume_tokens: vec![other_partition],
            partitions: vec![],
        })
        .await
        .expect_err("a partition this log does not have");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("partition 9"), "{}", status.message());
    let future = chainql_sequencer::Position {
        next_seqno: 1000,
        epoch: 1,
        ..chainql_sequencer::Position::start(chainql_sequencer::PartitionId(0))
    }
    .to_token("grpc-test");
    let status = client
        .subscribe_log(proto::SubscribeLogRequest {
            resume_tokens: vec![future],
            partitions: vec![],
        })
        .await
        .expect_err("a seqno from the future");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("from the future"),
        "{}",
        status.message()
    );
    let status = client
        .subscribe_log(proto::SubscribeLogRequest {
            resume_tokens: vec![],
            partitions: vec![99],
        })
        .await
        .expect_err("no such partition");
    assert_eq!(status.code(), Code::InvalidArgument);
    let _ = served.stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_released_below_a_checkpoint_are_out_of_range_for_readers_and_mirrors() {
    let served = serve_with(|config| {
        config.log_partitions = 1;
        config.transaction_limits.transaction_bytes_max = 4 << 10;
        config.log_segment_bytes_max = 8 << 10;
        config.checkpoint_interval = 2;
        config.log_retention = true;
    })
    .await;
    let builder = TransactionBuilder::new("grpc-test", Keypair::from_seed([12; 32]));
    let mut client = served.remote.raw();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut nonce = 0;
    // Fill a few segments, until a checkpoint lets the first ones go.
    let status = loop {
        assert!(std::time::Instant::now() < deadline, "no segment was released");
        for _ in 0..20 {
            let statement = format!("CREATE TABLE released_{nonce} (id BIGINT PRIMARY KEY, note TEXT)");
            served
                .node
                .submit_and_wait(builder.build(nonce, vec![statement]))
                .await
                .expect("committed");
            nonce += 1;
        }
        match client.subscribe_log(proto::SubscribeLogRequest::default()).await {
            Err(status) => break status,
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    };
    assert_eq!(status.code(), Code::OutOfRange, "{}", status.message());
    assert!(
        status.message().contains("released after a checkpoint"),
        "{}",
        status.message()
    );

    // A new mirror cannot start from the beginning, and says why.
    let mirror = tempfile::tempdir().expect("tempdir");
    let (_running, stop) = tokio::sync::watch::channel(false);
    let error = chainql_server::mirror::run_mirror(
        &served.url,
        mirror.path(),
        chainql_server::mirror::Until::Committed,
        stop,
    )
    .await
    .expect_err("released entries");
    assert!(
        error.to_string().contains("released after a checkpoint"),
        "{error}"
    );
    let _ = served.stop.send(());
}

/// The next message of a stream, failing the test after ten seconds.
async fn next<T>(stream: &mut (impl futures::Stream<Item = chainql_server::Result<T>> + Unpin)) -> T {
    use futures::StreamExt;
    tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
        .await
        .expect("a message within ten seconds")
        .expect("the stream is open")
        .expect("no error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_streams_blocks_receipts_and_events_and_resumes_by_height() {
    use chainql_server::SubscribeOptions;
    let served = serve().await;
    let owner = TransactionBuilder::new("grpc-test", Keypair::from_seed([21; 32]));
    let remote = &served.remote;
    remote
        .execute(
            &owner,
            vec![
                "CREATE TABLE notes (id BIGINT PRIMARY KEY, body TEXT)".into(),
                "CREATE CONTRACT note(id BIGINT, body TEXT) PUBLIC AS $$ \
                   INSERT INTO notes VALUES (id, body); EMIT noted(id, body); $$"
                    .into(),
                "CREATE CONTRACT shout(word TEXT) PUBLIC AS $$ EMIT shouted(word); $$".into(),
            ],
        )
        .await
        .expect("deploy");
    for id in 1..=3 {
        remote
            .execute(
                &owner,
                vec![format!("CALL note({id}, 'n{id}')"), "CALL shout('hey')".into()],
            )
            .await
            .expect("call");
    }
    let tip = served.node.state().height();
    assert_eq!(tip, 4, "one block per transaction here");

    // From the start, with everything: blocks 1..=4 in order, each with its receipts.
    let everything = SubscribeOptions {
        transactions: true,
        receipts: true,
        contracts: vec![],
    };
    let mut stream = remote.subscribe(0, everything.clone()).await.expect("subscribe");
    let mut events = Vec::new();
    for height in 1..=tip {
        let block = next(&mut stream).await;
        assert_eq!(block.height, height);
        let (stored, hash) = remote.block(height).await.expect("get").expect("block");
        assert_eq!(block.block_hash, hash.0.to_vec());
        assert_eq!(block.block.as_ref(), Some(&stored), "the whole block");
        assert_eq!(block.receipts.len(), stored.transactions.len());
        for (receipt, signed) in block.receipts.iter().zip(&stored.transactions) {
            assert_eq!(
                receipt.transaction_hash,
                chainql::transaction_hash(&signed.transaction).0.to_vec()
            );
            assert_eq!(receipt.status, ReceiptStatus::Success as i32);
        }
        for event in &block.events {
            let event = event.event.as_ref().expect("event");
            let args: Vec<_> = event
                .args
                .iter()
                .map(|a| a.text.clone().unwrap_or_default())
                .collect();
            events.push(format!("{}.{}({})", event.contract, event.name, args.join(",")));
        }
    }
    assert_eq!(
        events,
        [
            "note.noted(1,n1)",
            "shout.shouted(hey)",
            "note.noted(2,n2)",
            "shout.shouted(hey)",
            "note.noted(3,n3)",
            "shout.shouted(hey)"
        ]
    );

    // A new block reaches the open stream as it commits.
    remote
        .execute(&owner, vec!["CALL note(4, 'live')".into()])
        .await
        .expect("call");
    let live = next(&mut stream).await;
    assert_eq!(live.height, tip + 1);
    assert_eq!(live.events.len(), 1);
    drop(stream);

    // Resuming from a height: exactly the blocks from there on. Without the options, blocks
    // come as header and signature only, and the filter keeps one contract's events.
    let only_notes = SubscribeOptions {
        contracts: vec!["note".into()],
        ..SubscribeOptions::default()
    };
    let mut resumed = remote.subscribe(3, only_notes).await.expect("resume");
    let third = next(&mut resumed).await;
    assert_eq!(third.height, 3);
    assert!(third.receipts.is_empty());
    let block = third.block.expect("block");
    assert!(block.header.is_some() && !block.proposer_signature.is_empty());
    assert!(block.transactions.is_empty(), "transactions only on request");
    assert_eq!(third.events.len(), 1, "only note's events: {:?}", third.events);
    assert_eq!(third.events[0].transaction_index, 0);
    assert_eq!(next(&mut resumed).await.height, 4);
    assert_eq!(next(&mut resumed).await.height, 5);

    // A height beyond the tip waits for its block.
    let mut ahead = remote
        .subscribe(7, SubscribeOptions::default())
        .await
        .expect("ahead");
    remote
        .execute(&owner, vec!["CALL shout('six')".into()])
        .await
        .expect("6");
    remote
        .execute(&owner, vec!["CALL shout('seven')".into()])
        .await
        .expect("7");
    let seventh = next(&mut ahead).await;
    assert_eq!(seventh.height, 7);
    let text = seventh.events[0].event.as_ref().expect("event").args[0]
        .text
        .clone();
    assert_eq!(text.as_deref(), Some("seven"));

    let status = remote
        .raw()
        .subscribe(proto::SubscribeRequest {
            contracts: vec!["c".into(); 1000],
            ..Default::default()
        })
        .await
        .expect_err("too many contracts");
    assert_eq!(status.code(), Code::InvalidArgument);

    // Streams end when the server stops, so stopping does not wait for subscribers.
    let _ = served.stop.send(());
    let end = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        use futures::StreamExt;
        loop {
            match resumed.next().await {
                Some(Ok(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ended at shutdown");
    // A clean end of stream, not the connection dropped after the grace period.
    assert!(end.is_none(), "{end:?}");
    tokio::time::timeout(std::time::Duration::from_secs(10), served.server)
        .await
        .expect("the server stopped with subscribers connected")
        .expect("join")
        .expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_describe_the_documented_api() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let served = serve().await;
    let channel = tonic::transport::Endpoint::from_shared(served.url.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");

    let mut health = HealthClient::new(channel.clone());
    for service in ["", "chainql.node.v1.Node"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(unknown.code(), Code::NotFound);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "chainql.node.v1.Node".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.message().await.expect("ok").expect("a status");
    assert_eq!(first.status, ServingStatus::Serving as i32);

    // Reflection: what the services are, and the files that define them.
    let mut reflection = ServerReflectionClient::new(channel);
    let MessageResponse::ListServicesResponse(list) =
        reflect(&mut reflection, MessageRequest::ListServices(String::new())).await
    else {
        panic!("not a service list")
    };
    let mut names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert!(names.contains(&"chainql.node.v1.Node".to_string()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");
    let symbol = MessageRequest::FileContainingSymbol("chainql.node.v1.Node".into());
    let mut files = descriptors(reflect(&mut reflection, symbol).await);
    let node = files
        .iter()
        .find(|f| f.name() == "node.proto")
        .expect("node.proto")
        .clone();
    assert_eq!(node.dependency, ["chainql.proto"]);
    // A tool then asks for the imports by name.
    let import = MessageRequest::FileByFilename("chainql.proto".into());
    files.extend(descriptors(reflect(&mut reflection, import).await));
    let names: Vec<_> = files.iter().map(|f| f.name().to_string()).collect();
    assert!(names.contains(&"chainql.proto".to_string()), "{names:?}");
    let methods: Vec<_> = node.service[0]
        .method
        .iter()
        .map(|m| m.name().to_string())
        .collect();
    assert!(methods.contains(&"Subscribe".to_string()), "{methods:?}");

    // Every service, method, message, field, enum and value of the public API is documented:
    // reflection serves the comments, so tools show them.
    let mut undocumented = Vec::new();
    for file in &files {
        for missing in chainql_server::grpc::undocumented(file) {
            undocumented.push(format!("{}: {missing}", file.name()));
        }
    }
    assert!(undocumented.is_empty(), "undocumented: {undocumented:#?}");

    // Stopping: watchers hear NOT_SERVING, and the server stops although the watch stays open.
    let _ = served.stop.send(());
    let last = tokio::time::timeout(std::time::Duration::from_secs(10), watch.message())
        .await
        .expect("a status within ten seconds")
        .expect("ok")
        .expect("a status");
    assert_eq!(last.status, ServingStatus::NotServing as i32);
    tokio::time::timeout(std::time::Duration::from_secs(30), served.server)
        .await
        .expect("the server stopped with a watch open")
        .expect("join")
        .expect("clean stop");
}

/// Asks the server's reflection service one question.
async fn reflect(
    client: &mut ServerReflectionClient<tonic::transport::Channel>,
    request: MessageRequest,
) -> MessageResponse {
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = client
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    answers
        .message()
        .await
        .expect("ok")
        .expect("an answer")
        .message_response
        .expect("a response")
}

/// The file descriptors of a reflection answer.
fn descriptors(answer: MessageResponse) -> Vec<prost_types::FileDescriptorProto> {
    use prost::Message;
    let MessageResponse::FileDescriptorResponse(files) = answer else {
        panic!("not a file descriptor: {answer:?}")
    };
    files
        .file_descriptor_proto
        .iter()
        .map(|bytes| prost_types::FileDescriptorProto::decode(&bytes[..]).expect("descriptor"))
        .collect()
}
