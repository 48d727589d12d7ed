//! OCI fixtures and registry operations: digests (sha256 and sha512, via the sha2 crate),
//! deterministic content, manifest documents, and the push and pull sequences of the
//! distribution spec written once, so every suite drives the wire the same way.

use std::io;

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256, Sha512};

use super::http::{Client, Response, with_query};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The spec's annotation that names a tag in an OCI layout's `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

pub fn sha512(data: &[u8]) -> String {
    format!("sha512:{}", hex(&Sha512::digest(data)))
}

/// Whether `data` hashes to `digest` (`alg:hex`); unknown algorithms never match.
pub fn matches_digest(digest: &str, data: &[u8]) -> bool {
    match digest.split_once(':') {
        Some(("sha256", _)) => sha256(data) == digest,
        Some(("sha512", _)) => sha512(data) == digest,
        _ => false,
    }
}

/// `len` pseudo-random bytes, the same for the same seed (xorshift64*): reproducible content
/// that no two tests share by accident and that never compresses to nothing.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn descriptor(media_type: &str, bytes: &[u8]) -> Value {
    json!({ "mediaType": media_type, "digest": sha256(bytes), "size": bytes.len() })
}

/// An image: its config, layers and manifest bytes, all known to the test so anything the
/// registry returns can be compared byte for byte.
#[derive(Clone, Debug)]
pub struct Image {
    pub config: Vec<u8>,
    pub layers: Vec<Vec<u8>>,
    pub manifest: Vec<u8>,
    pub media_type: &'static str,
}

impl Image {
    /// An OCI image manifest over random layers of the given sizes.
    pub fn oci(seed: u64, layer_sizes: &[usize]) -> Image {
        Image::build(
            seed,
            layer_sizes,
            OCI_MANIFEST,
            OCI_CONFIG,
            OCI_LAYER_GZIP,
            json!({}),
        )
    }

    /// A Docker schema2 manifest over random layers of the given sizes.
    pub fn docker(seed: u64, layer_sizes: &[usize]) -> Image {
        Image::build(
            seed,
            layer_sizes,
            DOCKER_MANIFEST,
            DOCKER_CONFIG,
            DOCKER_LAYER,
            json!({}),
        )
    }

    /// An OCI manifest with extra top-level fields (`subject`, `artifactType`, ...).
    pub fn oci_with(seed: u64, layer_sizes: &[usize], extra: Value) -> Image {
        Image::build(
            seed,
            layer_sizes,
            OCI_MANIFEST,
            OCI_CONFIG,
            OCI_LAYER_GZIP,
            extra,
        )
    }

    fn build(
        seed: u64,
        layer_sizes: &[usize],
        media_type: &'static str,
        config_type: &str,
        layer_type: &str,
        extra: Value,
    ) -> Image {
        let layers: Vec<Vec<u8>> = layer_sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| random_bytes(seed * 1000 + i as u64 + 1, size))
            .collect();
        let config = json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|l| sha256(l)).collect::<Vec<_>>() },
            "config": { "Labels": { "berth.test.seed": seed.to_string() } }
        });
        let config = serde_json::to_vec(&config).unwrap();
        Image::assemble(media_type, config, config_type, layers, layer_type, extra)
    }

    /// An image over given config and layer bytes (real tar layers for skopeo, say).
    pub fn assemble(
        media_type: &'static str,
        config: Vec<u8>,
        config_type: &str,
        layers: Vec<Vec<u8>>,
        layer_type: &str,
        extra: Value,
    ) -> Image {
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": descriptor(config_type, &config),
            "layers": layers.iter().map(|l| descriptor(layer_type, l)).collect::<Vec<_>>(),
        });
        if let Value::Object(extra) = extra {
            manifest.as_object_mut().unwrap().extend(extra);
        }
        Image {
            manifest: serde_json::to_vec_pretty(&manifest).unwrap(),
            config,
            layers,
            media_type,
        }
    }

    pub fn digest(&self) -> String {
        sha256(&self.manifest)
    }

    /// This image's manifest as a descriptor (for an index or a `subject`).
    pub fn descriptor(&self) -> Value {
        descriptor(self.media_type, &self.manifest)
    }

    /// Config first, then layers: every blob the manifest names.
    pub fn blobs(&self) -> Vec<&[u8]> {
        std::iter::once(self.config.as_slice())
            .chain(self.layers.iter().map(Vec::as_slice))
            .collect()
    }
}

/// An image index (or Docker manifest list) over the given manifests.
pub fn index_of(media_type: &str, manifests: &[&Image]) -> Vec<u8> {
    let manifests: Vec<Value> = manifests
        .iter()
        .map(|m| {
            let mut d = m.descriptor();
            d["platform"] = json!({ "architecture": "amd64", "os": "linux" });
            d
        })
        .collect();
    serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": manifests,
    }))
    .unwrap()
}

/// The ways the spec lets a client upload a blob.
#[derive(Clone, Copy, Debug)]
pub enum Upload {
    /// `POST ?digest=` with the whole body.
    Monolithic,
    /// `POST` for a session, then `PUT ?digest=` with the whole body.
    SessionPut,
    /// `POST`, then one `PATCH` per chunk of this size with `Content-Range`, then `PUT`.
    Chunked(usize),
    /// `POST`, one `PATCH` sent with `Transfer-Encoding: chunked` in parts of this size and
    /// no `Content-Range`, then `PUT`.
    Streamed(usize),
}

/// Uploads `bytes` as `digest` in the given style. Returns the final response, or the first
/// intermediate response that was not the spec's 202 (so a caller sees what went wrong);
/// transport errors are returned for the crash test, whose server dies under it.
pub fn try_upload(
    client: &Client,
    repo: &str,
    bytes: &[u8],
    digest: &str,
    style: Upload,
) -> io::Result<Response> {
    let uploads = format!("/v2/{repo}/blobs/uploads/");
    if let Upload::Monolithic = style {
        return client
            .request("POST", &with_query(&uploads, &format!("digest={digest}")))
            .header("Content-Type", "application/octet-stream")
            .body(bytes)
            .try_send();
    }
    let started = client.request("POST", &uploads).try_send()?;
    if started.status != 202 {
        return Ok(started);
    }
    let mut location = started.location();
    let final_body: &[u8] = match style {
        Upload::SessionPut => bytes,
        Upload::Chunked(size) => {
            let mut offset = 0;
            for chunk in bytes.chunks(size.max(1)) {
                let patched = try_patch(client, &location, offset, chunk)?;
                if patched.status != 202 {
                    return Ok(patched);
                }
                offset += chunk.len();
                location = patched.location();
            }
            &[]
        }
        Upload::Streamed(size) => {
            let parts = bytes.chunks(size.max(1)).map(<[u8]>::to_vec).collect();
            let patched = client
                .request("PATCH", &location)
                .header("Content-Type", "application/octet-stream")
                .chunked(parts)
                .try_send()?;
            if patched.status != 202 {
                return Ok(patched);
            }
            location = patched.location();
            &[]
        }
        Upload::Monolithic => unreachable!("handled above"),
    };
    client
        .request("PUT", &with_query(&location, &format!("digest={digest}")))
        .header("Content-Type", "application/octet-stream")
        .body(final_body)
        .try_send()
}

/// Opens an upload session in `repo` (`POST`, asserting the spec's 202); returns its
/// location.
#[track_caller]
pub fn start_upload(client: &Client, repo: &str) -> String {
    client
        .request("POST", &format!("/v2/{repo}/blobs/uploads/"))
        .send()
        .expect(202)
        .location()
}

/// `PATCH`es `chunk` into the session at `location` as the bytes from `start` on (with
/// `Content-Range`), status unchecked.
pub fn try_patch(
    client: &Client,
    location: &str,
    start: usize,
    chunk: &[u8],
) -> io::Result<Response> {
    client
        .request("PATCH", location)
        .header("Content-Type", "application/octet-stream")
        .header(
            "Content-Range",
            &format!("{start}-{}", start + chunk.len() - 1),
        )
        .body(chunk)
        .try_send()
}

/// `try_patch`, asserting the spec's 202; returns the session's next location.
#[track_caller]
pub fn patch(client: &Client, location: &str, start: usize, chunk: &[u8]) -> String {
    try_patch(client, location, start, chunk)
        .unwrap_or_else(|e| panic!("PATCH {location}: transport error {e}"))
        .expect(202)
        .location()
}

/// Asserts that the session at `location` holds `size` bytes, as its status (204 and
/// `Range`) says.
#[track_caller]
pub fn assert_upload_size(client: &Client, location: &str, size: usize) {
    let status = client.get(location).expect(204);
    assert_eq!(
        status.header("Range"),
        Some(format!("0-{}", size - 1).as_str()),
        "the bytes the session at {location} holds"
    );
}

/// Closes the session at `location` as `digest` with an empty `PUT`; asserts the 201.
#[track_caller]
pub fn finish_upload(client: &Client, location: &str, digest: &str) {
    client
        .request("PUT", &with_query(location, &format!("digest={digest}")))
        .send()
        .expect(201);
}

/// Uploads and asserts the spec's success: 201, a Location, and the digest echoed back.
#[track_caller]
pub fn upload(client: &Client, repo: &str, bytes: &[u8], digest: &str, style: Upload) {
    let done = try_upload(client, repo, bytes, digest, style)
        .unwrap_or_else(|e| panic!("upload to {repo}: transport error {e}"))
        .expect(201);
    assert_eq!(done.header("Docker-Content-Digest"), Some(digest), "{done}");
    assert!(
        done.header("Location").is_some(),
        "201 without Location: {done}"
    );
}

/// Pushes a blob monolithically as sha256; returns its digest.
#[track_caller]
pub fn push_blob(client: &Client, repo: &str, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    upload(client, repo, bytes, &digest, Upload::Monolithic);
    digest
}

/// `PUT /v2/<repo>/manifests/<reference>`, status unchecked.
pub fn try_put_manifest(
    client: &Client,
    repo: &str,
    reference: &str,
    media_type: &str,
    bytes: &[u8],
) -> io::Result<Response> {
    client
        .request("PUT", &format!("/v2/{repo}/manifests/{reference}"))
        .header("Content-Type", media_type)
        .body(bytes)
        .try_send()
}

/// Puts a manifest and asserts the spec's 201 with Location and the body's digest.
#[track_caller]
pub fn put_manifest(
    client: &Client,
    repo: &str,
    reference: &str,
    media_type: &str,
    bytes: &[u8],
) -> Response {
    let put = try_put_manifest(client, repo, reference, media_type, bytes)
        .unwrap_or_else(|e| panic!("PUT manifest {repo}:{reference}: {e}"))
        .expect(201);
    assert_eq!(
        put.header("Docker-Content-Digest"),
        Some(sha256(bytes).as_str()),
        "{put}"
    );
    assert!(
        put.header("Location").is_some(),
        "201 without Location: {put}"
    );
    put
}

/// Pushes every blob of an image monolithically, then its manifest under `reference`.
#[track_caller]
pub fn push_image(client: &Client, repo: &str, reference: &str, image: &Image) {
    for blob in image.blobs() {
        push_blob(client, repo, blob);
    }
    put_manifest(client, repo, reference, image.media_type, &image.manifest);
}

/// GETs a blob and checks what the spec and berth's contract promise of the response:
/// 200, the bytes hash to the digest, Content-Length framing (never chunked), and the digest
/// header. Returns the bytes.
#[track_caller]
pub fn get_blob(client: &Client, repo: &str, digest: &str) -> Vec<u8> {
    let got = client
        .get(&format!("/v2/{repo}/blobs/{digest}"))
        .expect(200);
    assert_eq!(got.content_length(), Some(got.body.len() as u64), "{got}");
    assert!(
        got.header("Transfer-Encoding").is_none(),
        "blob GET is chunked: {got}"
    );
    assert_eq!(got.header("Docker-Content-Digest"), Some(digest), "{got}");
    assert!(
        matches_digest(digest, &got.body),
        "GET {repo}@{digest}: bytes do not match digest"
    );
    got.body
}

/// Pulls an image by tag or digest and asserts every byte is what was pushed.
#[track_caller]
pub fn assert_image(client: &Client, repo: &str, reference: &str, image: &Image) {
    let got = client.get_manifest(repo, reference, image.media_type);
    let got = got.expect(200);
    assert_eq!(
        got.body, image.manifest,
        "manifest {repo}:{reference} bytes differ"
    );
    assert_eq!(got.header("Content-Type"), Some(image.media_type), "{got}");
    assert_eq!(
        got.header("Docker-Content-Digest"),
        Some(image.digest().as_str()),
        "{got}"
    );
    for blob in image.blobs() {
        assert_eq!(
            get_blob(client, repo, &sha256(blob)),
            blob,
            "blob of {repo}:{reference}"
        );
    }
}

impl Client {
    /// `GET /v2/<repo>/manifests/<reference>` accepting the given media type and every
    /// manifest type the tests use (clients send a list like this).
    pub fn get_manifest(&self, repo: &str, reference: &str, media_type: &str) -> Response {
        self.request("GET", &format!("/v2/{repo}/manifests/{reference}"))
            .header(
                "Accept",
                &format!(
                    "{media_type}, {OCI_MANIFEST}, {OCI_INDEX}, {DOCKER_MANIFEST}, {DOCKER_LIST}"
                ),
            )
            .send()
    }
}

/// Something pushed before a hostile test, re-pulled after it to prove it is intact.
pub struct Baseline {
    repo: String,
    tag: String,
    image: Image,
}

impl Baseline {
    pub fn push(client: &Client, repo: &str) -> Baseline {
        let image = Image::oci(0xBA5E, &[1000, 70_000]);
        push_image(client, repo, "stable", &image);
        Baseline {
            repo: repo.to_string(),
            tag: "stable".to_string(),
            image,
        }
    }

    #[track_caller]
    pub fn assert_intact(&self, client: &Client) {
        client.get("/v2/").expect(200);
        assert_image(client, &self.repo, &self.tag, &self.image);
        assert_image(client, &self.repo, &self.image.digest(), &self.image);
    }
}
