//! The embedded cache: LMDB through `heed`, in a directory of the store's root. One database
//! maps a digest to its paths (newline-separated, the original first), one holds the markers,
//! two hold push and pull times (decimal milliseconds). Writes are short LMDB write
//! transactions, which LMDB serialises.

use super::{Cache, CacheError, TimeKind};
use crate::digest::Digest;
use heed::types::Str;
use heed::{Database, Env, EnvFlags, EnvOpenOptions};
use std::path::Path;

const NAME: &str = "lmdb";

/// Address space reserved for the map; the file grows only as records are written. At about
/// 200 bytes per record this holds tens of millions of blobs.
const MAP_SIZE: usize = 16 << 30;

/// The LMDB cache of one store.
pub struct LmdbCache {
    env: Env,
    blobs: Database<Str, Str>,
    markers: Database<Str, Str>,
    pushed: Database<Str, Str>,
    pulled: Database<Str, Str>,
}

fn err(op: &'static str) -> impl FnOnce(heed::Error) -> CacheError {
    move |e| CacheError {
        cache: NAME,
        op,
        message: e.to_string(),
    }
}

impl LmdbCache {
    /// Opens (creating) the cache in `dir`. With `durable`, every write transaction is
    /// fsynced (the store's `commit`); without, a power loss may lose recent records or the
    /// whole cache, which the start-up pass rebuilds.
    pub fn open(dir: &Path, durable: bool) -> Result<LmdbCache, CacheError> {
        std::fs::create_dir_all(dir).map_err(|e| CacheError {
            cache: NAME,
            op: "create directory",
            message: format!("{}: {e}", dir.display()),
        })?;
        let mut options = EnvOpenOptions::new();
        options.map_size(MAP_SIZE).max_dbs(4);
        if !durable {
            // SAFETY: NO_SYNC trades durability only; the cache is rebuildable by design.
            unsafe { options.flags(EnvFlags::NO_SYNC) };
        }
        // SAFETY: berth opens each store's cache directory once per process (stores with the
        // same or nested roots are refused at start-up), as heed requires.
        let env = unsafe { options.open(dir) }.map_err(err("open"))?;
        let mut txn = env.write_txn().map_err(err("begin"))?;
        let blobs = env
            .create_database(&mut txn, Some("blobs"))
            .map_err(err("open blobs"))?;
        let markers = env
            .create_database(&mut txn, Some("markers"))
            .map_err(err("open markers"))?;
        let pushed = env
            .create_database(&mut txn, Some("pushed"))
            .map_err(err("open pushed"))?;
        let pulled = env
            .create_database(&mut txn, Some("pulled"))
            .map_err(err("open pulled"))?;
        txn.commit().map_err(err("commit"))?;
        Ok(LmdbCache {
            env,
            blobs,
            markers,
            pushed,
            pulled,
        })
    }

    fn times_db(&self, kind: TimeKind) -> Database<Str, Str> {
        match kind {
            TimeKind::Pushed => self.pushed,
            TimeKind::Pulled => self.pulled,
        }
    }

    /// Adds `path` to the record of `digest` within an open write transaction.
    fn add(&self, txn: &mut heed::RwTxn<'_>, digest: &str, path: &str) -> Result<(), CacheError> {
        if path.contains('\n') {
            return Err(CacheError {
                cache: NAME,
                op: "put",
                message: format!("path {path:?} contains a newline"),
            });
        }
        let current = self.blobs.get(txn, digest).map_err(err("get"))?;
        let updated = match current {
            Some(paths) if paths.split('\n').any(|p| p == path) => return Ok(()),
            Some(paths) => format!("{paths}\n{path}"),
            None => path.to_string(),
        };
        self.blobs.put(txn, digest, &updated).map_err(err("put"))
    }
}

