//! `storage.subPaths` (issue 4, point 4): repositories routed by their leading segments land
//! in their own roots with their own settings, dedupe and mounts stay inside one store, the
//! catalog merges every store, and roots that would share files are refused at start-up.
//! skopeo through every store is in `skopeo`, which uses `Stores` from here.

use std::path::{Path, PathBuf};

use serde_json::json;
use tempfile::TempDir;

use crate::util::http::paginate;
use crate::util::layout::{blob_path, inode, read_index, tags_of};
use crate::util::oci::*;
use crate::util::server::{self, Berth, Settings, temp_dir};

/// Three stores in one temporary directory: the default one, `/a` (dedupe off, commit on)
/// and the two-segment route `/b/c` (dedupe on).
pub struct Stores {
    _dir: TempDir,
    pub default: PathBuf,
    pub a: PathBuf,
    pub bc: PathBuf,
}

impl Stores {
    pub fn new() -> Stores {
        let dir = temp_dir();
        Stores {
            default: dir.path().join("default"),
            a: dir.path().join("a-store"),
            bc: dir.path().join("bc-store"),
            _dir: dir,
        }
    }

    /// The config for these stores on top of `settings`.
    pub fn settings(&self, mut settings: Settings) -> Settings {
        settings.storage.insert(
            "subPaths".into(),
            json!({
                "/a": { "rootDirectory": self.a, "dedupe": false, "commit": true },
                "/b/c": { "rootDirectory": self.bc, "dedupe": true },
            }),
        );
        settings
    }

    /// Where `repo` must land, as the routing rules say.
    pub fn root_of(&self, repo: &str) -> &Path {
        let segments: Vec<&str> = repo.split('/').collect();
        match segments.as_slice() {
            ["a", _, ..] => &self.a,
            ["b", "c", _, ..] => &self.bc,
            _ => &self.default,
        }
    }

    pub fn roots(&self) -> [&Path; 3] {
        [&self.default, &self.a, &self.bc]
    }
}

/// Repositories for each store, including the ones zot's routing keeps in the default store.
const REPOS: [&str; 8] = [
    "a/one", "a/two", "a", "b/c/one", "b/c/two", "b/c", "b/d", "top",
];

#[test]
fn repositories_land_in_their_store_with_its_settings() {
    let stores = Stores::new();
    let berth = Berth::start_on(&stores.default, stores.settings(Settings::default()));
    let client = berth.client();
    let image = Image::oci(90, &[30_000, 8_000]);
    for repo in REPOS {
        push_image(&client, repo, "v1", &image);
    }
    for repo in REPOS {
        assert_image(&client, repo, "v1", &image);
        let home = stores.root_of(repo);
        assert_eq!(
            tags_of(&read_index(&home.join(repo))),
            vec![("v1".to_string(), image.digest())],
            "{repo} is not in {}",
            home.display()
        );
        for other in stores.roots().into_iter().filter(|r| *r != home) {
            assert!(
                !other.join(repo).join("index.json").exists(),
                "{repo} also written under {}",
                other.display()
            );
        }
    }

    // Each store's own dedupe setting: off in /a, on in /b/c and the default store; never
    // across stores.
    let layer = sha256(&image.layers[0]);
    let ino = |repo: &str| inode(&blob_path(&stores.root_of(repo).join(repo), &layer));
    assert_ne!(ino("a/one"), ino("a/two"), "/a has dedupe off");
    assert_eq!(ino("b/c/one"), ino("b/c/two"), "/b/c has dedupe on");
    assert_eq!(ino("b/d"), ino("top"), "the default store has dedupe on");
    assert_eq!(ino("a"), ino("top"), "`a` alone is in the default store");
    assert_ne!(ino("b/c/one"), ino("top"), "dedupe crossed stores");
    let logs = berth.logs();
    for (key, commit, dedupe) in [
        ("storage", false, true),
        ("storage.subPaths./a", true, false),
        ("storage.subPaths./b/c", false, true),
    ] {
        let line = format!("store=\"{key}\"");
        let ready = logs
            .lines()
            .find(|l| l.contains("storage ready") && l.contains(&line))
            .unwrap_or_else(|| panic!("no `storage ready` line for {key}:\n{logs}"));
        assert!(
            ready.contains(&format!("commit={commit}"))
                && ready.contains(&format!("dedupe={dedupe}")),
            "{ready}"
        );
    }

    // A mount from another store is not a mount: the spec's fallback is an upload session.
    let started = client
        .request(
            "POST",
            &format!("/v2/b/c/three/blobs/uploads/?mount={layer}&from=a/one"),
        )
        .send()
        .expect(202);
    assert!(started.header("Location").is_some(), "{started}");
    client
        .head(&format!("/v2/b/c/three/blobs/{layer}"))
        .expect(404);
    // Within a store it mounts, by a link where dedupe is on.
    client
        .request(
            "POST",
            &format!("/v2/b/c/three/blobs/uploads/?mount={layer}&from=b/c/one"),
        )
        .send()
        .expect(201);
    assert_eq!(ino("b/c/three"), ino("b/c/one"));

    let mut all: Vec<String> = REPOS.iter().map(|r| r.to_string()).collect();
    all.push("b/c/three".to_string());
    all.sort();
    let catalog = client.get("/v2/_catalog").expect(200).json();
    assert_eq!(catalog["repositories"], json!(all));
    let (paged, pages) = paginate(&client, "/v2/_catalog?n=2", "repositories");
    assert_eq!(paged, all);
    assert_eq!(pages, all.len().div_ceil(2));
    let after = client
        .get("/v2/_catalog?n=100&last=b/c/one")
        .expect(200)
        .json();
    let rest: Vec<&String> = all.iter().filter(|r| r.as_str() > "b/c/one").collect();
    assert_eq!(after["repositories"], json!(rest));
}

/// Runs `berth serve` on a config that must be refused, and returns its stderr.
fn refused_at_start(default: &Path, sub_paths: serde_json::Value) -> String {
    let config = json!({
        "storage": { "rootDirectory": default, "subPaths": sub_paths },
        "http": { "address": "127.0.0.1", "port": "0" },
    });
    let stderr = server::refused_at_start(&config, &[]);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    stderr
}

#[test]
fn identical_or_nested_roots_are_refused_at_start() {
    let dir = temp_dir();
    let default = dir.path().join("default");
    let cases = [
        // The same directory, spelled differently.
        (
            json!({ "/a": { "rootDirectory": dir.path().join("default/../default") } }),
            "is the same directory as",
        ),
        (
            json!({ "/a": { "rootDirectory": default.join("a") } }),
            "is nested with",
        ),
        (
            json!({ "/a": { "rootDirectory": dir.path().join("x") },
                    "/b": { "rootDirectory": dir.path().join("x/y") } }),
            "is nested with",
        ),
    ];
    for (sub_paths, relation) in cases {
        let stderr = refused_at_start(&default, sub_paths.clone());
        assert!(stderr.contains(relation), "{sub_paths}: {stderr}");
        assert!(
            stderr.contains("storage.subPaths./"),
            "{sub_paths}: the error names no key: {stderr}"
        );
    }
    // Nothing was stored in the roots a refused start named.
    assert!(!default.join(".berth").exists());
}
