//! The io_uring writer: O_DIRECT writes from registered, aligned buffers, several in flight
//! per upload, submitted by one thread that owns the ring.
//!
//! The ring thread owns a fixed pool of `POOL_BUFFERS` buffers of `BUFFER` bytes, 4 KiB
//! aligned and registered with the ring (`register_buffers`), so each write is a
//! `WRITE_FIXED` that neither copies nor pins pages per call. An upload (`UringUpload`)
//! takes a buffer from the pool, hands it to the request worker to read the socket straight
//! into (`UploadWriter::spare`), and, once it is full, sends it to the ring and takes the next
//! one: the worker reads and hashes the next megabyte while earlier ones are written. At most
//! `WRITES_IN_FLIGHT` writes per upload are in the ring, and the ring thread gives each
//! buffer back to the pool when its write completes. When every pooled buffer is held (slow
//! clients hold theirs while their bodies trickle in), an upload gets an aligned buffer of
//! its own, written without registration, rather than wait on other clients' pace: memory
//! stays bounded by the uploads in progress. A ring failure other than a transient one
//! aborts the process, since writes already submitted may still use buffers and descriptors.
//!
//! The file is written through a second, O_DIRECT descriptor (as `direct` does), opened at
//! the first whole block and only if it names the same file, so the page cache is bypassed.
//! Only whole 4 KiB blocks go to the ring. When an upload is flushed (the end of each request
//! body) an unaligned tail is written through the ordinary descriptor and kept: the next
//! buffer starts with it, and rewrites that block whole. Reopening an unaligned upload reads
//! its tail back. Where the filesystem refuses O_DIRECT (tmpfs), or the direct open fails, the
//! same writes go through the ordinary descriptor. A write error is kept and reported by the
//! next call, and at the latest by `flush` or `commit`; `commit` with `commit` on fsyncs the file
//! after every write has completed. Where registering the buffers is refused (a small
//! RLIMIT_MEMLOCK without CAP_IPC_LOCK), the same buffers are written with plain `WRITE`.
//!
//! On ext4 an O_DIRECT write that extends the file cannot be done without blocking, so the
//! kernel hands it to the ring's io-wq worker; the profile of pushes (flamegraphs/index.md,
//! 167a17e) shows one `iou-wrk` thread doing them in turn while request workers read and hash
//! the next buffers. Four rings (four io-wq) measured no faster (0.69-1.03x of one ring on push
//! 64 MiB), so there is one.
//!
//! The maintained `io-uring` crate is driven directly: the design card's tokio-uring has had
//! no release since 2024 and would add a runtime for what is one submission loop.

use super::io_err;
use crate::storage::driver::{DriverError, UploadWriter, Version};
use crossbeam_channel::{Receiver, Sender};
use io_uring::{IoUring, opcode, types};
use std::alloc::Layout;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Arc;

/// Alignment of direct writes: offsets, lengths and buffer addresses.
const BLOCK: usize = 4096;
/// Size of one registered buffer: what a request worker fills before handing it to the ring.
const BUFFER: usize = 1 << 20;
/// Registered buffers shared by every upload: the writer's whole memory (64 MiB).
const POOL_BUFFERS: usize = 64;
/// Writes one upload may have in the ring at once; more than two so a burst of socket reads
/// never waits for the disk, few enough that eight uploads cannot take the whole pool.
const WRITES_IN_FLIGHT: usize = 4;

/// The registered memory: `POOL_BUFFERS` aligned buffers in one allocation, and the indices
/// of those not handed out.
struct Pool {
    base: *mut u8,
    free: Sender<u16>,
    taken: Receiver<u16>,
}

// SAFETY: the memory is only reached through `Buffer`, and each index is held by at most one
// `Buffer` at a time (the channel hands every index out once until it is given back).
unsafe impl Send for Pool {}
unsafe impl Sync for Pool {}

fn layout() -> Layout {
    Layout::from_size_align(BUFFER * POOL_BUFFERS, BLOCK).expect("a valid layout")
}

impl Pool {
    fn new() -> Pool {
        // SAFETY: the layout has a non-zero size.
        let base = unsafe { std::alloc::alloc_zeroed(layout()) };
        if base.is_null() {
            std::alloc::handle_alloc_error(layout());
        }
        let (free, taken) = crossbeam_channel::bounded(POOL_BUFFERS);
        for i in 0..POOL_BUFFERS {
            free.send(i as u16).expect("room for every index");
        }
        Pool { base, free, taken }
    }

