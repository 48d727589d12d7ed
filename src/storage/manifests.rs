//! Manifests, tags and referrers, kept the OCI image layout way: manifest bytes are blobs, and
//! `index.json` lists one descriptor per tag (annotation `org.opencontainers.image.ref.name`)
//! plus untagged descriptors for manifests pushed by digest or whose tag moved on, so they stay
//! pullable by digest until garbage collection.
//!
//! Every change to `index.json` is read-modify-write under the repository's stripe lock and
//! lands with one atomic, conditional `replace` on the version read: a writer in another
//! process that replaced the file meanwhile makes the swap fail, and the changes are applied
//! again to its version. Readers never lock.

use super::digest_bytes::Held;
use super::driver::{Driver, DriverError, ObjectMeta};
use super::listing::Listing;
use super::referrers::ReferrersPage;
use super::{Store, StoreError, index_writes, layout, not_found_as, placeholders};
use crate::digest::Digest;
use crate::oci::{Descriptor, ImageIndex, Manifest, Reference, RepoName, Tag, media_type};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// A manifest as served: its descriptor (media type, digest, size) and, for GET, its bytes.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    /// Media type, digest and size.
    pub descriptor: Descriptor,
    /// The exact bytes that were pushed.
    pub bytes: Vec<u8>,
}

/// What a manifest PUT stored.
#[derive(Debug, Clone)]
pub struct ManifestPut {
    /// The manifest's digest.
    pub digest: Digest,
    /// The digest of its `subject`, if it has one (for the `OCI-Subject` header).
    pub subject: Option<Digest>,
}

/// How deep nested indexes are searched for a child manifest named by digest.
const MAX_INDEX_DEPTH: usize = 4;

/// Most manifests on one path from a pushed manifest down to a layer (an index of indexes of
/// images is 3). Deeper nesting is refused at PUT, so no walk over a repository's manifests
/// ever follows an unbounded chain (issue 10).
const MAX_NESTING: usize = 16;

/// How often a batch of index changes is applied again to a newer `index.json` that another
/// process wrote between the read and the write, before its writers get an error.
const MAX_INDEX_CONFLICTS: usize = 100;

/// How often a manifest PUT writes its own bytes again when a concurrent DELETE of the same
/// digest removed them between the write and the index update.
const PUT_ATTEMPTS: usize = 3;

impl Store {
    /// The parsed `index.json` of `repo`, or `NameUnknown`. Served from the cache while the
    /// file's fingerprint is unchanged, which is asked of the driver every time: for writes,
    /// deletes and sweeps, which must see what is there now.
    pub(super) fn read_index(&self, repo: &RepoName) -> Result<Arc<Listing>, StoreError> {
        self.read_index_version(repo).map(|(_, index)| index)
    }

    /// `read_index` for pulls, with the fingerprint: an index found current within the
    /// driver's `revalidate_after` is served without asking (S3: no HEAD per manifest GET).
    fn read_index_served(&self, repo: &RepoName) -> Result<(u64, Arc<Listing>), StoreError> {
        let interval = self.driver.revalidate_after();
        if !interval.is_zero()
            && let Some(fresh) = self.indexes.fresh(repo, interval)
        {
            return Ok(fresh);
        }
        let (meta, index) = self.read_index_version(repo)?;
        Ok((meta.fingerprint, index))
    }

