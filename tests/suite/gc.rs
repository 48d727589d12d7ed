//! Online garbage collection and retention (issue 5, points 1 and 2): what goes after
//! `gcDelay` and not before, pushes racing the collector, each retention key, and
//! `berth gc --dry-run`. Short real delays show the collector runs online and by time; the
//! offline command is shown on files whose times are set back instead of waited for.
//! Collection and retention run the same flows on S3 (issue 13), with dedupe's placeholders.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::util::http::Client;
use crate::util::layout::{self, tree};
use crate::util::oci::*;
use crate::util::server::{BERTH, Berth, Settings, temp_dir, wait_until};
use crate::util::store::{Backend, Store, blob};

/// Long enough that two sweeps (one a second) run well inside it on a loaded machine.
const DELAY: &str = "6s";

/// How many times longer the flows' delays and intervals are on `backend`: moto serves one
/// request at a time, to the pushes and the collector's sweeps alike, so a push there takes
/// several times as long and a delay sized for local pushes would expire while the test is
/// still pushing.
fn slowdown(backend: Backend) -> u32 {
    match backend {
        Backend::Local => 1,
        Backend::S3 => 4,
    }
}

/// `gc_settings` for a flow on `backend`: delay and sweep interval scaled by `slowdown`.
fn paced_settings(backend: Backend, delay: u32, retention: Value) -> Settings {
    let mut settings = gc_settings(&scaled(delay, slowdown(backend)), retention);
    settings
        .storage
        .insert("gcInterval".into(), json!(scaled(1, slowdown(backend))));
    settings
}

/// A zot duration of `seconds` times `slowdown`.
fn scaled(seconds: u32, slowdown: u32) -> String {
    format!("{}s", seconds * slowdown)
}

fn gc_settings(delay: &str, retention: Value) -> Settings {
    let mut settings = Settings::default();
    let storage = &mut settings.storage;
    storage.insert("gc".into(), json!(true));
    storage.insert("gcDelay".into(), json!(delay));
    storage.insert("gcInterval".into(), json!("1s"));
    if !retention.is_null() {
        storage.insert("retention".into(), retention);
    }
    settings
}

/// Waits until the manifest `digest` of `repo` is gone, failing with `why` and the log.
#[track_caller]
fn wait_collected(berth: &Berth, repo: &str, digest: &str, why: &str) {
    let c = berth.client();
    let gone = wait_until(Duration::from_secs(60), || {
        manifest_status(&c, repo, digest) == 404
    });
    assert!(gone, "{why}:\n{}", berth.logs());
}

fn blob_status(c: &Client, repo: &str, digest: &str) -> u16 {
    c.head(&format!("/v2/{repo}/blobs/{digest}")).status
}

fn manifest_status(c: &Client, repo: &str, reference: &str) -> u16 {
    c.get_manifest(repo, reference, OCI_MANIFEST).status
}

#[test]
fn collection_waits_for_the_delay_and_keeps_what_is_tagged() {
    waits_for_the_delay_and_keeps_what_is_tagged(Backend::Local);
}

#[test]
fn collection_on_s3_waits_for_the_delay_and_keeps_what_is_tagged() {
    waits_for_the_delay_and_keeps_what_is_tagged(Backend::S3);
}