    fn iovecs(&self) -> Vec<libc::iovec> {
        (0..POOL_BUFFERS)
            .map(|i| libc::iovec {
                // SAFETY: within the allocation.
                iov_base: unsafe { self.base.add(i * BUFFER) }.cast(),
                iov_len: BUFFER,
            })
            .collect()
    }

    /// A free buffer of the pool, or, when every one is held (by uploads whose clients send
    /// slowly, say), one allocated for this upload alone and written without registration:
    /// no push ever waits on another client's pace, and memory stays bounded by the uploads
    /// in progress (each holds at most one buffer being filled and `WRITES_IN_FLIGHT` in the
    /// ring).
    fn take(self: &Arc<Pool>) -> Buffer {
        let memory = match self.taken.try_recv() {
            Ok(index) => Memory::Pooled(index),
            Err(_) => Memory::Own(OwnBuffer::new()),
        };
        Buffer {
            pool: Arc::clone(self),
            memory,
        }
    }
}

/// An aligned buffer of `BUFFER` bytes outside the registered pool.
struct OwnBuffer(std::ptr::NonNull<u8>);

// SAFETY: the memory is owned by this value alone.
unsafe impl Send for OwnBuffer {}

fn own_layout() -> Layout {
    Layout::from_size_align(BUFFER, BLOCK).expect("a valid layout")
}

impl OwnBuffer {
    fn new() -> OwnBuffer {
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(own_layout()) };
        match std::ptr::NonNull::new(ptr) {
            Some(ptr) => OwnBuffer(ptr),
            None => std::alloc::handle_alloc_error(own_layout()),
        }
    }
}

impl Drop for OwnBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with the same layout; a `Buffer` in a job is dropped
        // only after the ring reported the job's completion.
        unsafe { std::alloc::dealloc(self.0.as_ptr(), own_layout()) }
    }
}

/// Where a buffer's memory is.
enum Memory {
    /// The pool's buffer of this index, registered with the ring.
    Pooled(u16),
    /// Allocated for one upload when the pool was empty.
    Own(OwnBuffer),
}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with the same layout. The ring that registered it is
        // gone: the ring thread holds the pool until its ring is dropped.
        unsafe { std::alloc::dealloc(self.base, layout()) }
    }
}

/// One buffer, held by an upload or by the ring; a pooled one is given back when dropped.
struct Buffer {
    pool: Arc<Pool>,
    memory: Memory,
}

impl Buffer {
    fn ptr(&self) -> *mut u8 {
        match &self.memory {
            // SAFETY: within the allocation.
            Memory::Pooled(index) => unsafe { self.pool.base.add(*index as usize * BUFFER) },
            Memory::Own(own) => own.0.as_ptr(),
        }
    }

    /// The registered buffer's index, for a fixed write.
    fn registered(&self) -> Option<u16> {
        match self.memory {
            Memory::Pooled(index) => Some(index),
            Memory::Own(_) => None,
        }
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: this `Buffer` is the only holder of its index (see `Pool`), and `&mut self`
        // keeps the slice the only reference to it.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(), BUFFER) }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if let Memory::Pooled(index) = self.memory {
            // Never full: there are as many slots as indices.
            let _ = self.pool.free.try_send(index);
        }
    }
}

/// A write of the first `len` bytes of `buf` at `offset` of `fd`, which the sender keeps open
/// until it has the reply.
struct Job {
    fd: RawFd,
    buf: Buffer,
    len: usize,
    offset: u64,
    reply: Sender<io::Result<()>>,
}

/// A handle to the ring thread and its buffer pool; cheap to clone.
#[derive(Clone)]
pub(super) struct UringWriter {
    jobs: Sender<Job>,
    pool: Arc<Pool>,
}

