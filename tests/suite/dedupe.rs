//! Inline deduplication and the start-up pass (issue 4, points 1 to 3; past the file system's
//! link limit, issue 11), measured on disk: copies are counted as distinct inodes and space
//! as allocated blocks, never as file sizes. Losing the cache runs on S3 too (issue 13), where
//! copies are placeholders naming the object that holds the bytes (DESIGN decision 9).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use serde_json::json;

use crate::util::http::Client;
use crate::util::layout::{blob_path, disk_usage, inode, write_layout};
use crate::util::oci::*;
use crate::util::server::{Berth, Settings, temp_dir};
use crate::util::store::{Backend, Store, blob};

/// A debug build walks and links a few thousand files in about a second; the margin is for CI.
const PASS_TIMEOUT: Duration = Duration::from_secs(120);

const PASS_DONE: &str = "dedupe pass: done";

fn with_dedupe(dedupe: bool) -> Settings {
    let mut settings = Settings::default();
    settings.storage.insert("dedupe".into(), json!(dedupe));
    settings
}

/// The file of `digest` in `repo` under `root`.
fn blob_file(root: &Path, repo: &str, digest: &str) -> std::path::PathBuf {
    blob_path(&root.join(repo), digest)
}

/// Starts a mount of `digest` into `repo`, from `from` when given.
fn mount(
    client: &Client,
    repo: &str,
    digest: &str,
    from: Option<&str>,
) -> crate::util::http::Response {
    let query = match from {
        Some(from) => format!("mount={digest}&from={from}"),
        None => format!("mount={digest}"),
    };
    client
        .request("POST", &format!("/v2/{repo}/blobs/uploads/?{query}"))
        .send()
}

