//! A thin, blocking S3 client: requests built as the store's `storageDriver` attributes ask
//! (path-style or virtual-hosted addressing, encryption, storage class, canned ACL and
//! `User-Agent` headers, TLS verification), signed with AWS Signature Version 4 (signed here,
//! with `sha2`; the payload is sent as `UNSIGNED-PAYLOAD`, so no body is hashed twice) or, with
//! `v4auth: false`, Version 2, over `ureq`'s pooled keep-alive connections (GETs over plain
//! HTTP over its own, `direct`, which reads bodies without a copy), and the few pieces of the
//! S3 XML the driver reads. It knows nothing of the `Driver` contract: `super` maps its
//! answers.

mod direct;

use super::credentials::{Credentials, Provider};
use sha2::{Digest as _, Sha256};
use std::io::Read;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where the bucket is and who is asking.
pub(super) struct Endpoint {
    /// `http://host:port` or `https://host`, without a trailing `/`.
    pub(super) url: String,
    pub(super) region: String,
    pub(super) bucket: String,
    pub(super) credentials: Provider,
    pub(super) wire: Wire,
}

/// What the attributes of `storageDriver` change in the requests.
#[derive(Clone, Debug, Default)]
pub struct Wire {
    /// Virtual-hosted requests (`BUCKET.endpoint-host/key`, `forcepathstyle: false` or
    /// `accelerate`), else path-style (`endpoint-host/BUCKET/key`).
    pub virtual_hosted: bool,
    /// Server-side encryption of every object created (`encrypt`, `keyid`).
    pub encryption: Option<Encryption>,
    /// `storageclass`; `None` sends none (`NONE`: the bucket's default).
    pub storage_class: Option<StorageClass>,
    /// `objectacl`; `None` sends none (the bucket's default, `private` on AWS).
    pub acl: Option<CannedAcl>,
    /// `useragent`; `None` is `berth/<version>`.
    pub user_agent: Option<String>,
    /// `skipverify`: HTTPS without checking the server's certificate.
    pub skip_verify: bool,
    /// `v4auth: false`: Signature Version 2.
    pub signature_v2: bool,
    /// `loglevel`.
    pub log: LogLevel,
}

/// `encrypt: true`: S3-managed keys, or KMS with `keyid`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Encryption {
    /// `x-amz-server-side-encryption: AES256`.
    Aes256,
    /// `x-amz-server-side-encryption: aws:kms` with that key id.
    Kms(String),
}

/// An S3 storage class distribution's driver accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StorageClass(&'static str);

impl StorageClass {
    /// distribution's accepted values (`NONE`, meaning none sent, is `None` of an `Option`).
    pub const ACCEPTED: [&'static str; 3] =
        ["STANDARD", "REDUCED_REDUNDANCY", "INTELLIGENT_TIERING"];

    /// The class named `name` (any case, as distribution upper-cases it).
    pub fn parse(name: &str) -> Option<StorageClass> {
        let upper = name.trim().to_ascii_uppercase();
        Self::ACCEPTED
            .iter()
            .find(|c| **c == upper)
            .map(|c| StorageClass(c))
    }

    /// The `x-amz-storage-class` value.
    pub fn as_str(self) -> &'static str {
        self.0
    }
}

/// An S3 canned ACL (the list distribution's driver accepts, AWS's own).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CannedAcl(&'static str);

impl CannedAcl {
    /// The canned ACLs.
    pub const ACCEPTED: [&'static str; 7] = [
        "private",
        "public-read",
        "public-read-write",
        "authenticated-read",
        "aws-exec-read",
        "bucket-owner-read",
        "bucket-owner-full-control",
    ];

    /// The ACL named `name` (exactly, as AWS spells them).
    pub fn parse(name: &str) -> Option<CannedAcl> {
        Self::ACCEPTED
            .iter()
            .find(|a| **a == name.trim())
            .map(|a| CannedAcl(a))
    }

    /// The `x-amz-acl` value.
    pub fn as_str(self) -> &'static str {
        self.0
    }
}

/// `loglevel`: the AWS SDK's levels distribution passes on. Lines go to the log at `info`,
/// so the key alone turns them on, as it does in distribution.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Nothing (the default).
    #[default]
    Off,
    /// A line per request: method, bucket, key, status, bytes, duration.
    Debug,
    /// And the canonical request and string to sign (never a secret or session token).
    DebugWithSigning,
    /// And the request's and answer's headers (berth's bodies are blobs, never logged).
    DebugWithHttpBody,
    /// And each retried attempt.
    DebugWithRequestRetries,
    /// And S3's error answer (code and message) of each failed request.
    DebugWithRequestErrors,
    /// As `Debug`: berth reads no event streams.
    DebugWithEventStreamBody,
}

