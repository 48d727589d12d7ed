//! What a killed berth leaves behind and nothing else would ever remove (issue 10): the
//! driver's temporary files of writes cut short (`Driver::scratch_files`: at the root, in a
//! repository's directory, its `blobs/<alg>/` and its `.uploads/`), and the remains of a
//! repository whose creation or removal was cut short: a directory with `oci-layout` but no
//! `index.json`, holding nothing but empty layout directories.
//!
//! A temporary file a live write is filling looks just like one a kill left, so each is judged
//! by time (`Stale`): at start-up, written before this process opened the store; in a sweep,
//! untouched for the store's `gcDelay` (a write keeps its file's time fresh). The collector
//! removes leftovers at start-up (gc on or off: they are berth's own files, never content) and
//! in every sweep; scrub reports them. A sweep also aborts the driver's incomplete multipart
//! uploads started at least `gcDelay` ago (`Driver::abort_stale_uploads`: an object store's
//! parts of an upload whose abort failed or whose process was killed; S3 lists them with
//! their start time, so they are judged by age only and never reported without removal). Also here: whether a repository holds nothing but its
//! layout, and its removal, shared by the collector's `remove_if_empty` and the remains.

use super::driver::{DriverError, ScratchFile, StoragePath};
use super::{Store, StoreError, StoreWalk, layout};
use crate::oci::RepoName;
use serde::Serialize;
use std::time::{Duration, SystemTime};

/// Which temporary files count as left over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stale {
    /// Last written before this process opened the store: at start-up, while berth already
    /// serves, no write of this process can be using them.
    BeforeOpen,
    /// Untouched for this long (the store's `gcDelay`).
    OlderThan(Duration),
    /// Either of the above (what scrub reports).
    Either(Duration),
}

impl Stale {
    fn judge(self, file: &ScratchFile, now: SystemTime) -> bool {
        let old = |delay| super::gc::older_than(file.meta.modified, now, delay);
        match self {
            Stale::BeforeOpen => file.before_open,
            Stale::OlderThan(delay) => old(delay),
            Stale::Either(delay) => file.before_open || old(delay),
        }
    }
}

/// A leftover temporary file.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Leftover {
    /// Its path under the store's root.
    pub path: String,
    /// Its size.
    pub bytes: u64,
}

/// The leftovers of one store that were found, and removed unless only reported.
#[derive(Debug, Default, Clone)]
pub struct Leftovers {
    /// Temporary files.
    pub files: Vec<Leftover>,
    /// Directories that were repositories (named by repository), with what was left in them.
    pub remnants: Vec<String>,
    /// Incomplete multipart uploads aborted (a sweep only).
    pub multipart_uploads: usize,
    /// Directories that could not be searched or entries that could not be removed, with why.
    pub failed: Vec<(String, String)>,
}

impl Leftovers {
    /// Bytes of the temporary files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

impl Store {
    /// The leftovers that `stale` names: at the root, in the repositories and in the remains
    /// `walk` found; removed unless `report_only`.
    pub(super) fn leftovers(&self, walk: &StoreWalk, stale: Stale, report_only: bool) -> Leftovers {
        let now = SystemTime::now();
        let mut found = Leftovers::default();
        if let (Stale::OlderThan(delay), false) = (stale, report_only) {
            match self.driver.abort_stale_uploads(delay) {
                Ok(n) => found.multipart_uploads = n,
                Err(e) => found
                    .failed
                    .push(("multipart uploads".into(), e.to_string())),
            }
        }
        self.scratch_in(None, stale, now, report_only, &mut found);
        for name in &walk.repos {
            let Ok(repo) = name.parse::<RepoName>() else {
                continue;
            };
            match self.layout_dirs(&repo) {
                Ok(dirs) => {
                    for dir in &dirs {
                        self.scratch_in(Some(dir), stale, now, report_only, &mut found);
                    }
                }
                Err(e) => found.failed.push((name.clone(), e.to_string())),
            }
        }
        for repo in &walk.remnants {
            if let Err(e) = self.remove_remnant(repo, stale, now, report_only, &mut found) {
                found.failed.push((repo.to_string(), e.to_string()));
            }
        }
        found
    }

