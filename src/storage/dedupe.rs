//! Inline deduplication: one copy of each blob per store. When a blob lands in a repository
//! (upload, mount, manifest) and the cache names a path elsewhere in the store holding the same
//! digest, the new name becomes a link to those bytes (`Driver::link`: a hard link locally)
//! instead of a second copy. Decisions for one digest are serialised by a striped per-digest
//! lock; nothing locks the whole store.
//!
//! A file takes only so many names (ext4: 65,000). A copy placed past that limit keeps bytes
//! of its own and becomes the digest's next original in the cache, so the copies after it
//! link to it: a digest in 130,000 repositories is 2 inodes, and each push or mount into
//! one costs a link, as into the second (issue 11).
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
    /// when one is still there, otherwise from `source`. Records `target` in the cache: as
    /// the digest's next original when the copy it would have linked to takes no more names.
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
        let from_original = if already_there {
            None
        } else {
            Some(self.link_from_original(driver, digest, size, target)?)
        };
        // Whether `target` now holds bytes of its own while the copy it would have shared
        // takes no more names.
        let past_the_limit = match (source, from_original) {
            // There already, or linked from the original: the source is not needed.
            (Source::Staged(staged), None | Some(FromOriginal::Linked)) => {
                let _ = driver.delete(staged);
                false
            }
            (Source::Existing(_), None | Some(FromOriginal::Linked)) => false,
            (Source::Staged(staged), Some(outcome)) => {
                driver.rename(staged, target)?;
                outcome == FromOriginal::Full
            }
            (Source::Existing(path), Some(outcome)) => {
                let copied = match driver.link(path, target) {
                    // The source has as many names as the file system allows: a copy.
                    Err(e) if too_many_links(&e) => {
                        driver.copy(path, target)?;
                        true
                    }
                    linked => linked.map(|()| false)?,
                };
                self.record(digest, path);
                copied || outcome == FromOriginal::Full
            }
        };
        if past_the_limit {
            // The next original: later copies link to it rather than each keeping bytes of
            // their own, so 130,000 repositories hold 2 inodes, not 65,001 (issue 11).
            tracing::info!(%digest, path = %target, "dedupe: the file system allows no more links to the copy of {digest}; {target} is its next original");
            self.logged(
                self.cache.put_original(digest, target.as_str()),
                "record the original",
            );
        } else {
            self.record(digest, target);
        }
        Ok(())
    }

    /// Links `target` from a recorded copy of `digest`.
    fn link_from_original(
        &self,
        driver: &dyn Driver,
        digest: &Digest,
        size: u64,
        target: &StoragePath,
    ) -> Result<FromOriginal, StoreError> {
        while let Some(original) = self.original(driver, digest, size, target) {
            match driver.link(&original, target) {
                Ok(()) => return Ok(FromOriginal::Linked),
                // Deleted since it was checked: forget it and look again.
                Err(DriverError::NotFound { .. }) => self.forget(digest, &original),
                Err(e) if too_many_links(&e) => return Ok(FromOriginal::Full),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(FromOriginal::NoCopy)
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

/// What linking a new copy from the recorded original came to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FromOriginal {
    /// The new copy is a link to it.
    Linked,
    /// No recorded copy is left to link from.
    NoCopy,
    /// It has as many names as the file system allows (ext4: 65,000).
    Full,
}

/// Whether a link failed because its source has as many names as the file system allows.
pub(super) fn too_many_links(e: &DriverError) -> bool {
    matches!(e, DriverError::Io { source, .. } if source.raw_os_error() == Some(libc::EMLINK))
}
