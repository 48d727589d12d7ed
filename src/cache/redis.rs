//! The shared Redis cache (issue 14): `DedupeIndex`, `UsageLog`, `Markers` and `Leases` of
//! each namespace in one Redis, a single server, a cluster or a master found through
//! sentinels, shared by every berth process serving the same stores.
//!
//! Keys are `<keyprefix>:<namespace>:...` (the namespace with `%` and `:` escaped), and the
//! part that varies per digest, per repository or per name is a cluster hash tag, so every
//! key one call touches lives in one slot:
//! - `…:dedupe:{<digest>}`: a sorted set of the paths holding the digest, scored by the
//!   order they were recorded in; the lowest score is the original. Removing it promotes the
//!   next (ZREM), `put_original` scores a path below every other;
//! - `…:pushes:{<repo>}` and `…:pulls:{<repo>}`: hashes of tag (digest) → milliseconds;
//! - `…:marker:{<name>}` and `…:lease:{<name>}`: strings; a lease holds the holder's name
//!   and expires on the server's clock (SET NX PX, PEXPIRE).
//!
//! Whatever must be atomic (a record and its answer, a lease taken or renewed, a later time
//! kept) is a Lua script sent by EVALSHA (EVAL once when the server lacks it); batches are
//! pipelined, one round trip per node. Connections are pooled (`Pool`), opened on first use,
//! so a Redis down at start-up only makes calls fail `Unavailable` until it answers. Every
//! call is bounded by the configured time-outs and retried `max_retries` times with a
//! growing back-off when the server cannot be reached; a reply berth cannot read is `Failed`.

use super::{CacheError, DedupeIndex, LeaseKey, Leases, MarkerKey, Markers, Namespace, UsageLog};
use crate::digest::Digest;
use crate::oci::{RepoName, Tag};
use crate::storage::driver::StoragePath;
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConnection};
use redis::cluster_read_routing::RandomReplicaStrategy;
use redis::cluster_routing::Slot;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    Client, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo, ProtocolVersion,
    RedisConnectionInfo, RedisError, RedisResult, ServerErrorKind, TlsMode, Value,
};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const CACHE: &str = "redis";

/// A server's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addr {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// A password: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"******\"")
    }
}

/// Which servers hold the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One server (or a master whose replicas berth does not use).
    Single(Addr),
    /// A Redis cluster, found from any of these nodes.
    Cluster(Vec<Addr>),
    /// The master that these sentinels name `master_name`, asked again on every new
    /// connection, so a failover is followed.
    Sentinel {
        /// The monitored master's name.
        master_name: String,
        /// The sentinels' addresses.
        sentinels: Vec<Addr>,
        /// The user the sentinels are asked as.
        username: Option<String>,
        /// Their password.
        password: Option<Secret>,
    },
}

/// Everything the client does differently by configuration (zot's `cacheDriver` keys,
/// `config::redis`), with go-redis's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisOptions {
    /// Where the servers are.
    pub topology: Topology,
    /// TLS (`rediss://`): `Some(verify)`, `verify` false with `skip_verify`.
    pub tls: Option<bool>,
    /// ACL user.
    pub username: Option<String>,
    /// Password.
    pub password: Option<Secret>,
    /// Database number (single server and sentinel setups).
    pub db: i64,
    /// RESP3 rather than RESP2 (`protocol: 3`).
    pub resp3: bool,
    /// Sent with CLIENT SETNAME on each connection (single server and sentinel setups).
    pub client_name: Option<String>,
    /// Retries of a call that found the server unreachable, after the first try.
    pub max_retries: u32,
    /// The back-off before the first retry, doubled for each next one …
    pub min_retry_backoff: Duration,
    /// … up to this.
    pub max_retry_backoff: Duration,
    /// How long a connection may take to open.
    pub dial_timeout: Duration,
    /// How long a reply may take.
    pub read_timeout: Duration,
    /// How long a request may take to send.
    pub write_timeout: Duration,
    /// Connections open at most at once; a call finding them all busy waits …
    pub pool_size: usize,
    /// … this long for one, then fails `Unavailable`.
    pub pool_timeout: Duration,
    /// Reuse the connection idle longest (else the one used last).
    pub pool_fifo: bool,
    /// Idle connections kept at most (0: all of them).
    pub max_idle_conns: usize,
    /// An idle connection older than this is closed rather than reused.
    pub conn_max_idle_time: Option<Duration>,
    /// A connection older than this is closed rather than reused.
    pub conn_max_lifetime: Option<Duration>,
    /// Cluster: redirections and retries the cluster client makes on its own.
    pub max_redirects: u32,
    /// Cluster: reads may go to replicas.
    pub read_only: bool,
    /// The first part of every key (`keyprefix`).
    pub key_prefix: String,
}