    /// `read_index`, with what `stat` said of the file before it was read: a version no newer
    /// than the bytes parsed, so a conditional replace on it fails if they are not current.
    fn read_index_version(
        &self,
        repo: &RepoName,
    ) -> Result<(ObjectMeta, Arc<Listing>), StoreError> {
        let path = layout::index_json(repo)?;
        let ticket = self.indexes.ticket(repo);
        let Some(meta) = self.driver.stat_object(&path)? else {
            // Nothing there, or a directory where the document should be: a damaged layout,
            // which must not pass for an unknown repository (one more request, on misses only).
            return Err(match self.driver.stat(&path)? {
                Some(_) => StoreError::CorruptLayout {
                    path: path.to_string(),
                    reason: "a directory, not a document".to_string(),
                },
                None => StoreError::NameUnknown(repo.clone()),
            });
        };
        if let Some(index) = self.indexes.get(repo, meta.fingerprint) {
            return Ok((meta, index));
        }
        let bytes = self
            .driver
            .get(&path)
            .map_err(|e| not_found_as(e, || StoreError::NameUnknown(repo.clone())))?;
        let index = Arc::new(
            Listing::parse(&bytes).map_err(|e| StoreError::CorruptLayout {
                path: path.to_string(),
                reason: e.to_string(),
            })?,
        );
        // The file may have been replaced between the stat and the read; then the next
        // lookup sees a new fingerprint and parses again. A write through this instance since
        // the ticket may have cached a newer index, which this one must not replace.
        self.indexes
            .put_read(repo, ticket, meta.fingerprint, Arc::clone(&index));
        Ok((meta, index))
    }

    /// Applies `change` to `repo`'s index and writes the index back atomically if it changed
    /// anything. Changes queued concurrently for the same repository are applied together
    /// and written once (see `index_writes`).
    pub(super) fn update_index(
        &self,
        repo: &RepoName,
        change: impl Fn(&mut Listing) -> Result<bool, StoreError> + Send + 'static,
    ) -> Result<(), StoreError> {
        let outcome = self.pending.push(repo, Box::new(change));
        let guard = self.repo_locks.lock(repo);
        // A previous holder of the lock may have applied our change with its own.
        if let Ok(result) = outcome.try_recv() {
            return result;
        }
        self.apply_pending(repo);
        drop(guard);
        outcome
            .recv()
            .expect("a queued change is answered by whoever applies it")
    }

    /// Applies every queued change of `repo` and answers each; called under the repo lock.
    fn apply_pending(&self, repo: &RepoName) {
        let batch = self.pending.take(repo);
        let mut conflicts = 0;
        let outcomes = loop {
            match self.apply_once(repo, &batch) {
                Err(StoreError::Driver(DriverError::Conflict { .. }))
                    if conflicts < MAX_INDEX_CONFLICTS =>
                {
                    // Another process replaced the file since it was read: read its version
                    // and apply the batch to that. Backing off a little more each time lets
                    // a writer that keeps losing get through.
                    conflicts += 1;
                    std::thread::sleep(std::time::Duration::from_micros(100 * conflicts as u64));
                }
                other => break other,
            }
        };
        match outcomes {
            Ok(outcomes) => {
                for (p, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = p.done.send(outcome);
                }
            }
            Err(e) => {
                for p in batch {
                    let _ = p.done.send(Err(index_writes::shared_failure(&e)));
                }
            }
        }
    }

    /// Applies `batch` to the index as it is now and writes it if anything changed: each
    /// change's own outcome, or the failure of the read or the write that all share.
    fn apply_once(
        &self,
        repo: &RepoName,
        batch: &[index_writes::Pending],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let (read, mut index) = self.read_index_version(repo)?;
        // Without the cache's reference, `make_mut` below copies the index only if a reader
        // still holds it: with thousands of tags the copy was a fifth of a manifest PUT's
        // cost.
        self.indexes.forget(repo);
        let mut changed = false;
        let outcomes = batch
            .iter()
            .map(|p| {
                let c = (p.change)(Arc::make_mut(&mut index))?;
                changed |= c;
                Ok(())
            })
            .collect();
        if changed {
            self.write_index(repo, index, &read)?;
        }
        Ok(outcomes)
    }

