//! `s3relay`: counts the S3 requests a registry makes, for the S3 side-by-side benchmark
//! (scripts/bench-s3.sh). It sits on loopback between one registry and the S3 server and
//! forwards every byte unchanged both ways (so SigV4 signatures, which cover the host header
//! and the payload hash, still check), and writes one line per request to a log:
//! `OPERATION /bucket/key`, the S3 operation named from method, query and headers as AWS's API
//! reference names them. The load generator (bench/load.rs `--s3-log`) reads the lines that a
//! workload's timed phase added.
//!
//! Run: `cargo bench --bench s3relay -- --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT
//!       --log FILE`. It parses requests only, never responses, which flow back on a thread of
//! their own; a request body is forwarded by its Content-Length or its chunked framing.

use clap::Parser;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

#[derive(Parser)]
#[command(about = "Counting S3 relay for the benchmark")]
struct Args {
    /// Where the registry connects: 127.0.0.1:PORT.
    #[arg(long)]
    listen: String,
    /// The S3 server: 127.0.0.1:PORT.
    #[arg(long)]
    upstream: String,
    /// One line per request is appended here.
    #[arg(long)]
    log: String,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Copies between the sockets in pieces this large: the relay is on the path of every push
/// and pull it counts, so it costs a syscall per 256 KiB rather than per 8 KiB.
const PIECE: usize = 256 * 1024;

fn main() {
    let args = Args::parse();
    for addr in [&args.listen, &args.upstream] {
        if !addr.starts_with("127.0.0.1:") {
            eprintln!("s3relay: {addr}: loopback only (127.0.0.1:PORT)");
            std::process::exit(2);
        }
    }
    let log = Arc::new(Mutex::new(File::create(&args.log).unwrap_or_else(|e| {
        eprintln!("s3relay: {}: {e}", args.log);
        std::process::exit(2)
    })));
    let listener = TcpListener::bind(&args.listen).unwrap_or_else(|e| {
        eprintln!("s3relay: listen on {}: {e}", args.listen);
        std::process::exit(2)
    });
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        let (upstream, log) = (args.upstream.clone(), Arc::clone(&log));
        std::thread::spawn(move || {
            if let Err(e) = relay(client, &upstream, &log) {
                // A registry closing a pooled connection mid-read is normal; anything else
                // would show as an error in the registry's own response.
                if e.kind() != io::ErrorKind::UnexpectedEof {
                    eprintln!("s3relay: {e}");
                }
            }
        });
    }
}

/// One registry connection: responses copied back on a thread, requests parsed, logged and
/// forwarded here until the registry closes its side.
fn relay(client: TcpStream, upstream: &str, log: &Mutex<File>) -> io::Result<()> {
    let server = TcpStream::connect(upstream)?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (mut back_from, mut back_to) = (server.try_clone()?, client.try_clone()?);
    let back = std::thread::spawn(move || {
        let _ = copy_all(&mut back_from, &mut back_to);
        let _ = back_to.shutdown(Shutdown::Write);
    });
    let mut from = BufReader::with_capacity(PIECE, client);
    let mut to = server;
    let result = forward_requests(&mut from, &mut to, log);
    let _ = to.shutdown(Shutdown::Write);
    let _ = back.join();
    result
}

fn copy_all(from: &mut impl Read, to: &mut impl Write) -> io::Result<()> {
    let mut buf = vec![0u8; PIECE];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n])?;
    }
}