impl LogLevel {
    /// The values distribution accepts, in zot's spelling.
    pub const ACCEPTED: [(&'static str, LogLevel); 7] = [
        ("off", LogLevel::Off),
        ("debug", LogLevel::Debug),
        ("debugwithsigning", LogLevel::DebugWithSigning),
        ("debugwithhttpbody", LogLevel::DebugWithHttpBody),
        ("debugwithrequestretries", LogLevel::DebugWithRequestRetries),
        ("debugwithrequesterrors", LogLevel::DebugWithRequestErrors),
        (
            "debugwitheventstreambody",
            LogLevel::DebugWithEventStreamBody,
        ),
    ];

    /// The level named `name` (any case).
    pub fn parse(name: &str) -> Option<LogLevel> {
        let lower = name.trim().to_ascii_lowercase();
        Self::ACCEPTED
            .iter()
            .find(|(n, _)| *n == lower)
            .map(|(_, l)| *l)
    }

    fn requests(self) -> bool {
        self != LogLevel::Off
    }

    fn signing(self) -> bool {
        self == LogLevel::DebugWithSigning
    }

    fn headers(self) -> bool {
        self == LogLevel::DebugWithHttpBody
    }

    fn retries(self) -> bool {
        self == LogLevel::DebugWithRequestRetries
    }

    fn errors(self) -> bool {
        self == LogLevel::DebugWithRequestErrors
    }
}

/// The answer to one request: its status and headers; the body is read by the caller, to the
/// end (so the connection goes back to the pool) or streamed.
pub(super) struct Reply {
    pub(super) status: u16,
    pub(super) response: ureq::http::Response<ureq::Body>,
    /// `loglevel: debugwithrequesterrors`: `into_error` logs S3's answer.
    log_errors: bool,
}

impl Reply {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
    }

    /// The body, read whole: only for S3's own small XML answers and small objects.
    pub(super) fn text(self) -> std::io::Result<String> {
        String::from_utf8(self.bytes()?)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// The body, read whole, as bytes.
    pub(super) fn bytes(self) -> std::io::Result<Vec<u8>> {
        let mut body = Vec::new();
        self.response
            .into_body()
            .into_reader()
            .read_to_end(&mut body)?;
        Ok(body)
    }

    /// A failed answer as an error: status, S3's error code and message.
    pub(super) fn into_error(self, op: &str) -> std::io::Error {
        let status = self.status;
        let log_errors = self.log_errors;
        let body = self.text().unwrap_or_default();
        let code = first(&body, "Code").unwrap_or_default();
        let message = first(&body, "Message").unwrap_or_default();
        if log_errors {
            tracing::info!(op, status, code, message, "S3 error answer");
        }
        std::io::Error::other(format!("{op}: HTTP {status} {code} {message}"))
    }
}

/// Most attempts `Client::send` makes of one request (DESIGN decision 12: a retry budget).
const ATTEMPTS: usize = 4;

/// The longest a connection may take to open, whatever the request time-out: a server that
/// does not accept within it is down, and the next attempt may find it back.
const CONNECT_TIME_OUT: Duration = Duration::from_secs(5);

/// Idle connections the client keeps for reuse, all to its one endpoint.
const IDLE_CONNECTIONS: usize = 64;

/// A request body: none, or bytes already in memory (a part of at most `chunksize`, or a small
/// object).
#[derive(Clone, Copy)]
pub(super) enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
}

impl Body<'_> {
    fn len(self) -> usize {
        match self {
            Body::Empty => 0,
            Body::Bytes(b) => b.len(),
        }
    }
}

/// Names under `localhost` resolve to loopback (RFC 6761 section 6.3) without asking the
/// system's resolver, so virtual-hosted requests (`BUCKET.localhost:PORT`) reach a local S3
/// server with no /etc/hosts entry; every other name is resolved as usual.
#[derive(Debug, Default)]
struct LocalhostResolver(ureq::unversioned::resolver::DefaultResolver);

impl ureq::unversioned::resolver::Resolver for LocalhostResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let host = uri.host().unwrap_or_default().to_ascii_lowercase();
        if host == "localhost" || host.ends_with(".localhost") {
            let https = uri.scheme_str() == Some("https");
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            let mut addrs = ureq::unversioned::resolver::Resolver::empty(self);
            addrs.push(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
            return Ok(addrs);
        }
        self.0.resolve(uri, config, timeout)
    }
}

