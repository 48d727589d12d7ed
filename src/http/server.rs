//! The front end: a tiny_http server and a fixed pool of request workers looping on `recv()`.
//! Each request is answered by `handlers::handle`, which turns a panic into a 500, so the
//! worker keeps serving. Every response gets the API version header and an exact
//! Content-Length (tiny_http would switch to chunked encoding above 32 KiB). A body a handler
//! left unread is discarded by tiny_http after the response is sent (see vendor/tiny_http).
//!
//! What clients may hold is bounded (issue 10): connections (`http.maxConnections`, over it
//! a 503), the rate of request bodies (`http.bodyMinRate` after `http.bodyRateGrace`, both
//! enforced in vendor/tiny_http), and the workers that read bodies: `http.reservedWorkers`
//! of them only serve requests without one (`BodyGate`), so slow uploads cannot stall pings,
//! pulls and manifest reads.
//!
//! A stop (SIGTERM or SIGINT) refuses new connections at once, turns away requests that come
//! after it on kept-alive connections (503), lets the requests in flight finish within
//! `http.shutdownTimeout`, flushes what the stores buffer, and returns, so berth exits 0; a
//! second signal ends the process at once.

use super::Service;
use super::error::{ApiError, ErrorKind};
use super::handlers;
use super::response::{Body, Reply};
use super::route::Method;
use crate::config::HttpConfig;
use std::collections::VecDeque;
use std::io::{self, Cursor, Read};
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tiny_http::{Header, Response, StatusCode};

/// Descriptors kept for the stores, caches and logs when the connection limit is derived
/// from the open files limit.
const FD_RESERVE: u64 = 64;
/// A connection holds its socket, and a request on it may hold a blob file or two.
const FDS_PER_CONNECTION: u64 = 2;
/// Bounds of the derived connection limit: each connection also holds a thread.
const MIN_CONNECTIONS: u64 = 16;
const MAX_DEFAULT_CONNECTIONS: u64 = 4096;

/// A bound, not yet serving, HTTP front end: connections queue in the listen backlog until
/// `run` has its workers.
pub struct Server {
    listener: TcpListener,
    limits: tiny_http::Limits,
    addr: SocketAddr,
    workers: usize,
    reserved_workers: usize,
    max_connections: usize,
    shutdown_timeout: Duration,
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

/// The connection limit when `http.maxConnections` is not set: what the open files limit
/// allows, so running out of connections (a 503) comes before running out of descriptors
/// (failed accepts and file opens).
fn default_max_connections(open_files: u64) -> usize {
    let fit = open_files.saturating_sub(FD_RESERVE) / FDS_PER_CONNECTION;
    fit.clamp(MIN_CONNECTIONS, MAX_DEFAULT_CONNECTIONS) as usize
}

impl Server {
    /// Binds the listener described by `config`; `open_files` is the process's open files
    /// limit, which sizes the default connection limit.
    pub fn bind(config: &HttpConfig, open_files: u64) -> Result<Server, BindError> {
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
        let max_connections = config
            .max_connections
            .unwrap_or_else(|| default_max_connections(open_files));
        let limits = tiny_http::Limits {
            max_connections,
            body_rate: tiny_http::BodyRate {
                min_bytes_per_sec: config.body_min_rate,
                grace: config.body_rate_grace,
            },
        };
        Ok(Server {
            listener,
            limits,
            addr,
            workers: config.workers,
            reserved_workers: config.reserved_workers,
            max_connections,
            shutdown_timeout: config.shutdown_timeout,
        })
    }

    /// The address actually bound (resolves port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves forever on `workers` threads; fails only when they cannot be started.
    ///
    /// The workers start before tiny_http's accept thread: that thread spawns one more per
    /// connection, and under a thread limit (RLIMIT_NPROC) a burst of early connections
    /// would otherwise spend the budget the workers need and stop berth at start.
    pub(crate) fn run(self, service: Arc<Service>) -> io::Result<()> {
        let stop = stop_signals()?;
        let gate = Arc::new(BodyGate::new(self.workers - self.reserved_workers));
        let drain = Arc::new(Drain::default());
        let (hand_over, handed) =
            crossbeam_channel::bounded::<Arc<tiny_http::Server>>(self.workers);
        let threads = (0..self.workers)
            .map(|i| {
                let handed = handed.clone();
                let service = Arc::clone(&service);
                let gate = Arc::clone(&gate);
                let drain = Arc::clone(&drain);
                std::thread::Builder::new()
                    .name(format!("berth-http-{i}"))
                    .spawn(move || {
                        // Dropped unsent only when starting failed, and then this ends.
                        if let Ok(http) = handed.recv() {
                            worker(&http, &service, &gate, &drain);
                        }
                    })
            })
            .collect::<io::Result<Vec<_>>>()?;
        let http = Arc::new(
            tiny_http::Server::from_listener_with_limits(self.listener, None, self.limits)
                .map_err(|e| io::Error::other(e.to_string()))?,
        );
        tracing::info!(
            addr = %self.addr,
            workers = self.workers,
            reserved_workers = self.reserved_workers,
            max_connections = self.max_connections,
            "listening on {}",
            self.addr
        );
        for _ in &threads {
            hand_over
                .send(Arc::clone(&http))
                .expect("every worker waits for the server");
        }
        let signal = stop
            .recv()
            .map_err(|_| io::Error::other("the signal thread ended"))?;
        // New connections are refused from here; requests already being served finish, and
        // requests that come after on kept-alive connections are turned away (`serve`).
        http.stop_accepting();
        drain.started.store(true, Ordering::SeqCst);
        let in_flight = drain.in_flight.load(Ordering::SeqCst);
        tracing::info!(
            signal,
            in_flight,
            "stopping: no new connections; waiting up to {:?} for the requests in flight",
            self.shutdown_timeout
        );
        let deadline = Instant::now() + self.shutdown_timeout;
        while drain.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let left = drain.in_flight.load(Ordering::SeqCst);
        for store in service.registry.stores() {
            store.flush_usage();
        }
        if left > 0 {
            // Their uploads keep what their last complete chunk stored: clients resume them.
            tracing::warn!(
                in_flight = left,
                "stopped with requests still in flight after {:?}",
                self.shutdown_timeout
            );
        } else {
            tracing::info!("stopped: every request in flight finished");
        }
        Ok(())
    }
}

/// The first SIGTERM or SIGINT, sent on the returned channel; a second one ends the process
/// at once (exit status 1), as an operator who asks twice means.
fn stop_signals() -> io::Result<crossbeam_channel::Receiver<&'static str>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    let (tell, told) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name("berth-signals".into())
        .spawn(move || {
            let name = |signal| {
                if signal == SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                }
            };
            let mut received = signals.forever();
            if let Some(first) = received.next() {
                let _ = tell.send(name(first));
            }
            if let Some(second) = received.next() {
                tracing::warn!("{}: stopping now, without waiting", name(second));
                std::process::exit(1);
            }
        })?;
    Ok(told)
}

