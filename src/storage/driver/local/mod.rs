//! The local filesystem driver: objects are files under one root directory.
//!
//! Atomic writes go to a dot-prefixed temporary file in the target's directory and are renamed
//! over the target. With `commit` on, file contents are fsynced before the rename and the
//! directory after it, so an acknowledged write survives power loss, not only a crash.
//!
//! Upload appends are written one of three ways (`WriterChoice`): O_DIRECT writes from
//! registered buffers through the io_uring writer (`uring`, several in flight per upload; the
//! default where O_DIRECT and io_uring are allowed), whole blocks with O_DIRECT one at a time
//! (`direct`), or positioned buffered `std::fs` writes; both special writers live in this
//! folder, since only this driver has local files to write them into. Placeholders keep
//! their holder in a user xattr (`xattr`).

mod direct;
mod uring;
mod xattr;

use super::{
    Capabilities, Driver, DriverError, Entry, EntryKind, ObjectMeta, ObjectReader, ScratchFile,
    StoragePath, UploadWriter, Version,
};
use direct::{DirectWriter, StagingPool};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use uring::{UringUpload, UringWriter};

const NAME: &str = "local";

/// Prefix of temporary files: of atomic writes and links (beside their target) and of the
/// start-up probes (at the root). `scratch_files` reports them, since a kill leaves them.
pub const TEMP_PREFIX: &str = ".tmp-";

/// Prefix of the scratch file `replace` keeps beside each document it rewrites: the replaced
/// version's file, recycled for the next version. On ext4 without a journal, every freed inode
/// is skipped by inode allocation for up to five minutes, so a delete per `index.json` write
/// made every later file creation slower. The spare holds the version before the replaced one,
/// so where `replace` can prove that (`ReplaceLog`), it writes only the bytes that differ.
const SPARE_PREFIX: &str = ".spare-";

/// How upload bytes reach the disk (the config's `storage.writer`, mapped by `app`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterChoice {
    /// `io_uring` where the filesystem supports O_DIRECT and the kernel allows io_uring,
    /// `direct` where it supports O_DIRECT but io_uring is refused (a seccomp profile, an
    /// old kernel) or the filesystem is in memory (tmpfs: handing its page copies to a kernel
    /// worker measured 0.89x of `direct` on chunked 1 MiB pushes), else `buffered`. Measured (bench/load.rs, push 64 MiB, README): O_DIRECT
    /// writes with several in flight against one synchronous direct write at a time, ops/s
    /// geometric means over 4-5 runs: 1.08-1.18x at C=1 and 0.99-1.02x at C=8 with `commit`
    /// off, 1.28-1.51x with it on; buffered writes into new page-cache pages cost up to
    /// twice the CPU per push (flamegraphs/index.md).
    Auto,
    /// Whole blocks with O_DIRECT from an aligned staging buffer, one write at a time, the
    /// tail buffered (falls back to `buffered` where O_DIRECT is unsupported).
    Direct,
    /// Positioned buffered writes with std::fs.
    Buffered,
    /// O_DIRECT writes from registered buffers through an io_uring ring, several in flight
    /// per upload (buffered writes through the ring where O_DIRECT is unsupported).
    IoUring,
}

/// Idle 1 MiB staging buffers kept for the next uploads: enough for every request worker
/// to be uploading at once on a large machine.
const STAGING_BUFFERS_KEPT: usize = 64;

/// Files under one root directory.
pub struct LocalDriver {
    root: PathBuf,
    commit: bool,
    uring: Option<UringWriter>,
    /// Why `auto` did not get the io_uring writer it asked for.
    uring_skipped: Option<String>,
    /// Upload files are written with O_DIRECT (see `direct`).
    direct: bool,
    /// The root's filesystem supports hard links (probed at start-up).
    hard_links: bool,
    /// The root's filesystem keeps user xattrs, where placeholders name their holder and
    /// uploads keep their note (probed at start-up).
    xattrs: bool,
    staging: StagingPool,
    /// The filesystem's clock when the driver was opened: files last written before it are
    /// not written by this process (`ScratchFile::before_open`).
    opened: std::time::SystemTime,
    /// What the last `replace` of each document left in its spare file.
    replaced: std::sync::Mutex<ReplaceLog>,
}

