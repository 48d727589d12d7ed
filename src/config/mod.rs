//! Configuration: zot's JSON file format read into `RawConfig`, then resolved into the typed,
//! complete `Config` the rest of berth is built from. Resolution does no I/O.
//!
//! Errors name the file and the full key path. zot keys whose feature berth does not build
//! yet are refused by name rather than ignored, so a zot config never silently means less.

pub mod cache;
mod duration;
pub mod dynamodb;
pub mod gc;
mod raw;
pub mod redis;
pub mod s3;

pub use cache::CacheBackend;
use raw::{RawConfig, RawPort};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The config used when `berth serve` gets no file: local storage, no services needed.
pub const EMBEDDED_DEFAULT: &str = r#"{
  "distSpecVersion": "1.1.1",
  "storage": { "rootDirectory": "./berth-data" },
  "http": { "address": "127.0.0.1", "port": "5000" },
  "log": { "level": "info" }
}"#;

/// A config problem, naming the key (and the file, when there is one).
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct ConfigError {
    source_name: String,
    message: String,
}

/// The resolved configuration.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    /// The distribution spec version reported (informational, as in zot).
    pub dist_spec_version: String,
    /// Storage.
    pub storage: StorageConfig,
    /// HTTP listener.
    pub http: HttpConfig,
    /// Logging.
    pub log: LogConfig,
    /// zot extensions berth builds.
    pub extensions: Extensions,
    /// Settings that are valid but have no effect, to be logged at start-up.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// The `extensions` section.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Extensions {
    /// Background scrub.
    pub scrub: gc::ScrubConfig,
    /// The Prometheus page.
    pub metrics: MetricsConfig,
}

/// `extensions.metrics`.
#[derive(Debug, Clone, Serialize)]
pub struct MetricsConfig {
    /// Whether requests are counted and the page served.
    pub enable: bool,
    /// `prometheus.path`: where the page is served.
    #[serde(rename = "prometheus", serialize_with = "serialize_prometheus_path")]
    pub path: String,
}

impl Default for MetricsConfig {
    fn default() -> MetricsConfig {
        MetricsConfig {
            enable: false,
            path: "/metrics".into(),
        }
    }
}

fn serialize_prometheus_path<S: serde::Serializer>(path: &str, s: S) -> Result<S::Ok, S::Error> {
    serde_json::json!({ "path": path }).serialize(s)
}

/// Storage: the default store and the stores routed by repository prefix.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StorageConfig {
    /// The store of every repository no sub-path route matches.
    #[serde(flatten)]
    pub default: StoreConfig,
    /// zot's `subPaths`: a route (`/a` or `/a/b`) and its store.
    #[serde(serialize_with = "serialize_routes")]
    pub sub_paths: Vec<(SubPath, StoreConfig)>,
}

/// The settings of one store (one root directory).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreConfig {
    /// The root directory holding one OCI layout per repository.
    pub root_directory: PathBuf,
    /// fsync data and directories before acknowledging writes.
    pub commit: bool,
    /// Keep one copy of each blob in the store: hard links plus the embedded cache.
    pub dedupe: bool,
    /// Where the store keeps its layouts, and how.
    #[serde(flatten)]
    pub backend: StorageBackend,
    /// Where its dedupe index, usage times and markers live. Printed by nothing: the embedded
    /// cache is what a config without `cacheDriver` (or with zot's `boltdb`) means.
    #[serde(skip)]
    pub cache: CacheBackend,
    /// berth only, `leaseTtl`: how long a sweep's lease holds without a renewal, where a
    /// shared cache gives the store leases; `None` is the storage default. Short in tests,
    /// so a killed holder's sweeps are taken over soon.
    #[serde(skip)]
    pub lease_ttl: Option<std::time::Duration>,
    /// Garbage collection and retention (zot's `gc*` keys and `retention`).
    #[serde(flatten)]
    pub gc: gc::GcConfig,
}

/// A store's storage backend, as the composition root (`app`) builds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum StorageBackend {
    /// Files under `rootDirectory`.
    Local {
        /// How upload bytes are written (`storage.writer`, berth only).
        writer: UploadWriter,
    },
    /// Objects in an S3 bucket (zot's `storageDriver`); `rootDirectory` keeps the store's
    /// embedded cache and lock, as zot keeps its cache there.
    S3 {
        /// zot's `storageDriver` attributes.
        #[serde(rename = "storageDriver")]
        storage_driver: Box<s3::S3Settings>,
    },
}

/// How a local store's upload bytes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UploadWriter {
    /// `io_uring` where the filesystem supports O_DIRECT and io_uring is allowed, `direct`
    /// where only O_DIRECT is, else `buffered`.
    Auto,
    /// Whole blocks with O_DIRECT, the tail buffered.
    Direct,
    /// Positioned buffered writes.
    Buffered,
    /// O_DIRECT writes from registered buffers, several in flight, through an io_uring ring.
    IoUring,
}

