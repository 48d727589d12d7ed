use std::io::Error as IoError;
use std::io::{self, Cursor, ErrorKind, Read, Write};

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use std::sync::mpsc::Sender;

use crate::util::{EqualReader, FusedReader};
use crate::{HTTPVersion, Header, Method, Response, StatusCode};

/// Represents an HTTP request made by a client.
///
/// A `Request` object is what is produced by the server, and is your what
/// your code must analyse and answer.
///
/// This object implements the `Send` trait, therefore you can dispatch your requests to
/// worker threads.
///
/// # Pipelining
///
/// If a client sends multiple requests in a row (without waiting for the response), then you will
/// get multiple `Request` objects simultaneously. This is called *requests pipelining*.
/// Tiny-http automatically reorders the responses so that you don't need to worry about the order
/// in which you call `respond` or `into_writer`.
///
/// This mechanic is disabled if:
///
///  - The body of a request is large enough (handling requires pipelining requires storing the
///    body of the request in a buffer ; if the body is too big, tiny-http will avoid doing that)
///  - A request sends a `Expect: 100-continue` header (which means that the client waits to
///    know whether its body will be processed before sending it)
///  - A request sends a `Connection: close` header or `Connection: upgrade` header (used for
///    websockets), which indicates that this is the last request that will be received on this
///    connection
///
/// # Automatic cleanup
///
/// If a `Request` object is destroyed without `into_writer` or `respond` being called,
/// an empty response with a 500 status code (internal server error) will automatically be
/// sent back to the client.
/// This means that if your code fails during the handling of a request, this "internal server
/// error" response will automatically be sent during the stack unwinding.
///
/// # Testing
///
/// If you want to build fake requests to test your server, use [`TestRequest`](crate::test::TestRequest).
pub struct Request {
    // where to read the body from
    data_reader: Option<Box<dyn Read + Send + 'static>>,

    // if this writer is empty, then the request has been answered
    response_writer: Option<Box<dyn Write + Send + 'static>>,

    remote_addr: Option<SocketAddr>,

    // true if HTTPS, false if HTTP
    secure: bool,

    method: Method,

    path: String,

    http_version: HTTPVersion,

    headers: Vec<Header>,

    body_length: Option<usize>,

    // true if a `100 Continue` response must be sent when `as_reader()` is called
    must_send_continue: bool,

    // If Some, a message must be sent after responding
    notify_when_responded: Option<Sender<()>>,

    // berth patch: a handle on the TCP socket, for sendfile(2) responses
    socket: Option<std::sync::Arc<crate::connection::Connection>>,

    // berth patch: true when the body is read from the socket as the handler reads it
    body_streams: bool,
}

struct NotifyOnDrop<R> {
    sender: Sender<()>,
    inner: R,
}

impl<R: Read> Read for NotifyOnDrop<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}
impl<R: Write> Write for NotifyOnDrop<R> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
impl<R> Drop for NotifyOnDrop<R> {
    fn drop(&mut self) {
        self.sender.send(()).unwrap();
    }
}

/// Error that can happen when building a `Request` object.
#[derive(Debug)]
pub enum RequestCreationError {
    /// The client sent an `Expect` header that was not recognized by tiny-http.
    ExpectationFailed,

    /// Error while reading data from the socket during the creation of the `Request`.
    CreationIoError(IoError),

    /// berth patch: the request must be refused with this status and the connection closed.
    Refuse(StatusCode),
}

/// berth patch: how a request's body is delimited.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(usize),
    /// The chunked transfer coding.
    Chunked,
}

