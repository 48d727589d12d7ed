//! S3 multipart uploads as requests (start, part, part copy, complete, abort), shared by the
//! upload writers and `copy`, and the multipart copy of large objects: UploadPartCopy parts of
//! `multipartcopychunksize`, at most `multipartcopymaxconcurrency` of them in flight across
//! all of a driver's copies (`CopySlots`), each on a thread of a scope that ends with the
//! copy, so a copy holds no thread and no byte after it. Also the sweep of stale uploads
//! (`Driver::abort_stale_uploads`): ListMultipartUploads under the store's prefix, aborting
//! those initiated, last given a part (ListParts), and whose session's note at their key was
//! last saved (a HEAD), at least `gcDelay` ago.

use super::client::{self, Body};
use super::{DriverError, Head, Inner, MAX_PART, io_error, not_found};
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

/// The most parts one multipart upload may have.
const MAX_PARTS: u64 = 10_000;

/// A multipart upload in progress: its id and the ETags of its parts, numbered from 1.
pub(super) struct Multipart {
    pub(super) id: String,
    pub(super) parts: Vec<String>,
}

/// The ETag in an answer S3 may give with status 200 and an error in its body (part copies,
/// completions).
fn etag_of(op: &'static str, key: &str, xml: &str) -> Result<String, DriverError> {
    super::error_in_body(op, key, xml)?;
    client::first(xml, "ETag")
        .ok_or_else(|| io_error(op, key, std::io::Error::other(format!("{op}: {xml}"))))
}

/// A multipart upload at `key` that is aborted when dropped before it completed (an early
/// return, a failed completion, a panic): S3 would keep an open upload's parts, billed and
/// invisible. The writers' `Parts` (`Arc<Inner>`) and `copy_in_parts` (`&Inner`) share it.
pub(super) struct OpenUpload<I: Deref<Target = Inner>> {
    pub(super) inner: I,
    pub(super) key: String,
    /// `None` until started and once completed or aborted.
    pub(super) upload: Option<Multipart>,
}

impl<I: Deref<Target = Inner>> OpenUpload<I> {
    pub(super) fn new(inner: I, key: String) -> OpenUpload<I> {
        OpenUpload {
            inner,
            key,
            upload: None,
        }
    }

    /// The upload, started (with `headers`) if there is none.
    pub(super) fn started(
        &mut self,
        op: &'static str,
        headers: &[(&str, &str)],
    ) -> Result<&mut Multipart, DriverError> {
        if self.upload.is_none() {
            self.upload = Some(self.inner.start_multipart(op, &self.key, headers)?);
        }
        Ok(self.upload.as_mut().expect("started above"))
    }

    /// CompleteMultipartUpload with `headers`: the object's ETag, after which there is
    /// nothing to abort; `None` (still open: aborted on drop) when a condition failed.
    pub(super) fn complete(
        &mut self,
        op: &'static str,
        headers: &[(&str, &str)],
    ) -> Result<Option<String>, DriverError> {
        let upload = self.upload.as_ref().expect("completed only once started");
        let etag = self
            .inner
            .complete_multipart(op, &self.key, upload, headers)?;
        if etag.is_some() {
            self.upload = None;
        }
        Ok(etag)
    }

    /// Aborts the upload in progress, if any.
    pub(super) fn abort(&mut self) {
        if let Some(upload) = self.upload.take() {
            self.inner.abort_multipart(&self.key, upload);
        }
    }
}

impl<I: Deref<Target = Inner>> Drop for OpenUpload<I> {
    fn drop(&mut self) {
        self.abort();
    }
}

/// The driver's part-copy slots: at most `multipartcopymaxconcurrency` UploadPartCopy
/// requests in flight across all of its copies at once, so N concurrent copies share one
/// bound rather than each spawning its own (N x 99 threads by default).
pub(super) struct CopySlots {
    free: Mutex<usize>,
    freed: Condvar,
}

/// Slots held, given back when dropped (also when a copy's worker panics).
struct Held<'a> {
    slots: &'a CopySlots,
    count: usize,
}

impl CopySlots {
    pub(super) fn new(count: usize) -> CopySlots {
        CopySlots {
            free: Mutex::new(count.max(1)),
            freed: Condvar::new(),
        }
    }

