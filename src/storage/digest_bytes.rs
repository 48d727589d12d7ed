//! Bytes by repository and digest, kept in memory for drivers where reading them is a round
//! trip (S3): manifests, and small blobs (the berth-only key `blobcachesize`, issue 13).
//!
//! The bytes of a digest never change, and bytes are kept only once they hash to it
//! (`Fill::keep`: an object altered in the bucket is not), so what is held is never stale;
//! whether a repository still holds them can change (a delete or gc, through this store or
//! through another instance on the same bucket). An entry therefore records when its presence was last
//! confirmed: callers serve it without asking within the driver's `revalidate_after` of
//! that, as the index that names a manifest is served (`index_cache`), and after it only once
//! the backend confirmed it (`confirmed`) or after reading it again. Deletes through this
//! store drop the entry (`forget`); a read that began before a forget may not put what it
//! read (`Ticket`), so a pull racing a delete never brings a deleted blob back.
//!
//! Bounded by bytes, counting both what is held and what is being read to be kept: a read
//! reserves its object's size in the budget before it buffers a byte (`fill`), and streams
//! without keeping when no room can be made, so reads in flight never take memory beyond
//! the budget; one reading an object makes another reader of it stream rather than buffer a
//! second copy. One object holds at most `1 / OBJECT_SHARE` of the budget, so one large
//! blob cannot push out everything else, and past the budget whole stripes are dropped, in
//! turn from a rotating start, until there is room: no order is kept (that would be a lock or
//! a list every hit touches), and what is pulled again is read again. An entry dropped while
//! a response still sends it lives until that response ends. Striped like the index cache;
//! no lock covers the whole cache.

use super::locks::Striped;
use crate::digest::Digest;
use crate::oci::RepoName;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// One object may take at most this share of the budget: sixteen objects of the largest
/// size fit, so a blob at the cap displaces at most a sixteenth of what is held.
const OBJECT_SHARE: usize = 16;

type Key = (RepoName, Digest);

/// Bytes held per repository and digest, with when their presence was last confirmed.
pub(super) struct DigestBytes {
    stripes: Striped<Mutex<Stripe>>,
    /// Bytes held across stripes plus those reserved by fills in progress: never above
    /// `budget`, since every increase is checked against it (`reserve`), and never below
    /// what the entries hold, since an entry's bytes are counted before it is inserted and
    /// uncounted under its stripe's lock as it is removed.
    weight: AtomicUsize,
    budget: usize,
    /// Where the next eviction starts, so successive ones drop different stripes.
    next_evicted: AtomicUsize,
}

/// The entries of one stripe, the keys being read to be kept, and how many forgets the
/// stripe has seen (`Ticket`).
#[derive(Default)]
struct Stripe {
    entries: HashMap<Key, Entry>,
    filling: HashSet<Key>,
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

/// Room reserved in the budget for one object's bytes while they are read (`DigestBytes::
/// fill`): handed to the entry by `keep`, released if dropped without it.
pub(super) struct Fill<'a> {
    cache: &'a DigestBytes,
    key: Key,
    ticket: Ticket,
    reserved: usize,
}

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

    /// Taken before a read of `digest` in `repo` begins, for `fill` and `put`.
    pub(super) fn ticket(&self, repo: &RepoName, digest: &Digest) -> Ticket {
        if self.budget == 0 {
            return Ticket(0);
        }
        Ticket(self.lock(repo, digest).forgets)
    }

    /// Room for the `size` bytes of `digest` in `repo`, about to be read to be kept; `None`
    /// (read them without keeping) when they are too large to keep, when no room can be
    /// made (the rest of the budget is reserved by other reads), when another read of them is
    /// under way, or when a forget in their stripe happened since `ticket` was taken.
    pub(super) fn fill(
        &self,
        repo: &RepoName,
        digest: &Digest,
        ticket: Ticket,
        size: u64,
    ) -> Option<Fill<'_>> {
        if !self.keeps(size) {
            return None;
        }
        let size = size as usize;
        if !self.reserve(size) {
            return None;
        }
        let key = (repo.clone(), digest.clone());
        let mut held = self.lock(repo, digest);
        if held.forgets != ticket.0 || !held.filling.insert(key.clone()) {
            drop(held);
            self.weight.fetch_sub(size, Ordering::Relaxed);
            return None;
        }
        drop(held);
        Some(Fill {
            cache: self,
            key,
            ticket,
            reserved: size,
        })
    }

    /// Records `bytes`, read now, as those of `digest` in `repo`, as `fill` and `Fill::keep`
    /// would: for bytes read whole anyway (a manifest).
    pub(super) fn put(
        &self,
        repo: &RepoName,
        digest: &Digest,
        ticket: Ticket,
        bytes: Arc<Vec<u8>>,
    ) {
        if let Some(fill) = self.fill(repo, digest, ticket, bytes.len() as u64) {
            fill.keep(bytes);
        }
    }

    /// Counts `size` more bytes if they fit in the budget, after dropping stripes to make
    /// room if they do not.
    fn reserve(&self, size: usize) -> bool {
        let add = |held: usize| (held + size <= self.budget).then_some(held + size);
        if self
            .weight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, add)
            .is_ok()
        {
            return true;
        }
        self.evict(self.budget - size);
        self.weight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, add)
            .is_ok()
    }

    /// Drops the bytes of `digest` in `repo` (deleted through this store), and keeps reads
    /// that began before from putting them back.
    pub(super) fn forget(&self, repo: &RepoName, digest: &Digest) {
        if self.budget == 0 {
            return;
        }
        let mut held = self.lock(repo, digest);
        held.forgets += 1;
        if let Some(old) = held.entries.remove(&(repo.clone(), digest.clone())) {
            self.weight.fetch_sub(old.bytes.len(), Ordering::Relaxed);
        }
    }

    /// Empties stripes, one at a time and holding no other, until at most `until` bytes are
    /// counted (bytes reserved by fills in progress are not dropped).
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