/// One `subPaths` entry: the leading repository-name segments it matches (`/a/b` → `a`, `b`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubPath {
    /// The entry as written in the config file, for messages.
    pub key: String,
    /// Its segments.
    pub segments: Vec<String>,
}

fn serialize_routes<S: serde::Serializer>(
    routes: &[(SubPath, StoreConfig)],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(routes.iter().map(|(r, c)| (&r.key, c)))
}

impl SubPath {
    fn parse(key: &str) -> Result<SubPath, String> {
        let bad = |why: &str| format!("storage.subPaths.{key}: {why}");
        let Some(rest) = key.strip_prefix('/') else {
            return Err(bad("a route starts with '/', as in \"/a\""));
        };
        let segments: Vec<String> = rest
            .trim_end_matches('/')
            .split('/')
            .map(str::to_string)
            .collect();
        if segments.iter().any(|s| s.is_empty()) {
            return Err(bad("a route needs at least one non-empty segment"));
        }
        if let Some(s) = segments
            .iter()
            .find(|s| s.parse::<crate::oci::RepoName>().is_err())
        {
            return Err(bad(&format!(
                "{s:?} cannot begin a repository name (lower-case letters, digits and separators)"
            )));
        }
        Ok(SubPath {
            key: key.to_string(),
            segments,
        })
    }
}

/// HTTP listener settings.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpConfig {
    /// Host or IP address to bind.
    pub address: String,
    /// Port (0 picks a free one).
    pub port: u16,
    /// Longest a connection may stall while sending a request.
    #[serde(serialize_with = "serialize_duration")]
    pub read_timeout: Duration,
    /// Longest a send to a stalled client may block.
    #[serde(serialize_with = "serialize_duration")]
    pub write_timeout: Duration,
    /// Request worker threads.
    pub workers: usize,
    /// Workers only requests without a body may use, so uploads cannot take every worker.
    pub reserved_workers: usize,
    /// Connections served at once; `None` sizes it from the open files limit at start-up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// A request body must arrive at this many bytes per second on average (0: no check).
    pub body_min_rate: u64,
    /// How long a body may stay under `body_min_rate` before the check applies.
    #[serde(serialize_with = "serialize_duration")]
    pub body_rate_grace: Duration,
    /// How long a stop (SIGTERM, SIGINT) lets requests in flight finish before exiting.
    #[serde(serialize_with = "serialize_duration")]
    pub shutdown_timeout: Duration,
}

/// Logging settings.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogConfig {
    /// trace, debug, info, warn or error.
    pub level: String,
    /// Append logs to this file instead of stderr.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<PathBuf>,
}

pub(crate) fn serialize_duration<S: serde::Serializer>(
    d: &Duration,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(&duration::format(*d))
}

const LOG_LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

/// Default workers kept for requests without a body: a quarter, so uploads keep most of
/// them, and at least one whenever there are two.
fn default_reserved_workers(workers: usize) -> usize {
    if workers < 2 { 0 } else { (workers / 4).max(1) }
}

/// Default minimum body rate and its grace, Apache mod_reqtimeout's `body=20,MinRate=500`:
/// a client on the slowest link still uploads, one that dribbles bytes to hold a worker
/// does not for long.
const DEFAULT_BODY_MIN_RATE: u64 = 500;
const DEFAULT_BODY_RATE_GRACE: Duration = Duration::from_secs(20);
/// Kubernetes' default termination grace period: a stop finishes within it.
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Default request workers: request threads block on sockets and disks, not CPUs, so there
/// are several per core; slow clients are bounded by `readTimeout` instead.
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()) * 8
}

impl Config {
    /// Reads and resolves a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source_name: name.clone(),
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, &name)
    }

    /// The embedded default config.
    pub fn embedded_default() -> Config {
        Config::parse(EMBEDDED_DEFAULT, "embedded default").expect("the default config is valid")
    }

    /// Parses and resolves config text; `source_name` prefixes every error. Every problem
    /// is reported at once, one per line: unknown keys and values of the wrong type (each
    /// taken out of the file and the rest read again), then the first problem of each
    /// section.
    pub fn parse(text: &str, source_name: &str) -> Result<Config, ConfigError> {
        let err = |problems: Vec<String>| ConfigError {
            source_name: source_name.to_string(),
            message: problems.join(&format!("\n{source_name}: ")),
        };
        let mut value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| err(vec![format!("not valid JSON: {e}")]))?;
        let mut problems = Vec::new();
        // A key given twice is lost in `value` (the last one wins), so the text itself is
        // read once for that.
        let de = &mut serde_json::Deserializer::from_str(text);
        if let Err(e) = serde_path_to_error::deserialize::<_, RawConfig>(de)
            && e.inner().to_string().starts_with("duplicate field")
        {
            problems.push(format!("{}: {}", e.path(), e.inner()));
        }
        let raw = loop {
            match serde_path_to_error::deserialize::<_, RawConfig>(&value) {
                Ok(raw) => break Some(raw),
                Err(e) => {
                    let path: Vec<String> = e
                        .path()
                        .iter()
                        .map(|segment| match segment {
                            serde_path_to_error::Segment::Seq { index } => index.to_string(),
                            other => other.to_string(),
                        })
                        .collect();
                    let shown = e.path().to_string();
                    let message = match shown.as_str() {
                        "." => suggest_key(e.inner().to_string()),
                        _ => suggest_key(format!("{shown}: {}", e.inner())),
                    };
                    problems.push(message);
                    // Bounded: each pass takes one key out of the file.
                    if !remove_path(&mut value, &path) || problems.len() >= MAX_PROBLEMS {
                        break None;
                    }
                }
            }
        };
        if let Some(raw) = raw {
            match resolve(raw) {
                Ok(config) if problems.is_empty() => return Ok(config),
                Ok(_) => {}
                Err(more) => problems.extend(more),
            }
        }
        Err(err(problems))
    }
}

