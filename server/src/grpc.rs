//! The gRPC API (`chainql/proto/node.proto`) served over a [`Node`], beside the standard health
//! service and server reflection. The client is in [`crate::client`].

use std::net::SocketAddr;

use tokio::sync::watch;
use tonic::{Request, Response, Status};

use chainql::{Address, Hash};
use chainql_executor::QueryResult;

use crate::error::{Error, Result};
use crate::format::cell_text;
use crate::node::Node;

/// Generated gRPC types and stubs.
pub mod proto {
    #![allow(missing_debug_implementations, clippy::all)]
    tonic::include_proto!("chainql.node.v1");

    /// The compiled `node.proto` and `validator.proto` with the files they import, comments
    /// included, as served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("chainql_descriptor");
}

use proto::node_server::{Node as NodeApi, NodeServer};

/// The largest request the server decodes: a transaction at its size limit, with room to spare.
pub const REQUEST_BYTES_MAX: usize = 4 << 20;
/// The largest response: query answers are bounded in rows, and this bounds them in bytes.
pub const RESPONSE_BYTES_MAX: usize = 256 << 20;

/// Blocks a `Subscribe` stream may run ahead of its client before the node waits for it.
const SUBSCRIBE_BUFFER: usize = 16;
/// How long a stopping server waits for open calls before dropping them.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
/// The most contracts a `Subscribe` request may name.
const SUBSCRIBE_CONTRACTS_MAX: usize = 256;

/// Serves the API on `address` until `shutdown` completes.
pub async fn serve(
    node: Node,
    address: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| Error::Client(format!("gRPC server on {address}: {e}")))?;
    serve_listener(node, listener, shutdown).await
}

/// Serves the API on an already bound listener (tests bind port 0 and read the port back).
///
/// When `shutdown` completes, the health service reports NOT_SERVING and the streams end, so
/// the server's graceful stop does not wait for subscribers that never hang up.
pub async fn serve_listener(
    node: Node,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    let (closing, closed) = watch::channel(false);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<NodeServer<Api>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Client(format!("gRPC reflection: {e}")))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| Error::Client(format!("gRPC reflection: {e}")))?;
    let validator_node = node.clone();
    let service = NodeServer::new(Api {
        node,
        closed: closed.clone(),
    })
    .max_decoding_message_size(REQUEST_BYTES_MAX)
    .max_encoding_message_size(RESPONSE_BYTES_MAX);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let shutdown = async move {
        shutdown.await;
        health.set_not_serving::<NodeServer<Api>>().await;
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        let _ = closing.send(true);
    };
    let server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(crate::validator::ValidatorService::server(validator_node))
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown);
    // A graceful stop waits for open calls; a client watching health never ends its call, so
    // after a grace period the remaining connections are dropped.
    let grace = async move {
        until_closed(closed).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        served = server => served.map_err(|e| Error::Client(format!("gRPC server: {e}"))),
        () = grace => {
            tracing::info!("gRPC calls still open after the grace period were dropped");
            Ok(())
        }
    }
}

