//! Digest helpers shared by the PKI and the protocol layer.
//!
//! SHA-256 comes from ring (the same code that backs P-256 signatures); SM3 from the RustCrypto
//! `sm3` crate, the hash of the SM2 signature suite.

use sm3::Digest as _;

/// Size in bytes of a SHA-256 or SM3 digest.
pub const DIGEST_BYTES: usize = 32;

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; DIGEST_BYTES] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; DIGEST_BYTES];
    out.copy_from_slice(digest.as_ref());
    out
}

/// SM3 (GB/T 32905) of `bytes`.
pub fn sm3(bytes: &[u8]) -> [u8; DIGEST_BYTES] {
    let digest = sm3::Sm3::digest(bytes);
    let mut out = [0u8; DIGEST_BYTES];
    out.copy_from_slice(digest.as_slice());
    out
}

/// SHA-1 of `bytes`, used only for key identifiers (RFC 5280 §4.2.1.2 method 1), never for
/// signatures.
pub(crate) fn sha1_key_identifier(bytes: &[u8]) -> [u8; 20] {
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, bytes);
    let mut out = [0u8; 20];
    out.copy_from_slice(digest.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_the_fips_180_abc_vector() {
        assert_eq!(
            hex::encode(sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn sm3_matches_the_gbt_32905_abc_vector() {
        assert_eq!(
            hex::encode(sm3(b"abc")),
            "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
        );
    }

    #[test]
    fn sha1_key_identifier_matches_the_fips_180_abc_vector() {
        assert_eq!(
            hex::encode(sha1_key_identifier(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
    }
}