#[test]
fn the_same_blobs_in_twenty_repositories_occupy_the_disk_once() {
    const REPOS: usize = 20;
    const BLOBS: usize = 100;
    let berth = Berth::start();
    let client = berth.client();
    let blobs: Vec<Vec<u8>> = (0..BLOBS)
        .map(|i| random_bytes(4000 + i as u64, 4096 + i * 613))
        .collect();
    let digests: Vec<String> = blobs.iter().map(|b| sha256(b)).collect();
    let repos: Vec<String> = (0..REPOS).map(|r| format!("dedupe/r{r:02}")).collect();

    // Four clients at once, each walking its own repositories in the same blob order, so one
    // digest races into several repositories.
    std::thread::scope(|s| {
        for share in repos.chunks(REPOS / 4) {
            let (client, blobs) = (&client, &blobs);
            s.spawn(move || {
                for repo in share {
                    for blob in blobs {
                        push_blob(client, repo, blob);
                    }
                }
            });
        }
    });

    let one_copy: u64 = blobs.iter().map(|b| b.len() as u64).sum();
    let usage = disk_usage(berth.root());
    assert_eq!(usage.blob_files, REPOS * BLOBS, "{usage:?}");
    assert_eq!(usage.blob_inodes, BLOBS, "one inode per blob: {usage:?}");
    // Twenty copies would allocate twenty times one copy; the slack is block rounding and
    // each repository's `index.json` and `oci-layout`.
    assert!(
        usage.allocated < 2 * one_copy,
        "allocated {} bytes for {one_copy} bytes of distinct blobs: {usage:?}",
        usage.allocated
    );
    for repo in &repos {
        for (blob, digest) in blobs.iter().zip(&digests) {
            assert_eq!(&get_blob(&client, repo, digest), blob, "{repo}@{digest}");
        }
    }

    let (deleted, kept) = repos.split_at(REPOS - 1);
    let kept = &kept[0];
    for repo in deleted {
        for digest in &digests {
            client
                .delete(&format!("/v2/{repo}/blobs/{digest}"))
                .expect(202);
        }
    }
    for repo in deleted {
        for digest in &digests {
            // Twice: a HEAD must not bring a deleted link back from the cache (zot #1733).
            for _ in 0..2 {
                client
                    .head(&format!("/v2/{repo}/blobs/{digest}"))
                    .expect(404);
            }
            client
                .get(&format!("/v2/{repo}/blobs/{digest}"))
                .expect_error(404, "BLOB_UNKNOWN");
        }
    }
    for (blob, digest) in blobs.iter().zip(&digests) {
        assert_eq!(&get_blob(&client, kept, digest), blob, "{kept}@{digest}");
        let meta = std::fs::metadata(blob_file(berth.root(), kept, digest)).unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::nlink(&meta),
            1,
            "{kept}@{digest}: the deleted repositories' links are gone"
        );
    }
    let usage = disk_usage(berth.root());
    assert_eq!((usage.blob_files, usage.blob_inodes), (BLOBS, BLOBS));

    // The cache followed the deletes: a new push and both kinds of mount link to the copy
    // that is left.
    let survivor = |digest: &str| inode(&blob_file(berth.root(), kept, digest));
    // Linking refreshes the shared mtime, so garbage collection's grace delay protects a
    // link that no manifest references yet.
    let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
    for digest in &digests[..2] {
        std::fs::File::options()
            .write(true)
            .open(blob_file(berth.root(), kept, digest))
            .and_then(|f| f.set_modified(two_hours_ago))
            .unwrap();
    }
    let refreshed = |digest: &str| {
        let meta = std::fs::metadata(blob_file(berth.root(), kept, digest)).unwrap();
        meta.modified().unwrap() > SystemTime::now() - Duration::from_secs(600)
    };
    push_blob(&client, &repos[0], &blobs[0]);
    assert!(
        refreshed(&digests[0]),
        "a push that links refreshes the mtime"
    );
    assert_eq!(
        inode(&blob_file(berth.root(), &repos[0], &digests[0])),
        survivor(&digests[0]),
        "a new push links to the surviving copy"
    );
    let mounted = mount(&client, &repos[1], &digests[1], Some(kept)).expect(201);
    assert_eq!(
        mounted.header("Location"),
        Some(format!("/v2/{}/blobs/{}", repos[1], digests[1]).as_str()),
        "{mounted}"
    );
    assert_eq!(
        inode(&blob_file(berth.root(), &repos[1], &digests[1])),
        survivor(&digests[1]),
        "a mount from a repository links"
    );
    assert!(
        refreshed(&digests[1]),
        "a mount that links refreshes the mtime"
    );
    mount(&client, &repos[2], &digests[2], None).expect(201);
    assert_eq!(
        inode(&blob_file(berth.root(), &repos[2], &digests[2])),
        survivor(&digests[2]),
        "a mount without `from` links to the store's copy"
    );
    // `from` no longer holds the blob: the spec's fallback is an upload session, not a mount.
    let fallback = mount(&client, &repos[3], &digests[3], Some(&repos[4])).expect(202);
    assert!(fallback.header("Location").is_some(), "{fallback}");
    client
        .head(&format!("/v2/{}/blobs/{}", repos[3], digests[3]))
        .expect(404);
    for (repo, i) in [(&repos[0], 0), (&repos[1], 1), (&repos[2], 2)] {
        assert_eq!(get_blob(&client, repo, &digests[i]), blobs[i]);
    }
}

/// The blob digests and sizes of images, with how many repositories hold each.
fn copies(images: &[&Image]) -> BTreeMap<String, (u64, u64)> {
    let mut copies = BTreeMap::new();
    for image in images {
        for blob in image.blobs().into_iter().chain([image.manifest.as_slice()]) {
            copies
                .entry(sha256(blob))
                .or_insert((blob.len() as u64, 0))
                .1 += 1;
        }
    }
    copies
}

