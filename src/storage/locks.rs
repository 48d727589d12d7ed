//! Striping: a fixed array of values (locks, maps) picked by hashing a key such as a
//! repository name, so that unrelated keys rarely contend and no lock ever covers the whole
//! store. Repository locks, the index cache and the queue of index changes all stripe this way.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{
    Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError,
};

const STRIPES: usize = 64;

/// `STRIPES` values of `T`, one per hash bucket of the key.
pub(super) struct Striped<T> {
    stripes: Vec<T>,
}

impl<T: Default> Default for Striped<T> {
    fn default() -> Self {
        Striped {
            stripes: (0..STRIPES).map(|_| T::default()).collect(),
        }
    }
}

impl<T> Striped<T> {
    /// The stripe of `key`.
    pub(super) fn get(&self, key: &(impl Hash + ?Sized)) -> &T {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        &self.stripes[(h.finish() as usize) % STRIPES]
    }

    /// Every stripe.
    pub(super) fn all(&self) -> impl Iterator<Item = &T> {
        self.stripes.iter()
    }
}

impl Striped<Mutex<()>> {
    /// Locks the stripe of `key`. Poisoning is ignored: the guarded data lives on disk and is
    /// only ever replaced atomically, so a panicking holder cannot leave it half-written.
    pub(super) fn lock(&self, key: &(impl Hash + ?Sized)) -> MutexGuard<'_, ()> {
        self.get(key).lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Striped<RwLock<()>> {
    /// Shares the stripe of `key` (poisoning ignored, as for `lock`).
    pub(super) fn read(&self, key: &(impl Hash + ?Sized)) -> RwLockReadGuard<'_, ()> {
        self.get(key).read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds the stripe of `key` alone if no one shares or holds it now.
    pub(super) fn try_write(&self, key: &(impl Hash + ?Sized)) -> Option<RwLockWriteGuard<'_, ()>> {
        match self.get(key).try_write() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }
}
