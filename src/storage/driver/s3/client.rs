//! A thin, blocking S3 client: requests signed with AWS Signature Version 4 (signed here, with
//! `sha2`; the payload is sent as `UNSIGNED-PAYLOAD`, so no body is hashed twice) over
//! `ureq`'s pooled keep-alive connections, path-style URLs, and the few pieces of the S3 XML
//! the driver reads. It knows nothing of the `Driver` contract: `super` maps its answers.

use sha2::{Digest as _, Sha256};
use std::io::Read;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where the bucket is and who is asking.
#[derive(Clone)]
pub(super) struct Endpoint {
    /// `http://host:port` or `https://host`, without a trailing `/`.
    pub(super) url: String,
    pub(super) region: String,
    pub(super) bucket: String,
    pub(super) access_key: String,
    pub(super) secret_key: String,
    pub(super) session_token: Option<String>,
}

/// The answer to one request: its status and headers; the body is read by the caller, to the
/// end (so the connection goes back to the pool) or streamed.
pub(super) struct Reply {
    pub(super) status: u16,
    pub(super) response: ureq::http::Response<ureq::Body>,
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
        let mut body = String::new();
        self.response
            .into_body()
            .into_reader()
            .read_to_string(&mut body)?;
        Ok(body)
    }

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
        let body = self.text().unwrap_or_default();
        let code = first(&body, "Code").unwrap_or_default();
        let message = first(&body, "Message").unwrap_or_default();
        std::io::Error::other(format!("{op}: HTTP {status} {code} {message}"))
    }
}

/// Most attempts `Client::send` makes of one request (DESIGN decision 12: a retry budget).
const ATTEMPTS: usize = 4;

/// The longest a connection may take to open, whatever the request time-out: a server that
/// does not accept within it is down, and the next attempt may find it back.
const CONNECT_TIME_OUT: Duration = Duration::from_secs(5);

/// A request body: none, or bytes already in memory (a part of at most `chunksize`, or a small
/// object).
#[derive(Clone, Copy)]
pub(super) enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
}

pub(super) struct Client {
    agent: ureq::Agent,
    endpoint: Endpoint,
    /// How long a request may wait for any one step (connect, send, the answer, each read of
    /// a body), and how long after its first attempt it may still be retried.
    time_out: Duration,
}

