//! Garbage collection and retention of one repository, online: what `index.json` no longer
//! needs (tags retention drops, untagged manifests, referrers whose subject is gone), then
//! blobs nothing references, idle upload sessions, and the repository itself once empty.
//!
//! Safety, in order of the steps:
//! - Plan first, touch nothing: every manifest the index reaches is read and parsed; any
//!   failure (a listed manifest missing, a manifest that does not parse, an I/O error) aborts
//!   the repository before anything is deleted (fail closed). A child an index lists may be
//!   missing (a sparse index, as zot keeps): it names nothing to keep.
//! - Nothing younger than its delay goes: manifests are judged by `retention.delay`, blobs and
//!   uploads by `gcDelay`, by modification time (a push, a mount or a dedupe link refreshes it).
//! - Index removals name exact descriptors (digest and tag), so a tag moved or a manifest
//!   re-tagged since planning is left alone.
//! - Blobs are deleted in short steps under the repository lock, after checking that the
//!   index still lists only what was marked (otherwise the new manifests are marked first);
//!   manifest PUT re-checks its blobs under the same lock, so it never lands on a blob this
//!   deleted. Hard-linked copies in other repositories are separate names and stay.

use super::driver::StoragePath;
use super::layout::UploadId;
use super::{Store, StoreError, layout};
use crate::config::gc::{GcConfig, KeepTags, Policy};
use crate::digest::Digest;
use crate::oci::{Descriptor, ImageIndex, Manifest, ManifestKind, RepoName, media_type};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, SystemTime};

/// Blobs deleted per hold of the repository lock, so pushes and pulls wait only briefly.
const DELETES_PER_STEP: usize = 64;

/// What collecting one repository removed, or with `dry_run` would remove.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Collected {
    /// The repository.
    pub repository: String,
    /// Tags retention removed: tag and the digest it named.
    pub tags: Vec<(String, Digest)>,
    /// Manifests removed from `index.json`, with the reason.
    pub manifests: Vec<(Digest, &'static str)>,
    /// Blob files deleted, with their sizes (manifests included).
    pub blobs: Vec<(Digest, u64)>,
    /// Upload sessions deleted, with their sizes.
    pub uploads: Vec<(String, u64)>,
    /// Whether the repository was empty and is gone.
    pub repository_removed: bool,
}

impl Collected {
    /// Whether nothing was (or would be) removed.
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
            && self.manifests.is_empty()
            && self.blobs.is_empty()
            && self.uploads.is_empty()
            && !self.repository_removed
    }

    /// Bytes of blobs and uploads removed.
    pub fn bytes(&self) -> u64 {
        self.blobs.iter().map(|(_, s)| s).sum::<u64>()
            + self.uploads.iter().map(|(_, s)| s).sum::<u64>()
    }
}

/// When a tag was pushed and when its manifest was last pulled, for `keepTags`.
#[derive(Debug, Default)]
pub struct TagTimes {
    /// Push time per tag, where recorded.
    pub pushed: HashMap<String, SystemTime>,
    /// Last pull per manifest digest, where recorded.
    pub pulled: HashMap<Digest, SystemTime>,
}

/// A manifest the index reaches, read once per collection.
struct Node {
    manifest: Manifest,
    modified: SystemTime,
}

/// The manifests of one repository, loaded on demand; any failure is an error.
struct Graph<'s> {
    store: &'s Store,
    repo: &'s RepoName,
    nodes: HashMap<Digest, Node>,
}

