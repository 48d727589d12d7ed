//! `load`: a load generator that speaks the OCI distribution API to any registry URL (berth,
//! the CNCF registry, zot), in the spirit of zot's `zb` but measuring more: for each workload
//! ops/s, MiB/s, p50 and p99 latency, errors, and, when the server runs on this host and its
//! pid is given, the server's CPU time per operation and its peak resident memory.
//!
//! Run: `cargo bench --bench load -- --target berth=http://127.0.0.1:5000@PID --count 200 \
//!        --workloads push-mono-1m:8,pull-1m:8,manifest-get:32`
//! With several `--target`s every workload runs against each in turn, and ratio tables follow:
//! each target against the last, and with three or more the first against the second.
//! Output: one JSON line per workload on stdout, then a table on stderr. Every loop is bounded
//! by `--count` operations per workload. With `--s3-log LABEL=FILE` (the log of bench/s3relay.rs
//! between that target and its S3 server) it also reports the S3 requests per operation of
//! each workload's timed phase, by S3 operation.

mod http;

use clap::Parser;
use http::Connection;
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
/// Distinct blobs pull workloads cycle through, so they are not one cached file.
const PULL_SET: usize = 4;

#[derive(Parser)]
#[command(about = "OCI registry load generator")]
struct Args {
    /// A registry to load: `LABEL=http://HOST:PORT` or `LABEL=http://HOST:PORT@PID` (the pid
    /// of the server process, to report its CPU time per op and peak RSS). Repeat it to run
    /// each workload against every target in turn, in one run; ratio tables then compare each
    /// target with the last, and with three or more the first with the second.
    #[arg(long = "target", required = true)]
    targets: Vec<String>,
    /// Comma-separated workloads, each `name[:concurrency[:count]]`.
    #[arg(
        long,
        default_value = "push-mono-1m,push-chunked-1m,manifest-put,pull-1m,manifest-get,manifest-head,catalog,mixed"
    )]
    workloads: String,
    /// Default concurrency.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Rounds per workload; with several targets, each round alternates their order and the
    /// figures add up all rounds.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Default operations per workload.
    #[arg(long, default_value_t = 200)]
    count: usize,
    /// `LABEL=FILE`: the request log of the S3 relay in front of target LABEL's S3 server;
    /// the lines a timed phase adds are its S3 requests. Repeat it per target.
    #[arg(long = "s3-log")]
    s3_logs: Vec<String>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    PushMono(usize),
    PushChunked(usize),
    ManifestPut,
    Pull(usize),
    ManifestGet,
    ManifestHead,
    Catalog,
    Mixed,
}

fn parse_kind(name: &str) -> Option<Kind> {
    Some(match name {
        "push-mono-1m" => Kind::PushMono(MIB),
        "push-mono-64m" => Kind::PushMono(64 * MIB),
        "push-mono-256m" => Kind::PushMono(256 * MIB),
        "push-chunked-1m" => Kind::PushChunked(MIB),
        "push-chunked-64m" => Kind::PushChunked(64 * MIB),
        "manifest-put" => Kind::ManifestPut,
        "pull-1m" => Kind::Pull(MIB),
        "pull-64m" => Kind::Pull(64 * MIB),
        "manifest-get" => Kind::ManifestGet,
        "manifest-head" => Kind::ManifestHead,
        "catalog" => Kind::Catalog,
        "mixed" => Kind::Mixed,
        _ => return None,
    })
}

/// Deterministic blob content: a random base shared by all blobs of one size, made unique by
/// a 16-byte prefix, so blobs cost no client CPU to produce and no memory per blob.
struct Blobs {
    base: Vec<u8>,
    run: u64,
}

impl Blobs {
    fn new(size: usize, run: u64) -> Blobs {
        let mut base = vec![0u8; size.max(16)];
        let mut x = run | 1;
        for chunk in base.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let bytes = x.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        base.truncate(size);
        Blobs { base, run }
    }

    fn prefix(&self, i: usize) -> [u8; 16] {
        let mut p = [0u8; 16];
        p[..8].copy_from_slice(&self.run.to_le_bytes());
        p[8..].copy_from_slice(&(i as u64).to_le_bytes());
        p
    }

