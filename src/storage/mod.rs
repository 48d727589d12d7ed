//! Registry semantics over a `Driver`: blobs, uploads, manifests, tags, the catalog and
//! referrers, written once for every backend.
//!
//! Invariants this module keeps:
//! - A blob path holds only complete content that hashed to its name: uploads are written
//!   under `.uploads/`, verified, then renamed into `blobs/` (see `uploads`); or, deduplicated
//!   by placeholders, a zero-byte placeholder naming a path that does, which every read
//!   resolves (`placeholders`) and which is promoted before that path is deleted (`dedupe`).
//! - `index.json` is replaced atomically and only under its repository's stripe lock
//!   (see `manifests`); reads take no lock.
//! - Nothing locks the whole store.

mod blobs;
mod catalog;
pub mod collector;
mod dedupe;
pub mod dedupe_pass;
mod digest_bytes;
pub mod driver;
pub(crate) mod error;
pub(crate) mod gc;
mod index_cache;
mod index_writes;
pub(crate) mod layout;
pub(crate) mod leftovers;
mod listing;
mod locks;
mod manifests;
mod placeholders;
mod reads;
mod referrers;
mod registry;
pub(crate) mod scrub;
#[cfg(test)]
mod store_suite;
pub mod sweep_lease;
mod uploads;
mod usage;

pub use crate::cache::CacheHealth;
pub use error::StoreError;
pub use gc::{Collected, TagTimes};
pub use manifests::{ManifestPut, StoredManifest};
pub use reads::Reads;
pub use referrers::ReferrersPage;
pub use registry::Registry;
pub use uploads::BodyLength;

use crate::cache::{Access, DedupeCache, LeaseKey, Leases, UsageLog};
use crate::digest::Digest;
use crate::oci::RepoName;
use digest_bytes::Held;
use driver::{Driver, DriverError, ObjectMeta, ObjectReader, StoragePath};
use locks::Striped;
use std::sync::Arc;

/// How long a presigned blob URL is valid: distribution's 20 minutes.
const REDIRECT_EXPIRY: std::time::Duration = std::time::Duration::from_secs(20 * 60);

/// Largest manifest accepted, as zot and distribution do (4 MiB).
pub const MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;

/// Bytes of manifests a store keeps in memory where reading them is a round trip: one
/// object may take a sixteenth (`digest_bytes`), which is `MAX_MANIFEST_SIZE`.
const MANIFEST_CACHE_SIZE: usize = 16 * MAX_MANIFEST_SIZE;

/// One registry store: a driver plus the in-memory state of upload sessions.
pub struct Store {
    driver: Arc<dyn Driver>,
    repo_locks: Striped<std::sync::Mutex<()>>,
    /// Shared by every write that puts content into a repository (`in_repo`), held alone by
    /// the removal of an empty one: writers never wait on each other or on index.json
    /// rewrites, and never land in a repository being removed.
    presence: Striped<std::sync::RwLock<()>>,
    /// Every repository, sorted, for `_catalog` pages.
    catalog_index: catalog::Catalog,
    /// Per-digest locks of blob files when there is no dedupe (see `blob_lock`).
    blob_locks: Striped<std::sync::Mutex<()>>,
    sessions: uploads::Sessions,
    indexes: index_cache::IndexCache,
    manifest_bytes: digest_bytes::DigestBytes,
    /// Small blobs' bytes, where the store is given a budget for them (`with_blob_cache`).
    blob_bytes: digest_bytes::DigestBytes,
    referrers: referrers::ReferrerCache,
    pending: index_writes::PendingChanges,
    dedupe: Option<dedupe::Dedupe>,
    /// With dedupe off, placeholders an earlier start left are being restored into full
    /// copies (`dedupe_pass::spawn_restore`): until that is done no copy holding bytes is
    /// deleted, since placeholders elsewhere may still name it.
    restoring: std::sync::atomic::AtomicBool,
    usage: Option<usage::Usage>,
    /// The last recorded scrub and the start ticket of the scrub that recorded it.
    scrub: std::sync::Mutex<(u64, scrub::ScrubState)>,
    /// Tickets handed to scrubs as they start, so overlapping ones are ordered exactly.
    scrub_starts: std::sync::atomic::AtomicU64,
    /// Paths the walk has already logged as skipped, so a directory that stays unreadable
    /// is logged once per process, not at every catalog request and sweep.
    walk_noted: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The sweeps' leases, when several instances may serve the store (`with_leases`).
    leases: Option<sweep_lease::SweepLeases>,
}