/// berth patch: decides where a request's body ends, refusing every head whose answer a
/// front end (a proxy, a load balancer) could read differently, the root of request
/// smuggling (RFC 9112 section 6.3, 11.2). Upstream took an unparsable `Content-Length` as "no
/// body", the first of several different ones, and decoded any transfer coding as chunked.
fn framing(version: &HTTPVersion, headers: &[Header]) -> Result<Framing, StatusCode> {
    let bad = StatusCode(400);
    let values = |name: &'static str| {
        headers
            .iter()
            .filter(move |h| h.field.equiv(name))
            .flat_map(|h| h.value.as_str().split(','))
            .map(str::trim)
    };
    let codings: Vec<&str> = values("Transfer-Encoding").collect();
    let mut lengths = values("Content-Length").peekable();
    let has_length = lengths.peek().is_some();
    let mut length = None;
    for value in lengths {
        // Content-Length = 1*DIGIT; a list of identical values (proxies join repeated
        // fields) is one length (RFC 9110 section 8.6), different ones are an error.
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad);
        }
        let n: usize = value.parse().map_err(|_| bad)?;
        if length.is_some_and(|previous| previous != n) {
            return Err(bad);
        }
        length = Some(n);
    }
    if codings.is_empty() {
        return Ok(length.map_or(Framing::Empty, Framing::Length));
    }
    // HTTP/1.0 has no transfer codings, and a length beside one is a smuggling attempt
    // (RFC 9112 section 6.1, 6.3).
    if *version < HTTPVersion(1, 1) || has_length {
        return Err(bad);
    }
    // Only chunked is decoded: any other coding is 501 (RFC 9112 section 6.1); chunked
    // applied twice leaves the end unclear (section 7).
    if codings.iter().any(|c| !c.eq_ignore_ascii_case("chunked")) {
        return Err(StatusCode(501));
    }
    if codings.len() != 1 {
        return Err(bad);
    }
    Ok(Framing::Chunked)
}

impl From<IoError> for RequestCreationError {
    fn from(err: IoError) -> RequestCreationError {
        RequestCreationError::CreationIoError(err)
    }
}

/// Builds a new request.
///
/// After the request line and headers have been read from the socket, a new `Request` object
/// is built.
///
/// You must pass a `Read` that will allow the `Request` object to read from the incoming data.
/// It is the responsibility of the `Request` to read only the data of the request and not further.
///
/// The `Write` object will be used by the `Request` to write the response.
#[allow(clippy::too_many_arguments)]
pub fn new_request<R, W>(
    secure: bool,
    method: Method,
    path: String,
    version: HTTPVersion,
    headers: Vec<Header>,
    remote_addr: Option<SocketAddr>,
    mut source_data: R,
    writer: W,
) -> Result<Request, RequestCreationError>
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    let framing = framing(&version, &headers).map_err(RequestCreationError::Refuse)?;
    let content_length = match framing {
        Framing::Length(n) => Some(n),
        Framing::Empty | Framing::Chunked => None,
    };

    // true if the client sent a `Expect: 100-continue` header
    let expects_continue = {
        match headers
            .iter()
            .find(|h: &&Header| h.field.equiv("Expect"))
            .map(|h| h.value.as_str())
        {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("100-continue") => true,
            _ => return Err(RequestCreationError::ExpectationFailed),
        }
    };

    // berth patch: the body streams from the socket unless it is empty or small enough to be
    // read here, before the request reaches a worker.
    let body_streams = match framing {
        Framing::Empty | Framing::Length(0) => false,
        Framing::Length(n) => n > 1024 || expects_continue,
        Framing::Chunked => true,
    };

    // we wrap `source_data` around a reading whose nature depends on the transfer-encoding and
    // content-length headers
    // berth patch: `Connection: upgrade` no longer hands the handler the raw socket as the
    // body (berth never upgrades, and the body must end where the framing says); the
    // connection still ends after such a request.
    let reader = if let Some(content_length) = content_length {
        if content_length == 0 {
            Box::new(io::empty()) as Box<dyn Read + Send + 'static>
        } else if content_length <= 1024 && !expects_continue {
            // if the content-length is small enough, we just read everything into a buffer

            let mut buffer = vec![0; content_length];
            let mut offset = 0;

            while offset != content_length {
                let read = source_data.read(&mut buffer[offset..])?;
                if read == 0 {
                    // the socket returned EOF, but we were before the expected content-length
                    // aborting
                    let info = "Connection has been closed before we received enough data";
                    let err = IoError::new(ErrorKind::ConnectionAborted, info);
                    return Err(RequestCreationError::CreationIoError(err));
                }

                offset += read;
            }

            Box::new(Cursor::new(buffer)) as Box<dyn Read + Send + 'static>
        } else {
            let (data_reader, _) = EqualReader::new(source_data, content_length); // TODO:
            Box::new(FusedReader::new(data_reader)) as Box<dyn Read + Send + 'static>
        }
    } else if framing == Framing::Chunked {
        Box::new(FusedReader::new(crate::util::ChunkedDecoder::new(source_data)))
            as Box<dyn Read + Send + 'static>
    } else {
        // if we have neither a Content-Length nor a Transfer-Encoding,
        // assuming that we have no data
        // TODO: could also be multipart/byteranges
        Box::new(io::empty()) as Box<dyn Read + Send + 'static>
    };

    Ok(Request {
        data_reader: Some(reader),
        response_writer: Some(Box::new(writer) as Box<dyn Write + Send + 'static>),
        remote_addr,
        secure,
        method,
        path,
        http_version: version,
        headers,
        body_length: content_length,
        must_send_continue: expects_continue,
        notify_when_responded: None,
        socket: None,
        body_streams,
    })
}

