// berth patch: upstream code kept as released; its warnings are not ours to fix here.
#![allow(unused_imports, dead_code)]
//! # Simple usage
//!
//! ## Creating the server
//!
//! The easiest way to create a server is to call `Server::http()`.
//!
//! The `http()` function returns an `IoResult<Server>` which will return an error
//! in the case where the server creation fails (for example if the listening port is already
//! occupied).
//!
//! ```no_run
//! let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//! ```
//!
//! A newly-created `Server` will immediately start listening for incoming connections and HTTP
//! requests.
//!
//! ## Receiving requests
//!
//! Calling `server.recv()` will block until the next request is available.
//! This function returns an `IoResult<Request>`, so you need to handle the possible errors.
//!
//! ```no_run
//! # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//!
//! loop {
//!     // blocks until the next request is received
//!     let request = match server.recv() {
//!         Ok(rq) => rq,
//!         Err(e) => { println!("error: {}", e); break }
//!     };
//!
//!     // do something with the request
//!     // ...
//! }
//! ```
//!
//! In a real-case scenario, you will probably want to spawn multiple worker tasks and call
//! `server.recv()` on all of them. Like this:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use std::thread;
//! # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//! let server = Arc::new(server);
//! let mut guards = Vec::with_capacity(4);
//!
//! for _ in (0 .. 4) {
//!     let server = server.clone();
//!
//!     let guard = thread::spawn(move || {
//!         loop {
//!             let rq = server.recv().unwrap();
//!
//!             // ...
//!         }
//!     });
//!
//!     guards.push(guard);
//! }
//! ```
//!
//! If you don't want to block, you can call `server.try_recv()` instead.
//!
//! ## Handling requests
//!
//! The `Request` object returned by `server.recv()` contains informations about the client's request.
//! The most useful methods are probably `request.method()` and `request.url()` which return
//! the requested method (`GET`, `POST`, etc.) and url.
//!
//! To handle a request, you need to create a `Response` object. See the docs of this object for
//! more infos. Here is an example of creating a `Response` from a file:
//!
//! ```no_run
//! # use std::fs::File;
//! # use std::path::Path;
//! let response = tiny_http::Response::from_file(File::open(&Path::new("image.png")).unwrap());
//! ```
//!
//! All that remains to do is call `request.respond()`:
//!
//! ```no_run
//! # use std::fs::File;
//! # use std::path::Path;
//! # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//! # let request = server.recv().unwrap();
//! # let response = tiny_http::Response::from_file(File::open(&Path::new("image.png")).unwrap());
//! let _ = request.respond(response);
//! ```
// berth patch: deny rather than forbid, so the sendfile call in Request::respond_with_file
// can be allowed on its own.
#![deny(unsafe_code)]
#![deny(rust_2018_idioms)]
#![allow(clippy::match_like_matches_macro)]

#[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
use zeroize::Zeroizing;

use std::error::Error;
use std::io::Error as IoError;
use std::io::ErrorKind as IoErrorKind;
use std::io::Result as IoResult;
use std::io::Write;
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use client::ClientConnection;
use connection::Connection;
use util::MessagesQueue;

pub use common::{HTTPVersion, Header, HeaderField, Method, StatusCode};
pub use connection::{ConfigListenAddr, ListenAddr, Listener};
pub use request::{ReadWrite, Request};
pub use response::{Response, ResponseBox};
pub use test::TestRequest;
pub use util::BodyRate;

mod client;
mod common;
mod connection;
mod request;
mod response;
mod ssl;
mod test;
mod util;

/// The main class of this library.
///
/// Destroying this object will immediately close the listening socket and the reading
///  part of all the client's connections. Requests that have already been returned by
///  the `recv()` function will not close and the responses will be transferred to the client.
pub struct Server {
    // should be false as long as the server exists
    // when set to true, all the subtasks will close within a few hundreds ms
    close: Arc<AtomicBool>,

    // queue for messages received by child threads
    messages: Arc<MessagesQueue<Message>>,

    // result of TcpListener::local_addr()
    listening_addr: ListenAddr,
}

enum Message {
    Error(IoError),
    NewRequest(Request),
}

impl From<IoError> for Message {
    fn from(e: IoError) -> Message {
        Message::Error(e)
    }
}

impl From<Request> for Message {
    fn from(rq: Request) -> Message {
        Message::NewRequest(rq)
    }
}

