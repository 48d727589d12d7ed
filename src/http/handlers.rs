//! Handlers: one function per endpoint, each taking the parsed route and the request and
//! returning a `Reply` or an `ApiError`. `handle` is the whole request-to-reply function.

use super::Service;
use super::error::{ApiError, ErrorKind};
use super::request::HttpRequest;
use super::response::{Body, Reply};
use super::route::{Method, Page, Probe, Route, UploadStart, percent_encode};
use crate::digest::Digest;
use crate::oci::{Reference, RepoName, Tag, media_type};
use crate::storage::layout::UploadId;
use crate::storage::{
    BlobBody, BodyLength, ByteRange, MAX_MANIFEST_SIZE, Reads, Registry, Store, StoreError,
};
use serde_json::json;
use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Answers one request. A panic in a handler is caught and answered with a 500 (the store's
/// data is only ever replaced atomically, so an unwound handler leaves nothing half-written).
pub(crate) fn handle(service: &Service, req: &mut dyn HttpRequest) -> Reply {
    match catch_unwind(AssertUnwindSafe(|| dispatch(service, req))) {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => {
            if let Some(cause) = &e.cause {
                tracing::error!(url = req.url(), "{cause}");
            }
            e.into()
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(url = req.url(), panic = %what, "handler panicked");
            ApiError::new(ErrorKind::Internal, "internal error").into()
        }
    }
}

fn dispatch(service: &Service, req: &mut dyn HttpRequest) -> Result<Reply, ApiError> {
    let registry = &*service.registry;
    let method = req.method();
    let head = method == Method::Head;
    if let Some((metrics, path)) = &service.metrics
        && req.url().split('?').next() == Some(path.as_str())
    {
        return match method {
            Method::Get => Ok(Reply::new(200).bytes(
                "text/plain; version=0.0.4; charset=utf-8",
                metrics.render(registry).into_bytes(),
            )),
            _ => Err(ApiError::new(
                ErrorKind::MethodNotAllowed,
                format!("{path} answers GET only"),
            )),
        };
    }
    let route = Route::parse(method, req.url())?;
    let Some(repo) = route.repo() else {
        return match (route, method) {
            (Route::Health(probe), Method::Get | Method::Head) => Ok(health(registry, probe)),
            (Route::Base, Method::Get | Method::Head) => Ok(Reply::new(200).json(b"{}".to_vec())),
            (Route::Catalog(page), Method::Get) => catalog(registry, &page),
            (Route::Scrub, Method::Get) => Ok(scrub_report(registry)),
            (route, method) => Err(not_allowed(&route, method)),
        };
    };
    let reads = registry.route(repo);
    let store = reads.store();
    match (route, method) {
        (Route::Tags(repo, page), Method::Get) => tags(reads, &repo, &page),
        (Route::Manifest(repo, reference, _), Method::Get | Method::Head) => {
            let reply = manifest_get(reads, req, &repo, &reference, head)?;
            if let (Some(metrics), false, 200) = (service.metrics(), head, reply.status) {
                metrics.download(repo.as_str());
            }
            Ok(reply)
        }
        (Route::Manifest(repo, reference, tags), Method::Put) => {
            let reply = manifest_put(store, req, &repo, &reference, &tags)?;
            if let Some(metrics) = service.metrics() {
                metrics.upload(repo.as_str());
            }
            Ok(reply)
        }
        (Route::Manifest(repo, reference, _), Method::Delete) => {
            store.manifest_delete(&repo, &reference)?;
            Ok(Reply::new(202))
        }
        (Route::Blob(repo, digest), Method::Get | Method::Head) => {
            blob_get(reads, req, &repo, &digest, head)
        }
        (Route::Blob(repo, digest), Method::Delete) => {
            store.blob_delete(&repo, &digest)?;
            Ok(Reply::new(202))
        }
        (Route::UploadStart(repo, start), Method::Post) => {
            // Dedupe and mounts stay within one store.
            let start = match start {
                UploadStart::Mount {
                    from: Some(from), ..
                } if !std::ptr::eq(registry.route(&from).store(), store) => UploadStart::Session,
                start => start,
            };
            upload_start(store, req, &repo, start)
        }
        (Route::Upload(repo, id, _), Method::Get) => {
            let size = store.upload_size(&repo, id)?;
            Ok(upload_progress(204, &repo, id, size))
        }
        (Route::Upload(repo, id, _), Method::Patch) => upload_patch(store, req, &repo, id),
        (Route::Upload(repo, id, digest), Method::Put) => {
            let digest = digest.ok_or_else(|| {
                ApiError::new(
                    ErrorKind::DigestInvalid,
                    "the closing PUT of an upload needs ?digest=",
                )
            })?;
            let start = content_range_start(req)?;
            if let Some(start) = start {
                check_offset(store, &repo, id, start)?;
            }
            let length = body_length(req);
            store.upload_finish(&repo, id, &digest, req.body(), length)?;
            Ok(blob_created(&repo, &digest))
        }
        (Route::Upload(repo, id, _), Method::Delete) => {
            store.upload_cancel(&repo, id)?;
            Ok(Reply::new(204))
        }
        (Route::Referrers(repo, digest, artifact_type), Method::Get) => {
            referrers(reads, &repo, &digest, artifact_type)
        }
        (route, method) => Err(not_allowed(&route, method)),
    }
}

fn not_allowed(route: &Route, method: Method) -> ApiError {
    ApiError::new(
        ErrorKind::MethodNotAllowed,
        format!("{method:?} is not allowed on {route:?}"),
    )
}

fn body_length(req: &dyn HttpRequest) -> BodyLength {
    match req.content_length() {
        Some(n) => BodyLength::Exact(n),
        None => BodyLength::UntilEnd,
    }
}

/// Applies `n`/`last` to a sorted list; returns the page and whether more entries follow.
fn paginate(all: Vec<String>, page: &Page) -> (Vec<String>, bool) {
    let after: Vec<String> = match &page.last {
        Some(last) => all.into_iter().filter(|x| x > last).collect(),
        None => all,
    };
    match page.n {
        Some(0) => (Vec::new(), false),
        Some(n) if n < after.len() => (after.into_iter().take(n).collect(), true),
        _ => (after, false),
    }
}

fn next_link(base: &str, page: &[String], n: Option<usize>) -> String {
    let last = page.last().map(String::as_str).unwrap_or_default();
    let n = n.unwrap_or(page.len());
    format!("<{base}?n={n}&last={}>; rel=\"next\"", percent_encode(last))
}

fn catalog(registry: &Registry, page: &Page) -> Result<Reply, ApiError> {
    let (repos, more) = match page.n {
        Some(0) => (Vec::new(), false),
        n => registry.catalog_page(page.last.as_deref(), n)?,
    };
    let mut reply = Reply::new(200);
    if more {
        reply = reply.header("Link", next_link("/v2/_catalog", &repos, page.n));
    }
    Ok(reply.json(serde_json::to_vec(&json!({ "repositories": repos })).expect("json")))
}

/// A health probe's answer: `ok`, and for readiness a line per store whose cache is out
/// (it serves on, storing without dedupe, so it stays ready).
fn health(registry: &Registry, probe: Probe) -> Reply {
    let mut body = String::from("ok\n");
    if probe == Probe::Ready {
        for (route, store) in registry.stores_by_route() {
            for cache in store.cache_health() {
                if let Some(down) = cache.down_for {
                    body.push_str(&format!(
                        "degraded: store /{}: {} cache unavailable for {} s; storing without it\n",
                        route.join("/"),
                        cache.concern,
                        down.as_secs()
                    ));
                }
            }
        }
    }
    Reply::new(200).bytes("text/plain; charset=utf-8", body.into_bytes())
}

/// The last scrub of every store, or where it stands (`storage::scrub::summary`).
fn scrub_report(registry: &Registry) -> Reply {
    let body = crate::storage::scrub::summary(registry);
    Reply::new(200).json(serde_json::to_vec(&body).expect("json"))
}

fn tags(store: &dyn Reads, repo: &RepoName, page: &Page) -> Result<Reply, ApiError> {
    let (tags, more) = paginate(store.tags(repo)?, page);
    let mut reply = Reply::new(200);
    if more {
        let base = format!("/v2/{repo}/tags/list");
        reply = reply.header("Link", next_link(&base, &tags, page.n));
    }
    let body = json!({ "name": repo.as_str(), "tags": tags });
    Ok(reply.json(serde_json::to_vec(&body).expect("json")))
}

fn manifest_get(
    store: &dyn Reads,
    req: &dyn HttpRequest,
    repo: &RepoName,
    reference: &Reference,
    head: bool,
) -> Result<Reply, ApiError> {
    if let Some(tags) = req.header("If-None-Match") {
        let d = store.manifest_head(repo, reference)?;
        if etag_matches(tags, &d.digest) {
            return Ok(not_modified(&d.digest).header("Content-Type", d.media_type));
        }
    }
    let (descriptor, body) = if head {
        let d = store.manifest_head(repo, reference)?;
        let size = d.size;
        (d, Body::LengthOnly(size))
    } else {
        let m = store.manifest_get(repo, reference)?;
        (m.descriptor, Body::Bytes(m.bytes))
    };
    Ok(Reply::new(200)
        .header("Content-Type", descriptor.media_type.clone())
        .header("Docker-Content-Digest", descriptor.digest.to_string())
        .header("ETag", etag(&descriptor.digest))
        .body(body))
}

/// Content named by digest never changes, so its digest is its entity tag (as distribution
/// sends it): clients and caches revalidate with `If-None-Match` and get a 304 without a body.
fn etag(digest: &Digest) -> String {
    format!("\"{digest}\"")
}

/// Whether an `If-None-Match` list names `digest` (or is `*`, which any existing content
/// matches); weak tags compare alike (RFC 9110 13.1.2).
fn etag_matches(list: &str, digest: &Digest) -> bool {
    let ours = etag(digest);
    list.split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == ours)
}

