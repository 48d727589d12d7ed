//! The one rayon pool for background fan-out (the start-up dedupe pass, scrub): named and
//! bounded to half the cores, so background hashing never starves the request workers.

use std::sync::OnceLock;

/// The shared background pool, built on first use.
pub fn pool() -> &'static rayon::ThreadPool {
    static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        rayon::ThreadPoolBuilder::new()
            .num_threads((cores / 2).max(1))
            .thread_name(|i| format!("berth-bg-{i}"))
            .build()
            .expect("building the background thread pool")
    })
}
