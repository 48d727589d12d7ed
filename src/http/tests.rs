//! In-process API tests: `handlers::handle` driven by in-memory requests over a store on a
//! temporary directory, no socket. The black-box tests against a real process live in tests/.

use super::Service;
use super::handlers::handle;
use super::request::HttpRequest;
use super::response::{Body, Reply};
use super::route::Method;
use crate::cache::lmdb::{Lmdb, LmdbOptions};
use crate::cache::{DedupeCache, Namespace};
use crate::digest::Digest;
use crate::metrics::Metrics;
use crate::oci::{Reference, RepoName};
use crate::storage::driver::local::{LocalDriver, WriterChoice};
use crate::storage::{
    BlobBody, BlobRead, BodyLength, ByteRange, Reads, Registry, Store, StoreError, StoredManifest,
};
use serde_json::{Value, json};
use std::io::{Cursor, Read};
use std::path::PathBuf;
use std::sync::Arc;

struct FakeRequest {
    method: Method,
    url: String,
    headers: Vec<(String, String)>,
    body: Cursor<Vec<u8>>,
    content_length: Option<u64>,
}

impl HttpRequest for FakeRequest {
    fn method(&self) -> Method {
        self.method
    }
    fn url(&self) -> &str {
        &self.url
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn content_length(&self) -> Option<u64> {
        self.content_length
    }
    fn body(&mut self) -> &mut dyn Read {
        &mut self.body
    }
}

struct Harness {
    service: Service,
    root: PathBuf,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

struct Got {
    status: u16,
    reply: Reply,
    body: Vec<u8>,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.reply.header_value(name)
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    fn code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

fn local_store(root: &std::path::Path) -> Arc<Store> {
    let driver = LocalDriver::new(root, false, WriterChoice::Auto).unwrap();
    Arc::new(Store::new(Arc::new(driver), None))
}

impl Harness {
    fn new() -> Harness {
        Harness::serving(|root| local_store(root))
    }

    /// A harness whose one route is what `reads` makes of a fresh directory.
    fn serving(reads: impl FnOnce(&std::path::Path) -> Arc<dyn Reads>) -> Harness {
        let root = std::env::temp_dir().join(format!("berth-http-{}", uuid::Uuid::new_v4()));
        Harness {
            service: Service {
                registry: Arc::new(Registry::single(reads(&root))),
                metrics: Some((Metrics::default(), "/metrics".into())),
            },
            root,
        }
    }

    fn send(&self, method: Method, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Got {
        let mut req = FakeRequest {
            method,
            url: url.to_string(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: Cursor::new(body.to_vec()),
            content_length: Some(body.len() as u64),
        };
        let mut reply = handle(&self.service, &mut req);
        let body = match std::mem::replace(&mut reply.body, Body::Empty) {
            Body::Empty | Body::LengthOnly(_) => Vec::new(),
            Body::Bytes(b) => b,
            Body::File(file, offset, len) => {
                let mut buf = vec![0; len as usize];
                std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, offset).unwrap();
                buf
            }
            Body::Stream(mut r, len) => {
                let mut buf = Vec::new();
                r.read_to_end(&mut buf).unwrap();
                assert_eq!(
                    buf.len() as u64,
                    len,
                    "stream length matches Content-Length"
                );
                buf
            }
        };
        Got {
            status: reply.status,
            reply,
            body,
        }
    }

    fn push_blob(&self, repo: &str, bytes: &[u8]) -> Digest {
        let d = Digest::sha256_of(bytes);
        let got = self.send(
            Method::Post,
            &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
            &[],
            bytes,
        );
        assert_eq!(got.status, 201);
        d
    }

    fn push_manifest(&self, repo: &str, reference: &str, manifest: &Value) -> Got {
        self.send(
            Method::Put,
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
            &serde_json::to_vec(manifest).unwrap(),
        )
    }
}

fn image(config: &Digest, layer: &Digest, subject: Option<(&Digest, usize)>) -> Value {
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.to_string(), "size": 5}],
    });
    if let Some((d, size)) = subject {
        m["subject"] = json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d.to_string(), "size": size});
        m["artifactType"] = json!("application/vnd.example.sig");
    }
    m
}

