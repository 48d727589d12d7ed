//! Slow, stalled and half-open connections (issue 2, point 3: "many slow or half-open
//! connections"): hundreds of sockets that stall mid-request must not delay other clients,
//! and `http.readTimeout` must bound how long each may hold on.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::util::http::Client;
use crate::util::oci::*;
use crate::util::server::{Berth, Settings};

const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// "Promptly": a debug build answers a small request in milliseconds; this leaves room for a
/// loaded 2-core CI machine while still failing if a request waits for a stalled one.
const PROMPT: Duration = Duration::from_millis(1500);
/// How long after readTimeout a stalled socket may still be open.
const HANGUP_SLACK: Duration = Duration::from_secs(5);

fn settings() -> Settings {
    Settings {
        read_timeout: "2s",
        ..Settings::default()
    }
}

/// Runs normal traffic (ping, a push and a pull) and asserts each request was prompt.
#[track_caller]
fn assert_prompt_service(c: &Client, round: u64) {
    for _ in 0..10 {
        let started = Instant::now();
        c.get("/v2/").expect(200);
        assert!(
            started.elapsed() < PROMPT,
            "GET /v2/ took {:?}",
            started.elapsed()
        );
    }
    let started = Instant::now();
    let image = Image::oci(200 + round, &[20_000]);
    push_image(c, "normal", &format!("r{round}"), &image);
    assert_image(c, "normal", &format!("r{round}"), &image);
    // Six requests (three blob pushes, a manifest put, a manifest and blob pulls).
    assert!(
        started.elapsed() < PROMPT * 6,
        "push and pull took {:?}",
        started.elapsed()
    );
}

/// Asserts the server has closed (or answered and closed) every stalled socket by `deadline`.
/// A request whose body never arrived cannot be followed by another on the same connection
/// (its framing is lost, RFC 9112 section 9.6), so after answering it the server must hang up
/// rather than hold the socket for further timeouts.
#[track_caller]
fn assert_hung_up(sockets: Vec<TcpStream>, deadline: Instant, what: &str) {
    let count = sockets.len();
    for (i, mut socket) in sockets.into_iter().enumerate() {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(50));
        socket.set_read_timeout(Some(left)).unwrap();
        let mut received = Vec::new();
        let result = socket.read_to_end(&mut received);
        let timed_out = matches!(&result, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut));
        assert!(
            !timed_out,
            "{what} socket {i}/{count} still open {HANGUP_SLACK:?} after readTimeout; \
             the server had sent: {:?}",
            String::from_utf8_lossy(&received)
        );
    }
}

#[test]
fn many_stalled_request_lines_do_not_delay_other_clients() {
    let berth = Berth::start_with(settings());
    let c = berth.client();
    let baseline = Baseline::push(&c, "base/repo");

    let opened = Instant::now();
    let mut stalled = Vec::new();
    for i in 0..200 {
        let mut socket = c.connect().unwrap();
        // Half a request line, never finished (slowloris); every fourth sends nothing at all.
        if i % 4 != 0 {
            socket.write_all(b"GET /v2/_cata").unwrap();
        }
        stalled.push(socket);
    }
    // Half-open: a complete request, then the client half-closes and never reads.
    for _ in 0..20 {
        let socket = c.connect().unwrap();
        (&socket)
            .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        socket.shutdown(std::net::Shutdown::Write).unwrap();
        stalled.push(socket);
    }
    assert_prompt_service(&c, 0);
    baseline.assert_intact(&c);

    assert_hung_up(
        stalled,
        opened + READ_TIMEOUT + HANGUP_SLACK,
        "stalled request line",
    );
    assert_prompt_service(&c, 1);
    assert!(berth.logs().contains("listening on"));
}

/// Opens `count` uploads that announce 100 kB, send 10 bytes and stall.
fn stalled_uploads(c: &Client, count: usize, digest: &str) -> Vec<TcpStream> {
    (0..count)
        .map(|_| {
            let mut socket = c.connect().unwrap();
            let head = format!(
                "POST /v2/slow/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n0123456789"
            );
            socket.write_all(head.as_bytes()).unwrap();
            socket
        })
        .collect()
}

