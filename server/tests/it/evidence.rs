//! Evidence and slashing on a real node: a validator that signs two different prevotes for one
//! height and round is caught by the engine, the evidence goes into a later block, and executing
//! that block slashes the offender's stake by the documented share, once.

use std::time::{Duration, Instant};

use chainql::{Hash, Keypair, TransactionBuilder};
use chainql_consensus::tendermint::codec::encode_message;
use chainql_consensus::tendermint::context::{VOTE_DOMAIN, Vote};
use chainql_consensus::tendermint::{
    ChainContext, Height, Message, NilOrVal, Round, Signature, SignedVote, ValidatorAddress, VoteType,
};
use chainql_consensus::{Genesis, GenesisValidator};
use chainql_server::validator::proto::PeerMessage;
use chainql_server::validator::proto::peer_message::Body;
use chainql_server::validator::proto::validator_client::ValidatorClient;
use chainql_server::{Node, NodeConfig, init_data_dir};

use crate::support::Serving;

const OFFENDER_STAKE: u64 = 45;

fn prevote(ctx: &ChainContext, key: &Keypair, height: u64, block: Hash) -> PeerMessage {
    let vote = Vote {
        vote_type: VoteType::Prevote,
        height: Height(height),
        round: Round::new(0),
        value: NilOrVal::Val(block),
        validator: ValidatorAddress(key.address()),
    };
    let signature = Signature::from_bytes(key.sign(VOTE_DOMAIN, &ctx.vote_body(&vote)));
    let message = Message::Vote(SignedVote::new(vote, signature));
    PeerMessage {
        body: Some(Body::Consensus(encode_message(&message).expect("encode").into())),
    }
}

/// A second genesis validator, under 1/3 of the stake, chosen so that it (absent) is the
/// proposer of height 1, round 0: the node waits out that round, and meanwhile sees the
/// offender's two prevotes.
fn offender(validator: &Keypair) -> Keypair {
    (0..=255u8)
        .map(|seed| Keypair::from_seed([seed; 32]))
        .find(|candidate| {
            let set = chainql_consensus::tendermint::ValidatorSet::new(vec![
                chainql_consensus::tendermint::Validator::new(validator.public_key().to_bytes(), 100)
                    .expect("validator"),
                chainql_consensus::tendermint::Validator::new(
                    candidate.public_key().to_bytes(),
                    OFFENDER_STAKE,
                )
                .expect("validator"),
            ])
            .expect("set");
            set.proposer(Height(1), Round::new(0)).address.0 == candidate.address()
        })
        .expect("some key proposes first")
}

async fn cell(node: &Node, sql: &str) -> String {
    let (result, _) = node.query(sql).await.expect("query");
    let batch = result
        .batches
        .first()
        .filter(|b| b.num_rows() == 1)
        .expect("one row");
    let cells: Vec<String> = (0..batch.num_columns())
        .map(|c| chainql_server::format::cell_text(batch.column(c), 0).expect("a value"))
        .collect();
    cells.join("|")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_votes_become_evidence_in_a_block_and_slash_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = NodeConfig::new(dir.path());
    let genesis = init_data_dir(&config, "evidence", &[]).expect("init");
    let validator = Keypair::read_file(&config.validator_key_path()).expect("validator key");
    let offender = offender(&validator);
    let genesis = Genesis {
        validators: vec![
            genesis.validators[0].clone(),
            GenesisValidator {
                public_key: format!("0x{}", hex::encode(offender.public_key().to_bytes())),
                stake: OFFENDER_STAKE,
            },
        ],
        ..genesis
    };
    genesis.write(&config.genesis_path()).expect("genesis");
    let node = Node::open(config).await.expect("open");
    let serving = Serving::start(&node).await;
    let url = serving.url.clone();
    let mut client = ValidatorClient::connect(url).await.expect("connect");

    // Two prevotes of the offender at height 1, round 0, for two different blocks.
    let ctx = ChainContext::new("evidence");
    let votes = vec![
        prevote(&ctx, &offender, 1, Hash([1; 32])),
        prevote(&ctx, &offender, 1, Hash([2; 32])),
    ];
    client
        .deliver(tokio_stream::iter(votes))
        .await
        .expect("delivered");

    // Blocks go on (the node holds more than 2/3 of the stake); one of them carries the evidence.
    let user = TransactionBuilder::new("evidence", Keypair::from_seed([5; 32]));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut nonce = 0;
    let with_evidence = loop {
        assert!(Instant::now() < deadline, "no block carried the evidence");
        node.submit_and_wait(user.build(nonce, vec![format!("CREATE TABLE t{nonce} (id INT)")]))
            .await
            .expect("commits");
        nonce += 1;
        let found = (1..=node.status().height).find(|h| {
            node.block(*h)
                .expect("block")
                .is_some_and(|b| !b.evidence.is_empty())
        });
        if let Some(height) = found {
            break height;
        }
    };
    let block = node.block(with_evidence).expect("block").expect("stored");
    assert_eq!(block.evidence.len(), 1);

    // 5% of 45, rounded up: 3 burned, once, however many blocks follow.
    let address = offender.address().to_hex();
    let query = format!("SELECT bonded, slashed FROM chain.validators WHERE address = '{address}'");
    assert_eq!(cell(&node, &query).await, "42|3");
    for _ in 0..3 {
        node.submit_and_wait(user.build(nonce, vec![format!("CREATE TABLE t{nonce} (id INT)")]))
            .await
            .expect("commits");
        nonce += 1;
    }
    let carrying = (1..=node.status().height)
        .filter(|h| {
            node.block(*h)
                .expect("block")
                .is_some_and(|b| !b.evidence.is_empty())
        })
        .count();
    assert_eq!(carrying, 1, "the offence is punished once");
    assert_eq!(cell(&node, &query).await, "42|3");

    serving.stop().await;
    node.shutdown().await;
}