/// Whether `root` is on tmpfs, whose O_DIRECT writes are page copies like buffered ones.
fn in_memory(root: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    const TMPFS_MAGIC: libc::c_long = 0x0102_1994;
    let Ok(path) = std::ffi::CString::new(root.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs is plain data, for which all zero bytes are a valid value.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `stat` is a valid statfs to fill.
    let ok = unsafe { libc::statfs(path.as_ptr(), &mut stat) } == 0;
    ok && stat.f_type as libc::c_long == TMPFS_MAGIC
}

/// Whether files under `root` can be opened with O_DIRECT.
fn direct_io_supported(root: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = root.join(format!(
        "{TEMP_PREFIX}direct-probe-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let supported = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .is_ok();
    let _ = fs::remove_file(&probe);
    supported
}

/// Whether a file under `root` can be given a second name with link(2).
fn hard_links_supported(root: &Path) -> bool {
    let probe = root.join(format!(
        "{TEMP_PREFIX}link-probe-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let second = probe.with_extension("second");
    let supported = File::create(&probe).is_ok() && fs::hard_link(&probe, &second).is_ok();
    let _ = fs::remove_file(&probe);
    let _ = fs::remove_file(&second);
    supported
}

impl LocalDriver {
    /// A driver rooted at `root` (created if missing). `commit` fsyncs every write; `writer`
    /// picks how upload bytes are written.
    pub fn new(
        root: impl Into<PathBuf>,
        commit: bool,
        writer: WriterChoice,
    ) -> Result<LocalDriver, DriverError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|e| io_err("create root", &root, e))?;
        let direct = matches!(
            writer,
            WriterChoice::Auto | WriterChoice::Direct | WriterChoice::IoUring
        ) && direct_io_supported(&root);
        let mut uring_skipped = None;
        let uring = match writer {
            WriterChoice::IoUring => {
                Some(UringWriter::start().map_err(|e| io_err("start io_uring", &root, e))?)
            }
            // Without O_DIRECT the ring would only hand buffered writes to a kernel worker,
            // which measured slower than writing them here; on a filesystem in memory an
            // O_DIRECT write is that same copy (no device to overlap with).
            WriterChoice::Auto if direct && in_memory(&root) => {
                uring_skipped = Some("the filesystem is in memory (tmpfs)".to_string());
                None
            }
            WriterChoice::Auto if direct => UringWriter::start()
                .inspect_err(|e| uring_skipped = Some(format!("io_uring refused: {e}")))
                .ok(),
            _ => None,
        };
        let hard_links = hard_links_supported(&root);
        let xattrs = xattr::supported(&root);
        // The probes just changed the root directory, so its modification time is the
        // filesystem's own clock now, the one every file written from here on is stamped
        // with (a coarse clock, a tick behind the system's). Were the probes refused, it is
        // older: fewer files count as written before, never more.
        let opened = fs::metadata(&root)
            .and_then(|m| m.modified())
            .map_err(|e| io_err("stat", &root, e))?;
        Ok(LocalDriver {
            hard_links,
            xattrs,
            opened,
            root,
            commit,
            uring,
            uring_skipped,
            direct,
            staging: StagingPool::new(STAGING_BUFFERS_KEPT),
            replaced: std::sync::Mutex::default(),
        })
    }

    /// The writer in use: `io_uring`, `direct` or `buffered` (`io_uring (buffered)` where
    /// the filesystem refuses O_DIRECT).
    pub fn writer_name(&self) -> &'static str {
        match (&self.uring, self.direct) {
            (Some(_), true) => "io_uring",
            (Some(_), false) => "io_uring (buffered)",
            (None, true) => "direct",
            (None, false) => "buffered",
        }
    }

    /// Why `auto` did not pick io_uring where the filesystem allows O_DIRECT: the kernel or
    /// a sandbox refused io_uring, or the filesystem is in memory.
    pub fn writer_note(&self) -> Option<&str> {
        self.uring_skipped.as_deref()
    }

    fn full(&self, path: &StoragePath) -> PathBuf {
        self.root.join(path.as_str())
    }

    fn sync_dir(&self, dir: &Path) -> Result<(), DriverError> {
        if self.commit {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_err("fsync dir", dir, e))?;
        }
        Ok(())
    }

    /// Opens and exclusively locks the scratch file of `replace`, creating it if needed. A
    /// concurrent `replace` may swap another file in under the name between the open and the
    /// lock; the lock is then retaken on the file that now has the name.
    fn lock_spare(&self, spare: &Path) -> Result<File, DriverError> {
        use std::os::unix::fs::MetadataExt;
        loop {
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(spare)
                .map_err(|e| io_err("open", spare, e))?;
            file.lock().map_err(|e| io_err("lock", spare, e))?;
            let locked = file.metadata().map_err(|e| io_err("stat", spare, e))?;
            match fs::metadata(spare) {
                Ok(named) if named.ino() == locked.ino() => return Ok(file),
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("stat", spare, e)),
            }
        }
    }

    /// Writes `bytes` into the spare `file`, which the caller holds under a write lease, and
    /// stamps it newer than before; returns what it left there. Only the bytes past what the
    /// spare provably holds already are written.
    fn rewrite_spare(
        &self,
        file: &File,
        bytes: &[u8],
        unchanged_prefix: usize,
        last: Option<Replaced>,
    ) -> io::Result<FileState> {
        // Stat under the lease: nobody else has the file open, so it cannot change after.
        let found = file.metadata()?;
        // The spare is the file the last `replace` swapped out, untouched since: it holds the
        // version before the last, whose first `shared` bytes the last version has, whose
        // first `unchanged_prefix` bytes the new one has.
        let kept = match last {
            Some(r) if r.previous == Some(FileState::of(&found)) => {
                r.shared.min(unchanged_prefix).min(bytes.len())
            }
            _ => 0,
        };
        let previous = found.modified()?;
        file.write_all_at(&bytes[kept..], kept as u64)?;
        file.set_len(bytes.len() as u64)?;
        // Each version of a recycled file gets a later modification time than the one it
        // replaces, even within one tick of a coarse filesystem clock and at the same size:
        // `stat` fingerprints (the index cache's key) must never repeat for different content.
        let now = std::time::SystemTime::now();
        let stamp = if now > previous {
            now
        } else {
            previous + std::time::Duration::from_nanos(1)
        };
        file.set_modified(stamp)?;
        if self.commit {
            file.sync_data()?;
        }
        // As stored: a filesystem may keep coarser times than the stamp.
        file.metadata().map(|m| FileState::of(&m))
    }

    /// The metadata of a document `replace` just wrote, taken while it still holds the
    /// document's lock, so no other `replace` can have swapped in a version since.
    fn stat_locked(&self, target: &Path) -> Result<ObjectMeta, DriverError> {
        fs::metadata(target)
            .and_then(|m| object_meta(&m))
            .map_err(|e| io_err("stat", target, e))
    }

    fn ensure_parent(&self, target: &Path) -> Result<(), DriverError> {
        let parent = target.parent().expect("storage paths have a parent");
        fs::create_dir_all(parent).map_err(|e| io_err("create dir", parent, e))
    }

    /// Writes `fill`'s output to a temporary sibling of `target` and renames it into place.
    fn write_atomically(
        &self,
        target: &Path,
        fill: impl FnOnce(&mut File) -> io::Result<()>,
    ) -> Result<(), DriverError> {
        self.write_then_name(target, Naming::Replace, fill)
            .map(drop)
    }

    /// Writes `fill`'s output to a temporary sibling of `target` and gives it `target`'s name
    /// as `naming` says; false when `Naming::IfAbsent` found the name taken (the temporary
    /// is removed).
    fn write_then_name(
        &self,
        target: &Path,
        naming: Naming,
        fill: impl FnOnce(&mut File) -> io::Result<()>,
    ) -> Result<bool, DriverError> {
        let parent = target.parent().expect("storage paths have a parent");
        let temp = parent.join(format!("{TEMP_PREFIX}{}", uuid::Uuid::new_v4().simple()));
        let guard = TempGuard(&temp);
        // A directory just made can be removed before the file lands in it: the collector
        // removing an emptied repository also removes its parents once empty, and another
        // repository may be starting under one of them. Made again, a few times; once the
        // file is in it, the directory is not empty and stays.
        let mut attempts = 0;
        let mut file = loop {
            self.ensure_parent(target)?;
            match File::create(&temp) {
                Ok(file) => break file,
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 3 => attempts += 1,
                Err(e) => return Err(io_err("create", &temp, e)),
            }
        };
        fill(&mut file).map_err(|e| io_err("write", &temp, e))?;
        if self.commit {
            file.sync_all().map_err(|e| io_err("fsync", &temp, e))?;
        }
        drop(file);
        match naming {
            Naming::Replace => {
                fs::rename(&temp, target).map_err(|e| io_err("rename", target, e))?;
                std::mem::forget(guard);
            }
            // A link, unlike a rename, fails when the name is taken; the guard then removes
            // the temporary name, and otherwise the second name of the new file.
            Naming::IfAbsent => match fs::hard_link(&temp, target) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
                Err(e) => return Err(io_err("link", target, e)),
            },
        }
        self.sync_dir(parent)?;
        Ok(true)
    }

    /// Makes `dst`, a name another file holds, a name of `src`: a link beside it renamed over
    /// it, so readers of `dst` see one file or the other. Nothing to do when it already is.
    fn link_over(&self, src: &Path, dst: &Path) -> Result<(), DriverError> {
        let source = fs::metadata(src).map_err(|e| io_err("stat", src, e))?;
        let already_linked = fs::metadata(dst).is_ok_and(|m| identity(&m) == identity(&source));
        // The bytes are marked new before the temporary name exists, so it is never older
        // than the link: a collector judging leftovers by age cannot take it for one (the
        // inode's time is the source's, maybe old). `dst` is then the same inode.
        touch(src)?;
        if !already_linked {
            let parent = dst.parent().expect("storage paths have a parent");
            let temp = parent.join(format!("{TEMP_PREFIX}{}", uuid::Uuid::new_v4().simple()));
            fs::hard_link(src, &temp).map_err(|e| io_err("link", src, e))?;
            let guard = TempGuard(&temp);
            fs::rename(&temp, dst).map_err(|e| io_err("rename", dst, e))?;
            std::mem::forget(guard);
        }
        self.sync_dir(dst.parent().expect("storage paths have a parent"))
    }
}