#[test]
fn chunked_upload_then_pull_with_ranges() {
    let h = Harness::new();
    let start = h.send(Method::Post, "/v2/a/blobs/uploads/", &[], b"");
    assert_eq!(start.status, 202);
    assert_eq!(start.header("Range"), Some("0-0"));
    let location = start.header("Location").unwrap().to_string();
    let chunk = |range: &str, bytes: &[u8]| {
        h.send(Method::Patch, &location, &[("Content-Range", range)], bytes)
    };
    assert_eq!(chunk("0-4", b"hello").status, 202);
    let out_of_order = chunk("9-10", b"xx");
    assert_eq!(out_of_order.status, 416);
    assert_eq!(out_of_order.code(), "RANGE_INVALID");
    let ok = chunk("5-10", b" world");
    assert_eq!(ok.header("Range"), Some("0-10"));
    let status = h.send(Method::Get, &location, &[], b"");
    assert_eq!((status.status, status.header("Range")), (204, Some("0-10")));

    let wrong = Digest::sha256_of(b"other");
    let bad = h.send(Method::Put, &format!("{location}?digest={wrong}"), &[], b"");
    assert_eq!((bad.status, bad.code().as_str()), (400, "DIGEST_INVALID"));
    let blob_path = format!("/v2/a/blobs/{wrong}");
    assert_eq!(h.send(Method::Head, &blob_path, &[], b"").status, 404);

    let d = Digest::sha256_of(b"hello world!");
    let done = h.send(Method::Put, &format!("{location}?digest={d}"), &[], b"!");
    assert_eq!(done.status, 201);
    assert_eq!(
        done.header("Docker-Content-Digest"),
        Some(d.to_string().as_str())
    );
    let url = format!("/v2/a/blobs/{d}");
    assert_eq!(h.send(Method::Get, &url, &[], b"").body, b"hello world!");
    let part = h.send(Method::Get, &url, &[("Range", "bytes=6-")], b"");
    assert_eq!((part.status, part.body.as_slice()), (206, &b"world!"[..]));
    assert_eq!(part.header("Content-Range"), Some("bytes 6-11/12"));
    let tail = h.send(Method::Get, &url, &[("Range", "bytes=-3")], b"");
    assert_eq!(tail.body, b"ld!");
    let past = h.send(Method::Get, &url, &[("Range", "bytes=12-20")], b"");
    assert_eq!(past.status, 416);
    assert_eq!(past.header("Content-Range"), Some("bytes */12"));
    // The finished session is gone.
    assert_eq!(h.send(Method::Get, &location, &[], b"").status, 404);
}

