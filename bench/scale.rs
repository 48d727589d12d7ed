//! `scale`: the scale of a large mirror (issue 11), berth beside CNCF distribution (Debian's
//! `docker-registry` 2.8) in one run. Every scenario lays its stores straight on disk, one per
//! server in that server's own layout (berth: an OCI layout per repository; distribution: its
//! `docker/registry/v2` tree, where a blob is stored once), starts the server on it, and prints
//! one JSON line per target and size on stdout; a table of every line follows on stderr.
//! - `catalog`: `--catalog-repos` empty repositories, `/v2/_catalog?n=100` paged through
//!   along the Link header: first page and whole walk in seconds; every name must be listed.
//! - `startup`: for each of `--startup-repos`, a store whose repositories each hold one tagged
//!   image (its own config and manifest, and a layer every repository has as a separate copy,
//!   as another registry or `dedupe: false` leaves it), plus an old unreferenced blob in every
//!   hundredth. berth with gc and dedupe on: seconds from spawn to `/v2/` answering, to
//!   "gc: sweep done" and to "dedupe pass: done", heap and peak RSS; then a second start on
//!   the same root (the pass finds its marker). distribution: seconds to ready, and its
//!   offline `garbage-collect` on the same store (it has no online gc).
//! - `sweep`: `--sweep-blobs` old unreferenced blobs over `--sweep-repos` repositories. berth
//!   starts with gc on and `--clients` clients push images into new repositories meanwhile:
//!   blobs deleted per second of the start-up sweep, pushes per second during and after it,
//!   push errors. distribution: offline `garbage-collect` of the same blobs (deletes per
//!   second; no push can run meanwhile), then its push rate once serving again.
//! - `fanout`: one image in `--fanout-repos` repositories as separate copies (and, as the
//!   baseline, in 2). berth with dedupe on: seconds to "dedupe pass: done" and its progress
//!   lines; then `--ops` pushes of the shared layer and `--ops` cross-repository mounts of
//!   it into new repositories, mean and slowest ms, on both servers.
//!
//! Run: `cargo build --release && cargo bench --bench scale -- [--berth target/release/berth]
//! [--only catalog,startup,sweep,fanout] [--targets berth,distribution] [--catalog-repos 20000]
//! [--startup-repos 10000,100000] [--sweep-blobs 100000] [--sweep-repos 100] [--clients 4]
//! [--fanout-repos 100000] [--ops 200] [--settle 60]`.
//! Stores go under the default temporary directory; a scenario removes its stores when it ends.
//! At the default sizes a run lays and removes about 7 million files: on this VM most of its
//! length is that (see `Laid::new`), not what is measured.

#[path = "http.rs"]
mod http;
#[path = "procs.rs"]
mod procs;

use berth::digest::Digest;
use clap::Parser;
use procs::Process;
use rayon::prelude::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Older than the gcDelay (1h) berth is given, so laid garbage is collectable at once.
const OLD: Duration = Duration::from_secs(2 * 3600);
/// How long a benchmark waits for a log line before calling the run broken.
const LOG_LIMIT: Duration = Duration::from_secs(900);
/// In `startup`, one repository in this many also holds an unreferenced blob.
const GARBAGE_EVERY: usize = 100;

#[derive(Parser)]
struct Args {
    /// The berth binary to measure.
    #[arg(long, default_value = "target/release/berth")]
    berth: PathBuf,
    /// Scenarios to run (comma-separated); all when empty.
    #[arg(long, default_value = "")]
    only: String,
    /// Servers to measure (comma-separated), in this order.
    #[arg(long, value_delimiter = ',', default_value = "berth,distribution")]
    targets: Vec<Target>,
    #[arg(long, default_value_t = 20_000)]
    catalog_repos: usize,
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    startup_repos: Vec<usize>,
    #[arg(long, default_value_t = 100_000)]
    sweep_blobs: usize,
    #[arg(long, default_value_t = 100)]
    sweep_repos: usize,
    /// Clients pushing during and after the sweep.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    #[arg(long, default_value_t = 100_000)]
    fanout_repos: usize,
    /// Pushes, and mounts, timed per fanout store.
    #[arg(long, default_value_t = 200)]
    ops: usize,
    /// Seconds to wait after a scenario's stores are removed, before the next scenario: ext4
    /// without a journal makes every file created within a minute or so of a deletion scan
    /// past the inodes freed (`recently_deleted`).
    #[arg(long, default_value_t = 60)]
    settle: u64,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

// ---------------------------------------------------------------------------------------------
// What a run reports: JSON lines as they come, one table per scenario at the end.

/// One JSON line: a scenario's figures for one target and size, in the order they were added.
struct Row {
    scenario: &'static str,
    target: Target,
    size: usize,
    fields: Vec<(&'static str, Value)>,
}

impl Row {
    fn new(scenario: &'static str, target: Target, size: usize) -> Row {
        Row {
            scenario,
            target,
            size,
            fields: Vec::new(),
        }
    }

    fn with(mut self, key: &'static str, value: impl Into<Value>) -> Row {
        self.fields.push((key, value.into()));
        self
    }

    fn json(&self) -> String {
        // By hand, so the keys keep their order (serde_json's map sorts them).
        let mut out = format!(
            "{{\"scenario\":\"{}\",\"target\":\"{}\",\"size\":{}",
            self.scenario,
            self.target.name(),
            self.size
        );
        for (key, value) in &self.fields {
            out.push_str(&format!(",\"{key}\":{value}"));
        }
        out.push('}');
        out
    }
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    took: Vec<(&'static str, f64)>,
}

impl Report {
    fn emit(&mut self, row: Row) {
        println!("{}", row.json());
        self.rows.push(row);
    }

