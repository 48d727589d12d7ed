//! The composition root: turns a resolved `Config` into drivers, caches and stores routed by a
//! `Registry`, the background start-up dedupe pass, and a bound server.

use crate::cache::dynamodb::{DynamoDb, DynamoDbCache, DynamoDbOptions};
use crate::cache::lmdb::{Lmdb, LmdbCache, LmdbOptions};
use crate::cache::redis::{Redis, RedisOptions};
use crate::cache::{CacheError, DedupeCache, DedupeIndex, Leases, Markers, Namespace, UsageLog};
use crate::config::dynamodb::DynamoDbSettings;
use crate::config::{
    CacheBackend, Config, MetricsConfig, StorageBackend, StoreConfig, UploadWriter,
};
use crate::http::Service;
use crate::http::server::{BindError, Server};
use crate::metrics::Metrics;
use crate::root_lock::{LockError, RootLock};
use crate::storage::driver::local::{LocalDriver, WriterChoice};
use crate::storage::driver::s3::{MultipartCopy, Provider, S3Config, S3Driver};
use crate::storage::driver::{Driver, DriverError};
use crate::storage::{Reads, Registry, Store, collector, dedupe_pass, scrub, sweep_lease};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How often noted push and pull times are written to the cache.
const USAGE_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Where a store keeps berth's own files: a dot-name, which no repository name can take.
pub const BERTH_DIR: &str = ".berth";

/// Why berth could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A storage root could not be opened.
    #[error("{key}: {source}")]
    Storage {
        /// The config key of the root.
        key: String,
        /// The cause.
        source: DriverError,
    },
    /// Two stores would share files.
    #[error("{0}")]
    Roots(String),
    /// No credentials were found for a remote store (the message names the key, and the
    /// sources tried, never a secret).
    #[error("{0}")]
    Credentials(String),
    /// A dedupe cache could not be opened, even afresh.
    #[error("{key}: the dedupe cache in {dir}: {message}")]
    Cache {
        /// The config key of the store's root.
        key: String,
        /// The cache directory.
        dir: PathBuf,
        /// The cause.
        message: String,
    },
    /// The Redis cache's client refused its settings.
    #[error("{key}: {message}")]
    RemoteCache {
        /// The config key of the store's `cacheDriver`.
        key: String,
        /// The cause.
        message: String,
    },
    /// Another process uses a root.
    #[error("{key}: {source}")]
    Locked {
        /// The config key of the root.
        key: String,
        /// Who holds it, or why it could not be locked.
        source: LockError,
    },
    /// The listener could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// A background thread could not be started (a thread limit, memory).
    #[error("cannot start the {0} thread: {1}")]
    Thread(&'static str, std::io::Error),
}

/// Stores and a bound server, ready to run.
pub struct App {
    /// The bound front end.
    pub server: Server,
    /// The stores it serves.
    pub registry: Arc<Registry>,
    /// `extensions.metrics`.
    metrics: MetricsConfig,
    /// This process's hold on the stores' roots, for as long as it serves.
    _locks: Vec<RootLock>,
}

/// One opened store with its config key (`storage`, `storage.subPaths./a`) and settings.
pub struct OpenedStore {
    /// The config key.
    pub key: String,
    /// Its settings.
    pub settings: StoreConfig,
    /// The store.
    pub store: Arc<Store>,
}

/// Opens every store of `config` (the default one first), after refusing roots that are
/// the same directory or nested, and, given a `holder` (what this process is, for a refused
/// second one to read), after locking every root for this process (`RootLock`); starts no
/// background work. Without a holder (a dry run, which changes nothing) no root is locked,
/// nor is one whose cache is shared: other processes may serve it (issue 14).
pub fn open_stores(
    config: &Config,
    holder: Option<&str>,
) -> Result<(Vec<OpenedStore>, Vec<RootLock>), StartError> {
    let storage = &config.storage;
    let mut stores = vec![("storage".to_string(), &storage.default)];
    for (route, store) in &storage.sub_paths {
        stores.push((format!("storage.subPaths.{}", route.key), store));
    }
    check_roots(&stores)?;
    let mut locks = Vec::new();
    if let Some(holder) = holder {
        for (key, settings) in stores.iter().filter(|(_, s)| !s.cache.is_shared()) {
            let root = &settings.root_directory;
            let lock = RootLock::take(root, &root.join(BERTH_DIR), holder).map_err(|source| {
                StartError::Locked {
                    key: format!("{key}.rootDirectory"),
                    source,
                }
            })?;
            locks.push(lock);
        }
    }
    // Stores configured with the same Redis share its client and connections, each in its
    // own namespace.
    let mut redis_clients = Vec::new();
    let opened = stores
        .into_iter()
        .map(|(key, settings)| {
            Ok(OpenedStore {
                store: open_store(&key, settings, &mut redis_clients)?,
                settings: settings.clone(),
                key,
            })
        })
        .collect::<Result<_, StartError>>()?;
    Ok((opened, locks))
}