impl RedisOptions {
    /// go-redis's defaults for `topology`, keys under `zot` as zot's.
    pub fn new(topology: Topology) -> RedisOptions {
        let read_timeout = Duration::from_secs(3);
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        RedisOptions {
            topology,
            tls: None,
            username: None,
            password: None,
            db: 0,
            resp3: false,
            client_name: None,
            max_retries: 3,
            min_retry_backoff: Duration::from_millis(8),
            max_retry_backoff: Duration::from_millis(512),
            dial_timeout: Duration::from_secs(5),
            read_timeout,
            write_timeout: read_timeout,
            pool_size: 10 * cpus,
            pool_timeout: read_timeout + Duration::from_secs(1),
            pool_fifo: false,
            max_idle_conns: 0,
            conn_max_idle_time: Some(Duration::from_secs(30 * 60)),
            conn_max_lifetime: None,
            max_redirects: 3,
            read_only: false,
            key_prefix: "zot".into(),
        }
    }
}

/// One Redis (or cluster) and its connections, shared by the namespaces opened on it.
pub struct Redis {
    opener: Opener,
    pool: Pool,
    options: RedisOptions,
    round_trips: AtomicU64,
    scripts: Scripts,
}

/// How a new connection is opened.
enum Opener {
    Single(Client),
    Cluster(ClusterClient),
    Sentinel(Mutex<SentinelClient>),
}

/// A pooled connection.
enum Conn {
    Single(redis::Connection),
    Cluster(Box<ClusterConnection>),
}

impl Redis {
    /// A client of the servers `options` name. Nothing is connected yet: the first call
    /// connects, and fails `Unavailable` while the servers cannot be reached. Fails only for
    /// settings the client refuses.
    pub fn new(options: RedisOptions) -> Result<Redis, CacheError> {
        let failed = |e: RedisError| CacheError::Failed {
            cache: CACHE,
            op: "configure the client",
            message: e.to_string(),
        };
        let tls_mode = options.tls.map(|verify| {
            if verify {
                TlsMode::Secure
            } else {
                TlsMode::Insecure
            }
        });
        let protocol = if options.resp3 {
            ProtocolVersion::RESP3
        } else {
            ProtocolVersion::RESP2
        };
        let opener = match &options.topology {
            Topology::Single(addr) => {
                Opener::Single(Client::open(connection_info(addr, &options)).map_err(failed)?)
            }
            Topology::Cluster(nodes) => {
                if let Some(name) = &options.client_name {
                    tracing::debug!("redis cache: client_name {name:?} is not set on a cluster");
                }
                // Credentials, TLS, protocol and database come from the nodes' settings.
                let mut builder =
                    ClusterClientBuilder::new(nodes.iter().map(|a| connection_info(a, &options)))
                        .connection_timeout(options.dial_timeout)
                        .response_timeout(options.read_timeout)
                        .retries(options.max_redirects);
                if options.read_only {
                    builder = builder.read_routing_strategy(RandomReplicaStrategy);
                }
                Opener::Cluster(builder.build().map_err(failed)?)
            }
            Topology::Sentinel {
                master_name,
                sentinels,
                username,
                password,
            } => {
                let addrs = sentinels.iter().map(|a| tcp_addr(a, options.tls));
                let mut builder =
                    SentinelClientBuilder::new(addrs, master_name, SentinelServerType::Master)
                        .map_err(failed)?
                        .set_client_to_redis_db(options.db)
                        .set_client_to_redis_protocol(protocol)
                        .set_client_to_sentinel_protocol(protocol);
                if let Some(mode) = tls_mode {
                    builder = builder
                        .set_client_to_redis_tls_mode(mode)
                        .set_client_to_sentinel_tls_mode(mode);
                }
                if let Some(user) = &options.username {
                    builder = builder.set_client_to_redis_username(user);
                }
                if let Some(password) = &options.password {
                    builder = builder.set_client_to_redis_password(&password.0);
                }
                if let Some(user) = username {
                    builder = builder.set_client_to_sentinel_username(user);
                }
                if let Some(password) = password {
                    builder = builder.set_client_to_sentinel_password(&password.0);
                }
                Opener::Sentinel(Mutex::new(builder.build().map_err(failed)?))
            }
        };
        Ok(Redis {
            opener,
            pool: Pool::default(),
            options,
            round_trips: AtomicU64::new(0),
            scripts: Scripts::new(),
        })
    }