/// The elements of `file` (services, methods, messages, fields, oneofs, enums, values) that
/// have no leading comment, by name: the public API documents every one.
pub fn undocumented(file: &prost_types::FileDescriptorProto) -> Vec<String> {
    // Field numbers in descriptor.proto, which source-code locations use as their paths.
    const MESSAGE: i32 = 4;
    const ENUM: i32 = 5;
    const SERVICE: i32 = 6;
    const METHOD: i32 = 2;
    const FIELD: i32 = 2;
    const NESTED: i32 = 3;
    const NESTED_ENUM: i32 = 4;
    const ONEOF: i32 = 8;
    const VALUE: i32 = 2;

    struct Walk {
        documented: std::collections::HashSet<Vec<i32>>,
        missing: Vec<String>,
    }
    impl Walk {
        fn check(&mut self, path: &[i32], name: String) {
            if !self.documented.contains(path) {
                self.missing.push(name);
            }
        }
        fn enumeration(&mut self, path: &[i32], e: &prost_types::EnumDescriptorProto) {
            self.check(path, format!("enum {}", e.name()));
            for (i, value) in e.value.iter().enumerate() {
                let path = [path, &[VALUE, i as i32]].concat();
                self.check(&path, format!("value {}.{}", e.name(), value.name()));
            }
        }
        fn message(&mut self, path: &[i32], m: &prost_types::DescriptorProto) {
            self.check(path, format!("message {}", m.name()));
            for (i, field) in m.field.iter().enumerate() {
                let path = [path, &[FIELD, i as i32]].concat();
                self.check(&path, format!("field {}.{}", m.name(), field.name()));
            }
            for (i, oneof) in m.oneof_decl.iter().enumerate() {
                // proto3 `optional` makes a synthetic oneof that has no place in the source.
                let synthetic = m
                    .field
                    .iter()
                    .any(|f| f.oneof_index == Some(i as i32) && f.proto3_optional());
                if !synthetic {
                    let path = [path, &[ONEOF, i as i32]].concat();
                    self.check(&path, format!("oneof {}.{}", m.name(), oneof.name()));
                }
            }
            for (i, nested) in m.nested_type.iter().enumerate() {
                self.message(&[path, &[NESTED, i as i32]].concat(), nested);
            }
            for (i, e) in m.enum_type.iter().enumerate() {
                self.enumeration(&[path, &[NESTED_ENUM, i as i32]].concat(), e);
            }
        }
    }

    let documented = file
        .source_code_info
        .iter()
        .flat_map(|info| &info.location)
        .filter(|location| !location.leading_comments().trim().is_empty())
        .map(|location| location.path.clone())
        .collect();
    let mut walk = Walk {
        documented,
        missing: Vec::new(),
    };
    for (i, service) in file.service.iter().enumerate() {
        walk.check(&[SERVICE, i as i32], format!("service {}", service.name()));
        for (j, method) in service.method.iter().enumerate() {
            walk.check(
                &[SERVICE, i as i32, METHOD, j as i32],
                format!("method {}.{}", service.name(), method.name()),
            );
        }
    }
    for (i, message) in file.message_type.iter().enumerate() {
        walk.message(&[MESSAGE, i as i32], message);
    }
    for (i, e) in file.enum_type.iter().enumerate() {
        walk.enumeration(&[ENUM, i as i32], e);
    }
    walk.missing
}

struct Api {
    node: Node,
    /// Becomes true when the server begins to stop: streams end then.
    closed: watch::Receiver<bool>,
}

/// Completes when `closed` becomes true (or its sender is gone).
async fn until_closed(mut closed: watch::Receiver<bool>) {
    let _ = closed.wait_for(|closed| *closed).await;
}

/// The wire form of a committed block, as `request` asked for it.
fn committed_block(
    (mut block, hash, receipts): (chainql::wire::Block, Hash, Vec<chainql::wire::Receipt>),
    request: &proto::SubscribeRequest,
) -> proto::CommittedBlock {
    let height = block.header.as_ref().map_or(0, |h| h.height);
    let mut events = Vec::new();
    for receipt in &receipts {
        for event in &receipt.events {
            if request.contracts.is_empty() || request.contracts.contains(&event.contract) {
                events.push(proto::BlockEvent {
                    transaction_index: receipt.index,
                    transaction_hash: receipt.transaction_hash.clone(),
                    event: Some(event.clone()),
                });
            }
        }
    }
    if !request.include_transactions {
        block.transactions.clear();
    }
    let receipts = if request.include_receipts {
        receipts
            .into_iter()
            .map(|mut receipt| {
                receipt.result.clear();
                receipt
            })
            .collect()
    } else {
        Vec::new()
    };
    proto::CommittedBlock {
        height,
        block_hash: hash.0.to_vec(),
        block: Some(block),
        receipts,
        events,
    }
}

fn hash_field(bytes: &[u8], what: &str) -> Result<Hash, Status> {
    Hash::from_slice(bytes).ok_or_else(|| Status::invalid_argument(format!("{what} must be 32 bytes")))
}

/// Decodes an Arrow IPC stream.
pub fn from_ipc(bytes: &[u8]) -> Result<QueryResult> {
    QueryResult::from_ipc(bytes).map_err(|e| Error::Client(format!("malformed Arrow IPC result: {e}")))
}

