//! GETs over plain HTTP on the client's own keep-alive connections, so that an object's body
//! goes from the socket straight into the caller's buffer. Through ureq every body byte was
//! read into its input buffer and copied out again: on a 64 MiB pull that copy was 40% of
//! berth's CPU (flamegraphs/2026-11-27-3b308b6-s3-pull-64m.svg). Only the answer's head goes
//! through a buffer here; whatever of the body arrived with it is handed out first.
//!
//! It keeps ureq's behaviour for these requests: a connect time-out, the time-out on the
//! answer's head and on every read and write, errors as ureq's (`ureq::Error`) so that
//! `Client::send` retries them alike, no redirect followed, idle connections kept for reuse
//! (up to `max_idle`, for at most `IDLE_AGE`). HTTPS and proxied endpoints stay on ureq.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The largest answer head read (ureq's default too).
const MAX_HEAD: usize = 64 * 1024;

/// Most headers an answer may have.
const MAX_HEADERS: usize = 128;

/// How long an idle connection is kept (ureq's default): servers close idle connections
/// after a while of their own, and a connection found closed costs a reconnect.
const IDLE_AGE: Duration = Duration::from_secs(15);

/// A connection and what was read from it past the last answer's head.
struct Connection {
    stream: TcpStream,
    /// Bytes read but not yet handed out: `buf[at..filled]`.
    buf: Box<[u8]>,
    at: usize,
    filled: usize,
    idle_since: Instant,
}

/// A read from the socket. A read time-out is `TimedOut` (Linux reports SO_RCVTIMEO as
/// `WouldBlock`), which `client::outage` reads as the server stalling.
fn recv(stream: &mut TcpStream, out: &mut [u8]) -> io::Result<usize> {
    loop {
        match stream.read(out) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, e));
            }
            result => return result,
        }
    }
}

impl Connection {
    /// Reads into `out`: buffered bytes first, then straight from the socket.
    fn read_some(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.at < self.filled {
            let n = out.len().min(self.filled - self.at);
            out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
            self.at += n;
            return Ok(n);
        }
        recv(&mut self.stream, out)
    }

    /// Reads from the socket into the buffer, after what it holds.
    fn fill(&mut self) -> io::Result<usize> {
        let n = recv(&mut self.stream, &mut self.buf[self.filled..])?;
        self.filled += n;
        Ok(n)
    }