impl Graph<'_> {
    fn node(&mut self, d: &Descriptor) -> Result<&Node, StoreError> {
        if !self.nodes.contains_key(&d.digest) {
            let path = layout::blob(self.repo, &d.digest)?;
            let corrupt = |reason: String| StoreError::CorruptLayout {
                path: path.to_string(),
                reason,
            };
            let meta = self
                .store
                .driver
                .stat(&path)?
                .ok_or_else(|| corrupt("listed, but the manifest's blob is missing".into()))?;
            let bytes = self.store.driver.get(&path)?;
            let manifest = Manifest::parse(&bytes, Some(&d.media_type))
                .map_err(|e| corrupt(format!("manifest does not parse: {e}")))?;
            let node = Node {
                manifest,
                modified: meta.modified,
            };
            self.nodes.insert(d.digest.clone(), node);
        }
        Ok(&self.nodes[&d.digest])
    }

    /// A child manifest an index lists; `None` when its blob is gone (a sparse index, as zot
    /// keeps: nothing it would name can be reached, so nothing is kept for it).
    fn child(&mut self, d: &Descriptor) -> Result<Option<&Node>, StoreError> {
        let path = layout::blob(self.repo, &d.digest)?;
        if !self.nodes.contains_key(&d.digest) && self.store.driver.stat(&path)?.is_none() {
            return Ok(None);
        }
        self.node(d).map(Some)
    }

    /// Marks every blob `roots` (listed manifests, which must be readable) reach: manifests,
    /// their configs and layers, and index children.
    fn mark<'d>(
        &mut self,
        roots: impl IntoIterator<Item = &'d Descriptor>,
        marked: &mut HashSet<Digest>,
    ) -> Result<(), StoreError> {
        let mut stack: Vec<(Descriptor, bool)> =
            roots.into_iter().map(|d| (d.clone(), true)).collect();
        let mut expanded = HashSet::new();
        while let Some((d, listed)) = stack.pop() {
            marked.insert(d.digest.clone());
            if !media_type::is_manifest(&d.media_type) || !expanded.insert(d.digest.clone()) {
                continue;
            }
            let node = if listed {
                Some(self.node(&d)?)
            } else {
                self.child(&d)?
            };
            if let Some(node) = node {
                let named = node.manifest.config.iter().chain(&node.manifest.children);
                stack.extend(named.map(|n| (n.clone(), false)));
            }
        }
        Ok(())
    }

    /// The manifests listed indexes reach (recursively), which untagged removal must keep.
    fn index_children(&mut self, listed: &[Descriptor]) -> Result<HashSet<Digest>, StoreError> {
        let mut children = HashSet::new();
        let mut stack: Vec<Descriptor> = Vec::new();
        for d in listed {
            if self.node(d)?.manifest.kind == ManifestKind::Index {
                stack.extend(self.node(d)?.manifest.children.iter().cloned());
            }
        }
        while let Some(d) = stack.pop() {
            if !children.insert(d.digest.clone()) || !media_type::is_manifest(&d.media_type) {
                continue;
            }
            if let Some(node) = self.child(&d)?
                && node.manifest.kind == ManifestKind::Index
            {
                stack.extend(node.manifest.children.clone());
            }
        }
        Ok(children)
    }
}

/// The legacy cosign tag of a signature, SBOM or attestation: `sha256-<hex>.sig` and the
/// like, whose subject is the manifest `sha256:<hex>`.
fn legacy_subject(tag: &str) -> Option<Digest> {
    let rest = tag.strip_prefix("sha256-")?;
    let (hex, suffix) = rest.split_once('.')?;
    if !matches!(suffix, "sig" | "sbom" | "att") {
        return None;
    }
    format!("sha256:{hex}").parse().ok()
}

/// Whether something last written at `modified` is at least `delay` old at `now`.
pub(super) fn older_than(modified: SystemTime, now: SystemTime, delay: Duration) -> bool {
    now.duration_since(modified).is_ok_and(|age| age >= delay)
}

