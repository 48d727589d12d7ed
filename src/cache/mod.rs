//! The dedupe `Cache` trait: which paths of a store hold the bytes of a digest, one of them the
//! "original" that new copies link to, plus a few named markers (the start-up pass's stamp).
//!
//! The cache only accelerates: the layouts on disk are the truth, every record may be stale
//! (callers check the path still holds the blob and forget it when not), and a lost cache is
//! rebuilt by the start-up pass. Every implementation runs the suite in `conformance`.

pub mod lmdb;

#[cfg(test)]
pub(crate) mod conformance;

use crate::digest::Digest;

/// A cache backend failed.
#[derive(Debug, thiserror::Error)]
#[error("{cache} cache: {op}: {message}")]
pub struct CacheError {
    /// The cache's name (`lmdb`, `redis`, `dynamodb`).
    pub cache: &'static str,
    /// What was being done.
    pub op: &'static str,
    /// The backend's message.
    pub message: String,
}

/// Digest → paths records of one store. Paths are the store's `StoragePath` strings. All
/// methods are blocking and safe to call concurrently.
pub trait Cache: Send + Sync {
    /// A short name for logs and errors.
    fn name(&self) -> &'static str;

    /// Records that `path` holds the bytes of `digest`. The first path recorded for a digest
    /// becomes its original; recording a path twice changes nothing.
    fn put(&self, digest: &Digest, path: &str) -> Result<(), CacheError>;

    /// `put` for many records at once (the start-up pass), in one transaction where the
    /// backend has them.
    fn put_many(&self, records: &[(Digest, String)]) -> Result<(), CacheError> {
        records.iter().try_for_each(|(d, p)| self.put(d, p))
    }

    /// Every path recorded for `digest`, the original first; empty when none.
    fn paths(&self, digest: &Digest) -> Result<Vec<String>, CacheError>;

    /// The path new copies of `digest` link to.
    fn original(&self, digest: &Digest) -> Result<Option<String>, CacheError> {
        Ok(self.paths(digest)?.into_iter().next())
    }

    /// Forgets that `path` holds `digest`. When it was the original, the next recorded path
    /// becomes the original; when it was the last, the digest is forgotten.
    fn remove(&self, digest: &Digest, path: &str) -> Result<(), CacheError>;

    /// A named marker's value.
    fn marker(&self, name: &str) -> Result<Option<String>, CacheError>;

    /// Sets a named marker.
    fn set_marker(&self, name: &str, value: &str) -> Result<(), CacheError>;
}