fn waits_for_the_delay_and_keeps_what_is_tagged(backend: Backend) {
    let store = Store::alone(backend);
    let berth = store.start(paced_settings(backend, 6, Value::Null));
    let c = berth.client();
    let repo = "gc/app";
    // v1 moves from `old` to `new`: `old` is left untagged.
    let old = Image::oci(1, &[3000, 4000]);
    let new = Image::oci(2, &[5000]);
    let kept = Image::oci(3, &[6000]);
    let deleted = Image::oci(4, &[7000]);
    push_image(&c, repo, "v1", &old);
    push_image(&c, repo, "v1", &new);
    push_image(&c, repo, "keep", &kept);
    push_image(&c, repo, "gone", &deleted);
    c.delete(&format!("/v2/{repo}/manifests/{}", deleted.digest()))
        .expect(202);
    // Multi-platform images: children pushed by digest are untagged in index.json, kept
    // while a tagged index lists them, collected with an index that lost its tag.
    let (amd, arm) = (Image::oci(6, &[900]), Image::oci(7, &[950]));
    let (old_amd, old_arm) = (Image::oci(8, &[1900]), Image::oci(9, &[1950]));
    for child in [&amd, &arm, &old_amd, &old_arm] {
        push_image(&c, repo, &child.digest(), child);
    }
    let multi = index_of(OCI_INDEX, &[&amd, &arm]);
    let old_multi = index_of(OCI_INDEX, &[&old_amd, &old_arm]);
    put_manifest(&c, repo, "multi", OCI_INDEX, &old_multi);
    put_manifest(&c, repo, "multi", OCI_INDEX, &multi);
    let upload = c
        .request("POST", &format!("/v2/{repo}/blobs/uploads/"))
        .send()
        .expect(202)
        .location();
    c.request("PATCH", &upload)
        .header("Content-Type", "application/octet-stream")
        .body(vec![7u8; 1000])
        .send()
        .expect(202);
    // A repository whose only image is deleted goes entirely once its blobs have. It shares
    // a layer with `kept` (one file, linked by dedupe): only its own name of it goes.
    let lonely = Image::assemble(
        OCI_MANIFEST,
        br#"{"architecture":"amd64","os":"linux","lonely":true}"#.to_vec(),
        OCI_CONFIG,
        vec![kept.layers[0].clone()],
        OCI_LAYER_GZIP,
        Value::Null,
    );
    let shared_layer = sha256(&kept.layers[0]);
    push_image(&c, "gc/lonely", "v1", &lonely);
    c.delete(&format!("/v2/gc/lonely/manifests/{}", lonely.digest()))
        .expect(202);

    // Sweeps inside the delay remove nothing.
    berth.wait_sweeps(2);
    assert_eq!(manifest_status(&c, repo, &old.digest()), 200);
    for blob in old.blobs().into_iter().chain(deleted.blobs()) {
        assert_eq!(blob_status(&c, repo, &sha256(blob)), 200);
    }
    c.get(&upload).expect(204);
    assert!(store.exists("gc/lonely/index.json"));

    wait_collected(
        &berth,
        repo,
        &old.digest(),
        "the untagged manifest was not collected",
    );
    assert!(
        wait_until(Duration::from_secs(30), || !store.exists("gc/lonely")),
        "the empty repository was not removed:\n{}",
        berth.logs()
    );
    berth.wait_sweeps(1);
    for blob in old.blobs().into_iter().chain(deleted.blobs()) {
        assert_eq!(blob_status(&c, repo, &sha256(blob)), 404);
    }
    c.get(&upload).expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    assert_image(&c, repo, "v1", &new);
    assert_image(&c, repo, "keep", &kept);
    assert_eq!(
        c.get_manifest(repo, "multi", OCI_INDEX).expect(200).body,
        multi
    );
    for child in [&amd, &arm] {
        assert_image(&c, repo, &child.digest(), child);
    }
    assert_eq!(manifest_status(&c, repo, &sha256(&old_multi)), 404);
    for child in [&old_amd, &old_arm] {
        assert_eq!(manifest_status(&c, repo, &child.digest()), 404);
        assert_eq!(blob_status(&c, repo, &sha256(&child.layers[0])), 404);
    }
    // The dedupe cache stayed true: the shared layer pushed anew shares the surviving copy.
    push_blob(&c, "gc/again", &kept.layers[0]);
    assert_eq!(
        store.copies(&[blob("gc/again", &shared_layer), blob(repo, &shared_layer)]),
        1
    );
    let catalog = c.get("/v2/_catalog").expect(200).json();
    assert_eq!(catalog["repositories"], json!(["gc/again", repo]));
    assert!(berth.logs().contains("gc: removed"), "{}", berth.logs());
    store.assert_sound();
}

