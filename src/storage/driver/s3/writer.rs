//! The S3 upload writers. Bytes go out as multipart-upload parts of `chunksize` (`Parts`); at
//! most one part is buffered per writer.
//!
//! **Session writer** (`S3Writer`, `Driver::writer`; the driver declares `sealed_uploads`):
//! one multipart upload at the upload's key, open across every writer of the session, in any
//! process, and completed only by `commit`. Why: S3 cannot read an unfinished multipart
//! upload, and finishing one per flush made the next chunk copy every byte before it back in
//! as a part (UploadPartCopy: 16 + 32 + 48 MiB copied for a 64 MiB blob in four chunks).
//! `write` sends each full part of `chunksize`; `flush` sends what is left as a part of its
//! own where S3 takes it as one (at least 5 MiB: parts may differ in size, only the last may
//! be smaller), else keeps it as the session's tail, and saves the session's note.
//!
//! **Notes**: until the commit, the object at the upload's key is the session's note, its
//! whole state: a line of JSON (`State`: the upload id, the ETags of its parts, the size, the
//! store's own note), then the tail's bytes; the size and the upload id are also its metadata
//! (`x-amz-meta-berth-size`, `-upload`), so `upload_status` is one HEAD and `delete` aborts
//! the upload after one. A writer opens a session with one GET of it (no ListParts, no byte
//! read back: the tail, under 5 MiB, comes with it) and continues after the parts it names.
//! Parts that a writer killed mid-chunk sent past them are not named: they are sent again
//! under the same numbers and left out of the completion. Every save of the note is a PUT
//! with `If-Match` the ETag this writer read or wrote (`If-None-Match: *` for a new session),
//! so of two writers racing on one session the second's save fails rather than overwriting
//! the first's state, and a part one of them overwrote under the other's number fails the
//! other's completion (S3 and moto: `InvalidPart`; elsewhere the ETag check below) instead
//! of completing wrong bytes. `commit` HEADs the note (still this writer's?) and completes
//! the upload with `If-Match` its ETag (or, with no part, PUTs the tail so): the completed
//! object replaces the note in one step, so a kill leaves either the session or the object,
//! and no key is ever both an object and a prefix (a file and a directory to s3s-fs). It
//! returns the object's ETag, and the store copies that version only to the blob key
//! (`copy_version`: `x-amz-copy-source-if-match`), whatever replaced it since. A writer
//! dropped unflushed leaves the session as its last note says. A multipart upload nothing
//! completes is aborted by `delete` of its session or by `Driver::abort_stale_uploads`.
//!
//! "Lost": once the session's note is deleted or replaced by another writer (a condition
//! fails), the writer stores nothing more: its `flush`, `save_note` and `commit` fail with
//! `Conflict`, so the store never answers for bytes that are not the session's nor places
//! bytes its hash did not see. A completion is checked against the parts this writer named:
//! its ETag must be the multipart ETag they make (`multipart_etag`), since a part another
//! writer sent under the same number completes silently on a server that does not check
//! part ETags (s3s-fs); a completion that does not match is deleted before anything copies it.
//! Not with SSE-KMS, whose ETags are no MD5s: S3 checks each part's ETag on completion.
//!
//! **Direct writer** (`DirectWriter`, `Driver::direct_writer`): an object whose content the
//! caller verifies before it commits, written at its final key: parts go to a multipart upload
//! there, and `commit` completes it (or, under one part, PUTs the buffer): one request past
//! the parts. Nothing is visible before; a cancel or drop aborts.

use super::client::Body;
use super::multipart::{Multipart, OpenUpload};
use super::{DriverError, Inner, MIN_PART, io_error};
use crate::storage::driver::{StoragePath, UploadStatus, UploadWriter, Version};
use std::sync::Arc;

/// The metadata header of a session's note that holds its size: an object without it is a
/// committed upload (or no upload).
const NOTE_SIZE: &str = "x-amz-meta-berth-size";

/// The metadata header of a session's note naming its multipart upload.
const NOTE_UPLOAD: &str = "x-amz-meta-berth-upload";

/// The size a HEAD's metadata gives a session's note; `None` for any other object.
pub(super) fn noted_size(head: &super::Head) -> Option<u64> {
    metadata(head, NOTE_SIZE)?.parse().ok()
}

fn metadata<'a>(head: &'a super::Head, name: &str) -> Option<&'a str> {
    head.metadata
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, value)| value.as_str())
}

