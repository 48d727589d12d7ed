use ascii::AsciiString;

use std::sync::{Arc, Mutex};
use std::io::Error as IoError;
use std::io::Result as IoResult;
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};

use std::net::{Shutdown, SocketAddr};
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::common::{HTTPVersion, Header, Method, StatusCode};
use crate::util::{BodyRate, MinRate, RefinedTcpStream};
use crate::util::{SequentialReader, SequentialReaderBuilder, SequentialWriterBuilder};
use crate::Request;

/// berth patch: longest request line or header line accepted.
const MAX_LINE: usize = 16 * 1024;
/// berth patch: most header lines accepted in one request.
const MAX_HEADERS: usize = 256;
/// berth patch: empty lines skipped before a request line.
const EMPTY_LINES_BEFORE_REQUEST: usize = 4;
/// berth patch: how long, and for how many bytes, a refused connection is read and discarded
/// after the refusal is sent (see `ClientConnection::linger`).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 8 << 20;

/// A ClientConnection is an object that will store a socket to a client
/// and return Request objects.
pub struct ClientConnection {
    // address of the client
    remote_addr: IoResult<Option<SocketAddr>>,

    // sequence of Readers to the stream, so that the data is not read in
    //  the wrong order
    source: SequentialReaderBuilder<BufReader<RefinedTcpStream>>,

    // sequence of Writers to the stream, to avoid writing response #2 before
    //  response #1
    sink: SequentialWriterBuilder<BufWriter<RefinedTcpStream>>,

    // Reader to read the next header from
    next_header_source: SequentialReader<BufReader<RefinedTcpStream>>,

    // set to true if we know that the previous request is the last one
    no_more_requests: bool,

    // true if the connection goes through SSL
    secure: bool,

    // berth patch: shuts the reading side when a request body fails to arrive
    read_closer: Arc<Mutex<crate::util::refined_tcp_stream::Stream>>,

    // berth patch: the minimum rate of every request body on this connection
    body_rate: BodyRate,
}

/// Error that can happen when reading a request.
#[derive(Debug)]
enum ReadError {
    /// berth patch: the request cannot be served, or where it ends cannot be trusted (RFC
    /// 9112 section 6.3: a body whose length is unclear may hide a second request). It is
    /// answered with this status and `Connection: close`, and nothing after it is read.
    Refuse(StatusCode),
    /// the client sent an unrecognized `Expect` header
    ExpectationFailed,
    ReadIoError(IoError),
}

/// berth patch: why a request or header line could not be read.
enum LineError {
    /// Longer than `MAX_LINE`.
    TooLong,
    /// A byte no HTTP/1.x head holds (control characters, a CR without LF, non-ASCII).
    Invalid,
    Io(IoError),
}

/// berth patch: a complete response refusing a request, ending the connection. It carries no
/// body (so no framing the client could misread) and says the connection closes.
pub(crate) fn refusal(status: StatusCode) -> String {
    let date = httpdate::HttpDate::from(std::time::SystemTime::now());
    format!(
        "HTTP/1.1 {} {}\r\nDate: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        status.0,
        status.default_reason_phrase(),
        date
    )
}

impl ClientConnection {
    /// Creates a new `ClientConnection` that takes ownership of the `TcpStream`.
    pub fn new(
        write_socket: RefinedTcpStream,
        mut read_socket: RefinedTcpStream,
        body_rate: BodyRate,
    ) -> ClientConnection {
        let remote_addr = read_socket.peer_addr();
        let secure = read_socket.secure();
        let read_closer = read_socket.read_closer();

        let mut source = SequentialReaderBuilder::new(BufReader::with_capacity(1024, read_socket));
        let first_header = source.next().unwrap();

        ClientConnection {
            source,
            sink: SequentialWriterBuilder::new(BufWriter::with_capacity(1024, write_socket)),
            remote_addr,
            next_header_source: first_header,
            no_more_requests: false,
            secure,
            read_closer,
            body_rate,
        }
    }

