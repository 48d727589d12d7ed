//! A minimal blocking HTTP/1.1 client for the load generator: one keep-alive connection per
//! worker, bodies sent from borrowed slices and received into a reusable buffer, so the client
//! spends as little of the shared CPU as possible.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;

/// A response: status, headers (names lower-cased) and the body length received.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One keep-alive connection to `host:port`, reopened when the server closes it.
pub struct Connection {
    host: String,
    stream: Option<BufReader<TcpStream>>,
    /// Body of the last response, when the caller asked to keep it.
    pub body: Vec<u8>,
    scratch: Vec<u8>,
}

impl Connection {
    pub fn new(host: &str) -> Connection {
        Connection {
            host: host.to_string(),
            stream: None,
            body: Vec::new(),
            scratch: vec![0; 1 << 20],
        }
    }

    /// Sends a request whose body is the concatenation of `body` parts. A request on a reused
    /// connection that fails before any response byte is retried once on a fresh connection
    /// (the server may have closed an idle keep-alive connection).
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[&[u8]],
        keep_body: bool,
    ) -> io::Result<Response> {
        let reused = self.stream.is_some();
        match self.try_send(method, path, headers, body, keep_body) {
            Err(e) if reused && is_stale(&e) => {
                self.stream = None;
                self.try_send(method, path, headers, body, keep_body)
            }
            other => other,
        }
    }

    fn try_send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[&[u8]],
        keep_body: bool,
    ) -> io::Result<Response> {
        if self.stream.is_none() {
            let s = TcpStream::connect(&self.host)?;
            s.set_nodelay(true)?;
            self.stream = Some(BufReader::with_capacity(64 * 1024, s));
        }
        let stream = self.stream.as_mut().expect("connected above");
        let len: usize = body.iter().map(|b| b.len()).sum();
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if method != "GET" && method != "HEAD" {
            head.push_str(&format!("Content-Length: {len}\r\n"));
        }
        head.push_str("\r\n");
        let sock = stream.get_mut();
        sock.write_all(head.as_bytes())?;
        for part in body {
            sock.write_all(part)?;
        }
        let response = read_response(
            stream,
            method == "HEAD",
            keep_body,
            &mut self.body,
            &mut self.scratch,
        );
        let close = match &response {
            Ok(r) => r.header("connection") == Some("close"),
            Err(_) => true,
        };
        if close {
            self.stream = None;
        }
        response
    }
}

fn is_stale(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

fn read_response(
    stream: &mut BufReader<TcpStream>,
    head_request: bool,
    keep_body: bool,
    body: &mut Vec<u8>,
    scratch: &mut [u8],
) -> io::Result<Response> {
    let mut line = String::new();
    if stream.read_line(&mut line)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        stream.read_line(&mut line)?;
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((k, v)) = trimmed.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let mut response = Response {
        status,
        headers,
        body_len: 0,
    };
    body.clear();
    if head_request || status == 204 || status == 304 {
        return Ok(response);
    }
    let mut sink = |chunk: &[u8]| {
        if keep_body {
            body.extend_from_slice(chunk);
        }
    };
    if response.header("transfer-encoding") == Some("chunked") {
        loop {
            line.clear();
            stream.read_line(&mut line)?;
            let size = u64::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| io::Error::other(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                line.clear();
                stream.read_line(&mut line)?;
                break;
            }
            response.body_len += copy_exact(stream, size, scratch, &mut sink)?;
            line.clear();
            stream.read_line(&mut line)?;
        }
    } else if let Some(len) = response.header("content-length") {
        let len: u64 = len
            .parse()
            .map_err(|_| io::Error::other("bad content-length"))?;
        response.body_len = copy_exact(stream, len, scratch, &mut sink)?;
    }
    Ok(response)
}

fn copy_exact(
    stream: &mut BufReader<TcpStream>,
    mut remaining: u64,
    scratch: &mut [u8],
    sink: &mut impl FnMut(&[u8]),
) -> io::Result<u64> {
    let total = remaining;
    while remaining > 0 {
        let want = remaining.min(scratch.len() as u64) as usize;
        let n = stream.read(&mut scratch[..want])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        sink(&scratch[..n]);
        remaining -= n as u64;
    }
    Ok(total)
}