/// Converts a log delivery into its wire form.
fn log_event(delivery: chainql_sequencer::Delivery, chain_id: &str) -> Result<proto::LogEvent, Status> {
    use chainql_sequencer::Event;
    let partition = delivery.position.partition.0;
    let event = match delivery.event {
        Event::Entry(entry) => {
            let transaction = <chainql::wire::SignedTransaction as prost::Message>::decode(
                &entry.payload[..],
            )
            .map_err(|e| {
                Status::internal(format!(
                    "log entry {partition}/{} does not decode: {e}",
                    entry.seqno
                ))
            })?;
            proto::log_event::Event::Entry(proto::LogEntry {
                seqno: entry.seqno,
                epoch: entry.epoch,
                transaction_hash: chainql::transaction_hash(&transaction.transaction).0.to_vec(),
                transaction: Some(transaction),
            })
        }
        Event::Snapshot { seqno, height, .. } => {
            proto::log_event::Event::Snapshot(proto::LogSnapshot { seqno, height })
        }
        Event::Rollback { to_seqno, .. } => {
            proto::log_event::Event::Rollback(proto::LogRollback { to_seqno })
        }
    };
    Ok(proto::LogEvent {
        partition,
        event: Some(event),
        resume_token: delivery.position.to_token(chain_id),
    })
}

type LogEventStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<proto::LogEvent, Status>> + Send>>;
type CommittedBlockStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<proto::CommittedBlock, Status>> + Send>>;

#[tonic::async_trait]
impl NodeApi for Api {
    type SubscribeLogStream = LogEventStream;
    type SubscribeStream = CommittedBlockStream;

