//! The gRPC API (`chainql/proto/node.proto`): the server over a [`Node`], and a client.

use std::net::SocketAddr;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use chainql::wire::{Receipt, SignedTransaction};
use chainql::{Address, Hash};
use chainql_executor::QueryResult;

use crate::error::{Error, Result};
use crate::format::cell_text;
use crate::node::{Node, NodeStatus};

/// Generated gRPC types and stubs.
pub mod proto {
    #![allow(missing_debug_implementations, clippy::all)]
    tonic::include_proto!("chainql.node.v1");
}

use proto::node_client::NodeClient;
use proto::node_server::{Node as NodeApi, NodeServer};

/// The largest request the server decodes: a transaction at its size limit, with room to spare.
pub const REQUEST_BYTES_MAX: usize = 4 << 20;
/// The largest response: query answers are bounded in rows, and this bounds them in bytes.
pub const RESPONSE_BYTES_MAX: usize = 256 << 20;

/// Serves the API on `address` until `shutdown` completes.
pub async fn serve(
    node: Node,
    address: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    let service = NodeServer::new(Api { node })
        .max_decoding_message_size(REQUEST_BYTES_MAX)
        .max_encoding_message_size(RESPONSE_BYTES_MAX);
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_shutdown(address, shutdown)
        .await
        .map_err(|e| Error::Client(format!("gRPC server on {address}: {e}")))
}

/// Serves the API on an already bound listener (tests bind port 0 and read the port back).
pub async fn serve_listener(
    node: Node,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    let service = NodeServer::new(Api { node })
        .max_decoding_message_size(REQUEST_BYTES_MAX)
        .max_encoding_message_size(RESPONSE_BYTES_MAX);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| Error::Client(format!("gRPC server: {e}")))
}

struct Api {
    node: Node,
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

#[tonic::async_trait]
impl NodeApi for Api {
    type SubscribeLogStream = LogEventStream;

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
        let stream = subscription.map(move |delivery| match delivery {
            Ok(delivery) => log_event(delivery, &chain_id),
            Err(error) => Err(Status::from(Error::from(error))),
        });
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
        let block = self
            .node
            .block(height)?
            .ok_or_else(|| Status::not_found(format!("no block at height {height}")))?;
        let hash = block
            .header
            .as_ref()
            .map(chainql_consensus::header_hash)
            .unwrap_or_default();
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
            version: env!("CARGO_PKG_VERSION").to_string(),
        }))
    }
}

/// A client of a node's gRPC API.
#[derive(Debug, Clone)]
pub struct RemoteNode {
    url: String,
    client: NodeClient<tonic::transport::Channel>,
}

