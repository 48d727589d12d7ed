//! The start-up dedupe pass: with dedupe on, links every duplicate copy of a blob in the store
//! to one copy and records every blob in the cache, in ONE walk of the store (zot walks the
//! whole store once per digest). It runs in the background while berth serves, and takes each
//! digest's dedupe lock only while deciding and linking that digest, so pushes and pulls go on.
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
//! inodes. Progress is logged in blob files, so a single digest shows its progress too.

use super::driver::StoragePath;
use super::{Store, StoreError, layout};
use crate::digest::Digest;
use crate::oci::RepoName;
use rayon::prelude::*;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The cache marker holding the repository stamps of the last complete pass.
const MARKER: &str = "dedupe-pass";

/// Copies from which a digest's links are spread over the pool rather than made in one task
/// (issue 11: one base layer in 100,000 repositories). Below this a digest's links take a
/// fraction of a second, and the pool is better spread over digests. Each link changes the
/// one shared inode, so threads gain less than their number: with the 2 threads of a 2-core
/// machine, one blob in 100,000 repositories was looked at and linked in 20.6 s instead of
/// 30.7 s, and over one blob in 20,000 the first pass took a median 8.2 s instead of 12.1 s
/// (11 runs each, beside other work; `bench/dedupe.rs`).
const MANY_COPIES: usize = 1_000;