impl App {
    /// Locks and opens every store, binds the listener, then starts the stores' background
    /// dedupe passes, collectors and scrub: a root in use or a port taken fails the start
    /// before anything touches the stores.
    pub fn start(config: &Config) -> Result<App, StartError> {
        let holder = format!(
            "berth serve (pid {}, http {}:{})",
            std::process::id(),
            config.http.address,
            config.http.port
        );
        let (opened, locks) = open_stores(config, Some(&holder))?;
        // After the stores: a refused config stays one line on stderr.
        let open_files = raise_open_files_limit();
        let server = Server::bind(&config.http, open_files)?;
        for o in &opened {
            let rescrub = config
                .extensions
                .scrub
                .enabled
                .then_some(o.settings.gc.delay);
            dedupe_pass::spawn(Arc::clone(&o.store), &o.key, rescrub)
                .map_err(|e| StartError::Thread("dedupe pass", e))?;
            collector::spawn(Arc::clone(&o.store), &o.key, o.settings.gc.clone())
                .map_err(|e| StartError::Thread("garbage collector", e))?;
        }
        if config.extensions.scrub.enabled {
            spawn_scrub(&opened, config.extensions.scrub.interval)
                .map_err(|e| StartError::Thread("scrub", e))?;
        }
        let mut stores = opened.into_iter().map(|o| o.store);
        let default = stores.next().expect("the default store is first");
        let routes = config
            .storage
            .sub_paths
            .iter()
            .map(|(route, _)| route.segments.clone())
            .zip(stores.map(|store| store as Arc<dyn Reads>))
            .collect();
        let registry = Arc::new(Registry::new(default, routes));
        Ok(App {
            server,
            registry,
            metrics: config.extensions.metrics.clone(),
            _locks: locks,
        })
    }

    /// Serves until the process ends; fails only when the request workers cannot start.
    pub fn run(self) -> std::io::Result<()> {
        let metrics = self
            .metrics
            .enable
            .then(|| (Metrics::default(), self.metrics.path));
        self.server.run(Arc::new(Service {
            registry: self.registry,
            metrics,
        }))
    }
}

/// Raises the soft limit on open files to the hard one, as Go's runtime does at start-up,
/// and logs it (issue 10, point 10). The usual soft default, 1024, is a relic of select(2);
/// each connection holds a socket, so a few hundred idle clients exhausted it and new
/// connections then failed. Returns the soft limit now in effect.
fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        let e = std::io::Error::last_os_error();
        tracing::warn!("cannot read the open files limit: {e}");
        return FALLBACK_OPEN_FILES;
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        } else {
            let e = std::io::Error::last_os_error();
            tracing::warn!(
                "cannot raise the open files limit to {}: {e}",
                raised.rlim_cur
            );
        }
    }
    // rlim_t is u64 on Linux, berth's platform.
    let (soft, hard) = (limit.rlim_cur, limit.rlim_max);
    if soft > before {
        tracing::info!("open files limit: {soft} (raised from {before}; hard limit {hard})");
    } else {
        tracing::info!("open files limit: {soft} (hard limit {hard})");
    }
    soft
}

/// The open files limit assumed when it cannot be read: Linux's usual soft default.
const FALLBACK_OPEN_FILES: u64 = 1024;

