//! The S3 driver (issue 13): the `Driver` contract kept by an S3 bucket, under a key prefix
//! (`rootdirectory`), with the same OCI layout as a local root.
//!
//! How each call maps onto S3:
//! - `get`, `reader`: GET, with `Range: bytes=OFFSET-` past the start; bodies stream, and a
//!   body whose connection is cut resumes with a ranged GET on its ETag (`Resuming`).
//!   `reader_range`: GET with a bounded `Range: bytes=A-B`.
//! - `stat`: HEAD (`version` = the ETag); a missing key that has keys below it is a prefix
//!   (a listing more). `stat_object`: the HEAD alone.
//! - `presigned_url` (with `redirect` on): a query-signed GET URL, made locally, signed as
//!   the requests are (SigV4, or SigV2 with `v4auth: false`).
//! - Every request has time-outs and a retry budget (`client::Client::send`); a request
//!   that gets no answer within them, or a 5xx after them, is `DriverError::Unavailable`,
//!   and so is a body read whole (`get`, a listing, a completion) that stalls or is cut.
//! - `list`: ListObjectsV2 with delimiter `/` (objects with size and LastModified, and
//!   common prefixes), every page.
//! - `put`: PUT; `create`: PUT with `If-None-Match: *`; `replace`: PUT with `If-Match` on the
//!   ETag `stat` handed out (`412`, or `404` for a key gone, is `Conflict`).
//! - `copy` (and `link`, no hard links): a HEAD for the size, then server-side CopyObject up
//!   to `multipartcopythresholdsize`, above it a multipart copy (`multipart`), the new object
//!   without metadata either way, so a copy of a placeholder's holder over a placeholder
//!   promotes it (it names no holder any more). `copy_version` (a committed upload): the
//!   same, conditional on the ETag (`x-amz-copy-source-if-match`): that version or nothing.
//!   `touch`: CopyObject onto
//!   itself with the metadata directive REPLACE (keeping the object's metadata), stamping the
//!   time in `x-amz-meta-berth-touched` as well, since S3 keeps LastModified in whole seconds
//!   and a touch must make an object newer than a write in the same second.
//! - `delete`: every key below as a prefix (a listing, then a DELETE each), then HEAD and
//!   DELETE of the key (as with any prefix delete on S3, a key written below meanwhile may
//!   survive).
//! - Placeholders (DESIGN decision 9): `put_placeholder` PUTs an empty object with the
//!   holder's path in `x-amz-meta-berth-holder`; `placeholder_holder` reads it with a HEAD.
//! - `delete_dir`: nothing to remove; a prefix with keys below is reported as not empty, as
//!   rmdir(2) would, since the collector relies on that.
//! - `writer`, `direct_writer`, `upload_status`, `upload_note`: see `writer` (sessions are
//!   sealed: an open multipart upload and, at the key, a note, readable only once committed);
//!   `delete` of a session also aborts the multipart upload its note names. No `rename`, no local files, no
//!   hard links, no O_DIRECT.
//!
//! **Client** (issue 13 "Client choice"). The design card names rust-s3; `bench/s3clients`
//! measures 0.38.0 beside this driver (README, "The client"). Its blocking backend (`sync`,
//! attohttpc) opens a connection per request and its `put_object` copies the body; its async
//! client would put a tokio runtime under threads-not-async request workers (DESIGN decision
//! 3) and sends up to ten parts of an upload at once (128 MiB of heap for a 64 MiB PUT); it
//! has no UploadPartCopy (`x-amz-copy-source-range`), which multipart copies need, and its
//! CopyObject takes no headers (no metadata directive, no `x-amz-copy-source-if-match`),
//! which `touch` and `copy` need. So the driver signs its requests itself (SigV4 and SigV2,
//! `client`, checked against s3s-fs, which verifies signatures) and sends them with `ureq`:
//! blocking like the rest of the request path, connections kept alive in a pool, bodies
//! streamed both ways, so memory per request is bounded by what the driver buffers (at most
//! `chunksize` per writer). Plain-HTTP GETs skip ureq's input buffer (`client::direct`).

mod client;
mod credentials;
mod multipart;
mod writer;

pub use client::{CannedAcl, Encryption, LogLevel, StorageClass, Wire};
pub use credentials::{Credentials, Instance, Provider, Refresh};

use super::{
    Capabilities, Driver, DriverError, Entry, EntryKind, ObjectMeta, ObjectReader, StoragePath,
    UploadStatus, UploadWriter, Version,
};
use client::{Body, Client, Reply};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const NAME: &str = "s3";

/// The smallest part S3 accepts in a multipart upload (but for the last one).
pub const MIN_PART: usize = 5 * 1024 * 1024;

/// distribution's default `chunksize`.
pub const DEFAULT_CHUNK_SIZE: usize = 10 * 1024 * 1024;

/// The largest part, and the largest object a single PUT or copy makes.
const MAX_PART: u64 = 5 * 1024 * 1024 * 1024;