    /// true if the connection is HTTPS
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Reads the next line from self.next_header_source.
    ///
    /// Reads until `CRLF` is reached. The next read will start
    ///  at the first byte of the new line.
    fn read_next_line(&mut self) -> Result<AsciiString, LineError> {
        let mut buf = Vec::new();
        let mut prev_byte_was_cr = false;

        loop {
            let byte = self.next_header_source.by_ref().bytes().next();

            let byte = match byte {
                Some(b) => b.map_err(LineError::Io)?,
                None => {
                    let eof = IoError::new(ErrorKind::ConnectionAborted, "Unexpected EOF");
                    return Err(LineError::Io(eof));
                }
            };

            // berth patch: a CR ends a line only with the LF after it; a bare CR is refused
            // (RFC 9112 section 2.2), since a front end may read it as a line break.
            if prev_byte_was_cr {
                if byte != b'\n' {
                    return Err(LineError::Invalid);
                }
                return AsciiString::from_ascii(buf).map_err(|_| LineError::Invalid);
            }
            if byte == b'\r' {
                prev_byte_was_cr = true;
                continue;
            }

            // berth patch: refuse at once what cannot be an HTTP/1.x head (a TLS
            // ClientHello starts with 0x16) and bound a line's length, instead of buffering
            // until a CR LF that may never come.
            if byte != b'\t' && !(0x20..0x7f).contains(&byte) {
                return Err(LineError::Invalid);
            }
            if buf.len() >= MAX_LINE {
                return Err(LineError::TooLong);
            }

            buf.push(byte);
        }
    }

    /// Reads a request from the stream.
    /// Blocks until the header has been read.
    fn read(&mut self) -> Result<Request, ReadError> {
        let (method, path, version, headers) = {
            // reading the request line
            let (method, path, version) = {
                let mut read_line = || {
                    self.read_next_line().map_err(|e| match e {
                        // berth patch: garbage gets a 400 and an over-long target a 414, not
                        // silence.
                        LineError::Invalid => ReadError::Refuse(StatusCode(400)),
                        LineError::TooLong => ReadError::Refuse(StatusCode(414)),
                        LineError::Io(e) => ReadError::ReadIoError(e),
                    })
                };
                // berth patch: a few empty lines before a request line are ignored, as RFC
                // 9112 section 2.2 asks (some clients send a CRLF after a body).
                let mut line = read_line()?;
                for _ in 0..EMPTY_LINES_BEFORE_REQUEST {
                    if !line.is_empty() {
                        break;
                    }
                    line = read_line()?;
                }

                parse_request_line(line.as_str())?
            };

            // getting all headers
            let headers = {
                let mut headers: Vec<Header> = Vec::new();
                loop {
                    // berth patch: a head too large gets a 431 (RFC 6585 section 5), not a
                    // silent close.
                    let line = self.read_next_line().map_err(|e| match e {
                        LineError::Invalid => ReadError::Refuse(StatusCode(400)),
                        LineError::TooLong => ReadError::Refuse(StatusCode(431)),
                        LineError::Io(e) => ReadError::ReadIoError(e),
                    })?;

                    if line.is_empty() {
                        break;
                    };
                    if headers.len() >= MAX_HEADERS {
                        return Err(ReadError::Refuse(StatusCode(431)));
                    }
                    // berth patch: a line starting with whitespace is obsolete line folding,
                    // which a server must refuse or unfold (RFC 9112 section 5.2); trimming it
                    // made a folded `Transfer-Encoding` a header of its own.
                    if line.as_bytes().first().is_some_and(|b| *b == b' ' || *b == b'\t') {
                        return Err(ReadError::Refuse(StatusCode(400)));
                    }
                    headers.push(match FromStr::from_str(line.as_str()) {
                        Ok(h) => h,
                        _ => return Err(ReadError::Refuse(StatusCode(400))),
                    });
                }

                headers
            };

            (method, path, version, headers)
        };

        // berth patch: an HTTP/1.1 request names its host exactly once (RFC 9112 section
        // 3.2: 400 otherwise).
        if version == HTTPVersion(1, 1)
            && headers.iter().filter(|h| h.field.equiv("Host")).count() != 1
        {
            return Err(ReadError::Refuse(StatusCode(400)));
        }

        // building the writer for the request
        let writer = self.sink.next().unwrap();

        // follow-up for next potential request
        let mut data_source = self.source.next().unwrap();
        std::mem::swap(&mut self.next_header_source, &mut data_source);
        let data_source = crate::util::refined_tcp_stream::ShutReadOnError {
            inner: MinRate::new(data_source, self.body_rate),
            closer: Arc::clone(&self.read_closer),
        };

        // building the next reader
        let mut request = crate::request::new_request(
            self.secure,
            method,
            path,
            version,
            headers,
            *self.remote_addr.as_ref().unwrap(),
            data_source,
            writer,
        )
        .map_err(|e| {
            use crate::request;
            match e {
                request::RequestCreationError::CreationIoError(e) => ReadError::ReadIoError(e),
                request::RequestCreationError::ExpectationFailed => ReadError::ExpectationFailed,
                request::RequestCreationError::Refuse(status) => ReadError::Refuse(status),
            }
        })?;
        // berth patch: the request's own handle on the socket, for file responses.
        request.set_socket(self.read_closer.lock().ok().and_then(|s| s.tcp_socket()));

        // return the request
        Ok(request)
    }