impl Request {
    /// Returns true if the request was made through HTTPS.
    #[inline]
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Returns the method requested by the client (eg. `GET`, `POST`, etc.).
    #[inline]
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// Returns the resource requested by the client.
    #[inline]
    pub fn url(&self) -> &str {
        &self.path
    }

    /// Returns a list of all headers sent by the client.
    #[inline]
    pub fn headers(&self) -> &[Header] {
        &self.headers
    }

    /// Returns the HTTP version of the request.
    #[inline]
    pub fn http_version(&self) -> &HTTPVersion {
        &self.http_version
    }

    /// Returns the length of the body in bytes.
    ///
    /// Returns `None` if the length is unknown.
    #[inline]
    pub fn body_length(&self) -> Option<usize> {
        self.body_length
    }

    /// Returns the address of the client that sent this request.
    ///
    /// The address is always `Some` for TCP listeners, but always `None` for UNIX listeners
    /// (as the remote address of a UNIX client is almost always unnamed).
    ///
    /// Note that this is gathered from the socket. If you receive the request from a proxy,
    /// this function will return the address of the proxy and not the address of the actual
    /// user.
    #[inline]
    pub fn remote_addr(&self) -> Option<&SocketAddr> {
        self.remote_addr.as_ref()
    }

    /// Sends a response with a `Connection: upgrade` header, then turns the `Request` into a `Stream`.
    ///
    /// The main purpose of this function is to support websockets.
    /// If you detect that the request wants to use some kind of protocol upgrade, you can
    ///  call this function to obtain full control of the socket stream.
    ///
    /// If you call this on a non-websocket request, tiny-http will wait until this `Stream` object
    ///  is destroyed before continuing to read or write on the socket. Therefore you should always
    ///  destroy it as soon as possible.
    pub fn upgrade<R: Read>(
        mut self,
        protocol: &str,
        response: Response<R>,
    ) -> Box<dyn ReadWrite + Send> {
        use crate::util::CustomStream;

        response
            .raw_print(
                self.response_writer.as_mut().unwrap().by_ref(),
                self.http_version.clone(),
                &self.headers,
                false,
                Some(protocol),
            )
            .ok(); // TODO: unused result

        self.response_writer.as_mut().unwrap().flush().ok(); // TODO: unused result

        let stream = CustomStream::new(self.extract_reader_impl(), self.extract_writer_impl());
        if let Some(sender) = self.notify_when_responded.take() {
            let stream = NotifyOnDrop {
                sender,
                inner: stream,
            };
            Box::new(stream) as Box<dyn ReadWrite + Send>
        } else {
            Box::new(stream) as Box<dyn ReadWrite + Send>
        }
    }

    /// Allows to read the body of the request.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # extern crate rustc_serialize;
    /// # extern crate tiny_http;
    /// # use rustc_serialize::json::Json;
    /// # use std::io::Read;
    /// # fn get_content_type(_: &tiny_http::Request) -> &'static str { "" }
    /// # fn main() {
    /// # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
    /// let mut request = server.recv().unwrap();
    ///
    /// if get_content_type(&request) == "application/json" {
    ///     let mut content = String::new();
    ///     request.as_reader().read_to_string(&mut content).unwrap();
    ///     let json: Json = content.parse().unwrap();
    /// }
    /// # }
    /// ```
    ///
    /// If the client sent a `Expect: 100-continue` header with the request, calling this
    ///  function will send back a `100 Continue` response.
    #[inline]
    pub fn as_reader(&mut self) -> &mut dyn Read {
        if self.must_send_continue {
            let msg = Response::new_empty(StatusCode(100));
            msg.raw_print(
                self.response_writer.as_mut().unwrap().by_ref(),
                self.http_version.clone(),
                &self.headers,
                true,
                None,
            )
            .ok();
            self.response_writer.as_mut().unwrap().flush().ok();
            self.must_send_continue = false;
        }

        self.data_reader.as_mut().unwrap()
    }