/// The requests being served, and whether a stop has begun.
#[derive(Default)]
struct Drain {
    in_flight: AtomicUsize,
    started: AtomicBool,
}

impl Drain {
    /// Counts a request in flight until the returned guard drops, however serving ends.
    fn enter(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self)
    }
}

/// One request in flight (`Drain::enter`).
struct InFlight<'a>(&'a Drain);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Bounds the workers busy with requests whose body streams from the client (issue 10,
/// point 8). Such a request runs at once while fewer than `limit` workers read bodies;
/// otherwise it is queued, and a worker finishing a body request takes the next one from
/// the queue instead of giving up its place. Requests without a streaming body never wait
/// here, so the `workers - limit` other workers are always free for them, whatever uploads
/// trickle in. (A counting gate rather than a second queue in front of the workers: no
/// extra thread hop per request.)
struct BodyGate {
    limit: usize,
    state: Mutex<GateState>,
}

struct GateState {
    /// Workers serving a body request.
    running: usize,
    /// Body requests waiting for one of them.
    queued: VecDeque<tiny_http::Request>,
}

impl BodyGate {
    fn new(limit: usize) -> BodyGate {
        BodyGate {
            limit,
            state: Mutex::new(GateState {
                running: 0,
                queued: VecDeque::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, GateState> {
        // The state is two plain fields updated together; a panic cannot leave it half-done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `request` back when the caller may serve it now (and then holds a place until
    /// `next` frees it), or `None` when it was queued.
    fn admit(&self, request: tiny_http::Request) -> Option<tiny_http::Request> {
        let mut state = self.state();
        if state.running < self.limit {
            state.running += 1;
            Some(request)
        } else {
            state.queued.push_back(request);
            None
        }
    }

    /// For a worker holding a place: the next queued body request (the place passes to
    /// it), or `None` once the place is freed.
    fn next(&self) -> Option<tiny_http::Request> {
        let mut state = self.state();
        let next = state.queued.pop_front();
        if next.is_none() {
            state.running -= 1;
        }
        next
    }
}

fn worker(http: &tiny_http::Server, service: &Service, gate: &BodyGate, drain: &Drain) {
    loop {
        let request = match http.recv() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "accepting a request failed");
                continue;
            }
        };
        if !request.body_streams() {
            serve(service, drain, request);
            continue;
        }
        let mut next = gate.admit(request);
        while let Some(request) = next {
            // The place in the gate passes on or is freed whatever serving did: a place lost
            // to a panic would never come back, and with all of them lost uploads would
            // queue for good.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                serve(service, drain, request)
            }))
            .is_err()
            {
                tracing::error!("serving a request with a body panicked");
            }
            next = gate.next();
        }
    }
}

fn serve(service: &Service, drain: &Drain, mut request: tiny_http::Request) {
    let started = Instant::now();
    let method = request.method().to_string();
    let url = request.url().to_string();
    // Counted before the check, so the stop waits for every request that passed it.
    let _counted = drain.enter();
    let reply = if drain.started.load(Ordering::SeqCst) {
        ApiError::new(
            ErrorKind::Unavailable,
            "berth is stopping; retry on another instance or after the restart",
        )
        .into()
    } else {
        handlers::handle(service, &mut request)
    };
    let status = reply.status;
    if status >= 500 {
        tracing::error!(%method, %url, status, "request failed");
    } else {
        tracing::debug!(%method, %url, status, elapsed_us = started.elapsed().as_micros() as u64, "request");
    }
    if let Err(e) = respond(request, reply) {
        tracing::debug!(%method, %url, error = %e, "sending the response failed");
    }
    // After the body went out, so a pull's time includes sending it.
    if let Some(metrics) = service.metrics() {
        metrics.request(Method::parse(&method), status, started.elapsed());
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
