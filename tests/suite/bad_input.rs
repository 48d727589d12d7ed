//! Hostile and broken requests (issue 2, "How it is shown" point 3): each kind gets the
//! spec's error, the server keeps serving, and what was stored before is re-pulled byte for
//! byte afterwards. Slow connections and concurrent pushes of the same thing live in
//! `connections.rs` and `concurrency.rs`.

use serde_json::json;

use crate::util::http::{Client, with_query};
use crate::util::layout::{self, tree};
use crate::util::oci::*;
use crate::util::server::{Berth, Settings, temp_dir};

/// The repository every test here stores a known image in before misbehaving.
const BASE: &str = "base/repo";

fn start() -> (Berth, Client, Baseline) {
    let berth = Berth::start();
    let c = berth.client();
    let baseline = Baseline::push(&c, BASE);
    (berth, c, baseline)
}

#[test]
fn names_outside_the_grammar_are_name_invalid() {
    let (berth, c, baseline) = start();
    let image = Image::oci(70, &[10]);
    let bad = [
        "UPPER",
        "a/Bc",
        "a..b",
        "a___b",
        "-a",
        "a-",
        "_a",
        ".a",
        "a.",
        "a/-b",
        "a%20b",
        // `blobs` as a component would be the blob directory of the parent's layout.
        "blobs",
        "a/blobs",
        "a/blobs/sha256",
        "blobs/x",
    ];
    for name in bad {
        c.request("POST", &format!("/v2/{name}/blobs/uploads/"))
            .send()
            .expect_error(400, "NAME_INVALID");
        c.request(
            "POST",
            &format!("/v2/{name}/blobs/uploads/?digest={}", sha256(b"x")),
        )
        .body(&b"x"[..])
        .send()
        .expect_error(400, "NAME_INVALID");
        try_put_manifest(&c, name, "t", OCI_MANIFEST, &image.manifest)
            .unwrap()
            .expect_error(400, "NAME_INVALID");
        // Reads of an invalid name are refused too, never a 2xx.
        let got = c.get(&format!("/v2/{name}/tags/list"));
        assert!(got.status >= 400, "GET tags of {name:?}: {got}");
        got.error_codes();
    }
    assert_only_the_baseline_repository(berth.root());
    baseline.assert_intact(&c);
    layout::assert_sound(berth.root());
}

#[test]
fn path_tricks_never_reach_outside_the_root() {
    let dir = temp_dir();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    // A file beside the root that a traversal would read or overwrite.
    let secret = "berth-test-secret-do-not-serve";
    std::fs::write(dir.path().join("config.json"), secret).unwrap();
    let berth = Berth::start_on(&root, Settings::default());
    let c = berth.client();
    let baseline = Baseline::push(&c, BASE);
    let before = tree(dir.path());

    let blob = b"escape attempt".to_vec();
    let digest = sha256(&blob);
    let names = [
        "../escape",
        "../../escape",
        "%2e%2e/escape",
        "%2E%2E/%2e%2e/escape",
        "base/%2e%2e/%2e%2e/escape",
        "base/../../escape",
        "a%2f..%2f..%2fescape",
        "/escape",
        "/tmp/escape",
        "a//escape",
        "./escape",
        "base/./repo",
        "ESCAPE",
        "..",
        "base/..",
    ];
    for name in names {
        let monolithic = format!("/v2/{name}/blobs/uploads/?digest={digest}");
        let pushed = c
            .request("POST", &monolithic)
            .body(blob.as_slice())
            .try_send();
        if let Ok(r) = &pushed {
            assert!(r.status >= 400, "POST {monolithic}: {r}");
        }
        let session = c
            .request("POST", &format!("/v2/{name}/blobs/uploads/"))
            .try_send();
        if let Ok(r) = &session {
            assert!(r.status >= 400, "POST session under {name:?}: {r}");
        }
        let put = c
            .request("PUT", &format!("/v2/{name}/manifests/latest"))
            .header("Content-Type", OCI_MANIFEST)
            .body(baseline_manifest(&c))
            .try_send();
        if let Ok(r) = &put {
            assert!(r.status >= 400, "PUT manifest under {name:?}: {r}");
        }
    }
    // Reads that try to name a file outside the repository through the reference, the
    // digest or the upload id.
    let reads = [
        "/v2/base/repo/manifests/..%2f..%2f..%2fconfig.json",
        "/v2/base/repo/manifests/../../../config.json",
        "/v2/base/repo/blobs/..%2f..%2f..%2fconfig.json",
        "/v2/base/repo/blobs/sha256:..%2f..%2f..%2f..%2fconfig.json",
        "/v2/base/repo/blobs/uploads/..%2f..%2f..%2fconfig.json",
        "/v2/base/repo/blobs/uploads/../../../../config.json",
        "/v2/%2e%2e/manifests/config.json",
        "/v2/../config.json",
        "/v2/..%2fconfig.json",
        "//v2/../../config.json",
        "/v2/base/repo/tags/list?last=../../../config.json",
        "/v2/_catalog?last=../../config.json",
    ];
    for target in reads {
        for method in ["GET", "HEAD", "DELETE", "PATCH", "PUT"] {
            if let Ok(r) = c.request(method, target).try_send() {
                let body = String::from_utf8_lossy(&r.body);
                assert!(
                    !body.contains(secret),
                    "{method} {target} served a file outside the root: {r}"
                );
                if !target.contains('?') {
                    assert!(r.status >= 400, "{method} {target}: {r}");
                }
            }
        }
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("config.json")).unwrap(),
        secret
    );
    let after = tree(dir.path());
    let outside: Vec<_> = after
        .difference(&before)
        .filter(|p| !p.starts_with("root"))
        .collect();
    assert!(outside.is_empty(), "created outside the root: {outside:?}");
    assert_only_the_baseline_repository(&root);
    baseline.assert_intact(&c);
    layout::assert_sound(&root);
}