/// Scrubs every store at start-up and then every `interval`, one store after another. Each
/// store's scrub is pending from now on until one finishes, so the report never reads as
/// healthy for a store that was not scrubbed yet.
fn spawn_scrub(opened: &[OpenedStore], interval: std::time::Duration) -> std::io::Result<()> {
    let stores: Vec<(String, Arc<Store>, std::time::Duration)> = opened
        .iter()
        .map(|o| (o.key.clone(), Arc::clone(&o.store), o.settings.gc.delay))
        .collect();
    for (key, store, _) in &stores {
        store.scrub_scheduled(key);
    }
    std::thread::Builder::new()
        .name("berth-scrub".into())
        .spawn(move || {
            loop {
                for (key, store, stale_after) in &stores {
                    let scrubbed = store.leased(scrub::LEASE, || store.scrub(key, *stale_after));
                    if let Some(Err(e)) = scrubbed {
                        tracing::error!(store = %key, "scrub failed: {e}");
                    }
                }
                std::thread::sleep(interval);
            }
        })?;
    Ok(())
}

/// Opens one store: its driver, its cache when dedupe or retention's usage times need one,
/// and a thread that flushes usage times.
fn open_store(
    key: &str,
    settings: &StoreConfig,
    redis_clients: &mut Vec<(RedisOptions, Arc<Redis>)>,
) -> Result<Arc<Store>, StartError> {
    let root = &settings.root_directory;
    let (driver, described, blob_cache): (Arc<dyn Driver>, String, u64) = match &settings.backend {
        StorageBackend::Local { writer } => {
            let driver = LocalDriver::new(root, settings.commit, local_writer(*writer)).map_err(
                |source| StartError::Storage {
                    key: format!("{key}.rootDirectory"),
                    source,
                },
            )?;
            let described = format!(
                "local files, upload writer {} ({writer:?} requested{})",
                driver.writer_name(),
                driver
                    .writer_note()
                    .map_or(String::new(), |n| format!("; {n}"))
            );
            // Local blobs are sent by sendfile(2) from the page cache: nothing to keep.
            (Arc::new(driver), described, 0)
        }
        StorageBackend::S3 { storage_driver: s3 } => {
            let at = format!("{key}.storageDriver");
            let credentials = s3.credentials(&at).map_err(StartError::Credentials)?;
            let source = credentials.source;
            for ignored in s3.ignored(&at) {
                tracing::warn!("{ignored}");
            }
            let config = S3Config {
                endpoint: s3.endpoint(),
                region: s3.region.clone(),
                bucket: s3.bucket.clone(),
                credentials,
                wire: s3.wire(),
                root: s3.rootdirectory.clone(),
                chunk_size: usize::try_from(s3.chunksize).unwrap_or(usize::MAX),
                multipart_copy: MultipartCopy {
                    chunk_size: s3.multipartcopychunksize,
                    max_concurrency: s3.multipartcopymaxconcurrency,
                    threshold: s3.multipartcopythresholdsize,
                },
                redirect: s3.redirect,
                time_out: s3.timeout,
                revalidate: s3.revalidate,
            };
            let described = format!(
                "s3 bucket {} at {} ({}) under {:?}, chunksize {}, blobcachesize {}, credentials \
                 from the {source}",
                config.bucket,
                config.endpoint,
                if config.wire.virtual_hosted {
                    "virtual-hosted"
                } else {
                    "path-style"
                },
                config.root,
                config.chunk_size,
                s3.blobcachesize,
            );
            // Wrong keys or a wrong bucket show now, not at the first push.
            let driver = S3Driver::new(config)
                .and_then(|driver| driver.probe().map(|()| driver))
                .map_err(|source| StartError::Storage { key: at, source })?;
            (Arc::new(driver), described, s3.blobcachesize)
        }
    };
    let retention = &settings.gc.retention;
    let record_pushes =
        settings.gc.enabled && retention.policies.iter().any(|p| !p.keep_tags.is_empty());
    let record_pulls = settings.gc.enabled && retention.uses_pull_times();
    // A shared cache is opened whatever uses it: its leases let one instance at a time sweep.
    let shared = settings.cache.is_shared();
    let cache = if settings.dedupe || record_pushes || record_pulls || shared {
        Some(match &settings.cache {
            // One process per root (`RootLock`): no leases needed.
            CacheBackend::Lmdb => opened(open_cache(key, root, settings.commit)?, false),
            CacheBackend::Redis(redis) => {
                let cache = shared_redis(key, &redis.options, redis_clients)?
                    .namespace(&Namespace::new(key));
                if !redis.logged_only.is_empty() {
                    tracing::debug!(
                        store = key,
                        "redis cache: accepted without effect (no such setting in the client): {}",
                        redis.logged_only.join(", ")
                    );
                }
                opened(Arc::new(cache), true)
            }
            CacheBackend::DynamoDb(dynamo) => opened(open_dynamodb(key, dynamo)?, true),
        })
    } else {
        None
    };
    let dedupe_cache = cache
        .as_ref()
        .filter(|_| settings.dedupe)
        .map(|(dedupe, ..)| dedupe.clone());
    let capabilities = driver.capabilities();
    let mut store = Store::new(driver, dedupe_cache)
        .with_blob_cache(usize::try_from(blob_cache).unwrap_or(usize::MAX));
    tracing::info!(
        store = key,
        root = %root.display(),
        commit = settings.commit,
        dedupe = settings.dedupe,
        dedupe_strategy = ?store.dedupe_strategy(),
        capabilities = ?capabilities,
        gc = settings.gc.enabled,
        "storage ready: {described}"
    );
    if let Some((_, usage, leases)) = cache {
        if let Some(leases) = leases {
            store = store.with_leases(
                leases,
                settings.lease_ttl.unwrap_or(sweep_lease::DEFAULT_TTL),
            );
        }
        store = store.with_usage(usage, record_pushes, record_pulls);
    }
    let store = Arc::new(store);
    if record_pushes || record_pulls {
        let flushed = Arc::downgrade(&store);
        std::thread::Builder::new()
            .name("berth-usage".into())
            .spawn(move || {
                while let Some(store) = flushed.upgrade() {
                    store.flush_usage();
                    drop(store);
                    std::thread::sleep(USAGE_FLUSH_INTERVAL);
                }
            })
            .map_err(|e| StartError::Thread("usage flusher", e))?;
    }
    Ok(store)
}

