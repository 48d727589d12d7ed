//! `dedupe`: times the start-up dedupe pass. Writes a store with dedupe off in which every
//! distinct blob sits in every repository as a separate file (as a store written by another
//! registry, or with `dedupe: false`, looks), then times, on that root:
//! 1. the first pass with dedupe on (walk, verify one copy per digest, link the others);
//! 2. the next start's pass on the unchanged store (the marker: nothing walked);
//! 3. a pass after the cache was deleted (full walk and re-record, nothing left to link).
//!
//! Run: `cargo bench --bench dedupe -- [--blobs 20000] [--repos 20] [--size 4096]`.

use berth::cache::lmdb::LmdbCache;
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
        Arc::new(LmdbCache::open(&root.join(".berth/cache"), false).expect("cache"))
            as Arc<dyn berth::cache::Cache>
    });
    Store::new(Arc::new(driver), cache)
}

fn timed_pass(label: &str, root: &std::path::Path) {
    let store = store(root, true);
    let t = Instant::now();
    let report = dedupe_pass::run(&store).expect("pass");
    let seconds = t.elapsed().as_secs_f64();
    println!(
        "{{\"pass\":\"{label}\",\"seconds\":{seconds:.3},\"repositories\":{},\"walked\":{},\"digests\":{},\"linked\":{},\"reclaimed_mib\":{:.1}}}",
        report.repositories,
        report.walked,
        report.digests,
        report.linked,
        report.reclaimed as f64 / (1 << 20) as f64
    );
}

fn main() {
    let args = Args::parse();
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
    timed_pass("first, dedupe on", root.path());
    timed_pass("unchanged store", root.path());
    std::fs::remove_dir_all(root.path().join(".berth/cache")).expect("delete cache");
    timed_pass("cache deleted", root.path());
}
