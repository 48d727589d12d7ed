//! The distribution API flows a well-behaved client uses (issue 2, "what it must do"), each
//! checked on the wire and, where the contract names the disk, on the OCI layout too: push and
//! pull in every upload style, range reads, pagination, referrers, mounts, deletes, moved
//! tags, nested names, Docker schema2, sha512, and layouts made elsewhere.

use serde_json::{Value, json};

use crate::util::http::{paginate, with_query};
use crate::util::layout::{self, blob_path, read_index, tags_of};
use crate::util::oci::*;
use crate::util::server::{Berth, Settings, temp_dir};

#[test]
fn api_root_answers_200() {
    let berth = Berth::start();
    let got = berth.client().get("/v2/").expect(200);
    assert_eq!(
        got.header("Docker-Distribution-API-Version"),
        Some("registry/2.0")
    );
}

#[test]
fn monolithic_push_then_pull_is_byte_identical_and_stored_as_a_layout() {
    let berth = Berth::start();
    let c = berth.client();
    // 70 kB crosses tiny_http's 32 KiB switch to chunked encoding: the blob must still be sent
    // with Content-Length (checked inside get_blob).
    let image = Image::oci(1, &[10, 70_000]);
    push_image(&c, "library/app", "v1", &image);
    assert_image(&c, "library/app", "v1", &image);
    assert_image(&c, "library/app", &image.digest(), &image);

    // HEAD on a manifest and a blob: same headers as GET, no body.
    let head = c
        .request("HEAD", "/v2/library/app/manifests/v1")
        .header("Accept", OCI_MANIFEST)
        .send()
        .expect(200);
    assert_eq!(
        head.content_length(),
        Some(image.manifest.len() as u64),
        "{head}"
    );
    assert_eq!(
        head.header("Docker-Content-Digest"),
        Some(image.digest().as_str())
    );
    let layer = &image.layers[1];
    let head = c
        .head(&format!("/v2/library/app/blobs/{}", sha256(layer)))
        .expect(200);
    assert_eq!(head.content_length(), Some(layer.len() as u64), "{head}");
    assert_eq!(
        head.header("Docker-Content-Digest"),
        Some(sha256(layer).as_str())
    );
    assert!(head.body.is_empty());

    // On disk: a plain OCI layout with the tag as a ref.name annotation, manifest as a blob.
    let repo = berth.root().join("library/app");
    let oci_layout: Value =
        serde_json::from_slice(&std::fs::read(repo.join("oci-layout")).unwrap()).unwrap();
    assert_eq!(oci_layout["imageLayoutVersion"], "1.0.0");
    assert_eq!(
        tags_of(&read_index(&repo)),
        vec![("v1".to_string(), image.digest())]
    );
    for blob in image.blobs().into_iter().chain([image.manifest.as_slice()]) {
        assert_eq!(
            std::fs::read(blob_path(&repo, &sha256(blob))).unwrap(),
            blob
        );
    }
    layout::assert_sound(berth.root());
}