    /// Turns the `Request` into a writer.
    ///
    /// The writer has a raw access to the stream to the user.
    /// This function is useful for things like CGI.
    ///
    /// Note that the destruction of the `Writer` object may trigger
    /// some events. For exemple if a client has sent multiple requests and the requests
    /// have been processed in parallel, the destruction of a writer will trigger
    /// the writing of the next response.
    /// Therefore you should always destroy the `Writer` as soon as possible.
    #[inline]
    pub fn into_writer(mut self) -> Box<dyn Write + Send + 'static> {
        let writer = self.extract_writer_impl();
        if let Some(sender) = self.notify_when_responded.take() {
            let writer = NotifyOnDrop {
                sender,
                inner: writer,
            };
            Box::new(writer) as Box<dyn Write + Send + 'static>
        } else {
            writer
        }
    }

    /// Extract the response `Writer` object from the Request, dropping this `Writer` has the same side effects
    /// as the object returned by `into_writer` above.
    ///
    /// This may only be called once on a single request.
    fn extract_writer_impl(&mut self) -> Box<dyn Write + Send + 'static> {
        use std::mem;

        assert!(self.response_writer.is_some());

        let mut writer = None;
        mem::swap(&mut self.response_writer, &mut writer);
        writer.unwrap()
    }

    /// Extract the body `Reader` object from the Request.
    ///
    /// This may only be called once on a single request.
    fn extract_reader_impl(&mut self) -> Box<dyn Read + Send + 'static> {
        use std::mem;

        assert!(self.data_reader.is_some());

        let mut reader = None;
        mem::swap(&mut self.data_reader, &mut reader);
        reader.unwrap()
    }

    /// berth patch: sets the socket handle used by `respond_with_file`.
    pub(crate) fn set_socket(
        &mut self,
        socket: Option<std::sync::Arc<crate::connection::Connection>>,
    ) {
        self.socket = socket;
    }

    /// berth patch: true when reading the body waits on the client (it is neither empty nor
    /// already read), so a slow client can hold whoever reads it.
    pub fn body_streams(&self) -> bool {
        self.body_streams
    }

    /// berth patch: sends `response`'s status and headers (its `data_length` must be `len`),
    /// then `len` bytes of `file` from `offset` with sendfile(2), so the body goes from the
    /// page cache to the socket without a copy through user space. Falls back to reading the
    /// file when the connection has no TCP socket handle (TLS, Unix sockets).
    #[allow(unsafe_code)]
    pub fn respond_with_file<R: Read>(
        mut self,
        response: Response<R>,
        file: &std::fs::File,
        offset: u64,
        len: u64,
    ) -> Result<(), IoError> {
        use std::os::fd::AsRawFd;
        let Some(socket) = self.socket.take() else {
            let reader = FileRange { file, offset, end: offset + len };
            return self.respond(response.with_data(reader, Some(len as usize)));
        };
        let mut writer = self.extract_writer_impl();
        let head_only = self.method == Method::Head;
        let result = (|| {
            response.raw_print(writer.by_ref(), self.http_version.clone(), &self.headers, true, None)?;
            writer.flush()?;
            if head_only {
                return Ok(());
            }
            let mut off = offset as libc::off_t;
            let end = offset + len;
            while (off as u64) < end {
                let want = (end - off as u64).min(1 << 30) as usize;
                // SAFETY: both descriptors are open for the whole call (owned by `socket`
                // and borrowed `file`), and `off` is a valid off_t the kernel updates.
                let sent = unsafe { libc::sendfile(socket.as_raw_fd(), file.as_raw_fd(), &mut off, want) };
                if sent < 0 {
                    let e = IoError::last_os_error();
                    if e.kind() == ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e);
                }
                if sent == 0 {
                    return Err(IoError::new(ErrorKind::UnexpectedEof, "file shorter than its length"));
                }
            }
            Ok(())
        })();
        if let Some(sender) = self.notify_when_responded.take() {
            sender.send(()).unwrap();
        }
        Self::ignore_client_closing_errors(result)
    }

    /// Sends a response to this request.
    #[inline]
    pub fn respond<R>(mut self, response: Response<R>) -> Result<(), IoError>
    where
        R: Read,
    {
        let res = self.respond_impl(response);
        if let Some(sender) = self.notify_when_responded.take() {
            sender.send(()).unwrap();
        }
        res
    }

    fn respond_impl<R>(&mut self, response: Response<R>) -> Result<(), IoError>
    where
        R: Read,
    {
        let mut writer = self.extract_writer_impl();

        let do_not_send_body = self.method == Method::Head;

        Self::ignore_client_closing_errors(response.raw_print(
            writer.by_ref(),
            self.http_version.clone(),
            &self.headers,
            do_not_send_body,
            None,
        ))?;

        Self::ignore_client_closing_errors(writer.flush())
    }

    fn ignore_client_closing_errors(result: io::Result<()>) -> io::Result<()> {
        result.or_else(|err| match err.kind() {
            ErrorKind::BrokenPipe => Ok(()),
            ErrorKind::ConnectionAborted => Ok(()),
            ErrorKind::ConnectionRefused => Ok(()),
            ErrorKind::ConnectionReset => Ok(()),
            _ => Err(err),
        })
    }

    pub(crate) fn with_notify_sender(mut self, sender: Sender<()>) -> Self {
        self.notify_when_responded = Some(sender);
        self
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> Result<(), fmt::Error> {
        write!(
            formatter,
            "Request({} {} from {:?})",
            self.method, self.path, self.remote_addr
        )
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        if self.response_writer.is_some() {
            let response = Response::empty(500);
            let _ = self.respond_impl(response); // ignoring any potential error
            if let Some(sender) = self.notify_when_responded.take() {
                sender.send(()).unwrap();
            }
        }
    }
}