/// Nothing but the baseline repository (and berth's own `.berth` directory) exists under
/// `root`: refused requests created nothing.
fn assert_only_the_baseline_repository(root: &std::path::Path) {
    let top: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|name| name != ".berth")
        .collect();
    assert_eq!(
        top,
        vec![std::ffi::OsString::from("base")],
        "only the baseline repository"
    );
}

/// The baseline's manifest bytes (its blobs exist, so only the name can make a PUT fail).
fn baseline_manifest(c: &Client) -> Vec<u8> {
    c.get_manifest(BASE, "stable", OCI_MANIFEST)
        .expect(200)
        .body
}

#[test]
fn wrong_and_malformed_digests_are_digest_invalid() {
    let (berth, c, baseline) = start();
    let blob = random_bytes(71, 4000);
    let right = sha256(&blob);
    let wrong = sha256(b"something else");

    // Content that does not hash to the digest, in every upload style.
    for style in [
        Upload::Monolithic,
        Upload::SessionPut,
        Upload::Chunked(1500),
        Upload::Streamed(1000),
    ] {
        try_upload(&c, "digests", &blob, &wrong, style)
            .unwrap()
            .expect_error(400, "DIGEST_INVALID");
        for digest in [&right, &wrong] {
            c.head(&format!("/v2/digests/blobs/{digest}")).expect(404);
        }
    }
    // sha512 content declared under the wrong sha512 digest.
    try_upload(&c, "digests", &blob, &sha512(b"other"), Upload::Monolithic)
        .unwrap()
        .expect_error(400, "DIGEST_INVALID");

    let malformed = [
        "sha256:zz",
        "sha256:abc",
        "sha256:",
        ":abc",
        "nocolon",
        // Upper-case hex is outside the spec's sha256 encoding ([a-f0-9]{64}).
        &format!("sha256:{}", right["sha256:".len()..].to_uppercase()),
        &format!("sha256:{}00", &right["sha256:".len()..]),
        &format!("md5:{}", &right["sha256:".len()..32 + "sha256:".len()]),
        &format!("sha512:{}", &right["sha256:".len()..]),
    ];
    for digest in malformed {
        try_upload(&c, "digests", &blob, digest, Upload::Monolithic)
            .unwrap()
            .expect_error(400, "DIGEST_INVALID");
        try_upload(&c, "digests", &blob, digest, Upload::SessionPut)
            .unwrap()
            .expect_error(400, "DIGEST_INVALID");
        // Reading by a malformed digest: the spec fixes no code; it must be an error.
        c.get(&format!("/v2/{BASE}/blobs/{digest}"))
            .expect_error_among(&[(400, "DIGEST_INVALID"), (404, "BLOB_UNKNOWN")]);
    }
    // A PUT that closes a session must name a digest.
    let session = c
        .request("POST", "/v2/digests/blobs/uploads/")
        .send()
        .expect(202)
        .location();
    let put = c.request("PUT", &session).body(blob.as_slice()).send();
    assert_eq!(put.status, 400, "{put}");
    put.error_codes();

    // A manifest PUT by digest whose body has another digest.
    let body = baseline_manifest(&c);
    try_put_manifest(&c, BASE, &wrong, OCI_MANIFEST, &body)
        .unwrap()
        .expect_error(400, "DIGEST_INVALID");
    try_put_manifest(&c, BASE, "sha256:zz", OCI_MANIFEST, &body)
        .unwrap()
        .expect_error_among(&[
            (400, "DIGEST_INVALID"),
            (400, "MANIFEST_INVALID"),
            (400, "TAG_INVALID"),
        ]);
    c.get_manifest(BASE, &wrong, OCI_MANIFEST)
        .expect_error(404, "MANIFEST_UNKNOWN");

    let audit = layout::assert_sound(berth.root());
    assert_eq!(
        audit.blob_files, 4,
        "only the baseline's config, two layers and manifest"
    );
    baseline.assert_intact(&c);
}

