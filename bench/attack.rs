//! `attack`: what hostile manifest graphs and a crowd of referrers cost a running berth
//! (issue 10, items 6 and 7), with the sizes the hostile testing used. Each scenario starts
//! the berth binary given (so an older build can be measured beside the current one) on a
//! fresh root and prints one JSON line:
//! - `head-bomb`: an index listing Y `fan` times, Y listing Z `fan` times, Z listing image M
//!   `fan` times (Y and Z indexes); then `heads` HEADs of unknown digests at once, with the
//!   server's CPU seconds per HEAD and the slowest `GET /v2/` answered meanwhile;
//! - `put-bomb`: the PUT of an index listing X `wide` times, X listing M `wide` times;
//! - `scrub-dag`: `berth scrub` over a DAG of `dag` tiny indexes each listing the previous
//!   twice (2^dag paths);
//! - `gc-chain`: `berth gc` over `chain` untagged nested indexes laid on disk, the top one no
//!   longer tagged, all older than gcDelay (the whole chain is garbage);
//! - `referrers`: GET referrers of a subject with `referrers` referrers laid on disk, 15
//!   requests one after another, then 16 at once; response bytes, seconds, server heap RSS;
//!
//! Run: `cargo build --release && cargo bench --bench attack -- [--berth target/release/berth]
//! [--only head-bomb,...] [--timeout 120]`.

#[path = "http.rs"]
mod http;
#[path = "procs.rs"]
mod procs;

use berth::digest::Digest;
use clap::Parser;
use procs::Process;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

#[derive(Parser)]
struct Args {
    /// The berth binary to measure.
    #[arg(long, default_value = "target/release/berth")]
    berth: PathBuf,
    /// Scenarios to run (comma-separated); all when empty.
    #[arg(long, default_value = "")]
    only: String,
    /// Seconds after which a scenario is stopped and reported as not finished.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    #[arg(long, default_value_t = 300)]
    fan: usize,
    #[arg(long, default_value_t = 16)]
    heads: usize,
    #[arg(long, default_value_t = 1000)]
    wide: usize,
    #[arg(long, default_value_t = 30)]
    dag: usize,
    #[arg(long, default_value_t = 10_000)]
    chain: usize,
    #[arg(long, default_value_t = 50_000)]
    referrers: usize,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// berth's config for a scenario: the store is `<root>/store`; with `background` off, no
/// start-up gc sweep or dedupe pass runs beside what is measured (their memory is not the
/// scenario's).
fn config(root: &Path, background: bool) -> PathBuf {
    let config = root.join("config.json");
    let body = json!({
        "distSpecVersion": "1.1.1",
        "storage": { "rootDirectory": root.join("store"), "gc": background,
                     "dedupe": background, "gcDelay": "1h", "gcInterval": "24h" },
        "http": { "address": "127.0.0.1", "port": "0", "readTimeout": "600s",
                  "writeTimeout": "600s" },
        "log": { "level": "info" }
    });
    std::fs::write(&config, body.to_string()).expect("write config");
    config
}

fn start(berth: &Path, root: &Path, background: bool) -> Process {
    Process::berth(berth, &config(root, background))
}

fn digest_of(bytes: &[u8]) -> String {
    Digest::sha256_of(bytes).to_string()
}

fn descriptor(media_type: &str, bytes: &[u8]) -> Value {
    json!({ "mediaType": media_type, "digest": digest_of(bytes), "size": bytes.len() })
}

fn index_over(child: &Value, times: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": vec![child; times]
    }))
    .expect("json")
}

/// An image manifest over one config and one layer, with `extra` top-level fields; returns
/// (config, layer, manifest).
fn image(seed: u64, extra: Value) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let config = format!("{{\"seed\":{seed}}}").into_bytes();
    let layer = format!("layer {seed}").into_bytes();
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", &layer)],
    });
    if let (Some(m), Some(extra)) = (manifest.as_object_mut(), extra.as_object()) {
        m.extend(extra.clone());
    }
    (config, layer, serde_json::to_vec(&manifest).expect("json"))
}

