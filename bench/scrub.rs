//! `scrub`: scrub throughput against this machine's single-core SHA-256 speed. Writes a store
//! of `--gib` GiB of layers (`--blob-mib` each, spread over `--repos` images), measures one
//! core hashing an in-memory buffer, then times `Store::scrub` over the store (every layer,
//! config and manifest re-hashed, on the background pool). The files are written through the
//! page cache (the buffered writer) and read back from it, so the figure is hashing
//! throughput, not the disk's read speed (about 1 GB/s here).
//!
//! With `--cold` the store is evicted from the page cache first, and the figure is the disk's.
//! With `--foreground`, normal-priority threads hash alongside a second scrub, to show how
//! much the nice-19 background pool takes from them.
//!
//! Run: `cargo bench --bench scrub -- [--gib 2] [--blob-mib 32] [--repos 4] [--cold]`.

use berth::digest::{Algorithm, Digest, Hasher};
use berth::oci::{Reference, RepoName};
use berth::storage::driver::local::{LocalDriver, WriterChoice};
use berth::storage::{BodyLength, Store};
use clap::Parser;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// GiB of layers in the store.
    #[arg(long, default_value_t = 2)]
    gib: usize,
    /// MiB per layer.
    #[arg(long, default_value_t = 32)]
    blob_mib: usize,
    /// Repositories (one image each).
    #[arg(long, default_value_t = 4)]
    repos: usize,
    /// Evict the store from the page cache first (posix_fadvise DONTNEED), so scrub reads
    /// from the disk.
    #[arg(long)]
    cold: bool,
    /// Also measure what scrub takes from normal-priority work: one thread per core hashes
    /// in memory alone for 2 s, then while a second scrub runs; both rates are printed.
    #[arg(long)]
    foreground: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Distinct, incompressible-enough bytes for layer `n` (xorshift; content does not change
/// SHA-256's speed, only distinctness matters).
fn layer_bytes(n: u64, len: usize) -> Vec<u8> {
    let mut state = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut bytes = Vec::with_capacity(len);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

fn descriptor(media_type: &str, bytes: &[u8]) -> serde_json::Value {
    json!({ "mediaType": media_type, "digest": Digest::sha256_of(bytes).to_string(), "size": bytes.len() })
}

/// MB/s of one thread hashing `buffer` with SHA-256, best of three.
fn single_core_sha256(buffer: &[u8]) -> f64 {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            let mut hasher = Hasher::new(Algorithm::Sha256);
            hasher.update(buffer);
            std::hint::black_box(hasher.finish());
            buffer.len() as f64 / t.elapsed().as_secs_f64() / 1e6
        })
        .fold(0.0, f64::max)
}

/// Drops every file under `dir` from the page cache (clean pages only, so sync first).
fn evict(dir: &std::path::Path) {
    use std::os::fd::AsRawFd;
    for entry in std::fs::read_dir(dir).expect("list") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            evict(&path);
        } else if let Ok(file) = std::fs::File::open(&path) {
            file.sync_all().expect("sync");
            // SAFETY: advice on an open descriptor; no memory is passed.
            unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        }
    }
}