pub(super) struct Client {
    agent: ureq::Agent,
    /// GETs over plain HTTP with no proxy: their bodies are read without ureq's copy.
    direct: Option<direct::Direct>,
    endpoint: Endpoint,
    /// The `Host` requests name (with the bucket when virtual-hosted).
    host: String,
    /// The URL up to the path (`scheme://host`).
    base: String,
    user_agent: String,
    /// How long a request may wait for any one step (connect, send, the answer, each read of
    /// a body), and how long after its first attempt it may still be retried.
    time_out: Duration,
}

impl Client {
    pub(super) fn new(endpoint: Endpoint, time_out: Duration) -> Client {
        // Time-outs per step, none on a whole body: a blob stream may take long, but never
        // stall past `time_out` (DESIGN decision 12: no remote call hangs a worker).
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(time_out.min(CONNECT_TIME_OUT)))
            .timeout_recv_response(Some(time_out))
            .timeout_per_read(Some(time_out))
            .timeout_per_write(Some(time_out))
            // One endpoint: the total must be as high as the per-host count, or ureq's
            // default total of 10 closes connections above 10 concurrent calls.
            .max_idle_connections(IDLE_CONNECTIONS)
            .max_idle_connections_per_host(IDLE_CONNECTIONS)
            .tls_config(
                ureq::tls::TlsConfig::builder()
                    .disable_verification(endpoint.wire.skip_verify)
                    .build(),
            )
            .build();
        let proxied = config.proxy().is_some();
        let agent = ureq::Agent::with_parts(
            config,
            ureq::unversioned::transport::DefaultConnector::default(),
            LocalhostResolver::default(),
        );
        let (scheme, authority) = endpoint
            .url
            .split_once("://")
            .unwrap_or(("https", endpoint.url.as_str()));
        let host = if endpoint.wire.virtual_hosted {
            format!("{}.{authority}", endpoint.bucket)
        } else {
            authority.to_string()
        };
        let base = format!("{scheme}://{host}");
        let direct = if proxied {
            None
        } else {
            direct::Direct::new(
                &base,
                time_out.min(CONNECT_TIME_OUT),
                time_out,
                IDLE_CONNECTIONS,
            )
        };
        let user_agent = endpoint
            .wire
            .user_agent
            .clone()
            .unwrap_or_else(|| format!("berth/{}", env!("CARGO_PKG_VERSION")));
        Client {
            agent,
            direct,
            endpoint,
            host,
            base,
            user_agent,
            time_out,
        }
    }

    pub(super) fn bucket(&self) -> &str {
        &self.endpoint.bucket
    }

    /// `scheme://host` requests go to (with the bucket when virtual-hosted).
    pub(super) fn base(&self) -> &str {
        &self.base
    }

    /// Sends one signed request for `key` (`None`: the bucket itself) with `query` (pairs, not
    /// yet encoded) and extra `headers`, within a retry budget: at most `ATTEMPTS` attempts
    /// with a growing pause, none begun later than `time_out` after the first. Every body is
    /// in memory, so it can be sent again. A 500, 502, 503 or 504 is retried, as AWS's SDKs
    /// do; a request that never reached the server (refused, no connection) is retried
    /// whatever it is; one that failed on the way only if sending it twice is harmless, which
    /// holds for every GET, HEAD, PUT and DELETE the driver makes (a conditional PUT repeated
    /// after it succeeded fails its condition, which callers read as someone else's write),
    /// not for a POST (a repeated CompleteMultipartUpload finds its upload gone). A
    /// conditional PUT repeated after it succeeded fails its condition (412): then the
    /// object is read back, and if it holds the bytes sent the write was this one's
    /// (`landed`). A time-out
    /// is not retried, it spent the budget, unless it was connecting (see `retried`). The error is a failure to get an answer: the
    /// transport's, or the last 5xx.
    pub(super) fn send(
        &self,
        method: &str,
        key: Option<&str>,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        body: Body<'_>,
    ) -> std::io::Result<Reply> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(20);
        let log = self.endpoint.wire.log;
        let mut attempt = 1;
        loop {
            let last = attempt == ATTEMPTS || started.elapsed() + pause >= self.time_out;
            match self.send_once(method, key, query, headers, body) {
                Ok(reply) if reply.status == 412 && attempt > 1 && method == "PUT" => {
                    return self.landed(key, body, reply);
                }
                Ok(reply) if !matches!(reply.status, 500 | 502 | 503 | 504) => return Ok(reply),
                Ok(reply) if last => return Err(reply.into_error(method)),
                Ok(reply) => {
                    if log.retries() {
                        tracing::info!(method, key, status = reply.status, "S3 request retried");
                    } else {
                        tracing::debug!(method, key, status = reply.status, "S3 request retried");
                    }
                    let _ = reply.bytes();
                }
                Err(e) => {
                    if last || !retried(&e, method) {
                        return Err(into_io(e));
                    }
                    if log.retries() {
                        tracing::info!(method, key, "S3 request retried: {e}");
                    } else {
                        tracing::debug!(method, key, "S3 request retried: {e}");
                    }
                }
            }
            std::thread::sleep(pause);
            pause *= 4;
            attempt += 1;
        }
    }

    /// A conditional PUT of `body` at `key` answered `refused` (412) on a later attempt: an
    /// earlier one may have written it and lost only its answer (a cut connection, a 5xx
    /// after the write). If the object holds exactly the bytes sent, the answer is a HEAD of
    /// it conditional on the ETag read with them (200 with that ETag, or 412 if it was
    /// replaced since): the write is reported as done, which is what it was, and not as
    /// someone else's. Otherwise `refused` stands. Bytes, not the ETag, are compared: an
    /// encrypted object's ETag is not its MD5.
    fn landed(&self, key: Option<&str>, body: Body<'_>, refused: Reply) -> std::io::Result<Reply> {
        let Body::Bytes(sent) = body else {
            return Ok(refused);
        };
        let stored = self.send("GET", key, &[], &[], Body::Empty)?;
        let etag = stored.header("etag").map(str::to_string);
        let same = stored.status == 200 && stored.bytes()? == sent;
        match etag {
            Some(etag) if same => {
                let _ = refused.bytes();
                tracing::debug!(
                    key,
                    "S3 conditional PUT refused on a retry had landed before"
                );
                self.send("HEAD", key, &[], &[("if-match", &etag)], Body::Empty)
            }
            _ => Ok(refused),
        }
    }

    /// Whether the ETags of parts and completions are MD5s, from which a completion's ETag can
    /// be foretold. With SSE-KMS they are not (AWS: "not an MD5 digest of their object data"),
    /// and S3 itself then checks each part's ETag on completion.
    pub(super) fn etags_are_md5(&self) -> bool {
        !matches!(self.endpoint.wire.encryption, Some(Encryption::Kms(_)))
    }

    /// The headers that go with a request creating an object (PutObject, CopyObject,
    /// CreateMultipartUpload; not the parts, which belong to their upload): encryption,
    /// storage class and canned ACL.
    fn object_headers(
        &self,
        method: &str,
        key: Option<&str>,
        query: &[(&str, &str)],
    ) -> Vec<(&'static str, &str)> {
        let has = |name: &str| query.iter().any(|(k, _)| *k == name);
        let creates = key.is_some()
            && ((method == "PUT" && query.is_empty()) || (method == "POST" && has("uploads")));
        let wire = &self.endpoint.wire;
        let mut headers = Vec::new();
        if !creates {
            return headers;
        }
        match &wire.encryption {
            Some(Encryption::Aes256) => headers.push(("x-amz-server-side-encryption", "AES256")),
            Some(Encryption::Kms(id)) => {
                headers.push(("x-amz-server-side-encryption", "aws:kms"));
                headers.push(("x-amz-server-side-encryption-aws-kms-key-id", id.as_str()));
            }
            None => {}
        }
        if let Some(class) = wire.storage_class {
            headers.push(("x-amz-storage-class", class.as_str()));
        }
        if let Some(acl) = wire.acl {
            headers.push(("x-amz-acl", acl.as_str()));
        }
        headers
    }

    fn send_once(
        &self,
        method: &str,
        key: Option<&str>,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        body: Body<'_>,
    ) -> Result<Reply, ureq::Error> {
        let started = Instant::now();
        let wire = &self.endpoint.wire;
        let credentials = self.endpoint.credentials.get()?;
        // The path as sent: the key, after the bucket in path-style requests.
        let mut path = if wire.virtual_hosted {
            String::new()
        } else {
            format!("/{}", encode(&self.endpoint.bucket, false))
        };
        if let Some(key) = key {
            path.push('/');
            path.push_str(&encode(key, true));
        }
        if path.is_empty() {
            path.push('/');
        }
        let mut pairs: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (encode(k, false), encode(v, false)))
            .collect();
        pairs.sort();
        let query_string: String = pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let amz_date = amz_date(SystemTime::now());
        let mut signed: Vec<(String, String)> = vec![("x-amz-date".into(), amz_date.clone())];
        if !wire.signature_v2 {
            signed.push(("host".into(), self.host.clone()));
            signed.push(("x-amz-content-sha256".into(), "UNSIGNED-PAYLOAD".into()));
        }
        if let Some(token) = &credentials.session_token {
            signed.push(("x-amz-security-token".into(), token.clone()));
        }
        for (name, value) in headers
            .iter()
            .chain(self.object_headers(method, key, query).iter())
        {
            signed.push((name.to_ascii_lowercase(), value.trim().to_string()));
        }
        signed.sort();
        let (authorization, canonical, to_sign) = if wire.signature_v2 {
            self.authorization_v2(&credentials, method, &path, query, &signed)
        } else {
            self.authorization(
                &credentials,
                method,
                &path,
                &query_string,
                &signed,
                &amz_date,
            )
        };
        if wire.log.signing() {
            let hide = |s: String| match &credentials.session_token {
                Some(token) => s.replace(token.as_str(), "<session token>"),
                None => s,
            };
            tracing::info!(
                method,
                key,
                canonical_request = hide(canonical),
                string_to_sign = hide(to_sign),
                "S3 request signed"
            );
        }
        let url = if query_string.is_empty() {
            format!("{}{path}", self.base)
        } else {
            format!("{}{path}?{query_string}", self.base)
        };
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("user-agent", self.user_agent.as_str());
        for (name, value) in &signed {
            if name != "host" {
                request = request.header(name.as_str(), value.as_str());
            }
        }
        request = request.header("authorization", authorization);
        if wire.log.headers()
            && let Some(headers) = request.headers_ref()
        {
            tracing::info!(method, key, headers = ?without_secrets(headers), "S3 request headers");
        }
        let result = match (body, &self.direct) {
            (Body::Empty, Some(direct)) if method == "GET" => direct.run(&request.body(())?),
            (Body::Empty, _) if method != "PUT" && method != "POST" => {
                self.agent.run(request.body(())?)
            }
            (Body::Empty, _) => self.agent.run(request.body(&[][..])?),
            (Body::Bytes(bytes), _) => self.agent.run(request.body(bytes)?),
        };
        let response = result.inspect_err(|e| {
            if wire.log.requests() {
                tracing::info!(
                    method,
                    bucket = self.endpoint.bucket,
                    key,
                    sent = body.len(),
                    ms = started.elapsed().as_millis() as u64,
                    "S3 request failed: {e}"
                );
            }
        })?;
        let status = response.status().as_u16();
        if wire.log.requests() {
            let received = response
                .headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::info!(
                method,
                bucket = self.endpoint.bucket,
                key,
                status,
                sent = body.len(),
                received,
                ms = started.elapsed().as_millis() as u64,
                "S3 request"
            );
            if wire.log.headers() {
                tracing::info!(method, key, headers = ?response.headers(), "S3 answer headers");
            }
        }
        Ok(Reply {
            status,
            response,
            log_errors: wire.log.errors(),
        })
    }

    /// SigV4's `Authorization`, with the canonical request and the string to sign (for
    /// `loglevel: debugwithsigning`).
    fn authorization(
        &self,
        credentials: &Credentials,
        method: &str,
        path: &str,
        query: &str,
        headers: &[(String, String)],
        amz_date: &str,
    ) -> (String, String, String) {
        let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
        let signed_headers = names.join(";");
        let mut canonical = format!("{method}\n{path}\n{query}\n");
        for (name, value) in headers {
            canonical.push_str(&format!("{name}:{value}\n"));
        }
        canonical.push_str(&format!("\n{signed_headers}\nUNSIGNED-PAYLOAD"));
        let (scope, to_sign, signature) = self.signature(credentials, &canonical, amz_date);
        (
            format!(
                "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
                credentials.access_key
            ),
            canonical,
            to_sign,
        )
    }

    /// The credential scope, the string to sign and the SigV4 signature of the canonical
    /// request `canonical`.
    fn signature(
        &self,
        credentials: &Credentials,
        canonical: &str,
        amz_date: &str,
    ) -> (String, String, String) {
        let date = &amz_date[..8];
        let scope = format!("{date}/{}/s3/aws4_request", self.endpoint.region);
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex(&Sha256::digest(canonical.as_bytes()))
        );
        let mut key = hmac(
            format!("AWS4{}", credentials.secret_key).as_bytes(),
            date.as_bytes(),
        );
        for part in [self.endpoint.region.as_str(), "s3", "aws4_request"] {
            key = hmac(&key, part.as_bytes());
        }
        let signature = hex(&hmac(&key, to_sign.as_bytes()));
        (scope, to_sign, signature)
    }

    /// A URL that GETs `key` without further credentials until `expires` from now, with the
    /// signature in the query, as the requests are addressed and signed: SigV4 (only the
    /// host signed, the payload unsigned) or, with `v4auth: false`, Signature Version 2
    /// (`Expires` a time). Makes no request.
    pub(super) fn presign(&self, key: &str, expires: Duration) -> std::io::Result<String> {
        let credentials = self.endpoint.credentials.get()?;
        let mut path = if self.endpoint.wire.virtual_hosted {
            String::new()
        } else {
            format!("/{}", encode(&self.endpoint.bucket, false))
        };
        path.push('/');
        path.push_str(&encode(key, true));
        let now = SystemTime::now();
        if self.endpoint.wire.signature_v2 {
            let until = (now + expires)
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let resource = if self.endpoint.wire.virtual_hosted {
                format!("/{}{path}", encode(&self.endpoint.bucket, false))
            } else {
                path.clone()
            };
            let mut to_sign = format!("GET\n\n\n{until}\n");
            if let Some(token) = &credentials.session_token {
                to_sign.push_str(&format!("x-amz-security-token:{token}\n"));
            }
            to_sign.push_str(&resource);
            let signature = sign_v2(&credentials.secret_key, &to_sign);
            let mut url = format!(
                "{}{path}?AWSAccessKeyId={}&Expires={until}&Signature={}",
                self.base,
                encode(&credentials.access_key, false),
                encode(&signature, false)
            );
            if let Some(token) = &credentials.session_token {
                url.push_str(&format!("&x-amz-security-token={}", encode(token, false)));
            }
            return Ok(url);
        }
        let amz_date = amz_date(now);
        let scope = format!(
            "{}/{}/s3/aws4_request",
            &amz_date[..8],
            self.endpoint.region
        );
        let credential = format!("{}/{scope}", credentials.access_key);
        let expires = expires.as_secs().to_string();
        let mut pairs = vec![
            ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
            ("X-Amz-Credential", credential.as_str()),
            ("X-Amz-Date", amz_date.as_str()),
            ("X-Amz-Expires", expires.as_str()),
            ("X-Amz-SignedHeaders", "host"),
        ];
        if let Some(token) = &credentials.session_token {
            pairs.push(("X-Amz-Security-Token", token));
        }
        pairs.sort();
        let query = pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v, false)))
            .collect::<Vec<_>>()
            .join("&");
        let canonical = format!(
            "GET\n{path}\n{query}\nhost:{}\n\nhost\nUNSIGNED-PAYLOAD",
            self.host
        );
        let (_, _, signature) = self.signature(&credentials, &canonical, &amz_date);
        Ok(format!(
            "{}{path}?{query}&X-Amz-Signature={signature}",
            self.base
        ))
    }

    /// Signature Version 2's `Authorization` (`v4auth: false`), with the string to sign.
    /// The resource names the bucket whichever the addressing.
    fn authorization_v2(
        &self,
        credentials: &Credentials,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        headers: &[(String, String)],
    ) -> (String, String, String) {
        let resource = if self.endpoint.wire.virtual_hosted {
            format!("/{}{path}", encode(&self.endpoint.bucket, false))
        } else {
            path.to_string()
        };
        let to_sign = string_to_sign_v2(method, &resource, query, headers);
        let signature = sign_v2(&credentials.secret_key, &to_sign);
        (
            format!("AWS {}:{signature}", credentials.access_key),
            resource,
            to_sign,
        )
    }
}