    /// berth patch: answers with `status` and `Connection: close`, after any responses still
    /// owed to earlier requests on this connection.
    fn refuse(&mut self, status: StatusCode) {
        if self.send_refusal(status).is_ok() {
            self.linger();
        }
    }

    /// berth patch: refuses a connection no thread could be started for, on the accept
    /// thread, which must not wait for the client.
    pub(crate) fn refuse_unserved(&mut self, status: StatusCode) {
        let _ = self.send_refusal(status);
    }

    fn send_refusal(&mut self, status: StatusCode) -> IoResult<()> {
        let mut writer = self.sink.next().unwrap();
        writer.write_all(refusal(status).as_bytes())?;
        writer.flush()
    }

    /// berth patch: the lingering close of RFC 9112 section 9.6. Closing a socket with unread
    /// input makes the kernel send a reset, which can destroy the refusal before the client
    /// reads it (a client still sending a huge head, or the bytes after a bad request). So
    /// the sending side is shut first (the client sees the end of the response) and the
    /// input is discarded until the client closes too, for a bounded time and amount.
    fn linger(&mut self) {
        let Ok(mut stream) = self.read_closer.lock() else {
            return;
        };
        if stream.shutdown(Shutdown::Write).is_err() {
            return;
        }
        let deadline = Instant::now() + LINGER;
        let mut discarded = 0;
        let mut buf = vec![0u8; 64 * 1024];
        while discarded < LINGER_BYTES {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
                return;
            }
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => discarded += n,
            }
        }
    }
}

impl Iterator for ClientConnection {
    type Item = Request;

