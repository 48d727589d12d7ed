//! The one place that maps repositories, digests and upload ids to storage paths.
//!
//! Each repository is a plain OCI Image Layout, the same tree zot writes:
//!
//! ```text
//! <root>/
//!   <repo/name>/
//!     oci-layout                 {"imageLayoutVersion":"1.0.0"}
//!     index.json                 image index; tags = org.opencontainers.image.ref.name
//!     blobs/<alg>/<hex>          layers, configs and manifests, content-addressed
//!     .uploads/<upload-id>       upload sessions in progress (bytes so far; where the
//!                                driver keeps notes, the running hash with them)
//!     <nested/repo>/...          repositories may nest inside others
//! ```

use super::driver::{DriverError, StoragePath};
use crate::digest::{Algorithm, Digest};
use crate::oci::RepoName;
use std::fmt;
use std::str::FromStr;

pub(crate) use crate::oci::name::layout_entries::{BLOBS, INDEX_JSON, OCI_LAYOUT};
/// The `oci-layout` file content berth writes.
pub(crate) const OCI_LAYOUT_CONTENT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
/// The upload session directory name.
pub(crate) const UPLOADS: &str = ".uploads";

/// An upload session id: a UUID, so it is safe as a file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UploadId(uuid::Uuid);

impl UploadId {
    /// A fresh random id.
    pub fn new() -> UploadId {
        UploadId(uuid::Uuid::new_v4())
    }
}

impl Default for UploadId {
    fn default() -> Self {
        UploadId::new()
    }
}

impl FromStr for UploadId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::try_parse(s).map(UploadId)
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

fn repo_path(repo: &RepoName, rest: &[&str]) -> Result<StoragePath, DriverError> {
    StoragePath::from_components(repo.components().chain(rest.iter().copied()))
}

/// `<repo>/`
pub(crate) fn repo_dir(repo: &RepoName) -> Result<StoragePath, DriverError> {
    repo_path(repo, &[])
}

/// `<repo>/oci-layout`
pub(crate) fn oci_layout(repo: &RepoName) -> Result<StoragePath, DriverError> {
    repo_path(repo, &[OCI_LAYOUT])
}

/// `<repo>/index.json`
pub(crate) fn index_json(repo: &RepoName) -> Result<StoragePath, DriverError> {
    repo_path(repo, &[INDEX_JSON])
}

/// `<repo>/blobs/<alg>/<hex>`
pub(crate) fn blob(repo: &RepoName, digest: &Digest) -> Result<StoragePath, DriverError> {
    repo_path(repo, &[BLOBS, digest.algorithm().as_str(), digest.hex()])
}

/// `<repo>/blobs/<alg>/`
pub(crate) fn blob_dir(repo: &RepoName, algorithm: Algorithm) -> Result<StoragePath, DriverError> {
    repo_path(repo, &[BLOBS, algorithm.as_str()])
}

/// `<repo>/blobs/`
pub(crate) fn blobs_root(repo: &RepoName) -> Result<StoragePath, DriverError> {
    repo_path(repo, &[BLOBS])
}

/// `<repo>/.uploads/`
pub(crate) fn uploads_dir(repo: &RepoName) -> Result<StoragePath, DriverError> {
    repo_path(repo, &[UPLOADS])
}

/// `<repo>/.uploads/<id>`
pub(crate) fn upload(repo: &RepoName, id: &UploadId) -> Result<StoragePath, DriverError> {
    repo_path(repo, &[UPLOADS, &id.to_string()])
}

/// Whether a directory entry inside a repository directory belongs to the layout itself
/// (and so is never a nested repository).
pub(crate) fn is_layout_entry(name: &str) -> bool {
    name == BLOBS || name.starts_with('.') || name == OCI_LAYOUT || name == INDEX_JSON
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let repo: RepoName = "org/app".parse().unwrap();
        let d = Digest::sha256_of(b"x");
        assert_eq!(
            blob(&repo, &d).unwrap().as_str(),
            format!("org/app/blobs/sha256/{}", d.hex())
        );
        assert_eq!(index_json(&repo).unwrap().as_str(), "org/app/index.json");
        let id = UploadId::new();
        assert_eq!(
            upload(&repo, &id).unwrap().as_str(),
            format!("org/app/.uploads/{id}")
        );
        assert!("../x".parse::<UploadId>().is_err());
    }
}