    /// The records of namespace `ns`.
    pub fn namespace(self: &Arc<Redis>, ns: &Namespace) -> RedisCache {
        let escaped = ns.as_str().replace('%', "%25").replace(':', "%3A");
        RedisCache {
            redis: Arc::clone(self),
            prefix: format!("{}:{escaped}", self.options.key_prefix),
        }
    }

    /// Requests and pipelines the calls sent so far (a pipeline over a cluster counts one per
    /// slot it reaches, at least one per node it reaches; opening a connection, done once per
    /// pooled connection, is not counted): what a push costs in round trips.
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    fn connect(&self) -> RedisResult<Conn> {
        let o = &self.options;
        let single = |client: &Client| -> RedisResult<Conn> {
            let conn = client.get_connection_with_timeout(o.dial_timeout)?;
            conn.set_read_timeout(Some(o.read_timeout))?;
            conn.set_write_timeout(Some(o.write_timeout))?;
            let mut conn = Conn::Single(conn);
            if let Some(name) = &o.client_name {
                conn.query::<()>(redis::cmd("CLIENT").arg("SETNAME").arg(name))?;
            }
            Ok(conn)
        };
        match &self.opener {
            Opener::Single(client) => single(client),
            Opener::Cluster(client) => {
                let conn = client.get_connection()?;
                conn.set_write_timeout(Some(o.write_timeout))?;
                Ok(Conn::Cluster(Box::new(conn)))
            }
            Opener::Sentinel(sentinel) => {
                let master = sentinel
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get_client()?;
                single(&master)
            }
        }
    }

    /// Runs `call` on a pooled connection, retrying as the module doc says.
    fn run<T>(
        &self,
        op: &'static str,
        mut call: impl FnMut(&mut Conn, &AtomicU64) -> RedisResult<T>,
    ) -> Result<T, CacheError> {
        let mut attempt = 0u32;
        loop {
            let result = self
                .pool
                .take(&self.options, || self.connect())
                .and_then(|mut slot| {
                    let result = call(&mut slot.conn, &self.round_trips);
                    let broken = result.as_ref().err().is_some_and(breaks_connection);
                    self.pool.give_back(&self.options, slot, !broken);
                    result
                });
            match result {
                Ok(value) => return Ok(value),
                Err(e) if unavailable(&e) && attempt < self.options.max_retries => {
                    let backoff = self
                        .options
                        .min_retry_backoff
                        .saturating_mul(1 << attempt.min(16))
                        .min(self.options.max_retry_backoff);
                    std::thread::sleep(backoff);
                    attempt += 1;
                }
                Err(e) if unavailable(&e) => {
                    return Err(CacheError::Unavailable {
                        cache: CACHE,
                        op,
                        message: e.to_string(),
                    });
                }
                Err(e) => {
                    return Err(CacheError::Failed {
                        cache: CACHE,
                        op,
                        message: e.to_string(),
                    });
                }
            }
        }
    }

