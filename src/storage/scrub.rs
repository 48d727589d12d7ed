//! Scrub: re-hashes every manifest, config and layer the repositories of a store reference,
//! with each digest's own algorithm, and reports what no longer matches; blob files nothing
//! references (orphans), idle upload sessions and what killed writes left (`leftovers`) are
//! reported as warnings. Directories it could not read make the store affected: what was not
//! scrubbed is never reported healthy. It repairs and deletes nothing.
//!
//! Each physical file is hashed once, however many repositories link it (dedupe), and the
//! hashing fans out on the background pool, whose threads run at the lowest CPU priority so
//! requests keep theirs. Manifests are read and checked first, in the walk, because their
//! content names what else to check.
//!
//! Scheduled scrubs hold the store's scrub lease (`LEASE`): of several instances serving one
//! store, one scrubs at a time, and its report is the one with results.

use super::driver::StoragePath;
use super::leftovers::{Leftover, Stale};
use super::placeholders::Lookup;
use super::{Registry, Store, StoreError, layout};
use crate::cache::LeaseKey;
use crate::digest::Digest;
use crate::oci::{Descriptor, Manifest, ManifestKind, RepoName};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
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
    /// `ok`, or `affected` when a repository is affected or a directory could not be read.
    pub status: &'static str,
    /// Every repository, sorted.
    pub repositories: Vec<RepoScrub>,
    /// Directories that could not be read, so whatever is in them was not scrubbed.
    pub unreadable: Vec<Unreadable>,
    /// Directories not looked into because no repository can have their name.
    pub skipped: Vec<String>,
    /// Warnings: temporary files of writes a kill cut short (written before this process
    /// started, or untouched for the store's `gcDelay`); the collector removes them.
    pub leftovers: Vec<Leftover>,
    /// Warnings: directories a kill left while a repository was created or removed (an
    /// `oci-layout` without `index.json`, nothing else but empty layout directories and
    /// leftovers); the collector removes them.
    pub remnants: Vec<String>,
}

/// A directory scrub could not read.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Unreadable {
    /// Its path under the store's root.
    pub path: String,
    /// Why.
    pub error: String,
}

/// Where the scrubs of one store stand, for `/v2/_berth/scrub`.
#[derive(Debug, Clone, Default)]
pub(super) enum ScrubState {
    /// No scrub is scheduled (scrub is off).
    #[default]
    Unscheduled,
    /// Scheduled under this config key; none has finished yet.
    Pending(String),
    /// The last scrub.
    Done(Arc<ScrubReport>),
    /// The last scrub could not run (the store's root cannot be read).
    Failed {
        /// The config key.
        store: String,
        /// Why.
        error: String,
    },
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
    /// Whether any repository is affected or any directory could not be read.
    pub fn affected(&self) -> bool {
        !self.unreadable.is_empty() || self.repositories.iter().any(|r| r.status != "ok")
    }
}

/// The body of `/v2/_berth/scrub`: per store its last report, or while it has none its state
/// (`pending`: scheduled, none finished yet; `failed`: could not run, and why). `affected` is
/// true when a store is affected or could not be scrubbed, false only when every store was
/// scrubbed and is clean, and null otherwise (scrub off, or a first scrub still running), and
/// `status` says the same in a word: a store that was not scrubbed never reads as healthy
/// (issue 10: before any scrub the answer was `{"affected":false,"stores":[]}`).
pub(crate) fn summary(registry: &Registry) -> serde_json::Value {
    let mut stores = Vec::new();
    let (mut affected, mut pending, mut unscheduled) = (false, false, false);
    for store in registry.stores() {
        match store.scrub_state() {
            ScrubState::Unscheduled => unscheduled = true,
            ScrubState::Pending(key) => {
                pending = true;
                stores.push(serde_json::json!({ "store": key, "status": "pending" }));
            }
            ScrubState::Done(report) => {
                affected |= report.affected();
                stores.push(serde_json::to_value(&*report).expect("a report serializes"));
            }
            ScrubState::Failed { store, error } => {
                affected = true;
                stores.push(
                    serde_json::json!({ "store": store, "status": "failed", "error": error }),
                );
            }
        }
    }
    let (affected, status) = if affected {
        (serde_json::Value::Bool(true), "affected")
    } else if pending {
        (serde_json::Value::Null, "pending")
    } else if unscheduled {
        (serde_json::Value::Null, "not scrubbed")
    } else {
        (serde_json::Value::Bool(false), "ok")
    };
    serde_json::json!({ "affected": affected, "status": status, "stores": stores })
}