/// Whether a failed attempt cannot have reached the server, so that sending it again cannot
/// do anything twice.
fn unsent(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => true,
        ureq::Error::Timeout(t) => matches!(t, ureq::Timeout::Connect | ureq::Timeout::Resolve),
        ureq::Error::Io(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        _ => false,
    }
}

/// Whether an attempt that failed with `e` is sent again (budget allowing): one that never
/// reached the server always, even after timing out while connecting (`CONNECT_TIME_OUT` is
/// shorter than the budget so that a server back up is found); one that did only if it did
/// not time out (that spent the budget) and sending it twice is harmless (not a POST).
fn retried(e: &ureq::Error, method: &str) -> bool {
    unsent(e) || (!timed_out(e) && method != "POST")
}

/// Whether reading an answer's body failed because the server or the network did (it
/// stalled past the time-out, or the connection was cut), not because of what was read.
pub(super) fn outage(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    // ureq hands its own errors (a time-out) to a body's reader wrapped in an io::Error.
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<ureq::Error>())
    {
        Some(e) => timed_out(e),
        None => matches!(
            e.kind(),
            TimedOut | ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
        ),
    }
}

fn timed_out(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Timeout(_) => true,
        ureq::Error::Io(e) => e.kind() == std::io::ErrorKind::TimedOut,
        _ => false,
    }
}

