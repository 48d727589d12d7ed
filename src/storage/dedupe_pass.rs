//! The start-up dedupe pass: with dedupe on, links every duplicate copy of a blob in the store
//! to one copy and records every blob in the cache, in ONE walk of the store (zot walks the
//! whole store once per digest), in batches of repositories so its memory does not grow with
//! the store. It runs in the background while berth serves, and takes each digest's dedupe
//! lock only while deciding and linking that digest (in one batch), so pushes and pulls go on.
//!
//! Hashing is only needed where two separate copies of a digest exist: the copy kept is
//! verified against its digest first (on the background rayon pool), so a damaged copy never
//! replaces an intact one. A marker in the cache holds a stamp of every repository's blob
//! directories as the last pass left them; repositories whose stamp is unchanged are not
//! walked again, and a deleted cache (no marker) means a full walk.
//!
//! One digest in many repositories (issue 11: a base layer in 100,000): its files are looked
//! at and linked on every thread of the pool, not one after another, and where the file
//! system allows the kept copy no more names (ext4: 65,000) the copy that met the limit is
//! verified and becomes the original for the rest, and the cache's: 130,000 copies end up 2
//! inodes. Progress is logged per tenth of the repositories walked.
//!
//! With placeholders (`dedupe::Strategy::Placeholder`, DESIGN decision 9) the same walk
//! rebuilds the cache from the store alone: each placeholder's metadata names the copy holding
//! its bytes, so every copy is recorded and the holder becomes the original again, and
//! separate full copies become placeholders naming one verified copy. With `dedupe: false` on
//! a store whose driver dedupes by placeholders, `restore` makes every placeholder a full copy
//! again, as zot's RestoreDedupedBlobs does (hard links need no restore).

use super::blobs::BlobFile;
use super::dedupe::Strategy;
use super::driver::{ObjectMeta, StoragePath};
use super::placeholders::{self, Lookup};
use super::{Store, StoreError, layout};
use crate::cache::{Access, LeaseKey, MarkerKey};
use crate::digest::{Algorithm, Digest};
use crate::oci::RepoName;
use rayon::prelude::*;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The lease of the pass: of several instances serving one store, one runs it.
pub const LEASE: LeaseKey = LeaseKey::new("dedupe-pass");

/// The lease of the restore with `dedupe: false`.
pub const RESTORE_LEASE: LeaseKey = LeaseKey::new("dedupe-restore");

/// The cache marker holding the repository stamps of the last complete pass.
pub(super) const MARKER: MarkerKey = MarkerKey::new("dedupe-pass");

/// Copies from which a digest's links are spread over the pool rather than made in one task
/// (issue 11: one base layer in 100,000 repositories). Below this a digest's links take a
/// fraction of a second, and the pool is better spread over digests. Each link changes the
/// one shared inode, so threads gain less than their number: with the 2 threads of a 2-core
/// machine, one blob in 100,000 repositories was looked at and linked in 20.6 s instead of
/// 30.7 s, and over one blob in 20,000 the first pass took a median 8.2 s instead of 12.1 s
/// (11 runs each, beside other work; `bench/dedupe.rs`).
const MANY_COPIES: usize = 1_000;

/// Blob files a batch holds before it is deduped: the pass's memory is one batch's names and
/// the stamps, whatever the size of the store (issue 11: 100,000 repositories sharing blobs
/// grew it past 2 GB). A digest in several batches is linked to the same original: the
/// cache's, which the first batch recorded.
const BATCH_FILES: usize = 16 * 1024;

/// Repositories listed at once while a batch fills.
const LISTED_AT_ONCE: usize = 256;

/// Verified originals remembered, so a digest in many batches is hashed once, not per batch.
const VERIFIED_KEPT: usize = 4096;

/// What a pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    /// Repositories in the store.
    pub repositories: usize,
    /// Repositories walked (changed since the last pass).
    pub walked: usize,
    /// Digests looked at, once per batch of repositories holding them.
    pub digests: usize,
    /// Blob files that became links to another copy.
    pub linked: u64,
    /// Bytes no longer stored twice.
    pub reclaimed: u64,
    /// Copies whose bytes did not match their digest, now links to a verified copy.
    pub repaired: u64,
}

/// Runs the pass for `store` on a background thread, if the store dedupes; its log lines
/// carry the store's config key (`storage`, `storage.subPaths./a`). With `rescrub` (the
/// stale-upload age of a store that scrubs), a pass that repaired copies scrubs the store
/// again at once, so its report does not show them as affected until the next interval.
pub fn spawn(store: Arc<Store>, key: &str, rescrub: Option<Duration>) -> std::io::Result<()> {
    if !store.dedupes() {
        return spawn_restore(store, key);
    }
    let span = tracing::info_span!("dedupe", store = key);
    let key = key.to_string();
    std::thread::Builder::new()
        .name("berth-dedupe-pass".into())
        .spawn(move || {
            let _entered = span.enter();
            match store.leased(LEASE, || run(&store)) {
                Some(Ok(report)) if report.repaired > 0 => {
                    if let Some(stale_after) = rescrub
                        && let Some(Err(e)) =
                            store.leased(super::scrub::LEASE, || store.scrub(&key, stale_after))
                    {
                        tracing::error!("scrub after the dedupe pass's repairs failed: {e}");
                    }
                }
                // Done, or another instance runs it.
                Some(Ok(_)) | None => {}
                Some(Err(e)) => {
                    tracing::error!("dedupe pass failed, will be retried at the next start: {e}")
                }
            }
        })?;
    Ok(())
}