/// A manifest as the walk found it: the manifests it lists (an index) or the configs and
/// layers it names (an image), or what is wrong with it.
type NodeCheck = Result<NodeContent, String>;

/// What a readable manifest names.
struct NodeContent {
    /// Child manifests (of an index).
    children: Vec<Digest>,
    /// Configs and layers to hash (of an image); foreign layers are not stored here.
    blobs: Vec<Digest>,
}

/// A repository as walked: its listed images and every manifest they reach, each read once
/// however many images share it (issue 10: a DAG of 30 indexes each listing the previous
/// twice was walked 2^30 times).
struct RepoGraph {
    listed: Vec<Descriptor>,
    nodes: HashMap<Digest, NodeCheck>,
    /// Every digest an image names.
    referenced: BTreeSet<Digest>,
}

/// A repository and its walk, or why its index is unreadable.
type WalkedRepo = (RepoName, Result<RepoGraph, String>);

/// What hashing the walked repositories' files found: each (repository index, digest)'s file
/// identity, or why it has none, and each (identity, digest)'s problem, if any.
struct HashedFiles {
    identity_of: HashMap<(usize, Digest), Result<u64, String>>,
    verdicts: HashMap<(u64, Digest), Option<String>>,
    /// Files hashed.
    files: u64,
}