fn forward_requests(
    from: &mut BufReader<TcpStream>,
    to: &mut TcpStream,
    log: &Mutex<File>,
) -> io::Result<()> {
    loop {
        let mut head = Vec::new();
        loop {
            let start = head.len();
            if from.read_until(b'\n', &mut head)? == 0 {
                return if head.is_empty() {
                    Ok(())
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
            if head[start..] == *b"\r\n" || head[start..] == *b"\n" {
                break;
            }
        }
        let request = Request::parse(&head)?;
        // Logged before forwarding: the line is written before the S3 server can answer, so
        // it is in the log before the registry answers its own client.
        let line = format!("{} {}\n", request.operation(), request.path);
        log.lock().expect("log lock").write_all(line.as_bytes())?;
        to.write_all(&head)?;
        if request.chunked {
            forward_chunked(from, to)?;
        } else {
            let n = io::copy(&mut from.by_ref().take(request.content_length), to)?;
            if n != request.content_length {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

/// A chunked body, forwarded as it came: size lines, data and trailers.
fn forward_chunked(from: &mut BufReader<TcpStream>, to: &mut TcpStream) -> io::Result<()> {
    loop {
        let mut line = Vec::new();
        from.read_until(b'\n', &mut line)?;
        to.write_all(&line)?;
        let size = std::str::from_utf8(&line)
            .ok()
            .and_then(|l| l.split(';').next())
            .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size line"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                let mut t = Vec::new();
                if from.read_until(b'\n', &mut t)? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                to.write_all(&t)?;
                if t == b"\r\n" || t == b"\n" {
                    return Ok(());
                }
            }
        }
        // The data and its CRLF.
        let want = size + 2;
        if io::copy(&mut from.by_ref().take(want), to)? != want {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// What the relay needs of a request head.
struct Request {
    method: String,
    path: String,
    query: Vec<String>,
    copy_source: bool,
    conditional: bool,
    range: bool,
    content_length: u64,
    chunked: bool,
}

impl Request {
    fn parse(head: &[u8]) -> io::Result<Request> {
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
        let text = std::str::from_utf8(head).map_err(|_| bad("request head is not UTF-8"))?;
        let mut lines = text.lines();
        let mut first = lines.next().unwrap_or_default().split(' ');
        let method = first.next().unwrap_or_default().to_string();
        let target = first.next().ok_or_else(|| bad("no request target"))?;
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let mut r = Request {
            method,
            path: path.to_string(),
            query: query
                .split('&')
                .filter(|q| !q.is_empty())
                .map(|q| q.split('=').next().unwrap_or_default().to_string())
                .collect(),
            copy_source: false,
            conditional: false,
            range: false,
            content_length: 0,
            chunked: false,
        };
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => {
                    r.content_length = value.parse().map_err(|_| bad("bad Content-Length"))?
                }
                "transfer-encoding" => r.chunked = value.eq_ignore_ascii_case("chunked"),
                "x-amz-copy-source" => r.copy_source = true,
                "if-match" | "if-none-match" => r.conditional = true,
                "range" => r.range = true,
                _ => {}
            }
        }
        Ok(r)
    }

    fn has(&self, key: &str) -> bool {
        self.query.iter().any(|q| q == key)
    }

    /// The operation as AWS's S3 API reference names it; a conditional request or a ranged
    /// read is marked, since each is a choice a driver makes.
    fn operation(&self) -> String {
        // Path-style: `/bucket` alone is a bucket operation.
        let on_bucket = self.path.trim_matches('/').split('/').count() <= 1;
        let name = match self.method.as_str() {
            "PUT" if self.has("partNumber") && self.copy_source => "UploadPartCopy",
            "PUT" if self.has("partNumber") => "UploadPart",
            "PUT" if self.copy_source => "CopyObject",
            "PUT" if on_bucket => "CreateBucket",
            "PUT" => "PutObject",
            "POST" if self.has("uploads") => "CreateMultipartUpload",
            "POST" if self.has("uploadId") => "CompleteMultipartUpload",
            "POST" if self.has("delete") => "DeleteObjects",
            "DELETE" if self.has("uploadId") => "AbortMultipartUpload",
            "DELETE" => "DeleteObject",
            "GET" if on_bucket && self.has("uploads") => "ListMultipartUploads",
            "GET" if on_bucket && self.has("list-type") => "ListObjectsV2",
            "GET" if on_bucket => "ListObjects",
            "GET" if self.has("uploadId") => "ListParts",
            "GET" => "GetObject",
            "HEAD" if on_bucket => "HeadBucket",
            "HEAD" => "HeadObject",
            other => other,
        };
        let mut op = name.to_string();
        if self.conditional {
            op.push_str("(conditional)");
        }
        if self.range && self.method == "GET" {
            op.push_str("(range)");
        }
        op
    }
}