#[test]
fn invalid_and_oversized_manifests_are_refused() {
    let (berth, c, baseline) = start();
    let config = b"{}".to_vec();
    let config_digest = push_blob(&c, "manifests", &config);
    let invalid: Vec<Vec<u8>> = vec![
        b"{not json".to_vec(),
        b"".to_vec(),
        b"[]".to_vec(),
        b"null".to_vec(),
        serde_json::to_vec(&json!({ "schemaVersion": 2, "mediaType": OCI_MANIFEST })).unwrap(),
        serde_json::to_vec(&json!({
            "schemaVersion": 1, "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, &config), "layers": []
        }))
        .unwrap(),
        serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, &config), "layers": "nope"
        }))
        .unwrap(),
        serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": { "mediaType": OCI_CONFIG, "digest": config_digest, "size": "two" }, "layers": []
        }))
        .unwrap(),
        serde_json::to_vec(&json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": "nope" })).unwrap(),
    ];
    for body in &invalid {
        let media_type = if String::from_utf8_lossy(body).contains(OCI_INDEX) {
            OCI_INDEX
        } else {
            OCI_MANIFEST
        };
        try_put_manifest(&c, "manifests", "bad", media_type, body)
            .unwrap()
            .expect_error(400, "MANIFEST_INVALID");
    }
    c.get_manifest("manifests", "bad", OCI_MANIFEST)
        .expect_error(404, "MANIFEST_UNKNOWN");

    // The spec's floor: a registry SHOULD accept manifests of at least 4 MiB; berth's limit is
    // exactly 4 MiB, so 4 MiB is stored and one byte more is 413 with an error body.
    const LIMIT: usize = 4 * 1024 * 1024;
    let at_limit = padded_manifest(&config, LIMIT);
    let put = put_manifest(&c, "manifests", "big", OCI_MANIFEST, &at_limit);
    assert_eq!(put.status, 201);
    assert_eq!(
        c.get_manifest("manifests", "big", OCI_MANIFEST)
            .expect(200)
            .body,
        at_limit
    );

    let over = padded_manifest(&config, LIMIT + 1);
    let refused = try_put_manifest(&c, "manifests", "huge", OCI_MANIFEST, &over).unwrap();
    assert_eq!(refused.status, 413, "{refused}");
    refused.error_codes();
    // The same without a Content-Length: the limit holds while streaming.
    let parts = over.chunks(256 * 1024).map(<[u8]>::to_vec).collect();
    let refused = c
        .request("PUT", "/v2/manifests/manifests/huge")
        .header("Content-Type", OCI_MANIFEST)
        .chunked(parts)
        .try_send();
    if let Ok(refused) = refused {
        assert_eq!(refused.status, 413, "{refused}");
        refused.error_codes();
    }
    // Far over the limit, announced up front: refused without reading 64 MiB.
    let huge_head = format!(
        "PUT /v2/manifests/manifests/huge HTTP/1.1\r\nHost: x\r\nContent-Type: {OCI_MANIFEST}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{{",
        64 * LIMIT
    );
    if let Some(r) = c.raw_exchange(huge_head.as_bytes()) {
        assert!(r.status == 413 || r.status == 400, "{r}");
    }
    c.get_manifest("manifests", "huge", OCI_MANIFEST)
        .expect_error(404, "MANIFEST_UNKNOWN");
    layout::assert_sound(berth.root());
    baseline.assert_intact(&c);
}

