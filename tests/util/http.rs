//! A small HTTP/1.1 client over std's `TcpStream`.
//!
//! Hand-rolled rather than taken from a crate because the bad-input tests need what a polished
//! client refuses to do: send raw request targets (`..`, `%2e%2e`, `//`), bodies shorter than
//! their Content-Length, sockets that stall half-way through a request line, and expose the
//! exact framing the server chose (Content-Length versus chunked). Every request is sent with
//! `Connection: close` and the response is read to EOF, which keeps the parser trivial.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Long enough for a debug build under load, short enough that a hung server fails the test
/// instead of hanging the suite.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Every response of a distribution-spec registry carries this header (spec: "API Version").
pub const API_VERSION_HEADER: &str = "Docker-Distribution-API-Version";

/// Talks to one berth instance.
#[derive(Clone, Copy, Debug)]
pub struct Client {
    addr: SocketAddr,
}

enum Body {
    Empty,
    Bytes(Vec<u8>),
    /// Sent with `Transfer-Encoding: chunked`, one HTTP chunk per element: how streaming
    /// clients (docker, containerd) send a PATCH whose length they don't know up front.
    Chunked(Vec<Vec<u8>>),
}

/// A request under construction; `send` or `try_send` puts it on the wire.
pub struct Request<'c> {
    client: &'c Client,
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Body,
}

/// A fully read response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Self {
        Client { addr }
    }

    /// A connected socket with the suite's timeouts, for tests that write raw bytes.
    pub fn connect(&self) -> io::Result<TcpStream> {
        let stream = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(stream)
    }

    /// Writes raw bytes (a request that may lie about its length), half-closes the socket as a
    /// client that gave up would, and reads until the server closes. Returns the response if
    /// the server sent a parsable one; the bad-input tests only require that it answered
    /// or hung up, and then check what became visible.
    pub fn raw_exchange(&self, wire: &[u8]) -> Option<Response> {
        let mut stream = self.connect().ok()?;
        let _ = stream.write_all(wire);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        read_response(&mut stream, false).ok()
    }

    /// A request with any method and a raw target, sent exactly as given.
    pub fn request(&self, method: &str, target: &str) -> Request<'_> {
        Request {
            client: self,
            method: method.to_string(),
            target: target.to_string(),
            headers: Vec::new(),
            body: Body::Empty,
        }
    }

    pub fn get(&self, target: &str) -> Response {
        self.request("GET", target).send()
    }

    pub fn head(&self, target: &str) -> Response {
        self.request("HEAD", target).send()
    }

    pub fn delete(&self, target: &str) -> Response {
        self.request("DELETE", target).send()
    }
}

impl Request<'_> {
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.body = Body::Bytes(bytes.into());
        self
    }

    pub fn chunked(mut self, parts: Vec<Vec<u8>>) -> Self {
        self.body = Body::Chunked(parts);
        self
    }

    /// Sends the request and reads the response; panics on a transport error, and on a
    /// response without the distribution API version header, which the spec requires on
    /// every response (so every test checks it for free).
    pub fn send(self) -> Response {
        let what = format!("{} {}", self.method, self.target);
        let response = self
            .try_send()
            .unwrap_or_else(|e| panic!("{what}: transport error: {e}"));
        assert_eq!(
            response.header(API_VERSION_HEADER),
            Some("registry/2.0"),
            "{what}: every response must carry {API_VERSION_HEADER}: registry/2.0; got {response:?}"
        );
        response
    }

    /// Sends the request; transport errors are returned, not panicked on, for the crash test
    /// (the server is killed under it) and for raw targets the HTTP layer itself may refuse.
    pub fn try_send(self) -> io::Result<Response> {
        let mut stream = self.client.connect()?;
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.method, self.target, self.client.addr
        );
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        match &self.body {
            Body::Empty if matches!(self.method.as_str(), "PUT" | "POST" | "PATCH") => {
                head.push_str("Content-Length: 0\r\n")
            }
            Body::Empty => {}
            Body::Bytes(bytes) => head.push_str(&format!("Content-Length: {}\r\n", bytes.len())),
            Body::Chunked(_) => head.push_str("Transfer-Encoding: chunked\r\n"),
        }
        head.push_str("\r\n");
        let mut wire = head.into_bytes();
        match &self.body {
            Body::Empty => {}
            Body::Bytes(bytes) => wire.extend_from_slice(bytes),
            Body::Chunked(parts) => {
                for part in parts.iter().filter(|p| !p.is_empty()) {
                    wire.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                    wire.extend_from_slice(part);
                    wire.extend_from_slice(b"\r\n");
                }
                wire.extend_from_slice(b"0\r\n\r\n");
            }
        }
        // A server may answer before reading the whole body (an oversized manifest, say) and
        // close; the write then fails but the response is already waiting to be read.
        let write_result = stream.write_all(&wire);
        match read_response(&mut stream, self.method == "HEAD") {
            Ok(response) => Ok(response),
            Err(read_error) => Err(write_result.err().unwrap_or(read_error)),
        }
    }
}

