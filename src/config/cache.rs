//! `storage.remoteCache` and `storage.cacheDriver` (zot's "Cache drivers"): which cache a
//! store keeps its dedupe index, usage times and markers in. Without `remoteCache` it is the
//! embedded LMDB cache (zot's `boltdb` place); with `remoteCache: true`, the shared cache
//! `cacheDriver.name` names, each driver's keys read by its own module.

use super::redis::{self, RedisSettings};
use serde_json::Value;

/// A store's cache backend, as the composition root builds it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CacheBackend {
    /// The embedded LMDB cache in `<rootDirectory>/.berth/cache` (zot's `boltdb` place).
    #[default]
    Lmdb,
    /// A Redis shared by every instance serving the store (`name: "redis"`).
    Redis(Box<RedisSettings>),
    /// A DynamoDB table shared by every instance serving the store (`name: "dynamodb"`).
    DynamoDb(Box<super::dynamodb::DynamoDbSettings>),
}

impl CacheBackend {
    /// Whether several berth processes may share the cache, and so serve one root (issue
    /// 14): then no root lock is taken, and the sweeps take leases instead.
    pub fn is_shared(&self) -> bool {
        match self {
            CacheBackend::Lmdb => false,
            CacheBackend::Redis(_) | CacheBackend::DynamoDb(_) => true,
        }
    }
}

/// Reads one store's `remoteCache` and `cacheDriver`; `key` makes a key path of the store's
/// (`storage.cacheDriver`), `root` is its root directory, for messages.
pub(super) fn resolve(
    remote_cache: Option<bool>,
    driver: Option<&Value>,
    key: &dyn Fn(&str) -> String,
    root: &str,
    warnings: &mut Vec<String>,
) -> Result<CacheBackend, String> {
    let at = key("cacheDriver");
    let driver = match driver {
        None if remote_cache == Some(true) => {
            return Err(format!("{at}: required with {}: true", key("remoteCache")));
        }
        None => return Ok(CacheBackend::Lmdb),
        Some(Value::Object(map)) => map,
        Some(other) => return Err(format!("{at}: {other}: an object with a name")),
    };
    let name = match driver.get("name") {
        Some(Value::String(name)) => name.as_str(),
        _ => {
            return Err(format!(
                "{at}.name: required (\"redis\", \"dynamodb\", or \"boltdb\")"
            ));
        }
    };
    match (name, remote_cache == Some(true)) {
        // zot's local cache: berth's embedded cache plays its part.
        ("boltdb", false) => {
            warnings.push(format!(
                "{at}: boltdb is zot's embedded cache; berth uses its own (LMDB, in {root}/.berth)"
            ));
            Ok(CacheBackend::Lmdb)
        }
        ("boltdb", true) => Err(format!(
            "{at}.name: boltdb is not a remote cache; remove {}",
            key("remoteCache")
        )),
        (_, false) => Err(format!(
            "{at}: a remote cache needs {}: true",
            key("remoteCache")
        )),
        ("redis", true) => Ok(CacheBackend::Redis(Box::new(redis::resolve(
            driver, &at, warnings,
        )?))),
        ("dynamodb", true) => Ok(CacheBackend::DynamoDb(Box::new(super::dynamodb::resolve(
            driver, &at, warnings,
        )?))),
        (other, true) => Err(format!(
            "{at}.name: {other:?}: not a cache driver of this berth version (\"redis\", \"dynamodb\")"
        )),
    }
}
