//! Bytes by repository and digest, kept in memory for drivers where reading them is a round
//! trip (S3): manifests, and small blobs (the berth-only key `blobcachesize`, issue 13).
//!
//! The bytes of a digest never change, so what is held is never stale; whether a repository
//! still holds them can change (a delete or gc, through this store or through another
//! instance on the same bucket). An entry therefore records when its presence was last
//! confirmed: callers serve it without asking within the driver's `revalidate_after` of
//! that, as the index that names a manifest is served (`index_cache`), and after it only once
//! the backend confirmed it (`confirmed`) or after reading it again. Deletes through this
//! store drop the entry (`forget`); a read that began before a forget may not put what it
//! read (`Ticket`), so a pull racing a delete never brings a deleted blob back.
//!
//! Bounded by bytes: one object holds at most `1 / OBJECT_SHARE` of the budget, so one large
//! blob cannot push out everything else, and past the budget whole stripes are dropped, in
//! turn from a rotating start, until there is room: no order is kept (that would be a lock or
//! a list every hit touches), and what is pulled again is read again. Striped like the index
//! cache; no lock covers the whole cache.

use super::locks::Striped;
use crate::digest::Digest;
use crate::oci::RepoName;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// One object may take at most this share of the budget: sixteen objects of the largest
/// size fit, so a blob at the cap displaces at most a sixteenth of what is held.
const OBJECT_SHARE: usize = 16;

/// Bytes held per repository and digest, with when their presence was last confirmed.
pub(super) struct DigestBytes {
    stripes: Striped<Mutex<Stripe>>,
    /// Bytes held across stripes.
    weight: AtomicUsize,
    budget: usize,
    /// Where the next eviction starts, so successive ones drop different stripes.
    next_evicted: AtomicUsize,
}

/// The entries of one stripe, and how many forgets it has seen (`Ticket`).
#[derive(Default)]
struct Stripe {
    entries: HashMap<(RepoName, Digest), Entry>,
    forgets: u64,
}

struct Entry {
    confirmed: Instant,
    bytes: Arc<Vec<u8>>,
}

/// What a lookup found.
pub(super) enum Held {
    /// Confirmed present within the interval asked about: serve without asking.
    Fresh(Arc<Vec<u8>>),
    /// Confirmed before it: serve once the backend confirms it (then `confirmed`).
    Stale(Arc<Vec<u8>>),
}

/// Taken before a read of a repository's bytes begins (`DigestBytes::ticket`): what it read
/// is put only if no forget in its stripe happened since.
#[derive(Clone, Copy)]
pub(super) struct Ticket(u64);

impl DigestBytes {
    /// A cache of at most `budget` bytes; zero keeps nothing.
    pub(super) fn new(budget: usize) -> DigestBytes {
        DigestBytes {
            stripes: Striped::default(),
            weight: AtomicUsize::new(0),
            budget,
            next_evicted: AtomicUsize::new(0),
        }
    }

    /// Whether an object of `size` bytes would be kept.
    pub(super) fn keeps(&self, size: u64) -> bool {
        size <= (self.budget / OBJECT_SHARE) as u64 && self.budget > 0
    }

    /// The stripe of `digest` in `repo`: by both, so one repository's blobs spread over
    /// every stripe and an eviction drops a share of them, not all.
    fn lock(&self, repo: &RepoName, digest: &Digest) -> MutexGuard<'_, Stripe> {
        self.stripes
            .get(&(repo, digest))
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The bytes of `digest` in `repo`, fresh if confirmed within `max_age`.
    pub(super) fn get(&self, repo: &RepoName, digest: &Digest, max_age: Duration) -> Option<Held> {
        if self.budget == 0 {
            return None;
        }
        let held = self.lock(repo, digest);
        let entry = held.entries.get(&(repo.clone(), digest.clone()))?;
        let bytes = Arc::clone(&entry.bytes);
        Some(if entry.confirmed.elapsed() < max_age {
            Held::Fresh(bytes)
        } else {
            Held::Stale(bytes)
        })
    }

    /// Records that `repo` was just found to hold `digest`.
    pub(super) fn confirmed(&self, repo: &RepoName, digest: &Digest) {
        if let Some(entry) = self
            .lock(repo, digest)
            .entries
            .get_mut(&(repo.clone(), digest.clone()))
        {
            entry.confirmed = Instant::now();
        }
    }

    /// Taken before a read of `digest` in `repo` begins, for `put`.
    pub(super) fn ticket(&self, repo: &RepoName, digest: &Digest) -> Ticket {
        if self.budget == 0 {
            return Ticket(0);
        }
        Ticket(self.lock(repo, digest).forgets)
    }

