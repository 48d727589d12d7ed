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

use super::driver::ObjectMeta;
use super::layout::UploadId;
use super::listing::Listing;
use super::{Store, StoreError, layout};
use crate::config::gc::{GcConfig, KeepTags, Policy};
use crate::digest::Digest;
use crate::oci::{Descriptor, Manifest, ManifestKind, RepoName, media_type};
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
            let bytes = super::placeholders::get(&*self.store.driver, &path, &d.digest)?;
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

/// Index descriptors as (digest, tag) pairs, for exact removal in one pass.
fn descriptor_set(removals: &[(Digest, Option<String>)]) -> HashSet<(&Digest, Option<&str>)> {
    removals
        .iter()
        .map(|(digest, tag)| (digest, tag.as_deref()))
        .collect()
}

/// What a listed manifest that could go needs, to stay.
enum Need {
    /// A referrer: its subject still there (listed and kept, or reached from a kept index).
    Subject(Digest),
    /// An old untagged manifest: a kept index reaching it.
    Reached,
}

/// The state `kept_manifests` works on: every listed manifest starts kept, and goes when one
/// of its needs fails; a digest is present while a kept listed manifest has it or an edge
/// from a present index reaches it.
struct Keep<'l> {
    listed: &'l [Descriptor],
    needs: Vec<Vec<Need>>,
    kept: Vec<Result<(), &'static str>>,
    /// Kept listed manifests per digest.
    kept_listed: HashMap<Digest, usize>,
    /// Edges from present indexes per digest.
    reached: HashMap<Digest, usize>,
    /// Child edges of each present index (its own children, repeats included).
    children: HashMap<Digest, Vec<Descriptor>>,
    by_subject: HashMap<Digest, Vec<usize>>,
    by_digest: HashMap<Digest, Vec<usize>>,
}

impl Keep<'_> {
    fn present(&self, digest: &Digest) -> bool {
        self.kept_listed.get(digest).is_some_and(|n| *n > 0)
            || self.reached.get(digest).is_some_and(|n| *n > 0)
    }

    fn needs_met(&self, i: usize) -> bool {
        self.needs[i].iter().all(|need| match need {
            Need::Subject(s) => self.present(s),
            Need::Reached => self
                .reached
                .get(&self.listed[i].digest)
                .is_some_and(|n| *n > 0),
        })
    }
}

/// Decides, for each of `listed`, whether it stays (`Ok`) or goes (`Err` with the reason),
/// zot's way: an old untagged manifest goes unless a kept index reaches it; with
/// `deleteReferrers`, an old referrer goes once its subject is gone (a legacy cosign tag
/// names the subject of a manifest that has no `subject` field); a subject is not kept alive
/// by its referrers. Everything starts kept and what loses a need goes, cascading with counts
/// of what supports each digest (as removing step by step until nothing changes would, so
/// manifests that keep each other stay), with each manifest read and each edge followed a
/// bounded number of times: a chain of nested indexes or referrers costs its length, not its
/// length squared (issue 10: a 10,000-long chain held a sweep past 100 s).
fn kept_manifests(
    graph: &mut Graph<'_>,
    listed: &[Descriptor],
    policy: &Policy,
    settings: &GcConfig,
    now: SystemTime,
) -> Result<Vec<Result<(), &'static str>>, StoreError> {
    let mut keep = Keep::with_needs(graph, listed, policy, settings, now)?;
    keep.find_edges(graph)?;
    keep.drop_unmet();
    Ok(keep.kept)
}

