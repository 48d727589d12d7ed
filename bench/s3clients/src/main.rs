//! `s3clients`: berth's own S3 client (the `S3Driver`: requests signed here, sent with ureq,
//! plain-HTTP GETs on the driver's own connections, `client::direct`) beside rust-s3 0.38, the
//! crate the design card names (issue 13, "Client choice"), on two
//! S3 servers that the bench starts on free 127.0.0.1 ports and stops by their PIDs:
//! moto_server, which closes every connection after its answer, and s3s-fs, which keeps them
//! alive (so a client that reuses connections shows it there). On each, both clients use the
//! same bucket and the same objects, in turn, in three rounds whose order alternates (the best
//! round of each is printed): PUT 1 MiB, GET 1 MiB, GET 64 MiB streamed and read whole into
//! memory (rust-s3's `get_object` reads whole; its `get_object_to_writer` streams), and a
//! multipart PUT of 64 MiB (berth: `direct_writer`, parts of the default `chunksize`, 10 MiB;
//! rust-s3: `put_object_stream`, its fixed 8 MiB parts). Each row has the heap the operation
//! needed at its peak, above what was allocated before it (a counting global allocator; the
//! objects' bytes are allocated beforehand), and, through a relay that counts the TCP
//! connections it accepts, the connections each client opened for 100 requests (50 PUTs and
//! 50 GETs of 1 MiB) and for one multipart PUT of 64 MiB.
//!
//! rust-s3 builds one HTTP backend at a time, so the bench measures the one it was built with:
//! `cargo run --release -p s3clients` its async client (reqwest) on one current-thread tokio
//! runtime, `cargo run --release -p s3clients --no-default-features --features rusts3-sync`
//! its blocking `sync` client (attohttpc). This is a package of its own (not a bench of the
//! root's) so that the root's builds never build rust-s3. moto_server and s3s-fs are the ones
//! `scripts/s3-services.sh start` installs.

use berth::storage::driver::s3::{
    Credentials, DEFAULT_CHUNK_SIZE, MultipartCopy, S3Config, S3Driver, Wire,
};
use berth::storage::driver::{Driver, StoragePath};
use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

#[cfg(feature = "rusts3-sync")]
use std::io::sink;
#[cfg(feature = "rusts3-async")]
use tokio::io::sink;

const MIB: usize = 1 << 20;
const SMALL: usize = MIB;
const LARGE: usize = 64 * MIB;
const ROUNDS: usize = 3;
/// Operations per round: enough 1 MiB ones that a round takes a second or two on moto.
const SMALL_OPS: usize = 30;
const LARGE_OPS: usize = 2;
/// Requests of the connection count, half PUTs and half GETs.
const COUNTED_REQUESTS: usize = 100;
const BUCKET: &str = "s3clients";
/// The keys s3s-fs checks every signature against (moto takes any).
const REGION: &str = "us-east-1";
const ACCESS_KEY: &str = "bench-access";
const SECRET_KEY: &str = "bench-secret";

/// The bytes allocated now, and the most allocated since `measured` last reset it.
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting: what an operation needs in memory is what it allocates
/// (rust-s3 reading a body whole, berth one part of an upload), without the noise of RSS.
struct Counting;

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Relaxed) + by;
    PEAK.fetch_max(now, Relaxed);
}

// SAFETY: every call is passed to `System` unchanged; only the counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() {
            if new_size > layout.size() {
                grew(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Relaxed);
            }
        }
        q
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `op` and returns the most it had allocated at once, above what was live before it
/// (what it returns counts: a body read whole is held by the caller).
fn measured(op: impl FnOnce()) -> usize {
    let before = LIVE.load(Relaxed);
    PEAK.store(before, Relaxed);
    op();
    PEAK.load(Relaxed).saturating_sub(before)
}

/// The calls the bench makes, each as the client's own API offers it.
trait Client {
    fn name(&self) -> &'static str;
    fn put(&self, key: &str, bytes: &[u8]);
    fn get(&self, key: &str) -> Vec<u8>;
    /// Reads the object through without keeping it.
    fn get_streamed(&self, key: &str);
    fn put_multipart(&self, key: &str, bytes: &[u8]);
}

struct Berth {
    driver: S3Driver,
    /// The caller's buffer that `UploadWriter::write` takes and hands back, as a request
    /// worker's is: allocated before the measurements, like the objects' bytes.
    buffer: std::cell::RefCell<Vec<u8>>,
}