/// Content named by digest carries its digest as an entity tag, as distribution sends it, and
/// a client revalidating with `If-None-Match` gets 304 without the body; a stale tag gets the
/// content, and an unknown manifest stays 404 whatever the client sends.
#[test]
fn manifests_and_blobs_revalidate_by_entity_tag() {
    let berth = Berth::start();
    let c = berth.client();
    let image = Image::oci(3, &[100]);
    push_image(&c, "etag/app", "v1", &image);
    let layer = sha256(&image.layers[0]);
    let targets = [
        ("/v2/etag/app/manifests/v1".to_string(), image.digest()),
        (
            format!("/v2/etag/app/manifests/{}", image.digest()),
            image.digest(),
        ),
        (format!("/v2/etag/app/blobs/{layer}"), layer.clone()),
    ];
    for (target, digest) in &targets {
        let tag = format!("\"{digest}\"");
        for method in ["GET", "HEAD"] {
            let fresh = c
                .request(method, target)
                .header("Accept", OCI_MANIFEST)
                .send()
                .expect(200);
            assert_eq!(
                fresh.header("ETag"),
                Some(tag.as_str()),
                "{method} {target}"
            );
            for matching in [
                tag.clone(),
                format!("\"sha256:00\", W/{tag}"),
                "*".to_string(),
            ] {
                let revalidated = c
                    .request(method, target)
                    .header("Accept", OCI_MANIFEST)
                    .header("If-None-Match", &matching)
                    .send()
                    .expect(304);
                assert!(revalidated.body.is_empty(), "{method} {target}");
                assert_eq!(
                    revalidated.header("Docker-Content-Digest"),
                    Some(digest.as_str())
                );
            }
            let stale = c
                .request(method, target)
                .header("Accept", OCI_MANIFEST)
                .header("If-None-Match", "\"sha256:00\"")
                .send()
                .expect(200);
            assert_eq!(stale.header("ETag"), Some(tag.as_str()));
        }
    }
    c.request("GET", "/v2/etag/app/manifests/v2")
        .header("If-None-Match", "*")
        .send()
        .expect_error(404, "MANIFEST_UNKNOWN");
}

#[test]
fn chunked_upload_with_content_range_reports_progress() {
    let berth = Berth::start();
    let c = berth.client();
    let blob = random_bytes(2, 300_000);
    let digest = sha256(&blob);

    let started = c
        .request("POST", "/v2/chunks/blobs/uploads/")
        .send()
        .expect(202);
    assert_eq!(started.header("Range"), Some("0-0"), "{started}");
    let mut location = started.location();

    let (first, rest) = blob.split_at(100_000);
    let (second, last) = rest.split_at(150_000);
    let mut offset = 0;
    for chunk in [first, second] {
        let patched = c
            .request("PATCH", &location)
            .header("Content-Type", "application/octet-stream")
            .header(
                "Content-Range",
                &format!("{offset}-{}", offset + chunk.len() - 1),
            )
            .body(chunk)
            .send()
            .expect(202);
        offset += chunk.len();
        assert_eq!(
            patched.header("Range"),
            Some(format!("0-{}", offset - 1).as_str()),
            "{patched}"
        );
        location = patched.location();
        let status = c.get(&location).expect(204);
        assert_eq!(
            status.header("Range"),
            Some(format!("0-{}", offset - 1).as_str()),
            "{status}"
        );
    }
    // Not visible before the PUT that closes the session.
    c.head(&format!("/v2/chunks/blobs/{digest}")).expect(404);

    // The last chunk rides on the PUT.
    let done = c
        .request("PUT", &with_query(&location, &format!("digest={digest}")))
        .header("Content-Type", "application/octet-stream")
        .body(last)
        .send()
        .expect(201);
    assert_eq!(done.header("Docker-Content-Digest"), Some(digest.as_str()));
    // The Location of a finished upload names the blob (spec: "Pushing a blob in chunks").
    assert_eq!(c.get(&done.location()).expect(200).body, blob);
    assert_eq!(get_blob(&c, "chunks", &digest), blob);
}

