//! The store-level suite (DESIGN decision 8): registry semantics checked through `Store`'s own
//! API, in-process, over every storage driver x dedupe cache pair, so a backend is judged by
//! what a client of the registry would see rather than by its files.
//!
//! `run` takes ways to open stores over one storage and one cache (and over the same storage
//! with a fresh cache, or without dedupe); each check works in repositories of its own, so they
//! share one store without seeing each other. The matrix at the end makes one test per
//! driver x dedupe strategy x cache (`storage::store_suite::<driver>::<strategy>::<cache>`:
//! local by hard links and by placeholders, memory and S3 by placeholders, each with LMDB, with
//! Redis, with DynamoDB (on moto) and without a cache, which turns dedupe off): a new driver,
//! strategy or cache joins with one line there.
//!
//! Covered: monolithic, chunked (in and out of order) and resumed uploads (also one finished
//! with an empty body by a store that saw it empty while another filled it), digest mismatches,
//! ranged pulls, mounts (from a repository and, with dedupe, from anywhere), manifests by tag
//! and digest, tags, referrers, blob deletes, garbage collection (down to removing a
//! repository left empty), retention (`keepTags`), dedupe and the start-up pass deduplicating
//! a copy written behind the store's back, scrub finding a damaged layer, the catalog, two
//! stores tagging one repository at once, and a blob deleted through one store no longer
//! served by another that pulled it. Every store keeps blobs in memory (`BLOB_CACHE`). With placeholders also: the second repository's
//! copy is a placeholder (layers and manifests; never the empty blob; one holder when eight
//! repositories push at once), pulls, sizes, ranged reads and mounts through it, deleting and collecting the copy holding the bytes promotes a
//! placeholder, the start-up pass rebuilding a lost cache from placeholders alone, scrub
//! checking the holder (and reporting a placeholder whose holder is gone, which reads as
//! unknown), and `dedupe:
//! false` restoring placeholders into full copies.

use super::dedupe::Strategy;
use super::driver::local::{LocalDriver, WriterChoice};
use super::driver::memory::MemoryDriver;
use super::driver::{Driver, StoragePath};
use super::layout::{self, UploadId};
use super::{BlobBody, BodyLength, ByteRange, Collected, Store, StoreError, TagTimes, dedupe_pass};
use crate::cache::lmdb::{Lmdb, LmdbOptions};
use crate::cache::{CacheError, DedupeCache, DedupeIndex, Leases, Namespace};
use crate::config::Config;
use crate::config::gc::GcConfig;
use crate::digest::Digest;
use crate::oci::{Reference, RepoName, media_type};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Opens a driver over one storage each time it is called: a new client of the same files or
/// objects, as another process would have.
type Storage = Box<dyn Fn() -> Arc<dyn Driver>>;

/// Ways to open stores over one storage.
pub(super) struct Stores<'a> {
    /// A store over the storage and the shared cache.
    pub(super) open: &'a dyn Fn() -> Store,
    /// A store over the same storage with a new, empty cache of the same kind: a restart
    /// after the cache was lost.
    pub(super) with_new_cache: &'a dyn Fn() -> Store,
    /// A store over the same storage without dedupe: a restart with `dedupe: false`.
    pub(super) without_dedupe: &'a dyn Fn() -> Store,
    /// The leases `open`'s stores take (held `LEASE_TTL`), when there is a cache.
    pub(super) leases: Option<&'a dyn Leases>,
}

/// Runs every check on stores `stores` opens, which all see the same, initially empty,
/// storage (and cache).
pub(super) fn run(stores: &Stores<'_>) {
    let open = stores.open;
    let store = open();
    pushing_whole_blobs(&store);
    pushing_in_chunks(&store);
    resuming_uploads(&store, &open());
    finishing_what_another_store_wrote(&open(), &open());
    mounting(&store);
    manifests_and_tags(&store);
    referrers(&store);
    deleting_blobs(&store);
    collecting(&store);
    collecting_a_repository_away(&store);
    retaining(&store);
    retaining_by_pulls(&store);
    deleting_referrers(&store);
    deduplicating(&store);
    scrubbing(&store);
    if store.dedupe_strategy() == Some(Strategy::Placeholder) {
        placeholders_save_bytes(&store);
        concurrent_pushes_keep_one_holder(&store);
        deleting_promotes_a_placeholder(&store);
        collecting_promotes_a_placeholder(&store);
        the_pass_rebuilds_a_lost_cache(&(stores.with_new_cache)());
        scrub_checks_holders(&store);
        turning_dedupe_off_restores_copies(&(stores.without_dedupe)());
    }
    listing_the_catalog(&store);
    two_stores_lose_no_tag(&open(), &open());
    another_store_sees_a_moved_tag(&open(), &open());
    another_store_sees_a_deleted_blob(&open(), &open());
    instances_store_a_blob_once(&open(), &open());
    collecting_while_another_instance_pushes(&open(), &open());
    if let Some(leases) = stores.leases {
        sweeps_hand_over_their_lease(&open(), &open(), leases);
    }
}

fn repo(name: &str) -> RepoName {
    format!("suite/{name}").parse().unwrap()
}

fn push(store: &Store, repo: &RepoName, bytes: &[u8]) -> Digest {
    let digest = Digest::sha256_of(bytes);
    store
        .blob_put(repo, &digest, &mut &bytes[..], exactly(bytes))
        .unwrap();
    digest
}

fn exactly(bytes: &[u8]) -> BodyLength {
    BodyLength::Exact(bytes.len() as u64)
}

fn pull(store: &Store, repo: &RepoName, digest: &Digest, range: Option<ByteRange>) -> Vec<u8> {
    let (read, _) = store.blob_read(repo, digest, range).unwrap();
    let mut bytes = Vec::new();
    match read.body {
        BlobBody::File { file, offset, len } => {
            use std::os::unix::fs::FileExt;
            bytes.resize(len as usize, 0);
            file.read_exact_at(&mut bytes, offset).unwrap();
        }
        BlobBody::Stream(mut reader, len) => {
            reader.read_to_end(&mut bytes).unwrap();
            assert_eq!(bytes.len() as u64, len, "a stream is as long as it says");
        }
    }
    bytes
}

/// Bytes that differ at every offset (a misplaced part shows), `len` of them.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ (i >> 8) as u8 ^ seed)
        .collect()
}

fn pushing_whole_blobs(store: &Store) {
    let repo = repo("whole");
    let bytes = pattern(3 * 1024 * 1024 + 17, 1);
    let digest = push(store, &repo, &bytes);
    assert_eq!(store.blob_size(&repo, &digest).unwrap(), bytes.len() as u64);
    assert!(pull(store, &repo, &digest, None) == bytes);
    let range = ByteRange { start: 5, end: 9 };
    assert_eq!(pull(store, &repo, &digest, Some(range)), bytes[5..=9]);
    let past = ByteRange {
        start: bytes.len() as u64,
        end: bytes.len() as u64 + 5,
    };
    assert!(matches!(
        store.blob_read(&repo, &digest, Some(past)),
        Err(StoreError::RangeNotSatisfiable { .. })
    ));
    // Content that does not hash to its name, or ends early, is not stored.
    let wrong = Digest::sha256_of(b"something else");
    let mismatch = store.blob_put(&repo, &wrong, &mut &b"bytes"[..], exactly(b"bytes"));
    assert!(matches!(mismatch, Err(StoreError::DigestMismatch { .. })));
    let short = store.blob_put(
        &repo,
        &Digest::sha256_of(b"bytes"),
        &mut &b"byt"[..],
        BodyLength::Exact(5),
    );
    assert!(matches!(short, Err(StoreError::BodyInvalid(_))));
    for digest in [wrong, Digest::sha256_of(b"bytes")] {
        assert!(matches!(
            store.blob_size(&repo, &digest),
            Err(StoreError::BlobUnknown(_))
        ));
    }
}

