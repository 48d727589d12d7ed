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
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant};

/// Age after which one page request walks the store again.
const REFRESH: Duration = Duration::from_secs(30);

/// The repositories of a store, as last walked and updated since.
#[derive(Default)]
pub(super) struct Catalog {
    known: RwLock<Option<Known>>,
    /// A background walk is under way.
    refreshing: AtomicBool,
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

    /// Replaces the set with what a walk found.
    pub(super) fn walked(&self, names: &[String]) {
        *self.write() = Some(Known {
            names: names.iter().cloned().collect(),
            walked: Instant::now(),
        });
    }

    /// Notes a repository berth created.
    pub(super) fn created(&self, name: &str) {
        if let Some(known) = self.write().as_mut() {
            known.names.insert(name.to_string());
        }
    }

    /// Notes a repository berth removed.
    pub(super) fn removed(&self, name: &str) {
        if let Some(known) = self.write().as_mut() {
            known.names.remove(name);
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
            let walked = self.walk();
            self.catalog_index
                .refreshing
                .store(false, Ordering::Release);
            walked?;
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
