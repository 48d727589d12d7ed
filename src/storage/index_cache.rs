//! A per-repository cache of parsed `index.json`, so manifest and tag lookups do not re-read
//! and re-parse the file on every request. Each lookup revalidates with one `stat`: an entry is
//! used only while the file's fingerprint is unchanged, so layouts changed on disk by other
//! tools are still served correctly. The map is striped; no lock covers the whole store.

use super::locks::Striped;
use crate::oci::{ImageIndex, RepoName};
use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

/// A parsed index and the fingerprint of the file it was parsed from (or written as).
type Entry = (u64, Arc<ImageIndex>);

/// Parsed indexes keyed by repository.
#[derive(Default)]
pub(super) struct IndexCache {
    stripes: Striped<RwLock<HashMap<RepoName, Entry>>>,
}

impl IndexCache {
    /// The cached index of `repo` if it was parsed from a file with `fingerprint`.
    pub(super) fn get(&self, repo: &RepoName, fingerprint: u64) -> Option<Arc<ImageIndex>> {
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
    pub(super) fn put(&self, repo: &RepoName, fingerprint: u64, index: Arc<ImageIndex>) {
        let mut map = self
            .stripes
            .get(repo)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        map.insert(repo.clone(), (fingerprint, index));
    }

    /// Drops the cached index of `repo`, so that a writer holding the only other reference
    /// can change it in place instead of copying it.
    pub(super) fn forget(&self, repo: &RepoName) {
        let mut map = self
            .stripes
            .get(repo)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        map.remove(repo);
    }
}