impl RemoteNode {
    pub async fn connect(url: &str) -> Result<RemoteNode> {
        let client = NodeClient::connect(url.to_string())
            .await
            .map_err(|e| Error::Client(format!("cannot connect to {url}: {e}")))?
            .max_decoding_message_size(RESPONSE_BYTES_MAX)
            .max_encoding_message_size(REQUEST_BYTES_MAX);
        Ok(RemoteNode {
            url: url.to_string(),
            client,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn status_error(status: Status) -> Error {
        Error::Client(status.message().to_string())
    }

    pub async fn submit(
        &self,
        signed: SignedTransaction,
        wait_for_receipt: bool,
    ) -> Result<(Hash, Option<Receipt>)> {
        let response = self
            .client
            .clone()
            .submit_transaction(proto::SubmitTransactionRequest {
                transaction: Some(signed),
                wait_for_receipt,
            })
            .await
            .map_err(Self::status_error)?
            .into_inner();
        let hash = Hash::from_slice(&response.transaction_hash)
            .ok_or_else(|| Error::Client("the node returned a malformed hash".into()))?;
        Ok((hash, response.receipt))
    }

    pub async fn query(&self, sql: &str) -> Result<QueryResult> {
        let response = self
            .client
            .clone()
            .query(proto::QueryRequest {
                sql: sql.to_string(),
                include_rows: false,
            })
            .await
            .map_err(Self::status_error)?
            .into_inner();
        from_ipc(&response.arrow_ipc)
    }

    /// A committed transaction and its receipt, or `None` if the node has not committed it.
    pub async fn transaction(&self, hash: &Hash) -> Result<Option<(SignedTransaction, Receipt)>> {
        let response = self
            .client
            .clone()
            .get_transaction(proto::GetTransactionRequest {
                transaction_hash: hash.0.to_vec(),
            })
            .await;
        match response {
            Ok(response) => {
                let response = response.into_inner();
                Ok(response.transaction.zip(response.receipt))
            }
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(Self::status_error(status)),
        }
    }

    /// A committed block and its hash; height 0 means the latest.
    pub async fn block(&self, height: u64) -> Result<Option<(chainql::wire::Block, Hash)>> {
        match self
            .client
            .clone()
            .get_block(proto::GetBlockRequest { height })
            .await
        {
            Ok(response) => {
                let response = response.into_inner();
                let hash = Hash::from_slice(&response.block_hash).unwrap_or_default();
                Ok(response.block.map(|block| (block, hash)))
            }
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(Self::status_error(status)),
        }
    }

    /// The underlying generated client, for calls this wrapper does not cover.
    pub fn client(&self) -> NodeClient<tonic::transport::Channel> {
        self.client.clone()
    }

    pub async fn next_nonce(&self, address: &Address) -> Result<u64> {
        let response = self
            .client
            .clone()
            .get_account(proto::GetAccountRequest {
                address: address.to_hex(),
            })
            .await
            .map_err(Self::status_error)?
            .into_inner();
        Ok(response.next_nonce)
    }

    pub async fn status(&self) -> Result<NodeStatus> {
        let status = self
            .client
            .clone()
            .status(proto::StatusRequest {})
            .await
            .map_err(Self::status_error)?
            .into_inner();
        Ok(NodeStatus {
            chain_id: status.chain_id,
            height: status.height,
            block_hash: Hash::from_slice(&status.block_hash).unwrap_or_default(),
            state_root: Hash::from_slice(&status.state_root).unwrap_or_default(),
            block_time_ms: status.block_time_ms,
            validator: Address::from_hex(&status.validator).unwrap_or(Address([0; 20])),
            pending_transactions: status.pending_transactions,
        })
    }
}

/// Either an embedded node or a remote one, with one interface: what the shell, the test runner
/// and the benchmark talk to.
#[derive(Debug, Clone)]
pub enum Connection {
    Embedded(Node),
    Remote(Arc<RemoteNode>),
}

impl Connection {
    pub async fn chain_id(&self) -> Result<String> {
        match self {
            Connection::Embedded(node) => Ok(node.chain_id().to_string()),
            Connection::Remote(remote) => Ok(remote.status().await?.chain_id),
        }
    }

    pub async fn status(&self) -> Result<NodeStatus> {
        match self {
            Connection::Embedded(node) => Ok(node.status()),
            Connection::Remote(remote) => remote.status().await,
        }
    }

    pub async fn next_nonce(&self, address: &Address) -> Result<u64> {
        match self {
            Connection::Embedded(node) => Ok(node.next_nonce(address).await),
            Connection::Remote(remote) => remote.next_nonce(address).await,
        }
    }

    pub async fn submit_and_wait(&self, signed: SignedTransaction) -> Result<Receipt> {
        match self {
            Connection::Embedded(node) => node.submit_and_wait(signed).await,
            Connection::Remote(remote) => remote
                .submit(signed, true)
                .await?
                .1
                .ok_or_else(|| Error::Client("the node returned no receipt".into())),
        }
    }

    pub async fn query(&self, sql: &str) -> Result<QueryResult> {
        match self {
            Connection::Embedded(node) => Ok(node.query(sql).await?.0),
            Connection::Remote(remote) => remote.query(sql).await,
        }
    }
}
