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

use super::driver::StoragePath;
use super::{Store, StoreError, layout};
use crate::digest::Digest;
use crate::oci::RepoName;
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The cache marker holding the repository stamps of the last complete pass.
const MARKER: &str = "dedupe-pass";

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
    let progress = Progress::new(by_digest.len());
    // The pool's threads log in the caller's span, which names the store.
    let span = tracing::Span::current();
    crate::background::pool().install(|| {
        by_digest.par_iter().for_each(|(digest, paths)| {
            let _entered = span.enter();
            let done = dedupe_digest(store, digest, paths);
            progress
                .repaired
                .fetch_add(done.repaired, Ordering::Relaxed);
            progress.add(done.linked, done.reclaimed);
        })
    });
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

/// What the pass did for one digest.
#[derive(Default)]
struct DigestDone {
    linked: u64,
    reclaimed: u64,
    repaired: u64,
}

/// Links every separate copy of `digest` to one verified copy and records them all.
fn dedupe_digest(store: &Store, digest: &Digest, walked: &[StoragePath]) -> DigestDone {
    let dedupe = store
        .dedupe
        .as_ref()
        .expect("the pass runs only with dedupe");
    let _guard = dedupe.lock(digest);
    // Copies recorded by pushes since the walk listed the directories count too.
    let mut paths: Vec<StoragePath> = walked.to_vec();
    for recorded in dedupe.cache().paths(digest).unwrap_or_default() {
        if let Ok(p) = StoragePath::from_components(recorded.split('/')) {
            paths.push(p);
        }
    }
    paths.sort();
    paths.dedup();
    // Separate copies, each with every name it has: the most-named first.
    let mut copies: Vec<(u64, u64, Vec<StoragePath>)> = Vec::new();
    for path in paths {
        match store.driver.stat(&path) {
            Ok(Some(meta)) if !meta.is_dir => {
                let identity = meta.bytes_key();
                match copies.iter_mut().find(|(id, ..)| *id == identity) {
                    Some((.., names)) => names.push(path),
                    None => copies.push((identity, meta.size, vec![path])),
                }
            }
            Ok(_) => dedupe.forget(digest, &path),
            Err(e) => tracing::warn!(%digest, path = %path, "dedupe pass: cannot stat: {e}"),
        }
    }
    copies.sort_by_key(|(.., names)| std::cmp::Reverse(names.len()));
    let mut done = DigestDone::default();
    if copies.len() > 1 {
        let Some(keep) = copies
            .iter()
            .position(|(_, size, names)| intact(store, digest, *size, &names[0]))
        else {
            tracing::error!(%digest, "dedupe pass: no copy matches its digest; left for scrub");
            return done;
        };
        let original = copies[keep].2[0].clone();
        let mut at_link_limit = false;
        for (i, (_, size, names)) in copies.iter().enumerate() {
            if i == keep {
                continue;
            }
            // Damaged: looked at before the kept one and failed its check, or of another size
            // (copies after the kept one are not hashed: that would cost a hash per copy).
            let damaged = i < keep || *size != copies[keep].1;
            let mut all_linked = true;
            for name in names {
                match store.driver.link(&original, name) {
                    Ok(()) if damaged => {
                        done.linked += 1;
                        done.repaired += 1;
                        tracing::warn!(
                            %digest,
                            path = %name,
                            from = %original,
                            "dedupe pass: repaired {name}: its bytes did not match {digest}; it is now a link to the verified copy {original}"
                        );
                    }
                    Ok(()) => done.linked += 1,
                    // The file system's limit of names per file (ext4: 65,000): the other
                    // copies stay separate, said once for the digest.
                    Err(e) if super::dedupe::too_many_links(&e) => {
                        all_linked = false;
                        if !at_link_limit {
                            at_link_limit = true;
                            tracing::warn!(%digest, from = %original, "dedupe pass: the file system allows no more links to {original}; the remaining copies of {digest} stay separate");
                        }
                    }
                    Err(e) => {
                        all_linked = false;
                        tracing::warn!(%digest, path = %name, "dedupe pass: cannot link: {e}");
                    }
                }
            }
            if all_linked {
                done.reclaimed += size;
            }
        }
    }
    let records: Vec<(Digest, String)> = copies
        .iter()
        .flat_map(|(.., names)| {
            names
                .iter()
                .map(|n| (digest.clone(), n.as_str().to_string()))
        })
        .collect();
    if let Err(e) = dedupe.cache().put_many(&records) {
        tracing::warn!(%digest, "dedupe pass: cannot record: {e}");
    }
    done
}

/// Whether the file at `path` holds `size` bytes that hash to `digest`.
fn intact(store: &Store, digest: &Digest, size: u64, path: &StoragePath) -> bool {
    match store.hash_object(path, digest.algorithm()) {
        Ok((hasher, read)) => read == size && &hasher.finish() == digest,
        Err(_) => false,
    }
}

/// Counts for the progress lines, logged at every tenth of the digests.
struct Progress {
    total: usize,
    done: AtomicUsize,
    linked: AtomicU64,
    reclaimed: AtomicU64,
    repaired: AtomicU64,
    started: Instant,
}

impl Progress {
    fn new(total: usize) -> Progress {
        Progress {
            total,
            done: AtomicUsize::new(0),
            linked: AtomicU64::new(0),
            reclaimed: AtomicU64::new(0),
            repaired: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    fn add(&self, linked: u64, reclaimed: u64) {
        let linked = self.linked.fetch_add(linked, Ordering::Relaxed) + linked;
        let reclaimed = self.reclaimed.fetch_add(reclaimed, Ordering::Relaxed) + reclaimed;
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        let step = (self.total / 10).max(1);
        if done.is_multiple_of(step) || done == self.total {
            tracing::info!(
                done,
                total = self.total,
                linked,
                reclaimed_bytes = reclaimed,
                elapsed = ?Duration::from_millis(self.started.elapsed().as_millis() as u64),
                "dedupe pass: {done}/{} digests",
                self.total
            );
        }
    }
}
