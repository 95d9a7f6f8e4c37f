//! Keys, addresses and domain-separated ed25519 signatures.

use std::fmt;
use std::io::Write;
use std::path::Path;

use ed25519_dalek::Signer;
#[cfg(test)]
use ed25519_dalek::Verifier;

use crate::hash::Hash;
use crate::{Error, Result};

/// Signatures over a transaction sign `TRANSACTION_DOMAIN || 0x00 || transaction bytes`.
pub const TRANSACTION_DOMAIN: &str = "chainql/transaction/v1";
/// Signatures over a block header sign `BLOCK_HEADER_DOMAIN || 0x00 || header bytes`.
pub const BLOCK_HEADER_DOMAIN: &str = "chainql/block-header/v1";
const ADDRESS_DOMAIN: &str = "chainql/address/v1";
const KEY_FILE_MAGIC: &str = "chainql-ed25519-secret-key v1";

/// The bytes an ed25519 signature covers: a domain naming the message type and version, a zero
/// byte, then the encoded message. A signature for one kind of message is never valid for another.
pub fn signing_bytes(domain: &str, message: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(domain.len() + 1 + message.len());
    bytes.extend_from_slice(domain.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(message);
    bytes
}

/// An account's address: the first 20 bytes of a tagged blake3 digest of its public key.
/// Addresses order as their bytes do.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Address(pub [u8; 20]);

impl Address {
    /// The bytes as three big-endian integers, which compare as the bytes do: ordered maps of
    /// accounts compare addresses at every level of a search, and this takes no call to `memcmp`.
    fn words(&self) -> (u64, u64, u32) {
        let b = &self.0;
        (
            u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            u64::from_be_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
            u32::from_be_bytes([b[16], b[17], b[18], b[19]]),
        )
    }
}

impl Ord for Address {
    fn cmp(&self, other: &Address) -> std::cmp::Ordering {
        self.words().cmp(&other.words())
    }
}

impl PartialOrd for Address {
    fn partial_cmp(&self, other: &Address) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Address {
    /// The address of the public key whose encoding is `bytes`, without decoding the point
    /// (for keys already checked, such as the sender of a committed transaction).
    pub fn of_public_key(bytes: &[u8; 32]) -> Address {
        let digest = Hash::tagged(ADDRESS_DOMAIN, &[bytes]);
        let mut address = [0; 20];
        address.copy_from_slice(&digest.0[..20]);
        Address(address)
    }

    pub fn to_hex(&self) -> String {
        crate::hash::prefixed_hex(&self.0)
    }

    /// Parses `0x` followed by 40 hex digits.
    pub fn from_hex(text: &str) -> Result<Address> {
        let digits = text
            .strip_prefix("0x")
            .ok_or_else(|| Error::InvalidAddress(text.to_string()))?;
        let bytes = hex::decode(digits).map_err(|_| Error::InvalidAddress(text.to_string()))?;
        let bytes: [u8; 20] = bytes
            .try_into()
            .map_err(|_| Error::InvalidAddress(text.to_string()))?;
        Ok(Address(bytes))
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// An ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

/// Public keys read recently, by their bytes. Reading a key decompresses a curve point (a field
/// square root, about as costly as a third of a signature check), and a node reads its
/// senders' keys several times per transaction: at admission, in the proposal it checks, in the
/// part it forges, and again and again for a sender who sends many. A slot holds the last key
/// whose bytes map to it; a key that does not decode is never kept.
struct KeyCache {
    shards: [std::sync::Mutex<Vec<Option<ed25519_dalek::VerifyingKey>>>; KEY_CACHE_SHARDS],
}

const KEY_CACHE_SHARDS: usize = 64;
const KEY_CACHE_SLOTS_PER_SHARD: usize = 256;

static KEY_CACHE: KeyCache = KeyCache {
    shards: [const { std::sync::Mutex::new(Vec::new()) }; KEY_CACHE_SHARDS],
};

impl KeyCache {
    /// The shard and slot of `bytes`: from bytes of the key's y coordinate, which are spread
    /// evenly over keys. Keys chosen to share a slot only evict each other.
    fn slot(bytes: &[u8; 32]) -> (usize, usize) {
        let n = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        (
            n % KEY_CACHE_SHARDS,
            (n / KEY_CACHE_SHARDS) % KEY_CACHE_SLOTS_PER_SHARD,
        )
    }

    fn get(&self, bytes: &[u8; 32]) -> Option<ed25519_dalek::VerifyingKey> {
        let (shard, slot) = Self::slot(bytes);
        let slots = self.shards[shard]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        slots
            .get(slot)
            .copied()
            .flatten()
            .filter(|key| key.as_bytes() == bytes)
    }

    fn put(&self, key: ed25519_dalek::VerifyingKey) {
        let (shard, slot) = Self::slot(key.as_bytes());
        let mut slots = self.shards[shard]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if slots.is_empty() {
            slots.resize(KEY_CACHE_SLOTS_PER_SHARD, None);
        }
        slots[slot] = Some(key);
    }
}

impl PublicKey {
    /// Reads a 32-byte public key; refuses bytes that are not a point on the curve.
    pub fn from_bytes(bytes: &[u8]) -> Result<PublicKey> {
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| Error::InvalidPublicKey(format!("{} bytes, expected 32", bytes.len())))?;
        if let Some(key) = KEY_CACHE.get(&bytes) {
            return Ok(PublicKey(key));
        }
        let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map_err(|_| Error::InvalidPublicKey("not a valid ed25519 point".into()))?;
        KEY_CACHE.put(key);
        Ok(PublicKey(key))
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn address(&self) -> Address {
        Address::of_public_key(self.0.as_bytes())
    }

    /// Verifies `signature` over `domain`-separated `message`, in strict mode (no malleable or
    /// small-order signatures).
    pub fn verify(&self, domain: &str, message: &[u8], signature: &[u8]) -> Result<()> {
        let signature = parse_signature(signature)?;
        self.0
            .verify_strict(&signing_bytes(domain, message), &signature)
            .map_err(|_| Error::BadSignature)
    }

    pub(crate) fn inner(&self) -> &ed25519_dalek::VerifyingKey {
        &self.0
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey(0x{})", hex::encode(self.0.as_bytes()))
    }
}

pub(crate) fn parse_signature(bytes: &[u8]) -> Result<ed25519_dalek::Signature> {
    let bytes: [u8; 64] = bytes.try_into().map_err(|_| Error::BadSignature)?;
    Ok(ed25519_dalek::Signature::from_bytes(&bytes))
}

/// An ed25519 signing key. Its secret never appears in `Debug` output.
#[derive(Clone)]
pub struct Keypair(ed25519_dalek::SigningKey);

impl Keypair {
    /// A new key from the operating system's random number generator.
    pub fn generate() -> Keypair {
        Keypair(ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng))
    }

    /// A key from a 32-byte seed. Deterministic: use it for tests and fixtures.
    pub fn from_seed(seed: [u8; 32]) -> Keypair {
        Keypair(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    pub fn address(&self) -> Address {
        self.public_key().address()
    }

    /// Signs `domain`-separated `message`.
    pub fn sign(&self, domain: &str, message: &[u8]) -> [u8; 64] {
        self.0.sign(&signing_bytes(domain, message)).to_bytes()
    }

    /// Writes the key to `path`, readable and writable by the owner only (mode 0600). Refuses to
    /// overwrite an existing file.
    pub fn write_file(&self, path: &Path) -> Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(path, e))?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(|e| Error::io(path, e))?;
        let text = format!("{KEY_FILE_MAGIC}\n{}\n", hex::encode(self.0.to_bytes()));
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io(path, e))?;
        Ok(())
    }

    /// Reads a key written by [`Keypair::write_file`].
    pub fn read_file(path: &Path) -> Result<Keypair> {
        let metadata = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if metadata.len() > 4096 {
            return Err(Error::InvalidKeyFile {
                path: path.display().to_string(),
                reason: "file is too large to be a key".into(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let invalid = |reason: &str| Error::InvalidKeyFile {
            path: path.display().to_string(),
            reason: reason.to_string(),
        };
        let mut lines = text.lines();
        if lines.next() != Some(KEY_FILE_MAGIC) {
            return Err(invalid("missing the chainql key header"));
        }
        let seed = lines
            .next()
            .and_then(|line| hex::decode(line.trim()).ok())
            .ok_or_else(|| invalid("the secret is not hex"))?;
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| invalid("the secret is not 32 bytes"))?;
        Ok(Keypair::from_seed(seed))
    }

    /// Reads the key at `path`, or creates one there if there is none. Returns the key and
    /// whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Keypair, bool)> {
        if path.exists() {
            return Ok((Keypair::read_file(path)?, false));
        }
        let key = Keypair::generate();
        key.write_file(path)?;
        Ok((key, true))
    }
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keypair({})", self.address())
    }
}

/// Verifies many `(key, domain-separated message, signature)` triples at once.
///
/// Batch verification checks all signatures in one multi-scalar multiplication, about twice as
/// fast as one by one. When the batch fails, each signature is checked alone so the caller learns
/// which ones are bad. Returns one result per item, in order.
pub fn verify_batch(domain: &str, items: &[(PublicKey, &[u8], &[u8])]) -> Vec<Result<()>> {
    let mut messages = Vec::with_capacity(items.len());
    let mut signatures = Vec::with_capacity(items.len());
    let mut keys = Vec::with_capacity(items.len());
    let mut all_parsed = true;
    for (key, message, signature) in items {
        match parse_signature(signature) {
            Ok(signature) => signatures.push(signature),
            Err(_) => {
                all_parsed = false;
                break;
            }
        }
        messages.push(signing_bytes(domain, message));
        keys.push(*key.inner());
    }
    if all_parsed {
        let message_refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        if ed25519_dalek::verify_batch(&message_refs, &signatures, &keys).is_ok() {
            return items.iter().map(|_| Ok(())).collect();
        }
    }
    items
        .iter()
        .map(|(key, message, signature)| key.verify(domain, message, signature))
        .collect()
}

/// Verifies a signature in the non-strict way `verify_batch` does, for tests comparing the two.
#[cfg(test)]
fn verify_plain(key: &PublicKey, domain: &str, message: &[u8], signature: &[u8]) -> bool {
    parse_signature(signature)
        .map(|signature| key.0.verify(&signing_bytes(domain, message), &signature).is_ok())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_order_as_their_bytes() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut address = || {
            let mut bytes = [0u8; 20];
            for byte in &mut bytes {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                // Few distinct values, so many pairs share long prefixes.
                *byte = (state % 3) as u8 * 0x7f;
            }
            Address(bytes)
        };
        for _ in 0..10_000 {
            let (a, b) = (address(), address());
            assert_eq!(a.cmp(&b), a.0.cmp(&b.0), "{a} against {b}");
        }
    }

    #[test]
    fn signatures_are_domain_separated() {
        let key = Keypair::from_seed([7; 32]);
        let signature = key.sign(TRANSACTION_DOMAIN, b"hello");
        let public = key.public_key();
        assert!(public.verify(TRANSACTION_DOMAIN, b"hello", &signature).is_ok());
        assert!(public.verify(BLOCK_HEADER_DOMAIN, b"hello", &signature).is_err());
        assert!(public.verify(TRANSACTION_DOMAIN, b"hellO", &signature).is_err());
        assert!(verify_plain(&public, TRANSACTION_DOMAIN, b"hello", &signature));
    }

    #[test]
    fn batch_verification_names_the_bad_signature() {
        let keys: Vec<Keypair> = (0..5u8).map(|i| Keypair::from_seed([i; 32])).collect();
        let messages: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10]).collect();
        let mut signatures: Vec<[u8; 64]> = keys
            .iter()
            .zip(&messages)
            .map(|(k, m)| k.sign(TRANSACTION_DOMAIN, m))
            .collect();
        signatures[3][0] ^= 1;
        let items: Vec<(PublicKey, &[u8], &[u8])> = keys
            .iter()
            .zip(&messages)
            .zip(&signatures)
            .map(|((k, m), s)| (k.public_key(), m.as_slice(), s.as_slice()))
            .collect();
        let results = verify_batch(TRANSACTION_DOMAIN, &items);
        let ok: Vec<bool> = results.iter().map(Result::is_ok).collect();
        assert_eq!(ok, [true, true, true, false, true]);
    }

    #[test]
    fn keys_read_through_the_cache_are_the_keys_the_bytes_name() {
        let key = Keypair::from_seed([9; 32]).public_key().to_bytes();
        // Other bytes in the same slot (same first four bytes): one valid point, one not.
        let candidates = (0u8..=255).map(|n| {
            let mut bytes = key;
            bytes[4] ^= n;
            bytes[31] &= 0x7f;
            bytes
        });
        let direct = |bytes: &[u8; 32]| ed25519_dalek::VerifyingKey::from_bytes(bytes).ok();
        let valid = candidates
            .clone()
            .find(|b| *b != key && direct(b).is_some())
            .expect("a point");
        let invalid = candidates
            .clone()
            .find(|b| direct(b).is_none())
            .expect("a non-point");
        for _ in 0..2 {
            for bytes in [key, valid, key, valid] {
                let read = PublicKey::from_bytes(&bytes).expect("a valid key");
                assert_eq!(read.to_bytes(), bytes);
                assert_eq!(Some(read.0), direct(&bytes));
            }
            assert!(matches!(
                PublicKey::from_bytes(&invalid),
                Err(Error::InvalidPublicKey(_))
            ));
        }
        assert!(PublicKey::from_bytes(&key[..31]).is_err());
    }

    #[test]
    fn key_file_round_trip_and_mode() {
        let dir = std::env::temp_dir().join(format!("chainql-key-test-{}", std::process::id()));
        let path = dir.join("k.key");
        let _ = std::fs::remove_file(&path);
        let key = Keypair::generate();
        key.write_file(&path).expect("write key");
        assert!(key.write_file(&path).is_err(), "never overwrites a key");
        let read = Keypair::read_file(&path).expect("read key");
        assert_eq!(read.address(), key.address());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "not a key").expect("overwrite");
        assert!(matches!(
            Keypair::read_file(&path),
            Err(Error::InvalidKeyFile { .. })
        ));
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn address_hex_round_trip() {
        let address = Keypair::from_seed([1; 32]).address();
        assert_eq!(Address::from_hex(&address.to_hex()).expect("parse"), address);
        assert!(Address::from_hex("0x1234").is_err());
        assert!(Address::from_hex("1234").is_err());
    }
}