fn pushing_in_chunks(store: &Store) {
    let repo = repo("chunked");
    let bytes = pattern(2 * 1024 * 1024 + 999, 2);
    let (first, second) = bytes.split_at(1024 * 1024 + 3);
    let id = store.upload_start(&repo).unwrap();
    let append = |start: u64, chunk: &[u8]| {
        store.upload_append(&repo, id, Some(start), &mut &chunk[..], exactly(chunk))
    };
    assert_eq!(append(0, first).unwrap(), first.len() as u64);
    assert!(matches!(
        append(7, second),
        Err(StoreError::UploadOutOfOrder { expected, got: 7 }) if expected == first.len() as u64
    ));
    // A chunk whose body ends early ends the session, bytes and note with it: an
    // upload is never cut back (an object store cannot), so the client starts again.
    let other = pattern(second.len(), 9);
    let declared = BodyLength::Exact(other.len() as u64 + 1);
    let cut = store.upload_append(&repo, id, None, &mut &other[..], declared);
    assert!(matches!(cut, Err(StoreError::BodyInvalid(_))), "{cut:?}");
    assert!(matches!(
        store.upload_size(&repo, id),
        Err(StoreError::UploadUnknown(_))
    ));
    let uploads = store
        .driver
        .list(Some(&layout::uploads_dir(&repo).unwrap()))
        .unwrap();
    assert!(uploads.is_empty(), "a failed upload left {uploads:?}");
    let id = store.upload_start(&repo).unwrap();
    let append = |start: u64, chunk: &[u8]| {
        store.upload_append(&repo, id, Some(start), &mut &chunk[..], exactly(chunk))
    };
    assert_eq!(append(0, first).unwrap(), first.len() as u64);
    // A chunk without Content-Range, streamed to its end.
    let streamed = store
        .upload_append(&repo, id, None, &mut &second[..], BodyLength::UntilEnd)
        .unwrap();
    assert_eq!(streamed, bytes.len() as u64);
    assert_eq!(store.upload_size(&repo, id).unwrap(), bytes.len() as u64);
    // A wrong digest leaves the session as it was.
    let wrong = Digest::sha256_of(b"not these bytes");
    let mismatch = store.upload_finish(&repo, id, &wrong, &mut &[][..], BodyLength::Exact(0));
    assert!(matches!(mismatch, Err(StoreError::DigestMismatch { .. })));
    let digest = Digest::sha256_of(&bytes);
    store
        .upload_finish(&repo, id, &digest, &mut &[][..], BodyLength::Exact(0))
        .unwrap();
    assert!(pull(store, &repo, &digest, None) == bytes);
    assert!(matches!(
        store.upload_size(&repo, id),
        Err(StoreError::UploadUnknown(_))
    ));
    // A cancelled session is gone, with its bytes.
    let id = store.upload_start(&repo).unwrap();
    store
        .upload_append(&repo, id, Some(0), &mut &first[..], exactly(first))
        .unwrap();
    store.upload_cancel(&repo, id).unwrap();
    assert!(matches!(
        store.upload_size(&repo, id),
        Err(StoreError::UploadUnknown(_))
    ));
    assert!(matches!(
        store.upload_size(&repo, UploadId::new()),
        Err(StoreError::UploadUnknown(_))
    ));
}

/// A session started by one store continues in another over the same storage (a restart, or
/// another instance), from what the storage holds.
fn resuming_uploads(first: &Store, second: &Store) {
    let repo = repo("resumed");
    let bytes = pattern(1024 * 1024 + 5, 3);
    let (head, tail) = bytes.split_at(700_000);
    let id = first.upload_start(&repo).unwrap();
    first
        .upload_append(&repo, id, Some(0), &mut &head[..], exactly(head))
        .unwrap();
    assert_eq!(second.upload_size(&repo, id).unwrap(), head.len() as u64);
    let digest = Digest::sha256_of(&bytes);
    second
        .upload_finish(&repo, id, &digest, &mut &tail[..], exactly(tail))
        .unwrap();
    assert!(pull(first, &repo, &digest, None) == bytes);
}

/// Issue 13: a session started by one store, filled by another and finished by the first
/// with an empty body is the other store's bytes, whatever the first remembers (it saw the
/// session empty: a shortcut for a whole blob in the final request must not trust that).
fn finishing_what_another_store_wrote(first: &Store, second: &Store) {
    let repo = repo("finished-elsewhere");
    let bytes = pattern(300_000, 5);
    let digest = Digest::sha256_of(&bytes);
    let id = first.upload_start(&repo).unwrap();
    assert_eq!(first.upload_size(&repo, id).unwrap(), 0);
    second
        .upload_append(&repo, id, Some(0), &mut &bytes[..], exactly(&bytes))
        .unwrap();
    first
        .upload_finish(&repo, id, &digest, &mut &b""[..], exactly(b""))
        .unwrap();
    assert!(pull(first, &repo, &digest, None) == bytes);
}

fn mounting(store: &Store) {
    let (from, to) = (repo("mount-from"), repo("mount-to"));
    let bytes = b"a mounted layer";
    let digest = push(store, &from, bytes);
    assert!(store.blob_mount(&to, &digest, Some(&from)).unwrap());
    assert_eq!(pull(store, &to, &digest, None), bytes);
    assert!(
        store.blob_mount(&to, &digest, Some(&from)).unwrap(),
        "mounting again is fine"
    );
    // Nothing to mount: nothing changes.
    let unknown = Digest::sha256_of(b"never pushed");
    assert!(!store.blob_mount(&to, &unknown, Some(&from)).unwrap());
    assert!(matches!(
        store.blob_size(&to, &unknown),
        Err(StoreError::BlobUnknown(_))
    ));
    // Without a source repository, only dedupe knows where a digest is.
    let anywhere = repo("mount-anywhere");
    assert_eq!(
        store.blob_mount(&anywhere, &digest, None).unwrap(),
        store.dedupes()
    );
}

/// An image manifest with a 2-byte config and `layers`, pushed into `repo` first.
fn image(store: &Store, repo: &RepoName, layers: &[&[u8]], annotation: &str) -> Vec<u8> {
    let config = push(store, repo, b"{}");
    let layers: Vec<_> = layers
        .iter()
        .map(|bytes| (push(store, repo, bytes), bytes.len()))
        .collect();
    image_json(&config, &layers, annotation)
}

/// The bytes of an image manifest naming `config` and `layers` (digest and size).
fn image_json(config: &Digest, layers: &[(Digest, usize)], annotation: &str) -> Vec<u8> {
    let layers: Vec<_> = layers
        .iter()
        .map(|(digest, size)| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": digest.to_string(),
                "size": size,
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config.to_string(),
            "size": 2,
        },
        "layers": layers,
        "annotations": { "suite": annotation },
    }))
    .unwrap()
}

fn put_manifest(store: &Store, repo: &RepoName, reference: &str, bytes: &[u8]) -> Digest {
    let reference: Reference = reference.parse().unwrap();
    let put = store
        .manifest_put(repo, &reference, Some(media_type::OCI_MANIFEST), bytes, &[])
        .unwrap();
    assert_eq!(put.digest, Digest::sha256_of(bytes));
    put.digest
}

fn manifest_bytes(store: &Store, repo: &RepoName, reference: &str) -> Result<Vec<u8>, StoreError> {
    let reference: Reference = reference.parse().unwrap();
    store.manifest_get(repo, &reference).map(|m| m.bytes)
}