fn send(c: &mut http::Connection, method: &str, path: &str, ct: &str, body: &[u8]) -> u16 {
    c.send(method, path, &[("Content-Type", ct)], &[body], false)
        .map_or(0, |r| r.status)
}

fn push_blob(c: &mut http::Connection, repo: &str, bytes: &[u8]) {
    let path = format!("/v2/{repo}/blobs/uploads/?digest={}", digest_of(bytes));
    let status = send(c, "POST", &path, "application/octet-stream", bytes);
    assert_eq!(status, 201, "blob push");
}

fn put_manifest(c: &mut http::Connection, repo: &str, reference: &str, ct: &str, body: &[u8]) {
    let status = send(
        c,
        "PUT",
        &format!("/v2/{repo}/manifests/{reference}"),
        ct,
        body,
    );
    assert_eq!(status, 201, "manifest PUT {reference}");
}

/// Pushes image M into `repo` and returns its descriptor.
fn push_image(c: &mut http::Connection, repo: &str, seed: u64) -> Value {
    let (config, layer, manifest) = image(seed, json!({}));
    push_blob(c, repo, &config);
    push_blob(c, repo, &layer);
    put_manifest(c, repo, &digest_of(&manifest), OCI_MANIFEST, &manifest);
    descriptor(OCI_MANIFEST, &manifest)
}

/// Runs `work` on another thread; `None` when it does not finish within `timeout`.
fn within<T: Send + 'static>(
    timeout: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(work());
    });
    rx.recv_timeout(timeout).ok()
}

fn head_bomb(args: &Args) {
    let root = tempfile::tempdir().expect("tempdir");
    let server = start(&args.berth, root.path(), true);
    let mut c = http::Connection::new(&server.host);
    let m = push_image(&mut c, "bomb/head", 1);
    let z = index_over(&m, args.fan);
    put_manifest(&mut c, "bomb/head", &digest_of(&z), OCI_INDEX, &z);
    let y = index_over(&descriptor(OCI_INDEX, &z), args.fan);
    put_manifest(&mut c, "bomb/head", &digest_of(&y), OCI_INDEX, &y);
    let top = index_over(&descriptor(OCI_INDEX, &y), args.fan);
    let started = Instant::now();
    let host = server.host.clone();
    let put = within(Duration::from_secs(args.timeout), move || {
        let mut c = http::Connection::new(&host);
        send(
            &mut c,
            "PUT",
            "/v2/bomb/head/manifests/top",
            OCI_INDEX,
            &top,
        )
    });
    let put_seconds = started.elapsed().as_secs_f64();
    let cpu_before = server.cpu_seconds();
    let started = Instant::now();
    let heads: Vec<_> = (0..args.heads)
        .map(|i| {
            let host = server.host.clone();
            std::thread::spawn(move || {
                let mut c = http::Connection::new(&host);
                let unknown = digest_of(format!("nobody {i}").as_bytes());
                let path = format!("/v2/bomb/head/manifests/{unknown}");
                c.send("HEAD", &path, &[], &[], false)
                    .map_or(0, |r| r.status)
            })
        })
        .collect();
    // The base route, answered while the HEADs run: the slowest of a few.
    let mut slowest_base = 0f64;
    let mut base = http::Connection::new(&server.host);
    while !heads.iter().all(|h| h.is_finished()) && started.elapsed().as_secs() < args.timeout {
        let t = Instant::now();
        let _ = base.send("GET", "/v2/", &[], &[], false);
        slowest_base = slowest_base.max(t.elapsed().as_secs_f64());
        std::thread::sleep(Duration::from_millis(50));
    }
    let finished = heads.iter().all(|h| h.is_finished());
    let statuses: Vec<u16> = if finished {
        heads.into_iter().map(|h| h.join().unwrap_or(0)).collect()
    } else {
        Vec::new()
    };
    println!(
        "{}",
        json!({
            "scenario": "head-bomb", "fan": args.fan, "put_status": put, "put_seconds": put_seconds,
            "heads": args.heads, "heads_finished": finished, "head_statuses_404": statuses.iter().all(|s| *s == 404),
            "heads_seconds": started.elapsed().as_secs_f64(),
            "cpu_seconds_per_head": (server.cpu_seconds() - cpu_before) / args.heads as f64,
            "slowest_base_get_seconds": slowest_base,
        })
    );
}

