//! `tags`: what a manifest PUT costs against the number of tags already in the repository,
//! berth beside distribution in one run (issue 11, item 4). For each size, one repository
//! with that many tags (a distinct manifest per tag, over one shared config and layer) is laid
//! on disk in each server's own layout, the server is started on it, and `--puts` PUTs of new
//! manifests under new tags run at concurrency `--concurrency`. Prints one JSON line per
//! server and size (PUTs per second, mean milliseconds per PUT, server CPU milliseconds per
//! PUT, heap RSS before and after), then a table on stderr.
//!
//! Stores are laid under `--dir`, by default /dev/shm where it exists: removing 10^5 files
//! from an ext4 mounted with `discard` (this project's machines) takes many minutes.
//!
//! Run: `cargo build --release && cargo bench --bench tags -- [--berth target/release/berth]
//! [--tags 100,2000,20000,100000] [--puts 400] [--concurrency 8] [--only berth,distribution]`.

#[path = "http.rs"]
mod http;
#[path = "procs.rs"]
mod procs;

use berth::digest::Digest;
use clap::Parser;
use procs::Process;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const REPO: &str = "mirror/tags";

#[derive(Parser)]
struct Args {
    /// The berth binary to measure.
    #[arg(long, default_value = "target/release/berth")]
    berth: PathBuf,
    /// Tags already in the repository, one run per value (comma-separated).
    #[arg(long, default_value = "100,2000,20000,100000")]
    tags: String,
    /// Timed manifest PUTs per server and size.
    #[arg(long, default_value_t = 400)]
    puts: usize,
    /// PUTs in flight.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Servers to measure (comma-separated: berth, distribution).
    #[arg(long, default_value = "berth,distribution")]
    only: String,
    /// Where stores are laid (default: /dev/shm if present, else the temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The shared config and layer, and the manifest of tag number `n` over them.
struct Content {
    config: Vec<u8>,
    layer: Vec<u8>,
}

impl Content {
    fn new() -> Content {
        Content {
            config:
                br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
                    .to_vec(),
            layer: b"one shared layer".to_vec(),
        }
    }

    fn manifest(&self, n: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor("application/vnd.oci.image.config.v1+json", &self.config),
            "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", &self.layer)],
            "annotations": { "org.example.n": n },
        }))
        .expect("json")
    }
}

fn digest_of(bytes: &[u8]) -> String {
    Digest::sha256_of(bytes).to_string()
}

fn hex_of(bytes: &[u8]) -> String {
    digest_of(bytes)["sha256:".len()..].to_string()
}

fn descriptor(media_type: &str, bytes: &[u8]) -> Value {
    json!({ "mediaType": media_type, "digest": digest_of(bytes), "size": bytes.len() })
}

fn tag(n: usize) -> String {
    format!("t{n:06}")
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
    std::fs::write(path, bytes).expect("write");
}

/// berth's store: one OCI layout at `<root>/store/<REPO>` with `tags` tags.
fn lay_berth(root: &Path, content: &Content, tags: usize) -> PathBuf {
    let dir = root.join("store").join(REPO);
    let blob = |bytes: &[u8]| write(&dir.join("blobs/sha256").join(hex_of(bytes)), bytes);
    blob(&content.config);
    blob(&content.layer);
    let mut listed = Vec::with_capacity(tags);
    for n in 0..tags {
        let manifest = content.manifest(&n.to_string());
        blob(&manifest);
        let mut d = descriptor(OCI_MANIFEST, &manifest);
        d["annotations"] = json!({ "org.opencontainers.image.ref.name": tag(n) });
        listed.push(d);
    }
    let index = json!({ "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": listed });
    write(
        &dir.join("index.json"),
        &serde_json::to_vec(&index).expect("json"),
    );
    write(
        &dir.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    );
    let config = root.join("config.json");
    let body = json!({
        "storage": { "rootDirectory": root.join("store"), "gc": false, "dedupe": false },
        "http": { "address": "127.0.0.1", "port": "0" },
        "log": { "level": "info" }
    });
    write(&config, body.to_string().as_bytes());
    config
}

/// distribution's store under `<root>/distribution`: blobs once, a link per layer and per
/// manifest revision, and a tag directory per tag.
fn lay_distribution(root: &Path, content: &Content, tags: usize) {
    let v2 = root.join("distribution/docker/registry/v2");
    let repo = v2.join("repositories").join(REPO);
    let blob = |bytes: &[u8]| {
        let hex = hex_of(bytes);
        write(
            &v2.join("blobs/sha256")
                .join(&hex[..2])
                .join(&hex)
                .join("data"),
            bytes,
        );
        hex
    };
    let link = |path: PathBuf, hex: &str| write(&path, format!("sha256:{hex}").as_bytes());
    for bytes in [&content.config, &content.layer] {
        let hex = blob(bytes);
        link(repo.join("_layers/sha256").join(&hex).join("link"), &hex);
    }
    for n in 0..tags {
        let hex = blob(&content.manifest(&n.to_string()));
        link(
            repo.join("_manifests/revisions/sha256")
                .join(&hex)
                .join("link"),
            &hex,
        );
        let tag_dir = repo.join("_manifests/tags").join(tag(n));
        link(tag_dir.join("current/link"), &hex);
        link(tag_dir.join("index/sha256").join(&hex).join("link"), &hex);
    }
}

