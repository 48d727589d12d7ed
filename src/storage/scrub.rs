//! Scrub: re-hashes every manifest, config and layer the repositories of a store reference,
//! with each digest's own algorithm, and reports what no longer matches; blob files nothing
//! references (orphans) and idle upload sessions are reported as warnings. It repairs and
//! deletes nothing.
//!
//! Each physical file is hashed once, however many repositories link it (dedupe), and the
//! hashing fans out on the background pool, whose threads run at the lowest CPU priority so
//! requests keep theirs. Manifests are read and checked first, in the walk, because their
//! content names what else to check.

use super::driver::StoragePath;
use super::{Store, StoreError, layout};
use crate::digest::Digest;
use crate::oci::{Descriptor, ImageIndex, Manifest, ManifestKind, RepoName};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A scrub of one store.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScrubReport {
    /// The store's config key (`storage`, `storage.subPaths./a`).
    pub store: String,
    /// When it started and finished, in seconds since the Unix epoch.
    pub started: u64,
    /// See `started`.
    pub finished: u64,
    /// Bytes read and hashed.
    pub bytes_hashed: u64,
    /// Distinct files hashed (links counted once).
    pub files_hashed: u64,
    /// Every repository, sorted.
    pub repositories: Vec<RepoScrub>,
}

/// The scrub of one repository.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RepoScrub {
    /// The repository.
    pub repository: String,
    /// `ok`, or `affected` when any image is.
    pub status: &'static str,
    /// Why the repository itself could not be checked (its `index.json`).
    pub error: Option<String>,
    /// One entry per `index.json` descriptor.
    pub images: Vec<ImageScrub>,
    /// Warnings: blob files no image references.
    pub orphans: Vec<Digest>,
    /// Warnings: upload sessions idle for longer than the store's `gcDelay`.
    pub stale_uploads: Vec<String>,
}

/// The scrub of one image (manifest or index) listed in `index.json`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageScrub {
    /// Its tag, if it has one.
    pub tag: Option<String>,
    /// The manifest's digest.
    pub digest: Digest,
    /// `ok` or `affected`.
    pub status: &'static str,
    /// Every blob of the image that is missing, unreadable or does not hash to its digest.
    pub affected: Vec<AffectedBlob>,
}

/// A blob that failed its check.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AffectedBlob {
    /// The blob.
    pub digest: Digest,
    /// What is wrong.
    pub error: String,
}

impl ScrubReport {
    /// Whether any repository is affected.
    pub fn affected(&self) -> bool {
        self.repositories.iter().any(|r| r.status != "ok")
    }
}

/// What the walk of one image found to check.
#[derive(Default)]
struct ImageWalk {
    /// Problems found while walking (manifests are checked during the walk).
    affected: Vec<AffectedBlob>,
    /// Configs and layers still to hash.
    blobs: Vec<Digest>,
}