fn manifests_and_tags(store: &Store) {
    let repo = repo("manifests");
    let manifest = image(store, &repo, &[b"layer one"], "tags");
    let digest = put_manifest(store, &repo, "v1", &manifest);
    put_manifest(store, &repo, "v2", &manifest);
    assert_eq!(manifest_bytes(store, &repo, "v1").unwrap(), manifest);
    assert_eq!(
        manifest_bytes(store, &repo, &digest.to_string()).unwrap(),
        manifest
    );
    let head = store
        .manifest_head(&repo, &Reference::Digest(digest.clone()))
        .unwrap();
    assert_eq!(head.size, manifest.len() as u64);
    assert_eq!(store.tags(&repo).unwrap(), ["v1", "v2"]);
    // Untagging keeps the manifest; deleting by digest removes it and every tag on it.
    store
        .manifest_delete(&repo, &"v1".parse().unwrap())
        .unwrap();
    assert_eq!(store.tags(&repo).unwrap(), ["v2"]);
    assert!(manifest_bytes(store, &repo, &digest.to_string()).is_ok());
    store
        .manifest_delete(&repo, &Reference::Digest(digest.clone()))
        .unwrap();
    assert!(store.tags(&repo).unwrap().is_empty());
    for reference in ["v2".to_string(), digest.to_string()] {
        assert!(matches!(
            manifest_bytes(store, &repo, &reference),
            Err(StoreError::ManifestUnknown(_))
        ));
    }
    // A manifest naming content the repository does not hold is refused.
    let elsewhere = image(store, &self::repo("manifests-elsewhere"), &[b"away"], "x");
    let refused = store.manifest_put(
        &repo,
        &"v3".parse().unwrap(),
        Some(media_type::OCI_MANIFEST),
        &elsewhere,
        &[],
    );
    assert!(matches!(refused, Err(StoreError::ManifestBlobUnknown(_))));
    assert!(matches!(
        store.tags(&self::repo("never-pushed")),
        Err(StoreError::NameUnknown(_))
    ));
}

fn referrers(store: &Store) {
    let repo = repo("referrers");
    let subject_bytes = image(store, &repo, &[b"subject layer"], "subject");
    let subject = put_manifest(store, &repo, "latest", &subject_bytes);
    let empty = push(store, &repo, b"{}");
    let signature = b"a signature";
    let artifact = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "artifactType": "application/vnd.example.signature",
        "config": {
            "mediaType": media_type::OCI_EMPTY,
            "digest": empty.to_string(),
            "size": 2,
        },
        "layers": [{
            "mediaType": "application/octet-stream",
            "digest": push(store, &repo, signature).to_string(),
            "size": signature.len(),
        }],
        "subject": {
            "mediaType": media_type::OCI_MANIFEST,
            "digest": subject.to_string(),
            "size": subject_bytes.len(),
        },
    }))
    .unwrap();
    let artifact_digest = Digest::sha256_of(&artifact);
    put_manifest(store, &repo, &artifact_digest.to_string(), &artifact);
    let listed = |artifact_type: Option<&str>| -> Vec<String> {
        let mut page = store.referrers(&repo, &subject, artifact_type).unwrap();
        let mut bytes = Vec::new();
        page.read_to_end(&mut bytes).unwrap();
        let index: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["digest"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(listed(None), [artifact_digest.to_string()]);
    assert_eq!(
        listed(Some("application/vnd.example.signature")),
        [artifact_digest.to_string()]
    );
    assert!(listed(Some("application/vnd.example.other")).is_empty());
    let unknown = store
        .referrers(&self::repo("never-pushed"), &subject, None)
        .unwrap();
    assert!(unknown.is_empty(), "an unknown repository has no referrers");
    store
        .manifest_delete(&repo, &Reference::Digest(artifact_digest))
        .unwrap();
    assert!(listed(None).is_empty());
}

fn deleting_blobs(store: &Store) {
    let (one, other) = (repo("delete-one"), repo("delete-other"));
    let bytes = b"deleted from one repository";
    let digest = push(store, &one, bytes);
    assert!(store.blob_mount(&other, &digest, Some(&one)).unwrap());
    // Pulled first, so a store that keeps blobs in memory holds both.
    assert_eq!(pull(store, &one, &digest, None), bytes);
    assert_eq!(pull(store, &other, &digest, None), bytes);
    store.blob_delete(&one, &digest).unwrap();
    assert!(matches!(
        store.blob_size(&one, &digest),
        Err(StoreError::BlobUnknown(_))
    ));
    assert!(matches!(
        store.blob_read(&one, &digest, None),
        Err(StoreError::BlobUnknown(_))
    ));
    assert!(matches!(
        store.blob_delete(&one, &digest),
        Err(StoreError::BlobUnknown(_))
    ));
    assert_eq!(
        pull(store, &other, &digest, None),
        bytes,
        "other repositories keep theirs"
    );
    // A manifest's bytes go with the manifest, not as a blob.
    let manifest = image(store, &one, &[b"a layer"], "delete");
    let manifest = put_manifest(store, &one, "v1", &manifest);
    assert!(matches!(
        store.blob_delete(&one, &manifest),
        Err(StoreError::BlobIsManifest(_))
    ));
}

fn collecting(store: &Store) {
    let repo = repo("gc");
    let orphan = push(store, &repo, b"referenced by nothing");
    assert_eq!(pull(store, &repo, &orphan, None), b"referenced by nothing");
    let tagged = image(store, &repo, &[b"kept layer"], "tagged");
    let tagged = put_manifest(store, &repo, "kept", &tagged);
    let untagged = image(store, &repo, &[b"collected layer"], "untagged");
    let untagged = put_manifest(
        store,
        &repo,
        &Digest::sha256_of(&untagged).to_string(),
        &untagged,
    );
    let collected = collect_now(store, &repo);
    let removed: Vec<&Digest> = collected.blobs.iter().map(|(d, _)| d).collect();
    let collected_layer = Digest::sha256_of(b"collected layer");
    for gone in [&orphan, &untagged, &collected_layer] {
        assert!(removed.contains(&gone), "{gone} collected");
        assert!(matches!(
            store.blob_size(&repo, gone),
            Err(StoreError::BlobUnknown(_))
        ));
        assert!(matches!(
            store.blob_read(&repo, gone, None),
            Err(StoreError::BlobUnknown(_))
        ));
    }
    assert_eq!(removed.len(), 3, "{removed:?}");
    assert_eq!(store.tags(&repo).unwrap(), ["kept"]);
    assert!(manifest_bytes(store, &repo, &tagged.to_string()).is_ok());
    assert_eq!(
        pull(store, &repo, &Digest::sha256_of(b"kept layer"), None),
        b"kept layer"
    );
}

/// Collector settings as a config file gives them, with retention `policies` (none:
/// untagged manifests go, tags stay), but no grace delays: a config refuses a zero `gcDelay`
/// (a client mid-push would lose its blobs), and the suite has no client mid-push.
fn gc_settings(policies: serde_json::Value) -> GcConfig {
    let config = serde_json::json!({ "storage": {
        "rootDirectory": "/store-suite", "gc": true,
        "retention": { "policies": policies },
    }});
    let mut settings = Config::parse(&config.to_string(), "store suite")
        .unwrap()
        .storage
        .default
        .gc;
    settings.delay = Duration::ZERO;
    settings.retention.delay = Duration::ZERO;
    settings
}

/// Collects `repo` as `settings` say, a moment ahead of now, so what was written just now is
/// old enough on any clock.
fn collect(store: &Store, repo: &RepoName, settings: &GcConfig, times: &TagTimes) -> Collected {
    let now = SystemTime::now() + Duration::from_secs(1);
    store.collect(repo, settings, times, now, false).unwrap()
}

fn collect_now(store: &Store, repo: &RepoName) -> Collected {
    collect(
        store,
        repo,
        &gc_settings(serde_json::json!([])),
        &TagTimes::default(),
    )
}

/// A `keepTags` rule keeps the most recently pushed tag it selects; the other tags go, and
/// with them the manifests and layers only they held.
fn retaining(store: &Store) {
    let repo = repo("retention");
    let mut times = TagTimes::default();
    let start = SystemTime::now() - Duration::from_secs(3600);
    for (n, tag) in ["v1", "v2", "dev"].into_iter().enumerate() {
        let layer = format!("layer of {tag}");
        let manifest = image(store, &repo, &[layer.as_bytes()], tag);
        put_manifest(store, &repo, tag, &manifest);
        let pushed = start + Duration::from_secs(60 * n as u64);
        times.pushed.insert(tag.to_string(), pushed);
    }
    let settings = gc_settings(serde_json::json!([{
        "repositories": [repo.as_str()],
        "keepTags": [{ "patterns": ["^v"], "mostRecentlyPushedCount": 1 }],
    }]));
    let collected = collect(store, &repo, &settings, &times);
    let mut removed: Vec<&str> = collected.tags.iter().map(|(t, _)| t.as_str()).collect();
    removed.sort();
    assert_eq!(removed, ["dev", "v1"]);
    assert_eq!(store.tags(&repo).unwrap(), ["v2"]);
    for (tag, kept) in [("v1", false), ("v2", true), ("dev", false)] {
        let layer = Digest::sha256_of(format!("layer of {tag}").as_bytes());
        assert_eq!(
            store.blob_size(&repo, &layer).is_ok(),
            kept,
            "{tag}'s layer"
        );
    }
}

/// A `keepTags` rule on pull times keeps the tag whose manifest was pulled last; the tag of a
/// manifest never pulled goes.
fn retaining_by_pulls(store: &Store) {
    let repo = repo("retention-pulls");
    let mut times = TagTimes::default();
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    let mut manifests = Vec::new();
    for tag in ["pulled-long-ago", "pulled-lately", "never-pulled"] {
        let manifest = image(store, &repo, &[tag.as_bytes()], tag);
        manifests.push(put_manifest(store, &repo, tag, &manifest));
        times.pushed.insert(tag.to_string(), an_hour_ago);
    }
    times.pulled.insert(manifests[0].clone(), an_hour_ago);
    times.pulled.insert(
        manifests[1].clone(),
        an_hour_ago + Duration::from_secs(1800),
    );
    let settings = gc_settings(serde_json::json!([{
        "repositories": [repo.as_str()],
        "keepTags": [{ "patterns": [".*"], "mostRecentlyPulledCount": 1 }],
    }]));
    collect(store, &repo, &settings, &times);
    assert_eq!(store.tags(&repo).unwrap(), ["pulled-lately"]);
}

/// With `deleteReferrers`, a referrer whose subject was deleted is collected; the referrer
/// of a subject still there stays.
fn deleting_referrers(store: &Store) {
    let repo = repo("delete-referrers");
    let empty = push(store, &repo, b"{}");
    let referrer_of = |store: &Store, subject: &Digest, subject_size: usize, note: &str| {
        let artifact = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "artifactType": "application/vnd.example.note",
            "config": { "mediaType": media_type::OCI_EMPTY, "digest": empty.to_string(), "size": 2 },
            "layers": [],
            "annotations": { "note": note },
            "subject": {
                "mediaType": media_type::OCI_MANIFEST,
                "digest": subject.to_string(),
                "size": subject_size,
            },
        }))
        .unwrap();
        let digest = Digest::sha256_of(&artifact);
        put_manifest(store, &repo, &digest.to_string(), &artifact)
    };
    let kept_bytes = image(store, &repo, &[b"kept subject"], "kept");
    let kept = put_manifest(store, &repo, "kept", &kept_bytes);
    let gone_bytes = image(store, &repo, &[b"deleted subject"], "gone");
    let gone = put_manifest(store, &repo, "gone", &gone_bytes);
    let of_kept = referrer_of(store, &kept, kept_bytes.len(), "of the kept subject");
    let of_gone = referrer_of(store, &gone, gone_bytes.len(), "of the deleted subject");
    store
        .manifest_delete(&repo, &Reference::Digest(gone.clone()))
        .unwrap();
    let settings = gc_settings(serde_json::json!([{
        "repositories": [repo.as_str()],
        "deleteReferrers": true,
    }]));
    collect(store, &repo, &settings, &TagTimes::default());
    assert!(manifest_bytes(store, &repo, &of_kept.to_string()).is_ok());
    assert!(matches!(
        manifest_bytes(store, &repo, &of_gone.to_string()),
        Err(StoreError::ManifestUnknown(_))
    ));
    assert!(manifest_bytes(store, &repo, "kept").is_ok());
}