#[test]
fn manifests_tags_and_referrers() {
    let h = Harness::new();
    let config = h.push_blob("r", b"{}");
    let layer = h.push_blob("r", b"layer");
    let missing = Digest::sha256_of(b"absent");
    let rejected = h.push_manifest("r", "v1", &image(&config, &missing, None));
    assert_eq!(
        (rejected.status, rejected.code().as_str()),
        (400, "MANIFEST_BLOB_UNKNOWN")
    );

    let first = image(&config, &layer, None);
    let put = h.push_manifest("r", "v1", &first);
    assert_eq!(put.status, 201);
    let first_digest = put.header("Docker-Content-Digest").unwrap().to_string();
    let got = h.send(Method::Get, "/v2/r/manifests/v1", &[], b"");
    assert_eq!(got.body, serde_json::to_vec(&first).unwrap());
    assert_eq!(
        got.header("Content-Type"),
        Some("application/vnd.oci.image.manifest.v1+json")
    );

    // Moving the tag keeps the old manifest pullable by digest.
    let mut second = first.clone();
    second["annotations"] = json!({"v": "2"});
    assert_eq!(h.push_manifest("r", "v1", &second).status, 201);
    let old = h.send(
        Method::Get,
        &format!("/v2/r/manifests/{first_digest}"),
        &[],
        b"",
    );
    assert_eq!(old.status, 200);

    for tag in ["b", "a", "c"] {
        assert_eq!(h.push_manifest("r", tag, &first).status, 201);
    }
    let page = h.send(Method::Get, "/v2/r/tags/list?n=2", &[], b"");
    assert_eq!(page.json()["tags"], json!(["a", "b"]));
    assert_eq!(
        page.header("Link"),
        Some("</v2/r/tags/list?n=2&last=b>; rel=\"next\"")
    );
    let rest = h.send(Method::Get, "/v2/r/tags/list?n=2&last=b", &[], b"");
    assert_eq!(rest.json()["tags"], json!(["c", "v1"]));
    assert!(rest.header("Link").is_none());

    // A referrer pushed by digest, found through the referrers API.
    let subject: Digest = first_digest.parse().unwrap();
    let sig = image(&config, &layer, Some((&subject, 10)));
    let sig_bytes = serde_json::to_vec(&sig).unwrap();
    let sig_digest = Digest::sha256_of(&sig_bytes);
    let put = h.push_manifest("r", &sig_digest.to_string(), &sig);
    assert_eq!(put.header("OCI-Subject"), Some(first_digest.as_str()));
    let refs = h.send(Method::Get, &format!("/v2/r/referrers/{subject}"), &[], b"");
    assert_eq!(
        refs.json()["manifests"][0]["digest"],
        sig_digest.to_string()
    );
    assert_eq!(
        refs.json()["manifests"][0]["artifactType"],
        "application/vnd.example.sig"
    );
    let filtered = h.send(
        Method::Get,
        &format!("/v2/r/referrers/{subject}?artifactType=other%2Ftype"),
        &[],
        b"",
    );
    assert_eq!(filtered.json()["manifests"], json!([]));
    assert_eq!(filtered.header("OCI-Filters-Applied"), Some("artifactType"));

    // Deleting a tag leaves the digest; deleting the digest removes every tag on it.
    assert_eq!(
        h.send(Method::Delete, "/v2/r/manifests/a", &[], b"").status,
        202
    );
    assert_eq!(
        h.send(Method::Get, "/v2/r/manifests/a", &[], b"").status,
        404
    );
    let by_digest = format!("/v2/r/manifests/{first_digest}");
    assert_eq!(h.send(Method::Delete, &by_digest, &[], b"").status, 202);
    assert_eq!(h.send(Method::Get, &by_digest, &[], b"").status, 404);
    let tags = h.send(Method::Get, "/v2/r/tags/list", &[], b"");
    assert_eq!(tags.json()["tags"], json!(["v1"]));
}

#[test]
fn mount_catalog_and_errors() {
    let h = Harness::new();
    let d = h.push_blob("src/x", b"shared");
    let mount = h.send(
        Method::Post,
        &format!("/v2/dst/blobs/uploads/?mount={d}&from=src/x"),
        &[],
        b"",
    );
    assert_eq!(mount.status, 201);
    assert_eq!(
        h.send(Method::Get, &format!("/v2/dst/blobs/{d}"), &[], b"")
            .body,
        b"shared"
    );
    let fallback = h.send(
        Method::Post,
        &format!("/v2/other/blobs/uploads/?mount={d}&from=nowhere"),
        &[],
        b"",
    );
    assert_eq!(fallback.status, 202);
    let catalog = h.send(Method::Get, "/v2/_catalog?n=2", &[], b"");
    assert_eq!(catalog.json()["repositories"], json!(["dst", "other"]));
    assert!(catalog.header("Link").is_some());

    for (method, url, status, code) in [
        (Method::Get, "/v2/UPPER/tags/list", 400, "NAME_INVALID"),
        (Method::Get, "/v2/nope/tags/list", 404, "NAME_UNKNOWN"),
        (
            Method::Get,
            "/v2/dst/manifests/latest",
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            Method::Get,
            "/v2/dst/blobs/sha256:1234",
            400,
            "DIGEST_INVALID",
        ),
        (
            Method::Patch,
            "/v2/dst/blobs/uploads/3fa85f64-5717-4562-b3fc-2c963f66afa6",
            404,
            "BLOB_UPLOAD_UNKNOWN",
        ),
        (
            Method::Put,
            "/v2/dst/manifests/latest",
            400,
            "MANIFEST_INVALID",
        ),
        (Method::Post, "/v2/dst/tags/list", 405, "UNSUPPORTED"),
    ] {
        let got = h.send(method, url, &[], b"{not json");
        assert_eq!(
            (got.status, got.code().as_str()),
            (status, code),
            "{method:?} {url}"
        );
    }
    let big = vec![b' '; crate::storage::MAX_MANIFEST_SIZE + 1];
    let too_big = h.send(Method::Put, "/v2/dst/manifests/big", &[], &big);
    assert_eq!(too_big.status, 413);
}

