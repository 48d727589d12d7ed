//! The OCI Image Layout on disk, seen from outside berth: writing a layout by hand (a layout
//! "made elsewhere"), reading a repository's `index.json`, and auditing a whole root after a
//! hostile test or a crash (every blob file hashes to its name, every `index.json` parses).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::oci::{Image, REF_NAME, matches_digest, sha256};

/// `<dir>/blobs/<alg>/<hex>` for a digest `alg:hex`.
pub fn blob_path(dir: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').expect("digest has an algorithm");
    dir.join("blobs").join(alg).join(hex)
}

/// Writes an image as an OCI layout at `dir` (created if needed), tagged `tag`, the way
/// skopeo's or oras's `oci:` transport would.
pub fn write_layout(dir: &Path, tag: &str, image: &Image) {
    for blob in image.blobs().into_iter().chain([image.manifest.as_slice()]) {
        let path = blob_path(dir, &sha256(blob));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, blob).unwrap();
    }
    let mut descriptor = image.descriptor();
    descriptor["annotations"] = json!({ REF_NAME: tag });
    let index = json!({ "schemaVersion": 2, "mediaType": super::oci::OCI_INDEX, "manifests": [descriptor] });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

/// A repository's `index.json`, parsed.
pub fn read_index(repo_dir: &Path) -> Value {
    let path = repo_dir.join("index.json");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()))
}

/// `(tag, digest)` for every tagged descriptor of an `index.json`.
pub fn tags_of(index: &Value) -> Vec<(String, String)> {
    index["manifests"]
        .as_array()
        .expect("index.json has a manifests array")
        .iter()
        .filter_map(|d| {
            let tag = d["annotations"][REF_NAME].as_str()?;
            Some((tag.to_string(), d["digest"].as_str()?.to_string()))
        })
        .collect()
}

/// What an audit of a root found.
#[derive(Debug, Default)]
pub struct Audit {
    pub blob_files: usize,
    pub index_files: usize,
    pub problems: Vec<String>,
}

/// Walks a whole root: every file at `.../blobs/<alg>/<hex>` (outside `.uploads/`) must hash
/// to its name, so no partial or mismatched blob is visible; every `index.json` must parse
/// with a `manifests` array. Symlinks are not followed.
pub fn audit(root: &Path) -> Audit {
    let mut audit = Audit::default();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                if entry.file_name() != ".uploads" {
                    stack.push(path);
                }
            } else if kind.is_file() {
                check_file(&path, &mut audit);
            }
        }
    }
    audit
}

fn check_file(path: &Path, audit: &mut Audit) {
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    let parent = path.parent().unwrap();
    let alg = parent.file_name().map(|a| a.to_string_lossy().to_string());
    let in_blobs = parent
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|b| b == "blobs");
    if in_blobs {
        let digest = format!("{}:{name}", alg.unwrap_or_default());
        audit.blob_files += 1;
        let bytes = std::fs::read(path).unwrap_or_default();
        if !matches_digest(&digest, &bytes) {
            audit.problems.push(format!(
                "{}: {} bytes do not hash to its name",
                path.display(),
                bytes.len()
            ));
        }
    } else if name == "index.json" {
        audit.index_files += 1;
        let parsed = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
        if !parsed.is_some_and(|v| v["manifests"].is_array()) {
            audit
                .problems
                .push(format!("{}: not a valid index.json", path.display()));
        }
    }
}

/// Panics with every problem an audit of `root` found.
#[track_caller]
pub fn assert_sound(root: &Path) -> Audit {
    let audit = audit(root);
    assert!(
        audit.problems.is_empty(),
        "store is not sound:\n{}",
        audit.problems.join("\n")
    );
    audit
}

/// Every path under `dir`, relative to it: to prove a hostile request created nothing.
pub fn tree(dir: &Path) -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current).into_iter().flatten().flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path.clone());
            }
            found.insert(path.strip_prefix(dir).unwrap().to_path_buf());
        }
    }
    found
}

/// What the files of a root occupy, berth's own `.berth/` directory left out.
#[derive(Debug, Default)]
pub struct DiskUsage {
    /// Names of files under a `blobs/<alg>/` directory.
    pub blob_files: usize,
    /// Distinct inodes among them: the copies a blob really has.
    pub blob_inodes: usize,
    /// Allocated bytes (`st_blocks`) of every file, each inode counted once.
    pub allocated: u64,
}

/// Measures a root: hard links share an inode and its blocks, so linked copies count once.
pub fn disk_usage(root: &Path) -> DiskUsage {
    use std::os::unix::fs::MetadataExt;
    let mut usage = DiskUsage::default();
    let mut seen = BTreeSet::new();
    let mut blob_inodes = BTreeSet::new();
    for path in tree(root) {
        if path.starts_with(".berth") {
            continue;
        }
        let full = root.join(&path);
        let meta = std::fs::symlink_metadata(&full).unwrap();
        if !meta.is_file() {
            continue;
        }
        let inode = (meta.dev(), meta.ino());
        if path
            .parent()
            .and_then(Path::parent)
            .and_then(Path::file_name)
            == Some("blobs".as_ref())
        {
            usage.blob_files += 1;
            blob_inodes.insert(inode);
        }
        if seen.insert(inode) {
            usage.allocated += meta.blocks() * 512;
        }
    }
    usage.blob_inodes = blob_inodes.len();
    usage
}

/// The inode of a file, to tell hard links (same inode) from copies.
pub fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .ino()
}