#[test]
fn a_push_racing_the_collector_loses_nothing() {
    let berth = Berth::start_with(gc_settings(DELAY, Value::Null));
    let c = berth.client();
    let image = Image::oci(10, &[20_000, 30_000]);
    // Blobs first, then sweeps, then the manifest: what a slow client does.
    for blob in image.blobs() {
        push_blob(&c, "race/app", blob);
    }
    berth.wait_sweeps(2);
    put_manifest(&c, "race/app", "v1", OCI_MANIFEST, &image.manifest);
    // Later sweeps see the blobs referenced and keep them past the delay.
    std::thread::sleep(Duration::from_secs(7));
    berth.wait_sweeps(1);
    assert_image(&c, "race/app", "v1", &image);
}

/// One retention policy per repository; the first matching policy wins, so the catch-all
/// comes last.
/// `slowdown` scales the delays (see there).
fn retention(slowdown: u32) -> Value {
    json!({
        "delay": scaled(2, slowdown),
        "policies": [
            { "repositories": ["ret/untagged-kept"], "deleteUntagged": false },
            { "repositories": ["ret/pattern"], "keepTags": [{ "patterns": ["^v"] }] },
            { "repositories": ["ret/pushed-count"], "keepTags": [{ "mostRecentlyPushedCount": 2 }] },
            { "repositories": ["ret/pushed-within"], "keepTags": [{ "pushedWithin": scaled(6, slowdown) }] },
            { "repositories": ["ret/pulled-count"], "keepTags": [{ "mostRecentlyPulledCount": 1 }] },
            { "repositories": ["ret/pulled-within"], "keepTags": [{ "pulledWithin": "1h" }] },
            { "repositories": ["ret/referrers-on", "ret/signed"], "deleteReferrers": true },
            { "repositories": ["**"], "deleteUntagged": true }
        ]
    })
}

fn tags(c: &Client, repo: &str) -> Vec<String> {
    let listed = c.get(&format!("/v2/{repo}/tags/list")).expect(200).json();
    let mut tags: Vec<String> = serde_json::from_value(listed["tags"].clone()).unwrap();
    tags.sort();
    tags
}

#[test]
fn retention_policies_keep_and_remove_what_they_say() {
    policies_keep_and_remove_what_they_say(Backend::Local);
}

#[test]
fn retention_on_s3_policies_keep_and_remove_what_they_say() {
    policies_keep_and_remove_what_they_say(Backend::S3);
}