fn into_io(e: ureq::Error) -> std::io::Error {
    match e {
        ureq::Error::Io(e) => e,
        e @ ureq::Error::Timeout(_) => std::io::Error::new(std::io::ErrorKind::TimedOut, e),
        e => std::io::Error::other(e),
    }
}

/// Request headers for the log, without `authorization` or a session token.
fn without_secrets(headers: &ureq::http::HeaderMap) -> Vec<(&str, &str)> {
    headers
        .iter()
        .filter(|(n, _)| *n != "authorization" && *n != "x-amz-security-token")
        .map(|(n, v)| (n.as_str(), v.to_str().unwrap_or("?")))
        .collect()
}

/// The sub-resources Signature Version 2 signs (of the ones the driver sends).
const SIGNED_SUBRESOURCES_V2: [&str; 3] = ["partNumber", "uploadId", "uploads"];

/// SigV2's string to sign: method, Content-MD5 and Content-Type (berth sends neither), an
/// empty Date (`x-amz-date` is sent), the `x-amz-*` headers (`headers`: lower case, sorted),
/// and the resource with its signed sub-resources.
fn string_to_sign_v2(
    method: &str,
    resource: &str,
    query: &[(&str, &str)],
    headers: &[(String, String)],
) -> String {
    let mut to_sign = format!("{method}\n\n\n\n");
    for (name, value) in headers.iter().filter(|(n, _)| n.starts_with("x-amz-")) {
        to_sign.push_str(&format!("{name}:{value}\n"));
    }
    to_sign.push_str(resource);
    let mut subresources: Vec<&(&str, &str)> = query
        .iter()
        .filter(|(k, _)| SIGNED_SUBRESOURCES_V2.contains(k))
        .collect();
    subresources.sort();
    for (i, (k, v)) in subresources.into_iter().enumerate() {
        to_sign.push(if i == 0 { '?' } else { '&' });
        to_sign.push_str(k);
        if !v.is_empty() {
            to_sign.push('=');
            to_sign.push_str(v);
        }
    }
    to_sign
}