/// Sets a file's modification time to now, by name (one system call).
fn touch(path: &Path) -> Result<(), DriverError> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|e| {
        io_err(
            "touch",
            path,
            io::Error::new(io::ErrorKind::InvalidInput, e),
        )
    })?;
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
    ];
    // SAFETY: `c_path` is a NUL-terminated string and `times` two timespecs, both alive for
    // the call.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c_path.as_ptr(), times.as_ptr(), 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io_err("touch", path, io::Error::last_os_error()))
    }
}

/// Documents whose last `replace` is remembered, at about 200 bytes each: under 1 MiB however
/// many repositories there are. Past it, one goes for each new one, which costs that one a
/// whole write at its next `replace`.
const REPLACE_LOG_ENTRIES: usize = 4096;

/// What the last `replace` of each document did, so that the next one can prove what the
/// document's spare file holds and write only the bytes that differ: at 100,000 tags, copying
/// the whole 21 MB `index.json` into the page cache was three quarters of a manifest PUT.
/// Keyed by a hash of the document's path: two paths of one hash share an entry, which only
/// costs whole writes, since an entry is trusted only for the spare file it names.
#[derive(Default)]
struct ReplaceLog {
    last: std::collections::HashMap<u64, Replaced>,
}

/// One `replace` of a document, as it left the document's two files.
#[derive(Clone, Copy)]
struct Replaced {
    /// The file swapped in under the document's name, as written.
    current: FileState,
    /// How many leading bytes the version written shares with the one it replaced (the
    /// caller's `unchanged_prefix`).
    shared: usize,
    /// The file swapped out, now the spare, as the `replace` before wrote it; `None` when
    /// that is unknown (nothing remembered, or no swap).
    previous: Option<FileState>,
}

impl ReplaceLog {
    /// Forgets and returns the last `replace` of `path`.
    fn take(&mut self, path: u64) -> Option<Replaced> {
        self.last.remove(&path)
    }

    fn put(&mut self, path: u64, replaced: Replaced) {
        if self.last.len() >= REPLACE_LOG_ENTRIES
            && let Some(&any) = self.last.keys().next()
        {
            self.last.remove(&any);
        }
        self.last.insert(path, replaced);
    }
}

/// A file's content as `replace` wrote it, told by `stat`: an inode never holds two versions
/// with the same size and modification time, since `replace` stamps each version later than
/// the last, and a write by anyone else moves the time on too.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct FileState {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl FileState {
    fn of(m: &fs::Metadata) -> FileState {
        use std::os::unix::fs::MetadataExt;
        FileState {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        }
    }
}

fn path_key(path: &StoragePath) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    path.as_str().hash(&mut h);
    h.finish()
}

/// How `write_then_name` gives a written file its name.
#[derive(Clone, Copy)]
enum Naming {
    /// Over whatever holds it (rename).
    Replace,
    /// Only if nothing does (link).
    IfAbsent,
}

/// A write lease on a file (fcntl F_SETLEASE), which the kernel grants only when no one else
/// (no other descriptor, in any process) has the file open: proof that rewriting it in place
/// cannot tear anybody's read. Released on drop.
struct SoleOpener<'f>(&'f File);

impl<'f> SoleOpener<'f> {
    fn try_take(file: &'f File) -> Option<SoleOpener<'f>> {
        use std::os::fd::AsRawFd;
        // Someone opening the file while the lease is held waits for its release, and the
        // kernel signals the holder with SIGIO, whose default action ends the process;
        // berth has no use for SIGIO.
        static IGNORE_SIGIO: std::sync::Once = std::sync::Once::new();
        // SAFETY: setting a signal's disposition to SIG_IGN has no handler to run.
        IGNORE_SIGIO.call_once(|| unsafe {
            libc::signal(libc::SIGIO, libc::SIG_IGN);
        });
        // SAFETY: fcntl on a descriptor `file` keeps open; no memory is passed.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLEASE, libc::F_WRLCK) };
        (rc == 0).then_some(SoleOpener(file))
    }
}

impl Drop for SoleOpener<'_> {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: as in `try_take`. A failure leaves the lease to end with the descriptor.
        unsafe { libc::fcntl(self.0.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
    }
}

/// Swaps two directory entries in one step. `Ok(false)`: the filesystem cannot, or `b` is
/// missing, so the caller falls back to a plain rename.
fn exchange(a: &Path, b: &Path) -> io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
    };
    let (a, b) = (c_path(a)?, c_path(b)?);
    // SAFETY: both are valid NUL-terminated paths that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOENT | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => Ok(false),
        _ => Err(e),
    }
}