    /// The directories of `repo` where writes put temporary files: its own, each
    /// `blobs/<alg>/` and `.uploads/`.
    fn layout_dirs(&self, repo: &RepoName) -> Result<Vec<StoragePath>, StoreError> {
        let blobs = layout::blobs_root(repo)?;
        let mut dirs = vec![layout::repo_dir(repo)?, layout::uploads_dir(repo)?];
        for algorithm in self.driver.list(Some(&blobs))? {
            // A name that cannot be a path component holds nothing berth wrote.
            if let Ok(d) = blobs.join(&algorithm.name) {
                dirs.push(d);
            }
        }
        Ok(dirs)
    }

    /// Adds the stale temporary files directly in `dir` to `found`, removing them unless
    /// `report_only`.
    fn scratch_in(
        &self,
        dir: Option<&StoragePath>,
        stale: Stale,
        now: SystemTime,
        report_only: bool,
        found: &mut Leftovers,
    ) {
        let files = match self.driver.scratch_files(dir) {
            Ok(files) => files,
            Err(e) => {
                let shown = dir.map_or_else(|| "/".to_string(), StoragePath::to_string);
                found.failed.push((shown, e.to_string()));
                return;
            }
        };
        for file in files.into_iter().filter(|f| stale.judge(f, now)) {
            if !report_only {
                match self.driver.delete(&file.path) {
                    Ok(()) => {}
                    // Renamed into place or removed meanwhile: not a leftover after all.
                    Err(DriverError::NotFound { .. }) => continue,
                    Err(e) => {
                        found.failed.push((file.path.to_string(), e.to_string()));
                        continue;
                    }
                }
            }
            found.files.push(Leftover {
                path: file.path.to_string(),
                bytes: file.meta.size,
            });
        }
    }

    /// Removes the remains of `repo` (a directory with `oci-layout` and no `index.json`) when
    /// nothing but empty layout directories and stale temporary files are left in it, holding
    /// its presence alone: every write that makes it a repository again shares it.
    fn remove_remnant(
        &self,
        repo: &RepoName,
        stale: Stale,
        now: SystemTime,
        report_only: bool,
        found: &mut Leftovers,
    ) -> Result<(), StoreError> {
        // Skipped while a write uses it (see `remove_if_empty`); the next sweep looks again.
        let Some(_alone) = self.presence.try_write(repo) else {
            return Ok(());
        };
        let _guard = self.repo_locks.lock(repo);
        if self.repo_exists(repo)? {
            return Ok(());
        }
        let before = found.files.len();
        for dir in self.layout_dirs(repo)? {
            self.scratch_in(Some(&dir), stale, now, report_only, found);
        }
        let removed = if report_only {
            // What the removal would find: the files just reported are still there.
            let reported: Vec<String> = found.files[before..]
                .iter()
                .map(|f| f.path.clone())
                .collect();
            self.holds_only_layout_but(repo, &reported)?
        } else {
            self.holds_only_layout(repo)? && self.remove_layout(repo)?
        };
        if removed {
            found.remnants.push(repo.to_string());
        }
        Ok(())
    }

    /// Whether `repo`'s directory holds nothing but `oci-layout`, `index.json`, empty
    /// `blobs/<alg>/` directories and an empty `.uploads/`. Anything else keeps it: a nested
    /// repository, a blob, an upload session, a file that is not a blob, a temporary file of
    /// a live write (or of a dead one, until it is stale).
    pub(super) fn holds_only_layout(&self, repo: &RepoName) -> Result<bool, StoreError> {
        self.holds_only_layout_but(repo, &[])
    }

