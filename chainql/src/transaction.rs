//! Building, signing, decoding and checking transactions.

use prost::Message;

use crate::crypto::{Address, Keypair, PublicKey, TRANSACTION_DOMAIN};
use crate::hash::Hash;
use crate::wire;
use crate::{Error, Result};

const TRANSACTION_HASH_DOMAIN: &str = "chainql/transaction-hash/v1";

/// Bounds on a transaction, checked before anything is allocated from its contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransactionLimits {
    /// Encoded `SignedTransaction`, in bytes.
    pub transaction_bytes_max: usize,
    /// One SQL statement, in bytes.
    pub statement_bytes_max: usize,
    /// Statements in one transaction.
    pub statements_max: usize,
    /// The largest gas limit a transaction may ask for.
    pub gas_limit_max: u64,
}

impl Default for TransactionLimits {
    fn default() -> Self {
        TransactionLimits {
            transaction_bytes_max: 1 << 20,
            statement_bytes_max: 256 << 10,
            statements_max: 256,
            gas_limit_max: 1_000_000_000,
        }
    }
}

/// The hash of encoded transaction bytes: the transaction's identity.
pub fn transaction_hash(transaction_bytes: &[u8]) -> Hash {
    Hash::tagged(TRANSACTION_HASH_DOMAIN, &[transaction_bytes])
}

/// Encodes and signs `transaction` with `key`. The caller sets `transaction.sender` to the key's
/// public key (see [`TransactionBuilder`]).
pub fn sign_transaction(transaction: &wire::Transaction, key: &Keypair) -> wire::SignedTransaction {
    let bytes = transaction.encode_to_vec();
    let signature = key.sign(TRANSACTION_DOMAIN, &bytes);
    wire::SignedTransaction {
        transaction: bytes,
        signature: signature.to_vec(),
    }
}

/// Builds and signs transactions for one account.
#[derive(Debug, Clone)]
pub struct TransactionBuilder {
    pub chain_id: String,
    pub key: Keypair,
    pub gas_limit: u64,
}

impl TransactionBuilder {
    pub const DEFAULT_GAS_LIMIT: u64 = 10_000_000;

    pub fn new(chain_id: impl Into<String>, key: Keypair) -> Self {
        TransactionBuilder {
            chain_id: chain_id.into(),
            key,
            gas_limit: Self::DEFAULT_GAS_LIMIT,
        }
    }

    /// A signed transaction with `statements` at `nonce`.
    pub fn build(&self, nonce: u64, statements: Vec<String>) -> wire::SignedTransaction {
        let transaction = wire::Transaction {
            chain_id: self.chain_id.clone(),
            sender: self.key.public_key().to_bytes().to_vec(),
            nonce,
            gas_limit: self.gas_limit,
            statements,
        };
        sign_transaction(&transaction, &self.key)
    }
}

/// A transaction decoded and checked against everything that needs no node state except the
/// signature: sizes, chain id, the sender's key. Its signature is checked separately
/// ([`DecodedTransaction::verify_signature`] or in a batch), because a node verifies many at once.
#[derive(Debug, Clone)]
pub struct DecodedTransaction {
    pub hash: Hash,
    pub body: wire::Transaction,
    pub sender: PublicKey,
    pub address: Address,
    pub signed: wire::SignedTransaction,
}

impl DecodedTransaction {
    /// Decodes an encoded `SignedTransaction`.
    pub fn decode(bytes: &[u8], limits: &TransactionLimits, chain_id: &str) -> Result<Self> {
        if bytes.len() > limits.transaction_bytes_max {
            return Err(Error::TransactionTooLarge {
                size: bytes.len(),
                max: limits.transaction_bytes_max,
            });
        }
        let signed = wire::SignedTransaction::decode(bytes)
            .map_err(|e| Error::Malformed(format!("signed transaction: {e}")))?;
        Self::from_signed(signed, limits, chain_id)
    }