#[test]
fn every_upload_style_stores_the_same_bytes() {
    let berth = Berth::start();
    let c = berth.client();
    let styles = [
        Upload::Monolithic,
        Upload::SessionPut,
        Upload::Chunked(64 * 1024),
        Upload::Chunked(1),
        Upload::Streamed(10_000),
    ];
    for (i, style) in styles.into_iter().enumerate() {
        // One-byte chunks only on a small blob: it is thousands of requests otherwise.
        let size = if matches!(style, Upload::Chunked(1)) {
            50
        } else {
            200_000 + i
        };
        let blob = random_bytes(100 + i as u64, size);
        let digest = sha256(&blob);
        upload(&c, "styles", &blob, &digest, style);
        assert_eq!(get_blob(&c, "styles", &digest), blob, "{style:?}");
    }
    // A streamed PATCH with a plain Content-Length body (no Content-Range) is also a stream.
    let blob = random_bytes(7, 5000);
    let digest = sha256(&blob);
    let location = c
        .request("POST", "/v2/styles/blobs/uploads/")
        .send()
        .expect(202)
        .location();
    let patched = c
        .request("PATCH", &location)
        .body(blob.as_slice())
        .send()
        .expect(202);
    assert_eq!(patched.header("Range"), Some("0-4999"), "{patched}");
    c.request(
        "PUT",
        &with_query(&patched.location(), &format!("digest={digest}")),
    )
    .send()
    .expect(201);
    assert_eq!(get_blob(&c, "styles", &digest), blob);
    // An empty blob is a blob too.
    upload(&c, "styles", b"", &sha256(b""), Upload::SessionPut);
    assert_eq!(get_blob(&c, "styles", &sha256(b"")), b"");
}

#[test]
fn range_reads_return_206_with_content_range() {
    let berth = Berth::start();
    let c = berth.client();
    let blob = random_bytes(3, 100_000);
    let digest = push_blob(&c, "ranges", &blob);
    let url = format!("/v2/ranges/blobs/{digest}");
    let len = blob.len();
    let cases = [
        ("bytes=0-9", 0, 9),
        ("bytes=10-", 10, len - 1),
        ("bytes=99999-99999", len - 1, len - 1),
        ("bytes=50000-60000", 50_000, 60_000),
        // RFC 9110 14.1.2: a last-byte-pos past the end is clamped, not refused.
        ("bytes=99990-200000", 99_990, len - 1),
        // RFC 9110 14.1.1: a suffix range is the last N bytes.
        ("bytes=-5", len - 5, len - 1),
    ];
    for (range, start, end) in cases {
        let got = c
            .request("GET", &url)
            .header("Range", range)
            .send()
            .expect(206);
        assert_eq!(
            got.header("Content-Range"),
            Some(format!("bytes {start}-{end}/{len}").as_str()),
            "{range}: {got}"
        );
        assert_eq!(
            got.content_length(),
            Some((end - start + 1) as u64),
            "{range}"
        );
        assert_eq!(got.body, &blob[start..=end], "{range}");
    }
}

#[test]
fn tags_list_is_sorted_and_paginates_with_link() {
    let berth = Berth::start();
    let c = berth.client();
    let image = Image::oci(4, &[100]);
    let tags = ["v2", "latest", "1.0", "a-b", "v10", "Z-upper", "alpha_1"];
    push_image(&c, "paged", tags[0], &image);
    for tag in &tags[1..] {
        put_manifest(&c, "paged", tag, OCI_MANIFEST, &image.manifest);
    }
    let mut sorted: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
    sorted.sort();

    let all = c.get("/v2/paged/tags/list").expect(200).json();
    assert_eq!(all["name"], "paged");
    assert_eq!(all["tags"], json!(sorted));

    let (paged, pages) = paginate(&c, "/v2/paged/tags/list?n=2", "tags");
    assert_eq!(paged, sorted);
    assert_eq!(pages, 4, "7 tags in pages of 2");

    let after = c
        .get(&format!("/v2/paged/tags/list?last={}", sorted[2]))
        .expect(200)
        .json();
    assert_eq!(after["tags"], json!(sorted[3..]));
    let page = c
        .get(&format!("/v2/paged/tags/list?n=2&last={}", sorted[2]))
        .expect(200);
    assert_eq!(page.json()["tags"], json!(sorted[3..5]));
    assert!(page.header("Link").is_some(), "{page}");
    // The last page has no Link.
    let tail = c
        .get(&format!("/v2/paged/tags/list?n=2&last={}", sorted[4]))
        .expect(200);
    assert_eq!(tail.json()["tags"], json!(sorted[5..]));
    assert!(tail.header("Link").is_none(), "{tail}");
}