    /// The blob as two slices: its unique prefix and the shared rest.
    fn parts<'a>(&'a self, prefix: &'a [u8; 16]) -> [&'a [u8]; 2] {
        let cut = self.base.len().min(16);
        [&prefix[..cut], &self.base[cut..]]
    }

    fn digest(&self, i: usize) -> String {
        let prefix = self.prefix(i);
        let mut h = Sha256::new();
        for part in self.parts(&prefix) {
            h.update(part);
        }
        format!("sha256:{}", hex(&h.finalize()))
    }

    /// Digests of blobs `0..n`, computed before timing starts.
    fn digests(&self, n: usize) -> Vec<String> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut out = vec![String::new(); n];
        std::thread::scope(|s| {
            for (t, slot) in out.chunks_mut(n.div_ceil(threads).max(1)).enumerate() {
                let first = t * n.div_ceil(threads).max(1);
                s.spawn(move || {
                    for (j, d) in slot.iter_mut().enumerate() {
                        *d = self.digest(first + j);
                    }
                });
            }
        });
        out
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Target {
    label: String,
    host: String,
    pid: Option<u32>,
    run: u64,
    s3_log: Option<String>,
}

impl Target {
    /// The same target with fresh data and repositories for `round`, so no round re-pushes
    /// what an earlier one stored.
    fn for_round(&self, round: usize) -> Target {
        Target {
            label: self.label.clone(),
            host: self.host.clone(),
            pid: self.pid,
            run: self.run.wrapping_add(round as u64 * 7919),
            s3_log: self.s3_log.clone(),
        }
    }

    fn parse(spec: &str, run: u64) -> Result<Target, String> {
        let (label, rest) = spec
            .split_once('=')
            .ok_or_else(|| format!("--target {spec:?}: expected LABEL=URL[@PID]"))?;
        let (url, pid) = match rest.rsplit_once('@') {
            Some((u, p)) => (
                u,
                Some(p.parse().map_err(|_| format!("bad pid in {spec:?}"))?),
            ),
            None => (rest, None),
        };
        let host = url
            .trim_end_matches('/')
            .strip_prefix("http://")
            .ok_or_else(|| format!("--target {spec:?}: the URL must start with http://"))?;
        Ok(Target {
            label: label.to_string(),
            host: host.to_string(),
            pid,
            run,
            s3_log: None,
        })
    }
}

impl Target {
    fn repo(&self, workload: &str) -> String {
        format!("bench{}/{workload}", self.run % 100_000)
    }
}

fn expect(resp: std::io::Result<http::Response>, ok: &[u16]) -> Result<http::Response, String> {
    match resp {
        Ok(r) if ok.contains(&r.status) => Ok(r),
        Ok(r) => Err(format!("status {}", r.status)),
        Err(e) => Err(e.to_string()),
    }
}

/// POST a session, then PUT the whole blob (`chunks == 1`) or PATCH it in `chunks` pieces
/// and close with an empty PUT.
fn push_blob(
    conn: &mut Connection,
    repo: &str,
    parts: [&[u8]; 2],
    digest: &str,
    chunks: usize,
) -> Result<(), String> {
    let start = expect(
        conn.send(
            "POST",
            &format!("/v2/{repo}/blobs/uploads/"),
            &[],
            &[],
            false,
        ),
        &[202],
    )?;
    let mut location = start.header("location").ok_or("no Location")?.to_string();
    let sep = |l: &str| if l.contains('?') { '&' } else { '?' };
    if chunks <= 1 {
        let url = format!("{location}{}digest={digest}", sep(&location));
        let ct = [("Content-Type", "application/octet-stream")];
        expect(conn.send("PUT", &url, &ct, &parts, false), &[201])?;
        return Ok(());
    }
    let whole: Vec<&[u8]> = parts.to_vec();
    let total: usize = whole.iter().map(|p| p.len()).sum();
    let chunk = total.div_ceil(chunks);
    let mut offset = 0;
    while offset < total {
        let end = (offset + chunk).min(total);
        let pieces = slice_range(&whole, offset, end);
        let range = format!("{}-{}", offset, end - 1);
        let headers = [
            ("Content-Type", "application/octet-stream"),
            ("Content-Range", range.as_str()),
        ];
        let r = expect(
            conn.send("PATCH", &location, &headers, &pieces, false),
            &[202],
        )?;
        location = r.header("location").ok_or("no Location")?.to_string();
        offset = end;
    }
    let url = format!("{location}{}digest={digest}", sep(&location));
    expect(conn.send("PUT", &url, &[], &[], false), &[201])?;
    Ok(())
}