    /// Records the bytes of `digest` in `repo`, read now, unless they are too large to keep
    /// or a forget in their stripe happened since `ticket` was taken.
    pub(super) fn put(
        &self,
        repo: &RepoName,
        digest: &Digest,
        ticket: Ticket,
        bytes: Arc<Vec<u8>>,
    ) {
        let added = bytes.len();
        if !self.keeps(added as u64) {
            return;
        }
        if self.weight.load(Ordering::Relaxed) + added > self.budget {
            self.evict(self.budget - added);
        }
        let old = {
            let mut held = self.lock(repo, digest);
            if held.forgets != ticket.0 {
                return;
            }
            let entry = Entry {
                confirmed: Instant::now(),
                bytes,
            };
            held.entries.insert((repo.clone(), digest.clone()), entry)
        };
        self.weight.fetch_add(added, Ordering::Relaxed);
        if let Some(old) = old {
            self.weight.fetch_sub(old.bytes.len(), Ordering::Relaxed);
        }
    }

    /// Drops the bytes of `digest` in `repo` (deleted through this store), and keeps reads
    /// that began before from putting them back.
    pub(super) fn forget(&self, repo: &RepoName, digest: &Digest) {
        if self.budget == 0 {
            return;
        }
        let old = {
            let mut held = self.lock(repo, digest);
            held.forgets += 1;
            held.entries.remove(&(repo.clone(), digest.clone()))
        };
        if let Some(old) = old {
            self.weight.fetch_sub(old.bytes.len(), Ordering::Relaxed);
        }
    }

    /// Empties stripes, one at a time and holding no other, until at most `until` bytes are
    /// held.
    fn evict(&self, until: usize) {
        let stripes: Vec<&Mutex<Stripe>> = self.stripes.all().collect();
        let start = self.next_evicted.fetch_add(1, Ordering::Relaxed);
        for n in 0..stripes.len() {
            if self.weight.load(Ordering::Relaxed) <= until {
                return;
            }
            let mut held = stripes[(start + n) % stripes.len()]
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let freed: usize = held.entries.values().map(|e| e.bytes.len()).sum();
            held.entries.clear();
            self.weight.fetch_sub(freed, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: usize = 1 << 20;

    fn key(n: usize) -> (RepoName, Digest) {
        (
            format!("r{}", n % 7).parse().unwrap(),
            Digest::sha256_of(format!("{n}").as_bytes()),
        )
    }

    #[test]
    fn the_cache_stays_within_its_budget_and_refuses_objects_over_their_share() {
        let cache = DigestBytes::new(BUDGET);
        let largest = BUDGET / OBJECT_SHARE;
        let age = Duration::from_secs(60);
        let (repo, digest) = key(0);
        cache.put(
            &repo,
            &digest,
            cache.ticket(&repo, &digest),
            Arc::new(vec![0; largest + 1]),
        );
        assert!(cache.get(&repo, &digest, age).is_none(), "over its share");
        for n in 0..10 * OBJECT_SHARE {
            let (repo, digest) = key(n);
            cache.put(
                &repo,
                &digest,
                cache.ticket(&repo, &digest),
                Arc::new(vec![0; largest]),
            );
            assert!(matches!(
                cache.get(&repo, &digest, age),
                Some(Held::Fresh(_))
            ));
            assert!(cache.weight.load(Ordering::Relaxed) <= BUDGET);
        }
        let held: usize = (0..10 * OBJECT_SHARE)
            .filter(|n| {
                let (repo, digest) = key(*n);
                cache.get(&repo, &digest, age).is_some()
            })
            .count();
        assert_eq!(cache.weight.load(Ordering::Relaxed), held * largest);
        assert!(
            held >= OBJECT_SHARE / 2,
            "an eviction drops a stripe or a few, not all: {held}"
        );
    }

    #[test]
    fn a_read_that_began_before_a_forget_does_not_put() {
        let cache = DigestBytes::new(BUDGET);
        let (repo, digest) = key(1);
        let age = Duration::from_secs(60);
        let ticket = cache.ticket(&repo, &digest);
        cache.forget(&repo, &digest);
        cache.put(&repo, &digest, ticket, Arc::new(vec![1; 10]));
        assert!(cache.get(&repo, &digest, age).is_none());
        cache.put(
            &repo,
            &digest,
            cache.ticket(&repo, &digest),
            Arc::new(vec![1; 10]),
        );
        assert!(matches!(
            cache.get(&repo, &digest, age),
            Some(Held::Fresh(_))
        ));
        assert!(matches!(
            cache.get(&repo, &digest, Duration::ZERO),
            Some(Held::Stale(_))
        ));
        cache.forget(&repo, &digest);
        assert!(cache.get(&repo, &digest, age).is_none());
        assert_eq!(cache.weight.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_budget_of_zero_keeps_nothing() {
        let cache = DigestBytes::new(0);
        let (repo, digest) = key(2);
        assert!(!cache.keeps(0));
        cache.put(
            &repo,
            &digest,
            cache.ticket(&repo, &digest),
            Arc::new(Vec::new()),
        );
        assert!(cache.get(&repo, &digest, Duration::from_secs(60)).is_none());
    }
}