/// With dedupe, repositories holding one digest share its bytes, whether pushed so or linked
/// by the start-up pass from a copy written behind the store's back (by a store without
/// dedupe, or a restore); without dedupe each keeps a copy of its own.
fn deduplicating(store: &Store) {
    let (one, other, restored) = (
        repo("dedupe-one"),
        repo("dedupe-other"),
        repo("dedupe-restored"),
    );
    let bytes = b"pushed into every repository";
    let digest = push(store, &one, bytes);
    push(store, &other, bytes);
    // Of the bytes a pull reads: through a placeholder, its holder's.
    let bytes_key = |repo: &RepoName| held(store, repo, &digest).meta.bytes_key();
    assert_eq!(bytes_key(&one) == bytes_key(&other), store.dedupes());
    push(store, &restored, b"makes it a repository");
    let copy = layout::blob(&restored, &digest).unwrap();
    store.driver.put(&copy, bytes).unwrap();
    assert_ne!(bytes_key(&one), bytes_key(&restored));
    let report = dedupe_pass::run(store).unwrap();
    assert_eq!(report.linked > 0, store.dedupes(), "{report:?}");
    assert_eq!(bytes_key(&one) == bytes_key(&restored), store.dedupes());
    assert_eq!(pull(store, &restored, &digest, None), bytes);
}

/// Scrub finds a layer whose bytes changed behind the store's back, in the one repository
/// that holds it, and nothing in the others.
fn scrubbing(store: &Store) {
    let repo = repo("scrub");
    let layer = b"a layer damaged later";
    let manifest = image(store, &repo, &[layer], "scrub");
    put_manifest(store, &repo, "v1", &manifest);
    let affected = || -> Vec<(String, Vec<Digest>)> {
        let report = store.scrub("storage", Duration::from_secs(3600)).unwrap();
        report
            .repositories
            .into_iter()
            .filter(|r| r.status != "ok")
            .map(|r| {
                let blobs = r.images.into_iter().flat_map(|i| i.affected);
                (r.repository, blobs.map(|b| b.digest).collect())
            })
            .collect()
    };
    assert!(affected().is_empty());
    let damaged = Digest::sha256_of(layer);
    let path = layout::blob(&repo, &damaged).unwrap();
    store.driver.put(&path, b"damaged").unwrap();
    assert_eq!(affected(), [(repo.to_string(), vec![damaged.clone()])]);
    // Emptied (cut, or a placeholder copied out of a bucket without its metadata): never
    // served as the blob (it was, as 0 bytes), reported, and replaced by the next push.
    store.driver.put(&path, b"").unwrap();
    assert!(
        matches!(
            store.blob_size(&repo, &damaged),
            Err(StoreError::BlobUnknown(_))
        ),
        "an empty object is not the blob"
    );
    assert_eq!(affected(), [(repo.to_string(), vec![damaged.clone()])]);
    push(store, &repo, layer);
    assert_eq!(pull(store, &repo, &damaged, None), layer);
    assert!(affected().is_empty());
}

/// Where the bytes of `repo`'s blob `digest` are, its placeholder resolved.
fn held(store: &Store, repo: &RepoName, digest: &Digest) -> super::placeholders::Resolved {
    let path = layout::blob(repo, digest).unwrap();
    super::placeholders::resolve(&*store.driver, &path, digest)
        .unwrap()
        .unwrap()
}

