//! `Route::parse`: a pure function from a request's method and URL to a typed route, with
//! repository names, digests, references and upload ids already validated.
//!
//! Paths follow the distribution spec's endpoint table; names may contain `/`, so each
//! endpoint is recognised by its suffix (`/manifests/<ref>`, `/blobs/uploads/<id>`, ...).

use super::error::{ApiError, ErrorKind};
use crate::digest::Digest;
use crate::oci::name::NameError;
use crate::oci::{Reference, RepoName, Tag};
use crate::storage::layout::UploadId;

/// The HTTP methods the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    /// GET
    Get,
    /// HEAD
    Head,
    /// PUT
    Put,
    /// POST
    Post,
    /// PATCH
    Patch,
    /// DELETE
    Delete,
    /// Anything else.
    Other,
}

impl Method {
    /// From the request line's method token.
    pub(crate) fn parse(s: &str) -> Method {
        match s {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "PUT" => Method::Put,
            "POST" => Method::Post,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            _ => Method::Other,
        }
    }
}

/// Pagination parameters of list endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Page {
    /// Maximum entries to return (`n`).
    pub n: Option<usize>,
    /// Return entries after this one (`last`).
    pub last: Option<String>,
}

/// Which way a POST to `/blobs/uploads/` goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UploadStart {
    /// Open a session.
    Session,
    /// `?digest=`: the whole blob is in this request.
    Monolithic(Digest),
    /// `?mount=&from=`: link a blob from another repository (falls back to a session).
    Mount {
        /// The blob.
        digest: Digest,
        /// The source repository; `None` when absent or invalid.
        from: Option<RepoName>,
    },
}

/// The health endpoints, with zot's meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probe {
    /// `/livez`: the process answers.
    Live,
    /// `/readyz`: it serves; the body says what is degraded.
    Ready,
    /// `/startupz`: its stores are open (always, once it answers: they open before it listens).
    Started,
}

/// Every endpoint of the distribution API, and berth's own beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// `/livez`, `/readyz`, `/startupz`.
    Health(Probe),
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog(Page),
    /// `/v2/_berth/scrub`: berth's extension route, the last scrub of every store.
    Scrub,
    /// `/v2/<name>/tags/list`
    Tags(RepoName, Page),
    /// `/v2/<name>/manifests/<reference>`, with `?tag=` values for digest PUTs.
    Manifest(RepoName, Reference, Vec<Tag>),
    /// `/v2/<name>/blobs/<digest>`
    Blob(RepoName, Digest),
    /// `/v2/<name>/blobs/uploads/`
    UploadStart(RepoName, UploadStart),
    /// `/v2/<name>/blobs/uploads/<id>`, with `?digest=` for the closing PUT.
    Upload(RepoName, UploadId, Option<Digest>),
    /// `/v2/<name>/referrers/<digest>`, with an optional `artifactType` filter.
    Referrers(RepoName, Digest, Option<String>),
}

impl Route {
    /// The repository the route addresses, if any.
    pub(crate) fn repo(&self) -> Option<&RepoName> {
        match self {
            Route::Health(_) | Route::Base | Route::Catalog(_) | Route::Scrub => None,
            Route::Tags(repo, _)
            | Route::Manifest(repo, ..)
            | Route::Blob(repo, _)
            | Route::UploadStart(repo, _)
            | Route::Upload(repo, ..)
            | Route::Referrers(repo, ..) => Some(repo),
        }
    }
}

fn route_unknown(path: &str) -> ApiError {
    ApiError::new(ErrorKind::RouteUnknown, format!("no endpoint at {path}"))
}

/// Decodes `%XX` escapes; `None` for a broken escape or a non-UTF-8 result.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encodes a query value (everything but unreserved characters).
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: &str) -> Result<Query, ApiError> {
        let mut pairs = Vec::new();
        for part in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            let decode = |s: &str| {
                percent_decode(s).ok_or_else(|| {
                    ApiError::new(
                        ErrorKind::QueryInvalid,
                        format!("bad escape in query {part:?}"),
                    )
                })
            };
            pairs.push((decode(k)?, decode(v)?));
        }
        Ok(Query(pairs))
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, key: &str) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn page(&self) -> Result<Page, ApiError> {
        let n = match self.get("n") {
            None | Some("") => None,
            Some(n) => Some(n.parse::<usize>().map_err(|_| {
                ApiError::new(
                    ErrorKind::PaginationNumberInvalid,
                    format!("n={n:?} is not a non-negative integer"),
                )
            })?),
        };
        Ok(Page {
            n,
            last: self
                .get("last")
                .filter(|l| !l.is_empty())
                .map(str::to_string),
        })
    }
}