/// A session as its note's first line records it.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct State {
    /// The multipart upload at the key, once a part went out.
    upload: Option<String>,
    /// The ETags of its parts, numbered from 1.
    parts: Vec<String>,
    /// Bytes in the parts and the tail.
    size: u64,
    /// The store's note (`save_note`), in hex.
    note: String,
}

/// A note object's content: `state` as JSON on a line, then `tail`.
fn encode(state: &State, tail: &[u8]) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(state).expect("a session state serializes");
    bytes.push(b'\n');
    bytes.extend_from_slice(tail);
    bytes
}

/// A note object's state and tail.
fn decode(key: &str, bytes: &[u8]) -> Result<(State, Vec<u8>), DriverError> {
    let parsed = bytes.iter().position(|&b| b == b'\n').and_then(|newline| {
        let state: State = serde_json::from_slice(&bytes[..newline]).ok()?;
        let tail = &bytes[newline + 1..];
        (tail.len() as u64 <= state.size).then(|| (state, tail.to_vec()))
    });
    parsed.ok_or_else(|| {
        io_error(
            "read note",
            key,
            std::io::Error::other("not a session note"),
        )
    })
}

/// What is at the key of an upload.
enum Stored {
    Nothing,
    /// A committed upload, with its ETag.
    Object(String),
    /// A session's note: its ETag and content.
    Note(String, Vec<u8>),
}

/// One GET of the upload at `key`.
fn read_note(inner: &Inner, key: &str) -> Result<Stored, DriverError> {
    let reply = inner.send("read note", "GET", Some(key), &[], &[], Body::Empty)?;
    match reply.status {
        200 => {
            let etag = reply.header("etag").unwrap_or_default().to_string();
            if reply.header(NOTE_SIZE).is_none() {
                let _ = reply.bytes();
                return Ok(Stored::Object(etag));
            }
            let bytes = reply.bytes().map_err(|e| io_error("read note", key, e))?;
            Ok(Stored::Note(etag, bytes))
        }
        404 => {
            let _ = reply.bytes();
            Ok(Stored::Nothing)
        }
        _ => Err(io_error("read note", key, reply.into_error("GetObject"))),
    }
}

/// The session at `key` (one HEAD of its note), or the committed object there.
pub(super) fn status(inner: &Inner, key: &str) -> Result<Option<UploadStatus>, DriverError> {
    Ok(inner.head(key)?.map(|head| UploadStatus {
        size: noted_size(&head).unwrap_or(head.size),
        modified: head.modified,
    }))
}

/// The store's note of the session at `key`: `None` if it saved none or the upload is a
/// committed object; `NotFound` if there is neither.
pub(super) fn store_note(inner: &Inner, key: &str) -> Result<Option<Vec<u8>>, DriverError> {
    let bytes = match read_note(inner, key)? {
        Stored::Nothing => return Err(super::not_found(key)),
        Stored::Object(_) => return Ok(None),
        Stored::Note(_, bytes) => bytes,
    };
    let (state, _) = decode(key, &bytes)?;
    if state.note.is_empty() {
        return Ok(None);
    }
    crate::digest::from_hex(&state.note)
        .map(Some)
        .ok_or_else(|| {
            io_error(
                "read note",
                key,
                std::io::Error::other("a store note not in hex"),
            )
        })
}

/// Aborts the multipart upload that the session note `head` describes names, if any: the
/// session is being deleted, and the upload's parts would otherwise stay, billed and
/// invisible, until the stale sweep.
pub(super) fn abort_noted(inner: &Inner, head: &super::Head) {
    if let Some(id) = metadata(head, NOTE_UPLOAD) {
        inner.abort_multipart(
            &head.key,
            Multipart {
                id: id.to_string(),
                parts: Vec::new(),
            },
        );
    }
}

/// Bytes on their way to the object at `key`: fewer than one part in `buf`, the full parts
/// before them in a multipart upload (aborted if dropped open), started with the first of
/// them.
struct Parts {
    open: OpenUpload<Arc<Inner>>,
    buf: Vec<u8>,
}

impl Parts {
    fn new(inner: Arc<Inner>, key: String) -> Parts {
        Parts {
            open: OpenUpload::new(inner, key),
            buf: Vec::new(),
        }
    }

    /// The multipart upload in progress, started if there is none.
    fn upload(&mut self) -> Result<&mut Multipart, DriverError> {
        self.open.started("start upload", &[])
    }