/// Reads one response to EOF from a stream whose request said `Connection: close`.
pub fn read_response(stream: &mut TcpStream, head_request: bool) -> io::Result<Response> {
    let mut raw = Vec::new();
    if let Err(e) = stream.read_to_end(&mut raw) {
        // A reset after a complete response is still a complete response.
        if raw.is_empty() {
            return Err(e);
        }
    }
    parse_response(&raw, head_request)
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn parse_response(raw: &[u8], head_request: bool) -> io::Result<Response> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            invalid(format!(
                "no header end in {:?}",
                String::from_utf8_lossy(raw)
            ))
        })?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = &raw[end + 4..];
    let mut response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    if head_request || status == 204 || status == 304 {
        return Ok(response);
    }
    response.body = if response
        .header("Transfer-Encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    {
        decode_chunked(rest)?
    } else if let Some(len) = response.content_length() {
        if rest.len() < len as usize {
            return Err(invalid(format!(
                "body has {} bytes, Content-Length says {len}",
                rest.len()
            )));
        }
        rest[..len as usize].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(response)
}

fn decode_chunked(mut rest: &[u8]) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| invalid("truncated chunk size line".into()))?;
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| invalid(format!("bad chunk size {size_text:?}")))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if rest.len() < size + 2 {
            return Err(invalid("truncated chunk".into()));
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

impl Response {
    /// The first header with this name, compared case-insensitively as HTTP requires.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn content_length(&self) -> Option<u64> {
        self.header("Content-Length").and_then(|v| v.parse().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The path and query of the `Location` header. The spec lets it be absolute or relative;
    /// the tests only ever talk to the one server, so the origin is dropped.
    pub fn location(&self) -> String {
        let location = self
            .header("Location")
            .unwrap_or_else(|| panic!("no Location header in {self:?}"));
        match location.split_once("://") {
            Some((_, after_scheme)) => match after_scheme.find('/') {
                Some(i) => after_scheme[i..].to_string(),
                None => "/".to_string(),
            },
            None => location.to_string(),
        }
    }

    /// Panics with the whole response when the status is not the expected one.
    #[track_caller]
    pub fn expect(self, status: u16) -> Self {
        assert_eq!(self.status, status, "unexpected status: {self}");
        self
    }

    /// Asserts the spec's error shape: this status, a JSON body whose `errors` array is
    /// non-empty, every entry with a `code` and a `message`, and `code` among the first.
    #[track_caller]
    pub fn expect_error(self, status: u16, code: &str) -> Self {
        assert_eq!(self.status, status, "unexpected status: {self}");
        let codes = self.error_codes();
        assert_eq!(codes.first().map(String::as_str), Some(code), "{self}");
        self
    }

    /// Like `expect_error`, where the spec leaves a choice between several statuses or codes
    /// (each alternative is a `(status, code)` pair the spec or the contract allows).
    #[track_caller]
    pub fn expect_error_among(self, allowed: &[(u16, &str)]) -> Self {
        let codes = self.error_codes();
        let got = (
            self.status,
            codes.first().map(String::as_str).unwrap_or_default(),
        );
        assert!(
            allowed.contains(&got),
            "expected one of {allowed:?}, got {self}"
        );
        self
    }

    /// The `code` of every entry of the spec's error body; panics if the body is not one.
    #[track_caller]
    pub fn error_codes(&self) -> Vec<String> {
        let body: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {self}"));
        let errors = body["errors"]
            .as_array()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| panic!("error body has no errors array: {self}"));
        errors
            .iter()
            .map(|e| {
                assert!(e["message"].is_string(), "error without message: {self}");
                e["code"]
                    .as_str()
                    .unwrap_or_else(|| panic!("error without code: {self}"))
                    .to_string()
            })
            .collect()
    }
}

impl std::fmt::Display for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}", self.status)?;
        for (name, value) in &self.headers {
            write!(f, "\n  {name}: {value}")?;
        }
        // Bodies of blobs can be large and binary; the first bytes identify an error body.
        let shown = &self.body[..self.body.len().min(600)];
        write!(
            f,
            "\n  body ({} bytes): {}",
            self.body.len(),
            String::from_utf8_lossy(shown)
        )
    }
}