/// A valid manifest over `config` padded with an annotation to exactly `size` bytes.
fn padded_manifest(config: &[u8], size: usize) -> Vec<u8> {
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [],
        "annotations": { "pad": "" }
    });
    let bare = serde_json::to_vec(&manifest).unwrap().len();
    manifest["annotations"]["pad"] = json!("x".repeat(size - bare));
    let bytes = serde_json::to_vec(&manifest).unwrap();
    assert_eq!(bytes.len(), size);
    bytes
}

#[test]
fn manifests_naming_absent_blobs_are_manifest_blob_unknown() {
    let (berth, c, baseline) = start();
    let image = Image::oci(72, &[100, 200]);
    // Nothing pushed yet.
    try_put_manifest(&c, "absent", "t", OCI_MANIFEST, &image.manifest)
        .unwrap()
        .expect_error(400, "MANIFEST_BLOB_UNKNOWN");
    // Config present, one layer missing.
    push_blob(&c, "absent", &image.config);
    push_blob(&c, "absent", &image.layers[0]);
    try_put_manifest(&c, "absent", "t", OCI_MANIFEST, &image.manifest)
        .unwrap()
        .expect_error(400, "MANIFEST_BLOB_UNKNOWN");
    // The missing layer exists, but in another repository: still unknown here.
    push_blob(&c, "elsewhere", &image.layers[1]);
    try_put_manifest(&c, "absent", "t", OCI_MANIFEST, &image.manifest)
        .unwrap()
        .expect_error(400, "MANIFEST_BLOB_UNKNOWN");
    // Layers present, config missing.
    let no_config = Image::oci(73, &[50]);
    push_blob(&c, "absent", &no_config.layers[0]);
    try_put_manifest(&c, "absent", "u", OCI_MANIFEST, &no_config.manifest)
        .unwrap()
        .expect_error(400, "MANIFEST_BLOB_UNKNOWN");
    // Docker schema2 follows the same rule.
    let docker = Image::docker(74, &[60]);
    try_put_manifest(&c, "absent", "d", DOCKER_MANIFEST, &docker.manifest)
        .unwrap()
        .expect_error(400, "MANIFEST_BLOB_UNKNOWN");
    // An index naming a manifest the repository does not have.
    let index = index_of(OCI_INDEX, &[&image]);
    try_put_manifest(&c, "absent", "i", OCI_INDEX, &index)
        .unwrap()
        .expect_error(400, "MANIFEST_BLOB_UNKNOWN");
    for tag in ["t", "u", "d", "i"] {
        c.get_manifest("absent", tag, OCI_MANIFEST)
            .expect_error(404, "MANIFEST_UNKNOWN");
    }
    // Once the blob is there, the same manifest goes in.
    push_blob(&c, "absent", &image.layers[1]);
    put_manifest(&c, "absent", "t", OCI_MANIFEST, &image.manifest);
    assert_image(&c, "absent", "t", &image);
    layout::assert_sound(berth.root());
    baseline.assert_intact(&c);
}

#[test]
fn unknown_uploads_are_blob_upload_unknown() {
    let (berth, c, baseline) = start();
    let ids = [
        "3f0e7a5e-1b1f-4c36-9a64-5c0e3d7b9e01",
        "not-a-session",
        "0",
        "..%2f..%2f..%2fbase",
    ];
    for id in ids {
        let url = format!("/v2/{BASE}/blobs/uploads/{id}");
        c.get(&url).expect_error(404, "BLOB_UPLOAD_UNKNOWN");
        c.request("PATCH", &url)
            .body(&b"abc"[..])
            .send()
            .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
        c.request(
            "PUT",
            &with_query(&url, &format!("digest={}", sha256(b"abc"))),
        )
        .body(&b"abc"[..])
        .send()
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
        c.delete(&url).expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    }
    // A session belongs to the repository that opened it.
    let location = c
        .request("POST", "/v2/owner/blobs/uploads/")
        .send()
        .expect(202)
        .location();
    let foreign = location.replacen("/v2/owner/", "/v2/intruder/", 1);
    assert_ne!(foreign, location);
    c.get(&foreign).expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    c.request("PATCH", &foreign)
        .body(&b"abc"[..])
        .send()
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    // A finished session is gone.
    let blob = b"finished".to_vec();
    let done = c
        .request(
            "PUT",
            &with_query(&location, &format!("digest={}", sha256(&blob))),
        )
        .body(blob.as_slice())
        .send()
        .expect(201);
    assert_eq!(
        done.header("Docker-Content-Digest"),
        Some(sha256(&blob).as_str())
    );
    c.get(&location).expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    c.request(
        "PUT",
        &with_query(&location, &format!("digest={}", sha256(&blob))),
    )
    .body(blob.as_slice())
    .send()
    .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    // A cancelled session is gone.
    let cancelled = c
        .request("POST", "/v2/owner/blobs/uploads/")
        .send()
        .expect(202)
        .location();
    c.delete(&cancelled).expect(204);
    c.request("PATCH", &cancelled)
        .body(&b"abc"[..])
        .send()
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    layout::assert_sound(berth.root());
    baseline.assert_intact(&c);
}