/// What a walk of a store's directories found (`Store::walk`).
#[derive(Debug, Default)]
struct StoreWalk {
    /// Repositories: directories holding `index.json` and `oci-layout`, sorted.
    repos: Vec<String>,
    /// Directories with a repository's name that hold `oci-layout` but no `index.json`: what
    /// a kill while a repository was being created or removed leaves (`leftovers`).
    remnants: Vec<RepoName>,
    /// Directories that could not be read, with the reason.
    unreadable: Vec<(String, String)>,
    /// Directories skipped because no repository can have their name (`lost+found`).
    skipped: Vec<String>,
}

/// A byte range of a blob to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// Last byte, inclusive.
    pub end: u64,
}

/// The bytes of a blob to send.
pub enum BlobBody {
    /// `len` bytes of a local file from `offset`, for sendfile(2).
    File {
        /// The open blob file.
        file: std::fs::File,
        /// First byte to send.
        offset: u64,
        /// Bytes to send.
        len: u64,
    },
    /// A stream of exactly `len` bytes.
    Stream(Box<dyn std::io::Read + Send>, u64),
}

/// A blob opened for reading.
pub struct BlobRead {
    /// Total size of the blob.
    pub size: u64,
    /// The bytes of the requested range (or of the whole blob).
    pub body: BlobBody,
}

impl Store {
    /// A store over `driver`, deduplicating blobs through `cache` when one is given, by the
    /// strategy the driver's capabilities allow: hard links where it has them, else
    /// placeholders (otherwise dedupe is off, with a warning).
    pub fn new(driver: Arc<dyn Driver>, cache: Option<DedupeCache>) -> Store {
        let strategy = dedupe::Strategy::for_driver(driver.capabilities());
        Store::with_dedupe_strategy(driver, cache, strategy)
    }

    /// `new` with the dedupe strategy given rather than chosen (the store suite runs both on
    /// a driver that has both); one the driver cannot keep turns dedupe off, with a warning.
    pub(crate) fn with_dedupe_strategy(
        driver: Arc<dyn Driver>,
        cache: Option<DedupeCache>,
        strategy: Option<dedupe::Strategy>,
    ) -> Store {
        let dedupe = match (cache, strategy) {
            (Some(cache), Some(strategy)) if strategy.supported_by(driver.capabilities()) => {
                let dedupe = dedupe::Dedupe::new(cache, strategy);
                // A cache a pass completed with records every copy (a lost one has no marker).
                if dedupe.marker(dedupe_pass::MARKER).is_some() {
                    dedupe.set_complete();
                }
                Some(dedupe)
            }
            (Some(_), _) => {
                tracing::warn!(
                    driver = driver.name(),
                    "dedupe is off: the storage can neither hard-link files nor keep placeholders"
                );
                None
            }
            (None, _) => None,
        };
        Store {
            driver,
            repo_locks: Striped::default(),
            presence: Striped::default(),
            catalog_index: catalog::Catalog::default(),
            blob_locks: Striped::default(),
            sessions: uploads::Sessions::default(),
            indexes: index_cache::IndexCache::default(),
            manifest_bytes: digest_bytes::DigestBytes::new(MANIFEST_CACHE_SIZE),
            blob_bytes: digest_bytes::DigestBytes::new(0),
            referrers: referrers::ReferrerCache::default(),
            pending: index_writes::PendingChanges::default(),
            dedupe,
            restoring: std::sync::atomic::AtomicBool::new(false),
            usage: None,
            scrub: std::sync::Mutex::new((0, scrub::ScrubState::default())),
            scrub_starts: std::sync::atomic::AtomicU64::new(0),
            walk_noted: std::sync::Mutex::default(),
            leases: None,
        }
    }

    /// Makes this store's sweeps take `leases` (held `ttl` between renewals), for when
    /// other instances serve the same store (see `sweep_lease`).
    pub fn with_leases(mut self, leases: Arc<dyn Leases>, ttl: std::time::Duration) -> Store {
        self.leases = Some(sweep_lease::SweepLeases::new(leases, ttl));
        self
    }