    /// Up to `want` slots that are free now, without waiting (helper threads: a copy spawns
    /// one per slot it gets, so the threads are bounded as the requests are).
    fn take_free(&self, want: usize) -> Held<'_> {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        let count = want.min(*free);
        *free -= count;
        Held { slots: self, count }
    }

    /// The slots free now.
    #[cfg(test)]
    pub(super) fn free(&self) -> usize {
        *self.free.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One slot, waiting for it (the copying thread itself, which always makes progress).
    fn take_one(&self) -> Held<'_> {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        while *free == 0 {
            free = self
                .freed
                .wait(free)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *free -= 1;
        Held {
            slots: self,
            count: 1,
        }
    }
}

impl<'a> Held<'a> {
    /// One of the held slots, held apart from the rest.
    fn split_off_one(&mut self) -> Held<'a> {
        self.count -= 1;
        Held {
            slots: self.slots,
            count: 1,
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if self.count > 0 {
            *self
                .slots
                .free
                .lock()
                .unwrap_or_else(PoisonError::into_inner) += self.count;
            self.slots.freed.notify_all();
        }
    }
}

impl Inner {
    /// CreateMultipartUpload at `key` with `headers` (metadata the object gets).
    pub(super) fn start_multipart(
        &self,
        op: &'static str,
        key: &str,
        headers: &[(&str, &str)],
    ) -> Result<Multipart, DriverError> {
        let reply = self.send(
            op,
            "POST",
            Some(key),
            &[("uploads", "")],
            headers,
            Body::Empty,
        )?;
        if reply.status != 200 {
            return Err(io_error(op, key, reply.into_error("CreateMultipartUpload")));
        }
        let xml = reply.text().map_err(|e| io_error(op, key, e))?;
        let id = client::first(&xml, "UploadId").ok_or_else(|| {
            io_error(
                op,
                key,
                std::io::Error::other("CreateMultipartUpload: no UploadId"),
            )
        })?;
        Ok(Multipart {
            id,
            parts: Vec::new(),
        })
    }

    /// UploadPart: `bytes` as the next part of `upload`.
    pub(super) fn upload_part(
        &self,
        op: &'static str,
        key: &str,
        upload: &mut Multipart,
        bytes: &[u8],
    ) -> Result<(), DriverError> {
        let number = (upload.parts.len() + 1).to_string();
        let reply = self.send(
            op,
            "PUT",
            Some(key),
            &[("partNumber", &number), ("uploadId", &upload.id)],
            &[],
            Body::Bytes(bytes),
        )?;
        if reply.status != 200 {
            return Err(io_error(op, key, reply.into_error("UploadPart")));
        }
        let etag = reply.header("etag").unwrap_or_default().to_string();
        let _ = reply.bytes();
        upload.parts.push(etag);
        Ok(())
    }

    /// UploadPartCopy: bytes `start..end` of `source` at version `etag` as part `number` of
    /// upload `id`; its ETag, or `None` when the source is gone or changed (or the upload).
    pub(super) fn upload_part_copy(
        &self,
        key: &str,
        id: &str,
        number: usize,
        source: &str,
        (start, end): (u64, u64),
        etag: &str,
    ) -> Result<Option<String>, DriverError> {
        let op = "copy part";
        let number = number.to_string();
        let range = format!("bytes={start}-{}", end - 1);
        let reply = self.send(
            op,
            "PUT",
            Some(key),
            &[("partNumber", &number), ("uploadId", id)],
            &[
                ("x-amz-copy-source", &self.copy_source(source)),
                ("x-amz-copy-source-range", &range),
                ("x-amz-copy-source-if-match", etag),
            ],
            Body::Empty,
        )?;
        match reply.status {
            200 => {
                let xml = reply.text().map_err(|e| io_error(op, key, e))?;
                etag_of(op, key, &xml).map(Some)
            }
            404 | 412 => {
                let _ = reply.bytes();
                Ok(None)
            }
            _ => Err(io_error(op, key, reply.into_error("UploadPartCopy"))),
        }
    }

