//! The ChainQL language layer: the wire types that are signed, hashed and stored, keys and
//! addresses, and the SQL checks a statement passes before it may enter the log.
//!
//! Everything here is pure: no I/O except key files, no clocks, no node state. A transaction is
//! built and signed by a client, decoded and checked by a node, and identified everywhere by its
//! hash:
//!
//! ```
//! use chainql::{DecodedTransaction, Keypair, TransactionBuilder, TransactionLimits};
//! use prost::Message;
//!
//! let builder = TransactionBuilder::new("devnet", Keypair::from_seed([1; 32]));
//! let signed = builder.build(0, vec!["INSERT INTO t VALUES (1, 'a')".into()]);
//! let bytes = signed.encode_to_vec();
//!
//! let decoded = DecodedTransaction::decode(&bytes, &TransactionLimits::default(), "devnet").unwrap();
//! decoded.verify_signature().unwrap();
//! assert_eq!(decoded.address, builder.key.address());
//! ```

pub mod contract;
mod crypto;
mod error;
mod hash;
pub mod sql;
pub mod sqlstate;
mod transaction;

/// Protobuf wire types, generated from `proto/chainql.proto`.
pub mod wire {
    #![allow(missing_debug_implementations)]
    include!(concat!(env!("OUT_DIR"), "/chainql.v1.rs"));

    /// What validators send each other and log (`proto/consensus.proto`).
    pub mod consensus {
        #![allow(missing_debug_implementations)]
        include!(concat!(env!("OUT_DIR"), "/chainql.consensus.v1.rs"));
    }
}

pub use crypto::{
    Address, BLOCK_HEADER_DOMAIN, Keypair, PublicKey, TRANSACTION_DOMAIN, signing_bytes, verify_batch,
};
pub use error::{Error, Result};
pub use hash::{Hash, merkle_root};
pub use transaction::{
    DecodedTransaction, TransactionBuilder, TransactionLimits, sign_transaction, transaction_hash,
    verify_transactions,
};