/// Metadata `touch` stamps: milliseconds since the epoch.
const TOUCHED: &str = "x-amz-meta-berth-touched";

/// Metadata of a placeholder (DESIGN decision 9): the path, relative to the driver's root,
/// of the object that holds its bytes.
const HOLDER: &str = "x-amz-meta-berth-holder";

/// Where the driver's bucket is and how to reach it.
#[derive(Clone)]
pub struct S3Config {
    /// `http://host:port` or `https://host` (the bucket goes before the host in
    /// virtual-hosted requests, `wire.virtual_hosted`).
    pub endpoint: String,
    /// The signing region.
    pub region: String,
    /// The bucket.
    pub bucket: String,
    /// Who signs the requests (temporary credentials are fetched again before they expire).
    pub credentials: Credentials,
    /// What the `storageDriver` attributes change in each request.
    pub wire: Wire,
    /// The key prefix every path is under (`rootdirectory`); empty for the bucket's root.
    pub root: String,
    /// Size of the parts of multipart uploads (at least `MIN_PART`).
    pub chunk_size: usize,
    /// How objects too large for one CopyObject, or large enough to gain from parallel
    /// parts, are copied.
    pub multipart_copy: MultipartCopy,
    /// Blob GETs answer with a redirect to a presigned URL (berth-only key `redirect`).
    pub redirect: bool,
    /// How long any step of a request may wait (connect, the answer, each read of a body)
    /// before the bucket counts as unavailable (berth-only key `timeout`).
    pub time_out: Duration,
    /// How long a read of `index.json` is served again without asking the bucket whether it
    /// changed (berth-only key `revalidate`): a tag moved through another instance is seen
    /// within it.
    pub revalidate: Duration,
}

impl S3Config {
    /// The default of `time_out`: a healthy bucket answers within it under load; a bucket
    /// that does not is reported unavailable rather than holding a request worker.
    pub const DEFAULT_TIME_OUT: Duration = Duration::from_secs(30);
    /// The default of `revalidate`.
    pub const DEFAULT_REVALIDATE: Duration = Duration::from_secs(1);
}

/// `multipartcopychunksize`, `multipartcopymaxconcurrency`, `multipartcopythresholdsize`:
/// objects larger than `threshold` are copied as a multipart upload of UploadPartCopy parts
/// of `chunk_size`, `max_concurrency` of them in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MultipartCopy {
    /// Size of each copied part.
    pub chunk_size: u64,
    /// Parts copied at once.
    pub max_concurrency: usize,
    /// Objects above this size are copied in parts.
    pub threshold: u64,
}

impl Default for MultipartCopy {
    /// distribution's defaults.
    fn default() -> MultipartCopy {
        MultipartCopy {
            chunk_size: 32 * 1024 * 1024,
            max_concurrency: 100,
            threshold: 32 * 1024 * 1024,
        }
    }
}

/// The S3 driver. Cloning shares the client and its connection pool.
#[derive(Clone)]
pub struct S3Driver {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// `root/` or empty.
    prefix: String,
    chunk_size: usize,
    multipart_copy: MultipartCopy,
    /// Bounds the part copies in flight across this driver's copies.
    copy_slots: multipart::CopySlots,
    redirect: bool,
    revalidate: Duration,
    /// Requests sent, for the tests that count what an operation costs.
    #[cfg(test)]
    requests: std::sync::atomic::AtomicU64,
}

impl S3Driver {
    /// A driver for `config`; makes no request.
    pub fn new(config: S3Config) -> Result<S3Driver, DriverError> {
        if config.chunk_size < MIN_PART || config.chunk_size as u64 > MAX_PART {
            return Err(io_error(
                "configure",
                "chunksize",
                std::io::Error::other(format!(
                    "chunksize {} is not between {MIN_PART} and {MAX_PART}",
                    config.chunk_size
                )),
            ));
        }
        let root = config.root.trim_matches('/');
        let prefix = if root.is_empty() {
            String::new()
        } else {
            format!("{root}/")
        };
        let endpoint = client::Endpoint {
            url: config.endpoint.trim_end_matches('/').to_string(),
            region: config.region,
            bucket: config.bucket,
            credentials: credentials::Provider::new(config.credentials),
            wire: config.wire,
        };
        Ok(S3Driver {
            inner: Arc::new(Inner {
                client: Client::new(endpoint, config.time_out),
                prefix,
                chunk_size: config.chunk_size,
                multipart_copy: config.multipart_copy,
                copy_slots: multipart::CopySlots::new(config.multipart_copy.max_concurrency),
                redirect: config.redirect,
                revalidate: config.revalidate,
                #[cfg(test)]
                requests: Default::default(),
            }),
        })
    }

