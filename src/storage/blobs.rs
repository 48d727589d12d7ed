//! The blob files a repository stores: listing them by digest (the collector, scrub and the
//! dedupe pass walk them), hashing one as stored (scrub, the pass, and an upload finished
//! under another algorithm than the running one), and moving a finished upload into place.

use super::driver::{Driver, DriverError, EntryKind, StoragePath};
use super::uploads::hash_into;
use super::{Store, StoreError, layout};
use crate::digest::{Algorithm, Digest, Hasher};
use crate::oci::RepoName;
use std::time::SystemTime;

/// One blob file of a repository, as its directory's listing gave it.
pub(super) struct BlobFile {
    pub(super) digest: Digest,
    pub(super) path: StoragePath,
    pub(super) size: u64,
    pub(super) modified: SystemTime,
}

impl Store {
    /// Every `blobs/<alg>/<hex>` file of `repo`, with the size and time its listing gave;
    /// names that are not digests are skipped.
    pub(super) fn blob_files(&self, repo: &RepoName) -> Result<Vec<BlobFile>, StoreError> {
        let blobs = layout::blobs_root(repo)?;
        let mut files = Vec::new();
        for algorithm in self.driver.list(Some(&blobs))? {
            let Ok(dir) = blobs.join(&algorithm.name) else {
                continue;
            };
            for file in self.driver.list(Some(&dir))? {
                if let (EntryKind::Object { size, modified }, Ok(digest), Ok(path)) = (
                    file.kind,
                    format!("{}:{}", algorithm.name, file.name).parse::<Digest>(),
                    dir.join(&file.name),
                ) {
                    files.push(BlobFile {
                        digest,
                        path,
                        size,
                        modified,
                    });
                }
            }
        }
        Ok(files)
    }

    /// The hash of the object at `path` under `algorithm`, and its size, read once.
    pub(super) fn hash_object(
        &self,
        path: &StoragePath,
        algorithm: Algorithm,
    ) -> Result<(Hasher, u64), StoreError> {
        let mut reader = self.driver.reader(path, 0)?.reader;
        let mut hasher = Hasher::new(algorithm);
        let size = hash_into(&mut reader, &mut hasher)?;
        Ok((hasher, size))
    }
}

/// Moves a finished upload from `staged` to `target`: one atomic rename where the driver has
/// it, else (an object store) a server-side copy, itself atomic, and a delete of the staged
/// object.
pub(super) fn move_into_place(
    driver: &dyn Driver,
    staged: &StoragePath,
    target: &StoragePath,
) -> Result<(), DriverError> {
    if driver.capabilities().rename {
        return driver.rename(staged, target);
    }
    driver.copy(staged, target)?;
    match driver.delete(staged) {
        Ok(()) | Err(DriverError::NotFound { .. }) => {}
        // The blob is in place; the collector removes the idle upload later.
        Err(e) => tracing::warn!(path = %staged, "cannot remove a placed upload: {e}"),
    }
    Ok(())
}
