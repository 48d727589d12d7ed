//! Blob uploads: sessions, chunk appends with the digest computed as bytes stream in, and the
//! commit recipe (verify, commit the writer, place the blob: a rename or copy into `blobs/`,
//! or a link or placeholder where dedupe has the bytes already).
//!
//! A session's running hash lives in memory with its id, so finishing an upload never re-reads
//! the blob. After each chunk, where the bytes end and the hash state there are saved with the
//! upload as its note (`UploadWriter::save_note`; local: an extended attribute of the file, one
//! system call), so after a restart, or on another instance, the session continues without
//! reading again what was hashed; only bytes past the saved state (a chunk cut short by a
//! kill) are read, and without a usable note (a driver without `upload_notes`) the file is
//! hashed once. For a
//! digest algorithm other than the running one the file is hashed at the end. A failed chunk
//! ends the session (its bytes are removed and the client starts again), since an upload is
//! never cut back: an object store cannot cut one.
//!
//! A blob whose bytes all come with its digest (POST `?digest=`, or a session's first and
//! only request a PUT naming it, its upload object still empty: another instance may have
//! filled it behind this one's back) is written straight at its blob path where the driver has
//! `direct_uploads` (an object store, where a staged upload costs a copy to place):
//! committed only once its hash matches (or, where dedupe finds the bytes held elsewhere,
//! cancelled for a placeholder), nothing visible otherwise.

use super::blobs::Verified;
use super::driver::{DriverError, StoragePath, UploadWriter};
use super::layout::{self, UploadId};
use super::{Store, StoreError};
use crate::digest::{Algorithm, Digest, Hasher};
use crate::oci::RepoName;
use std::collections::HashMap;
use std::io::{ErrorKind, Read};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

/// Size of the buffers request bodies are read in.
const BODY_BUFFER: usize = 1024 * 1024;

/// The algorithm every session hashes with while bytes arrive; clients use sha256.
const RUNNING_ALGORITHM: Algorithm = Algorithm::Sha256;

/// How long a request body is, as far as its headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// Content-Length: exactly this many bytes must arrive.
    Exact(u64),
    /// Chunked transfer encoding: read to the end.
    UntilEnd,
}

/// What an upload's note holds: the session's size and its running hash at that size.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedSession {
    size: u64,
    algorithm: String,
    /// `Hasher::save_state`, in hex.
    hash_state: String,
}

struct Session {
    repo: RepoName,
    hasher: Hasher,
    size: u64,
    /// Set once the session is committed or cancelled, so that requests already waiting on
    /// its lock find it gone instead of writing to a file that no longer exists.
    ended: bool,
}

type SessionSlot = Arc<Mutex<Option<Session>>>;

/// In-memory state of open sessions. The map lock is held only to find, insert or release a
/// slot; all I/O happens under the session's own lock, so sessions never wait on each other.
/// A slot lives only while it holds a session or someone holds it: whatever a request does,
/// it leaves no slot behind (issue 10: a lookup that failed kept ~400 bytes per request).
#[derive(Default)]
pub(super) struct Sessions {
    slots: Mutex<HashMap<UploadId, SessionSlot>>,
}

impl Sessions {
    fn slot(&self, id: UploadId) -> SessionSlot {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.entry(id).or_default().clone()
    }

    /// Drops the slot of `id` if it holds no session and nobody else holds it. Called after
    /// the caller dropped its own handle; new handles are only made under the map lock, so
    /// a count of one (the map's) cannot grow while this runs.
    fn release(&self, id: UploadId) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let unused = slots.get(&id).is_some_and(|slot| {
            Arc::strong_count(slot) == 1
                && slot
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .is_none()
        });
        if unused {
            slots.remove(&id);
        }
    }
}