/// The client of the Redis `options` name: the one an earlier store opened with the same
/// options, else a new one. Connects to nothing: a Redis not up yet is a cache unavailable
/// until it answers (issue 14), not a failed start.
fn shared_redis(
    key: &str,
    options: &RedisOptions,
    clients: &mut Vec<(RedisOptions, Arc<Redis>)>,
) -> Result<Arc<Redis>, StartError> {
    if let Some((_, redis)) = clients.iter().find(|(o, _)| o == options) {
        return Ok(Arc::clone(redis));
    }
    let redis = Arc::new(
        Redis::new(options.clone()).map_err(|e| StartError::RemoteCache {
            key: format!("{key}.cacheDriver"),
            message: e.to_string(),
        })?,
    );
    clients.push((options.clone(), Arc::clone(&redis)));
    Ok(redis)
}

/// The local driver's writer for the configured one.
fn local_writer(writer: UploadWriter) -> WriterChoice {
    match writer {
        UploadWriter::Auto => WriterChoice::Auto,
        UploadWriter::Direct => WriterChoice::Direct,
        UploadWriter::Buffered => WriterChoice::Buffered,
        UploadWriter::IoUring => WriterChoice::IoUring,
    }
}

/// Opens a store's LMDB cache, in its root, for the store's namespace (its config key); one
/// that cannot be opened (damaged by a power loss without `commit`, say) is moved aside and
/// started afresh, since the start-up pass rebuilds it.
fn open_cache(key: &str, root: &Path, durable: bool) -> Result<Arc<LmdbCache>, StartError> {
    let dir = root.join(BERTH_DIR).join("cache");
    let failed = |message: String| StartError::Cache {
        key: format!("{key}.rootDirectory"),
        dir: dir.clone(),
        message,
    };
    let open = || Lmdb::open(&dir, LmdbOptions::new(durable))?.namespace(&Namespace::new(key));
    match open() {
        Ok(cache) => return Ok(Arc::new(cache)),
        // Moving it aside would not help, nor is anything damaged: say what is wrong.
        Err(e) if !accessible(&dir) => {
            return Err(failed(format!(
                "permission denied: this process (uid {}) cannot read and write it ({e})",
                // SAFETY: getuid has no preconditions.
                unsafe { libc::getuid() }
            )));
        }
        // Full (disk or map): nothing is damaged either, and a fresh cache would not fit.
        Err(e @ CacheError::Unavailable { .. }) => return Err(failed(e.to_string())),
        Err(e) => tracing::warn!(dir = %dir.display(), "dedupe cache unusable, rebuilding it: {e}"),
    }
    let aside = dir.with_file_name(format!("cache.damaged-{}", uuid::Uuid::new_v4().simple()));
    let reopened = std::fs::rename(&dir, &aside)
        .map_err(|e| e.to_string())
        .and_then(|()| open().map_err(|e| e.to_string()));
    reopened.map(Arc::new).map_err(failed)
}

