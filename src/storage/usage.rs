//! Push and pull times for retention's `keepTags` rules, recorded cheaply: a request notes
//! the time in a striped in-memory map (no I/O on the pull path), and `flush` writes what
//! accumulated to the store's cache in one transaction per kind. Reads flush first. Times are
//! recorded only when a retention rule uses them; without a record, a tag's push time is its
//! manifest's modification time and its pull time is "never".

use super::locks::Striped;
use crate::cache::{Cache, TimeKind};
use crate::digest::Digest;
use crate::oci::RepoName;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

type Pending = Striped<Mutex<HashMap<String, u64>>>;

/// The usage times of one store.
pub(super) struct Usage {
    cache: Arc<dyn Cache>,
    pushes: Option<Pending>,
    pulls: Option<Pending>,
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn key(repo: &RepoName, item: &str) -> String {
    format!("{repo}\n{item}")
}

impl Usage {
    pub(super) fn new(cache: Arc<dyn Cache>, pushes: bool, pulls: bool) -> Usage {
        Usage {
            cache,
            pushes: pushes.then(Pending::default),
            pulls: pulls.then(Pending::default),
        }
    }

    fn note(pending: &Option<Pending>, key: String) {
        if let Some(pending) = pending {
            let now = millis(SystemTime::now());
            let mut map = pending
                .get(&key)
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            map.insert(key, now);
        }
    }

    /// Notes that `tag` of `repo` was pushed now.
    pub(super) fn pushed(&self, repo: &RepoName, tag: &str) {
        Usage::note(&self.pushes, key(repo, tag));
    }

    /// Notes that the manifest `digest` of `repo` was pulled now.
    pub(super) fn pulled(&self, repo: &RepoName, digest: &Digest) {
        Usage::note(&self.pulls, key(repo, &digest.to_string()));
    }

    /// Writes the noted times to the cache. A failed write is logged and the times are lost:
    /// they only steer retention, which then falls back to modification times.
    pub(super) fn flush(&self) {
        for (kind, pending) in [
            (TimeKind::Pushed, &self.pushes),
            (TimeKind::Pulled, &self.pulls),
        ] {
            let Some(pending) = pending else { continue };
            let mut batch = Vec::new();
            for stripe in pending.all() {
                batch.extend(
                    stripe
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .drain(),
                );
            }
            if let Err(e) = self.cache.record_times(kind, &batch) {
                tracing::warn!("usage times not recorded: {e}");
            }
        }
    }

    /// The recorded push times of `repo`'s tags and pull times of its manifests.
    pub(super) fn times(&self, repo: &RepoName) -> super::TagTimes {
        self.flush();
        let prefix = key(repo, "");
        let read = |kind| {
            self.cache.times(kind, &prefix).unwrap_or_else(|e| {
                tracing::warn!(repository = %repo, "usage times unreadable: {e}");
                Vec::new()
            })
        };
        let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
        let mut times = super::TagTimes::default();
        for (k, ms) in read(TimeKind::Pushed) {
            times.pushed.insert(k[prefix.len()..].to_string(), at(ms));
        }
        for (k, ms) in read(TimeKind::Pulled) {
            if let Ok(digest) = k[prefix.len()..].parse() {
                times.pulled.insert(digest, at(ms));
            }
        }
        times
    }
}
