//! `writer`: upload write throughput of the local driver's upload writers (buffered, direct,
//! io_uring), with `commit` off and on, one upload at a time and eight at once, writing 64 MiB
//! uploads as request workers do: read straight into the writer's buffer when it offers one
//! (`UploadWriter::spare`), else in 1 MiB buffers. Writers alternate within each of three rounds,
//! so a noisy machine slows them alike; the best round of each is printed, with its ratio to
//! `direct`. Also prints which writer `auto` picks here. Run: `cargo bench --bench writer`
//! (the root is in the system's temporary directory, which must not be tmpfs for O_DIRECT).

use berth::storage::driver::local::{LocalDriver, WriterChoice};
use berth::storage::driver::{Driver, StoragePath, UploadWriter};
use std::time::Instant;

const BUFFER: usize = 1 << 20;
const UPLOAD: usize = 64 << 20;
const UPLOADS: usize = 16;
const ROUNDS: usize = 3;
const WRITERS: [WriterChoice; 3] = [
    WriterChoice::Buffered,
    WriterChoice::Direct,
    WriterChoice::IoUring,
];

/// Writes one upload as a request worker would, the bytes standing in for the socket's.
fn upload(mut out: Box<dyn UploadWriter>, buf: &mut Vec<u8>) {
    let mut left = UPLOAD;
    while left > 0 {
        let n = match out.spare().expect("spare") {
            Some(spare) => {
                let n = spare.len().min(left).min(BUFFER);
                spare[..n].fill(7);
                out.commit_spare(n).expect("commit_spare");
                n
            }
            None => {
                buf.resize(BUFFER.min(left), 7);
                let n = buf.len();
                *buf = out.write(std::mem::take(buf)).expect("write");
                n
            }
        };
        left -= n;
    }
    out.commit().expect("commit");
}

/// MB/s of `UPLOADS` uploads by `threads` threads at once.
fn run(writer: WriterChoice, commit: bool, threads: usize) -> f64 {
    let root = std::env::temp_dir().join(format!("berth-writer-bench-{}", std::process::id()));
    let driver = LocalDriver::new(&root, commit, writer).expect("driver");
    let t = Instant::now();
    std::thread::scope(|s| {
        for thread in 0..threads {
            let driver = &driver;
            s.spawn(move || {
                let mut buf = Vec::new();
                for u in (thread..UPLOADS).step_by(threads) {
                    let name = format!("u{u}");
                    let path = StoragePath::from_components(["r", ".uploads", &name]).unwrap();
                    upload(driver.writer(&path).expect("writer"), &mut buf);
                }
            });
        }
    });
    let mb_s = (UPLOAD * UPLOADS) as f64 / t.elapsed().as_secs_f64() / 1e6;
    std::fs::remove_dir_all(&root).expect("cleanup");
    mb_s
}

fn main() {
    let auto = LocalDriver::new(std::env::temp_dir(), false, WriterChoice::Auto).expect("driver");
    println!("auto picks: {}", auto.writer_name());
    for commit in [false, true] {
        for threads in [1, 8] {
            let mut best = [0.0f64; WRITERS.len()];
            for _ in 0..ROUNDS {
                for (i, writer) in WRITERS.into_iter().enumerate() {
                    best[i] = best[i].max(run(writer, commit, threads));
                }
            }
            for (i, writer) in WRITERS.into_iter().enumerate() {
                println!(
                    "{:<9} commit={:<5} C={threads} {:>6.0} MB/s  {:.2}x direct  (best of \
                     {ROUNDS}, {UPLOADS} x {} MiB)",
                    format!("{writer:?}"),
                    commit,
                    best[i],
                    best[i] / best[1],
                    UPLOAD >> 20
                );
            }
        }
    }
}
