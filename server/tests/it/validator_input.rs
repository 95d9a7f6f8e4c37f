//! Bad input on the validator service: every malformed, unsigned, foreign, far-future or invalid
//! message is refused and counted, an oversized one ends only its own stream, and the node goes
//! on committing. Good transaction gossip enters the log and commits.

use std::time::{Duration, Instant};

use chainql::wire::{Block, SignedTransaction};
use chainql::{Hash, Keypair, TransactionBuilder};
use chainql_consensus::BlockProposal;
use chainql_consensus::tendermint::codec::encode_message;
use chainql_consensus::tendermint::context::{PROPOSAL_DOMAIN, Proposal, VOTE_DOMAIN, Vote};
use chainql_consensus::tendermint::{
    BlockId, ChainContext, Height, Message, NilOrVal, Round, Signature, SignedProposal, SignedVote,
    ValidatorAddress, VoteType,
};
use chainql_server::validator::proto::peer_message::Body;
use chainql_server::validator::proto::validator_client::ValidatorClient;
use chainql_server::validator::proto::{ForgeRequest, PeerMessage, ProposalMessage, TransactionGossip};
use chainql_server::{Node, NodeConfig, init_data_dir};

use crate::support::Serving;
use prost::Message as _;

fn vote(ctx: &ChainContext, key: &Keypair, height: u64) -> Message {
    let vote = Vote {
        vote_type: VoteType::Prevote,
        height: Height(height),
        round: Round::new(0),
        value: NilOrVal::Nil,
        validator: ValidatorAddress(key.address()),
    };
    let signature = Signature::from_bytes(key.sign(VOTE_DOMAIN, &ctx.vote_body(&vote)));
    Message::Vote(SignedVote::new(vote, signature))
}

fn proposal(ctx: &ChainContext, key: &Keypair, height: u64, block: Hash) -> Message {
    let proposal = Proposal {
        height: Height(height),
        round: Round::new(0),
        value: BlockId(block),
        pol_round: Round::Nil,
        proposer: ValidatorAddress(key.address()),
    };
    let signature = Signature::from_bytes(key.sign(PROPOSAL_DOMAIN, &ctx.proposal_body(&proposal)));
    Message::Proposal(SignedProposal::new(proposal, signature))
}

fn consensus(message: &Message) -> PeerMessage {
    PeerMessage {
        body: Some(Body::Consensus(encode_message(message).expect("encode").into())),
    }
}

fn with_block(message: &Message, block: &Block) -> PeerMessage {
    PeerMessage {
        body: Some(Body::Proposal(ProposalMessage {
            proposal: encode_message(message).expect("encode").into(),
            block: block.encode_to_vec().into(),
        })),
    }
}