impl UringWriter {
    /// Starts the ring thread with its registered buffers, or fails if this kernel (or
    /// sandbox) refuses io_uring.
    pub(super) fn start() -> io::Result<UringWriter> {
        let ring = IoUring::new(POOL_BUFFERS.next_power_of_two() as u32)?;
        let pool = Arc::new(Pool::new());
        // SAFETY: the iovecs name memory that lives as long as the pool, which the ring
        // thread holds until the ring is dropped.
        let fixed = unsafe { ring.submitter().register_buffers(&pool.iovecs()) }.is_ok();
        let (jobs, queue) = crossbeam_channel::unbounded();
        let held = Arc::clone(&pool);
        std::thread::Builder::new()
            .name("berth-uring".into())
            .spawn(move || {
                run(ring, fixed, queue);
                drop(held);
            })?;
        Ok(UringWriter { jobs, pool })
    }

    fn send(&self, job: Job) {
        if let Err(crossbeam_channel::SendError(job)) = self.jobs.send(job) {
            // The thread only ends when every handle is gone, so this cannot happen while a
            // handle exists; answer anyway so no caller waits forever.
            let _ = job.reply.send(Err(io::Error::other(
                "the io_uring writer thread has stopped",
            )));
        }
    }
}

/// A job in the ring, with how much of it is written.
struct InFlight {
    job: Job,
    done: usize,
}

fn sqe_for(slot: usize, flight: &InFlight, fixed: bool) -> io_uring::squeue::Entry {
    let fd = types::Fd(flight.job.fd);
    // SAFETY: `done < len <= BUFFER`, within the buffer.
    let ptr = unsafe { flight.job.buf.ptr().add(flight.done) };
    let len = (flight.job.len - flight.done) as u32;
    let offset = flight.job.offset + flight.done as u64;
    let entry = match flight.job.buf.registered().filter(|_| fixed) {
        Some(index) => opcode::WriteFixed::new(fd, ptr, len, index)
            .offset(offset)
            .build(),
        None => opcode::Write::new(fd, ptr, len).offset(offset).build(),
    };
    entry.user_data(slot as u64)
}

