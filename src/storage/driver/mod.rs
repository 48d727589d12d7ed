//! The storage `Driver` trait: the small, blocking object interface that registry semantics
//! (`storage::Store`) are written over once, and the `StoragePath` every driver call takes.
//!
//! Drivers know nothing of repositories, digests or tags; `storage::layout` is the only code
//! that turns those into paths. Every driver runs the shared suite in `conformance`.

pub mod local;
pub mod s3;
// Compiled for the suites only until the configuration can name a storage backend (the
// composition-root part of issue 12) and select it; until then it would be dead code.
#[cfg(test)]
pub(crate) mod memory;

#[cfg(test)]
pub(crate) mod conformance;

use std::fmt;
use std::io::Read;
use std::time::SystemTime;

/// A relative, `/`-separated path inside a driver's root. Every component is non-empty, not
/// `.` or `..`, and free of `/` and NUL, so no `StoragePath` can name anything outside the root.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoragePath(String);

impl StoragePath {
    /// Builds a path from components, checking each one.
    pub fn from_components<'a>(
        components: impl IntoIterator<Item = &'a str>,
    ) -> Result<StoragePath, DriverError> {
        let mut path = String::new();
        for c in components {
            check_component(c)?;
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(c);
        }
        if path.is_empty() {
            return Err(DriverError::InvalidPath {
                path: String::new(),
                reason: "empty path",
            });
        }
        Ok(StoragePath(path))
    }

    /// This path with one more component.
    pub fn join(&self, component: &str) -> Result<StoragePath, DriverError> {
        check_component(component)?;
        Ok(StoragePath(format!("{}/{}", self.0, component)))
    }

    /// The path as a `/`-separated string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }
}

