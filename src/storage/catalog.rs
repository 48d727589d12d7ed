//! The catalog of one store kept in memory, sorted, so a `_catalog` page costs O(n log N)
//! instead of a walk of the whole store per page (issue 11: 20,000 repositories cost 400 ms a
//! page and 79 s to page through with n=100).
//!
//! The layout on disk stays the truth: the set is filled by a walk of the store on first use,
//! kept current by berth's own creations and removals of repositories, replaced by every walk
//! (each gc sweep and scrub walks), and walked again once older than `REFRESH` (by one
//! request, while the others are served what is known), so a repository another program lays
//! down appears within that delay.

use super::{Store, StoreError};
use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// Age after which one page request walks the store again.
const REFRESH: Duration = Duration::from_secs(30);

/// Creations and removals kept for walks under way, which started before them.
const CHANGES_KEPT: usize = 4096;

/// The repositories of a store, as last walked and updated since.
#[derive(Default)]
pub(super) struct Catalog {
    known: RwLock<Option<Known>>,
    /// A page request's walk is under way.
    refreshing: AtomicBool,
    /// Berth's own creations (`true`) and removals, numbered, newest last: a walk that
    /// listed the store before one of them replays it, so its older view cannot hide the
    /// change until the next walk.
    changes: Mutex<VecDeque<(u64, String, bool)>>,
    numbered: AtomicU64,
}

struct Known {
    names: BTreeSet<String>,
    walked: Instant,
}

impl Catalog {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Option<Known>> {
        self.known.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Option<Known>> {
        self.known.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Where a walk starting now begins: changes numbered after it are replayed onto what it
    /// finds.
    pub(super) fn walk_starts(&self) -> u64 {
        self.numbered.load(Ordering::Acquire)
    }

    /// Replaces the set with what a walk that started at `since` found, plus berth's own
    /// changes since then.
    pub(super) fn walked(&self, names: &[String], since: u64) {
        let mut names: BTreeSet<String> = names.iter().cloned().collect();
        let mut known = self.write();
        let changes = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        for (_, name, created) in changes.iter().filter(|(n, ..)| *n > since) {
            if *created {
                names.insert(name.clone());
            } else {
                names.remove(name);
            }
        }
        *known = Some(Known {
            names,
            walked: Instant::now(),
        });
    }

    /// Notes a repository berth created (`true`) or removed.
    pub(super) fn changed(&self, name: &str, created: bool) {
        let mut known = self.write();
        let mut changes = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        let number = self.numbered.fetch_add(1, Ordering::AcqRel) + 1;
        changes.push_back((number, name.to_string(), created));
        if changes.len() > CHANGES_KEPT {
            changes.pop_front();
        }
        if let Some(known) = known.as_mut() {
            if created {
                known.names.insert(name.to_string());
            } else {
                known.names.remove(name);
            }
        }
    }
}

impl Store {
    /// Up to `limit` repository names after `after` (all when `None`), sorted.
    pub fn catalog_page(
        &self,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<String>, StoreError> {
        // Read and released before any walk, which replaces the set.
        let age = self
            .catalog_index
            .read()
            .as_ref()
            .map(|known| known.walked.elapsed());
        let stale = match age {
            Some(age) => age > REFRESH,
            None => {
                self.walk()?;
                false
            }
        };
        if stale && !self.catalog_index.refreshing.swap(true, Ordering::AcqRel) {
            // Cleared however the walk ends, a panic included: otherwise no request would
            // walk again.
            struct Done<'a>(&'a AtomicBool);
            impl Drop for Done<'_> {
                fn drop(&mut self) {
                    self.0.store(false, Ordering::Release);
                }
            }
            let _done = Done(&self.catalog_index.refreshing);
            self.walk()?;
        }
        let known = self.catalog_index.read();
        let Some(known) = known.as_ref() else {
            return Ok(Vec::new());
        };
        let from = match after {
            Some(after) => std::ops::Bound::Excluded(after.to_string()),
            None => std::ops::Bound::Unbounded,
        };
        let range = known
            .names
            .range((from, std::ops::Bound::Unbounded))
            .take(limit.unwrap_or(usize::MAX));
        Ok(range.cloned().collect())
    }
}
