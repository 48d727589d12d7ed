//! Striped locks: a fixed array of mutexes picked by hashing a key (a repository name, an
//! upload id), so that unrelated keys rarely contend and no lock ever covers the whole store.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Mutex, MutexGuard};

const STRIPES: usize = 64;

/// Mutexes striped by key.
pub(super) struct Stripes {
    locks: Vec<Mutex<()>>,
}

impl Default for Stripes {
    fn default() -> Self {
        Stripes {
            locks: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }
}

impl Stripes {
    /// Locks the stripe of `key`. Poisoning is ignored: the guarded data lives on disk and is
    /// only ever replaced atomically, so a panicking holder cannot leave it half-written.
    pub(super) fn lock(&self, key: &str) -> MutexGuard<'_, ()> {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        let lock = &self.locks[(h.finish() as usize) % STRIPES];
        lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