// this trait is to make sure that Server implements Share and Send
#[doc(hidden)]
trait MustBeShareDummy: Sync + Send {}
#[doc(hidden)]
impl MustBeShareDummy for Server {}

pub struct IncomingRequests<'a> {
    server: &'a Server,
}

/// Represents the parameters required to create a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The addresses to try to listen to.
    pub addr: ConfigListenAddr,

    /// If `Some`, then the server will use SSL to encode the communications.
    pub ssl: Option<SslConfig>,
}

/// berth patch: what the clients of one server may hold (issue 10, points 8 and 9).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections served at once; a connection over the limit is answered 503 with
    /// `Connection: close` and closed, and the listener goes on accepting.
    pub max_connections: usize,
    /// The minimum rate of every request body.
    pub body_rate: BodyRate,
}

impl Limits {
    /// No limits: upstream tiny_http's behaviour.
    pub const NONE: Limits = Limits {
        max_connections: usize::MAX,
        body_rate: BodyRate::NONE,
    };
}

/// berth patch: how often a repeated accept-loop warning may be logged.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// berth patch: one connection counted against `Limits::max_connections` until dropped.
struct ConnectionSlot(Arc<AtomicUsize>);

impl ConnectionSlot {
    fn take(live: &Arc<AtomicUsize>) -> ConnectionSlot {
        live.fetch_add(1, Relaxed);
        ConnectionSlot(Arc::clone(live))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// berth patch: what the connection pool is given: a connection, and its place in the count.
type ConnectionJob = (ClientConnection, ConnectionSlot);

/// Configuration of the server for SSL.
#[derive(Debug, Clone)]
pub struct SslConfig {
    /// Contains the public certificate to send to clients.
    pub certificate: Vec<u8>,
    /// Contains the ultra-secret private key used to decode communications.
    pub private_key: Vec<u8>,
}

impl Server {
    /// Shortcut for a simple server on a specific address.
    #[inline]
    pub fn http<A>(addr: A) -> Result<Server, Box<dyn Error + Send + Sync + 'static>>
    where
        A: ToSocketAddrs,
    {
        Server::new(ServerConfig {
            addr: ConfigListenAddr::from_socket_addrs(addr)?,
            ssl: None,
        })
    }

    /// Shortcut for an HTTPS server on a specific address.
    #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
    #[inline]
    pub fn https<A>(
        addr: A,
        config: SslConfig,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>>
    where
        A: ToSocketAddrs,
    {
        Server::new(ServerConfig {
            addr: ConfigListenAddr::from_socket_addrs(addr)?,
            ssl: Some(config),
        })
    }

    #[cfg(unix)]
    #[inline]
    /// Shortcut for a UNIX socket server at a specific path
    pub fn http_unix(
        path: &std::path::Path,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        Server::new(ServerConfig {
            addr: ConfigListenAddr::unix_from_path(path),
            ssl: None,
        })
    }

    /// Builds a new server that listens on the specified address.
    pub fn new(config: ServerConfig) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        let listener = config.addr.bind()?;
        Self::from_listener(listener, config.ssl)
    }

    /// Builds a new server using the specified TCP listener.
    ///
    /// This is useful if you've constructed TcpListener using some less usual method
    /// such as from systemd. For other cases, you probably want the `new()` function.
    pub fn from_listener<L: Into<Listener>>(
        listener: L,
        ssl_config: Option<SslConfig>,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        Self::from_listener_with_limits(listener, ssl_config, Limits::NONE)
    }

    /// berth patch: `from_listener` with limits on what clients may hold.
    pub fn from_listener_with_limits<L: Into<Listener>>(
        listener: L,
        ssl_config: Option<SslConfig>,
        limits: Limits,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        let listener = listener.into();
        // building the "close" variable
        let close_trigger = Arc::new(AtomicBool::new(false));

        // building the TcpListener
        let (server, local_addr) = {
            let local_addr = listener.local_addr()?;
            log::debug!("Server listening on {}", local_addr);
            (listener, local_addr)
        };

        // building the SSL capabilities
        #[cfg(all(feature = "ssl-openssl", feature = "ssl-rustls"))]
        compile_error!(
            "Features 'ssl-openssl' and 'ssl-rustls' must not be enabled at the same time"
        );
        #[cfg(not(any(feature = "ssl-openssl", feature = "ssl-rustls")))]
        type SslContext = ();
        #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
        type SslContext = crate::ssl::SslContextImpl;
        let ssl: Option<SslContext> = {
            match ssl_config {
                #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
                Some(config) => Some(SslContext::from_pem(
                    config.certificate,
                    Zeroizing::new(config.private_key),
                )?),
                #[cfg(not(any(feature = "ssl-openssl", feature = "ssl-rustls")))]
                Some(_) => return Err(
                    "Building a server with SSL requires enabling the `ssl` feature in tiny-http"
                        .into(),
                ),
                None => None,
            }
        };

        // creating a task where server.accept() is continuously called
        // and ClientConnection objects are pushed in the messages queue
        let messages = MessagesQueue::with_capacity(8);

        let inside_close_trigger = close_trigger.clone();
        let inside_messages = messages.clone();
        thread::spawn(move || {
            // a tasks pool is used to dispatch the connections into threads
            let tasks_pool = util::TaskPool::new(move |(client, _slot): ConnectionJob| {
                // Synchronization is needed for HTTPS requests to avoid a deadlock
                if client.secure() {
                    let (sender, receiver) = mpsc::channel();
                    for rq in client {
                        inside_messages.push(rq.with_notify_sender(sender.clone()).into());
                        receiver.recv().unwrap();
                    }
                } else {
                    for rq in client {
                        inside_messages.push(rq.into());
                    }
                }
            });
            // berth patch: connections are counted and capped, a failure to start a thread
            // refuses one connection instead of killing this loop, and repeated failures are
            // logged at most once per LOG_EVERY each.
            let live = Arc::new(AtomicUsize::new(0));
            let mut over_limit = util::Throttle::new(LOG_EVERY);
            let mut spawn_failed = util::Throttle::new(LOG_EVERY);
            let mut accept_failed = util::Throttle::new(LOG_EVERY);

            log::debug!("Running accept thread");
            while !inside_close_trigger.load(Relaxed) {
                let new_client = match server.accept() {
                    Ok((sock, _)) => {
                        // berth patch: a response head and a small body go out as separate
                        // writes; with Nagle's algorithm the body waited for the client's
                        // delayed ACK, 40 ms per kept-alive request (issue 11).
                        if let connection::Connection::Tcp(tcp) = &sock {
                            let _ = tcp.set_nodelay(true);
                        }
                        if live.load(Relaxed) >= limits.max_connections {
                            // A fresh socket's send buffer is empty, so this cannot block.
                            let _ = (&sock).write_all(
                                client::refusal(StatusCode(503)).as_bytes(),
                            );
                            if let Some(held_back) = over_limit.ready() {
                                log::warn!(
                                    "refusing new connections with 503: {} open, at the connection limit of {} ({} more refused since the last warning)",
                                    live.load(Relaxed),
                                    limits.max_connections,
                                    held_back
                                );
                            }
                            continue;
                        }
                        use util::RefinedTcpStream;
                        let (read_closable, write_closable) = match ssl {
                            None => RefinedTcpStream::new(sock),
                            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
                            Some(ref ssl) => {
                                // trying to apply SSL over the connection
                                // if an error occurs, we just close the socket and resume listening
                                let sock = match ssl.accept(sock) {
                                    Ok(s) => s,
                                    Err(_) => continue,
                                };

                                RefinedTcpStream::new(sock)
                            }
                            #[cfg(not(any(feature = "ssl-openssl", feature = "ssl-rustls")))]
                            Some(ref _ssl) => unreachable!(),
                        };

                        Ok(ClientConnection::new(
                            write_closable,
                            read_closable,
                            limits.body_rate,
                        ))
                    }
                    Err(e) => Err(e),
                };

                match new_client {
                    Ok(client) => {
                        let slot = ConnectionSlot::take(&live);
                        if let Err(((mut client, slot), e)) = tasks_pool.spawn((client, slot)) {
                            client.refuse_unserved(StatusCode(503));
                            drop(slot);
                            if let Some(held_back) = spawn_failed.ready() {
                                log::error!(
                                    "cannot start a thread for a new connection, refused it with 503: {} ({} open; {} more refused since the last error)",
                                    e,
                                    live.load(Relaxed),
                                    held_back
                                );
                            }
                        }
                    }

                    // berth patch: an accept error (a timeout inherited from the listener's
                    // SO_RCVTIMEO, a connection aborted before accept, EMFILE) must not end
                    // the accept loop and with it the whole server.
                    Err(e) => {
                        use std::io::ErrorKind;
                        if !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
                            if let Some(held_back) = accept_failed.ready() {
                                log::error!(
                                    "accepting a connection failed: {} ({} open; {} more failures since the last error)",
                                    e,
                                    live.load(Relaxed),
                                    held_back
                                );
                            }
                            thread::sleep(std::time::Duration::from_millis(10));
                        }
                        continue;
                    }
                }
            }
            log::debug!("Terminating accept thread");
        });

        // result
        Ok(Server {
            messages,
            close: close_trigger,
            listening_addr: local_addr,
        })
    }

    /// Returns an iterator for all the incoming requests.
    ///
    /// The iterator will return `None` if the server socket is shutdown.
    #[inline]
    pub fn incoming_requests(&self) -> IncomingRequests<'_> {
        IncomingRequests { server: self }
    }