    /// Checks at start that the bucket answers to these credentials: one ListObjectsV2 of at
    /// most one key under the root. Wrong keys (403), a missing bucket (404), a TLS failure
    /// or an unreachable endpoint is an error naming the bucket and the endpoint.
    pub fn probe(&self) -> Result<(), DriverError> {
        let client = &self.inner.client;
        let at = format!("bucket {} at {}", client.bucket(), client.base());
        let failed = |e: std::io::Error| io_error("probe", &at, e);
        let reply = client
            .send(
                "GET",
                None,
                &[
                    ("list-type", "2"),
                    ("max-keys", "1"),
                    ("prefix", &self.inner.prefix),
                ],
                &[],
                Body::Empty,
            )
            .map_err(|e| {
                let hint = if e.to_string().contains("certificate") {
                    " (the endpoint's certificate is verified; skipverify: true turns that off)"
                } else {
                    ""
                };
                failed(std::io::Error::other(format!("{e}{hint}")))
            })?;
        match reply.status {
            200 => {
                let _ = reply.bytes();
                Ok(())
            }
            403 => Err(failed(std::io::Error::other(format!(
                "access denied, check the credentials: {}",
                reply.into_error("ListObjectsV2")
            )))),
            404 => Err(failed(std::io::Error::other(format!(
                "no such bucket: {}",
                reply.into_error("ListObjectsV2")
            )))),
            _ => Err(failed(reply.into_error("ListObjectsV2"))),
        }
    }

    /// Requests this driver (and its clones) sent so far.
    #[cfg(test)]
    pub(crate) fn requests(&self) -> u64 {
        self.inner
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Creates the bucket (in the configured region, which must not be `us-east-1` for
    /// moto to accept the location constraint). For the tests.
    #[cfg(test)]
    pub(crate) fn create_bucket(&self, region: &str) -> Result<(), DriverError> {
        let body = format!(
            "<CreateBucketConfiguration><LocationConstraint>{region}</LocationConstraint></CreateBucketConfiguration>"
        );
        let reply = self
            .inner
            .client
            .send("PUT", None, &[], &[], Body::Bytes(body.as_bytes()))
            .map_err(|e| io_error("create bucket", "", e))?;
        if reply.status != 200 {
            return Err(io_error(
                "create bucket",
                "",
                reply.into_error("CreateBucket"),
            ));
        }
        let _ = reply.bytes();
        Ok(())
    }
}

/// A failure of `op` on `path`. One that is S3 or the network failing after the headers
/// came back (a body stalled or cut: `client::outage`) is `Unavailable` (503), like no
/// answer at all, not an I/O error (500).
fn io_error(op: &'static str, path: &str, source: std::io::Error) -> DriverError {
    let path = path.to_string();
    if client::outage(&source) {
        DriverError::Unavailable {
            driver: NAME,
            op,
            path,
            source,
        }
    } else {
        DriverError::Io {
            driver: NAME,
            op,
            path,
            source,
        }
    }
}

/// `from` is not the version a conditional call was given: it is `found` now.
fn changed(from: &StoragePath, found: &str) -> DriverError {
    DriverError::Conflict {
        driver: NAME,
        path: from.to_string(),
        found: found.to_string(),
    }
}

fn not_found(path: &str) -> DriverError {
    DriverError::NotFound {
        driver: NAME,
        path: path.to_string(),
    }
}

/// A fingerprint from the key and its ETag: S3 gives a new ETag to every write of different
/// bytes, and the key keeps two objects with the same bytes apart (no two keys share stored
/// bytes on S3, so `bytes_key` must differ for them).
fn fingerprint(key: &str, etag: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    etag.hash(&mut h);
    h.finish()
}

fn meta(key: &str, size: u64, modified: SystemTime, etag: &str) -> ObjectMeta {
    ObjectMeta {
        size,
        modified,
        is_dir: false,
        fingerprint: fingerprint(key, etag),
        identity: None,
        version: Version::new(etag),
    }
}

/// What a HEAD told about an object.
pub(super) struct Head {
    key: String,
    size: u64,
    etag: String,
    modified: SystemTime,
    /// `x-amz-meta-*` headers, to carry over when the object is copied onto itself.
    metadata: Vec<(String, String)>,
}

impl Head {
    fn holder(&self) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(name, _)| name == HOLDER)
            .map(|(_, value)| value.as_str())
    }
}

impl Head {
    fn meta(&self) -> ObjectMeta {
        meta(&self.key, self.size, self.modified, &self.etag)
    }
}

fn head_of(key: &str, reply: &Reply) -> Head {
    let size = reply
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let etag = reply.header("etag").unwrap_or_default().to_string();
    let last_modified = reply
        .header("last-modified")
        .and_then(client::parse_http_date)
        .unwrap_or(UNIX_EPOCH);
    // A touch within the second of the last write must still make the object newer.
    let touched = reply
        .header(TOUCHED)
        .and_then(|v| v.parse::<u64>().ok())
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
    let modified = touched.map_or(last_modified, |t| t.max(last_modified));
    let metadata = reply
        .response
        .headers()
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("x-amz-meta-") && name.as_str() != TOUCHED)
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_string())))
        .collect();
    Head {
        key: key.to_string(),
        size,
        etag,
        modified,
        metadata,
    }
}

