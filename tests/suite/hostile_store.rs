//! Issue 10's storage faults, each shown with the shape that broke it: a manifest DELETE racing
//! a PUT of the same bytes, the collector racing uploads into an empty repository, names that
//! collide with the layout, manifest graphs that nest without end, and blob DELETEs that would
//! strand a listed manifest. Each test failed on the build before its fix (run the suite with
//! `BERTH_UNDER_TEST=<older berth>` to see it).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::Duration;

use serde_json::{Value, json};

use crate::util::oci::*;
use crate::util::server::{Berth, Settings};

/// Rounds of the DELETE/PUT race; the unfixed build lost a manifest within a few dozen.
const RACE_ROUNDS: usize = 150;

#[test]
fn a_put_racing_a_delete_of_the_same_manifest_never_acknowledges_a_lost_tag() {
    let berth = Berth::start();
    let c = berth.client();
    let image = Image::oci(0xDE1, &[512]);
    push_image(&c, "race/manifest", "base", &image);
    let digest = image.digest();
    let manifest = Arc::new(image.manifest.clone());
    for round in 0..RACE_ROUNDS {
        put_manifest(&c, "race/manifest", "base", OCI_MANIFEST, &manifest);
        let barrier = Arc::new(Barrier::new(2));
        let deleter = {
            let (barrier, digest) = (Arc::clone(&barrier), digest.clone());
            thread::spawn(move || {
                barrier.wait();
                c.delete(&format!("/v2/race/manifest/manifests/{digest}"))
                    .status
            })
        };
        barrier.wait();
        let tag = format!("new{round}");
        let put = try_put_manifest(&c, "race/manifest", &tag, OCI_MANIFEST, &manifest)
            .expect("transport");
        let deleted = deleter.join().unwrap();
        assert!(
            matches!(deleted, 202 | 404),
            "round {round}: DELETE {deleted}"
        );
        assert_eq!(put.status, 201, "round {round}: {put}");
        // Either order is a valid outcome (a DELETE after the PUT takes the new tag too), but
        // a listed tag must serve its manifest: listed with its bytes gone was the fault.
        let listed = c.get("/v2/race/manifest/tags/list").expect(200).json()["tags"]
            .as_array()
            .unwrap()
            .contains(&json!(tag));
        let by_tag = c.get_manifest("race/manifest", &tag, OCI_MANIFEST);
        let by_digest = c.head(&format!("/v2/race/manifest/manifests/{digest}"));
        if listed {
            assert_eq!(
                by_tag.status, 200,
                "round {round}: tag {tag} lost its manifest"
            );
            assert_eq!(by_tag.body, *manifest);
            assert_eq!(by_digest.status, 200, "round {round}: {by_digest}");
        } else {
            assert_eq!(by_tag.status, 404, "round {round}: {by_tag}");
        }
    }
}

#[test]
fn a_blob_delete_never_strands_a_listed_manifest() {
    let berth = Berth::start();
    let c = berth.client();
    let image = Image::oci(0xDE2, &[100]);
    push_image(&c, "strand/me", "v1", &image);
    c.delete(&format!("/v2/strand/me/blobs/{}", image.digest()))
        .expect_error(405, "UNSUPPORTED");
    assert_image(&c, "strand/me", "v1", &image);
    // Its layer is no manifest: deleting it is the client's right.
    c.delete(&format!("/v2/strand/me/blobs/{}", sha256(&image.layers[0])))
        .expect(202);
}

