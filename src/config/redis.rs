//! `storage.cacheDriver` with `name: "redis"` (issue 14), read as zot reads it
//! (reference/003_43de0aa1d043bbfc.txt, "Cache drivers" > Redis; zot's
//! `pkg/api/config/redis`): either `url`, parsed as go-redis's `ParseURL` (or `ParseClusterURL`
//! when it names an `addr`) parses it, or, only when `url` is absent, the same options as
//! keys of `cacheDriver`, where `master_name` (a sentinel setup) can also be given, as for
//! go-redis's `UniversalOptions`: `master_name` set is a sentinel setup over the `addr`s, else
//! several `addr`s are a cluster and one is a single server. `keyprefix` (default `zot`) is
//! the first part of every key.
//!
//! Every option of zot's table changes what `cache::redis` does, except those the Rust client
//! has no such knob for (`LOGGED_ONLY`): they are accepted, checked for their type, and shown
//! in a debug line when the cache opens. A bad value or an unknown key is an error naming the
//! key. Integers and booleans may be written as strings, as zot's casts take them; durations
//! are Go durations (`"5s"`; in the URL also whole seconds, as go-redis reads them).

use crate::cache::redis::{Addr, RedisOptions, Secret, Topology};
use serde_json::Value;
use std::time::Duration;

/// A store's Redis cache settings: what the client does, and the options it only logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// The client's options.
    pub options: RedisOptions,
    /// `key=value` of the options accepted but without effect, for the debug line.
    pub logged_only: Vec<String>,
}

/// Options of zot's table the Rust client has no knob for.
const LOGGED_ONLY: &[&str] = &[
    "context_timeout_enabled",
    "min_idle_conns",
    "route_by_latency",
    "route_randomly",
    "disable_identity",
    "identity_suffix",
    "unstable_resp3",
];

/// The options go-redis's `ParseURL` reads from the query.
const URL_OPTIONS: &[&str] = &[
    "db",
    "protocol",
    "client_name",
    "max_retries",
    "min_retry_backoff",
    "max_retry_backoff",
    "dial_timeout",
    "read_timeout",
    "write_timeout",
    "pool_fifo",
    "pool_size",
    "pool_timeout",
    "min_idle_conns",
    "max_idle_conns",
    "max_active_conns",
    "conn_max_idle_time",
    "idle_timeout",
    "conn_max_lifetime",
    "max_conn_age",
    "skip_verify",
];

/// And those `ParseClusterURL` reads besides.
const CLUSTER_URL_OPTIONS: &[&str] = &[
    "addr",
    "max_redirects",
    "read_only",
    "route_by_latency",
    "route_randomly",
];

const DEFAULT_PORT: u16 = 6379;
const DEFAULT_SENTINEL_PORT: u16 = 26379;

/// Reads `cacheDriver` (at `key`); beside `url`, the other options are ignored as zot does,
/// with a warning.
pub(super) fn resolve(
    driver: &serde_json::Map<String, Value>,
    key: &str,
    warnings: &mut Vec<String>,
) -> Result<RedisSettings, String> {
    let at = |name: &str| format!("{key}.{name}");
    let mut reader = Reader::default();
    for (name, value) in driver {
        match name.as_str() {
            "name" => {}
            "keyprefix" => match value {
                Value::String(s) if !s.is_empty() => reader.key_prefix = Some(s.clone()),
                other => return Err(format!("{}: {other}: a non-empty string", at(name))),
            },
            "url" => match value {
                Value::String(s) => reader.url = Some(s.clone()),
                other => return Err(format!("{}: {other}: a redis:// URL", at(name))),
            },
            _ if !is_key(name) => {
                return Err(format!(
                    "{}: unknown option of the redis cache driver",
                    at(name)
                ));
            }
            _ => reader.keys.push((name.clone(), value.clone())),
        }
    }
    let mut options = match reader.url.take() {
        Some(url) => {
            if !reader.keys.is_empty() {
                let names: Vec<&str> = reader.keys.iter().map(|(n, _)| n.as_str()).collect();
                warnings.push(format!(
                    "{}: ignored beside {} (as zot does): {}",
                    key,
                    at("url"),
                    names.join(", ")
                ));
            }
            from_url(&url, &at("url"), &mut reader.logged_only)?
        }
        None => from_keys(&reader.keys, key, &mut reader.logged_only)?,
    };
    if let Some(prefix) = reader.key_prefix {
        options.key_prefix = prefix;
    }
    Ok(RedisSettings {
        options,
        logged_only: reader.logged_only,
    })
}

