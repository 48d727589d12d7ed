//! Inline deduplication: one copy of each blob per store. When a blob lands in a repository
//! (upload, mount, manifest) and the cache names a path elsewhere in the store holding the same
//! digest, the new name shares those bytes instead of holding a second copy, by one of two
//! strategies (`Strategy`, chosen by the driver's capabilities):
//! - `HardLink`: the new name is a link to those bytes (`Driver::link`: a hard link locally).
//! - `Placeholder` (DESIGN decision 9, for drivers without links): the new name is a zero-byte
//!   placeholder whose metadata names the copy holding the bytes (`Driver::put_placeholder`);
//!   reads resolve it (`placeholders`). Deleting a copy that placeholders name promotes one of
//!   them first (`promote`): the bytes are copied into it server-side and the others the cache
//!   knows are re-pointed to it. The empty blob is never a placeholder.
//!
//! Decisions for one digest are serialised by a striped per-digest lock; nothing locks the
//! whole store.
//!
//! A file takes only so many names (ext4: 65,000). A copy placed past that limit keeps bytes
//! of its own and becomes the digest's next original in the cache, so the copies after it
//! link to it: a digest in 130,000 repositories is 2 inodes, and each push or mount into
//! one costs a link, as into the second (issue 11).
//!
//! The cache may be stale or lost: a recorded path is checked before it is linked from, and a
//! record whose file is gone is forgotten. Reads never consult the cache, so a blob deleted from
//! one repository stays deleted there (zot #1733) and is untouched in the others. A cache that
//! is unavailable costs only dedupe: blobs land as full copies (`cache::Outage`).

use super::StoreError;
use super::blobs::Verified;
use super::driver::{Capabilities, Driver, DriverError, StoragePath};
use super::locks::Striped;
use super::placeholders;
use crate::cache::{Access, CacheError, DedupeCache, DedupeIndex, MarkerKey, Outage};
use crate::digest::Digest;
use std::sync::{Mutex, MutexGuard};

/// How copies of one digest share its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Strategy {
    /// Hard links to one file (`Capabilities::hard_links`).
    HardLink,
    /// Zero-byte placeholders naming the copy that holds the bytes
    /// (`Capabilities::placeholders`).
    Placeholder,
}

impl Strategy {
    /// The strategy a driver's capabilities allow, hard links first; `None` when neither.
    pub(crate) fn for_driver(capabilities: Capabilities) -> Option<Strategy> {
        if capabilities.hard_links {
            Some(Strategy::HardLink)
        } else if capabilities.placeholders {
            Some(Strategy::Placeholder)
        } else {
            None
        }
    }

    /// Whether a driver with `capabilities` can dedupe this way.
    pub(crate) fn supported_by(self, capabilities: Capabilities) -> bool {
        match self {
            Strategy::HardLink => capabilities.hard_links,
            Strategy::Placeholder => capabilities.placeholders,
        }
    }
}

/// The dedupe state of one store.
pub(super) struct Dedupe {
    strategy: Strategy,
    /// The cache records every copy in the store: a pass completed with it (now, or before,
    /// as its marker says). Until then a copy the cache has no record of may be named by
    /// placeholders it has not recorded either (the cache was lost), so with placeholders such
    /// a copy is not deleted (zot's `dedupeRebuildDone` gate, PR #4195).
    complete: std::sync::atomic::AtomicBool,
    cache: DedupeCache,
    outage: Outage,
    digest_locks: Striped<Mutex<()>>,
}