/// The tags `policy.keep_tags` keeps, zot's way: each tag is judged by the first rule whose
/// patterns it matches; within a rule the counts and ages are ORed; a rule with none of them
/// keeps every tag it selects; tags no rule selects are not kept.
fn retained_tags(
    keep: &[KeepTags],
    tags: &[(String, Digest, SystemTime)],
    times: &TagTimes,
    now: SystemTime,
) -> HashSet<String> {
    let mut claimed: HashSet<&str> = HashSet::new();
    let mut kept = HashSet::new();
    for rule in keep {
        let mut selected: Vec<(&str, SystemTime, SystemTime)> = Vec::new();
        for (tag, digest, manifest_time) in tags {
            if claimed.contains(tag.as_str()) || !rule.selects(tag) {
                continue;
            }
            claimed.insert(tag);
            let pushed = times.pushed.get(tag).copied().unwrap_or(*manifest_time);
            let pulled = times
                .pulled
                .get(digest)
                .copied()
                .unwrap_or(SystemTime::UNIX_EPOCH);
            selected.push((tag, pushed, pulled));
        }
        if rule.keeps_all_selected() {
            kept.extend(selected.iter().map(|(t, ..)| t.to_string()));
            continue;
        }
        let mut keep_newest =
            |count: Option<usize>, by: fn(&(&str, SystemTime, SystemTime)) -> SystemTime| {
                if let Some(count) = count {
                    let mut sorted = selected.clone();
                    sorted.sort_by_key(|s| std::cmp::Reverse(by(s)));
                    kept.extend(sorted.iter().take(count).map(|(t, ..)| t.to_string()));
                }
            };
        keep_newest(rule.most_recently_pushed_count, |s| s.1);
        keep_newest(rule.most_recently_pulled_count, |s| s.2);
        for (tag, pushed, pulled) in &selected {
            let recent = |within: Option<Duration>, at: SystemTime| {
                within.is_some_and(|w| !older_than(at, now, w))
            };
            if recent(rule.pushed_within, *pushed) || recent(rule.pulled_within, *pulled) {
                kept.insert(tag.to_string());
            }
        }
    }
    kept
}

/// The plan for one repository: descriptors to drop from the index, and what stays marked.
struct Plan {
    removals: Vec<(Digest, Option<String>)>,
    listed: BTreeSet<Digest>,
    marked: HashSet<Digest>,
    uploads: Vec<(UploadId, u64)>,
    collected: Collected,
}

impl Store {
    /// Collects `repo` as `settings` say; with `dry_run` only reports. `times` feeds the
    /// `keepTags` rules.
    pub fn collect(
        &self,
        repo: &RepoName,
        settings: &GcConfig,
        times: &TagTimes,
        now: SystemTime,
        dry_run: bool,
    ) -> Result<Collected, StoreError> {
        let index = self.read_index(repo)?;
        let fallback = Policy::fallback();
        let policy = settings
            .retention
            .policy_for(repo.as_str())
            .unwrap_or(&fallback);
        let mut graph = Graph {
            store: self,
            repo,
            nodes: HashMap::new(),
        };
        let mut plan = plan_index(&mut graph, &index, policy, settings, times, now)?;
        plan.collected.repository = repo.to_string();
        self.plan_blobs(repo, settings.delay, now, &mut plan)?;
        if dry_run {
            return Ok(plan.collected);
        }
        // A tag pushed again since planning (same digest, so the index looks unchanged) is
        // no longer a candidate: retention judged an older push.
        if !plan.collected.tags.is_empty() {
            let fresh = self.tag_times(repo);
            let repushed = |tag: &str| fresh.pushed.get(tag).is_some_and(|at| *at > now);
            plan.removals
                .retain(|(_, tag)| !tag.as_deref().is_some_and(&repushed));
            plan.collected.tags.retain(|(tag, _)| !repushed(tag));
        }
        let removals = plan.removals.clone();
        if !removals.is_empty() {
            self.update_index(repo, move |index| {
                let before = index.manifests.len();
                index.manifests.retain(|d| {
                    !removals
                        .iter()
                        .any(|(digest, tag)| &d.digest == digest && d.tag() == tag.as_deref())
                });
                Ok(index.manifests.len() != before)
            })?;
        }
        self.delete_unmarked(repo, &mut graph, &mut plan, settings.delay, now)?;
        plan.collected.uploads.clear();
        for (id, size) in std::mem::take(&mut plan.uploads) {
            if self.end_idle_upload(repo, id, settings.delay, now)? {
                plan.collected.uploads.push((id.to_string(), size));
            }
        }
        plan.collected.repository_removed = self.remove_if_empty(repo)?;
        Ok(plan.collected)
    }

    /// Lists the blob files nothing marked and older than `delay`, and idle uploads.
    fn plan_blobs(
        &self,
        repo: &RepoName,
        delay: Duration,
        now: SystemTime,
        plan: &mut Plan,
    ) -> Result<(), StoreError> {
        for (digest, path) in self.blob_files(repo)? {
            if plan.marked.contains(&digest) {
                continue;
            }
            if let Some(meta) = self.driver.stat(&path)?
                && !meta.is_dir
                && older_than(meta.modified, now, delay)
            {
                plan.collected.blobs.push((digest, meta.size));
            }
        }
        plan.uploads = self.idle_uploads(repo, delay, now)?;
        plan.collected.uploads = plan
            .uploads
            .iter()
            .map(|(id, size)| (id.to_string(), *size))
            .collect();
        Ok(())
    }

