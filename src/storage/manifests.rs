//! Manifests, tags and referrers, kept the OCI image layout way: manifest bytes are blobs, and
//! `index.json` lists one descriptor per tag (annotation `org.opencontainers.image.ref.name`)
//! plus untagged descriptors for manifests pushed by digest or whose tag moved on, so they stay
//! pullable by digest until garbage collection.
//!
//! Every change to `index.json` is read-modify-write under the repository's stripe lock and
//! lands with one atomic `put`; readers never lock.

use super::driver::{Driver, DriverError};
use super::{Store, StoreError, index_writes, layout, not_found_as};
use crate::digest::Digest;
use crate::oci::{Descriptor, ImageIndex, Manifest, Reference, RepoName, Tag, media_type};
use std::collections::BTreeMap;
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

impl Store {
    /// The parsed `index.json` of `repo`, or `NameUnknown`. Served from the cache while the
    /// file's fingerprint is unchanged.
    pub(super) fn read_index(&self, repo: &RepoName) -> Result<Arc<ImageIndex>, StoreError> {
        let path = layout::index_json(repo)?;
        let meta = self
            .driver
            .stat(&path)?
            .ok_or_else(|| StoreError::NameUnknown(repo.clone()))?;
        if let Some(index) = self.indexes.get(repo, meta.fingerprint) {
            return Ok(index);
        }
        let bytes = self
            .driver
            .get(&path)
            .map_err(|e| not_found_as(e, || StoreError::NameUnknown(repo.clone())))?;
        let index: Arc<ImageIndex> =
            Arc::new(
                serde_json::from_slice(&bytes).map_err(|e| StoreError::CorruptLayout {
                    path: path.to_string(),
                    reason: e.to_string(),
                })?,
            );
        // The file may have been replaced between the stat and the read; then the next
        // lookup sees a new fingerprint and parses again, so caching here is always safe.
        self.indexes.put(repo, meta.fingerprint, Arc::clone(&index));
        Ok(index)
    }

    /// Applies `change` to `repo`'s index and writes the index back atomically if it changed
    /// anything. Changes queued concurrently for the same repository are applied together
    /// and written once (see `index_writes`).
    pub(super) fn update_index(
        &self,
        repo: &RepoName,
        change: impl FnOnce(&mut ImageIndex) -> Result<bool, StoreError> + Send + 'static,
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
        let mut index = match self.read_index(repo) {
            Ok(index) => {
                // Without the cache's reference, `make_mut` below copies the index only if a
                // reader still holds it: with thousands of tags the copy was a fifth of a
                // manifest PUT's cost.
                self.indexes.forget(repo);
                index
            }
            Err(e) => {
                for p in batch {
                    let _ = p.done.send(Err(index_writes::shared_failure(&e)));
                }
                return;
            }
        };
        let mut applied = Vec::with_capacity(batch.len());
        let mut changed = false;
        for p in batch {
            match (p.change)(Arc::make_mut(&mut index)) {
                Ok(c) => {
                    changed |= c;
                    applied.push(p.done);
                }
                Err(e) => {
                    let _ = p.done.send(Err(e));
                }
            }
        }
        let written = if changed {
            self.write_index(repo, index)
        } else {
            Ok(())
        };
        for done in applied {
            let result = match &written {
                Ok(()) => Ok(()),
                Err(e) => Err(index_writes::shared_failure(e)),
            };
            let _ = done.send(result);
        }
    }