/// base64(HMAC-SHA1(secret, string to sign)).
fn sign_v2(secret: &str, to_sign: &str) -> String {
    use base64::Engine as _;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(ring::hmac::sign(&key, to_sign.as_bytes()))
}

/// HMAC-SHA256 (RFC 2104).
fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// URI-encodes as SigV4 asks: everything but unreserved characters (and `/` in a key path).
pub(super) fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `yyyymmddThhmmssZ`.
fn amz_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

// Howard Hinnant's civil calendar algorithms (days since 1970-01-01 <-> y/m/d).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn time_of(y: i64, mo: u32, d: u32, h: u64, mi: u64, s: u64, millis: u64) -> Option<SystemTime> {
    let days = u64::try_from(days_from_civil(y, mo, d)).ok()?;
    let secs = days * 86_400 + h * 3600 + mi * 60 + s;
    Some(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis))
}

/// `2026-11-27T13:43:30.000Z` (listings, copy results).
pub(super) fn parse_iso8601(s: &str) -> Option<SystemTime> {
    let s = s.trim().strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut date = date.split('-');
    let y = date.next()?.parse().ok()?;
    let mo = date.next()?.parse().ok()?;
    let d = date.next()?.parse().ok()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut hms = hms.split(':');
    let h = hms.next()?.parse().ok()?;
    let mi = hms.next()?.parse().ok()?;
    let sec = hms.next()?.parse().ok()?;
    let millis = format!("{frac:0<3}")[..3].parse().ok()?;
    time_of(y, mo, d, h, mi, sec, millis)
}

