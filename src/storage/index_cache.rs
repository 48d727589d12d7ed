//! A per-repository cache of parsed `index.json`, so manifest and tag lookups do not re-read
//! and re-parse the file on every request. Each lookup revalidates with one `stat`: an entry is
//! used only while the file's fingerprint is unchanged, so layouts changed on disk by other
//! tools are still served correctly. The map is striped; no lock covers the whole store.

use crate::oci::{ImageIndex, RepoName};
use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, PoisonError, RwLock};

const STRIPES: usize = 64;

/// One stripe: repository -> (fingerprint of the file, the index parsed from it).
type Stripe = RwLock<HashMap<RepoName, (u64, Arc<ImageIndex>)>>;

/// Parsed indexes keyed by repository, each with the fingerprint of the file it came from.
pub(super) struct IndexCache {
    stripes: Vec<Stripe>,
}

impl Default for IndexCache {
    fn default() -> Self {
        IndexCache {
            stripes: (0..STRIPES).map(|_| RwLock::default()).collect(),
        }
    }
}

impl IndexCache {
    fn stripe(&self, repo: &RepoName) -> &Stripe {
        let mut h = DefaultHasher::new();
        repo.hash(&mut h);
        &self.stripes[(h.finish() as usize) % STRIPES]
    }

    /// The cached index of `repo` if it was parsed from a file with `fingerprint`.
    pub(super) fn get(&self, repo: &RepoName, fingerprint: u64) -> Option<Arc<ImageIndex>> {
        let map = self
            .stripe(repo)
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
            .stripe(repo)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        map.insert(repo.clone(), (fingerprint, index));
    }
}
