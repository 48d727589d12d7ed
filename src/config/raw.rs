//! `RawConfig`: a serde mirror of zot's JSON config file. Every field is optional and unknown
//! fields are rejected, so a typo is an error naming its full path (via serde_path_to_error).
//!
//! zot's loader matches keys case-insensitively; the lower-case spellings that zot's own docs
//! and examples use are accepted as aliases. Keys of zot features berth does not build yet are
//! kept as raw JSON values so `resolve` can refuse them by name instead of ignoring them.

use serde::Deserialize;
use serde_json::Value;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawConfig {
    /// Informational in zot too.
    #[serde(alias = "distspecversion")]
    pub dist_spec_version: Option<String>,
    /// Storage settings.
    pub storage: Option<RawStorage>,
    /// HTTP listener settings.
    pub http: Option<RawHttp>,
    /// Logging.
    pub log: Option<RawLog>,
    /// zot extensions (scrub, search, sync, ...).
    pub extensions: Option<serde_json::Map<String, Value>>,
    /// zot's scheduler section.
    pub scheduler: Option<Value>,
    /// zot's scale-out cluster section.
    pub cluster: Option<Value>,
}

/// The `storage` section, as zot's storage documentation defines it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawStorage {
    /// Where repositories live.
    #[serde(alias = "rootdirectory")]
    pub root_directory: Option<String>,
    /// fsync every write before acknowledging it.
    pub commit: Option<bool>,
    /// Inline deduplication.
    pub dedupe: Option<bool>,
    /// Garbage collection.
    pub gc: Option<bool>,
    /// Garbage collection grace delay.
    #[serde(alias = "gcdelay")]
    pub gc_delay: Option<String>,
    /// Garbage collection interval.
    #[serde(alias = "gcinterval")]
    pub gc_interval: Option<String>,
    /// Garbage collection start window.
    #[serde(alias = "gctimewindow")]
    pub gc_time_window: Option<String>,
    /// Retention policies.
    pub retention: Option<RawRetention>,
    /// Per-prefix stores.
    #[serde(alias = "subpaths")]
    pub sub_paths: Option<std::collections::BTreeMap<String, RawStorage>>,
    /// Remote (S3) storage.
    #[serde(alias = "storagedriver")]
    pub storage_driver: Option<Value>,
    /// Dedupe cache backend.
    #[serde(alias = "cachedriver")]
    pub cache_driver: Option<Value>,
    /// Use a shared (remote) cache.
    #[serde(alias = "remotecache")]
    pub remote_cache: Option<bool>,
    /// zot's metaDB restart shortcut.
    #[serde(alias = "fastrestart")]
    pub fast_restart: Option<Value>,
    /// berth only: how long a sweep's lease holds without a renewal (with a shared cache).
    #[serde(alias = "leasettl")]
    pub lease_ttl: Option<String>,
    /// berth only: how upload bytes are written (`auto`, `direct`, `buffered`, `io_uring`).
    pub writer: Option<super::UploadWriter>,
    /// zot's repository count limit.
    #[serde(alias = "maxrepos")]
    pub max_repos: Option<Value>,
}

/// `storage.retention`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRetention {
    /// Log what would be removed; remove nothing.
    #[serde(alias = "dryrun")]
    pub dry_run: Option<bool>,
    /// Minimum age of untagged manifests and referrers before removal.
    pub delay: Option<String>,
    /// The policies, the first matching one applies.
    pub policies: Option<Vec<RawPolicy>>,
}

/// One `storage.retention.policies` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawPolicy {
    /// Repository globs.
    pub repositories: Option<Vec<String>>,
    /// Remove referrers whose subject is gone.
    #[serde(alias = "deletereferrers")]
    pub delete_referrers: Option<bool>,
    /// Remove untagged manifests.
    #[serde(alias = "deleteuntagged")]
    pub delete_untagged: Option<bool>,
    /// Which tags to keep.
    #[serde(alias = "keeptags")]
    pub keep_tags: Option<Vec<RawKeepTags>>,
}

/// One `keepTags` rule.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawKeepTags {
    /// Tag regular expressions.
    pub patterns: Option<Vec<String>>,
    /// Keep the N most recently pushed.
    #[serde(alias = "mostrecentlypushedcount")]
    pub most_recently_pushed_count: Option<usize>,
    /// Keep the N most recently pulled.
    #[serde(alias = "mostrecentlypulledcount")]
    pub most_recently_pulled_count: Option<usize>,
    /// Keep tags pushed within this long.
    #[serde(alias = "pushedwithin")]
    pub pushed_within: Option<String>,
    /// Keep tags pulled within this long.
    #[serde(alias = "pulledwithin")]
    pub pulled_within: Option<String>,
}

/// `extensions.scrub`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScrub {
    /// On when the section is present, unless false.
    pub enable: Option<bool>,
    /// Pause between scrubs.
    pub interval: Option<String>,
}

/// `extensions.metrics`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    /// On when the section is present, unless false (zot's default).
    pub enable: Option<bool>,
    /// Where the page is served.
    pub prometheus: Option<RawPrometheus>,
}

/// `extensions.metrics.prometheus`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPrometheus {
    /// The page's path, `/metrics` by default.
    pub path: Option<String>,
}

/// zot's `http.port` is a string in its examples and a number in some configs.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawPort {
    /// `"port": 5000`
    Number(u64),
    /// `"port": "5000"`
    Text(String),
}

/// The `http` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawHttp {
    /// Listen address.
    pub address: Option<String>,
    /// Listen port.
    pub port: Option<RawPort>,
    /// Longest a connection may stall while sending a request.
    #[serde(alias = "readtimeout")]
    pub read_timeout: Option<String>,
    /// Longest a write to a stalled client may block.
    #[serde(alias = "writetimeout")]
    pub write_timeout: Option<String>,
    /// berth only: number of request worker threads.
    pub workers: Option<usize>,
    /// berth only: workers kept for requests without a body.
    #[serde(alias = "reservedworkers")]
    pub reserved_workers: Option<usize>,
    /// berth only: connections served at once.
    #[serde(alias = "maxconnections")]
    pub max_connections: Option<usize>,
    /// berth only: minimum average rate of a request body, in bytes per second.
    #[serde(alias = "bodyminrate")]
    pub body_min_rate: Option<u64>,
    /// berth only: how long a body may stay under `bodyMinRate` at its start.
    #[serde(alias = "bodyrategrace")]
    pub body_rate_grace: Option<String>,
    /// berth only: how long SIGTERM / SIGINT let requests in flight finish.
    #[serde(alias = "shutdowntimeout")]
    pub shutdown_timeout: Option<String>,
    /// zot's compatibility list; `docker2s2` is what berth always does.
    pub compat: Option<Vec<String>>,
    /// zot keys for features berth does not build yet.
    #[serde(alias = "externalurl")]
    pub external_url: Option<Value>,
    /// See `external_url`.
    #[serde(alias = "alloworigin")]
    pub allow_origin: Option<Value>,
    /// See `external_url`.
    pub realm: Option<Value>,
    /// See `external_url`.
    pub tls: Option<Value>,
    /// See `external_url`.
    pub auth: Option<Value>,
    /// See `external_url`.
    #[serde(alias = "accesscontrol")]
    pub access_control: Option<Value>,
    /// See `external_url`.
    pub ratelimit: Option<Value>,
}

/// The `log` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawLog {
    /// debug, info, warn, error.
    pub level: Option<String>,
    /// A file to append to instead of stderr.
    pub output: Option<String>,
    /// zot's audit log: not built yet.
    pub audit: Option<Value>,
}
