//! `dedupe`: times the start-up dedupe pass. Writes a store with dedupe off in which every
//! distinct blob sits in every repository as a separate file (as a store written by another
//! registry, or with `dedupe: false`, looks), then times, on that root:
//! 1. the first pass with dedupe on (walk, verify one copy per digest, link the others);
//! 2. the next start's pass on the unchanged store (the marker: nothing walked);
//! 3. a pass after the cache was deleted (full walk and re-record, nothing left to link).
//!
//! After the first pass it counts the blob files and the inodes they are: one per distinct
//! blob, or one more per 65,000 copies on ext4, whose link limit makes the pass start a next
//! original (issue 11). Its log lines (progress at every tenth of the files) go to stderr.
//!
//! Run: `cargo bench --bench dedupe -- [--blobs 20000] [--repos 20] [--size 4096]`. Many
//! repositories sharing few blobs (issue 11): `--blobs 100000 --repos 100000` is one blob in
//! 100,000 repositories, `--blobs 400000 --repos 100000` four.

use berth::cache::lmdb::{Lmdb, LmdbOptions};
use berth::cache::{DedupeCache, Namespace};
use berth::digest::Digest;
use berth::oci::RepoName;
use berth::storage::driver::local::{LocalDriver, WriterChoice};
use berth::storage::{BodyLength, Store, dedupe_pass};
use clap::Parser;
use std::sync::Arc;
use std::time::Instant;

#[derive(Parser)]
struct Args {
    /// Blob files in the store (distinct blobs x repositories).
    #[arg(long, default_value_t = 20_000)]
    blobs: usize,
    /// Repositories; every distinct blob is in each of them.
    #[arg(long, default_value_t = 20)]
    repos: usize,
    /// Bytes per blob.
    #[arg(long, default_value_t = 4096)]
    size: usize,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn store(root: &std::path::Path, dedupe: bool) -> Store {
    let driver = LocalDriver::new(root, false, WriterChoice::Auto).expect("driver");
    let cache = dedupe.then(|| {
        let cache = Lmdb::open(&root.join(".berth/cache"), LmdbOptions::new(false))
            .and_then(|env| env.namespace(&Namespace::new("storage")))
            .expect("cache");
        DedupeCache::of(Arc::new(cache))
    });
    Store::new(Arc::new(driver), cache)
}

/// User and system CPU seconds this process has used so far.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn timed_pass(label: &str, root: &std::path::Path) {
    let store = store(root, true);
    let (t, cpu) = (Instant::now(), cpu_seconds());
    let report = dedupe_pass::run(&store).expect("pass");
    let seconds = t.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    println!(
        "{{\"pass\":\"{label}\",\"seconds\":{seconds:.3},\"cpu_seconds\":{cpu:.3},\"repositories\":{},\"walked\":{},\"digests\":{},\"linked\":{},\"reclaimed_mib\":{:.1}}}",
        report.repositories,
        report.walked,
        report.digests,
        report.linked,
        report.reclaimed as f64 / (1 << 20) as f64
    );
}

/// Prints how many blob files the bench's repositories hold and how many inodes they are.
fn count_inodes(root: &std::path::Path, repos: usize) {
    use std::os::unix::fs::MetadataExt;
    let mut inodes = std::collections::HashSet::new();
    let mut files = 0usize;
    for r in 0..repos {
        let dir = root.join(format!("bench/repo{r}/blobs/sha256"));
        for entry in std::fs::read_dir(&dir).expect("list blobs") {
            let meta = entry.expect("blob entry").metadata().expect("stat blob");
            inodes.insert((meta.dev(), meta.ino()));
            files += 1;
        }
    }
    println!(
        "{{\"blob_files\":{files},\"blob_inodes\":{}}}",
        inodes.len()
    );
}

fn main() {
    let args = Args::parse();
    // The pass's own lines (started, progress at every tenth of the files, done) on stderr,
    // timestamped, so a slow phase shows where it is.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("berth=info"))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let root = tempfile::tempdir().expect("temp dir");
    let distinct = args.blobs / args.repos;
    {
        let writer = store(root.path(), false);
        let t = Instant::now();
        for r in 0..args.repos {
            let repo: RepoName = format!("bench/repo{r}").parse().expect("name");
            for b in 0..distinct {
                let mut bytes = vec![0u8; args.size];
                bytes[..8].copy_from_slice(&(b as u64).to_le_bytes());
                let digest = Digest::sha256_of(&bytes);
                writer
                    .blob_put(
                        &repo,
                        &digest,
                        &mut bytes.as_slice(),
                        BodyLength::Exact(args.size as u64),
                    )
                    .expect("blob put");
            }
        }
        println!(
            "wrote {} blob files ({distinct} distinct x {} repositories, {} bytes each) with dedupe off in {:.1} s",
            distinct * args.repos,
            args.repos,
            args.size,
            t.elapsed().as_secs_f64()
        );
    }
    // The setup's writes reach the disk before the clock starts, so their write-back does
    // not land in the first pass's time.
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    timed_pass("first, dedupe on", root.path());
    count_inodes(root.path(), args.repos);
    timed_pass("unchanged store", root.path());
    std::fs::remove_dir_all(root.path().join(".berth/cache")).expect("delete cache");
    timed_pass("cache deleted", root.path());
}