/// Removes a temporary file unless disarmed with `mem::forget`.
struct TempGuard<'a>(&'a Path);

impl Drop for TempGuard<'_> {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.0);
    }
}

/// Inode, size and both timestamps: a file replaced by rename gets a new inode, and one
/// rewritten in place a new mtime and ctime.
fn fingerprint(m: &fs::Metadata) -> u64 {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        m.ino(),
        m.dev(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    )
        .hash(&mut h);
    h.finish()
}

/// Device and inode: what hard links share.
fn object_meta(m: &fs::Metadata) -> io::Result<ObjectMeta> {
    Ok(ObjectMeta {
        size: if m.is_dir() { 0 } else { m.len() },
        modified: m.modified()?,
        is_dir: m.is_dir(),
        fingerprint: fingerprint(m),
        identity: Some(identity(m)),
        version: version(m),
    })
}

/// `Conflict` unless the document at `target` is at version `expected`.
fn check_version(target: &Path, expected: &Version) -> Result<(), DriverError> {
    let found = match fs::metadata(target) {
        Ok(m) => Some(version(&m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err("stat", target, e)),
    };
    if found.as_ref() == Some(expected) {
        return Ok(());
    }
    Err(DriverError::Conflict {
        driver: NAME,
        path: target.display().to_string(),
        found: found.map_or_else(|| "absent".to_string(), |v| v.to_string()),
    })
}

/// The version `replace` compares: the fingerprint, which every rewrite or swap changes.
fn version(m: &fs::Metadata) -> Version {
    Version::new(format!("{:016x}", fingerprint(m)))
}

fn identity(m: &fs::Metadata) -> u64 {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (m.dev(), m.ino()).hash(&mut h);
    h.finish()
}

/// A failed `save_note`: `Unsupported` where the filesystem keeps no user xattrs.
fn note_err(path: &Path, e: io::Error) -> DriverError {
    if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
        DriverError::Unsupported {
            driver: NAME,
            op: "save note",
            path: path.display().to_string(),
        }
    } else {
        io_err("save note", path, e)
    }
}

fn io_err(op: &'static str, path: &Path, source: io::Error) -> DriverError {
    if source.kind() == io::ErrorKind::NotFound {
        DriverError::NotFound {
            driver: NAME,
            path: path.display().to_string(),
        }
    } else {
        DriverError::Io {
            driver: NAME,
            op,
            path: path.display().to_string(),
            source,
        }
    }
}

