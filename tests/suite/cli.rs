//! The command line as a user meets it (issue 2, "CLI" and "Config"): `--version`,
//! `verify CONFIG` on good and bad zot-format configs, and `serve` refusing a bad config with
//! the same one-line error. A refused key must be named, never silently ignored.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};

use crate::util::server::{BERTH, temp_dir};

fn berth(args: &[&str]) -> Output {
    Command::new(BERTH).args(args).output().expect("run berth")
}

/// A minimal valid config on `root`, with `patch` merged in (objects merge key by key).
fn config(root: &Path, patch: Value) -> Value {
    let mut base = json!({
        "distSpecVersion": "1.1.1",
        "storage": { "rootDirectory": root },
        "http": { "address": "127.0.0.1", "port": "5000" },
        "log": { "level": "info" }
    });
    merge(&mut base, patch);
    base
}

fn merge(into: &mut Value, patch: Value) {
    match (into, patch) {
        (Value::Object(into), Value::Object(patch)) => {
            for (key, value) in patch {
                merge(into.entry(key).or_insert(Value::Null), value);
            }
        }
        (into, patch) => *into = patch,
    }
}

/// Runs `berth verify` on the given config text.
fn verify(text: &str) -> Output {
    let dir = temp_dir();
    let path = dir.path().join("config.json");
    std::fs::write(&path, text).unwrap();
    berth(&["verify", path.to_str().unwrap()])
}

/// Asserts a refusal: non-zero exit and exactly one line on stderr that names `what`.
#[track_caller]
fn assert_refused(output: &Output, what: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "accepted, but should refuse {what}: {stderr}"
    );
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "want one line naming {what}, got:\n{stderr}"
    );
    assert!(
        stderr.contains(what),
        "error does not name {what:?}: {stderr}"
    );
}

#[test]
fn version_prints_the_package_version() {
    let output = berth(&["--version"]);
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(env!("CARGO_PKG_VERSION")), "{stdout}");
}

#[test]
fn verify_accepts_zot_configs_and_prints_them_resolved() {
    let dir = temp_dir();
    let root = dir.path().join("data");
    let accepted = [
        json!({}),
        json!({ "http": { "port": 5001 } }),
        json!({ "http": { "port": "0", "readTimeout": "5s" } }),
        json!({ "storage": { "dedupe": false, "gc": false, "commit": true } }),
        json!({ "storage": { "commit": false }, "log": { "level": "debug" } }),
        json!({ "storage": { "gc": true, "gcDelay": "2h", "gcInterval": "0", "gcTimeWindow": "01:00-05:00" } }),
        json!({ "storage": { "retention": { "dryRun": true, "delay": "24h", "policies": [
            { "repositories": ["infra/*", "**/prod"], "deleteReferrers": true, "deleteUntagged": false,
              "keepTags": [{ "patterns": ["^v[0-9]+"], "mostRecentlyPushedCount": 5, "pulledWithin": "720h" }] }
        ] } } }),
        json!({ "extensions": { "scrub": { "enable": true, "interval": "24h" } } }),
    ];
    for patch in accepted {
        let text = config(&root, patch.clone()).to_string();
        let output = verify(&text);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{patch} refused: {stderr}");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.contains(root.to_str().unwrap()),
            "resolved config lacks the root: {stdout}"
        );
    }
}

#[test]
fn verify_names_unknown_and_unbuilt_keys() {
    let dir = temp_dir();
    let root = dir.path().join("data");
    let refused = [
        (json!({ "storage": { "bogus": 1 } }), "storage.bogus"),
        (json!({ "http": { "nonsense": true } }), "http.nonsense"),
        (json!({ "topLevelTypo": 1 }), "topLevelTypo"),
        (json!({ "storage": { "dedupe": "yes" } }), "storage.dedupe"),
        (
            json!({ "storage": { "gc": true, "gcDelay": "an hour" } }),
            "storage.gcDelay",
        ),
        (
            json!({ "storage": { "subPaths": { "/a": { "rootDirectory": "/tmp/a", "gcInterval": "often" } } } }),
            "storage.subPaths./a.gcInterval",
        ),
        (
            json!({ "storage": { "subPaths": { "a": { "rootDirectory": "/tmp/a" } } } }),
            "storage.subPaths.a",
        ),
        (
            json!({ "storage": { "retention": { "policies": [{ "repositories": ["**"], "keepTags": [{ "patterns": ["(unclosed"] }] }] } } }),
            "storage.retention.policies[0].keepTags[0].patterns",
        ),
        (
            json!({ "storage": { "retention": { "dryrun": true, "sometimes": 1 } } }),
            "storage.retention.sometimes",
        ),
        (
            json!({ "storage": { "storageDriver": { "name": "s3" } } }),
            "storageDriver",
        ),
        (
            json!({ "storage": { "cacheDriver": { "name": "redis" } } }),
            "cacheDriver",
        ),
        (json!({ "storage": { "remoteCache": true } }), "remoteCache"),
        (
            json!({ "extensions": { "scrub": { "interval": 5 } } }),
            "extensions.scrub.interval",
        ),
        (json!({ "extensions": { "sync": {} } }), "extensions.sync"),
    ];
    for (patch, key) in refused {
        assert_refused(&verify(&config(&root, patch).to_string()), key);
    }
}

#[test]
fn bad_config_files_are_one_line_errors_naming_the_file() {
    let dir = temp_dir();
    let missing = dir.path().join("no-such-config.json");
    assert_refused(
        &berth(&["verify", missing.to_str().unwrap()]),
        "no-such-config.json",
    );
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{ not json").unwrap();
    assert_refused(&berth(&["verify", broken.to_str().unwrap()]), "broken.json");
    // serve refuses the same way instead of starting.
    let bogus = dir.path().join("bogus.json");
    std::fs::write(
        &bogus,
        config(&dir.path().join("d"), json!({ "storage": { "bogus": 1 } })).to_string(),
    )
    .unwrap();
    assert_refused(&berth(&["serve", bogus.to_str().unwrap()]), "storage.bogus");
}