fn policies_keep_and_remove_what_they_say(backend: Backend) {
    let store = Store::alone(backend);
    let slowdown = slowdown(backend);
    let berth = store.start(paced_settings(backend, 2, retention(slowdown)));
    let c = berth.client();
    let image = |seed| Image::oci(seed, &[100 + seed as usize]);

    // deleteUntagged false keeps an untagged manifest; the catch-all removes one.
    for repo in ["ret/untagged-kept", "ret/untagged-gone"] {
        push_image(&c, repo, "v1", &image(20));
        push_image(&c, repo, "v1", &image(21));
    }
    // patterns: only tags matching ^v are kept.
    for tag in ["v1", "v2", "latest", "dev-1"] {
        push_image(&c, "ret/pattern", tag, &image(30));
    }
    // mostRecentlyPushedCount: the last two pushed stay.
    for (i, tag) in ["t1", "t2", "t3", "t4"].iter().enumerate() {
        push_image(&c, "ret/pushed-count", tag, &image(40 + i as u64));
        std::thread::sleep(Duration::from_millis(20));
    }
    // pushedWithin: a tag pushed longer ago than that goes.
    push_image(&c, "ret/pushed-within", "old", &image(50));
    // mostRecentlyPulledCount and pulledWithin: pulls decide, never pulled goes. A tag no
    // rule keeps goes at the next sweep, which on a slow store may come between a push and a
    // pull: the manifests are pulled by digest before any tag names them.
    for (repo, seed) in [
        ("ret/pulled-count", 61),
        ("ret/pulled-within", 60),
        ("ret/pulled-within", 62),
    ] {
        let pulled = image(seed);
        push_image(&c, repo, &pulled.digest(), &pulled);
        c.get_manifest(repo, &pulled.digest(), OCI_MANIFEST)
            .expect(200);
    }
    for (i, tag) in ["p1", "p2", "p3"].iter().enumerate() {
        push_image(&c, "ret/pulled-count", tag, &image(60 + i as u64));
        push_image(&c, "ret/pulled-within", tag, &image(60 + i as u64));
    }
    // deleteReferrers: a referrer whose subject was deleted goes; without the rule it stays.
    let subject = image(70);
    let referrer = Image::oci_with(
        71,
        &[10],
        json!({ "artifactType": "application/vnd.example.sig", "subject": subject.descriptor() }),
    );
    for repo in ["ret/referrers-on", "ret/referrers-off"] {
        push_image(&c, repo, "s", &subject);
        push_image(&c, repo, &referrer.digest(), &referrer);
        c.delete(&format!("/v2/{repo}/manifests/{}", subject.digest()))
            .expect(202);
    }
    // A signed image whose tag moved on: its referrer does not keep it; both go.
    let signed = image(72);
    let signature = Image::oci_with(
        73,
        &[10],
        json!({ "artifactType": "application/vnd.example.sig", "subject": signed.descriptor() }),
    );
    push_image(&c, "ret/signed", "v1", &signed);
    push_image(&c, "ret/signed", &signature.digest(), &signature);
    push_image(&c, "ret/signed", "v1", &image(74));
    std::thread::sleep(Duration::from_secs(7) * slowdown);
    push_image(&c, "ret/pushed-within", "new", &image(51));
    // `new` stays for 6 s (scaled): long enough to see `old` go first.
    assert!(
        wait_until(Duration::from_secs(5) * slowdown, || tags(
            &c,
            "ret/pushed-within"
        ) == ["new"]),
        "pushedWithin: {:?}\n{}",
        tags(&c, "ret/pushed-within"),
        berth.logs()
    );

    let settled = wait_until(Duration::from_secs(60), || {
        manifest_status(&c, "ret/untagged-gone", &image(20).digest()) == 404
            && manifest_status(&c, "ret/referrers-on", &referrer.digest()) == 404
            && manifest_status(&c, "ret/signed", &signature.digest()) == 404
    });
    assert!(settled, "retention did not act:\n{}", berth.logs());
    berth.wait_sweeps(1);
    assert_eq!(
        manifest_status(&c, "ret/untagged-kept", &image(20).digest()),
        200
    );
    assert_eq!(tags(&c, "ret/pattern"), ["v1", "v2"]);
    assert_eq!(tags(&c, "ret/pushed-count"), ["t3", "t4"]);
    assert_eq!(tags(&c, "ret/pulled-count"), ["p2"]);
    assert_eq!(tags(&c, "ret/pulled-within"), ["p1", "p3"]);
    assert_eq!(
        manifest_status(&c, "ret/referrers-off", &referrer.digest()),
        200
    );
    assert_eq!(manifest_status(&c, "ret/signed", &signed.digest()), 404);
    assert_image(&c, "ret/signed", "v1", &image(74));
    assert_image(&c, "ret/pattern", "v2", &image(30));
    assert_image(&c, "ret/pushed-count", "t4", &image(43));
}

#[test]
fn retention_dry_run_removes_nothing() {
    let mut retention = retention(1);
    retention["dryRun"] = json!(true);
    let berth = Berth::start_with(gc_settings("2s", retention));
    let c = berth.client();
    let (a, b) = (Image::oci(80, &[100]), Image::oci(81, &[100]));
    push_image(&c, "ret/pattern", "latest", &a);
    push_image(&c, "dry/app", "v1", &a);
    push_image(&c, "dry/app", "v1", &b);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        wait_until(Duration::from_secs(30), || berth
            .logs()
            .contains("gc: would remove")),
        "{}",
        berth.logs()
    );
    berth.wait_sweeps(1);
    assert_eq!(tags(&c, "ret/pattern"), ["latest"]);
    assert_image(&c, "dry/app", &a.digest(), &a);
    assert!(!berth.logs().contains("gc: removed"), "{}", berth.logs());
}