    /// Per scenario, a table with a column per target and size and a line per figure.
    fn print_table(&self) {
        let mut scenarios: Vec<&str> = self.rows.iter().map(|r| r.scenario).collect();
        scenarios.dedup();
        for scenario in scenarios {
            let rows: Vec<&Row> = self
                .rows
                .iter()
                .filter(|r| r.scenario == scenario)
                .collect();
            let mut keys: Vec<&str> = Vec::new();
            for (key, _) in rows.iter().flat_map(|r| &r.fields) {
                if !keys.contains(key) {
                    keys.push(key);
                }
            }
            let mut lines = vec![
                std::iter::once(scenario.to_string())
                    .chain(
                        rows.iter()
                            .map(|r| format!("{} {}", r.target.name(), r.size)),
                    )
                    .collect::<Vec<_>>(),
            ];
            for key in keys {
                let cells = rows.iter().map(|r| {
                    r.fields
                        .iter()
                        .find(|(k, _)| *k == key)
                        .map_or("-".to_string(), |(_, v)| cell(v))
                });
                lines.push(std::iter::once(key.to_string()).chain(cells).collect());
            }
            let widths: Vec<usize> = (0..lines[0].len())
                .map(|c| lines.iter().map(|l| l[c].len()).max().unwrap_or(0))
                .collect();
            eprintln!();
            for line in &lines {
                let mut text = format!("{:<w$}", line[0], w = widths[0]);
                for (c, value) in line.iter().enumerate().skip(1) {
                    text.push_str(&format!("  {value:>w$}", w = widths[c]));
                }
                eprintln!("{}", text.trim_end());
            }
        }
        eprintln!();
        for (scenario, seconds) in &self.took {
            eprintln!("{scenario}: {seconds:.0} s in all (laying, serving, removing)");
        }
    }
}

fn cell(value: &Value) -> String {
    match value {
        Value::Number(n) if n.is_f64() => {
            let x = n.as_f64().unwrap_or(0.0);
            match x.abs() {
                a if a >= 100.0 => format!("{x:.0}"),
                a if a >= 1.0 => format!("{x:.2}"),
                _ => format!("{x:.4}"),
            }
        }
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Content: blobs and images, and the stores they are laid into.

#[derive(Clone)]
struct Blob {
    bytes: Vec<u8>,
    /// `sha256:<hex>`.
    digest: String,
}

impl Blob {
    fn new(bytes: Vec<u8>) -> Blob {
        let digest = Digest::sha256_of(&bytes).to_string();
        Blob { bytes, digest }
    }

    fn hex(&self) -> &str {
        &self.digest["sha256:".len()..]
    }
}

/// Bytes that differ for every seed and do not compress away.
fn filler(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// An OCI image of one config and one layer.
#[derive(Clone)]
struct Image {
    config: Blob,
    layer: Blob,
    manifest: Blob,
}

impl Image {
    fn new(config: Vec<u8>, layer: Blob) -> Image {
        let config = Blob::new(config);
        let descriptor = |media_type: &str, b: &Blob| json!({ "mediaType": media_type, "digest": b.digest, "size": b.bytes.len() });
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
            "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", &layer)],
        });
        let manifest = Blob::new(serde_json::to_vec(&manifest).expect("json"));
        Image {
            config,
            layer,
            manifest,
        }
    }

    /// Its own config over `layer`: one per repository of a mirror.
    fn numbered(n: u64, layer: &Blob) -> Image {
        let config = format!(r#"{{"architecture":"amd64","os":"linux","bench":{n}}}"#);
        Image::new(config.into_bytes(), layer.clone())
    }
}

/// The layer every repository of a laid store holds (1 KiB: the store's size is in its file
/// count, not its bytes).
fn shared_layer() -> Blob {
    Blob::new(filler(1, 1024))
}

/// `mirror/r000042`: the repositories a store is laid with.
fn repo_name(i: usize) -> String {
    format!("mirror/r{i:06}")
}

/// A server's store as files: repositories holding an image tagged `latest` (or nothing),
/// and blobs nothing references.
trait Layout: Sync {
    /// The directory repository names are relative to.
    fn repositories(&self) -> &Path;
    /// Lays one repository; the parent of its directory exists.
    fn lay_repo(&self, name: &str, image: Option<&Image>, garbage: &[Blob]);
}

/// berth: `<store>/<repo>/{oci-layout,index.json,blobs/sha256/<hex>}`, every blob a file of
/// its repository.
struct BerthStore {
    store: PathBuf,
}

impl Layout for BerthStore {
    fn repositories(&self) -> &Path {
        &self.store
    }

