//! The caches a store keeps beside its layouts, split by concern into three small traits:
//! - `DedupeIndex`: which paths of a store hold the bytes of a digest, one of them the
//!   "original" that new copies link to (dedupe);
//! - `UsageLog`: when tags were pushed and manifests pulled (retention's `keepTags` rules);
//! - `Markers`: a few named values (the start-up pass's stamps);
//! - `Leases`: time-limited holds that let one of several instances serving a store sweep it
//!   at a time (gc, retention, scrub, the start-up pass; DESIGN decision 11). berth asks for
//!   them only with a shared cache: an embedded cache means one process per root
//!   (`RootLock`). LMDB has them all the same (an environment is shared by the processes of
//!   one host), which is how the tests run several instances on one store.
//!
//! Every record belongs to a `Namespace`, one per store: several stores may share one backend
//! (one LMDB environment, one Redis database, later a DynamoDB table) and never see each
//! other's records. A backend that cannot be reached or refuses writes now says
//! `CacheError::Unavailable`, and the store goes on without it (`Outage`: full copies instead
//! of links, logged once per outage) rather than failing a push.
//!
//! Caches only accelerate: the layouts on disk are the truth, every record may be stale
//! (callers check a path still holds the blob and forget it when not), and a lost cache is
//! rebuilt by the start-up pass. Each trait has its suite in `conformance`, which every
//! implementation runs.

pub mod dynamodb;
pub mod lmdb;
mod outage;
pub mod redis;

#[cfg(test)]
pub(crate) mod conformance;

pub use outage::{Access, CacheHealth, Outage};

use crate::digest::Digest;
use crate::oci::{RepoName, Tag};
use crate::storage::driver::StoragePath;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Why a cache call failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The backend cannot be reached or refuses the call now (LMDB: its map or its disk is
    /// full); it may work again later. The store degrades: it stores without dedupe.
    #[error("{cache} cache unavailable: {op}: {message}")]
    Unavailable {
        /// The cache's name (`lmdb`, `redis`, `dynamodb`).
        cache: &'static str,
        /// What was being done.
        op: &'static str,
        /// The backend's message.
        message: String,
    },
    /// Any other failure, such as a damaged record.
    #[error("{cache} cache: {op}: {message}")]
    Failed {
        /// The cache's name.
        cache: &'static str,
        /// What was being done.
        op: &'static str,
        /// The backend's message.
        message: String,
    },
}

/// Whose records a cache call reads and writes: one store's. Stores sharing a backend have
/// different namespaces; instances serving one store use the same one. berth names a store
/// by its config key (`storage`, `storage.subPaths./a`), which stays the same when its root
/// directory moves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace(String);

impl Namespace {
    /// The namespace called `name` (any string; backends encode it as they need).
    pub fn new(name: &str) -> Namespace {
        Namespace(name.to_string())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 32 hex digits (128 bits) of the SHA-256 of the name: what backends start
    /// keys with, of fixed length whatever the name, so one namespace's keys are never a
    /// prefix of another's.
    pub fn hashed(&self) -> String {
        Digest::sha256_of(self.0.as_bytes()).hex()[..32].to_string()
    }
}

/// The dedupe index of one namespace: digest → the paths holding its bytes. All methods are
/// blocking and safe to call concurrently; each is atomic where the backend has transactions.
pub trait DedupeIndex: Send + Sync {
    /// Records that `path` holds the bytes of `digest`. The first path recorded for a digest
    /// becomes its original; recording a path twice changes nothing.
    fn put(&self, digest: &Digest, path: &StoragePath) -> Result<(), CacheError>;

    /// `put` for many records at once (the start-up pass), in one transaction where the
    /// backend has them.
    fn put_many(&self, records: &[(Digest, StoragePath)]) -> Result<(), CacheError> {
        records.iter().try_for_each(|(d, p)| self.put(d, p))
    }

    /// `put`, atomically answering the original recorded before it: `None` when the digest
    /// was unknown, so `path` is now its original. The one call a landing blob makes: one
    /// round trip on a remote cache for a new blob and for a known one alike (issue 14), and
    /// of several instances landing one new digest at once exactly one is told `None`.
    fn add(&self, digest: &Digest, path: &StoragePath) -> Result<Option<StoragePath>, CacheError>;

    /// Every path recorded for `digest`, the original first; empty when none.
    fn paths(&self, digest: &Digest) -> Result<Vec<StoragePath>, CacheError>;