    /// Adds `bytes`; every full part goes out.
    fn extend(&mut self, bytes: &[u8]) -> Result<(), DriverError> {
        let chunk = self.open.inner.chunk_size;
        if self.buf.capacity() < chunk {
            self.buf.reserve(chunk + bytes.len() - self.buf.len());
        }
        self.buf.extend_from_slice(bytes);
        while self.buf.len() >= chunk {
            self.put_part(chunk)?;
            self.buf.drain(..chunk);
        }
        Ok(())
    }

    /// Uploads `buf[..len]` as the next part.
    fn put_part(&mut self, len: usize) -> Result<(), DriverError> {
        self.upload()?;
        let open = &mut self.open;
        let upload = open.upload.as_mut().expect("started above");
        open.inner
            .upload_part("upload part", &open.key, upload, &self.buf[..len])
    }

    /// The rest of `buf` as the last part, then CompleteMultipartUpload with `headers`: the
    /// object's ETag, or `None` (the upload left for the caller to abort) when a condition
    /// failed.
    fn complete(&mut self, headers: &[(&str, &str)]) -> Result<Option<String>, DriverError> {
        self.send_rest()?;
        self.open.complete("complete upload", headers)
    }

    /// The rest of `buf` as the last part.
    fn send_rest(&mut self) -> Result<(), DriverError> {
        if !self.buf.is_empty() {
            self.put_part(self.buf.len())?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Aborts the multipart upload in progress, if any.
    fn abort(&mut self) {
        self.open.abort();
    }

    fn key(&self) -> &str {
        &self.open.key
    }
}

/// A request failed part-way: what a writer holds may miss bytes, so it stores nothing more
/// (the caller ends the upload, as the contract says of a failed write).
fn failed(key: &str) -> DriverError {
    io_error(
        "write upload",
        key,
        std::io::Error::other("an earlier request of this upload failed"),
    )
}

/// The session is no longer this writer's: its note was deleted, or replaced by another
/// writer's (the store answers as for an unknown upload, and removes nothing: the session, if
/// any, is the other writer's).
fn lost(key: &str) -> DriverError {
    DriverError::Conflict {
        driver: super::NAME,
        path: key.to_string(),
        found: "another writer's session, or none".to_string(),
    }
}

/// The ETag S3 gives the completion of a multipart upload whose parts have `parts`: the MD5 of
/// their binary MD5s, then `-` and their count. `None` if one of them is not an MD5 in hex.
fn multipart_etag(parts: &[String]) -> Option<String> {
    let mut md5s = Vec::with_capacity(parts.len() * 16);
    for etag in parts {
        let bytes = crate::digest::from_hex(etag.trim_matches('"'))?;
        if bytes.len() != 16 {
            return None;
        }
        md5s.extend_from_slice(&bytes);
    }
    let digest = md5::compute(&md5s);
    Some(format!(
        "{}-{}",
        crate::digest::to_hex(&digest.0),
        parts.len()
    ))
}

pub(super) struct S3Writer {
    /// The session's multipart upload (as its note names it, and the parts sent since) and
    /// the bytes past its parts: the tail, then what was written since.
    parts: Parts,
    size: u64,
    /// The store's note, saved with the session's state.
    note: Vec<u8>,
    /// The ETag of the session's note as this writer last read or wrote it; `None` once the
    /// session is lost (its note deleted, or replaced by another writer).
    etag: Option<String>,
    /// Whether the note as this writer last read or wrote it names its multipart upload: one
    /// it does not name is this writer's alone, aborted if the session is lost.
    upload_noted: bool,
    /// Written since the note was last saved.
    dirty: bool,
    failed: bool,
}

impl S3Writer {
    /// Continues the session at `path` from its note, or starts one (its note created, so a
    /// session exists from its start).
    pub(super) fn open(inner: Arc<Inner>, path: &StoragePath) -> Result<S3Writer, DriverError> {
        let key = inner.key(path);
        // A session created or removed by another writer between the two steps is read
        // again, once.
        for _ in 0..2 {
            let over = match read_note(&inner, &key)? {
                Stored::Note(etag, bytes) => {
                    let (state, tail) = decode(&key, &bytes)?;
                    let note = crate::digest::from_hex(&state.note).unwrap_or_default();
                    let mut parts = Parts::new(inner, key);
                    parts.buf = tail;
                    parts.open.upload = state.upload.map(|id| Multipart {
                        id,
                        parts: state.parts,
                    });
                    return Ok(S3Writer::new(parts, state.size, note, etag));
                }
                Stored::Nothing => ("if-none-match", "*".to_string()),
                // A committed upload: a new session replaces it.
                Stored::Object(etag) => ("if-match", etag),
            };
            let created = inner.put_object(
                "create upload",
                &key,
                &encode(&State::default(), &[]),
                &[(over.0, &over.1), (NOTE_SIZE, "0")],
            )?;
            if let Some(etag) = created {
                return Ok(S3Writer::new(Parts::new(inner, key), 0, Vec::new(), etag));
            }
        }
        Err(io_error(
            "open upload",
            &key,
            std::io::Error::other("the session's note changed while it was opened"),
        ))
    }

    fn new(parts: Parts, size: u64, note: Vec<u8>, etag: String) -> S3Writer {
        S3Writer {
            upload_noted: parts.open.upload.is_some(),
            parts,
            size,
            note,
            etag: Some(etag),
            dirty: false,
            failed: false,
        }
    }

    fn inner(&self) -> &Inner {
        &self.parts.open.inner
    }

    fn key(&self) -> &str {
        self.parts.key()
    }

    /// The session is lost: nothing of this writer is stored any more, and every later call
    /// fails with `lost`. A multipart upload its note named is left alone (the writer that
    /// replaced the note continues it; a delete aborted it); one only this writer knew of
    /// is aborted.
    fn lose(&mut self) -> DriverError {
        self.etag = None;
        self.parts.buf = Vec::new();
        if self.upload_noted {
            self.parts.open.upload = None;
        } else {
            self.parts.abort();
        }
        lost(self.key())
    }

    fn check(&self) -> Result<(), DriverError> {
        if self.etag.is_none() {
            return Err(lost(self.key()));
        }
        if self.failed {
            return Err(failed(self.key()));
        }
        Ok(())
    }

    fn append(&mut self, buf: Vec<u8>) -> Result<Vec<u8>, DriverError> {
        if buf.is_empty() {
            return Ok(buf);
        }
        self.size += buf.len() as u64;
        self.dirty = true;
        self.parts.extend(&buf)?;
        Ok(buf)
    }

    /// Sends what is left as a part if S3 takes it as one, then saves the note, if anything
    /// changed.
    fn store(&mut self) -> Result<(), DriverError> {
        let etag = self.etag.clone().ok_or_else(|| lost(self.key()))?;
        if !std::mem::take(&mut self.dirty) {
            return Ok(());
        }
        if self.parts.buf.len() >= MIN_PART {
            self.parts.put_part(self.parts.buf.len())?;
            self.parts.buf.clear();
        }
        let upload = self.parts.open.upload.as_ref();
        let state = State {
            upload: upload.map(|u| u.id.clone()),
            parts: upload.map(|u| u.parts.clone()).unwrap_or_default(),
            size: self.size,
            note: crate::digest::to_hex(&self.note),
        };
        let size = self.size.to_string();
        let mut headers = vec![("if-match", etag.as_str()), (NOTE_SIZE, size.as_str())];
        if let Some(id) = &state.upload {
            headers.push((NOTE_UPLOAD, id));
        }
        let saved = self.inner().put_object(
            "save note",
            self.key(),
            &encode(&state, &self.parts.buf),
            &headers,
        )?;
        match saved {
            Some(etag) => {
                self.etag = Some(etag);
                self.upload_noted = state.upload.is_some();
                Ok(())
            }
            // Another writer saved the session first (or it was deleted): what this one holds
            // is not the session's, and the caller must not answer for it.
            None => Err(self.lose()),
        }
    }

    /// Whether the session's note is still the one this writer last read or wrote.
    fn still_ours(&self) -> Result<bool, DriverError> {
        let Some(etag) = &self.etag else {
            return Ok(false);
        };
        Ok(self
            .inner()
            .head(self.key())?
            .is_some_and(|head| &head.etag == etag))
    }

    /// Makes every byte written the object at the key: the upload completed, or the buffer
    /// PUT when no part went out; its ETag. `lost` if the session is not this writer's.
    fn complete(&mut self) -> Result<String, DriverError> {
        let etag = self.etag.clone().ok_or_else(|| lost(self.key()))?;
        if !self.still_ours()? {
            return Err(self.lose());
        }
        let key = self.key().to_string();
        // In place of the note, in one step (see the module's notes).
        let condition = [("if-match", etag.as_str())];
        if self.parts.open.upload.is_none() {
            let stored =
                self.inner()
                    .put_object("commit upload", &key, &self.parts.buf, &condition)?;
            return stored.ok_or_else(|| self.lose());
        }
        self.parts.send_rest()?;
        let upload = self.parts.open.upload.as_ref().expect("checked above");
        let expected = self
            .inner()
            .client
            .etags_are_md5()
            .then(|| multipart_etag(&upload.parts))
            .flatten();
        let Some(completed) = self.parts.open.complete("complete upload", &condition)? else {
            return Err(self.lose());
        };
        if expected.is_some_and(|expected| completed.trim_matches('"') != expected) {
            // Another writer's part under one of this writer's numbers: the object is not the
            // bytes written. It goes before anything copies it; the session goes with it.
            tracing::warn!(
                key,
                "a completed upload holds a part another writer sent; removed"
            );
            self.inner().delete_key(&key)?;
            return Err(lost(&key));
        }
        Ok(completed)
    }
}

/// The session's multipart upload stays open for the next writer: its note names it.
impl Drop for S3Writer {
    fn drop(&mut self) {
        self.parts.open.upload = None;
    }
}

impl UploadWriter for S3Writer {
    fn size(&self) -> u64 {
        self.size
    }

    fn write(&mut self, buf: Vec<u8>) -> Result<Vec<u8>, DriverError> {
        self.check()?;
        let result = self.append(buf);
        self.failed = result.is_err();
        result
    }

    fn flush(&mut self) -> Result<(), DriverError> {
        self.check()?;
        let result = self.store();
        self.failed = result.is_err();
        result
    }

    /// Saved with the session's state, in the PUT of the note that `flush` makes (see the
    /// module's notes). A session that is gone gets none.
    fn save_note(&mut self, note: &[u8]) -> Result<(), DriverError> {
        if self.note != note {
            self.note = note.to_vec();
            self.dirty = true;
        }
        self.flush()
    }

    fn commit(mut self: Box<Self>) -> Result<Version, DriverError> {
        self.check()?;
        let result = self.complete();
        self.failed = result.is_err();
        result.map(Version::new)
    }

    /// Aborts the session's upload and removes its note, while the session is still this
    /// writer's (another writer may have replaced it).
    fn cancel(mut self: Box<Self>) -> Result<(), DriverError> {
        if !self.still_ours()? {
            return Ok(());
        }
        self.parts.abort();
        self.inner().delete_key(self.key())
    }
}

/// A writer of an object at its final key, made visible by `commit` only (see the module).
pub(super) struct DirectWriter {
    parts: Parts,
    size: u64,
    failed: bool,
}

impl DirectWriter {
    /// Makes no request: the first goes out with the first full part.
    pub(super) fn new(inner: Arc<Inner>, path: &StoragePath) -> DirectWriter {
        let key = inner.key(path);
        DirectWriter {
            parts: Parts::new(inner, key),
            size: 0,
            failed: false,
        }
    }
}

impl UploadWriter for DirectWriter {
    fn size(&self) -> u64 {
        self.size
    }

    fn write(&mut self, buf: Vec<u8>) -> Result<Vec<u8>, DriverError> {
        if self.failed {
            return Err(failed(self.parts.key()));
        }
        self.size += buf.len() as u64;
        let result = self.parts.extend(&buf);
        self.failed = result.is_err();
        result.map(|()| buf)
    }

    /// Parts go out as they fill, so nothing is in flight; nothing becomes visible either.
    fn flush(&mut self) -> Result<(), DriverError> {
        if self.failed {
            return Err(failed(self.parts.key()));
        }
        Ok(())
    }

    /// A direct write is no session: it keeps no notes.
    fn save_note(&mut self, note: &[u8]) -> Result<(), DriverError> {
        let _ = note;
        Err(DriverError::Unsupported {
            driver: super::NAME,
            op: "save note",
            path: self.parts.key().to_string(),
        })
    }

    /// CompleteMultipartUpload, or under one part a PUT of the buffer: whatever was at the
    /// key is replaced in one step (not kept by `If-None-Match`: a blob pushed again must be
    /// as new as the push, for `gcDelay`, which keeping it would take a `touch` for).
    fn commit(mut self: Box<Self>) -> Result<Version, DriverError> {
        self.flush()?;
        let key = self.parts.key().to_string();
        let stored = if self.parts.open.upload.is_some() {
            self.parts.complete(&[])?
        } else {
            self.parts
                .open
                .inner
                .put_object("put", &key, &self.parts.buf, &[])?
        };
        stored.map(Version::new).ok_or_else(|| {
            io_error(
                "commit upload",
                &key,
                std::io::Error::other("an unconditional write was refused"),
            )
        })
    }

    /// Nothing was visible: the parts go with the multipart upload.
    fn cancel(mut self: Box<Self>) -> Result<(), DriverError> {
        self.parts.abort();
        Ok(())
    }
}
