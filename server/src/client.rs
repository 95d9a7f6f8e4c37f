//! A client of a node's gRPC API: signs and submits transactions, queries, reads blocks and
//! transactions, and follows the chain. The shell's `--connect`, `chainql bench --connect` and
//! the sqllogictest runner talk to remote nodes through it.
//!
//! ```no_run
//! # async fn example() -> chainql_server::Result<()> {
//! use chainql::{Keypair, TransactionBuilder};
//! use chainql_server::Client;
//! use futures::StreamExt;
//!
//! let client = Client::connect("http://127.0.0.1:7545").await?;
//! let signer = TransactionBuilder::new(client.status().await?.chain_id, Keypair::generate());
//! let receipt = client.execute(&signer, vec!["CREATE TABLE t (k BIGINT PRIMARY KEY)".into()]).await?;
//! let answer = client.query("SELECT count(*) FROM t").await?;
//! let mut blocks = client.subscribe(receipt.block_height, Default::default()).await?;
//! while let Some(block) = blocks.next().await {
//!     let block = block?;
//!     println!("block {}: {} events", block.height, block.events.len());
//! }
//! # Ok(()) }
//! ```

use chainql::wire::{Receipt, SignedTransaction};
use chainql::{Address, Hash, TransactionBuilder};
use chainql_executor::QueryResult;
use futures::{Stream, StreamExt};
use tonic::Status;
use tonic::transport::Channel;

use crate::error::{Error, Result};
use crate::grpc::{REQUEST_BYTES_MAX, RESPONSE_BYTES_MAX, from_ipc, proto};
use crate::node::NodeStatus;
use proto::node_client::NodeClient;

/// What a subscription receives of each block besides its header and events (see
/// `SubscribeRequest` in `node.proto`).
#[derive(Debug, Clone, Default)]
pub struct SubscribeOptions {
    /// Each block's signed transactions.
    pub transactions: bool,
    /// Each block's receipts.
    pub receipts: bool,
    /// Only these contracts' events; empty for all.
    pub contracts: Vec<String>,
}

/// A connection to a node's gRPC API. Cheap to clone: clones share one HTTP/2 channel.
#[derive(Debug, Clone)]
pub struct Client {
    url: String,
    client: NodeClient<Channel>,
}

impl Client {
    /// Connects to `url` (`http://host:port`).
    pub async fn connect(url: &str) -> Result<Client> {
        let client = NodeClient::connect(url.to_string())
            .await
            .map_err(|e| Error::Client(format!("cannot connect to {url}: {e}")))?
            .max_decoding_message_size(RESPONSE_BYTES_MAX)
            .max_encoding_message_size(REQUEST_BYTES_MAX);
        Ok(Client {
            url: url.to_string(),
            client,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The generated client, for calls this wrapper does not cover.
    pub fn raw(&self) -> NodeClient<Channel> {
        self.client.clone()
    }

    fn status_error(status: Status) -> Error {
        Error::Client(status.message().to_string())
    }

    /// Submits a signed transaction. Returns its hash once it is durable in the node's log and,
    /// with `wait_for_receipt`, its receipt once its block is committed.
    pub async fn submit(
        &self,
        signed: SignedTransaction,
        wait_for_receipt: bool,
    ) -> Result<(Hash, Option<Receipt>)> {
        let response = self
            .raw()
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

    /// Signs `statements` as one transaction with the signer's next nonce, submits it and waits
    /// for its receipt. A failed transaction is an error carrying its receipt.
    ///
    /// The next nonce is the node's count of the signer's admitted transactions: one signer
    /// should not run two of these at once.
    pub async fn execute(&self, signer: &TransactionBuilder, statements: Vec<String>) -> Result<Receipt> {
        let nonce = self.next_nonce(&signer.key.address()).await?;
        let (_, receipt) = self.submit(signer.build(nonce, statements), true).await?;
        let receipt = receipt.ok_or_else(|| Error::Client("the node returned no receipt".into()))?;
        crate::error::succeeded(receipt)
    }

    /// Runs a read-only query on the latest committed state (or `AS OF n`).
    pub async fn query(&self, sql: &str) -> Result<QueryResult> {
        let response = self
            .raw()
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
            .raw()
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
        match self.raw().get_block(proto::GetBlockRequest { height }).await {
            Ok(response) => {
                let response = response.into_inner();
                let hash = Hash::from_slice(&response.block_hash)
                    .ok_or_else(|| Error::Client("the node returned a malformed block hash".into()))?;
                Ok(response.block.map(|block| (block, hash)))
            }
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(Self::status_error(status)),
        }
    }

    /// An account's balance and nonces.
    pub async fn account(&self, address: &Address) -> Result<proto::GetAccountResponse> {
        Ok(self
            .raw()
            .get_account(proto::GetAccountRequest {
                address: address.to_hex(),
            })
            .await
            .map_err(Self::status_error)?
            .into_inner())
    }

    /// The nonce the node expects next from `address`, counting admitted transactions.
    pub async fn next_nonce(&self, address: &Address) -> Result<u64> {
        Ok(self.account(address).await?.next_nonce)
    }

    pub async fn status(&self) -> Result<NodeStatus> {
        let status = self
            .raw()
            .status(proto::StatusRequest {})
            .await
            .map_err(Self::status_error)?
            .into_inner();
        let malformed = |what: &str| Error::Client(format!("the node returned a malformed {what}"));
        Ok(NodeStatus {
            chain_id: status.chain_id,
            height: status.height,
            block_hash: Hash::from_slice(&status.block_hash).ok_or_else(|| malformed("block hash"))?,
            state_root: Hash::from_slice(&status.state_root).ok_or_else(|| malformed("state root"))?,
            block_time_ms: status.block_time_ms,
            validator: Address::from_hex(&status.validator).map_err(|_| malformed("validator"))?,
            pending_transactions: status.pending_transactions,
            log_partitions: status.log_partitions,
        })
    }

    /// Follows the chain from `from_height`: every committed block in height order, then each
    /// new one as it commits. The stream ends only on an error or when the node stops; to
    /// resume, subscribe again from the last height received plus one.
    pub async fn subscribe(
        &self,
        from_height: u64,
        options: SubscribeOptions,
    ) -> Result<impl Stream<Item = Result<proto::CommittedBlock>> + Send + Unpin + use<>> {
        let stream = self
            .raw()
            .subscribe(proto::SubscribeRequest {
                from_height,
                include_transactions: options.transactions,
                include_receipts: options.receipts,
                contracts: options.contracts,
            })
            .await
            .map_err(Self::status_error)?
            .into_inner();
        Ok(stream.map(|item| item.map_err(Self::status_error)))
    }
}
