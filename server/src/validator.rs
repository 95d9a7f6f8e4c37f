//! The transport between validators (`chainql/proto/validator.proto`): each validator keeps one
//! outgoing stream to each peer ([`Peers`]) and serves [`ValidatorService`] for the streams of
//! the others.
//!
//! Every queue is bounded: a peer that is down or slow loses messages rather than making this
//! node hold them without limit. Tendermint tolerates lost messages (validators re-send their
//! votes when a round stalls), a validator that fell behind catches up by block sync, and a lost
//! transaction is still ordered by the validator that admitted it.

use std::time::Duration;

use chainql::wire::{Block, SignedTransaction};
use chainql_consensus::tendermint::Message;
use chainql_consensus::tendermint::codec::{self, PROPOSED_BLOCK_BYTES_MAX};
use prost::Message as _;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::node::Node;

/// Generated types and stubs of the validator service.
pub mod proto {
    #![allow(missing_debug_implementations, clippy::all)]
    tonic::include_proto!("chainql.validator.v1");
}

use proto::peer_message::Body;
use proto::validator_client::ValidatorClient;
use proto::validator_server::{Validator, ValidatorServer};
use proto::{DeliverResponse, ForgeReply, ForgeRequest, PeerMessage, ProposalMessage, TransactionGossip};

/// The largest message between validators: a proposal with a block at its size limit.
pub const PEER_MESSAGE_BYTES_MAX: usize = PROPOSED_BLOCK_BYTES_MAX + (1 << 20);
/// Messages queued for one peer before new ones are dropped.
const PEER_QUEUE: usize = 4_096;
/// The longest wait between attempts to reach a peer.
const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// Transactions gossiped in one message at most.
const GOSSIP_BATCH_MAX: usize = 2_000;
/// Admissions waiting to be gossiped before new ones are dropped.
const GOSSIP_QUEUE: usize = 16_384;

/// The outgoing side: one bounded queue and one stream per peer, and a task that gathers
/// admitted transactions into gossip messages of up to `GOSSIP_BATCH_MAX`.
#[derive(Debug)]
pub struct Peers {
    links: Vec<Link>,
    gossip: Option<mpsc::Sender<SignedTransaction>>,
}

#[derive(Debug)]
struct Link {
    url: String,
    queue: mpsc::Sender<PeerMessage>,
}

impl Peers {
    /// Starts a link to each of `urls` (the peers' gRPC addresses). Links retry until the
    /// node stops; they end when the `Peers` is dropped.
    pub fn start(urls: &[String]) -> Peers {
        let links = urls
            .iter()
            .map(|url| {
                let (queue, outgoing) = mpsc::channel(PEER_QUEUE);
                tokio::spawn(run_link(url.clone(), outgoing));
                Link {
                    url: url.clone(),
                    queue,
                }
            })
            .collect::<Vec<_>>();
        let queues: Vec<mpsc::Sender<PeerMessage>> = links.iter().map(|l| l.queue.clone()).collect();
        let gossip = (!queues.is_empty()).then(|| {
            let (gossip, admitted) = mpsc::channel(GOSSIP_QUEUE);
            tokio::spawn(gather_gossip(admitted, queues));
            gossip
        });
        Peers { links, gossip }
    }