/// The holder `repo`'s copy of `digest` names: `None` when it holds bytes of its own.
fn placeholder_of(store: &Store, repo: &RepoName, digest: &Digest) -> Option<StoragePath> {
    let path = layout::blob(repo, digest).unwrap();
    let meta = store.driver.stat(&path).unwrap().unwrap();
    let holder = store.driver.placeholder_holder(&path).unwrap();
    assert_eq!(
        holder.is_some(),
        meta.size == 0 && *digest != Digest::sha256_of(b"")
    );
    holder
}

/// Pulls of `digest` from `repo` give `bytes`: whole, its size, and a range.
fn pulls_right(store: &Store, repo: &RepoName, digest: &Digest, bytes: &[u8]) {
    assert_eq!(store.blob_size(repo, digest).unwrap(), bytes.len() as u64);
    assert!(pull(store, repo, digest, None) == bytes, "{repo}");
    let range = ByteRange {
        start: 1000,
        end: 1999,
    };
    assert_eq!(pull(store, repo, digest, Some(range)), bytes[1000..2000]);
}

/// The second repository's copy of a layer, and of a manifest, is a placeholder naming the
/// first's, and reads through it: pulls, sizes, ranges, manifest GET and HEAD, a mount from
/// it. The empty blob stays a real empty blob.
fn placeholders_save_bytes(store: &Store) {
    let (a, b, c) = (repo("ph-a"), repo("ph-b"), repo("ph-c"));
    let layer = pattern(64 * 1024 + 3, 5);
    let digest = push(store, &a, &layer);
    push(store, &b, &layer);
    let holder = layout::blob(&a, &digest).unwrap();
    assert_eq!(placeholder_of(store, &a, &digest), None);
    assert_eq!(placeholder_of(store, &b, &digest), Some(holder.clone()));
    pulls_right(store, &b, &digest, &layer);
    // Mounted from the placeholder: another placeholder naming the holder.
    assert!(store.blob_mount(&c, &digest, Some(&b)).unwrap());
    assert_eq!(placeholder_of(store, &c, &digest), Some(holder.clone()));
    pulls_right(store, &c, &digest, &layer);
    // Pushed again: still a placeholder, still readable.
    push(store, &b, &layer);
    assert_eq!(placeholder_of(store, &b, &digest), Some(holder));
    // A manifest pushed into two repositories.
    let manifest = image(store, &a, &[&layer], "placeholders");
    let manifest_digest = put_manifest(store, &a, "v1", &manifest);
    image(store, &b, &[&layer], "placeholders");
    put_manifest(store, &b, "v1", &manifest);
    assert!(placeholder_of(store, &b, &manifest_digest).is_some());
    assert_eq!(manifest_bytes(store, &b, "v1").unwrap(), manifest);
    let head = store.manifest_head(&b, &Reference::Tag("v1".parse().unwrap()));
    assert_eq!(head.unwrap().size, manifest.len() as u64);
    // The empty blob is itself everywhere.
    let empty = push(store, &a, b"");
    push(store, &b, b"");
    assert_eq!(placeholder_of(store, &b, &empty), None);
    assert_eq!(pull(store, &b, &empty, None), b"");
}

/// Eight repositories pushing one new blob at once: one copy holds the bytes, the other
/// seven are placeholders naming it (decisions for one digest are serialised).
fn concurrent_pushes_keep_one_holder(store: &Store) {
    let layer = pattern(32 * 1024, 10);
    let repos: Vec<RepoName> = (0..8).map(|i| repo(&format!("ph-race-{i}"))).collect();
    std::thread::scope(|s| {
        for r in &repos {
            let layer = &layer;
            s.spawn(move || push(store, r, layer));
        }
    });
    let digest = Digest::sha256_of(&layer);
    let holders: Vec<Option<StoragePath>> = repos
        .iter()
        .map(|r| placeholder_of(store, r, &digest))
        .collect();
    let full: Vec<&RepoName> = repos
        .iter()
        .zip(&holders)
        .filter(|(_, h)| h.is_none())
        .map(|(r, _)| r)
        .collect();
    assert_eq!(full.len(), 1, "{holders:?}");
    let holder = layout::blob(full[0], &digest).unwrap();
    for (r, h) in repos.iter().zip(&holders) {
        assert!(h.is_none() || h.as_ref() == Some(&holder), "{r}: {h:?}");
        pulls_right(store, r, &digest, &layer);
    }
}

/// Deleting the copy that holds the bytes first promotes a placeholder naming it (the bytes
/// are copied into it) and re-points the others to it: every other copy still reads right.
fn deleting_promotes_a_placeholder(store: &Store) {
    let (a, b, c) = (repo("ph-del-a"), repo("ph-del-b"), repo("ph-del-c"));
    let layer = pattern(8 * 1024, 6);
    let digest = push(store, &a, &layer);
    push(store, &b, &layer);
    push(store, &c, &layer);
    store.blob_delete(&a, &digest).unwrap();
    let holders: Vec<Option<StoragePath>> = [&b, &c]
        .iter()
        .map(|r| placeholder_of(store, r, &digest))
        .collect();
    assert_eq!(
        holders.iter().filter(|h| h.is_none()).count(),
        1,
        "{holders:?}"
    );
    for repo in [&b, &c] {
        pulls_right(store, repo, &digest, &layer);
    }
    // Deleting a placeholder deletes only it; deleting the last copy leaves none.
    for repo in [&b, &c] {
        store.blob_delete(repo, &digest).unwrap();
    }
    assert!(matches!(
        store.blob_size(&b, &digest),
        Err(StoreError::BlobUnknown(_))
    ));
}

/// The collector deleting an unreferenced copy that holds the bytes promotes a placeholder
/// another repository's image references.
fn collecting_promotes_a_placeholder(store: &Store) {
    let (a, b) = (repo("ph-gc-a"), repo("ph-gc-b"));
    let layer = pattern(4 * 1024, 7);
    let digest = push(store, &a, &layer);
    let manifest = image(store, &b, &[&layer], "placeholder gc");
    put_manifest(store, &b, "kept", &manifest);
    assert!(placeholder_of(store, &b, &digest).is_some());
    let collected = collect_now(store, &a);
    assert!(collected.blobs.iter().any(|(d, _)| d == &digest));
    assert_eq!(placeholder_of(store, &b, &digest), None, "promoted");
    pulls_right(store, &b, &digest, &layer);
}

/// A store whose cache was lost rebuilds it from the placeholders alone in its start-up pass:
/// every copy is recorded, the holder as the original, so deleting the holder still promotes.
fn the_pass_rebuilds_a_lost_cache(store: &Store) {
    let (a, b) = (repo("ph-a"), repo("ph-b"));
    let layer = pattern(64 * 1024 + 3, 5);
    let digest = Digest::sha256_of(&layer);
    let dedupe = store.dedupe.as_ref().unwrap();
    assert!(
        dedupe.index().paths(&digest).unwrap().is_empty(),
        "a new cache"
    );
    // Until the pass has recorded the placeholders, the copy they name is not deleted.
    assert!(matches!(
        store.blob_delete(&a, &digest),
        Err(StoreError::DedupeUnavailable(_))
    ));
    pulls_right(store, &b, &digest, &layer);
    let report = dedupe_pass::run(store).unwrap();
    assert_eq!(
        report.linked, 0,
        "nothing to make a placeholder: {report:?}"
    );
    let recorded = dedupe.index().paths(&digest).unwrap();
    for r in [&a, &b, &repo("ph-c")] {
        assert!(recorded.contains(&layout::blob(r, &digest).unwrap()), "{r}");
    }
    let holder = layout::blob(&a, &digest).unwrap();
    assert_eq!(dedupe.index().original(&digest).unwrap(), Some(holder));
    // Rebuilt records are what a delete relies on to keep the others readable.
    let moved = repo("ph-moved");
    let other = pattern(3000, 8);
    let other_digest = push(store, &moved, &other);
    store.blob_mount(&a, &other_digest, Some(&moved)).unwrap();
    store.blob_delete(&moved, &other_digest).unwrap();
    pulls_right(store, &a, &other_digest, &other);
}