    /// Checks a `SignedTransaction` that is already decoded.
    pub fn from_signed(
        signed: wire::SignedTransaction,
        limits: &TransactionLimits,
        chain_id: &str,
    ) -> Result<Self> {
        let size = signed.encoded_len();
        if size > limits.transaction_bytes_max {
            return Err(Error::TransactionTooLarge {
                size,
                max: limits.transaction_bytes_max,
            });
        }
        let body = wire::Transaction::decode(signed.transaction.as_slice())
            .map_err(|e| Error::Malformed(format!("transaction: {e}")))?;
        if body.chain_id != chain_id {
            return Err(Error::WrongChain {
                expected: chain_id.to_string(),
                found: body.chain_id,
            });
        }
        let sender = PublicKey::from_bytes(&body.sender)?;
        if body.statements.is_empty() {
            return Err(Error::Malformed(
                "a transaction needs at least one statement".into(),
            ));
        }
        if body.statements.len() > limits.statements_max {
            return Err(Error::TooManyStatements {
                count: body.statements.len(),
                max: limits.statements_max,
            });
        }
        for (index, statement) in body.statements.iter().enumerate() {
            if statement.len() > limits.statement_bytes_max {
                return Err(Error::StatementTooLarge {
                    index,
                    size: statement.len(),
                    max: limits.statement_bytes_max,
                });
            }
        }
        if body.gas_limit == 0 || body.gas_limit > limits.gas_limit_max {
            return Err(Error::InvalidGasLimit {
                gas_limit: body.gas_limit,
                max: limits.gas_limit_max,
            });
        }
        if signed.signature.len() != 64 {
            return Err(Error::BadSignature);
        }
        Ok(DecodedTransaction {
            hash: transaction_hash(&signed.transaction),
            address: sender.address(),
            sender,
            body,
            signed,
        })
    }

    pub fn verify_signature(&self) -> Result<()> {
        self.sender.verify(
            TRANSACTION_DOMAIN,
            &self.signed.transaction,
            &self.signed.signature,
        )
    }
}

/// Verifies the signatures of many transactions in one batch; one result per transaction.
pub fn verify_transactions(transactions: &[&DecodedTransaction]) -> Vec<Result<()>> {
    let items: Vec<(PublicKey, &[u8], &[u8])> = transactions
        .iter()
        .map(|t| {
            (
                t.sender,
                t.signed.transaction.as_slice(),
                t.signed.signature.as_slice(),
            )
        })
        .collect();
    crate::crypto::verify_batch(TRANSACTION_DOMAIN, &items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder() -> TransactionBuilder {
        TransactionBuilder::new("test-chain", Keypair::from_seed([3; 32]))
    }

    #[test]
    fn decodes_what_it_signs() {
        let signed = builder().build(0, vec!["INSERT INTO t VALUES (1)".into()]);
        let bytes = signed.encode_to_vec();
        let decoded =
            DecodedTransaction::decode(&bytes, &TransactionLimits::default(), "test-chain").expect("decode");
        decoded.verify_signature().expect("valid signature");
        assert_eq!(decoded.address, builder().key.address());
        assert_eq!(decoded.body.statements, ["INSERT INTO t VALUES (1)"]);
    }

    #[test]
    fn refusals_are_specific() {
        let limits = TransactionLimits::default();
        let signed = builder().build(0, vec!["SELECT 1".into()]);
        let bytes = signed.encode_to_vec();
        assert!(matches!(
            DecodedTransaction::decode(&bytes, &limits, "other-chain"),
            Err(Error::WrongChain { .. })
        ));
        let small = TransactionLimits {
            transaction_bytes_max: 10,
            ..limits
        };
        assert!(matches!(
            DecodedTransaction::decode(&bytes, &small, "test-chain"),
            Err(Error::TransactionTooLarge { .. })
        ));
        assert!(matches!(
            DecodedTransaction::decode(&[0xff, 0xff, 0xff], &limits, "test-chain"),
            Err(Error::Malformed(_))
        ));
        let mut tampered = signed.clone();
        tampered.signature[5] ^= 0x40;
        let decoded = DecodedTransaction::from_signed(tampered, &limits, "test-chain").expect("decodes");
        assert!(matches!(decoded.verify_signature(), Err(Error::BadSignature)));
        let long = builder().build(0, vec!["x".repeat(limits.statement_bytes_max + 1)]);
        assert!(matches!(
            DecodedTransaction::from_signed(long, &limits, "test-chain"),
            Err(Error::StatementTooLarge { .. })
        ));
        let empty = builder().build(0, vec![]);
        assert!(DecodedTransaction::from_signed(empty, &limits, "test-chain").is_err());
    }
}