/// With dedupe off, restores placeholders into full copies on a background thread, if the
/// store's driver would dedupe by placeholders (local stores, which dedupe by hard links,
/// walk nothing).
fn spawn_restore(store: Arc<Store>, key: &str) -> std::io::Result<()> {
    let capabilities = store.driver.capabilities();
    if Strategy::for_driver(capabilities) != Some(Strategy::Placeholder) {
        return Ok(());
    }
    // Before the server starts: deletes of copies holding bytes wait for the restore.
    store.restoring.store(true, Ordering::Release);
    let span = tracing::info_span!("dedupe", store = key);
    std::thread::Builder::new()
        .name("berth-dedupe-restore".into())
        .spawn(move || {
            let _entered = span.enter();
            if let Some(Err(e)) = store.leased(RESTORE_LEASE, || restore(&store)) {
                tracing::error!("dedupe restore failed, will be retried at the next start: {e}");
            }
        })?;
    Ok(())
}

/// What a restore did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    /// Placeholders that became full copies.
    pub restored: u64,
    /// Bytes they now hold.
    pub bytes: u64,
    /// Placeholders whose holder is gone, left for scrub to report.
    pub dangling: u64,
}

/// Makes every placeholder in `store` a full copy of the bytes it names (a server-side copy
/// over it, under the digest's lock), for a store started with `dedupe: false`; placeholders
/// whose holder is gone are left and logged. Walks every repository's blob listings: only
/// zero-byte objects are looked at further.
pub fn restore(store: &Store) -> Result<RestoreReport, StoreError> {
    let started = Instant::now();
    let repos = repositories(store)?;
    let restored = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    let dangling = AtomicU64::new(0);
    let span = tracing::Span::current();
    crate::background::pool().install(|| {
        repos.par_iter().for_each(|repo| {
            let _entered = span.enter();
            let files = store.blob_files(repo).unwrap_or_else(|e| {
                tracing::warn!(repository = %repo, "dedupe restore: cannot list blobs: {e}");
                Vec::new()
            });
            for file in files {
                if !placeholders::may_be(&file.digest, file.size) {
                    continue;
                }
                let _guard = store.blob_lock(&file.digest);
                match restore_one(store, &file.digest, &file.path) {
                    Ok(Restored::Copied(size)) => {
                        restored.fetch_add(1, Ordering::Relaxed);
                        bytes.fetch_add(size, Ordering::Relaxed);
                    }
                    Ok(Restored::Nothing) => {}
                    Ok(Restored::Dangling(holder)) => {
                        dangling.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(digest = %file.digest, path = %file.path, %holder, "dedupe restore: {} names {holder} as holding its bytes, which is gone; left for scrub", file.path);
                    }
                    Err(e) => {
                        tracing::warn!(digest = %file.digest, path = %file.path, "dedupe restore: {e}")
                    }
                }
            }
        })
    });
    let report = RestoreReport {
        restored: restored.into_inner(),
        bytes: bytes.into_inner(),
        dangling: dangling.into_inner(),
    };
    if report != RestoreReport::default() {
        tracing::info!(
            restored = report.restored,
            bytes = report.bytes,
            dangling = report.dangling,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "dedupe restore: placeholders made full copies"
        );
    }
    store.restoring.store(false, Ordering::Release);
    Ok(report)
}

/// What restoring one blob path did.
enum Restored {
    /// It holds this many bytes of its own now.
    Copied(u64),
    /// It was no placeholder (any more).
    Nothing,
    /// Its holder is gone.
    Dangling(StoragePath),
}

fn restore_one(store: &Store, digest: &Digest, path: &StoragePath) -> Result<Restored, StoreError> {
    Ok(match placeholders::lookup(&*store.driver, path, digest)? {
        Lookup::Found(found) if found.placeholder => {
            store.driver.copy(&found.path, path)?;
            Restored::Copied(found.meta.size)
        }
        Lookup::Found(_) | Lookup::Missing | Lookup::Empty => Restored::Nothing,
        Lookup::Dangling(holder) => Restored::Dangling(holder),
    })
}

/// Runs the pass for `store` and reports what it did (nothing when the store does not dedupe).
pub fn run(store: &Store) -> Result<PassReport, StoreError> {
    run_in_batches(store, BATCH_FILES)
}

/// Every repository of the store, as its catalog names them.
fn repositories(store: &Store) -> Result<Vec<RepoName>, StoreError> {
    Ok(store
        .catalog()?
        .iter()
        .filter_map(|name| name.parse().ok())
        .collect())
}

