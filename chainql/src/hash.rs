//! blake3 digests and the binary Merkle tree used for transaction and state roots.

use std::fmt;

/// A 32-byte blake3 digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The all-zero hash: the root of an empty tree and the "no parent" value.
    pub const ZERO: Hash = Hash([0; 32]);

    /// Hashes `parts` under a domain `tag`, so digests of different kinds of data never collide.
    pub fn tagged(tag: &str, parts: &[&[u8]]) -> Hash {
        let mut hasher = blake3::Hasher::new();
        hasher.update(tag.as_bytes());
        hasher.update(&[0]);
        for part in parts {
            hasher.update(part);
        }
        Hash(*hasher.finalize().as_bytes())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Reads a hash from exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Hash> {
        Some(Hash(bytes.try_into().ok()?))
    }

    /// Lower-case hex with a `0x` prefix.
    pub fn to_hex(&self) -> String {
        prefixed_hex(&self.0)
    }

    /// Parses `0x`-prefixed (or bare) hex of 32 bytes.
    pub fn from_hex(text: &str) -> Option<Hash> {
        let text = text.strip_prefix("0x").unwrap_or(text);
        let bytes = hex::decode(text).ok()?;
        Hash::from_slice(&bytes)
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_hex())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_hex())
    }
}

const MERKLE_LEAF_TAG: &str = "chainql/merkle-leaf/v1";
const MERKLE_NODE_TAG: &str = "chainql/merkle-node/v1";

/// The Merkle root of `leaves`, in order.
///
/// Leaves and inner nodes are hashed under different tags (as in RFC 6962), so a leaf can never
/// be passed off as an inner node. An odd node at the end of a level is promoted unchanged, so
/// the tree needs no padding and a root commits to the exact number of leaves.
pub fn merkle_root(leaves: &[Hash]) -> Hash {
    if leaves.is_empty() {
        return Hash::ZERO;
    }
    let mut level: Vec<Hash> = leaves
        .iter()
        .map(|leaf| Hash::tagged(MERKLE_LEAF_TAG, &[&leaf.0]))
        .collect();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [left, right] => Hash::tagged(MERKLE_NODE_TAG, &[&left.0, &right.0]),
                [single] => *single,
                _ => unreachable!("chunks(2) yields one or two items"),
            })
            .collect();
    }
    level[0]
}

/// `0x` and the lower-case hex digits of `bytes`, in one allocation: addresses and hashes are
/// rendered for every transaction a block runs.
pub(crate) fn prefixed_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(2 + 2 * bytes.len());
    text.push_str("0x");
    for &byte in bytes {
        text.push(DIGITS[(byte >> 4) as usize] as char);
        text.push(DIGITS[(byte & 0xf) as usize] as char);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merkle_root_depends_on_order_and_count() {
        let a = Hash::tagged("t", &[b"a"]);
        let b = Hash::tagged("t", &[b"b"]);
        let c = Hash::tagged("t", &[b"c"]);
        assert_eq!(merkle_root(&[]), Hash::ZERO);
        assert_ne!(merkle_root(&[a]), a, "a single leaf is still tagged");
        assert_ne!(merkle_root(&[a, b]), merkle_root(&[b, a]));
        assert_ne!(merkle_root(&[a, b]), merkle_root(&[a, b, c]));
        assert_eq!(merkle_root(&[a, b, c]), merkle_root(&[a, b, c]));
    }

    #[test]
    fn hex_round_trip() {
        let h = Hash::tagged("t", &[b"x"]);
        assert_eq!(Hash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(Hash::from_hex("0x12"), None);
    }
}