/// Most problems one file reports.
const MAX_PROBLEMS: usize = 50;

/// Takes the key (or element) at `path` out of `value`; false when there is none.
fn remove_path(value: &mut serde_json::Value, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut at = value;
    for step in parents {
        let next = match at {
            serde_json::Value::Object(map) => map.get_mut(step),
            serde_json::Value::Array(items) => {
                step.parse::<usize>().ok().and_then(|i| items.get_mut(i))
            }
            _ => None,
        };
        let Some(next) = next else { return false };
        at = next;
    }
    match at {
        serde_json::Value::Object(map) => map.remove(last).is_some(),
        serde_json::Value::Array(items) => match last.parse::<usize>() {
            Ok(i) if i < items.len() => {
                items.remove(i);
                true
            }
            _ => false,
        },
        _ => false,
    }
}

/// Adds "did you mean" to serde's "unknown field `x`, expected one of `a`, `b`" when one of
/// the known keys is a likely typo of `x` (a few edits away, case aside).
fn suggest_key(message: String) -> String {
    let Some((_, rest)) = message.split_once("unknown field `") else {
        return message;
    };
    let Some((unknown, expected)) = rest.split_once('`') else {
        return message;
    };
    let unknown = unknown.to_ascii_lowercase();
    let nearest = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|known| (edit_distance(&unknown, &known.to_ascii_lowercase()), known))
        .min();
    match nearest {
        Some((distance, known)) if distance <= (unknown.len() / 3).max(2) => {
            format!("{message} (did you mean `{known}`?)")
        }
        _ => message,
    }
}

/// Levenshtein distance between `a` and `b`.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

fn not_built(key: &str, what: &str) -> String {
    format!("{key}: {what} is not supported by this berth version; remove the key")
}

/// Refuses `key` when it is present at all.
fn refuse_present<T>(value: &Option<T>, key: &str, what: &str) -> Result<(), String> {
    match value {
        Some(_) => Err(not_built(key, what)),
        None => Ok(()),
    }
}

/// Resolves the settings of one store; `prefix` is its key path (`storage` or
/// `storage.subPaths./a`), `top` whether it is the default store.
fn resolve_store(
    storage: &raw::RawStorage,
    prefix: &str,
    top: bool,
    warnings: &mut Vec<String>,
) -> Result<StoreConfig, String> {
    let key = |name: &str| format!("{prefix}.{name}");
    let root_directory = storage
        .root_directory
        .as_ref()
        .filter(|r| !r.is_empty())
        .ok_or_else(|| format!("{}: required", key("rootDirectory")))?;
    let backend = match &storage.storage_driver {
        Some(driver) => {
            if storage.writer.is_some() {
                return Err(format!(
                    "{}: only for local storage, not beside storageDriver",
                    key("writer")
                ));
            }
            StorageBackend::S3 {
                storage_driver: Box::new(s3::resolve(driver, &key("storageDriver"))?),
            }
        }
        None => StorageBackend::Local {
            writer: storage.writer.unwrap_or(UploadWriter::Auto),
        },
    };
    let cache = cache::resolve(
        storage.remote_cache,
        storage.cache_driver.as_ref(),
        &key,
        root_directory,
        warnings,
    )?;
    let lease_ttl = match storage.lease_ttl.as_deref().map(duration::parse) {
        None => None,
        Some(Ok(ttl)) if !ttl.is_zero() && cache.is_shared() => Some(ttl),
        Some(Ok(_)) if cache.is_shared() => {
            return Err(format!("{}: must be more than 0", key("leaseTtl")));
        }
        Some(Ok(_)) => {
            return Err(format!(
                "{}: only with a shared cache ({}: true)",
                key("leaseTtl"),
                key("remoteCache")
            ));
        }
        Some(Err(e)) => return Err(format!("{}: {e}", key("leaseTtl"))),
    };
    Ok(StoreConfig {
        root_directory: PathBuf::from(root_directory),
        commit: storage.commit.unwrap_or(false),
        dedupe: storage.dedupe.unwrap_or(true),
        backend,
        cache,
        lease_ttl,
        gc: gc::resolve(storage, prefix, top, warnings)?,
    })
}

