//! The S3 upload writer: bytes go out as multipart-upload parts of `chunksize`, and the
//! object at the upload's key always holds every byte flushed, as a plain object.
//!
//! Why the stored state is the object itself: the contract asks that after `flush` the bytes
//! are readable at the path (`stat`, `get`, `reader`: a session's size and a resumed hash are
//! read from it) and that a writer opened later, in any process, continues after them. S3
//! cannot read an unfinished multipart upload, so `flush` finishes one: a PUT (`If-Match` the
//! ETag this writer last saw) while everything fits in one part, else the last part and
//! CompleteMultipartUpload (checked against that ETag first, and sent with `If-Match`, which
//! S3 honours). A writer opened on a stored object continues without reading it back: its
//! bytes become the first parts of the next multipart upload by server-side UploadPartCopy
//! (`x-amz-copy-source-if-match` the ETag), or, below S3's 5 MiB minimum part, are read into
//! the buffer (a ranged GET of less than one part). So the state in the bucket is the object
//! and its ETag, nothing else, and no upload id needs to outlive a flush: a writer dropped
//! unflushed aborts its multipart upload, keeping what the last flush stored, as the contract
//! says. Memory per writer: one part (`chunksize`) plus the caller's last buffer.
//!
//! "Gone": once the object is deleted or replaced by another write (a condition fails), the
//! writer counts bytes but stores none, and `commit` changes nothing, as the contract asks.

use super::client::{self, Body};
use super::{DriverError, Inner, MAX_PART, MIN_PART, io_error};
use crate::storage::driver::{StoragePath, UploadWriter};
use std::sync::Arc;

/// A multipart upload in progress: its id and the ETags of its parts, numbered from 1.
struct Multipart {
    id: String,
    parts: Vec<String>,
}