/// One server and size's measurement.
struct Row {
    server: &'static str,
    tags: usize,
    puts_per_second: f64,
    mean_ms: f64,
    cpu_ms_per_put: f64,
    rss_before_mib: f64,
    rss_after_mib: f64,
}

fn measure(
    server: &'static str,
    process: &Process,
    content: &Content,
    args: &Args,
    tags: usize,
) -> Row {
    let mut c = http::Connection::new(&process.host);
    let probe = c
        .send(
            "GET",
            &format!("/v2/{REPO}/manifests/{}", tag(tags - 1)),
            &[("Accept", OCI_MANIFEST)],
            &[],
            false,
        )
        .expect("GET the last laid tag");
    assert_eq!(probe.status, 200, "{server} serves the laid repository");
    let rss_before = process.rss_mib();
    let cpu_before = process.cpu_seconds();
    let (host, next) = (&process.host, AtomicUsize::new(0));
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..args.concurrency {
            s.spawn(|| {
                let mut c = http::Connection::new(host);
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= args.puts {
                        break;
                    }
                    let name = format!("new{n:06}");
                    let body = content.manifest(&name);
                    let r = c
                        .send(
                            "PUT",
                            &format!("/v2/{REPO}/manifests/{name}"),
                            &[("Content-Type", OCI_MANIFEST)],
                            &[&body],
                            false,
                        )
                        .expect("PUT");
                    assert_eq!(r.status, 201, "{server} PUT {name}");
                }
            });
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    Row {
        server,
        tags,
        puts_per_second: args.puts as f64 / seconds,
        mean_ms: seconds * 1000.0 * args.concurrency as f64 / args.puts as f64,
        cpu_ms_per_put: (process.cpu_seconds() - cpu_before) * 1000.0 / args.puts as f64,
        rss_before_mib: rss_before,
        rss_after_mib: process.rss_mib(),
    }
}

fn main() {
    let args = Args::parse();
    let content = Content::new();
    let wanted = |server: &str| args.only.split(',').any(|s| s == server);
    let dir = args.dir.clone().unwrap_or_else(|| {
        let shm = PathBuf::from("/dev/shm");
        if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        }
    });
    let fresh = || tempfile::tempdir_in(&dir).expect("a directory for the store");
    let mut rows = Vec::new();
    for tags in args
        .tags
        .split(',')
        .map(|t| t.parse::<usize>().expect("--tags: numbers"))
    {
        assert!(tags > 0, "--tags: at least one tag");
        if wanted("berth") {
            let root = fresh();
            let config = lay_berth(root.path(), &content, tags);
            let process = Process::berth(&args.berth, &config);
            rows.push(report(
                measure("berth", &process, &content, &args, tags),
                &args,
            ));
        }
        if wanted("distribution") {
            let root = fresh();
            lay_distribution(root.path(), &content, tags);
            let process = Process::distribution(root.path());
            rows.push(report(
                measure("distribution", &process, &content, &args, tags),
                &args,
            ));
        }
    }
    eprintln!(
        "{:<13} {:>7} {:>9} {:>8} {:>10} {:>10} {:>9}",
        "server", "tags", "PUTs/s", "mean ms", "cpu ms/PUT", "RSS before", "RSS after"
    );
    for r in &rows {
        eprintln!(
            "{:<13} {:>7} {:>9.0} {:>8.2} {:>10.2} {:>10.1} {:>9.1}",
            r.server,
            r.tags,
            r.puts_per_second,
            r.mean_ms,
            r.cpu_ms_per_put,
            r.rss_before_mib,
            r.rss_after_mib
        );
    }
}

/// Prints `row` as a JSON line as soon as it is measured.
fn report(row: Row, args: &Args) -> Row {
    println!(
        "{}",
        json!({ "server": row.server, "tags": row.tags, "puts": args.puts,
                "concurrency": args.concurrency, "puts_per_second": row.puts_per_second,
                "mean_ms": row.mean_ms, "cpu_ms_per_put": row.cpu_ms_per_put,
                "heap_rss_mib_before": row.rss_before_mib, "heap_rss_mib_after": row.rss_after_mib })
    );
    row
}