/// How often one body is resumed after its connection was cut.
const RESUMES: usize = 3;

/// A GET's body that, when its connection is lost before the end, asks for the rest with a
/// ranged GET on the same ETag (`If-Match`: an object replaced meanwhile fails the read rather
/// than splicing two versions), at most `RESUMES` times, each within `Client::send`'s retry
/// budget: a pull survives a connection cut mid-body. Without an ETag it is not resumed. Its
/// errors carry their classification (`DriverError::into_read_error`): the object deleted
/// meanwhile is `NotFound`, replaced an I/O error, a body cut or stalled once the resumes
/// are spent `Unavailable` (`io_error`), bad framing an I/O error.
struct Resuming {
    inner: Arc<Inner>,
    key: String,
    etag: Option<String>,
    /// The offset of the next byte, and the end of the range read (exclusive).
    at: u64,
    end: u64,
    body: Box<dyn std::io::Read + Send>,
    resumes: usize,
}

impl std::io::Read for Resuming {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = usize::try_from(self.end.saturating_sub(self.at)).unwrap_or(usize::MAX);
        let want = buf.len().min(left);
        if want == 0 {
            return Ok(0);
        }
        loop {
            let cut = match self.body.read(&mut buf[..want]) {
                Ok(0) => std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the body ended {left} bytes early"),
                ),
                Ok(n) => {
                    self.at += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => e,
            };
            let Some(etag) = self.etag.as_deref().filter(|_| self.resumes < RESUMES) else {
                return Err(io_error("read", &self.key, cut).into_read_error());
            };
            self.resumes += 1;
            tracing::debug!(key = %self.key, at = self.at, "S3 body cut ({cut}); resumed");
            self.body = self.rest(etag).map_err(DriverError::into_read_error)?;
        }
    }
}

impl Resuming {
    /// The rest of the range, on a new request.
    fn rest(&self, etag: &str) -> Result<Box<dyn std::io::Read + Send>, DriverError> {
        let range = format!("bytes={}-{}", self.at, self.end - 1);
        let headers = [("range", range.as_str()), ("if-match", etag)];
        let reply = self
            .inner
            .send("read", "GET", Some(&self.key), &[], &headers, Body::Empty)?;
        match reply.status {
            206 => Ok(Box::new(reply.response.into_body().into_reader())),
            404 => {
                let _ = reply.bytes();
                Err(not_found(&self.key))
            }
            _ => Err(io_error(
                "read",
                &self.key,
                reply.into_error("GetObject (resumed)"),
            )),
        }
    }
}

/// One page's worth of a listing.
struct Listed {
    objects: Vec<(String, u64, SystemTime)>,
    prefixes: Vec<String>,
}

impl Inner {
    fn key(&self, path: &StoragePath) -> String {
        format!("{}{}", self.prefix, path.as_str())
    }

    /// `Client::send`; its failure (no answer within the retry budget, or a 5xx after it)
    /// is the bucket being unavailable.
    fn send(
        &self,
        op: &'static str,
        method: &str,
        key: Option<&str>,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        body: Body<'_>,
    ) -> Result<Reply, DriverError> {
        #[cfg(test)]
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.client
            .send(method, key, query, headers, body)
            .map_err(|source| DriverError::Unavailable {
                driver: NAME,
                op,
                path: key.unwrap_or_default().to_string(),
                source,
            })
    }

    /// HEAD `key`: `None` if absent.
    fn head(&self, key: &str) -> Result<Option<Head>, DriverError> {
        let reply = self.send("stat", "HEAD", Some(key), &[], &[], Body::Empty)?;
        match reply.status {
            200 => {
                let head = head_of(key, &reply);
                let _ = reply.bytes();
                Ok(Some(head))
            }
            404 => {
                let _ = reply.bytes();
                Ok(None)
            }
            _ => Err(io_error("stat", key, reply.into_error("HEAD"))),
        }
    }