impl Driver for LocalDriver {
    fn name(&self) -> &'static str {
        NAME
    }

    fn get(&self, path: &StoragePath) -> Result<Vec<u8>, DriverError> {
        let full = self.full(path);
        let mut file = File::open(&full).map_err(|e| io_err("open", &full, e))?;
        // `replace` rewrites a swapped-out file only under an exclusive lock, so while this
        // shared one is held the file holds one whole version.
        file.lock_shared().map_err(|e| io_err("lock", &full, e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| io_err("read", &full, e))?;
        Ok(bytes)
    }

    fn reader(&self, path: &StoragePath, offset: u64) -> Result<ObjectReader, DriverError> {
        let full = self.full(path);
        let mut file = File::open(&full).map_err(|e| io_err("open", &full, e))?;
        let size = file.metadata().map_err(|e| io_err("stat", &full, e))?.len();
        if offset > 0 {
            file.seek(SeekFrom::Start(offset))
                .map_err(|e| io_err("seek", &full, e))?;
        }
        Ok(ObjectReader {
            reader: Box::new(file),
            size,
        })
    }

    fn stat(&self, path: &StoragePath) -> Result<Option<ObjectMeta>, DriverError> {
        let full = self.full(path);
        match fs::metadata(&full) {
            Ok(m) => object_meta(&m)
                .map(Some)
                .map_err(|e| io_err("stat", &full, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("stat", &full, e)),
        }
    }

    fn put(&self, path: &StoragePath, bytes: &[u8]) -> Result<(), DriverError> {
        self.write_atomically(&self.full(path), |f| f.write_all(bytes))
    }

    fn create(&self, path: &StoragePath, bytes: &[u8]) -> Result<bool, DriverError> {
        self.write_then_name(&self.full(path), Naming::IfAbsent, |f| f.write_all(bytes))
    }

    fn replace(
        &self,
        path: &StoragePath,
        bytes: &[u8],
        unchanged_prefix: usize,
        expected: Option<&Version>,
    ) -> Result<ObjectMeta, DriverError> {
        let target = self.full(path);
        self.ensure_parent(&target)?;
        let spare = target.with_file_name(format!("{SPARE_PREFIX}{}", path.file_name()));
        // Every `replace` of the document, in any process, holds this lock until its swap is
        // done, so the version compared below is still the one there when the swap happens.
        let file = self.lock_spare(&spare)?;
        if let Some(expected) = expected {
            check_version(&target, expected)?;
        }
        let key = path_key(path);
        // Forgotten before either file changes: if this call fails or writes around the
        // spare, what the log said about the spare no longer holds.
        let last = self
            .replaced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take(key);
        let Some(lease) = SoleOpener::try_take(&file) else {
            // A reader (perhaps another program reading the layout without berth's locks)
            // still has the swapped-out version open: leave it be and write a new file.
            self.write_atomically(&target, |f| f.write_all(bytes))?;
            return self.stat_locked(&target);
        };
        let written = self
            .rewrite_spare(&file, bytes, unchanged_prefix, last)
            .map_err(|e| io_err("write", &spare, e))?;
        // Released before the swap: once the file has the name, readers must open it freely.
        drop(lease);
        let swapped = exchange(&spare, &target).map_err(|e| io_err("exchange", &target, e))?;
        if !swapped {
            fs::rename(&spare, &target).map_err(|e| io_err("rename", &target, e))?;
        }
        let now = self.stat_locked(&target)?;
        drop(file);
        self.sync_dir(target.parent().expect("storage paths have a parent"))?;
        self.replaced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .put(
                key,
                Replaced {
                    current: written,
                    shared: unchanged_prefix.min(bytes.len()),
                    // The last version's file is the spare now, unless the swap fell back to a
                    // rename, which removed it.
                    previous: last.filter(|_| swapped).map(|r| r.current),
                },
            );
        Ok(now)
    }

    fn list(&self, dir: Option<&StoragePath>) -> Result<Vec<Entry>, DriverError> {
        let full = dir.map_or_else(|| self.root.clone(), |d| self.full(d));
        let entries = match fs::read_dir(&full) {
            Ok(entries) => entries,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(Vec::new());
            }
            Err(e) => return Err(io_err("list", &full, e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_err("list", &full, e))?;
            // Non-UTF-8 names cannot be repository names, tags or digests: skip them.
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            // The directory entry's own type: no `stat` for a directory; a file's size and
            // time come from a `stat` relative to the open directory, not a path walk.
            let kind = match entry.file_type() {
                Ok(t) if t.is_dir() => EntryKind::Prefix,
                file_type => {
                    // A symbolic link is listed as what it points to, as `stat` sees it.
                    let meta = if file_type.is_ok_and(|t| t.is_symlink()) {
                        fs::metadata(entry.path())
                    } else {
                        entry.metadata()
                    };
                    match meta {
                        Ok(m) if m.is_dir() => EntryKind::Prefix,
                        Ok(m) => EntryKind::Object {
                            size: m.len(),
                            modified: m.modified().map_err(|e| io_err("stat", &entry.path(), e))?,
                        },
                        // Removed since the directory was read, or a dangling link.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(io_err("stat", &entry.path(), e)),
                    }
                }
            };
            names.push(Entry { name, kind });
        }
        // A document's spare is part of the document (`delete` removes both), so a directory
        // holding only documents lists as just those. A spare whose document is gone stays
        // listed: it is a leftover (`scratch_files`) and keeps the directory from being empty.
        let documents: std::collections::HashSet<String> = names
            .iter()
            .filter(|e| !e.name.starts_with(SPARE_PREFIX))
            .map(|e| e.name.clone())
            .collect();
        names.retain(|e| {
            e.name
                .strip_prefix(SPARE_PREFIX)
                .is_none_or(|document| !documents.contains(document))
        });
        Ok(names)
    }

    fn scratch_files(&self, dir: Option<&StoragePath>) -> Result<Vec<ScratchFile>, DriverError> {
        let mut found = Vec::new();
        for name in self.list(dir)?.into_iter().map(|e| e.name) {
            // Spares still listed have lost their document (see `list`).
            if !name.starts_with(TEMP_PREFIX) && !name.starts_with(SPARE_PREFIX) {
                continue;
            }
            let path = match dir {
                Some(d) => d.join(&name)?,
                None => StoragePath::from_components([name.as_str()])?,
            };
            // Gone already: the write finished (renamed it into place) or gave up.
            let Some(meta) = self.stat(&path)? else {
                continue;
            };
            if meta.is_dir {
                continue;
            }
            found.push(ScratchFile {
                before_open: meta.modified < self.opened,
                path,
                meta,
            });
        }
        Ok(found)
    }

    fn delete(&self, path: &StoragePath) -> Result<(), DriverError> {
        let full = self.full(path);
        let meta = fs::symlink_metadata(&full).map_err(|e| io_err("stat", &full, e))?;
        let result = if meta.is_dir() {
            fs::remove_dir_all(&full)
        } else {
            fs::remove_file(&full)
        };
        result.map_err(|e| io_err("delete", &full, e))?;
        if !meta.is_dir() {
            let spare = full.with_file_name(format!("{SPARE_PREFIX}{}", path.file_name()));
            match fs::remove_file(&spare) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("delete", &spare, e)),
            }
        }
        self.sync_dir(full.parent().expect("storage paths have a parent"))
    }

    fn touch(&self, path: &StoragePath) -> Result<(), DriverError> {
        let full = self.full(path);
        let c_path = std::ffi::CString::new(full.as_os_str().as_encoded_bytes()).map_err(|e| {
            io_err(
                "touch",
                &full,
                io::Error::new(io::ErrorKind::InvalidInput, e),
            )
        })?;
        // SAFETY: a valid NUL-terminated path; a null `times` means "now" for both times.
        let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c_path.as_ptr(), std::ptr::null(), 0) };
        if rc != 0 {
            return Err(io_err("touch", &full, io::Error::last_os_error()));
        }
        Ok(())
    }

    fn delete_dir(&self, dir: &StoragePath) -> Result<(), DriverError> {
        let full = self.full(dir);
        match fs::remove_dir(&full) {
            Ok(()) => self.sync_dir(full.parent().expect("storage paths have a parent")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove directory", &full, e)),
        }
    }

    fn writer(&self, path: &StoragePath) -> Result<Box<dyn UploadWriter>, DriverError> {
        let full = self.full(path);
        // Not O_APPEND: writes in flight carry explicit offsets, so they land in order
        // whatever order they complete in.
        let open = || {
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&full)
        };
        // The directory is there for every chunk after the first: no mkdir per chunk.
        let file = match open() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.ensure_parent(&full)?;
                open()
            }
            opened => opened,
        }
        .map_err(|e| io_err("open", &full, e))?;
        let size = file.metadata().map_err(|e| io_err("stat", &full, e))?.len();
        if let Some(writer) = &self.uring {
            return Ok(Box::new(UringUpload::open(
                writer,
                file,
                full,
                size,
                self.direct,
                self.commit,
                self.xattrs && size > 0,
            )?));
        }
        let direct = if self.direct {
            Some(
                DirectWriter::open(&full, &file, size, &self.staging)
                    .map_err(|e| io_err("open", &full, e))?,
            )
        } else {
            None
        };
        Ok(Box::new(LocalWriter {
            file,
            path: full,
            size,
            commit: self.commit,
            direct,
            noted: self.xattrs && size > 0,
        }))
    }

    fn upload_note(&self, path: &StoragePath) -> Result<Option<Vec<u8>>, DriverError> {
        let full = self.full(path);
        xattr::note(&full).map_err(|e| io_err("read note", &full, e))
    }

    fn rename(&self, from: &StoragePath, to: &StoragePath) -> Result<(), DriverError> {
        let (src, dst) = (self.full(from), self.full(to));
        self.ensure_parent(&dst)?;
        fs::rename(&src, &dst).map_err(|e| io_err("rename", &src, e))?;
        self.sync_dir(dst.parent().expect("storage paths have a parent"))
    }

    fn link(&self, from: &StoragePath, to: &StoragePath) -> Result<(), DriverError> {
        if !self.hard_links {
            return self.copy(from, to);
        }
        // The common cases cost few path walks (the start-up pass links 300,000 names over
        // 100,000 repositories): a new name is one link and one touch; a name held by a
        // separate copy is a link beside it and a rename over it.
        let (src, dst) = (self.full(from), self.full(to));
        let mut made_parent = false;
        loop {
            match fs::hard_link(&src, &dst) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound && !made_parent => {
                    // Either the source is gone or the target's directory does not exist yet.
                    fs::symlink_metadata(&src).map_err(|e| io_err("stat", &src, e))?;
                    self.ensure_parent(&dst)?;
                    made_parent = true;
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return self.link_over(&src, &dst);
                }
                Err(e) => return Err(io_err("link", &src, e)),
            }
        }
        touch(&dst)?;
        self.sync_dir(dst.parent().expect("storage paths have a parent"))
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            hard_links: self.hard_links,
            local_files: true,
            recycled_documents: true,
            rename: true,
            direct_io: self.direct,
            placeholders: self.xattrs,
            upload_notes: self.xattrs,
            sealed_uploads: false,
            // A staged upload is placed by one rename: nothing for a direct write to save.
            direct_uploads: false,
            presigned_urls: false,
        }
    }

    /// An empty file written and renamed into place like `put`, its holder in a user xattr.
    fn put_placeholder(&self, path: &StoragePath, holder: &StoragePath) -> Result<(), DriverError> {
        if !self.xattrs {
            return Err(DriverError::Unsupported {
                driver: NAME,
                op: "put placeholder",
                path: path.to_string(),
            });
        }
        self.write_atomically(&self.full(path), |f| xattr::set_holder(f, holder.as_str()))
    }

    fn placeholder_holder(&self, path: &StoragePath) -> Result<Option<StoragePath>, DriverError> {
        let full = self.full(path);
        let held = xattr::holder(&full).map_err(|e| io_err("read placeholder", &full, e))?;
        held.map(|h| StoragePath::from_components(h.split('/')))
            .transpose()
    }

    fn file(&self, path: &StoragePath) -> Result<Option<File>, DriverError> {
        let full = self.full(path);
        File::open(&full)
            .map(Some)
            .map_err(|e| io_err("open", &full, e))
    }

    fn copy(&self, from: &StoragePath, to: &StoragePath) -> Result<(), DriverError> {
        let src = self.full(from);
        let mut source = File::open(&src).map_err(|e| io_err("open", &src, e))?;
        self.write_atomically(&self.full(to), |f| io::copy(&mut source, f).map(drop))
    }
}