#[test]
fn a_store_written_without_dedupe_is_linked_at_start_while_pulls_go_on() {
    const REPOS: usize = 10;
    let dir = temp_dir();
    let root = dir.path().join("root");
    // Many small layers: the pass has thousands of files to walk, so it is still running
    // when the first pulls arrive.
    let sizes: Vec<usize> = (0..200).map(|i| 1024 + i * 37).collect();
    let shared = Image::oci(41, &sizes);
    let own: Vec<Image> = (0..REPOS)
        .map(|r| Image::oci(500 + r as u64, &[9000]))
        .collect();
    let repos: Vec<String> = (0..REPOS).map(|r| format!("mirror/r{r}")).collect();
    {
        let berth = Berth::start_on(&root, with_dedupe(false));
        let client = berth.client();
        std::thread::scope(|s| {
            for (repo, own) in repos.iter().zip(&own) {
                let (client, shared) = (&client, &shared);
                s.spawn(move || {
                    push_image(client, repo, "shared", shared);
                    push_image(client, repo, "own", own);
                });
            }
        });
    }
    let mut all: Vec<&Image> = own.iter().collect();
    all.extend(std::iter::repeat_n(&shared, REPOS));
    let copies = copies(&all);
    let files: u64 = copies.values().map(|(_, n)| n).sum();
    let before = disk_usage(&root);
    assert_eq!(
        before.blob_inodes as u64, files,
        "dedupe off keeps every copy"
    );

    let berth = Berth::start_on(&root, with_dedupe(true));
    let pass_running = AtomicBool::new(true);
    let (pulls_during_pass, pulls) = (AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|s| {
        for worker in 0..2 {
            let (berth, repos, shared, own) = (&berth, &repos, &shared, &own);
            let (pass_running, pulls_during_pass, pulls) =
                (&pass_running, &pulls_during_pass, &pulls);
            s.spawn(move || {
                let client = berth.client();
                let mut round = worker;
                // Every repository at least once, and on until the pass is over.
                while round < worker + REPOS || pass_running.load(Ordering::SeqCst) {
                    let during = !berth.logs().contains(PASS_DONE);
                    let r = round % REPOS;
                    assert_image(&client, &repos[r], "shared", shared);
                    assert_image(&client, &repos[r], "own", &own[r]);
                    pulls.fetch_add(1, Ordering::SeqCst);
                    if during {
                        pulls_during_pass.fetch_add(1, Ordering::SeqCst);
                    }
                    round += 1;
                }
            });
        }
        let finished = berth.wait_for_log(PASS_DONE, PASS_TIMEOUT);
        pass_running.store(false, Ordering::SeqCst);
        assert!(finished, "the dedupe pass did not finish");
    });
    assert!(
        pulls_during_pass.load(Ordering::SeqCst) > 0,
        "no pull was served while the pass ran ({} pulls in all)",
        pulls.load(Ordering::SeqCst)
    );

    let after = disk_usage(&root);
    assert_eq!(after.blob_files as u64, files, "no file lost");
    assert_eq!(after.blob_inodes, copies.len(), "one inode per digest");
    assert!(
        after.allocated < before.allocated,
        "{before:?} -> {after:?}"
    );
    let reclaimed: u64 = copies.values().map(|(size, n)| size * (n - 1)).sum();
    let logs = berth.logs();
    let total = repos.len();
    assert!(
        logs.contains(&format!("{total}/{total} repositories, {files} blob files")),
        "no final progress line:\n{logs}"
    );
    assert!(
        logs.contains(&format!("reclaimed_bytes={reclaimed}")),
        "want {reclaimed} bytes reclaimed in the log:\n{logs}"
    );
    drop(berth);

    // An unchanged store is not walked again.
    let berth = Berth::start_on(&root, with_dedupe(true));
    assert!(
        berth.wait_for_log("nothing to walk", PASS_TIMEOUT),
        "the marker did not stop a second walk:\n{}",
        berth.logs()
    );
    assert!(!berth.logs().contains("dedupe pass: started"));
    assert_image(&berth.client(), &repos[0], "shared", &shared);
}

#[test]
fn deleting_the_cache_while_stopped_loses_nothing() {
    cache_deleted_while_stopped_loses_nothing(Backend::Local);
}

#[test]
fn deleting_the_cache_of_an_s3_store_while_stopped_loses_nothing() {
    cache_deleted_while_stopped_loses_nothing(Backend::S3);
}