#[test]
fn layouts_changed_on_disk_are_served() {
    let h = Harness::new();
    let config = h.push_blob("ext", b"{}");
    let layer = h.push_blob("ext", b"layer");
    assert_eq!(
        h.push_manifest("ext", "one", &image(&config, &layer, None))
            .status,
        201
    );
    let tags =
        |h: &Harness| h.send(Method::Get, "/v2/ext/tags/list", &[], b"").json()["tags"].clone();
    assert_eq!(tags(&h), json!(["one"]));
    // Another tool rewrites index.json (same length, new tag name), as zot or skopeo might.
    let path = h.root.join("ext/index.json");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"one\"", "\"two\"");
    std::fs::write(&path, text).unwrap();
    assert_eq!(tags(&h), json!(["two"]));
    assert_eq!(
        h.send(Method::Get, "/v2/ext/manifests/two", &[], b"")
            .status,
        200
    );
    assert_eq!(
        h.send(Method::Get, "/v2/ext/manifests/one", &[], b"")
            .status,
        404
    );
}

/// A body that panics when read, standing in for any bug below a handler.
struct PanickingBody;

impl Read for PanickingBody {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        panic!("simulated handler bug");
    }
}

#[test]
fn a_panicking_handler_is_a_500_and_the_store_keeps_serving() {
    let h = Harness::new();
    let d = h.push_blob("p", b"kept");
    let start = h.send(Method::Post, "/v2/p/blobs/uploads/", &[], b"");
    let location = start.header("Location").unwrap().to_string();
    let req = FakeRequest {
        method: Method::Patch,
        url: location.clone(),
        headers: Vec::new(),
        body: Cursor::new(Vec::new()),
        content_length: Some(10),
    };
    struct Panicking(FakeRequest, PanickingBody);
    impl HttpRequest for Panicking {
        fn method(&self) -> Method {
            self.0.method()
        }
        fn url(&self) -> &str {
            self.0.url()
        }
        fn header(&self, name: &str) -> Option<&str> {
            self.0.header(name)
        }
        fn content_length(&self) -> Option<u64> {
            self.0.content_length()
        }
        fn body(&mut self) -> &mut dyn Read {
            &mut self.1
        }
    }
    let reply = handle(&h.service, &mut Panicking(req, PanickingBody));
    assert_eq!(reply.status, 500);
    // The same session and everything stored before still work.
    assert_eq!(h.send(Method::Get, &location, &[], b"").status, 204);
    assert_eq!(
        h.send(Method::Get, &format!("/v2/p/blobs/{d}"), &[], b"")
            .body,
        b"kept"
    );
}

/// What a pull-through mirror does, reduced to the seam: a miss is filled from an upstream
/// (here another store in the process), then answered from the store itself.
struct Filling {
    own: Arc<Store>,
    upstream: Arc<Store>,
}

