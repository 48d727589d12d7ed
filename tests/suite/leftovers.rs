//! What kill -9 leaves and what cannot be read (issue 10, points 11 and 12): temporary files
//! of cut-short writes, made on disk exactly as a kill leaves them, are removed by the next
//! start or, once stale, by a sweep, with the repositories they alone kept; scrub reports them;
//! a repository whose removal was cut short leaves no stranded directory. A root-owned
//! `lost+found` and an unreadable repository (berth running as an unprivileged user) hide
//! only themselves: the catalog, gc, the dedupe pass and scrub carry on and say what they
//! skipped, and the scrub report never reads as healthy for what was not scrubbed.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use crate::util::http::Client;
use crate::util::layout::blob_path;
use crate::util::oci::*;
use crate::util::server::{Berth, Launch, Settings, temp_dir, wait_until};

/// The user berth runs as in the unreadable-directory test: `nobody`.
const NOBODY: u32 = 65534;

fn settings(gc: bool, delay: &str) -> Settings {
    let mut settings = Settings::default();
    let storage = &mut settings.storage;
    storage.insert("gc".into(), json!(gc));
    storage.insert("gcDelay".into(), json!(delay));
    storage.insert("gcInterval".into(), json!("1s"));
    settings
}

fn with_scrub(mut settings: Settings) -> Settings {
    settings
        .extensions
        .insert("scrub".into(), json!({ "enable": true, "interval": "1s" }));
    settings
}

fn catalog(c: &Client) -> Vec<String> {
    let body = c.get("/v2/_catalog").expect(200).json();
    serde_json::from_value(body["repositories"].clone()).unwrap()
}

/// A temporary name as the local driver makes them.
fn temp_name() -> String {
    format!(".tmp-{}", uuid::Uuid::new_v4().simple())
}

/// Writes `len` bytes at `path`, last modified `age` ago.
fn write_aged(path: &Path, len: usize, age: Duration) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, random_bytes(len as u64, len)).unwrap();
    set_age(path, age);
}

fn set_age(path: &Path, age: Duration) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::now() - age)
        .unwrap();
}

/// An empty repository as berth makes one: the marker and an index listing nothing.
fn empty_repository(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#,
    )
    .unwrap();
}

/// What a kill between removing `index.json` and the rest of an empty repository leaves:
/// the marker, empty layout directories, and the spare of the index that is gone.
fn removal_cut_short(dir: &Path) {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::create_dir_all(dir.join(".uploads")).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(dir.join(".spare-index.json"), b"{}").unwrap();
}

#[track_caller]
fn assert_no_error(berth: &Berth) {
    let logs = berth.logs();
    assert!(!logs.contains("ERROR"), "{logs}");
}

/// Point 11: a restart removes every temporary file the killed process left, whatever its
/// age (here far younger than `gcDelay`), and the repositories and remains they kept.
#[test]
fn a_restart_removes_what_kills_left() {
    let dir = temp_dir();
    let root = dir.path().join("root");
    let mut first = settings(true, "1h");
    first.storage.insert("dedupe".into(), json!(true));
    let mut berth = Berth::start_on(&root, first.clone());
    let c = berth.client();
    let image = Image::oci(0x11A, &[300_000, 2000]);
    push_image(&c, "kept/app", "v1", &image);
    push_image(&c, "kept/other", "v1", &image);
    berth.kill9();

    // A kill during the start-up dedupe pass: a second name of a layer, pinning its inode.
    let layer = blob_path(&root.join("kept/app"), &sha256(&image.layers[0]));
    let pinned = layer.with_file_name(temp_name());
    std::fs::hard_link(&layer, &pinned).unwrap();
    // A kill during a cross-repository mount copy, dedupe off: a big partial copy in an
    // otherwise empty repository.
    empty_repository(&root.join("mounted/app"));
    let partial = root.join("mounted/app/.uploads").join(temp_name());
    write_aged(&partial, 8 << 20, Duration::from_secs(5));
    // A kill while a manifest was written: a temporary file in an otherwise empty repository.
    empty_repository(&root.join("orphaned/app"));
    let stray = root.join("orphaned/app/blobs/sha256").join(temp_name());
    write_aged(&stray, 1000, Duration::from_secs(5));
    // A kill while an empty repository was removed, and one during the start-up probes.
    removal_cut_short(&root.join("removed/app"));
    let probe = root.join(format!(
        ".tmp-direct-probe-{}",
        uuid::Uuid::new_v4().simple()
    ));
    write_aged(&probe, 0, Duration::from_secs(5));

    let berth = Berth::start_on(&root, first);
    let c = berth.client();
    // The start-up search runs before the first sweep, on the same thread.
    berth.wait_sweeps(1);
    for path in [&pinned, &partial, &stray, &probe] {
        assert!(
            !path.exists(),
            "{} is left:\n{}",
            path.display(),
            berth.logs()
        );
    }
    assert_eq!(
        std::fs::metadata(&layer).unwrap().nlink(),
        2,
        "the layer has its two repositories' names only"
    );
    for gone in [
        "mounted/app",
        "orphaned/app",
        "removed/app",
        "removed",
        "orphaned",
    ] {
        assert!(
            !root.join(gone).exists(),
            "{gone} is left:\n{}",
            berth.logs()
        );
    }
    assert_eq!(catalog(&c), ["kept/app", "kept/other"]);
    assert_image(&c, "kept/app", "v1", &image);
    assert_image(&c, "kept/other", "v1", &image);
    assert_no_error(&berth);
}

