//! The blob files a repository stores: listing them by digest (the collector, scrub and the
//! dedupe pass walk them) and hashing one as stored (scrub, the pass, and an upload finished
//! under another algorithm than the running one).

use super::driver::{EntryKind, StoragePath};
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