    /// Whether other instances may serve this store (it was given leases).
    pub(crate) fn has_leases(&self) -> bool {
        self.leases.is_some()
    }

    /// Runs `sweep` under the lease `key` when the store has leases (else at once); `None`
    /// when this round is skipped (see `sweep_lease`).
    pub fn leased<T>(&self, key: LeaseKey, sweep: impl FnOnce() -> T) -> Option<T> {
        match &self.leases {
            Some(leases) => leases.run(key, sweep),
            None => Some(sweep()),
        }
    }

    /// Records tag push times and/or manifest pull times in `log`, for retention rules.
    pub fn with_usage(mut self, log: Arc<dyn UsageLog>, pushes: bool, pulls: bool) -> Store {
        if pushes || pulls {
            self.usage = Some(usage::Usage::new(log, pushes, pulls));
        }
        self
    }

    /// Keeps up to `bytes` of blobs' bytes in memory (none at zero), for drivers where a read
    /// is a round trip: a pull of a blob read within the driver's `revalidate_after` makes
    /// no request, and one after it a `stat` instead of a read (`blob_read`).
    pub fn with_blob_cache(mut self, bytes: usize) -> Store {
        self.blob_bytes = digest_bytes::DigestBytes::new(bytes);
        self
    }

    /// The state of each cache the store uses (none without caches).
    pub fn cache_health(&self) -> Vec<CacheHealth> {
        let dedupe = self.dedupe.as_ref().map(dedupe::Dedupe::health);
        let usage = self.usage.as_ref().map(usage::Usage::health);
        dedupe.into_iter().chain(usage).collect()
    }

    /// Writes noted push and pull times to the cache.
    pub fn flush_usage(&self) {
        if let Some(usage) = &self.usage {
            usage.flush();
        }
    }

    /// Recorded push and pull times of `repo`, for retention (empty when not recorded).
    pub fn tag_times(&self, repo: &RepoName) -> TagTimes {
        self.usage
            .as_ref()
            .map_or_else(TagTimes::default, |u| u.times(repo))
    }

    /// Whether blobs are deduplicated.
    pub fn dedupes(&self) -> bool {
        self.dedupe.is_some()
    }

    /// How blobs are deduplicated, when they are.
    pub(crate) fn dedupe_strategy(&self) -> Option<dedupe::Strategy> {
        self.dedupe.as_ref().map(dedupe::Dedupe::strategy)
    }

    /// Where the bytes of `repo`'s blob `digest` are, its placeholder resolved.
    fn blob_resolved(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<placeholders::Resolved, StoreError> {
        placeholders::resolve(&*self.driver, &layout::blob(repo, digest)?, digest)?
            .ok_or_else(|| StoreError::BlobUnknown(digest.clone()))
    }

    /// Lands a verified upload in `repo`'s blobs, or a link or placeholder to the store's
    /// copy when dedupe knows one. Done in `in_repo`, with the repository (re)created first,
    /// so a collector removing it as empty cannot leave the blob in a directory that is no
    /// longer a repository (issue 10).
    fn place_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
        upload: blobs::Verified<'_>,
    ) -> Result<(), StoreError> {
        let target = layout::blob(repo, digest)?;
        self.in_repo(repo, || match &self.dedupe {
            Some(d) => d.place(
                &*self.driver,
                digest,
                size,
                dedupe::Source::Upload(upload),
                &target,
            ),
            None => {
                let _guard = self.blob_lock(digest);
                Ok(upload.land(&*self.driver, &target)?)
            }
        })
    }

    /// Whether `repo` exists (has an `index.json`).
    pub fn repo_exists(&self, repo: &RepoName) -> Result<bool, StoreError> {
        Ok(self
            .driver
            .stat_object(&layout::index_json(repo)?)?
            .is_some())
    }

    /// The size of a blob held by `repo`.
    pub fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<u64, StoreError> {
        match self.blob_cached(repo, digest)? {
            Some(bytes) => Ok(bytes.len() as u64),
            None => Ok(self.blob_resolved(repo, digest)?.meta.size),
        }
    }