/// Scrub hashes the holder, not the zero-byte placeholder: an image pushed into two
/// repositories is fine in both; once the holder is gone behind the store's back, the
/// placeholder's repository is reported affected too.
fn scrub_checks_holders(store: &Store) {
    let (a, b) = (repo("ph-scrub-a"), repo("ph-scrub-b"));
    let layer = pattern(5000, 9);
    let manifest = image(store, &a, &[&layer], "placeholder scrub");
    put_manifest(store, &a, "v1", &manifest);
    image(store, &b, &[&layer], "placeholder scrub");
    put_manifest(store, &b, "v1", &manifest);
    let digest = Digest::sha256_of(&layer);
    assert!(placeholder_of(store, &b, &digest).is_some());
    let affected = || -> Vec<(String, Vec<Digest>)> {
        let report = store.scrub("storage", Duration::from_secs(3600)).unwrap();
        report
            .repositories
            .into_iter()
            .filter(|r| r.repository.starts_with("suite/ph-scrub-") && r.status != "ok")
            .map(|r| {
                let blobs = r.images.into_iter().flat_map(|i| i.affected);
                (r.repository, blobs.map(|b| b.digest).collect())
            })
            .collect()
    };
    assert!(affected().is_empty(), "{:?}", affected());
    store
        .driver
        .delete(&layout::blob(&a, &digest).unwrap())
        .unwrap();
    // Served as unknown, never as an empty blob (zot #4427).
    assert!(matches!(
        store.blob_size(&b, &digest),
        Err(StoreError::BlobUnknown(_))
    ));
    assert!(matches!(
        store.blob_read(&b, &digest, None),
        Err(StoreError::BlobUnknown(_))
    ));
    assert_eq!(
        affected(),
        [
            (a.to_string(), vec![digest.clone()]),
            (b.to_string(), vec![digest])
        ]
    );
}

/// Started with `dedupe: false`, a store restores every placeholder into a full copy of the
/// bytes it names, as zot does; placeholders whose holder is gone are left for scrub.
fn turning_dedupe_off_restores_copies(store: &Store) {
    assert!(!store.dedupes());
    let (b, c) = (repo("ph-b"), repo("ph-c"));
    let layer = pattern(64 * 1024 + 3, 5);
    let digest = Digest::sha256_of(&layer);
    assert!(placeholder_of(store, &c, &digest).is_some());
    // Until the restore is done, a copy holding bytes is not deleted (placeholders may name it).
    store
        .restoring
        .store(true, std::sync::atomic::Ordering::Release);
    let holder = store
        .driver
        .placeholder_holder(&layout::blob(&c, &digest).unwrap())
        .unwrap()
        .expect("c's copy is a placeholder");
    let holding: RepoName = holder
        .as_str()
        .rsplitn(4, '/')
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    assert!(matches!(
        store.blob_delete(&holding, &digest),
        Err(StoreError::DedupeUnavailable(_))
    ));
    let report = dedupe_pass::restore(store).unwrap();
    assert!(report.restored >= 2, "{report:?}");
    assert_eq!(report.dangling, 1, "the scrub check's: {report:?}");
    for repo in [&b, &c] {
        assert_eq!(placeholder_of(store, repo, &digest), None);
        pulls_right(store, repo, &digest, &layer);
    }
    assert_eq!(
        dedupe_pass::restore(store).unwrap().restored,
        0,
        "done once"
    );
}

/// A repository the collector leaves with nothing (an orphan blob, an idle upload) is
/// removed, whatever directories its backend has or lacks.
fn collecting_a_repository_away(store: &Store) {
    let repo = repo("gc-emptied");
    push(store, &repo, b"nothing references this");
    store.upload_start(&repo).unwrap();
    let collected = collect_now(store, &repo);
    assert_eq!((collected.blobs.len(), collected.uploads.len()), (1, 1));
    assert!(collected.repository_removed);
    assert!(!store.repo_exists(&repo).unwrap());
    assert!(!store.catalog().unwrap().contains(&repo.to_string()));
}

fn listing_the_catalog(store: &Store) {
    let catalog = store.catalog().unwrap();
    for name in ["chunked", "gc", "manifests", "mount-to", "resumed", "whole"] {
        assert!(
            catalog.contains(&repo(name).to_string()),
            "{name}: {catalog:?}"
        );
    }
    let mut sorted = catalog.clone();
    sorted.sort();
    assert_eq!(catalog, sorted);
}

/// Issue 12: two stores over one storage with nothing shared in-process (their own drivers,
/// locks, queues and index caches, as two instances would have), 8 threads each pushing
/// distinct tags into one repository at once: every acknowledged tag is listed at the end,
/// since every index change is a compare-and-swap on the driver's version.
fn two_stores_lose_no_tag(first: &Store, second: &Store) {
    const THREADS: usize = 8;
    const TAGS: usize = 25;
    let repo = repo("two-stores");
    let config = push(first, &repo, b"{}");
    let layer = b"shared layer";
    let layers = [(push(first, &repo, layer), layer.len())];
    let manifests: Vec<Vec<u8>> = (0..2 * THREADS * TAGS)
        .map(|n| image_json(&config, &layers, &format!("t{n}")))
        .collect();
    std::thread::scope(|s| {
        for (i, store) in [first, second].into_iter().enumerate() {
            for t in 0..THREADS {
                let (repo, manifests) = (&repo, &manifests);
                s.spawn(move || {
                    for k in 0..TAGS {
                        let n = (i * THREADS + t) * TAGS + k;
                        put_manifest(store, repo, &format!("t{n}"), &manifests[n]);
                    }
                });
            }
        }
    });
    // `second` may serve what it last read for the driver's interval (DESIGN decision 11).
    std::thread::sleep(second.driver.revalidate_after());
    assert_eq!(second.tags(&repo).unwrap().len(), 2 * THREADS * TAGS);
}

/// A tag moved, and a manifest deleted, through one store are seen by another that read
/// them before, once the driver's revalidation interval has passed (at once where it is
/// zero): what a pull serves is never older than that.
fn another_store_sees_a_moved_tag(first: &Store, second: &Store) {
    let repo = repo("moved-tag");
    let config = push(first, &repo, b"{}");
    let old = image_json(&config, &[], "old");
    let new = image_json(&config, &[], "new");
    let old_digest = put_manifest(first, &repo, "latest", &old);
    assert!(manifest_bytes(second, &repo, "latest").unwrap() == old);
    assert!(manifest_bytes(second, &repo, &old_digest.to_string()).unwrap() == old);
    assert_eq!(second.tags(&repo).unwrap(), ["latest"]);
    put_manifest(first, &repo, "latest", &new);
    put_manifest(first, &repo, "next", &new);
    first
        .manifest_delete(&repo, &Reference::Digest(old_digest.clone()))
        .unwrap();
    std::thread::sleep(second.driver.revalidate_after());
    assert!(manifest_bytes(second, &repo, "latest").unwrap() == new);
    assert_eq!(second.tags(&repo).unwrap(), ["latest", "next"]);
    assert!(matches!(
        manifest_bytes(second, &repo, &old_digest.to_string()),
        Err(StoreError::ManifestUnknown(_))
    ));
}