    /// Returns the address the server is listening to.
    #[inline]
    pub fn server_addr(&self) -> ListenAddr {
        self.listening_addr.clone()
    }

    /// Returns the number of clients currently connected to the server.
    pub fn num_connections(&self) -> usize {
        unimplemented!()
        //self.requests_receiver.lock().len()
    }

    /// Blocks until an HTTP request has been submitted and returns it.
    pub fn recv(&self) -> IoResult<Request> {
        match self.messages.pop() {
            Some(Message::Error(err)) => Err(err),
            Some(Message::NewRequest(rq)) => Ok(rq),
            None => Err(IoError::new(IoErrorKind::Other, "thread unblocked")),
        }
    }

    /// Same as `recv()` but doesn't block longer than timeout
    pub fn recv_timeout(&self, timeout: Duration) -> IoResult<Option<Request>> {
        match self.messages.pop_timeout(timeout) {
            Some(Message::Error(err)) => Err(err),
            Some(Message::NewRequest(rq)) => Ok(Some(rq)),
            None => Ok(None),
        }
    }

    /// Same as `recv()` but doesn't block.
    pub fn try_recv(&self) -> IoResult<Option<Request>> {
        match self.messages.try_pop() {
            Some(Message::Error(err)) => Err(err),
            Some(Message::NewRequest(rq)) => Ok(Some(rq)),
            None => Ok(None),
        }
    }