/// Clients looping open session / PUT / DELETE over few repositories while the collector
/// sweeps every 100 ms: every upload acknowledged must land in a repository.
#[test]
fn the_collector_never_removes_a_repository_an_upload_lands_in() {
    let mut settings = Settings::default();
    let storage = &mut settings.storage;
    storage.insert("dedupe".into(), json!(false));
    storage.insert("gc".into(), json!(true));
    storage.insert("gcDelay".into(), json!("1s"));
    storage.insert("gcInterval".into(), json!("100ms"));
    let berth = Berth::start_with(settings);
    let c = berth.client();
    let stop = Arc::new(AtomicBool::new(false));
    let pushed = Arc::new(AtomicUsize::new(0));
    let faults: Arc<Mutex<Vec<String>>> = Arc::default();
    let clients: Vec<_> = (0..4u64)
        .map(|client| {
            let (stop, pushed, faults) =
                (Arc::clone(&stop), Arc::clone(&pushed), Arc::clone(&faults));
            thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let repo = format!("empty/r{}", (client + n) % 6);
                    let blob = random_bytes(client << 32 | n, 64);
                    let digest = sha256(&blob);
                    let done = try_upload(&c, &repo, &blob, &digest, Upload::SessionPut)
                        .expect("transport");
                    if done.status != 201 {
                        faults
                            .lock()
                            .unwrap()
                            .push(format!("{repo}: upload {done}"));
                        continue;
                    }
                    pushed.fetch_add(1, Ordering::Relaxed);
                    // The blob is younger than gcDelay: its repository cannot be empty.
                    let tags = c.get(&format!("/v2/{repo}/tags/list"));
                    if tags.status != 200 {
                        faults
                            .lock()
                            .unwrap()
                            .push(format!("{repo}: after 201, {tags}"));
                    }
                    let deleted = c.delete(&format!("/v2/{repo}/blobs/{digest}"));
                    if deleted.status != 202 {
                        faults
                            .lock()
                            .unwrap()
                            .push(format!("{repo}: DELETE {deleted}"));
                    }
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_secs(12));
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let faults = faults.lock().unwrap();
    assert!(
        faults.is_empty(),
        "{} faults, e.g. {:?}",
        faults.len(),
        &faults[..faults.len().min(5)]
    );
    assert!(
        pushed.load(Ordering::Relaxed) > 100,
        "the clients barely ran"
    );
    assert!(!berth.logs().contains("ERROR"), "{}", berth.logs());
}

#[test]
fn names_that_collide_with_the_layout_are_refused() {
    let berth = Berth::start();
    let c = berth.client();
    let image = Image::oci(0xDE3, &[10]);
    push_image(&c, "x", "v1", &image);
    for name in [
        "x/index.json",
        "w/index.json",
        "x/oci-layout",
        "index.json",
        "a/blobs/b",
    ] {
        c.request("POST", &format!("/v2/{name}/blobs/uploads/"))
            .send()
            .expect_error(400, "NAME_INVALID");
        c.get(&format!("/v2/{name}/tags/list"))
            .expect_error(400, "NAME_INVALID");
        try_put_manifest(&c, name, "v1", OCI_MANIFEST, &image.manifest)
            .unwrap()
            .expect_error(400, "NAME_INVALID");
        // The shape that left a session record behind per request.
        c.get(&format!("/v2/{name}/blobs/uploads/{}", uuid_like(7)))
            .expect_error(400, "NAME_INVALID");
    }
    assert!(!berth.root().join("x/index.json").is_dir());
    assert!(!berth.root().join("w").exists());
    assert_image(&c, "x", "v1", &image);
    push_image(&c, "w", "v1", &image);
    assert_image(&c, "w", "v1", &image);
}

fn uuid_like(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

/// An index over `children` (descriptors given as JSON).
fn index_over(children: Vec<Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": children,
    }))
    .unwrap()
}

#[test]
fn indexes_nest_at_most_sixteen_manifests_deep() {
    let berth = Berth::start();
    let c = berth.client();
    let image = Image::oci(0xDE4, &[10]);
    push_image(&c, "deep/chain", "leaf", &image);
    // Level 1 is the image; each index adds one and lists the one below twice.
    let mut below = image.descriptor();
    for level in 2..=16 {
        let index = index_over(vec![below.clone(), below.clone()]);
        put_manifest(&c, "deep/chain", &format!("l{level}"), OCI_INDEX, &index);
        below = descriptor(OCI_INDEX, &index);
    }
    let too_deep = index_over(vec![below]);
    let refused = try_put_manifest(&c, "deep/chain", "l17", OCI_INDEX, &too_deep)
        .unwrap()
        .expect_error(400, "MANIFEST_INVALID");
    assert!(
        String::from_utf8_lossy(&refused.body).contains("16 levels"),
        "{refused}"
    );
    // A manifest nobody pushed, looked up through every index (each read once).
    c.head(&format!("/v2/deep/chain/manifests/{}", sha256(b"nobody")))
        .expect(404);
    let report = c.get("/v2/deep/chain/tags/list").expect(200).json();
    assert_eq!(report["tags"].as_array().unwrap().len(), 16);
}

