//! `hash`: SHA-256 throughput of the two candidate crates, sha2 (what berth uses) and ring,
//! fed 1 MiB buffers as uploads feed them. Run: `cargo bench --bench hash`.

use std::time::Instant;

const BUFFER: usize = 1 << 20;
const TOTAL: usize = 1 << 30;

fn measure(name: &str, mut run: impl FnMut(&[u8]) -> Vec<u8>) -> f64 {
    let data: Vec<u8> = (0..BUFFER).map(|i| (i * 31 % 251) as u8).collect();
    run(&data); // warm up
    let best = (0..3)
        .map(|_| {
            let t = Instant::now();
            let out = run(&data);
            std::hint::black_box(out);
            TOTAL as f64 / t.elapsed().as_secs_f64() / 1e6
        })
        .fold(0.0, f64::max);
    println!(
        "{name:<8} {best:>8.0} MB/s (best of 3, {} MiB in 1 MiB updates)",
        TOTAL >> 20
    );
    best
}

fn main() {
    let sha2 = measure("sha2", |data| {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for _ in 0..TOTAL / BUFFER {
            h.update(data);
        }
        h.finalize().to_vec()
    });
    let ring = measure("ring", |data| {
        let mut h = ring::digest::Context::new(&ring::digest::SHA256);
        for _ in 0..TOTAL / BUFFER {
            h.update(data);
        }
        h.finish().as_ref().to_vec()
    });
    println!("sha2/ring = {:.2}", sha2 / ring);
}
