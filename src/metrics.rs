//! `Metrics`: what berth counts while it serves, and its rendering in the Prometheus text
//! exposition format (`extensions.metrics`). Names are zot's where zot has the metric
//! (`zot_http_requests_total`, `zot_http_method_latency_seconds`, `zot_repo_downloads_total`,
//! `zot_repo_uploads_total`, `zot_info`), so dashboards made for zot work; `berth_` names
//! what zot lacks. Counting is lock-free on the request path (atomics in fixed tables; a
//! repository's counters are found under a read lock, created once under the write lock).
//! Store state (cache outages) is read from the stores when the page is rendered.

use crate::http::route::Method;
use crate::storage::{CacheHealth, Registry};
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

/// The methods counted apart; anything else counts as `OTHER`.
const METHODS: [&str; 7] = ["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OTHER"];

/// Status codes are counted by their number, 100 to 599.
const CODES: std::ops::Range<u16> = 100..600;

/// Upper bounds of the latency histogram's buckets, in seconds (Prometheus' defaults).
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// One method's request latencies.
#[derive(Default)]
struct Histogram {
    /// Requests at or under each bound (cumulative at render).
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// In microseconds, so the sum adds up without a lock.
    sum_micros: AtomicU64,
}

/// A repository's counters.
#[derive(Default)]
struct RepoCounters {
    downloads: AtomicU64,
    uploads: AtomicU64,
}

/// Everything counted, for the life of the process.
pub(crate) struct Metrics {
    /// Per method, per status code (`CODES`).
    requests: Vec<Vec<AtomicU64>>,
    latency: Vec<Histogram>,
    repos: RwLock<HashMap<String, RepoCounters>>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            requests: METHODS
                .iter()
                .map(|_| CODES.map(|_| AtomicU64::new(0)).collect())
                .collect(),
            latency: METHODS.iter().map(|_| Histogram::default()).collect(),
            repos: RwLock::default(),
        }
    }
}

fn method_index(method: Method) -> usize {
    match method {
        Method::Get => 0,
        Method::Head => 1,
        Method::Put => 2,
        Method::Post => 3,
        Method::Patch => 4,
        Method::Delete => 5,
        Method::Other => 6,
    }
}

impl Metrics {
    /// Counts one answered request.
    pub(crate) fn request(&self, method: Method, status: u16, elapsed: Duration) {
        let m = method_index(method);
        if CODES.contains(&status) {
            self.requests[m][usize::from(status - CODES.start)].fetch_add(1, Relaxed);
        }
        let histogram = &self.latency[m];
        let seconds = elapsed.as_secs_f64();
        if let Some(bucket) = BUCKETS.iter().position(|&bound| seconds <= bound) {
            histogram.buckets[bucket].fetch_add(1, Relaxed);
        }
        histogram.count.fetch_add(1, Relaxed);
        histogram
            .sum_micros
            .fetch_add(elapsed.as_micros() as u64, Relaxed);
    }

    /// Counts a manifest served from `repo` (zot counts manifest GETs as downloads).
    pub(crate) fn download(&self, repo: &str) {
        self.repo(repo, |c| c.downloads.fetch_add(1, Relaxed));
    }

    /// Counts a manifest stored in `repo`.
    pub(crate) fn upload(&self, repo: &str) {
        self.repo(repo, |c| c.uploads.fetch_add(1, Relaxed));
    }

    fn repo(&self, repo: &str, count: impl Fn(&RepoCounters) -> u64) {
        if let Some(counters) = self
            .repos
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(repo)
        {
            count(counters);
            return;
        }
        let mut repos = self.repos.write().unwrap_or_else(PoisonError::into_inner);
        count(repos.entry(repo.to_string()).or_default());
    }

    /// The metrics page: every counter, and the stores' state now.
    pub(crate) fn render(&self, registry: &Registry) -> String {
        let mut out = String::new();
        self.render_requests(&mut out);
        self.render_repos(&mut out);
        render_caches(&mut out, registry);
        header(&mut out, "zot_info", "gauge", "Build information.");
        let _ = writeln!(
            out,
            "zot_info{{binaryType=\"berth\",commit=\"{}\",goVersion=\"\",version=\"{}\"}} 1",
            option_env!("BERTH_COMMIT").unwrap_or("unknown"),
            env!("CARGO_PKG_VERSION"),
        );
        out
    }