/// The bytes `start..end` of the concatenation of `parts`, as sub-slices.
fn slice_range<'a>(parts: &[&'a [u8]], start: usize, end: usize) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut pos = 0;
    for p in parts {
        let (a, b) = (pos, pos + p.len());
        let (s, e) = (start.max(a), end.min(b));
        if s < e {
            out.push(&p[s - a..e - a]);
        }
        pos = b;
    }
    out
}

fn manifest_json(
    config: &str,
    config_size: usize,
    layer: &str,
    layer_size: usize,
    note: usize,
) -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":{config_size}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":{layer_size}}}],"annotations":{{"bench.op":"{note}"}}}}"#
    )
}

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// What one workload needs prepared before its timed phase.
struct Prepared {
    blobs: Blobs,
    digests: Vec<String>,
    /// Config and layer digests for manifest workloads.
    image: Option<(String, usize, String, usize)>,
}

fn prepare(target: &Target, kind: Kind, repo: &str, count: usize) -> Result<Prepared, String> {
    let mut conn = Connection::new(&target.host);
    let size = match kind {
        Kind::PushMono(s) | Kind::PushChunked(s) | Kind::Pull(s) => s,
        Kind::Mixed => MIB,
        _ => 1024,
    };
    // Seeded by the repository too: workloads of one size (push-mono-1m, push-chunked-1m)
    // would otherwise push the same blobs, and the second would push blobs the server holds.
    let repo_seed = repo.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let blobs = Blobs::new(size, target.run ^ size as u64 ^ repo_seed);
    let digests = blobs.digests(count + PULL_SET);
    let pulls = matches!(kind, Kind::Pull(_) | Kind::Mixed);
    if pulls {
        // Pull sets live after the push indices so a mixed run's pushes are all new.
        for (i, digest) in digests.iter().enumerate().skip(count) {
            let prefix = blobs.prefix(i);
            push_blob(&mut conn, repo, blobs.parts(&prefix), digest, 1)?;
        }
    }
    let image = if matches!(
        kind,
        Kind::ManifestPut | Kind::ManifestGet | Kind::ManifestHead
    ) {
        let config = format!("{{\"bench\":{}}}", target.run);
        let config_digest = format!("sha256:{}", hex(&Sha256::digest(config.as_bytes())));
        push_blob(&mut conn, repo, [config.as_bytes(), &[]], &config_digest, 1)?;
        let prefix = blobs.prefix(count);
        push_blob(&mut conn, repo, blobs.parts(&prefix), &digests[count], 1)?;
        let image = (
            config_digest,
            config.len(),
            digests[count].clone(),
            blobs.base.len(),
        );
        if !matches!(kind, Kind::ManifestPut) {
            let body = manifest_json(&image.0, image.1, &image.2, image.3, 0);
            expect(
                conn.send(
                    "PUT",
                    &format!("/v2/{repo}/manifests/latest"),
                    &[("Content-Type", MANIFEST_TYPE)],
                    &[body.as_bytes()],
                    false,
                ),
                &[201],
            )?;
        }
        Some(image)
    } else {
        None
    };
    Ok(Prepared {
        blobs,
        digests,
        image,
    })
}