    /// Runs `script` over `keys` and `args` in one round trip (two when the server does not
    /// have it yet).
    fn eval<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        script: &Script,
        keys: &[&str],
        args: &[&[u8]],
    ) -> Result<T, CacheError> {
        self.run(op, |conn, trips| {
            let value = match conn.counted(trips, &script.call(false, keys, args)) {
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    conn.counted(trips, &script.call(true, keys, args))
                }
                other => other,
            }?;
            Ok(redis::from_redis_value(value)?)
        })
    }

    /// Runs the script calls in one pipeline (one round trip per cluster node; again by EVAL
    /// when a server lacks a script: every call is idempotent).
    fn eval_many(&self, op: &'static str, calls: &[ScriptCall<'_>]) -> Result<(), CacheError> {
        if calls.is_empty() {
            return Ok(());
        }
        let commands = |load: bool| -> Vec<Cmd> {
            calls
                .iter()
                .map(|call| {
                    let args: Vec<&[u8]> = call.args.iter().map(Vec::as_slice).collect();
                    call.script.call(load, &[&call.key], &args)
                })
                .collect()
        };
        let (by_sha, by_text) = (commands(false), commands(true));
        let keys: Vec<&str> = calls.iter().map(|call| call.key.as_str()).collect();
        self.run(op, |conn, trips| {
            match conn.pipeline(trips, &by_sha, &keys) {
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    conn.pipeline(trips, &by_text, &keys)
                }
                other => other,
            }
            .map(drop)
        })
    }
}

/// The settings of a connection to `addr`.
fn connection_info(addr: &Addr, o: &RedisOptions) -> ConnectionInfo {
    let mut redis = RedisConnectionInfo::default()
        .set_db(o.db)
        .set_protocol(if o.resp3 {
            ProtocolVersion::RESP3
        } else {
            ProtocolVersion::RESP2
        });
    if let Some(user) = &o.username {
        redis = redis.set_username(user);
    }
    if let Some(password) = &o.password {
        redis = redis.set_password(&password.0);
    }
    let info = tcp_addr(addr, o.tls)
        .into_connection_info()
        .expect("a TCP address is a connection");
    info.set_redis_settings(redis)
}

fn tcp_addr(addr: &Addr, tls: Option<bool>) -> ConnectionAddr {
    match tls {
        None => ConnectionAddr::Tcp(addr.host.clone(), addr.port),
        Some(verify) => ConnectionAddr::TcpTls {
            host: addr.host.clone(),
            port: addr.port,
            insecure: !verify,
            tls_params: None,
        },
    }
}

/// Whether `e` means the servers cannot be reached or cannot serve now: a connection that
/// failed or timed out, a cluster or master that is down or moving, a master that sentinels
/// do not know (yet).
fn unavailable(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::BusyLoading
                    | ServerErrorKind::ReadOnly
            ) | ErrorKind::ClusterConnectionNotFound
                | ErrorKind::MasterNameNotFoundBySentinel
                | ErrorKind::NoValidReplicasFoundBySentinel
        )
}

/// Whether the connection `e` came from cannot be trusted with another request: a reply may
/// be half read, or (READONLY) it reaches a former master.
fn breaks_connection(e: &RedisError) -> bool {
    unavailable(e) || e.kind() == ErrorKind::Parse
}

impl Conn {
    fn query<T: redis::FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<T> {
        match self {
            Conn::Single(c) => cmd.query(c),
            Conn::Cluster(c) => cmd.query(c.as_mut()),
        }
    }

    /// One command, counted as a round trip.
    fn counted(&mut self, trips: &AtomicU64, cmd: &Cmd) -> RedisResult<Value> {
        trips.fetch_add(1, Ordering::Relaxed);
        self.query(cmd)
    }

    /// The commands in one pipeline, over `keys` (one each): one round trip on a server,
    /// counted one per slot on a cluster (the client sends one per node, so this is at most
    /// what it sends).
    fn pipeline(
        &mut self,
        trips: &AtomicU64,
        commands: &[Cmd],
        keys: &[&str],
    ) -> RedisResult<Vec<Value>> {
        match self {
            Conn::Single(c) => {
                trips.fetch_add(1, Ordering::Relaxed);
                let mut pipe = redis::pipe();
                for cmd in commands {
                    pipe.add_command(cmd.clone());
                }
                pipe.query(c)
            }
            Conn::Cluster(c) => {
                let slots: HashSet<Slot> = keys.iter().map(Slot::for_key).collect();
                trips.fetch_add(slots.len() as u64, Ordering::Relaxed);
                let mut pipe = redis::cluster::cluster_pipe();
                for cmd in commands {
                    pipe.add_command(cmd.clone());
                }
                pipe.query(c.as_mut())
            }
        }
    }
}