/// A repository as walked: its images (or why its index is unreadable), and every digest
/// they name.
type WalkedRepo = (
    RepoName,
    Result<Vec<(Descriptor, ImageWalk)>, String>,
    BTreeSet<Digest>,
);

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Store {
    /// Scrubs every repository of this store; `key` names it in the report and the log, and
    /// upload sessions idle for `stale_after` are reported.
    pub fn scrub(&self, key: &str, stale_after: Duration) -> Result<ScrubReport, StoreError> {
        let started = now_secs();
        let bytes = AtomicU64::new(0);
        let mut walked: Vec<WalkedRepo> = Vec::new();
        for name in self.catalog()? {
            let Ok(repo) = name.parse::<RepoName>() else {
                continue;
            };
            let mut referenced = BTreeSet::new();
            let images = self.walk_repo(&repo, &mut referenced, &bytes);
            walked.push((repo, images, referenced));
        }

        // One hash per physical file: group every (repository, digest) by the file's identity.
        // Keyed by file and digest, so a file that wrongly has names under two digests is
        // checked against each.
        let mut by_file: HashMap<(u64, Digest), StoragePath> = HashMap::new();
        let mut identity_of: HashMap<(usize, Digest), Result<u64, String>> = HashMap::new();
        for (i, (repo, images, _)) in walked.iter().enumerate() {
            let Ok(images) = images else { continue };
            for digest in images.iter().flat_map(|(_, w)| &w.blobs) {
                if identity_of.contains_key(&(i, digest.clone())) {
                    continue;
                }
                let identity = self.file_identity(repo, digest);
                if let Ok((id, path)) = &identity {
                    by_file
                        .entry((*id, digest.clone()))
                        .or_insert_with(|| path.clone());
                }
                identity_of.insert((i, digest.clone()), identity.map(|(id, _)| id));
            }
        }
        let files: Vec<((u64, Digest), StoragePath)> = by_file.into_iter().collect();
        let verdicts: HashMap<(u64, Digest), Option<String>> =
            crate::background::pool().install(|| {
                files
                    .par_iter()
                    .map(|(key, path)| (key.clone(), self.check_blob(&key.1, path, &bytes)))
                    .collect()
            });

        let mut repositories = Vec::new();
        for (i, (repo, images, referenced)) in walked.into_iter().enumerate() {
            let mut scrubbed = RepoScrub {
                repository: repo.to_string(),
                status: "ok",
                error: None,
                images: Vec::new(),
                orphans: Vec::new(),
                stale_uploads: Vec::new(),
            };
            match images {
                Err(e) => {
                    scrubbed.status = "affected";
                    scrubbed.error = Some(e);
                }
                Ok(images) => {
                    for (descriptor, walk) in images {
                        let mut affected = walk.affected;
                        for digest in walk.blobs {
                            let problem = match &identity_of[&(i, digest.clone())] {
                                Err(e) => Some(e.clone()),
                                Ok(id) => verdicts.get(&(*id, digest.clone())).cloned().flatten(),
                            };
                            if let Some(error) = problem
                                && !affected.iter().any(|a| a.digest == digest)
                            {
                                affected.push(AffectedBlob { digest, error });
                            }
                        }
                        let image = ImageScrub {
                            tag: descriptor.tag().map(str::to_string),
                            digest: descriptor.digest.clone(),
                            status: if affected.is_empty() {
                                "ok"
                            } else {
                                "affected"
                            },
                            affected,
                        };
                        log_image(key, &repo, &image);
                        if image.status != "ok" {
                            scrubbed.status = "affected";
                        }
                        scrubbed.images.push(image);
                    }
                }
            }
            // Without a readable index nothing is known to be referenced: no orphan list.
            if scrubbed.error.is_none() {
                self.warnings(&repo, &referenced, stale_after, &mut scrubbed);
            }
            repositories.push(scrubbed);
        }
        let report = ScrubReport {
            store: key.to_string(),
            started,
            finished: now_secs(),
            bytes_hashed: bytes.load(Ordering::Relaxed),
            files_hashed: files.len() as u64,
            repositories,
        };
        tracing::info!(
            store = key,
            repositories = report.repositories.len(),
            files = report.files_hashed,
            bytes = report.bytes_hashed,
            affected = report.affected(),
            "scrub: done"
        );
        *self
            .last_scrub
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(std::sync::Arc::new(report.clone()));
        Ok(report)
    }

    /// The last scrub of this store, if one finished.
    pub fn last_scrub(&self) -> Option<std::sync::Arc<ScrubReport>> {
        self.last_scrub
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Walks `repo`'s images, checking manifests as it reads them; fills `referenced` with
    /// every digest an image names. `Err` when `index.json` itself cannot be read.
    fn walk_repo(
        &self,
        repo: &RepoName,
        referenced: &mut BTreeSet<Digest>,
        bytes: &AtomicU64,
    ) -> Result<Vec<(Descriptor, ImageWalk)>, String> {
        let index: std::sync::Arc<ImageIndex> = self.read_index(repo).map_err(|e| e.to_string())?;
        let mut images = Vec::new();
        for descriptor in &index.manifests {
            let mut walk = ImageWalk::default();
            let mut stack = vec![descriptor.clone()];
            while let Some(d) = stack.pop() {
                referenced.insert(d.digest.clone());
                match self.check_manifest(repo, &d, bytes) {
                    Ok(manifest) => {
                        if manifest.kind == ManifestKind::Index {
                            stack.extend(manifest.children.iter().cloned());
                        } else {
                            for blob in manifest.config.iter().chain(&manifest.children) {
                                referenced.insert(blob.digest.clone());
                                if !walk.blobs.contains(&blob.digest)
                                    && !crate::oci::media_type::is_foreign_layer(&blob.media_type)
                                {
                                    walk.blobs.push(blob.digest.clone());
                                }
                            }
                        }
                    }
                    Err(error) => walk.affected.push(AffectedBlob {
                        digest: d.digest.clone(),
                        error,
                    }),
                }
            }
            images.push((descriptor.clone(), walk));
        }
        Ok(images)
    }

    /// Reads a manifest, checks its digest, and parses it.
    fn check_manifest(
        &self,
        repo: &RepoName,
        d: &Descriptor,
        bytes: &AtomicU64,
    ) -> Result<Manifest, String> {
        let path = layout::blob(repo, &d.digest).map_err(|e| e.to_string())?;
        let content = self.driver.get(&path).map_err(|e| match e {
            super::driver::DriverError::NotFound { .. } => "blob is missing".to_string(),
            e => e.to_string(),
        })?;
        bytes.fetch_add(content.len() as u64, Ordering::Relaxed);
        let actual = Digest::of(d.digest.algorithm(), &content);
        if actual != d.digest {
            return Err(format!("content hashes to {actual}"));
        }
        Manifest::parse(&content, Some(&d.media_type))
            .map_err(|e| format!("manifest does not parse: {e}"))
    }

    /// The identity of the file holding `digest` in `repo`, and its path.
    fn file_identity(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<(u64, StoragePath), String> {
        let path = layout::blob(repo, digest).map_err(|e| e.to_string())?;
        match self.driver.stat(&path) {
            Ok(Some(meta)) if !meta.is_dir => Ok((meta.bytes_key(), path)),
            Ok(_) => Err("blob is missing".to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Hashes one file; `None` when it matches `digest`, else what is wrong.
    fn check_blob(&self, digest: &Digest, path: &StoragePath, bytes: &AtomicU64) -> Option<String> {
        match self.hash_object(path, digest.algorithm()) {
            Ok((hasher, size)) => {
                bytes.fetch_add(size, Ordering::Relaxed);
                let actual = hasher.finish();
                (&actual != digest).then(|| format!("content hashes to {actual}"))
            }
            Err(e) => Some(format!("unreadable: {e}")),
        }
    }

    /// Orphans and stale uploads of `repo`, as warnings.
    fn warnings(
        &self,
        repo: &RepoName,
        referenced: &BTreeSet<Digest>,
        stale_after: Duration,
        scrubbed: &mut RepoScrub,
    ) {
        for (digest, _) in self.blob_files(repo).unwrap_or_default() {
            if !referenced.contains(&digest) {
                tracing::warn!(repository = %repo, %digest, component = "scrub", "scrub: orphan blob");
                scrubbed.orphans.push(digest);
            }
        }
        for (id, _) in self
            .idle_uploads(repo, stale_after, SystemTime::now())
            .unwrap_or_default()
        {
            tracing::warn!(repository = %repo, upload = %id, component = "scrub", "scrub: stale upload");
            scrubbed.stale_uploads.push(id.to_string());
        }
    }
}

/// zot's scrub log lines: `blobs/manifest ok` and `blobs/manifest affected`.
fn log_image(key: &str, repo: &RepoName, image: &ImageScrub) {
    let tag = image.tag.as_deref().unwrap_or("");
    if image.affected.is_empty() {
        tracing::info!(store = key, image = %repo, tag, digest = %image.digest, status = "ok", component = "scrub", "blobs/manifest ok");
    }
    for blob in &image.affected {
        tracing::warn!(
            store = key,
            image = %repo,
            tag,
            digest = %image.digest,
            status = "affected",
            affected_blob = %blob.digest,
            error = %blob.error,
            component = "scrub",
            "blobs/manifest affected"
        );
    }
}