/// An upload written with std::fs, directly (`DirectWriter`) or buffered.
struct LocalWriter {
    file: File,
    path: PathBuf,
    /// Bytes handed to `write`, written or staged.
    size: u64,
    commit: bool,
    direct: Option<DirectWriter>,
    /// A note may be on the upload (saved by this writer, or by an earlier one on a file
    /// that has bytes), for `commit` to remove.
    noted: bool,
}

impl UploadWriter for LocalWriter {
    fn size(&self) -> u64 {
        self.size
    }

    fn write(&mut self, buf: Vec<u8>) -> Result<Vec<u8>, DriverError> {
        let offset = self.size;
        self.size += buf.len() as u64;
        match self.direct.as_mut() {
            Some(direct) => direct.append(&buf),
            None => self.file.write_all_at(&buf, offset),
        }
        .map_err(|e| io_err("write", &self.path, e))?;
        Ok(buf)
    }

    fn spare(&mut self) -> Result<Option<&mut [u8]>, DriverError> {
        match self.direct.as_mut() {
            Some(direct) => match direct.spare() {
                Ok(buf) => Ok(Some(buf)),
                Err(e) => Err(io_err("write", &self.path, e)),
            },
            None => Ok(None),
        }
    }

    fn commit_spare(&mut self, n: usize) -> Result<(), DriverError> {
        self.size += n as u64;
        match self.direct.as_mut() {
            Some(direct) => direct
                .commit_spare(n)
                .map_err(|e| io_err("write", &self.path, e)),
            None => Ok(()),
        }
    }

    fn flush(&mut self) -> Result<(), DriverError> {
        match self.direct.as_mut() {
            Some(direct) => direct
                .flush(&self.file)
                .map_err(|e| io_err("write", &self.path, e)),
            None => Ok(()),
        }
    }

    fn save_note(&mut self, note: &[u8]) -> Result<(), DriverError> {
        self.flush()?;
        self.noted = true;
        xattr::set_note(&self.file, note).map_err(|e| note_err(&self.path, e))
    }

    fn commit(mut self: Box<Self>) -> Result<Version, DriverError> {
        self.flush()?;
        // Written: the drop's flush must not write the staged tail again, which would change
        // the version returned.
        self.direct = None;
        // The note was the session's; the finished object is only its bytes.
        if self.noted {
            xattr::remove_note(&self.file).map_err(|e| io_err("remove note", &self.path, e))?;
        }
        if self.commit {
            self.file
                .sync_all()
                .map_err(|e| io_err("fsync", &self.path, e))?;
        }
        let meta = self
            .file
            .metadata()
            .map_err(|e| io_err("stat", &self.path, e))?;
        Ok(version(&meta))
    }

    fn cancel(mut self: Box<Self>) -> Result<(), DriverError> {
        // Writes still in flight would land in the removed file; their errors no longer
        // matter.
        let _ = self.flush();
        match fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &self.path, e)),
        }
    }
}

impl Drop for LocalWriter {
    /// Staged bytes are part of the object: write them.
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The driver suite on every writer, with `commit` off and on: one test per pair, so the
    /// names show the matrix (`conformance::direct::commit`, ...).
    mod conformance {
        use super::*;