    /// One byte through the buffer (chunk-size lines and trailers).
    fn byte(&mut self) -> io::Result<u8> {
        if self.at == self.filled {
            self.at = 0;
            self.filled = 0;
            if self.fill()? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        self.at += 1;
        Ok(self.buf[self.at - 1])
    }

    /// A line of a chunked body, without its CR LF, at most `MAX_HEAD` long.
    fn line(&mut self) -> io::Result<Vec<u8>> {
        let mut line = Vec::new();
        loop {
            match self.byte()? {
                b'\n' => {
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    return Ok(line);
                }
                _ if line.len() == MAX_HEAD => return Err(invalid("a chunk line too long")),
                b => line.push(b),
            }
        }
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Where the connections go to, and the idle ones.
pub(super) struct Direct {
    /// `host[:port]` as the base names it, for a request whose URI has none.
    authority: String,
    /// The host resolved, without an IPv6 address's brackets.
    host: String,
    /// The names under `localhost` resolve to loopback, as `LocalhostResolver` does for ureq.
    loopback: bool,
    /// The base's port, or HTTP's (80) when it names none.
    port: u16,
    connect_time_out: Duration,
    time_out: Duration,
    idle: Arc<Idle>,
}

/// Idle connections, most recently used last.
struct Idle {
    connections: Mutex<VecDeque<Connection>>,
    max: usize,
}

impl Idle {
    fn take(&self) -> Option<Connection> {
        let mut idle = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(c) = idle.pop_back() {
            if c.idle_since.elapsed() < IDLE_AGE {
                return Some(c);
            }
        }
        None
    }

    fn put(&self, mut connection: Connection) {
        connection.idle_since = Instant::now();
        connection.at = 0;
        connection.filled = 0;
        let mut idle = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() == self.max {
            idle.pop_front();
        }
        idle.push_back(connection);
    }
}

impl Direct {
    /// For requests to `base` (`http://host[:port]`, the bucket's host when virtual-hosted),
    /// or `None` when it is not plain HTTP.
    pub(super) fn new(
        base: &str,
        connect_time_out: Duration,
        time_out: Duration,
        max_idle: usize,
    ) -> Option<Direct> {
        let authority = base.strip_prefix("http://")?;
        let uri: ureq::http::Uri = base.parse().ok()?;
        let host = uri.host()?.to_ascii_lowercase();
        Some(Direct {
            authority: authority.to_string(),
            loopback: host == "localhost" || host.ends_with(".localhost"),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port: uri.port_u16().unwrap_or(80),
            connect_time_out,
            time_out,
            idle: Arc::new(Idle {
                connections: Mutex::new(VecDeque::new()),
                max: max_idle,
            }),
        })
    }

    /// Sends `request` (a GET) and reads the answer's head. A reused connection the server
    /// had closed meanwhile is replaced by a new one at once: the request never reached the
    /// server on it.
    pub(super) fn run(
        &self,
        request: &ureq::http::Request<()>,
    ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let head = self.head(request);
        if let Some(connection) = self.idle.take() {
            match self.exchange(connection, &head, true) {
                Err(Stale::Closed) => {}
                Err(Stale::Failed(e)) => return Err(e),
                Ok(response) => return Ok(response),
            }
        }
        match self.exchange(self.connect()?, &head, false) {
            Err(Stale::Closed) => Err(ureq::Error::Io(io::ErrorKind::UnexpectedEof.into())),
            Err(Stale::Failed(e)) => Err(e),
            Ok(response) => Ok(response),
        }
    }

    /// The request head as sent: the headers signed for it, `host` first.
    fn head(&self, request: &ureq::http::Request<()>) -> Vec<u8> {
        let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
        let host = request
            .uri()
            .authority()
            .map_or(self.authority.as_str(), |a| a.as_str());
        let mut head =
            format!("{} {target} HTTP/1.1\r\nhost: {host}\r\n", request.method()).into_bytes();
        for (name, value) in request.headers() {
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        head
    }

    fn connect(&self) -> Result<Connection, ureq::Error> {
        let addrs: Vec<SocketAddr> = if self.loopback {
            vec![SocketAddr::from(([127, 0, 0, 1], self.port))]
        } else {
            (self.host.as_str(), self.port)
                .to_socket_addrs()
                .map_err(|_| ureq::Error::HostNotFound)?
                .collect()
        };
        let mut failed = ureq::Error::HostNotFound;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, self.connect_time_out) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    stream.set_write_timeout(Some(self.time_out))?;
                    return Ok(Connection {
                        stream,
                        buf: vec![0; MAX_HEAD].into_boxed_slice(),
                        at: 0,
                        filled: 0,
                        idle_since: Instant::now(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    failed = ureq::Error::Timeout(ureq::Timeout::Connect);
                }
                Err(e) => failed = ureq::Error::Io(e),
            }
        }
        Err(failed)
    }

    /// Sends `head` on `connection` (`reused`: it served an answer before) and reads the
    /// final answer's head, within the time-out.
    fn exchange(
        &self,
        mut connection: Connection,
        head: &[u8],
        mut reused: bool,
    ) -> Result<ureq::http::Response<ureq::Body>, Stale> {
        if let Err(e) = connection.stream.write_all(head) {
            return Err(match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    Stale::Failed(ureq::Error::Timeout(ureq::Timeout::SendRequest))
                }
                _ if reused => Stale::Closed,
                _ => Stale::Failed(ureq::Error::Io(e)),
            });
        }
        let deadline = Instant::now() + self.time_out;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut answer = httparse::Response::new(&mut headers);
            let parsed = answer
                .parse(&connection.buf[..connection.filled])
                .map_err(|e| Stale::Failed(ureq::Error::Io(invalid(&e.to_string()))))?;
            if let httparse::Status::Complete(len) = parsed {
                match answer.code {
                    // No protocol was asked to switch to: what follows is not HTTP/1.1.
                    Some(101) => {
                        return Err(Stale::Failed(ureq::Error::Io(invalid(
                            "101 Switching Protocols",
                        ))));
                    }
                    // An interim answer (RFC 9110 15.2): the final one follows it on this
                    // connection, and taken as final it would be left there unread.
                    Some(100..=199) => {
                        connection.buf.copy_within(len..connection.filled, 0);
                        connection.filled -= len;
                        // The server answered: the request reached it, so a close from now
                        // on is a failure, not a stale connection to send it again on.
                        reused = false;
                        continue;
                    }
                    _ => {}
                }
                let (response, framing, keep) = response(&answer)?;
                connection.at = len;
                connection.stream.set_read_timeout(Some(self.time_out))?;
                let body = Body {
                    connection: Some(connection),
                    framing,
                    keep,
                    idle: Arc::clone(&self.idle),
                };
                return Ok(response.body(body.into_ureq()).map_err(ureq::Error::from)?);
            }
            if connection.filled == MAX_HEAD {
                return Err(Stale::Failed(ureq::Error::LargeResponseHeader(
                    MAX_HEAD, MAX_HEAD,
                )));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Stale::Failed(ureq::Error::Timeout(
                    ureq::Timeout::RecvResponse,
                )));
            }
            connection.stream.set_read_timeout(Some(left))?;
            let filled = connection.filled;
            match connection.fill() {
                Ok(0) if filled == 0 && reused => return Err(Stale::Closed),
                Ok(0) => {
                    return Err(Stale::Failed(ureq::Error::Io(
                        io::ErrorKind::UnexpectedEof.into(),
                    )));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    return Err(Stale::Failed(ureq::Error::Timeout(
                        ureq::Timeout::RecvResponse,
                    )));
                }
                Err(e) if filled == 0 && reused && e.kind() == io::ErrorKind::ConnectionReset => {
                    return Err(Stale::Closed);
                }
                Err(e) => return Err(Stale::Failed(ureq::Error::Io(e))),
            }
        }
    }
}