    /// Lists below `prefix` (ending in `/`, or empty for the bucket's root): one level with
    /// `delimiter`, else every key; at most `max` keys when given (one page).
    fn list(
        &self,
        prefix: &str,
        delimiter: bool,
        max: Option<usize>,
    ) -> Result<Listed, DriverError> {
        let mut listed = Listed {
            objects: Vec::new(),
            prefixes: Vec::new(),
        };
        let mut token: Option<String> = None;
        let max = max.map(|m| m.to_string());
        loop {
            let mut query: Vec<(&str, &str)> = vec![("list-type", "2"), ("prefix", prefix)];
            if delimiter {
                query.push(("delimiter", "/"));
            }
            if let Some(max) = &max {
                query.push(("max-keys", max));
            }
            if let Some(token) = &token {
                query.push(("continuation-token", token));
            }
            let reply = self.send("list", "GET", None, &query, &[], Body::Empty)?;
            if reply.status != 200 {
                return Err(io_error("list", prefix, reply.into_error("ListObjectsV2")));
            }
            let xml = reply.text().map_err(|e| io_error("list", prefix, e))?;
            for contents in client::elements(&xml, "Contents") {
                let Some(key) = client::first(contents, "Key") else {
                    continue;
                };
                let size = client::first(contents, "Size")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let modified = client::first(contents, "LastModified")
                    .and_then(|t| client::parse_iso8601(&t))
                    .unwrap_or(UNIX_EPOCH);
                listed.objects.push((key, size, modified));
            }
            for common in client::elements(&xml, "CommonPrefixes") {
                if let Some(p) = client::first(common, "Prefix") {
                    listed.prefixes.push(p);
                }
            }
            let truncated = client::first(&xml, "IsTruncated").as_deref() == Some("true");
            token = client::first(&xml, "NextContinuationToken");
            if !truncated || token.is_none() || max.is_some() {
                return Ok(listed);
            }
        }
    }

    /// GET of `path` from `offset`, `len` bytes of it when given (`Range: bytes=a-b`), else to
    /// the end (`Range: bytes=a-` past the start).
    fn read(
        self: &Arc<Self>,
        path: &StoragePath,
        offset: u64,
        len: Option<u64>,
    ) -> Result<ObjectReader, DriverError> {
        let key = self.key(path);
        let range = match len {
            Some(len) if len > 0 => Some(format!("bytes={offset}-{}", offset + len - 1)),
            _ if offset > 0 => Some(format!("bytes={offset}-")),
            _ => None,
        };
        let headers: Vec<(&str, &str)> = range.iter().map(|r| ("range", r.as_str())).collect();
        let reply = self.send("read", "GET", Some(&key), &[], &headers, Body::Empty)?;
        match reply.status {
            200 | 206 => {
                // The total size: after the `/` of Content-Range, else the whole length.
                let size = reply
                    .header("content-range")
                    .and_then(|r| r.rsplit('/').next())
                    .and_then(|s| s.parse().ok())
                    .or_else(|| reply.header("content-length").and_then(|s| s.parse().ok()))
                    .unwrap_or(0);
                let etag = reply.header("etag").map(str::to_string);
                let body = Box::new(reply.response.into_body().into_reader());
                let end = len.map_or(size, |len| offset + len);
                let reader = Box::new(Resuming {
                    inner: Arc::clone(self),
                    key,
                    etag,
                    at: offset,
                    end,
                    body,
                    resumes: 0,
                });
                Ok(ObjectReader { reader, size })
            }
            404 => {
                let _ = reply.bytes();
                Err(not_found(path.as_str()))
            }
            416 => {
                // Reading from the very end: nothing left, which S3 calls unsatisfiable.
                let _ = reply.bytes();
                let head = self.head(&key)?.ok_or_else(|| not_found(path.as_str()))?;
                if offset > head.size {
                    return Err(io_error(
                        "read",
                        &key,
                        std::io::Error::other(format!(
                            "offset {offset} past the end ({})",
                            head.size
                        )),
                    ));
                }
                Ok(ObjectReader {
                    reader: Box::new(std::io::empty()),
                    size: head.size,
                })
            }
            _ => Err(io_error("read", &key, reply.into_error("GetObject"))),
        }
    }

    /// Whether any key is below `key/`.
    fn has_below(&self, key: &str) -> Result<bool, DriverError> {
        let listed = self.list(&format!("{key}/"), false, Some(1))?;
        Ok(!listed.objects.is_empty())
    }

    /// DELETE `key` (S3 answers the same whether it was there or not).
    fn delete_key(&self, key: &str) -> Result<(), DriverError> {
        let reply = self.send("delete", "DELETE", Some(key), &[], &[], Body::Empty)?;
        match reply.status {
            200 | 204 | 404 => {
                let _ = reply.bytes();
                Ok(())
            }
            _ => Err(io_error("delete", key, reply.into_error("DeleteObject"))),
        }
    }

    /// `x-amz-copy-source` for `key` of this bucket.
    fn copy_source(&self, key: &str) -> String {
        format!(
            "/{}/{}",
            client::encode(self.client.bucket(), false),
            client::encode(key, true)
        )
    }

    /// CopyObject `from` -> `to` with extra headers; `NotFound` if `from` is absent. S3 may
    /// answer 200 with an error in the body, which is checked.
    fn copy_object(
        &self,
        op: &'static str,
        from: &str,
        to: &str,
        headers: &[(&str, &str)],
    ) -> Result<(), DriverError> {
        let source = self.copy_source(from);
        let mut all = vec![("x-amz-copy-source", source.as_str())];
        all.extend_from_slice(headers);
        let reply = self.send(op, "PUT", Some(to), &[], &all, Body::Empty)?;
        match reply.status {
            200 => {
                let body = reply.text().map_err(|e| io_error(op, from, e))?;
                error_in_body(op, from, &body)
            }
            404 => {
                let _ = reply.bytes();
                Err(not_found(from))
            }
            _ => Err(io_error(op, from, reply.into_error("CopyObject"))),
        }
    }

