use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

/// Manages a collection of threads.
///
/// A new thread is created every time all the existing threads are full.
/// Any idle thread will automatically die after a few seconds.
///
/// berth patch: the pool runs one job type with one function, and `spawn` hands the job back
/// when no thread can be started (a pids limit, RLIMIT_NPROC, memory), so the caller can
/// refuse it politely; upstream's `thread::spawn` panicked there, in the accept thread, and
/// the listener died for good (issue 10, point 9).
pub struct TaskPool<J: Send + 'static> {
    sharing: Arc<Sharing<J>>,
}

struct Sharing<J> {
    // list of the jobs to be done by worker threads
    todo: Mutex<VecDeque<J>>,

    // condvar that will be notified whenever a job is added to `todo`
    condvar: Condvar,

    // number of total worker threads running
    active_tasks: AtomicUsize,

    // number of idle worker threads
    waiting_tasks: AtomicUsize,

    // what every job is given to
    run: Box<dyn Fn(J) + Send + Sync>,
}

/// Minimum number of active threads.
static MIN_THREADS: usize = 4;

struct Registration<'a> {
    nb: &'a AtomicUsize,
}

impl<'a> Registration<'a> {
    fn new(nb: &'a AtomicUsize) -> Registration<'a> {
        nb.fetch_add(1, Ordering::Release);
        Registration { nb }
    }
}

impl<'a> Drop for Registration<'a> {
    fn drop(&mut self) {
        self.nb.fetch_sub(1, Ordering::Release);
    }
}

impl<J: Send + 'static> TaskPool<J> {
    /// A pool whose threads give each job to `run`.
    pub fn new(run: impl Fn(J) + Send + Sync + 'static) -> TaskPool<J> {
        let pool = TaskPool {
            sharing: Arc::new(Sharing {
                todo: Mutex::new(VecDeque::new()),
                condvar: Condvar::new(),
                active_tasks: AtomicUsize::new(0),
                waiting_tasks: AtomicUsize::new(0),
                run: Box::new(run),
            }),
        };

        // The idle threads are a head start only; `spawn` starts what is missing later.
        for _ in 0..MIN_THREADS {
            if let Err(e) = pool.add_thread() {
                log::warn!("cannot start a connection thread in advance: {}", e);
                break;
            }
        }

        pool
    }

    /// Runs `job` on an idle thread, or on a new one if none is idle. When no thread can be
    /// started the job is handed back with the reason.
    pub fn spawn(&self, job: J) -> Result<(), (J, io::Error)> {
        let mut queue = self.sharing.todo.lock().unwrap();
        queue.push_back(job);

        // berth patch: a notified thread still counts as waiting until it takes the lock
        // again, so compare against the jobs already queued for waiting threads; otherwise
        // a burst of connections queues behind busy (possibly stalled) ones.
        if self.sharing.waiting_tasks.load(Ordering::Acquire) < queue.len() {
            // The new thread takes the queue's lock before it looks for work, and this
            // function holds it, so the job just queued is still the last one on failure.
            if let Err(e) = self.add_thread() {
                let job = queue.pop_back().expect("the job queued above");
                return Err((job, e));
            }
        } else {
            self.sharing.condvar.notify_one();
        }
        Ok(())
    }

    fn add_thread(&self) -> io::Result<()> {
        let sharing = self.sharing.clone();

        thread::Builder::new().spawn(move || {
            let sharing = sharing;
            let _active_guard = Registration::new(&sharing.active_tasks);

            loop {
                let job: J = {
                    let mut todo = sharing.todo.lock().unwrap();

                    let job;
                    loop {
                        if let Some(poped_job) = todo.pop_front() {
                            job = poped_job;
                            break;
                        }
                        let _waiting_guard = Registration::new(&sharing.waiting_tasks);

                        let received =
                            if sharing.active_tasks.load(Ordering::Acquire) <= MIN_THREADS {
                                todo = sharing.condvar.wait(todo).unwrap();
                                true
                            } else {
                                let (new_lock, waitres) = sharing
                                    .condvar
                                    .wait_timeout(todo, Duration::from_millis(5000))
                                    .unwrap();
                                todo = new_lock;
                                !waitres.timed_out()
                            };

                        if !received && todo.is_empty() {
                            return;
                        }
                    }

                    job
                };

                (sharing.run)(job);
            }
        })?;
        Ok(())
    }
}

impl<J: Send + 'static> Drop for TaskPool<J> {
    fn drop(&mut self) {
        self.sharing
            .active_tasks
            .store(999_999_999, Ordering::Release);
        self.sharing.condvar.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::TaskPool;
    use std::sync::{mpsc, Arc, Barrier};
    use std::thread;
    use std::time::Duration;

    /// Patch 0007: a burst of jobs that each hold their thread gets a thread each, even while
    /// the pool's idle threads are still waking up; none waits behind another.
    #[test]
    fn a_burst_of_jobs_gets_a_thread_each() {
        const JOBS: usize = 16;
        let pool = TaskPool::new(|job: Box<dyn FnOnce() + Send>| job());
        // Let the threads started in advance reach their wait.
        thread::sleep(Duration::from_millis(100));
        let (started, starts) = mpsc::channel();
        let release = Arc::new(Barrier::new(JOBS + 1));
        for _ in 0..JOBS {
            let started = started.clone();
            let release = Arc::clone(&release);
            let job = pool.spawn(Box::new(move || {
                started.send(()).unwrap();
                release.wait();
            }));
            assert!(job.is_ok());
        }
        for n in 0..JOBS {
            let start = starts.recv_timeout(Duration::from_secs(5));
            assert!(start.is_ok(), "only {} of {} jobs started", n, JOBS);
        }
        release.wait();
    }
}