pub(super) struct S3Writer {
    inner: Arc<Inner>,
    key: String,
    size: u64,
    /// The ETag of the object at `key` as this writer last saw or wrote it; `None` once the
    /// object is gone (deleted or replaced by another write).
    base: Option<String>,
    /// Leading bytes of the stored object that are neither in `upload`'s parts nor in `buf`
    /// yet: taken in (copied as parts, or read into `buf`) before the first new byte.
    unabsorbed: u64,
    upload: Option<Multipart>,
    /// Bytes after the last part (fewer than `chunk_size` between writes).
    buf: Vec<u8>,
    /// Written since the last flush.
    dirty: bool,
    /// A request failed part-way: what is held may miss bytes, so nothing more is stored
    /// (the caller ends the upload, as the contract says of a failed write).
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
            inner,
            key,
            size,
            base: Some(etag),
            unabsorbed: size,
            upload: None,
            buf: Vec::new(),
            dirty: false,
            failed: false,
        }
    }

    fn chunk(&self) -> usize {
        self.inner.chunk_size
    }

    /// The object went: nothing of this writer is stored any more.
    fn gone(&mut self) {
        self.base = None;
        self.unabsorbed = 0;
        self.buf = Vec::new();
        self.abort();
    }

    /// Aborts the multipart upload in progress, if any (best effort: a leftover is only
    /// storage until the bucket's lifecycle rule removes it).
    fn abort(&mut self) {
        let Some(upload) = self.upload.take() else {
            return;
        };
        let result = self.inner.send(
            "abort upload",
            "DELETE",
            Some(&self.key),
            &[("uploadId", &upload.id)],
            &[],
            Body::Empty,
        );
        match result {
            Ok(reply) if matches!(reply.status, 200 | 204 | 404) => {
                let _ = reply.bytes();
            }
            Ok(reply) => {
                tracing::warn!(key = %self.key, "cannot abort a multipart upload: {}", reply.into_error("AbortMultipartUpload"));
            }
            Err(e) => tracing::warn!(key = %self.key, "cannot abort a multipart upload: {e}"),
        }
    }

    /// The multipart upload in progress, started if there is none.
    fn upload(&mut self) -> Result<&mut Multipart, DriverError> {
        if self.upload.is_none() {
            let reply = self.inner.send(
                "start upload",
                "POST",
                Some(&self.key),
                &[("uploads", "")],
                &[],
                Body::Empty,
            )?;
            if reply.status != 200 {
                return Err(io_error(
                    "start upload",
                    &self.key,
                    reply.into_error("CreateMultipartUpload"),
                ));
            }
            let xml = reply
                .text()
                .map_err(|e| io_error("start upload", &self.key, e))?;
            let id = client::first(&xml, "UploadId").ok_or_else(|| {
                io_error(
                    "start upload",
                    &self.key,
                    std::io::Error::other("CreateMultipartUpload: no UploadId"),
                )
            })?;
            self.upload = Some(Multipart {
                id,
                parts: Vec::new(),
            });
        }
        Ok(self.upload.as_mut().expect("started above"))
    }

    /// Uploads `buf[..len]` as the next part.
    fn put_part(&mut self, len: usize) -> Result<(), DriverError> {
        let (id, number) = {
            let upload = self.upload()?;
            (upload.id.clone(), (upload.parts.len() + 1).to_string())
        };
        let reply = self.inner.send(
            "upload part",
            "PUT",
            Some(&self.key),
            &[("partNumber", &number), ("uploadId", &id)],
            &[],
            Body::Bytes(&self.buf[..len]),
        )?;
        if reply.status != 200 {
            return Err(io_error(
                "upload part",
                &self.key,
                reply.into_error("UploadPart"),
            ));
        }
        let etag = reply.header("etag").unwrap_or_default().to_string();
        let _ = reply.bytes();
        self.upload()?.parts.push(etag);
        Ok(())
    }

    /// Takes in the stored object before the first new byte: as copied parts when S3 takes
    /// it as a part, else read into `buf`. Returns false if the object went.
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
            let reply = self.inner.send(
                "continue upload",
                "GET",
                Some(&self.key),
                &[],
                &[("range", &range), ("if-match", &base)],
                Body::Empty,
            )?;
            return match reply.status {
                200 | 206 => {
                    let stored = reply
                        .bytes()
                        .map_err(|e| io_error("continue upload", &self.key, e))?;
                    self.buf.splice(0..0, stored);
                    Ok(true)
                }
                404 | 412 => {
                    let _ = reply.bytes();
                    self.gone();
                    Ok(false)
                }
                _ => Err(io_error(
                    "continue upload",
                    &self.key,
                    reply.into_error("GetObject"),
                )),
            };
        }
        // Pieces of at most 5 GiB, each at least 5 MiB: equal shares.
        let pieces = stored.div_ceil(MAX_PART);
        let source = self.inner.copy_source(&self.key);
        let mut start = 0;
        for piece in 0..pieces {
            let end = stored * (piece + 1) / pieces;
            let (id, number) = {
                let upload = self.upload()?;
                (upload.id.clone(), (upload.parts.len() + 1).to_string())
            };
            let range = format!("bytes={start}-{}", end - 1);
            let reply = self.inner.send(
                "continue upload",
                "PUT",
                Some(&self.key),
                &[("partNumber", &number), ("uploadId", &id)],
                &[
                    ("x-amz-copy-source", &source),
                    ("x-amz-copy-source-range", &range),
                    ("x-amz-copy-source-if-match", &base),
                ],
                Body::Empty,
            )?;
            match reply.status {
                200 => {
                    let xml = reply
                        .text()
                        .map_err(|e| io_error("continue upload", &self.key, e))?;
                    let etag = client::first(&xml, "ETag").filter(|_| !xml.contains("<Error>"));
                    let Some(etag) = etag else {
                        return Err(io_error(
                            "continue upload",
                            &self.key,
                            std::io::Error::other(format!("UploadPartCopy: {xml}")),
                        ));
                    };
                    self.upload()?.parts.push(etag);
                }
                404 | 412 => {
                    let _ = reply.bytes();
                    self.gone();
                    return Ok(false);
                }
                _ => {
                    return Err(io_error(
                        "continue upload",
                        &self.key,
                        reply.into_error("UploadPartCopy"),
                    ));
                }
            }
            start = end;
        }
        Ok(true)
    }

    /// Finishes the multipart upload as the object at `key`, if it is still this writer's.
    fn complete(&mut self, base: &str) -> Result<(), DriverError> {
        // moto ignores `If-Match` on completion; S3 honours it. Both see this check.
        if self.inner.head(&self.key)?.is_none_or(|h| h.etag != base) {
            self.gone();
            return Ok(());
        }
        if !self.buf.is_empty() {
            self.put_part(self.buf.len())?;
            self.buf.clear();
        }
        let Some(upload) = self.upload.as_ref() else {
            return Ok(());
        };
        let mut xml = String::from("<CompleteMultipartUpload>");
        for (i, etag) in upload.parts.iter().enumerate() {
            xml.push_str(&format!(
                "<Part><PartNumber>{}</PartNumber><ETag>{etag}</ETag></Part>",
                i + 1
            ));
        }
        xml.push_str("</CompleteMultipartUpload>");
        let id = upload.id.clone();
        let reply = self.inner.send(
            "complete upload",
            "POST",
            Some(&self.key),
            &[("uploadId", &id)],
            &[("if-match", base)],
            Body::Bytes(xml.as_bytes()),
        )?;
        match reply.status {
            200 => {
                let body = reply
                    .text()
                    .map_err(|e| io_error("complete upload", &self.key, e))?;
                let etag = client::first(&body, "ETag").filter(|_| !body.contains("<Error>"));
                let Some(etag) = etag else {
                    return Err(io_error(
                        "complete upload",
                        &self.key,
                        std::io::Error::other(format!("CompleteMultipartUpload: {body}")),
                    ));
                };
                self.upload = None;
                self.base = Some(etag);
                self.unabsorbed = self.size;
                Ok(())
            }
            404 | 412 => {
                let _ = reply.bytes();
                self.gone();
                Ok(())
            }
            _ => Err(io_error(
                "complete upload",
                &self.key,
                reply.into_error("CompleteMultipartUpload"),
            )),
        }
    }
    fn check(&self) -> Result<(), DriverError> {
        if self.failed {
            return Err(io_error(
                "write upload",
                &self.key,
                std::io::Error::other("an earlier request of this upload failed"),
            ));
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
        let chunk = self.chunk();
        if self.buf.capacity() < chunk {
            self.buf.reserve(chunk + buf.len() - self.buf.len());
        }
        self.buf.extend_from_slice(&buf);
        while self.buf.len() >= chunk {
            self.put_part(chunk)?;
            self.buf.drain(..chunk);
        }
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
        if self.upload.is_some() {
            return self.complete(&base);
        }
        // Everything is in `buf`, less than a part: one conditional PUT. `buf` stays, as the
        // whole object, for the next write to go on from.
        let key = self.key.clone();
        match self
            .inner
            .put_object("flush upload", &key, &self.buf, &[("if-match", &base)])?
        {
            Some(etag) => self.base = Some(etag),
            None => self.gone(),
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

    /// Not yet: the driver declares no `upload_notes`, so a session resumed after a restart
    /// hashes its stored bytes once (issue 13 keeps the note with the flushed object).
    fn save_note(&mut self, note: &[u8]) -> Result<(), DriverError> {
        let _ = note;
        Err(DriverError::Unsupported {
            driver: super::NAME,
            op: "save note",
            path: self.key.clone(),
        })
    }

    fn commit(mut self: Box<Self>) -> Result<(), DriverError> {
        self.flush()
    }

    fn cancel(mut self: Box<Self>) -> Result<(), DriverError> {
        self.abort();
        let Some(base) = self.base.take() else {
            return Ok(());
        };
        // Removed only while it is still this writer's (another write may have replaced it).
        if self.inner.head(&self.key)?.is_some_and(|h| h.etag == base) {
            self.inner.delete_key(&self.key)?;
        }
        Ok(())
    }
}

impl Drop for S3Writer {
    /// Keeps what the last flush stored: a multipart upload begun since is aborted.
    fn drop(&mut self) {
        self.abort();
    }
}