/// Where a blob landing in a repository comes from.
pub(super) enum Source<'a> {
    /// A verified upload; it lands at the target or is discarded.
    Upload(Verified<'a>),
    /// Another repository's copy, linked (mount).
    Existing(&'a StoragePath),
}

impl Dedupe {
    pub(super) fn new(cache: DedupeCache, strategy: Strategy) -> Dedupe {
        Dedupe {
            strategy,
            complete: std::sync::atomic::AtomicBool::new(false),
            cache,
            outage: Outage::new("dedupe"),
            digest_locks: Striped::default(),
        }
    }

    /// Notes that the cache records every copy in the store (see `complete`).
    pub(super) fn set_complete(&self) {
        self.complete
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether the cache answers now (health and metrics).
    pub(super) fn health(&self) -> crate::cache::CacheHealth {
        self.outage.health()
    }

    /// How copies share bytes.
    pub(super) fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// The index, for the calls `logged` wraps.
    pub(super) fn index(&self) -> &dyn DedupeIndex {
        &*self.cache.index
    }

    /// A marker's value; `None` when unset or unreadable.
    pub(super) fn marker(&self, key: MarkerKey) -> Option<String> {
        let value = self.cache.markers.marker(key);
        self.logged(Access::Read, value, "read a marker").flatten()
    }

    /// Sets a marker; false when it could not be saved.
    pub(super) fn set_marker(&self, key: MarkerKey, value: &str) -> bool {
        let set = self.cache.markers.set_marker(key, value);
        self.logged(Access::Write, set, "save a marker").is_some()
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
        if self.strategy == Strategy::Placeholder {
            return self.place_by_placeholder(driver, digest, size, source, target);
        }
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
            (Source::Upload(upload), None | Some(FromOriginal::Linked)) => {
                upload.discard(driver);
                false
            }
            (Source::Existing(_), None | Some(FromOriginal::Linked)) => false,
            (Source::Upload(upload), Some(outcome)) => {
                upload.land(driver, target)?;
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
            self.record_original(digest, target);
        } else {
            self.record(digest, target);
        }
        Ok(())
    }

    /// `place` by placeholders, under the digest's lock: `target` becomes a placeholder
    /// naming a recorded copy that holds the bytes, or holds the bytes itself when none does
    /// (the first copy in the store, or the empty blob, which is never a placeholder), and is
    /// then recorded as the digest's original, the holder later copies name.
    fn place_by_placeholder(
        &self,
        driver: &dyn Driver,
        digest: &Digest,
        size: u64,
        source: Source<'_>,
        target: &StoragePath,
    ) -> Result<(), StoreError> {
        // Content that arrives again is new to an age-based collector too.
        let already_there = match placeholders::resolve(driver, target, digest)? {
            Some(found) if found.meta.size == size => match driver.touch(target) {
                Ok(()) => true,
                Err(DriverError::NotFound { .. }) => false,
                Err(e) => return Err(e.into()),
            },
            _ => false,
        };
        let mut holder = if already_there || placeholders::is_empty_blob(digest) {
            None
        } else {
            self.original(driver, digest, size, target)
        };
        // A mount from a copy the cache did not know (`path` holds the bytes: the store
        // resolved its placeholder): it becomes the original.
        if let (None, Source::Existing(path)) = (&holder, &source)
            && !already_there
            && !placeholders::is_empty_blob(digest)
            && self.record_original(digest, path)
        {
            holder = Some((*path).clone());
        }
        // Recorded before it is made: promotion finds a holder's placeholders through the
        // cache alone, so one it never recorded would dangle once the holder goes. When the
        // cache cannot record it, the copy keeps bytes of its own.
        if holder.is_some() && !self.record(digest, target) {
            holder = None;
        }
        let holds_bytes = match (&holder, source) {
            (Some(holder), Source::Upload(upload)) => {
                driver.put_placeholder(target, holder)?;
                upload.discard(driver);
                return Ok(());
            }
            (Some(holder), Source::Existing(_)) => {
                driver.put_placeholder(target, holder)?;
                return Ok(());
            }
            (None, Source::Upload(upload)) if already_there => {
                upload.discard(driver);
                false
            }
            (None, Source::Existing(_)) if already_there => false,
            (None, Source::Upload(upload)) => {
                upload.land(driver, target)?;
                true
            }
            (None, Source::Existing(path)) => {
                driver.copy(path, target)?;
                true
            }
        };
        if holds_bytes && !placeholders::is_empty_blob(digest) {
            // Also over a recorded original that is a placeholder (the cache promotes any
            // copy when its original is forgotten).
            self.record_original(digest, target);
        } else {
            self.record(digest, target);
        }
        Ok(())
    }

    /// Before the copy of `digest` (`size` bytes) at `deleted` goes, under the digest's lock:
    /// when placeholders the cache knows name it, another recorded full copy becomes their
    /// holder, or else one of them is promoted (the bytes copied into it, server-side); the
    /// others are re-pointed to it, and the cache records it as the original. Nothing to do
    /// for hard links or a placeholder. Fails, so nothing is deleted, when the cache cannot
    /// say which copies there are.
    pub(super) fn promote(
        &self,
        driver: &dyn Driver,
        digest: &Digest,
        deleted: &StoragePath,
        size: u64,
    ) -> Result<(), StoreError> {
        if self.strategy != Strategy::Placeholder || size == 0 {
            return Ok(());
        }
        let Some(paths) = self.logged(Access::Read, self.index().paths(digest), "look up") else {
            return Err(StoreError::DedupeUnavailable(format!(
                "cannot delete {deleted}: the dedupe cache cannot say which placeholders name it"
            )));
        };
        // Until the pass has recorded every placeholder (the cache was lost, or this is the
        // first start), placeholders naming this copy may be unknown to the cache, even when it
        // has records of the digest made since (a new push), so no copy holding bytes goes.
        if !self.complete.load(std::sync::atomic::Ordering::Acquire) {
            return Err(StoreError::DedupeUnavailable(format!(
                "cannot delete {deleted} yet: the start-up pass has not yet recorded the \
                 placeholders that may name it"
            )));
        }
        let mut named = Vec::new();
        let mut full = None;
        for path in paths.iter().filter(|p| *p != deleted) {
            match driver.stat(path)? {
                Some(m) if !m.is_dir && m.size == size => {
                    full.get_or_insert_with(|| path.clone());
                }
                Some(m) if !m.is_dir && m.size == 0 => {
                    if driver.placeholder_holder(path)?.as_ref() == Some(deleted) {
                        named.push(path.clone());
                    }
                }
                Some(_) => {}
                None => self.forget(digest, path),
            }
        }
        if named.is_empty() {
            return Ok(());
        }
        let holder = match full {
            Some(full) => full,
            None => {
                let promoted = named.remove(0);
                driver.copy(deleted, &promoted)?;
                tracing::info!(%digest, path = %promoted, deleted = %deleted, "dedupe: {promoted} holds the bytes of {digest} now that {deleted} goes");
                promoted
            }
        };
        self.record_original(digest, &holder);
        for path in &named {
            driver.put_placeholder(path, &holder)?;
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
            .logged(Access::Read, self.index().original(digest), "look up")
            .flatten();
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
            .logged(Access::Read, self.index().paths(digest), "look up")
            .unwrap_or_default();
        for path in paths {
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
    pub(super) fn record(&self, digest: &Digest, path: &StoragePath) -> bool {
        self.logged(Access::Write, self.index().put(digest, path), "record")
            .is_some()
    }

    /// Records `path` as the copy of `digest` that later copies link to or name; false when
    /// the cache could not (a cache failure costs only dedupe).
    pub(super) fn record_original(&self, digest: &Digest, path: &StoragePath) -> bool {
        self.logged(
            Access::Write,
            self.index().put_original(digest, path),
            "record the original",
        )
        .is_some()
    }

    /// Forgets that `path` holds `digest`.
    pub(super) fn forget(&self, digest: &Digest, path: &StoragePath) {
        self.logged(Access::Write, self.index().remove(digest, path), "forget");
    }

    /// The result of a cache call, or `None` when it failed; logged once per outage when
    /// the cache is unavailable, each time otherwise.
    pub(super) fn logged<T>(
        &self,
        access: Access,
        result: Result<T, CacheError>,
        what: &str,
    ) -> Option<T> {
        self.outage.call(access, what, result)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Namespace;
    use crate::cache::lmdb::{Lmdb, LmdbOptions};
    use crate::oci::RepoName;
    use crate::storage::driver::local::{LocalDriver, WriterChoice};
    use crate::storage::{BodyLength, Store};
    use std::os::unix::fs::MetadataExt;
    use std::sync::Arc;

    /// What the test's log lines say.
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Logs {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Logs {
        fn lines_with(&self, text: &str) -> usize {
            let logs = self.0.lock().unwrap();
            String::from_utf8_lossy(&logs)
                .lines()
                .filter(|l| l.contains(text))
                .count()
        }
    }

    /// Issue 12: a cache that refuses writes (LMDB's map is full: a real condition, not a
    /// fake cache) costs dedupe, not pushes: blobs land as full copies, a mount still links
    /// its source, the outage is logged once, and a line says when the cache works again.
    #[test]
    fn a_full_cache_costs_dedupe_not_pushes() {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _logging = tracing::subscriber::set_default(subscriber);
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let driver = LocalDriver::new(&root, false, WriterChoice::Buffered).unwrap();
        let small = LmdbOptions {
            durable: false,
            map_size: 1 << 20,
        };
        let cache = Lmdb::open(&dir.path().join("cache"), small)
            .and_then(|env| env.namespace(&Namespace::new("storage")))
            .unwrap();
        let cache = Arc::new(cache);
        let store = Store::new(Arc::new(driver), Some(DedupeCache::of(cache.clone())));
        let full = cache.fill_map();
        let blob = b"a layer pushed into several repositories";
        let digest = Digest::sha256_of(blob);
        let inode = |repo: &RepoName| {
            let file = root
                .join(repo.as_str())
                .join("blobs/sha256")
                .join(digest.hex());
            std::fs::metadata(file).unwrap().ino()
        };
        let push = |name: &str| {
            let repo: RepoName = name.parse().unwrap();
            let length = BodyLength::Exact(blob.len() as u64);
            store
                .blob_put(&repo, &digest, &mut &blob[..], length)
                .unwrap();
            inode(&repo)
        };

        let (a, b) = (push("a"), push("b"));
        assert_ne!(a, b, "without the cache, a full copy");
        let (c, from) = ("c".parse().unwrap(), "a".parse().unwrap());
        assert!(store.blob_mount(&c, &digest, Some(&from)).unwrap());
        assert_eq!(inode(&c), a, "a mount links its source");
        assert_eq!(logs.lines_with("the cache is unavailable"), 1);

        // Pages free again.
        drop(full);
        let d = push("d");
        assert_eq!(logs.lines_with("the cache is available again"), 1);
        assert_eq!(push("e"), d, "deduplicated again");
        assert_eq!(logs.lines_with("the cache is unavailable"), 1);
    }
}