/// A blob deleted through one store stops being served by another that pulled it (and, on
/// a driver where reads are round trips, keeps its bytes in memory) once the driver's
/// revalidation interval has passed (at once where it is zero); ranges of it are served
/// from what the other store read until then.
fn another_store_sees_a_deleted_blob(first: &Store, second: &Store) {
    let repo = repo("deleted-blob");
    let bytes = b"pulled, then deleted elsewhere";
    let digest = push(first, &repo, bytes);
    assert_eq!(pull(second, &repo, &digest, None), bytes);
    let range = ByteRange { start: 8, end: 12 };
    assert_eq!(pull(second, &repo, &digest, Some(range)), &bytes[8..=12]);
    assert_eq!(
        second.blob_size(&repo, &digest).unwrap(),
        bytes.len() as u64
    );
    first.blob_delete(&repo, &digest).unwrap();
    std::thread::sleep(second.driver.revalidate_after());
    assert!(matches!(
        second.blob_read(&repo, &digest, None),
        Err(StoreError::BlobUnknown(_))
    ));
    assert!(matches!(
        second.blob_size(&repo, &digest),
        Err(StoreError::BlobUnknown(_))
    ));
}

/// Issue 14: instances (two stores sharing only the cache and the storage) pushing one new
/// blob into their own repositories at once store its bytes once, in rounds of four pushes
/// released together: `add` makes one copy the holder, and a push that finds it not landed
/// yet lands its own bytes and then shares the holder's (a link, or a placeholder).
fn instances_store_a_blob_once(first: &Store, second: &Store) {
    for round in 0..12 {
        let layer = pattern(16 * 1024 + round, 40 + round as u8);
        let repos: Vec<RepoName> = (0..4)
            .map(|i| repo(&format!("instances-{round}-{i}")))
            .collect();
        let start = std::sync::Barrier::new(repos.len());
        std::thread::scope(|s| {
            for (i, r) in repos.iter().enumerate() {
                let (store, layer, start) = ([first, second][i % 2], &layer, &start);
                s.spawn(move || {
                    start.wait();
                    push(store, r, layer)
                });
            }
        });
        let digest = Digest::sha256_of(&layer);
        let mut keys: Vec<_> = repos
            .iter()
            .map(|r| held(first, r, &digest).meta.bytes_key())
            .collect();
        keys.sort();
        keys.dedup();
        assert_eq!(
            keys.len() == 1,
            first.dedupes(),
            "round {round}: the bytes are stored {} times",
            keys.len()
        );
        for (r, store) in repos.iter().zip([first, second].iter().cycle()) {
            assert!(pull(store, r, &digest, None) == layer, "round {round}: {r}");
        }
    }
}

/// Issue 14: one instance collects a repository while another pushes tagged images into it:
/// every tag the pusher was answered for stays, with its manifest and layers, and what was
/// garbage before goes. The collector sees the pusher's index changes only through the
/// storage (index.json compare-and-swap), and a layer younger than `gcDelay` is never taken.
fn collecting_while_another_instance_pushes(collector: &Store, pusher: &Store) {
    let repo = repo("gc-while-pushing");
    // Tagged, so the repository is never empty, and never removed under the pusher.
    let kept = image(collector, &repo, &[b"a kept layer"], "kept");
    put_manifest(collector, &repo, "kept", &kept);
    let garbage = push(collector, &repo, b"an orphan layer");
    let untagged = image(collector, &repo, &[b"an untagged image's layer"], "old");
    put_manifest(
        collector,
        &repo,
        &Digest::sha256_of(&untagged).to_string(),
        &untagged,
    );
    let mut settings = gc_settings(serde_json::json!([]));
    settings.delay = Duration::from_secs(2);
    settings.retention.delay = settings.delay;
    std::thread::sleep(settings.delay + Duration::from_millis(200));
    let collect_aged = || {
        let now = SystemTime::now();
        collector
            .collect(&repo, &settings, &TagTimes::default(), now, false)
            .unwrap()
    };
    let pushing = std::sync::atomic::AtomicBool::new(true);
    let pushed = std::thread::scope(|s| {
        let pushes = s.spawn(|| {
            let mut pushed = Vec::new();
            for n in 0..30 {
                let layer = format!("layer {n} pushed while collecting");
                let manifest = image(pusher, &repo, &[layer.as_bytes()], &format!("n{n}"));
                put_manifest(pusher, &repo, &format!("t{n}"), &manifest);
                pushed.push((format!("t{n}"), manifest, layer));
            }
            pushing.store(false, std::sync::atomic::Ordering::Release);
            pushed
        });
        while pushing.load(std::sync::atomic::Ordering::Acquire) {
            collect_aged();
        }
        pushes.join().unwrap()
    });
    collector
        .collect(
            &repo,
            &settings,
            &TagTimes::default(),
            SystemTime::now(),
            false,
        )
        .unwrap();
    for store in [collector, pusher] {
        let mut tags = store.tags(&repo).unwrap();
        tags.sort();
        let mut expected: Vec<String> = pushed.iter().map(|(t, _, _)| t.clone()).collect();
        expected.push("kept".into());
        expected.sort();
        assert_eq!(tags, expected, "no acknowledged tag is lost");
        for (tag, manifest, layer) in &pushed {
            assert!(
                manifest_bytes(store, &repo, tag).unwrap() == *manifest,
                "{tag}"
            );
            let layer_digest = Digest::sha256_of(layer.as_bytes());
            assert_eq!(pull(store, &repo, &layer_digest, None), layer.as_bytes());
        }
        assert!(matches!(
            store.blob_size(&repo, &garbage),
            Err(StoreError::BlobUnknown(_))
        ));
        assert!(matches!(
            manifest_bytes(store, &repo, &Digest::sha256_of(&untagged).to_string()),
            Err(StoreError::ManifestUnknown(_))
        ));
    }
}

/// The time-to-live of the suite's leases: short, so a hand-over is seen within a second.
const LEASE_TTL: Duration = Duration::from_millis(400);

/// DESIGN decision 11: of two instances, one sweeps at a time. The holder's lease is renewed
/// while its sweep runs past the time-to-live; the other's round is skipped meanwhile and
/// runs once it is released. A holder that stops renewing (killed) loses it after the
/// time-to-live, and the other's next round takes it.
fn sweeps_hand_over_their_lease(first: &Store, second: &Store, leases: &dyn Leases) {
    use super::collector::LEASE;
    let ran = first.leased(LEASE, || {
        assert!(second.leased(LEASE, || ()).is_none(), "first holds it");
        std::thread::sleep(LEASE_TTL * 3);
        assert!(
            second.leased(LEASE, || ()).is_none(),
            "renewed while the sweep runs"
        );
    });
    assert!(ran.is_some());
    assert_eq!(second.leased(LEASE, || "swept"), Some("swept"), "released");
    assert!(
        leases
            .acquire(LEASE, "a killed instance", LEASE_TTL)
            .unwrap()
    );
    assert!(second.leased(LEASE, || ()).is_none());
    std::thread::sleep(LEASE_TTL * 2);
    assert_eq!(
        second.leased(LEASE, || "taken over"),
        Some("taken over"),
        "the killed holder's lease expired"
    );
    // Other sweeps' leases are apart.
    first.leased(LEASE, || {
        assert!(second.leased(super::scrub::LEASE, || ()).is_some());
    });
}

/// A fresh local root: each driver opened is a separate `LocalDriver` over it, writing
/// uploads as berth does by default.
fn local(dir: &Path) -> Storage {
    let dir = dir.to_path_buf();
    Box::new(move || Arc::new(LocalDriver::new(&dir, false, WriterChoice::Auto).unwrap()))
}

/// A fresh memory store: each driver opened is another handle to the same objects.
fn memory(_: &Path) -> Storage {
    let driver = MemoryDriver::new();
    Box::new(move || Arc::new(driver.clone()))
}

/// A fresh bucket on moto (`scripts/s3-services.sh`): each driver opened is another client
/// of it.
fn s3(_: &Path) -> Storage {
    let config = super::driver::s3::tests::fresh_on_moto();
    Box::new(move || Arc::new(super::driver::s3::S3Driver::new(config.clone()).unwrap()))
}

/// A cache the suite's stores share, as instances do: its dedupe records and its leases.
type SharedCache = (DedupeCache, Arc<dyn Leases>);

fn no_cache(_: &Path) -> Option<SharedCache> {
    None
}