    /// CompleteMultipartUpload with `headers` (conditions): the object's new ETag, or `None`
    /// when a condition failed, the upload is gone, or its parts are not the ETags listed
    /// (`InvalidPart`: another writer sent a part under one of their numbers).
    pub(super) fn complete_multipart(
        &self,
        op: &'static str,
        key: &str,
        upload: &Multipart,
        headers: &[(&str, &str)],
    ) -> Result<Option<String>, DriverError> {
        let mut xml = String::from("<CompleteMultipartUpload>");
        for (i, etag) in upload.parts.iter().enumerate() {
            xml.push_str(&format!(
                "<Part><PartNumber>{}</PartNumber><ETag>{etag}</ETag></Part>",
                i + 1
            ));
        }
        xml.push_str("</CompleteMultipartUpload>");
        let reply = self.send(
            op,
            "POST",
            Some(key),
            &[("uploadId", &upload.id)],
            headers,
            Body::Bytes(xml.as_bytes()),
        )?;
        match reply.status {
            200 => {
                let body = reply.text().map_err(|e| io_error(op, key, e))?;
                etag_of(op, key, &body).map(Some)
            }
            404 | 412 => {
                let _ = reply.bytes();
                Ok(None)
            }
            400 => {
                let body = reply.text().map_err(|e| io_error(op, key, e))?;
                match client::first(&body, "Code").as_deref() {
                    Some("InvalidPart" | "NoSuchUpload") => Ok(None),
                    code => Err(io_error(
                        op,
                        key,
                        std::io::Error::other(format!(
                            "CompleteMultipartUpload: HTTP 400 {}",
                            code.unwrap_or_default()
                        )),
                    )),
                }
            }
            _ => Err(io_error(
                op,
                key,
                reply.into_error("CompleteMultipartUpload"),
            )),
        }
    }

    /// AbortMultipartUpload, best effort: a leftover is only storage until the bucket's
    /// lifecycle rule removes it.
    pub(super) fn abort_multipart(&self, key: &str, upload: Multipart) {
        let result = self.send(
            "abort upload",
            "DELETE",
            Some(key),
            &[("uploadId", &upload.id)],
            &[],
            Body::Empty,
        );
        match result {
            Ok(reply) if matches!(reply.status, 200 | 204 | 404) => {
                let _ = reply.bytes();
            }
            Ok(reply) => {
                tracing::warn!(
                    key,
                    "cannot abort a multipart upload: {}",
                    reply.into_error("AbortMultipartUpload")
                );
            }
            Err(e) => tracing::warn!(key, "cannot abort a multipart upload: {e}"),
        }
    }