fn refused(node: &Node) -> u64 {
    node.metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix("chainql_peer_messages_refused_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the counter is exported")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_the_validator_service_is_refused_and_the_node_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = NodeConfig::new(dir.path());
    let genesis = init_data_dir(&config, "guarded", &[]).expect("init");
    let validator = Keypair::read_file(&config.validator_key_path()).expect("validator key");
    let node = Node::open(config).await.expect("open");
    let serving = Serving::start(&node).await;
    let url = serving.url.clone();
    let mut client = ValidatorClient::connect(url.clone())
        .await
        .expect("connect")
        .max_encoding_message_size(usize::MAX);

    let ctx = ChainContext::new("guarded");
    let stranger = Keypair::from_seed([66; 32]);
    let height = node.status().height + 1;
    let state = node.state();
    // A block the validator itself signed, holding a transaction whose signature is broken.
    let user = TransactionBuilder::new("guarded", Keypair::from_seed([5; 32]));
    let mut forged = user.build(0, vec!["CREATE TABLE t (id INT PRIMARY KEY)".into()]);
    forged.signature[0] ^= 1;
    let invalid_block = BlockProposal {
        chain_id: "guarded".into(),
        height,
        parent_hash: state.block_hash(),
        timestamp_ms: state.timestamp_ms() + 1,
        state_root: state.root(),
        log_ranges: vec![],
        transactions: vec![forged],
        next_validators: vec![],
        evidence: vec![],
        parts: vec![],
    }
    .sign(&validator);
    let invalid_hash = chainql_consensus::header_hash(invalid_block.header.as_ref().expect("header"));
    let too_many = TransactionGossip {
        transactions: vec![SignedTransaction::default(); 10_001],
    };

    let bad = vec![
        PeerMessage { body: None },
        PeerMessage {
            body: Some(Body::Consensus(b"not a consensus message".to_vec().into())),
        },
        // A vote from a key outside the validator set.
        consensus(&vote(&ctx, &stranger, height)),
        // The validator's own key, signing for another chain.
        consensus(&vote(&ChainContext::new("other"), &validator, height)),
        // Far beyond any height a validator could be behind by.
        consensus(&vote(&ctx, &validator, height + 1_000_000)),
        // A proposal without its block, and one whose block is another.
        consensus(&proposal(&ctx, &validator, height, invalid_hash)),
        with_block(&proposal(&ctx, &validator, height, Hash([7; 32])), &invalid_block),
        // A correctly signed proposal of a block with an invalid transaction.
        with_block(&proposal(&ctx, &validator, height, invalid_hash), &invalid_block),
        PeerMessage {
            body: Some(Body::Transactions(too_many)),
        },
    ];
    let sent = bad.len() as u64;
    let response = client
        .deliver(tokio_stream::iter(bad))
        .await
        .expect("the stream is served to its end")
        .into_inner();
    assert_eq!(response.received, sent);
    let deadline = Instant::now() + Duration::from_secs(30);
    while refused(&node) < sent {
        assert!(Instant::now() < deadline, "refused {} of {sent}", refused(&node));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(refused(&node), sent, "each bad message is refused once");
    assert_eq!(node.status().height, height - 1, "nothing was committed");

    // A message over the size bound ends its stream, and nothing else.
    let huge = PeerMessage {
        body: Some(Body::Consensus(
            vec![0; chainql_server::validator::PEER_MESSAGE_BYTES_MAX + 1].into(),
        )),
    };
    let _ = client.deliver(tokio_stream::iter(vec![huge])).await;

    // Good gossip: a transaction another validator admitted enters this node's log and commits.
    let good = user.build(0, vec!["CREATE TABLE t (id INT PRIMARY KEY)".into()]);
    let hash = chainql::transaction_hash(&good.transaction);
    let gossip = PeerMessage {
        body: Some(Body::Transactions(TransactionGossip {
            transactions: vec![good],
        })),
    };
    client
        .deliver(tokio_stream::iter(vec![gossip]))
        .await
        .expect("delivered");
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.transaction(&hash).expect("lookup").is_none() {
        assert!(
            Instant::now() < deadline,
            "the gossiped transaction never committed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(refused(&node), sent);

    // Sharded forging: this validator, alone in its set, is the assignee of every partition.
    let state = node.state();
    let next = state.height() + 1;
    let parent = state.block_hash();
    let user_tx = |nonce: u64| user.build(nonce, vec![format!("INSERT INTO t VALUES ({nonce})")]);
    let nonce = state.account(&user.key.address()).nonce;
    let forge = |height: u64, partition: u32, transactions: Vec<SignedTransaction>| ForgeRequest {
        height,
        parent_hash: parent.0.to_vec().into(),
        partition,
        transactions,
    };
    let mut broken = user_tx(nonce);
    broken.signature[0] ^= 1;
    let partition = chainql_sequencer::partition_of(&user.key.address().0, genesis.log_partitions).0;
    assert!(
        genesis.log_partitions > 1,
        "a transaction of another partition needs two"
    );
    let other = (partition + 1) % genesis.log_partitions;
    for (request, expected) in [
        (forge(next + 1, partition, vec![user_tx(nonce)]), "is at height"),
        (
            forge(next, genesis.log_partitions, vec![user_tx(nonce)]),
            "not assigned",
        ),
        (forge(next, partition, vec![]), "a part of 0 transactions"),
        (forge(next, other, vec![user_tx(nonce)]), "not of partition"),
        (forge(next, partition, vec![broken]), "signature"),
        (forge(next, partition, vec![user_tx(nonce + 1)]), "nonce"),
    ] {
        let reply = client.forge(request).await.expect("answered").into_inner();
        assert!(reply.part.is_none());
        assert!(reply.refused.contains(expected), "{expected}: {}", reply.refused);
    }
    let good = vec![user_tx(nonce), user_tx(nonce + 1)];
    let reply = client
        .forge(forge(next, partition, good.clone()))
        .await
        .expect("answered")
        .into_inner();
    let part = reply.part.unwrap_or_else(|| panic!("refused: {}", reply.refused));
    assert!(chainql_consensus::verify_part(
        &part,
        "guarded",
        next,
        &parent,
        &validator.public_key(),
        &good
    ));
    serving.stop().await;
    node.shutdown().await;
}
