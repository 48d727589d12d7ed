//! Several real berth processes serving one store as one registry (issue 14, "How it is
//! shown" 2): three on one bucket on moto, two on one local root, each pair or trio sharing
//! one Redis (`scripts/redis-services.sh`'s single server) under a key prefix of its own.
//! Any instance serves any request: an upload moves between them, tags pushed through all
//! of them at once are all kept, a blob pushed through two at once is stored once, sweeps
//! take turns by lease, and a sweep on one loses nothing another acknowledged.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::util::http::Client;
use crate::util::oci::*;
use crate::util::server::{Berth, SWEEP_DONE, Settings, wait_until};
use crate::util::services::ServiceEnv;
use crate::util::store::{Backend, Store, blob};

/// How long the tests wait for what the instances see of each other's writes: the index
/// cache's `revalidate` window (S3's default) plus a loaded machine's margin.
const CONVERGE: Duration = Duration::from_secs(20);

/// A store served by `n` berth processes sharing one Redis under a prefix of their own.
struct Instances {
    store: Store,
    berths: Vec<Berth>,
}

impl Instances {
    /// How many instances each backend runs: three on S3, two on a local root.
    fn count(backend: Backend) -> usize {
        match backend {
            Backend::S3 => 3,
            Backend::Local => 2,
        }
    }

    fn start(backend: Backend, mut settings: Settings) -> Instances {
        let redis = ServiceEnv::load(".redis-services", "scripts/redis-services.sh")
            .require("BERTH_REDIS_URL");
        let prefix = format!("berth-it-{}-{}", std::process::id(), uuid_like());
        settings.storage.insert("dedupe".into(), json!(true));
        settings.storage.insert("remoteCache".into(), json!(true));
        settings.storage.insert(
            "cacheDriver".into(),
            json!({ "name": "redis", "url": redis, "keyprefix": prefix }),
        );
        let store = Store::new(backend);
        let berths = (0..Instances::count(backend))
            .map(|_| store.start(settings.clone()))
            .collect();
        Instances { store, berths }
    }

    fn clients(&self) -> Vec<Client> {
        self.berths.iter().map(Berth::client).collect()
    }
}

/// A name no other test run uses.
fn uuid_like() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn upload_moves_between_instances(backend: Backend) {
    let instances = Instances::start(backend, Settings::default());
    let c = instances.clients();
    let last = c.len() - 1;
    let bytes = random_bytes(0x14_01, 300_000);
    let digest = sha256(&bytes);
    let chunks: Vec<&[u8]> = bytes.chunks(100_000).collect();

    let mut location = start_upload(&c[0], "moves");
    location = patch(&c[1], &location, 0, chunks[0]);
    location = patch(&c[last], &location, 100_000, chunks[1]);
    location = patch(&c[0], &location, 200_000, chunks[2]);
    assert_upload_size(&c[1], &location, bytes.len());
    finish_upload(&c[1], &location, &digest);
    assert_eq!(get_blob(&c[last], "moves", &digest), bytes);

    // A session another instance cancelled is gone for this one too, whether it had bytes
    // or was still empty when this one last saw it.
    for sent_before in [100_000usize, 0] {
        let mut location = start_upload(&c[0], "moves");
        if sent_before > 0 {
            location = patch(&c[0], &location, 0, &chunks[0][..sent_before]);
        } else {
            c[0].get(&location).expect(204);
        }
        c[1].delete(&location).expect(204);
        try_patch(&c[0], &location, sent_before, chunks[1])
            .expect("PATCH answered")
            .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    }
}

#[test]
fn an_upload_moves_between_instances_on_s3() {
    upload_moves_between_instances(Backend::S3);
}

#[test]
fn an_upload_moves_between_instances_on_local() {
    upload_moves_between_instances(Backend::Local);
}