#[derive(Default)]
struct Reader {
    url: Option<String>,
    key_prefix: Option<String>,
    keys: Vec<(String, Value)>,
    logged_only: Vec<String>,
}

/// The individual keys zot's table lists.
fn is_key(name: &str) -> bool {
    URL_OPTIONS.contains(&name)
        || CLUSTER_URL_OPTIONS.contains(&name)
        || LOGGED_ONLY.contains(&name)
        || [
            "username",
            "password",
            "sentinel_username",
            "sentinel_password",
            "master_name",
        ]
        .contains(&name)
}

/// Options before the topology is known.
struct Builder {
    options: RedisOptions,
    addrs: Vec<Addr>,
    master_name: Option<String>,
    sentinel_username: Option<String>,
    sentinel_password: Option<Secret>,
    max_active_conns: Option<usize>,
}

impl Builder {
    fn new() -> Builder {
        Builder {
            options: RedisOptions::new(Topology::Cluster(Vec::new())),
            addrs: Vec::new(),
            master_name: None,
            sentinel_username: None,
            sentinel_password: None,
            max_active_conns: None,
        }
    }

    /// Sets option `name` to `value`; `at` names it in errors, `url` whether it comes from a
    /// URL's query (where a bare number of seconds is a duration).
    fn set(
        &mut self,
        name: &str,
        value: &Scalar,
        at: &str,
        url: bool,
        logged_only: &mut Vec<String>,
    ) -> Result<(), String> {
        let o = &mut self.options;
        let zero_is_default = |n: u64, default| if n == 0 { default } else { n };
        match name {
            "addr" => self
                .addrs
                .push(parse_addr(&value.text(), DEFAULT_PORT, at)?),
            "db" => o.db = value.int(at)?,
            "protocol" => {
                o.resp3 = match value.int(at)? {
                    2 => false,
                    3 => true,
                    n => return Err(format!("{at}: {n}: 2 or 3")),
                }
            }
            "client_name" => o.client_name = Some(value.text()),
            "username" => o.username = Some(value.text()).filter(|u| !u.is_empty()),
            "password" => o.password = Some(Secret(value.text())).filter(|p| !p.0.is_empty()),
            "sentinel_username" => self.sentinel_username = Some(value.text()),
            "sentinel_password" => self.sentinel_password = Some(Secret(value.text())),
            "master_name" => self.master_name = Some(value.text()).filter(|m| !m.is_empty()),
            // go-redis: -1 is no retries, 0 the default.
            "max_retries" => {
                o.max_retries = match value.int(at)? {
                    -1 => 0,
                    0 => 3,
                    n => u32::try_from(n).map_err(|_| format!("{at}: {n}: -1 or more"))?,
                }
            }
            "min_retry_backoff" => o.min_retry_backoff = value.duration(at, url)?,
            "max_retry_backoff" => o.max_retry_backoff = value.duration(at, url)?,
            "dial_timeout" => o.dial_timeout = value.duration(at, url)?,
            "read_timeout" => o.read_timeout = value.duration(at, url)?,
            "write_timeout" => o.write_timeout = value.duration(at, url)?,
            "pool_fifo" => o.pool_fifo = value.flag(at)?,
            "pool_size" => {
                o.pool_size = zero_is_default(value.count(at)?, o.pool_size as u64) as usize
            }
            "pool_timeout" => o.pool_timeout = value.duration(at, url)?,
            "max_idle_conns" => o.max_idle_conns = value.count(at)? as usize,
            "max_active_conns" => {
                self.max_active_conns = Some(value.count(at)? as usize).filter(|&n| n > 0)
            }
            "conn_max_idle_time" | "idle_timeout" => {
                o.conn_max_idle_time = Some(value.duration(at, url)?).filter(|d| !d.is_zero())
            }
            "conn_max_lifetime" | "max_conn_age" => {
                o.conn_max_lifetime = Some(value.duration(at, url)?).filter(|d| !d.is_zero())
            }
            "max_redirects" => {
                o.max_redirects = match value.int(at)? {
                    -1 => 0,
                    0 => 3,
                    n => u32::try_from(n).map_err(|_| format!("{at}: {n}: -1 or more"))?,
                }
            }
            "read_only" => o.read_only = value.flag(at)?,
            "skip_verify" => {
                if value.flag(at)? {
                    o.tls = o.tls.map(|_| false);
                }
            }
            "context_timeout_enabled"
            | "route_by_latency"
            | "route_randomly"
            | "disable_identity"
            | "unstable_resp3" => {
                logged_only.push(format!("{name}={}", value.flag(at)?));
            }
            "min_idle_conns" => logged_only.push(format!("{name}={}", value.count(at)?)),
            "identity_suffix" => logged_only.push(format!("{name}={}", value.text())),
            _ => unreachable!("{name} is an option (is_key, URL_OPTIONS)"),
        }
        Ok(())
    }