    fn lay_repo(&self, name: &str, image: Option<&Image>, garbage: &[Blob]) {
        let dir = self.store.join(name);
        mkdir(&dir);
        if image.is_some() || !garbage.is_empty() {
            let blobs = mkdirs(&dir, "blobs/sha256");
            for blob in image
                .iter()
                .flat_map(|i| [&i.config, &i.layer, &i.manifest])
            {
                write_file(&blobs.join(blob.hex()), &blob.bytes, None);
            }
            for blob in garbage {
                write_file(&blobs.join(blob.hex()), &blob.bytes, Some(OLD));
            }
        }
        let listed: Vec<Value> = image
            .iter()
            .map(|i| {
                json!({ "mediaType": OCI_MANIFEST, "digest": i.manifest.digest,
                        "size": i.manifest.bytes.len(),
                        "annotations": { "org.opencontainers.image.ref.name": "latest" } })
            })
            .collect();
        let index = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": listed });
        write_file(
            &dir.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
            None,
        );
        write_file(&dir.join("index.json"), index.to_string().as_bytes(), None);
    }
}

/// distribution 2.8: blobs once at `blobs/sha256/<xx>/<hex>/data`; a repository is link files
/// naming them (`_layers` for configs and layers, `_manifests/revisions` and `_manifests/tags`).
struct DistributionStore {
    v2: PathBuf,
    repositories: PathBuf,
    /// Blobs written: every repository after the first names a shared blob without trying to
    /// write it again (an `EEXIST` costs the parent directory's lock all the same).
    written: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl DistributionStore {
    fn new(root: &Path) -> DistributionStore {
        // Where `procs::distribution_config` points distribution's rootdirectory.
        let v2 = mkdirs(root, "distribution/docker/registry/v2");
        let repositories = mkdirs(&v2, "repositories");
        let blobs = mkdirs(&v2, "blobs/sha256");
        // Every prefix up front, so parallel writers never race to create one.
        for prefix in 0..=255u8 {
            mkdir(&blobs.join(format!("{prefix:02x}")));
        }
        DistributionStore {
            v2,
            repositories,
            written: Default::default(),
        }
    }

    fn blob_dir(&self, blob: &Blob) -> PathBuf {
        let hex = blob.hex();
        self.v2.join("blobs/sha256").join(&hex[..2]).join(hex)
    }

    /// The blob's data, unless another repository's image wrote it already (a shared layer is
    /// stored once, as distribution keeps it).
    fn blob(&self, blob: &Blob, age: Option<Duration>) {
        let first = self
            .written
            .lock()
            .expect("not poisoned")
            .insert(blob.digest.clone());
        if !first {
            return;
        }
        let dir = self.blob_dir(blob);
        mkdir(&dir);
        write_file(&dir.join("data"), &blob.bytes, age);
    }

    fn link(&self, dir: &Path, blob: &Blob) {
        mkdir(dir);
        write_file(&dir.join("link"), blob.digest.as_bytes(), None);
    }
}

impl Layout for DistributionStore {
    fn repositories(&self) -> &Path {
        &self.repositories
    }

    fn lay_repo(&self, name: &str, image: Option<&Image>, garbage: &[Blob]) {
        let repo = self.repositories.join(name);
        mkdir(&repo);
        // `_layers` is what distribution's catalog recognises a repository by.
        let layers = mkdirs(&repo, "_layers/sha256");
        if let Some(image) = image {
            for blob in [&image.config, &image.layer] {
                self.blob(blob, None);
                self.link(&layers.join(blob.hex()), blob);
            }
            let m = &image.manifest;
            self.blob(m, None);
            let revisions = mkdirs(&repo, "_manifests/revisions/sha256");
            self.link(&revisions.join(m.hex()), m);
            let tag = mkdirs(&repo, "_manifests/tags/latest");
            self.link(&tag.join("current"), m);
            let index = mkdirs(&tag, "index/sha256");
            self.link(&index.join(m.hex()), m);
        }
        // An upload no manifest came to name: the blob and its repository's link.
        for blob in garbage {
            self.blob(blob, Some(OLD));
            self.link(&layers.join(blob.hex()), blob);
        }
    }
}

fn mkdir(path: &Path) {
    match std::fs::create_dir(path) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            panic!("mkdir {}: {e}", path.display())
        }
        _ => {}
    }
}

/// Creates `base/rel` one component at a time from the top (`create_dir_all` tries the leaf
/// first, a wasted system call per level on a fresh tree); returns it.
fn mkdirs(base: &Path, rel: &str) -> PathBuf {
    let mut path = base.to_path_buf();
    for component in rel.split('/') {
        path.push(component);
        mkdir(&path);
    }
    path
}

/// Writes a new file, its mtime `age` in the past when given.
fn write_file(path: &Path, bytes: &[u8], age: Option<Duration>) {
    use std::io::Write;
    let mut file = std::fs::File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    file.write_all(bytes).expect("write");
    if let Some(age) = age {
        file.set_modified(SystemTime::now() - age).expect("mtime");
    }
}

/// A store laid for one target under a temporary root, removed when dropped (kept by its
/// scenario until it ends, see `keep`).
struct Laid {
    root: Option<tempfile::TempDir>,
    label: String,
    /// Seconds the lay-down took.
    seconds: f64,
}

impl Laid {
    /// Lays `count` repositories named by `repo_name` in `target`'s layout, each with what
    /// `content` gives it, on every core. Says on stderr how long it took, and the removal
    /// how long that took: a run's length is mostly those two. On this VM's journal-less ext4
    /// mounted with `discard`, every inode freed waits for its blocks' discard (~0.5 ms), and a
    /// file created within a minute or so of mass deletion scans past the freed inodes
    /// (`recently_deleted`), many times slower than on a quiet file system.
    fn new(
        label: String,
        target: Target,
        count: usize,
        content: impl Fn(usize) -> (Option<Image>, Vec<Blob>) + Sync,
    ) -> Laid {
        let root = tempfile::tempdir().expect("tempdir");
        let started = Instant::now();
        let layout = target.layout(root.path());
        if let Some((parent, _)) = repo_name(0).rsplit_once('/') {
            mkdirs(layout.repositories(), parent);
        }
        (0..count).into_par_iter().for_each(|i| {
            let (image, garbage) = content(i);
            layout.lay_repo(&repo_name(i), image.as_ref(), &garbage);
        });
        let seconds = started.elapsed().as_secs_f64();
        eprintln!("{label}: laid {count} repositories in {seconds:.1} s");
        Laid {
            root: Some(root),
            label,
            seconds,
        }
    }

