//! Signature checks for every admission, in batches.
//!
//! ed25519 checks a batch of signatures about twice as fast as the same signatures one by one,
//! and most submissions carry a single transaction. Every admission — one transaction, a batch
//! from a client, transactions gossiped by a peer — hands its transactions to the verifier,
//! which takes whatever is queued, never waiting for more (as the log's group commit does), and
//! checks it as one batch on a blocking thread, with at most one batch per core in flight: while
//! those run, new arrivals queue up and make the next batch. A lone transaction on an idle node
//! is a batch of one. So the checks use every core whatever the requests look like, and never
//! more threads than cores.

use std::sync::Arc;

use chainql::DecodedTransaction;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::error::{Error, Result};

/// Transactions in one batch at most.
const BATCH_MAX: usize = 512;
/// Transactions waiting for a batch at most; admissions beyond it wait for room.
const QUEUE_MAX: usize = 8192;

type Reply = oneshot::Sender<(DecodedTransaction, Result<()>)>;

#[derive(Debug, Clone)]
pub(crate) struct Verifier {
    requests: mpsc::Sender<(DecodedTransaction, Reply)>,
}

impl Verifier {
    /// Starts the verifier on the current runtime, with at most `in_flight` batches at once. It
    /// stops when the last handle is dropped.
    pub(crate) fn start(in_flight: usize) -> Verifier {
        let (requests, mut queue) = mpsc::channel::<(DecodedTransaction, Reply)>(QUEUE_MAX);
        let permits = Arc::new(Semaphore::new(in_flight.max(1)));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                    return;
                };
                let Some(first) = queue.recv().await else {
                    return;
                };
                let mut batch = vec![first];
                while batch.len() < BATCH_MAX
                    && let Ok(next) = queue.try_recv()
                {
                    batch.push(next);
                }
                tokio::task::spawn_blocking(move || {
                    let verdicts = {
                        let transactions: Vec<&DecodedTransaction> = batch.iter().map(|(t, _)| t).collect();
                        chainql::verify_transactions(&transactions)
                    };
                    for ((transaction, reply), verdict) in batch.into_iter().zip(verdicts) {
                        let _ = reply.send((transaction, verdict.map_err(Error::from)));
                    }
                    drop(permit);
                });
            }
        });
        Verifier { requests }
    }

    /// Checks `transaction`'s signature in the next batch, and gives the transaction back.
    pub(crate) async fn verify(&self, transaction: DecodedTransaction) -> Result<DecodedTransaction> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send((transaction, reply))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        let (transaction, verdict) = answer.await.map_err(|_| Error::ShuttingDown)?;
        verdict.map(|()| transaction)
    }

    /// Checks the signatures of `transactions` (in whatever batches they land in); one verdict
    /// per transaction, in order.
    pub(crate) async fn verify_many(
        &self,
        transactions: Vec<DecodedTransaction>,
    ) -> Vec<Result<DecodedTransaction>> {
        let mut answers = Vec::with_capacity(transactions.len());
        for transaction in transactions {
            let (reply, answer) = oneshot::channel();
            match self.requests.send((transaction, reply)).await {
                Ok(()) => answers.push(Some(answer)),
                Err(_) => answers.push(None),
            }
        }
        let mut verdicts = Vec::with_capacity(answers.len());
        for answer in answers {
            let verdict = match answer {
                Some(answer) => match answer.await {
                    Ok((transaction, verdict)) => verdict.map(|()| transaction),
                    Err(_) => Err(Error::ShuttingDown),
                },
                None => Err(Error::ShuttingDown),
            };
            verdicts.push(verdict);
        }
        verdicts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainql::{Keypair, TransactionBuilder, TransactionLimits};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_transaction_gets_its_own_verdict_whatever_batch_it_lands_in() {
        let verifier = Verifier::start(2);
        let mut checks = Vec::new();
        for n in 0..300u64 {
            let builder = TransactionBuilder::new("verifier", Keypair::from_seed([(n % 200) as u8; 32]));
            let mut signed = builder.build(n, vec![format!("INSERT INTO t VALUES ({n})")]);
            let forged = n % 7 == 3;
            if forged {
                signed.signature[5] ^= 1;
            }
            let decoded = DecodedTransaction::from_signed(signed, &TransactionLimits::default(), "verifier")
                .expect("decodes");
            let hash = decoded.hash;
            let verifier = verifier.clone();
            checks.push(tokio::spawn(async move {
                (forged, hash, verifier.verify(decoded).await)
            }));
        }
        let mut refused = 0;
        for check in checks {
            let (forged, hash, verdict) = check.await.expect("check");
            match verdict {
                Ok(transaction) => {
                    assert!(!forged, "a forged signature passed");
                    assert_eq!(transaction.hash, hash, "the transaction comes back");
                }
                Err(error) => {
                    assert!(forged, "a good signature was refused: {error}");
                    refused += 1;
                }
            }
        }
        assert_eq!(refused, (0..300).filter(|n| n % 7 == 3).count());
        // A lone transaction on an idle verifier is a batch of one.
        let lone = TransactionBuilder::new("verifier", Keypair::from_seed([9; 32]))
            .build(0, vec!["SELECT 1".into()]);
        let lone = DecodedTransaction::from_signed(lone, &TransactionLimits::default(), "verifier")
            .expect("decodes");
        assert!(verifier.verify(lone).await.is_ok());

        // A batch gets one verdict per transaction, in order.
        let batch: Vec<DecodedTransaction> = (0..40u64)
            .map(|n| {
                let mut signed = TransactionBuilder::new("verifier", Keypair::from_seed([n as u8; 32]))
                    .build(n, vec!["SELECT 1".into()]);
                if n % 9 == 4 {
                    signed.signature[0] ^= 1;
                }
                DecodedTransaction::from_signed(signed, &TransactionLimits::default(), "verifier")
                    .expect("decodes")
            })
            .collect();
        let hashes: Vec<_> = batch.iter().map(|t| t.hash).collect();
        let verdicts = verifier.verify_many(batch).await;
        for (n, (verdict, hash)) in verdicts.into_iter().zip(hashes).enumerate() {
            match verdict {
                Ok(transaction) => assert!(n % 9 != 4 && transaction.hash == hash, "{n}"),
                Err(_) => assert_eq!(n % 9, 4, "{n}"),
            }
        }
    }
}