/// MB/s that one normal-priority thread per core reaches hashing `buffer` in 4 MiB pieces,
/// from now until `stop` is set.
fn foreground_rate(buffer: &[u8], stop: &AtomicBool) -> f64 {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let t = Instant::now();
    let bytes: u64 = std::thread::scope(|s| {
        let workers: Vec<_> = (0..cores)
            .map(|_| {
                s.spawn(|| {
                    let mut done = 0u64;
                    for piece in buffer.chunks(4 << 20).cycle() {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let mut hasher = Hasher::new(Algorithm::Sha256);
                        hasher.update(piece);
                        std::hint::black_box(hasher.finish());
                        done += piece.len() as u64;
                    }
                    done
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("worker")).sum()
    });
    bytes as f64 / t.elapsed().as_secs_f64() / 1e6
}

fn main() {
    let args = Args::parse();
    let root = tempfile::tempdir().expect("temp dir");
    let driver = LocalDriver::new(root.path(), false, WriterChoice::Buffered).expect("driver");
    let store = Store::new(Arc::new(driver), None);
    let layer_len = args.blob_mib << 20;
    let layers = (args.gib << 30) / layer_len;
    let t = Instant::now();
    for r in 0..args.repos {
        let repo: RepoName = format!("bench/scrub{r}").parse().expect("name");
        let mut layer_descriptors = Vec::new();
        for l in (r..layers).step_by(args.repos) {
            let bytes = layer_bytes(l as u64, layer_len);
            let digest = Digest::sha256_of(&bytes);
            store
                .blob_put(
                    &repo,
                    &digest,
                    &mut bytes.as_slice(),
                    BodyLength::Exact(layer_len as u64),
                )
                .expect("layer");
            layer_descriptors.push(descriptor("application/vnd.oci.image.layer.v1.tar", &bytes));
        }
        let config =
            serde_json::to_vec(&json!({ "architecture": "amd64", "os": "linux", "repo": r }))
                .unwrap();
        let config_digest = Digest::sha256_of(&config);
        store
            .blob_put(
                &repo,
                &config_digest,
                &mut config.as_slice(),
                BodyLength::Exact(config.len() as u64),
            )
            .expect("config");
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
            "layers": layer_descriptors,
        }))
        .unwrap();
        let tag: Reference = "latest".parse().expect("tag");
        store
            .manifest_put(
                &repo,
                &tag,
                Some("application/vnd.oci.image.manifest.v1+json"),
                &manifest,
                &[],
            )
            .expect("manifest");
    }
    println!(
        "wrote {layers} layers of {} MiB in {} repositories in {:.1} s",
        args.blob_mib,
        args.repos,
        t.elapsed().as_secs_f64()
    );

    let single = single_core_sha256(&layer_bytes(u64::MAX, 256 << 20));
    if args.cold {
        evict(root.path());
    }
    let t = Instant::now();
    let report = store
        .scrub("bench", Duration::from_secs(3600))
        .expect("scrub");
    let seconds = t.elapsed().as_secs_f64();
    assert!(!report.affected(), "a freshly written store is intact");
    let throughput = report.bytes_hashed as f64 / seconds / 1e6;
    println!(
        "{{\"cache\":\"{}\",\"bytes_hashed\":{},\"files_hashed\":{},\"seconds\":{seconds:.3},\"scrub_mb_per_s\":{throughput:.0},\"single_core_sha256_mb_per_s\":{single:.0},\"ratio\":{:.2},\"background_threads\":{}}}",
        if args.cold { "cold" } else { "warm" },
        report.bytes_hashed,
        report.files_hashed,
        throughput / single,
        berth::background::pool().current_num_threads()
    );
    if args.foreground {
        let buffer = layer_bytes(7, 64 << 20);
        let stop = AtomicBool::new(false);
        let alone = std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_secs(2));
                stop.store(true, Ordering::Relaxed);
            });
            foreground_rate(&buffer, &stop)
        });
        stop.store(false, Ordering::Relaxed);
        let (with_scrub, scrub_rate) = std::thread::scope(|s| {
            let scrubbing = s.spawn(|| {
                let t = Instant::now();
                let report = store
                    .scrub("bench", Duration::from_secs(3600))
                    .expect("scrub");
                let rate = report.bytes_hashed as f64 / t.elapsed().as_secs_f64() / 1e6;
                stop.store(true, Ordering::Relaxed);
                rate
            });
            let foreground = foreground_rate(&buffer, &stop);
            (foreground, scrubbing.join().expect("scrub"))
        });
        println!(
            "{{\"foreground_alone_mb_per_s\":{alone:.0},\"foreground_during_scrub_mb_per_s\":{with_scrub:.0},\"foreground_kept\":{:.2},\"scrub_mb_per_s_under_load\":{scrub_rate:.0}}}",
            with_scrub / alone
        );
    }
}
