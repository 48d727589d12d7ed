//! A per-repository cache of parsed `index.json`, so manifest and tag lookups do not re-read
//! and re-parse the file on every request (manifest bytes are kept by `digest_bytes`).
//!
//! An index entry is used only while the file's fingerprint is unchanged, so layouts changed
//! on disk by other tools, or through other instances, are still served correctly. Where the
//! driver asks for it to be revalidated on every use (local: one `stat`), it is; where asking
//! is a round trip (S3: a HEAD), pulls serve an entry checked within the driver's
//! `revalidate_after` without asking (`fresh`), and writes always ask. A pull reads without the
//! repository lock, so its read may end after a write through this instance began; each
//! stripe counts the writes to its repositories, and a read's entry is kept only if none
//! began since the read did (`Ticket`), so a pull never puts an index older than a write's
//! back in its place. The map is striped; no lock covers the whole store. The cache holds about `BUDGET` bytes of listings across all
//! repositories (a mirror must not keep every index it ever read: a gc sweep reads them all):
//! past that, other repositories' entries are dropped, in no particular order, and parsed
//! again when next used.

use super::listing::Listing;
use super::locks::Striped;
use crate::oci::RepoName;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// Bytes of listings (`Listing::weight`) the cache keeps across repositories: room for one
/// repository of 100,000 tags (~90 MB) and many small ones.
const BUDGET: usize = 128 << 20;

/// A parsed index, the fingerprint of the file it was parsed from (or written as), and when
/// that fingerprint was last found current (`IndexCache::now`).
struct Entry {
    fingerprint: u64,
    checked: AtomicU64,
    index: Arc<Listing>,
}

/// The entries of one stripe, and how many writes to its repositories began (`forget`,
/// `put_written`): a read that began before the count it last saw may not cache.
#[derive(Default)]
struct Stripe {
    entries: HashMap<RepoName, Entry>,
    writes: u64,
}

/// What a read of an index saw before it began (`IndexCache::ticket`): its entry goes in
/// only if no write to its stripe began since.
#[derive(Clone, Copy)]
pub(super) struct Ticket(u64);

/// Parsed indexes keyed by repository.
pub(super) struct IndexCache {
    stripes: Striped<RwLock<Stripe>>,
    /// Bytes held by the entries now (as `Listing::weight` counts them).
    weight: AtomicUsize,
    /// What `Entry::checked` counts from.
    epoch: Instant,
}

impl Default for IndexCache {
    fn default() -> IndexCache {
        IndexCache {
            stripes: Striped::default(),
            weight: AtomicUsize::new(0),
            epoch: Instant::now(),
        }
    }
}

impl IndexCache {
    /// Nanoseconds since `epoch`.
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The cached index of `repo` if it was parsed from a file with `fingerprint`, which the
    /// caller just found current.
    pub(super) fn get(&self, repo: &RepoName, fingerprint: u64) -> Option<Arc<Listing>> {
        let map = self
            .stripes
            .get(repo)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        match map.entries.get(repo) {
            Some(entry) if entry.fingerprint == fingerprint => {
                entry.checked.store(self.now(), Ordering::Relaxed);
                Some(Arc::clone(&entry.index))
            }
            _ => None,
        }
    }

    /// The cached index of `repo`, with its fingerprint, if it was found current within
    /// `max_age`.
    pub(super) fn fresh(&self, repo: &RepoName, max_age: Duration) -> Option<(u64, Arc<Listing>)> {
        let map = self
            .stripes
            .get(repo)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = map.entries.get(repo)?;
        let age = self
            .now()
            .saturating_sub(entry.checked.load(Ordering::Relaxed));
        (Duration::from_nanos(age) < max_age).then(|| (entry.fingerprint, Arc::clone(&entry.index)))
    }

    /// Taken before a read of `repo`'s index begins (before its `stat`), for `put_read`.
    pub(super) fn ticket(&self, repo: &RepoName) -> Ticket {
        let map = self
            .stripes
            .get(repo)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        Ticket(map.writes)
    }

    /// Records the index parsed from the file with `fingerprint`, current now, unless a write
    /// began since `ticket` was taken: what the read saw may be older than what it wrote.
    pub(super) fn put_read(
        &self,
        repo: &RepoName,
        ticket: Ticket,
        fingerprint: u64,
        index: Arc<Listing>,
    ) {
        self.insert(repo, Some(ticket), fingerprint, index);
    }

    /// Records the index just written as the file with `fingerprint`, over whatever a read
    /// put, and keeps reads that began before it from putting theirs.
    pub(super) fn put_written(&self, repo: &RepoName, fingerprint: u64, index: Arc<Listing>) {
        self.insert(repo, None, fingerprint, index);
    }