    pub fn urls(&self) -> impl Iterator<Item = &str> {
        self.links.iter().map(|l| l.url.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    fn send(&self, message: PeerMessage) {
        for link in &self.links {
            if let Err(mpsc::error::TrySendError::Full(_)) = link.queue.try_send(message.clone()) {
                tracing::debug!(peer = %link.url, "peer queue full: a message was dropped");
            }
        }
    }

    /// Sends a consensus message (with the block a proposal names) to every peer.
    pub fn broadcast(&self, message: &Message, block: Option<&Block>) {
        let encoded = match codec::encode_message(message) {
            Ok(encoded) => encoded,
            Err(error) => {
                tracing::error!(%error, "a consensus message cannot be encoded");
                return;
            }
        };
        let body = match (message, block) {
            (Message::Proposal(_), Some(block)) => Body::Proposal(ProposalMessage {
                proposal: encoded.into(),
                block: block.encode_to_vec().into(),
            }),
            (Message::Proposal(_), None) => return,
            _ => Body::Consensus(encoded.into()),
        };
        self.send(PeerMessage { body: Some(body) });
    }

    /// Passes transactions this node admitted on to every peer's log (gathered with others
    /// admitted at the same time into one message).
    pub fn gossip(&self, transactions: Vec<SignedTransaction>) {
        let Some(gossip) = &self.gossip else { return };
        for transaction in transactions {
            if gossip.try_send(transaction).is_err() {
                tracing::debug!("gossip queue full: a transaction was not passed on");
            }
        }
    }
}

/// Gathers admitted transactions into gossip messages: whatever is waiting when the previous
/// message went out, up to `GOSSIP_BATCH_MAX`, in admission order.
async fn gather_gossip(
    mut admitted: mpsc::Receiver<SignedTransaction>,
    queues: Vec<mpsc::Sender<PeerMessage>>,
) {
    while let Some(first) = admitted.recv().await {
        let mut transactions = vec![first];
        while transactions.len() < GOSSIP_BATCH_MAX {
            match admitted.try_recv() {
                Ok(next) => transactions.push(next),
                Err(_) => break,
            }
        }
        let message = PeerMessage {
            body: Some(Body::Transactions(TransactionGossip { transactions })),
        };
        for queue in &queues {
            if let Err(mpsc::error::TrySendError::Full(_)) = queue.try_send(message.clone()) {
                tracing::debug!("peer queue full: gossip was dropped");
            }
        }
    }
}

/// Keeps a stream open to one peer and feeds it from `outgoing`, reconnecting after failures.
async fn run_link(url: String, mut outgoing: mpsc::Receiver<PeerMessage>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let client = match ValidatorClient::connect(url.clone()).await {
            Ok(client) => client
                .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX)
                .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX),
            Err(error) => {
                tracing::debug!(peer = %url, %error, "peer unreachable");
                if outgoing.is_closed() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_MAX);
                continue;
            }
        };
        tracing::info!(peer = %url, "connected to peer");
        backoff = Duration::from_millis(50);
        let (stream, feed) = mpsc::channel(64);
        let mut client = client;
        let mut call = tokio::spawn(async move {
            client
                .deliver(tokio_stream::wrappers::ReceiverStream::new(feed))
                .await
        });
        loop {
            tokio::select! {
                message = outgoing.recv() => match message {
                    Some(message) => {
                        if stream.send(message).await.is_err() {
                            break;
                        }
                    }
                    None => {
                        call.abort();
                        return;
                    }
                },
                ended = &mut call => {
                    if let Ok(Err(status)) = ended {
                        tracing::info!(peer = %url, %status, "the stream to a peer ended");
                    }
                    break;
                }
            }
        }
        tokio::time::sleep(backoff).await;
    }
}

/// The incoming side: streams from other validators, whose messages go to the node.
#[derive(Debug, Clone)]
pub struct ValidatorService {
    node: Node,
}

impl ValidatorService {
    pub fn server(node: Node) -> ValidatorServer<ValidatorService> {
        ValidatorServer::new(ValidatorService { node })
            .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(1 << 20)
    }
}

#[tonic::async_trait]
impl Validator for ValidatorService {
    async fn deliver(
        &self,
        request: Request<Streaming<PeerMessage>>,
    ) -> Result<Response<DeliverResponse>, Status> {
        let peer = request.remote_addr();
        let mut stream = request.into_inner();
        let mut received = 0u64;
        loop {
            let message = match stream.message().await {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(status) => {
                    tracing::info!(?peer, %status, "a peer's stream failed");
                    break;
                }
            };
            received += 1;
            if let Err(reason) = self.node.receive_from_peer(message).await {
                self.node
                    .metrics()
                    .peer_messages_refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(?peer, %reason, "refused a message from a peer");
            }
        }
        Ok(Response::new(DeliverResponse { received }))
    }

    async fn forge(&self, request: Request<ForgeRequest>) -> Result<Response<ForgeReply>, Status> {
        let request = request.into_inner();
        let (height, partition) = (request.height, request.partition);
        let reply = match self.node.forge_part(request).await {
            Ok(part) => ForgeReply {
                part: Some(part),
                refused: String::new(),
            },
            Err(reason) => {
                tracing::info!(height, partition, %reason, "refused to forge a part");
                ForgeReply {
                    part: None,
                    refused: reason,
                }
            }
        };
        Ok(Response::new(reply))
    }
}

/// A peer message, decoded: what the node acts on.
pub(crate) enum Received {
    Consensus(Message),
    Proposal(Message, Box<Block>),
    Transactions(Vec<SignedTransaction>),
}

/// Decodes a peer message, bounded and checked as every input from the network.
pub(crate) fn decode(message: PeerMessage) -> Result<Received, String> {
    match message.body.ok_or("the message is empty")? {
        Body::Consensus(bytes) => {
            let message = codec::decode_message(&bytes).map_err(|e| format!("consensus message: {e}"))?;
            if matches!(message, Message::Proposal(_)) {
                return Err("a proposal without its block".into());
            }
            Ok(Received::Consensus(message))
        }
        Body::Proposal(ProposalMessage { proposal, block }) => {
            let proposal = codec::decode_message(&proposal).map_err(|e| format!("proposal: {e}"))?;
            if !matches!(proposal, Message::Proposal(_)) {
                return Err("a proposal message that holds no proposal".into());
            }
            if block.len() > PROPOSED_BLOCK_BYTES_MAX {
                return Err(format!("a proposed block of {} bytes", block.len()));
            }
            let block = Block::decode(block).map_err(|e| format!("proposed block: {e}"))?;
            Ok(Received::Proposal(proposal, Box::new(block)))
        }
        Body::Transactions(TransactionGossip { transactions }) => Ok(Received::Transactions(transactions)),
    }
}
