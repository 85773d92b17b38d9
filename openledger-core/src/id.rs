//! Content-addressed identifiers: 32-byte keccak-256 digests, the same hash the chain uses.
//!
//! ```
//! use openledger_core::ContentId;
//!
//! let a = ContentId::of(b"record");
//! let b: ContentId = a.to_string().parse().unwrap();
//! assert_eq!(a, b);
//! assert_eq!(ContentId::of_parts(&[b"rec", b"ord"]), ContentId::of_parts(&[b"rec", b"ord"]));
//! ```

use std::fmt;
use std::str::FromStr;

use alloy_primitives::{B256, keccak256};
use serde::{Deserialize, Serialize};

use crate::CoreError;

/// A 32-byte content-addressed id: keccak-256 of the bytes it names.
///
/// Displayed and parsed as `0x`-prefixed lowercase hex, so ids read the same off-chain and on-chain.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ContentId(pub B256);

impl ContentId {
    /// The id of `bytes`: `keccak256(bytes)`.
    pub fn of(bytes: impl AsRef<[u8]>) -> Self {
        Self(keccak256(bytes))
    }

    /// The id of several byte strings, each length-prefixed (u64 little-endian) so that
    /// `["ab", "c"]` and `["a", "bc"]` get different ids.
    pub fn of_parts(parts: &[&[u8]]) -> Self {
        let mut buf = Vec::with_capacity(parts.iter().map(|p| p.len() + 8).sum());
        for p in parts {
            buf.extend_from_slice(&(p.len() as u64).to_le_bytes());
            buf.extend_from_slice(p);
        }
        Self::of(&buf)
    }

    /// Wraps an existing 32-byte digest.
    pub const fn from_digest(digest: [u8; 32]) -> Self {
        Self(B256::new(digest))
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0.0
    }
}

impl fmt::Display for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl fmt::Debug for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentId({:#x})", self.0)
    }
}

impl FromStr for ContentId {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s.strip_prefix("0x").unwrap_or(s);
        if hex.len() != 64 {
            return Err(CoreError::InvalidId {
                input: s.chars().take(80).collect(),
                reason: format!("expected 64 hex digits, found {}", hex.len()),
            });
        }
        B256::from_str(hex)
            .map(Self)
            .map_err(|e| CoreError::InvalidId {
                input: s.chars().take(80).collect(),
                reason: e.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_keccak256_of_the_bytes() {
        // keccak256("") is a well-known constant.
        assert_eq!(
            ContentId::of(b"").to_string(),
            "0xc5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
        );
    }

    #[test]
    fn parts_are_length_prefixed() {
        assert_ne!(
            ContentId::of_parts(&[b"ab", b"c"]),
            ContentId::of_parts(&[b"a", b"bc"])
        );
    }

    #[test]
    fn parse_rejects_wrong_length_and_bad_hex() {
        assert!(matches!(
            "0x1234".parse::<ContentId>(),
            Err(CoreError::InvalidId { .. })
        ));
        let bad = format!("0x{}", "zz".repeat(32));
        assert!(matches!(
            bad.parse::<ContentId>(),
            Err(CoreError::InvalidId { .. })
        ));
    }

    #[test]
    fn serde_round_trip_is_hex() {
        let id = ContentId::of(b"x");
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<ContentId>(&json).unwrap(), id);
    }
}