    /// Unblock thread stuck in recv() or incoming_requests().
    /// If there are several such threads, only one is unblocked.
    /// This method allows graceful shutdown of server.
    pub fn unblock(&self) {
        self.messages.unblock();
    }

    /// berth patch: stops accepting connections, as dropping the server does, while the
    /// server lives on: the accept thread ends and closes the listening socket, so new
    /// connections are refused, and connections already accepted and requests already
    /// queued are served as before. A graceful shutdown drains them this way.
    pub fn stop_accepting(&self) {
        self.close.store(true, Relaxed);
        // Connect briefly to ourselves to unblock the accept thread
        let maybe_stream = match &self.listening_addr {
            ListenAddr::IP(addr) => TcpStream::connect(addr).map(Connection::from),
            #[cfg(unix)]
            ListenAddr::Unix(addr) => {
                // TODO: use connect_addr when its stabilized.
                let path = addr.as_pathname().unwrap();
                std::os::unix::net::UnixStream::connect(path).map(Connection::from)
            }
        };
        if let Ok(stream) = maybe_stream {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Iterator for IncomingRequests<'_> {
    type Item = Request;
    fn next(&mut self) -> Option<Request> {
        self.server.recv().ok()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_accepting();

        #[cfg(unix)]
        if let ListenAddr::Unix(addr) = &self.listening_addr {
            if let Some(path) = addr.as_pathname() {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// berth patch: tests of the patches to how connections are accepted and answered, over
/// loopback TCP (127.0.0.1 only). Each names its patch in vendor/tiny_http/patches/series.
#[cfg(test)]
mod berth_tests {
    use crate::{Response, Server};
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::thread;
    use std::time::Duration;

    /// Sends `head` on a new connection and returns all the server sends until it closes (or
    /// 5 s pass); `head` should ask to close.
    fn exchange(addr: SocketAddr, head: &str) -> String {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream.write_all(head.as_bytes()).unwrap();
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        String::from_utf8_lossy(&response).into_owned()
    }

    /// Patch 0002: accept(2) failing with EAGAIN (a nonblocking listener here; in berth, the
    /// timeout the listener's SO_RCVTIMEO sets) leaves the server accepting.
    #[test]
    fn an_accept_timeout_does_not_stop_the_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Server::from_listener(listener, None).unwrap();
        let client = thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            exchange(addr, "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        });
        let request = server.recv_timeout(Duration::from_secs(5));
        let request = request.expect("no accept error").expect("a request within 5 s");
        request.respond(Response::from_string("still accepting")).unwrap();
        let response = client.join().unwrap();
        assert!(response.ends_with("still accepting"), "{:?}", response);
    }

    /// Patch 0004: when a request body stops arriving and its read times out, the connection
    /// ends right after the response; upstream held it for another timeout (draining the rest
    /// of the body) first. The timeout comes from the listener's SO_RCVTIMEO, which accepted
    /// sockets inherit, as in berth.
    #[test]
    fn a_stalled_body_ends_the_connection_after_the_response() {
        use std::io::ErrorKind;
        use std::os::fd::OwnedFd;
        use std::time::Instant;

        const TIMEOUT: Duration = Duration::from_millis(300);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // A second descriptor on the listening socket, to set its receive timeout.
        let socket = TcpStream::from(OwnedFd::from(listener.try_clone().unwrap()));
        socket.set_read_timeout(Some(TIMEOUT)).unwrap();
        drop(socket);
        let server = Server::from_listener(listener, None).unwrap();
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let head = "PUT / HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n";
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&[b'x'; 10]).unwrap();
        let mut request = server.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
        let mut body = Vec::new();
        let read = request.as_reader().read_to_end(&mut body);
        assert!(
            matches!(&read, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
            "{:?}",
            read
        );
        request.respond(Response::from_string("cut off")).unwrap();
        let mut response = Vec::new();
        let mut buf = [0u8; 1024];
        while !response.ends_with(b"cut off") {
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&response));
            response.extend_from_slice(&buf[..n]);
        }
        let answered = Instant::now();
        let mut rest = Vec::new();
        let end = stream.read_to_end(&mut rest);
        let closed = answered.elapsed();
        assert!(end.is_ok() && rest.is_empty(), "{:?} then {:?}", end, String::from_utf8_lossy(&rest));
        assert!(closed < TIMEOUT / 2, "closed {:?} after the response", closed);
    }

    /// Patch 0005: bytes that cannot start an HTTP/1.x head (a TLS ClientHello) are refused
    /// with 400 at once; upstream waited for a line end that never came.
    #[test]
    fn a_head_that_cannot_be_http_is_refused_at_once() {
        let server = Server::http("127.0.0.1:0").unwrap();
        let addr = server.server_addr().to_ip().unwrap();
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        stream.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01]).unwrap();
        let mut response = vec![0u8; 12];
        let read = stream.read_exact(&mut response);
        let response = String::from_utf8_lossy(&response);
        assert!(read.is_ok() && response == "HTTP/1.1 400", "{:?} {:?}", read, response);
    }

    /// Patch 0006: a client still sending when it is refused (a 1 MiB header line, refused
    /// with 431 after 16 KiB) can finish sending and then read the refusal and an orderly end
    /// of the connection; upstream closed the socket with the input unread, which resets the
    /// connection and fails the client's next write before it reads anything.
    #[test]
    fn a_refusal_reaches_a_client_still_sending() {
        let server = Server::http("127.0.0.1:0").unwrap();
        let addr = server.server_addr().to_ip().unwrap();
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut head = b"GET / HTTP/1.1\r\nHost: t\r\nX-Long: ".to_vec();
        head.resize(head.len() + (1 << 20), b'a');
        head.extend_from_slice(b"\r\n\r\n");
        let (first, rest) = head.split_at(32 * 1024);
        stream.write_all(first).unwrap();
        // The server refuses after reading 16 KiB, while the client is still sending.
        thread::sleep(Duration::from_millis(300));
        let sent = stream.write_all(rest);
        let mut response = Vec::new();
        let end = stream.read_to_end(&mut response);
        let response = String::from_utf8_lossy(&response);
        assert!(sent.is_ok(), "sending the rest: {:?}", sent);
        assert!(response.starts_with("HTTP/1.1 431 "), "{:?}", response);
        assert!(end.is_ok(), "{:?} after {:?}", end, response);
    }

    /// Patch 0010: respond_with_file sends the head, then exactly the asked range of the file
    /// (with sendfile(2) on TCP); a HEAD request gets the head only.
    #[test]
    fn respond_with_file_sends_the_range_and_head_sends_none() {
        use crate::StatusCode;

        let name = format!("tiny-http-respond-with-file-{}", std::process::id());
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, b"0123456789").unwrap();
        let file = std::fs::File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let server = Server::http("127.0.0.1:0").unwrap();
        let addr = server.server_addr().to_ip().unwrap();
        for (method, body) in [("GET", "34567"), ("HEAD", "")] {
            let head = format!("{} / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", method);
            let client = thread::spawn(move || exchange(addr, &head));
            let request = server.recv().unwrap();
            let response = Response::new(StatusCode(200), vec![], std::io::empty(), Some(5), None);
            request.respond_with_file(response, &file, 3, 5).unwrap();
            let response = client.join().unwrap();
            let (head, sent) = response.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with("HTTP/1.1 200 "), "{:?}", head);
            assert!(head.split("\r\n").any(|h| h == "Content-Length: 5"), "{:?}", head);
            assert_eq!(sent, body, "{}", method);
        }
    }