    fn path(&self) -> &Path {
        self.root.as_ref().expect("until dropped").path()
    }
}

impl Drop for Laid {
    fn drop(&mut self) {
        if let Some(root) = self.root.take() {
            let started = Instant::now();
            remove(root);
            let seconds = started.elapsed().as_secs_f64();
            eprintln!("{}: removed in {seconds:.1} s", self.label);
        }
    }
}

/// Removes a laid root on every core (a store is up to millions of files): directories are
/// opened level by level until there are enough entries to share out.
fn remove(root: tempfile::TempDir) {
    let mut frontier = vec![(root.path().to_path_buf(), true)];
    while frontier.len() < 256 && frontier.iter().any(|(_, dir)| *dir) {
        frontier = frontier
            .into_iter()
            .flat_map(|(path, dir)| {
                let entries: Vec<(PathBuf, bool)> = if dir {
                    std::fs::read_dir(&path)
                        .into_iter()
                        .flatten()
                        .flatten()
                        .map(|e| (e.path(), e.file_type().is_ok_and(|t| t.is_dir())))
                        .collect()
                } else {
                    vec![(path, false)]
                };
                entries
            })
            .collect();
    }
    frontier.into_par_iter().for_each(|(path, dir)| {
        let _ = if dir {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
    });
    // The emptied skeleton goes with the TempDir.
    drop(root);
}

/// Keeps a scenario's store until the scenario ends, when all are removed together: no timed
/// phase of a scenario follows the removal of one of its stores (see `Laid::new`).
fn keep(stores: &mut Vec<Laid>, laid: Laid) -> &Laid {
    stores.push(laid);
    stores.last().expect("just pushed")
}

/// `scenario target size`, for progress lines.
fn label(scenario: &str, target: Target, size: usize) -> String {
    format!("{scenario} {} {size}", target.name())
}

/// What a repository of one scenario holds: no image and no garbage for `catalog`.
fn empty(_: usize) -> (Option<Image>, Vec<Blob>) {
    (None, Vec::new())
}

// ---------------------------------------------------------------------------------------------
// The servers, and what a scenario asks of them.

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum Target {
    Berth,
    Distribution,
}

/// berth's background work at start-up: the gc sweep and the dedupe pass.
#[derive(Clone, Copy)]
struct Passes {
    gc: bool,
    dedupe: bool,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Berth => "berth",
            Target::Distribution => "distribution",
        }
    }

    fn layout(self, root: &Path) -> Box<dyn Layout> {
        match self {
            Target::Berth => Box::new(BerthStore {
                store: mkdirs(root, "store"),
            }),
            Target::Distribution => Box::new(DistributionStore::new(root)),
        }
    }

    /// Starts the server on the store laid under `root`; berth with the passes asked for
    /// (distribution has neither).
    fn serve(self, args: &Args, root: &Path, passes: Passes) -> Process {
        match self {
            Target::Berth => Process::berth(&args.berth, &berth_config(root, passes)),
            Target::Distribution => Process::distribution(root),
        }
    }
}

/// berth's config: the store is `<root>/store`; gcDelay 1h, so what was laid with an old mtime
/// is collectable and what is pushed during a run is not; one sweep a day, so only the
/// start-up sweep runs.
fn berth_config(root: &Path, passes: Passes) -> PathBuf {
    let config = root.join("config.json");
    let body = json!({
        "distSpecVersion": "1.1.1",
        "storage": { "rootDirectory": root.join("store"), "gc": passes.gc,
                     "dedupe": passes.dedupe, "gcDelay": "1h", "gcInterval": "24h" },
        "http": { "address": "127.0.0.1", "port": "0", "readTimeout": "600s",
                  "writeTimeout": "600s" },
        "log": { "level": "info" }
    });
    std::fs::write(&config, body.to_string()).expect("write config");
    config
}

fn expect(
    response: std::io::Result<http::Response>,
    status: u16,
) -> Result<http::Response, String> {
    match response {
        Ok(r) if r.status == status => Ok(r),
        Ok(r) => Err(format!("status {} (expected {status})", r.status)),
        Err(e) => Err(e.to_string()),
    }
}

/// The path of a Location or Link URL, which distribution makes absolute.
fn path_of(url: &str) -> &str {
    match url.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => url,
    }
}

/// Uploads a whole blob: to berth in one POST carrying the digest (the spec's monolithic
/// upload); distribution 2.8 ignores a POST's body, so there a POST opens the session and one
/// PUT sends it (one round trip more).
fn push_blob(
    c: &mut http::Connection,
    target: Target,
    repo: &str,
    blob: &Blob,
) -> Result<(), String> {
    let octets = [("Content-Type", "application/octet-stream")];
    let start = format!("/v2/{repo}/blobs/uploads/");
    if target == Target::Berth {
        let path = format!("{start}?digest={}", blob.digest);
        return expect(c.send("POST", &path, &octets, &[&blob.bytes], false), 201).map(drop);
    }
    let session = expect(c.send("POST", &start, &[], &[], false), 202)?;
    let location = session.header("location").ok_or("no Location")?;
    let location = path_of(location);
    let sep = if location.contains('?') { '&' } else { '?' };
    let path = format!("{location}{sep}digest={}", blob.digest);
    expect(c.send("PUT", &path, &octets, &[&blob.bytes], false), 201).map(drop)
}