fn not_modified(digest: &Digest) -> Reply {
    Reply::new(304)
        .header("Docker-Content-Digest", digest.to_string())
        .header("ETag", etag(digest))
}

fn manifest_put(
    store: &Store,
    req: &mut dyn HttpRequest,
    repo: &RepoName,
    reference: &Reference,
    extra_tags: &[Tag],
) -> Result<Reply, ApiError> {
    let too_large = || StoreError::ManifestTooLarge {
        limit: MAX_MANIFEST_SIZE,
    };
    if req
        .content_length()
        .is_some_and(|n| n > MAX_MANIFEST_SIZE as u64)
    {
        return Err(too_large().into());
    }
    let mut bytes = Vec::new();
    req.body()
        .take(MAX_MANIFEST_SIZE as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ApiError::new(ErrorKind::ManifestInvalid, format!("reading body: {e}")))?;
    if let Some(n) = req.content_length()
        && n != bytes.len() as u64
    {
        return Err(StoreError::BodyInvalid(format!(
            "body ended after {} of {n} declared bytes",
            bytes.len()
        ))
        .into());
    }
    let content_type = req.header("Content-Type").map(str::to_string);
    let put = store.manifest_put(repo, reference, content_type.as_deref(), &bytes, extra_tags)?;
    let mut reply = Reply::new(201)
        .header("Location", format!("/v2/{repo}/manifests/{}", put.digest))
        .header("Docker-Content-Digest", put.digest.to_string());
    if let Some(subject) = put.subject {
        reply = reply.header("OCI-Subject", subject.to_string());
    }
    for tag in extra_tags {
        reply = reply.header("OCI-Tag", tag.to_string());
    }
    Ok(reply)
}

