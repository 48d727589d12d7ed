//! `Outage`: how the store degrades when a cache is unavailable, and the one place its cache
//! errors are logged. A call that fails `Unavailable` starts an outage, logged once; further
//! calls still go to the backend (so the cache is used again as soon as it works) but their
//! failures are not logged again; the first write that succeeds ends the outage with a line
//! of its own. A read's success does not end it: LMDB with a full map still reads, and would
//! otherwise start and end an outage on every push. Other failures are logged each time.
//!
//! The caller goes on without the result (`None`): no link when a lookup fails, no record
//! when a write fails, so a push still succeeds and stores a full copy (issue 12).

use super::CacheError;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Whether a call reads or writes the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A lookup.
    Read,
    /// A record, removal or marker.
    Write,
}

/// The availability of one store's cache for one concern (`dedupe`, `usage`).
#[derive(Debug)]
pub struct Outage {
    concern: &'static str,
    since: Mutex<Option<Instant>>,
    /// Outages begun since the process started.
    begun: AtomicU64,
}

/// What health and metrics show of an `Outage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheHealth {
    /// The concern (`dedupe`, `usage`).
    pub concern: &'static str,
    /// How long the current outage has lasted; `None` while the cache answers.
    pub down_for: Option<Duration>,
    /// Outages begun since the process started.
    pub outages: u64,
}

impl Outage {
    /// No outage yet, for `concern`, the word its log lines start with.
    pub fn new(concern: &'static str) -> Outage {
        Outage {
            concern,
            since: Mutex::new(None),
            begun: AtomicU64::new(0),
        }
    }

    /// The state now.
    pub fn health(&self) -> CacheHealth {
        let since = *self.since.lock().unwrap_or_else(PoisonError::into_inner);
        CacheHealth {
            concern: self.concern,
            down_for: since.map(|s| s.elapsed()),
            outages: self.begun.load(Ordering::Relaxed),
        }
    }

    /// The result of a call that `what` describes ("record", "look up"), or `None` when it
    /// failed, logged as the module doc says.
    pub fn call<T>(&self, access: Access, what: &str, result: Result<T, CacheError>) -> Option<T> {
        let concern = self.concern;
        match result {
            Ok(value) => {
                if access == Access::Write {
                    let ended = self
                        .since
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .take();
                    if let Some(since) = ended {
                        tracing::info!(
                            outage_ms = since.elapsed().as_millis() as u64,
                            "{concern}: the cache is available again"
                        );
                    }
                }
                Some(value)
            }
            Err(e @ CacheError::Unavailable { .. }) => {
                let mut since = self.since.lock().unwrap_or_else(PoisonError::into_inner);
                if since.is_none() {
                    *since = Some(Instant::now());
                    self.begun.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        "{concern}: the cache is unavailable, going on without it until it works again: cannot {what}: {e}"
                    );
                }
                None
            }
            Err(e) => {
                tracing::warn!("{concern}: cannot {what} in the cache: {e}");
                None
            }
        }
    }
}