/// Appends a query parameter to a path that may already carry a query (upload Locations
/// often do, to carry session state).
pub fn with_query(target: &str, param: &str) -> String {
    let separator = if target.contains('?') { '&' } else { '?' };
    format!("{target}{separator}{param}")
}

/// Follows `Link: <...>; rel="next"` from `first` and returns every page's `field` in order.
pub fn paginate(c: &Client, first: &str, field: &str) -> (Vec<String>, usize) {
    let mut collected = Vec::new();
    let mut target = first.to_string();
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages < 100, "pagination does not end");
        let page = c.get(&target).expect(200);
        let items = page.json()[field].as_array().cloned().unwrap_or_default();
        collected.extend(items.iter().map(|t| t.as_str().unwrap().to_string()));
        let Some(link) = page.header("Link") else {
            break;
        };
        assert!(link.ends_with("rel=\"next\""), "Link header {link:?}");
        let start = link.find('<').unwrap() + 1;
        let end = link.find('>').unwrap();
        target = link[start..end].to_string();
        assert!(target.starts_with("/v2/"), "Link target {target:?}");
    }
    (collected, pages)
}

/// What came back on a connection that only the server may end (see `Client::exchange_open`).
#[derive(Debug)]
pub struct Exchange {
    /// Every byte the server sent.
    pub received: Vec<u8>,
    /// Whether the server ended the connection (EOF or reset) before the wait ran out.
    pub closed: bool,
}

impl Exchange {
    /// The first response in `received`, if it is a whole one.
    pub fn response(&self) -> Option<Response> {
        parse_response(&self.received, false).ok()
    }

    /// Asserts the first response has `status` and the server then closed the connection:
    /// after refusing a request whose framing it cannot trust, the server must not read the
    /// bytes that follow as another request (RFC 9112 section 6.3).
    #[track_caller]
    pub fn expect_refused(&self, status: u16) -> Response {
        let shown = String::from_utf8_lossy(&self.received);
        let response = self
            .response()
            .unwrap_or_else(|| panic!("no whole response; received {shown:?}"));
        assert_eq!(response.status, status, "received {shown:?}");
        assert!(
            response
                .header("Connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close")),
            "a refusal announces the close (Connection: close); received {shown:?}"
        );
        assert!(self.closed, "connection left open; received {shown:?}");
        response
    }
}

impl Client {
    /// Writes `wire` without half-closing the socket (so only the server can end the
    /// connection, and a request it wrongly reads from the bytes after the first one still
    /// gets answered) and reads until the server closes or `wait` passes. The write runs on
    /// its own thread: a server that stops reading a huge head would otherwise block it.
    pub fn exchange_open(&self, wire: &[u8], wait: Duration) -> Exchange {
        let stream = self.connect().expect("connect");
        let deadline = std::time::Instant::now() + wait;
        std::thread::scope(|s| {
            let mut writer = &stream;
            s.spawn(move || {
                // The server may refuse before reading everything; the write then fails.
                let _ = writer.write_all(wire);
            });
            let mut received = Vec::new();
            let mut buf = [0u8; 16 * 1024];
            let closed = loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break false;
                }
                stream.set_read_timeout(Some(left)).expect("set timeout");
                match (&stream).read(&mut buf) {
                    Ok(0) => break true,
                    Ok(n) => received.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        break false;
                    }
                    // A reset ends the connection as surely as a FIN.
                    Err(_) => break true,
                }
            };
            // Unblocks the writer if the server neither read nor closed.
            let _ = stream.shutdown(std::net::Shutdown::Both);
            Exchange { received, closed }
        })
    }
}