/// Sets the modification time of every file under `root` back by `age`.
fn age_files(root: &Path, age: Duration) {
    let then = SystemTime::now() - age;
    for path in tree(root) {
        let full = root.join(&path);
        if full.is_file() {
            std::fs::File::options()
                .write(true)
                .open(&full)
                .and_then(|f| f.set_modified(then))
                .unwrap_or_else(|e| panic!("{}: {e}", full.display()));
        }
    }
}

/// The tree under `root` with every file's size and modification time; berth's own cache
/// (whose lock file any open touches) left out.
fn snapshot(root: &Path) -> Vec<(std::path::PathBuf, u64, SystemTime)> {
    tree(root)
        .into_iter()
        .filter(|p| !p.starts_with(".berth"))
        .filter_map(|p| {
            let meta = std::fs::metadata(root.join(&p)).ok()?;
            meta.is_file()
                .then(|| (p, meta.len(), meta.modified().unwrap()))
        })
        .collect()
}

#[test]
fn berth_gc_dry_run_prints_and_changes_nothing_then_collects() {
    let dir = temp_dir();
    let root = dir.path().join("root");
    let (old, new) = (Image::oci(90, &[12_345]), Image::oci(91, &[2000]));
    let broken = Image::oci(92, &[3000]);
    {
        let mut settings = Settings::default();
        settings.storage.insert("gc".into(), json!(false));
        let berth = Berth::start_on(&root, settings);
        push_image(&berth.client(), "cli/app", "v1", &old);
        push_image(&berth.client(), "cli/app", "v1", &new);
        // A repository whose index lists a manifest that is gone cannot be marked: its
        // sweep must stop before deleting even its plainly unreferenced blob.
        push_image(&berth.client(), "cli/broken", "v1", &broken);
        push_blob(&berth.client(), "cli/broken", b"unreferenced");
    }
    std::fs::remove_file(layout::blob_path(
        &root.join("cli/broken"),
        &broken.digest(),
    ))
    .unwrap();
    let unreferenced = layout::blob_path(&root.join("cli/broken"), &sha256(b"unreferenced"));
    age_files(&root, Duration::from_secs(2 * 3600));
    let config = dir.path().join("gc.json");
    std::fs::write(
        &config,
        json!({
            "storage": { "rootDirectory": root, "gc": true, "gcDelay": "1h" },
            "http": { "address": "127.0.0.1", "port": "0" }
        })
        .to_string(),
    )
    .unwrap();
    let before = snapshot(&root);
    let dry = Command::new(BERTH)
        .args(["gc", config.to_str().unwrap(), "--dry-run"])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&dry.stdout);
    let complaint = String::from_utf8_lossy(&dry.stderr);
    assert!(
        !dry.status.success(),
        "cli/broken cannot be marked: {printed}"
    );
    assert!(
        complaint.contains("cli/broken")
            && complaint.contains(broken.digest().trim_start_matches("sha256:")),
        "{complaint}"
    );
    assert!(!printed.contains("cli/broken"), "{printed}");
    assert_eq!(snapshot(&root), before, "--dry-run changed the store");
    let old_layer = sha256(&old.layers[0]);
    for expected in [
        old.digest(),
        old_layer.clone(),
        "12345".to_string(),
        "cli/app".to_string(),
    ] {
        assert!(printed.contains(&expected), "{expected} not in:\n{printed}");
    }
    assert!(
        !printed.contains(&new.digest()),
        "the tagged image is not garbage:\n{printed}"
    );

    let real = Command::new(BERTH)
        .args(["gc", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        !real.status.success() && String::from_utf8_lossy(&real.stderr).contains("cli/broken"),
        "{}",
        String::from_utf8_lossy(&real.stderr)
    );
    assert!(
        unreferenced.exists(),
        "the sweep of cli/broken did not fail closed"
    );
    assert!(!layout::blob_path(&root.join("cli/app"), &old_layer).exists());
    let berth = Berth::start_on(&root, Settings::default());
    assert_image(&berth.client(), "cli/app", "v1", &new);
    assert_eq!(
        manifest_status(&berth.client(), "cli/app", &old.digest()),
        404
    );
}

