//! The front end: a tiny_http server and a fixed pool of request workers looping on `recv()`.
//! Each request is answered by `handlers::handle`, which turns a panic into a 500, so the
//! worker keeps serving. Every response gets the API version header and an exact
//! Content-Length (tiny_http would switch to chunked encoding above 32 KiB). A body a handler
//! left unread is discarded by tiny_http after the response is sent (see vendor/tiny_http).

use super::handlers;
use super::response::{Body, Reply};
use crate::config::HttpConfig;
use crate::storage::Registry;
use std::io::{self, Cursor, Read};
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::Arc;
use std::time::Instant;
use tiny_http::{Header, Response, StatusCode};

/// A bound, not yet serving, HTTP front end.
pub struct Server {
    http: Arc<tiny_http::Server>,
    addr: SocketAddr,
    workers: usize,
}

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The address did not resolve.
    #[error("http.address {0:?} does not resolve: {1}")]
    Resolve(String, io::Error),
    /// Binding or configuring the socket failed.
    #[error("cannot listen on {0}: {1}")]
    Listen(String, io::Error),
}

impl Server {
    /// Binds the listener described by `config`.
    pub fn bind(config: &HttpConfig) -> Result<Server, BindError> {
        let target = format!("{}:{}", config.address, config.port);
        let addr = (config.address.as_str(), config.port)
            .to_socket_addrs()
            .map_err(|e| BindError::Resolve(config.address.clone(), e))?
            .next()
            .ok_or_else(|| {
                BindError::Resolve(config.address.clone(), io::ErrorKind::NotFound.into())
            })?;
        let listen = |e| BindError::Listen(target.clone(), e);
        let listener = TcpListener::bind(addr).map_err(listen)?;
        // Linux copies a listening socket's timeouts to the sockets it accepts; tiny_http has
        // no timeout setting, so this is what bounds stalled and half-open clients.
        let socket = socket2::SockRef::from(&listener);
        socket
            .set_read_timeout(Some(config.read_timeout))
            .map_err(listen)?;
        socket
            .set_write_timeout(Some(config.write_timeout))
            .map_err(listen)?;
        let addr = listener.local_addr().map_err(listen)?;
        let http = tiny_http::Server::from_listener(listener, None)
            .map_err(|e| BindError::Listen(target.clone(), io::Error::other(e.to_string())))?;
        Ok(Server {
            http: Arc::new(http),
            addr,
            workers: config.workers,
        })
    }

    /// The address actually bound (resolves port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves forever on `workers` threads.
    pub fn run(self, registry: Arc<Registry>) {
        tracing::info!(addr = %self.addr, workers = self.workers, "listening on {}", self.addr);
        let threads: Vec<_> = (0..self.workers)
            .map(|i| {
                let http = Arc::clone(&self.http);
                let registry = Arc::clone(&registry);
                std::thread::Builder::new()
                    .name(format!("berth-http-{i}"))
                    .spawn(move || worker(&http, &registry))
                    .expect("spawning a request worker")
            })
            .collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

fn worker(http: &tiny_http::Server, registry: &Registry) {
    loop {
        let mut request = match http.recv() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "accepting a request failed");
                continue;
            }
        };
        let started = Instant::now();
        let method = request.method().to_string();
        let url = request.url().to_string();
        let reply = handlers::handle(registry, &mut request);
        let status = reply.status;
        if status >= 500 {
            tracing::error!(%method, %url, status, "request failed");
        } else {
            tracing::debug!(%method, %url, status, elapsed_us = started.elapsed().as_micros() as u64, "request");
        }
        if let Err(e) = respond(request, reply) {
            tracing::debug!(%method, %url, error = %e, "sending the response failed");
        }
    }
}

/// Sends `reply` with an exact Content-Length; file bodies go out with sendfile(2).
fn respond(request: tiny_http::Request, reply: Reply) -> io::Result<()> {
    let mut headers = vec![header("Docker-Distribution-API-Version", "registry/2.0")];
    headers.extend(reply.headers.iter().map(|(k, v)| header(k, v)));
    let response = |reader: Box<dyn Read + Send>, len: u64| {
        Response::new(
            StatusCode(reply.status),
            headers,
            reader,
            Some(len as usize),
            None,
        )
        .with_chunked_threshold(usize::MAX)
    };
    match reply.body {
        Body::Empty => request.respond(response(Box::new(io::empty()), 0)),
        Body::Bytes(bytes) => {
            let len = bytes.len() as u64;
            request.respond(response(Box::new(Cursor::new(bytes)), len))
        }
        Body::Stream(reader, len) => request.respond(response(reader, len)),
        Body::LengthOnly(len) => request.respond(response(Box::new(io::empty()), len)),
        Body::File(file, offset, len) => {
            request.respond_with_file(response(Box::new(io::empty()), len), &file, offset, len)
        }
    }
}

fn header(name: &str, value: &str) -> Header {
    // Values are built by berth from validated names, digests and numbers; a value that is
    // somehow not a valid header is replaced rather than dropping the whole response.
    Header::from_bytes(name.as_bytes(), value.as_bytes())
        .unwrap_or_else(|_| Header::from_bytes(name.as_bytes(), &b"invalid"[..]).expect("ascii"))
}