fn mount_blob(c: &mut http::Connection, repo: &str, blob: &Blob, from: &str) -> Result<(), String> {
    let path = format!(
        "/v2/{repo}/blobs/uploads/?mount={}&from={from}",
        blob.digest
    );
    expect(c.send("POST", &path, &[], &[], false), 201).map(drop)
}

fn push_image(
    c: &mut http::Connection,
    target: Target,
    repo: &str,
    image: &Image,
) -> Result<(), String> {
    push_blob(c, target, repo, &image.config)?;
    push_blob(c, target, repo, &image.layer)?;
    let path = format!("/v2/{repo}/manifests/latest");
    let ct = [("Content-Type", OCI_MANIFEST)];
    expect(
        c.send("PUT", &path, &ct, &[&image.manifest.bytes], false),
        201,
    )
    .map(drop)
}

/// GETs `repo:latest` and checks it is `image`'s manifest: the server reads the laid layout
/// as laid, so what is timed next is not a server failing fast on a store it cannot read.
fn verify_tagged(host: &str, repo: &str, image: &Image) {
    let mut c = http::Connection::new(host);
    let path = format!("/v2/{repo}/manifests/latest");
    let r = c
        .send("GET", &path, &[("Accept", OCI_MANIFEST)], &[], true)
        .expect("GET manifest");
    assert_eq!(r.status, 200, "GET {path} on the laid store");
    assert_eq!(
        r.header("docker-content-digest"),
        Some(image.manifest.digest.as_str())
    );
    assert_eq!(
        c.body, image.manifest.bytes,
        "GET {path}: the laid manifest"
    );
}

/// Log lines, each with when it arrived.
type Lines = Vec<(Instant, String)>;

/// Waits until a log line for each event has arrived, an event being any of its needles;
/// returns every line read and, per event, when its first line arrived and the line.
fn wait_events(server: &mut Process, events: &[&[&str]]) -> (Lines, Lines) {
    let mut seen = vec![false; events.len()];
    let lines = server
        .log_until(LOG_LIMIT, |line| {
            for (event, needles) in seen.iter_mut().zip(events) {
                *event |= needles.iter().any(|n| line.contains(n));
            }
            seen.iter().all(|s| *s)
        })
        .unwrap_or_else(|| panic!("berth never logged all of {events:?}"));
    let firsts = events
        .iter()
        .map(|needles| {
            lines
                .iter()
                .find(|(_, l)| needles.iter().any(|n| l.contains(n)))
                .cloned()
                .expect("seen above")
        })
        .collect();
    (lines, firsts)
}

/// A `name=value` field of a berth log line: a count (`u64`) or a measure (`f64`).
fn field<T: std::str::FromStr>(line: &str, name: &str) -> Option<T> {
    let at = line.find(&format!(" {name}="))? + name.len() + 2;
    line[at..].split_whitespace().next()?.parse().ok()
}

/// Seconds from the server's spawn to `at`.
fn since_spawn(server: &Process, at: Instant) -> f64 {
    at.duration_since(server.started).as_secs_f64()
}

/// Blobs berth's sweep deleted, from its per-repository "gc: removed" lines.
fn blobs_removed(lines: &[(Instant, String)]) -> usize {
    lines
        .iter()
        .filter(|(_, l)| l.contains("gc: removed"))
        .filter_map(|(_, l)| field::<usize>(l, "blobs"))
        .sum()
}

/// An offline command's cost: wall seconds, peak RSS and CPU seconds of that one process.
struct Offline {
    seconds: f64,
    peak_rss_mib: f64,
    cpu_seconds: f64,
}

/// Runs distribution's `garbage-collect` on the registry.yml `Process::distribution` wrote in
/// `root` (the server stopped: distribution's gc needs it stopped or read-only).
#[allow(
    clippy::zombie_processes,
    reason = "wait4 reaps it, which also gives its rusage"
)]
fn distribution_gc(root: &Path) -> Offline {
    let started = Instant::now();
    let child = Command::new("docker-registry")
        .arg("garbage-collect")
        .arg(root.join("registry.yml"))
        .stdin(Stdio::null())
        // It prints a line per blob marked and per blob deleted.
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run docker-registry garbage-collect");
    // wait4 rather than wait: the rusage of this child alone (RUSAGE_CHILDREN would count the
    // berth processes of the run too).
    let mut status = 0;
    // SAFETY: rusage is plain data, for which all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 writes only `status` and `usage`, both live for the call.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32, "wait4");
    let seconds = started.elapsed().as_secs_f64();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "garbage-collect failed: {status}"
    );
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Offline {
        seconds,
        peak_rss_mib: usage.ru_maxrss as f64 / 1024.0,
        cpu_seconds: tv(usage.ru_utime) + tv(usage.ru_stime),
    }
}

/// Blobs in distribution's store under `root` (one directory each).
fn distribution_blobs(root: &Path) -> usize {
    let blobs = root.join("distribution/docker/registry/v2/blobs/sha256");
    (0..=255u8)
        .into_par_iter()
        .map(|p| std::fs::read_dir(blobs.join(format!("{p:02x}"))).map_or(0, |d| d.count()))
        .sum()
}

// ---------------------------------------------------------------------------------------------
// Pushers: clients pushing images into new repositories until stopped.

struct Pushers {
    stop: Arc<AtomicBool>,
    clients: Vec<std::thread::JoinHandle<(Vec<Instant>, Vec<String>)>>,
}

/// When each push finished, and the errors.
struct Pushed {
    done: Vec<Instant>,
    errors: Vec<String>,
    stopped: Instant,
}