/// Shared by the one process's stores; a lost cache is a new directory.
fn lmdb(dir: &Path) -> Option<SharedCache> {
    let lmdb = Lmdb::open(dir, LmdbOptions::new(false)).unwrap();
    let cache = Arc::new(lmdb.namespace(&Namespace::new("storage")).unwrap());
    Some((DedupeCache::of(cache.clone()), cache))
}

/// A fresh key prefix on the single test Redis (`scripts/redis-services.sh`), shared by every
/// store of the test as instances share it; a lost cache is another prefix.
fn redis(_: &Path) -> Option<SharedCache> {
    let redis = crate::cache::redis::tests::fresh_single();
    let cache = Arc::new(redis.namespace(&Namespace::new("storage")));
    Some((DedupeCache::of(cache.clone()), cache))
}

/// A table of its own on moto; stores opened over it share it, as instances would, and a
/// lost cache is another fresh table.
/// A fresh table on the DynamoDB moto (`scripts/s3-services.sh`), shared by every store of
/// the test as instances share it; a lost cache is another table.
fn dynamodb(_: &Path) -> Option<SharedCache> {
    let table = crate::cache::dynamodb::tests::fresh_on_moto();
    let cache = Arc::new(table.namespace(&Namespace::new("storage")));
    Some((DedupeCache::of(cache.clone()), cache))
}

fn hard_link() -> Strategy {
    Strategy::HardLink
}

fn placeholder() -> Strategy {
    Strategy::Placeholder
}

/// What the suite's stores keep of blobs in memory: every store runs every check with its
/// blob cache on (it serves nothing where the driver has local files, which are sent as
/// they are), so a delete, collection or placeholder read it gets wrong shows.
const BLOB_CACHE: usize = 16 << 20;

/// Runs the suite over a new storage and cache made by the factories, deduplicating by
/// `strategy` when there is a cache. The cache is opened once and shared by every store
/// (LMDB opens a directory once per process); a lost cache is a new one in another directory.
fn run_one(
    storage: fn(&Path) -> Storage,
    strategy: fn() -> Strategy,
    cache: fn(&Path) -> Option<SharedCache>,
) {
    let dir = tempfile::tempdir().unwrap();
    let driver = storage(&dir.path().join("storage"));
    let strategy = strategy();
    assert!(
        strategy.supported_by(driver().capabilities()),
        "the driver can dedupe by {strategy:?} (placeholders need user xattrs locally)"
    );
    let opened = cache(&dir.path().join("cache"));
    let shared = opened.as_ref().map(|(dedupe, _)| dedupe.clone());
    // As every start does: the start-up pass runs on the store before it serves (with
    // placeholders, copies holding bytes are not deleted until a pass has completed). Each
    // store is an instance of its own, taking its sweeps' leases in the shared cache.
    let open = || {
        let mut store = Store::with_dedupe_strategy(driver(), shared.clone(), Some(strategy))
            .with_blob_cache(BLOB_CACHE);
        if let Some((_, leases)) = &opened {
            store = store.with_leases(leases.clone(), LEASE_TTL);
        }
        if store.dedupes() {
            dedupe_pass::run(&store).unwrap();
        }
        store
    };
    let caches = std::sync::atomic::AtomicUsize::new(0);
    let with_new_cache = || {
        let n = caches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let fresh = cache(&dir.path().join(format!("cache-{n}"))).map(|(dedupe, _)| dedupe);
        Store::with_dedupe_strategy(driver(), fresh, Some(strategy))
    };
    let without_dedupe =
        || Store::with_dedupe_strategy(driver(), None, None).with_blob_cache(BLOB_CACHE);
    let store = open();
    assert_eq!(
        store.dedupes(),
        shared.is_some(),
        "dedupe is on with a cache"
    );
    if store.dedupes() {
        assert_eq!(store.dedupe_strategy(), Some(strategy));
    }
    run(&Stores {
        open: &open,
        with_new_cache: &with_new_cache,
        without_dedupe: &without_dedupe,
        leases: opened.as_ref().map(|(_, leases)| &**leases),
    });
}

/// The dedupe index of a real cache, counting the calls made to it.
struct Counted {
    index: Arc<dyn DedupeIndex>,
    calls: std::sync::atomic::AtomicUsize,
}

impl Counted {
    fn count(&self) {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn take(&self) -> usize {
        self.calls.swap(0, std::sync::atomic::Ordering::Relaxed)
    }
}

impl DedupeIndex for Counted {
    fn put(&self, digest: &Digest, path: &StoragePath) -> Result<(), CacheError> {
        self.count();
        self.index.put(digest, path)
    }

    fn add(&self, digest: &Digest, path: &StoragePath) -> Result<Option<StoragePath>, CacheError> {
        self.count();
        self.index.add(digest, path)
    }

    fn paths(&self, digest: &Digest) -> Result<Vec<StoragePath>, CacheError> {
        self.count();
        self.index.paths(digest)
    }

    fn original(&self, digest: &Digest) -> Result<Option<StoragePath>, CacheError> {
        self.count();
        self.index.original(digest)
    }

    fn put_original(&self, digest: &Digest, path: &StoragePath) -> Result<(), CacheError> {
        self.count();
        self.index.put_original(digest, path)
    }

    fn remove(&self, digest: &Digest, path: &StoragePath) -> Result<(), CacheError> {
        self.count();
        self.index.remove(digest, path)
    }
}

/// Issue 14: a push costs one call to the dedupe cache for a blob the store holds already
/// (`add` records the copy and names the original to share) and at most two for a new one,
/// by either strategy: on a remote cache each call is a round trip.
#[test]
fn a_push_makes_one_cache_call() {
    let local: fn(&Path) -> Storage = local;
    for (storage, strategy) in [
        (local, Strategy::HardLink),
        (local, Strategy::Placeholder),
        (memory, Strategy::Placeholder),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (lmdb, _) = lmdb(&dir.path().join("cache")).unwrap();
        let counted = Arc::new(Counted {
            index: lmdb.index,
            calls: Default::default(),
        });
        let cache = DedupeCache {
            index: counted.clone(),
            markers: lmdb.markers,
        };
        let driver = storage(&dir.path().join("storage"))();
        let store = Store::with_dedupe_strategy(driver, Some(cache), Some(strategy));
        let layer = pattern(8 * 1024, 3);
        let (a, b) = (repo("counted-a"), repo("counted-b"));
        push(&store, &a, &layer);
        let new = counted.take();
        assert!(
            (1..=2).contains(&new),
            "{strategy:?}: {new} calls for a new blob"
        );
        push(&store, &b, &layer);
        assert_eq!(counted.take(), 1, "{strategy:?}: a blob held elsewhere");
        push(&store, &b, &layer);
        assert_eq!(counted.take(), 1, "{strategy:?}: a blob held there already");
        let key = |r: &RepoName| held(&store, r, &Digest::sha256_of(&layer)).meta.bytes_key();
        assert_eq!(key(&a), key(&b), "{strategy:?}: shared");
    }
}

/// One test per driver x dedupe strategy x cache, named `<driver>::<strategy>::<cache>`.
macro_rules! matrix {
    (drivers { $($driver:ident { $($strategy:ident),* }),* } caches $caches:tt) => {
        $( mod $driver { $( matrix!(@strategy $driver $strategy $caches); )* } )*
    };
    (@strategy $driver:ident $strategy:ident { $($cache:ident),* }) => {
        mod $strategy {
            $(
                #[test]
                fn $cache() {
                    super::super::run_one(
                        super::super::$driver,
                        super::super::$strategy,
                        super::super::$cache,
                    );
                }
            )*
        }
    };
}

matrix! {
    drivers {
        local { hard_link, placeholder },
        memory { placeholder },
        s3 { placeholder }
    }
    caches { no_cache, lmdb, redis, dynamodb }
}