    fn render_requests(&self, out: &mut String) {
        header(
            out,
            "zot_http_requests_total",
            "counter",
            "Requests answered, by method and status code.",
        );
        for (m, method) in METHODS.iter().enumerate() {
            for (i, count) in self.requests[m].iter().enumerate() {
                let n = count.load(Relaxed);
                if n > 0 {
                    let code = CODES.start as usize + i;
                    let _ = writeln!(
                        out,
                        "zot_http_requests_total{{code=\"{code}\",method=\"{method}\"}} {n}"
                    );
                }
            }
        }
        header(
            out,
            "zot_http_method_latency_seconds",
            "histogram",
            "Time from a request reaching a worker to its answer's last byte sent, by method.",
        );
        for (m, method) in METHODS.iter().enumerate() {
            let histogram = &self.latency[m];
            let count = histogram.count.load(Relaxed);
            if count == 0 {
                continue;
            }
            let mut cumulative = 0;
            for (bound, bucket) in BUCKETS.iter().zip(&histogram.buckets) {
                cumulative += bucket.load(Relaxed);
                let _ = writeln!(
                    out,
                    "zot_http_method_latency_seconds_bucket{{method=\"{method}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let sum = histogram.sum_micros.load(Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "zot_http_method_latency_seconds_bucket{{method=\"{method}\",le=\"+Inf\"}} {count}\n\
                 zot_http_method_latency_seconds_sum{{method=\"{method}\"}} {sum}\n\
                 zot_http_method_latency_seconds_count{{method=\"{method}\"}} {count}"
            );
        }
    }

    fn render_repos(&self, out: &mut String) {
        let repos = self.repos.read().unwrap_or_else(PoisonError::into_inner);
        let mut names: Vec<&String> = repos.keys().collect();
        names.sort();
        for (name, help, pick) in [
            (
                "zot_repo_downloads_total",
                "Manifests served, by repository.",
                (|c: &RepoCounters| c.downloads.load(Relaxed)) as fn(&RepoCounters) -> u64,
            ),
            (
                "zot_repo_uploads_total",
                "Manifests stored, by repository.",
                |c: &RepoCounters| c.uploads.load(Relaxed),
            ),
        ] {
            header(out, name, "counter", help);
            for repo in &names {
                let n = pick(&repos[*repo]);
                if n > 0 {
                    let _ = writeln!(out, "{name}{{repo=\"{}\"}} {n}", label(repo));
                }
            }
        }
    }
}

/// A metric of the caches: its name, type and help, and its value for one cache.
struct CacheSeries(
    &'static str,
    &'static str,
    &'static str,
    fn(&CacheHealth) -> u64,
);

/// Each store's caches: available or not, and how many outages each had.
fn render_caches(out: &mut String, registry: &Registry) {
    let states: Vec<(String, CacheHealth)> = registry
        .stores_by_route()
        .flat_map(|(route, store)| {
            store
                .cache_health()
                .into_iter()
                .map(move |h| (format!("/{}", route.join("/")), h))
        })
        .collect();
    let series = [
        CacheSeries(
            "berth_cache_available",
            "gauge",
            "1 while a store's cache answers, 0 during an outage (the store then stores without dedupe).",
            |h| u64::from(h.down_for.is_none()),
        ),
        CacheSeries(
            "berth_cache_outages_total",
            "counter",
            "Outages of a store's cache since the start.",
            |h| h.outages,
        ),
    ];
    for CacheSeries(name, kind, help, value) in series {
        header(out, name, kind, help);
        for (store, health) in &states {
            let _ = writeln!(
                out,
                "{name}{{concern=\"{}\",store=\"{}\"}} {}",
                health.concern,
                label(store),
                value(health)
            );
        }
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value escaped as the text format asks (backslash, quote, newline).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