/// Point 11: while berth runs, a sweep removes temporary files once untouched for `gcDelay`
/// and then the repositories only they kept; remains of a removal go at once; a file that is
/// not berth's keeps its repository, quietly (it failed every sweep with "Directory not
/// empty"). Pushes go on meanwhile.
#[test]
fn sweeps_remove_stale_leftovers_and_the_repositories_they_kept() {
    let dir = temp_dir();
    let root = dir.path().join("root");
    let berth = Berth::start_on(&root, settings(true, "2s"));
    let c = berth.client();
    // Built aside and moved in whole, so no sweep sees (and removes) a half-built one.
    let aside = dir.path().join("aside");
    empty_repository(&aside.join("mounted/app"));
    let partial = Path::new("mounted/app/.uploads").join(temp_name());
    write_aged(&aside.join(&partial), 8 << 20, Duration::ZERO);
    empty_repository(&aside.join("orphaned/app"));
    let stray = Path::new("orphaned/app/blobs/sha256").join(temp_name());
    write_aged(&aside.join(&stray), 1000, Duration::ZERO);
    removal_cut_short(&aside.join("removed/app"));
    empty_repository(&aside.join("foreign/app"));
    let notes = Path::new("foreign/app/blobs/sha256/notes.txt");
    write_aged(&aside.join(notes), 10, Duration::from_secs(3600));
    for top in ["mounted", "orphaned", "removed", "foreign"] {
        std::fs::rename(aside.join(top), root.join(top)).unwrap();
    }
    let (partial, stray, notes) = (root.join(partial), root.join(stray), root.join(notes));
    let probe = root.join(format!(
        ".tmp-link-probe-{}.second",
        uuid::Uuid::new_v4().simple()
    ));
    write_aged(&probe, 0, Duration::ZERO);
    let image = Image::oci(0x11B, &[5000]);
    push_image(&c, "live/app", "v1", &image);

    let cleaned = wait_until(Duration::from_secs(60), || {
        !partial.exists()
            && !stray.exists()
            && !probe.exists()
            && !root.join("mounted").exists()
            && !root.join("orphaned").exists()
            && !root.join("removed").exists()
    });
    assert!(cleaned, "leftovers stay:\n{}", berth.logs());
    berth.wait_sweeps(2);
    assert!(notes.exists(), "a file berth did not write stays");
    assert_eq!(catalog(&c), ["foreign/app", "live/app"]);
    assert_image(&c, "live/app", "v1", &image);
    assert!(berth.logs().contains("temporary files killed writes left"));
    assert_no_error(&berth);
}

