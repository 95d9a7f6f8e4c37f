//! Pins the wire encoding, hash, signature and address of a fixed transaction: an accidental
//! change to the format (a field number, a type, a domain tag) fails here before it can split a
//! network.

use chainql::{Keypair, TransactionBuilder, transaction_hash, wire};
use prost::Message;

fn fixed() -> (Keypair, wire::SignedTransaction) {
    let key = Keypair::from_seed([42; 32]);
    let builder = TransactionBuilder {
        chain_id: "chainql-golden".into(),
        key: key.clone(),
        gas_limit: 1_000_000,
    };
    let signed = builder.build(
        7,
        vec![
            "CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT)".into(),
            "INSERT INTO t VALUES (1, 'one')".into(),
        ],
    );
    (key, signed)
}

#[test]
fn transaction_encoding_is_pinned() {
    let (key, signed) = fixed();
    assert_eq!(hex::encode(&signed.transaction), GOLDEN_TRANSACTION_HEX);
    assert_eq!(
        transaction_hash(&signed.transaction).to_hex(),
        GOLDEN_TRANSACTION_HASH
    );
    assert_eq!(hex::encode(&signed.signature), GOLDEN_SIGNATURE_HEX);
    assert_eq!(key.address().to_hex(), GOLDEN_ADDRESS);
    // SignedTransaction: field 1 (137 bytes, varint length 0x89 0x01), field 2 (64 bytes).
    assert_eq!(
        hex::encode(signed.encode_to_vec()),
        format!("0a8901{GOLDEN_TRANSACTION_HEX}1240{GOLDEN_SIGNATURE_HEX}")
    );
}

/// Field 1 chain id, 2 sender key, 3 nonce 7, 4 gas limit 1,000,000, 5 two statements.
const GOLDEN_TRANSACTION_HEX: &str = "0a0e636861696e716c2d676f6c64656e1220197f6b23e16c8532c6abc838facd5ea789be0c76b2920334039bfa8b3d368d61180720c0843d2a2e435245415445205441424c4520742028696420424947494e54205052494d415259204b45592c20762054455854292a1f494e5345525420494e544f20742056414c5545532028312c20276f6e652729";
const GOLDEN_TRANSACTION_HASH: &str = "0x978d030655bd10dbadf40913cb3623315b9c4842342d36bb86c9c6db835bd471";
const GOLDEN_SIGNATURE_HEX: &str = "af17e2477405a453dd60b4d5796019474477b86b03ec978e97b24d0b047d205cb004458a0d7660197831dfabd334a3a0974a02ee5a31a546c393dba71aeeed0b";
const GOLDEN_ADDRESS: &str = "0x62d8f524be6b95dafcfe296ab19860a810007eea";