#[test]
fn out_of_order_chunks_are_416_and_the_session_survives() {
    let (berth, c, baseline) = start();
    let blob = random_bytes(75, 30);
    let patch = |location: &str, start: usize, end: usize| {
        c.request("PATCH", location)
            .header("Content-Type", "application/octet-stream")
            .header("Content-Range", &format!("{start}-{end}"))
            .body(&blob[start..=end])
            .send()
    };
    let mut location = c
        .request("POST", "/v2/chunks/blobs/uploads/")
        .send()
        .expect(202)
        .location();
    // A first chunk that does not start at 0.
    patch(&location, 5, 9).expect_error(416, "RANGE_INVALID");
    location = patch(&location, 0, 9).expect(202).location();
    // A gap, a replay and an overlap.
    for (start, end) in [(20, 29), (0, 9), (5, 14)] {
        patch(&location, start, end).expect_error(416, "RANGE_INVALID");
    }
    let status = c.get(&location).expect(204);
    assert_eq!(
        status.header("Range"),
        Some("0-9"),
        "refused chunks wrote nothing: {status}"
    );
    location = patch(&location, 10, 29).expect(202).location();
    c.request(
        "PUT",
        &with_query(&location, &format!("digest={}", sha256(&blob))),
    )
    .send()
    .expect(201);
    assert_eq!(get_blob(&c, "chunks", &sha256(&blob)), blob);

    // A Content-Range that disagrees with the body's length is refused.
    let session = c
        .request("POST", "/v2/chunks/blobs/uploads/")
        .send()
        .expect(202)
        .location();
    c.request("PATCH", &session)
        .header("Content-Range", "0-99")
        .body(&blob[..10])
        .send()
        .expect_error_among(&[
            (400, "BLOB_UPLOAD_INVALID"),
            (416, "RANGE_INVALID"),
            (400, "SIZE_INVALID"),
        ]);
    layout::assert_sound(berth.root());
    baseline.assert_intact(&c);
}

#[test]
fn truncated_bodies_leave_nothing_visible() {
    let (berth, c, baseline) = start();
    let blob = random_bytes(76, 200_000);
    let digest = sha256(&blob);
    let half = &blob[..blob.len() / 2];
    let head = |method: &str, target: &str, extra: &str| {
        format!(
            "{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n{extra}Connection: close\r\n\r\n"
        )
        .into_bytes()
    };
    let with_half = |mut wire: Vec<u8>| {
        wire.extend_from_slice(half);
        wire
    };
    let full_length = format!("Content-Length: {}\r\n", blob.len());

    // Monolithic POST that stops half-way.
    let target = format!("/v2/trunc/blobs/uploads/?digest={digest}");
    c.raw_exchange(&with_half(head("POST", &target, &full_length)));

    // A PATCH that stops half-way, then a PUT that claims the whole digest.
    let session = c
        .request("POST", "/v2/trunc/blobs/uploads/")
        .send()
        .expect(202)
        .location();
    c.raw_exchange(&with_half(head("PATCH", &session, &full_length)));
    if let Ok(put) = c
        .request("PUT", &with_query(&session, &format!("digest={digest}")))
        .try_send()
    {
        assert!(put.status >= 400, "a truncated session completed: {put}");
    }

    // A PUT whose final chunk stops half-way.
    let session = c
        .request("POST", "/v2/trunc/blobs/uploads/")
        .send()
        .expect(202)
        .location();
    c.raw_exchange(&with_half(head(
        "PUT",
        &with_query(&session, &format!("digest={digest}")),
        &full_length,
    )));

    // A chunked-encoding PATCH whose chunk is cut short, with no terminating chunk.
    let session = c
        .request("POST", "/v2/trunc/blobs/uploads/")
        .send()
        .expect(202)
        .location();
    let mut wire = head("PATCH", &session, "Transfer-Encoding: chunked\r\n");
    wire.extend_from_slice(format!("{:x}\r\n", blob.len()).as_bytes());
    c.raw_exchange(&with_half(wire));
    if let Ok(put) = c
        .request("PUT", &with_query(&session, &format!("digest={digest}")))
        .try_send()
    {
        assert!(put.status >= 400, "a truncated stream completed: {put}");
    }

    // A manifest PUT cut short (its blobs exist, so only the truncation can stop it).
    let manifest = baseline_manifest(&c);
    let mut wire = format!(
        "PUT /v2/{BASE}/manifests/truncated HTTP/1.1\r\nHost: x\r\nContent-Type: {OCI_MANIFEST}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        manifest.len()
    )
    .into_bytes();
    wire.extend_from_slice(&manifest[..manifest.len() / 2]);
    c.raw_exchange(&wire);

    // Nothing of any of it is visible.
    c.head(&format!("/v2/trunc/blobs/{digest}")).expect(404);
    c.get_manifest(BASE, "truncated", OCI_MANIFEST)
        .expect_error(404, "MANIFEST_UNKNOWN");
    assert!(!layout::blob_path(&berth.root().join("trunc"), &digest).exists());
    layout::assert_sound(berth.root());
    baseline.assert_intact(&c);
    // And nothing is wedged: the same blob now uploads whole, in two styles.
    upload(&c, "trunc", &blob, &digest, Upload::Monolithic);
    upload(&c, "trunc2", &blob, &digest, Upload::Chunked(70_000));
    assert_eq!(get_blob(&c, "trunc", &digest), blob);
}