/// Point 11: scrub reports temporary files untouched for `gcDelay` and remains of removed
/// repositories as warnings (with gc off nothing removes them).
#[test]
fn scrub_reports_leftovers() {
    let dir = temp_dir();
    let root = dir.path().join("root");
    let berth = Berth::start_on(&root, with_scrub(settings(false, "1s")));
    let c = berth.client();
    let image = Image::oci(0x11C, &[4000]);
    push_image(&c, "kept/app", "v1", &image);
    let partial = root.join("kept/app/.uploads").join(temp_name());
    write_aged(&partial, 3 << 20, Duration::ZERO);
    let stray = root.join("kept/app/blobs/sha256").join(temp_name());
    write_aged(&stray, 1000, Duration::ZERO);
    removal_cut_short(&root.join("removed/app"));
    let relative = |p: &PathBuf| p.strip_prefix(&root).unwrap().display().to_string();
    // The spare of the index that is gone is one of the remains' leftovers.
    let want = json!([
        { "path": relative(&partial), "bytes": 3 << 20 },
        { "path": relative(&stray), "bytes": 1000 },
        { "path": "removed/app/.spare-index.json", "bytes": 2 },
    ]);

    let deadline = Instant::now() + Duration::from_secs(60);
    let store = loop {
        let report = c.get("/v2/_berth/scrub").expect(200).json();
        let store = report["stores"][0].clone();
        let mut found = store["leftovers"].as_array().cloned().unwrap_or_default();
        found.sort_by_key(|f| f["bytes"].as_u64().map(std::cmp::Reverse));
        if Value::Array(found) == want && store["remnants"] == json!(["removed/app"]) {
            break store;
        }
        assert!(
            Instant::now() < deadline,
            "scrub did not report the leftovers: {report}\n{}",
            berth.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(store["status"], "ok", "leftovers are warnings: {store}");
    assert!(partial.exists() && stray.exists(), "scrub removes nothing");
    assert!(berth.logs().contains("scrub: leftover temporary file"));
    assert_no_error(&berth);
}

/// Point 12: with scrub off nothing is ever scrubbed, so the report may not read as healthy
/// (it said `{"affected":false,"stores":[]}`).
#[test]
fn the_scrub_report_is_not_healthy_without_a_scrub() {
    let berth = Berth::start();
    let c = berth.client();
    push_image(&c, "some/app", "v1", &Image::oci(0x12C, &[100]));
    let report = c.get("/v2/_berth/scrub").expect(200).json();
    assert_eq!(report["affected"], Value::Null, "{report}");
    assert_eq!(report["status"], "not scrubbed", "{report}");
}

/// Makes `path` and everything below it belong to `nobody`.
fn give_to_nobody(path: &Path) {
    let status = std::process::Command::new("chown")
        .arg("-R")
        .arg(format!("{NOBODY}:{NOBODY}"))
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Point 12: berth runs as `nobody` on a root holding a root-owned `lost+found` (mode 0700,
/// as on a mount point) and a repository nobody may read. The catalog lists the readable
/// repositories, gc collects in them, the dedupe pass completes, scrub names what it could
/// not read and calls the store affected, and no answer before that reads as healthy.
#[test]
fn unreadable_directories_hide_only_themselves() {
    let dir = temp_dir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    give_to_nobody(&root);
    let launch = Launch {
        uid: Some(NOBODY),
        ..Launch::default()
    };
    let mut run = settings(true, "1h");
    run.storage.insert("dedupe".into(), json!(true));
    let mut berth = Berth::start_on_launch(&root, run, launch.clone());
    let c = berth.client();
    let image = Image::oci(0x12A, &[3000, 4000]);
    push_image(&c, "open/one", "v1", &image);
    push_image(&c, "open/two", "v1", &image);
    push_image(&c, "locked/app", "v1", &Image::oci(0x12B, &[5000]));
    let orphan = push_blob(&c, "open/one", b"nothing references this blob");
    berth.kill9();

    let lost = root.join("lost+found");
    std::fs::create_dir(&lost).unwrap();
    std::fs::set_permissions(&lost, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(lost.join("#1234"), b"fsck found this").unwrap();
    let locked = root.join("locked/app");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    // The orphan is old enough for a short delay now.
    let mut run = with_scrub(settings(true, "1s"));
    run.storage.insert("dedupe".into(), json!(true));
    let berth = Berth::start_on_launch(&root, run, launch);
    let c = berth.client();

    // No answer calls the store healthy, until and after its first scrub.
    let deadline = Instant::now() + Duration::from_secs(60);
    let store = loop {
        let report = c.get("/v2/_berth/scrub").expect(200).json();
        assert_ne!(report["affected"], json!(false), "{report}");
        let store = &report["stores"][0];
        if store["started"].is_u64() {
            assert_eq!(report["affected"], json!(true), "{report}");
            break store.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no scrub report: {report}\n{}",
            berth.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(store["status"], "affected", "{store}");
    let unreadable: Vec<&str> = store["unreadable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["path"].as_str().unwrap())
        .collect();
    assert_eq!(unreadable, ["locked/app"], "{store}");
    assert_eq!(store["skipped"], json!(["lost+found"]), "{store}");
    let scrubbed: Vec<&str> = store["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["repository"].as_str().unwrap())
        .collect();
    assert_eq!(scrubbed, ["open/one", "open/two"], "{store}");

    assert_eq!(catalog(&c), ["open/one", "open/two"]);
    let collected = wait_until(Duration::from_secs(60), || {
        c.head(&format!("/v2/open/one/blobs/{orphan}")).status == 404
    });
    assert!(collected, "gc did not collect:\n{}", berth.logs());
    assert_image(&c, "open/two", "v1", &image);
    assert!(
        wait_until(Duration::from_secs(60), || berth
            .logs()
            .contains("dedupe pass: done")
            || berth.logs().contains("dedupe pass: no repository changed")),
        "the dedupe pass did not complete:\n{}",
        berth.logs()
    );
    berth.wait_sweeps(2);
    let logs = berth.logs();
    assert_eq!(
        logs.matches("cannot read this directory").count(),
        1,
        "said once per process, not per request or sweep:\n{logs}"
    );
    assert!(!logs.contains("dedupe pass failed"), "{logs}");
    assert_no_error(&berth);
}
