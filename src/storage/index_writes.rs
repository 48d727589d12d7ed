//! Group commit of `index.json` changes. Every change to a repository's index is queued, then
//! whoever holds the repository's lock applies all queued changes to one copy of the index and
//! writes it once. Concurrent tag pushes to one repository thus share a single rewrite of
//! `index.json` instead of each rewriting the whole file in turn (an O(tags) cost per push).

use super::StoreError;
use super::driver::DriverError;
use super::listing::Listing;
use super::locks::Striped;
use crate::oci::RepoName;
use std::collections::HashMap;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Mutex, PoisonError};

/// A change to an index: returns whether it changed anything. A change that returns an error
/// must leave the index as it found it, since others' changes are applied to the same copy.
/// It may be applied more than once: again to a newer index when another writer (another
/// process on the same store) replaced the file between the read and the write.
pub(super) type IndexChange = Box<dyn Fn(&mut Listing) -> Result<bool, StoreError> + Send>;

/// A queued change and where to report its outcome.
pub(super) struct Pending {
    pub(super) change: IndexChange,
    pub(super) done: Sender<Result<(), StoreError>>,
}

/// Queued changes per repository (striped; each stripe lock is held only to push or take).
#[derive(Default)]
pub(super) struct PendingChanges {
    stripes: Striped<Mutex<HashMap<RepoName, Vec<Pending>>>>,
}

impl PendingChanges {
    /// Queues `change`; its outcome arrives on the returned receiver.
    pub(super) fn push(
        &self,
        repo: &RepoName,
        change: IndexChange,
    ) -> Receiver<Result<(), StoreError>> {
        let (done, outcome) = channel();
        let mut map = self
            .stripes
            .get(repo)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.entry(repo.clone())
            .or_default()
            .push(Pending { change, done });
        outcome
    }

    /// Takes every change queued for `repo`, oldest first.
    pub(super) fn take(&self, repo: &RepoName) -> Vec<Pending> {
        let mut map = self
            .stripes
            .get(repo)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.remove(repo).unwrap_or_default()
    }
}

/// The same failure for every change of a batch whose write failed.
pub(super) fn shared_failure(e: &StoreError) -> StoreError {
    match e {
        StoreError::NameUnknown(repo) => StoreError::NameUnknown(repo.clone()),
        // Still unavailable for each: a 503 the client retries, not a 500.
        StoreError::Driver(DriverError::Unavailable {
            driver, op, path, ..
        }) => StoreError::Driver(DriverError::Unavailable {
            driver,
            op,
            path: path.clone(),
            source: std::io::Error::other(e.to_string()),
        }),
        other => StoreError::Driver(DriverError::Io {
            driver: "index",
            op: "write index.json",
            path: String::new(),
            source: std::io::Error::other(other.to_string()),
        }),
    }
}