/// Streams `body` into `out`, hashing as it goes; returns how many bytes that was. Nothing is
/// flushed: the caller stores them (`flush`, `save_note` or `commit`). On a failure, `out`
/// and `hasher` hold part of the body: the caller ends the upload.
fn copy_hashed(
    body: &mut dyn Read,
    length: BodyLength,
    hasher: &mut Hasher,
    out: &mut dyn UploadWriter,
) -> Result<u64, StoreError> {
    // Only writers without a buffer of their own (see `UploadWriter::spare`) need this one.
    let mut buf: Vec<u8> = Vec::new();
    let mut total = 0u64;
    loop {
        let want = match length {
            BodyLength::Exact(n) if total >= n => break,
            BodyLength::Exact(n) => ((n - total) as usize).min(BODY_BUFFER),
            BodyLength::UntilEnd => BODY_BUFFER,
        };
        let filled = if let Some(spare) = out.spare()? {
            // Read straight into the writer's buffer: no copy between socket and disk.
            let want = want.min(spare.len());
            let filled = fill(body, &mut spare[..want]).map_err(body_error)?;
            hasher.update(&spare[..filled]);
            out.commit_spare(filled)?;
            filled
        } else {
            buf.resize(want, 0);
            let filled = fill(body, &mut buf[..want]).map_err(body_error)?;
            hasher.update(&buf[..filled]);
            if filled > 0 {
                buf.truncate(filled);
                buf = out.write(std::mem::take(&mut buf))?;
            }
            filled
        };
        if filled == 0 {
            if let BodyLength::Exact(n) = length {
                return Err(StoreError::BodyInvalid(format!(
                    "body ended after {total} of {n} declared bytes"
                )));
            }
            break;
        }
        total += filled as u64;
    }
    Ok(total)
}

/// Whether `e` is a writer's report that its session is not its own any more
/// (`DriverError::Conflict`: another instance saved the session first, or deleted it).
fn is_lost(e: &StoreError) -> bool {
    matches!(e, StoreError::Driver(DriverError::Conflict { .. }))
}

/// Ends `session` in memory only, after its writer lost it (`is_lost`): what the request sent
/// is not the session's, so the client hears that its upload is unknown; nothing is removed,
/// since the session, if any, is the other writer's, and the next request reads it again.
fn lost(session: &mut Session, id: UploadId) -> StoreError {
    session.ended = true;
    StoreError::UploadUnknown(id.to_string())
}