impl Berth {
    fn new(endpoint: &str) -> Berth {
        let driver = S3Driver::new(S3Config {
            endpoint: endpoint.to_string(),
            region: REGION.to_string(),
            bucket: BUCKET.to_string(),
            credentials: Credentials {
                access_key: ACCESS_KEY.to_string(),
                secret_key: SECRET_KEY.to_string(),
                session_token: None,
                source: "the bench",
                refresh: None,
            },
            wire: Wire::default(),
            root: String::new(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            multipart_copy: MultipartCopy::default(),
            redirect: false,
            time_out: S3Config::DEFAULT_TIME_OUT,
            revalidate: S3Config::DEFAULT_REVALIDATE,
        })
        .expect("berth's S3 driver");
        Berth {
            driver,
            buffer: std::cell::RefCell::new(Vec::with_capacity(MIB)),
        }
    }

    fn size(&self, key: &str) -> Option<u64> {
        let meta = self.driver.stat_object(&path(key)).expect("HEAD");
        meta.map(|m| m.size)
    }

    fn delete(&self, key: &str) {
        self.driver.delete(&path(key)).expect("DELETE");
    }
}

fn path(key: &str) -> StoragePath {
    StoragePath::from_components(key.split('/')).expect("key")
}

impl Client for Berth {
    fn name(&self) -> &'static str {
        "berth (S3Driver)"
    }

    fn put(&self, key: &str, bytes: &[u8]) {
        self.driver.put(&path(key), bytes).expect("berth PUT");
    }

    fn get(&self, key: &str) -> Vec<u8> {
        self.driver.get(&path(key)).expect("berth GET")
    }

    fn get_streamed(&self, key: &str) {
        let mut object = self.driver.reader(&path(key), 0).expect("berth GET");
        let read = std::io::copy(&mut object.reader, &mut std::io::sink()).expect("body");
        assert_eq!(read, object.size, "berth read {key} short");
    }

    fn put_multipart(&self, key: &str, bytes: &[u8]) {
        let mut writer = self.driver.direct_writer(&path(key)).expect("writer");
        let mut buffer = self.buffer.borrow_mut();
        for piece in bytes.chunks(MIB) {
            buffer.clear();
            buffer.extend_from_slice(piece);
            *buffer = writer.write(std::mem::take(&mut *buffer)).expect("write");
        }
        writer.commit().expect("commit");
    }
}

struct RustS3 {
    bucket: Box<s3::Bucket>,
    #[cfg(feature = "rusts3-async")]
    runtime: tokio::runtime::Runtime,
}

/// One rust-s3 call, finished: the async client's on the bench's current-thread runtime (a
/// thread owning its runtime, as berth's io_uring writer owns its ring), the blocking one's
/// as it returns.
#[cfg(feature = "rusts3-async")]
macro_rules! finish {
    ($client:expr, $call:expr) => {
        $client.runtime.block_on(async { $call.await })
    };
}
#[cfg(feature = "rusts3-sync")]
macro_rules! finish {
    ($client:expr, $call:expr) => {
        $call
    };
}

impl RustS3 {
    fn new(endpoint: &str) -> RustS3 {
        let region = s3::Region::Custom {
            region: REGION.to_string(),
            endpoint: endpoint.to_string(),
        };
        let credentials =
            s3::creds::Credentials::new(Some(ACCESS_KEY), Some(SECRET_KEY), None, None, None)
                .expect("credentials");
        let bucket = s3::Bucket::new(BUCKET, region, credentials)
            .expect("rust-s3 bucket")
            .with_path_style();
        RustS3 {
            bucket,
            #[cfg(feature = "rusts3-async")]
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime"),
        }
    }
}

impl Client for RustS3 {
    fn name(&self) -> &'static str {
        if cfg!(feature = "rusts3-async") {
            "rust-s3 0.38 async (reqwest, current-thread tokio)"
        } else {
            "rust-s3 0.38 sync (attohttpc)"
        }
    }

    fn put(&self, key: &str, bytes: &[u8]) {
        finish!(self, self.bucket.put_object(key, bytes)).expect("rust-s3 PUT");
    }

    fn get(&self, key: &str) -> Vec<u8> {
        finish!(self, self.bucket.get_object(key))
            .expect("rust-s3 GET")
            .to_vec()
    }

    fn get_streamed(&self, key: &str) {
        finish!(self, self.bucket.get_object_to_writer(key, &mut sink())).expect("rust-s3 GET");
    }

    fn put_multipart(&self, key: &str, bytes: &[u8]) {
        match finish!(self, self.bucket.put_object_stream(&mut &bytes[..], key)) {
            Ok(_) => {}
            // moto names the root of its CompleteMultipartUpload answer `...Response`, AWS
            // `...Result`, and rust-s3 0.38 rejects any other root once the object is
            // complete: the upload is done all the same (each turn checks the object it made).
            Err(s3::error::S3Error::HttpFailWithBody(200, body))
                if body.contains("<CompleteMultipartUploadResponse") => {}
            Err(e) => panic!("rust-s3 multipart PUT: {e}"),
        }
    }
}