/// Why an exchange failed: on a reused connection the server had closed (nothing reached
/// it, so it is sent again on a new one), or otherwise.
enum Stale {
    Closed,
    Failed(ureq::Error),
}

impl From<ureq::Error> for Stale {
    fn from(e: ureq::Error) -> Stale {
        Stale::Failed(e)
    }
}

impl From<io::Error> for Stale {
    fn from(e: io::Error) -> Stale {
        Stale::Failed(ureq::Error::Io(e))
    }
}

/// The answer's status and headers, how its body is framed (RFC 9112 section 6.3), and
/// whether the connection may be kept after it.
fn response(
    answer: &httparse::Response<'_, '_>,
) -> Result<(ureq::http::response::Builder, Framing, bool), ureq::Error> {
    let status = answer.code.unwrap_or_default();
    let mut builder = ureq::http::Response::builder().status(status);
    let mut length = None;
    let mut chunked = false;
    let mut close = answer.version != Some(1);
    for h in answer.headers.iter() {
        builder = builder.header(h.name, h.value);
        let value = std::str::from_utf8(h.value).unwrap_or_default().trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let len: u64 = value
                .parse()
                .map_err(|_| ureq::Error::Io(invalid("a bad Content-Length")))?;
            if length.is_some_and(|l| l != len) {
                return Err(ureq::Error::Io(invalid("two Content-Lengths")));
            }
            length = Some(len);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // `chunked` alone: a coding under it (`gzip, chunked`) would have to be decoded
            // (RFC 9112 7), and a second header would apply `chunked` twice.
            if chunked || !value.eq_ignore_ascii_case("chunked") {
                return Err(ureq::Error::Io(invalid("a Transfer-Encoding not chunked")));
            }
            chunked = true;
        } else if h.name.eq_ignore_ascii_case("connection") {
            close |= value
                .split(',')
                .any(|c| c.trim().eq_ignore_ascii_case("close"));
        }
    }
    // A server must not send both (RFC 9112 6.1); received, it "ought to be handled as an
    // error" (6.3): it is how a response is split or smuggled, so which framing the server
    // meant is unknown, and a body read by either may not be the object's bytes (which
    // closing the connection after it would not mend). No S3 server sends both.
    if chunked && length.is_some() {
        return Err(ureq::Error::Io(invalid(
            "both Content-Length and Transfer-Encoding",
        )));
    }
    // HTTP/1.0 has no transfer codings: such a message's framing "is faulty" (RFC 9112 6.1),
    // as a 1.0 peer would read the body to the close.
    if chunked && answer.version != Some(1) {
        return Err(ureq::Error::Io(invalid(
            "Transfer-Encoding in an HTTP/1.0 answer",
        )));
    }
    let framing = if status == 204 || status == 304 {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked {
            left: 0,
            started: false,
        }
    } else if let Some(len) = length {
        Framing::Length(len)
    } else {
        Framing::Close
    };
    let keep = !close && !matches!(framing, Framing::Close);
    Ok((builder, framing, keep))
}