    fn write_index(&self, repo: &RepoName, index: Arc<ImageIndex>) -> Result<(), StoreError> {
        let path = layout::index_json(repo)?;
        let bytes = serde_json::to_vec(&*index).expect("an index always serializes");
        self.driver.replace(&path, &bytes)?;
        if let Some(meta) = self.driver.stat(&path)? {
            self.indexes.put(repo, meta.fingerprint, index);
        }
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
        for needed in manifest.required_content() {
            if self.blob_size(repo, &needed.digest).is_err() {
                return Err(StoreError::ManifestBlobUnknown(needed.digest.clone()));
            }
        }
        self.ensure_repo(repo)?;
        let blob = layout::blob(repo, &digest)?;
        // Already stored (pushed again, or re-tagged): made new, so a collector that planned
        // to delete it as old and untagged leaves it; gone meanwhile: written again.
        let stored = self.driver.stat(&blob)?.map(|m| m.size) == Some(bytes.len() as u64);
        let refreshed = stored
            && match self.driver.touch(&blob) {
                Ok(()) => true,
                Err(DriverError::NotFound { .. }) => false,
                Err(e) => return Err(e.into()),
            };
        if !refreshed {
            self.blob_write(repo, &digest, bytes)?;
        }
        let mut tags: Vec<Tag> = extra_tags.to_vec();
        if let Reference::Tag(t) = reference {
            tags.insert(0, t.clone());
        }
        let entry = Descriptor::new(&manifest.media_type, digest.clone(), bytes.len() as u64);
        let required: Vec<Descriptor> = manifest.required_content().cloned().collect();
        let locked_repo = repo.clone();
        let driver = Arc::clone(&self.driver);
        let pushed_tags: Vec<Tag> = match self.usage {
            Some(_) => tags.clone(),
            None => Vec::new(),
        };
        self.update_index(repo, move |index| {
            // Checked again under the repository lock, which garbage collection holds while it
            // deletes blobs, and down through child manifests (an index's children may have
            // lost their layers): content collected since the checks above fails this PUT
            // instead of leaving the manifest without it.
            if let Some(missing) =
                first_missing(&*driver, &locked_repo, &required, MAX_INDEX_DEPTH)?
            {
                return Err(StoreError::ManifestBlobUnknown(missing));
            }
            if driver.stat(&blob)?.is_none_or(|m| m.is_dir) {
                return Err(StoreError::ManifestBlobUnknown(entry.digest.clone()));
            }
            let mut changed = false;
            for tag in &tags {
                changed |= set_tag(index, tag, &entry);
            }
            if tags.is_empty() && !index.manifests.iter().any(|d| d.digest == entry.digest) {
                index.manifests.push(entry);
                changed = true;
            }
            Ok(changed)
        })?;
        if let Some(usage) = &self.usage {
            for tag in &pushed_tags {
                usage.pushed(repo, tag.as_str());
            }
        }
        Ok(ManifestPut {
            digest,
            subject: manifest.subject.map(|s| s.digest),
        })
    }