fn resolve_storage(
    storage: raw::RawStorage,
    warnings: &mut Vec<String>,
) -> Result<StorageConfig, String> {
    let default = resolve_store(&storage, "storage", true, warnings)?;
    refuse_present(&storage.fast_restart, "storage.fastRestart", "zot's metaDB")?;
    refuse_present(&storage.max_repos, "storage.maxRepos", "a repository limit")?;
    let mut sub_paths: Vec<(SubPath, StoreConfig)> = Vec::new();
    for (key, sub) in storage.sub_paths.iter().flatten() {
        let route = SubPath::parse(key)?;
        let prefix = format!("storage.subPaths.{key}");
        for (present, name) in [
            (sub.sub_paths.is_some(), "subPaths"),
            (sub.fast_restart.is_some(), "fastRestart"),
            (sub.max_repos.is_some(), "maxRepos"),
        ] {
            if present {
                return Err(format!(
                    "{prefix}.{name}: only allowed at the top of `storage`"
                ));
            }
        }
        if let Some((other, _)) = sub_paths.iter().find(|(r, _)| r.segments == route.segments) {
            return Err(format!(
                "{prefix}: the same route as storage.subPaths.{}",
                other.key
            ));
        }
        sub_paths.push((route, resolve_store(sub, &prefix, false, warnings)?));
    }
    Ok(StorageConfig { default, sub_paths })
}

/// Resolves every section; the first problem of each section is reported, all sections'
/// problems at once.
fn resolve(raw: RawConfig) -> Result<Config, Vec<String>> {
    let mut warnings = Vec::new();
    let mut problems = Vec::new();
    let mut note = |result: Result<(), String>| {
        if let Err(e) = result {
            problems.push(e);
        }
    };
    let storage = resolve_storage(raw.storage.unwrap_or_default(), &mut warnings);
    let http = resolve_http(raw.http.unwrap_or_default());
    let log = resolve_log(raw.log.unwrap_or_default());
    let extensions = resolve_extensions(raw.extensions);
    note(refuse_present(
        &raw.scheduler,
        "scheduler",
        "zot's task scheduler settings",
    ));
    note(refuse_present(
        &raw.cluster,
        "cluster",
        "scale-out clustering",
    ));
    let (storage, http, log, extensions) = match (storage, http, log, extensions) {
        (Ok(storage), Ok(http), Ok(log), Ok(extensions)) if problems.is_empty() => {
            (storage, http, log, extensions)
        }
        (storage, http, log, extensions) => {
            let mut all: Vec<String> = [storage.err(), http.err(), log.err(), extensions.err()]
                .into_iter()
                .flatten()
                .collect();
            all.extend(problems);
            return Err(all);
        }
    };
    Ok(Config {
        dist_spec_version: raw.dist_spec_version.unwrap_or_else(|| "1.1.1".into()),
        storage,
        http,
        log,
        extensions,
        warnings,
    })
}