#[test]
fn content_pushed_again_is_new_to_the_collector() {
    let dir = temp_dir();
    let root = dir.path().join("root");
    let mut settings = Settings::default();
    settings.storage.insert("gc".into(), json!(false));
    let berth = Berth::start_on(&root, settings);
    let c = berth.client();
    let image = Image::oci(95, &[4000]);
    push_image(&c, "again/app", "v1", &image);
    push_image(&c, "again/other", "v1", &image);
    age_files(&root, Duration::from_secs(2 * 3600));
    let recent = |repo: &str, digest: &str| {
        let path = layout::blob_path(&root.join(repo), digest);
        let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
        SystemTime::now().duration_since(modified).unwrap() < Duration::from_secs(600)
    };
    let layer = sha256(&image.layers[0]);
    assert!(!recent("again/app", &image.digest()) && !recent("again/app", &layer));
    // A manifest PUT again (a re-tag), a layer pushed again, a layer mounted again.
    put_manifest(&c, "again/app", "v2", OCI_MANIFEST, &image.manifest);
    assert!(recent("again/app", &image.digest()), "re-tagged manifest");
    push_blob(&c, "again/app", &image.layers[0]);
    assert!(recent("again/app", &layer), "layer pushed again");
    let config = sha256(&image.config);
    c.request(
        "POST",
        &format!("/v2/again/other/blobs/uploads/?mount={config}&from=again/app"),
    )
    .send()
    .expect(201);
    assert!(recent("again/other", &config), "config mounted again");
}

#[test]
fn a_sparse_index_does_not_stop_collection() {
    let berth = Berth::start_with(gc_settings("2s", Value::Null));
    let c = berth.client();
    let repo = "sparse/app";
    let (amd, arm) = (Image::oci(96, &[700]), Image::oci(97, &[800]));
    for child in [&amd, &arm] {
        push_image(&c, repo, &child.digest(), child);
    }
    let index = index_of(OCI_INDEX, &[&amd, &arm]);
    put_manifest(&c, repo, "multi", OCI_INDEX, &index);
    // A child deleted by digest: the index lists a manifest that is gone.
    c.delete(&format!("/v2/{repo}/manifests/{}", arm.digest()))
        .expect(202);
    // Garbage beside it: a manifest left untagged.
    let (old, new) = (Image::oci(98, &[900]), Image::oci(99, &[950]));
    push_image(&c, repo, "v1", &old);
    push_image(&c, repo, "v1", &new);
    wait_collected(
        &berth,
        repo,
        &old.digest(),
        "collection stopped at the sparse index",
    );
    berth.wait_sweeps(1);
    assert_eq!(blob_status(&c, repo, &sha256(&old.layers[0])), 404);
    assert_eq!(
        blob_status(&c, repo, &sha256(&arm.layers[0])),
        404,
        "the gone child names nothing"
    );
    assert_eq!(
        c.get_manifest(repo, "multi", OCI_INDEX).expect(200).body,
        index
    );
    assert_image(&c, repo, &amd.digest(), &amd);
    assert_image(&c, repo, "v1", &new);
}

#[test]
fn an_upload_whose_file_lost_its_bytes_ends_instead_of_filling_a_hole() {
    let berth = Berth::start();
    let c = berth.client();
    let session = c
        .request("POST", "/v2/lost/app/blobs/uploads/")
        .send()
        .expect(202)
        .location();
    let first = random_bytes(110, 5000);
    c.request("PATCH", &session)
        .header("Content-Type", "application/octet-stream")
        .body(first.clone())
        .send()
        .expect(202);
    let id = session
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap();
    std::fs::remove_file(berth.root().join("lost/app/.uploads").join(id)).unwrap();
    let second = random_bytes(111, 3000);
    c.request("PATCH", &session)
        .header("Content-Type", "application/octet-stream")
        .body(second.clone())
        .send()
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    let whole = [first, second].concat();
    c.request(
        "PUT",
        &crate::util::http::with_query(&session, &format!("digest={}", sha256(&whole))),
    )
    .send()
    .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    assert_eq!(blob_status(&c, "lost/app", &sha256(&whole)), 404);
    layout::assert_sound(berth.root());
}
