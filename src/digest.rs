//! Content digests: the typed `Digest` (algorithm + lowercase hex) that every edge parses
//! strings into, and the incremental `Hasher` that uploads feed as bytes stream in.
//!
//! Only the two registered algorithms of the OCI image spec are accepted (sha256, sha512), with
//! their exact hex lengths, so a `Digest` is always safe to turn into a file name.

use sha2::digest::common::hazmat::SerializableState;
use sha2::{Digest as _, Sha256, Sha512};
use std::fmt;
use std::str::FromStr;

/// A digest algorithm registered by the OCI image spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// SHA-256, the default and the one every client uses.
    Sha256,
    /// SHA-512.
    Sha512,
}

impl Algorithm {
    /// Every algorithm berth stores blobs under.
    pub const ALL: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Sha512];

    /// The name used in digest strings and as the blob directory name.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A parsed, validated content digest such as `sha256:2c26b4...`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

/// Why a string is not a digest berth accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// Not of the form `algorithm:encoded`.
    #[error("digest {0:?} is not of the form <algorithm>:<hex>")]
    Malformed(String),
    /// Well formed, but the algorithm is not sha256 or sha512.
    #[error("digest algorithm {0:?} is not supported (sha256, sha512)")]
    UnsupportedAlgorithm(String),
    /// The encoded part has the wrong length or characters for its algorithm.
    #[error("digest {0:?} has an invalid encoded part for its algorithm")]
    BadEncoding(String),
}

impl Digest {
    /// The algorithm part.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The lowercase hex part.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The digest of `bytes` with `algorithm`.
    pub fn of(algorithm: Algorithm, bytes: &[u8]) -> Digest {
        let mut hasher = Hasher::new(algorithm);
        hasher.update(bytes);
        hasher.finish()
    }

    /// The sha256 digest of `bytes`, as clients compute for manifests.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        Digest::of(Algorithm::Sha256, bytes)
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alg, hex) = s
            .split_once(':')
            .ok_or_else(|| DigestError::Malformed(s.to_string()))?;
        // The spec grammar allows other algorithms; we reject them as unsupported rather
        // than malformed so the error says what is wrong.
        let grammar_ok = !alg.is_empty()
            && alg
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b))
            && !hex.is_empty()
            && hex
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"=_-".contains(&b));
        if !grammar_ok {
            return Err(DigestError::Malformed(s.to_string()));
        }
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => return Err(DigestError::UnsupportedAlgorithm(alg.to_string())),
        };
        let valid_hex = hex.len() == algorithm.hex_len()
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid_hex {
            return Err(DigestError::BadEncoding(s.to_string()));
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_string(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An incremental hasher for one algorithm; cheap to clone, so an upload can keep a
/// checkpoint and roll back a failed chunk without re-reading what came before.
#[derive(Clone)]
pub enum Hasher {
    /// Running SHA-256 state.
    Sha256(Sha256),
    /// Running SHA-512 state.
    Sha512(Sha512),
}

impl Hasher {
    /// A fresh hasher.
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    /// The algorithm this hasher computes.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Hasher::Sha256(_) => Algorithm::Sha256,
            Hasher::Sha512(_) => Algorithm::Sha512,
        }
    }

    /// Feeds more bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    /// The running state as bytes, to be stored beside an upload so that another process
    /// continues the hash without reading again what it already hashed.
    pub fn save_state(&self) -> Vec<u8> {
        match self {
            Hasher::Sha256(h) => h.serialize().to_vec(),
            Hasher::Sha512(h) => h.serialize().to_vec(),
        }
    }

    /// A hasher of `algorithm` continuing from a `save_state`, or `None` if the bytes are not
    /// one of that algorithm.
    pub fn restore(algorithm: Algorithm, state: &[u8]) -> Option<Hasher> {
        Some(match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::deserialize(state.try_into().ok()?).ok()?),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::deserialize(state.try_into().ok()?).ok()?),
        })
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        let (algorithm, raw): (Algorithm, Vec<u8>) = match self {
            Hasher::Sha256(h) => (Algorithm::Sha256, h.finalize().to_vec()),
            Hasher::Sha512(h) => (Algorithm::Sha512, h.finalize().to_vec()),
        };
        Digest {
            algorithm,
            hex: to_hex(&raw),
        }
    }
}

/// Bytes as lowercase hex.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
    out
}

/// The bytes a hex string spells, or `None` if it is not hex of whole bytes.
pub(crate) fn from_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hash continued from a saved state ends where the uninterrupted one does, and a
    /// state of the other algorithm, or cut short, is refused.
    #[test]
    fn saved_states_continue_the_hash() {
        for algorithm in Algorithm::ALL {
            let mut whole = Hasher::new(algorithm);
            let mut first = Hasher::new(algorithm);
            whole.update(b"the first chunk, not a whole number of blocks");
            first.update(b"the first chunk, not a whole number of blocks");
            let state = first.save_state();
            let mut continued = Hasher::restore(algorithm, &state).unwrap();
            whole.update(b" and the second");
            continued.update(b" and the second");
            assert_eq!(continued.finish(), whole.finish());
            assert!(Hasher::restore(algorithm, &state[..state.len() - 1]).is_none());
        }
        let sha256 = Hasher::new(Algorithm::Sha256).save_state();
        assert!(Hasher::restore(Algorithm::Sha512, &sha256).is_none());
    }

    #[test]
    fn known_vectors() {
        assert_eq!(
            Digest::sha256_of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            Digest::of(Algorithm::Sha512, b"abc").hex(),
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
             2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
        );
    }

    #[test]
    fn parse_round_trips_and_rejects() {
        let s = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(s.parse::<Digest>().unwrap().to_string(), s);
        assert!(matches!(
            "sha256".parse::<Digest>(),
            Err(DigestError::Malformed(_))
        ));
        assert!(matches!(
            "md5:abcd".parse::<Digest>(),
            Err(DigestError::UnsupportedAlgorithm(_))
        ));
        assert!(matches!(
            "sha256:abcd".parse::<Digest>(),
            Err(DigestError::BadEncoding(_))
        ));
        let upper = s.to_uppercase().replace("SHA256", "sha256");
        assert!(upper.parse::<Digest>().is_err());
        assert!("sha256:../../etc/passwd".parse::<Digest>().is_err());
    }

    #[test]
    fn incremental_equals_one_shot() {
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(b"hello ");
        let checkpoint = h.clone();
        h.update(b"world");
        assert_eq!(h.finish(), Digest::sha256_of(b"hello world"));
        assert_eq!(checkpoint.finish(), Digest::sha256_of(b"hello "));
    }
}
