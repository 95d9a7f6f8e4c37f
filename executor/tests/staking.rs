//! Staking in execution: `STAKE` and `UNSTAKE` move native balance into and out of stake, the
//! validator set changes only at epoch boundaries and commits two heights later, evidence
//! slashes once, and all of it survives a checkpoint.

mod common;

use chainql::{Address, Hash, Keypair, PublicKey};
use chainql_executor::{BlockContext, ExecutableTransaction, Executor, Offence, QueryLimits, State};
use common::rows;

const EPOCH: u64 = 4;

fn key(seed: u8) -> PublicKey {
    Keypair::from_seed([seed; 32]).public_key()
}

struct Chain {
    executor: Executor,
    state: State,
}

impl Chain {
    fn new() -> Chain {
        let (v, alice) = (key(1), key(2));
        let state = State::genesis_with_validators(
            Hash::ZERO,
            0,
            &[(alice.address(), 1_000), (v.address(), 10)],
            &[(v, 100)],
        )
        .expect("genesis");
        let executor = Executor::new(1, QueryLimits::default())
            .expect("executor")
            .with_epoch_blocks(EPOCH);
        Chain { executor, state }
    }

    /// Executes one block holding `statements`, one transaction each, from `sender`, with
    /// `offences`; returns each receipt's error (empty on success).
    async fn block(
        &mut self,
        sender: &PublicKey,
        statements: &[&str],
        offences: Vec<Offence>,
    ) -> Vec<String> {
        let height = self.state.height() + 1;
        let context = BlockContext {
            height,
            hash: Hash::tagged("staking-test-block", &[&height.to_le_bytes()]),
            parent_hash: self.state.block_hash(),
            timestamp_ms: 1_700_000_000_000 + height * 1000,
            transactions_root: Hash::ZERO,
            state_root: self.state.root(),
            proposer: key(1).address(),
            offences,
        };
        let nonce = self.state.account(&sender.address()).nonce;
        let transactions: Vec<ExecutableTransaction> = statements
            .iter()
            .enumerate()
            .map(|(i, sql)| ExecutableTransaction {
                hash: Hash::tagged("staking-test-tx", &[&height.to_le_bytes(), &i.to_le_bytes()]),
                sender: sender.address(),
                sender_key: Some(sender.to_bytes()),
                nonce: nonce + i as u64,
                gas_limit: 1_000_000,
                statements: vec![sql.to_string()],
            })
            .collect();
        let (next, receipts) = self
            .executor
            .execute_block(&self.state, &context, &transactions)
            .await
            .expect("block executes");
        self.state = next;
        receipts.into_iter().map(|r| r.error).collect()
    }

    /// Empty blocks up to and including `height`.
    async fn until(&mut self, height: u64) {
        while self.state.height() < height {
            self.block(&key(1), &[], Vec::new()).await;
        }
    }

    fn balance(&self, key: &PublicKey) -> u64 {
        self.state.account(&key.address()).balance
    }

    fn set_at(&self, height: u64) -> Vec<(Address, u64)> {
        self.state
            .validators_for(height)
            .expect("a known set")
            .iter()
            .map(|v| (v.address, v.power))
            .collect()
    }
}