impl Filling {
    fn fill_blob(&self, repo: &RepoName, digest: &Digest) -> Result<(), StoreError> {
        let (read, _) = self.upstream.blob_read(repo, digest, None)?;
        let mut body: Box<dyn Read> = match read.body {
            BlobBody::File { file, .. } => Box::new(file),
            BlobBody::Stream(stream, _) => stream,
        };
        self.own
            .blob_put(repo, digest, &mut body, BodyLength::Exact(read.size))
    }
}

impl Reads for Filling {
    fn store(&self) -> &Store {
        &self.own
    }

    fn manifest_get(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<StoredManifest, StoreError> {
        match self.own.manifest_get(repo, reference) {
            Err(StoreError::ManifestUnknown(_) | StoreError::NameUnknown(_)) => {
                let upstream = self.upstream.manifest_get(repo, reference)?;
                let manifest: Value = serde_json::from_slice(&upstream.bytes).unwrap();
                let blobs = manifest["layers"].as_array().unwrap().iter();
                for blob in blobs.chain([&manifest["config"]]) {
                    self.fill_blob(repo, &blob["digest"].as_str().unwrap().parse().unwrap())?;
                }
                let media_type = upstream.descriptor.media_type.clone();
                self.own
                    .manifest_put(repo, reference, Some(&media_type), &upstream.bytes, &[])?;
                self.own.manifest_get(repo, reference)
            }
            found => found,
        }
    }

    fn blob_read(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<(BlobRead, Option<ByteRange>), StoreError> {
        match self.own.blob_read(repo, digest, range) {
            Err(StoreError::BlobUnknown(_)) => {
                self.fill_blob(repo, digest)?;
                self.own.blob_read(repo, digest, range)
            }
            found => found,
        }
    }
}

/// Routing hands the front end a `Reads`, so a wrapper answers a miss (a pull-through
/// mirror filling from its upstream) with no handler changed; pushes reach the store.
#[test]
fn a_wrapper_on_the_route_fills_misses_without_handler_changes() {
    let upstream = Harness::new();
    let config = upstream.push_blob("lib/app", b"{}");
    let layer = upstream.push_blob("lib/app", b"layer");
    let pushed = upstream.push_manifest("lib/app", "v1", &image(&config, &layer, None));
    assert_eq!(pushed.status, 201);
    let upstream_store = local_store(&upstream.root);
    let mirror = Harness::serving(|root| {
        Arc::new(Filling {
            own: local_store(root),
            upstream: Arc::clone(&upstream_store),
        })
    });
    let manifest = mirror.send(Method::Get, "/v2/lib/app/manifests/v1", &[], b"");
    assert_eq!(manifest.status, 200);
    assert_eq!(
        manifest.header("Docker-Content-Digest"),
        pushed.header("Docker-Content-Digest")
    );
    let url = format!("/v2/lib/app/blobs/{layer}");
    assert_eq!(mirror.send(Method::Get, &url, &[], b"").body, b"layer");
    // A blob no manifest named yet, filled on its first (ranged) read.
    let extra = upstream.push_blob("lib/app", b"extra bytes");
    let url = format!("/v2/lib/app/blobs/{extra}");
    let part = mirror.send(Method::Get, &url, &[("Range", "bytes=6-")], b"");
    assert_eq!((part.status, part.body.as_slice()), (206, &b"bytes"[..]));
    // Filled into the mirror's own store: served from there, tags and all.
    let own = local_store(&mirror.root);
    let repo: RepoName = "lib/app".parse().unwrap();
    assert_eq!(own.tags(&repo).unwrap(), ["v1"]);
    assert_eq!(own.blob_size(&repo, &layer).unwrap(), 5);
    // A blob upstream lacks is still unknown; pushes go to the mirror's store.
    let missing = Digest::sha256_of(b"nowhere");
    let got = mirror.send(
        Method::Head,
        &format!("/v2/lib/app/blobs/{missing}"),
        &[],
        b"",
    );
    assert_eq!(got.status, 404);
    let local = mirror.push_blob("lib/app", b"local only");
    assert_eq!(own.blob_size(&repo, &local).unwrap(), 10);
}

#[test]
fn health_probes_answer_ok_and_readiness_names_a_cache_outage() {
    let h = Harness::new();
    for probe in ["/livez", "/readyz", "/startupz"] {
        let got = h.send(Method::Get, probe, &[], b"");
        assert_eq!(
            (got.status, got.body.as_slice()),
            (200, &b"ok\n"[..]),
            "{probe}"
        );
    }
    let got = h.send(Method::Get, "/healthz", &[], b"");
    assert_eq!(got.status, 404);

    // A store whose dedupe cache refuses writes (LMDB's map full) serves on, degraded.
    let dir = tempfile::tempdir().unwrap();
    let small = LmdbOptions {
        durable: false,
        map_size: 1 << 20,
    };
    let cache = Lmdb::open(&dir.path().join("cache"), small)
        .and_then(|env| env.namespace(&Namespace::new("storage")))
        .map(Arc::new)
        .unwrap();
    let h = Harness::serving(|root| {
        let driver = LocalDriver::new(root, false, WriterChoice::Auto).unwrap();
        Arc::new(Store::new(
            Arc::new(driver),
            Some(DedupeCache::of(cache.clone())),
        ))
    });
    let full = cache.fill_map();
    h.push_blob("app", b"a layer");
    let got = h.send(Method::Get, "/readyz", &[], b"");
    let body = String::from_utf8(got.body.clone()).unwrap();
    assert_eq!(got.status, 200, "{body}");
    assert!(
        body.starts_with("ok\ndegraded: store /: dedupe cache unavailable for "),
        "{body}"
    );
    let metrics = String::from_utf8(h.send(Method::Get, "/metrics", &[], b"").body).unwrap();
    assert!(
        metrics.contains("berth_cache_available{concern=\"dedupe\",store=\"/\"} 0\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("berth_cache_outages_total{concern=\"dedupe\",store=\"/\"} 1\n"),
        "{metrics}"
    );
    // The first write that works again ends the outage.
    drop(full);
    h.push_blob("other", b"another layer");
    let got = h.send(Method::Get, "/readyz", &[], b"");
    assert_eq!(got.body, b"ok\n");
}

#[test]
fn the_metrics_page_counts_manifests_by_repository_in_the_text_format() {
    let h = Harness::new();
    let config = h.push_blob("app", b"{}");
    let layer = h.push_blob("app", b"layer");
    let manifest = image(&config, &layer, None);
    assert_eq!(h.push_manifest("app", "v1", &manifest).status, 201);
    assert_eq!(h.push_manifest("app", "v2", &manifest).status, 201);
    for _ in 0..3 {
        assert_eq!(
            h.send(Method::Get, "/v2/app/manifests/v1", &[], b"").status,
            200
        );
    }
    // Neither a HEAD nor a miss is a download.
    assert_eq!(
        h.send(Method::Head, "/v2/app/manifests/v1", &[], b"")
            .status,
        200
    );
    assert_eq!(
        h.send(Method::Get, "/v2/app/manifests/v9", &[], b"").status,
        404
    );
    let got = h.send(Method::Get, "/metrics", &[], b"");
    assert_eq!(got.status, 200);
    assert_eq!(
        got.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let page = String::from_utf8(got.body).unwrap();
    assert!(
        page.contains("zot_repo_downloads_total{repo=\"app\"} 3\n"),
        "{page}"
    );
    assert!(
        page.contains("zot_repo_uploads_total{repo=\"app\"} 2\n"),
        "{page}"
    );
    assert!(
        page.contains("# TYPE zot_http_requests_total counter\n"),
        "{page}"
    );
    assert!(page.contains("zot_info{binaryType=\"berth\""), "{page}");
    // Every line is a comment or `name{labels} value` with a number for the value.
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        let (_, value) = line.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
    assert_eq!(h.send(Method::Put, "/metrics", &[], b"").status, 405);
}