fn run(mut ring: IoUring, fixed: bool, queue: Receiver<Job>) {
    let capacity = ring.params().sq_entries() as usize;
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
        while in_flight + pending.len() < capacity {
            match queue.try_recv() {
                Ok(job) => pending.push(admit(&mut slots, job)),
                Err(_) => break,
            }
        }
        for slot in pending.drain(..) {
            let entry = sqe_for(slot, slots[slot].as_ref().expect("admitted"), fixed);
            // SAFETY: the buffer and fd of the entry are owned by `slots[slot]` (the fd by
            // the upload, which waits for every reply before closing it) and stay alive
            // and unmoved until the completion for `slot` is reaped below.
            unsafe {
                ring.submission()
                    .push(&entry)
                    .expect("in_flight + pending never exceeds the ring size");
            }
            in_flight += 1;
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            // Interrupted, or the kernel short of resources or of completion-queue room:
            // reap what completed and submit again.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                ) => {}
            Err(e) => {
                // Writes submitted before may still run from buffers and descriptors that
                // handing back would let others reuse: nothing is safe to continue with.
                tracing::error!("io_uring writer: the ring failed: {e}; aborting");
                std::process::abort();
            }
        }
        let reaped: Vec<(usize, i32)> = ring
            .completion()
            .map(|cqe| (cqe.user_data() as usize, cqe.result()))
            .collect();
        for (slot, result) in reaped {
            in_flight -= 1;
            let mut flight = slots[slot].take().expect("completion for a live slot");
            let outcome = match result {
                r if r < 0 => Err(io::Error::from_raw_os_error(-r)),
                0 => Err(io::ErrorKind::WriteZero.into()),
                n if flight.done + (n as usize) < flight.job.len => {
                    // A short write: resubmit the rest from the same slot.
                    flight.done += n as usize;
                    slots[slot] = Some(flight);
                    pending.push(slot);
                    continue;
                }
                _ => Ok(()),
            };
            // The buffer goes back to the pool before the reply, so a worker woken by the
            // reply finds it there.
            let Job { buf, reply, .. } = flight.job;
            drop(buf);
            let _ = reply.send(outcome);
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

fn copy_error(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

/// The O_DIRECT descriptor of an upload, opened at its first whole block.
enum DirectFile {
    /// Not needed yet.
    Unopened,
    Open(File),
    /// The filesystem refuses O_DIRECT, or the path no longer names the upload's file (it was
    /// deleted or replaced while open): write through the ordinary descriptor.
    Refused,
}

/// One upload written through the ring.
pub(super) struct UringUpload {
    writer: UringWriter,
    /// The ordinary descriptor: unaligned tails, reading a tail back, fsync.
    file: File,
    direct: DirectFile,
    path: PathBuf,
    commit: bool,
    /// Bytes appended, written, in flight or staged.
    size: u64,
    /// File offset of the first staged byte (block aligned).
    base: u64,
    /// The buffer being filled, holding `filled` staged bytes.
    current: Option<Buffer>,
    filled: usize,
    /// The staged bytes while no buffer is held (after a flush): the unaligned tail.
    tail: Vec<u8>,
    in_flight: usize,
    reply: Sender<io::Result<()>>,
    replies: Receiver<io::Result<()>>,
    /// The first write error, reported by every later call: the upload is then cancelled.
    failed: Option<io::Error>,
    /// A note may be on the upload, for `commit` to remove (see `LocalWriter`).
    noted: bool,
}

impl UringUpload {
    /// Appends to `file` (opened read-write at `path`) from its current `size`. `direct`: the
    /// filesystem supports O_DIRECT.
    pub(super) fn open(
        writer: &UringWriter,
        file: File,
        path: PathBuf,
        size: u64,
        direct: bool,
        commit: bool,
        noted: bool,
    ) -> Result<UringUpload, DriverError> {
        let (reply, replies) = crossbeam_channel::unbounded();
        let mut upload = UringUpload {
            writer: writer.clone(),
            file,
            direct: if direct {
                DirectFile::Unopened
            } else {
                DirectFile::Refused
            },
            path,
            commit,
            size: 0,
            base: 0,
            current: None,
            filled: 0,
            tail: Vec::new(),
            in_flight: 0,
            reply,
            replies,
            failed: None,
            noted,
        };
        upload.reposition(size).map_err(|e| upload.err("read", e))?;
        Ok(upload)
    }

    fn err(&self, op: &'static str, e: io::Error) -> DriverError {
        io_err(op, &self.path, e)
    }

    /// Continues at `size`, with no buffer held and nothing in flight: the partial block
    /// before it, if any, is read back as the tail.
    fn reposition(&mut self, size: u64) -> io::Result<()> {
        self.current = None;
        self.filled = 0;
        self.size = size;
        self.base = size - size % BLOCK as u64;
        self.tail.resize((size - self.base) as usize, 0);
        self.file.read_exact_at(&mut self.tail, self.base)
    }

    /// The first write error so far, if any, as an error of this call.
    fn check(&mut self) -> Result<(), DriverError> {
        while let Ok(result) = self.replies.try_recv() {
            self.received(result);
        }
        match &self.failed {
            Some(e) => Err(self.err("write", copy_error(e))),
            None => Ok(()),
        }
    }

    fn received(&mut self, result: io::Result<()>) {
        self.in_flight -= 1;
        if let Err(e) = result {
            self.failed.get_or_insert(e);
        }
    }

    fn wait_one(&mut self) {
        let result = self
            .replies
            .recv()
            .expect("the upload holds a sender, so the channel stays open");
        self.received(result);
    }

    fn wait_all(&mut self) {
        while self.in_flight > 0 {
            self.wait_one();
        }
    }

    /// Takes a buffer from the pool (with the tail at its front) if none is being filled.
    fn current(&mut self) {
        if self.current.is_none() {
            let mut buf = self.writer.pool.take();
            buf.bytes()[..self.tail.len()].copy_from_slice(&self.tail);
            self.filled = self.tail.len();
            self.tail.clear();
            self.current = Some(buf);
        }
    }

    /// The descriptor whole blocks are written to.
    fn block_fd(&mut self) -> RawFd {
        if matches!(self.direct, DirectFile::Unopened) {
            self.direct = match self.open_direct() {
                Some(file) => DirectFile::Open(file),
                None => DirectFile::Refused,
            };
        }
        match &self.direct {
            DirectFile::Open(file) => file.as_raw_fd(),
            _ => self.file.as_raw_fd(),
        }
    }

    /// Opens the path again with O_DIRECT, if it still names the file being written.
    fn open_direct(&self) -> Option<File> {
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&self.path)
            .ok()?;
        let (a, b) = (direct.metadata().ok()?, self.file.metadata().ok()?);
        (a.dev() == b.dev() && a.ino() == b.ino()).then_some(direct)
    }

    /// Sends the whole blocks of the current buffer to the ring and keeps the rest as the
    /// tail; the buffer goes with the write (or back to the pool).
    fn send_current(&mut self) {
        let Some(mut buf) = self.current.take() else {
            return;
        };
        let whole = self.filled - self.filled % BLOCK;
        self.tail.clear();
        self.tail
            .extend_from_slice(&buf.bytes()[whole..self.filled]);
        self.filled = 0;
        if whole == 0 {
            return;
        }
        if self.in_flight == WRITES_IN_FLIGHT {
            self.wait_one();
        }
        let job = Job {
            fd: self.block_fd(),
            buf,
            len: whole,
            offset: self.base,
            reply: self.reply.clone(),
        };
        self.writer.send(job);
        self.in_flight += 1;
        self.base += whole as u64;
    }
}

impl UploadWriter for UringUpload {
    fn size(&self) -> u64 {
        self.size
    }

    fn write(&mut self, buf: Vec<u8>) -> Result<Vec<u8>, DriverError> {
        let mut bytes = &buf[..];
        while !bytes.is_empty() {
            let spare = self.spare()?.expect("this writer always has a buffer");
            let n = spare.len().min(bytes.len());
            spare[..n].copy_from_slice(&bytes[..n]);
            self.commit_spare(n)?;
            bytes = &bytes[n..];
        }
        Ok(buf)
    }

    fn spare(&mut self) -> Result<Option<&mut [u8]>, DriverError> {
        self.check()?;
        // `current` may take a buffer and put the tail in it, which moves `filled`.
        self.current();
        let filled = self.filled;
        let buf = self.current.as_mut().expect("taken above");
        Ok(Some(&mut buf.bytes()[filled..]))
    }

    fn commit_spare(&mut self, n: usize) -> Result<(), DriverError> {
        self.filled += n;
        self.size += n as u64;
        if self.filled == BUFFER {
            self.send_current();
        }
        self.check()
    }

    fn flush(&mut self) -> Result<(), DriverError> {
        self.send_current();
        self.wait_all();
        self.check()?;
        if !self.tail.is_empty() {
            self.file
                .write_all_at(&self.tail, self.base)
                .map_err(|e| io_err("write", &self.path, e))?;
        }
        Ok(())
    }

    fn save_note(&mut self, note: &[u8]) -> Result<(), DriverError> {
        self.flush()?;
        self.noted = true;
        super::xattr::set_note(&self.file, note).map_err(|e| super::note_err(&self.path, e))
    }

    fn commit(mut self: Box<Self>) -> Result<Version, DriverError> {
        self.flush()?;
        // Written: the drop's flush must not write it again, which would change the version
        // returned.
        self.tail.clear();
        // The note was the session's; the finished object is only its bytes.
        if self.noted {
            super::xattr::remove_note(&self.file).map_err(|e| self.err("remove note", e))?;
        }
        if self.commit {
            // One inode behind both descriptors: this makes the direct writes durable too
            // (the device cache and the file size).
            self.file.sync_all().map_err(|e| self.err("fsync", e))?;
        }
        let meta = self.file.metadata().map_err(|e| self.err("stat", e))?;
        Ok(super::version(&meta))
    }

    fn cancel(mut self: Box<Self>) -> Result<(), DriverError> {
        // Writes in flight would land in the removed file: wait for them, whatever they say.
        self.send_current();
        self.wait_all();
        self.tail.clear();
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err("remove", e)),
        }
    }
}

