//! The one rayon pool for background fan-out (the start-up dedupe pass, scrub): named, one
//! thread per core, each at the lowest CPU priority (nice 19), so background hashing uses
//! idle cores fully and yields them to request workers as soon as those want them.

use std::sync::OnceLock;

/// The lowest scheduling priority of a normal thread.
const NICEST: libc::c_int = 19;

/// The shared background pool, built on first use.
pub fn pool() -> &'static rayon::ThreadPool {
    static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        rayon::ThreadPoolBuilder::new()
            .num_threads(cores)
            .thread_name(|i| format!("berth-bg-{i}"))
            .start_handler(|_| lower_priority())
            .build()
            .expect("building the background thread pool")
    })
}

/// Lowers the calling thread's priority (on Linux, nice values are per thread). Failure
/// leaves the thread at normal priority, which costs only fairness.
fn lower_priority() {
    // SAFETY: gettid and setpriority take and return plain integers.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICEST);
    }
}