fn check_component(c: &str) -> Result<(), DriverError> {
    let reason = if c.is_empty() {
        Some("empty component")
    } else if c == "." || c == ".." {
        Some("dot component")
    } else if c.contains(['/', '\0', '\\']) {
        Some("separator or NUL in component")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(DriverError::InvalidPath {
            path: c.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

impl fmt::Display for StoragePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What `stat` reports about an object or directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Size in bytes (0 for directories).
    pub size: u64,
    /// Last modification time.
    pub modified: SystemTime,
    /// Whether this is a directory (local drivers) rather than an object.
    pub is_dir: bool,
    /// Changes whenever the object is rewritten or replaced (local: inode, size and
    /// timestamps), so a cache of its parsed content can be revalidated with one `stat`.
    pub fingerprint: u64,
    /// Equal for two paths that name the same stored bytes (local: device and inode), so the
    /// dedupe pass can tell linked copies from separate ones; `None` where that is unknowable.
    pub identity: Option<u64>,
    /// The version `replace` compares against before it swaps (local: the fingerprint;
    /// S3: the ETag).
    pub version: Version,
}

/// A version of an object as its driver hands it out, for `replace` to compare and swap on:
/// opaque to callers, who only pass back what `stat` gave them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version(String);

impl Version {
    /// A version from the driver's own token for it.
    pub fn new(token: impl Into<String>) -> Version {
        Version(token.into())
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl ObjectMeta {
    /// A prefix as an object store's `stat` reports it: it keeps no time for one, and one
    /// exists only while something below it was just listed, so it is as new as the question.
    pub fn prefix() -> ObjectMeta {
        ObjectMeta {
            size: 0,
            modified: SystemTime::now(),
            is_dir: true,
            fingerprint: 0,
            identity: None,
            version: Version::new(""),
        }
    }

    /// A key equal for two paths only when they share stored bytes: the identity where the
    /// driver knows it, else the fingerprint (distinct objects, never merged by mistake).
    pub fn bytes_key(&self) -> u64 {
        self.identity.unwrap_or(self.fingerprint)
    }
}

/// One child of a listed directory, typed as the listing itself says (no `stat` per entry):
/// an object with its size and time, or a prefix (a directory; on an object store, a common
/// prefix) under which more is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The child's name (one path component).
    pub name: String,
    /// What it is.
    pub kind: EntryKind,
}

/// What a listed child is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// An object.
    Object {
        /// Size in bytes.
        size: u64,
        /// Last modification time.
        modified: SystemTime,
    },
    /// A prefix with more below it.
    Prefix,
}

impl Entry {
    /// Whether more is stored below it.
    pub fn is_prefix(&self) -> bool {
        self.kind == EntryKind::Prefix
    }
}

/// What a driver can do beyond the contract every driver keeps, declared so that the store
/// asks for a capability instead of any driver pretending to one it lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// `link` gives a second name to the same stored bytes (local: a hard link), which is
    /// what dedupe by links needs; without it `link` copies.
    pub hard_links: bool,
    /// `file` hands out an object as a local file, so a body goes out with sendfile(2);
    /// without it bodies stream through `reader`.
    pub local_files: bool,
    /// `replace` recycles a document's storage and uses its `unchanged_prefix` hint; without
    /// it every `replace` writes the whole object.
    pub recycled_documents: bool,
    /// `rename` moves an object in one atomic step (local: rename(2)); without it a finished
    /// upload is placed by a server-side `copy` and a `delete`.
    pub rename: bool,
    /// Upload writers bypass the page cache (local: O_DIRECT, through the `direct` or
    /// `io_uring` writer), so pushes do not evict what pulls read.
    pub direct_io: bool,
    /// An object can carry metadata naming another path (`put_placeholder`,
    /// `placeholder_holder`: local, a user xattr; an object store, user metadata), which is
    /// what dedupe by placeholders needs (DESIGN decision 9); without it those calls fail.
    pub placeholders: bool,
    /// An upload keeps a small note beside its bytes (`UploadWriter::save_note`,
    /// `upload_note`), where the store saves a session's state; without it a session is
    /// rebuilt after a restart by hashing its bytes once.
    pub upload_notes: bool,
    /// `direct_writer` writes an upload whose digest is known up front straight at its final
    /// path, visible only once the caller has verified it and commits (an object store: the
    /// parts go to the blob's key, so no copy places it); without it, such an upload is
    /// staged and moved into place like any other.
    pub direct_uploads: bool,
    /// An upload's flushed bytes are a session readable at its path only once committed
    /// (S3: an open multipart upload and its note, so that no chunk copies the ones before):
    /// until then `upload_status` reports the session's size and age, the note saved with
    /// it is the only state a later writer or process continues from (no byte is read back),
    /// and a writer opened on a committed object starts a new session. Without it, flushed
    /// bytes are readable at the path at once (local: the file).
    pub sealed_uploads: bool,
    /// `presigned_url` hands out a URL a client can fetch an object from directly (S3: a
    /// query-signed GET, SigV4 or SigV2 as its requests are signed, when the store is
    /// configured to redirect), so blob GETs can
    /// answer with a redirect instead of streaming the bytes through the registry.
    pub presigned_urls: bool,
}

/// An upload session as `Driver::upload_status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadStatus {
    /// The bytes flushed.
    pub size: u64,
    /// When bytes were last flushed (or the session started).
    pub modified: SystemTime,
}

/// One of a driver's own temporary files (see `Driver::scratch_files`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScratchFile {
    /// Where it is.
    pub path: StoragePath,
    /// Its size and times: a file a write is still filling was modified moments ago.
    pub meta: ObjectMeta,
    /// Last written before this driver was opened, so no write of this process is using it:
    /// a process that served the same root before (and was killed) left it.
    pub before_open: bool,
}