/// A parsed `Range: bytes=...` request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeSpec {
    /// `bytes=a-b` or `bytes=a-`.
    From(u64, Option<u64>),
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

/// Parses a Range header. `Ok(None)` means serve the whole blob: no header, another unit, or
/// several ranges (which RFC 9110 lets a server answer with the full representation).
fn parse_range(header: Option<&str>) -> Result<Option<RangeSpec>, ApiError> {
    let Some(value) = header.map(str::trim) else {
        return Ok(None);
    };
    let Some(spec) = value.strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let bad = || {
        ApiError::new(
            ErrorKind::RangeInvalid,
            format!("malformed Range {value:?}"),
        )
    };
    let (a, b) = spec.trim().split_once('-').ok_or_else(bad)?;
    let num = |s: &str| s.trim().parse::<u64>().map_err(|_| bad());
    match (a.trim().is_empty(), b.trim().is_empty()) {
        (true, false) => Ok(Some(RangeSpec::Suffix(num(b)?))),
        (false, true) => Ok(Some(RangeSpec::From(num(a)?, None))),
        (false, false) => {
            let (start, end) = (num(a)?, num(b)?);
            if end < start {
                return Err(bad());
            }
            Ok(Some(RangeSpec::From(start, Some(end))))
        }
        (true, true) => Err(bad()),
    }
}