/// What a pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    /// Repositories in the store.
    pub repositories: usize,
    /// Repositories walked (changed since the last pass).
    pub walked: usize,
    /// Distinct digests looked at.
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
pub fn spawn(store: Arc<Store>, key: &str, rescrub: Option<Duration>) {
    if !store.dedupes() {
        return;
    }
    let span = tracing::info_span!("dedupe", store = key);
    let key = key.to_string();
    std::thread::Builder::new()
        .name("berth-dedupe-pass".into())
        .spawn(move || {
            let _entered = span.enter();
            match run(&store) {
                Ok(report) if report.repaired > 0 => {
                    if let Some(stale_after) = rescrub
                        && let Err(e) = store.scrub(&key, stale_after)
                    {
                        tracing::error!("scrub after the dedupe pass's repairs failed: {e}");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!("dedupe pass failed, will be retried at the next start: {e}")
                }
            }
        })
        .expect("spawning the dedupe pass");
}

/// Runs the pass for `store` and reports what it did (nothing when the store does not dedupe).
pub fn run(store: &Store) -> Result<PassReport, StoreError> {
    let Some(dedupe) = &store.dedupe else {
        return Ok(PassReport::default());
    };
    let started = Instant::now();
    let repos: Vec<RepoName> = store
        .catalog()?
        .iter()
        .filter_map(|name| name.parse().ok())
        .collect();
    let previous: BTreeMap<String, String> = dedupe
        .cache()
        .marker(MARKER)
        .ok()
        .flatten()
        .and_then(|m| serde_json::from_str(&m).ok())
        .unwrap_or_default();
    let changed: Vec<&RepoName> = repos
        .iter()
        .filter(|r| previous.get(r.as_str()) != Some(&stamp(store, r)))
        .collect();
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
        return Ok(report);
    }
    tracing::info!(
        repositories = repos.len(),
        walking = changed.len(),
        "dedupe pass: started"
    );
    let by_digest = crate::background::pool().install(|| walk(store, &changed));
    report.digests = by_digest.len();
    let files: usize = by_digest.values().map(Vec::len).sum();
    let progress = Progress::new(files as u64, by_digest.len());
    let (many, few): (Vec<_>, Vec<_>) = by_digest
        .into_iter()
        .partition(|(_, paths)| paths.len() >= MANY_COPIES);
    // The pool's threads log in the caller's span, which names the store.
    let span = tracing::Span::current();
    crate::background::pool().install(|| {
        few.into_par_iter().for_each(|(digest, paths)| {
            let _entered = span.enter();
            dedupe_digest(store, &digest, paths, &progress, Linking::InThisTask);
        })
    });
    debug_assert!(
        rayon::current_thread_index().is_none(),
        "the pass holds a digest lock while the pool links its copies: never from a pool thread"
    );
    for (digest, paths) in many {
        dedupe_digest(store, &digest, paths, &progress, Linking::OnThePool);
    }
    report.linked = progress.linked.load(Ordering::Relaxed);
    report.reclaimed = progress.reclaimed.load(Ordering::Relaxed);
    report.repaired = progress.repaired.load(Ordering::Relaxed);
    // Stamped after the pass, whose links changed the directories it walked.
    let stamps: BTreeMap<String, String> = repos
        .iter()
        .map(|r| (r.to_string(), stamp(store, r)))
        .collect();
    let marker = serde_json::to_string(&stamps).expect("stamps serialize");
    if let Err(e) = dedupe.cache().set_marker(MARKER, &marker) {
        tracing::warn!("dedupe pass: cannot save its marker, the next start walks again: {e}");
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

/// A stamp of `repo`'s blob directories: it changes whenever a blob file is added, removed or
/// replaced in them.
fn stamp(store: &Store, repo: &RepoName) -> String {
    let Ok(blobs) = layout::blobs_root(repo) else {
        return String::new();
    };
    let mut algorithms = store.driver.list(Some(&blobs)).unwrap_or_default();
    algorithms.sort();
    let mut stamp = String::new();
    for name in algorithms {
        let meta = blobs
            .join(&name)
            .ok()
            .and_then(|d| store.driver.stat(&d).ok().flatten());
        if let Some(meta) = meta {
            stamp.push_str(&format!("{name}:{:x};", meta.fingerprint));
        }
    }
    stamp
}

/// Lists the blob files of `repos`, by digest. File names that are not digests are skipped.
fn walk(store: &Store, repos: &[&RepoName]) -> HashMap<Digest, Vec<StoragePath>> {
    let listed: Vec<(Digest, StoragePath)> = repos
        .par_iter()
        .flat_map_iter(|repo| {
            store.blob_files(repo).unwrap_or_else(|e| {
                tracing::warn!(repository = %repo, "dedupe pass: cannot list blobs: {e}");
                Vec::new()
            })
        })
        .collect();
    let mut by_digest: HashMap<Digest, Vec<StoragePath>> = HashMap::new();
    for (digest, path) in listed {
        by_digest.entry(digest).or_default().push(path);
    }
    by_digest
}

/// One separate copy of a digest.
struct Copy {
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
    progress: &Progress,
    linking: Linking,
) {
    let dedupe = store
        .dedupe
        .as_ref()
        .expect("the pass runs only with dedupe");
    let _guard = dedupe.lock(digest);
    let files = progress.files_of(walked.len());
    // Copies recorded by pushes since the walk listed the directories count too.
    let mut paths = walked;
    for recorded in dedupe.cache().paths(digest).unwrap_or_default() {
        if let Ok(p) = StoragePath::from_components(recorded.split('/')) {
            paths.push(p);
        }
    }
    paths.sort();
    paths.dedup();
    let metas = linking.map(&paths, |path| store.driver.stat(path));
    // Separate copies, each with every name it has: the most-named first.
    let mut copies: Vec<Copy> = Vec::new();
    let mut by_identity: HashMap<u64, usize> = HashMap::new();
    for (path, meta) in paths.into_iter().zip(metas) {
        match meta {
            Ok(Some(meta)) if !meta.is_dir => match by_identity.entry(meta.bytes_key()) {
                Entry::Occupied(e) => copies[*e.get()].names.push(path),
                Entry::Vacant(e) => {
                    e.insert(copies.len());
                    copies.push(Copy {
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
    drop(by_identity);
    copies.sort_by_key(|c| std::cmp::Reverse(c.names.len()));
    // The copy later pushes and mounts link to, when the kept one took no more names.
    let mut next_original = None;
    if copies.len() > 1 {
        let Some(keep) = copies.iter_mut().position(|c| {
            c.failed_check = !intact(store, digest, c.size, &c.names[0]);
            !c.failed_check
        }) else {
            tracing::error!(%digest, "dedupe pass: no copy matches its digest; left for scrub");
            files.finish();
            return;
        };
        let kept = &copies[keep];
        files.add(kept.names.len(), &Tally::default());
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
            let tally = link_copy(store, digest, &original, copy, damaged);
            files.add(copy.names.len(), &tally);
        });
        next_original = Some(original.current()).filter(|o| **o != kept.names[0]);
    }
    let records: Vec<(Digest, String)> = copies
        .iter()
        .flat_map(|c| c.names.iter().map(|n| (digest.clone(), n.to_string())))
        .collect();
    if let Err(e) = dedupe.cache().put_many(&records) {
        tracing::warn!(%digest, "dedupe pass: cannot record: {e}");
    }
    if let Some(original) = next_original
        && let Err(e) = dedupe.cache().put_original(digest, original.as_str())
    {
        tracing::warn!(%digest, "dedupe pass: cannot record the original: {e}");
    }
    files.finish();
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

/// Counts for the progress lines, in blob files of the walk: one is logged at every tenth of
/// them, so a digest held in 100,000 repositories shows its progress too, and one when the
/// last digest is done.
struct Progress {
    files_total: u64,
    digests_total: usize,
    files: AtomicU64,
    digests: AtomicUsize,
    linked: AtomicU64,
    reclaimed: AtomicU64,
    repaired: AtomicU64,
    started: Instant,
}

impl Progress {
    fn new(files_total: u64, digests_total: usize) -> Progress {
        Progress {
            files_total,
            digests_total,
            files: AtomicU64::new(0),
            digests: AtomicUsize::new(0),
            linked: AtomicU64::new(0),
            reclaimed: AtomicU64::new(0),
            repaired: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// The progress of one digest, `walked` of whose files the walk listed.
    fn files_of(&self, walked: usize) -> DigestProgress<'_> {
        DigestProgress {
            progress: self,
            walked: walked as u64,
            counted: AtomicU64::new(0),
        }
    }

    fn add(&self, files: u64, tally: &Tally) {
        self.linked.fetch_add(tally.linked, Ordering::Relaxed);
        self.reclaimed.fetch_add(tally.reclaimed, Ordering::Relaxed);
        self.repaired.fetch_add(tally.repaired, Ordering::Relaxed);
        let before = self.files.fetch_add(files, Ordering::Relaxed);
        let step = (self.files_total / 10).max(1);
        let now = before + files;
        if now / step > before / step && now < self.files_total {
            self.log(now, self.digests.load(Ordering::Relaxed));
        }
    }

    fn digest_done(&self) {
        let digests = self.digests.fetch_add(1, Ordering::Relaxed) + 1;
        if digests == self.digests_total {
            self.log(self.files.load(Ordering::Relaxed), digests);
        }
    }

    fn log(&self, files: u64, digests: usize) {
        tracing::info!(
            files,
            total_files = self.files_total,
            digests,
            total = self.digests_total,
            linked = self.linked.load(Ordering::Relaxed),
            reclaimed_bytes = self.reclaimed.load(Ordering::Relaxed),
            elapsed = ?Duration::from_millis(self.started.elapsed().as_millis() as u64),
            "dedupe pass: {files}/{} blob files, {digests}/{} digests",
            self.files_total,
            self.digests_total
        );
    }
}

/// One digest's share of the progress: exactly the files the walk listed for it, however
/// many more the cache recorded since.
struct DigestProgress<'a> {
    progress: &'a Progress,
    walked: u64,
    counted: AtomicU64,
}

impl DigestProgress<'_> {
    /// `names` more files handled, with what was done to them.
    fn add(&self, names: usize, tally: &Tally) {
        let before = self
            .counted
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |counted| {
                Some(self.walked.min(counted.saturating_add(names as u64)))
            })
            .expect("the update always succeeds");
        let files = self.walked.min(before.saturating_add(names as u64)) - before;
        self.progress.add(files, tally);
    }

    /// The digest is done: the rest of its files count.
    fn finish(self) {
        self.add(usize::MAX, &Tally::default());
        self.progress.digest_done();
    }
}
