//! berth on S3 (issue 13), against moto as `scripts/s3-services.sh` starts it: an image
//! pushed over HTTP to a store whose config names a bucket (zot's `storageDriver`) is pulled
//! back byte-identical, also from a second berth process on a fresh local root after the
//! first is gone (nothing a pull needs lives in the process or on its disk); the bucket holds
//! the OCI layout under `rootdirectory`, so a layout written on disk and copied into the
//! bucket with plain PUTs is served as it is, and the bucket copied out is a layout a local
//! berth serves; a `subPaths` config mixes a local and an S3 store behind one API; and a
//! restart with dedupe off makes dedupe's placeholders full copies again; a small blob
//! pulled is served from memory (`blobcachesize`) until `revalidate` has passed, then not
//! once it was deleted from the bucket behind berth's back.
//! skopeo, oras, scrub, gc and dedupe on S3 run the local flows in their own modules. Without
//! the servers the tests fail, naming the script: they never pass by skipping.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use crate::util::layout::{self, read_index, tags_of, write_layout};
use crate::util::oci::*;
use crate::util::s3::Bucket;
use crate::util::server::{Berth, Settings, temp_dir};
use crate::util::store::{Backend, Store, blob};

#[test]
fn an_image_pushed_to_s3_is_pulled_back_by_another_process() {
    let bucket = Bucket::new();
    // The last layer is more than one part of `chunksize`: a multipart upload.
    let image = Image::oci(13, &[10, 70_000, 6 * 1024 * 1024 + 17]);
    {
        let berth = Berth::start_with(bucket.settings("/berth", Settings::default()));
        push_image(&berth.client(), "s3/app", "v1", &image);
        assert_image(&berth.client(), "s3/app", "v1", &image);
    }
    let berth = Berth::start_with(bucket.settings("/berth", Settings::default()));
    assert_image(&berth.client(), "s3/app", "v1", &image);
    for layer in &image.layers {
        assert!(get_blob(&berth.client(), "s3/app", &sha256(layer)) == *layer);
    }
    // The bucket holds the layout under `rootdirectory`.
    let big = &image.layers[2];
    let hex = &sha256(big)["sha256:".len()..];
    let object = bucket.get(&format!("berth/s3/app/blobs/sha256/{hex}"));
    assert!(
        object.as_ref() == Some(big),
        "the blob is the object under rootdirectory"
    );
    let index = bucket.get("berth/s3/app/index.json").expect("index.json");
    assert!(String::from_utf8_lossy(&index).contains(&image.digest()));
}

#[test]
fn a_layout_copied_into_the_bucket_is_served_as_it_is() {
    let bucket = Bucket::new();
    let work = temp_dir();
    // Two repositories written on disk, the way skopeo's `oci:` transport writes them, with a
    // layer in common (a full copy in each: nothing on disk says the other has it).
    let shared = random_bytes(1300, 90_000);
    let app = Image::oci(1301, &[20_000]);
    let tool = Image::assemble(
        OCI_MANIFEST,
        br#"{"architecture":"arm64","os":"linux"}"#.to_vec(),
        OCI_CONFIG,
        vec![shared.clone(), random_bytes(1302, 4000)],
        OCI_LAYER_GZIP,
        serde_json::Value::Null,
    );
    let with_shared = Image::assemble(
        OCI_MANIFEST,
        br#"{"architecture":"amd64","os":"linux"}"#.to_vec(),
        OCI_CONFIG,
        vec![shared.clone()],
        OCI_LAYER_GZIP,
        serde_json::Value::Null,
    );
    let root = work.path().join("root");
    write_layout(&root.join("imported/app"), "v1", &app);
    write_layout(&root.join("imported/tool"), "2.0", &tool);
    write_layout(&root.join("other"), "latest", &with_shared);
    bucket.copy_in(&root, "layouts/");

    let berth = Berth::start_with(bucket.settings("/layouts", Settings::default()));
    let c = berth.client();
    let catalog = c.get("/v2/_catalog").expect(200).json();
    assert_eq!(
        catalog["repositories"],
        json!(["imported/app", "imported/tool", "other"])
    );
    assert_image(&c, "imported/app", "v1", &app);
    assert_image(&c, "imported/tool", "2.0", &tool);
    assert_image(&c, "other", "latest", &with_shared);
    let tags = c.get("/v2/imported/tool/tags/list").expect(200).json();
    assert_eq!(tags["tags"], json!(["2.0"]));

    // And berth keeps writing the same layout there: a new tag lands in the copied index.
    push_image(&c, "imported/app", "v2", &app);
    let index: serde_json::Value = serde_json::from_slice(
        &bucket
            .get("layouts/imported/app/index.json")
            .expect("index.json"),
    )
    .unwrap();
    let mut tagged = tags_of(&index);
    tagged.sort();
    assert_eq!(
        tagged,
        vec![
            ("v1".to_string(), app.digest()),
            ("v2".to_string(), app.digest())
        ]
    );
}