    /// go-redis's `UniversalOptions`: `master_name` is a sentinel setup, several addresses a
    /// cluster, one (or none: localhost) a single server.
    fn build(mut self) -> RedisOptions {
        if let Some(limit) = self.max_active_conns {
            self.options.pool_size = self.options.pool_size.min(limit);
        }
        self.options.topology = match self.master_name {
            Some(master_name) => Topology::Sentinel {
                master_name,
                sentinels: if self.addrs.is_empty() {
                    vec![localhost(DEFAULT_SENTINEL_PORT)]
                } else {
                    self.addrs
                },
                username: self.sentinel_username,
                password: self.sentinel_password,
            },
            None if self.addrs.len() > 1 => Topology::Cluster(self.addrs),
            None => Topology::Single(self.addrs.pop().unwrap_or_else(|| localhost(DEFAULT_PORT))),
        };
        self.options
    }
}

fn localhost(port: u16) -> Addr {
    Addr {
        host: "localhost".into(),
        port,
    }
}

/// The options as keys of `cacheDriver` (at `key`).
fn from_keys(
    keys: &[(String, Value)],
    key: &str,
    logged_only: &mut Vec<String>,
) -> Result<RedisOptions, String> {
    let mut builder = Builder::new();
    for (name, value) in keys {
        let at = format!("{key}.{name}");
        let scalars = match (name.as_str(), value) {
            // zot reads `addr` as a list (cast.ToStringSlice: also one string).
            ("addr", Value::Array(items)) => items
                .iter()
                .map(|v| Scalar::from_json(v, &at))
                .collect::<Result<Vec<_>, _>>()?,
            _ => vec![Scalar::from_json(value, &at)?],
        };
        for scalar in &scalars {
            builder.set(name, scalar, &at, false, logged_only)?;
        }
    }
    Ok(builder.build())
}

