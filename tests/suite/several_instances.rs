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
    /// The `keyprefix` of their shared cache.
    prefix: String,
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
            json!({ "name": "redis", "url": redis, "keyprefix": &prefix }),
        );
        let store = Store::new(backend);
        let berths = (0..Instances::count(backend))
            .map(|_| store.start(settings.clone()))
            .collect();
        Instances {
            store,
            prefix,
            berths,
        }
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

/// Asks the test Redis through `redis-cli` (which `scripts/redis-services.sh` installs).
fn redis_cli(url: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-u", url, "--raw"])
        .args(args)
        .output()
        .expect("run redis-cli (scripts/redis-services.sh installs it)");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// When each sweep in `log` ran: (start, end) in seconds since the epoch, from the line's
/// timestamp (its end) and its `elapsed_ms`.
fn sweeps_in(log: &str) -> Vec<(f64, f64)> {
    log.lines()
        .filter(|l| l.contains(SWEEP_DONE))
        .map(|l| {
            let end = timestamp(l.split_whitespace().next().expect("a timestamp"));
            let elapsed: f64 = l
                .split("elapsed_ms=")
                .nth(1)
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .expect("elapsed_ms in the sweep's line");
            (end - elapsed / 1000.0, end)
        })
        .collect()
}

/// `2026-11-27T22:35:52.908430Z` in seconds since the epoch.
fn timestamp(s: &str) -> f64 {
    let (date, time) = s.trim_end_matches('Z').split_once('T').expect("ISO 8601");
    let d: Vec<i64> = date.split('-').map(|v| v.parse().unwrap()).collect();
    let t: Vec<f64> = time.split(':').map(|v| v.parse().unwrap()).collect();
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    days as f64 * 86_400.0 + t[0] * 3600.0 + t[1] * 60.0 + t[2]
}

#[test]
fn sweeps_take_turns_and_a_killed_holders_lease_is_taken_over_after_its_ttl() {
    const TTL: Duration = Duration::from_secs(3);
    let mut settings = gc_settings();
    settings.storage.insert("leaseTtl".into(), json!("3s"));
    let mut instances = Instances::start(Backend::S3, settings);
    let url =
        ServiceEnv::load(".redis-services", "scripts/redis-services.sh").require("BERTH_REDIS_URL");
    let prefix = instances.prefix.clone();
    for n in 0..6u64 {
        push_image(
            &instances.berths[0].client(),
            &format!("r{n}"),
            "v",
            &Image::oci(0x14_04 + n, &[100]),
        );
    }
    let lease_key = || -> Option<String> {
        let keys = redis_cli(&url, &["KEYS", &format!("{prefix}:*lease:{{gc}}")]);
        keys.lines().next().map(str::to_string)
    };
    let holder = |key: &str| redis_cli(&url, &["GET", key]);
    let holds =
        |holder: &str, berth: &Berth| holder.split('/').nth(1) == Some(&berth.pid().to_string());

    // Killed while it holds the lease, as the key in Redis shows before and after the kill.
    let deadline = Instant::now() + CONVERGE;
    let (killed, killed_at) = loop {
        assert!(
            Instant::now() < deadline,
            "no instance was seen holding the gc lease"
        );
        std::thread::sleep(Duration::from_millis(5));
        let Some(key) = lease_key() else { continue };
        let now = holder(&key);
        let Some(i) = instances.berths.iter().position(|b| holds(&now, b)) else {
            continue;
        };
        instances.berths[i].kill9();
        let killed_at = Instant::now();
        if holder(&key) == now {
            break (i, killed_at);
        }
        // It released the lease between the look and the kill: try another holder.
        instances.berths.remove(i);
        assert!(
            !instances.berths.is_empty(),
            "every instance released before it was killed"
        );
    };
    let survivors: Vec<&Berth> = instances
        .berths
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != killed)
        .map(|(_, b)| b)
        .collect();
    let count = |b: &Berth| b.logs().matches(SWEEP_DONE).count();
    let before: usize = survivors.iter().map(|b| count(b)).sum();
    assert!(
        wait_until(CONVERGE, || survivors
            .iter()
            .map(|b| count(b))
            .sum::<usize>()
            > before),
        "no other instance swept after the holder was killed"
    );
    assert!(
        // Renewed every third of it, the lease outlives its holder by two thirds at least.
        killed_at.elapsed() >= TTL / 2,
        "another instance swept {:?} after the holder was killed, within its lease's time-to-live",
        killed_at.elapsed()
    );

    // Never two sweeps at once: the instances' sweeps, laid end to end, do not overlap.
    let mut sweeps: Vec<(f64, f64)> = instances
        .berths
        .iter()
        .flat_map(|b| sweeps_in(&b.logs()))
        .collect();
    sweeps.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(sweeps.len() >= 2, "too few sweeps to compare: {sweeps:?}");
    for pair in sweeps.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1 - 0.001,
            "two sweeps overlapped: {pair:?}"
        );
    }
}