fn blob_get(
    store: &dyn Reads,
    req: &dyn HttpRequest,
    repo: &RepoName,
    digest: &Digest,
    head: bool,
) -> Result<Reply, ApiError> {
    if let Some(tags) = req.header("If-None-Match")
        && etag_matches(tags, digest)
    {
        store.blob_size(repo, digest)?;
        return Ok(not_modified(digest));
    }
    let spec = parse_range(req.header("Range"))?;
    let base = |status| {
        Reply::new(status)
            .header("Content-Type", "application/octet-stream")
            .header("Docker-Content-Digest", digest.to_string())
            .header("Accept-Ranges", "bytes")
            .header("ETag", etag(digest))
            .header("Cache-Control", "max-age=31536000")
    };
    if head && spec.is_none() {
        let size = store.blob_size(repo, digest)?;
        return Ok(base(200).body(Body::LengthOnly(size)));
    }
    // The client fetches the bytes from the storage itself (a Range goes along with it).
    if !head && let Some(url) = store.blob_redirect(repo, digest)? {
        return Ok(Reply::new(307)
            .header("Location", url)
            .header("Docker-Content-Digest", digest.to_string()));
    }
    let range = match spec {
        None => None,
        Some(RangeSpec::From(start, end)) => Some(ByteRange {
            start,
            end: end.unwrap_or(u64::MAX),
        }),
        Some(RangeSpec::Suffix(n)) => {
            let size = store.blob_size(repo, digest)?;
            if n == 0 {
                return Err(StoreError::RangeNotSatisfiable { size }.into());
            }
            Some(ByteRange {
                start: size.saturating_sub(n),
                end: size.saturating_sub(1),
            })
        }
    };
    let (read, served) = store.blob_read(repo, digest, range)?;
    let (status, len) = match served {
        Some(r) => (206, r.end - r.start + 1),
        None => (200, read.size),
    };
    let mut reply = base(status);
    if let Some(r) = served {
        reply = reply.header(
            "Content-Range",
            format!("bytes {}-{}/{}", r.start, r.end, read.size),
        );
    }
    let body = match read.body {
        _ if head => Body::LengthOnly(len),
        BlobBody::File { file, offset, len } => Body::File(file, offset, len),
        BlobBody::Stream(reader, len) => Body::Stream(reader, len),
    };
    Ok(reply.body(body))
}

fn blob_created(repo: &RepoName, digest: &Digest) -> Reply {
    Reply::new(201)
        .header("Location", format!("/v2/{repo}/blobs/{digest}"))
        .header("Docker-Content-Digest", digest.to_string())
}

/// 202/204 reply describing an open session: where to send the next chunk, what it holds.
fn upload_progress(status: u16, repo: &RepoName, id: UploadId, size: u64) -> Reply {
    Reply::new(status)
        .header("Location", format!("/v2/{repo}/blobs/uploads/{id}"))
        .header("Range", format!("0-{}", size.saturating_sub(1)))
        .header("Docker-Upload-UUID", id.to_string())
}

