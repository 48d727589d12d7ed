//! The `Cache` trait: which paths of a store hold the bytes of a digest, one of them the
//! "original" that new copies link to (dedupe); a few named markers (the start-up pass's
//! stamp); and when tags were pushed and manifests pulled (retention's `keepTags` rules).
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

/// Which time a usage record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeKind {
    /// When a tag was last pushed; keys are `<repository>\n<tag>`.
    Pushed,
    /// When a manifest was last pulled; keys are `<repository>\n<digest>`.
    Pulled,
}

/// Digest → paths records of one store, and its usage times. Paths are the store's `StoragePath` strings. All
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

    /// Records that `path` holds the bytes of `digest` and makes it the original, whatever
    /// was before; the previous original stays recorded as a copy. For when the file system
    /// allows the previous original no more names (ext4: 65,000), so new copies link to
    /// `path` instead of each keeping bytes of its own (issue 11).
    fn put_original(&self, digest: &Digest, path: &str) -> Result<(), CacheError>;

    /// Forgets that `path` holds `digest`. When it was the original, the next recorded path
    /// becomes the original; when it was the last, the digest is forgotten.
    fn remove(&self, digest: &Digest, path: &str) -> Result<(), CacheError>;

    /// A named marker's value.
    fn marker(&self, name: &str) -> Result<Option<String>, CacheError>;

    /// Sets a named marker.
    fn set_marker(&self, name: &str, value: &str) -> Result<(), CacheError>;

    /// Records times (milliseconds since the Unix epoch) of `kind` under their keys, in one
    /// transaction where the backend has them; a key keeps the later of its old and new time.
    fn record_times(&self, kind: TimeKind, times: &[(String, u64)]) -> Result<(), CacheError>;

    /// Every recorded time of `kind` whose key starts with `prefix`.
    fn times(&self, kind: TimeKind, prefix: &str) -> Result<Vec<(String, u64)>, CacheError>;
}