#[test]
fn what_berth_pushed_to_the_bucket_copied_out_is_a_layout_a_local_berth_serves() {
    let bucket = Bucket::new();
    let app = Image::oci(1310, &[30_000, 6 * 1024 * 1024]);
    let other = Image::oci(1311, &[5000]);
    {
        let berth = Berth::start_with(bucket.settings("/berth", Settings::default()));
        let c = berth.client();
        push_image(&c, "out/app", "v1", &app);
        push_image(&c, "out/other", "stable", &other);
        // An index pushed by digest children and a tag, as a multi-platform image would be.
        push_image(&c, "out/other", &app.digest(), &app);
        put_manifest(
            &c,
            "out/other",
            "multi",
            OCI_INDEX,
            &index_of(OCI_INDEX, &[&app, &other]),
        );
    }

    let work = temp_dir();
    let root = work.path().join("root");
    bucket.copy_out("berth/", &root);
    // A plain copy carries no object metadata, so dedupe's placeholders (the second
    // repository's copies of `app`) come out as empty files; they are all that is unsound.
    let placeholders: BTreeSet<PathBuf> = bucket
        .keys("berth/")
        .into_iter()
        .filter(|key| bucket.holder_of(key).is_some())
        .map(|key| root.join(&key["berth/".len()..]))
        .collect();
    assert_eq!(
        placeholders.len(),
        app.blobs().len() + 1,
        "{placeholders:?}"
    );
    let unsound: BTreeSet<PathBuf> = layout::audit(&root)
        .problems
        .iter()
        .map(|p| PathBuf::from(p.split_once(": ").expect("path: problem").0))
        .collect();
    assert_eq!(unsound, placeholders);
    assert_eq!(
        tags_of(&read_index(&root.join("out/app"))),
        vec![("v1".to_string(), app.digest())]
    );

    // The local start-up pass fills each empty copy from the verified one it finds.
    let berth = Berth::start_on(&root, Settings::default());
    assert!(
        berth.wait_for_log("dedupe pass: done", Duration::from_secs(60)),
        "{}",
        berth.logs()
    );
    layout::assert_sound(&root);
    let c = berth.client();
    let catalog = c.get("/v2/_catalog").expect(200).json();
    assert_eq!(catalog["repositories"], json!(["out/app", "out/other"]));
    assert_image(&c, "out/app", "v1", &app);
    assert_image(&c, "out/other", "stable", &other);
    assert_image(&c, "out/other", &app.digest(), &app);
    assert_eq!(
        c.get_manifest("out/other", "multi", OCI_INDEX)
            .expect(200)
            .body,
        index_of(OCI_INDEX, &[&app, &other])
    );
}

#[test]
fn sub_paths_mix_a_local_and_an_s3_store_behind_one_api() {
    let bucket = Bucket::new();
    let work = temp_dir();
    let local = work.path().join("local");
    let mut settings = Settings::default();
    settings.storage.insert(
        "subPaths".into(),
        json!({
            "/remote": {
                "rootDirectory": work.path().join("remote"),
                "storageDriver": bucket.storage_driver("/remote-store"),
            }
        }),
    );
    let berth = Berth::start_on(&local, settings);
    let c = berth.client();
    let image = Image::oci(1320, &[40_000, 6 * 1024 * 1024]);
    let repos = ["here/app", "remote/app", "remote/deep/tool"];
    for repo in repos {
        push_image(&c, repo, "v1", &image);
    }
    for repo in repos {
        assert_image(&c, repo, "v1", &image);
    }
    let catalog = c.get("/v2/_catalog").expect(200).json();
    assert_eq!(catalog["repositories"], json!(repos));

    // Each store's bytes where they belong: the local one in files, the S3 one in objects.
    assert_eq!(
        tags_of(&read_index(&local.join("here/app"))),
        vec![("v1".to_string(), image.digest())]
    );
    assert!(!local.join("remote").exists(), "an S3 repository on disk");
    assert!(
        !work.path().join("remote/remote").exists(),
        "an S3 repository on its local root"
    );
    let keys = bucket.keys("");
    for repo in ["remote/app", "remote/deep/tool"] {
        let index = bucket
            .get(&format!("remote-store/{repo}/index.json"))
            .unwrap_or_else(|| panic!("{repo} is not in the bucket: {keys:?}"));
        assert!(String::from_utf8_lossy(&index).contains(&image.digest()));
    }
    assert!(
        keys.iter().all(|k| k.starts_with("remote-store/remote/")),
        "only the S3 store's repositories are in the bucket: {keys:?}"
    );
    layout::assert_sound(&local);
}