    /// `holds_only_layout`, not counting the files at `ignored`.
    fn holds_only_layout_but(
        &self,
        repo: &RepoName,
        ignored: &[String],
    ) -> Result<bool, StoreError> {
        let dir = layout::repo_dir(repo)?;
        let empty = |d: &StoragePath| -> Result<bool, StoreError> {
            let entries = self.driver.list(Some(d))?;
            Ok(entries.iter().all(|e| {
                d.join(&e.name)
                    .is_ok_and(|p| ignored.iter().any(|i| i == p.as_str()))
            }))
        };
        for entry in self.driver.list(Some(&dir))? {
            // A name that cannot be a path component is not berth's: it keeps the directory.
            let Ok(path) = dir.join(&entry.name) else {
                return Ok(false);
            };
            let fine = match entry.name.as_str() {
                layout::OCI_LAYOUT | layout::INDEX_JSON => true,
                layout::UPLOADS => entry.is_prefix() && empty(&path)?,
                layout::BLOBS => {
                    let mut fine = entry.is_prefix();
                    for algorithm in self.driver.list(Some(&path))? {
                        let Ok(sub) = path.join(&algorithm.name) else {
                            return Ok(false);
                        };
                        fine = fine && algorithm.is_prefix() && empty(&sub)?;
                    }
                    fine
                }
                _ => ignored.iter().any(|i| i == path.as_str()),
            };
            if !fine {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Removes `repo`, which `holds_only_layout` found empty under the repository lock the
    /// caller holds, and then the parent directories that only held it. Returns false,
    /// having removed no layout file, when something appeared meanwhile in `blobs/` or
    /// `.uploads/` (a mount copies into `.uploads/` outside the lock).
    ///
    /// `index.json` goes before `oci-layout`: once it is gone this is no repository
    /// (`Store::repo_exists`), and a kill before the rest is done leaves remains that the
    /// next sweep removes, never a repository missing its marker.
    pub(super) fn remove_layout(&self, repo: &RepoName) -> Result<bool, StoreError> {
        let dir = layout::repo_dir(repo)?;
        let blobs = layout::blobs_root(repo)?;
        let mut empty_dirs = Vec::new();
        for algorithm in self.driver.list(Some(&blobs))? {
            empty_dirs.push(blobs.join(&algorithm.name)?);
        }
        empty_dirs.push(blobs);
        empty_dirs.push(layout::uploads_dir(repo)?);
        for d in &empty_dirs {
            match self.driver.delete_dir(d) {
                Ok(()) => {}
                Err(e) if is_not_empty(&e) => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
        for file in [layout::index_json(repo)?, layout::oci_layout(repo)?] {
            match self.driver.delete(&file) {
                Ok(()) | Err(DriverError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.indexes.forget(repo);
        self.catalog_index.changed(repo.as_str(), false);
        match self.driver.delete_dir(&dir) {
            Ok(()) => {}
            // Written meanwhile by a write outside this lock (a mount's copy, a nested
            // repository under its own lock): the directory stays for it, and the write makes
            // it a repository again (`Store::in_repo`). The repository was removed all the same.
            Err(e) if is_not_empty(&e) => return Ok(true),
            Err(e) => return Err(e.into()),
        }
        // Parent directories that only held this repository go too (not repositories). One
        // that is not empty (a repository, or a sibling pushed meanwhile under its own lock)
        // stays, and so do its parents: that is the expected end of the climb, not a failure.
        let mut components: Vec<&str> = repo.components().collect();
        components.pop();
        while !components.is_empty() {
            let parent = StoragePath::from_components(components.iter().copied())?;
            if self.driver.delete_dir(&parent).is_err() {
                break;
            }
            components.pop();
        }
        Ok(true)
    }
}

/// Whether removing a directory failed because something is in it (rmdir(2) says ENOTEMPTY,
/// or EEXIST on some filesystems).
fn is_not_empty(e: &DriverError) -> bool {
    matches!(
        e,
        DriverError::Io { source, .. } if matches!(
            source.kind(),
            std::io::ErrorKind::DirectoryNotEmpty | std::io::ErrorKind::AlreadyExists
        )
    )
}