fn upload_start(
    store: &Store,
    req: &mut dyn HttpRequest,
    repo: &RepoName,
    start: UploadStart,
) -> Result<Reply, ApiError> {
    match start {
        UploadStart::Monolithic(digest) => {
            let length = body_length(req);
            store.blob_put(repo, &digest, req.body(), length)?;
            Ok(blob_created(repo, &digest))
        }
        UploadStart::Mount { digest, from }
            if store.blob_mount(repo, &digest, from.as_ref())? =>
        {
            Ok(blob_created(repo, &digest))
        }
        UploadStart::Session | UploadStart::Mount { .. } => {
            let id = store.upload_start(repo)?;
            Ok(upload_progress(202, repo, id, 0))
        }
    }
}

/// The start offset of a `Content-Range: <start>-<end>` header, checked against the body's
/// Content-Length when both are present.
fn content_range_start(req: &dyn HttpRequest) -> Result<Option<u64>, ApiError> {
    let Some(value) = req.header("Content-Range") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::new(
            ErrorKind::RangeInvalid,
            format!("malformed Content-Range {value:?}"),
        )
    };
    let spec = value.trim();
    let spec = spec
        .strip_prefix("bytes")
        .map_or(spec, |s| s.trim_start_matches([' ', '=']));
    let spec = spec.split('/').next().unwrap_or_default();
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let start: u64 = a.trim().parse().map_err(|_| bad())?;
    let end: u64 = b.trim().parse().map_err(|_| bad())?;
    if end < start {
        return Err(bad());
    }
    if let Some(len) = req.content_length()
        && len != end - start + 1
    {
        return Err(ApiError::new(
            ErrorKind::SizeInvalid,
            format!("Content-Range {value:?} does not match Content-Length {len}"),
        ));
    }
    Ok(Some(start))
}

fn check_offset(store: &Store, repo: &RepoName, id: UploadId, start: u64) -> Result<(), ApiError> {
    let size = store.upload_size(repo, id)?;
    if start != size {
        return Err(StoreError::UploadOutOfOrder {
            expected: size,
            got: start,
        }
        .into());
    }
    Ok(())
}

fn upload_patch(
    store: &Store,
    req: &mut dyn HttpRequest,
    repo: &RepoName,
    id: UploadId,
) -> Result<Reply, ApiError> {
    let start = content_range_start(req)?;
    let length = body_length(req);
    let size = store.upload_append(repo, id, start, req.body(), length)?;
    Ok(upload_progress(202, repo, id, size))
}

fn referrers(
    store: &dyn Reads,
    repo: &RepoName,
    digest: &Digest,
    artifact_type: Option<String>,
) -> Result<Reply, ApiError> {
    let page = store.referrers(repo, digest, artifact_type.as_deref())?;
    let mut reply = Reply::new(200).header("Content-Type", media_type::OCI_INDEX);
    if artifact_type.is_some() {
        reply = reply.header("OCI-Filters-Applied", "artifactType");
    }
    let len = page.len();
    Ok(reply.body(Body::Stream(Box::new(page), len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None).unwrap(), None);
        assert_eq!(
            parse_range(Some("bytes=0-9")).unwrap(),
            Some(RangeSpec::From(0, Some(9)))
        );
        assert_eq!(
            parse_range(Some("bytes=5-")).unwrap(),
            Some(RangeSpec::From(5, None))
        );
        assert_eq!(
            parse_range(Some("bytes=-3")).unwrap(),
            Some(RangeSpec::Suffix(3))
        );
        assert_eq!(parse_range(Some("bytes=0-1,4-5")).unwrap(), None);
        assert_eq!(parse_range(Some("items=0-1")).unwrap(), None);
        for bad in ["bytes=", "bytes=-", "bytes=a-b", "bytes=9-3", "bytes=1"] {
            assert!(parse_range(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn pagination() {
        let all: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        let page = |n, last: Option<&str>| Page {
            n,
            last: last.map(String::from),
        };
        assert_eq!(
            paginate(all.clone(), &page(Some(2), None)),
            (vec!["a".into(), "b".into()], true)
        );
        assert_eq!(
            paginate(all.clone(), &page(Some(2), Some("b"))),
            (vec!["c".into(), "d".into()], false)
        );
        assert_eq!(
            paginate(all.clone(), &page(None, Some("bb"))),
            (vec!["c".into(), "d".into()], false)
        );
        assert_eq!(paginate(all, &page(Some(0), None)), (vec![], false));
    }
}