/// Open connections: the idle ones, and how many exist.
#[derive(Default)]
struct Pool {
    state: Mutex<PoolState>,
    freed: Condvar,
}

#[derive(Default)]
struct PoolState {
    idle: VecDeque<Pooled>,
    open: usize,
}

struct Pooled {
    conn: Conn,
    opened: Instant,
    used: Instant,
}

impl Pool {
    /// An idle connection that is neither too old nor idle too long, or a new one when fewer
    /// than `pool_size` are open; else waits `pool_timeout` for one to come back.
    fn take(
        &self,
        o: &RedisOptions,
        connect: impl FnOnce() -> RedisResult<Conn>,
    ) -> RedisResult<Pooled> {
        let deadline = Instant::now() + o.pool_timeout;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let next = if o.pool_fifo {
                state.idle.pop_front()
            } else {
                state.idle.pop_back()
            };
            if let Some(slot) = next {
                let stale = o
                    .conn_max_idle_time
                    .is_some_and(|t| slot.used.elapsed() > t)
                    || o.conn_max_lifetime
                        .is_some_and(|t| slot.opened.elapsed() > t);
                if stale {
                    state.open -= 1;
                    continue;
                }
                return Ok(slot);
            }
            if state.open < o.pool_size {
                state.open += 1;
                drop(state);
                return connect()
                    .map(|conn| Pooled {
                        conn,
                        opened: Instant::now(),
                        used: Instant::now(),
                    })
                    .inspect_err(|_| self.closed());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "all {} connections busy for {:?}",
                        o.pool_size, o.pool_timeout
                    ),
                )));
            }
            state = self
                .freed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Returns a connection taken: kept idle when `healthy` and there is room, else closed.
    fn give_back(&self, o: &RedisOptions, mut slot: Pooled, healthy: bool) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if healthy && (o.max_idle_conns == 0 || state.idle.len() < o.max_idle_conns) {
            slot.used = Instant::now();
            state.idle.push_back(slot);
        } else {
            state.open -= 1;
        }
        drop(state);
        self.freed.notify_one();
    }

    fn closed(&self) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .open -= 1;
        self.freed.notify_one();
    }
}

/// A Lua script and its SHA-1.
struct Script {
    code: &'static str,
    sha: String,
}

impl Script {
    fn new(code: &'static str) -> Script {
        Script {
            code,
            sha: redis::Script::new(code).get_hash().to_string(),
        }
    }

    /// EVALSHA, or EVAL with the code when `load`.
    fn call(&self, load: bool, keys: &[&str], args: &[&[u8]]) -> Cmd {
        let mut cmd = if load {
            let mut c = redis::cmd("EVAL");
            c.arg(self.code);
            c
        } else {
            let mut c = redis::cmd("EVALSHA");
            c.arg(&self.sha);
            c
        };
        cmd.arg(keys.len()).arg(keys).arg(args);
        cmd
    }
}

/// One call of a script in a pipeline: every script here touches one key.
struct ScriptCall<'a> {
    script: &'a Script,
    key: String,
    args: Vec<Vec<u8>>,
}