/// `run`, deduping whenever the repositories walked hold `batch_files` blob files.
fn run_in_batches(store: &Store, batch_files: usize) -> Result<PassReport, StoreError> {
    let Some(dedupe) = &store.dedupe else {
        return Ok(PassReport::default());
    };
    let started = Instant::now();
    let repos = repositories(store)?;
    let mut previous: HashMap<String, String> = dedupe
        .marker(MARKER)
        .and_then(|m| serde_json::from_str(&m).ok())
        .unwrap_or_default();
    // Stamps of repositories not walked carry over; a walked one is stamped after its batch.
    let mut stamps: BTreeMap<String, String> = BTreeMap::new();
    let changed: Vec<&RepoName> = if previous.is_empty() {
        // A first pass, or a lost cache: nothing to compare with.
        repos.iter().collect()
    } else {
        let now: Vec<Option<String>> = crate::background::pool()
            .install(|| repos.par_iter().map(|r| stamp(store, r)).collect());
        let mut changed = Vec::new();
        for (repo, now) in repos.iter().zip(now) {
            match (previous.remove(repo.as_str()), now) {
                (Some(before), Some(now)) if before == now => {
                    stamps.insert(repo.to_string(), now);
                }
                _ => changed.push(repo),
            }
        }
        changed
    };
    drop(previous);
    let mut report = PassReport {
        repositories: repos.len(),
        walked: changed.len(),
        ..PassReport::default()
    };
    if changed.is_empty() {
        tracing::info!(
            repositories = repos.len(),
            "dedupe pass: no repository changed since the last pass; nothing to walk"
        );
        dedupe.set_complete();
        return Ok(report);
    }
    tracing::info!(
        repositories = repos.len(),
        walking = changed.len(),
        "dedupe pass: started"
    );
    let progress = Progress::new(changed.len());
    let verified = Verified::default();
    let mut batch = Batch::default();
    for (i, listed_at_once) in changed.chunks(LISTED_AT_ONCE).enumerate() {
        batch.add(store, listed_at_once);
        let last = (i + 1) * LISTED_AT_ONCE >= changed.len();
        if batch.files >= batch_files || last {
            let batch = std::mem::take(&mut batch);
            stamps.extend(dedupe_batch(store, batch, &verified, &progress));
        }
    }
    report.digests = progress.digests.load(Ordering::Relaxed);
    report.linked = progress.linked.load(Ordering::Relaxed);
    report.reclaimed = progress.reclaimed.load(Ordering::Relaxed);
    report.repaired = progress.repaired.load(Ordering::Relaxed);
    let marker = serde_json::to_string(&stamps).expect("stamps serialize");
    dedupe.set_complete();
    if !dedupe.set_marker(MARKER, &marker) {
        tracing::warn!("dedupe pass: its marker is not saved, the next start walks again");
    }
    tracing::info!(
        digests = report.digests,
        linked = report.linked,
        reclaimed_bytes = report.reclaimed,
        repaired = report.repaired,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "dedupe pass: done"
    );
    Ok(report)
}

/// Repositories walked, and their blob files by digest: what the pass holds at once.
#[derive(Default)]
struct Batch<'r> {
    repos: Vec<&'r RepoName>,
    by_digest: HashMap<Digest, Vec<StoragePath>>,
    files: usize,
}