/// The options in a URL (at `key`), as go-redis parses it.
fn from_url(url: &str, key: &str, logged_only: &mut Vec<String>) -> Result<RedisOptions, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("{key}: {e}"))?;
    let mut builder = Builder::new();
    builder.options.tls = match parsed.scheme() {
        "redis" => None,
        "rediss" => Some(true),
        other => return Err(format!("{key}: scheme {other:?}: redis or rediss")),
    };
    let host = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .unwrap_or("localhost")
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    builder.addrs.push(Addr {
        host,
        port: parsed.port().unwrap_or(DEFAULT_PORT),
    });
    let decode = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    if !parsed.username().is_empty() {
        builder.options.username = Some(decode(parsed.username()));
    }
    if let Some(password) = parsed.password() {
        builder.options.password = Some(Secret(decode(password)));
    }
    match parsed.path().trim_matches('/') {
        "" => {}
        db => {
            builder.options.db = db
                .parse()
                .map_err(|_| format!("{key}: path {db:?}: a database number"))?
        }
    }
    // go-redis's ParseClusterURL when the URL names an `addr` (zot's test), else ParseURL.
    let cluster = url.contains("addr");
    for (name, value) in parsed.query_pairs() {
        let at = format!("{key}?{name}");
        let known = URL_OPTIONS.contains(&name.as_ref())
            || (cluster && CLUSTER_URL_OPTIONS.contains(&name.as_ref()));
        if !known {
            let hint = if name == "master_name" {
                " (a sentinel setup is written as individual keys, without url, as for zot)"
            } else {
                ""
            };
            return Err(format!("{at}: not an option of a redis URL{hint}"));
        }
        builder.set(&name, &Scalar(value.into_owned()), &at, true, logged_only)?;
    }
    let mut options = builder.build();
    // A cluster URL is a cluster even when it names one node.
    if let (true, Topology::Single(addr)) = (cluster, &options.topology) {
        options.topology = Topology::Cluster(vec![addr.clone()]);
    }
    Ok(options)
}

/// `host:port` (IPv6 in brackets), the port `default` when absent.
fn parse_addr(text: &str, default: u16, at: &str) -> Result<Addr, String> {
    let bad = || format!("{at}: {text:?}: host:port");
    let port = |p: &str| p.parse::<u16>().map_err(|_| bad());
    let (host, port) = match text.strip_prefix('[') {
        Some(rest) => match rest.split_once(']').ok_or_else(bad)? {
            (host, "") => (host, default),
            (host, tail) => (host, port(tail.strip_prefix(':').ok_or_else(bad)?)?),
        },
        None => match text.split_once(':') {
            Some((host, p)) => (host, port(p)?),
            None => (text, default),
        },
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok(Addr {
        host: host.to_string(),
        port,
    })
}

/// One option's value as text: a URL's query value, or a JSON scalar.
struct Scalar(String);

impl Scalar {
    fn from_json(value: &Value, at: &str) -> Result<Scalar, String> {
        match value {
            Value::String(s) => Ok(Scalar(s.clone())),
            Value::Number(n) => Ok(Scalar(n.to_string())),
            Value::Bool(b) => Ok(Scalar(b.to_string())),
            other => Err(format!("{at}: {other}: a string, number or boolean")),
        }
    }

    fn text(&self) -> String {
        self.0.clone()
    }

    fn int(&self, at: &str) -> Result<i64, String> {
        self.0
            .trim()
            .parse()
            .map_err(|_| format!("{at}: {:?}: an integer", self.0))
    }

    fn count(&self, at: &str) -> Result<u64, String> {
        self.0
            .trim()
            .parse()
            .map_err(|_| format!("{at}: {:?}: a whole number, 0 or more", self.0))
    }

    /// Go's `strconv.ParseBool`.
    fn flag(&self, at: &str) -> Result<bool, String> {
        match self.0.trim() {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
            "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
            other => Err(format!("{at}: {other:?}: true or false")),
        }
    }

    /// A Go duration; in a URL also whole seconds.
    fn duration(&self, at: &str, url: bool) -> Result<Duration, String> {
        let text = self.0.trim();
        if let (true, Ok(seconds)) = (url, text.parse::<u64>()) {
            return Ok(Duration::from_secs(seconds));
        }
        super::duration::parse(text).map_err(|e| format!("{at}: {e}"))
    }
}

#[cfg(test)]
mod tests;