impl Pushed {
    /// Pushes finished in `(from, to]`, per second.
    fn rate(&self, from: Instant, to: Instant) -> f64 {
        let n = self.done.iter().filter(|t| **t > from && **t <= to).count();
        n as f64 / to.duration_since(from).as_secs_f64().max(1e-9)
    }
}

impl Pushers {
    /// Starts `clients` clients, each pushing small new images (config, 4 KiB layer, manifest
    /// tagged `latest`) into a new repository per push, so every push costs the same however
    /// long the run (a tag added to one repository grows its index).
    fn start(target: Target, host: &str, clients: usize) -> Pushers {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..clients as u64)
            .map(|client| {
                let (host, stop) = (host.to_string(), stop.clone());
                std::thread::spawn(move || {
                    let mut c = http::Connection::new(&host);
                    let (mut done, mut errors) = (Vec::new(), Vec::new());
                    for n in 0u64.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let seed = (client + 1) << 40 | n;
                        let image = Image::numbered(seed, &Blob::new(filler(seed, 4096)));
                        let repo = format!("push/c{client}-{n:06}");
                        match push_image(&mut c, target, &repo, &image) {
                            Ok(()) => done.push(Instant::now()),
                            Err(e) => errors.push(format!("{repo}: {e}")),
                        }
                    }
                    (done, errors)
                })
            })
            .collect();
        Pushers { stop, clients }
    }

    fn stop(self) -> Pushed {
        self.stop.store(true, Ordering::Relaxed);
        let stopped = Instant::now();
        let mut pushed = Pushed {
            done: Vec::new(),
            errors: Vec::new(),
            stopped,
        };
        for client in self.clients {
            let (done, errors) = client.join().expect("pusher");
            pushed.done.extend(done);
            pushed.errors.extend(errors);
        }
        pushed
    }
}