    fn insert(&self, repo: &RepoName, read: Option<Ticket>, fingerprint: u64, index: Arc<Listing>) {
        let added = index.weight();
        let entry = Entry {
            fingerprint,
            checked: AtomicU64::new(self.now()),
            index,
        };
        let replaced = {
            let mut map = self
                .stripes
                .get(repo)
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            match read {
                Some(Ticket(writes)) if writes != map.writes => return,
                Some(_) => {}
                None => map.writes += 1,
            }
            map.entries.insert(repo.clone(), entry)
        };
        self.weight.fetch_add(added, Ordering::Relaxed);
        if let Some(old) = replaced {
            self.weight.fetch_sub(old.index.weight(), Ordering::Relaxed);
        }
        if self.weight.load(Ordering::Relaxed) > BUDGET {
            self.shrink(repo);
        }
    }

    /// Drops the cached index of `repo`, so that a writer holding the only other reference
    /// can change it in place instead of copying it. A write begins here: reads that began
    /// before may not put what they read.
    pub(super) fn forget(&self, repo: &RepoName) {
        let removed = {
            let mut map = self
                .stripes
                .get(repo)
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            map.writes += 1;
            map.entries.remove(repo)
        };
        if let Some(old) = removed {
            self.weight.fetch_sub(old.index.weight(), Ordering::Relaxed);
        }
    }

    /// Drops entries other than `keep`'s until the cache is within its budget. Stripes that
    /// others hold now are skipped, never waited for (a lookup there would wait behind us).
    fn shrink(&self, keep: &RepoName) {
        for stripe in self.stripes.all() {
            if self.weight.load(Ordering::Relaxed) <= BUDGET {
                return;
            }
            let Ok(mut map) = stripe.try_write() else {
                continue;
            };
            map.entries.retain(|repo, entry| {
                if repo == keep || self.weight.load(Ordering::Relaxed) <= BUDGET {
                    return true;
                }
                self.weight
                    .fetch_sub(entry.index.weight(), Ordering::Relaxed);
                false
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::ImageIndex;

    fn listing(descriptors: usize) -> Arc<Listing> {
        let mut index = ImageIndex::empty();
        let d = crate::oci::Descriptor::new(
            crate::oci::media_type::OCI_MANIFEST,
            crate::digest::Digest::sha256_of(b"m"),
            1,
        );
        index.manifests = vec![d; descriptors];
        Arc::new(Listing::from(index))
    }

    #[test]
    fn the_cache_stays_within_its_budget_and_keeps_what_was_just_put() {
        let cache = IndexCache::default();
        let big = listing(BUDGET / 4 / 700 - 2);
        let weight = big.weight();
        assert!(weight <= BUDGET / 4);
        for n in 0..10 {
            let repo: RepoName = format!("r{n}").parse().unwrap();
            cache.put_written(&repo, 1, Arc::clone(&big));
            assert!(cache.get(&repo, 1).is_some(), "the entry just put stays");
            assert!(cache.weight.load(Ordering::Relaxed) <= BUDGET);
        }
        let held: usize = (0..10)
            .filter(|n| cache.get(&format!("r{n}").parse().unwrap(), 1).is_some())
            .count();
        assert_eq!(held, 4);
        cache.forget(&"r9".parse().unwrap());
        assert_eq!(cache.weight.load(Ordering::Relaxed), 3 * weight);
    }

    /// A pull reads index.json without the repository lock: its entry must not replace the
    /// one a write through this instance put after the pull began (issue 13 review, finding 2).
    #[test]
    fn a_read_that_began_before_a_write_does_not_replace_its_entry() {
        let cache = IndexCache::default();
        let repo: RepoName = "r".parse().unwrap();
        let (old, new) = (listing(1), listing(2));
        let ticket = cache.ticket(&repo);
        cache.forget(&repo);
        cache.put_written(&repo, 2, Arc::clone(&new));
        cache.put_read(&repo, ticket, 1, old);
        let (fingerprint, served) = cache.fresh(&repo, Duration::from_secs(60)).unwrap();
        assert_eq!(fingerprint, 2);
        assert!(Arc::ptr_eq(&served, &new));
        // The same read begun after a write began (between its `forget` and its put) too.
        let ticket = cache.ticket(&repo);
        cache.put_written(&repo, 3, Arc::clone(&new));
        cache.put_read(&repo, ticket, 2, listing(1));
        assert_eq!(cache.fresh(&repo, Duration::from_secs(60)).unwrap().0, 3);
        // A read with no write since is cached.
        let ticket = cache.ticket(&repo);
        cache.put_read(&repo, ticket, 4, listing(1));
        assert_eq!(
            cache.get(&repo, 4).map(|l| l.weight()),
            Some(listing(1).weight())
        );
    }
}
