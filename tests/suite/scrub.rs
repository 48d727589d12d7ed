//! Scrub (issue 5, point 3): one blob's bytes altered on disk, hard-linked into two
//! repositories by dedupe; the background scrub's HTTP report and the offline `berth scrub`
//! table name exactly that digest, with every repository and tag using it, and nothing else;
//! orphans and idle uploads are warnings, not failures. The same flow runs on a local root
//! and on S3 (issue 13), where the second copy is a placeholder and the bytes are altered by a
//! plain PUT to the bucket.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::util::oci::*;
use crate::util::server::{BERTH, Settings};
use crate::util::store::{Backend, Store, blob};

/// gc off, so nothing is collected; its delay still says when an upload counts as stale.
fn settings() -> Settings {
    let mut settings = Settings::default();
    settings.storage.insert("gc".into(), json!(false));
    settings.storage.insert("gcDelay".into(), json!("1s"));
    settings
        .extensions
        .insert("scrub".into(), json!({ "enable": true, "interval": "1s" }));
    settings
}

/// `(repository, tag or digest, affected blob)` of every affected image in an HTTP report.
fn affected(report: &Value) -> BTreeSet<(String, String, String)> {
    let mut found = BTreeSet::new();
    for store in report["stores"].as_array().unwrap() {
        for repo in store["repositories"].as_array().unwrap() {
            for image in repo["images"].as_array().unwrap() {
                for blob in image["affected"].as_array().unwrap() {
                    let name = image["tag"].as_str().or(image["digest"].as_str()).unwrap();
                    found.insert((
                        repo["repository"].as_str().unwrap().to_string(),
                        name.to_string(),
                        blob["digest"].as_str().unwrap().to_string(),
                    ));
                }
            }
        }
    }
    found
}

#[test]
fn scrub_names_the_altered_blob_and_everything_that_uses_it() {
    scrub_names_the_altered_blob(Backend::Local);
}

#[test]
fn scrub_on_s3_names_the_altered_blob_and_everything_that_uses_it() {
    scrub_names_the_altered_blob(Backend::S3);
}

fn scrub_names_the_altered_blob(backend: Backend) {
    let store = Store::new(backend);
    let berth = store.start(settings());
    let c = berth.client();
    let shared = Image::oci(100, &[64_000, 3000]);
    let other = Image::oci(101, &[5000]);
    push_image(&c, "scrub/one", "v1", &shared);
    put_manifest(&c, "scrub/one", "stable", OCI_MANIFEST, &shared.manifest);
    push_image(&c, "scrub/two", "v1", &shared);
    push_image(&c, "scrub/three", "v1", &other);
    let orphan = push_blob(&c, "scrub/three", b"nobody references this");
    // A sha512 layer is checked with sha512: hashed with sha256 it would look affected.
    let wide_layer = random_bytes(102, 4321);
    upload(
        &c,
        "scrub/four",
        &wide_layer,
        &sha512(&wide_layer),
        Upload::Monolithic,
    );
    let wide_config = b"{}".to_vec();
    push_blob(&c, "scrub/four", &wide_config);
    let wide = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, &wide_config),
        "layers": [{ "mediaType": OCI_LAYER_GZIP, "digest": sha512(&wide_layer), "size": wide_layer.len() }]
    }))
    .unwrap();
    put_manifest(&c, "scrub/four", "v1", OCI_MANIFEST, &wide);
    c.request("POST", "/v2/scrub/three/blobs/uploads/")
        .send()
        .expect(202);
    let layer = sha256(&shared.layers[0]);
    let file = blob("scrub/one", &layer);
    assert_eq!(
        store.copies(&[file.clone(), blob("scrub/two", &layer)]),
        1,
        "dedupe stores the layer of both repositories once"
    );
    std::thread::sleep(Duration::from_millis(1100));
    store.corrupt(&file);
    let altered_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();

    // The background scrub's report, from a run that started after the change.
    let deadline = Instant::now() + Duration::from_secs(60);
    let report = loop {
        let report = c.get("/v2/_berth/scrub").expect(200).json();
        let fresh = report["stores"]
            .as_array()
            .is_some_and(|s| s.iter().all(|s| s["started"].as_u64() > Some(altered_at)));
        if fresh && !report["stores"].as_array().unwrap().is_empty() {
            break report;
        }
        assert!(
            Instant::now() < deadline,
            "no scrub report: {report}\n{}",
            berth.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(report["affected"], json!(true), "{report}");
    let want: BTreeSet<(String, String, String)> = [
        ("scrub/one", "stable"),
        ("scrub/one", "v1"),
        ("scrub/two", "v1"),
    ]
    .into_iter()
    .map(|(r, t)| (r.to_string(), t.to_string(), layer.clone()))
    .collect();
    assert_eq!(affected(&report), want, "{report}");
    let repos = report["stores"][0]["repositories"].as_array().unwrap();
    let three = repos
        .iter()
        .find(|r| r["repository"] == "scrub/three")
        .unwrap();
    assert_eq!(three["status"], "ok");
    let four = repos
        .iter()
        .find(|r| r["repository"] == "scrub/four")
        .unwrap();
    assert_eq!(four["status"], "ok", "{four}");
    assert_eq!(three["orphans"], json!([orphan]));
    assert_eq!(three["staleUploads"].as_array().unwrap().len(), 1);
    // Hashed once per file, not per link: `shared`'s config and two layers (in two
    // repositories), `other`'s config and layer, `wide`'s config and layer.
    let files = report["stores"][0]["filesHashed"].as_u64().unwrap();
    assert_eq!(files, 7, "{report}");
    let logs = berth.logs();
    assert!(logs.contains("blobs/manifest affected"), "{logs}");
    assert!(logs.contains("blobs/manifest ok"), "{logs}");
    drop(berth);

    // Offline: the same findings as a table, and exit status 1.
    let config = store.root.with_file_name("scrub.json");
    std::fs::write(
        &config,
        json!({ "storage": store.storage_config(), "http": { "address": "127.0.0.1", "port": "0" } })
            .to_string(),
    )
    .unwrap();
    let run = || {
        Command::new(BERTH)
            .args(["scrub", config.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let output = run();
    let table = String::from_utf8_lossy(&output.stdout).to_string();
    assert_eq!(output.status.code(), Some(1), "{table}");
    let affected_rows: BTreeSet<(String, String, String)> = table
        .lines()
        .filter(|l| l.split_whitespace().nth(2) == Some("affected"))
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (
                cols[0].to_string(),
                cols[1].to_string(),
                cols[3].to_string(),
            )
        })
        .collect();
    assert_eq!(affected_rows, want, "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("scrub/three") && l.contains(" ok")),
        "{table}"
    );

    // Scrub repaired and deleted nothing; with the byte put back, it finds nothing.
    store.corrupt(&file);
    assert!(store.exists(&file) && store.exists(&blob("scrub/three", &orphan)));
    let output = run();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}