/// One operation; returns the payload bytes moved.
fn run_op(
    conn: &mut Connection,
    kind: Kind,
    repo: &str,
    i: usize,
    count: usize,
    p: &Prepared,
) -> Result<u64, String> {
    let pull = |conn: &mut Connection, j: usize| -> Result<u64, String> {
        let d = &p.digests[count + j % PULL_SET];
        let r = expect(
            conn.send("GET", &format!("/v2/{repo}/blobs/{d}"), &[], &[], false),
            &[200],
        )?;
        if r.body_len != p.blobs.base.len() as u64 {
            return Err(format!("short body {}", r.body_len));
        }
        Ok(r.body_len)
    };
    let push = |conn: &mut Connection, chunks: usize| -> Result<u64, String> {
        let prefix = p.blobs.prefix(i);
        push_blob(conn, repo, p.blobs.parts(&prefix), &p.digests[i], chunks)?;
        Ok(p.blobs.base.len() as u64)
    };
    match kind {
        Kind::PushMono(_) => push(conn, 1),
        Kind::PushChunked(_) => push(conn, 4),
        Kind::Pull(_) => pull(conn, i),
        Kind::Mixed if i.is_multiple_of(5) => push(conn, 1),
        Kind::Mixed => pull(conn, i),
        Kind::ManifestPut => {
            let (c, cs, l, ls) = p.image.as_ref().expect("prepared");
            let body = manifest_json(c, *cs, l, *ls, i + 1);
            expect(
                conn.send(
                    "PUT",
                    &format!("/v2/{repo}/manifests/t{i}"),
                    &[("Content-Type", MANIFEST_TYPE)],
                    &[body.as_bytes()],
                    false,
                ),
                &[201],
            )?;
            Ok(body.len() as u64)
        }
        Kind::ManifestGet | Kind::ManifestHead => {
            let method = if matches!(kind, Kind::ManifestGet) {
                "GET"
            } else {
                "HEAD"
            };
            let r = expect(
                conn.send(
                    method,
                    &format!("/v2/{repo}/manifests/latest"),
                    &[("Accept", MANIFEST_TYPE)],
                    &[],
                    false,
                ),
                &[200],
            )?;
            Ok(r.body_len)
        }
        Kind::Catalog => {
            let r = expect(
                conn.send("GET", "/v2/_catalog?n=100", &[], &[], false),
                &[200],
            )?;
            Ok(r.body_len)
        }
    }
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the file, 12 and 13 after the comm; USER_HZ
    // is 100 on every Linux architecture berth targets.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// Starts a new peak-RSS measurement of a process (`5` to clear_refs resets VmHWM), so each
/// workload reports its own peak rather than the highest since the server started.
fn reset_peak_rss(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// The S3 requests in the relay's log after byte `from`, counted by operation (the first word
/// of each line).
fn s3_requests_since(log: &str, from: u64) -> Result<BTreeMap<String, u64>, String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(log).map_err(|e| format!("{log}: {e}"))?;
    file.seek(SeekFrom::Start(from))
        .map_err(|e| format!("{log}: {e}"))?;
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| format!("{log}: {e}"))?;
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let op = line.split(' ').next().unwrap_or_default();
        *counts.entry(op.to_string()).or_insert(0) += 1;
    }
    Ok(counts)
}

fn log_len(log: &str) -> Result<u64, String> {
    std::fs::metadata(log)
        .map(|m| m.len())
        .map_err(|e| format!("{log}: {e}"))
}

/// Peak resident memory of a process in MiB (VmHWM).
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

impl Outcome {
    fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.seconds
    }

    fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / MIB as f64 / self.seconds
    }
}

struct Outcome {
    workload: String,
    concurrency: usize,
    ops: usize,
    errors: usize,
    first_error: Option<String>,
    seconds: f64,
    bytes: u64,
    /// Latency of every successful operation, sorted.
    latencies: Vec<Duration>,
    /// Server CPU seconds used during the timed phase.
    cpu_seconds: Option<f64>,
    peak_rss_mib: Option<f64>,
    /// S3 requests of the timed phase by operation, when the target's relay log is given.
    s3_requests: Option<BTreeMap<String, u64>>,
}

impl Outcome {
    fn percentile_ms(&self, q: f64) -> f64 {
        let i = ((self.latencies.len() as f64 * q) as usize)
            .min(self.latencies.len().saturating_sub(1));
        self.latencies
            .get(i)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    }

    fn cpu_ms_per_op(&self) -> Option<f64> {
        self.cpu_seconds.map(|c| c * 1000.0 / self.ops as f64)
    }

    /// Adds another round of the same workload on the same target.
    fn merge(&mut self, other: Outcome) {
        self.ops += other.ops;
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
        self.seconds += other.seconds;
        self.bytes += other.bytes;
        self.latencies.extend(other.latencies);
        self.latencies.sort();
        self.cpu_seconds = self.cpu_seconds.zip(other.cpu_seconds).map(|(a, b)| a + b);
        self.peak_rss_mib = match (self.peak_rss_mib, other.peak_rss_mib) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.s3_requests = match (self.s3_requests.take(), other.s3_requests) {
            (Some(mut a), Some(b)) => {
                for (op, n) in b {
                    *a.entry(op).or_insert(0) += n;
                }
                Some(a)
            }
            (a, b) => a.or(b),
        };
    }