#[test]
fn catalog_paginates_with_link() {
    let berth = Berth::start();
    let c = berth.client();
    let repos = ["zeta", "alpha", "alpha/nested", "mid/deep/er", "b"];
    let image = Image::oci(5, &[10]);
    for repo in repos {
        push_image(&c, repo, "t", &image);
    }
    let mut sorted: Vec<String> = repos.iter().map(|r| r.to_string()).collect();
    sorted.sort();
    let all = c.get("/v2/_catalog").expect(200).json();
    assert_eq!(all["repositories"], json!(sorted));
    let (paged, pages) = paginate(&c, "/v2/_catalog?n=2", "repositories");
    assert_eq!(paged, sorted);
    assert_eq!(pages, 3);
    let after = c
        .get("/v2/_catalog?n=10&last=alpha/nested")
        .expect(200)
        .json();
    assert_eq!(after["repositories"], json!(sorted[2..]));
}

#[test]
fn referrers_list_and_filter_by_artifact_type() {
    let berth = Berth::start();
    let c = berth.client();
    let subject = Image::oci(6, &[100]);
    push_image(&c, "refs", "subject", &subject);

    let empty = c
        .get(&format!("/v2/refs/referrers/{}", subject.digest()))
        .expect(200);
    assert_eq!(empty.header("Content-Type"), Some(OCI_INDEX), "{empty}");
    assert_eq!(empty.json()["manifests"], json!([]));

    // One referrer says its type in artifactType, the other through its config media type
    // (the spec's fallback); both point at the subject.
    let signature = Image::oci_with(
        61,
        &[20],
        json!({
            "artifactType": "application/vnd.example.signature",
            "subject": subject.descriptor(),
            "annotations": { "org.example.kind": "sig" }
        }),
    );
    let sbom_config = b"{\"sbom\":true}".to_vec();
    let sbom = Image::assemble(
        OCI_MANIFEST,
        sbom_config,
        "application/vnd.example.sbom",
        vec![random_bytes(62, 30)],
        "application/json",
        json!({ "subject": subject.descriptor() }),
    );
    for (tag, referrer) in [("sig", &signature), ("sbom", &sbom)] {
        for blob in referrer.blobs() {
            push_blob(&c, "refs", blob);
        }
        let put = put_manifest(&c, "refs", tag, OCI_MANIFEST, &referrer.manifest);
        assert_eq!(
            put.header("OCI-Subject"),
            Some(subject.digest().as_str()),
            "{put}"
        );
    }

    let all = c
        .get(&format!("/v2/refs/referrers/{}", subject.digest()))
        .expect(200);
    assert!(all.header("OCI-Filters-Applied").is_none(), "{all}");
    let listed = all.json();
    assert_eq!(listed["schemaVersion"], 2);
    assert_eq!(listed["mediaType"], OCI_INDEX);
    let mut found: Vec<(String, String)> = listed["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert_eq!(d["mediaType"], OCI_MANIFEST);
            (
                d["artifactType"].as_str().unwrap().to_string(),
                d["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        vec![
            ("application/vnd.example.sbom".to_string(), sbom.digest()),
            (
                "application/vnd.example.signature".to_string(),
                signature.digest()
            ),
        ]
    );
    let sig_entry = listed["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["digest"] == signature.digest().as_str())
        .unwrap();
    assert_eq!(sig_entry["size"], signature.manifest.len());
    assert_eq!(sig_entry["annotations"]["org.example.kind"], "sig");

    let filtered = c
        .get(&format!(
            "/v2/refs/referrers/{}?artifactType=application/vnd.example.signature",
            subject.digest()
        ))
        .expect(200);
    assert_eq!(
        filtered.header("OCI-Filters-Applied"),
        Some("artifactType"),
        "{filtered}"
    );
    let manifests = filtered.json()["manifests"].clone();
    assert_eq!(manifests.as_array().unwrap().len(), 1, "{filtered}");
    assert_eq!(manifests[0]["digest"], signature.digest().as_str());

    // A referrer may be pushed before its subject exists (spec: "Pushing Manifests with Subject").
    let orphan_subject = Image::oci(63, &[5]);
    let early = Image::oci_with(64, &[5], json!({ "subject": orphan_subject.descriptor() }));
    for blob in early.blobs() {
        push_blob(&c, "refs", blob);
    }
    put_manifest(&c, "refs", &early.digest(), OCI_MANIFEST, &early.manifest);
    let listed = c
        .get(&format!("/v2/refs/referrers/{}", orphan_subject.digest()))
        .expect(200)
        .json();
    assert_eq!(listed["manifests"][0]["digest"], early.digest().as_str());

    // Deleting a referrer removes it from the list.
    c.delete(&format!("/v2/refs/manifests/{}", signature.digest()))
        .expect(202);
    let listed = c
        .get(&format!("/v2/refs/referrers/{}", subject.digest()))
        .expect(200)
        .json();
    assert_eq!(listed["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(listed["manifests"][0]["digest"], sbom.digest().as_str());
}

#[test]
fn cross_repository_mount() {
    let berth = Berth::start();
    let c = berth.client();
    let blob = random_bytes(8, 50_000);
    let digest = push_blob(&c, "source/repo", &blob);

    let mounted = c
        .request(
            "POST",
            &format!("/v2/target/blobs/uploads/?mount={digest}&from=source/repo"),
        )
        .send()
        .expect(201);
    assert_eq!(
        mounted.header("Docker-Content-Digest"),
        Some(digest.as_str()),
        "{mounted}"
    );
    assert_eq!(c.get(&mounted.location()).expect(200).body, blob);
    assert_eq!(get_blob(&c, "target", &digest), blob);
    assert_eq!(get_blob(&c, "source/repo", &digest), blob);

    // The blob is not in `from`: the spec says fall back to a plain upload session (202).
    let other = random_bytes(9, 1234);
    let other_digest = sha256(&other);
    let session = c
        .request(
            "POST",
            &format!("/v2/target/blobs/uploads/?mount={other_digest}&from=source/repo"),
        )
        .send()
        .expect(202);
    c.request(
        "PUT",
        &with_query(&session.location(), &format!("digest={other_digest}")),
    )
    .body(other.as_slice())
    .send()
    .expect(201);
    assert_eq!(get_blob(&c, "target", &other_digest), other);
    // `from` names a repository that does not exist: also a session, never an error.
    c.request(
        "POST",
        &format!("/v2/target/blobs/uploads/?mount={digest}&from=no/such/repo"),
    )
    .send()
    .expect(202);
}

#[test]
fn deletes_of_blobs_manifests_tags_and_uploads() {
    let berth = Berth::start();
    let c = berth.client();
    let image = Image::oci(10, &[100, 200]);
    push_image(&c, "del", "one", &image);
    put_manifest(&c, "del", "two", OCI_MANIFEST, &image.manifest);

    // Deleting a tag removes that tag only; the manifest stays pullable by digest.
    c.delete("/v2/del/manifests/one").expect(202);
    c.get_manifest("del", "one", OCI_MANIFEST)
        .expect_error(404, "MANIFEST_UNKNOWN");
    assert_image(&c, "del", "two", &image);

    // Deleting by digest removes the manifest and every tag pointing at it.
    c.delete(&format!("/v2/del/manifests/{}", image.digest()))
        .expect(202);
    c.get_manifest("del", &image.digest(), OCI_MANIFEST)
        .expect_error(404, "MANIFEST_UNKNOWN");
    c.get_manifest("del", "two", OCI_MANIFEST)
        .expect_error(404, "MANIFEST_UNKNOWN");
    c.delete(&format!("/v2/del/manifests/{}", image.digest()))
        .expect_error(404, "MANIFEST_UNKNOWN");
    let tags = c.get("/v2/del/tags/list").expect(200).json();
    assert!(
        tags["tags"].as_array().is_none_or(|t| t.is_empty()),
        "{tags}"
    );

    let layer = sha256(&image.layers[0]);
    c.delete(&format!("/v2/del/blobs/{layer}")).expect(202);
    c.get(&format!("/v2/del/blobs/{layer}"))
        .expect_error(404, "BLOB_UNKNOWN");
    c.head(&format!("/v2/del/blobs/{layer}")).expect(404);
    c.delete(&format!("/v2/del/blobs/{layer}"))
        .expect_error(404, "BLOB_UNKNOWN");
    // Other blobs are untouched.
    get_blob(&c, "del", &sha256(&image.layers[1]));

    let session = c
        .request("POST", "/v2/del/blobs/uploads/")
        .send()
        .expect(202)
        .location();
    c.request("PATCH", &session)
        .body(&b"partial"[..])
        .send()
        .expect(202);
    c.delete(&session).expect(204);
    c.get(&session).expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    layout::assert_sound(berth.root());
}

#[test]
fn moved_tag_leaves_old_manifest_pullable_by_digest() {
    let berth = Berth::start();
    let c = berth.client();
    let old = Image::oci(11, &[100]);
    let new = Image::oci(12, &[100]);
    push_image(&c, "moving", "latest", &old);
    push_image(&c, "moving", "latest", &new);
    assert_image(&c, "moving", "latest", &new);
    assert_image(&c, "moving", &old.digest(), &old);
    // The tag appears once in index.json, on the new digest.
    let index = read_index(&berth.root().join("moving"));
    assert_eq!(tags_of(&index), vec![("latest".to_string(), new.digest())]);
    assert_eq!(
        c.get("/v2/moving/tags/list").expect(200).json()["tags"],
        json!(["latest"])
    );
    // Re-pushing the same manifest to the same tag is idempotent.
    put_manifest(&c, "moving", "latest", OCI_MANIFEST, &new.manifest);
    assert_eq!(tags_of(&read_index(&berth.root().join("moving"))).len(), 1);
}

#[test]
fn nested_repository_names_are_independent_layouts() {
    let berth = Berth::start();
    let c = berth.client();
    let names = ["a", "a/b", "a/b/c-d_e.f/g__h", "x0/y-1/z.2"];
    let images: Vec<Image> = (0..names.len())
        .map(|i| Image::oci(20 + i as u64, &[64]))
        .collect();
    for (name, image) in names.iter().zip(&images) {
        push_image(&c, name, "t", image);
    }
    for (name, image) in names.iter().zip(&images) {
        assert_image(&c, name, "t", image);
        assert!(
            berth.root().join(name).join("oci-layout").is_file(),
            "{name}"
        );
    }
    // A parent's blobs are not its child's: repositories are separate namespaces.
    let child_layer = sha256(&images[1].layers[0]);
    c.get(&format!("/v2/a/blobs/{child_layer}"))
        .expect_error(404, "BLOB_UNKNOWN");
    let catalog = c.get("/v2/_catalog").expect(200).json();
    let mut sorted: Vec<&str> = names.to_vec();
    sorted.sort();
    assert_eq!(catalog["repositories"], json!(sorted));
}

#[test]
fn docker_schema2_manifests_and_lists_keep_their_media_types() {
    let berth = Berth::start();
    let c = berth.client();
    let amd = Image::docker(30, &[300]);
    let arm = Image::docker(31, &[400]);
    push_image(&c, "docker/app", "amd64", &amd);
    push_image(&c, "docker/app", "arm64", &arm);
    assert_image(&c, "docker/app", "amd64", &amd);

    let list = index_of(DOCKER_LIST, &[&amd, &arm]);
    put_manifest(&c, "docker/app", "multi", DOCKER_LIST, &list);
    let got = c
        .get_manifest("docker/app", "multi", DOCKER_LIST)
        .expect(200);
    assert_eq!(got.body, list);
    assert_eq!(got.header("Content-Type"), Some(DOCKER_LIST));

    // And the OCI index, over OCI manifests.
    let one = Image::oci(32, &[10]);
    push_image(&c, "docker/app", "oci-one", &one);
    let index = index_of(OCI_INDEX, &[&one]);
    put_manifest(&c, "docker/app", "oci-multi", OCI_INDEX, &index);
    let got = c
        .get_manifest("docker/app", &sha256(&index), OCI_INDEX)
        .expect(200);
    assert_eq!(got.body, index);
    assert_eq!(got.header("Content-Type"), Some(OCI_INDEX));
    let head = c
        .request("HEAD", "/v2/docker/app/manifests/oci-multi")
        .header("Accept", OCI_INDEX)
        .send()
        .expect(200);
    assert_eq!(head.header("Content-Type"), Some(OCI_INDEX));
}

#[test]
fn sha512_blobs_upload_and_read_back() {
    let berth = Berth::start();
    let c = berth.client();
    for (i, style) in [
        Upload::Monolithic,
        Upload::Chunked(40_000),
        Upload::Streamed(9000),
    ]
    .into_iter()
    .enumerate()
    {
        let blob = random_bytes(40 + i as u64, 100_000);
        let digest = sha512(&blob);
        upload(&c, "wide", &blob, &digest, style);
        assert_eq!(get_blob(&c, "wide", &digest), blob);
        let on_disk = blob_path(&berth.root().join("wide"), &digest);
        assert_eq!(std::fs::read(on_disk).unwrap(), blob);
        // The same bytes are unknown under their sha256 name: digests are not interchangeable.
        c.head(&format!("/v2/wide/blobs/{}", sha256(&blob)))
            .expect(404);
    }
    // A manifest may name sha512 blobs.
    let layer = random_bytes(49, 777);
    let layer_digest = sha512(&layer);
    upload(&c, "wide", &layer, &layer_digest, Upload::Monolithic);
    let config = b"{}".to_vec();
    push_blob(&c, "wide", &config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, &config),
        "layers": [{ "mediaType": OCI_LAYER_GZIP, "digest": layer_digest, "size": layer.len() }]
    }))
    .unwrap();
    put_manifest(&c, "wide", "t", OCI_MANIFEST, &manifest);
    assert_eq!(
        c.get_manifest("wide", "t", OCI_MANIFEST).expect(200).body,
        manifest
    );
}

#[test]
fn layouts_made_elsewhere_are_served_as_they_are() {
    let dir = temp_dir();
    let root = dir.path().join("root");
    let image = Image::oci(50, &[123, 45_678]);
    layout::write_layout(&root.join("made/elsewhere"), "v1", &image);
    let berth = Berth::start_on(&root, Settings::default());
    let c = berth.client();
    assert_image(&c, "made/elsewhere", "v1", &image);
    let catalog = c.get("/v2/_catalog").expect(200).json();
    assert_eq!(catalog["repositories"], json!(["made/elsewhere"]));
    assert_eq!(
        c.get("/v2/made/elsewhere/tags/list").expect(200).json()["tags"],
        json!(["v1"])
    );
    // berth can push into it, and keeps the layout valid.
    let more = Image::oci(51, &[10]);
    push_image(&c, "made/elsewhere", "v2", &more);
    let tags = tags_of(&read_index(&root.join("made/elsewhere")));
    assert!(
        tags.contains(&("v1".to_string(), image.digest())),
        "{tags:?}"
    );
    assert!(
        tags.contains(&("v2".to_string(), more.digest())),
        "{tags:?}"
    );
    layout::assert_sound(&root);
}
