//! The servers a benchmark measures, as child processes it owns: a berth binary started on a
//! config it is given (so an older build can be measured beside the current one), and Debian's
//! `docker-registry` (CNCF distribution) on a root directory. Both are killed when dropped.
//! Also what the benchmarks read about a process: heap RSS and CPU seconds, and, for berth, its
//! log lines with the time each arrived, so a benchmark can wait for "gc: sweep done".

#![allow(dead_code)] // each benchmark binary uses a different part of this module

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// A running server process.
pub struct Process {
    pub child: Child,
    /// `127.0.0.1:port`.
    pub host: String,
    /// When the process was spawned.
    pub started: Instant,
    /// berth's stderr lines, with when each arrived (empty for distribution).
    lines: Option<Receiver<(Instant, String)>>,
}

impl Process {
    /// Starts `berth serve config` and waits for its "listening on" line.
    pub fn berth(binary: &Path, config: &Path) -> Process {
        let started = Instant::now();
        let mut child = Command::new(binary)
            .arg("serve")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = channel();
        // Keeps draining, so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Once nobody listens, lines are drained and dropped.
                let _ = tx.send((Instant::now(), line));
            }
        });
        let mut process = Process {
            child,
            host: String::new(),
            started,
            lines: Some(rx),
        };
        let (_, line) = process
            .wait_for_log("listening on ", Duration::from_secs(600))
            .expect("berth never said it was listening");
        let (_, rest) = line.split_once("listening on ").expect("matched");
        process.host = rest.split_whitespace().next().expect("address").to_string();
        process
    }

    /// Starts Debian's `docker-registry serve` on `root` (its `rootdirectory`) and a free
    /// loopback port, with deletes enabled, and waits until `/v2/` answers.
    pub fn distribution(root: &Path) -> Process {
        let port = free_port();
        let config = root.join("registry.yml");
        std::fs::create_dir_all(root).expect("distribution root");
        std::fs::write(&config, distribution_config(root, port)).expect("write registry.yml");
        let started = Instant::now();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry (apt-get install docker-registry)");
        let process = Process {
            child,
            host: format!("127.0.0.1:{port}"),
            started,
            lines: None,
        };
        process.wait_ready(Duration::from_secs(600));
        process
    }

    /// Waits until `GET /v2/` answers 200; returns the seconds since the process was spawned.
    pub fn wait_ready(&self, limit: Duration) -> f64 {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(mut stream) = std::net::TcpStream::connect(&self.host) {
                use std::io::{Read, Write};
                let request = format!(
                    "GET /v2/ HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                    self.host
                );
                let mut answer = String::new();
                if stream.write_all(request.as_bytes()).is_ok()
                    && stream.read_to_string(&mut answer).is_ok()
                    && answer.starts_with("HTTP/1.1 200")
                {
                    return self.started.elapsed().as_secs_f64();
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} never answered /v2/",
                self.host
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for a berth log line containing `needle`; returns when it arrived and the line.
    /// Lines before it are consumed.
    pub fn wait_for_log(&mut self, needle: &str, limit: Duration) -> Option<(Instant, String)> {
        let lines = self.lines.as_ref()?;
        let deadline = Instant::now() + limit;
        loop {
            match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok((at, line)) if line.contains(needle) => return Some((at, line)),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Reads berth's log lines until `enough` returns true for one; returns every line read,
    /// with when each arrived, or `None` when `limit` passes first or the log closes. For
    /// waiting on several events in any order, and keeping the lines read meanwhile.
    pub fn log_until(
        &mut self,
        limit: Duration,
        mut enough: impl FnMut(&str) -> bool,
    ) -> Option<Vec<(Instant, String)>> {
        let lines = self.lines.as_ref()?;
        let deadline = Instant::now() + limit;
        let mut read = Vec::new();
        loop {
            let (at, line) = lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .ok()?;
            let done = enough(&line);
            read.push((at, line));
            if done {
                return Some(read);
            }
        }
    }

    /// Resident anonymous memory (the heap; not file-backed maps such as LMDB's), in MiB.
    pub fn rss_mib(&self) -> f64 {
        status_kib(self.child.id(), "RssAnon:") / 1024.0
    }

    /// The most resident memory the process has had (all kinds), in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        status_kib(self.child.id(), "VmHWM:") / 1024.0
    }

    /// CPU seconds (user + system) the process has used.
    pub fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat(5); 12 and 13 after the name.
        let ticks: f64 = fields.get(11..13).map_or(0.0, |f| {
            f.iter().filter_map(|v| v.parse::<f64>().ok()).sum()
        });
        // SAFETY: sysconf takes and returns plain integers.
        ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// distribution's config: filesystem storage under `root/distribution`, deletes on, quiet, and
/// the in-memory blob descriptor cache on, as in the config.yml Debian and upstream ship.
pub fn distribution_config(root: &Path, port: u16) -> String {
    format!(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  cache:\n    blobdescriptor: inmemory\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
        root.join("distribution").display()
    )
}

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn status_kib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
}
