//! The background collector of one store: removes what a killed berth left (`leftovers`) at
//! start-up, gc on or off; with gc on, sweeps every repository with `Store::collect` at
//! start-up and then every `gcInterval` (or once), starting only inside `gcTimeWindow`, and
//! logs what each repository lost. One repository's failure stops only that repository;
//! a directory that cannot be read is skipped and reported. Each sweep, and the start-up
//! removal, holds the store's gc lease (`LEASE`), so of several instances serving one store
//! one sweeps at a time.

use super::gc::Collected;
use super::leftovers::{Leftovers, Stale};
use super::{Store, StoreError};
use crate::cache::LeaseKey;
use crate::config::gc::GcConfig;
use crate::oci::RepoName;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The lease of gc and retention sweeps.
pub const LEASE: LeaseKey = LeaseKey::new("gc");

/// What one sweep of a store did.
#[derive(Debug, Default)]
pub struct Sweep {
    /// Per repository, what was (or would be) removed; repositories with nothing are left out.
    pub collected: Vec<Collected>,
    /// Repositories whose collection stopped, with the reason.
    pub failed: Vec<(String, String)>,
    /// Temporary files left by killed writes and untouched for `gcDelay`, and remains of
    /// repositories, removed (or that would be).
    pub leftovers: Leftovers,
    /// Directories that could not be read, so were not collected, with the reason.
    pub unreadable: Vec<(String, String)>,
}

/// Sweeps every repository of `store` once. With `dry_run` (or `retention.dryRun`) nothing
/// is removed and the result says what would be.
pub fn sweep(
    store: &Store,
    key: &str,
    settings: &GcConfig,
    dry_run: bool,
) -> Result<Sweep, StoreError> {
    let dry_run = dry_run || settings.retention.dry_run;
    let walk = store.walk()?;
    // Leftovers first: a repository that holds nothing else is then empty for `collect`.
    let leftovers = store.leftovers(&walk, Stale::OlderThan(settings.delay), dry_run);
    log_leftovers(key, &leftovers, dry_run);
    let mut result = Sweep {
        leftovers,
        unreadable: walk.unreadable,
        ..Sweep::default()
    };
    for name in walk.repos {
        let Ok(repo) = name.parse::<RepoName>() else {
            continue;
        };
        let times = store.tag_times(&repo);
        match store.collect(&repo, settings, &times, SystemTime::now(), dry_run) {
            Ok(collected) if collected.is_empty() => {}
            Ok(collected) => {
                log_collected(key, &collected, dry_run);
                result.collected.push(collected);
            }
            Err(e) => {
                tracing::error!(store = key, repository = %repo, "gc: stopped for this repository: {e}");
                result.failed.push((name, e.to_string()));
            }
        }
    }
    Ok(result)
}

/// Logs leftovers found: what was (or would be) removed, and what could not be.
fn log_leftovers(key: &str, found: &Leftovers, dry_run: bool) {
    let verb = if dry_run { "would remove" } else { "removed" };
    if !found.files.is_empty() || !found.remnants.is_empty() {
        tracing::info!(
            store = key,
            files = found.files.len(),
            bytes = found.bytes(),
            remnants = ?found.remnants,
            "gc: {verb} {} temporary files killed writes left and the remains of {} repositories",
            found.files.len(),
            found.remnants.len()
        );
    }
    if found.multipart_uploads > 0 {
        tracing::info!(
            store = key,
            uploads = found.multipart_uploads,
            "gc: aborted {} incomplete multipart uploads older than gcDelay",
            found.multipart_uploads
        );
    }
    for (path, e) in &found.failed {
        tracing::warn!(store = key, path = %path, "gc: leftovers here stay: {e}");
    }
}

/// The start-up removal of leftovers: temporary files last written before this process opened
/// the store, which no write of this process is using, and the remains of repositories.
/// Runs while berth already serves. Where other instances serve the store (it has leases),
/// their writes may be using files older than this process, so only files untouched for
/// `delay` go.
fn remove_leftovers_at_start(store: &Store, key: &str, delay: Duration) {
    let stale = if store.has_leases() {
        Stale::OlderThan(delay)
    } else {
        Stale::BeforeOpen
    };
    let removed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        store.leased(LEASE, || {
            let walk = store.walk()?;
            Ok::<_, StoreError>(store.leftovers(&walk, stale, false))
        })
    }));
    match removed {
        Ok(Some(Ok(found))) => log_leftovers(key, &found, false),
        Ok(None) => {}
        Ok(Some(Err(e))) => tracing::error!(store = key, "gc: cannot look for leftovers: {e}"),
        Err(_) => tracing::error!(store = key, "gc: the search for leftovers panicked"),
    }
}

fn log_collected(key: &str, c: &Collected, dry_run: bool) {
    let verb = if dry_run { "would remove" } else { "removed" };
    tracing::info!(
        store = key,
        repository = %c.repository,
        tags = c.tags.len(),
        manifests = c.manifests.len(),
        blobs = c.blobs.len(),
        uploads = c.uploads.len(),
        bytes = c.bytes(),
        repository_removed = c.repository_removed,
        "gc: {verb} {} tags, {} manifests, {} blobs, {} uploads",
        c.tags.len(),
        c.manifests.len(),
        c.blobs.len(),
        c.uploads.len()
    );
}

/// Minutes after midnight UTC, now.
fn minute_of_day() -> u32 {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    ((seconds % 86_400) / 60) as u32
}

/// Runs the collector of `store` on its own thread: the start-up removal of leftovers (they
/// are berth's own files, never content, so gc off or on), then sweeps when `gc` is on.
pub fn spawn(store: Arc<Store>, key: &str, settings: GcConfig) -> std::io::Result<()> {
    let key = key.to_string();
    std::thread::Builder::new()
        .name("berth-gc".into())
        .spawn(move || {
            remove_leftovers_at_start(&store, &key, settings.delay);
            if !settings.enabled {
                return;
            }
            loop {
                if let Some(window) = settings.time_window {
                    std::thread::sleep(window.wait_from(minute_of_day()));
                }
                let started = std::time::Instant::now();
                let swept = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    store.leased(LEASE, || sweep(&store, &key, &settings, false))
                }));
                match swept.map(|s| s.ok_or(())) {
                    // Another instance sweeps (or the cache cannot say): logged by the lease.
                    Ok(Err(())) => {}
                    Err(_) => tracing::error!(
                        store = %key,
                        "gc: sweep panicked; the next one runs as scheduled"
                    ),
                    Ok(Ok(Ok(s))) => tracing::info!(
                        store = %key,
                        repositories = s.collected.len(),
                        failed = s.failed.len(),
                        unreadable = s.unreadable.len(),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "gc: sweep done"
                    ),
                    Ok(Ok(Err(e))) => tracing::error!(store = %key, "gc: sweep failed: {e}"),
                }
                match settings.interval {
                    Some(interval) => std::thread::sleep(interval.max(Duration::from_millis(100))),
                    None => break,
                }
            }
        })?;
    Ok(())
}