    /// Blocks until the next Request is available.
    /// Returns None when no new Requests will come from the client.
    fn next(&mut self) -> Option<Request> {
        // the client sent a "connection: close" header in this previous request
        //  or is using HTTP 1.0, meaning that no new request will come
        if self.no_more_requests {
            return None;
        }

        let rq = match self.read() {
            Ok(rq) => rq,

            // berth patch: every refusal ends the connection: where the next request would
            // start is unknown (or, for a refused body, untrusted).
            Err(ReadError::Refuse(status)) => {
                self.refuse(status);
                return None;
            }

            // An `Expect` other than 100-continue (RFC 9110 section 10.1.1).
            Err(ReadError::ExpectationFailed) => {
                self.refuse(StatusCode(417));
                return None;
            }

            Err(ReadError::ReadIoError(ref err)) if err.kind() == ErrorKind::TimedOut => {
                // request timeout: the client stalled, so there is nothing to linger for
                let _ = self.send_refusal(StatusCode(408));
                return None; // closing the connection
            }

            Err(ReadError::ReadIoError(_)) => return None,
        };

        // updating the status of the connection
        let connection_header = rq
            .headers()
            .iter()
            .find(|h| h.field.equiv("Connection"))
            .map(|h| h.value.as_str());

        let lowercase = connection_header.map(|h| h.to_ascii_lowercase());

        match lowercase {
            Some(ref val) if val.contains("close") => self.no_more_requests = true,
            Some(ref val) if val.contains("upgrade") => self.no_more_requests = true,
            Some(ref val)
                if !val.contains("keep-alive") && *rq.http_version() == HTTPVersion(1, 0) =>
            {
                self.no_more_requests = true
            }
            None if *rq.http_version() == HTTPVersion(1, 0) => self.no_more_requests = true,
            _ => (),
        };

        // returning the request
        Some(rq)
    }
}

/// Parses a "HTTP/1.1" string.
///
/// berth patch: only HTTP/1.x is served; a later HTTP/1 minor version is served as 1.1 (RFC
/// 9110 section 6.2) and any other major version gets a 505 (HTTP/2.0 used to get a 505 and
/// then a deadlock of the connection thread).
fn parse_http_version(version: &str) -> Result<HTTPVersion, ReadError> {
    let syntax = || ReadError::Refuse(StatusCode(400));
    let digits = version.strip_prefix("HTTP/").ok_or_else(syntax)?.as_bytes();
    let (major, minor) = match digits {
        [major, b'.', minor] if major.is_ascii_digit() && minor.is_ascii_digit() => {
            (major - b'0', minor - b'0')
        }
        _ => return Err(syntax()),
    };
    match (major, minor) {
        (1, 0) => Ok(HTTPVersion(1, 0)),
        (1, _) => Ok(HTTPVersion(1, 1)),
        _ => Err(ReadError::Refuse(StatusCode(505))),
    }
}

/// Parses the request line of the request.
/// eg. GET / HTTP/1.1
///
/// berth patch: exactly three parts separated by single spaces (RFC 9112 section 3).
fn parse_request_line(line: &str) -> Result<(Method, String, HTTPVersion), ReadError> {
    let bad = || ReadError::Refuse(StatusCode(400));
    let mut parts = line.split(' ');
    let (Some(method), Some(path), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if method.is_empty() || path.is_empty() {
        return Err(bad());
    }
    let version = parse_http_version(version)?;
    let method = method.parse().map_err(|()| bad())?;
    Ok((method, path.to_owned(), version))
}

#[cfg(test)]
mod test {
    #[test]
    fn test_parse_request_line() {
        let (method, path, ver) = super::parse_request_line("GET /hello HTTP/1.1").unwrap();

        assert!(method == crate::Method::Get);
        assert!(path == "/hello");
        assert!(ver == crate::common::HTTPVersion(1, 1));

        assert!(super::parse_request_line("GET /hello").is_err());
        assert!(super::parse_request_line("qsd qsd qsd").is_err());
        assert!(super::parse_request_line("GET /hello HTTP/1.1 x").is_err());
        assert!(super::parse_request_line("GET  /hello HTTP/1.1").is_err());
        let refused = |line| match super::parse_request_line(line) {
            Err(super::ReadError::Refuse(status)) => status.0,
            other => panic!("{}: {:?}", line, other),
        };
        assert_eq!(refused("GET / HTTP/2.0"), 505);
        assert_eq!(refused("PRI * HTTP/2.0"), 505);
        assert_eq!(refused("GET / HTTP/0.9"), 505);
        assert_eq!(refused("GET / HTTP/1"), 400);
        let (_, _, ver) = super::parse_request_line("GET / HTTP/1.2").unwrap();
        assert!(ver == crate::common::HTTPVersion(1, 1));
    }
}