impl<'l> Keep<'l> {
    /// What each listed manifest needs to be kept, under `policy`.
    fn with_needs(
        graph: &mut Graph<'_>,
        listed: &'l [Descriptor],
        policy: &Policy,
        settings: &GcConfig,
        now: SystemTime,
    ) -> Result<Keep<'l>, StoreError> {
        let retention = &settings.retention;
        let mut keep = Keep {
            listed,
            needs: Vec::with_capacity(listed.len()),
            kept: Vec::with_capacity(listed.len()),
            kept_listed: HashMap::new(),
            reached: HashMap::new(),
            children: HashMap::new(),
            by_subject: HashMap::new(),
            by_digest: HashMap::new(),
        };
        for (i, d) in listed.iter().enumerate() {
            let node = graph.node(d)?;
            let old = |delay| older_than(node.modified, now, delay);
            let mut needs = Vec::new();
            let subject = node.manifest.subject.as_ref().map(|s| s.digest.clone());
            if policy.delete_referrers {
                let referrer = match subject.clone() {
                    Some(s) => old(retention.delay).then_some(s),
                    None => d
                        .tag()
                        .and_then(legacy_subject)
                        .filter(|_| old(settings.delay)),
                };
                if let Some(s) = referrer {
                    keep.by_subject.entry(s.clone()).or_default().push(i);
                    needs.push(Need::Subject(s));
                }
            }
            if policy.delete_untagged
                && d.tag().is_none()
                && subject.is_none()
                && old(retention.delay)
            {
                needs.push(Need::Reached);
            }
            keep.needs.push(needs);
            keep.kept.push(Ok(()));
            keep.by_digest.entry(d.digest.clone()).or_default().push(i);
            *keep.kept_listed.entry(d.digest.clone()).or_default() += 1;
        }
        Ok(keep)
    }

    /// Edges from every present digest, found once each.
    fn find_edges(&mut self, graph: &mut Graph<'_>) -> Result<(), StoreError> {
        let mut stack: Vec<(Descriptor, bool)> =
            self.listed.iter().map(|d| (d.clone(), true)).collect();
        while let Some((d, is_listed)) = stack.pop() {
            if self.children.contains_key(&d.digest) || !media_type::is_manifest(&d.media_type) {
                continue;
            }
            let node = if is_listed {
                Some(graph.node(&d)?)
            } else {
                graph.child(&d)?
            };
            let children: Vec<Descriptor> = match node {
                Some(n) if n.manifest.kind == ManifestKind::Index => n.manifest.children.clone(),
                _ => Vec::new(),
            };
            for child in &children {
                *self.reached.entry(child.digest.clone()).or_default() += 1;
                stack.push((child.clone(), false));
            }
            self.children.insert(d.digest.clone(), children);
        }
        Ok(())
    }

    /// Drops every listed manifest whose needs fail; what it supported is checked again.
    fn drop_unmet(&mut self) {
        let mut check: Vec<usize> = (0..self.listed.len()).collect();
        let mut gone: Vec<Digest> = Vec::new();
        while !check.is_empty() || !gone.is_empty() {
            while let Some(i) = check.pop() {
                if self.kept[i].is_err() || self.needs_met(i) {
                    continue;
                }
                let subject_gone = self.needs[i]
                    .iter()
                    .any(|n| matches!(n, Need::Subject(s) if !self.present(s)));
                self.kept[i] = Err(if subject_gone {
                    "its subject is gone"
                } else {
                    "untagged"
                });
                let digest = &self.listed[i].digest;
                let count = self.kept_listed.get_mut(digest).expect("counted above");
                *count -= 1;
                if !self.present(digest) {
                    gone.push(digest.clone());
                }
            }
            // A digest no longer present: its referrers lose their subject, and its children an
            // edge each (those left without any are no longer reached, nor, unless listed and
            // kept, present).
            while let Some(digest) = gone.pop() {
                check.extend(self.by_subject.get(&digest).into_iter().flatten());
                for child in self.children.get(&digest).cloned().unwrap_or_default() {
                    let edges = self.reached.get_mut(&child.digest).expect("counted above");
                    *edges -= 1;
                    if *edges == 0 {
                        check.extend(self.by_digest.get(&child.digest).into_iter().flatten());
                        if !self.present(&child.digest) {
                            gone.push(child.digest.clone());
                        }
                    }
                }
            }
        }
    }
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
                let dropped = descriptor_set(&removals);
                Ok(index.retain(|d| !dropped.contains(&(&d.digest, d.tag()))))
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
        // The listing's times are enough to plan: deleting checks each time again under the
        // blob's lock.
        for file in self.blob_files(repo)? {
            if !plan.marked.contains(&file.digest) && older_than(file.modified, now, delay) {
                plan.collected.blobs.push((file.digest, file.size));
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
                .manifests()
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
                // Judged under the blob's lock, which a push or mount refreshing the same
                // file holds: one that landed after planning keeps it.
                let still_old = |m: &ObjectMeta| older_than(m.modified, now, delay);
                match self.blob_delete_locked(repo, digest, still_old) {
                    Ok(true) => plan.collected.blobs.push((digest.clone(), *size)),
                    Ok(false) | Err(StoreError::BlobUnknown(_)) => {}
                    // Placeholders may name it that the cache cannot list now: kept until a
                    // later sweep.
                    Err(e @ StoreError::DedupeUnavailable(_)) => {
                        tracing::info!(repository = %repo, %digest, "gc: kept for now: {e}");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Deletes `repo` when nothing is left in it: no manifest, blob, upload or nested
    /// repository. Checked and done under the repository lock. Anything else in it (a file
    /// that is not a blob, a temporary file of a live write) keeps it, quietly: the sweep
    /// removes stale temporary files first (`leftovers`), and the rest is not berth's to
    /// remove (issue 10: such a file failed every sweep with "Directory not empty").
    fn remove_if_empty(&self, repo: &RepoName) -> Result<bool, StoreError> {
        // Most repositories list something: say so without touching any lock. One that a
        // write is using now is not empty for long either: skipped, never waited for, since
        // writers waiting behind a waiting remover would stall (std's RwLock queues readers
        // behind a waiting writer) while one of them waits on a long dedupe decision.
        match self.read_index(repo) {
            Ok(index) if !index.manifests().is_empty() => return Ok(false),
            Ok(_) => {}
            Err(StoreError::NameUnknown(_)) => return Ok(false),
            Err(e) => return Err(e),
        }
        let Some(_alone) = self.presence.try_write(repo) else {
            return Ok(false);
        };
        let _guard = self.repo_locks.lock(repo);
        let index = match self.read_index(repo) {
            Ok(index) => index,
            Err(StoreError::NameUnknown(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        if !index.manifests().is_empty() || !self.holds_only_layout(repo)? {
            return Ok(false);
        }
        // Every write into a repository shares its presence (`Store::in_repo`), so nothing
        // lands here meanwhile but what `remove_layout` allows for.
        self.remove_layout(repo)
    }
}

/// Decides what leaves `index`: tags retention drops, then (until nothing changes) referrers
/// whose subject is gone and untagged manifests nothing references. Marks what stays.
fn plan_index(
    graph: &mut Graph<'_>,
    index: &Listing,
    policy: &Policy,
    settings: &GcConfig,
    times: &TagTimes,
    now: SystemTime,
) -> Result<Plan, StoreError> {
    let mut listed: Vec<Descriptor> = index.manifests().to_vec();
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
    let dropped = descriptor_set(&removals);
    listed.retain(|d| !dropped.contains(&(&d.digest, d.tag())));
    let kept = kept_manifests(graph, &listed, policy, settings, now)?;
    let mut kept_listed = Vec::with_capacity(listed.len());
    let mut reported: HashSet<Digest> = HashSet::new();
    for (d, keep) in listed.into_iter().zip(kept) {
        match keep {
            Ok(()) => kept_listed.push(d),
            Err(reason) => {
                if reported.insert(d.digest.clone()) {
                    collected.manifests.push((d.digest.clone(), reason));
                }
                removals.push((d.digest.clone(), d.tag().map(str::to_string)));
            }
        }
    }
    let listed = kept_listed;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// The `keepTags` rules of a config's first retention policy.
    fn rules(keep_tags: serde_json::Value) -> Vec<KeepTags> {
        let config = serde_json::json!({ "storage": {
            "rootDirectory": "/retention", "gc": true,
            "retention": { "policies": [{ "repositories": ["**"], "keepTags": keep_tags }] },
        }});
        let mut config = Config::parse(&config.to_string(), "retention test").unwrap();
        config
            .storage
            .default
            .gc
            .retention
            .policies
            .remove(0)
            .keep_tags
    }

    fn at(minutes_ago: u64) -> SystemTime {
        SystemTime::now() - Duration::from_secs(60 * minutes_ago)
    }

    /// Tags, each of a manifest of its own made the given minutes ago.
    fn tags(made: &[(&str, u64)]) -> Vec<(String, Digest, SystemTime)> {
        made.iter()
            .map(|(tag, minutes_ago)| {
                let digest = Digest::sha256_of(tag.as_bytes());
                (tag.to_string(), digest, at(*minutes_ago))
            })
            .collect()
    }

    fn kept(
        keep: &[KeepTags],
        tags: &[(String, Digest, SystemTime)],
        times: &TagTimes,
    ) -> Vec<String> {
        let mut kept: Vec<String> = retained_tags(keep, tags, times, SystemTime::now())
            .into_iter()
            .collect();
        kept.sort();
        kept
    }

    /// Each tag is judged by the first rule whose patterns match it; tags no rule selects go.
    #[test]
    fn the_first_matching_rule_judges_a_tag() {
        let keep = rules(serde_json::json!([
            { "patterns": ["^v"], "mostRecentlyPushedCount": 1 },
            { "patterns": [".*"] },
        ]));
        let made = tags(&[("v1", 30), ("v2", 20), ("latest", 10)]);
        // v1 is selected by the first rule and loses there; the second rule never sees it.
        assert_eq!(kept(&keep, &made, &TagTimes::default()), ["latest", "v2"]);
        let only_v = rules(serde_json::json!([{ "patterns": ["^v"] }]));
        assert_eq!(kept(&only_v, &made, &TagTimes::default()), ["v1", "v2"]);
    }

    /// Within a rule the counts and the ages are ORed; push times fall back to the manifest's
    /// time, and a tag never pulled counts as pulled at the epoch.
    #[test]
    fn counts_and_ages_within_a_rule_are_ored() {
        let keep = rules(serde_json::json!([{
            "patterns": [".*"],
            "mostRecentlyPulledCount": 1,
            "pushedWithin": "1h",
        }]));
        let made = tags(&[("old-pulled", 600), ("old", 500), ("new", 5)]);
        let mut times = TagTimes::default();
        times.pulled.insert(made[0].1.clone(), at(1));
        // `old` was pushed again lately, whatever its manifest's time.
        times.pushed.insert("old".to_string(), at(2));
        assert_eq!(kept(&keep, &made, &times), ["new", "old", "old-pulled"]);
        times.pushed.clear();
        assert_eq!(kept(&keep, &made, &times), ["new", "old-pulled"]);
        // Never pulled: all at the epoch, so the count keeps one of them, and the push age
        // keeps `new`.
        times.pulled.clear();
        let never_pulled = kept(&keep, &made, &times);
        assert_eq!(never_pulled.len(), 2, "{never_pulled:?}");
        assert!(never_pulled.contains(&"new".to_string()));
    }
}