fn report_errors(scenario: &str, target: Target, errors: &[String]) {
    if let Some(first) = errors.first() {
        eprintln!(
            "{scenario} {}: {} errors, the first: {first}",
            target.name(),
            errors.len()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios.

/// Pages through `/v2/_catalog?n=100` along the Link header: (first page seconds, all pages
/// seconds, pages, names listed).
fn walk_catalog(host: &str) -> (f64, f64, usize, usize) {
    let mut c = http::Connection::new(host);
    let started = Instant::now();
    let mut first = 0.0;
    let mut path = "/v2/_catalog?n=100".to_string();
    let (mut pages, mut listed) = (0, 0);
    loop {
        let r = c.send("GET", &path, &[], &[], true).expect("GET _catalog");
        assert_eq!(r.status, 200, "GET {path}");
        pages += 1;
        if pages == 1 {
            first = started.elapsed().as_secs_f64();
        }
        let body: Value = serde_json::from_slice(&c.body).expect("json");
        listed += body["repositories"].as_array().map_or(0, Vec::len);
        let Some(next) = r.header("link").and_then(|l| l.split(['<', '>']).nth(1)) else {
            break;
        };
        path = path_of(next).to_string();
    }
    (first, started.elapsed().as_secs_f64(), pages, listed)
}

fn catalog(args: &Args, report: &mut Report) {
    let n = args.catalog_repos;
    let mut stores = Vec::new();
    for &target in &args.targets {
        let store = keep(
            &mut stores,
            Laid::new(label("catalog", target, n), target, n, empty),
        );
        let quiet = Passes {
            gc: false,
            dedupe: false,
        };
        let server = target.serve(args, store.path(), quiet);
        let (first, all, pages, listed) = walk_catalog(&server.host);
        assert_eq!(listed, n, "{} listed every repository", target.name());
        report.emit(
            Row::new("catalog", target, n)
                .with("laid_seconds", store.seconds)
                .with("pages", pages)
                .with("listed", listed)
                .with("first_page_seconds", first)
                .with("all_pages_seconds", all),
        );
    }
}

/// `startup`'s repository `i`: its own image over the shared layer, and in one repository of
/// `GARBAGE_EVERY` an old blob nothing references.
fn mirror_repo(i: usize, layer: &Blob) -> (Option<Image>, Vec<Blob>) {
    let garbage = (i.is_multiple_of(GARBAGE_EVERY))
        .then(|| Blob::new(format!("unreferenced {i}").into_bytes()))
        .into_iter()
        .collect();
    (Some(Image::numbered(i as u64, layer)), garbage)
}

fn startup(args: &Args, report: &mut Report) {
    let layer = shared_layer();
    let both = Passes {
        gc: true,
        dedupe: true,
    };
    const SWEPT: &[&str] = &["gc: sweep done"];
    const PASSED: &[&str] = &["dedupe pass: done"];
    // A second start finds the marker and says so instead of "done".
    const PASSED_AGAIN: &[&str] = &["dedupe pass: done", "dedupe pass: no repository changed"];
    let mut stores = Vec::new();
    for &n in &args.startup_repos {
        let garbage = n.div_ceil(GARBAGE_EVERY);
        let first_image = Image::numbered(0, &layer);
        for &target in &args.targets {
            let laid = Laid::new(label("startup", target, n), target, n, |i| {
                mirror_repo(i, &layer)
            });
            let store = keep(&mut stores, laid);
            let mut server = target.serve(args, store.path(), both);
            let ready = server.wait_ready(LOG_LIMIT);
            verify_tagged(&server.host, &repo_name(0), &first_image);
            let row = Row::new("startup", target, n)
                .with("laid_seconds", store.seconds)
                .with("garbage_blobs", garbage)
                .with("ready_seconds", ready);
            if target == Target::Distribution {
                drop(server);
                let before = distribution_blobs(store.path());
                let gc = distribution_gc(store.path());
                let removed = before - distribution_blobs(store.path());
                assert_eq!(removed, garbage, "distribution collected the garbage only");
                report.emit(
                    row.with("gc_offline_seconds", gc.seconds)
                        .with("gc_blobs_removed", removed)
                        .with("gc_peak_rss_mib", gc.peak_rss_mib)
                        .with("gc_cpu_seconds", gc.cpu_seconds),
                );
                continue;
            }
            let (lines, at) = wait_events(&mut server, &[SWEPT, PASSED]);
            let removed = blobs_removed(&lines);
            let row = row
                .with("gc_sweep_done_seconds", since_spawn(&server, at[0].0))
                .with("gc_blobs_removed", removed)
                .with("dedupe_done_seconds", since_spawn(&server, at[1].0))
                .with("dedupe_linked", field::<u64>(&at[1].1, "linked"))
                .with("heap_mib", server.rss_mib())
                .with("peak_rss_mib", server.peak_rss_mib())
                .with("cpu_seconds", server.cpu_seconds());
            drop(server);
            let mut again = target.serve(args, store.path(), both);
            let again_ready = again.wait_ready(LOG_LIMIT);
            let (again_lines, again_at) = wait_events(&mut again, &[PASSED_AGAIN, SWEPT]);
            // Repositories whose blob directories changed since the first pass stamped them
            // (the first sweep's deletions among them) are walked again.
            let walked = again_lines
                .iter()
                .find(|(_, l)| l.contains("dedupe pass: started"))
                .and_then(|(_, l)| field::<u64>(l, "walking"))
                .unwrap_or(0);
            report.emit(
                row.with("restart_ready_seconds", again_ready)
                    .with("restart_pass_seconds", since_spawn(&again, again_at[0].0))
                    .with("restart_pass_repositories_walked", walked)
                    .with(
                        "restart_gc_sweep_done_seconds",
                        since_spawn(&again, again_at[1].0),
                    )
                    .with("restart_peak_rss_mib", again.peak_rss_mib()),
            );
            assert_eq!(removed, garbage, "berth collected the garbage only");
        }
    }
}

/// How long pushes are timed after berth's sweep, and on distribution once it serves again.
const AFTER: Duration = Duration::from_secs(5);

fn sweep(args: &Args, report: &mut Report) {
    let layer = shared_layer();
    let total = args.sweep_blobs;
    let per_repo = total.div_ceil(args.sweep_repos);
    // Each repository keeps a tagged image (it stays, as a mirror's would) beside its share of
    // the garbage.
    let content = |i: usize| {
        let garbage = (i * per_repo..((i + 1) * per_repo).min(total))
            .map(|k| Blob::new(format!("unreferenced {k}").into_bytes()))
            .collect();
        (Some(Image::numbered(i as u64, &layer)), garbage)
    };
    // The dedupe pass off: it walks the same blobs, and `startup` measures the two together.
    let gc_only = Passes {
        gc: true,
        dedupe: false,
    };
    let mut stores = Vec::new();
    for &target in &args.targets {
        let label = label("sweep", target, total);
        let store = keep(
            &mut stores,
            Laid::new(label, target, args.sweep_repos, content),
        );
        let mut server = target.serve(args, store.path(), gc_only);
        verify_tagged(&server.host, &repo_name(0), &Image::numbered(0, &layer));
        let row = Row::new("sweep", target, total)
            .with("repositories", args.sweep_repos)
            .with("laid_seconds", store.seconds);
        if target == Target::Distribution {
            drop(server);
            let before = distribution_blobs(store.path());
            let gc = distribution_gc(store.path());
            let removed = before - distribution_blobs(store.path());
            assert_eq!(removed, total, "distribution collected the garbage only");
            let server = target.serve(args, store.path(), gc_only);
            let since = Instant::now();
            let pushers = Pushers::start(target, &server.host, args.clients);
            std::thread::sleep(AFTER);
            let pushed = pushers.stop();
            report_errors("sweep", target, &pushed.errors);
            report.emit(
                row.with("sweep_seconds", gc.seconds)
                    .with("blobs_deleted", removed)
                    .with("deletes_per_second", removed as f64 / gc.seconds)
                    .with("gc_peak_rss_mib", gc.peak_rss_mib)
                    .with("pushes_per_second_during", "n/a")
                    .with(
                        "pushes_per_second_after",
                        pushed.rate(since, pushed.stopped),
                    )
                    .with("push_errors", pushed.errors.len())
                    .with("note", "gc offline: registry stopped"),
            );
            continue;
        }
        let since = Instant::now();
        let pushers = Pushers::start(target, &server.host, args.clients);
        let (lines, at) = wait_events(&mut server, &[&["gc: sweep done"]]);
        let (swept_at, swept) = &at[0];
        std::thread::sleep(AFTER);
        let pushed = pushers.stop();
        report_errors("sweep", target, &pushed.errors);
        let removed = blobs_removed(&lines);
        let seconds = field::<f64>(swept, "elapsed_ms").unwrap_or(0.0) / 1000.0;
        let during = pushed.done.iter().filter(|t| *t <= swept_at).count();
        report.emit(
            row.with("sweep_seconds", seconds)
                .with("blobs_deleted", removed)
                .with("deletes_per_second", removed as f64 / seconds)
                .with(
                    "sweep_done_after_spawn_seconds",
                    since_spawn(&server, *swept_at),
                )
                .with("pushes_during", during)
                .with("pushes_per_second_during", pushed.rate(since, *swept_at))
                .with(
                    "pushes_per_second_after",
                    pushed.rate(*swept_at, pushed.stopped),
                )
                .with("push_errors", pushed.errors.len())
                .with("peak_rss_mib", server.peak_rss_mib()),
        );
        assert_eq!(removed, total, "berth collected the garbage only");
    }
}

/// Runs `op` `count` times one after another on one connection: (mean ms, slowest ms, errors).
fn time_ops(
    host: &str,
    count: usize,
    mut op: impl FnMut(&mut http::Connection, usize) -> Result<(), String>,
) -> (f64, f64, Vec<String>) {
    let mut c = http::Connection::new(host);
    let (mut total, mut slowest, mut errors) = (0.0, 0f64, Vec::new());
    for i in 0..count {
        let started = Instant::now();
        if let Err(e) = op(&mut c, i) {
            errors.push(e);
        }
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        total += ms;
        slowest = slowest.max(ms);
    }
    (total / count.max(1) as f64, slowest, errors)
}

fn fanout(args: &Args, report: &mut Report) {
    // One config over the shared layer: the same image, so the same three digests, everywhere.
    let image = Image::numbered(0, &shared_layer());
    let dedupe_only = Passes {
        gc: false,
        dedupe: true,
    };
    let mut stores = Vec::new();
    for &target in &args.targets {
        for n in [2, args.fanout_repos] {
            let laid = Laid::new(label("fanout", target, n), target, n, |_| {
                (Some(image.clone()), Vec::new())
            });
            let store = keep(&mut stores, laid);
            let mut server = target.serve(args, store.path(), dedupe_only);
            let ready = server.wait_ready(LOG_LIMIT);
            verify_tagged(&server.host, &repo_name(0), &image);
            let mut row = Row::new("fanout", target, n)
                .with("laid_seconds", store.seconds)
                .with("ready_seconds", ready);
            if target == Target::Berth {
                let (lines, at) = wait_events(&mut server, &[&["dedupe pass: done"]]);
                // Progress lines carry `total=`; the silence between the pass's lines is what
                // an operator watching the log sees.
                let marks: Vec<Instant> = lines
                    .iter()
                    .filter(|(_, l)| l.contains("dedupe pass:"))
                    .map(|(t, _)| *t)
                    .collect();
                let progress = lines
                    .iter()
                    .filter(|(_, l)| l.contains("dedupe pass:") && l.contains(" total="))
                    .count();
                let silence = marks
                    .windows(2)
                    .map(|w| w[1].duration_since(w[0]).as_secs_f64())
                    .fold(0.0, f64::max);
                let at_limit = lines
                    .iter()
                    .filter(|(_, l)| l.contains("allows no more links"))
                    .count();
                row = row
                    .with("dedupe_done_seconds", since_spawn(&server, at[0].0))
                    .with("dedupe_linked", field::<u64>(&at[0].1, "linked"))
                    .with("progress_lines", progress)
                    .with("longest_silence_seconds", silence)
                    .with("link_limit_warnings", at_limit)
                    .with("heap_mib", server.rss_mib())
                    .with("peak_rss_mib", server.peak_rss_mib());
            }
            let (push_mean, push_max, push_errors) = time_ops(&server.host, args.ops, |c, i| {
                push_blob(c, target, &format!("fresh/p{i:04}"), &image.layer)
            });
            let (mount_mean, mount_max, mount_errors) = time_ops(&server.host, args.ops, |c, i| {
                mount_blob(c, &format!("fresh/m{i:04}"), &image.layer, &repo_name(0))
            });
            let errors = [push_errors, mount_errors].concat();
            report_errors("fanout", target, &errors);
            report.emit(
                row.with("push_mean_ms", push_mean)
                    .with("push_max_ms", push_max)
                    .with("mount_mean_ms", mount_mean)
                    .with("mount_max_ms", mount_max)
                    .with("errors", errors.len()),
            );
        }
    }
}

fn main() {
    let mut args = Args::parse();
    // The binary measured is copied first: a long run should not measure another build
    // halfway through if target/release/berth is rebuilt meanwhile, and a profiler attached
    // to a server can still read its symbols.
    let pinned = tempfile::tempdir().expect("tempdir");
    let copy = pinned.path().join("berth");
    std::fs::copy(&args.berth, &copy)
        .unwrap_or_else(|e| panic!("copy {}: {e}", args.berth.display()));
    eprintln!("measuring {} as {}", args.berth.display(), copy.display());
    args.berth = copy;
    let mut report = Report::default();
    type Scenario = (&'static str, fn(&Args, &mut Report));
    let scenarios: [Scenario; 4] = [
        ("catalog", catalog),
        ("startup", startup),
        ("sweep", sweep),
        ("fanout", fanout),
    ];
    let chosen: Vec<Scenario> = scenarios
        .into_iter()
        .filter(|(name, _)| args.only.is_empty() || args.only.split(',').any(|s| s == *name))
        .collect();
    for (i, (name, run)) in chosen.iter().enumerate() {
        if i > 0 {
            eprintln!("settling {} s after the removals", args.settle);
            std::thread::sleep(Duration::from_secs(args.settle));
        }
        let started = Instant::now();
        run(&args, &mut report);
        let seconds = started.elapsed().as_secs_f64();
        eprintln!("{name}: {seconds:.0} s");
        report.took.push((name, seconds));
    }
    report.print_table();
}
