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

    /// Puts the blob `digest` (`size` bytes) at `target`: sharing the bytes of a copy the
    /// cache names when one is still there, otherwise from `source`, and records `target`.
    ///
    /// One cache call for a new blob and one for a known blob (`DedupeIndex::add`, issue 14):
    /// it records `target` (before a placeholder is made there, since promotion finds a
    /// holder's placeholders through the cache alone) and answers the original. The digest
    /// lock serialises this process's decisions; several instances on one store are told
    /// apart by `add`, which answers `None` to exactly one of them. The others may find that
    /// one's copy not landed yet: each lands its own bytes (so the blob is never missing),
    /// looks again (`lands`) and replaces them by a share of the holder once it is there, so
    /// the bytes are stored once. A copy still missing then is a stale record, forgotten.
    pub(super) fn place(
        &self,
        driver: &dyn Driver,
        digest: &Digest,
        size: u64,
        source: Source<'_>,
        target: &StoragePath,
    ) -> Result<(), StoreError> {
        let _guard = self.lock(digest);
        if self.already_there(driver, digest, size, target)? {
            if let Source::Upload(upload) = source {
                upload.discard(driver);
            }
            self.record(digest, target);
            return Ok(());
        }
        let never_shared =
            self.strategy == Strategy::Placeholder && placeholders::is_empty_blob(digest);
        if never_shared {
            self.land(driver, source, target)?;
            self.record(digest, target);
            return Ok(());
        }
        let Some(before) = self.logged(Access::Write, self.index().add(digest, target), "record")
        else {
            // Without the cache, a full copy (a mount still links its source).
            self.land(driver, source, target)?;
            return Ok(());
        };
        let Some(original) = before.filter(|p| p != target) else {
            return self.place_first(driver, digest, source, target);
        };
        if holds(driver, &original, size)? {
            match self.share(driver, &original, target)? {
                Shared::Yes => {
                    if let Source::Upload(upload) = source {
                        upload.discard(driver);
                    }
                    return Ok(());
                }
                Shared::Full => {
                    self.land(driver, source, target)?;
                    self.next_original(digest, target);
                    return Ok(());
                }
                Shared::Gone => {}
            }
        }
        // Not there, or not yet: another instance may be landing it now.
        if self.land(driver, source, target)? == Landed::PastTheLimit {
            self.next_original(digest, target);
            return Ok(());
        }
        let holder = if self.lands(driver, &original, size)? {
            Some(original)
        } else {
            if driver.stat(&original)?.is_none() {
                self.forget(digest, &original);
            }
            self.original(driver, digest, size, target)
        };
        match holder {
            Some(holder) if self.share(driver, &holder, target)? == Shared::Yes => {}
            Some(_) | None => {
                // `target` holds the bytes: the holder later copies share (the cache may
                // have promoted a copy that holds none when it forgot the stale original).
                self.record_original(digest, target);
            }
        }
        Ok(())
    }

    /// Whether `holder`, which `add` named and which was missing, holds the blob now: it may
    /// be the copy another instance was told is the original a moment ago and is landing
    /// (a rename locally, a server-side copy on an object store), so a missing one is looked
    /// at again for up to `HOLDER_GRACE`. One still missing then is a stale record. Only
    /// that instance's copy becomes the holder, whatever the timing: were the others to
    /// take over from it while it lands, two placeholders could name each other.
    fn lands(
        &self,
        driver: &dyn Driver,
        holder: &StoragePath,
        size: u64,
    ) -> Result<bool, StoreError> {
        let started = std::time::Instant::now();
        let mut pause = std::time::Duration::from_millis(1);
        loop {
            match driver.stat(holder)? {
                Some(m) => return Ok(!m.is_dir && m.size == size),
                None if started.elapsed() >= HOLDER_GRACE => return Ok(false),
                None => {
                    std::thread::sleep(pause);
                    pause *= 2;
                }
            }
        }
    }

    /// Whether `target` holds the blob already (with placeholders: names a copy that holds
    /// it), marked new for an age-based collector since the content arrived again.
    fn already_there(
        &self,
        driver: &dyn Driver,
        digest: &Digest,
        size: u64,
        target: &StoragePath,
    ) -> Result<bool, StoreError> {
        let there = match self.strategy {
            Strategy::HardLink => driver
                .stat(target)?
                .is_some_and(|m| !m.is_dir && m.size == size),
            Strategy::Placeholder => placeholders::resolve(driver, target, digest)?
                .is_some_and(|found| found.meta.size == size),
        };
        Ok(there
            && match driver.touch(target) {
                Ok(()) => true,
                Err(DriverError::NotFound { .. }) => false,
                Err(e) => return Err(e.into()),
            })
    }

    /// `place` when `add` made `target` the digest's original: it gets the bytes of
    /// `source`. A mount from a copy the cache did not know (`path` holds the bytes: the
    /// store resolved its placeholder) makes that copy the holder `target` names, rather
    /// than a second copy of the bytes.
    fn place_first(
        &self,
        driver: &dyn Driver,
        digest: &Digest,
        source: Source<'_>,
        target: &StoragePath,
    ) -> Result<(), StoreError> {
        if let Source::Existing(path) = source {
            match self.strategy {
                Strategy::Placeholder if self.record_original(digest, path) => {
                    driver.put_placeholder(target, path)?;
                    return Ok(());
                }
                Strategy::Placeholder => {}
                Strategy::HardLink => {
                    self.record(digest, path);
                }
            }
        }
        if self.land(driver, source, target)? == Landed::PastTheLimit {
            self.next_original(digest, target);
        }
        Ok(())
    }

    /// Puts the bytes of `source` at `target` without the cache: an upload lands, a mount
    /// links its source (a copy when that takes no more names, or without links).
    fn land(
        &self,
        driver: &dyn Driver,
        source: Source<'_>,
        target: &StoragePath,
    ) -> Result<Landed, StoreError> {
        match source {
            Source::Upload(upload) => upload.land(driver, target)?,
            Source::Existing(path) if self.strategy == Strategy::HardLink => {
                match driver.link(path, target) {
                    Err(e) if too_many_links(&e) => {
                        driver.copy(path, target)?;
                        return Ok(Landed::PastTheLimit);
                    }
                    linked => linked?,
                }
            }
            Source::Existing(path) => driver.copy(path, target)?,
        }
        Ok(Landed::Here)
    }

    /// Makes `target` share the bytes of `holder` (a link or a placeholder naming it),
    /// replacing whatever `target` held in one step, so it is never missing.
    fn share(
        &self,
        driver: &dyn Driver,
        holder: &StoragePath,
        target: &StoragePath,
    ) -> Result<Shared, StoreError> {
        let shared = match self.strategy {
            Strategy::HardLink => driver.link(holder, target),
            Strategy::Placeholder => driver.put_placeholder(target, holder),
        };
        match shared {
            Ok(()) => Ok(Shared::Yes),
            Err(DriverError::NotFound { .. }) => Ok(Shared::Gone),
            Err(e) if too_many_links(&e) => Ok(Shared::Full),
            Err(e) => Err(e.into()),
        }
    }

    /// Records `target`, which holds bytes of its own while the copy it would have shared
    /// takes no more names, as the next original: later copies link to it rather than each
    /// keeping bytes of their own, so 130,000 repositories hold 2 inodes, not 65,001
    /// (issue 11).
    fn next_original(&self, digest: &Digest, target: &StoragePath) {
        tracing::info!(%digest, path = %target, "dedupe: the file system allows no more links to the copy of {digest}; {target} is its next original");
        self.record_original(digest, target);
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
        // Another instance's pass may have completed it (this one's skipped: `sweep_lease`).
        if !self.complete.load(std::sync::atomic::Ordering::Acquire)
            && self.marker(super::dedupe_pass::MARKER).is_none()
        {
            return Err(StoreError::DedupeUnavailable(format!(
                "cannot delete {deleted} yet: the start-up pass has not yet recorded the \
                 placeholders that may name it"
            )));
        }
        self.set_complete();
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

/// How long a push that found the original `add` named missing waits for it to land
/// before taking it for a stale record: far longer than a rename, and the wait is paid once
/// per stale record, which is then forgotten.
const HOLDER_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// What `Dedupe::share` came to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shared {
    /// The target shares the holder's bytes.
    Yes,
    /// The holder is gone.
    Gone,
    /// The holder has as many names as the file system allows (ext4: 65,000).
    Full,
}

/// What `Dedupe::land` came to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Landed {
    /// The target holds the bytes (its own, or a link to the mounted source).
    Here,
    /// The target holds a copy of its own: the mounted source takes no more names.
    PastTheLimit,
}

/// Whether `path` holds the `size` bytes of a blob (a placeholder holds none; a wrong size
/// is corruption for scrub to report, never shared).
fn holds(driver: &dyn Driver, path: &StoragePath, size: u64) -> Result<bool, StoreError> {
    Ok(driver
        .stat(path)?
        .is_some_and(|m| !m.is_dir && m.size == size))
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