impl Drop for UringUpload {
    /// Staged bytes are part of the object: write them. The ring may still be writing from
    /// this file's descriptors, so they stay open until it is done.
    fn drop(&mut self) {
        // `flush` waits for every write in flight, whatever it returns.
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("berth-uring-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn upload(writer: &UringWriter, path: &Path, direct: bool) -> Box<UringUpload> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let size = file.metadata().unwrap().len();
        Box::new(
            UringUpload::open(writer, file, path.to_path_buf(), size, direct, true, false).unwrap(),
        )
    }

    fn every_buffer_is_back(writer: &UringWriter) {
        assert_eq!(
            writer.pool.taken.len(),
            POOL_BUFFERS,
            "every buffer is back"
        );
    }

    /// Uploads larger than the whole pool, in pieces of awkward sizes with flushes (request
    /// ends) between them and reopenings, land byte for byte; every buffer comes back.
    #[test]
    fn many_buffers_and_unaligned_tails_land_in_order() {
        let dir = tempdir();
        let writer = UringWriter::start().unwrap();
        let path = dir.join("upload");
        let mut expected = Vec::new();
        let mut w = upload(&writer, &path, true);
        let mut i = 0u32;
        while expected.len() < (POOL_BUFFERS + 9) * BUFFER {
            let len = 1 + (i as usize * 7919) % (3 * BUFFER);
            let chunk: Vec<u8> = (0..len).map(|j| (j as u32 ^ i) as u8).collect();
            expected.extend_from_slice(&chunk);
            w.write(chunk).unwrap();
            if i % 5 == 4 {
                w.flush().unwrap();
                assert_eq!(std::fs::metadata(&path).unwrap().len(), w.size());
            }
            if i % 11 == 10 {
                w.commit().unwrap();
                w = upload(&writer, &path, true);
            }
            i += 1;
        }
        assert_eq!(w.size(), expected.len() as u64);
        w.commit().unwrap();
        assert!(std::fs::read(&path).unwrap() == expected);
        every_buffer_is_back(&writer);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Where the temporary directory allows O_DIRECT, whole blocks go through the direct
    /// descriptor.
    #[test]
    fn whole_blocks_are_written_directly_where_allowed() {
        let dir = tempdir();
        let allowed = super::super::direct_io_supported(&dir);
        let writer = UringWriter::start().unwrap();
        let mut w = upload(&writer, &dir.join("upload"), allowed);
        w.write(vec![5; BUFFER + 100]).unwrap();
        w.flush().unwrap();
        assert_eq!(matches!(w.direct, DirectFile::Open(_)), allowed);
        w.commit().unwrap();
        assert_eq!(
            std::fs::read(dir.join("upload")).unwrap(),
            vec![5; BUFFER + 100]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Uploads whose clients hold every pooled buffer (bodies trickling in) do not stall
    /// another: it writes from buffers of its own (with the old `take`, this test hung).
    #[test]
    fn a_held_pool_does_not_stall_other_uploads() {
        let dir = tempdir();
        let writer = UringWriter::start().unwrap();
        let held: Vec<Buffer> = (0..POOL_BUFFERS).map(|_| writer.pool.take()).collect();
        let path = dir.join("upload");
        let mut w = upload(&writer, &path, super::super::direct_io_supported(&dir));
        w.write(vec![3; 2 * BUFFER + 5]).unwrap();
        w.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), vec![3; 2 * BUFFER + 5]);
        drop(held);
        every_buffer_is_back(&writer);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// More uploads at once than the pool can serve all finish.
    #[test]
    fn more_uploads_than_buffers_all_finish() {
        let dir = tempdir();
        let writer = UringWriter::start().unwrap();
        let uploads = POOL_BUFFERS / 2;
        std::thread::scope(|s| {
            for u in 0..uploads {
                let (writer, path) = (&writer, dir.join(format!("u{u}")));
                s.spawn(move || {
                    let mut w = upload(writer, &path, true);
                    for _ in 0..6 {
                        w.write(vec![u as u8; BUFFER]).unwrap();
                    }
                    w.commit().unwrap();
                });
            }
        });
        for u in 0..uploads {
            let bytes = std::fs::read(dir.join(format!("u{u}"))).unwrap();
            assert!(bytes.len() == 6 * BUFFER && bytes.iter().all(|&b| b == u as u8));
        }
        every_buffer_is_back(&writer);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A write the kernel refuses is reported by a later call and by `flush`; the upload is
    /// then cancelled, and a new one on the same path writes as usual.
    #[test]
    fn a_failed_write_is_reported() {
        let dir = tempdir();
        let writer = UringWriter::start().unwrap();
        let path = dir.join("upload");
        let mut w = upload(&writer, &path, false);
        // A read-only descriptor in place of the file: every write to it fails with EBADF.
        w.file = File::open(&path).unwrap();
        w.write(vec![1; 3 * BUFFER]).unwrap_or_default();
        assert!(w.flush().is_err());
        assert!(w.spare().is_err(), "the error stays");
        w.cancel().unwrap();
        assert!(!path.exists());
        let mut w = upload(&writer, &path, false);
        w.write(vec![2; BLOCK + 1]).unwrap();
        w.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), vec![2; BLOCK + 1]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
