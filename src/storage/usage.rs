//! Push and pull times for retention's `keepTags` rules, recorded cheaply: a request notes
//! the time in a striped in-memory map (no I/O on the pull path), and `flush` writes what
//! accumulated to the store's `UsageLog` in one transaction per kind. Reads flush first. Times are
//! recorded only when a retention rule uses them; without a record, a tag's push time is its
//! manifest's modification time and its pull time is "never".

use super::locks::Striped;
use crate::cache::{Access, Outage, UsageLog};
use crate::digest::Digest;
use crate::oci::{RepoName, Tag};
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

/// Times noted since the last flush, striped by key.
type Pending<K> = Striped<Mutex<HashMap<K, SystemTime>>>;

/// The usage times of one store.
pub(super) struct Usage {
    log: Arc<dyn UsageLog>,
    outage: Outage,
    pushes: Option<Pending<(RepoName, Tag)>>,
    pulls: Option<Pending<(RepoName, Digest)>>,
}

/// Notes `key` was used now, when `pending` is kept.
fn note<K: Hash + Eq>(pending: &Option<Pending<K>>, key: K) {
    if let Some(pending) = pending {
        let mut map = pending
            .get(&key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.insert(key, SystemTime::now());
    }
}

/// Takes every time noted in `pending`.
fn drain<K>(pending: &Pending<K>) -> Vec<(K, SystemTime)> {
    let mut batch = Vec::new();
    for stripe in pending.all() {
        batch.extend(
            stripe
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .drain(),
        );
    }
    batch
}

impl Usage {
    pub(super) fn new(log: Arc<dyn UsageLog>, pushes: bool, pulls: bool) -> Usage {
        Usage {
            log,
            outage: Outage::new("usage"),
            pushes: pushes.then(Pending::default),
            pulls: pulls.then(Pending::default),
        }
    }

    /// Notes that `tag` of `repo` was pushed now.
    pub(super) fn pushed(&self, repo: &RepoName, tag: &Tag) {
        note(&self.pushes, (repo.clone(), tag.clone()));
    }

    /// Notes that the manifest `digest` of `repo` was pulled now.
    pub(super) fn pulled(&self, repo: &RepoName, digest: &Digest) {
        note(&self.pulls, (repo.clone(), digest.clone()));
    }

    /// Whether the cache answers now (health and metrics).
    pub(super) fn health(&self) -> crate::cache::CacheHealth {
        self.outage.health()
    }

    /// Writes the noted times to the log. A failed write is logged and the times are lost:
    /// they only steer retention, which then falls back to modification times.
    pub(super) fn flush(&self) {
        if let Some(pending) = &self.pushes {
            let batch: Vec<_> = drain(pending)
                .into_iter()
                .map(|((repo, tag), at)| (repo, tag, at))
                .collect();
            if !batch.is_empty() {
                let recorded = self.log.record_pushes(&batch);
                self.outage
                    .call(Access::Write, "record push times", recorded);
            }
        }
        if let Some(pending) = &self.pulls {
            let batch: Vec<_> = drain(pending)
                .into_iter()
                .map(|((repo, digest), at)| (repo, digest, at))
                .collect();
            if !batch.is_empty() {
                let recorded = self.log.record_pulls(&batch);
                self.outage
                    .call(Access::Write, "record pull times", recorded);
            }
        }
    }

    /// The recorded push times of `repo`'s tags and pull times of its manifests.
    pub(super) fn times(&self, repo: &RepoName) -> super::TagTimes {
        self.flush();
        let mut times = super::TagTimes::default();
        let pushes = self.log.pushes(repo);
        for (tag, at) in self
            .outage
            .call(Access::Read, "read push times", pushes)
            .unwrap_or_default()
        {
            times.pushed.insert(tag.to_string(), at);
        }
        let pulls = self.log.pulls(repo);
        times.pulled.extend(
            self.outage
                .call(Access::Read, "read pull times", pulls)
                .unwrap_or_default(),
        );
        times
    }
}