impl Fill<'_> {
    /// Keeps `bytes`, read into the room reserved, if they hash to the digest (what is held
    /// is served as the digest's bytes without a check) and no forget in their stripe
    /// happened since the read began.
    pub(super) fn keep(mut self, bytes: Arc<Vec<u8>>) {
        let (repo, digest) = &self.key;
        if bytes.len() != self.reserved || Digest::of(digest.algorithm(), &bytes) != *digest {
            tracing::warn!(%repo, %digest, "stored bytes do not hash to their digest: not cached");
            return;
        }
        let mut held = self.cache.lock(repo, digest);
        held.filling.remove(&self.key);
        if held.forgets != self.ticket.0 {
            return;
        }
        let entry = Entry {
            confirmed: Instant::now(),
            bytes,
        };
        // The reserved room is the entry's now; a replaced entry's is given back under the
        // lock, so an eviction of this stripe never counts one twice.
        if let Some(old) = held.entries.insert(self.key.clone(), entry) {
            self.cache
                .weight
                .fetch_sub(old.bytes.len(), Ordering::Relaxed);
        }
        self.reserved = 0;
    }
}

impl Drop for Fill<'_> {
    /// A read that failed, or bytes not kept: their room goes back to the budget.
    fn drop(&mut self) {
        let (repo, digest) = &self.key;
        self.cache.lock(repo, digest).filling.remove(&self.key);
        self.cache
            .weight
            .fetch_sub(self.reserved, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: usize = 1 << 20;
    const LARGEST: usize = BUDGET / OBJECT_SHARE;
    const AGE: Duration = Duration::from_secs(60);

    /// The `n`th object: `len` bytes and the digest they hash to, in one of seven repositories.
    fn object(n: usize, len: usize) -> (RepoName, Digest, Arc<Vec<u8>>) {
        let mut bytes = vec![0; len];
        let tag = n.to_le_bytes();
        let tagged = tag.len().min(len);
        bytes[..tagged].copy_from_slice(&tag[..tagged]);
        let repo = format!("r{}", n % 7).parse().unwrap();
        (repo, Digest::sha256_of(&bytes), Arc::new(bytes))
    }

    fn put(cache: &DigestBytes, (repo, digest, bytes): &(RepoName, Digest, Arc<Vec<u8>>)) {
        cache.put(repo, digest, cache.ticket(repo, digest), Arc::clone(bytes));
    }

    fn held(cache: &DigestBytes) -> usize {
        cache
            .stripes
            .all()
            .map(|s| {
                let s = s.lock().unwrap();
                s.entries.values().map(|e| e.bytes.len()).sum::<usize>()
            })
            .sum()
    }

    #[test]
    fn the_cache_stays_within_its_budget_and_refuses_objects_over_their_share() {
        let cache = DigestBytes::new(BUDGET);
        let (repo, digest, _) = object(0, LARGEST + 1);
        put(&cache, &object(0, LARGEST + 1));
        assert!(cache.get(&repo, &digest, AGE).is_none(), "over its share");
        for n in 0..10 * OBJECT_SHARE {
            let (repo, digest, bytes) = object(n, LARGEST);
            put(&cache, &(repo.clone(), digest.clone(), bytes));
            assert!(matches!(
                cache.get(&repo, &digest, AGE),
                Some(Held::Fresh(_))
            ));
            assert!(cache.weight.load(Ordering::Relaxed) <= BUDGET);
        }
        let kept = (0..10 * OBJECT_SHARE)
            .filter(|n| {
                let (repo, digest, _) = object(*n, LARGEST);
                cache.get(&repo, &digest, AGE).is_some()
            })
            .count();
        assert_eq!(cache.weight.load(Ordering::Relaxed), kept * LARGEST);
        assert!(
            kept >= OBJECT_SHARE / 2,
            "an eviction drops a stripe or a few, not all: {kept}"
        );
    }

    /// What is held is served as the digest's bytes unchecked: bytes that do not hash to it
    /// (an object altered in the bucket) are never held.
    #[test]
    fn bytes_that_do_not_hash_to_their_digest_are_not_kept() {
        let cache = DigestBytes::new(BUDGET);
        let (repo, digest, _) = object(3, 100);
        let (_, _, other) = object(4, 100);
        put(&cache, &(repo.clone(), digest.clone(), other));
        assert!(cache.get(&repo, &digest, AGE).is_none());
        assert_eq!(
            cache.weight.load(Ordering::Relaxed),
            0,
            "its room given back"
        );
    }

    /// Reads in flight reserve their room: with the budget reserved by them, another read
    /// gets none (it streams), and a second read of an object being read gets none either.
    #[test]
    fn reads_in_flight_count_against_the_budget() {
        let cache = DigestBytes::new(BUDGET);
        let objects: Vec<_> = (0..=OBJECT_SHARE).map(|n| object(n, LARGEST)).collect();
        let fill = |(repo, digest, _): &(RepoName, Digest, Arc<Vec<u8>>)| {
            cache.fill(repo, digest, cache.ticket(repo, digest), LARGEST as u64)
        };
        let mut reading: Vec<Fill<'_>> = objects[..OBJECT_SHARE]
            .iter()
            .map(|o| fill(o).expect("room"))
            .collect();
        assert!(
            fill(&objects[OBJECT_SHARE]).is_none(),
            "the budget is reserved"
        );
        let first = reading.remove(0);
        assert!(fill(&objects[0]).is_none(), "already being read");
        drop(first);
        let (_, _, bytes) = &objects[OBJECT_SHARE];
        fill(&objects[OBJECT_SHARE])
            .expect("room given back")
            .keep(Arc::clone(bytes));
        assert_eq!(cache.weight.load(Ordering::Relaxed), BUDGET);
        drop(reading);
        assert_eq!(cache.weight.load(Ordering::Relaxed), LARGEST);
        assert_eq!(held(&cache), LARGEST);
    }

    /// Puts from many threads at once into a full cache, round after round, with forgets:
    /// the count never passes the budget (nor wraps below zero) and equals what is held.
    #[test]
    fn concurrent_puts_keep_the_count_exact_and_within_the_budget() {
        const SMALL: usize = 64 << 10;
        const THREADS: usize = 8;
        let cache = DigestBytes::new(SMALL);
        let done = std::sync::atomic::AtomicBool::new(false);
        let (most, wrong) = std::thread::scope(|s| {
            let watcher = s.spawn(|| {
                let mut most = 0;
                while !done.load(Ordering::Relaxed) {
                    most = most.max(cache.weight.load(Ordering::Relaxed));
                }
                most
            });
            let mut wrong = None;
            for round in 0..1000 {
                let start = std::sync::Barrier::new(THREADS);
                std::thread::scope(|s| {
                    for t in 0..THREADS {
                        let (cache, start) = (&cache, &start);
                        s.spawn(move || {
                            let o = object(round * THREADS + t, SMALL / OBJECT_SHARE - t);
                            start.wait();
                            put(cache, &o);
                            if (round + t) % 3 == 0 {
                                cache.forget(&o.0, &o.1);
                            }
                        });
                    }
                });
                let counted = cache.weight.load(Ordering::Relaxed);
                if counted > SMALL || counted != held(&cache) {
                    wrong = Some((round, counted, held(&cache)));
                    break;
                }
            }
            done.store(true, Ordering::Relaxed);
            (watcher.join().unwrap(), wrong)
        });
        assert_eq!(wrong, None, "round, counted, held (budget {SMALL})");
        assert!(most <= SMALL, "counted {most} of a budget of {SMALL}");
    }

    #[test]
    fn a_read_that_began_before_a_forget_does_not_put() {
        let cache = DigestBytes::new(BUDGET);
        let (repo, digest, bytes) = object(1, 10);
        let ticket = cache.ticket(&repo, &digest);
        cache.forget(&repo, &digest);
        cache.put(&repo, &digest, ticket, Arc::clone(&bytes));
        assert!(cache.get(&repo, &digest, AGE).is_none());
        let ticket = cache.ticket(&repo, &digest);
        let fill = cache.fill(&repo, &digest, ticket, 10).unwrap();
        cache.forget(&repo, &digest);
        fill.keep(Arc::clone(&bytes));
        assert!(
            cache.get(&repo, &digest, AGE).is_none(),
            "forgotten mid-read"
        );
        put(&cache, &(repo.clone(), digest.clone(), bytes));
        assert!(matches!(
            cache.get(&repo, &digest, AGE),
            Some(Held::Fresh(_))
        ));
        assert!(matches!(
            cache.get(&repo, &digest, Duration::ZERO),
            Some(Held::Stale(_))
        ));
        cache.forget(&repo, &digest);
        assert!(cache.get(&repo, &digest, AGE).is_none());
        assert_eq!(cache.weight.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_budget_of_zero_keeps_nothing() {
        let cache = DigestBytes::new(0);
        let (repo, digest, bytes) = object(2, 0);
        assert!(!cache.keeps(0));
        put(&cache, &(repo.clone(), digest.clone(), bytes));
        assert!(cache.get(&repo, &digest, AGE).is_none());
    }
}