        fn run(writer: WriterChoice, commit: bool) {
            let dir = tempdir();
            let driver = LocalDriver::new(&dir, commit, writer).unwrap();
            super::super::super::conformance::run(&driver);
            fs::remove_dir_all(&dir).unwrap();
        }

        macro_rules! writers {
            ($($name:ident => $writer:expr),* $(,)?) => {$(
                mod $name {
                    use super::*;

                    #[test]
                    fn no_commit() {
                        run($writer, false);
                    }

                    #[test]
                    fn commit() {
                        run($writer, true);
                    }
                }
            )*};
        }

        writers! {
            buffered => WriterChoice::Buffered,
            direct => WriterChoice::Direct,
            io_uring => WriterChoice::IoUring,
        }

        /// Where tmpfs refuses O_DIRECT (before Linux 6.6), the io_uring writer writes through
        /// the ordinary descriptor; where it allows it, directly.
        #[test]
        fn io_uring_on_tmpfs() {
            let shm = Path::new("/dev/shm");
            assert!(shm.is_dir(), "this test needs a tmpfs at /dev/shm");
            let dir = shm.join(format!("berth-local-{}", uuid::Uuid::new_v4()));
            let driver = LocalDriver::new(&dir, true, WriterChoice::IoUring).unwrap();
            super::super::super::conformance::run(&driver);
            fs::remove_dir_all(&dir).unwrap();
        }
    }