/// Dummy trait that regroups the `Read` and `Write` traits.
///
/// Automatically implemented on all types that implement both `Read` and `Write`.
pub trait ReadWrite: Read + Write {}
impl<T> ReadWrite for T where T: Read + Write {}

#[cfg(test)]
mod tests {
    use super::{framing, Framing, Request};
    use crate::{HTTPVersion, Header};

    fn framing_of(version: (u8, u8), head: &[&str]) -> Result<Framing, u16> {
        let headers: Vec<Header> = head.iter().map(|h| h.parse().unwrap()).collect();
        framing(&HTTPVersion::from(version), &headers).map_err(|s| s.0)
    }

    #[test]
    fn framing_follows_rfc_9112_section_6() {
        assert_eq!(framing_of((1, 1), &[]), Ok(Framing::Empty));
        assert_eq!(framing_of((1, 1), &["Content-Length: 7"]), Ok(Framing::Length(7)));
        let same = ["Content-Length: 7", "Content-Length: 7, 7"];
        assert_eq!(framing_of((1, 1), &same), Ok(Framing::Length(7)));
        let chunked = ["Transfer-Encoding: Chunked"];
        assert_eq!(framing_of((1, 1), &chunked), Ok(Framing::Chunked));
        for (head, status) in [
            (&["Content-Length: abc"][..], 400),
            (&["Content-Length: +5"], 400),
            (&["Content-Length: "], 400),
            (&["Content-Length: 5,"], 400),
            (&["Content-Length: 99999999999999999999999"], 400),
            (&["Content-Length: 1", "Content-Length: 2"], 400),
            (&["Content-Length: 1, 2"], 400),
            (&["Content-Length: 1", "Transfer-Encoding: chunked"], 400),
            (&["Transfer-Encoding: chunked, chunked"], 400),
            (&["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"], 400),
            (&["Transfer-Encoding: gzip"], 501),
            (&["Transfer-Encoding: identity"], 501),
            (&["Transfer-Encoding: gzip, chunked"], 501),
            (&["Transfer-Encoding: chunked, gzip"], 501),
        ] {
            assert_eq!(framing_of((1, 1), head), Err(status), "{head:?}");
        }
        assert_eq!(framing_of((1, 0), &chunked), Err(400));
        assert_eq!(framing_of((1, 0), &["Content-Length: 3"]), Ok(Framing::Length(3)));
    }

    #[test]
    fn must_be_send() {
        #![allow(dead_code)]
        fn f<T: Send>(_: &T) {}
        fn bar(rq: &Request) {
            f(rq);
        }
    }
}

/// berth patch: `len` bytes of a file from `offset`, read with positioned reads.
struct FileRange<'a> {
    file: &'a std::fs::File,
    offset: u64,
    end: u64,
}

impl Read for FileRange<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let want = ((self.end - self.offset) as usize).min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}