impl<'r> Batch<'r> {
    /// Lists the blob files of `repos` into the batch. File names that are not digests are
    /// skipped.
    fn add(&mut self, store: &Store, repos: &[&'r RepoName]) {
        let listed: Vec<BlobFile> = crate::background::pool().install(|| {
            repos
                .par_iter()
                .flat_map_iter(|repo| {
                    store.blob_files(repo).unwrap_or_else(|e| {
                        tracing::warn!(repository = %repo, "dedupe pass: cannot list blobs: {e}");
                        Vec::new()
                    })
                })
                .collect()
        });
        self.files += listed.len();
        for file in listed {
            self.by_digest
                .entry(file.digest)
                .or_default()
                .push(file.path);
        }
        self.repos.extend_from_slice(repos);
    }
}

/// Dedupes one batch and returns the stamps of its repositories, taken after their links.
fn dedupe_batch(
    store: &Store,
    batch: Batch<'_>,
    verified: &Verified,
    progress: &Progress,
) -> Vec<(String, String)> {
    let stamped = |repos: &[&RepoName]| -> Vec<(String, String)> {
        crate::background::pool().install(|| {
            repos
                .par_iter()
                .filter_map(|r| Some((r.to_string(), stamp(store, r)?)))
                .collect()
        })
    };
    if store.dedupe_strategy() == Some(Strategy::Placeholder) {
        let span = tracing::Span::current();
        crate::background::pool().install(|| {
            batch.by_digest.into_par_iter().for_each(|(digest, paths)| {
                let _entered = span.enter();
                by_placeholders(store, &digest, paths, verified, progress);
            })
        });
        let stamps = stamped(&batch.repos);
        progress.walked(batch.repos.len(), batch.files);
        return stamps;
    }
    let (many, few): (Vec<_>, Vec<_>) = batch
        .by_digest
        .into_iter()
        .partition(|(_, paths)| paths.len() >= MANY_COPIES);
    let decide = |(digest, paths): (Digest, Vec<StoragePath>), linking| {
        dedupe_digest(store, &digest, paths, verified, progress, linking)
    };
    // The pool's threads log in the caller's span, which names the store.
    let span = tracing::Span::current();
    crate::background::pool().install(|| {
        few.into_par_iter().for_each(|copies| {
            let _entered = span.enter();
            decide(copies, Linking::InThisTask);
        })
    });
    debug_assert!(
        rayon::current_thread_index().is_none(),
        "the pass holds a digest lock while the pool links its copies: never from a pool thread"
    );
    for copies in many {
        decide(copies, Linking::OnThePool);
    }
    let stamps = stamped(&batch.repos);
    progress.walked(batch.repos.len(), batch.files);
    stamps
}

/// A stamp of `repo`'s blob directories: it changes whenever a blob file is added, removed or
/// replaced in them. Directories of other names hold no blob files the pass would walk.
/// `None` where the driver keeps no stamp of a directory (an object store's prefix, a
/// fingerprint of 0): such a repository is walked at every pass.
fn stamp(store: &Store, repo: &RepoName) -> Option<String> {
    let mut stamp = String::new();
    for algorithm in Algorithm::ALL {
        let meta = layout::blob_dir(repo, algorithm)
            .ok()
            .and_then(|d| store.driver.stat(&d).ok().flatten());
        if let Some(meta) = meta {
            if meta.fingerprint == 0 {
                return None;
            }
            stamp.push_str(&format!("{}:{:x};", algorithm.as_str(), meta.fingerprint));
        }
    }
    Some(stamp)
}

/// One digest's files in a store deduplicating by placeholders, under the digest's lock:
/// every placeholder is recorded and its holder joins the copies (wherever it is); one full
/// copy is kept, the cache's original first, then the holders placeholders name, verified
/// against the digest; every other full copy becomes a placeholder naming it, and so does
/// every placeholder naming another path. All are recorded, the kept copy as the original.
fn by_placeholders(
    store: &Store,
    digest: &Digest,
    walked: Vec<StoragePath>,
    verified: &Verified,
    progress: &Progress,
) {
    let dedupe = store
        .dedupe
        .as_ref()
        .expect("the pass runs only with dedupe");
    let _guard = dedupe.lock(digest);
    progress.digests.fetch_add(1, Ordering::Relaxed);
    // Whether the cache recorded them all.
    let record = |paths: Vec<StoragePath>| {
        let records: Vec<(Digest, StoragePath)> =
            paths.into_iter().map(|p| (digest.clone(), p)).collect();
        let recorded = dedupe.index().put_many(&records);
        dedupe
            .logged(Access::Write, recorded, "record the pass's copies")
            .is_some()
    };
    if placeholders::is_empty_blob(digest) {
        record(walked);
        return;
    }
    let original = dedupe
        .logged(Access::Read, dedupe.index().original(digest), "look up")
        .flatten();
    let mut paths = walked;
    paths.extend(original.clone());
    paths.sort();
    paths.dedup();
    let paths = paths;
    // Full copies (candidates to keep, in order of preference) and placeholders.
    let mut full: Vec<(StoragePath, ObjectMeta)> = Vec::new();
    let mut named: Vec<(StoragePath, StoragePath)> = Vec::new();
    let mut look = |path: &StoragePath, named: &mut Vec<(StoragePath, StoragePath)>| {
        let meta = match store.driver.stat(path) {
            Ok(Some(meta)) if !meta.is_dir => meta,
            Ok(_) => return dedupe.forget(digest, path),
            Err(e) => return tracing::warn!(%digest, path = %path, "dedupe pass: cannot stat: {e}"),
        };
        if meta.size == 0 {
            match store.driver.placeholder_holder(path) {
                Ok(Some(holder)) => return named.push((path.clone(), holder)),
                Ok(None) => {}
                Err(e) => {
                    return tracing::warn!(%digest, path = %path, "dedupe pass: cannot read the placeholder: {e}");
                }
            }
        }
        if !full.iter().any(|(p, _)| p == path) {
            full.push((path.clone(), meta));
        }
    };
    for path in &paths {
        look(path, &mut named);
    }
    // Holders in repositories of other batches (or not recorded) join.
    let mut holders: Vec<StoragePath> = named.iter().map(|(_, h)| h.clone()).collect();
    holders.sort();
    holders.dedup();
    let unwalked: Vec<&StoragePath> = holders.iter().filter(|h| !paths.contains(h)).collect();
    for holder in unwalked {
        // A holder that is itself a placeholder names what it names; it is re-pointed too.
        look(holder, &mut named);
    }
    if named.is_empty() && full.len() <= 1 {
        // One copy: nothing to share, nothing to verify (scrub hashes it).
        record(full.into_iter().map(|(p, _)| p).collect());
        return;
    }
    // The cache's original first, then named holders, then the rest.
    full.sort_by_key(|(p, _)| (Some(p) != original.as_ref(), !holders.contains(p)));
    let kept = full.iter().position(|(path, meta)| {
        meta.size > 0
            && (verified.holds(digest, meta.bytes_key()) || intact(store, digest, meta.size, path))
    });
    let Some(kept) = kept else {
        if !named.is_empty() {
            tracing::error!(%digest, "dedupe pass: no copy holds the bytes of {digest} that its placeholders name; left for scrub");
        }
        let mut all: Vec<StoragePath> = full.into_iter().map(|(p, _)| p).collect();
        all.extend(named.into_iter().map(|(p, _)| p));
        record(all);
        return;
    };
    let (kept, kept_meta) = full.swap_remove(kept);
    verified.insert(digest, kept_meta.bytes_key());
    // Recorded before any copy becomes a placeholder: promotion finds the placeholders of a
    // holder through the cache alone, so one it never recorded would dangle once its holder
    // is deleted. Unrecorded, the copies stay full.
    let mut all: Vec<StoragePath> = full.iter().map(|(p, _)| p.clone()).collect();
    all.extend(named.iter().map(|(p, _)| p.clone()));
    if !dedupe.record_original(digest, &kept) || !record(all) {
        tracing::warn!(%digest, "dedupe pass: the cache cannot record the copies of {digest}; they stay as they are");
        return;
    }
    let mut tally = Tally::default();
    for (path, meta) in &full {
        let damaged = meta.size != kept_meta.size;
        match store.driver.put_placeholder(path, &kept) {
            Ok(()) => {
                tally.linked += 1;
                tally.reclaimed += meta.size;
                if damaged {
                    tally.repaired += 1;
                    tracing::warn!(%digest, path = %path, from = %kept, "dedupe pass: repaired {path}: its bytes did not match {digest}; it is now a placeholder naming the verified copy {kept}");
                }
            }
            Err(e) => {
                tracing::warn!(%digest, path = %path, "dedupe pass: cannot write a placeholder: {e}")
            }
        }
    }
    for (path, holder) in &named {
        if holder != &kept
            && let Err(e) = store.driver.put_placeholder(path, &kept)
        {
            tracing::warn!(%digest, path = %path, "dedupe pass: cannot re-point the placeholder: {e}");
        }
    }
    progress.add(&tally);
}

/// One separate copy of a digest.
struct Copy {
    /// Equal for names of the same stored bytes.
    bytes_key: u64,
    size: u64,
    /// Every name it has, the first one looked at.
    names: Vec<StoragePath>,
    /// Looked at before the kept copy, and failed its check.
    failed_check: bool,
}

/// Where one digest's files are looked at and linked.
#[derive(Clone, Copy)]
enum Linking {
    /// In the task deciding the digest, one after another: digests are spread over the pool.
    InThisTask,
    /// Spread over the pool, by a caller that is not one of its threads. Looking at or
    /// linking a file takes no lock, so no pool thread ever waits for a digest lock that the
    /// caller holds while it waits for them.
    OnThePool,
}

impl Linking {
    /// `f` of each of `items`, in order.
    fn map<T: Sync, R: Send>(self, items: &[T], f: impl Fn(&T) -> R + Sync + Send) -> Vec<R> {
        match self {
            Linking::InThisTask => items.iter().map(f).collect(),
            Linking::OnThePool => {
                crate::background::pool().install(|| items.par_iter().map(f).collect())
            }
        }
    }