    /// The bytes of `repo`'s blob `digest` from the blob cache: as held, if found present
    /// within the driver's `revalidate_after`, else once a `stat` (through a placeholder to its
    /// holder) finds it still there. `BlobUnknown` if it is gone; `None` if not held.
    fn blob_cached(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<Arc<Vec<u8>>>, StoreError> {
        let bytes = match self
            .blob_bytes
            .get(repo, digest, self.driver.revalidate_after())
        {
            None => return Ok(None),
            Some(Held::Fresh(bytes)) => return Ok(Some(bytes)),
            Some(Held::Stale(bytes)) => bytes,
        };
        match self.blob_resolved(repo, digest) {
            Ok(found) if found.meta.size == bytes.len() as u64 => {
                self.blob_bytes.confirmed(repo, digest);
                Ok(Some(bytes))
            }
            // Not these bytes (an object cut or replaced behind the store's back): read again.
            Ok(_) => {
                self.blob_bytes.forget(repo, digest);
                Ok(None)
            }
            Err(e) => {
                if matches!(e, StoreError::BlobUnknown(_)) {
                    self.blob_bytes.forget(repo, digest);
                }
                Err(e)
            }
        }
    }

    /// A URL from which the client can GET `repo`'s blob `digest` itself, where the driver
    /// hands out presigned URLs (else `None`: the bytes are served), valid for
    /// `REDIRECT_EXPIRY`. A placeholder's URL is its holder's. `BlobUnknown` if absent.
    pub fn blob_redirect(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<String>, StoreError> {
        if !self.driver.capabilities().presigned_urls {
            return Ok(None);
        }
        let resolved = self.blob_resolved(repo, digest)?;
        Ok(Some(
            self.driver.presigned_url(&resolved.path, REDIRECT_EXPIRY)?,
        ))
    }

    /// Opens a blob for reading, limited to `range` when given. A range whose start lies past
    /// the end is `RangeNotSatisfiable`; an end past the end is clipped (RFC 9110 14.1.2).
    pub fn blob_read(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<(BlobRead, Option<ByteRange>), StoreError> {
        if let Some(bytes) = self.blob_cached(repo, digest)? {
            let size = bytes.len() as u64;
            let range = clip(range, size)?;
            let (offset, len) = range.map_or((0, size), |r| (r.start, r.end - r.start + 1));
            let mut held = std::io::Cursor::new(Shared(bytes));
            held.set_position(offset);
            let body = BlobBody::Stream(Box::new(std::io::Read::take(held, len)), len);
            return Ok((BlobRead { size, body }, range));
        }
        let ticket = self.blob_bytes.ticket(repo, digest);
        if range.is_none()
            && !self.driver.capabilities().local_files
            && let Some(whole) = self.blob_read_whole(repo, digest, ticket)?
        {
            return Ok((whole, None));
        }
        let resolved = self.blob_resolved(repo, digest)?;
        let (path, size) = (resolved.path, resolved.meta.size);
        let range = clip(range, size)?;
        let offset = range.map_or(0, |r| r.start);
        let len = range.map_or(size, |r| r.end - r.start + 1);
        let missing = || StoreError::BlobUnknown(digest.clone());
        let file = if self.driver.capabilities().local_files {
            self.driver
                .file(&path)
                .map_err(|e| not_found_as(e, missing))?
        } else {
            None
        };
        if let Some(file) = file {
            let body = BlobBody::File { file, offset, len };
            return Ok((BlobRead { size, body }, range));
        }
        // A range is asked of the driver as such: an object store then sends only its bytes.
        let read = match range {
            Some(_) => self.driver.reader_range(&path, offset, len),
            None => self.driver.reader(&path, 0),
        };
        let ObjectReader { reader, .. } = read.map_err(|e| not_found_as(e, missing))?;
        let body = match range {
            Some(_) => BlobBody::Stream(reader, len),
            None => self.blob_body(repo, digest, ticket, reader, size)?,
        };
        Ok((BlobRead { size, body }, range))
    }

    /// The body of a whole blob of `size` bytes read from `reader`: streamed, or, where the
    /// blob cache makes room for it (`digest_bytes::DigestBytes::fill`), read whole and kept
    /// if it hashes to its digest and no delete began since `ticket`, so the next pulls make
    /// no read. Bytes that do not hash to their digest are served as stored (a stream would
    /// have sent them too) but never kept. A failed read is what the driver classified it as.
    fn blob_body(
        &self,
        repo: &RepoName,
        digest: &Digest,
        ticket: digest_bytes::Ticket,
        mut reader: Box<dyn std::io::Read + Send>,
        size: u64,
    ) -> Result<BlobBody, StoreError> {
        let Some(fill) = self.blob_bytes.fill(repo, digest, ticket, size) else {
            return Ok(BlobBody::Stream(reader, size));
        };
        let mut bytes = vec![0; size as usize];
        if let Err(e) = reader.read_exact(&mut bytes) {
            let path = layout::blob(repo, digest)?;
            let e = DriverError::from_read_error(self.driver.name(), &path, e);
            return Err(not_found_as(e, || StoreError::BlobUnknown(digest.clone())));
        }
        let bytes = Arc::new(bytes);
        fill.keep(Arc::clone(&bytes));
        Ok(BlobBody::Stream(
            Box::new(std::io::Cursor::new(Shared(bytes))),
            size,
        ))
    }

    /// A whole blob read with one request, where a `stat` would cost one more (an object
    /// store): the answer to the read carries the size. `None` when the object may be a
    /// placeholder, which the caller resolves first.
    fn blob_read_whole(
        &self,
        repo: &RepoName,
        digest: &Digest,
        ticket: digest_bytes::Ticket,
    ) -> Result<Option<BlobRead>, StoreError> {
        let read = self
            .driver
            .reader(&layout::blob(repo, digest)?, 0)
            .map_err(|e| not_found_as(e, || StoreError::BlobUnknown(digest.clone())))?;
        if placeholders::may_be(digest, read.size) {
            return Ok(None);
        }
        Ok(Some(BlobRead {
            size: read.size,
            body: self.blob_body(repo, digest, ticket, read.reader, read.size)?,
        }))
    }

    /// Deletes a blob from one repository; other repositories' links to it are untouched. A
    /// manifest `index.json` lists is refused: deleting its bytes would leave the index
    /// naming a manifest that is gone; it is deleted as a manifest.
    pub fn blob_delete(&self, repo: &RepoName, digest: &Digest) -> Result<(), StoreError> {
        let _guard = self.repo_locks.lock(repo);
        let listed = match self.read_index(repo) {
            Ok(index) => index.lists(digest),
            Err(StoreError::NameUnknown(_)) => false,
            Err(e) => return Err(e),
        };
        if listed {
            return Err(StoreError::BlobIsManifest(digest.clone()));
        }
        self.blob_delete_locked(repo, digest, |_| true).map(|_| ())
    }

    /// Deletes a blob of `repo` if `still(its metadata)` holds under the blob's lock (which a
    /// push or mount refreshing the same file holds too); returns whether it did. The caller
    /// holds the repository lock, so no manifest PUT checks its content in between.
    fn blob_delete_locked(
        &self,
        repo: &RepoName,
        digest: &Digest,
        still: impl FnOnce(&ObjectMeta) -> bool,
    ) -> Result<bool, StoreError> {
        let path = layout::blob(repo, digest)?;
        let _guard = self.blob_lock(digest);
        let unknown = || StoreError::BlobUnknown(digest.clone());
        let size = match self.driver.stat(&path)? {
            Some(meta) if !meta.is_dir && still(&meta) => meta.size,
            Some(meta) if !meta.is_dir => return Ok(false),
            _ => {
                // Gone behind the store's back: after this 404, no GET may serve it from
                // memory either.
                self.forget_bytes(repo, digest);
                return Err(unknown());
            }
        };
        // Placeholders naming this copy get another holder first (DESIGN decision 9).
        if let Some(d) = &self.dedupe {
            d.promote(&*self.driver, digest, &path, size)?;
        } else if size > 0 && self.restoring.load(std::sync::atomic::Ordering::Acquire) {
            return Err(StoreError::DedupeUnavailable(format!(
                "cannot delete {path} yet: placeholders are being restored into full copies, \
                 and some may still name it"
            )));
        }
        let deleted = self.driver.delete(&path);
        // After the delete, so a pull that read the bytes before it cannot keep them after.
        self.forget_bytes(repo, digest);
        deleted.map_err(|e| not_found_as(e, unknown))?;
        if let Some(d) = &self.dedupe {
            d.forget(digest, &path);
        }
        Ok(true)
    }

    /// Drops what memory holds of `repo`'s `digest`, as a manifest or a blob.
    fn forget_bytes(&self, repo: &RepoName, digest: &Digest) {
        self.manifest_bytes.forget(repo, digest);
        self.blob_bytes.forget(repo, digest);
    }

    /// Serialises what lands on and leaves `digest`'s blob files: with dedupe, its dedupe
    /// lock (held by every link, rename and refresh it decides); without, a stripe of the
    /// store's own.
    fn blob_lock(&self, digest: &Digest) -> std::sync::MutexGuard<'_, ()> {
        match &self.dedupe {
            Some(d) => d.lock(digest),
            None => self.blob_locks.lock(digest),
        }
    }

    /// Makes a blob available in `repo` without uploading it (cross-repository mount): from
    /// `from`, or, without `from`, from any repository of the store when dedupe knows one.
    /// Returns false, changing nothing, when no such copy exists.
    pub fn blob_mount(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: Option<&RepoName>,
    ) -> Result<bool, StoreError> {
        let source = match (from, &self.dedupe) {
            (Some(from), _) => layout::blob(from, digest)?,
            (None, Some(d)) => {
                let original = d.index().original(digest);
                match d.logged(Access::Read, original, "look up") {
                    Some(Some(path)) => path,
                    _ => return Ok(false),
                }
            }
            (None, None) => return Ok(false),
        };
        // A placeholder is mounted from the copy holding its bytes.
        let (source, size) = match placeholders::resolve(&*self.driver, &source, digest)? {
            Some(found) => (found.path, found.meta.size),
            None => return Ok(false),
        };
        let target = layout::blob(repo, digest)?;
        if self.dedupe.is_none() {
            // Mounted again: new to an age-based collector; deleted meanwhile: copied below.
            let _guard = self.blob_lock(digest);
            if self.driver.stat_object(&target)?.is_some() {
                match self.driver.touch(&target) {
                    Ok(()) => return Ok(true),
                    Err(DriverError::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let placed = match &self.dedupe {
            Some(d) => self.in_repo(repo, || {
                d.place(
                    &*self.driver,
                    digest,
                    size,
                    dedupe::Source::Existing(&source),
                    &target,
                )
            }),
            // An object store's copy is atomic and leaves nothing behind: straight in place.
            None if self.driver.capabilities().direct_uploads => {
                self.place_blob(repo, digest, size, blobs::Verified::Stored(&source))
            }
            None => {
                // Copied before `place_blob` holds anything, staged in `.uploads/` like every
                // blob write, so no partial copy (a local temporary file a crash left) ever has
                // a blob's place.
                let staging = layout::upload(repo, &layout::UploadId::new())?;
                let copied = self
                    .driver
                    .copy(&source, &staging)
                    .map_err(StoreError::from)
                    .and_then(|()| {
                        self.place_blob(repo, digest, size, blobs::Verified::Staged(&staging))
                    });
                if copied.is_err() {
                    let _ = self.driver.delete(&staging);
                }
                copied
            }
        };
        match placed {
            Ok(()) => Ok(true),
            // Deleted from its source between the check and the copy: nothing was mounted.
            Err(StoreError::Driver(DriverError::NotFound { .. })) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every repository, sorted. A repository is a directory holding `index.json` and
    /// `oci-layout`; repositories may nest, and layout directories are never descended.
    /// Directories that cannot be read are left out (see `walk`).
    pub fn catalog(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.walk()?.repos)
    }

    /// Walks the store's directories for repositories, descending only into directories a
    /// repository name can pass through. Only an unreadable root fails the walk: a directory
    /// below it that cannot be read (a mount point's root-owned `lost+found`, a repository
    /// with wrong permissions) hides only itself, is reported, and is logged once (issue 10:
    /// one such directory failed the catalog, every sweep, scrub and the dedupe pass).
    fn walk(&self) -> Result<StoreWalk, StoreError> {
        let since = self.catalog_index.walk_starts();
        let mut walk = StoreWalk::default();
        let mut pending: Vec<Option<StoragePath>> = vec![None];
        while let Some(dir) = pending.pop() {
            let entries = match (self.driver.list(dir.as_ref()), &dir) {
                (Ok(entries), _) => entries,
                (Err(e), None) => return Err(e.into()),
                (Err(e), Some(dir)) => {
                    self.note_unreadable(&mut walk, dir, &e);
                    continue;
                }
            };
            if let Some(repo) = dir
                .as_ref()
                .and_then(|d| d.as_str().parse::<RepoName>().ok())
            {
                let has = |name: &str| entries.iter().any(|e| e.name == name);
                if has(layout::INDEX_JSON) && has(layout::OCI_LAYOUT) {
                    walk.repos.push(repo.to_string());
                } else if has(layout::OCI_LAYOUT) && !has(layout::INDEX_JSON) {
                    walk.remnants.push(repo);
                }
            }
            // The listing says which children are directories: no `stat` per child (issue
            // 12: 100,000 of them on a large mirror's first walk).
            for entry in entries.iter().filter(|e| e.is_prefix()) {
                if layout::is_layout_entry(&entry.name) {
                    continue;
                }
                let child = match &dir {
                    Some(d) => d.join(&entry.name),
                    None => StoragePath::from_components([entry.name.as_str()]),
                };
                // Names that cannot be path components cannot be repositories either.
                let Ok(child) = child else { continue };
                // Every prefix of a repository name is one too, so below a directory whose
                // path is none there is no repository: it is not read at all.
                if child.as_str().parse::<RepoName>().is_ok() {
                    pending.push(Some(child));
                } else {
                    if self.first_note(&child) {
                        tracing::info!(path = %child, "not a repository name: skipped");
                    }
                    walk.skipped.push(child.to_string());
                }
            }
        }
        walk.repos.sort();
        walk.remnants.sort();
        walk.unreadable.sort();
        walk.skipped.sort();
        self.catalog_index.walked(&walk.repos, since);
        Ok(walk)
    }

    fn note_unreadable(&self, walk: &mut StoreWalk, path: &StoragePath, e: &DriverError) {
        if self.first_note(path) {
            tracing::warn!(
                path = %path,
                "cannot read this directory: it is skipped (not listed, collected, deduplicated \
                 or scrubbed) while it stays so: {e}"
            );
        }
        walk.unreadable.push((path.to_string(), e.to_string()));
    }

    /// Whether `path` is noted by the walk for the first time in this process.
    fn first_note(&self, path: &StoragePath) -> bool {
        self.walk_noted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(path.to_string())
    }

    /// Runs `f` holding `repo`'s presence shared, after creating the repository's layout
    /// files if it does not exist (yet, or any more: the collector removes empty repositories
    /// holding the presence alone). Whatever `f` writes into the repository therefore lands
    /// in a repository (issue 10). Lock order: presence, then the repository lock.
    fn in_repo<T>(
        &self,
        repo: &RepoName,
        f: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let _present = self.presence.read(repo);
        if !self.repo_exists(repo)? {
            let _guard = self.repo_locks.lock(repo);
            if !self.repo_exists(repo)? {
                // The marker first: a repository is a directory with both files, and
                // index.json is what makes it one (`repo_exists`), so a crash in between
                // leaves no repository without its marker.
                self.driver
                    .put(&layout::oci_layout(repo)?, layout::OCI_LAYOUT_CONTENT)?;
                let empty = serde_json::to_vec(&crate::oci::ImageIndex::empty())
                    .expect("an index always serializes");
                // Created only where none is: a store in another process may have created
                // the repository and listed a tag in it since `repo_exists` looked.
                self.driver.create(&layout::index_json(repo)?, &empty)?;
                self.catalog_index.changed(repo.as_str(), true);
            }
        }
        f()
    }
}

/// `range` of a blob of `size` bytes as it is sent: an end past the end clipped, a start
/// past it `RangeNotSatisfiable` (RFC 9110 14.1.2).
fn clip(range: Option<ByteRange>, size: u64) -> Result<Option<ByteRange>, StoreError> {
    match range {
        Some(r) if r.start >= size || r.start > r.end => {
            Err(StoreError::RangeNotSatisfiable { size })
        }
        Some(r) => Ok(Some(ByteRange {
            start: r.start,
            end: r.end.min(size - 1),
        })),
        None => Ok(None),
    }
}

/// Bytes held by the blob cache, read by a `Cursor` without a copy.
struct Shared(Arc<Vec<u8>>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Maps a driver's `NotFound` to the registry error the caller names.
fn not_found_as(e: DriverError, missing: impl FnOnce() -> StoreError) -> StoreError {
    match e {
        DriverError::NotFound { .. } => missing(),
        other => other.into(),
    }
}
