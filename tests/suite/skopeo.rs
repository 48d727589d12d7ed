//! The real `skopeo` against a real berth (issue 2, point 2), as a new user would drive it:
//! push an image built here, pull it back byte-identical, list tags, inspect, delete, on a
//! local root and on S3 (issue 13, with a layer of more than one multipart part); and
//! serve layouts that skopeo itself wrote into berth's root before berth started; and push
//! and pull through every `subPaths` store (issue 4, point 4).

use serde_json::Value;

use super::subpaths::Stores;
use crate::util::archive::{docker_archive, tar_image, tar_image_of};
use crate::util::layout::{self, blob_path, read_index, tags_of, write_layout};
use crate::util::oci::*;
use crate::util::server::{Berth, Settings, temp_dir};
use crate::util::store::{Backend, Store};
use crate::util::tools::{arg, require, run};

/// skopeo tries TLS before plain HTTP; until berth refuses a ClientHello at once (see
/// `connections::a_tls_client_hello_is_refused_at_once`) each command waits out readTimeout,
/// so these servers use a short one to keep the suite fast.
fn settings() -> Settings {
    Settings {
        read_timeout: "1s",
        ..Settings::default()
    }
}

fn skopeo(args: &[&str]) -> Vec<u8> {
    // --insecure-policy: a fresh machine may lack /etc/containers/policy.json, and signature
    // policy is not what these tests are about.
    let mut all = vec!["--insecure-policy"];
    all.extend_from_slice(args);
    run("skopeo", &all).stdout
}

fn skopeo_json(args: &[&str]) -> Value {
    serde_json::from_slice(&skopeo(args)).expect("skopeo printed JSON")
}

#[test]
fn skopeo_push_pull_list_inspect_delete() {
    push_pull_list_inspect_delete(Backend::Local);
}

#[test]
fn skopeo_push_pull_list_inspect_delete_on_s3() {
    push_pull_list_inspect_delete(Backend::S3);
}

fn push_pull_list_inspect_delete(backend: Backend) {
    // The S3 servers first: without them an S3 test fails even where a client is missing.
    let store = Store::new(backend);
    if !require("skopeo", &["skopeo", "--version"]) {
        return;
    }
    let berth = store.start(settings());
    let work = temp_dir();
    // The last layer is more than one part of the S3 store's 5 MiB `chunksize`.
    let image = tar_image_of(1, &[40_000, 3000, 6 * 1024 * 1024]);
    let other = tar_image(5);
    let remote = format!("docker://{}/skopeo/app", berth.addr());

    // Push twice under two tags, and another image under a third. --preserve-digests makes
    // skopeo fail rather than rewrite the manifest, so what berth stores must be exactly our
    // bytes.
    for (tag, image) in [("v1", &image), ("v2", &image), ("other", &other)] {
        let src = work.path().join(format!("src-{tag}"));
        write_layout(&src, tag, image);
        skopeo(&[
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--preserve-digests",
            &format!("oci:{}:{tag}", arg(&src)),
            &format!("{remote}:{tag}"),
        ]);
    }
    let c = berth.client();
    assert_image(&c, "skopeo/app", "v1", &image);
    assert_image(&c, "skopeo/app", "v2", &image);
    assert_image(&c, "skopeo/app", "other", &other);

    // Pull back into an OCI layout and a dir: every byte as pushed.
    let back = work.path().join("back");
    skopeo(&[
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &format!("{remote}:v1"),
        &format!("oci:{}:pulled", arg(&back)),
    ]);
    assert_eq!(
        tags_of(&read_index(&back)),
        vec![("pulled".to_string(), image.digest())]
    );
    for blob in image.blobs().into_iter().chain([image.manifest.as_slice()]) {
        assert_eq!(
            std::fs::read(blob_path(&back, &sha256(blob))).unwrap(),
            blob
        );
    }
    let dir = work.path().join("dir");
    skopeo(&[
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &format!("{remote}:v2"),
        &format!("dir:{}", arg(&dir)),
    ]);
    assert_eq!(
        std::fs::read(dir.join("manifest.json")).unwrap(),
        image.manifest
    );
    for blob in image.blobs() {
        let hex = &sha256(blob)["sha256:".len()..];
        assert_eq!(std::fs::read(dir.join(hex)).unwrap(), blob);
    }

    let listed = skopeo_json(&["list-tags", "--tls-verify=false", &remote]);
    assert_eq!(
        listed["Tags"],
        serde_json::json!(["other", "v1", "v2"]),
        "{listed}"
    );

    let inspected = skopeo_json(&["inspect", "--tls-verify=false", &format!("{remote}:v1")]);
    assert_eq!(inspected["Digest"], image.digest().as_str(), "{inspected}");
    let layers: Vec<String> = image.layers.iter().map(|l| sha256(l)).collect();
    assert_eq!(inspected["Layers"], serde_json::json!(layers));
    assert_eq!(inspected["Os"], "linux");
    assert_eq!(
        skopeo(&[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("{remote}:v1")
        ]),
        image.manifest
    );
    assert_eq!(
        skopeo(&[
            "inspect",
            "--config",
            "--raw",
            "--tls-verify=false",
            &format!("{remote}:v1")
        ]),
        image.config
    );

    // skopeo deletes by digest: the manifest and both tags naming it go, the other stays.
    skopeo(&["delete", "--tls-verify=false", &format!("{remote}:v1")]);
    c.get_manifest("skopeo/app", &image.digest(), OCI_MANIFEST)
        .expect_error(404, "MANIFEST_UNKNOWN");
    c.get_manifest("skopeo/app", "v2", OCI_MANIFEST)
        .expect_error(404, "MANIFEST_UNKNOWN");
    assert_image(&c, "skopeo/app", "other", &other);
    let listed = skopeo_json(&["list-tags", "--tls-verify=false", &remote]);
    assert_eq!(listed["Tags"], serde_json::json!(["other"]), "{listed}");
    let failed = std::process::Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", &format!("{remote}:v1")])
        .output()
        .unwrap();
    assert!(
        !failed.status.success(),
        "inspect of a deleted image succeeded"
    );
    store.assert_sound();
}