#[test]
fn bad_ranges_are_416_or_ignored() {
    let (_berth, c, baseline) = start();
    let blob = random_bytes(77, 1000);
    let digest = push_blob(&c, "ranges", &blob);
    let url = format!("/v2/ranges/blobs/{digest}");
    // A first byte at or past the end cannot be satisfied (RFC 9110 15.5.17).
    for range in [
        "bytes=1000-",
        "bytes=1000-1000",
        "bytes=5000-6000",
        "bytes=1000-2000",
    ] {
        c.request("GET", &url)
            .header("Range", range)
            .send()
            .expect_error(416, "RANGE_INVALID");
    }
    // Invalid or multi-range headers may be ignored (RFC 9110 14.2) or refused, never
    // answered with the wrong bytes.
    for range in [
        "bytes=50-10",
        "bytes=0-1,5-6",
        "bytes=abc",
        "items=0-5",
        "bytes=-",
        "bytes=--5",
    ] {
        let got = c.request("GET", &url).header("Range", range).send();
        match got.status {
            200 => assert_eq!(got.body, blob, "{range}"),
            416 => {
                got.error_codes();
            }
            _ => panic!("Range {range:?}: {got}"),
        }
    }
    baseline.assert_intact(&c);
}

#[test]
fn unknown_blobs_manifests_and_repositories_are_404() {
    let (_berth, c, baseline) = start();
    let unknown = sha256(b"never pushed");
    c.get(&format!("/v2/{BASE}/blobs/{unknown}"))
        .expect_error(404, "BLOB_UNKNOWN");
    c.head(&format!("/v2/{BASE}/blobs/{unknown}")).expect(404);
    c.delete(&format!("/v2/{BASE}/blobs/{unknown}"))
        .expect_error(404, "BLOB_UNKNOWN");
    c.get_manifest(BASE, "nope", OCI_MANIFEST)
        .expect_error(404, "MANIFEST_UNKNOWN");
    c.get_manifest(BASE, &unknown, OCI_MANIFEST)
        .expect_error(404, "MANIFEST_UNKNOWN");
    c.delete(&format!("/v2/{BASE}/manifests/{unknown}"))
        .expect_error(404, "MANIFEST_UNKNOWN");
    c.get("/v2/no/such/repo/tags/list")
        .expect_error(404, "NAME_UNKNOWN");
    c.get_manifest("no/such/repo", "t", OCI_MANIFEST)
        .expect_error_among(&[(404, "NAME_UNKNOWN"), (404, "MANIFEST_UNKNOWN")]);
    c.get(&format!("/v2/no/such/repo/blobs/{unknown}"))
        .expect_error_among(&[(404, "NAME_UNKNOWN"), (404, "BLOB_UNKNOWN")]);
    // Unknown routes are errors, not crashes.
    for target in ["/v2/x/unknown/thing", "/v3/", "/", "/v2/_catalog/extra"] {
        let got = c.get(target);
        assert!((400..500).contains(&got.status), "GET {target}: {got}");
    }
    baseline.assert_intact(&c);
}