    /// ListMultipartUploads under the store's prefix, page by page; each upload initiated
    /// `older_than` ago or earlier, and whose latest part is as old, is aborted. How many were.
    pub(super) fn abort_stale(&self, older_than: Duration) -> Result<usize, DriverError> {
        let op = "list uploads";
        let now = SystemTime::now();
        let mut aborted = 0;
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut query = vec![("uploads", ""), ("prefix", self.prefix.as_str())];
            if let Some((key, id)) = &markers {
                query.push(("key-marker", key));
                query.push(("upload-id-marker", id));
            }
            let reply = self.send(op, "GET", None, &query, &[], Body::Empty)?;
            if reply.status != 200 {
                let e = reply.into_error("ListMultipartUploads");
                return Err(io_error(op, &self.prefix, e));
            }
            let xml = reply.text().map_err(|e| io_error(op, &self.prefix, e))?;
            for upload in client::elements(&xml, "Upload") {
                let (Some(key), Some(id), Some(initiated)) = (
                    client::first(upload, "Key"),
                    client::first(upload, "UploadId"),
                    client::first(upload, "Initiated").and_then(|t| client::parse_iso8601(&t)),
                ) else {
                    continue;
                };
                let old = |t: SystemTime| now.duration_since(t).unwrap_or_default() >= older_than;
                // A live upload may have started long ago (a slow, large PATCH): it is judged
                // by its latest part, as a scratch file is by its last write, and a session's
                // by its note too (PATCHes under a part's size only save the note).
                if old(initiated)
                    && old(self.last_part(&key, &id)?.unwrap_or(initiated))
                    && self.head(&key)?.is_none_or(|note| {
                        super::writer::noted_size(&note).is_none() || old(note.modified)
                    })
                {
                    self.abort_multipart(
                        &key,
                        Multipart {
                            id,
                            parts: Vec::new(),
                        },
                    );
                    aborted += 1;
                }
            }
            let truncated = client::first(&xml, "IsTruncated").as_deref() == Some("true");
            match (
                client::first(&xml, "NextKeyMarker"),
                client::first(&xml, "NextUploadIdMarker"),
            ) {
                (Some(key), Some(id)) if truncated => markers = Some((key, id)),
                _ => return Ok(aborted),
            }
        }
    }

    /// ListParts of upload `id` at `key`, page by page: when its latest part was uploaded
    /// (`None`: no part yet, or the upload is gone).
    fn last_part(&self, key: &str, id: &str) -> Result<Option<SystemTime>, DriverError> {
        let op = "list parts";
        let mut latest = None;
        let mut marker: Option<String> = None;
        loop {
            let mut query = vec![("uploadId", id)];
            if let Some(marker) = &marker {
                query.push(("part-number-marker", marker));
            }
            let reply = self.send(op, "GET", Some(key), &query, &[], Body::Empty)?;
            match reply.status {
                200 => {}
                404 => {
                    let _ = reply.bytes();
                    return Ok(None);
                }
                _ => return Err(io_error(op, key, reply.into_error("ListParts"))),
            }
            let xml = reply.text().map_err(|e| io_error(op, key, e))?;
            for part in client::elements(&xml, "Part") {
                let modified =
                    client::first(part, "LastModified").and_then(|t| client::parse_iso8601(&t));
                latest = latest.max(modified);
            }
            let truncated = client::first(&xml, "IsTruncated").as_deref() == Some("true");
            match client::first(&xml, "NextPartNumberMarker") {
                Some(next) if truncated => marker = Some(next),
                _ => return Ok(latest),
            }
        }
    }

    /// Copies the object `head` describes (at `from`) to `to` as a multipart upload of
    /// UploadPartCopy parts, each conditional on `head`'s ETag so that every part comes from
    /// the same version; the new object carries no metadata. Nothing is visible at `to` until
    /// the completion, and a failed copy is aborted.
    pub(super) fn copy_in_parts(
        &self,
        from: &str,
        to: &str,
        head: &Head,
    ) -> Result<(), DriverError> {
        let size = head.size;
        let chunk = self
            .multipart_copy
            .chunk_size
            .max(size.div_ceil(MAX_PARTS))
            .min(MAX_PART);
        let count = size.div_ceil(chunk) as usize;
        let mut open = OpenUpload::new(self, to.to_string());
        let id = open.started("copy", &[])?.id.clone();
        let id = id.as_str();
        let etags: Mutex<Vec<Option<String>>> = Mutex::new(vec![None; count]);
        let failure: Mutex<Option<DriverError>> = Mutex::new(None);
        let next = AtomicUsize::new(0);
        // A worker copies parts until none is left, each under a slot: a helper's own, held
        // for its life, or (`per_part`) one waited for per part.
        let work = |per_part: bool| {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count || failure.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                    return;
                }
                let _slot = per_part.then(|| self.copy_slots.take_one());
                let start = i as u64 * chunk;
                let range = (start, (start + chunk).min(size));
                let copied = self.upload_part_copy(to, id, i + 1, from, range, &head.etag);
                match copied {
                    Ok(Some(etag)) => {
                        etags.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(etag);
                    }
                    Ok(None) => {
                        let changed = io_error(
                            "copy",
                            from,
                            std::io::Error::other("the source changed during the copy"),
                        );
                        *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(changed);
                    }
                    Err(e) => *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e),
                }
            }
        };
        std::thread::scope(|scope| {
            // Helpers only for slots free now; this thread is a worker too, waiting for a
            // slot per part, so a copy progresses even when every slot is taken elsewhere.
            let want = self
                .multipart_copy
                .max_concurrency
                .min(count)
                .saturating_sub(1);
            let mut helpers = self.copy_slots.take_free(want);
            while helpers.count > 0 {
                let own = helpers.split_off_one();
                let work = &work;
                let spawned = std::thread::Builder::new()
                    .name("s3-copy".into())
                    .spawn_scoped(scope, move || {
                        let _own = own;
                        work(false)
                    });
                // A refused spawn only lowers concurrency (its slot went back on drop).
                if spawned.is_err() {
                    break;
                }
            }
            drop(helpers);
            work(true);
        });
        let failed = failure.into_inner().unwrap_or_else(|p| p.into_inner());
        let parts: Option<Vec<String>> = etags
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .into_iter()
            .collect();
        // Any return from here without a completion (or a worker's panic unwinding through
        // the scope above) drops `open`, which aborts the upload.
        let (None, Some(parts)) = (&failed, parts) else {
            return Err(failed.unwrap_or_else(|| not_found(from)));
        };
        open.upload.as_mut().expect("started above").parts = parts;
        match open.complete("copy", &[])? {
            Some(_) => Ok(()),
            None => Err(io_error(
                "copy",
                to,
                std::io::Error::other("CompleteMultipartUpload: the upload is gone"),
            )),
        }
    }
}