    /// Writes `index` over the version `read` described, and caches it as written.
    fn write_index(
        &self,
        repo: &RepoName,
        mut index: Arc<Listing>,
        read: &ObjectMeta,
    ) -> Result<(), StoreError> {
        let path = layout::index_json(repo)?;
        // The listing's previous rendering, if it has one, is what the previous `replace` of
        // this path wrote: the cache takes a listing freshly parsed (never rendered) or once
        // written, under the repository lock, and drops one whose write failed.
        let (bytes, unchanged) = Arc::make_mut(&mut index).render();
        let written = self
            .driver
            .replace(&path, bytes, unchanged, Some(&read.version))?;
        self.indexes.put_written(repo, written.fingerprint, index);
        Ok(())
    }

    /// Validates and stores a manifest under `reference` and any `extra_tags`.
    pub fn manifest_put(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: &[u8],
        extra_tags: &[Tag],
    ) -> Result<ManifestPut, StoreError> {
        if bytes.len() > super::MAX_MANIFEST_SIZE {
            return Err(StoreError::ManifestTooLarge {
                limit: super::MAX_MANIFEST_SIZE,
            });
        }
        let digest = match reference {
            Reference::Digest(expected) => {
                let actual = Digest::of(expected.algorithm(), bytes);
                if &actual != expected {
                    return Err(StoreError::DigestMismatch {
                        expected: expected.clone(),
                        actual,
                    });
                }
                actual
            }
            Reference::Tag(_) => Digest::sha256_of(bytes),
        };
        let manifest = Manifest::parse(bytes, content_type)?;
        let required: Vec<Descriptor> = manifest.required_content().cloned().collect();
        check_content(&*self.driver, repo, &required)?;
        let mut tags: Vec<Tag> = extra_tags.to_vec();
        if let Reference::Tag(t) = reference {
            tags.insert(0, t.clone());
        }
        let entry = Descriptor::new(&manifest.media_type, digest.clone(), bytes.len() as u64);
        let pushed_tags: Vec<Tag> = match self.usage {
            Some(_) => tags.clone(),
            None => Vec::new(),
        };
        let mut attempt = 1;
        loop {
            self.store_manifest_bytes(repo, &digest, bytes)?;
            let listed = self.update_index(
                repo,
                list_manifest(&self.driver, repo, &required, &entry, &tags),
            );
            match listed {
                // A DELETE of this digest took its bytes after they were written (and the
                // collector perhaps the repository it emptied): write again.
                Err(StoreError::ManifestBlobUnknown(missing))
                    if missing == digest && attempt < PUT_ATTEMPTS =>
                {
                    attempt += 1;
                }
                Err(StoreError::NameUnknown(_)) if attempt < PUT_ATTEMPTS => attempt += 1,
                other => break other?,
            }
        }
        if let Some(usage) = &self.usage {
            for tag in &pushed_tags {
                usage.pushed(repo, tag);
            }
        }
        Ok(ManifestPut {
            digest,
            subject: manifest.subject.map(|s| s.digest),
        })
    }

    /// Makes `bytes` (which hash to `digest`) a blob of `repo`: an existing copy is made new,
    /// so a collector that planned to delete it as old and untagged leaves it; a missing one
    /// is written.
    fn store_manifest_bytes(
        &self,
        repo: &RepoName,
        digest: &Digest,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let blob = layout::blob(repo, digest)?;
        let refreshed = self.in_repo(repo, || {
            let found = placeholders::resolve(&*self.driver, &blob, digest)?;
            if found.map(|f| f.meta.size) != Some(bytes.len() as u64) {
                return Ok(false);
            }
            match self.driver.touch(&blob) {
                Ok(()) => Ok(true),
                Err(DriverError::NotFound { .. }) => Ok(false),
                Err(e) => Err(e.into()),
            }
        })?;
        if !refreshed {
            self.blob_write(repo, digest, bytes)?;
        }
        Ok(())
    }

