//! The io_uring writer: one thread owning one ring, fed by a channel. Appenders hand it owned
//! buffers to write at explicit offsets (and fsyncs), and get each buffer back when its write
//! completes, so a request worker reads and hashes the next buffer while the previous one is
//! being written. Nothing outside this file sees the ring.
//!
//! The maintained `io-uring` crate is driven directly: the design card's tokio-uring has had
//! no release since 2024 and would add a runtime for what is one submission loop.

use crossbeam_channel::{Receiver, Sender};
use io_uring::{IoUring, opcode, types};
use std::io;
use std::os::fd::RawFd;

/// Submission queue size; enough for every request worker to have writes in flight.
const RING_ENTRIES: u32 = 256;

/// What the writer does for one job.
enum Op {
    /// Write all of `buf` at `offset`.
    Write { buf: Vec<u8>, offset: u64 },
    /// fsync the file.
    Fsync,
}

/// A job: an operation on a file descriptor the sender keeps open until it has its reply.
struct Job {
    fd: RawFd,
    op: Op,
    reply: Sender<Completion>,
}

/// The outcome of one job, with the written buffer returned for reuse.
pub(crate) struct Completion {
    pub(crate) buf: Option<Vec<u8>>,
    pub(crate) result: io::Result<()>,
}

/// A handle to the writer thread; cheap to clone.
#[derive(Clone)]
pub(crate) struct UringWriter {
    jobs: Sender<Job>,
}

impl UringWriter {
    /// Starts the writer thread, or fails if this kernel (or sandbox) refuses io_uring.
    pub(crate) fn start() -> io::Result<UringWriter> {
        let ring = IoUring::new(RING_ENTRIES)?;
        let (jobs, queue) = crossbeam_channel::unbounded();
        std::thread::Builder::new()
            .name("berth-uring".into())
            .spawn(move || run(ring, queue))?;
        Ok(UringWriter { jobs })
    }

    /// Queues a write of `buf` at `offset` of `fd`; the completion arrives on `reply`.
    pub(crate) fn write(&self, fd: RawFd, buf: Vec<u8>, offset: u64, reply: &Sender<Completion>) {
        self.send(fd, Op::Write { buf, offset }, reply);
    }

    /// Queues an fsync of `fd`; the completion arrives on `reply`.
    pub(crate) fn fsync(&self, fd: RawFd, reply: &Sender<Completion>) {
        self.send(fd, Op::Fsync, reply);
    }

    fn send(&self, fd: RawFd, op: Op, reply: &Sender<Completion>) {
        let job = Job {
            fd,
            op,
            reply: reply.clone(),
        };
        if let Err(crossbeam_channel::SendError(job)) = self.jobs.send(job) {
            // The thread only ends when every handle is gone, so this cannot happen while a
            // handle exists; answer anyway so no caller waits forever.
            let _ = job.reply.send(Completion {
                buf: None,
                result: Err(io::Error::other("the io_uring writer thread has stopped")),
            });
        }
    }
}

/// A job in the ring, with how much of its buffer is written.
struct InFlight {
    job: Job,
    done: usize,
}

fn sqe_for(slot: usize, flight: &InFlight) -> io_uring::squeue::Entry {
    let fd = types::Fd(flight.job.fd);
    match &flight.job.op {
        Op::Write { buf, offset } => {
            let rest = &buf[flight.done..];
            opcode::Write::new(fd, rest.as_ptr(), rest.len() as u32)
                .offset(offset + flight.done as u64)
                .build()
                .user_data(slot as u64)
        }
        Op::Fsync => opcode::Fsync::new(fd).build().user_data(slot as u64),
    }
}

fn run(mut ring: IoUring, queue: Receiver<Job>) {
    let mut slots: Vec<Option<InFlight>> = Vec::new();
    let mut in_flight = 0usize;
    let mut pending: Vec<usize> = Vec::new();
    loop {
        // Block for work only when nothing is in the ring; otherwise take what has queued.
        if in_flight == 0 && pending.is_empty() {
            match queue.recv() {
                Ok(job) => pending.push(admit(&mut slots, job)),
                Err(_) => return,
            }
        }
        while in_flight + pending.len() < RING_ENTRIES as usize {
            match queue.try_recv() {
                Ok(job) => pending.push(admit(&mut slots, job)),
                Err(_) => break,
            }
        }
        for slot in pending.drain(..) {
            let entry = sqe_for(slot, slots[slot].as_ref().expect("admitted"));
            // SAFETY: the buffer and fd of the entry are owned by `slots[slot]` (the fd by
            // the appender, which waits for every completion before closing it) and stay
            // alive and unmoved until the completion for `slot` is reaped below.
            unsafe {
                ring.submission()
                    .push(&entry)
                    .expect("in_flight + pending never exceeds the ring size");
            }
            in_flight += 1;
        }
        if let Err(e) = ring.submit_and_wait(1)
            && e.kind() != io::ErrorKind::Interrupted
        {
            fail_all(&mut slots, &e);
            in_flight = 0;
            continue;
        }
        let reaped: Vec<(usize, i32)> = ring
            .completion()
            .map(|cqe| (cqe.user_data() as usize, cqe.result()))
            .collect();
        for (slot, result) in reaped {
            in_flight -= 1;
            let mut flight = slots[slot].take().expect("completion for a live slot");
            let outcome = match (&flight.job.op, result) {
                (_, r) if r < 0 => Err(io::Error::from_raw_os_error(-r)),
                (Op::Write { .. }, 0) => Err(io::ErrorKind::WriteZero.into()),
                (Op::Write { buf, .. }, n) if flight.done + (n as usize) < buf.len() => {
                    // A short write: resubmit the rest from the same slot.
                    flight.done += n as usize;
                    slots[slot] = Some(flight);
                    pending.push(slot);
                    continue;
                }
                _ => Ok(()),
            };
            let buf = match flight.job.op {
                Op::Write { buf, .. } => Some(buf),
                Op::Fsync => None,
            };
            let _ = flight.job.reply.send(Completion {
                buf,
                result: outcome,
            });
        }
    }
}

fn admit(slots: &mut Vec<Option<InFlight>>, job: Job) -> usize {
    let flight = Some(InFlight { job, done: 0 });
    match slots.iter().position(Option::is_none) {
        Some(i) => {
            slots[i] = flight;
            i
        }
        None => {
            slots.push(flight);
            slots.len() - 1
        }
    }
}

/// The ring itself failed: answer every job in it with the error.
fn fail_all(slots: &mut [Option<InFlight>], e: &io::Error) {
    for flight in slots.iter_mut().filter_map(Option::take) {
        let _ = flight.job.reply.send(Completion {
            buf: None,
            result: Err(io::Error::new(e.kind(), e.to_string())),
        });
    }
}