#[test]
fn a_restart_with_dedupe_off_makes_every_placeholder_a_full_copy() {
    let store = Store::new(Backend::S3);
    let image = Image::oci(1340, &[20_000, 6 * 1024 * 1024 + 3]);
    let repos = ["restore/a", "restore/b", "restore/c"];
    let with_dedupe = |dedupe: bool| {
        let mut settings = Settings::default();
        settings.storage.insert("dedupe".into(), json!(dedupe));
        settings
    };
    {
        let berth = store.start(with_dedupe(true));
        for repo in repos {
            push_image(&berth.client(), repo, "v1", &image);
        }
    }
    let digests: Vec<String> = image
        .blobs()
        .into_iter()
        .chain([image.manifest.as_slice()])
        .map(sha256)
        .collect();
    let paths = |digest: &str| -> Vec<String> { repos.iter().map(|r| blob(r, digest)).collect() };
    for digest in &digests {
        assert_eq!(store.copies(&paths(digest)), 1, "{digest}: one holder");
    }

    let berth = store.start(with_dedupe(false));
    assert!(
        berth.wait_for_log(
            "dedupe restore: placeholders made full copies",
            Duration::from_secs(60)
        ),
        "{}",
        berth.logs()
    );
    for digest in &digests {
        assert_eq!(
            store.copies(&paths(digest)),
            repos.len(),
            "{digest}: a full copy in each repository"
        );
    }
    for repo in repos {
        assert_image(&berth.client(), repo, "v1", &image);
    }
    store.assert_sound();
}

/// A blob pulled once is kept in memory: deleted from the bucket by another tool, it is still
/// served whole and in ranges within `revalidate` (no read reaches the bucket), and is
/// unknown once `revalidate` has passed. With `blobcachesize: 0` nothing is kept.
#[test]
fn a_pulled_blob_is_served_from_memory_until_revalidate_passes() {
    const REVALIDATE: Duration = Duration::from_secs(5);
    let bucket = Bucket::new();
    let start = |blobcachesize: u64| {
        let mut settings = bucket.settings("/berth", Settings::default());
        let driver = settings.storage.get_mut("storageDriver").unwrap();
        driver["revalidate"] = json!(format!("{}s", REVALIDATE.as_secs()));
        driver["blobcachesize"] = json!(blobcachesize);
        Berth::start_with(settings)
    };
    let berth = start(64 << 20);
    let c = berth.client();
    let layer = random_bytes(31, 300_000);
    let digest = push_blob(&c, "cached/app", &layer);
    let key = format!(
        "berth/cached/app/blobs/sha256/{}",
        &digest["sha256:".len()..]
    );
    let target = format!("/v2/cached/app/blobs/{digest}");
    assert!(get_blob(&c, "cached/app", &digest) == layer);
    let pulled = std::time::Instant::now();
    bucket.delete(&key);
    assert!(
        get_blob(&c, "cached/app", &digest) == layer,
        "served from memory"
    );
    let ranged = c
        .request("GET", &target)
        .header("Range", "bytes=100-199")
        .send()
        .expect(206);
    assert!(ranged.body == layer[100..200]);
    c.head(&target).expect(200);
    assert!(
        pulled.elapsed() < REVALIDATE,
        "the pulls from memory took longer than revalidate: the test proves nothing"
    );
    std::thread::sleep(REVALIDATE.saturating_sub(pulled.elapsed()));
    c.get(&target).expect_error(404, "BLOB_UNKNOWN");
    c.head(&target).expect(404);
    drop(berth);

    let berth = start(0);
    let c = berth.client();
    let digest = push_blob(&c, "uncached/app", &layer);
    assert!(get_blob(&c, "uncached/app", &digest) == layer);
    bucket.delete(&format!(
        "berth/uncached/app/blobs/sha256/{}",
        &digest["sha256:".len()..]
    ));
    c.get(&format!("/v2/uncached/app/blobs/{digest}"))
        .expect_error(404, "BLOB_UNKNOWN");
}