    /// On tmpfs `auto` writes directly: its O_DIRECT writes are page copies, cheaper done
    /// by the request worker than handed to the ring's kernel worker.
    #[test]
    fn auto_on_tmpfs_writes_directly() {
        let shm = Path::new("/dev/shm");
        assert!(shm.is_dir(), "this test needs a tmpfs at /dev/shm");
        let dir = shm.join(format!("berth-local-{}", uuid::Uuid::new_v4()));
        let driver = LocalDriver::new(&dir, false, WriterChoice::Auto).unwrap();
        let expected = if direct_io_supported(&dir) {
            "direct"
        } else {
            "buffered"
        };
        assert_eq!(driver.writer_name(), expected);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// `replace` recycles the swapped-out file only when nobody has it open: a reader that
    /// opened an old version keeps reading exactly those bytes.
    #[test]
    fn replace_recycles_only_files_nobody_reads() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempdir();
        let driver = LocalDriver::new(&dir, false, WriterChoice::Buffered).unwrap();
        let doc = StoragePath::from_components(["r", "index.json"]).unwrap();
        let inode = || fs::metadata(dir.join("r/index.json")).unwrap().ino();
        driver.replace(&doc, b"version 1", 0, None).unwrap();
        driver.replace(&doc, b"version 2", 0, None).unwrap();
        let (first, second) = (inode(), {
            driver.replace(&doc, b"version 3", 0, None).unwrap();
            inode()
        });
        driver.replace(&doc, b"version 4", 0, None).unwrap();
        assert_eq!(inode(), first, "with no reader, two files take turns");
        // A reader holds version 4 open; versions 5 and 6 must leave its bytes alone.
        let mut reader = File::open(dir.join("r/index.json")).unwrap();
        driver.replace(&doc, b"version 5", 0, None).unwrap();
        assert_eq!(inode(), second);
        driver
            .replace(&doc, b"version 6 is longer", 0, None)
            .unwrap();
        assert_ne!(inode(), first, "the file being read was not rewritten");
        let mut held = String::new();
        reader.read_to_string(&mut held).unwrap();
        assert_eq!(held, "version 4");
        assert_eq!(driver.get(&doc).unwrap(), b"version 6 is longer");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Version `n` of a document whose versions share their first 4096 bytes, `fill`.
    fn shared_prefix_version(fill: u8, n: u8) -> Vec<u8> {
        let mut bytes = vec![fill; 4096];
        bytes.push(b'0' + n);
        bytes
    }

    /// Rewrites the first byte of `file` behind the driver's back; with `keep_time`, puts its
    /// modification time back, so that nothing `stat` shows tells of the change.
    fn tamper(file: &Path, keep_time: bool) {
        let f = File::options().write(true).open(file).unwrap();
        let time = f.metadata().unwrap().modified().unwrap();
        f.write_all_at(b"#", 0).unwrap();
        if keep_time {
            f.set_modified(time).unwrap();
        }
    }

    /// With honest hints, `replace` leaves the spare's prefix alone only while the spare is
    /// what the driver left there: a spare written by someone else is rewritten whole. A
    /// change `stat` cannot see is kept, which shows that only the tail was written.
    #[test]
    fn replace_rewrites_a_spare_it_cannot_vouch_for() {
        let dir = tempdir();
        let driver = LocalDriver::new(&dir, false, WriterChoice::Buffered).unwrap();
        let doc = StoragePath::from_components(["r", "index.json"]).unwrap();
        let spare = dir.join("r/.spare-index.json");
        let v = |n| shared_prefix_version(b'=', n);
        driver.replace(&doc, &v(1), 0, None).unwrap();
        driver.replace(&doc, &v(2), 4096, None).unwrap();
        // The spare holds version 1; changed, it must not lend its prefix to version 3.
        tamper(&spare, false);
        driver.replace(&doc, &v(3), 4096, None).unwrap();
        assert!(
            driver.get(&doc).unwrap() == v(3),
            "a tampered spare was trusted"
        );
        // The spare holds version 2, changed invisibly: version 4 keeps its first byte.
        tamper(&spare, true);
        driver.replace(&doc, &v(4), 4096, None).unwrap();
        let read = driver.get(&doc).unwrap();
        assert_eq!(read[0], b'#', "the prefix was written again");
        assert!(read[1..] == v(4)[1..]);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A `replace` that writes a new file because a reader holds the spare leaves the spare
    /// as it was, two versions behind the next one's hint: the next `replace` writes it whole.
    #[test]
    fn replace_after_writing_around_a_held_spare_trusts_nothing() {
        let dir = tempdir();
        let driver = LocalDriver::new(&dir, false, WriterChoice::Buffered).unwrap();
        let doc = StoragePath::from_components(["r", "index.json"]).unwrap();
        driver
            .replace(&doc, &shared_prefix_version(b'A', 1), 0, None)
            .unwrap();
        driver
            .replace(&doc, &shared_prefix_version(b'A', 2), 4096, None)
            .unwrap();
        let reader = File::open(dir.join("r/index.json")).unwrap();
        driver
            .replace(&doc, &shared_prefix_version(b'A', 3), 4096, None)
            .unwrap();
        // The spare is version 2's file, which the reader holds: version 4 goes around it.
        driver
            .replace(&doc, &shared_prefix_version(b'B', 4), 0, None)
            .unwrap();
        drop(reader);
        // Version 5 shares 4096 bytes with version 4, none with version 2 in the spare.
        driver
            .replace(&doc, &shared_prefix_version(b'B', 5), 4096, None)
            .unwrap();
        assert!(driver.get(&doc).unwrap() == shared_prefix_version(b'B', 5));
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Issue 14: two drivers on one directory (two processes serving one root: each keeps
    /// its own log) replace one document in turns, each giving honest hints about its own
    /// versions only. A spare the other driver rewrote is never trusted for a prefix, so
    /// every version reads back whole, whatever the interleaving.
    #[test]
    fn replace_sees_a_spare_another_process_rewrote() {
        let dir = tempdir();
        let doc = StoragePath::from_components(["r", "index.json"]).unwrap();
        let drivers = [b'X', b'Y'].map(|fill| {
            (
                LocalDriver::new(&dir, false, WriterChoice::Buffered).unwrap(),
                fill,
            )
        });
        // Which driver replaces next: runs of one or two by each, so the spare each finds is
        // sometimes its own file, sometimes one the other wrote since.
        let turns = [0, 0, 1, 0, 1, 1, 0, 0, 1, 0, 0, 1, 1, 1, 0, 1];
        let mut written = [false; 2];
        for (n, &turn) in turns.iter().enumerate() {
            let (driver, fill) = &drivers[turn];
            let version = shared_prefix_version(*fill, n as u8);
            // Versions of one driver share their first 4096 bytes; the other's differ there.
            let hint = if written[turn] { 4096 } else { 0 };
            driver.replace(&doc, &version, hint, None).unwrap();
            written[turn] = true;
            for (reader, _) in &drivers {
                assert!(reader.get(&doc).unwrap() == version, "version {n}");
            }
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    /// However many documents are replaced, the log keeps at most `REPLACE_LOG_ENTRIES`,
    /// the last one put among them.
    #[test]
    fn the_replace_log_is_bounded() {
        let version = FileState {
            dev: 1,
            ino: 2,
            size: 3,
            mtime: 4,
            mtime_nsec: 5,
        };
        let mut log = ReplaceLog::default();
        for path in 0..REPLACE_LOG_ENTRIES as u64 * 2 {
            let replaced = Replaced {
                current: version,
                shared: 0,
                previous: None,
            };
            log.put(path, replaced);
            assert!(log.last.len() <= REPLACE_LOG_ENTRIES);
            assert!(log.last.contains_key(&path));
        }
        assert!(log.take(REPLACE_LOG_ENTRIES as u64 * 2 - 1).is_some());
    }

    /// The same recycled file holding versions of the same size, written faster than any
    /// clock tick: its fingerprint still changes with every version.
    #[test]
    fn recycled_versions_never_share_a_fingerprint() {
        let dir = tempdir();
        let driver = LocalDriver::new(&dir, false, WriterChoice::Buffered).unwrap();
        let doc = StoragePath::from_components(["r", "index.json"]).unwrap();
        let mut seen = std::collections::HashSet::new();
        for version in 0..200u32 {
            driver
                .replace(&doc, format!("{version:08}").as_bytes(), 0, None)
                .unwrap();
            let meta = driver.stat(&doc).unwrap().unwrap();
            assert!(
                seen.insert(meta.fingerprint),
                "version {version} repeats a fingerprint"
            );
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Temporary names and spares whose document is gone are scratch files; a file a
    /// previous process left is `before_open`, one written since is not. A spare beside its
    /// document is neither listed nor scratch.
    #[test]
    fn scratch_files_are_temporary_names_and_orphaned_spares() {
        let dir = tempdir();
        fs::create_dir_all(dir.join("r/blobs")).unwrap();
        fs::write(dir.join("r/blobs/.tmp-left"), b"left by a kill").unwrap();
        fs::write(dir.join("r/.spare-gone.json"), b"").unwrap();
        fs::write(dir.join(".tmp-link-probe-x.second"), b"").unwrap();
        // The filesystem clock ticks coarsely: files from "before" are clearly older.
        let past = std::time::SystemTime::now() - std::time::Duration::from_secs(10);
        for f in [
            "r/blobs/.tmp-left",
            "r/.spare-gone.json",
            ".tmp-link-probe-x.second",
        ] {
            File::options()
                .write(true)
                .open(dir.join(f))
                .unwrap()
                .set_modified(past)
                .unwrap();
        }
        let driver = LocalDriver::new(&dir, false, WriterChoice::Buffered).unwrap();
        let doc = StoragePath::from_components(["r", "index.json"]).unwrap();
        driver.replace(&doc, b"v1", 0, None).unwrap();
        driver.replace(&doc, b"v2", 0, None).unwrap();
        fs::write(dir.join("r/blobs/.tmp-live"), b"being written").unwrap();
        let names = |d: Option<&StoragePath>| {
            let mut found: Vec<(String, bool)> = driver
                .scratch_files(d)
                .unwrap()
                .into_iter()
                .map(|f| (f.path.to_string(), f.before_open))
                .collect();
            found.sort();
            found
        };
        let r = StoragePath::from_components(["r"]).unwrap();
        assert_eq!(names(Some(&r)), [("r/.spare-gone.json".to_string(), true)]);
        assert_eq!(
            names(Some(&r.join("blobs").unwrap())),
            [
                ("r/blobs/.tmp-left".to_string(), true),
                ("r/blobs/.tmp-live".to_string(), false)
            ]
        );
        assert_eq!(
            names(None),
            [(".tmp-link-probe-x.second".to_string(), true)]
        );
        let mut listed: Vec<String> = driver
            .list(Some(&r))
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        listed.sort();
        assert_eq!(listed, [".spare-gone.json", "blobs", "index.json"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("berth-local-{}", uuid::Uuid::new_v4()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}