fn cache_deleted_while_stopped_loses_nothing(backend: Backend) {
    let store = Store::new(backend);
    let image = Image::oci(77, &[50_000, 120_000]);
    let repos = ["keep/a", "keep/b", "keep/c"];
    {
        let berth = store.start(Settings::default());
        for repo in repos {
            push_image(&berth.client(), repo, "v1", &image);
        }
    }
    let digests: Vec<String> = image.blobs().iter().map(|b| sha256(b)).collect();
    for digest in &digests {
        let paths: Vec<String> = repos.iter().map(|r| blob(r, digest)).collect();
        assert_eq!(store.copies(&paths), 1, "{digest} is stored once");
    }
    let cache = store.root.join(".berth").join("cache");
    assert!(
        cache.is_dir(),
        "the LMDB cache lives in {}",
        cache.display()
    );
    std::fs::remove_dir_all(&cache).unwrap();

    let berth = store.start(Settings::default());
    let client = berth.client();
    for repo in repos {
        assert_image(&client, repo, "v1", &image);
    }
    assert!(
        berth.wait_for_log(PASS_DONE, PASS_TIMEOUT),
        "the pass did not rebuild the cache:\n{}",
        berth.logs()
    );
    assert!(cache.is_dir(), "the cache was not recreated");

    // Pushes after the rebuild still deduplicate, against the old copies and among new ones.
    push_image(&client, "keep/d", "v1", &image);
    let fresh = random_bytes(78, 64_000);
    let fresh_digest = push_blob(&client, "keep/a", &fresh);
    push_blob(&client, "keep/b", &fresh);
    for digest in &digests {
        assert_eq!(
            store.copies(&[blob("keep/d", digest), blob("keep/a", digest)]),
            1,
            "{digest} pushed again after the rebuild is stored once"
        );
    }
    assert_eq!(
        store.copies(&[blob("keep/a", &fresh_digest), blob("keep/b", &fresh_digest)]),
        1
    );
    assert_image(&client, "keep/d", "v1", &image);
}

/// Names per file a link-limit test gives up at: ext4 allows 65,000; tmpfs, xfs and btrfs
/// allow so many more that reaching them would take minutes and prove nothing new.
const LINK_CAP: u64 = 100_000;

/// Adds names of `file` in `names` (a new directory on the same file system, outside the
/// store) until the file system refuses one with EMLINK; returns how many names the file then
/// has. `None`, with the names removed, when `LINK_CAP` names were given without a refusal.
fn fill_to_link_limit(file: &Path, names: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::create_dir(names).unwrap();
    let mut nlink = std::fs::metadata(file).unwrap().nlink();
    while nlink < LINK_CAP {
        match std::fs::hard_link(file, names.join(nlink.to_string())) {
            Ok(()) => nlink += 1,
            Err(e) if e.raw_os_error() == Some(libc::EMLINK) => return Some(nlink),
            Err(e) => panic!("linking {} into {}: {e}", file.display(), names.display()),
        }
    }
    std::fs::remove_dir_all(names).unwrap();
    None
}

/// Says why a link-limit test did not run, so a file system without a reachable limit is a
/// visible skip rather than a silent pass.
fn skip_without_link_limit(dir: &Path) {
    eprintln!(
        "SKIPPED: the file system of {} took {LINK_CAP} names of one file without EMLINK",
        dir.display()
    );
}

/// How many names the file at `path` has.
fn nlink(path: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::nlink(&std::fs::metadata(path).unwrap())
}

#[test]
fn past_the_link_limit_a_new_copy_becomes_the_original_later_copies_link_to() {
    let berth = Berth::start();
    let client = berth.client();
    let root = berth.root();
    let blob = random_bytes(4100, 10_000);
    let digest = push_blob(&client, "limit/r0", &blob);
    let full = blob_file(root, "limit/r0", &digest);
    let scratch = root.parent().unwrap();
    let Some(limit) = fill_to_link_limit(&full, &scratch.join("names")) else {
        return skip_without_link_limit(scratch);
    };

    // Pushes and mounts (from the full copy's repository, from another, and without
    // `from`) past the limit: the first keeps its bytes, every later one links to it.
    push_blob(&client, "limit/r1", &blob);
    push_blob(&client, "limit/r2", &blob);
    mount(&client, "limit/r3", &digest, Some("limit/r0")).expect(201);
    mount(&client, "limit/r4", &digest, Some("limit/r2")).expect(201);
    mount(&client, "limit/r5", &digest, None).expect(201);
    let new = ["limit/r1", "limit/r2", "limit/r3", "limit/r4", "limit/r5"];
    let next = inode(&blob_file(root, new[0], &digest));
    for repo in new {
        let file = blob_file(root, repo, &digest);
        assert_eq!(
            (inode(&file), nlink(&file)),
            (next, new.len() as u64),
            "{repo}: a link to the next original, not a copy of its own"
        );
        assert_eq!(get_blob(&client, repo, &digest), blob, "{repo}");
    }
    assert_ne!(next, inode(&full));
    assert_eq!(nlink(&full), limit, "the full copy keeps its names");
    let usage = disk_usage(root);
    assert_eq!(
        (usage.blob_files, usage.blob_inodes),
        (1 + new.len(), 2),
        "{usage:?}"
    );

    // Deleting the next original: as for a first original, pushes go on deduplicating.
    client
        .delete(&format!("/v2/limit/r1/blobs/{digest}"))
        .expect(202);
    push_blob(&client, "limit/r6", &blob);
    push_blob(&client, "limit/r7", &blob);
    let r6 = blob_file(root, "limit/r6", &digest);
    assert_eq!(inode(&r6), inode(&blob_file(root, "limit/r7", &digest)));
    assert!(nlink(&r6) > 1);
    for repo in ["limit/r0", "limit/r2", "limit/r5", "limit/r6", "limit/r7"] {
        assert_eq!(get_blob(&client, repo, &digest), blob, "{repo}");
    }
}