fn resolve_http(http: raw::RawHttp) -> Result<HttpConfig, String> {
    let port = match http.port {
        None => 5000,
        Some(RawPort::Number(n)) => {
            u16::try_from(n).map_err(|_| format!("http.port: {n} is not a port"))?
        }
        Some(RawPort::Text(t)) => t
            .trim()
            .parse::<u16>()
            .map_err(|_| format!("http.port: {t:?} is not a port"))?,
    };
    let positive = |value: Option<String>, key: &str, default| -> Result<Duration, String> {
        match value {
            None => Ok(default),
            Some(v) => {
                let d = duration::parse(&v).map_err(|e| format!("{key}: {e}"))?;
                if d.is_zero() {
                    return Err(format!("{key}: must be greater than 0"));
                }
                Ok(d)
            }
        }
    };
    let timeout = |value, key| positive(value, key, Duration::from_secs(60));
    if let Some(other) = http
        .compat
        .iter()
        .flatten()
        .find(|c| c.as_str() != "docker2s2")
    {
        return Err(format!(
            "http.compat: unknown entry {other:?} (only docker2s2)"
        ));
    }
    for (value, key, what) in [
        (&http.external_url, "http.externalURL", "an external URL"),
        (&http.allow_origin, "http.allowOrigin", "CORS"),
        (&http.realm, "http.realm", "authentication"),
        (&http.tls, "http.tls", "TLS"),
        (&http.auth, "http.auth", "authentication"),
        (&http.access_control, "http.accessControl", "access control"),
        (&http.ratelimit, "http.ratelimit", "rate limiting"),
    ] {
        refuse_present(value, key, what)?;
    }
    let workers = match http.workers {
        Some(0) => return Err("http.workers: must be at least 1".into()),
        Some(n) => n,
        None => default_workers(),
    };
    let reserved_workers = match http.reserved_workers {
        Some(n) if n >= workers => {
            return Err(format!(
                "http.reservedWorkers: {n} would leave none of the {workers} workers for uploads"
            ));
        }
        Some(n) => n,
        None => default_reserved_workers(workers),
    };
    if http.max_connections == Some(0) {
        return Err("http.maxConnections: must be at least 1".into());
    }

    Ok(HttpConfig {
        address: http.address.unwrap_or_else(|| "127.0.0.1".into()),
        port,
        read_timeout: timeout(http.read_timeout, "http.readTimeout")?,
        write_timeout: timeout(http.write_timeout, "http.writeTimeout")?,
        workers,
        reserved_workers,
        max_connections: http.max_connections,
        body_min_rate: http.body_min_rate.unwrap_or(DEFAULT_BODY_MIN_RATE),
        body_rate_grace: positive(
            http.body_rate_grace,
            "http.bodyRateGrace",
            DEFAULT_BODY_RATE_GRACE,
        )?,
        shutdown_timeout: positive(
            http.shutdown_timeout,
            "http.shutdownTimeout",
            DEFAULT_SHUTDOWN_TIMEOUT,
        )?,
    })
}

fn resolve_log(log: raw::RawLog) -> Result<LogConfig, String> {
    refuse_present(&log.audit, "log.audit", "an audit log")?;
    let level = log.level.unwrap_or_else(|| "info".into()).to_lowercase();
    if !LOG_LEVELS.contains(&level.as_str()) {
        return Err(format!(
            "log.level: {level:?} is not one of {}",
            LOG_LEVELS.join(", ")
        ));
    }

    Ok(LogConfig {
        level,
        output: log.output.filter(|o| !o.is_empty()).map(PathBuf::from),
    })
}

fn resolve_extensions(
    extensions_raw: Option<serde_json::Map<String, serde_json::Value>>,
) -> Result<Extensions, String> {
    let mut extensions = Extensions::default();
    for (name, value) in extensions_raw.iter().flatten() {
        match name.as_str() {
            "scrub" => {
                let raw: raw::RawScrub = extension(name, value)?;
                extensions.scrub = gc::resolve_scrub(&raw)?;
            }
            "metrics" => {
                let raw: raw::RawMetrics = extension(name, value)?;
                let path = raw
                    .prometheus
                    .and_then(|p| p.path)
                    .unwrap_or_else(|| MetricsConfig::default().path);
                if !path.starts_with('/') || path.starts_with("/v2/") || path == "/v2" {
                    return Err(format!(
                        "extensions.metrics.prometheus.path: {path:?} must start with / and not be under /v2"
                    ));
                }
                extensions.metrics = MetricsConfig {
                    enable: raw.enable.unwrap_or(true),
                    path,
                };
            }
            other => return Err(not_built(&format!("extensions.{other}"), "this extension")),
        }
    }
    Ok(extensions)
}

/// An extension's section, read strictly: a problem names the key under `extensions.NAME`.
fn extension<T: serde::de::DeserializeOwned>(
    name: &str,
    value: &serde_json::Value,
) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| match e.path().to_string() {
        path if path == "." => suggest_key(format!("extensions.{name}: {}", e.inner())),
        path => suggest_key(format!("extensions.{name}.{path}: {}", e.inner())),
    })
}

