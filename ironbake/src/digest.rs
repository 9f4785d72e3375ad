//! Digests as the project writes them: sha256, lowercase hex.

use sha2::{Digest, Sha256};

/// sha256 of bytes, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