/// A PATCH trickling its body holds its session; the collector, finding the session's file
/// older than gcDelay (bytes wait in the writer's buffer), must skip it, not wait for it.
#[test]
fn the_collector_never_waits_on_a_trickling_upload() {
    let mut settings = Settings::default();
    let storage = &mut settings.storage;
    storage.insert("gc".into(), json!(true));
    storage.insert("gcDelay".into(), json!("1s"));
    storage.insert("gcInterval".into(), json!("100ms"));
    let berth = Berth::start_with(settings);
    let c = berth.client();
    let session = c
        .request("POST", "/v2/slow/upload/blobs/uploads/")
        .send()
        .expect(202)
        .location();
    let mut stream = c.connect().unwrap();
    let head = format!(
        "PATCH {session} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: 4096\r\nConnection: close\r\n\r\n"
    );
    use std::io::Write;
    stream.write_all(head.as_bytes()).unwrap();
    // Past gcDelay, with the PATCH holding the session, then count sweeps while it trickles.
    for _ in 0..15 {
        stream.write_all(b"x").unwrap();
        thread::sleep(Duration::from_millis(100));
    }
    let swept_before = berth.logs().matches("gc: sweep done").count();
    for _ in 0..30 {
        stream.write_all(b"x").unwrap();
        thread::sleep(Duration::from_millis(100));
    }
    let swept = berth.logs().matches("gc: sweep done").count() - swept_before;
    assert!(
        swept >= 5,
        "only {swept} sweeps in 3 s of trickling:\n{}",
        berth.logs()
    );
}

#[test]
fn a_storage_failure_never_shows_server_paths() {
    let berth = Berth::start();
    let c = berth.client();
    let image = Image::oci(0xDE5, &[10]);
    push_image(&c, "broken/index", "v1", &image);
    // index.json replaced by a directory: reading it is an I/O error naming the full path.
    let index = berth.root().join("broken/index/index.json");
    std::fs::remove_file(&index).unwrap();
    std::fs::create_dir(&index).unwrap();
    let failed = c.get("/v2/broken/index/tags/list");
    assert_eq!(failed.status, 500, "{failed}");
    let body = String::from_utf8_lossy(&failed.body);
    let root = berth.root().to_string_lossy().to_string();
    assert!(!body.contains(&root) && !body.contains("/tmp"), "{body}");
    assert!(berth.logs().contains(&root), "the log keeps the cause");
}

/// A tagged index whose `subject` is a manifest it also lists: each keeps the other (the
/// index reaches the manifest; the manifest is the index's subject), so retention with
/// `deleteReferrers` and `deleteUntagged` removes neither, however old both are.
#[test]
fn manifests_that_keep_each_other_stay() {
    let mut settings = Settings::default();
    let storage = &mut settings.storage;
    storage.insert("gc".into(), json!(true));
    storage.insert("gcDelay".into(), json!("1s"));
    storage.insert("gcInterval".into(), json!("300ms"));
    storage.insert(
        "retention".into(),
        json!({ "delay": "1s", "policies": [
            { "repositories": ["**"], "deleteReferrers": true, "deleteUntagged": true }
        ]}),
    );
    let berth = Berth::start_with(settings);
    let c = berth.client();
    let image = Image::oci(0xDE6, &[10]);
    push_image(&c, "mutual/keep", &image.digest(), &image);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "subject": image.descriptor(),
        "manifests": [image.descriptor()],
    }))
    .unwrap();
    put_manifest(&c, "mutual/keep", "t", OCI_INDEX, &index);
    // Past both delays, then a few sweeps.
    thread::sleep(Duration::from_millis(1500));
    berth.wait_sweeps(3);
    assert_eq!(c.get_manifest("mutual/keep", "t", OCI_INDEX).status, 200);
    assert_image(&c, "mutual/keep", &image.digest(), &image);
}