#[tokio::test]
async fn staking_joins_and_leaves_the_set_at_epoch_boundaries() {
    let mut chain = Chain::new();
    let (v, alice) = (key(1), key(2));
    let errors = chain
        .block(&alice, &["STAKE 300", "STAKE 5000", "UNSTAKE 1"], Vec::new())
        .await;
    assert_eq!(errors[0], "");
    assert!(errors[1].contains("insufficient balance"), "{}", errors[1]);
    assert_eq!(errors[2], "", "bonding stake can be taken back at once");
    assert_eq!(chain.balance(&alice), 701);
    assert_eq!(
        rows(
            &chain.executor,
            &chain.state,
            "SELECT address, power, bonded, bonding FROM chain.validators ORDER BY power DESC"
        )
        .await,
        [
            format!("{}|100|100|0", v.address()),
            format!("{}|0|0|299", alice.address())
        ]
    );
    // Block EPOCH ends the epoch: the set it makes commits from EPOCH + 2.
    chain.until(EPOCH).await;
    let announced = chain.state.announced_validators().expect("an announced set");
    assert_eq!(announced.len(), 2);
    assert_eq!(chain.set_at(EPOCH + 1), [(v.address(), 100)]);
    assert_eq!(
        chain.set_at(EPOCH + 2),
        [(alice.address(), 299), (v.address(), 100)]
    );
    chain.until(EPOCH + 1).await;
    assert!(chain.state.announced_validators().is_none(), "announced once");

    // Leaving: out of the set at the next boundary, back in the balance one epoch later.
    let errors = chain
        .block(&alice, &["UNSTAKE 1000", "UNSTAKE 99"], Vec::new())
        .await;
    assert!(errors[0].contains("UNSTAKE 1000"), "{}", errors[0]);
    assert_eq!(errors[1], "");
    chain.until(2 * EPOCH).await;
    assert_eq!(
        chain.set_at(2 * EPOCH + 2),
        [(alice.address(), 200), (v.address(), 100)]
    );
    assert_eq!(chain.balance(&alice), 701, "leaving stake is still at stake");
    chain.until(3 * EPOCH).await;
    assert_eq!(chain.balance(&alice), 800);

    // The chain keeps a validator: the last stake cannot all leave.
    let errors = chain.block(&v, &["UNSTAKE 100"], Vec::new()).await;
    assert_eq!(errors[0], "", "alice's stake stays");
    let errors = chain.block(&alice, &["UNSTAKE 200"], Vec::new()).await;
    assert!(errors[0].contains("last stake"), "{}", errors[0]);

    // A transaction without its sender's key cannot stake.
    let height = chain.state.height() + 1;
    let context = BlockContext {
        height,
        hash: Hash::tagged("staking-test-block", &[&height.to_le_bytes()]),
        parent_hash: chain.state.block_hash(),
        timestamp_ms: 1_700_000_000_000 + height * 1000,
        transactions_root: Hash::ZERO,
        state_root: chain.state.root(),
        proposer: v.address(),
        offences: Vec::new(),
    };
    let keyless = ExecutableTransaction {
        hash: Hash::ZERO,
        sender: alice.address(),
        sender_key: None,
        nonce: chain.state.account(&alice.address()).nonce,
        gas_limit: 1_000_000,
        statements: vec!["STAKE 1".into()],
    };
    let (_, receipts) = chain
        .executor
        .execute_block(&chain.state, &context, &[keyless])
        .await
        .expect("block");
    assert!(receipts[0].error.contains("public key"), "{}", receipts[0].error);
}

#[tokio::test]
async fn evidence_slashes_an_offence_once_and_changes_the_root() {
    let mut chain = Chain::new();
    let v = key(1);
    let offence = Offence {
        validator: v.address(),
        height: 1,
        round: 0,
    };
    let before = chain.state.root();
    chain.block(&v, &[], vec![offence, offence]).await;
    assert_ne!(chain.state.root(), before);
    assert_eq!(
        rows(
            &chain.executor,
            &chain.state,
            "SELECT power, bonded, slashed FROM chain.validators"
        )
        .await,
        ["100|95|5"],
        "the set's power changes only at the boundary; the stake at once"
    );
    assert!(chain.state.staking().punishable(&v.address(), 1, 0).is_err());
    chain.until(EPOCH).await;
    assert_eq!(chain.set_at(EPOCH + 2), [(v.address(), 95)]);
}

#[tokio::test]
async fn stake_sets_and_offences_survive_a_checkpoint() {
    let mut chain = Chain::new();
    let (v, alice) = (key(1), key(2));
    chain.block(&alice, &["STAKE 300"], Vec::new()).await;
    chain.until(EPOCH).await;
    chain
        .block(
            &alice,
            &["UNSTAKE 50"],
            vec![Offence {
                validator: v.address(),
                height: 2,
                round: 1,
            }],
        )
        .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("checkpoint");
    chain.state.write_checkpoint(&path, &[]).expect("write");
    let (restored, _) = State::read_checkpoint(&path).expect("read");
    assert_eq!(restored.root(), chain.state.root());
    let query = "SELECT * FROM chain.validators ORDER BY address";
    assert_eq!(
        rows(&chain.executor, &restored, query).await,
        rows(&chain.executor, &chain.state, query).await
    );
    assert_eq!(
        restored.validators_for(EPOCH + 2).map(|s| s.len()),
        chain.state.validators_for(EPOCH + 2).map(|s| s.len())
    );
    assert!(restored.staking().punishable(&v.address(), 2, 1).is_err());
}