    /// Every `blobs/<alg>/<hex>` file of `repo`; names that are not digests are skipped.
    pub(super) fn blob_files(
        &self,
        repo: &RepoName,
    ) -> Result<Vec<(Digest, StoragePath)>, StoreError> {
        let blobs = layout::repo_dir(repo)?.join(layout::BLOBS)?;
        let mut files = Vec::new();
        for algorithm in self.driver.list(Some(&blobs))? {
            let Ok(dir) = blobs.join(&algorithm) else {
                continue;
            };
            for hex in self.driver.list(Some(&dir))? {
                if let (Ok(digest), Ok(path)) = (
                    format!("{algorithm}:{hex}").parse::<Digest>(),
                    dir.join(&hex),
                ) {
                    files.push((digest, path));
                }
            }
        }
        Ok(files)
    }

    /// Deletes the planned blobs in short steps under the repository lock. Before each step
    /// the index is read again: manifests listed since planning are marked first, and their
    /// blobs leave the plan; a blob whose mtime was refreshed (pushed or linked again) stays.
    fn delete_unmarked(
        &self,
        repo: &RepoName,
        graph: &mut Graph<'_>,
        plan: &mut Plan,
        delay: Duration,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        let planned = std::mem::take(&mut plan.collected.blobs);
        for step in planned.chunks(DELETES_PER_STEP) {
            let _guard = self.repo_locks.lock(repo);
            let index = self.read_index(repo)?;
            let new: Vec<&Descriptor> = index
                .manifests
                .iter()
                .filter(|d| !plan.listed.contains(&d.digest))
                .collect();
            if !new.is_empty() {
                graph.mark(new.iter().copied(), &mut plan.marked)?;
                plan.listed.extend(new.iter().map(|d| d.digest.clone()));
            }
            for (digest, size) in step {
                if plan.marked.contains(digest) {
                    continue;
                }
                let path = layout::blob(repo, digest)?;
                let still_old = self
                    .driver
                    .stat(&path)?
                    .is_some_and(|m| older_than(m.modified, now, delay));
                if !still_old {
                    continue;
                }
                match self.blob_delete(repo, digest) {
                    Ok(()) => plan.collected.blobs.push((digest.clone(), *size)),
                    Err(StoreError::BlobUnknown(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Deletes `repo` when nothing is left in it: no manifest, blob, upload or nested
    /// repository. Checked and done under the repository lock.
    fn remove_if_empty(&self, repo: &RepoName) -> Result<bool, StoreError> {
        let _guard = self.repo_locks.lock(repo);
        let index = match self.read_index(repo) {
            Ok(index) => index,
            Err(StoreError::NameUnknown(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        if !index.manifests.is_empty() || !self.blob_files(repo)?.is_empty() {
            return Ok(false);
        }
        let dir = layout::repo_dir(repo)?;
        let uploads = dir.join(layout::UPLOADS)?;
        if !self.driver.list(Some(&uploads))?.is_empty() {
            return Ok(false);
        }
        let nested = self
            .driver
            .list(Some(&dir))?
            .into_iter()
            .any(|name| !layout::is_layout_entry(&name));
        if nested {
            return Ok(false);
        }
        // Directories first: one a racing upload has just written into is not empty, and
        // the repository is left whole. index.json last: until it goes, it is a repository.
        let blobs = dir.join(layout::BLOBS)?;
        for algorithm in self.driver.list(Some(&blobs))? {
            self.driver.delete_dir(&blobs.join(&algorithm)?)?;
        }
        self.driver.delete_dir(&blobs)?;
        self.driver.delete_dir(&uploads)?;
        // Only the layout's own files: anything else that appeared meanwhile (a blob, an
        // upload, a nested repository) makes the last `delete_dir` fail, and stays.
        self.driver.delete(&layout::oci_layout(repo)?)?;
        self.driver.delete(&layout::index_json(repo)?)?;
        self.indexes.forget(repo);
        self.driver.delete_dir(&dir)?;
        // Parent directories that only held this repository go too (not repositories).
        let mut components: Vec<&str> = repo.components().collect();
        components.pop();
        while !components.is_empty() {
            let parent = StoragePath::from_components(components.iter().copied())?;
            if !self.driver.list(Some(&parent))?.is_empty() {
                break;
            }
            self.driver.delete_dir(&parent)?;
            components.pop();
        }
        Ok(true)
    }
}

/// Decides what leaves `index`: tags retention drops, then (until nothing changes) referrers
/// whose subject is gone and untagged manifests nothing references. Marks what stays.
fn plan_index(
    graph: &mut Graph<'_>,
    index: &ImageIndex,
    policy: &Policy,
    settings: &GcConfig,
    times: &TagTimes,
    now: SystemTime,
) -> Result<Plan, StoreError> {
    let retention = &settings.retention;
    let mut listed: Vec<Descriptor> = index.manifests.clone();
    let mut collected = Collected::default();
    let mut removals: Vec<(Digest, Option<String>)> = Vec::new();
    // Every listed manifest is read before anything is decided: fail closed.
    for d in &listed {
        graph.node(d)?;
    }
    let modified = |graph: &Graph<'_>, digest: &Digest| graph.nodes[digest].modified;

    if !policy.keep_tags.is_empty() {
        let tags: Vec<(String, Digest, SystemTime)> = listed
            .iter()
            .filter_map(|d| {
                let tag = d.tag()?;
                Some((
                    tag.to_string(),
                    d.digest.clone(),
                    modified(graph, &d.digest),
                ))
            })
            .collect();
        let kept = retained_tags(&policy.keep_tags, &tags, times, now);
        for (tag, digest, _) in tags {
            if !kept.contains(&tag) {
                removals.push((digest.clone(), Some(tag.clone())));
                collected.tags.push((tag, digest));
            }
        }
    }
    let drop_removed = |listed: &mut Vec<Descriptor>, removals: &[(Digest, Option<String>)]| {
        listed.retain(|d| {
            !removals
                .iter()
                .any(|(digest, tag)| &d.digest == digest && d.tag() == tag.as_deref())
        })
    };
    drop_removed(&mut listed, &removals);

    loop {
        let present: HashSet<Digest> = listed.iter().map(|d| d.digest.clone()).collect();
        let children = graph.index_children(&listed)?;
        let mut step: Vec<(Digest, Option<String>, &'static str)> = Vec::new();
        for d in &listed {
            let node = &graph.nodes[&d.digest];
            let old = older_than(node.modified, now, retention.delay);
            let subject_gone =
                |subject: &Digest| !present.contains(subject) && !children.contains(subject);
            if policy.delete_referrers {
                let subject = node.manifest.subject.as_ref().map(|s| s.digest.clone());
                let legacy = d.tag().and_then(legacy_subject);
                let gone_for = match (subject, legacy) {
                    (Some(s), _) if subject_gone(&s) => {
                        Some((retention.delay, "its subject is gone"))
                    }
                    (_, Some(s)) if subject_gone(&s) => {
                        Some((settings.delay, "its subject is gone"))
                    }
                    _ => None,
                };
                if let Some((delay, reason)) = gone_for
                    && older_than(node.modified, now, delay)
                {
                    step.push((d.digest.clone(), d.tag().map(str::to_string), reason));
                    continue;
                }
            }
            // As zot: a referrer is removed only by the referrer rule, and a subject is not
            // kept alive by its referrers (they go once it is gone, with deleteReferrers).
            let referenced = children.contains(&d.digest) || node.manifest.subject.is_some();
            if policy.delete_untagged && d.tag().is_none() && !referenced && old {
                step.push((d.digest.clone(), None, "untagged"));
            }
        }
        if step.is_empty() {
            break;
        }
        for (digest, tag, reason) in step {
            if !collected.manifests.iter().any(|(d, _)| d == &digest) {
                collected.manifests.push((digest.clone(), reason));
            }
            removals.push((digest, tag));
        }
        drop_removed(&mut listed, &removals);
    }

    let mut marked = HashSet::new();
    graph.mark(&listed, &mut marked)?;
    Ok(Plan {
        listed: listed.iter().map(|d| d.digest.clone()).collect(),
        removals,
        marked,
        uploads: Vec::new(),
        collected,
    })
}