/// A cache's dedupe part and its usage log.
/// What a store takes of its cache: dedupe records, usage times, and its leases when several
/// instances may share it.
type Opened = (DedupeCache, Arc<dyn UsageLog>, Option<Arc<dyn Leases>>);

fn opened<C: DedupeIndex + Markers + UsageLog + Leases + 'static>(
    cache: Arc<C>,
    shared: bool,
) -> Opened {
    let leases = shared.then(|| cache.clone() as Arc<dyn Leases>);
    (DedupeCache::of(cache.clone()), cache, leases)
}

/// Opens a store's namespace (its config key) in the DynamoDB table of its `cacheDriver`,
/// signing with the credentials the S3 driver would find. A DynamoDB that does not answer
/// does not stop the start (the store goes on without it until it answers); refused keys do.
fn open_dynamodb(key: &str, settings: &DynamoDbSettings) -> Result<Arc<DynamoDbCache>, StartError> {
    let at = format!("{key}.cacheDriver");
    let keys = settings
        .accesskey
        .as_deref()
        .zip(settings.secretkey.as_deref());
    let credentials =
        crate::config::s3::credentials_from(keys, &at, &|name| std::env::var(name).ok())
            .map_err(StartError::Credentials)?;
    let options = DynamoDbOptions {
        endpoint: settings.endpoint.clone(),
        region: settings.region.clone(),
        table: settings.table.clone(),
        timeout: settings.timeout,
    };
    let table = DynamoDb::open(options, Provider::new(credentials)).map_err(|e| {
        StartError::RemoteCache {
            key: at,
            message: e.to_string(),
        }
    })?;
    Ok(Arc::new(table.namespace(&Namespace::new(key))))
}

/// Whether this process may read, write and enter `dir` and its parent (an absent `dir`
/// counts as accessible: it is created).
fn accessible(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let may = |path: &Path| {
        let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
            return false;
        };
        // SAFETY: a valid NUL-terminated path that outlives the call.
        let rc = unsafe { libc::access(c_path.as_ptr(), libc::R_OK | libc::W_OK | libc::X_OK) };
        rc == 0 || std::io::Error::last_os_error().kind() == std::io::ErrorKind::NotFound
    };
    may(dir) && dir.parent().is_none_or(may)
}