/// `Fri, 27 Nov 2026 13:43:30 GMT` (`Last-Modified`).
pub(super) fn parse_http_date(s: &str) -> Option<SystemTime> {
    let mut words = s.split_whitespace().skip(1);
    let d = words.next()?.parse().ok()?;
    let mo = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| Some(*m) == words.clone().next())? as u32
        + 1;
    words.next();
    let y = words.next()?.parse().ok()?;
    let mut hms = words.next()?.split(':');
    let h = hms.next()?.parse().ok()?;
    let mi = hms.next()?.parse().ok()?;
    let sec = hms.next()?.parse().ok()?;
    time_of(y, mo, d, h, mi, sec, 0)
}

/// The contents of every `<tag>...</tag>` element in `xml`, in order (S3's answers have no
/// attributes on the elements read here, and no CDATA).
pub(super) fn elements<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut found = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        found.push(&after[..end]);
        rest = &after[end + close.len()..];
    }
    found
}

/// The first `<tag>` element's text, unescaped.
pub(super) fn first(xml: &str, tag: &str) -> Option<String> {
    elements(xml, tag).first().map(|s| unescape(s))
}

pub(super) fn unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    s.replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#34;", "\"")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connect time-out was checked as a time-out before as unsent, so it was never retried
    /// (issue 13 review, finding 3).
    #[test]
    fn what_is_retried() {
        let cases = [
            (ureq::Error::Timeout(ureq::Timeout::Connect), "POST", true),
            (ureq::Error::Timeout(ureq::Timeout::Resolve), "GET", true),
            (ureq::Error::ConnectionFailed, "POST", true),
            (
                ureq::Error::Io(std::io::ErrorKind::ConnectionRefused.into()),
                "POST",
                true,
            ),
            (
                ureq::Error::Io(std::io::ErrorKind::ConnectionReset.into()),
                "PUT",
                true,
            ),
            (
                ureq::Error::Io(std::io::ErrorKind::ConnectionReset.into()),
                "POST",
                false,
            ),
            (
                ureq::Error::Timeout(ureq::Timeout::RecvResponse),
                "GET",
                false,
            ),
            (
                ureq::Error::Io(std::io::ErrorKind::TimedOut.into()),
                "GET",
                false,
            ),
        ];
        for (e, method, retry) in cases {
            assert_eq!(retried(&e, method), retry, "{method} after {e}");
        }
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231 test case 2.
        assert_eq!(
            hex(&hmac(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// AWS's published Signature Version 2 examples (S3 developer guide, "Signing and
    /// authenticating REST requests": GET and PUT of photos/puppy.jpg), and the string to sign
    /// of an UploadPart: `x-amz-*` headers in order, the resource with only the signed
    /// sub-resources, sorted.
    #[test]
    fn signature_v2_matches_awss_examples() {
        let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        assert_eq!(
            sign_v2(
                secret,
                "GET\n\n\nTue, 27 Mar 2007 19:36:42 +0000\n/awsexamplebucket1/photos/puppy.jpg"
            ),
            "qgk2+6Sv9/oM7G3qLEjTH1a1l1g="
        );
        assert_eq!(
            sign_v2(
                secret,
                "PUT\n\nimage/jpeg\nTue, 27 Mar 2007 21:15:45 +0000\n/johnsmith/photos/puppy.jpg"
            ),
            "MyyxeRY7whkBe+bq8fHCL/2kKUg="
        );
        let headers = [
            ("x-amz-date".to_string(), "20261127T134330Z".to_string()),
            ("x-amz-storage-class".to_string(), "STANDARD".to_string()),
        ];
        assert_eq!(
            string_to_sign_v2(
                "PUT",
                "/b/some/key",
                &[("uploadId", "u-1"), ("partNumber", "2"), ("list-type", "2")],
                &headers
            ),
            "PUT\n\n\n\nx-amz-date:20261127T134330Z\nx-amz-storage-class:STANDARD\n/b/some/key?partNumber=2&uploadId=u-1"
        );
        assert_eq!(
            string_to_sign_v2("POST", "/b/k", &[("uploads", "")], &headers[..1]),
            "POST\n\n\n\nx-amz-date:20261127T134330Z\n/b/k?uploads"
        );
    }

    #[test]
    fn dates_round_trip() {
        let t = parse_iso8601("2026-11-27T13:43:30.250Z").unwrap();
        assert_eq!(amz_date(t), "20261127T134330Z");
        assert_eq!(
            parse_http_date("Fri, 27 Nov 2026 13:43:30 GMT").unwrap() + Duration::from_millis(250),
            t
        );
        assert_eq!(amz_date(UNIX_EPOCH), "19700101T000000Z");
    }

    #[test]
    fn xml_elements_are_found_and_unescaped() {
        let xml = "<R><Contents><Key>a&amp;b</Key><ETag>&quot;x&quot;</ETag></Contents><Contents><Key>c</Key></Contents></R>";
        let contents = elements(xml, "Contents");
        assert_eq!(contents.len(), 2);
        assert_eq!(first(contents[0], "Key").unwrap(), "a&b");
        assert_eq!(first(contents[0], "ETag").unwrap(), "\"x\"");
        assert_eq!(first(contents[1], "Key").unwrap(), "c");
    }
}
