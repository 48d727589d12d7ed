//! The embedded cache: LMDB through `heed`, in a directory of the store's root. One database
//! maps a digest to its original path (the first recorded, or the one `put_original` named
//! when the file system took no more links to the one before), one holds a key
//! `<digest> NUL <sha256 of path>` per recorded copy with the path as its value (a hash, so
//! the key stays under LMDB's 511 bytes for any digest and name), one holds the markers, two
//! hold push and pull times (decimal milliseconds). Writes are short LMDB write transactions,
//! which LMDB serialises.
//!
//! One key per copy (issue 11): the first version kept every path of a digest in one value,
//! rewritten and scanned on every add, so a digest in 50,000 repositories made the start-up
//! pass quadratic (9 minutes and 2 GB without finishing). Now adding, finding the original
//! and removing a copy each cost O(log N) whatever the number of copies.

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
    originals: Database<Str, Str>,
    copies: Database<Str, Str>,
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
        options.map_size(MAP_SIZE).max_dbs(6);
        if !durable {
            // SAFETY: NO_SYNC trades durability only; the cache is rebuildable by design.
            unsafe { options.flags(EnvFlags::NO_SYNC) };
        }
        // SAFETY: berth opens each store's cache directory once per process (stores with the
        // same or nested roots are refused at start-up), as heed requires.
        let env = unsafe { options.open(dir) }.map_err(err("open"))?;
        let mut txn = env.write_txn().map_err(err("begin"))?;
        let originals = env
            .create_database(&mut txn, Some("originals"))
            .map_err(err("open originals"))?;
        let copies = env
            .create_database(&mut txn, Some("copies"))
            .map_err(err("open copies"))?;
        let markers: Database<Str, Str> = env
            .create_database(&mut txn, Some("markers"))
            .map_err(err("open markers"))?;
        // A cache of the first layout (all paths of a digest in one value): emptied, with
        // the markers, so the start-up pass records everything again in this one.
        let first_layout: Option<Database<Str, Str>> = env
            .open_database(&txn, Some("blobs"))
            .map_err(err("open blobs"))?;
        if let Some(old) = first_layout
            && !old.is_empty(&txn).map_err(err("look at blobs"))?
        {
            old.clear(&mut txn).map_err(err("clear blobs"))?;
            markers.clear(&mut txn).map_err(err("clear markers"))?;
        }
        let pushed = env
            .create_database(&mut txn, Some("pushed"))
            .map_err(err("open pushed"))?;
        let pulled = env
            .create_database(&mut txn, Some("pulled"))
            .map_err(err("open pulled"))?;
        txn.commit().map_err(err("commit"))?;
        Ok(LmdbCache {
            env,
            originals,
            copies,
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

    /// Adds `path` to the record of `digest` within an open write transaction, as `role`
    /// says.
    fn add(
        &self,
        txn: &mut heed::RwTxn<'_>,
        digest: &str,
        path: &str,
        role: Role,
    ) -> Result<(), CacheError> {
        if path.contains('\0') {
            return Err(CacheError {
                cache: NAME,
                op: "put",
                message: format!("path {path:?} contains a NUL"),
            });
        }
        self.copies
            .put(txn, &copy_key(digest, path), path)
            .map_err(err("put"))?;
        let becomes_original = match role {
            Role::Original => true,
            Role::Copy => self
                .originals
                .get(txn, digest)
                .map_err(err("get"))?
                .is_none(),
        };
        if becomes_original {
            self.originals.put(txn, digest, path).map_err(err("put"))?;
        }
        Ok(())
    }

    /// The recorded paths of `digest`, in key order.
    fn copies_of(&self, txn: &heed::RoTxn<'_>, digest: &str) -> Result<Vec<String>, CacheError> {
        let prefix = copies_prefix(digest);
        let mut paths = Vec::new();
        for entry in self
            .copies
            .prefix_iter(txn, &prefix)
            .map_err(err("list copies"))?
        {
            let (_, path) = entry.map_err(err("list copies"))?;
            paths.push(path.to_string());
        }
        Ok(paths)
    }
}

/// Whether a path `add`s records becomes the original of its digest.
#[derive(Clone, Copy)]
enum Role {
    /// Only when the digest has no original yet (`put`).
    Copy,
    /// Whatever was the original before (`put_original`).
    Original,
}

/// The keys of the recorded copies of `digest` start with this (NUL is in no digest).
fn copies_prefix(digest: &str) -> String {
    format!("{digest}\0")
}

/// The key of one recorded copy.
fn copy_key(digest: &str, path: &str) -> String {
    format!(
        "{}{}",
        copies_prefix(digest),
        Digest::sha256_of(path.as_bytes()).hex()
    )
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
            self.add(&mut txn, &digest.to_string(), path, Role::Copy)?;
        }
        txn.commit().map_err(err("commit"))
    }

    fn put_original(&self, digest: &Digest, path: &str) -> Result<(), CacheError> {
        let mut txn = self.env.write_txn().map_err(err("begin"))?;
        self.add(&mut txn, &digest.to_string(), path, Role::Original)?;
        txn.commit().map_err(err("commit"))
    }

    fn paths(&self, digest: &Digest) -> Result<Vec<String>, CacheError> {
        let key = digest.to_string();
        let txn = self.env.read_txn().map_err(err("begin"))?;
        let Some(original) = self.originals.get(&txn, &key).map_err(err("get"))? else {
            return Ok(Vec::new());
        };
        let mut paths = vec![original.to_string()];
        paths.extend(
            self.copies_of(&txn, &key)?
                .into_iter()
                .filter(|p| p != original),
        );
        Ok(paths)
    }

    fn original(&self, digest: &Digest) -> Result<Option<String>, CacheError> {
        let txn = self.env.read_txn().map_err(err("begin"))?;
        Ok(self
            .originals
            .get(&txn, &digest.to_string())
            .map_err(err("get"))?
            .map(str::to_string))
    }

    fn remove(&self, digest: &Digest, path: &str) -> Result<(), CacheError> {
        let key = digest.to_string();
        let mut txn = self.env.write_txn().map_err(err("begin"))?;
        self.copies
            .delete(&mut txn, &copy_key(&key, path))
            .map_err(err("delete"))?;
        let was_original = self.originals.get(&txn, &key).map_err(err("get"))? == Some(path);
        if was_original {
            let prefix = copies_prefix(&key);
            let next = match self
                .copies
                .prefix_iter(&txn, &prefix)
                .map_err(err("list copies"))?
                .next()
            {
                Some(entry) => Some(entry.map_err(err("list copies"))?.1.to_string()),
                None => None,
            };
            match next {
                Some(next) => self.originals.put(&mut txn, &key, &next),
                None => self.originals.delete(&mut txn, &key).map(|_| ()),
            }
            .map_err(err("promote"))?;
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
    fn a_cache_of_the_first_layout_is_emptied_for_the_pass_to_refill() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut options = EnvOpenOptions::new();
            options.map_size(1 << 20).max_dbs(4);
            // SAFETY: opened once, in this test only.
            let env = unsafe { options.open(dir.path()) }.unwrap();
            let mut txn = env.write_txn().unwrap();
            let blobs: Database<Str, Str> = env.create_database(&mut txn, Some("blobs")).unwrap();
            blobs
                .put(&mut txn, "sha256:x", "a/blobs/x\nb/blobs/x")
                .unwrap();
            let markers: Database<Str, Str> =
                env.create_database(&mut txn, Some("markers")).unwrap();
            markers.put(&mut txn, "dedupe-pass", "{}").unwrap();
            txn.commit().unwrap();
        }
        let cache = LmdbCache::open(dir.path(), false).unwrap();
        assert_eq!(cache.marker("dedupe-pass").unwrap(), None);
        let d = Digest::sha256_of(b"y");
        cache.put(&d, "a/blobs/y").unwrap();
        assert_eq!(cache.paths(&d).unwrap(), ["a/blobs/y"]);
    }

    #[test]
    fn many_copies_of_one_digest_cost_no_more_per_record() {
        let dir = tempfile::tempdir().unwrap();
        let cache = LmdbCache::open(dir.path(), false).unwrap();
        let d = Digest::sha256_of(b"base layer");
        let records: Vec<(Digest, String)> = (0..50_000)
            .map(|i| (d.clone(), format!("mirror/r{i:05}/blobs/sha256/x")))
            .collect();
        cache.put_many(&records).unwrap();
        assert_eq!(
            cache.original(&d).unwrap().as_deref(),
            Some("mirror/r00000/blobs/sha256/x")
        );
        assert_eq!(cache.paths(&d).unwrap().len(), 50_000);
        cache.remove(&d, "mirror/r00000/blobs/sha256/x").unwrap();
        let promoted = cache.original(&d).unwrap().unwrap();
        assert_ne!(promoted, "mirror/r00000/blobs/sha256/x");
        let paths = cache.paths(&d).unwrap();
        assert_eq!(
            (paths.len(), paths[0].as_str()),
            (49_999, promoted.as_str())
        );
    }

    #[test]
    fn the_longest_names_under_sha512_are_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let cache = LmdbCache::open(dir.path(), false).unwrap();
        let d = Digest::of(crate::digest::Algorithm::Sha512, b"layer");
        let name = format!("{}/{}", "a".repeat(127), "b".repeat(127));
        let path = format!("{name}/blobs/sha512/{}", d.hex());
        cache.put(&d, &path).unwrap();
        cache.put(&d, "other/blobs/x").unwrap();
        assert_eq!(
            cache.paths(&d).unwrap(),
            [path.clone(), "other/blobs/x".into()]
        );
        cache.remove(&d, &path).unwrap();
        assert_eq!(
            cache.original(&d).unwrap().as_deref(),
            Some("other/blobs/x")
        );
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
