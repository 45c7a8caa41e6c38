//! Key text: generation, hashing, and constant-time comparison.
//!
//! A virtual key is `fk-` followed by 43 base62 characters (256 random bits from the OS's
//! generator through `rand`). Only its SHA-256 (hex) is stored; [`prefix`] gives the first
//! characters, shown in lists so a person can tell keys apart.

use sha2::{Digest, Sha256};

/// What every virtual key starts with.
pub const KEY_PREFIX: &str = "fk-";
/// Characters of a key shown in lists (`fk-` and 6 more).
const SHOWN: usize = 9;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A new key's text: `fk-` + 43 base62 characters (256 random bits).
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes[..]);
    // Base62 of a 256-bit number, by repeated division of the big-endian bytes.
    let mut digits = Vec::with_capacity(43);
    let mut number = bytes.to_vec();
    for _ in 0..43 {
        let mut remainder = 0u32;
        for byte in number.iter_mut() {
            let value = (remainder << 8) | u32::from(*byte);
            *byte = (value / 62) as u8;
            remainder = value % 62;
        }
        digits.push(BASE62[remainder as usize]);
    }
    let mut key = String::from(KEY_PREFIX);
    key.extend(digits.iter().rev().map(|&d| d as char));
    key
}

/// A new key's id (not secret): `key_` + 16 hex characters.
pub fn new_id() -> String {
    let mut bytes = [0u8; 8];
    rand::fill(&mut bytes[..]);
    format!("key_{}", hex(&bytes))
}

/// SHA-256 of `key`, lowercase hex: what the store keeps.
pub fn hash(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

/// The first characters of `key`, shown in lists.
pub fn prefix(key: &str) -> String {
    key.chars().take(SHOWN).collect()
}

/// `a == b` in time that does not depend on where they differ (both are hashed first, so
/// the length is not revealed either).
pub fn secrets_equal(a: &str, b: &str) -> bool {
    let (a, b) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_random_base62() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert_eq!(a.len(), 3 + 43);
        assert!(a.starts_with("fk-"));
        assert!(a[3..].bytes().all(|c| c.is_ascii_alphanumeric()), "{a}");
        assert_eq!(prefix(&a), a[..9]);
        assert!(new_id().starts_with("key_"));
    }

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn secrets_compare() {
        assert!(secrets_equal("admin-secret", "admin-secret"));
        assert!(!secrets_equal("admin-secret", "admin-secreT"));
        assert!(!secrets_equal("admin-secret", ""));
    }
}
