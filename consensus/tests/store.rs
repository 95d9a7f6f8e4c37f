//! The block store keeps committed blocks across reopen and cuts a torn last block.

use std::io::Write;

use chainql::{Hash, Keypair, TransactionBuilder};
use chainql_consensus::{BlockProposal, BlockStore, Error};

fn block(key: &Keypair, height: u64) -> chainql::wire::Block {
    let builder = TransactionBuilder::new("c", key.clone());
    BlockProposal {
        chain_id: "c".into(),
        height,
        parent_hash: Hash::ZERO,
        timestamp_ms: height,
        state_root: Hash::ZERO,
        log_ranges: vec![],
        transactions: vec![builder.build(height, vec![format!("INSERT INTO t VALUES ({height})")])],
        next_validators: vec![],
        evidence: vec![],
        parts: vec![],
    }
    .sign(key)
}

#[test]
fn blocks_survive_reopen_and_a_torn_tail_is_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = Keypair::from_seed([2; 32]);
    {
        let mut store = BlockStore::open(dir.path()).expect("open");
        for h in 1..=5 {
            store.append(&block(&key, h)).expect("append");
        }
        assert_eq!(store.height(), 5);
    }
    let path = dir.path().join("blocks.dat");
    let full_len = std::fs::metadata(&path).expect("stat").len();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open");
    file.write_all(&[200, 0, 0, 0, 9, 9, 9, 9, 6, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3])
        .expect("write");
    drop(file);

    let mut store = BlockStore::open(dir.path()).expect("reopen");
    assert_eq!(store.height(), 5);
    assert_eq!(store.truncated_bytes(), 19);
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), full_len);
    let third = store.get(3).expect("read").expect("present");
    assert_eq!(third, block(&key, 3));
    assert!(store.get(6).expect("read").is_none());
    store.append(&block(&key, 6)).expect("append after recovery");
    drop(store);
    let mut store = BlockStore::open(dir.path()).expect("reopen again");
    assert_eq!(store.height(), 6);
    assert_eq!(store.get(6).expect("read"), Some(block(&key, 6)));
}

#[test]
fn damage_before_the_last_block_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = Keypair::from_seed([2; 32]);
    {
        let mut store = BlockStore::open(dir.path()).expect("open");
        for h in 1..=3 {
            store.append(&block(&key, h)).expect("append");
        }
    }
    let path = dir.path().join("blocks.dat");
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[16 + 16 + 5] ^= 0x55;
    std::fs::write(&path, &bytes).expect("write");
    match BlockStore::open(dir.path()) {
        Err(Error::CorruptBlockStore { offset, reason, .. }) => {
            assert_eq!(offset, 16);
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    std::fs::write(&path, b"something else entirely").expect("write");
    assert!(matches!(
        BlockStore::open(dir.path()),
        Err(Error::CorruptBlockStore { .. })
    ));
}
