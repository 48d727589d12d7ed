//! `StoreError`: the registry-level failures of storage operations, with the context a reader
//! needs. `http::error` maps each variant to an OCI error code and status in one table.

use super::driver::DriverError;
use crate::digest::Digest;
use crate::oci::{RepoName, manifest::ManifestError};

/// What went wrong in a registry storage operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The repository does not exist.
    #[error("repository {0} is not known")]
    NameUnknown(RepoName),
    /// The blob is not in the repository.
    #[error("blob {0} is not known to this repository")]
    BlobUnknown(Digest),
    /// No manifest for that tag or digest.
    #[error("manifest {0} is not known to this repository")]
    ManifestUnknown(String),
    /// The manifest references content the repository does not hold.
    #[error("manifest references blob {0}, which this repository does not hold")]
    ManifestBlobUnknown(Digest),
    /// The manifest failed validation.
    #[error("invalid manifest: {0}")]
    ManifestInvalid(#[from] ManifestError),
    /// The manifest body is larger than the limit.
    #[error("manifest is larger than the {limit}-byte limit")]
    ManifestTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// Content does not hash to the digest it was sent with.
    #[error("content digest is {actual}, not {expected}")]
    DigestMismatch {
        /// What the client claimed.
        expected: Digest,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// A blob DELETE named a manifest that `index.json` lists.
    #[error("{0} is a manifest of this repository; delete it with DELETE /v2/<name>/manifests/{0}")]
    BlobIsManifest(Digest),
    /// No such upload session in this repository.
    #[error("upload {0} is not known to this repository")]
    UploadUnknown(String),
    /// A chunk did not start where the upload ends.
    #[error("chunk starts at {got}, but the upload holds {expected} bytes")]
    UploadOutOfOrder {
        /// The upload's current size.
        expected: u64,
        /// The chunk's start offset.
        got: u64,
    },
    /// A request body ended before its declared length, or the declared lengths disagree.
    #[error("request body: {0}")]
    BodyInvalid(String),
    /// A requested byte range lies outside the blob.
    #[error("range not satisfiable for a blob of {size} bytes")]
    RangeNotSatisfiable {
        /// The blob's size.
        size: u64,
    },
    /// A layout file on disk is not what the OCI image layout spec says it must be.
    #[error("{path} is corrupt: {reason}")]
    CorruptLayout {
        /// The file.
        path: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The dedupe cache cannot answer what an operation must know to keep every copy
    /// readable (which placeholders name a copy about to be deleted).
    #[error("{0}")]
    DedupeUnavailable(String),
    /// The storage backend failed.
    #[error(transparent)]
    Driver(#[from] DriverError),
}