impl Cache for LmdbCache {
    fn name(&self) -> &'static str {
        NAME
    }

    fn put(&self, digest: &Digest, path: &str) -> Result<(), CacheError> {
        self.put_many(&[(digest.clone(), path.to_string())])
    }

    fn put_many(&self, records: &[(Digest, String)]) -> Result<(), CacheError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut txn = self.env.write_txn().map_err(err("begin"))?;
        for (digest, path) in records {
            self.add(&mut txn, &digest.to_string(), path)?;
        }
        txn.commit().map_err(err("commit"))
    }

    fn paths(&self, digest: &Digest) -> Result<Vec<String>, CacheError> {
        let txn = self.env.read_txn().map_err(err("begin"))?;
        let paths = self
            .blobs
            .get(&txn, &digest.to_string())
            .map_err(err("get"))?;
        Ok(paths.map_or_else(Vec::new, |p| p.split('\n').map(str::to_string).collect()))
    }

    fn remove(&self, digest: &Digest, path: &str) -> Result<(), CacheError> {
        let key = digest.to_string();
        let mut txn = self.env.write_txn().map_err(err("begin"))?;
        let Some(paths) = self.blobs.get(&txn, &key).map_err(err("get"))? else {
            return Ok(());
        };
        let kept: Vec<&str> = paths.split('\n').filter(|p| *p != path).collect();
        if kept.is_empty() {
            self.blobs.delete(&mut txn, &key).map_err(err("delete"))?;
        } else {
            let kept = kept.join("\n");
            self.blobs.put(&mut txn, &key, &kept).map_err(err("put"))?;
        }
        txn.commit().map_err(err("commit"))
    }

    fn marker(&self, name: &str) -> Result<Option<String>, CacheError> {
        let txn = self.env.read_txn().map_err(err("begin"))?;
        Ok(self
            .markers
            .get(&txn, name)
            .map_err(err("get marker"))?
            .map(str::to_string))
    }

    fn set_marker(&self, name: &str, value: &str) -> Result<(), CacheError> {
        let mut txn = self.env.write_txn().map_err(err("begin"))?;
        self.markers
            .put(&mut txn, name, value)
            .map_err(err("set marker"))?;
        txn.commit().map_err(err("commit"))
    }

    fn record_times(&self, kind: TimeKind, times: &[(String, u64)]) -> Result<(), CacheError> {
        if times.is_empty() {
            return Ok(());
        }
        let db = self.times_db(kind);
        let mut txn = self.env.write_txn().map_err(err("begin"))?;
        for (key, millis) in times {
            let current = db
                .get(&txn, key)
                .map_err(err("get time"))?
                .and_then(|v| v.parse::<u64>().ok());
            if current.is_none_or(|c| c < *millis) {
                db.put(&mut txn, key, &millis.to_string())
                    .map_err(err("put time"))?;
            }
        }
        txn.commit().map_err(err("commit"))
    }

    fn times(&self, kind: TimeKind, prefix: &str) -> Result<Vec<(String, u64)>, CacheError> {
        let txn = self.env.read_txn().map_err(err("begin"))?;
        let mut found = Vec::new();
        for entry in self
            .times_db(kind)
            .prefix_iter(&txn, prefix)
            .map_err(err("list times"))?
        {
            let (key, value) = entry.map_err(err("list times"))?;
            if let Ok(millis) = value.parse() {
                found.push((key.to_string(), millis));
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lmdb_cache_conformance() {
        for durable in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let cache = LmdbCache::open(&dir.path().join("cache"), durable).unwrap();
            super::super::conformance::run(&cache);
        }
    }

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let d = Digest::sha256_of(b"x");
        {
            let cache = LmdbCache::open(dir.path(), false).unwrap();
            cache.put(&d, "a/blobs/sha256/x").unwrap();
            cache.set_marker("pass", "done").unwrap();
        }
        let cache = LmdbCache::open(dir.path(), false).unwrap();
        assert_eq!(cache.paths(&d).unwrap(), ["a/blobs/sha256/x"]);
        assert_eq!(cache.marker("pass").unwrap().as_deref(), Some("done"));
    }
}
