//! The S3 upload writers. Bytes go out as multipart-upload parts of `chunksize` (`Parts`); at
//! most one part is buffered per writer.
//!
//! **Session writer** (`S3Writer`, `Driver::writer`): the object at the upload's key always
//! holds every byte flushed, as a plain object. Why the stored state is the object itself: the
//! contract asks that after `flush` the bytes are readable at the path (`stat`, `get`,
//! `reader`: a session's size and a resumed hash are read from it) and that a writer opened
//! later, in any process, continues after them. S3 cannot read an unfinished multipart upload,
//! so `flush` finishes one: a PUT (`If-Match` the ETag this writer last saw) while everything
//! fits in one part, else the last part and CompleteMultipartUpload (checked against that ETag
//! first, and sent with `If-Match`, which S3 honours). A writer opened on a stored object
//! continues without reading it back: its bytes become the first parts of the next multipart
//! upload by server-side UploadPartCopy (`x-amz-copy-source-if-match` the ETag), or, below
//! S3's 5 MiB minimum part, are read into the buffer (a ranged GET of less than one part). No
//! upload id needs to outlive a flush: a writer dropped unflushed aborts its multipart upload,
//! keeping what the last flush stored, as the contract says.
//!
//! **Notes** (`save_note`): the object `<key>/.note`, whose first line is the ETag of the
//! upload's object the note was saved for. A note is only handed out while that ETag is still
//! the object's (`note_for`), so bytes and note never disagree: a flush after the note, by
//! this process or another, makes it stale, and a stale note reads as none (the store then
//! hashes the bytes once). One small PUT per saved note; the note goes with the upload
//! (`delete` removes keys below a path) and is removed when the upload commits or is
//! cancelled.
//!
//! "Gone": once the object is deleted or replaced by another write (a condition fails), the
//! writer counts bytes but stores none, and `commit` changes nothing, as the contract asks.
//!
//! **Direct writer** (`DirectWriter`, `Driver::direct_writer`): an object whose content the
//! caller verifies before it commits, written at its final key: parts go to a multipart upload
//! there, and `commit` completes it (or, under one part, PUTs the buffer): one request past
//! the parts. Nothing is visible before; a cancel or drop aborts.

use super::client::Body;
use super::multipart::{Multipart, OpenUpload};
use super::{DriverError, Inner, MAX_PART, MIN_PART, io_error};
use crate::storage::driver::{StoragePath, UploadWriter};
use std::sync::Arc;

/// The key of the note of the upload at `key`.
pub(super) fn note_key(key: &str) -> String {
    format!("{key}/.note")
}