impl Route {
    /// Parses a request URL (path and query, as sent) into a route. Errors are the API
    /// errors to answer with: unknown endpoint, invalid name, digest or reference. The method
    /// matters only for a malformed tag: a PUT of one is invalid (400), while reading or
    /// deleting one asks for a manifest that cannot exist (404, as the conformance suite expects).
    pub(crate) fn parse(method: Method, url: &str) -> Result<Route, ApiError> {
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        let probe = match path {
            "/livez" => Some(Probe::Live),
            "/readyz" => Some(Probe::Ready),
            "/startupz" => Some(Probe::Started),
            _ => None,
        };
        if let Some(probe) = probe {
            return Ok(Route::Health(probe));
        }
        let query = Query::parse(query)?;
        let rest = path
            .strip_prefix("/v2/")
            .or_else(|| (path == "/v2").then_some(""))
            .ok_or_else(|| route_unknown(path))?;
        if rest.is_empty() {
            return Ok(Route::Base);
        }
        if rest == "_catalog" {
            return Ok(Route::Catalog(query.page()?));
        }
        if rest == "_berth/scrub" {
            return Ok(Route::Scrub);
        }
        let name = |s: &str| -> Result<RepoName, ApiError> { Ok(s.parse::<RepoName>()?) };
        if let Some(repo) = rest.strip_suffix("/tags/list") {
            return Ok(Route::Tags(name(repo)?, query.page()?));
        }
        if let Some(repo) = rest
            .strip_suffix("/blobs/uploads/")
            .or_else(|| rest.strip_suffix("/blobs/uploads"))
        {
            let repo = name(repo)?;
            let start = if let Some(mount) = query.get("mount") {
                UploadStart::Mount {
                    digest: mount.parse()?,
                    from: query.get("from").and_then(|f| f.parse().ok()),
                }
            } else if let Some(digest) = query.get("digest") {
                UploadStart::Monolithic(digest.parse()?)
            } else {
                UploadStart::Session
            };
            return Ok(Route::UploadStart(repo, start));
        }
        let (prefix, last) = rest.rsplit_once('/').ok_or_else(|| route_unknown(path))?;
        if let Some(repo) = prefix.strip_suffix("/blobs/uploads") {
            let id = last.parse::<UploadId>().map_err(|_| {
                ApiError::new(
                    ErrorKind::BlobUploadUnknown,
                    format!("{last:?} is not an upload id"),
                )
            })?;
            let digest = query.get("digest").map(str::parse).transpose()?;
            return Ok(Route::Upload(name(repo)?, id, digest));
        }
        if let Some(repo) = prefix.strip_suffix("/manifests") {
            let tags = query
                .all("tag")
                .map(str::parse::<Tag>)
                .collect::<Result<Vec<_>, _>>()?;
            let reference = match last.parse::<Reference>() {
                Err(NameError::Tag(tag)) if method != Method::Put => {
                    return Err(ApiError::new(
                        ErrorKind::ManifestUnknown,
                        format!("no manifest can be tagged {tag:?}: not a valid tag"),
                    ));
                }
                parsed => parsed?,
            };
            return Ok(Route::Manifest(name(repo)?, reference, tags));
        }
        if let Some(repo) = prefix.strip_suffix("/blobs") {
            return Ok(Route::Blob(name(repo)?, last.parse()?));
        }
        if let Some(repo) = prefix.strip_suffix("/referrers") {
            let artifact_type = query
                .get("artifactType")
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            return Ok(Route::Referrers(name(repo)?, last.parse()?, artifact_type));
        }
        Err(route_unknown(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn repo(s: &str) -> RepoName {
        s.parse().unwrap()
    }

    #[test]
    fn table() {
        let d: Digest = D.parse().unwrap();
        let cases: Vec<(String, Route)> = vec![
            ("/v2/".into(), Route::Base),
            ("/v2".into(), Route::Base),
            (
                "/v2/_catalog?n=5&last=a".into(),
                Route::Catalog(Page {
                    n: Some(5),
                    last: Some("a".into()),
                }),
            ),
            (
                "/v2/a/b/tags/list".into(),
                Route::Tags(repo("a/b"), Page::default()),
            ),
            (
                "/v2/a/manifests/latest".into(),
                Route::Manifest(repo("a"), Reference::Tag("latest".parse().unwrap()), vec![]),
            ),
            (
                format!("/v2/a/manifests/{D}?tag=x&tag=y"),
                Route::Manifest(
                    repo("a"),
                    Reference::Digest(d.clone()),
                    vec!["x".parse().unwrap(), "y".parse().unwrap()],
                ),
            ),
            (
                format!("/v2/x/blobs/{D}"),
                Route::Blob(repo("x"), d.clone()),
            ),
            (
                "/v2/x/y/blobs/uploads/".into(),
                Route::UploadStart(repo("x/y"), UploadStart::Session),
            ),
            (
                format!("/v2/x/blobs/uploads/?digest={}", D.replace(':', "%3A")),
                Route::UploadStart(repo("x"), UploadStart::Monolithic(d.clone())),
            ),
            (
                format!("/v2/x/blobs/uploads/?mount={D}&from=o/p"),
                Route::UploadStart(
                    repo("x"),
                    UploadStart::Mount {
                        digest: d.clone(),
                        from: Some(repo("o/p")),
                    },
                ),
            ),
            (
                format!("/v2/r/referrers/{D}?artifactType=application%2Fvnd.x%2Bjson"),
                Route::Referrers(repo("r"), d.clone(), Some("application/vnd.x+json".into())),
            ),
        ];
        for (url, want) in cases {
            assert_eq!(Route::parse(Method::Get, &url).unwrap(), want, "{url}");
        }
        let id = UploadId::new();
        assert!(matches!(
            Route::parse(Method::Put, &format!("/v2/x/blobs/uploads/{id}?digest={D}")),
            Ok(Route::Upload(_, got, Some(_))) if got == id
        ));
    }

    #[test]
    fn rejections() {
        let kind = |url: &str| Route::parse(Method::Get, url).unwrap_err().kind;
        assert_eq!(kind("/v3/"), ErrorKind::RouteUnknown);
        assert_eq!(kind("/v2/a/unknown/x"), ErrorKind::RouteUnknown);
        assert_eq!(kind("/v2/A/tags/list"), ErrorKind::NameInvalid);
        assert_eq!(kind("/v2/../../etc/tags/list"), ErrorKind::NameInvalid);
        assert_eq!(kind("/v2/a%2f..%2fb/tags/list"), ErrorKind::NameInvalid);
        assert_eq!(kind("/v2/a/blobs/sha256:zz"), ErrorKind::DigestInvalid);
        assert_eq!(
            kind("/v2/a/blobs/uploads/not-a-uuid"),
            ErrorKind::BlobUploadUnknown
        );
        assert_eq!(
            kind("/v2/a/tags/list?n=-1"),
            ErrorKind::PaginationNumberInvalid
        );
        assert_eq!(kind("/v2/a/manifests/bad:ref"), ErrorKind::DigestInvalid);
        assert_eq!(kind("/v2/a//b/tags/list"), ErrorKind::NameInvalid);
        assert_eq!(kind("/v2/a/manifests/.bad"), ErrorKind::ManifestUnknown);
        let put = Route::parse(Method::Put, "/v2/a/manifests/.bad").unwrap_err();
        assert_eq!(put.kind, ErrorKind::ManifestInvalid);
    }

    #[test]
    fn percent_coding() {
        assert_eq!(percent_decode("a%2Fb").unwrap(), "a/b");
        assert!(percent_decode("%zz").is_none());
        assert!(percent_decode("%4").is_none());
        assert_eq!(percent_encode("a/b+c"), "a%2Fb%2Bc");
    }
}
