//! The leases that let one of several instances serving a store sweep it at a time (DESIGN
//! decision 11): gc and retention, scrub, the start-up dedupe pass and restore each take
//! theirs (a `LeaseKey` the sweep owns) for a time-to-live, renew it while they run and
//! release it at the end. Another instance's sweep of the same kind skips its round; so does
//! one that cannot reach the cache, since sweeping without the lease could race another
//! instance's. A killed holder's lease expires after the time-to-live and the next round of
//! another instance takes it.
//!
//! A store is given leases only when its cache is shared (`remoteCache`): with the embedded
//! cache the root lock already makes one process per root, and every sweep runs.

use crate::cache::{Access, LeaseKey, Leases, Outage};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

/// How long a sweep's hold lasts without a renewal, by default: long enough that renewals
/// every third of it survive a slow cache call, short enough that a killed holder's sweep is
/// taken over within a minute.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);

/// The leases of one store, held in the name of this instance.
pub(crate) struct SweepLeases {
    leases: Arc<dyn Leases>,
    /// Unique to this store in this process: host, process id and a random part, so two
    /// instances never take each other for the holder (nor two stores of one test).
    holder: String,
    ttl: Duration,
    outage: Outage,
}

impl SweepLeases {
    pub(crate) fn new(leases: Arc<dyn Leases>, ttl: Duration) -> SweepLeases {
        let holder = format!(
            "{}/{}/{}",
            hostname(),
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        SweepLeases {
            leases,
            holder,
            ttl,
            outage: Outage::new("leases"),
        }
    }

    /// Runs `sweep` holding the lease `key`, renewed meanwhile by a small thread and released
    /// after; `None`, without running it, when another instance holds the lease or the cache
    /// cannot say.
    pub(crate) fn run<T>(&self, key: LeaseKey, sweep: impl FnOnce() -> T) -> Option<T> {
        let acquired = self.leases.acquire(key, &self.holder, self.ttl);
        match self
            .outage
            .call(Access::Write, "take a sweep's lease", acquired)?
        {
            true => {}
            false => {
                tracing::debug!(
                    lease = key.as_str(),
                    "another instance holds the lease; this round is skipped"
                );
                return None;
            }
        }
        let (stop, stopped) = mpsc::channel::<()>();
        let renewer = {
            let (leases, holder, ttl) = (Arc::clone(&self.leases), self.holder.clone(), self.ttl);
            std::thread::Builder::new()
                .name("berth-lease".into())
                .spawn(move || {
                    while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(ttl / 3) {
                        match leases.acquire(key, &holder, ttl) {
                            Ok(true) => {}
                            Ok(false) => tracing::warn!(
                                lease = key.as_str(),
                                "another instance took the lease of a running sweep (a renewal came later than its time-to-live)"
                            ),
                            Err(e) => tracing::warn!(lease = key.as_str(), "cannot renew: {e}"),
                        }
                    }
                })
        };
        let swept = sweep();
        drop(stop);
        match renewer {
            Ok(renewer) => {
                let _ = renewer.join();
            }
            Err(e) => tracing::warn!(
                lease = key.as_str(),
                "no thread to renew the lease ({e}); it held for its time-to-live"
            ),
        }
        let released = self.leases.release(key, &self.holder);
        self.outage
            .call(Access::Write, "release a sweep's lease", released);
        Some(swept)
    }
}

/// This host's name, for holder names; empty when unknown.
fn hostname() -> String {
    let mut name = [0u8; 256];
    // SAFETY: gethostname writes at most `name.len()` bytes into the buffer it is given.
    if unsafe { libc::gethostname(name.as_mut_ptr().cast(), name.len()) } != 0 {
        return String::new();
    }
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    String::from_utf8_lossy(&name[..end]).into_owned()
}