    /// S3 requests per operation, by S3 operation, as `Op n.nn` pairs, and their total.
    fn s3_per_op(&self) -> Option<(f64, String)> {
        let counts = self.s3_requests.as_ref()?;
        let per = |n: u64| n as f64 / self.ops as f64;
        let total = per(counts.values().sum());
        let parts: Vec<String> = counts
            .iter()
            .map(|(op, n)| format!("{op} {:.2}", per(*n)))
            .collect();
        Some((total, parts.join(", ")))
    }
}

fn run_workload(
    target: &Target,
    name: &str,
    kind: Kind,
    concurrency: usize,
    count: usize,
) -> Result<Outcome, String> {
    let repo = target.repo(name);
    let prepared = prepare(target, kind, &repo, count)?;
    let next = AtomicUsize::new(0);
    let s3_from = target.s3_log.as_deref().map(log_len).transpose()?;
    if let Some(pid) = target.pid {
        reset_peak_rss(pid);
    }
    let cpu_before = target.pid.and_then(cpu_seconds);
    let started = Instant::now();
    let results: Vec<(Vec<Duration>, u64, usize, Option<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..concurrency)
            .map(|_| {
                s.spawn(|| {
                    let mut conn = Connection::new(&target.host);
                    let (mut lat, mut bytes, mut errors, mut first) =
                        (Vec::new(), 0u64, 0usize, None);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= count {
                            break;
                        }
                        let t = Instant::now();
                        match run_op(&mut conn, kind, &repo, i, count, &prepared) {
                            Ok(b) => {
                                bytes += b;
                                lat.push(t.elapsed());
                            }
                            Err(e) => {
                                errors += 1;
                                first.get_or_insert(e);
                            }
                        }
                    }
                    (lat, bytes, errors, first)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker"))
            .collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    let cpu_after = target.pid.and_then(cpu_seconds);
    let s3_requests = match (target.s3_log.as_deref(), s3_from) {
        (Some(log), Some(from)) => Some(s3_requests_since(log, from)?),
        _ => None,
    };
    let mut latencies: Vec<Duration> = results.iter().flat_map(|r| r.0.iter().copied()).collect();
    latencies.sort();
    Ok(Outcome {
        workload: name.to_string(),
        concurrency,
        ops: count,
        errors: results.iter().map(|r| r.2).sum(),
        first_error: results.iter().find_map(|r| r.3.clone()),
        seconds,
        bytes: results.iter().map(|r| r.1).sum(),
        latencies,
        cpu_seconds: cpu_before.zip(cpu_after).map(|(a, b)| b - a),
        peak_rss_mib: target.pid.and_then(peak_rss_mib),
        s3_requests,
    })
}

fn main() {
    let args = Args::parse();
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let targets: Vec<Target> = args
        .targets
        .iter()
        .map(|t| Target::parse(t, run))
        .collect::<Result<Vec<Target>, _>>()
        .and_then(|mut targets| attach_s3_logs(&mut targets, &args.s3_logs).map(|()| targets))
        .unwrap_or_else(|e| {
            eprintln!("load: {e}");
            std::process::exit(2)
        });
    let mut outcomes: Vec<Vec<Outcome>> = targets.iter().map(|_| Vec::new()).collect();
    for spec in args.workloads.split(',').filter(|s| !s.is_empty()) {
        let mut fields = spec.split(':');
        let name = fields.next().unwrap_or_default();
        let mut number = |default: usize| -> usize {
            match fields.next() {
                None => default,
                Some(v) => v.parse().unwrap_or_else(|_| {
                    eprintln!("load: {spec:?}: {v:?} is not a number");
                    std::process::exit(2)
                }),
            }
        };
        let c = number(args.concurrency);
        let count = number(args.count);
        let Some(kind) = parse_kind(name) else {
            eprintln!("load: unknown workload {name:?}");
            std::process::exit(2);
        };
        let mut merged: Vec<Option<Outcome>> = targets.iter().map(|_| None).collect();
        for round in 0..args.rounds {
            // Alternate the order: the target measured first in a pair runs slower here.
            let mut order: Vec<usize> = (0..targets.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for t in order {
                let target = targets[t].for_round(round);
                let o = run_workload(&target, name, kind, c, count).unwrap_or_else(|e| {
                    eprintln!("load: {}: {name}: setup failed: {e}", target.label);
                    std::process::exit(1)
                });
                println!(
                    "{}",
                    serde_json::json!({
                        "target": target.label, "round": round, "workload": o.workload,
                        "concurrency": o.concurrency, "ops": o.ops, "errors": o.errors,
                        "first_error": o.first_error, "seconds": o.seconds,
                        "ops_per_s": o.ops_per_s(), "mib_per_s": o.mib_per_s(),
                        "p50_ms": o.percentile_ms(0.5), "p99_ms": o.percentile_ms(0.99),
                        "server_cpu_ms_per_op": o.cpu_ms_per_op(),
                        "server_peak_rss_mib": o.peak_rss_mib,
                        "s3_requests": o.s3_requests,
                    })
                );
                match &mut merged[t] {
                    Some(m) => m.merge(o),
                    slot @ None => *slot = Some(o),
                }
            }
        }
        for (done, o) in outcomes.iter_mut().zip(merged) {
            done.push(o.expect("at least one round"));
        }
    }
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.2}"));
    for (target, done) in targets.iter().zip(&outcomes) {
        eprintln!(
            "\n{}\n{:<18} {:>4} {:>6} {:>6} {:>10} {:>9} {:>9} {:>9} {:>11} {:>9}",
            target.label,
            "workload",
            "C",
            "ops",
            "errors",
            "ops/s",
            "MiB/s",
            "p50 ms",
            "p99 ms",
            "cpu ms/op",
            "rss MiB"
        );
        for o in done {
            eprintln!(
                "{:<18} {:>4} {:>6} {:>6} {:>10.1} {:>9.1} {:>9.2} {:>9.2} {:>11} {:>9}",
                o.workload,
                o.concurrency,
                o.ops,
                o.errors,
                o.ops_per_s(),
                o.mib_per_s(),
                o.percentile_ms(0.5),
                o.percentile_ms(0.99),
                opt(o.cpu_ms_per_op()),
                opt(o.peak_rss_mib)
            );
        }
    }
    for (target, done) in targets.iter().zip(&outcomes) {
        if target.s3_log.is_none() {
            continue;
        }
        eprintln!(
            "\n{}: S3 requests per operation (timed phases, counted at the S3 server)\n{:<18} {:>7}  by S3 operation",
            target.label, "workload", "total"
        );
        for o in done {
            if let Some((total, parts)) = o.s3_per_op() {
                eprintln!("{:<18} {:>7.2}  {parts}", o.workload, total);
            }
        }
    }
    for (a, b) in ratio_pairs(outcomes.len()) {
        eprintln!(
            "\n{} / {}\n{:<18} {:>4} {:>12} {:>14}",
            targets[a].label, targets[b].label, "workload", "C", "ops/s ratio", "cpu/op ratio"
        );
        for (x, y) in outcomes[a].iter().zip(&outcomes[b]) {
            let cpu = match (x.cpu_ms_per_op(), y.cpu_ms_per_op()) {
                (Some(x), Some(y)) if y > 0.0 => Some(x / y),
                _ => None,
            };
            eprintln!(
                "{:<18} {:>4} {:>11.2}x {:>14}",
                x.workload,
                x.concurrency,
                x.ops_per_s() / y.ops_per_s(),
                opt(cpu)
            );
        }
    }
}

/// Gives each `--s3-log LABEL=FILE` to the target of that label.
fn attach_s3_logs(targets: &mut [Target], logs: &[String]) -> Result<(), String> {
    for spec in logs {
        let (label, file) = spec
            .split_once('=')
            .ok_or_else(|| format!("--s3-log {spec:?}: expected LABEL=FILE"))?;
        let target = targets
            .iter_mut()
            .find(|t| t.label == label)
            .ok_or_else(|| format!("--s3-log {spec:?}: no target labelled {label:?}"))?;
        target.s3_log = Some(file.to_string());
    }
    Ok(())
}

/// Which targets' ratios to print: every target against the last (the reference, such as
/// distribution), and with three or more also the first against the second (a build against
/// the build before it).
fn ratio_pairs(targets: usize) -> Vec<(usize, usize)> {
    let Some(last) = targets.checked_sub(1) else {
        return Vec::new();
    };
    let mut pairs: Vec<(usize, usize)> = (0..last).map(|i| (i, last)).collect();
    if targets > 2 {
        pairs.push((0, 1));
    }
    pairs
}