/// The scripts every call that must be atomic runs.
struct Scripts {
    /// KEYS[1] the digest's set, ARGV[1] a path: records it after the last one unless it is
    /// recorded; answers the original before (nil when none).
    add: Script,
    /// The same, the path scored before the first.
    put_original: Script,
    /// KEYS[1] a hash, ARGV field and milliseconds pairs: each field keeps the later time.
    later: Script,
    /// KEYS[1] the lease, ARGV[1] the holder, ARGV[2] milliseconds: 1 when taken or renewed.
    acquire: Script,
    /// KEYS[1] the lease, ARGV[1] the holder: deleted when the holder has it.
    release: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            add: Script::new(
                "local first = redis.call('ZRANGE', KEYS[1], 0, 0)[1] \
                 if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then \
                   local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2] \
                   redis.call('ZADD', KEYS[1], last and (tonumber(last) + 1) or 0, ARGV[1]) \
                 end \
                 return first",
            ),
            put_original: Script::new(
                "local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2] \
                 redis.call('ZADD', KEYS[1], first and (tonumber(first) - 1) or 0, ARGV[1]) \
                 return 1",
            ),
            later: Script::new(
                "for i = 1, #ARGV, 2 do \
                   local old = redis.call('HGET', KEYS[1], ARGV[i]) \
                   if not old or tonumber(old) < tonumber(ARGV[i + 1]) then \
                     redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) \
                   end \
                 end \
                 return 1",
            ),
            acquire: Script::new(
                "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end \
                 if redis.call('GET', KEYS[1]) == ARGV[1] then \
                   redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 \
                 end \
                 return 0",
            ),
            release: Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end \
                 return 1",
            ),
        }
    }
}

/// One namespace's records in a `Redis`.
pub struct RedisCache {
    redis: Arc<Redis>,
    prefix: String,
}

impl RedisCache {
    /// The `Redis` these records are kept in.
    pub fn redis(&self) -> &Arc<Redis> {
        &self.redis
    }

    fn key(&self, kind: &str, tagged: &str) -> String {
        format!("{}:{kind}:{{{tagged}}}", self.prefix)
    }

    fn paths_key(&self, digest: &Digest) -> String {
        self.key("dedupe", &digest.to_string())
    }

    fn parse_path(&self, op: &'static str, raw: &str) -> Result<StoragePath, CacheError> {
        StoragePath::from_components(raw.split('/')).map_err(|e| CacheError::Failed {
            cache: CACHE,
            op,
            message: format!("recorded path {raw:?}: {e}"),
        })
    }

    fn record(
        &self,
        op: &'static str,
        script: &Script,
        digest: &Digest,
        path: &StoragePath,
    ) -> Result<Option<StoragePath>, CacheError> {
        let key = self.paths_key(digest);
        let first: Option<String> =
            self.redis
                .eval(op, script, &[&key], &[path.as_str().as_bytes()])?;
        first.map(|p| self.parse_path(op, &p)).transpose()
    }

    /// The times of `repo`'s hash `kind`, each field read as a `T` (a tag, a digest).
    fn times<T: std::str::FromStr>(
        &self,
        op: &'static str,
        kind: &str,
        repo: &RepoName,
    ) -> Result<Vec<(T, SystemTime)>, CacheError> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(self.key(kind, repo.as_str()));
        let raw: HashMap<String, u64> = self.redis.run(op, |conn, trips| {
            Ok(redis::from_redis_value(conn.counted(trips, &cmd)?)?)
        })?;
        raw.into_iter()
            .map(|(field, millis)| {
                let value = field.parse().map_err(|_| CacheError::Failed {
                    cache: CACHE,
                    op,
                    message: format!("damaged record {field:?}"),
                })?;
                Ok((value, UNIX_EPOCH + Duration::from_millis(millis)))
            })
            .collect()
    }

    /// One script call per repository, each field keeping its later time.
    fn record_times<'a>(
        &self,
        op: &'static str,
        kind: &str,
        records: impl Iterator<Item = (&'a RepoName, String, SystemTime)>,
    ) -> Result<(), CacheError> {
        let mut by_repo: BTreeMap<&str, Vec<Vec<u8>>> = BTreeMap::new();
        for (repo, field, at) in records {
            let millis = at
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis();
            let args = by_repo.entry(repo.as_str()).or_default();
            args.push(field.into_bytes());
            args.push(millis.to_string().into_bytes());
        }
        let calls: Vec<_> = by_repo
            .into_iter()
            .map(|(repo, args)| ScriptCall {
                script: &self.redis.scripts.later,
                key: self.key(kind, repo),
                args,
            })
            .collect();
        self.redis.eval_many(op, &calls)
    }
}

impl DedupeIndex for RedisCache {
    fn put(&self, digest: &Digest, path: &StoragePath) -> Result<(), CacheError> {
        self.record("record a path", &self.redis.scripts.add, digest, path)
            .map(drop)
    }