#[test]
fn layouts_written_by_skopeo_into_the_root_are_served() {
    if !require("skopeo", &["skopeo", "--version"]) {
        return;
    }
    let work = temp_dir();
    let root = work.path().join("root");
    // skopeo creates the layout directory itself but not its parents.
    std::fs::create_dir_all(root.join("imported")).unwrap();
    // A docker-archive (what `docker save` writes) imported with skopeo's oci: transport.
    let (archive, _config, diff_id) = docker_archive(2, "example/archived:latest");
    let archive_path = work.path().join("image.tar");
    std::fs::write(&archive_path, archive).unwrap();
    skopeo(&[
        "copy",
        "--quiet",
        &format!("docker-archive:{}", arg(&archive_path)),
        &format!("oci:{}:v1", arg(&root.join("imported/archive"))),
    ]);
    // An OCI layout copied by skopeo from one of ours.
    let image = tar_image(3);
    let src = work.path().join("src");
    write_layout(&src, "v1", &image);
    skopeo(&[
        "copy",
        "--quiet",
        &format!("oci:{}:v1", arg(&src)),
        &format!("oci:{}:v7", arg(&root.join("imported/oci"))),
    ]);

    let berth = Berth::start_on(&root, settings());
    let c = berth.client();
    let catalog = c.get("/v2/_catalog").expect(200).json();
    assert_eq!(
        catalog["repositories"],
        serde_json::json!(["imported/archive", "imported/oci"])
    );

    assert_image(&c, "imported/oci", "v7", &image);

    // skopeo compresses the archive's tar layer on import; the config still names the tar's
    // diff id, which ties the layer berth serves to the bytes this test made.
    let got = c
        .get_manifest("imported/archive", "v1", OCI_MANIFEST)
        .expect(200);
    let manifest = got.json();
    assert_eq!(
        got.header("Content-Type"),
        manifest["mediaType"].as_str(),
        "{got}"
    );
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    let config: Value =
        serde_json::from_slice(&get_blob(&c, "imported/archive", config_digest)).unwrap();
    assert_eq!(config["rootfs"]["diff_ids"], serde_json::json!([diff_id]));
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    let layer_digest = layers[0]["digest"].as_str().unwrap();
    let layer = get_blob(&c, "imported/archive", layer_digest);

    // And a client can pull it through berth, getting the same layer bytes.
    let pulled = work.path().join("pulled");
    skopeo(&[
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &format!("docker://{}/imported/archive:v1", berth.addr()),
        &format!("oci:{}:x", arg(&pulled)),
    ]);
    assert_eq!(
        std::fs::read(blob_path(&pulled, layer_digest)).unwrap(),
        layer
    );
    layout::assert_sound(&root);
}

#[test]
fn skopeo_pushes_and_pulls_through_every_sub_path_store() {
    if !require("skopeo", &["skopeo", "--version"]) {
        return;
    }
    let stores = Stores::new();
    let berth = Berth::start_on(&stores.default, stores.settings(settings()));
    let work = temp_dir();
    let image = tar_image(4);
    let src = work.path().join("src");
    write_layout(&src, "v1", &image);
    let repos = ["a/skopeo", "b/c/skopeo", "skopeo/app"];
    for (i, repo) in repos.into_iter().enumerate() {
        let remote = format!("docker://{}/{repo}:v1", berth.addr());
        skopeo(&[
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--preserve-digests",
            &format!("oci:{}:v1", arg(&src)),
            &remote,
        ]);
        let home = stores.root_of(repo).join(repo);
        assert_eq!(
            tags_of(&read_index(&home)),
            vec![("v1".to_string(), image.digest())],
            "{repo} is not in its store"
        );
        let back = work.path().join(format!("back-{i}"));
        skopeo(&[
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            &remote,
            &format!("oci:{}:pulled", arg(&back)),
        ]);
        for blob in image.blobs().into_iter().chain([image.manifest.as_slice()]) {
            assert_eq!(
                std::fs::read(blob_path(&back, &sha256(blob))).unwrap(),
                blob,
                "{repo}: pulled bytes differ"
            );
        }
    }
    let catalog = berth.client().get("/v2/_catalog").expect(200).json();
    assert_eq!(catalog["repositories"], serde_json::json!(repos));
    for root in stores.roots() {
        layout::assert_sound(root);
    }
}