impl Client {
    pub(super) fn new(endpoint: Endpoint, time_out: Duration) -> Client {
        // Time-outs per step, none on a whole body: a blob stream may take long, but never
        // stall past `time_out` (DESIGN decision 12: no remote call hangs a worker).
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(time_out.min(CONNECT_TIME_OUT)))
            .timeout_recv_response(Some(time_out))
            .timeout_per_read(Some(time_out))
            .timeout_per_write(Some(time_out))
            .max_idle_connections_per_host(64)
            .build()
            .into();
        Client {
            agent,
            endpoint,
            time_out,
        }
    }

    pub(super) fn bucket(&self) -> &str {
        &self.endpoint.bucket
    }

    /// Sends one signed request for `key` (`None`: the bucket itself) with `query` (pairs, not
    /// yet encoded) and extra `headers`, within a retry budget: at most `ATTEMPTS` attempts
    /// with a growing pause, none begun later than `time_out` after the first. Every body is
    /// in memory, so it can be sent again. A 500, 502, 503 or 504 is retried, as AWS's SDKs
    /// do; a request that never reached the server (refused, no connection) is retried
    /// whatever it is; one that failed on the way only if sending it twice is harmless, which
    /// holds for every GET, HEAD, PUT and DELETE the driver makes (a conditional PUT repeated
    /// after it succeeded fails its condition, which callers read as someone else's write),
    /// not for a POST (a repeated CompleteMultipartUpload finds its upload gone). A time-out
    /// is not retried: it spent the budget. The error is a failure to get an answer: the
    /// transport's, or the last 5xx.
    pub(super) fn send(
        &self,
        method: &str,
        key: Option<&str>,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        body: Body<'_>,
    ) -> std::io::Result<Reply> {
        let started = std::time::Instant::now();
        let mut pause = Duration::from_millis(20);
        let mut attempt = 1;
        loop {
            let last = attempt == ATTEMPTS || started.elapsed() + pause >= self.time_out;
            match self.send_once(method, key, query, headers, body) {
                Ok(reply) if !matches!(reply.status, 500 | 502 | 503 | 504) => return Ok(reply),
                Ok(reply) if last => return Err(reply.into_error(method)),
                Ok(reply) => {
                    tracing::debug!(method, key, status = reply.status, "S3 request retried");
                    let _ = reply.bytes();
                }
                Err(e) => {
                    let retry = !last && !timed_out(&e) && (unsent(&e) || method != "POST");
                    if !retry {
                        return Err(into_io(e));
                    }
                    tracing::debug!(method, key, "S3 request retried: {e}");
                }
            }
            std::thread::sleep(pause);
            pause *= 4;
            attempt += 1;
        }
    }

    fn send_once(
        &self,
        method: &str,
        key: Option<&str>,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        body: Body<'_>,
    ) -> Result<Reply, ureq::Error> {
        let mut path = format!("/{}", encode(&self.endpoint.bucket, false));
        if let Some(key) = key {
            path.push('/');
            path.push_str(&encode(key, true));
        }
        let mut pairs: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (encode(k, false), encode(v, false)))
            .collect();
        pairs.sort();
        let query: String = pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let host = self.host();
        let now = SystemTime::now();
        let amz_date = amz_date(now);
        let mut signed: Vec<(String, String)> = vec![
            ("host".into(), host.to_string()),
            ("x-amz-content-sha256".into(), "UNSIGNED-PAYLOAD".into()),
            ("x-amz-date".into(), amz_date.clone()),
        ];
        if let Some(token) = &self.endpoint.session_token {
            signed.push(("x-amz-security-token".into(), token.clone()));
        }
        for (name, value) in headers {
            signed.push((name.to_ascii_lowercase(), value.trim().to_string()));
        }
        signed.sort();
        let authorization = self.authorization(method, &path, &query, &signed, &amz_date);
        let url = if query.is_empty() {
            format!("{}{path}", self.endpoint.url)
        } else {
            format!("{}{path}?{query}", self.endpoint.url)
        };
        let mut request = ureq::http::Request::builder().method(method).uri(&url);
        for (name, value) in &signed {
            if name != "host" {
                request = request.header(name.as_str(), value.as_str());
            }
        }
        request = request.header("authorization", authorization);
        let response = match body {
            Body::Empty if method != "PUT" && method != "POST" => self.agent.run(request.body(())?),
            Body::Empty => self.agent.run(request.body(&[][..])?),
            Body::Bytes(bytes) => self.agent.run(request.body(bytes)?),
        }?;
        Ok(Reply {
            status: response.status().as_u16(),
            response,
        })
    }

    fn authorization(
        &self,
        method: &str,
        path: &str,
        query: &str,
        headers: &[(String, String)],
        amz_date: &str,
    ) -> String {
        let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
        let signed_headers = names.join(";");
        let mut canonical = format!("{method}\n{path}\n{query}\n");
        for (name, value) in headers {
            canonical.push_str(&format!("{name}:{value}\n"));
        }
        canonical.push_str(&format!("\n{signed_headers}\nUNSIGNED-PAYLOAD"));
        let (scope, signature) = self.signature(&canonical, amz_date);
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            self.endpoint.access_key
        )
    }

    /// The credential scope and the SigV4 signature of the canonical request `canonical`.
    fn signature(&self, canonical: &str, amz_date: &str) -> (String, String) {
        let date = &amz_date[..8];
        let scope = format!("{date}/{}/s3/aws4_request", self.endpoint.region);
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex(&Sha256::digest(canonical.as_bytes()))
        );
        let mut key = hmac(
            format!("AWS4{}", self.endpoint.secret_key).as_bytes(),
            date.as_bytes(),
        );
        for part in [self.endpoint.region.as_str(), "s3", "aws4_request"] {
            key = hmac(&key, part.as_bytes());
        }
        (scope, hex(&hmac(&key, to_sign.as_bytes())))
    }

    /// A URL that GETs `key` without further credentials until `expires` from now: SigV4
    /// with the signature in the query ("Authenticating Requests: Using Query Parameters"),
    /// only the host signed, the payload unsigned. Makes no request.
    pub(super) fn presign(&self, key: &str, expires: Duration) -> String {
        let path = format!(
            "/{}/{}",
            encode(&self.endpoint.bucket, false),
            encode(key, true)
        );
        let amz_date = amz_date(SystemTime::now());
        let scope = format!(
            "{}/{}/s3/aws4_request",
            &amz_date[..8],
            self.endpoint.region
        );
        let credential = format!("{}/{scope}", self.endpoint.access_key);
        let expires = expires.as_secs().to_string();
        let mut pairs = vec![
            ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
            ("X-Amz-Credential", credential.as_str()),
            ("X-Amz-Date", amz_date.as_str()),
            ("X-Amz-Expires", expires.as_str()),
            ("X-Amz-SignedHeaders", "host"),
        ];
        if let Some(token) = &self.endpoint.session_token {
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
            self.host()
        );
        let (_, signature) = self.signature(&canonical, &amz_date);
        format!(
            "{}{path}?{query}&X-Amz-Signature={signature}",
            self.endpoint.url
        )
    }

    /// `host[:port]` of the endpoint, as the `host` header carries it.
    fn host(&self) -> &str {
        self.endpoint
            .url
            .split_once("://")
            .map_or(self.endpoint.url.as_str(), |(_, h)| h)
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

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231 test case 2.
        assert_eq!(
            hex(&hmac(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
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