    fn put_many(&self, records: &[(Digest, StoragePath)]) -> Result<(), CacheError> {
        let calls: Vec<_> = records
            .iter()
            .map(|(digest, path)| ScriptCall {
                script: &self.redis.scripts.add,
                key: self.paths_key(digest),
                args: vec![path.as_str().as_bytes().to_vec()],
            })
            .collect();
        self.redis.eval_many("record paths", &calls)
    }

    fn add(&self, digest: &Digest, path: &StoragePath) -> Result<Option<StoragePath>, CacheError> {
        self.record("add a path", &self.redis.scripts.add, digest, path)
    }

    fn paths(&self, digest: &Digest) -> Result<Vec<StoragePath>, CacheError> {
        let mut cmd = redis::cmd("ZRANGE");
        cmd.arg(self.paths_key(digest)).arg(0).arg(-1);
        let raw: Vec<String> = self.redis.run("look up paths", |conn, trips| {
            Ok(redis::from_redis_value(conn.counted(trips, &cmd)?)?)
        })?;
        raw.iter()
            .map(|p| self.parse_path("look up paths", p))
            .collect()
    }

    fn put_original(&self, digest: &Digest, path: &StoragePath) -> Result<(), CacheError> {
        let key = self.paths_key(digest);
        self.redis.eval::<i64>(
            "record an original",
            &self.redis.scripts.put_original,
            &[&key],
            &[path.as_str().as_bytes()],
        )?;
        Ok(())
    }

    fn remove(&self, digest: &Digest, path: &StoragePath) -> Result<(), CacheError> {
        let mut cmd = redis::cmd("ZREM");
        cmd.arg(self.paths_key(digest)).arg(path.as_str());
        self.redis.run("forget a path", |conn, trips| {
            conn.counted(trips, &cmd).map(drop)
        })
    }
}

impl UsageLog for RedisCache {
    fn record_pushes(&self, pushes: &[(RepoName, Tag, SystemTime)]) -> Result<(), CacheError> {
        self.record_times(
            "record push times",
            "pushes",
            pushes.iter().map(|(r, t, at)| (r, t.to_string(), *at)),
        )
    }

    fn record_pulls(&self, pulls: &[(RepoName, Digest, SystemTime)]) -> Result<(), CacheError> {
        self.record_times(
            "record pull times",
            "pulls",
            pulls.iter().map(|(r, d, at)| (r, d.to_string(), *at)),
        )
    }

    fn pushes(&self, repo: &RepoName) -> Result<Vec<(Tag, SystemTime)>, CacheError> {
        self.times("read push times", "pushes", repo)
    }

    fn pulls(&self, repo: &RepoName) -> Result<Vec<(Digest, SystemTime)>, CacheError> {
        self.times("read pull times", "pulls", repo)
    }
}

impl Markers for RedisCache {
    fn marker(&self, key: MarkerKey) -> Result<Option<String>, CacheError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.key("marker", key.as_str()));
        self.redis.run("read a marker", |conn, trips| {
            Ok(redis::from_redis_value(conn.counted(trips, &cmd)?)?)
        })
    }

    fn set_marker(&self, key: MarkerKey, value: &str) -> Result<(), CacheError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key("marker", key.as_str())).arg(value);
        self.redis.run("set a marker", |conn, trips| {
            conn.counted(trips, &cmd).map(drop)
        })
    }
}

impl Leases for RedisCache {
    fn acquire(&self, key: LeaseKey, holder: &str, ttl: Duration) -> Result<bool, CacheError> {
        let lease = self.key("lease", key.as_str());
        let millis = ttl.as_millis().max(1).to_string();
        let taken: i64 = self.redis.eval(
            "take a lease",
            &self.redis.scripts.acquire,
            &[&lease],
            &[holder.as_bytes(), millis.as_bytes()],
        )?;
        Ok(taken == 1)
    }

    fn release(&self, key: LeaseKey, holder: &str) -> Result<(), CacheError> {
        let lease = self.key("lease", key.as_str());
        self.redis.eval::<i64>(
            "release a lease",
            &self.redis.scripts.release,
            &[&lease],
            &[holder.as_bytes()],
        )?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests;