    async fn subscribe(
        &self,
        request: Request<proto::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let request = request.into_inner();
        if request.contracts.len() > SUBSCRIBE_CONTRACTS_MAX {
            return Err(Status::invalid_argument(format!(
                "at most {SUBSCRIBE_CONTRACTS_MAX} contracts may be named"
            )));
        }
        let node = self.node.clone();
        let closed = self.closed.clone();
        let (sender, receiver) = tokio::sync::mpsc::channel(SUBSCRIBE_BUFFER);
        tokio::spawn(async move {
            let mut published = node.published();
            let mut next = request.from_height.max(1);
            loop {
                let tip = *published.borrow_and_update();
                while next <= tip {
                    // Reading a block is file IO: off the async workers.
                    let reader = node.clone();
                    let read = tokio::task::spawn_blocking(move || reader.committed_block(next)).await;
                    let message = match read {
                        Ok(Ok(Some(parts))) => Ok(committed_block(parts, &request)),
                        Ok(Ok(None)) => Err(Status::internal(format!("block {next} is not published"))),
                        Ok(Err(error)) => Err(Status::from(error)),
                        Err(error) => Err(Status::internal(format!("reading block {next}: {error}"))),
                    };
                    let failed = message.is_err();
                    if sender.send(message).await.is_err() || failed {
                        return;
                    }
                    next += 1;
                }
                tokio::select! {
                    changed = published.changed() => if changed.is_err() { return },
                    () = sender.closed() => return,
                    () = until_closed(closed.clone()) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn subscribe_log(
        &self,
        request: Request<proto::SubscribeLogRequest>,
    ) -> Result<Response<Self::SubscribeLogStream>, Status> {
        use futures::StreamExt;
        let request = request.into_inner();
        let positions = self
            .node
            .log_positions(&request.resume_tokens, &request.partitions)?;
        let subscription = self.node.subscribe_log(&positions)?;
        let chain_id = self.node.chain_id().to_string();
        let stream = subscription
            .map(move |delivery| match delivery {
                Ok(delivery) => log_event(delivery, &chain_id),
                Err(error) => Err(Status::from(Error::from(error))),
            })
            .take_until(until_closed(self.closed.clone()));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn submit_transaction(
        &self,
        request: Request<proto::SubmitTransactionRequest>,
    ) -> Result<Response<proto::SubmitTransactionResponse>, Status> {
        let request = request.into_inner();
        let signed = request
            .transaction
            .ok_or_else(|| Status::invalid_argument("transaction is missing"))?;
        let hash = chainql::transaction_hash(&signed.transaction);
        let receipt = if request.wait_for_receipt {
            Some(self.node.submit_and_wait(signed).await?)
        } else {
            self.node.submit(signed).await?;
            None
        };
        Ok(Response::new(proto::SubmitTransactionResponse {
            transaction_hash: hash.0.to_vec(),
            receipt,
        }))
    }

    async fn query(
        &self,
        request: Request<proto::QueryRequest>,
    ) -> Result<Response<proto::QueryResponse>, Status> {
        let request = request.into_inner();
        let (result, height) = self.node.query(&request.sql).await?;
        let columns = result
            .schema
            .fields()
            .iter()
            .map(|f| proto::Column {
                name: f.name().clone(),
                data_type: f.data_type().to_string(),
                nullable: f.is_nullable(),
            })
            .collect();
        let mut rows = Vec::new();
        if request.include_rows {
            for batch in &result.batches {
                for row in 0..batch.num_rows() {
                    let cells = batch
                        .columns()
                        .iter()
                        .map(|column| proto::Cell {
                            text: cell_text(column, row),
                        })
                        .collect();
                    rows.push(proto::Row { cells });
                }
            }
        }
        Ok(Response::new(proto::QueryResponse {
            columns,
            arrow_ipc: result.to_ipc().map_err(Error::from)?,
            rows,
            row_count: result.row_count() as u64,
            height,
        }))
    }

    async fn get_block(
        &self,
        request: Request<proto::GetBlockRequest>,
    ) -> Result<Response<proto::GetBlockResponse>, Status> {
        let height = request.into_inner().height;
        let (block, hash) = self
            .node
            .block_and_hash(height)?
            .ok_or_else(|| Status::not_found(format!("no block at height {height}")))?;
        Ok(Response::new(proto::GetBlockResponse {
            block: Some(block),
            block_hash: hash.0.to_vec(),
        }))
    }

    async fn get_transaction(
        &self,
        request: Request<proto::GetTransactionRequest>,
    ) -> Result<Response<proto::GetTransactionResponse>, Status> {
        let hash = hash_field(&request.into_inner().transaction_hash, "transaction_hash")?;
        let (transaction, receipt) = self
            .node
            .transaction(&hash)?
            .ok_or_else(|| Status::not_found(format!("no committed transaction {hash}")))?;
        Ok(Response::new(proto::GetTransactionResponse {
            transaction: Some(transaction),
            receipt: Some(receipt),
        }))
    }

    async fn get_account(
        &self,
        request: Request<proto::GetAccountRequest>,
    ) -> Result<Response<proto::GetAccountResponse>, Status> {
        let address = Address::from_hex(&request.into_inner().address).map_err(Error::from)?;
        let account = self.node.state().account(&address);
        Ok(Response::new(proto::GetAccountResponse {
            balance: account.balance,
            committed_nonce: account.nonce,
            next_nonce: self.node.next_nonce(&address).await,
        }))
    }

    async fn status(
        &self,
        _request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        let status = self.node.status();
        Ok(Response::new(proto::StatusResponse {
            chain_id: status.chain_id,
            height: status.height,
            block_hash: status.block_hash.0.to_vec(),
            state_root: status.state_root.0.to_vec(),
            block_time_ms: status.block_time_ms,
            validator: status.validator.to_hex(),
            pending_transactions: status.pending_transactions,
            log_partitions: status.log_partitions,
            version: env!("CARGO_PKG_VERSION").to_string(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn every_element_of_the_public_api_is_documented() {
        let set = prost_types::FileDescriptorSet::decode(super::proto::FILE_DESCRIPTOR_SET)
            .expect("the compiled descriptors decode");
        let names: Vec<_> = set.file.iter().map(|f| f.name().to_string()).collect();
        assert_eq!(
            names,
            [
                "consensus.proto",
                "chainql.proto",
                "node.proto",
                "validator.proto"
            ]
        );
        for file in &set.file {
            let missing = super::undocumented(file);
            assert!(missing.is_empty(), "{}: {missing:#?}", file.name());
        }
    }

    #[test]
    fn an_undocumented_field_is_found() {
        let set = prost_types::FileDescriptorSet::decode(super::proto::FILE_DESCRIPTOR_SET)
            .expect("the compiled descriptors decode");
        let mut file = set
            .file
            .iter()
            .find(|f| f.name() == "chainql.proto")
            .expect("chainql.proto")
            .clone();
        let info = file.source_code_info.as_mut().expect("source info");
        // Forget the comment of the first field of the first message.
        info.location.retain(|l| l.path != [4, 0, 2, 0]);
        assert_eq!(super::undocumented(&file), ["field Transaction.chain_id"]);
    }
}