    /// The path new copies of `digest` link to, if any is recorded.
    fn original(&self, digest: &Digest) -> Result<Option<StoragePath>, CacheError> {
        Ok(self.paths(digest)?.into_iter().next())
    }

    /// Records that `path` holds the bytes of `digest` and makes it the original, whatever
    /// was before; the previous original stays recorded as a copy. For when the file system
    /// allows the previous original no more names (ext4: 65,000), so new copies link to
    /// `path` instead of each keeping bytes of its own (issue 11).
    fn put_original(&self, digest: &Digest, path: &StoragePath) -> Result<(), CacheError>;

    /// Forgets that `path` holds `digest`; forgetting what was never recorded is no error.
    /// When it was the original, another recorded path becomes the original; when it was the
    /// last, the digest is forgotten.
    fn remove(&self, digest: &Digest, path: &StoragePath) -> Result<(), CacheError>;
}

/// The usage log of one namespace: when each tag was last pushed and each manifest last
/// pulled, per repository. Times are kept to the millisecond; a record keeps the later of
/// its old and new time, so batches may arrive in any order. Blocking, safe to call
/// concurrently.
pub trait UsageLog: Send + Sync {
    /// Records push times of tags, in one transaction where the backend has them.
    fn record_pushes(&self, pushes: &[(RepoName, Tag, SystemTime)]) -> Result<(), CacheError>;

    /// Records pull times of manifests, in one transaction where the backend has them.
    fn record_pulls(&self, pulls: &[(RepoName, Digest, SystemTime)]) -> Result<(), CacheError>;

    /// Every recorded push time of `repo`'s tags (of `repo` only, not of repositories nested
    /// in it), in no particular order.
    fn pushes(&self, repo: &RepoName) -> Result<Vec<(Tag, SystemTime)>, CacheError>;

    /// Every recorded pull time of `repo`'s manifests, in no particular order.
    fn pulls(&self, repo: &RepoName) -> Result<Vec<(Digest, SystemTime)>, CacheError>;
}

/// The name of a marker: a constant declared by the code that owns the marker, so no two
/// owners pick the same string by accident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkerKey(&'static str);

impl MarkerKey {
    /// The marker called `name`.
    pub const fn new(name: &'static str) -> MarkerKey {
        MarkerKey(name)
    }

    /// The name.
    pub fn as_str(&self) -> &'static str {
        self.0
    }
}

/// Named values of one namespace. Blocking, safe to call concurrently.
pub trait Markers: Send + Sync {
    /// The marker's value; `None` when never set.
    fn marker(&self, key: MarkerKey) -> Result<Option<String>, CacheError>;

    /// Sets the marker, replacing any value it had.
    fn set_marker(&self, key: MarkerKey, value: &str) -> Result<(), CacheError>;
}

/// The name of a lease: a constant declared by the code that sweeps, as for `MarkerKey`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseKey(&'static str);

impl LeaseKey {
    /// The lease called `name`.
    pub const fn new(name: &'static str) -> LeaseKey {
        LeaseKey(name)
    }

    /// The name.
    pub fn as_str(&self) -> &'static str {
        self.0
    }
}

/// Time-limited exclusive holds of one namespace, shared by every instance serving the
/// store. A holder names itself (a string unique to the process); a hold ends when released
/// or when its time-to-live passes without a renewal, so a killed holder's lease is taken
/// over. Blocking, safe to call concurrently.
pub trait Leases: Send + Sync {
    /// Takes the lease for `holder` until `ttl` from now when no other holder has it (or
    /// their hold expired), or extends it when `holder` has it already; false when another
    /// holder has it.
    fn acquire(&self, key: LeaseKey, holder: &str, ttl: Duration) -> Result<bool, CacheError>;

    /// Gives the lease up when `holder` has it; changes nothing otherwise.
    fn release(&self, key: LeaseKey, holder: &str) -> Result<(), CacheError>;
}

/// What a deduplicating store keeps in caches: its index and the pass's marker.
#[derive(Clone)]
pub struct DedupeCache {
    /// Digest → paths.
    pub index: Arc<dyn DedupeIndex>,
    /// The start-up pass's stamps.
    pub markers: Arc<dyn Markers>,
}

impl DedupeCache {
    /// Both from one backend that keeps them (LMDB), in one namespace.
    pub fn of<C: DedupeIndex + Markers + 'static>(cache: Arc<C>) -> DedupeCache {
        DedupeCache {
            index: cache.clone(),
            markers: cache,
        }
    }
}