fn put_bomb(args: &Args) {
    let root = tempfile::tempdir().expect("tempdir");
    let server = start(&args.berth, root.path(), true);
    let mut c = http::Connection::new(&server.host);
    let m = push_image(&mut c, "bomb/put", 2);
    let x = index_over(&m, args.wide);
    put_manifest(&mut c, "bomb/put", &digest_of(&x), OCI_INDEX, &x);
    let top = index_over(&descriptor(OCI_INDEX, &x), args.wide);
    let host = server.host.clone();
    let started = Instant::now();
    let status = within(Duration::from_secs(args.timeout), move || {
        let mut c = http::Connection::new(&host);
        send(&mut c, "PUT", "/v2/bomb/put/manifests/top", OCI_INDEX, &top)
    });
    println!(
        "{}",
        json!({ "scenario": "put-bomb", "wide": args.wide, "status": status,
                "seconds": started.elapsed().as_secs_f64() })
    );
}

/// Runs an offline `berth <command> CONFIG` with the scenario's timeout; (seconds, exit code or
/// `None` when stopped).
fn offline(args: &Args, command: &str, config: &Path) -> (f64, Option<i32>) {
    let started = Instant::now();
    let mut child = Command::new(&args.berth)
        .arg(command)
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run berth");
    let deadline = started + Duration::from_secs(args.timeout);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return (started.elapsed().as_secs_f64(), status.code());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return (started.elapsed().as_secs_f64(), None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn scrub_dag(args: &Args) {
    // Laid on disk, as a layout made by another tool: berth refuses such nesting at PUT.
    let root = tempfile::tempdir().expect("tempdir");
    let config = config(root.path(), true);
    let dir = root.path().join("store/bomb/dag");
    std::fs::create_dir_all(dir.join("blobs/sha256")).expect("dirs");
    let (config_blob, layer, manifest) = image(3, json!({}));
    for blob in [&config_blob, &layer, &manifest] {
        lay_blob(&dir, blob, Duration::ZERO);
    }
    let mut below = descriptor(OCI_MANIFEST, &manifest);
    for _ in 0..args.dag {
        let index = index_over(&below, 2);
        lay_blob(&dir, &index, Duration::ZERO);
        below = descriptor(OCI_INDEX, &index);
    }
    below["annotations"] = json!({ "org.opencontainers.image.ref.name": "top" });
    lay_repo(&dir, &[below]);
    let (seconds, code) = offline(args, "scrub", &config);
    println!(
        "{}",
        json!({ "scenario": "scrub-dag", "indexes": args.dag, "seconds": seconds,
                "finished": code.is_some(), "exit": code })
    );
}

/// Writes `bytes` as a blob of the repository at `dir`, its mtime `age` in the past.
fn lay_blob(dir: &Path, bytes: &[u8], age: Duration) -> String {
    let digest = digest_of(bytes);
    let path = dir.join("blobs/sha256").join(&digest["sha256:".len()..]);
    std::fs::write(&path, bytes).expect("write blob");
    let file = std::fs::File::options()
        .write(true)
        .open(&path)
        .expect("open");
    file.set_modified(SystemTime::now() - age).expect("mtime");
    digest
}

fn lay_repo(dir: &Path, listed: &[Value]) {
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("layout");
    let index = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": listed });
    std::fs::write(dir.join("index.json"), index.to_string()).expect("index");
}

fn gc_chain(args: &Args) {
    let root = tempfile::tempdir().expect("tempdir");
    let config = config(root.path(), true);
    let dir = root.path().join("store/bomb/chain");
    std::fs::create_dir_all(dir.join("blobs/sha256")).expect("dirs");
    let old = Duration::from_secs(2 * 3600);
    let (config_blob, layer, manifest) = image(4, json!({}));
    lay_blob(&dir, &config_blob, old);
    lay_blob(&dir, &layer, old);
    lay_blob(&dir, &manifest, old);
    let mut below = descriptor(OCI_MANIFEST, &manifest);
    let mut listed = vec![below.clone()];
    for _ in 0..args.chain {
        let index = index_over(&below, 1);
        lay_blob(&dir, &index, old);
        below = descriptor(OCI_INDEX, &index);
        listed.push(below.clone());
    }
    lay_repo(&dir, &listed);
    let (seconds, code) = offline(args, "gc", &config);
    let left = std::fs::read_dir(dir.join("blobs/sha256")).map_or(0, |d| d.count());
    println!(
        "{}",
        json!({ "scenario": "gc-chain", "indexes": args.chain, "seconds": seconds,
                "finished": code.is_some(), "exit": code, "blobs_left": left })
    );
}

fn referrers(args: &Args) {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("store/many/referrers");
    std::fs::create_dir_all(dir.join("blobs/sha256")).expect("dirs");
    let fresh = Duration::ZERO;
    let (config, layer, subject) = image(5, json!({}));
    lay_blob(&dir, &config, fresh);
    lay_blob(&dir, &layer, fresh);
    let subject_digest = lay_blob(&dir, &subject, fresh);
    let mut listed = vec![descriptor(OCI_MANIFEST, &subject)];
    let subject_descriptor = descriptor(OCI_MANIFEST, &subject);
    let empty = b"{}";
    lay_blob(&dir, empty, fresh);
    for i in 0..args.referrers {
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.signature",
            "config": descriptor("application/vnd.oci.empty.v1+json", empty),
            "layers": [descriptor("application/vnd.oci.empty.v1+json", empty)],
            "subject": subject_descriptor,
            "annotations": { "org.example.n": i.to_string() },
        }))
        .expect("json");
        lay_blob(&dir, &manifest, fresh);
        listed.push(descriptor(OCI_MANIFEST, &manifest));
    }
    lay_repo(&dir, &listed);
    let server = start(&args.berth, root.path(), false);
    let path = format!("/v2/many/referrers/referrers/{subject_digest}");
    let rss_start = server.rss_mib();
    let mut c = http::Connection::new(&server.host);
    // The index alone (every request of the repository parses it once per version).
    let tags = c.send("GET", "/v2/many/referrers/tags/list", &[], &[], false);
    assert_eq!(tags.map_or(0, |r| r.status), 200);
    let rss_index = server.rss_mib();
    let started = Instant::now();
    let mut bytes = 0;
    let mut first = 0.0;
    for i in 0..15 {
        let t = Instant::now();
        let r = c
            .send("GET", &path, &[], &[], false)
            .expect("GET referrers");
        assert_eq!(r.status, 200);
        bytes = r.body_len;
        if i == 0 {
            first = t.elapsed().as_secs_f64();
        }
    }
    let sequential = started.elapsed().as_secs_f64();
    let rss_sequential = server.rss_mib();
    let started = Instant::now();
    let concurrent: Vec<_> = (0..16)
        .map(|_| {
            let (host, path) = (server.host.clone(), path.clone());
            std::thread::spawn(move || {
                let mut c = http::Connection::new(&host);
                c.send("GET", &path, &[], &[], false)
                    .map_or(0, |r| r.status)
            })
        })
        .collect();
    let ok = concurrent.into_iter().all(|h| h.join().unwrap_or(0) == 200);
    println!(
        "{}",
        json!({ "scenario": "referrers", "referrers": args.referrers, "response_bytes": bytes,
                "first_seconds": first, "sequential_15_seconds": sequential,
                "concurrent_16_seconds": started.elapsed().as_secs_f64(), "concurrent_ok": ok,
                "rss_mib_start": rss_start, "rss_mib_after_index": rss_index,
                "rss_mib_after_15": rss_sequential,
                "rss_mib_after_16_at_once": server.rss_mib() })
    );
}

fn main() {
    let args = Args::parse();
    type Scenario = (&'static str, fn(&Args));
    let scenarios: [Scenario; 5] = [
        ("head-bomb", head_bomb),
        ("put-bomb", put_bomb),
        ("scrub-dag", scrub_dag),
        ("gc-chain", gc_chain),
        ("referrers", referrers),
    ];
    for (name, run) in scenarios {
        if args.only.is_empty() || args.only.split(',').any(|s| s == name) {
            run(&args);
        }
    }
}