    /// PUT `bytes` at `key` with `headers`; the new ETag, or `None` when a condition failed
    /// (412, or 404 for `If-Match` on a key that is gone).
    fn put_object(
        &self,
        op: &'static str,
        key: &str,
        bytes: &[u8],
        headers: &[(&str, &str)],
    ) -> Result<Option<String>, DriverError> {
        // S3 answers 409 when conditional writes to one key race; the write is retried.
        for _ in 0..10 {
            let reply = self.send(op, "PUT", Some(key), &[], headers, Body::Bytes(bytes))?;
            match reply.status {
                200 => {
                    let etag = reply.header("etag").unwrap_or_default().to_string();
                    let _ = reply.bytes();
                    return Ok(Some(etag));
                }
                412 | 404 => {
                    let _ = reply.bytes();
                    return Ok(None);
                }
                409 => {
                    let _ = reply.bytes();
                    std::thread::sleep(Duration::from_millis(10));
                }
                _ => return Err(io_error(op, key, reply.into_error("PutObject"))),
            }
        }
        Err(io_error(
            op,
            key,
            std::io::Error::other("PutObject: conflicting writes did not settle"),
        ))
    }
}

impl Driver for S3Driver {
    fn name(&self) -> &'static str {
        NAME
    }

    fn get(&self, path: &StoragePath) -> Result<Vec<u8>, DriverError> {
        let key = self.inner.key(path);
        let reply = self
            .inner
            .send("get", "GET", Some(&key), &[], &[], Body::Empty)?;
        match reply.status {
            200 => reply.bytes().map_err(|e| io_error("get", &key, e)),
            404 => {
                let _ = reply.bytes();
                Err(not_found(path.as_str()))
            }
            _ => Err(io_error("get", &key, reply.into_error("GetObject"))),
        }
    }

    fn reader(&self, path: &StoragePath, offset: u64) -> Result<ObjectReader, DriverError> {
        self.inner.read(path, offset, None)
    }

    /// A bounded `Range`, so S3 sends no byte past the range and the connection goes back to
    /// the pool once it is read.
    fn reader_range(
        &self,
        path: &StoragePath,
        offset: u64,
        len: u64,
    ) -> Result<ObjectReader, DriverError> {
        self.inner.read(path, offset, Some(len))
    }

    /// HEAD; a missing key costs one listing more, to tell a prefix from nothing.
    fn stat(&self, path: &StoragePath) -> Result<Option<ObjectMeta>, DriverError> {
        let key = self.inner.key(path);
        if let Some(head) = self.inner.head(&key)? {
            return Ok(Some(head.meta()));
        }
        Ok(self.inner.has_below(&key)?.then(ObjectMeta::prefix))
    }

    /// One HEAD, missing key or not.
    fn stat_object(&self, path: &StoragePath) -> Result<Option<ObjectMeta>, DriverError> {
        Ok(self
            .inner
            .head(&self.inner.key(path))?
            .map(|head| head.meta()))
    }

    fn revalidate_after(&self) -> Duration {
        self.inner.revalidate
    }

    fn presigned_url(&self, path: &StoragePath, expires: Duration) -> Result<String, DriverError> {
        if !self.inner.redirect {
            return Err(DriverError::Unsupported {
                driver: NAME,
                op: "presign",
                path: path.to_string(),
            });
        }
        self.inner
            .client
            .presign(&self.inner.key(path), expires)
            .map_err(|e| io_error("presign", &path.to_string(), e))
    }

    fn put(&self, path: &StoragePath, bytes: &[u8]) -> Result<(), DriverError> {
        let key = self.inner.key(path);
        match self.inner.put_object("put", &key, bytes, &[])? {
            Some(_) => Ok(()),
            None => Err(io_error(
                "put",
                &key,
                std::io::Error::other("unconditional PUT refused"),
            )),
        }
    }

    fn create(&self, path: &StoragePath, bytes: &[u8]) -> Result<bool, DriverError> {
        let key = self.inner.key(path);
        Ok(self
            .inner
            .put_object("create", &key, bytes, &[("if-none-match", "*")])?
            .is_some())
    }

    /// Whole objects only: `unchanged_prefix` is ignored.
    fn replace(
        &self,
        path: &StoragePath,
        bytes: &[u8],
        _unchanged_prefix: usize,
        expected: Option<&Version>,
    ) -> Result<ObjectMeta, DriverError> {
        let key = self.inner.key(path);
        let expected = expected.map(Version::to_string);
        let headers: Vec<(&str, &str)> = expected
            .as_deref()
            .map(|etag| ("if-match", etag))
            .into_iter()
            .collect();
        match self.inner.put_object("replace", &key, bytes, &headers)? {
            Some(etag) => Ok(meta(&key, bytes.len() as u64, SystemTime::now(), &etag)),
            None => {
                let found = self
                    .inner
                    .head(&key)?
                    .map_or_else(|| "absent".to_string(), |h| h.etag);
                Err(DriverError::Conflict {
                    driver: NAME,
                    path: path.to_string(),
                    found,
                })
            }
        }
    }

    /// Placeholders, upload notes, sealed and direct uploads, and presigned URLs when
    /// `redirect` is on;
    /// no links (`link` copies), no rename (a finished upload is copied into place), no local
    /// files, no O_DIRECT, whole objects.
    fn abort_stale_uploads(&self, older_than: Duration) -> Result<usize, DriverError> {
        self.inner.abort_stale(older_than)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            placeholders: true,
            upload_notes: true,
            sealed_uploads: true,
            direct_uploads: true,
            presigned_urls: self.inner.redirect,
            ..Capabilities::default()
        }
    }

    fn put_placeholder(&self, path: &StoragePath, holder: &StoragePath) -> Result<(), DriverError> {
        let key = self.inner.key(path);
        match self
            .inner
            .put_object("put placeholder", &key, b"", &[(HOLDER, holder.as_str())])?
        {
            Some(_) => Ok(()),
            None => Err(io_error(
                "put placeholder",
                &key,
                std::io::Error::other("unconditional PUT refused"),
            )),
        }
    }

    fn placeholder_holder(&self, path: &StoragePath) -> Result<Option<StoragePath>, DriverError> {
        let key = self.inner.key(path);
        let head = self
            .inner
            .head(&key)?
            .ok_or_else(|| not_found(path.as_str()))?;
        head.holder()
            .map(|holder| StoragePath::from_components(holder.split('/')))
            .transpose()
    }

    fn list(&self, dir: Option<&StoragePath>) -> Result<Vec<Entry>, DriverError> {
        let prefix = match dir {
            Some(dir) => format!("{}/", self.inner.key(dir)),
            None => self.inner.prefix.clone(),
        };
        let listed = self.inner.list(&prefix, true, None)?;
        let mut entries: Vec<Entry> = listed
            .objects
            .into_iter()
            .filter_map(|(key, size, modified)| {
                let name = key.strip_prefix(&prefix)?;
                // A key ending in `/` (a "folder" some tools make) names no object here.
                (!name.is_empty()).then(|| Entry {
                    name: name.to_string(),
                    kind: EntryKind::Object { size, modified },
                })
            })
            .collect();
        let objects: std::collections::HashSet<String> =
            entries.iter().map(|e| e.name.clone()).collect();
        for common in listed.prefixes {
            let Some(name) = common
                .strip_prefix(&prefix)
                .and_then(|n| n.strip_suffix('/'))
            else {
                continue;
            };
            // A name with an object of its own is that object, as a file is on disk.
            if name.is_empty() || objects.contains(name) {
                continue;
            }
            entries.push(Entry {
                name: name.to_string(),
                kind: EntryKind::Prefix,
            });
        }
        Ok(entries)
    }

    /// The object at `path` and every key below it.
    fn delete(&self, path: &StoragePath) -> Result<(), DriverError> {
        let key = self.inner.key(path);
        let mut found = false;
        // Below first: an upload's note is below its object, and a crash in between must not
        // leave a note whose upload is gone (a prefix no idle scan would ever remove).
        loop {
            let below = self.inner.list(&format!("{key}/"), false, Some(1000))?;
            if below.objects.is_empty() {
                break;
            }
            for (object, _, _) in below.objects {
                self.inner.delete_key(&object)?;
                found = true;
            }
        }
        if let Some(head) = self.inner.head(&key)? {
            writer::abort_noted(&self.inner, &head);
            self.inner.delete_key(&key)?;
            found = true;
        }
        if found {
            Ok(())
        } else {
            Err(not_found(path.as_str()))
        }
    }

    fn touch(&self, path: &StoragePath) -> Result<(), DriverError> {
        let key = self.inner.key(path);
        let head = self
            .inner
            .head(&key)?
            .ok_or_else(|| not_found(path.as_str()))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
            .to_string();
        let mut headers: Vec<(&str, &str)> = vec![
            ("x-amz-metadata-directive", "REPLACE"),
            (TOUCHED, &now),
            ("x-amz-copy-source-if-match", &head.etag),
        ];
        for (name, value) in &head.metadata {
            headers.push((name, value));
        }
        match self.inner.copy_object("touch", &key, &key, &headers) {
            Ok(()) => Ok(()),
            // Replaced meanwhile (the copy's condition failed): the write made it new. Removed
            // meanwhile: nothing to touch.
            Err(e) => match self.inner.head(&key)? {
                None => Err(not_found(path.as_str())),
                Some(now) if now.etag != head.etag => Ok(()),
                Some(_) => Err(e),
            },
        }
    }

    /// Nothing to remove; a prefix with keys below is reported as rmdir(2) would.
    fn delete_dir(&self, dir: &StoragePath) -> Result<(), DriverError> {
        if !self.inner.has_below(&self.inner.key(dir))? {
            return Ok(());
        }
        Err(io_error(
            "remove directory",
            dir.as_str(),
            std::io::ErrorKind::DirectoryNotEmpty.into(),
        ))
    }

    fn writer(&self, path: &StoragePath) -> Result<Box<dyn UploadWriter>, DriverError> {
        Ok(Box::new(writer::S3Writer::open(
            Arc::clone(&self.inner),
            path,
        )?))
    }

    /// One HEAD of the session's note (`writer`: notes), or of the committed object.
    fn upload_status(&self, path: &StoragePath) -> Result<Option<UploadStatus>, DriverError> {
        writer::status(&self.inner, &self.inner.key(path))
    }

    /// A GET of the session's note (`writer`: notes).
    fn upload_note(&self, path: &StoragePath) -> Result<Option<Vec<u8>>, DriverError> {
        writer::store_note(&self.inner, &self.inner.key(path)).map_err(|e| match e {
            DriverError::NotFound { .. } => not_found(path.as_str()),
            e => e,
        })
    }

    fn direct_writer(&self, path: &StoragePath) -> Result<Box<dyn UploadWriter>, DriverError> {
        Ok(Box::new(writer::DirectWriter::new(
            Arc::clone(&self.inner),
            path,
        )))
    }

    /// A HEAD for the size, then CopyObject up to `multipartcopythresholdsize`, a multipart
    /// copy above it (`multipart`): two requests below the threshold, and above it
    /// 3 + size / `multipartcopychunksize`.
    fn copy(&self, from: &StoragePath, to: &StoragePath) -> Result<(), DriverError> {
        let head = self
            .inner
            .head(&self.inner.key(from))?
            .ok_or_else(|| not_found(from.as_str()))?;
        self.copy_head(from, &head, to, false)
    }

    /// A HEAD, then the copy conditional on `version` (`copy_head`): a session's next writer
    /// may replace a committed upload with its note at any moment, which is never copied.
    fn copy_version(
        &self,
        from: &StoragePath,
        version: &Version,
        to: &StoragePath,
    ) -> Result<(), DriverError> {
        let head = self.inner.head(&self.inner.key(from))?;
        match head {
            Some(head) if head.etag.trim_matches('"') == version.to_string().trim_matches('"') => {
                match self.copy_head(from, &head, to, true) {
                    // The condition failed: replaced between the HEAD and the copy.
                    Err(DriverError::NotFound { .. }) | Err(DriverError::Io { .. })
                        if self
                            .inner
                            .head(&head.key)?
                            .is_none_or(|now| now.etag != head.etag) =>
                    {
                        Err(changed(from, "another version"))
                    }
                    copied => copied,
                }
            }
            Some(head) => Err(changed(from, &head.etag)),
            None => Err(changed(from, "absent")),
        }
    }
}