/// How a body ends.
enum Framing {
    /// After this many more bytes.
    Length(u64),
    /// At the last chunk: `left` bytes of the current one, `started` once a chunk was read.
    Chunked { left: u64, started: bool },
    /// When the server closes the connection.
    Close,
}

/// An answer's body, read from its connection; the connection goes back to the idle ones
/// once the body has been read to its end.
struct Body {
    connection: Option<Connection>,
    framing: Framing,
    /// Whether the connection may serve another request after this body.
    keep: bool,
    idle: Arc<Idle>,
}

impl Body {
    fn into_ureq(mut self) -> ureq::Body {
        // An empty body is over before it is read: its connection is free now.
        if matches!(self.framing, Framing::Length(0)) {
            self.done();
        }
        ureq::Body::builder().reader(self)
    }

    /// The body was read to its end: the connection is kept if it may be.
    fn done(&mut self) {
        if let Some(connection) = self.connection.take()
            && self.keep
            && connection.at == connection.filled
        {
            self.idle.put(connection);
        }
    }

    fn read_framed(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let Some(connection) = self.connection.as_mut() else {
            return Ok(0);
        };
        let framing = &mut self.framing;
        match framing {
            Framing::Length(0) => Ok(0),
            Framing::Length(left) => {
                let want = out.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                match connection.read_some(&mut out[..want])? {
                    0 => Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the connection closed {left} bytes before the body's end"),
                    )),
                    n => {
                        *left -= n as u64;
                        Ok(n)
                    }
                }
            }
            Framing::Chunked { left, started } => {
                if *left == 0 {
                    if *started && !connection.line()?.is_empty() {
                        return Err(invalid("a chunk longer than its size"));
                    }
                    *started = true;
                    let line = connection.line()?;
                    let size = line.split(|b| *b == b';').next().unwrap_or_default();
                    *left = std::str::from_utf8(size)
                        .ok()
                        .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
                        .ok_or_else(|| invalid("a bad chunk size"))?;
                    if *left == 0 {
                        while !connection.line()?.is_empty() {}
                        *framing = Framing::Length(0);
                        return Ok(0);
                    }
                }
                let want = out.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                match connection.read_some(&mut out[..want])? {
                    0 => Err(io::ErrorKind::UnexpectedEof.into()),
                    n => {
                        *left -= n as u64;
                        Ok(n)
                    }
                }
            }
            Framing::Close => connection.read_some(out),
        }
    }
}