    /// Finds the descriptor `reference` names: a tag, or a digest listed in `index.json` or in
    /// an index it lists (layouts written by other tools list only the top-level index).
    fn manifest_descriptor(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Descriptor, StoreError> {
        let index = self.read_index(repo)?;
        let unknown = || StoreError::ManifestUnknown(reference.to_string());
        match reference {
            Reference::Tag(tag) => index
                .manifests
                .iter()
                .find(|d| d.tag() == Some(tag.as_str()))
                .cloned()
                .ok_or_else(unknown),
            Reference::Digest(digest) => self
                .find_by_digest(repo, &index.manifests, digest, MAX_INDEX_DEPTH)?
                .ok_or_else(unknown),
        }
    }

    fn find_by_digest(
        &self,
        repo: &RepoName,
        descriptors: &[Descriptor],
        digest: &Digest,
        depth: usize,
    ) -> Result<Option<Descriptor>, StoreError> {
        if let Some(found) = descriptors.iter().find(|d| &d.digest == digest) {
            return Ok(Some(found.clone()));
        }
        if depth == 0 {
            return Ok(None);
        }
        for d in descriptors {
            let is_index = matches!(
                d.media_type.as_str(),
                media_type::OCI_INDEX | media_type::DOCKER_MANIFEST_LIST
            );
            if !is_index {
                continue;
            }
            // An unreadable child index is skipped: it cannot list the manifest we look for.
            let Ok(bytes) = self.driver.get(&layout::blob(repo, &d.digest)?) else {
                continue;
            };
            let Ok(child) = serde_json::from_slice::<ImageIndex>(&bytes) else {
                continue;
            };
            if let Some(found) = self.find_by_digest(repo, &child.manifests, digest, depth - 1)? {
                return Ok(Some(found));
            }
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
        match self.driver.stat(&layout::blob(repo, &descriptor.digest)?)? {
            Some(meta) if !meta.is_dir => Ok(Descriptor {
                size: meta.size,
                ..descriptor
            }),
            _ => Err(StoreError::ManifestUnknown(reference.to_string())),
        }
    }

    /// The manifest `reference` names, with its bytes.
    pub fn manifest_get(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<StoredManifest, StoreError> {
        let mut descriptor = self.manifest_descriptor(repo, reference)?;
        let bytes = self
            .driver
            .get(&layout::blob(repo, &descriptor.digest)?)
            .map_err(|e| not_found_as(e, || StoreError::ManifestUnknown(reference.to_string())))?;
        descriptor.size = bytes.len() as u64;
        if let Some(usage) = &self.usage {
            usage.pulled(repo, &descriptor.digest);
        }
        Ok(StoredManifest { descriptor, bytes })
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
                    let Some(pos) = index
                        .manifests
                        .iter()
                        .position(|d| d.tag() == Some(tag.as_str()))
                    else {
                        return Err(StoreError::ManifestUnknown(name));
                    };
                    let removed = index.manifests.remove(pos);
                    keep_untagged(index, removed);
                    Ok(true)
                })
            }
            Reference::Digest(digest) => {
                let target = digest.clone();
                self.update_index(repo, move |index| {
                    // Checked before changing anything: a failing change must leave the index
                    // as it found it (others' changes share this copy).
                    if !index.manifests.iter().any(|d| d.digest == target) {
                        return Err(StoreError::ManifestUnknown(name));
                    }
                    index.manifests.retain(|d| d.digest != target);
                    Ok(true)
                })?;
                match self.blob_delete(repo, digest) {
                    Ok(()) | Err(StoreError::BlobUnknown(_)) => Ok(()),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// The tags of `repo`, sorted and without duplicates.
    pub fn tags(&self, repo: &RepoName) -> Result<Vec<String>, StoreError> {
        let index = self.read_index(repo)?;
        let mut tags: Vec<String> = index
            .manifests
            .iter()
            .filter_map(|d| d.tag().map(str::to_string))
            .collect();
        tags.sort();
        tags.dedup();
        Ok(tags)
    }

    /// Descriptors of the manifests in `repo` whose `subject` is `subject`, optionally only
    /// those of one artifact type. An unknown repository has no referrers (spec: never 404).
    pub fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Descriptor>, StoreError> {
        let index = match self.read_index(repo) {
            Ok(index) => index,
            Err(StoreError::NameUnknown(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut seen = std::collections::BTreeSet::new();
        let mut found = Vec::new();
        for d in &index.manifests {
            if !seen.insert(d.digest.clone()) {
                continue;
            }
            // Blobs that vanished or do not parse are not referrers of anything.
            let Ok(bytes) = self.driver.get(&layout::blob(repo, &d.digest)?) else {
                continue;
            };
            let Ok(manifest) = Manifest::parse(&bytes, Some(&d.media_type)) else {
                continue;
            };
            if manifest.subject.as_ref().map(|s| &s.digest) != Some(subject) {
                continue;
            }
            if artifact_type.is_some() && manifest.artifact_type.as_deref() != artifact_type {
                continue;
            }
            found.push(Descriptor {
                artifact_type: manifest.artifact_type,
                annotations: manifest.annotations,
                ..Descriptor::new(&manifest.media_type, d.digest.clone(), bytes.len() as u64)
            });
        }
        Ok(found)
    }
}

/// The first blob of `required` (and, `depth` levels down, of the child manifests among them)
/// that `repo` does not hold.
fn first_missing(
    driver: &dyn Driver,
    repo: &RepoName,
    required: &[Descriptor],
    depth: usize,
) -> Result<Option<Digest>, StoreError> {
    for d in required {
        let path = layout::blob(repo, &d.digest)?;
        if driver.stat(&path)?.is_none_or(|m| m.is_dir) {
            return Ok(Some(d.digest.clone()));
        }
        if depth == 0 || !media_type::is_manifest(&d.media_type) {
            continue;
        }
        // A child that no longer parses was validated when it was pushed; only what it
        // names matters here, and an unreadable one names nothing to check.
        let child = match driver.get(&path) {
            Ok(bytes) => Manifest::parse(&bytes, Some(&d.media_type)).ok(),
            Err(DriverError::NotFound { .. }) => return Ok(Some(d.digest.clone())),
            Err(e) => return Err(e.into()),
        };
        if let Some(child) = child {
            let nested: Vec<Descriptor> = child.required_content().cloned().collect();
            if let Some(missing) = first_missing(driver, repo, &nested, depth - 1)? {
                return Ok(Some(missing));
            }
        }
    }
    Ok(None)
}

/// Points `tag` at `entry`. The manifest the tag left keeps an untagged descriptor if nothing
/// else lists it. Returns whether the index changed.
fn set_tag(index: &mut ImageIndex, tag: &Tag, entry: &Descriptor) -> bool {
    if let Some(current) = index
        .manifests
        .iter()
        .find(|d| d.tag() == Some(tag.as_str()))
        && current.digest == entry.digest
    {
        return false;
    }
    if let Some(pos) = index
        .manifests
        .iter()
        .position(|d| d.tag() == Some(tag.as_str()))
    {
        let old = index.manifests.remove(pos);
        keep_untagged(index, old);
    }
    // The digest's untagged descriptor, if any, is replaced by the tagged one.
    index
        .manifests
        .retain(|d| !(d.digest == entry.digest && d.tag().is_none()));
    let mut tagged = entry.clone();
    tagged.annotations = Some(BTreeMap::from([(
        media_type::REF_NAME_ANNOTATION.to_string(),
        tag.to_string(),
    )]));
    index.manifests.push(tagged);
    true
}

/// Re-adds `removed` without its tag if no other descriptor lists its digest.
fn keep_untagged(index: &mut ImageIndex, mut removed: Descriptor) {
    if index.manifests.iter().any(|d| d.digest == removed.digest) {
        return;
    }
    if let Some(annotations) = removed.annotations.as_mut() {
        annotations.remove(media_type::REF_NAME_ANNOTATION);
        if annotations.is_empty() {
            removed.annotations = None;
        }
    }
    index.manifests.push(removed);
}
