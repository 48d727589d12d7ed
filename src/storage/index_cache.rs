//! A per-repository cache of parsed `index.json`, so manifest and tag lookups do not re-read
//! and re-parse the file on every request. Each lookup revalidates with one `stat`: an entry is
//! used only while the file's fingerprint is unchanged, so layouts changed on disk by other
//! tools are still served correctly. The map is striped; no lock covers the whole store. The
//! cache holds about `BUDGET` bytes of listings across all repositories (a mirror must not keep
//! every index it ever read: a gc sweep reads them all): past that, other repositories' entries
//! are dropped, in no particular order, and parsed again when next used.

use super::listing::Listing;
use super::locks::Striped;
use crate::oci::RepoName;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

/// Bytes of listings (`Listing::weight`) the cache keeps across repositories: room for one
/// repository of 100,000 tags (~90 MB) and many small ones.
const BUDGET: usize = 128 << 20;

/// A parsed index and the fingerprint of the file it was parsed from (or written as).
type Entry = (u64, Arc<Listing>);

/// Parsed indexes keyed by repository.
#[derive(Default)]
pub(super) struct IndexCache {
    stripes: Striped<RwLock<HashMap<RepoName, Entry>>>,
    /// Bytes held by the entries now (as `Listing::weight` counts them).
    weight: AtomicUsize,
}

impl IndexCache {
    /// The cached index of `repo` if it was parsed from a file with `fingerprint`.
    pub(super) fn get(&self, repo: &RepoName, fingerprint: u64) -> Option<Arc<Listing>> {
        let map = self
            .stripes
            .get(repo)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        match map.get(repo) {
            Some((f, index)) if *f == fingerprint => Some(Arc::clone(index)),
            _ => None,
        }
    }

    /// Records the index parsed from (or just written as) the file with `fingerprint`.
    pub(super) fn put(&self, repo: &RepoName, fingerprint: u64, index: Arc<Listing>) {
        let added = index.weight();
        let replaced = self
            .stripes
            .get(repo)
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(repo.clone(), (fingerprint, index));
        self.weight.fetch_add(added, Ordering::Relaxed);
        if let Some((_, old)) = replaced {
            self.weight.fetch_sub(old.weight(), Ordering::Relaxed);
        }
        if self.weight.load(Ordering::Relaxed) > BUDGET {
            self.shrink(repo);
        }
    }

    /// Drops the cached index of `repo`, so that a writer holding the only other reference
    /// can change it in place instead of copying it.
    pub(super) fn forget(&self, repo: &RepoName) {
        let removed = self
            .stripes
            .get(repo)
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(repo);
        if let Some((_, old)) = removed {
            self.weight.fetch_sub(old.weight(), Ordering::Relaxed);
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
            map.retain(|repo, (_, index)| {
                if repo == keep || self.weight.load(Ordering::Relaxed) <= BUDGET {
                    return true;
                }
                self.weight.fetch_sub(index.weight(), Ordering::Relaxed);
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
            cache.put(&repo, 1, Arc::clone(&big));
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
}