impl Read for Body {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let n = self.read_framed(out)?;
        let ended = match &self.framing {
            Framing::Length(left) => *left == 0,
            Framing::Close => n == 0,
            Framing::Chunked { .. } => false,
        };
        if ended {
            self.done();
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn get(direct: &Direct, base: &str, path: &str) -> Result<(u16, Vec<u8>), ureq::Error> {
        let request = ureq::http::Request::get(format!("{base}{path}"))
            .body(())
            .unwrap();
        let response = direct.run(&request)?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        response
            .into_body()
            .into_reader()
            .read_to_end(&mut body)
            .unwrap();
        Ok((status, body))
    }

    /// Reads one request head from `stream`.
    fn request(stream: &mut TcpStream) -> String {
        let mut head = Vec::new();
        let mut byte = [0u8];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).unwrap() == 0 {
                break;
            }
            head.push(byte[0]);
        }
        String::from_utf8(head).unwrap()
    }

    fn direct(base: &str) -> Direct {
        Direct::new(base, Duration::from_secs(2), Duration::from_secs(2), 4).unwrap()
    }

    /// A GET answered with `answer` by a server that reads one request.
    fn get_answered(answer: &'static [u8]) -> Result<(u16, Vec<u8>), ureq::Error> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            request(&mut s);
            s.write_all(answer).unwrap();
        });
        let got = get(&direct(&base), &base, "/a");
        server.join().unwrap();
        got
    }

    /// An interim 1xx answer (RFC 9110 15.2) is not the answer: the final one follows on
    /// the same connection. Taken as final, the connection goes back to the pool with the
    /// real answer unread, and the next GET gets the previous object's bytes. The first
    /// interim answer arrives alone, the second in one write with its final answer.
    #[test]
    fn an_interim_answer_is_skipped_not_taken_as_final() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            request(&mut s);
            s.write_all(b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n")
                .unwrap();
            std::thread::sleep(Duration::from_millis(200));
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst")
                .unwrap();
            for answer in [
                &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecond"
                    [..],
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nthird",
            ] {
                if request(&mut s).is_empty() {
                    return;
                }
                s.write_all(answer).unwrap();
            }
        });
        let direct = direct(&base);
        let got: Vec<_> = ["/a", "/b", "/c"]
            .iter()
            .map(|path| get(&direct, &base, path).map_err(|e| e.to_string()))
            .collect();
        drop(direct);
        server.join().unwrap();
        let want: Vec<Result<_, String>> = ["first", "second", "third"]
            .iter()
            .map(|body| Ok((200, body.as_bytes().to_vec())))
            .collect();
        assert_eq!(got, want);
    }

    /// No protocol was asked for: what would follow a 101 is not an HTTP answer.
    #[test]
    fn a_switch_of_protocols_is_refused() {
        let got = get_answered(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\n\r\n");
        assert!(got.is_err(), "{got:?}");
    }

    /// `regionendpoint: http://host` (or `secure: false` with AWS's endpoint) names no port:
    /// HTTP's is 80. ureq connects there; handed the authority without a port,
    /// `to_socket_addrs` refuses it, and every GET fails as HostNotFound. An IPv6 address
    /// is resolved without its brackets.
    #[test]
    fn an_endpoint_without_a_port_is_reached_on_port_80() {
        for base in ["http://127.0.0.1", "http://[::1]"] {
            let got = direct(base).connect();
            assert!(
                !matches!(got, Err(ureq::Error::HostNotFound)),
                "{base}: HostNotFound"
            );
        }
    }

    /// A transfer coding under `chunked` (RFC 9112 7: the client must decode it or fail):
    /// the gzip bytes would be handed out as the object's.
    #[test]
    fn a_coding_under_chunked_is_refused() {
        let got = get_answered(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n3\r\n\x1f\x8b\x08\r\n0\r\n\r\n",
        );
        assert!(got.is_err(), "{got:?}");
    }

    /// Content-Length with chunked (RFC 9112 6.3: "ought to be handled as an error"): which
    /// framing the server meant is unknown.
    #[test]
    fn a_length_with_chunked_is_refused() {
        let got = get_answered(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        );
        assert!(got.is_err(), "{got:?}");
    }

    /// Transfer-Encoding in an HTTP/1.0 answer (RFC 9112 6.1: the framing is faulty): an
    /// HTTP/1.0 peer reads its body to the close, chunk lines included.
    #[test]
    fn chunked_in_http_1_0_is_refused() {
        let got = get_answered(
            b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        );
        assert!(got.is_err(), "{got:?}");
    }
}
