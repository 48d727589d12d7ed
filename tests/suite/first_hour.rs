//! Issue 11's first hour of a new user: one berth per storage root (a second server, or an
//! offline `berth gc`/`berth scrub`, is refused with the holder named), and `serve` binds its
//! port before it starts any background work.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use serde_json::json;

use crate::util::oci::*;
use crate::util::server::{BERTH, Berth, Settings, temp_dir};

/// Writes an old blob nothing references into `repo_dir`, as garbage for a collector.
fn old_garbage(repo_dir: &std::path::Path) -> std::path::PathBuf {
    let bytes = random_bytes(0x6A, 64);
    let path = crate::util::layout::blob_path(repo_dir, &sha256(&bytes));
    std::fs::write(&path, &bytes).unwrap();
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(SystemTime::now() - Duration::from_secs(3 * 3600))
        .unwrap();
    path
}

/// Runs `command` to its end, or kills it after `limit` (a second server that was not
/// refused would serve forever).
fn output_within(command: &mut Command, limit: Duration) -> std::process::Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + limit;
    // The outputs checked here are a line or two: the pipes cannot fill meanwhile.
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait_with_output().unwrap()
}

#[test]
fn a_second_berth_on_one_root_is_refused_and_names_the_first() {
    let mut settings = Settings::default();
    settings.storage.insert("gc".into(), json!(true));
    let berth = Berth::start_with(settings);
    let c = berth.client();
    let image = Image::oci(0x1A, &[10]);
    push_image(&c, "hour/app", "v1", &image);
    let garbage = old_garbage(&berth.root().join("hour/app"));
    let config = berth.config_path().to_str().unwrap().to_string();
    let holder = format!("berth serve (pid {}", berth.pid());

    for args in [
        vec!["serve", &config],
        vec!["gc", &config],
        vec!["scrub", &config],
    ] {
        let refused = output_within(Command::new(BERTH).args(&args), Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("storage.rootDirectory") && stderr.contains(&holder),
            "{args:?}: {stderr}"
        );
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{args:?}: one line: {stderr}"
        );
    }
    assert!(garbage.exists(), "a refused gc deleted");
    // A dry run changes nothing, so it may read a served root.
    let dry = Command::new(BERTH)
        .args(["gc", &config, "--dry-run"])
        .output()
        .unwrap();
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    assert!(String::from_utf8_lossy(&dry.stdout).contains("unreferenced"));
    assert_image(&c, "hour/app", "v1", &image);
}

#[test]
fn serve_binds_its_port_before_any_background_work() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = temp_dir();
    let root = dir.path().join("root");
    // A root with garbage a start-up sweep would collect at once.
    {
        let berth = Berth::start_on(&root, Settings::default());
        push_image(&berth.client(), "hour/bind", "v1", &Image::oci(0x1B, &[10]));
    }
    let garbage = old_garbage(&root.join("hour/bind"));
    let config = dir.path().join("taken.json");
    let body = json!({
        "storage": { "rootDirectory": root, "gc": true, "gcDelay": "1h" },
        "http": { "address": "127.0.0.1", "port": port.to_string() },
        "log": { "level": "info" },
    });
    std::fs::write(&config, body.to_string()).unwrap();
    let failed = Command::new(BERTH)
        .args(["serve", config.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "{stderr}");
    assert!(stderr.contains("cannot listen"), "{stderr}");
    assert!(
        !stderr.contains("gc:"),
        "background work ran first:\n{stderr}"
    );
    assert!(garbage.exists(), "a sweep ran before the bind failed");
    drop(taken);
}