/// The resolved config as pretty JSON, for `berth verify`.
pub fn to_pretty_json(config: &Config) -> String {
    // Written with zot's keys, so the output is a config berth (and zot, for the keys they
    // share) reads back as the same settings.
    serde_json::to_string_pretty(config).expect("config always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, "test.json").map_err(|e| e.to_string())
    }

    #[test]
    fn every_problem_of_a_file_is_reported_at_once() {
        let e = parse(
            r#"{"storage":{"rootDirectory":"/r","gcDelya":"1h","dedupe":"yes",
                "retention":{"policies":[{"repositories":["a"],"keepTags":[{"patterns":7}]}]}},
                "http":{"port":"http","workers":0},"log":{"level":"loud"},"cluster":{}}"#,
        )
        .unwrap_err();
        let lines: Vec<&str> = e.lines().collect();
        for expected in [
            "test.json: storage.gcDelya: unknown field",
            "test.json: storage.dedupe: invalid type",
            "test.json: storage.retention.policies[0].keepTags[0].patterns: invalid type",
            "test.json: http.port: \"http\" is not a port",
            "test.json: log.level: \"loud\"",
            "test.json: cluster: scale-out clustering",
        ] {
            assert!(
                lines.iter().any(|l| l.starts_with(expected)),
                "{expected} not in:\n{e}"
            );
        }
        assert_eq!(lines.len(), 6, "{e}");
    }

    #[test]
    fn a_key_given_twice_is_a_problem() {
        let e = parse(r#"{"storage":{"rootDirectory":"/a","rootDirectory":"/b"}}"#).unwrap_err();
        assert!(e.contains("duplicate field `rootDirectory`"), "{e}");
    }

    #[test]
    fn unknown_keys_suggest_the_nearest_known_one() {
        let e = parse(r#"{"storage":{"rootDirectory":"/r","gcDelya":"1h"}}"#).unwrap_err();
        assert!(
            e.contains("storage.gcDelya: unknown field `gcDelya`"),
            "{e}"
        );
        assert!(e.ends_with("(did you mean `gcDelay`?)"), "{e}");
        let e = parse(r#"{"storage":{"rootDirectory":"/r"},"http":{"adress":"::1"}}"#).unwrap_err();
        assert!(e.ends_with("(did you mean `address`?)"), "{e}");
        let e = parse(r#"{"storage":{"rootDirectory":"/r","zzzzzzzz":1}}"#).unwrap_err();
        assert!(!e.contains("did you mean"), "{e}");
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn embedded_default_resolves() {
        let c = Config::embedded_default();
        assert_eq!(c.http.port, 5000);
        assert_eq!(
            c.storage.default.root_directory,
            PathBuf::from("./berth-data")
        );
        assert!(!c.storage.default.commit);
        assert!(c.storage.default.dedupe);
    }

    #[test]
    fn http_limits_default_and_resolve() {
        let http = |keys: &str| {
            parse(&format!(
                r#"{{"storage":{{"rootDirectory":"/x"}},"http":{{{keys}}}}}"#
            ))
            .unwrap()
            .http
        };
        let h = http(r#""workers":16"#);
        assert_eq!((h.reserved_workers, h.max_connections), (4, None));
        assert_eq!(h.body_min_rate, 500);
        assert_eq!(h.body_rate_grace, Duration::from_secs(20));
        assert_eq!(http(r#""workers":2"#).reserved_workers, 1);
        assert_eq!(http(r#""workers":1"#).reserved_workers, 0);
        let h = http(
            r#""workers":4,"reservedWorkers":3,"maxConnections":9,"bodyMinRate":0,"bodyRateGrace":"2s""#,
        );
        assert_eq!(h.reserved_workers, 3);
        assert_eq!(h.max_connections, Some(9));
        assert_eq!(h.body_min_rate, 0);
        assert_eq!(h.body_rate_grace, Duration::from_secs(2));
        assert_eq!(h.shutdown_timeout, Duration::from_secs(30));
        let h = http(r#""shutdownTimeout":"5s""#);
        assert_eq!(h.shutdown_timeout, Duration::from_secs(5));
    }

    #[test]
    fn zot_style_config() {
        let c = parse(
            r#"{"distSpecVersion":"1.1.0","storage":{"rootDirectory":"/tmp/z","commit":true,"dedupe":false,"gc":false},
                "http":{"address":"0.0.0.0","port":8080,"compat":["docker2s2"]},"log":{"level":"debug","output":"/tmp/z.log"}}"#,
        )
        .unwrap();
        assert_eq!(c.http.port, 8080);
        assert!(c.storage.default.commit);
        assert!(!c.storage.default.dedupe);
        assert_eq!(c.log.output, Some(PathBuf::from("/tmp/z.log")));
        assert_eq!(
            parse(r#"{"storage":{"rootdirectory":"/x"},"http":{"port":"1"}}"#)
                .unwrap()
                .http
                .port,
            1
        );
    }

    #[test]
    fn sub_paths_resolve_with_their_own_settings() {
        let c = parse(
            r#"{"storage":{"rootDirectory":"/x","subPaths":{
                "/a":{"rootDirectory":"/y","dedupe":false,"commit":true},
                "/b/c/":{"rootDirectory":"/z"}}}}"#,
        )
        .unwrap();
        let routes: Vec<_> = c
            .storage
            .sub_paths
            .iter()
            .map(|(r, s)| (r.segments.clone(), s.dedupe, s.commit))
            .collect();
        assert_eq!(
            routes,
            [
                (vec!["a".to_string()], false, true),
                (vec!["b".to_string(), "c".to_string()], true, false)
            ]
        );
        let shown = to_pretty_json(&c);
        assert!(shown.contains(r#""/b/c/""#), "{shown}");
    }

    #[test]
    fn gc_follows_zots_table() {
        let hour = Some(Duration::from_secs(3600));
        let store = |storage: &str| {
            let c = parse(&format!(
                r#"{{"storage":{{"rootDirectory":"/x"{storage},"subPaths":{{"/a":{{"rootDirectory":"/y"}}}}}}}}"#
            ))
            .unwrap();
            (
                c.storage.default.gc.clone(),
                c.storage.sub_paths[0].1.gc.clone(),
                c.warnings,
            )
        };
        let (gc, sub, warnings) = store("");
        assert!(gc.enabled && gc.interval == hour && gc.delay == Duration::from_secs(3600));
        assert!(
            !sub.enabled,
            "a sub-path collects only when its own gc says so"
        );
        assert!(warnings.is_empty());
        let (gc, _, warnings) = store(r#","gc":false,"gcDelay":"5m""#);
        assert!(!gc.enabled);
        assert!(warnings[0].contains("gcDelay"), "{warnings:?}");
        let (gc, ..) = store(
            r#","retention":{"policies":[{"repositories":["**"],"keepTags":[{"mostRecentlyPushedCount":0}]}]}"#,
        );
        let zero = &gc.retention.policies[0].keep_tags[0];
        assert!(
            zero.keeps_all_selected(),
            "a count of 0 is not set, as in zot"
        );
        let (gc, ..) = store(r#","gc":true"#);
        assert_eq!((gc.enabled, gc.interval), (true, hour));
        let (gc, ..) = store(r#","gc":true,"gcInterval":"0""#);
        assert_eq!((gc.enabled, gc.interval), (true, None));
        let (gc, ..) = store(r#","gc":true,"gcInterval":"10m","gcDelay":"2m""#);
        assert_eq!(gc.interval, Some(Duration::from_secs(600)));
        assert_eq!(
            gc.retention.delay,
            Duration::from_secs(120),
            "retention.delay defaults to gcDelay"
        );
        let (gc, ..) = store(
            r#","gcTimeWindow":"22:30-02:00","retention":{"delay":"1m","dryRun":true,"policies":[
            {"repositories":["infra/*","**/prod"],"deleteReferrers":true,"keepTags":[{"patterns":["^v"],"mostRecentlyPushedCount":2}]}]}"#,
        );
        let window = gc.time_window.unwrap();
        assert!(window.contains(23 * 60) && window.contains(60) && !window.contains(12 * 60));
        assert_eq!(window.wait_from(22 * 60), Duration::from_secs(30 * 60));
        assert!(gc.retention.dry_run);
        let policy = gc.retention.policy_for("infra/app").unwrap();
        assert!(policy.delete_referrers && policy.delete_untagged);
        assert!(gc.retention.policy_for("a/b/prod").is_some());
        assert!(
            gc.retention.policy_for("infra/app/sub").is_none(),
            "* stays in a segment"
        );
        assert!(policy.keep_tags[0].selects("v1.0") && !policy.keep_tags[0].selects("latest"));
    }

    #[test]
    fn scrub_is_on_when_its_section_is_present() {
        let c = parse(r#"{"storage":{"rootDirectory":"/x"}}"#).unwrap();
        assert!(!c.extensions.scrub.enabled);
        let c =
            parse(r#"{"storage":{"rootDirectory":"/x"},"extensions":{"scrub":{"interval":"3h"}}}"#)
                .unwrap();
        assert!(c.extensions.scrub.enabled);
        assert_eq!(c.extensions.scrub.interval, Duration::from_secs(3 * 3600));
    }

    #[test]
    fn metrics_are_on_when_their_section_is_present_at_zots_default_path() {
        let root = r#""storage":{"rootDirectory":"/x"}"#;
        let c = parse(&format!("{{{root}}}")).unwrap();
        assert!(!c.extensions.metrics.enable);
        let c = parse(&format!(r#"{{{root},"extensions":{{"metrics":{{}}}}}}"#)).unwrap();
        assert!(c.extensions.metrics.enable);
        assert_eq!(c.extensions.metrics.path, "/metrics");
        let c = parse(&format!(
            r#"{{{root},"extensions":{{"metrics":{{"enable":false,"prometheus":{{"path":"/m"}}}}}}}}"#
        ))
        .unwrap();
        assert!(!c.extensions.metrics.enable);
        assert_eq!(c.extensions.metrics.path, "/m");
        for (bad, key) in [
            (r#"{"enable":"yes"}"#, "extensions.metrics.enable"),
            (
                r#"{"prometheus":{"paht":"/m"}}"#,
                "extensions.metrics.prometheus.paht",
            ),
            (
                r#"{"prometheus":{"path":"/v2/m"}}"#,
                "extensions.metrics.prometheus.path",
            ),
        ] {
            let e = parse(&format!(r#"{{{root},"extensions":{{"metrics":{bad}}}}}"#)).unwrap_err();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        for (text, key) in [
            (
                r#"{"storage":{"rootDirectory":"/x","bogus":1}}"#,
                "storage.bogus",
            ),
            (r#"{"storage":{"rootDirectory":"/x"},"nope":{}}"#, "nope"),
            (
                r#"{"storage":{"rootDirectory":"/x"},"http":{"port":"http"}}"#,
                "http.port",
            ),
            (
                r#"{"storage":{"rootDirectory":"/x"},"http":{"port":70000}}"#,
                "http.port",
            ),
            (
                r#"{"storage":{"rootDirectory":"/x","dedupe":"on"}}"#,
                "storage.dedupe",
            ),
            (
                r#"{"storage":{"rootDirectory":"/x","gcDelay":"soon"}}"#,
                "storage.gcDelay",
            ),
            (
                r#"{"storage":{"rootDirectory":"/x","gcDelay":"0"}}"#,
                "storage.gcDelay",
            ),
            (
                r#"{"storage":{"rootDirectory":"/x","gcTimeWindow":"25:00-01:00"}}"#,
                "storage.gcTimeWindow",
            ),
            (
                r#"{"storage":{"rootDirectory":"/x","retention":{"policies":[{"repositories":["a/["]}]}}}"#,
                "storage.retention.policies[0].repositories",
            ),
            (
                r#"{"storage":{"rootDirectory":"/x","retention":{"policies":[{"repositories":["**"],"keepTags":[{"patterns":["("]}]}]}}}"#,
                "storage.retention.policies[0].keepTags[0].patterns",
            ),
            (
                r#"{"storage":{"rootDirectory":"/x","retention":{"policies":[{"repositories":["**"],"keepTags":[{"newest":1}]}]}}}"#,
                "storage.retention.policies[0].keepTags[0].newest",
            ),
            (
                r#"{"storage":{"rootDirectory":"/x","retention":{"policies":[{"deleteUntagged":true}]}}}"#,
                "storage.retention.policies[0].repositories",
            ),
            (
                r#"{"storage":{"rootDirectory":"/x","subPaths":{"/a":{}}}}"#,
                "storage.subPaths./a.rootDirectory",
            ),
            (
                r#"{"storage":{"rootDirectory":"/x","subPaths":{"a":{"rootDirectory":"/y"}}}}"#,
                "storage.subPaths.a",
            ),
            (
                r#"{"storage":{"rootDirectory":"/x","subPaths":{"/A":{"rootDirectory":"/y"}}}}"#,
                "storage.subPaths./A",
            ),
            (
                r#"{"storage":{"rootDirectory":"/x","subPaths":{"/a":{"rootDirectory":"/y","bogus":1}}}}"#,
                "storage.subPaths./a.bogus",
            ),
            (
                r#"{"storage":{"rootDirectory":"/x","subPaths":{"/a":{"rootDirectory":"/y","gcDelay":"1 hour"}}}}"#,
                "storage.subPaths./a.gcDelay",
            ),
            (
                r#"{"storage":{"rootDirectory":"/x","subPaths":{"/a":{"rootDirectory":"/y","maxRepos":1}}}}"#,
                "storage.subPaths./a.maxRepos",
            ),
            (
                r#"{"storage":{"rootDirectory":"/x","subPaths":{"/a":{"rootDirectory":"/y"},"/a/":{"rootDirectory":"/z"}}}}"#,
                "the same route",
            ),
            (
                r#"{"storage":{"rootDirectory":"/x","storageDriver":{"name":"s3"}}}"#,
                "storage.storageDriver",
            ),
            (
                r#"{"storage":{"rootDirectory":"/x"},"extensions":{"scrub":{"enable":"yes"}}}"#,
                "extensions.scrub.enable",
            ),
            (
                r#"{"storage":{"rootDirectory":"/x"},"extensions":{"scrub":{"interval":"0"}}}"#,
                "extensions.scrub.interval",
            ),
            (
                r#"{"storage":{"rootDirectory":"/x"},"extensions":{"search":{"enable":true}}}"#,
                "extensions.search",
            ),
            (
                r#"{"storage":{"rootDirectory":"/x"},"log":{"level":"loud"}}"#,
                "log.level",
            ),
            (
                r#"{"storage":{"rootDirectory":"/x"},"http":{"readTimeout":"soon"}}"#,
                "http.readTimeout",
            ),
            (
                r#"{"storage":{"rootDirectory":"/x"},"http":{"workers":4,"reservedWorkers":4}}"#,
                "http.reservedWorkers",
            ),
            (
                r#"{"storage":{"rootDirectory":"/x"},"http":{"maxConnections":0}}"#,
                "http.maxConnections",
            ),
            (
                r#"{"storage":{"rootDirectory":"/x"},"http":{"bodyRateGrace":"0"}}"#,
                "http.bodyRateGrace",
            ),
            (r#"{"storage":{}}"#, "storage.rootDirectory"),
            (
                r#"{"storage":{"rootDirectory":"/x","commit":"yes"}}"#,
                "storage.commit",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.starts_with("test.json: "), "{e}");
            assert!(e.contains(key), "{text}: {e}");
        }
    }
}