/// Creates the stores' roots and refuses roots that are the same directory or nested in one
/// another: each store would see the other's repositories and blobs as its own.
fn check_roots(stores: &[(String, &StoreConfig)]) -> Result<(), StartError> {
    let mut canonical: Vec<PathBuf> = Vec::new();
    for (key, settings) in stores {
        let root = &settings.root_directory;
        let resolved = std::fs::create_dir_all(root)
            .and_then(|()| std::fs::canonicalize(root))
            .map_err(|e| StartError::Storage {
                key: format!("{key}.rootDirectory"),
                source: DriverError::Io {
                    driver: "local",
                    op: "create root",
                    path: root.display().to_string(),
                    source: e,
                },
            })?;
        canonical.push(resolved);
    }
    for (i, a) in canonical.iter().enumerate() {
        for (j, b) in canonical.iter().enumerate().skip(i + 1) {
            let relation = if a == b {
                "is the same directory as"
            } else if b.starts_with(a) || a.starts_with(b) {
                "is nested with"
            } else {
                continue;
            };
            return Err(StartError::Roots(format!(
                "{}.rootDirectory ({}) {relation} {}.rootDirectory ({}); every store needs a root of its own",
                stores[j].0,
                b.display(),
                stores[i].0,
                a.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::storage::BodyLength;
    use crate::storage::driver::StoragePath;

    /// A store whose config names an S3 bucket in zot's keys (`storageDriver`) is built on
    /// the S3 driver and keeps the same OCI layout in the bucket, under `rootdirectory`.
    #[test]
    fn an_s3_store_opens_from_zot_keys() {
        let moto = crate::storage::driver::s3::tests::fresh_on_moto();
        let dir = tempfile::tempdir().unwrap();
        let json = serde_json::json!({
            "storage": {
                "rootDirectory": dir.path(),
                "storageDriver": {
                    "name": "s3",
                    "region": &moto.region,
                    "bucket": &moto.bucket,
                    "regionendpoint": &moto.endpoint,
                    "rootdirectory": "/zot/",
                    "accesskey": &moto.credentials.access_key,
                    "secretkey": &moto.credentials.secret_key,
                    "chunksize": 5242880
                }
            }
        });
        let config = Config::parse(&json.to_string(), "test config").unwrap();
        let (opened, _) = open_stores(&config, None).unwrap();
        let store = &opened[0].store;
        let repo: crate::oci::RepoName = "app/s3".parse().unwrap();
        let bytes = b"a layer in a bucket";
        let digest = Digest::sha256_of(bytes);
        store
            .blob_put(
                &repo,
                &digest,
                &mut &bytes[..],
                BodyLength::Exact(bytes.len() as u64),
            )
            .unwrap();
        assert_eq!(store.blob_size(&repo, &digest).unwrap(), bytes.len() as u64);
        let bucket = S3Driver::new(S3Config {
            root: String::new(),
            ..moto
        })
        .unwrap();
        let key =
            StoragePath::from_components(["zot", "app", "s3", "blobs", "sha256", digest.hex()])
                .unwrap();
        assert_eq!(bucket.get(&key).unwrap(), bytes);
    }

    fn push(store: &Store, repo: &str, bytes: &[u8]) -> Digest {
        let digest = Digest::sha256_of(bytes);
        let repo: crate::oci::RepoName = repo.parse().unwrap();
        let length = BodyLength::Exact(bytes.len() as u64);
        store
            .blob_put(&repo, &digest, &mut &bytes[..], length)
            .unwrap();
        digest
    }

    /// `remoteCache` with a Redis `cacheDriver` builds the stores on Redis, each in its own
    /// namespace of one client; a Redis that is down at start stops nothing (issue 14: the
    /// store pushes without dedupe until it answers).
    #[test]
    fn stores_keep_their_records_in_redis() {
        let url =
            crate::test_services::ServiceEnv::load(".redis-services", "scripts/redis-services.sh")
                .require("BERTH_REDIS_URL");
        let down = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let prefix = format!("berth-test-{}", uuid::Uuid::new_v4().simple());
        let dir = tempfile::tempdir().unwrap();
        let store = |root: &str, url: &str| {
            serde_json::json!({
                "rootDirectory": dir.path().join(root),
                "remoteCache": true,
                "cacheDriver": {"name": "redis", "url": url, "keyprefix": &prefix}
            })
        };
        let mut storage = store("main", &url);
        storage["subPaths"] = serde_json::json!({
            "/a": store("a", &url),
            "/down": store("down", &format!("redis://127.0.0.1:{down}?max_retries=-1")),
        });
        let config =
            Config::parse(&serde_json::json!({"storage": storage}).to_string(), "test").unwrap();
        let (opened, _) = open_stores(&config, None).unwrap();
        let bytes = b"a layer recorded in redis";
        let digest = push(&opened[0].store, "one", bytes);
        push(&opened[0].store, "two", bytes);
        push(&opened[1].store, "a/one", bytes);
        push(&opened[2].store, "down/one", bytes);
        push(&opened[2].store, "down/two", bytes);
        let CacheBackend::Redis(settings) = &config.storage.default.cache else {
            panic!("a redis cache");
        };
        let redis = Arc::new(Redis::new(settings.options.clone()).unwrap());
        let paths = |ns: &str| {
            use crate::cache::DedupeIndex;
            redis.namespace(&Namespace::new(ns)).paths(&digest).unwrap()
        };
        assert_eq!(paths("storage").len(), 2, "{:?}", paths("storage"));
        assert_eq!(paths("storage.subPaths./a").len(), 1);
        assert!(paths("storage.subPaths./down").is_empty());
    }
}