/// A few stalled uploads (fewer than the request workers) must not delay anyone, and each
/// must be answered and closed once readTimeout has passed.
#[test]
fn stalled_request_bodies_are_cut_off_by_read_timeout() {
    let berth = Berth::start_with(settings());
    let c = berth.client();
    let baseline = Baseline::push(&c, "base/repo");
    let blob = random_bytes(210, 100_000);
    let digest = sha256(&blob);

    let opened = Instant::now();
    let stalled = stalled_uploads(&c, 6, &digest);
    assert_prompt_service(&c, 0);
    assert_hung_up(
        stalled,
        opened + READ_TIMEOUT + Duration::from_secs(3),
        "stalled body",
    );
    // None of the stalled uploads became a blob; a real upload of the same bytes works.
    c.head(&format!("/v2/slow/blobs/{digest}")).expect(404);
    push_blob(&c, "slow", &blob);
    baseline.assert_intact(&c);
}

/// More stalled uploads than request workers: the server must keep serving (each stalled
/// upload can hold a worker for readTimeout, so others may wait, but boundedly).
#[test]
fn more_stalled_uploads_than_workers_do_not_stop_the_server() {
    let berth = Berth::start_with(settings());
    let c = berth.client();
    let baseline = Baseline::push(&c, "base/repo");
    let digest = sha256(b"never sent in full");
    let opened = Instant::now();
    let stalled = stalled_uploads(&c, 32, &digest);
    let started = Instant::now();
    // Bounded by the client's 30 s I/O timeout: a transport error here fails the test.
    c.get("/v2/").expect(200);
    eprintln!(
        "a request behind 32 stalled uploads waited {:?}",
        started.elapsed()
    );
    assert_hung_up(stalled, opened + Duration::from_secs(30), "stalled body");
    assert_prompt_service(&c, 0);
    c.head(&format!("/v2/slow/blobs/{digest}")).expect(404);
    baseline.assert_intact(&c);
}

/// skopeo (containers/image) with `--tls-verify=false` tries TLS first and falls back to plain
/// HTTP only when the TLS attempt fails, so a ClientHello that sits unanswered until
/// readTimeout delays every skopeo command by that long (10 s with the default 60 s timeout,
/// skopeo's own handshake limit). A first byte that cannot start an HTTP method (0x16 is not
/// a token character, RFC 9110 5.6.2) makes the request invalid at once (RFC 9112 3: 400).
#[test]
fn a_tls_client_hello_is_refused_at_once() {
    let berth = Berth::start_with(Settings {
        read_timeout: "30s",
        ..Settings::default()
    });
    let mut socket = berth.client().connect().unwrap();
    // A TLS 1.2 record header, a ClientHello header, and a random without any CR or LF.
    let mut hello = vec![
        0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03,
    ];
    hello.extend((0..32u8).map(|i| i.wrapping_mul(37) | 0x80));
    socket.write_all(&hello).unwrap();
    let started = Instant::now();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut received = Vec::new();
    let result = socket.read_to_end(&mut received);
    let waited = started.elapsed();
    assert!(
        result.is_ok()
            || matches!(&result, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "server held a TLS ClientHello for {waited:?} ({result:?})"
    );
    assert!(
        waited < Duration::from_secs(1),
        "took {waited:?} to refuse a ClientHello"
    );
    if !received.is_empty() {
        assert!(
            received.starts_with(b"HTTP/1.1 400"),
            "{:?}",
            String::from_utf8_lossy(&received)
        );
    }
}

/// A client that sends `Connection: close` is told the connection ends (RFC 9112 9.6), as
/// distribution does, and the server then closes it; without it the connection stays open.
#[test]
fn a_client_asking_to_close_is_answered_with_connection_close() {
    let berth = Berth::start();
    let ask = |extra: &str| {
        let mut socket = berth.client().connect().unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let request = format!("GET /v2/ HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
        socket.write_all(request.as_bytes()).unwrap();
        let mut received = Vec::new();
        let closed = socket.read_to_end(&mut received).is_ok();
        (
            String::from_utf8_lossy(&received).to_ascii_lowercase(),
            closed,
        )
    };
    let (answer, closed) = ask("Connection: keep-alive, Close\r\n");
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    assert!(closed, "the server closed the connection");
    let (answer, closed) = ask("");
    assert!(!answer.contains("connection: close"), "{answer}");
    assert!(!closed, "a kept-alive connection stays open");
}