impl S3Driver {
    /// `copy` of `from`, which a HEAD found as `head`. A multipart copy's parts are each
    /// conditional on its ETag (they must be of one version); with `exact`, so is CopyObject
    /// (`x-amz-copy-source-if-match`), so no other version is ever copied.
    fn copy_head(
        &self,
        from: &StoragePath,
        head: &Head,
        to: &StoragePath,
        exact: bool,
    ) -> Result<(), DriverError> {
        let to_key = self.inner.key(to);
        if head.size > self.inner.multipart_copy.threshold {
            return self.inner.copy_in_parts(&head.key, &to_key, head);
        }
        let mut headers = vec![("x-amz-metadata-directive", "REPLACE")];
        if exact {
            headers.push(("x-amz-copy-source-if-match", head.etag.as_str()));
        }
        self.inner
            .copy_object("copy", &head.key, &to_key, &headers)
            .map_err(|e| match e {
                DriverError::NotFound { .. } => not_found(from.as_str()),
                e => e,
            })
    }
}

/// S3 may answer a copy (CopyObject, UploadPartCopy) or a completion with 200 and then an
/// `<Error>` in the body, the failure having come after the status was sent: that error as
/// the driver's, `NotFound` (of `key`) for `NoSuchKey`. The one check of this quirk.
fn error_in_body(op: &'static str, key: &str, xml: &str) -> Result<(), DriverError> {
    if !xml.contains("<Error>") {
        return Ok(());
    }
    match client::first(xml, "Code").unwrap_or_default().as_str() {
        "NoSuchKey" => Err(not_found(key)),
        code => Err(io_error(
            op,
            key,
            std::io::Error::other(format!("{op}: {code} in a 200 answer")),
        )),
    }
}

#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod wire_tests;