#[test]
fn the_pass_past_the_link_limit_makes_a_verified_copy_the_next_original() {
    let Some(logs) = pass_past_the_link_limit(3) else {
        return;
    };
    // Linked one after another, the damaged copy is the first to meet the limit: the pass
    // hashes it to see whether it can be the next original.
    assert!(
        logs.contains("dedupe pass: repaired pass/b/blobs/sha256/"),
        "the damaged copy was not repaired:\n{logs}"
    );
}

/// As above, with as many copies as a pass links on several threads at once, which race to
/// replace the full original.
#[test]
fn the_pass_past_the_link_limit_linking_in_parallel_makes_one_next_original() {
    pass_past_the_link_limit(1_200);
}

/// A pass over separate copies of a layer: the one it keeps is at the file system's link
/// limit, one is damaged, and `intact` more are fine. All but the full one end up one inode
/// with the right bytes, which the cache then names to pushes. Returns berth's log, or `None`
/// when the file system has no link limit to test.
fn pass_past_the_link_limit(intact: usize) -> Option<String> {
    let dir = temp_dir();
    let root = dir.path().join("root");
    let image = Image::oci(4200, &[30_000]);
    let layer = image.blobs()[1];
    let digest = sha256(layer);
    // Separate copies as another registry leaves them; the first has two names in the store
    // (so the pass keeps it) and is filled to the limit; the next is damaged.
    let (full, damaged) = (["pass/a", "pass/a2"], "pass/b");
    let fine: Vec<String> = (0..intact).map(|i| format!("pass/c{i:04}")).collect();
    let mut repos: Vec<&str> = full.to_vec();
    repos.push(damaged);
    repos.extend(fine.iter().map(String::as_str));
    for repo in &repos {
        write_layout(&root.join(repo), "v1", &image);
    }
    let layer_of = |repo: &str| blob_file(&root, repo, &digest);
    std::fs::remove_file(layer_of(full[1])).unwrap();
    std::fs::hard_link(layer_of(full[0]), layer_of(full[1])).unwrap();
    let Some(limit) = fill_to_link_limit(&layer_of(full[0]), &dir.path().join("names")) else {
        skip_without_link_limit(dir.path());
        return None;
    };
    let mut bytes = layer.to_vec();
    bytes[100] ^= 0xff;
    std::fs::write(layer_of(damaged), &bytes).unwrap();

    let berth = Berth::start_on(&root, Settings::default());
    assert!(
        berth.wait_for_log(PASS_DONE, PASS_TIMEOUT),
        "the pass did not finish:\n{}",
        berth.logs()
    );
    let full_inode = inode(&layer_of(full[0]));
    assert_eq!(inode(&layer_of(full[1])), full_inode);
    assert_eq!(nlink(&layer_of(full[0])), limit);
    let next = inode(&layer_of(damaged));
    assert_ne!(next, full_inode);
    let others = repos.len() as u64 - 2;
    for repo in &repos[2..] {
        assert_eq!(
            (inode(&layer_of(repo)), nlink(&layer_of(repo))),
            (next, others),
            "{repo}: linked to the next original:\n{}",
            berth.logs()
        );
    }
    assert_eq!(std::fs::read(layer_of(damaged)).unwrap(), layer);
    let client = berth.client();
    for repo in &repos[..4] {
        assert_image(&client, repo, "v1", &image);
    }

    // The cache names the next original: a push links to it, not to the full copy.
    push_blob(&client, "pass/e", layer);
    assert_eq!(inode(&layer_of("pass/e")), next);
    assert_eq!(nlink(&layer_of("pass/e")), others + 1);
    Some(berth.logs())
}