/// The note a note object holds if it was saved for the object version `etag`.
pub(super) fn note_for(etag: &str, stored: &[u8]) -> Option<Vec<u8>> {
    let newline = stored.iter().position(|&b| b == b'\n')?;
    (&stored[..newline] == etag.as_bytes()).then(|| stored[newline + 1..].to_vec())
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
        if !self.buf.is_empty() {
            self.put_part(self.buf.len())?;
            self.buf.clear();
        }
        self.open.complete("complete upload", headers)
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

pub(super) struct S3Writer {
    parts: Parts,
    size: u64,
    /// The ETag of the object at `key` as this writer last saw or wrote it; `None` once the
    /// object is gone (deleted or replaced by another write).
    base: Option<String>,
    /// Leading bytes of the stored object that are neither in the parts nor in the buffer
    /// yet: taken in (copied as parts, or read into the buffer) before the first new byte.
    unabsorbed: u64,
    /// Written since the last flush.
    dirty: bool,
    /// A note may be stored for this upload (this writer saved one, or an earlier writer
    /// may have): committing or cancelling removes it.
    noted: bool,
    failed: bool,
}

impl S3Writer {
    /// Continues the object at `path`, or creates it empty (visible at once: a session exists
    /// from its start).
    pub(super) fn open(inner: Arc<Inner>, path: &StoragePath) -> Result<S3Writer, DriverError> {
        let key = inner.key(path);
        let mut head = inner.head(&key)?;
        if head.is_none() {
            match inner.put_object("create upload", &key, b"", &[("if-none-match", "*")])? {
                Some(etag) => {
                    return Ok(S3Writer::new(inner, key, 0, etag));
                }
                // Created by another writer meanwhile: continue that one.
                None => head = inner.head(&key)?,
            }
        }
        let head = head.ok_or_else(|| super::not_found(path.as_str()))?;
        Ok(S3Writer::new(inner, key, head.size, head.etag))
    }

    fn new(inner: Arc<Inner>, key: String, size: u64, etag: String) -> S3Writer {
        S3Writer {
            parts: Parts::new(inner, key),
            size,
            base: Some(etag),
            unabsorbed: size,
            dirty: false,
            noted: size > 0,
            failed: false,
        }
    }

    fn inner(&self) -> &Inner {
        &self.parts.open.inner
    }

    fn key(&self) -> &str {
        self.parts.key()
    }

    /// The object went: nothing of this writer is stored any more.
    fn gone(&mut self) {
        self.base = None;
        self.unabsorbed = 0;
        self.parts.buf = Vec::new();
        self.parts.abort();
    }

    /// Takes in the stored object before the first new byte: as copied parts when S3 takes
    /// it as a part, else read into the buffer. Returns false if the object went.
    fn absorb(&mut self) -> Result<bool, DriverError> {
        let stored = std::mem::take(&mut self.unabsorbed);
        let Some(base) = self.base.clone() else {
            return Ok(false);
        };
        if stored == 0 {
            return Ok(true);
        }
        if stored < MIN_PART as u64 {
            let range = format!("bytes=0-{}", stored - 1);
            let reply = self.inner().send(
                "continue upload",
                "GET",
                Some(self.key()),
                &[],
                &[("range", &range), ("if-match", &base)],
                Body::Empty,
            )?;
            return match reply.status {
                200 | 206 => {
                    let stored = reply
                        .bytes()
                        .map_err(|e| io_error("continue upload", self.key(), e))?;
                    self.parts.buf.splice(0..0, stored);
                    Ok(true)
                }
                404 | 412 => {
                    let _ = reply.bytes();
                    self.gone();
                    Ok(false)
                }
                _ => Err(io_error(
                    "continue upload",
                    self.key(),
                    reply.into_error("GetObject"),
                )),
            };
        }
        // Pieces of at most 5 GiB, each at least 5 MiB: equal shares.
        let pieces = stored.div_ceil(MAX_PART);
        let mut start = 0;
        for piece in 0..pieces {
            let end = stored * (piece + 1) / pieces;
            let upload = self.parts.upload()?;
            let (id, number) = (upload.id.clone(), upload.parts.len() + 1);
            let key = self.key();
            let copied =
                self.inner()
                    .upload_part_copy(key, &id, number, key, (start, end), &base)?;
            match copied {
                Some(etag) => self.parts.upload()?.parts.push(etag),
                None => {
                    self.gone();
                    return Ok(false);
                }
            }
            start = end;
        }
        Ok(true)
    }

    /// Finishes the multipart upload as the object at `key`, if it is still this writer's.
    fn complete(&mut self, base: &str) -> Result<(), DriverError> {
        // moto ignores `If-Match` on completion; S3 honours it. Both see this check.
        if self
            .inner()
            .head(self.key())?
            .is_none_or(|h| h.etag != base)
        {
            self.gone();
            return Ok(());
        }
        match self.parts.complete(&[("if-match", base)])? {
            Some(etag) => {
                self.base = Some(etag);
                self.unabsorbed = self.size;
            }
            None => self.gone(),
        }
        Ok(())
    }

    fn check(&self) -> Result<(), DriverError> {
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
        if self.base.is_none() || !self.absorb()? {
            return Ok(buf);
        }
        self.parts.extend(&buf)?;
        Ok(buf)
    }

    /// Makes every byte written so far the object at `key`.
    fn store(&mut self) -> Result<(), DriverError> {
        if !std::mem::take(&mut self.dirty) {
            return Ok(());
        }
        let Some(base) = self.base.clone() else {
            return Ok(());
        };
        if self.parts.open.upload.is_some() {
            return self.complete(&base);
        }
        // Everything is in the buffer, less than a part: one conditional PUT. The buffer
        // stays, as the whole object, for the next write to go on from.
        let stored = self.inner().put_object(
            "flush upload",
            self.key(),
            &self.parts.buf,
            &[("if-match", &base)],
        )?;
        match stored {
            Some(etag) => self.base = Some(etag),
            None => self.gone(),
        }
        Ok(())
    }

    /// Removes the upload's note, if it may have one.
    fn drop_note(&self) -> Result<(), DriverError> {
        if self.noted {
            self.inner().delete_key(&note_key(self.key()))?;
        }
        Ok(())
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

    /// One PUT of `<key>/.note`, naming the ETag of the bytes flushed (see the module's
    /// notes). An upload that is gone gets none.
    fn save_note(&mut self, note: &[u8]) -> Result<(), DriverError> {
        self.flush()?;
        let Some(base) = &self.base else {
            return Ok(());
        };
        let mut stored = Vec::with_capacity(base.len() + 1 + note.len());
        stored.extend_from_slice(base.as_bytes());
        stored.push(b'\n');
        stored.extend_from_slice(note);
        let key = note_key(self.key());
        self.noted = true;
        match self.inner().put_object("save note", &key, &stored, &[])? {
            Some(_) => Ok(()),
            None => Err(io_error(
                "save note",
                &key,
                std::io::Error::other("unconditional PUT refused"),
            )),
        }
    }

    fn commit(mut self: Box<Self>) -> Result<(), DriverError> {
        self.flush()?;
        // The note was the session's; the finished object is only its bytes.
        self.drop_note()
    }

    fn cancel(mut self: Box<Self>) -> Result<(), DriverError> {
        self.parts.abort();
        let Some(base) = self.base.take() else {
            return Ok(());
        };
        // Removed only while it is still this writer's (another write may have replaced it).
        // The note first: one left without its upload would be a prefix nothing removes.
        if self
            .inner()
            .head(self.key())?
            .is_some_and(|h| h.etag == base)
        {
            self.drop_note()?;
            self.inner().delete_key(self.key())?;
        }
        Ok(())
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
    fn commit(mut self: Box<Self>) -> Result<(), DriverError> {
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
        stored.map(drop).ok_or_else(|| {
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