    /// `f` on each of `items`, in no particular order.
    fn for_each<T: Sync>(self, items: &[T], f: impl Fn(&T) + Sync + Send) {
        match self {
            Linking::InThisTask => items.iter().for_each(f),
            Linking::OnThePool => {
                crate::background::pool().install(|| items.par_iter().for_each(f))
            }
        }
    }
}

/// Links every separate copy of `digest` to one verified copy and records them all. A copy
/// that meets the file system's limit of names per file (ext4: 65,000) becomes, verified, the
/// original the copies after it link to, and the cache's (issue 11).
fn dedupe_digest(
    store: &Store,
    digest: &Digest,
    walked: Vec<StoragePath>,
    verified: &Verified,
    progress: &Progress,
    linking: Linking,
) {
    let dedupe = store
        .dedupe
        .as_ref()
        .expect("the pass runs only with dedupe");
    let _guard = dedupe.lock(digest);
    progress.digests.fetch_add(1, Ordering::Relaxed);
    // The copy that earlier batches, pushes and mounts linked to joins, first in line to be
    // kept, so a digest in many batches ends up one file.
    let original = dedupe
        .logged(Access::Read, dedupe.index().original(digest), "look up")
        .flatten();
    let mut paths = walked;
    paths.extend(original.clone());
    let mut copies = separate_copies(store, digest, paths, linking);
    if let Some(original) = &original
        && let Some(at) = copies.iter().position(|c| c.names.contains(original))
    {
        copies[..=at].rotate_right(1);
    }
    // The copy later pushes and mounts link to, when the kept one took no more names.
    let mut next_original = None;
    if copies.len() > 1 {
        let Some(keep) = copies.iter_mut().position(|c| {
            c.failed_check =
                !verified.holds(digest, c.bytes_key) && !intact(store, digest, c.size, &c.names[0]);
            !c.failed_check
        }) else {
            tracing::error!(%digest, "dedupe pass: no copy matches its digest; left for scrub");
            return;
        };
        let kept = &copies[keep];
        verified.insert(digest, kept.bytes_key);
        let original = Original::new(&kept.names[0]);
        // The pool's threads log in this task's span, which names the store.
        let span = tracing::Span::current();
        linking.for_each(&copies, |copy| {
            if std::ptr::eq(copy, kept) {
                return;
            }
            let _entered = span.enter();
            // Of another size: damaged too (copies after the kept one are not hashed: that
            // would cost a hash per copy).
            let damaged = copy.failed_check || copy.size != kept.size;
            progress.add(&link_copy(store, digest, &original, copy, damaged));
        });
        next_original = Some(original.current()).filter(|o| **o != kept.names[0]);
    }
    let records: Vec<(Digest, StoragePath)> = copies
        .iter()
        .flat_map(|c| c.names.iter().map(|n| (digest.clone(), n.clone())))
        .collect();
    let recorded = dedupe.index().put_many(&records);
    dedupe.logged(Access::Write, recorded, "record the pass's copies");
    if let Some(original) = next_original {
        dedupe.record_original(digest, &original);
    }
}

/// The separate copies among `paths` (files of `digest`), each with every name it has, the
/// most-named first. Paths that hold no file any more are forgotten by the cache.
fn separate_copies(
    store: &Store,
    digest: &Digest,
    mut paths: Vec<StoragePath>,
    linking: Linking,
) -> Vec<Copy> {
    let dedupe = store
        .dedupe
        .as_ref()
        .expect("the pass runs only with dedupe");
    paths.sort();
    paths.dedup();
    let metas = linking.map(&paths, |path| store.driver.stat(path));
    let mut copies: Vec<Copy> = Vec::new();
    let mut by_identity: HashMap<u64, usize> = HashMap::new();
    for (path, meta) in paths.into_iter().zip(metas) {
        match meta {
            Ok(Some(meta)) if !meta.is_dir => match by_identity.entry(meta.bytes_key()) {
                Entry::Occupied(e) => copies[*e.get()].names.push(path),
                Entry::Vacant(e) => {
                    e.insert(copies.len());
                    copies.push(Copy {
                        bytes_key: meta.bytes_key(),
                        size: meta.size,
                        names: vec![path],
                        failed_check: false,
                    });
                }
            },
            Ok(_) => dedupe.forget(digest, &path),
            Err(e) => tracing::warn!(%digest, path = %path, "dedupe pass: cannot stat: {e}"),
        }
    }
    copies.sort_by_key(|c| std::cmp::Reverse(c.names.len()));
    copies
}

/// The copy the others of a digest link to, shared by the threads linking them, and replaced
/// when the file system allows it no more names.
struct Original {
    current: Mutex<Arc<StoragePath>>,
}

impl Original {
    fn new(path: &StoragePath) -> Original {
        Original {
            current: Mutex::new(Arc::new(path.clone())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Arc<StoragePath>> {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn current(&self) -> Arc<StoragePath> {
        self.lock().clone()
    }
}

/// What linking copies did.
#[derive(Default)]
struct Tally {
    linked: u64,
    reclaimed: u64,
    repaired: u64,
}

/// Links every name of `copy` to the original. When the original takes no more names, this
/// copy becomes the next one (unless another thread's copy just did): as it is when it
/// matches `digest`, else with the verified bytes copied over it, so a damaged copy is never
/// an original.
fn link_copy(
    store: &Store,
    digest: &Digest,
    original: &Original,
    copy: &Copy,
    mut damaged: bool,
) -> Tally {
    let mut tally = Tally::default();
    let mut all_linked = true;
    let mut from = original.current();
    for name in &copy.names {
        loop {
            let err = match store.driver.link(&from, name) {
                Ok(()) => {
                    tally.linked += 1;
                    if damaged {
                        tally.repaired += 1;
                        tracing::warn!(
                            %digest,
                            path = %name,
                            from = %from,
                            "dedupe pass: repaired {name}: its bytes did not match {digest}; it is now a link to the verified copy {from}"
                        );
                    }
                    break;
                }
                Err(e) => e,
            };
            if !super::dedupe::too_many_links(&err) {
                all_linked = false;
                tracing::warn!(%digest, path = %name, "dedupe pass: cannot link: {err}");
                break;
            }
            let mut current = original.lock();
            if *current != from {
                // Another copy became the original meanwhile: link to that.
                from = current.clone();
                continue;
            }
            // A name of this copy becomes the next original: none of it is reclaimed.
            all_linked = false;
            if !damaged && intact(store, digest, copy.size, name) {
                tracing::info!(%digest, path = %name, full = %from, "dedupe pass: the file system allows no more links to {from}; {name} is the next original of {digest}");
                *current = Arc::new(name.clone());
                // Every other name of this copy is a name of the new original already.
                return tally;
            }
            damaged = true;
            match store.driver.copy(&from, name) {
                Ok(()) => {
                    tally.repaired += 1;
                    tracing::warn!(
                        %digest,
                        path = %name,
                        from = %from,
                        "dedupe pass: repaired {name}: its bytes did not match {digest}; it now holds a copy of the verified {from}, and is the next original: the file system allows no more links to that"
                    );
                    *current = Arc::new(name.clone());
                    from = current.clone();
                }
                Err(e) => tracing::warn!(%digest, path = %name, "dedupe pass: cannot copy: {e}"),
            }
            break;
        }
    }
    if all_linked {
        tally.reclaimed = copy.size;
    }
    tally
}

/// Whether the file at `path` holds `size` bytes that hash to `digest`.
fn intact(store: &Store, digest: &Digest, size: u64, path: &StoragePath) -> bool {
    match store.hash_object(path, digest.algorithm()) {
        Ok((hasher, read)) => read == size && &hasher.finish() == digest,
        Err(_) => false,
    }
}

/// Originals that matched their digest in this pass, by digest and bytes: a digest held in
/// many batches is hashed in the first only. Bounded: forgetting one costs a hash.
#[derive(Default)]
struct Verified(Mutex<HashMap<Digest, u64>>);

impl Verified {
    fn holds(&self, digest: &Digest, bytes_key: u64) -> bool {
        self.lock().get(digest) == Some(&bytes_key)
    }

    fn insert(&self, digest: &Digest, bytes_key: u64) {
        let mut verified = self.lock();
        if verified.len() >= VERIFIED_KEPT {
            verified.clear();
        }
        verified.insert(digest.clone(), bytes_key);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Digest, u64>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Counts for the progress lines: one when a batch takes the walk past a tenth of the
/// repositories, and one at the end.
struct Progress {
    repos_total: usize,
    repos: AtomicUsize,
    files: AtomicUsize,
    /// Digests decided, once per batch holding them.
    digests: AtomicUsize,
    linked: AtomicU64,
    reclaimed: AtomicU64,
    repaired: AtomicU64,
    started: Instant,
}

impl Progress {
    fn new(repos_total: usize) -> Progress {
        Progress {
            repos_total,
            repos: AtomicUsize::new(0),
            files: AtomicUsize::new(0),
            digests: AtomicUsize::new(0),
            linked: AtomicU64::new(0),
            reclaimed: AtomicU64::new(0),
            repaired: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    fn add(&self, tally: &Tally) {
        self.linked.fetch_add(tally.linked, Ordering::Relaxed);
        self.reclaimed.fetch_add(tally.reclaimed, Ordering::Relaxed);
        self.repaired.fetch_add(tally.repaired, Ordering::Relaxed);
    }

    /// A batch of `repos` repositories holding `files` blob files is done.
    fn walked(&self, repos: usize, files: usize) {
        let before = self.repos.fetch_add(repos, Ordering::Relaxed);
        let files = self.files.fetch_add(files, Ordering::Relaxed) + files;
        let now = before + repos;
        let step = (self.repos_total / 10).max(1);
        if now / step > before / step || now == self.repos_total {
            tracing::info!(
                repositories = now,
                total = self.repos_total,
                files,
                linked = self.linked.load(Ordering::Relaxed),
                reclaimed_bytes = self.reclaimed.load(Ordering::Relaxed),
                elapsed = ?Duration::from_millis(self.started.elapsed().as_millis() as u64),
                "dedupe pass: {now}/{} repositories, {files} blob files",
                self.repos_total
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::lmdb::{Lmdb, LmdbOptions};
    use crate::cache::{DedupeCache, Namespace};
    use crate::storage::driver::local::{LocalDriver, WriterChoice};
    use sha2::{Digest as _, Sha256};
    use std::collections::HashSet;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    fn lay_repo(root: &Path, name: &str, blobs: &[&[u8]]) -> Vec<std::path::PathBuf> {
        let dir = root.join(name);
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        std::fs::write(
            dir.join("index.json"),
            br#"{"schemaVersion":2,"manifests":[]}"#,
        )
        .unwrap();
        blobs
            .iter()
            .map(|bytes| {
                let path = dir.join("blobs/sha256").join(hex(bytes));
                std::fs::write(&path, bytes).unwrap();
                path
            })
            .collect()
    }

    fn hex(bytes: &[u8]) -> String {
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// A digest in every batch is linked to the one original the first batch chose, and a
    /// damaged copy in a later batch is repaired from it.
    #[test]
    fn a_digest_spread_over_batches_ends_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let shared: &[u8] = b"a base layer held by every repository";
        let mut shared_copies = Vec::new();
        for r in 0..12 {
            let own = format!("repository {r}'s own layer");
            let paths = lay_repo(&root, &format!("r{r:02}"), &[shared, own.as_bytes()]);
            shared_copies.push(paths[0].clone());
        }
        // Damaged, in the last batch: shorter than its digest's bytes.
        std::fs::write(shared_copies.last().unwrap(), &shared[..10]).unwrap();
        let driver = LocalDriver::new(&root, false, WriterChoice::Buffered).unwrap();
        let cache = Lmdb::open(&dir.path().join("cache"), LmdbOptions::new(false))
            .unwrap()
            .namespace(&Namespace::new("storage"))
            .unwrap();
        let store = Store::new(Arc::new(driver), Some(DedupeCache::of(Arc::new(cache))));

        // Three repositories' files per batch: four batches.
        let report = run_in_batches(&store, 5).unwrap();

        let inodes: HashSet<u64> = shared_copies
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().ino())
            .collect();
        assert_eq!(inodes.len(), 1, "one file for the shared digest");
        assert_eq!(
            std::fs::read(shared_copies.last().unwrap()).unwrap(),
            shared
        );
        assert_eq!(report.repositories, 12);
        assert_eq!(report.linked, 11);
        assert_eq!(report.repaired, 1);
        // Ten intact copies and the damaged one's ten bytes are no longer stored.
        assert_eq!(report.reclaimed, 10 * shared.len() as u64 + 10);
        // Every copy is recorded, and a second pass finds nothing changed.
        let digest: Digest = format!("sha256:{}", hex(shared)).parse().unwrap();
        let recorded = store
            .dedupe
            .as_ref()
            .unwrap()
            .index()
            .paths(&digest)
            .unwrap();
        assert_eq!(recorded.len(), 12);
        let again = run_in_batches(&store, 5).unwrap();
        assert_eq!((again.walked, again.linked), (0, 0));
    }

    /// With placeholders, a digest in every batch ends one full copy and placeholders naming
    /// it: separate copies become placeholders, a damaged one is repaired so, and a
    /// placeholder naming a copy that is gone is re-pointed to the kept one.
    #[test]
    fn a_digest_spread_over_batches_ends_one_holder() {
        use crate::storage::driver::Driver;
        use crate::storage::driver::memory::MemoryDriver;
        let driver = MemoryDriver::new();
        let shared: &[u8] = b"a base layer held by every repository";
        let digest = Digest::sha256_of(shared);
        let blob = |r: usize| {
            let repo: RepoName = format!("r{r:02}").parse().unwrap();
            (repo.clone(), layout::blob(&repo, &digest).unwrap())
        };
        for r in 0..12 {
            let (repo, path) = blob(r);
            driver
                .put(
                    &layout::oci_layout(&repo).unwrap(),
                    layout::OCI_LAYOUT_CONTENT,
                )
                .unwrap();
            let index = br#"{"schemaVersion":2,"manifests":[]}"#;
            driver
                .put(&layout::index_json(&repo).unwrap(), index)
                .unwrap();
            let own = format!("repository {r}'s own layer");
            let own_path = layout::blob(&repo, &Digest::sha256_of(own.as_bytes())).unwrap();
            driver.put(&own_path, own.as_bytes()).unwrap();
            match r {
                // A placeholder naming a copy that is gone.
                3 => driver.put_placeholder(&path, &blob(99).1).unwrap(),
                // Damaged, in the last batch.
                11 => driver.put(&path, &shared[..10]).unwrap(),
                _ => driver.put(&path, shared).unwrap(),
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let cache = Lmdb::open(&dir.path().join("cache"), LmdbOptions::new(false))
            .unwrap()
            .namespace(&Namespace::new("storage"))
            .unwrap();
        let store = Store::with_dedupe_strategy(
            Arc::new(driver.clone()),
            Some(DedupeCache::of(Arc::new(cache))),
            Some(Strategy::Placeholder),
        );

        let report = run_in_batches(&store, 5).unwrap();

        let holder = blob(0).1;
        for r in 1..12 {
            let path = blob(r).1;
            assert_eq!(
                driver.placeholder_holder(&path).unwrap(),
                Some(holder.clone())
            );
            let (repo, _) = blob(r);
            assert_eq!(
                store.blob_size(&repo, &digest).unwrap(),
                shared.len() as u64
            );
        }
        assert_eq!(driver.get(&holder).unwrap(), shared);
        assert_eq!((report.linked, report.repaired), (10, 1), "{report:?}");
        assert_eq!(report.reclaimed, 9 * shared.len() as u64 + 10);
        let index = store.dedupe.as_ref().unwrap().index();
        assert_eq!(index.paths(&digest).unwrap().len(), 12);
        assert_eq!(index.original(&digest).unwrap(), Some(holder));
    }
}
