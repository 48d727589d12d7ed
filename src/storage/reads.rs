//! `Reads`: what a pull asks of the store a repository is routed to (tags, manifests, blobs,
//! referrers), as the seam a pull-through mirror sits on. Routing hands the front end a
//! `Reads`, not a `Store`; a mirror wraps the store it fills and answers a miss by fetching
//! from its upstream, storing what it fetched and serving it, with no handler changed.
//! Pushes, deletes and uploads go to the store itself (`Reads::store`).

use super::{BlobRead, ByteRange, ReferrersPage, Store, StoreError, StoredManifest};
use crate::digest::Digest;
use crate::oci::{Descriptor, Reference, RepoName};

/// The reads of one routed store. Each defaults to the store's own answer.
pub trait Reads: Send + Sync {
    /// The store behind these reads, which takes every write.
    fn store(&self) -> &Store;

    /// The tags of `repo`, sorted.
    fn tags(&self, repo: &RepoName) -> Result<Vec<String>, StoreError> {
        self.store().tags(repo)
    }

    /// The descriptor of a manifest, without its bytes.
    fn manifest_head(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Descriptor, StoreError> {
        self.store().manifest_head(repo, reference)
    }

    /// A manifest and its descriptor.
    fn manifest_get(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<StoredManifest, StoreError> {
        self.store().manifest_get(repo, reference)
    }

    /// The size of a blob.
    fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<u64, StoreError> {
        self.store().blob_size(repo, digest)
    }

    /// Where the client may fetch a blob itself, if anywhere (see `Store::blob_redirect`).
    fn blob_redirect(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<String>, StoreError> {
        self.store().blob_redirect(repo, digest)
    }

    /// A blob's bytes, limited to `range` when given (see `Store::blob_read`).
    fn blob_read(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<(BlobRead, Option<ByteRange>), StoreError> {
        self.store().blob_read(repo, digest, range)
    }

    /// The referrers of `subject`, optionally of one artifact type.
    fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<ReferrersPage, StoreError> {
        self.store().referrers(repo, subject, artifact_type)
    }
}

/// A store answers every read from what it holds.
impl Reads for Store {
    fn store(&self) -> &Store {
        self
    }
}