    /// Finds the descriptor `reference` names: a tag, or a digest listed in `index.json` or in
    /// an index it lists (layouts written by other tools list only the top-level index).
    fn manifest_descriptor(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Descriptor, StoreError> {
        let (_, index) = self.read_index_served(repo)?;
        let unknown = || StoreError::ManifestUnknown(reference.to_string());
        match reference {
            Reference::Tag(tag) => index.tagged(tag.as_str()).cloned().ok_or_else(unknown),
            Reference::Digest(digest) => self
                .find_by_digest(repo, index.manifests(), digest)?
                .ok_or_else(unknown),
        }
    }

    /// Looks for `digest` among `listed` and, level by level down to `MAX_INDEX_DEPTH`, among
    /// the children of the indexes they reach; each index is read once however often it is
    /// listed.
    fn find_by_digest(
        &self,
        repo: &RepoName,
        listed: &[Descriptor],
        digest: &Digest,
    ) -> Result<Option<Descriptor>, StoreError> {
        let mut level: Vec<Descriptor> = listed.to_vec();
        let mut read: HashSet<Digest> = HashSet::new();
        for depth in 0..=MAX_INDEX_DEPTH {
            if let Some(found) = level.iter().find(|d| &d.digest == digest) {
                return Ok(Some(found.clone()));
            }
            if depth == MAX_INDEX_DEPTH {
                break;
            }
            let mut next = Vec::new();
            for d in &level {
                let is_index = matches!(
                    d.media_type.as_str(),
                    media_type::OCI_INDEX | media_type::DOCKER_MANIFEST_LIST
                );
                if !is_index || !read.insert(d.digest.clone()) {
                    continue;
                }
                // An unreadable child index is skipped: it cannot list the manifest we look for.
                let blob = layout::blob(repo, &d.digest)?;
                let Ok(bytes) = placeholders::get(&*self.driver, &blob, &d.digest) else {
                    continue;
                };
                if let Ok(child) = serde_json::from_slice::<ImageIndex>(&bytes) {
                    next.extend(child.manifests);
                }
            }
            if next.is_empty() {
                break;
            }
            level = next;
        }
        Ok(None)
    }

    /// The descriptor of the manifest `reference` names, once its bytes are known to exist
    /// (a HEAD must not promise what a GET cannot deliver).
    pub fn manifest_head(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Descriptor, StoreError> {
        let descriptor = self.manifest_descriptor(repo, reference)?;
        if !self.driver.revalidate_after().is_zero() {
            // Reading a manifest costs an object store what asking for its size does, and
            // a GET that follows the HEAD (what clients do) is then served from the cache.
            let bytes = self.manifest_bytes_of(repo, reference, &descriptor.digest)?;
            return Ok(Descriptor {
                size: bytes.len() as u64,
                ..descriptor
            });
        }
        let blob = layout::blob(repo, &descriptor.digest)?;
        match placeholders::resolve(&*self.driver, &blob, &descriptor.digest)? {
            Some(found) => Ok(Descriptor {
                size: found.meta.size,
                ..descriptor
            }),
            None => Err(StoreError::ManifestUnknown(reference.to_string())),
        }
    }

    /// The manifest `reference` names, with its bytes.
    pub fn manifest_get(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<StoredManifest, StoreError> {
        let mut descriptor = self.manifest_descriptor(repo, reference)?;
        // Unshared (nothing cached it) where the driver caches nothing: no copy then.
        let bytes =
            Arc::unwrap_or_clone(self.manifest_bytes_of(repo, reference, &descriptor.digest)?);
        descriptor.size = bytes.len() as u64;
        if let Some(usage) = &self.usage {
            usage.pulled(repo, &descriptor.digest);
        }
        Ok(StoredManifest { descriptor, bytes })
    }

    /// The bytes of manifest `digest`, which `reference` named: from the cache where the
    /// driver's `revalidate_after` allows one and they were read within it, else read (and,
    /// where it allows one, cached if they hash to `digest`: bytes altered in the bucket are
    /// served as stored, as a blob's are, and read again on the next GET).
    fn manifest_bytes_of(
        &self,
        repo: &RepoName,
        reference: &Reference,
        digest: &Digest,
    ) -> Result<Arc<Vec<u8>>, StoreError> {
        let interval = self.driver.revalidate_after();
        if !interval.is_zero()
            && let Some(Held::Fresh(bytes)) = self.manifest_bytes.get(repo, digest, interval)
        {
            return Ok(bytes);
        }
        let ticket = self.manifest_bytes.ticket(repo, digest);
        let blob = layout::blob(repo, digest)?;
        let bytes = placeholders::get(&*self.driver, &blob, digest)
            .map_err(|e| not_found_as(e, || StoreError::ManifestUnknown(reference.to_string())))?;
        let bytes = Arc::new(bytes);
        if !interval.is_zero() {
            self.manifest_bytes
                .put(repo, digest, ticket, Arc::clone(&bytes));
        }
        Ok(bytes)
    }

    /// Deletes a tag (the manifest stays pullable by digest) or a manifest by digest (every
    /// tag pointing at it goes too, and its bytes are removed).
    pub fn manifest_delete(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<(), StoreError> {
        let name = reference.to_string();
        match reference {
            Reference::Tag(tag) => {
                let tag = tag.clone();
                self.update_index(repo, move |index| {
                    if index.untag(tag.as_str()) {
                        Ok(true)
                    } else {
                        Err(StoreError::ManifestUnknown(name.clone()))
                    }
                })
            }
            Reference::Digest(digest) => {
                let target = digest.clone();
                self.update_index(repo, move |index| {
                    // Checked before changing anything: a failing change must leave the index
                    // as it found it (others' changes share this copy).
                    if index.unlist(&target) {
                        Ok(true)
                    } else {
                        Err(StoreError::ManifestUnknown(name.clone()))
                    }
                })?;
                // The bytes go under the repository lock, and only while the index still does
                // not list the digest: a PUT of the same manifest may have listed it again
                // since (issue 10: a 201 for a tag whose manifest was then deleted).
                let _guard = self.repo_locks.lock(repo);
                if self.read_index(repo)?.lists(digest) {
                    return Ok(());
                }
                match self.blob_delete_locked(repo, digest, |_| true) {
                    Ok(_) | Err(StoreError::BlobUnknown(_)) => Ok(()),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// The tags of `repo`, sorted and without duplicates.
    pub fn tags(&self, repo: &RepoName) -> Result<Vec<String>, StoreError> {
        Ok(self.read_index_served(repo)?.1.tags())
    }

    /// The referrers index of `subject` in `repo`: the manifests it lists whose `subject` is
    /// `subject`, optionally only those of one artifact type, as a stream of shared bytes.
    /// An unknown repository has no referrers (spec: never 404).
    pub fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<ReferrersPage, StoreError> {
        let (fingerprint, index) = match self.read_index_served(repo) {
            Ok(found) => found,
            Err(StoreError::NameUnknown(_)) => return Ok(ReferrersPage::empty()),
            Err(e) => return Err(e),
        };
        let read = |digest: &Digest| match placeholders::get(
            &*self.driver,
            &layout::blob(repo, digest)?,
            digest,
        ) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(DriverError::NotFound { .. }) => Ok(None),
            Err(e) => Err(StoreError::from(e)),
        };
        let referrers = self
            .referrers
            .get(repo, fingerprint, index.manifests(), read)?;
        Ok(referrers.page(subject, artifact_type))
    }
}

/// The index change of a manifest PUT: checked again under the repository lock (which the
/// collector holds while it deletes blobs, and a DELETE while it removes bytes), and down
/// through child manifests, so content that went since the first check fails the PUT instead
/// of leaving the index naming a manifest without its content.
fn list_manifest(
    driver: &Arc<dyn Driver>,
    repo: &RepoName,
    required: &[Descriptor],
    entry: &Descriptor,
    tags: &[Tag],
) -> impl Fn(&mut Listing) -> Result<bool, StoreError> + Send + 'static {
    let (driver, repo) = (Arc::clone(driver), repo.clone());
    let (required, entry, tags) = (required.to_vec(), entry.clone(), tags.to_vec());
    move |index| {
        check_content(&*driver, &repo, &required)?;
        let own = layout::blob(&repo, &entry.digest)?;
        if driver.stat_object(&own)?.is_none() {
            return Err(StoreError::ManifestBlobUnknown(entry.digest.clone()));
        }
        let mut changed = false;
        for tag in &tags {
            changed |= index.set_tag(tag, &entry);
        }
        if tags.is_empty() {
            changed |= index.list_untagged(&entry);
        }
        Ok(changed)
    }
}

/// Checks that `repo` holds every blob of `required` and, down through the child manifests
/// among them, everything those name, and that no path of manifests is longer than
/// `MAX_NESTING`. Each digest is looked at once (a manifest listed many times, or shared by
/// many indexes, costs one read), so the cost is linear in distinct manifests and blobs.
fn check_content(
    driver: &dyn Driver,
    repo: &RepoName,
    required: &[Descriptor],
) -> Result<(), StoreError> {
    let mut heights = Heights::new();
    content_height(driver, repo, required, 1, &mut heights).map(|_| ())
}

/// Heights found so far, by digest and whether it was named as a manifest (the same bytes
/// named once as a plain blob and once as an index must still be looked inside).
type Heights = HashMap<(Digest, bool), usize>;

/// The most manifests on a path down from `descriptors` (0 when none is a manifest), found
/// with `heights` remembering each digest's; `path` manifests lie above them. Recursion is
/// bounded by `MAX_NESTING`.
fn content_height(
    driver: &dyn Driver,
    repo: &RepoName,
    descriptors: &[Descriptor],
    path: usize,
    heights: &mut Heights,
) -> Result<usize, StoreError> {
    let mut tallest = 0;
    for d in descriptors {
        let key = (d.digest.clone(), media_type::is_manifest(&d.media_type));
        let height = match heights.get(&key) {
            Some(h) => *h,
            None => {
                let h = descriptor_height(driver, repo, d, path, heights)?;
                heights.insert(key, h);
                h
            }
        };
        if path + height > MAX_NESTING {
            return Err(too_deep());
        }
        tallest = tallest.max(height);
    }
    Ok(tallest)
}

fn descriptor_height(
    driver: &dyn Driver,
    repo: &RepoName,
    d: &Descriptor,
    path: usize,
    heights: &mut Heights,
) -> Result<usize, StoreError> {
    let blob = layout::blob(repo, &d.digest)?;
    if driver.stat_object(&blob)?.is_none() {
        return Err(StoreError::ManifestBlobUnknown(d.digest.clone()));
    }
    if !media_type::is_manifest(&d.media_type) {
        return Ok(0);
    }
    if path >= MAX_NESTING {
        return Err(too_deep());
    }
    // A child that no longer parses was validated when it was pushed; only what it names
    // matters here, and an unreadable one names nothing to check.
    let child = match placeholders::get(driver, &blob, &d.digest) {
        Ok(bytes) => Manifest::parse(&bytes, Some(&d.media_type)).ok(),
        Err(DriverError::NotFound { .. }) => {
            return Err(StoreError::ManifestBlobUnknown(d.digest.clone()));
        }
        Err(e) => return Err(e.into()),
    };
    let Some(child) = child else { return Ok(1) };
    let named: Vec<Descriptor> = child.required_content().cloned().collect();
    Ok(1 + content_height(driver, repo, &named, path + 1, heights)?)
}

fn too_deep() -> StoreError {
    StoreError::ManifestInvalid(crate::oci::manifest::ManifestError(format!(
        "manifests nest more than {MAX_NESTING} levels deep"
    )))
}