/// Errors every driver reports, with the driver's name and the path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// Nothing at that path.
    #[error("{driver}: {path}: not found")]
    NotFound {
        /// Driver name.
        driver: &'static str,
        /// The path looked up.
        path: String,
    },
    /// A path component was rejected before any I/O.
    #[error("invalid storage path component {path:?}: {reason}")]
    InvalidPath {
        /// The offending component.
        path: String,
        /// Why.
        reason: &'static str,
    },
    /// A conditional `replace` found another version than the one it was given: someone
    /// changed (or removed) the object since it was read. The caller reads it again and
    /// retries.
    #[error("{driver}: {path}: changed since it was read (now {found})")]
    Conflict {
        /// Driver name.
        driver: &'static str,
        /// The object replaced.
        path: String,
        /// What is there now (`absent` when nothing is).
        found: String,
    },
    /// The driver lacks the capability the call needs (see `Capabilities`).
    #[error("{driver}: {op} {path}: not supported by this driver")]
    Unsupported {
        /// Driver name.
        driver: &'static str,
        /// The operation.
        op: &'static str,
        /// The path.
        path: String,
    },
    /// The backend cannot be reached, did not answer within its time-out, or answered that it
    /// is failing (S3: a 5xx), after the driver's retry budget: nothing is wrong with the
    /// request, and the same request may succeed once the backend is back (HTTP 503).
    #[error("{driver}: {op} {path}: storage unavailable: {source}")]
    Unavailable {
        /// Driver name.
        driver: &'static str,
        /// The operation.
        op: &'static str,
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The backend failed.
    #[error("{driver}: {op} {path}: {source}")]
    Io {
        /// Driver name.
        driver: &'static str,
        /// The operation.
        op: &'static str,
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl DriverError {
    /// This error as a reader's (`ObjectReader`): an `io::Error` carrying it, so the caller
    /// that reads the object gets the driver's classification back (`from_read_error`).
    pub fn into_read_error(self) -> std::io::Error {
        let kind = match &self {
            DriverError::NotFound { .. } => std::io::ErrorKind::NotFound,
            DriverError::Unavailable { source, .. } | DriverError::Io { source, .. } => {
                source.kind()
            }
            _ => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, self)
    }

    /// What reading `path` from a reader of `driver` failed with: the error the driver
    /// classified it as (`into_read_error`), else an I/O error.
    pub fn from_read_error(
        driver: &'static str,
        path: &StoragePath,
        e: std::io::Error,
    ) -> DriverError {
        e.downcast::<DriverError>()
            .unwrap_or_else(|source| DriverError::Io {
                driver,
                op: "read",
                path: path.to_string(),
                source,
            })
    }
}

/// A streaming read of one object. Its reader's errors carry the `DriverError` the driver
/// classified them as, where it did (`DriverError::into_read_error`).
pub struct ObjectReader {
    /// The bytes from the requested offset to the end of the object.
    pub reader: Box<dyn Read + Send>,
    /// The object's total size (not the remaining length).
    pub size: u64,
}

/// An upload being written, ended by `commit` or `cancel`. Bytes are only ever added at the
/// end, never cut back (an object store cannot), so a failed write ends the upload rather than
/// rolling it back. Once its object is deleted or replaced by another write, nothing it writes
/// appears at the path (as with bytes written to an unlinked file): it never brings back or
/// overwrites what came later. Where the driver can tell (with `sealed_uploads` it must: the
/// session is shared by writers in several processes), its `flush`, `save_note` and `commit`
/// then fail with `Conflict`, so the caller never answers for bytes that are not the
/// upload's. Dropped without either, it keeps what `flush` stored, for a writer opened on
/// the same path later to continue after.
pub trait UploadWriter: Send {
    /// Bytes written so far.
    fn size(&self) -> u64;
    /// Adds all of `buf` and returns a buffer for the caller's next chunk: the same one, or
    /// (when writes are asynchronous) one whose earlier write has completed, so the caller can
    /// read and hash the next chunk while this one is written. A write error may be reported
    /// by a later call; nothing is stored until `flush` returns.
    fn write(&mut self, buf: Vec<u8>) -> Result<Vec<u8>, DriverError>;
    /// The writer's own free buffer space, if it keeps one, so the caller can read the next
    /// bytes straight into it rather than into a buffer that `write` would copy from. The
    /// bytes become part of the object with `commit_spare`. `Ok(None)`: use `write`.
    fn spare(&mut self) -> Result<Option<&mut [u8]>, DriverError> {
        Ok(None)
    }

    /// Adds the first `n` bytes of the buffer the last `spare` returned to the object. Only
    /// called after `spare` returned a buffer, so writers without one have nothing to do.
    fn commit_spare(&mut self, n: usize) -> Result<(), DriverError> {
        let _ = n;
        Ok(())
    }

    /// Waits for every write in flight and reports the first error: the `size` bytes written
    /// are then stored.
    fn flush(&mut self) -> Result<(), DriverError>;
    /// `flush`, then keeps `note` with the upload, in place of the last one, for whoever
    /// opens it next (`Driver::upload_note`): the store's session state for the bytes
    /// flushed (with `sealed_uploads`, stored together with them, in one write), so a
    /// session continues after a restart, or on another instance, without reading them again.
    /// One small write beside the upload, not a document of its own (local: an extended
    /// attribute of the open file). Drivers without `upload_notes` return `Unsupported`.
    fn save_note(&mut self, note: &[u8]) -> Result<(), DriverError>;
    /// `flush`, then makes the object complete at its path and, with `commit` on, durable.
    /// Returns its version (as `stat` gives it), for `copy_version` to place exactly it.
    fn commit(self: Box<Self>) -> Result<Version, DriverError>;
    /// Abandons the upload: its object is removed.
    fn cancel(self: Box<Self>) -> Result<(), DriverError>;
}

/// The storage backend interface. All methods are blocking and safe to call concurrently.
pub trait Driver: Send + Sync {
    /// A short name for errors and logs (`local`, `s3`).
    fn name(&self) -> &'static str;

    /// Reads a whole (small) object. `NotFound` if absent.
    fn get(&self, path: &StoragePath) -> Result<Vec<u8>, DriverError>;

    /// Streams an object from `offset` (which must not exceed its size). `NotFound` if absent.
    fn reader(&self, path: &StoragePath, offset: u64) -> Result<ObjectReader, DriverError>;

    /// Metadata, or `None` if nothing is there.
    fn stat(&self, path: &StoragePath) -> Result<Option<ObjectMeta>, DriverError>;

    /// Metadata of the object at `path`, or `None` if no object is there (nothing, or only a
    /// directory or prefix): for callers that ask about an object (a blob, `index.json`), so
    /// an object store need not list to tell a prefix from nothing.
    fn stat_object(&self, path: &StoragePath) -> Result<Option<ObjectMeta>, DriverError> {
        Ok(self.stat(path)?.filter(|meta| !meta.is_dir))
    }

    /// Streams `len` bytes of an object from `offset` (both within its size), for a ranged
    /// read: an object store asks its backend for that range only, rather than reading to the
    /// end and dropping the rest. `NotFound` if absent.
    fn reader_range(
        &self,
        path: &StoragePath,
        offset: u64,
        len: u64,
    ) -> Result<ObjectReader, DriverError> {
        let ObjectReader { reader, size } = self.reader(path, offset)?;
        Ok(ObjectReader {
            reader: Box::new(reader.take(len)),
            size,
        })
    }

    /// How long what was read of a mutable document (a repository's `index.json`) may be
    /// served again without asking the backend whether it changed. Zero (the default) asks
    /// every time: a local `stat` costs a system call. An object store, where asking is a
    /// round trip, may trust a read for a short interval: a change made through another
    /// instance is then seen within it (changes made through this store are seen at once).
    fn revalidate_after(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    /// Writes a whole object atomically: readers see the old bytes or the new, never a part.
    /// Missing parent directories are created.
    fn put(&self, path: &StoragePath, bytes: &[u8]) -> Result<(), DriverError>;

    /// Writes a whole object only if nothing is at `path`, in one step: of writers creating
    /// the same object at once (in any process), exactly one gets `true` and its bytes stay;
    /// the others get `false` and change nothing. Missing parent directories are created.
    fn create(&self, path: &StoragePath, bytes: &[u8]) -> Result<bool, DriverError>;

    /// Makes `to` hold the same bytes as `from`, replacing whatever `to` held atomically, and
    /// marks `to` as just written (its modification time is now, so an age-based collector
    /// treats it as new). Drivers with `hard_links` share the bytes (local: a hard link);
    /// others copy them. `NotFound` if `from` is absent.
    fn link(&self, from: &StoragePath, to: &StoragePath) -> Result<(), DriverError> {
        self.copy(from, to)
    }

    /// What this driver can do beyond the contract (see `Capabilities`).
    fn capabilities(&self) -> Capabilities;

    /// Writes a zero-byte placeholder object at `path` whose metadata names `holder`, the
    /// path holding the bytes (DESIGN decision 9), atomically like `put`: readers see the old
    /// object or the placeholder, never a part, and whatever `path` held is replaced. Its
    /// modification time is now. `rename` and `touch` keep the metadata; `put`, `copy`,
    /// `link` and `replace` over it leave an object without it. Missing parent directories are
    /// created. Only drivers declaring `placeholders` keep it; the others fail.
    fn put_placeholder(&self, path: &StoragePath, holder: &StoragePath) -> Result<(), DriverError> {
        let _ = holder;
        Err(DriverError::Unsupported {
            driver: self.name(),
            op: "put placeholder",
            path: path.to_string(),
        })
    }

    /// The holder a placeholder at `path` names, or `None` when the object there names none
    /// (an ordinary object, such as a real empty blob). `NotFound` if absent. Callers ask only
    /// about zero-byte objects, so the hot paths never pay for it. Drivers without
    /// `placeholders` have none.
    fn placeholder_holder(&self, path: &StoragePath) -> Result<Option<StoragePath>, DriverError> {
        let _ = path;
        Ok(None)
    }

    /// Rewrites a small mutable document (a repository's `index.json`) atomically, like
    /// `put`, if it is still at version `expected` (`None`: whatever is there), else fails
    /// with `Conflict` and changes nothing: writers in several processes, or instances, each
    /// read, change and replace, and none loses another's change. Returns the metadata of
    /// the version written (not of whatever another writer put there since). A driver may recycle the replaced object's storage for the next `replace` of the
    /// same path (local: the old file becomes the scratch file the next version is written
    /// into, so no inode is freed and allocated per write), so documents written this way are
    /// read with `get` only, which sees the old bytes or the new, never a part.
    ///
    /// `unchanged_prefix` is a hint: that many leading bytes of `bytes` are the same as those
    /// the previous `replace` of `path` on this driver was given (0 when the caller does not
    /// know, or when another `replace` of `path` may run concurrently). A driver that recycles
    /// storage may then leave those bytes where it can prove they already are (local: writes
    /// only the tail of the scratch file). Drivers that write whole objects ignore it; the
    /// result is the same either way.
    fn replace(
        &self,
        path: &StoragePath,
        bytes: &[u8],
        unchanged_prefix: usize,
        expected: Option<&Version>,
    ) -> Result<ObjectMeta, DriverError>;

    /// The immediate children of `dir`, typed, in one call and in no particular order; empty
    /// when `dir` does not exist. `None` lists the root. Storage that `replace` keeps for a document is
    /// part of that document, not a child of its own; temporary files of writes (see
    /// `scratch_files`) are listed, since they occupy the directory.
    fn list(&self, dir: Option<&StoragePath>) -> Result<Vec<Entry>, DriverError>;

    /// The driver's own temporary files directly in `dir` (`None`: the root): the scratch
    /// names of writes in progress, and those a process killed mid-write left behind, which
    /// nothing will ever finish or remove (issue 10). Which of them are left over is for the
    /// caller to judge by `before_open` and by age; deleting one a write still uses fails that
    /// write. Empty when `dir` does not exist. Drivers whose writes leave no scratch objects
    /// (whole-object puts on an object store) have none.
    fn scratch_files(&self, dir: Option<&StoragePath>) -> Result<Vec<ScratchFile>, DriverError> {
        let _ = dir;
        Ok(Vec::new())
    }

    /// Aborts the driver's incomplete multipart uploads under the store's root that were
    /// started `older_than` ago or earlier, and returns how many it aborted: parts stored and
    /// billed but no object, left by an abort that failed (an outage) or a process killed
    /// mid-upload, which nothing would ever finish. A live upload is younger than that (the
    /// caller passes `gcDelay`); aborting one fails its completion, as for `scratch_files`.
    /// Drivers without multipart uploads have none.
    fn abort_stale_uploads(&self, older_than: std::time::Duration) -> Result<usize, DriverError> {
        let _ = older_than;
        Ok(0)
    }

    /// Removes an object (with whatever storage `replace` keeps for it), or a directory and
    /// everything below it. `NotFound` if absent.
    fn delete(&self, path: &StoragePath) -> Result<(), DriverError>;

    /// Marks an object as just written (its modification time becomes now) without changing
    /// its bytes, so an age-based collector treats content pushed again as new. `NotFound`
    /// if absent.
    fn touch(&self, path: &StoragePath) -> Result<(), DriverError>;

    /// Removes `dir` only if it is empty, so a file created in it meanwhile survives; an
    /// absent `dir` is fine, a non-empty one an error. Drivers without directories (object
    /// stores, where a prefix exists only while objects do) have nothing to remove.
    fn delete_dir(&self, dir: &StoragePath) -> Result<(), DriverError>;

    /// A writer for the upload at `path`: a new one (parents created) if nothing is there,
    /// else one that continues after the bytes already stored.
    fn writer(&self, path: &StoragePath) -> Result<Box<dyn UploadWriter>, DriverError>;

    /// A writer of a whole object at its final `path`, for content the caller checks before
    /// it commits: nothing is visible at `path` until `commit`, which replaces whatever is
    /// there in one step (readers see the old object or the new, never a part) and marks it
    /// as just written; `cancel`, a drop or a failed write leave `path` as it was. `flush`
    /// only waits for writes in flight (nothing becomes visible); `save_note` is
    /// `Unsupported`. Drivers without `direct_uploads` return `Unsupported`.
    fn direct_writer(&self, path: &StoragePath) -> Result<Box<dyn UploadWriter>, DriverError> {
        Err(DriverError::Unsupported {
            driver: self.name(),
            op: "direct write",
            path: path.to_string(),
        })
    }

    /// The session of the upload at `path`, or `None` if there is none: with
    /// `sealed_uploads`, what its writers flushed; otherwise the object at `path` (`stat`).
    fn upload_status(&self, path: &StoragePath) -> Result<Option<UploadStatus>, DriverError> {
        Ok(self.stat(path)?.map(|meta| UploadStatus {
            size: meta.size,
            modified: meta.modified,
        }))
    }

    /// The note the last writer of the upload at `path` saved (`UploadWriter::save_note`);
    /// `None` when it saved none or the driver keeps none. `NotFound` if no upload is there.
    fn upload_note(&self, path: &StoragePath) -> Result<Option<Vec<u8>>, DriverError> {
        self.stat(path)?
            .map(|_| None)
            .ok_or_else(|| DriverError::NotFound {
                driver: self.name(),
                path: path.to_string(),
            })
    }

    /// Atomically moves `from` to `to`, replacing whatever `to` held, where the driver
    /// declares `rename`; missing parent directories of `to` are created. `NotFound` if
    /// `from` is absent. Without the capability, `Unsupported`: callers copy and delete.
    fn rename(&self, from: &StoragePath, to: &StoragePath) -> Result<(), DriverError> {
        let _ = to;
        Err(DriverError::Unsupported {
            driver: self.name(),
            op: "rename",
            path: from.to_string(),
        })
    }

    /// Makes `to` hold the same bytes as `from`, atomically. `NotFound` if `from` is absent.
    fn copy(&self, from: &StoragePath, to: &StoragePath) -> Result<(), DriverError>;

    /// `copy`, only if `from` is at `version` (what `UploadWriter::commit` returned): else
    /// `Conflict`, and `to` is left as it was. Where writers in other processes may replace
    /// `from` (`sealed_uploads`: a session's next writer replaces a committed upload with a
    /// new session), the driver checks and copies in one step (S3: a conditional copy);
    /// otherwise a `stat` before the copy is enough.
    fn copy_version(
        &self,
        from: &StoragePath,
        version: &Version,
        to: &StoragePath,
    ) -> Result<(), DriverError> {
        match self.stat(from)? {
            Some(meta) if !meta.is_dir && &meta.version == version => self.copy(from, to),
            found => Err(DriverError::Conflict {
                driver: self.name(),
                path: from.to_string(),
                found: found.map_or_else(|| "absent".to_string(), |m| m.version.to_string()),
            }),
        }
    }

    /// A URL from which a client can GET the object at `path` itself, valid for `expires`,
    /// where the driver declares `presigned_urls`; without it, `Unsupported`. Makes no
    /// request: the object is not checked for.
    fn presigned_url(
        &self,
        path: &StoragePath,
        expires: std::time::Duration,
    ) -> Result<String, DriverError> {
        let _ = expires;
        Err(DriverError::Unsupported {
            driver: self.name(),
            op: "presign",
            path: path.to_string(),
        })
    }

    /// The object as an open local file, so the front end can send it with sendfile(2)
    /// instead of copying it through user space: what `local_files` declares. `Ok(None)`
    /// for drivers without local files (the caller then uses `reader`); `NotFound` if absent.
    fn file(&self, path: &StoragePath) -> Result<Option<std::fs::File>, DriverError> {
        let _ = path;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_paths_cannot_escape() {
        assert!(StoragePath::from_components(["a", "b"]).is_ok());
        for bad in [
            vec![".."],
            vec!["a", ""],
            vec!["a/b"],
            vec!["."],
            vec![],
            vec!["x\0"],
        ] {
            assert!(
                StoragePath::from_components(bad.clone()).is_err(),
                "{bad:?}"
            );
        }
        let p = StoragePath::from_components(["a"]).unwrap();
        assert!(p.join("..").is_err());
        assert_eq!(p.join("c").unwrap().as_str(), "a/c");
        assert_eq!(p.join("c").unwrap().file_name(), "c");
    }
}