/// An S3 server on a free loopback port, with the bench's bucket, killed by its PID when
/// dropped.
struct Server {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
    /// s3s-fs's directory, removed after it.
    _root: Option<tempfile::TempDir>,
}

impl Server {
    /// moto_server (threaded, as scripts/bench-s3.sh runs it); it answers every request with
    /// `Connection: close`, so no client keeps a connection to it.
    fn moto() -> Server {
        let addr = free_port();
        let mut command = Command::new("moto_server");
        command.args(["-H", "127.0.0.1", "-p", &addr.port().to_string()]);
        let server = Server::start("moto_server", command, addr, None);
        // moto takes any signature, but wants one there.
        ureq::put(format!("{}/{BUCKET}", server.endpoint()))
            .header(
                "Authorization",
                format!(
                    "AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20260101/{REGION}/s3/aws4_request, \
                     SignedHeaders=host, Signature=00"
                ),
            )
            .send_empty()
            .expect("create the bucket");
        server
    }

    /// s3s-fs, which keeps connections alive and checks every signature; its buckets are the
    /// directories of its root.
    fn s3s_fs() -> Server {
        let addr = free_port();
        let root = tempfile::tempdir().expect("s3s-fs root");
        std::fs::create_dir(root.path().join(BUCKET)).expect("bucket directory");
        let installed = std::env::var_os("HOME")
            .map(|home| std::path::Path::new(&home).join(".cargo/bin/s3s-fs"))
            .filter(|p| p.exists());
        let mut command = Command::new(installed.unwrap_or_else(|| "s3s-fs".into()));
        command
            .args(["--host", "127.0.0.1", "--port", &addr.port().to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root.path());
        Server::start("s3s-fs", command, addr, Some(root))
    }

    fn start(
        name: &'static str,
        mut command: Command,
        addr: SocketAddr,
        root: Option<tempfile::TempDir>,
    ) -> Server {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: {e} (scripts/s3-services.sh start installs it)"));
        let mut server = Server {
            name,
            child,
            addr,
            _root: root,
        };
        let started = Instant::now();
        while TcpStream::connect(addr).is_err() {
            if let Some(status) = server.child.try_wait().expect(name) {
                panic!("{name} exited: {status}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{name} did not listen on {addr} within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// A loopback relay to the S3 server that counts the connections it accepts: the
/// connections a client opens, as the server sees them. Bytes pass unchanged both ways.
struct Relay {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl Relay {
    fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("relay port");
        let addr = listener.local_addr().expect("relay address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                count.fetch_add(1, Relaxed);
                let server = TcpStream::connect(upstream).expect("S3 server");
                pipe(
                    client.try_clone().expect("socket"),
                    server.try_clone().expect("socket"),
                );
                pipe(server, client);
            }
        });
        Relay { addr, accepted }
    }
}

/// Copies one direction of a connection until its end, then ends the other side's input.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// Bytes that differ along the object, so a part sent twice or out of order would show.
fn object(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[derive(Clone, Copy)]
enum Op {
    Put1M,
    Get1M,
    Get64MStreamed,
    Get64MWhole,
    Put64MMultipart,
}

const OPS: [Op; 5] = [
    Op::Put1M,
    Op::Get1M,
    Op::Get64MStreamed,
    Op::Get64MWhole,
    Op::Put64MMultipart,
];

impl Op {
    fn label(self) -> &'static str {
        match self {
            Op::Put1M => "PUT 1 MiB",
            Op::Get1M => "GET 1 MiB",
            Op::Get64MStreamed => "GET 64 MiB, streamed",
            Op::Get64MWhole => "GET 64 MiB, whole body in memory",
            Op::Put64MMultipart => "multipart PUT 64 MiB",
        }
    }

    fn count(self) -> usize {
        if matches!(self, Op::Put1M | Op::Get1M) {
            SMALL_OPS
        } else {
            LARGE_OPS
        }
    }

    fn bytes(self) -> usize {
        if matches!(self, Op::Put1M | Op::Get1M) {
            SMALL
        } else {
            LARGE
        }
    }
}

/// The objects: read by both clients (written once, by berth), and written by both in turn.
struct Objects {
    small: Vec<u8>,
    large: Vec<u8>,
}

const SMALL_KEY: &str = "bench/get-1m";
const LARGE_KEY: &str = "bench/get-64m";
const PUT_SMALL_KEY: &str = "bench/put-1m";
const PUT_LARGE_KEY: &str = "bench/put-64m";

/// Runs `op` `op.count()` times; returns the seconds and the largest peak of one run.
fn run(client: &dyn Client, op: Op, objects: &Objects) -> (f64, usize) {
    let mut peak = 0;
    let started = Instant::now();
    for _ in 0..op.count() {
        let used = match op {
            Op::Put1M => measured(|| client.put(PUT_SMALL_KEY, &objects.small)),
            Op::Get1M => measured(|| {
                assert!(client.get(SMALL_KEY) == objects.small, "GET 1 MiB differs");
            }),
            Op::Get64MStreamed => measured(|| client.get_streamed(LARGE_KEY)),
            Op::Get64MWhole => measured(|| {
                assert_eq!(client.get(LARGE_KEY).len(), LARGE, "GET 64 MiB short");
            }),
            Op::Put64MMultipart => measured(|| client.put_multipart(PUT_LARGE_KEY, &objects.large)),
        };
        peak = peak.max(used);
    }
    (started.elapsed().as_secs_f64(), peak)
}

/// The connections `relay` accepted while `work` ran.
fn connections(relay: &Relay, work: impl FnOnce()) -> usize {
    let before = relay.accepted.load(Relaxed);
    work();
    relay.accepted.load(Relaxed) - before
}

fn human(bytes: usize) -> String {
    if bytes >= MIB {
        format!("{:.1} MiB", bytes as f64 / MIB as f64)
    } else {
        format!("{:.0} KiB", bytes as f64 / 1024.0)
    }
}

fn main() {
    let objects = Objects {
        small: object(SMALL),
        large: object(LARGE),
    };
    for server in [Server::moto, Server::s3s_fs] {
        measure(&server(), &objects);
    }
}

/// Both clients on `server`: the table of one server.
fn measure(server: &Server, objects: &Objects) {
    let berth = Berth::new(&server.endpoint());
    let rust_s3 = RustS3::new(&server.endpoint());
    berth.put(SMALL_KEY, &objects.small);
    berth.put_multipart(LARGE_KEY, &objects.large);
    let clients: [&dyn Client; 2] = [&berth, &rust_s3];
    // Per client and operation: the best round's seconds, and the largest peak.
    let mut best = [[(f64::INFINITY, 0usize); OPS.len()]; 2];
    for round in 0..ROUNDS {
        for turn in 0..clients.len() {
            let c = (turn + round) % clients.len();
            // Gone before each turn, so the sizes checked after it are of what this turn wrote.
            for key in [PUT_SMALL_KEY, PUT_LARGE_KEY] {
                if berth.size(key).is_some() {
                    berth.delete(key);
                }
            }
            for (o, &op) in OPS.iter().enumerate() {
                let (secs, peak) = run(clients[c], op, objects);
                best[c][o] = (best[c][o].0.min(secs), best[c][o].1.max(peak));
            }
            assert_eq!(berth.size(PUT_SMALL_KEY), Some(SMALL as u64));
            assert_eq!(berth.size(PUT_LARGE_KEY), Some(LARGE as u64));
        }
    }

    let relay = Relay::start(server.addr);
    let relayed = format!("http://{}", relay.addr);
    let counted: [Box<dyn Client>; 2] = [
        Box::new(Berth::new(&relayed)),
        Box::new(RustS3::new(&relayed)),
    ];
    let opened: Vec<(usize, usize)> = counted
        .iter()
        .map(|client| {
            let requests = connections(&relay, || {
                for _ in 0..COUNTED_REQUESTS / 2 {
                    client.put(PUT_SMALL_KEY, &objects.small);
                    client.get(SMALL_KEY);
                }
            });
            let multipart = connections(&relay, || {
                client.put_multipart(PUT_LARGE_KEY, &objects.large)
            });
            (requests, multipart)
        })
        .collect();

    println!(
        "\nS3 clients on {} (one client at a time; best of {ROUNDS} rounds; peak heap above \
         what was allocated before the operation)\n",
        server.name
    );
    println!("| operation | client | throughput | peak heap |");
    println!("|---|---|---|---|");
    for (o, &op) in OPS.iter().enumerate() {
        for (c, client) in clients.iter().enumerate() {
            let (secs, peak) = best[c][o];
            let ops = op.count() as f64 / secs;
            let throughput = if op.bytes() == SMALL {
                format!("{ops:.1} ops/s")
            } else {
                format!("{:.1} MiB/s", ops * (op.bytes() / MIB) as f64)
            };
            println!(
                "| {} | {} | {throughput} | {} |",
                op.label(),
                client.name(),
                human(peak)
            );
        }
    }
    println!("\n| connections opened | client | count |");
    println!("|---|---|---|");
    for (client, (requests, multipart)) in clients.iter().zip(&opened) {
        println!(
            "| per {COUNTED_REQUESTS} requests (PUT and GET 1 MiB, alternating) | {} | {requests} |",
            client.name()
        );
        println!(
            "| one multipart PUT of 64 MiB | {} | {multipart} |",
            client.name()
        );
    }
}