/// `berth verify` prints the resolved config in zot's keys: printed again it is accepted and
/// resolves to the same thing (it printed `storage.gc` as a map and `scrub.enabled` for zot's
/// `enable`, which berth itself refused). zot's local `boltdb` cache driver is accepted as
/// the embedded cache.
#[test]
fn verify_prints_a_config_berth_accepts_as_the_same() {
    let dir = temp_dir();
    let root = dir.path().join("root");
    let config = json!({
        "distSpecVersion": "1.1.1",
        "storage": {
            "rootDirectory": root, "dedupe": true, "gc": true, "gcDelay": "2h",
            "gcInterval": "0", "gcTimeWindow": "23:00-02:30",
            "cacheDriver": { "name": "boltdb", "rootDir": root },
            "retention": { "dryRun": true, "delay": "30m", "policies": [
                { "repositories": ["infra/*"], "deleteReferrers": true, "deleteUntagged": false,
                  "keepTags": [{ "patterns": ["^v"], "mostRecentlyPushedCount": 3,
                                 "pulledWithin": "720h" }] }
            ]},
            "subPaths": { "/a": { "rootDirectory": dir.path().join("a"), "dedupe": false,
                                  "gc": false } }
        },
        "http": { "address": "127.0.0.1", "port": "5000", "maxConnections": 100 },
        "log": { "level": "debug", "output": dir.path().join("berth.log") },
        "extensions": { "scrub": { "enable": true, "interval": "12h" } }
    });
    let first = dir.path().join("first.json");
    std::fs::write(&first, config.to_string()).unwrap();
    let printed = Command::new(BERTH)
        .args(["verify", first.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        printed.status.success(),
        "{}",
        String::from_utf8_lossy(&printed.stderr)
    );
    assert!(String::from_utf8_lossy(&printed.stderr).contains("boltdb"));
    let second = dir.path().join("second.json");
    std::fs::write(&second, &printed.stdout).unwrap();
    let again = Command::new(BERTH)
        .args(["verify", second.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "berth refused what it printed: {}\n{}",
        String::from_utf8_lossy(&again.stderr),
        String::from_utf8_lossy(&printed.stdout)
    );
    assert_eq!(
        String::from_utf8_lossy(&again.stdout),
        String::from_utf8_lossy(&printed.stdout)
    );
}

/// `gc` and `scrub` without CONFIG use the embedded default, as `serve` does (`./berth-data`).
#[test]
fn gc_and_scrub_without_a_config_use_the_embedded_default() {
    let dir = temp_dir();
    for args in [vec!["gc", "--dry-run"], vec!["gc"], vec!["scrub"]] {
        let run = Command::new(BERTH)
            .args(&args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
    }
    assert!(dir.path().join("berth-data").is_dir());
}

/// A root that cannot be created is one line that says the OS error once (it said it three
/// times: each layer repeated its cause).
#[test]
fn a_bad_root_says_its_cause_once() {
    let dir = temp_dir();
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let config = dir.path().join("bad-root.json");
    let body = json!({
        "storage": { "rootDirectory": blocker.join("root") },
        "http": { "address": "127.0.0.1", "port": "0" },
    });
    std::fs::write(&config, body.to_string()).unwrap();
    let failed = output_within(
        Command::new(BERTH).args(["serve", config.to_str().unwrap()]),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("storage.rootDirectory"), "{stderr}");
    assert_eq!(stderr.matches("Not a directory").count(), 1, "{stderr}");
}

/// A cache directory berth may not use is a permission error, said as one, and the cache is
/// left where it is (it said "unusable, rebuilding it" and moved a healthy cache aside).
/// Root may use anything, so berth runs as `nobody` here.
#[test]
fn a_cache_berth_may_not_use_says_permission_denied() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    const NOBODY: u32 = 65534;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root, to start berth as another user");
        return;
    }
    let dir = temp_dir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = dir.path().join("root");
    let cache = root.join(".berth/cache");
    std::fs::create_dir_all(&cache).unwrap();
    let chown = Command::new("chown")
        .arg(format!("{NOBODY}:{NOBODY}"))
        .arg(&root)
        .arg(root.join(".berth"))
        .status()
        .unwrap();
    assert!(chown.success());
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).unwrap();
    let config = dir.path().join("config.json");
    let body = json!({
        "storage": { "rootDirectory": root },
        "http": { "address": "127.0.0.1", "port": "0" },
    });
    std::fs::write(&config, body.to_string()).unwrap();
    let failed = output_within(
        Command::new(BERTH)
            .args(["serve", config.to_str().unwrap()])
            .uid(NOBODY)
            .gid(NOBODY),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert!(!stderr.contains("rebuilding"), "{stderr}");
    let moved: Vec<_> = std::fs::read_dir(root.join(".berth"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("cache.damaged"))
        .collect();
    assert!(moved.is_empty(), "the cache was moved aside");
    assert!(cache.is_dir());
}

/// A damaged copy the start-up dedupe pass replaces by a link to a verified copy is logged as
/// repaired, naming the file and the digest, and the scrub report is brought up to date at
/// once (it stayed "affected" until the next scrub interval).
#[test]
fn the_dedupe_pass_logs_what_it_repairs_and_scrub_catches_up() {
    let dir = temp_dir();
    let root = dir.path().join("root");
    let image = Image::oci(0x1C, &[4096]);
    {
        let mut separate = Settings::default();
        separate.storage.insert("dedupe".into(), json!(false));
        let berth = Berth::start_on(&root, separate);
        push_image(&berth.client(), "r/one", "v1", &image);
        push_image(&berth.client(), "r/two", "v1", &image);
    }
    let layer = sha256(&image.layers[0]);
    let damaged = crate::util::layout::blob_path(&root.join("r/one"), &layer);
    let mut bytes = std::fs::read(&damaged).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&damaged, &bytes).unwrap();

    let mut settings = Settings::default();
    settings.storage.insert("dedupe".into(), json!(true));
    settings
        .extensions
        .insert("scrub".into(), json!({ "enable": true, "interval": "24h" }));
    let berth = Berth::start_on(&root, settings);
    assert!(
        berth.wait_for_log("dedupe pass: done", Duration::from_secs(60)),
        "{}",
        berth.logs()
    );
    let logs = berth.logs();
    let repaired = logs
        .lines()
        .find(|l| l.contains("dedupe pass: repaired"))
        .unwrap_or_else(|| panic!("no repair logged:\n{logs}"));
    assert!(
        repaired.contains("r/one/blobs/sha256/") && repaired.contains(&layer),
        "{repaired}"
    );
    let c = berth.client();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let report = c.get("/v2/_berth/scrub").expect(200).json();
        if report["affected"] == json!(false) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the scrub report still says {report}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_image(&c, "r/one", "v1", &image);
}

/// `_catalog` is served from a sorted set in memory; a repository another program lays down
/// on disk appears after the next walk (each gc sweep walks), and one berth removes goes.
#[test]
fn the_catalog_sees_repositories_laid_down_by_other_tools() {
    let mut settings = Settings::default();
    let storage = &mut settings.storage;
    storage.insert("gc".into(), json!(true));
    storage.insert("gcDelay".into(), json!("1s"));
    storage.insert("gcInterval".into(), json!("300ms"));
    let berth = Berth::start_with(settings);
    let c = berth.client();
    let image = Image::oci(0x1D, &[10]);
    push_image(&c, "cat/pushed", "v1", &image);
    let listed = |c: &crate::util::http::Client| {
        c.get("/v2/_catalog?n=1000").expect(200).json()["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(listed(&c), ["cat/pushed"]);
    crate::util::layout::write_layout(&berth.root().join("cat/laid"), "v1", &image);
    berth.wait_sweeps(2);
    assert_eq!(listed(&c), ["cat/laid", "cat/pushed"]);
    let (names, pages) = crate::util::http::paginate(&c, "/v2/_catalog?n=1", "repositories");
    assert_eq!(
        (names, pages),
        (vec!["cat/laid".to_string(), "cat/pushed".to_string()], 2)
    );
}

/// A page size at the top of the integer range is served, not looped on (n + 1 overflowed).
#[test]
fn a_huge_catalog_page_size_is_answered() {
    let berth = Berth::start();
    let c = berth.client();
    push_image(&c, "cat/one", "v1", &Image::oci(0x1E, &[10]));
    let page = c
        .get(&format!("/v2/_catalog?n={}", u64::MAX))
        .expect(200)
        .json();
    assert_eq!(page["repositories"], json!(["cat/one"]));
}