/// Feeds everything `reader` holds to `hasher`; returns how many bytes that was. Read errors
/// are the caller's to classify: a request body's are the client's (`body_error`), a stored
/// object's the driver's (`DriverError::from_read_error`).
pub(super) fn hash_into(reader: &mut dyn Read, hasher: &mut Hasher) -> std::io::Result<u64> {
    let mut buf = vec![0u8; BODY_BUFFER];
    let mut size = 0u64;
    loop {
        let n = fill(reader, &mut buf)?;
        if n == 0 {
            return Ok(size);
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
}

/// Reads until `buf` is full or the reader ends, so writes go out in large pieces.
fn fill(reader: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// A request body that could not be read: the client's fault (cut short, badly framed).
fn body_error(e: std::io::Error) -> StoreError {
    StoreError::BodyInvalid(format!("reading failed: {e}"))
}

impl Store {
    /// Opens a new upload session in `repo`, creating the repository if needed.
    pub fn upload_start(&self, repo: &RepoName) -> Result<UploadId, StoreError> {
        let id = UploadId::new();
        // Creating the file makes the session visible to status requests and to a restart,
        // and (created in `in_repo`) keeps the collector from removing the repository.
        let path = layout::upload(repo, &id)?;
        self.in_repo(repo, || Ok(self.driver.writer(&path)?.flush()?))?;
        *self
            .sessions
            .slot(id)
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Session {
            repo: repo.clone(),
            hasher: Hasher::new(RUNNING_ALGORITHM),
            size: 0,
            ended: false,
        });
        Ok(id)
    }

    /// Runs `f` on the session `id` of `repo`, rebuilding its state from disk if it is not in
    /// memory. `UploadUnknown` if there is no such session.
    fn with_session<T>(
        &self,
        repo: &RepoName,
        id: UploadId,
        f: impl FnOnce(&mut Session) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let slot = self.sessions.slot(id);
        let result = self.in_session(repo, id, &slot, f);
        drop(slot);
        self.sessions.release(id);
        result
    }

    fn in_session<T>(
        &self,
        repo: &RepoName,
        id: UploadId,
        slot: &SessionSlot,
        f: impl FnOnce(&mut Session) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut guard = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if guard.is_none() {
            match self.rebuild_session(repo, id)? {
                Some(session) => *guard = Some(session),
                None => return Err(StoreError::UploadUnknown(id.to_string())),
            }
        }
        let session = guard.as_mut().expect("filled above");
        if &session.repo != repo {
            return Err(StoreError::UploadUnknown(id.to_string()));
        }
        let result = f(session);
        if session.ended {
            *guard = None;
        }
        result
    }

    fn rebuild_session(
        &self,
        repo: &RepoName,
        id: UploadId,
    ) -> Result<Option<Session>, StoreError> {
        let path = layout::upload(repo, &id)?;
        let Some(status) = self.driver.upload_status(&path)? else {
            return Ok(None);
        };
        // Sealed uploads (S3) cannot be read before they are committed: their note is the
        // only state there is.
        let sealed = self.driver.capabilities().sealed_uploads;
        let (hasher, size) = match self.saved_session(repo, id) {
            Some((mut hasher, saved))
                if saved == status.size || (saved < status.size && !sealed) =>
            {
                // Bytes past the saved size came in a chunk the process did not finish
                // (killed mid-append): the client may resume after them, so they count.
                let reread = if saved < status.size {
                    let mut tail = self.driver.reader(&path, saved)?.reader;
                    hash_into(&mut tail, &mut hasher)
                        .map_err(|e| DriverError::from_read_error(self.driver.name(), &path, e))?
                } else {
                    0
                };
                tracing::info!(repository = %repo, upload = %id, size = saved + reread, reread_bytes = reread, "upload session resumed from its saved state");
                (hasher, saved + reread)
            }
            None if status.size == 0 => (Hasher::new(RUNNING_ALGORITHM), 0),
            _ if sealed => {
                // No state for its bytes: a committed upload its writer is placing (or was
                // killed placing), or a note whose state could not be saved. Either way the
                // bytes cannot be continued, so the client starts over; nothing is removed
                // here (a read may come from any instance, mid-commit of another): an upload
                // left is the idle collector's.
                tracing::warn!(repository = %repo, upload = %id, size = status.size, "upload session has no saved state for its bytes; unknown");
                return Ok(None);
            }
            _ => {
                let (hasher, size) = self.hash_object(&path, RUNNING_ALGORITHM)?;
                tracing::info!(repository = %repo, upload = %id, size, reread_bytes = size, "upload session rebuilt by hashing its file: no usable saved state");
                (hasher, size)
            }
        };
        Ok(Some(Session {
            repo: repo.clone(),
            hasher,
            size,
            ended: false,
        }))
    }

    /// The saved hash state of session `id` and the size it is for, if its upload has a
    /// readable note.
    fn saved_session(&self, repo: &RepoName, id: UploadId) -> Option<(Hasher, u64)> {
        let note = self
            .driver
            .upload_note(&layout::upload(repo, &id).ok()?)
            .ok()??;
        let saved: SavedSession = serde_json::from_slice(&note).ok()?;
        let algorithm = Algorithm::ALL
            .into_iter()
            .find(|a| a.as_str() == saved.algorithm)?;
        let state = crate::digest::from_hex(&saved.hash_state)?;
        Some((Hasher::restore(algorithm, &state)?, saved.size))
    }

    /// Stores what `out` was given: with its state saved as `out`'s note (where session
    /// `id`'s bytes end, and its hash there) where the driver keeps notes, else by a flush.
    /// A note that cannot be saved costs only speed after a restart (the bytes past a stale
    /// state are hashed again), so it is logged and the bytes are flushed without it.
    fn save_session(
        &self,
        repo: &RepoName,
        id: UploadId,
        session: &Session,
        out: &mut dyn UploadWriter,
    ) -> Result<(), StoreError> {
        if self.driver.capabilities().upload_notes {
            let saved = SavedSession {
                size: session.size,
                algorithm: session.hasher.algorithm().as_str().to_string(),
                hash_state: crate::digest::to_hex(&session.hasher.save_state()),
            };
            let note = serde_json::to_vec(&saved).expect("a saved session serializes");
            match out.save_note(&note) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(repository = %repo, upload = %id, "cannot save the upload session's state: {e}");
                }
            }
        }
        Ok(out.flush()?)
    }

    /// Deletes session `id`'s upload, with its note; it may be gone already.
    fn delete_upload(&self, repo: &RepoName, id: UploadId) -> Result<(), StoreError> {
        match self.driver.delete(&layout::upload(repo, &id)?) {
            Ok(()) | Err(DriverError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Upload sessions of `repo` untouched for at least `delay`: id and size.
    pub(super) fn idle_uploads(
        &self,
        repo: &RepoName,
        delay: Duration,
        now: SystemTime,
    ) -> Result<Vec<(UploadId, u64)>, StoreError> {
        let dir = layout::uploads_dir(repo)?;
        let mut idle = Vec::new();
        for entry in self.driver.list(Some(&dir))? {
            if let Ok(id) = entry.name.parse::<UploadId>()
                && let Some(size) = self.idle_size(repo, id, delay, now)?
            {
                idle.push((id, size));
            }
        }
        Ok(idle)
    }

    /// The size of session `id` if its upload is there and did not change for `delay`.
    fn idle_size(
        &self,
        repo: &RepoName,
        id: UploadId,
        delay: Duration,
        now: SystemTime,
    ) -> Result<Option<u64>, StoreError> {
        Ok(self
            .driver
            .upload_status(&layout::upload(repo, &id)?)?
            .filter(|s| super::gc::older_than(s.modified, now, delay))
            .map(|s| s.size))
    }

    /// Ends the session `id` of `repo` and deletes its files if it is still idle for `delay`.
    /// A session a request is using (its lock is held) is not idle, whatever its file's time
    /// says (bytes may sit in the writer's buffer): it is skipped at once, so the collector
    /// never waits on a client (issue 10: a trickling PATCH held a sweep for 21 s). Returns
    /// whether it was deleted.
    pub(super) fn end_idle_upload(
        &self,
        repo: &RepoName,
        id: UploadId,
        delay: Duration,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        let slot = self.sessions.slot(id);
        let ended = match slot.try_lock() {
            Ok(mut guard) => self.end_if_idle(repo, id, &mut guard, delay, now),
            Err(std::sync::TryLockError::Poisoned(p)) => {
                self.end_if_idle(repo, id, &mut p.into_inner(), delay, now)
            }
            Err(std::sync::TryLockError::WouldBlock) => Ok(false),
        };
        drop(slot);
        self.sessions.release(id);
        ended
    }

    fn end_if_idle(
        &self,
        repo: &RepoName,
        id: UploadId,
        session: &mut Option<Session>,
        delay: Duration,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        let idle = self.idle_size(repo, id, delay, now)?.is_some();
        if idle {
            self.delete_upload(repo, id)?;
            // Requests that wait for this lock next find the session gone.
            *session = None;
        }
        Ok(idle)
    }

    /// A writer continuing session `id`'s file, with the session brought up to date with it.
    /// A file longer than the session was written by another instance (or by a chunk this
    /// process was killed in): the session is rebuilt from its saved state. A shorter one was
    /// removed or cut behind the session's back: writing on would leave a hole the running
    /// hash never saw, so the session ends as unknown.
    fn session_writer(
        &self,
        repo: &RepoName,
        id: UploadId,
        session: &mut Session,
    ) -> Result<Box<dyn UploadWriter>, StoreError> {
        let path = layout::upload(repo, &id)?;
        // A writer opens or creates: a still empty session another instance cancelled would
        // come back as a new empty upload, so its presence is asked first.
        if session.size == 0 && self.driver.upload_status(&path)?.is_none() {
            return Err(lost(session, id));
        }
        let out = self.driver.writer(&path)?;
        if out.size() > session.size
            && let Some(rebuilt) = self.rebuild_session(repo, id)?
            && rebuilt.size == out.size()
        {
            *session = rebuilt;
        }
        if out.size() != session.size {
            let _ = out.cancel();
            session.ended = true;
            tracing::warn!(repository = %repo, upload = %id, "upload file and session disagree on its size; session ended");
            return Err(StoreError::UploadUnknown(id.to_string()));
        }
        Ok(out)
    }

    /// Streams `body` into the session through `out`, then, with `save`, stores it with the
    /// session's state (else the caller commits). A failure ends the session: its bytes
    /// (and their note) are removed, so the client's next request for it is `UploadUnknown`.
    #[allow(clippy::too_many_arguments)]
    fn append_body(
        &self,
        repo: &RepoName,
        id: UploadId,
        session: &mut Session,
        out: &mut dyn UploadWriter,
        body: &mut dyn Read,
        length: BodyLength,
        save: bool,
    ) -> Result<(), StoreError> {
        let appended = copy_hashed(body, length, &mut session.hasher, out).and_then(|n| {
            session.size += n;
            if save {
                self.save_session(repo, id, session, out)?;
            }
            Ok(())
        });
        match appended {
            Err(e) if is_lost(&e) => Err(lost(session, id)),
            Err(e) => {
                session.ended = true;
                if let Err(e) = self.delete_upload(repo, id) {
                    tracing::warn!(repository = %repo, upload = %id, "cannot remove a failed upload: {e}");
                }
                Err(e)
            }
            Ok(()) => Ok(()),
        }
    }

    /// The number of bytes an upload holds, as its driver says (local: one `stat`; with
    /// `sealed_uploads`, its session's note, one HEAD): another instance may have appended
    /// since this one last saw it.
    pub fn upload_size(&self, repo: &RepoName, id: UploadId) -> Result<u64, StoreError> {
        self.with_session(repo, id, |session| {
            match self.driver.upload_status(&layout::upload(repo, &id)?)? {
                Some(status) => Ok(status.size),
                None => Err(lost(session, id)),
            }
        })
    }

    /// Appends a chunk. When `start` is given (from Content-Range) it must equal the bytes
    /// already held. Returns the new size.
    pub fn upload_append(
        &self,
        repo: &RepoName,
        id: UploadId,
        start: Option<u64>,
        body: &mut dyn Read,
        length: BodyLength,
    ) -> Result<u64, StoreError> {
        self.with_session(repo, id, |session| {
            // Checked once the session is brought up to date: another instance may have
            // appended since this one last saw it.
            let mut out = self.session_writer(repo, id, session)?;
            if let Some(start) = start
                && start != session.size
            {
                return Err(StoreError::UploadOutOfOrder {
                    expected: session.size,
                    got: start,
                });
            }
            self.append_body(repo, id, session, out.as_mut(), body, length, true)?;
            Ok(session.size)
        })
    }

    /// Appends a final chunk (possibly empty), verifies the whole upload against `digest`
    /// and moves it into the repository's blobs. Under the running algorithm the hash is
    /// checked before the commit: on a mismatch nothing becomes visible and the session stays
    /// as it is. Under another one, a sealed upload is readable only once committed, so it
    /// is hashed then, and a mismatch ends the session. A session another instance took over
    /// meanwhile (`is_lost`) is `UploadUnknown`, and nothing is placed.
    pub fn upload_finish(
        &self,
        repo: &RepoName,
        id: UploadId,
        digest: &Digest,
        body: &mut dyn Read,
        length: BodyLength,
    ) -> Result<(), StoreError> {
        self.with_session(repo, id, |session| {
            let path = layout::upload(repo, &id)?;
            if session.size == 0 && self.writes_direct(digest) && self.still_empty(&path)? {
                // The whole blob in this request: written where it belongs, not staged. A
                // failure leaves the session as it was (empty).
                self.put_direct(repo, digest, body, length)?;
                session.ended = true;
                if let Err(e) = self.delete_upload(repo, id) {
                    tracing::warn!(repository = %repo, upload = %id, "cannot remove a finished upload: {e}");
                }
                return Ok(());
            }
            let mut out = self.session_writer(repo, id, session)?;
            self.append_body(repo, id, session, out.as_mut(), body, length, false)?;
            let sealed = self.driver.capabilities().sealed_uploads;
            let actual = if digest.algorithm() == session.hasher.algorithm() {
                Some(session.hasher.clone().finish())
            } else if !sealed {
                out.flush()?;
                Some(self.hash_object(&path, digest.algorithm())?.0.finish())
            } else {
                // Readable only once committed: hashed below.
                None
            };
            let checked = actual.is_some();
            if let Some(actual) = actual
                && &actual != digest
            {
                // The bytes stay for the client to finish with the right digest.
                if let Err(e) = self.save_session(repo, id, session, out.as_mut()) {
                    tracing::warn!(repository = %repo, upload = %id, "cannot store a mismatched upload: {e}");
                }
                return Err(StoreError::DigestMismatch {
                    expected: digest.clone(),
                    actual,
                });
            }
            let version = match out.commit() {
                Ok(version) => version,
                Err(e) => {
                    let e = StoreError::from(e);
                    return Err(if is_lost(&e) { lost(session, id) } else { e });
                }
            };
            if !checked {
                let actual = self.hash_object(&path, digest.algorithm())?.0.finish();
                if &actual != digest {
                    // Committed, the session cannot go on: it ends with the mismatch.
                    session.ended = true;
                    self.delete_upload(repo, id)?;
                    return Err(StoreError::DigestMismatch {
                        expected: digest.clone(),
                        actual,
                    });
                }
            }
            // The upload becomes the blob (or goes, where the store has the bytes already).
            let placed = Verified::Committed(&path, version);
            match self.place_blob(repo, digest, session.size, placed) {
                Err(e) if is_lost(&e) => return Err(lost(session, id)),
                placed => placed?,
            }
            session.ended = true;
            Ok(())
        })
    }

    /// Abandons an upload session and its bytes.
    pub fn upload_cancel(&self, repo: &RepoName, id: UploadId) -> Result<(), StoreError> {
        self.with_session(repo, id, |session| {
            self.delete_upload(repo, id)?;
            session.ended = true;
            Ok(())
        })
    }

    /// Stores `bytes`, already verified to hash to `digest`, as a blob of `repo`: staged in
    /// `.uploads/` and renamed into `blobs/`, so no partial file ever has a blob's place, even
    /// across a crash (layout readers and scrub see only complete blobs there).
    pub(super) fn blob_write(
        &self,
        repo: &RepoName,
        digest: &Digest,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let staging = layout::upload(repo, &UploadId::new())?;
        let result = (|| {
            let mut out = self.driver.writer(&staging)?;
            out.write(bytes.to_vec())?;
            let version = out.commit()?;
            self.place_blob(
                repo,
                digest,
                bytes.len() as u64,
                Verified::Committed(&staging, version),
            )
        })();
        if result.is_err() {
            let _ = self.driver.delete(&staging);
        }
        result
    }

    /// A whole blob in one request (POST `?digest=`): written straight at its blob path where
    /// the driver can (`writes_direct`), else streamed into a private session that is removed
    /// again if anything fails; either way a failed monolithic upload leaves nothing behind.
    pub fn blob_put(
        &self,
        repo: &RepoName,
        digest: &Digest,
        body: &mut dyn Read,
        length: BodyLength,
    ) -> Result<(), StoreError> {
        if self.writes_direct(digest) {
            return self.put_direct(repo, digest, body, length);
        }
        let id = self.upload_start(repo)?;
        let result = self.upload_finish(repo, id, digest, body, length);
        if result.is_err() {
            let _ = self.upload_cancel(repo, id);
        }
        result
    }
}

impl Store {
    /// Whether an upload of `digest` whose bytes all come in one request goes straight to its
    /// blob path: the driver writes direct uploads (an object store, where staging costs a
    /// copy) and the running hash verifies it.
    fn writes_direct(&self, digest: &Digest) -> bool {
        self.driver.capabilities().direct_uploads && digest.algorithm() == RUNNING_ALGORITHM
    }

    /// Whether the upload object at `path` holds no bytes. A session this process saw empty
    /// may have been filled by another instance (POST here, PATCH there, PUT here): only the
    /// object tells, so the direct shortcut asks it (one HEAD) before it trusts memory. An
    /// absent object is not empty: the session path decides what that means.
    fn still_empty(&self, path: &StoragePath) -> Result<bool, StoreError> {
        Ok(self
            .driver
            .upload_status(path)?
            .is_some_and(|status| status.size == 0))
    }

    /// Streams `body` to `digest`'s blob path in `repo` through a direct writer, committed
    /// only if it hashes to `digest` (with its length, as `BodyLength` demands): otherwise, or
    /// on any failure, cancelled, and nothing is visible.
    fn put_direct(
        &self,
        repo: &RepoName,
        digest: &Digest,
        body: &mut dyn Read,
        length: BodyLength,
    ) -> Result<(), StoreError> {
        let mut out = self.driver.direct_writer(&layout::blob(repo, digest)?)?;
        let mut hasher = Hasher::new(RUNNING_ALGORITHM);
        let verified = copy_hashed(body, length, &mut hasher, out.as_mut()).and_then(|size| {
            let actual = hasher.finish();
            if &actual == digest {
                Ok(size)
            } else {
                Err(StoreError::DigestMismatch {
                    expected: digest.clone(),
                    actual,
                })
            }
        });
        match verified {
            // Only the landing is in the repository: a slow body holds no presence, so the
            // collector never waits on a client. With dedupe, a copy whose bytes are held
            // elsewhere becomes a placeholder and the write is cancelled.
            Ok(size) => self.place_blob(repo, digest, size, Verified::Direct(out)),
            Err(e) => {
                if let Err(cancel) = out.cancel() {
                    tracing::warn!(repository = %repo, %digest, "cannot cancel a direct upload: {cancel}");
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::driver::local::{LocalDriver, WriterChoice};

    /// Issue 12: a session continues in another store over the same root (as after a
    /// restart) from the state saved with its upload, hashing only bytes a killed append left
    /// past it.
    #[test]
    fn sessions_continue_from_their_saved_state_in_another_store() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            let driver = LocalDriver::new(dir.path(), false, WriterChoice::Buffered).unwrap();
            Store::new(Arc::new(driver), None)
        };
        let repo: RepoName = "a".parse().unwrap();
        let (acked, cut, last) = (
            &b"acknowledged "[..],
            &b"cut short "[..],
            &b"and the end"[..],
        );
        let first = open();
        let id = first.upload_start(&repo).unwrap();
        let len = |b: &[u8]| BodyLength::Exact(b.len() as u64);
        first
            .upload_append(&repo, id, Some(0), &mut &acked[..], len(acked))
            .unwrap();
        // A process killed while appending: bytes past the saved state, never acknowledged.
        let file = dir.path().join(format!("a/.uploads/{id}"));
        let mut raw = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap();
        std::io::Write::write_all(&mut raw, cut).unwrap();
        drop(first);

        let second = open();
        let saved = second.saved_session(&repo, id).map(|(_, size)| size);
        assert_eq!(
            saved,
            Some(acked.len() as u64),
            "the note names the acknowledged end"
        );
        let had = (acked.len() + cut.len()) as u64;
        assert_eq!(second.upload_size(&repo, id).unwrap(), had);
        let whole = [acked, cut, last].concat();
        let digest = Digest::sha256_of(&whole);
        second
            .upload_finish(&repo, id, &digest, &mut &last[..], len(last))
            .unwrap();
        assert_eq!(
            second.blob_size(&repo, &digest).unwrap(),
            whole.len() as u64
        );
        let uploads = dir.path().join("a/.uploads");
        assert_eq!(
            std::fs::read_dir(&uploads).unwrap().count(),
            0,
            "nothing left"
        );

        // The blob carries no note: it was the session's, not the content's.
        let blob = layout::blob(&repo, &digest).unwrap();
        assert_eq!(second.driver.upload_note(&blob).unwrap(), None);
    }

    /// Issue 10: a request for a session whose lookup failed left its slot in the map for
    /// good (~400 bytes per request, from any client).
    #[test]
    fn failed_and_unknown_sessions_leave_no_slot_behind() {
        let dir = tempfile::tempdir().unwrap();
        let driver = LocalDriver::new(dir.path(), false, WriterChoice::Buffered).unwrap();
        let store = Store::new(Arc::new(driver), None);
        let repo: RepoName = "a".parse().unwrap();
        store.in_repo(&repo, || Ok(())).unwrap();
        let slots = || store.sessions.slots.lock().unwrap().len();
        // Unknown: no file.
        for _ in 0..3 {
            let unknown = store.upload_size(&repo, UploadId::new());
            assert!(matches!(unknown, Err(StoreError::UploadUnknown(_))));
        }
        // Failed: `.uploads` is a file, so looking a session up is an I/O error.
        std::fs::write(dir.path().join("a/.uploads"), b"not a directory").unwrap();
        for _ in 0..3 {
            let failed = store.upload_size(&repo, UploadId::new());
            assert!(matches!(failed, Err(StoreError::Driver(_))), "{failed:?}");
        }
        assert_eq!(slots(), 0);
        // A live session keeps its slot until it ends.
        std::fs::remove_file(dir.path().join("a/.uploads")).unwrap();
        let id = store.upload_start(&repo).unwrap();
        assert_eq!(slots(), 1);
        store.upload_cancel(&repo, id).unwrap();
        assert_eq!(slots(), 0);
    }
}
