//! `writer`: upload write throughput of the local driver's upload writers (buffered, direct, io_uring),
//! with `commit` off and on, writing 64 MiB uploads in the 1 MiB buffers request workers use.
//! Also prints which writer `auto` picks here. Run: `cargo bench --bench writer`.

use berth::storage::driver::local::{LocalDriver, WriterChoice};
use berth::storage::driver::{Driver, StoragePath};
use std::time::Instant;

const BUFFER: usize = 1 << 20;
const UPLOAD: usize = 64 << 20;
const UPLOADS: usize = 16;

fn run(writer: WriterChoice, commit: bool) -> f64 {
    let root = std::env::temp_dir().join(format!("berth-writer-bench-{}", std::process::id()));
    let driver = LocalDriver::new(&root, commit, writer).expect("driver");
    let mut buf = vec![7u8; BUFFER];
    let t = Instant::now();
    for u in 0..UPLOADS {
        let path = StoragePath::from_components(["r", ".uploads", &format!("u{u}")]).unwrap();
        let mut out = driver.writer(&path).expect("writer");
        for _ in 0..UPLOAD / BUFFER {
            buf = out.write(buf).expect("write");
            buf.resize(BUFFER, 7);
        }
        out.commit().expect("commit");
    }
    let mb_s = (UPLOAD * UPLOADS) as f64 / t.elapsed().as_secs_f64() / 1e6;
    std::fs::remove_dir_all(&root).expect("cleanup");
    mb_s
}

fn main() {
    let auto = LocalDriver::new(std::env::temp_dir(), false, WriterChoice::Auto).expect("driver");
    println!("auto picks: {}", auto.writer_name());
    for commit in [false, true] {
        for writer in [
            WriterChoice::Buffered,
            WriterChoice::Direct,
            WriterChoice::IoUring,
        ] {
            let best = (0..3).map(|_| run(writer, commit)).fold(0.0, f64::max);
            println!(
                "{:<9} commit={:<5} {best:>8.0} MB/s (best of 3, {UPLOADS} x {} MiB)",
                format!("{writer:?}"),
                commit,
                UPLOAD >> 20
            );
        }
    }
}