    /// Patch 0011: a Content-Length that is not a number is refused with 400 and the
    /// connection closed; upstream read it as "no body", so what followed was taken for the
    /// next request.
    #[test]
    fn a_content_length_that_is_not_a_number_is_refused() {
        let server = Server::http("127.0.0.1:0").unwrap();
        let addr = server.server_addr().to_ip().unwrap();
        let head = "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1x\r\nConnection: close\r\n\r\nx";
        let client = thread::spawn(move || exchange(addr, head));
        // Only a request read as valid reaches the handler.
        if let Ok(Some(request)) = server.recv_timeout(Duration::from_secs(1)) {
            request.respond(Response::from_string("served")).unwrap();
        }
        let response = client.join().unwrap();
        assert!(response.starts_with("HTTP/1.1 400 "), "{:?}", response);
    }

    /// Patch 0012: a request's chunked body is decoded strictly: a chunk size with a sign
    /// (which a front end may read differently) fails the body; chunked_transfer's decoder
    /// read `+5` as 5.
    #[test]
    fn a_chunk_size_with_a_sign_fails_the_body() {
        let server = Server::http("127.0.0.1:0").unwrap();
        let addr = server.server_addr().to_ip().unwrap();
        let head = "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\
                    Connection: close\r\n\r\n+5\r\nhello\r\n0\r\n\r\n";
        let client = thread::spawn(move || exchange(addr, head));
        let mut request = server.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
        let mut body = Vec::new();
        let read = request.as_reader().read_to_end(&mut body);
        request.respond(Response::from_string("done")).unwrap();
        client.join().unwrap();
        let refused = matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::InvalidData);
        assert!(refused, "{:?} after {:?}", read, String::from_utf8_lossy(&body));
    }

    /// Patch 0016: over Limits::max_connections a new connection is answered 503 with
    /// Connection: close, and the listener goes on serving once a place is free.
    #[test]
    fn connections_over_the_limit_get_503_and_the_listener_goes_on() {
        use crate::{BodyRate, Limits};

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            max_connections: 1,
            body_rate: BodyRate::NONE,
        };
        let server = Server::from_listener_with_limits(listener, None, limits).unwrap();
        let head = "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
        // The accept thread takes connections in order, so the held one is counted first.
        let held = TcpStream::connect(addr).unwrap();
        let refused = exchange(addr, head);
        assert!(refused.starts_with("HTTP/1.1 503 "), "{:?}", refused);
        assert!(refused.contains("\r\nConnection: close\r\n"), "{:?}", refused);
        drop(held);
        // The held connection's place is free once its thread has seen it close.
        let client = thread::spawn(move || {
            for _ in 0..100 {
                let response = exchange(addr, head);
                if !response.starts_with("HTTP/1.1 503 ") {
                    return response;
                }
                thread::sleep(Duration::from_millis(50));
            }
            panic!("still refused after 5 s");
        });
        let request = server.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
        request.respond(Response::from_string("served")).unwrap();
        let served = client.join().unwrap();
        assert!(served.ends_with("served"), "{:?}", served);
    }

    /// Patch 0017: small responses on a kept-alive connection do not wait for the client's
    /// delayed ACK (about 40 ms each on Linux) behind Nagle's algorithm.
    #[test]
    fn kept_alive_small_responses_do_not_wait_for_a_delayed_ack() {
        use std::time::Instant;

        let server = Server::http("127.0.0.1:0").unwrap();
        let addr = server.server_addr().to_ip().unwrap();
        let serving = thread::spawn(move || {
            for _ in 0..5 {
                let request = server.recv().unwrap();
                request.respond(Response::from_data(vec![b'x'; 2048])).unwrap();
            }
        });
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut took = Vec::new();
        for _ in 0..5 {
            let start = Instant::now();
            stream.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
            // The head and the 2 KiB body, read until the body's last byte.
            let mut response = Vec::new();
            let mut buf = [0u8; 4096];
            while !response.ends_with(&[b'x'; 2048][..]) {
                let n = stream.read(&mut buf).unwrap();
                assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&response));
                response.extend_from_slice(&buf[..n]);
            }
            took.push(start.elapsed());
        }
        serving.join().unwrap();
        // Each exchange takes well under a millisecond without the delay; the median leaves
        // room for a busy machine.
        let mut sorted = took.clone();
        sorted.sort();
        assert!(sorted[2] < Duration::from_millis(20), "exchanges took {:?}", took);
    }

    /// Patch 0018: a request with Connection: close is answered with Connection: close.
    #[test]
    fn a_client_asking_to_close_is_told_the_connection_closes() {
        let server = Server::http("127.0.0.1:0").unwrap();
        let addr = server.server_addr().to_ip().unwrap();
        let client = thread::spawn(move || {
            exchange(addr, "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        });
        let request = server.recv().unwrap();
        request.respond(Response::from_string("bye")).unwrap();
        let response = client.join().unwrap();
        let head = response.split("\r\n\r\n").next().unwrap();
        let close = head.split("\r\n").any(|h| h.eq_ignore_ascii_case("Connection: close"));
        assert!(close, "{:?}", response);
    }

    /// Patch 0019: an HTTP/1.1 request without a Host is refused with 400 (RFC 9112 section
    /// 3.2); upstream served it.
    #[test]
    fn a_request_without_host_is_refused() {
        let server = Server::http("127.0.0.1:0").unwrap();
        let addr = server.server_addr().to_ip().unwrap();
        let head = "GET / HTTP/1.1\r\nConnection: close\r\n\r\n";
        let client = thread::spawn(move || exchange(addr, head));
        // Only a request read as valid reaches the handler.
        if let Ok(Some(request)) = server.recv_timeout(Duration::from_secs(1)) {
            request.respond(Response::from_string("served")).unwrap();
        }
        let response = client.join().unwrap();
        assert!(response.starts_with("HTTP/1.1 400 "), "{:?}", response);
    }

    /// Patch 0019: a folded header line is refused with 400 (RFC 9112 section 5.2); upstream
    /// trimmed it into a header of its own (here a Connection header a front end that unfolds
    /// would not see).
    #[test]
    fn a_folded_header_line_is_refused() {
        let server = Server::http("127.0.0.1:0").unwrap();
        let addr = server.server_addr().to_ip().unwrap();
        let head = "GET / HTTP/1.1\r\nHost: t\r\nX-A: b\r\n Connection: close\r\n\r\n";
        let client = thread::spawn(move || exchange(addr, head));
        if let Ok(Some(request)) = server.recv_timeout(Duration::from_secs(1)) {
            request.respond(Response::from_string("served")).unwrap();
        }
        let response = client.join().unwrap();
        assert!(response.starts_with("HTTP/1.1 400 "), "{:?}", response);
    }

    /// Patch 0020: after stop_accepting, a new connection is refused while one accepted
    /// before is still served.
    #[test]
    fn stop_accepting_refuses_new_connections_and_serves_accepted_ones() {
        let server = Server::http("127.0.0.1:0").unwrap();
        let addr = server.server_addr().to_ip().unwrap();
        let mut kept = std::net::TcpStream::connect(addr).unwrap();
        kept.write_all(b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let first = server.recv().unwrap();
        first.respond(Response::from_string("one")).unwrap();
        server.stop_accepting();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(addr).is_ok() {
            assert!(std::time::Instant::now() < deadline, "still accepting");
            std::thread::sleep(Duration::from_millis(10));
        }
        kept.write_all(b"GET /second HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let second = server.recv().unwrap();
        assert_eq!(second.url(), "/second");
        second.respond(Response::from_string("two")).unwrap();
        let mut answers = String::new();
        kept.read_to_string(&mut answers).unwrap();
        assert!(answers.ends_with("two"), "{:?}", answers);
    }
}
