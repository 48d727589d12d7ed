//! The background collector of one store: sweeps every repository with `Store::collect` at
//! start-up and then every `gcInterval` (or once), starting only inside `gcTimeWindow`, and
//! logs what each repository lost. One repository's failure stops only that repository.

use super::gc::Collected;
use super::{Store, StoreError};
use crate::config::gc::GcConfig;
use crate::oci::RepoName;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What one sweep of a store did.
#[derive(Debug, Default)]
pub struct Sweep {
    /// Per repository, what was (or would be) removed; repositories with nothing are left out.
    pub collected: Vec<Collected>,
    /// Repositories whose collection stopped, with the reason.
    pub failed: Vec<(String, String)>,
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
    let mut result = Sweep::default();
    for name in store.catalog()? {
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

/// Runs the collector of `store` on its own thread when its `gc` is on.
pub fn spawn(store: Arc<Store>, key: &str, settings: GcConfig) {
    if !settings.enabled {
        return;
    }
    let key = key.to_string();
    std::thread::Builder::new()
        .name("berth-gc".into())
        .spawn(move || {
            loop {
                if let Some(window) = settings.time_window {
                    std::thread::sleep(window.wait_from(minute_of_day()));
                }
                let started = std::time::Instant::now();
                let swept = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    sweep(&store, &key, &settings, false)
                }));
                match swept {
                    Err(_) => tracing::error!(
                        store = %key,
                        "gc: sweep panicked; the next one runs as scheduled"
                    ),
                    Ok(Ok(s)) => tracing::info!(
                        store = %key,
                        repositories = s.collected.len(),
                        failed = s.failed.len(),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "gc: sweep done"
                    ),
                    Ok(Err(e)) => tracing::error!(store = %key, "gc: sweep failed: {e}"),
                }
                match settings.interval {
                    Some(interval) => std::thread::sleep(interval.max(Duration::from_millis(100))),
                    None => break,
                }
            }
        })
        .expect("spawning the garbage collector");
}
