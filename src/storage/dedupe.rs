//! Inline deduplication: one copy of each blob per store. When a blob lands in a repository
//! (upload, mount, manifest) and the cache names a path elsewhere in the store holding the same
//! digest, the new name becomes a link to those bytes (`Driver::link`: a hard link locally)
//! instead of a second copy. Decisions for one digest are serialised by a striped per-digest
//! lock; nothing locks the whole store.
//!
//! The cache may be stale or lost: a recorded path is checked before it is linked from, and a
//! record whose file is gone is forgotten. Reads never consult the cache, so a blob deleted from
//! one repository stays deleted there (zot #1733) and is untouched in the others.

use super::StoreError;
use super::driver::{Driver, DriverError, StoragePath};
use super::locks::Striped;
use crate::cache::{Cache, CacheError};
use crate::digest::Digest;
use std::sync::{Arc, Mutex, MutexGuard};

/// The dedupe state of one store.
pub(super) struct Dedupe {
    cache: Arc<dyn Cache>,
    digest_locks: Striped<Mutex<()>>,
}

/// Where a blob landing in a repository comes from.
pub(super) enum Source<'a> {
    /// A verified upload staged at this path; it is moved into place or dropped.
    Staged(&'a StoragePath),
    /// Another repository's copy, linked (mount).
    Existing(&'a StoragePath),
}

impl Dedupe {
    pub(super) fn new(cache: Arc<dyn Cache>) -> Dedupe {
        Dedupe {
            cache,
            digest_locks: Striped::default(),
        }
    }

    pub(super) fn cache(&self) -> &dyn Cache {
        &*self.cache
    }

    /// Serialises dedupe decisions about `digest`.
    pub(super) fn lock(&self, digest: &Digest) -> MutexGuard<'_, ()> {
        self.digest_locks.lock(digest)
    }

    /// Puts the blob `digest` (`size` bytes) at `target`: linked from a copy the cache names
    /// when one is still there, otherwise from `source`. Records `target` in the cache.
    pub(super) fn place(
        &self,
        driver: &dyn Driver,
        digest: &Digest,
        size: u64,
        source: Source<'_>,
        target: &StoragePath,
    ) -> Result<(), StoreError> {
        let _guard = self.lock(digest);
        // Content that arrives again is new to an age-based collector too.
        let already_there = driver
            .stat(target)?
            .is_some_and(|m| !m.is_dir && m.size == size)
            && match driver.touch(target) {
                Ok(()) => true,
                Err(DriverError::NotFound { .. }) => false,
                Err(e) => return Err(e.into()),
            };
        let source_used = !already_there
            && !self.link_from_original(driver, digest, size, target)?
            && match source {
                Source::Staged(staged) => {
                    driver.rename(staged, target)?;
                    true
                }
                Source::Existing(path) => {
                    match driver.link(path, target) {
                        // The source has as many names as the file system allows: a copy.
                        Err(e) if too_many_links(&e) => driver.copy(path, target)?,
                        linked => linked?,
                    }
                    self.record(digest, path);
                    true
                }
            };
        if let (Source::Staged(staged), false) = (source, source_used) {
            let _ = driver.delete(staged);
        }
        self.record(digest, target);
        Ok(())
    }

    /// Links `target` from a recorded copy of `digest`; false when none is left.
    fn link_from_original(
        &self,
        driver: &dyn Driver,
        digest: &Digest,
        size: u64,
        target: &StoragePath,
    ) -> Result<bool, StoreError> {
        while let Some(original) = self.original(driver, digest, size, target) {
            match driver.link(&original, target) {
                Ok(()) => return Ok(true),
                // Deleted since it was checked: forget it and look again.
                Err(DriverError::NotFound { .. }) => self.forget(digest, &original),
                // The file system's limit of names per file (ext4: 65,000): this copy stays
                // a copy of its own, and the push succeeds.
                Err(e) if too_many_links(&e) => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(false)
    }

    /// A recorded copy of `digest` other than `target` that still holds `size` bytes: the
    /// original when it is fine (one lookup, however many copies there are), else the first
    /// fine one of all. Records whose file is gone are forgotten on the way.
    fn original(
        &self,
        driver: &dyn Driver,
        digest: &Digest,
        size: u64,
        target: &StoragePath,
    ) -> Option<StoragePath> {
        let original = self
            .logged(self.cache.original(digest), "look up")
            .flatten()
            .and_then(|o| StoragePath::from_components(o.split('/')).ok());
        if let Some(path) = original.filter(|p| p != target)
            && driver
                .stat(&path)
                .ok()
                .flatten()
                .is_some_and(|m| !m.is_dir && m.size == size)
        {
            return Some(path);
        }
        let paths = self
            .logged(self.cache.paths(digest), "look up")
            .unwrap_or_default();
        for recorded in paths {
            let Ok(path) = StoragePath::from_components(recorded.split('/')) else {
                self.forget_recorded(digest, &recorded);
                continue;
            };
            if &path == target {
                continue;
            }
            match driver.stat(&path) {
                Ok(Some(m)) if !m.is_dir && m.size == size => return Some(path),
                // A wrong size is corruption for scrub to report; never link from it.
                Ok(Some(_)) => continue,
                Ok(None) => self.forget(digest, &path),
                Err(e) => tracing::warn!(%digest, path = %path, "dedupe: cannot stat: {e}"),
            }
        }
        None
    }

    /// Records that `path` holds `digest`; a cache failure costs only a later dedupe.
    pub(super) fn record(&self, digest: &Digest, path: &StoragePath) {
        self.logged(self.cache.put(digest, path.as_str()), "record");
    }

    /// Forgets that `path` holds `digest`.
    pub(super) fn forget(&self, digest: &Digest, path: &StoragePath) {
        self.forget_recorded(digest, path.as_str());
    }

    fn forget_recorded(&self, digest: &Digest, path: &str) {
        self.logged(self.cache.remove(digest, path), "forget");
    }

    fn logged<T>(&self, result: Result<T, CacheError>, what: &str) -> Option<T> {
        result
            .map_err(|e| tracing::warn!("dedupe: cannot {what} in the cache: {e}"))
            .ok()
    }
}

/// Whether a link failed because its source has as many names as the file system allows.
pub(super) fn too_many_links(e: &DriverError) -> bool {
    matches!(e, DriverError::Io { source, .. } if source.raw_os_error() == Some(libc::EMLINK))
}