/// The tags every instance lists of `repo`, polled until all hold `want` or `CONVERGE`
/// passes.
#[track_caller]
fn assert_every_instance_lists(clients: &[Client], repo: &str, want: &[String]) {
    let listed = |c: &Client| -> Vec<String> {
        let got = c.get(&format!("/v2/{repo}/tags/list?n=1000")).expect(200);
        let mut tags: Vec<String> = got.json()["tags"]
            .as_array()
            .map(|t| t.iter().map(|v| v.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        tags.sort();
        tags
    };
    let mut want = want.to_vec();
    want.sort();
    let all = wait_until(CONVERGE, || clients.iter().all(|c| listed(c) == want));
    for (i, c) in clients.iter().enumerate() {
        assert!(all, "instance {i} lists {:?}, not {want:?}", listed(c));
    }
}

fn concurrent_tags_are_all_kept(backend: Backend) {
    let instances = Instances::start(backend, Settings::default());
    let clients = instances.clients();
    let image = Image::oci(0x14_02, &[1000]);
    for blob in image.blobs() {
        push_blob(&clients[0], "tags", blob);
    }
    const PER_INSTANCE: usize = 20;
    let start = Arc::new(Barrier::new(clients.len()));
    std::thread::scope(|s| {
        for (i, c) in clients.iter().enumerate() {
            let (start, image) = (Arc::clone(&start), &image);
            s.spawn(move || {
                start.wait();
                for j in 0..PER_INSTANCE {
                    put_manifest(
                        c,
                        "tags",
                        &format!("t{i}-{j}"),
                        image.media_type,
                        &image.manifest,
                    );
                }
            });
        }
    });
    let want: Vec<String> = (0..clients.len())
        .flat_map(|i| (0..PER_INSTANCE).map(move |j| format!("t{i}-{j}")))
        .collect();
    assert_every_instance_lists(&clients, "tags", &want);
}

#[test]
fn tags_pushed_through_every_instance_at_once_are_all_kept_on_s3() {
    concurrent_tags_are_all_kept(Backend::S3);
}

#[test]
fn tags_pushed_through_every_instance_at_once_are_all_kept_on_local() {
    concurrent_tags_are_all_kept(Backend::Local);
}

fn racing_pushes_store_a_blob_once(backend: Backend) {
    let instances = Instances::start(backend, Settings::default());
    let clients = instances.clients();
    for (round, repos) in [["one", "two"], ["same", "same"]].iter().enumerate() {
        let bytes = random_bytes(0x14_03 + round as u64, 2 << 20);
        let digest = sha256(&bytes);
        let start = Arc::new(Barrier::new(2));
        std::thread::scope(|s| {
            for (c, repo) in clients.iter().zip(repos.iter()) {
                let (start, bytes, digest) = (Arc::clone(&start), &bytes, &digest);
                s.spawn(move || {
                    start.wait();
                    upload(c, repo, bytes, digest, Upload::Monolithic);
                });
            }
        });
        let mut paths: Vec<String> = repos.iter().map(|r| blob(r, &digest)).collect();
        paths.dedup();
        assert_eq!(
            instances.store.copies(&paths),
            1,
            "{digest} pushed through two instances into {repos:?} is stored more than once"
        );
        for (c, repo) in clients.iter().zip(repos.iter()) {
            assert_eq!(get_blob(c, repo, &digest), bytes);
        }
    }
}

#[test]
fn a_blob_pushed_through_two_instances_at_once_is_stored_once_on_s3() {
    racing_pushes_store_a_blob_once(Backend::S3);
}

#[test]
fn a_blob_pushed_through_two_instances_at_once_is_stored_once_on_local() {
    racing_pushes_store_a_blob_once(Backend::Local);
}

fn gc_settings() -> Settings {
    let mut settings = Settings::default();
    settings.storage.insert("gc".into(), json!(true));
    settings.storage.insert("gcDelay".into(), json!("2s"));
    settings.storage.insert("gcInterval".into(), json!("1s"));
    settings
}

fn gc_loses_nothing_acknowledged(backend: Backend) {
    let instances = Instances::start(backend, gc_settings());
    let clients = instances.clients();
    let pusher = &clients[0];
    let sweeps = || -> usize {
        instances
            .berths
            .iter()
            .map(|b| b.logs().matches(SWEEP_DONE).count())
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut pushed = Vec::new();
    let sweeps_before = sweeps();
    while Instant::now() < deadline {
        let n = pushed.len() as u64;
        let image = Image::oci(0x14_05 + n, &[500 + n as usize, 3000]);
        let repo = format!("pushed{}", n % 3);
        let tag = format!("v{n}");
        push_image(pusher, &repo, &tag, &image);
        pushed.push((repo, tag, image));
    }
    // Pulled back only after more sweeps ran than the delay lets spare anything pushed.
    assert!(
        sweeps() > sweeps_before,
        "no instance swept while the pushes went on"
    );
    let swept = sweeps();
    assert!(
        wait_until(CONVERGE, || sweeps() >= swept + 3),
        "the instances did not sweep again"
    );
    for c in &clients {
        for (repo, tag, image) in &pushed {
            assert_image(c, repo, tag, image);
        }
    }
}

#[test]
fn gc_on_one_instance_loses_nothing_pushed_through_another_on_s3() {
    gc_loses_nothing_acknowledged(Backend::S3);
}

#[test]
fn gc_on_one_instance_loses_nothing_pushed_through_another_on_local() {
    gc_loses_nothing_acknowledged(Backend::Local);
}
