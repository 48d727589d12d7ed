//! The blob files a repository stores: listing them by digest (the collector, scrub and the
//! dedupe pass walk them), hashing one as stored (scrub, the pass, and an upload finished
//! under another algorithm than the running one), and landing a verified upload at its blob
//! path (`Verified`).

use super::driver::{Driver, DriverError, EntryKind, StoragePath, UploadWriter, Version};
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
        let size = hash_into(&mut reader, &mut hasher)
            .map_err(|e| DriverError::from_read_error(self.driver.name(), path, e))?;
        Ok((hasher, size))
    }
}

/// A verified upload, ready to become a blob: staged at a path of its own, written at the
/// blob's path by a direct writer (`Driver::direct_writer`) and not yet committed there, or
/// (a mount) another repository's blob to copy.
pub(super) enum Verified<'a> {
    /// Staged at this path.
    Staged(&'a StoragePath),
    /// Committed at this path by its writer, as this version (`UploadWriter::commit`): only
    /// it is placed, whatever another writer of the upload put there since.
    Committed(&'a StoragePath, Version),
    /// Written at the blob's path, visible once committed.
    Direct(Box<dyn UploadWriter>),
    /// A blob stored at this path, copied straight to the target: only where the driver has
    /// `direct_uploads` (an object store, whose server-side copy leaves nothing, partial or
    /// temporary, when it fails), so staging it would only cost a second copy.
    Stored(&'a StoragePath),
}

impl Verified<'_> {
    /// Makes it the blob at `target`. A staged upload is moved: one atomic rename where the
    /// driver has it, else (an object store) a server-side copy, itself atomic, and a delete
    /// of the staged object. A direct write is committed where it is; a stored blob copied.
    pub(super) fn land(self, driver: &dyn Driver, target: &StoragePath) -> Result<(), DriverError> {
        let (staged, version) = match self {
            Verified::Direct(out) => return out.commit().map(drop),
            Verified::Stored(source) => return driver.copy(source, target),
            Verified::Staged(staged) => (staged, None),
            Verified::Committed(staged, version) => (staged, Some(version)),
        };
        if driver.capabilities().rename {
            return driver.rename(staged, target);
        }
        match &version {
            Some(version) => driver.copy_version(staged, version, target)?,
            None => driver.copy(staged, target)?,
        }
        match driver.delete(staged) {
            Ok(()) | Err(DriverError::NotFound { .. }) => {}
            // The blob is in place; the collector removes the idle upload later.
            Err(e) => tracing::warn!(path = %staged, "cannot remove a placed upload: {e}"),
        }
        Ok(())
    }

    /// Drops it, where the blob is in place already or its bytes are held elsewhere: best
    /// effort (a staged leftover is an idle upload for the collector; a direct write that
    /// cannot be cancelled stored nothing visible; a stored blob is not this one's to drop).
    pub(super) fn discard(self, driver: &dyn Driver) {
        let _ = match self {
            Verified::Staged(staged) | Verified::Committed(staged, _) => driver.delete(staged),
            Verified::Direct(out) => out.cancel(),
            Verified::Stored(_) => Ok(()),
        };
    }
}