/// The lease of scheduled scrubs.
pub(crate) const LEASE: LeaseKey = LeaseKey::new("scrub");

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Store {
    /// Scrubs every repository of this store; `key` names it in the report and the log, and
    /// upload sessions idle for `stale_after` are reported.
    pub fn scrub(&self, key: &str, stale_after: Duration) -> Result<ScrubReport, StoreError> {
        let ticket = 1 + self
            .scrub_starts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let scrubbed = self.scrub_unrecorded(key, stale_after);
        let mut recorded = self
            .scrub
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Two scrubs may overlap (the dedupe pass scrubs again after repairs): the one that
        // started later saw the newer store, and its outcome stays. Start tickets order them
        // even within one second, which the report's `started` cannot.
        if ticket > recorded.0 {
            recorded.0 = ticket;
            recorded.1 = match &scrubbed {
                Ok(report) => ScrubState::Done(Arc::new(report.clone())),
                Err(e) => ScrubState::Failed {
                    store: key.to_string(),
                    error: e.to_string(),
                },
            };
        }
        drop(recorded);
        scrubbed
    }

    /// Notes that scrubs of this store, under config key `key`, are scheduled: until one
    /// finishes, the store's scrub is pending, not absent.
    pub fn scrub_scheduled(&self, key: &str) {
        let mut state = self
            .scrub
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if matches!(state.1, ScrubState::Unscheduled) {
            state.1 = ScrubState::Pending(key.to_string());
        }
    }

    fn scrub_state(&self) -> ScrubState {
        self.scrub
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .1
            .clone()
    }

    fn scrub_unrecorded(
        &self,
        key: &str,
        stale_after: Duration,
    ) -> Result<ScrubReport, StoreError> {
        let started = now_secs();
        let bytes = AtomicU64::new(0);
        let walk = self.walk()?;
        let mut walked: Vec<WalkedRepo> = Vec::new();
        for name in &walk.repos {
            let Ok(repo) = name.parse::<RepoName>() else {
                continue;
            };
            let graph = self.walk_repo(&repo, &bytes);
            walked.push((repo, graph));
        }

        let hashed = self.hash_distinct_files(&walked, &bytes);
        let repositories = walked
            .into_iter()
            .enumerate()
            .map(|(i, (repo, graph))| self.repo_report(key, i, repo, graph, &hashed, stale_after))
            .collect();
        let leftovers = self.leftovers(&walk, Stale::Either(stale_after), true);
        for file in &leftovers.files {
            tracing::warn!(store = key, path = %file.path, bytes = file.bytes, component = "scrub", "scrub: leftover temporary file");
        }
        for remnant in &leftovers.remnants {
            tracing::warn!(store = key, path = %remnant, component = "scrub", "scrub: remains of a removed repository");
        }
        // Directories the search for leftovers could not list were not scrubbed either.
        let unreadable = walk
            .unreadable
            .into_iter()
            .chain(leftovers.failed)
            .map(|(path, error)| Unreadable { path, error })
            .collect();
        let mut report = ScrubReport {
            store: key.to_string(),
            started,
            finished: now_secs(),
            bytes_hashed: bytes.load(Ordering::Relaxed),
            files_hashed: hashed.files,
            status: "ok",
            repositories,
            unreadable,
            skipped: walk.skipped,
            leftovers: leftovers.files,
            remnants: leftovers.remnants,
        };
        if report.affected() {
            report.status = "affected";
        }
        tracing::info!(
            store = key,
            repositories = report.repositories.len(),
            files = report.files_hashed,
            bytes = report.bytes_hashed,
            unreadable = report.unreadable.len(),
            leftovers = report.leftovers.len() + report.remnants.len(),
            affected = report.affected(),
            "scrub: done"
        );
        Ok(report)
    }

    /// Hashes every physical file the walked repositories' images name once: every
    /// (repository, digest) is grouped by the file's identity, keyed by file and digest, so a
    /// file that wrongly has names under two digests is checked against each.
    fn hash_distinct_files(&self, walked: &[WalkedRepo], bytes: &AtomicU64) -> HashedFiles {
        let mut by_file: HashMap<(u64, Digest), StoragePath> = HashMap::new();
        let mut identity_of: HashMap<(usize, Digest), Result<u64, String>> = HashMap::new();
        for (i, (repo, graph)) in walked.iter().enumerate() {
            let Ok(graph) = graph else { continue };
            let blobs = graph.nodes.values().flatten().flat_map(|n| &n.blobs);
            for digest in blobs {
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
        let verdicts = crate::background::pool().install(|| {
            files
                .par_iter()
                .map(|(key, path)| (key.clone(), self.check_blob(&key.1, path, bytes)))
                .collect()
        });
        HashedFiles {
            identity_of,
            verdicts,
            files: files.len() as u64,
        }
    }

    /// The report of the `i`th walked repository: each listed image ok or affected (with the
    /// blobs that make it so), then orphans and stale uploads.
    fn repo_report(
        &self,
        key: &str,
        i: usize,
        repo: RepoName,
        graph: Result<RepoGraph, String>,
        hashed: &HashedFiles,
        stale_after: Duration,
    ) -> RepoScrub {
        let mut scrubbed = RepoScrub {
            repository: repo.to_string(),
            status: "ok",
            error: None,
            images: Vec::new(),
            orphans: Vec::new(),
            stale_uploads: Vec::new(),
        };
        let graph = match graph {
            Err(e) => {
                scrubbed.status = "affected";
                scrubbed.error = Some(e);
                return scrubbed;
            }
            Ok(graph) => graph,
        };
        let blob_problem = |digest: &Digest| match &hashed.identity_of[&(i, digest.clone())] {
            Err(e) => Some(e.clone()),
            Ok(id) => hashed
                .verdicts
                .get(&(*id, digest.clone()))
                .cloned()
                .flatten(),
        };
        let tainted = tainted_nodes(&graph.nodes, &blob_problem);
        for descriptor in &graph.listed {
            let affected = if tainted.contains(&descriptor.digest) {
                affected_blobs(&graph.nodes, &tainted, &descriptor.digest, &blob_problem)
            } else {
                Vec::new()
            };
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
        self.warnings(&repo, &graph.referenced, stale_after, &mut scrubbed);
        scrubbed
    }

    /// Walks every manifest `repo`'s images reach, checking each once as it is read. `Err`
    /// when `index.json` itself cannot be read.
    fn walk_repo(&self, repo: &RepoName, bytes: &AtomicU64) -> Result<RepoGraph, String> {
        let index = self.read_index(repo).map_err(|e| e.to_string())?;
        let mut graph = RepoGraph {
            listed: index.manifests().to_vec(),
            nodes: HashMap::new(),
            referenced: BTreeSet::new(),
        };
        let mut stack: Vec<Descriptor> = index.manifests().to_vec();
        while let Some(d) = stack.pop() {
            graph.referenced.insert(d.digest.clone());
            if graph.nodes.contains_key(&d.digest) {
                continue;
            }
            let check = self.check_manifest(repo, &d, bytes).map(|manifest| {
                if manifest.kind == ManifestKind::Index {
                    let children = manifest.children.iter().map(|c| c.digest.clone()).collect();
                    stack.extend(manifest.children);
                    return NodeContent {
                        children,
                        blobs: Vec::new(),
                    };
                }
                let named: Vec<&Descriptor> =
                    manifest.config.iter().chain(&manifest.children).collect();
                graph
                    .referenced
                    .extend(named.iter().map(|b| b.digest.clone()));
                let blobs = named
                    .into_iter()
                    .filter(|b| !crate::oci::media_type::is_foreign_layer(&b.media_type))
                    .map(|b| b.digest.clone())
                    .collect();
                NodeContent {
                    children: Vec::new(),
                    blobs,
                }
            });
            graph.nodes.insert(d.digest.clone(), check);
        }
        Ok(graph)
    }

    /// Reads a manifest, checks its digest, and parses it.
    fn check_manifest(
        &self,
        repo: &RepoName,
        d: &Descriptor,
        bytes: &AtomicU64,
    ) -> Result<Manifest, String> {
        let path = layout::blob(repo, &d.digest).map_err(|e| e.to_string())?;
        let content =
            super::placeholders::get(&*self.driver, &path, &d.digest).map_err(|e| match e {
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

    /// The identity of the file holding `digest` in `repo`, and its path: for a placeholder,
    /// its holder's, so the bytes checked are the ones its pulls serve (and hashed once for
    /// every placeholder naming them).
    fn file_identity(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<(u64, StoragePath), String> {
        let path = layout::blob(repo, digest).map_err(|e| e.to_string())?;
        match super::placeholders::lookup(&*self.driver, &path, digest) {
            Ok(Lookup::Found(found)) => Ok((found.meta.bytes_key(), found.path)),
            Ok(Lookup::Missing) => Err("blob is missing".to_string()),
            Ok(Lookup::Dangling(holder)) => Err(format!(
                "placeholder names {holder} as holding its bytes, which is gone"
            )),
            Ok(Lookup::Empty) => Err(
                "blob is empty: zero bytes for a digest of more, naming no holder (cut, or copied without its metadata)"
                    .to_string(),
            ),
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
        for digest in self
            .blob_files(repo)
            .unwrap_or_default()
            .into_iter()
            .map(|f| f.digest)
        {
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

/// The manifests that are wrong themselves, name a blob with a problem, or reach such a
/// manifest; each manifest and edge is looked at once (depth-first, without recursion, so
/// a long chain cannot exhaust the stack).
fn tainted_nodes(
    nodes: &HashMap<Digest, NodeCheck>,
    blob_problem: &dyn Fn(&Digest) -> Option<String>,
) -> std::collections::HashSet<Digest> {
    let mut tainted = std::collections::HashSet::new();
    let mut done: std::collections::HashSet<&Digest> = std::collections::HashSet::new();
    for root in nodes.keys() {
        let mut stack: Vec<(&Digest, bool)> = vec![(root, false)];
        while let Some((digest, children_done)) = stack.pop() {
            if children_done {
                let bad = match &nodes[digest] {
                    Err(_) => true,
                    Ok(n) => {
                        n.blobs.iter().any(|b| blob_problem(b).is_some())
                            || n.children.iter().any(|c| tainted.contains(c))
                    }
                };
                if bad {
                    tainted.insert(digest.clone());
                }
                continue;
            }
            if !done.insert(digest) {
                continue;
            }
            stack.push((digest, true));
            if let Ok(n) = &nodes[digest] {
                stack.extend(
                    n.children
                        .iter()
                        .filter(|c| !done.contains(c))
                        .map(|c| (c, false)),
                );
            }
        }
    }
    tainted
}

/// Every problem below the tainted image `top`, walking only tainted manifests.
fn affected_blobs(
    nodes: &HashMap<Digest, NodeCheck>,
    tainted: &std::collections::HashSet<Digest>,
    top: &Digest,
    blob_problem: &dyn Fn(&Digest) -> Option<String>,
) -> Vec<AffectedBlob> {
    let mut affected: Vec<AffectedBlob> = Vec::new();
    let mut seen: std::collections::HashSet<&Digest> = std::collections::HashSet::new();
    let mut stack = vec![top];
    while let Some(digest) = stack.pop() {
        if !seen.insert(digest) {
            continue;
        }
        match &nodes[digest] {
            Err(error) => affected.push(AffectedBlob {
                digest: digest.clone(),
                error: error.clone(),
            }),
            Ok(n) => {
                for blob in &n.blobs {
                    if let Some(error) = blob_problem(blob)
                        && seen.insert(blob)
                    {
                        affected.push(AffectedBlob {
                            digest: blob.clone(),
                            error,
                        });
                    }
                }
                stack.extend(n.children.iter().filter(|c| tainted.contains(*c)));
            }
        }
    }
    affected
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
