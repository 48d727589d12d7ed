//! The embedded cache: LMDB through `heed`. `Lmdb` is one environment (a directory); any
//! number of namespaces share it, each through an `LmdbCache` that implements the cache
//! traits. berth opens one environment per store root, in the root, for that store.
//!
//! Every key starts with the first 32 hex digits (128 bits) of the SHA-256 of the namespace's
//! name: fixed length, so a prefix scan of one namespace never reaches into another, and
//! short, so keys stay under LMDB's 511 bytes for any namespace, digest and name. After it:
//! - `ns.originals`: `<digest>` → the original path (the first recorded, or the one
//!   `put_original` named when the file system took no more links to the one before);
//! - `ns.copies`: `<digest> NUL <sha256 of path>` → path, one key per recorded copy (a hash,
//!   so the key stays short);
//! - `ns.markers`: `<name>` → value;
//! - `ns.pushed`: `<repository> LF <tag>` and `ns.pulled`: `<repository> LF <digest>` →
//!   decimal milliseconds since the Unix epoch (no name, tag or digest holds NUL or LF);
//! - `ns.leases`: `<name>` → `<expiry, decimal milliseconds since the epoch> LF <holder>`:
//!   wall-clock expiry, since the processes sharing an environment share no other clock.
//!
//! Writes are short LMDB write transactions, which LMDB serialises.
//!
//! One key per copy (issue 11): the first version kept every path of a digest in one value,
//! rewritten and scanned on every add, so a digest in 50,000 repositories made the start-up
//! pass quadratic (9 minutes and 2 GB without finishing). Now adding, finding the original
//! and removing a copy each cost O(log N) whatever the number of copies.
//!
//! Older layouts: a cache of one store without namespaces (databases named `originals`,
//! `copies`, `markers`, `pushed`, `pulled`) is moved into the first namespace opened in it,
//! which is its store's, so neither the records nor the retention times (which no pass can
//! rebuild) are lost on upgrade; a cache of the very first layout (`blobs`) is emptied, with
//! its markers, so the start-up pass records everything again.

use super::{CacheError, DedupeIndex, LeaseKey, Leases, MarkerKey, Markers, Namespace, UsageLog};
use crate::digest::Digest;
use crate::oci::{RepoName, Tag};
use crate::storage::driver::StoragePath;
use heed::types::{Bytes, Str};
use heed::{Database, Env, EnvFlags, EnvOpenOptions, MdbError, RoTxn, RwTxn};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const NAME: &str = "lmdb";

/// Address space reserved for the map by default; the file grows only as records are
/// written. At about 200 bytes per record this holds tens of millions of blobs.
pub const MAP_SIZE: usize = 16 << 30;

/// Length of the namespace prefix of every key.
const PREFIX_LEN: usize = 32;

/// How an environment is opened.
#[derive(Debug, Clone, Copy)]
pub struct LmdbOptions {
    /// Every write transaction is fsynced (the store's `commit`); without, a power loss may
    /// lose recent records or the whole cache, which the start-up pass rebuilds.
    pub durable: bool,
    /// Bytes the map may grow to; writes past it fail `Unavailable` (map full).
    pub map_size: usize,
}

impl LmdbOptions {
    /// The default map size, durable or not.
    pub fn new(durable: bool) -> LmdbOptions {
        LmdbOptions {
            durable,
            map_size: MAP_SIZE,
        }
    }
}

/// The databases of the namespaced layout.
#[derive(Clone, Copy)]
struct Databases {
    originals: Database<Bytes, Str>,
    copies: Database<Bytes, Str>,
    markers: Database<Bytes, Str>,
    pushed: Database<Bytes, Str>,
    pulled: Database<Bytes, Str>,
    leases: Database<Bytes, Str>,
}

/// One LMDB environment, shared by the namespaces opened in it.
pub struct Lmdb {
    env: Env,
    dbs: Databases,
    /// Whether records of the layout without namespaces wait for the first namespace.
    legacy: AtomicBool,
}

/// The records of one namespace in an `Lmdb` environment.
pub struct LmdbCache {
    env: Env,
    dbs: Databases,
    prefix: [u8; PREFIX_LEN],
}

/// Names of the layout without namespaces, each with the database its records move to.
const LEGACY: [&str; 5] = ["originals", "copies", "markers", "pushed", "pulled"];

/// Maps a heed error: a full map or disk, or a full reader table, refuse writes now but not
/// later (after records are removed, the disk is freed or readers finish), so they are
/// `Unavailable`; anything else is a failure.
fn err(op: &'static str) -> impl FnOnce(heed::Error) -> CacheError {
    move |e| {
        let unavailable = match &e {
            heed::Error::Mdb(MdbError::MapFull | MdbError::ReadersFull) => true,
            heed::Error::Io(io) => refused_now(io),
            _ => false,
        };
        cache_error(op, e.to_string(), unavailable)
    }
}

/// Whether an I/O error says the disk refuses writes now: full, over quota, read-only or
/// not ours to write (an operator can fix each without restarting berth).
fn refused_now(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSPC | libc::EDQUOT | libc::EACCES | libc::EROFS)
    )
}

fn cache_error(op: &'static str, message: String, unavailable: bool) -> CacheError {
    if unavailable {
        CacheError::Unavailable {
            cache: NAME,
            op,
            message,
        }
    } else {
        CacheError::Failed {
            cache: NAME,
            op,
            message,
        }
    }
}

impl Lmdb {
    /// Opens (creating) the environment in `dir`.
    pub fn open(dir: &Path, options: LmdbOptions) -> Result<Lmdb, CacheError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            let message = format!("{}: {e}", dir.display());
            cache_error("create directory", message, refused_now(&e))
        })?;
        let mut env_options = EnvOpenOptions::new();
        env_options
            .map_size(options.map_size)
            .max_dbs((LEGACY.len() + 7) as u32);
        if !options.durable {
            // SAFETY: NO_SYNC trades durability only; the cache is rebuildable by design.
            unsafe { env_options.flags(EnvFlags::NO_SYNC) };
        }
        // SAFETY: berth opens each cache directory once per process (stores with the same or
        // nested roots are refused at start-up), as heed requires.
        let env = unsafe { env_options.open(dir) }.map_err(err("open"))?;
        let mut txn = env.write_txn().map_err(err("begin"))?;
        let mut create = |name: &'static str| env.create_database(&mut txn, Some(name));
        let dbs = Databases {
            originals: create("ns.originals").map_err(err("open originals"))?,
            copies: create("ns.copies").map_err(err("open copies"))?,
            markers: create("ns.markers").map_err(err("open markers"))?,
            pushed: create("ns.pushed").map_err(err("open pushed"))?,
            pulled: create("ns.pulled").map_err(err("open pulled"))?,
            leases: create("ns.leases").map_err(err("open leases"))?,
        };
        // The very first layout (all paths of a digest in one value): emptied, with its
        // markers, so the start-up pass records everything again.
        let first_layout: Option<Database<Str, Str>> = env
            .open_database(&txn, Some("blobs"))
            .map_err(err("open blobs"))?;
        if let Some(old) = first_layout
            && !old.is_empty(&txn).map_err(err("look at blobs"))?
        {
            old.clear(&mut txn).map_err(err("clear blobs"))?;
            if let Some(markers) = legacy_db(&env, &txn, "markers")? {
                markers.clear(&mut txn).map_err(err("clear markers"))?;
            }
        }
        let mut legacy = false;
        for name in LEGACY {
            if let Some(db) = legacy_db(&env, &txn, name)? {
                legacy |= !db.is_empty(&txn).map_err(err("look at the old layout"))?;
            }
        }
        txn.commit().map_err(err("commit"))?;
        Ok(Lmdb {
            env,
            dbs,
            legacy: AtomicBool::new(legacy),
        })
    }

    /// The records of `namespace`. The first namespace opened also takes the records of the
    /// layout without namespaces, if any (see the module doc).
    pub fn namespace(&self, namespace: &Namespace) -> Result<LmdbCache, CacheError> {
        let mut prefix = [0; PREFIX_LEN];
        prefix.copy_from_slice(namespace.hashed().as_bytes());
        let cache = LmdbCache {
            env: self.env.clone(),
            dbs: self.dbs,
            prefix,
        };
        if self.legacy.swap(false, Ordering::SeqCst) {
            cache.adopt_legacy()?;
        }
        Ok(cache)
    }
}

/// A database of the layout without namespaces, when the environment has it.
fn legacy_db(
    env: &Env,
    txn: &RoTxn<'_>,
    name: &'static str,
) -> Result<Option<Database<Bytes, Str>>, CacheError> {
    env.open_database(txn, Some(name))
        .map_err(err("open the old layout"))
}

impl LmdbCache {
    /// `parts` after this namespace's prefix.
    fn key(&self, parts: &[&[u8]]) -> Vec<u8> {
        let mut key = self.prefix.to_vec();
        for part in parts {
            key.extend_from_slice(part);
        }
        key
    }

    /// Moves the records of the layout without namespaces into this namespace: each key
    /// gains the prefix, and nothing else changed.
    fn adopt_legacy(&self) -> Result<(), CacheError> {
        let mut txn = self.env.write_txn().map_err(err("begin"))?;
        let targets = [
            self.dbs.originals,
            self.dbs.copies,
            self.dbs.markers,
            self.dbs.pushed,
            self.dbs.pulled,
        ];
        let mut moved = 0usize;
        for (name, target) in LEGACY.into_iter().zip(targets) {
            let Some(old) = legacy_db(&self.env, &txn, name)? else {
                continue;
            };
            let mut records = Vec::new();
            for entry in old.iter(&txn).map_err(err("read the old layout"))? {
                let (key, value) = entry.map_err(err("read the old layout"))?;
                records.push((self.key(&[key]), value.to_string()));
            }
            for (key, value) in &records {
                target
                    .put(&mut txn, key, value)
                    .map_err(err("move the old layout"))?;
            }
            moved += records.len();
            old.clear(&mut txn).map_err(err("clear the old layout"))?;
        }
        txn.commit().map_err(err("commit"))?;
        tracing::info!(
            records = moved,
            "lmdb cache: moved the records of the layout without namespaces into this store's"
        );
        Ok(())
    }

    fn original_key(&self, digest: &Digest) -> Vec<u8> {
        self.key(&[digest.to_string().as_bytes()])
    }

    /// The keys of the recorded copies of `digest` start with this (NUL is in no digest).
    fn copies_prefix(&self, digest: &Digest) -> Vec<u8> {
        self.key(&[digest.to_string().as_bytes(), b"\0"])
    }

    fn copy_key(&self, digest: &Digest, path: &StoragePath) -> Vec<u8> {
        let mut key = self.copies_prefix(digest);
        key.extend_from_slice(Digest::sha256_of(path.as_str().as_bytes()).hex().as_bytes());
        key
    }

    /// Adds `path` to the record of `digest` within an open write transaction, as `role`
    /// says.
    fn add(
        &self,
        txn: &mut RwTxn<'_>,
        digest: &Digest,
        path: &StoragePath,
        role: Role,
    ) -> Result<(), CacheError> {
        self.dbs
            .copies
            .put(txn, &self.copy_key(digest, path), path.as_str())
            .map_err(err("put"))?;
        let key = self.original_key(digest);
        let becomes_original = match role {
            Role::Original => true,
            Role::Copy => self
                .dbs
                .originals
                .get(txn, &key)
                .map_err(err("get"))?
                .is_none(),
        };
        if becomes_original {
            self.dbs
                .originals
                .put(txn, &key, path.as_str())
                .map_err(err("put"))?;
        }
        Ok(())
    }

    /// The recorded paths of `digest`, in key order.
    fn copies_of(&self, txn: &RoTxn<'_>, digest: &Digest) -> Result<Vec<StoragePath>, CacheError> {
        let mut paths = Vec::new();
        for entry in self
            .dbs
            .copies
            .prefix_iter(txn, &self.copies_prefix(digest))
            .map_err(err("list copies"))?
        {
            let (_, path) = entry.map_err(err("list copies"))?;
            paths.push(parse_path(path)?);
        }
        Ok(paths)
    }

    fn write(
        &self,
        f: impl FnOnce(&mut RwTxn<'_>) -> Result<(), CacheError>,
    ) -> Result<(), CacheError> {
        let mut txn = self.env.write_txn().map_err(err("begin"))?;
        f(&mut txn)?;
        txn.commit().map_err(err("commit"))
    }

    /// Records `times` in `db` under `<repository> LF <item>`, keeping the later time.
    fn record_times<'a>(
        &self,
        db: Database<Bytes, Str>,
        times: impl ExactSizeIterator<Item = (&'a RepoName, String, SystemTime)>,
    ) -> Result<(), CacheError> {
        if times.len() == 0 {
            return Ok(());
        }
        self.write(|txn| {
            for (repo, item, at) in times {
                let key = self.key(&[repo.as_str().as_bytes(), b"\n", item.as_bytes()]);
                let millis = millis(at);
                let current = db
                    .get(txn, &key)
                    .map_err(err("get time"))?
                    .and_then(|v| v.parse::<u64>().ok());
                if current.is_none_or(|c| c < millis) {
                    db.put(txn, &key, &millis.to_string())
                        .map_err(err("put time"))?;
                }
            }
            Ok(())
        })
    }

    /// The times recorded in `db` for `repo`'s items, each item parsed by `parse` (records
    /// that do not parse are skipped: they only steer retention).
    fn times<T>(
        &self,
        db: Database<Bytes, Str>,
        repo: &RepoName,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Vec<(T, SystemTime)>, CacheError> {
        let prefix = self.key(&[repo.as_str().as_bytes(), b"\n"]);
        let txn = self.env.read_txn().map_err(err("begin"))?;
        let mut found = Vec::new();
        for entry in db.prefix_iter(&txn, &prefix).map_err(err("list times"))? {
            let (key, value) = entry.map_err(err("list times"))?;
            let item = std::str::from_utf8(&key[prefix.len()..])
                .ok()
                .and_then(&parse);
            if let (Some(item), Ok(ms)) = (item, value.parse::<u64>()) {
                found.push((item, UNIX_EPOCH + Duration::from_millis(ms)));
            }
        }
        Ok(found)
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

fn parse_path(recorded: &str) -> Result<StoragePath, CacheError> {
    StoragePath::from_components(recorded.split('/'))
        .map_err(|e| cache_error("read a path", format!("{recorded:?}: {e}"), false))
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl DedupeIndex for LmdbCache {
    fn put(&self, digest: &Digest, path: &StoragePath) -> Result<(), CacheError> {
        self.write(|txn| self.add(txn, digest, path, Role::Copy))
    }

    fn put_many(&self, records: &[(Digest, StoragePath)]) -> Result<(), CacheError> {
        if records.is_empty() {
            return Ok(());
        }
        self.write(|txn| {
            records
                .iter()
                .try_for_each(|(digest, path)| self.add(txn, digest, path, Role::Copy))
        })
    }

    fn add(&self, digest: &Digest, path: &StoragePath) -> Result<Option<StoragePath>, CacheError> {
        let mut before = None;
        self.write(|txn| {
            before = self
                .dbs
                .originals
                .get(txn, &self.original_key(digest))
                .map_err(err("get"))?
                .map(parse_path)
                .transpose()?;
            self.add(txn, digest, path, Role::Copy)
        })?;
        Ok(before)
    }

    fn put_original(&self, digest: &Digest, path: &StoragePath) -> Result<(), CacheError> {
        self.write(|txn| self.add(txn, digest, path, Role::Original))
    }

    fn paths(&self, digest: &Digest) -> Result<Vec<StoragePath>, CacheError> {
        let txn = self.env.read_txn().map_err(err("begin"))?;
        let Some(original) = self
            .dbs
            .originals
            .get(&txn, &self.original_key(digest))
            .map_err(err("get"))?
        else {
            return Ok(Vec::new());
        };
        let original = parse_path(original)?;
        let mut paths = self.copies_of(&txn, digest)?;
        paths.retain(|p| *p != original);
        paths.insert(0, original);
        Ok(paths)
    }

    fn original(&self, digest: &Digest) -> Result<Option<StoragePath>, CacheError> {
        let txn = self.env.read_txn().map_err(err("begin"))?;
        self.dbs
            .originals
            .get(&txn, &self.original_key(digest))
            .map_err(err("get"))?
            .map(parse_path)
            .transpose()
    }

    fn remove(&self, digest: &Digest, path: &StoragePath) -> Result<(), CacheError> {
        self.write(|txn| {
            self.dbs
                .copies
                .delete(txn, &self.copy_key(digest, path))
                .map_err(err("delete"))?;
            let key = self.original_key(digest);
            let was_original =
                self.dbs.originals.get(txn, &key).map_err(err("get"))? == Some(path.as_str());
            if was_original {
                let next = match self
                    .dbs
                    .copies
                    .prefix_iter(txn, &self.copies_prefix(digest))
                    .map_err(err("list copies"))?
                    .next()
                {
                    Some(entry) => Some(entry.map_err(err("list copies"))?.1.to_string()),
                    None => None,
                };
                match next {
                    Some(next) => self.dbs.originals.put(txn, &key, &next),
                    None => self.dbs.originals.delete(txn, &key).map(|_| ()),
                }
                .map_err(err("promote"))?;
            }
            Ok(())
        })
    }
}

impl UsageLog for LmdbCache {
    fn record_pushes(&self, pushes: &[(RepoName, Tag, SystemTime)]) -> Result<(), CacheError> {
        let items = pushes.iter().map(|(r, t, at)| (r, t.to_string(), *at));
        self.record_times(self.dbs.pushed, items)
    }

    fn record_pulls(&self, pulls: &[(RepoName, Digest, SystemTime)]) -> Result<(), CacheError> {
        let items = pulls.iter().map(|(r, d, at)| (r, d.to_string(), *at));
        self.record_times(self.dbs.pulled, items)
    }

    fn pushes(&self, repo: &RepoName) -> Result<Vec<(Tag, SystemTime)>, CacheError> {
        self.times(self.dbs.pushed, repo, |tag| tag.parse().ok())
    }

    fn pulls(&self, repo: &RepoName) -> Result<Vec<(Digest, SystemTime)>, CacheError> {
        self.times(self.dbs.pulled, repo, |digest| digest.parse().ok())
    }
}

impl Markers for LmdbCache {
    fn marker(&self, key: MarkerKey) -> Result<Option<String>, CacheError> {
        let txn = self.env.read_txn().map_err(err("begin"))?;
        Ok(self
            .dbs
            .markers
            .get(&txn, &self.key(&[key.as_str().as_bytes()]))
            .map_err(err("get marker"))?
            .map(str::to_string))
    }

    fn set_marker(&self, key: MarkerKey, value: &str) -> Result<(), CacheError> {
        self.write(|txn| {
            self.dbs
                .markers
                .put(txn, &self.key(&[key.as_str().as_bytes()]), value)
                .map_err(err("set marker"))
        })
    }
}

impl Leases for LmdbCache {
    fn acquire(&self, key: LeaseKey, holder: &str, ttl: Duration) -> Result<bool, CacheError> {
        let mut taken = false;
        // One write transaction: LMDB serialises them across the processes sharing the
        // environment, so of several asking at once exactly one sees the lease free.
        self.write(|txn| {
            let key = self.key(&[key.as_str().as_bytes()]);
            let now = millis(SystemTime::now());
            let free = match self.dbs.leases.get(txn, &key).map_err(err("get lease"))? {
                None => true,
                Some(record) => match record.split_once('\n') {
                    Some((expiry, by)) => {
                        by == holder || expiry.parse::<u64>().is_ok_and(|e| e <= now)
                    }
                    // A damaged record holds nothing.
                    None => true,
                },
            };
            if free {
                let expiry = now.saturating_add(ttl.as_millis() as u64);
                self.dbs
                    .leases
                    .put(txn, &key, &format!("{expiry}\n{holder}"))
                    .map_err(err("put lease"))?;
                taken = true;
            }
            Ok(())
        })?;
        Ok(taken)
    }

    fn release(&self, key: LeaseKey, holder: &str) -> Result<(), CacheError> {
        self.write(|txn| {
            let key = self.key(&[key.as_str().as_bytes()]);
            let held = self
                .dbs
                .leases
                .get(txn, &key)
                .map_err(err("get lease"))?
                .and_then(|record| record.split_once('\n'))
                .is_some_and(|(_, by)| by == holder);
            if held {
                self.dbs
                    .leases
                    .delete(txn, &key)
                    .map_err(err("delete lease"))?;
            }
            Ok(())
        })
    }
}

/// An `LmdbCache` whose map is full, kept full until this is dropped. For tests of the
/// degraded store.
#[cfg(test)]
pub(crate) struct FullMap {
    release: Option<std::sync::mpsc::Sender<()>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

#[cfg(test)]
impl Drop for FullMap {
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
    }
}

#[cfg(test)]
impl LmdbCache {
    /// Records filler until LMDB refuses writes (map full), and keeps refusing them while
    /// the returned value lives: a reader left open meanwhile pins the pages later writes
    /// free, which LMDB would otherwise hand to a few more small writes. Reads still work.
    pub(crate) fn fill_map(&self) -> FullMap {
        let (pinned, is_pinned) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let env = self.env.clone();
        let reader = std::thread::spawn(move || {
            let txn = env.read_txn().unwrap();
            pinned.send(()).unwrap();
            let _ = released.recv();
            drop(txn);
        });
        is_pinned.recv().unwrap();
        for n in 0u32.. {
            let path = StoragePath::from_components(["filler", &format!("r{n}"), "blobs"]);
            match self.put(&Digest::sha256_of(&n.to_le_bytes()), &path.unwrap()) {
                Ok(()) => {}
                Err(CacheError::Unavailable { .. }) => break,
                Err(e) => panic!("{e}"),
            }
        }
        FullMap {
            release: Some(release),
            reader: Some(reader),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::conformance;

    fn path(s: &str) -> StoragePath {
        StoragePath::from_components(s.split('/')).unwrap()
    }

    fn open(dir: &Path) -> LmdbCache {
        Lmdb::open(dir, LmdbOptions::new(false))
            .unwrap()
            .namespace(&Namespace::new("storage"))
            .unwrap()
    }

    /// Runs `suite` over a fresh environment, durable and not.
    fn conformance(suite: impl Fn(&dyn Fn(&Namespace) -> LmdbCache)) {
        for durable in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let env = Lmdb::open(&dir.path().join("cache"), LmdbOptions::new(durable)).unwrap();
            suite(&|ns| env.namespace(ns).unwrap());
        }
    }

    #[test]
    fn lmdb_dedupe_index_conformance() {
        conformance(|open| conformance::dedupe_index(open));
    }

    #[test]
    fn lmdb_usage_log_conformance() {
        conformance(|open| conformance::usage_log(open));
    }

    #[test]
    fn lmdb_markers_conformance() {
        conformance(|open| conformance::markers(open));
    }

    #[test]
    fn lmdb_leases_conformance() {
        conformance(|open| conformance::leases(open));
    }

    #[test]
    fn a_full_map_is_unavailable_until_pages_are_free() {
        let dir = tempfile::tempdir().unwrap();
        let options = LmdbOptions {
            durable: false,
            map_size: 1 << 20,
        };
        let cache = Lmdb::open(dir.path(), options)
            .unwrap()
            .namespace(&Namespace::new("storage"))
            .unwrap();
        let first = Digest::sha256_of(&0u32.to_le_bytes());
        let full = cache.fill_map();
        for n in 0..20 {
            let refused = cache.put(&Digest::sha256_of(b"more"), &path(&format!("a{n}/x")));
            assert!(
                matches!(refused, Err(CacheError::Unavailable { .. })),
                "{refused:?}"
            );
        }
        let refused = cache.set_marker(MarkerKey::new("m"), "v");
        assert!(
            matches!(refused, Err(CacheError::Unavailable { .. })),
            "{refused:?}"
        );
        // Reads still work.
        assert_eq!(
            cache.original(&first).unwrap(),
            Some(path("filler/r0/blobs"))
        );
        drop(full);
        cache
            .put(&Digest::sha256_of(b"more"), &path("a/x"))
            .unwrap();
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
        let cache = open(dir.path());
        assert_eq!(cache.marker(MarkerKey::new("dedupe-pass")).unwrap(), None);
        let d = Digest::sha256_of(b"y");
        cache.put(&d, &path("a/blobs/y")).unwrap();
        assert_eq!(cache.paths(&d).unwrap(), [path("a/blobs/y")]);
    }

    /// A cache written before namespaces (one store per environment, unprefixed keys) is
    /// read as its store's records, not misread and not lost.
    #[test]
    fn a_cache_without_namespaces_becomes_its_stores() {
        let dir = tempfile::tempdir().unwrap();
        let d = Digest::sha256_of(b"layer");
        let m = Digest::sha256_of(b"manifest");
        {
            let mut options = EnvOpenOptions::new();
            options.map_size(1 << 20).max_dbs(6);
            // SAFETY: opened once, in this test only.
            let env = unsafe { options.open(dir.path()) }.unwrap();
            let mut txn = env.write_txn().unwrap();
            let mut db =
                |name| -> Database<Str, Str> { env.create_database(&mut txn, Some(name)).unwrap() };
            let (originals, copies, markers, pushed, pulled) = (
                db("originals"),
                db("copies"),
                db("markers"),
                db("pushed"),
                db("pulled"),
            );
            let copy = |p: &str| format!("{d}\0{}", Digest::sha256_of(p.as_bytes()).hex());
            originals
                .put(&mut txn, &d.to_string(), "a/blobs/x")
                .unwrap();
            copies
                .put(&mut txn, &copy("a/blobs/x"), "a/blobs/x")
                .unwrap();
            copies
                .put(&mut txn, &copy("b/blobs/x"), "b/blobs/x")
                .unwrap();
            markers.put(&mut txn, "dedupe-pass", "{}").unwrap();
            pushed.put(&mut txn, "app\nv1", "1000").unwrap();
            pulled.put(&mut txn, &format!("app\n{m}"), "2000").unwrap();
            txn.commit().unwrap();
        }
        let env = Lmdb::open(dir.path(), LmdbOptions::new(false)).unwrap();
        let cache = env.namespace(&Namespace::new("storage")).unwrap();
        let mut paths = cache.paths(&d).unwrap();
        assert_eq!(paths[0], path("a/blobs/x"));
        paths.sort();
        assert_eq!(paths, [path("a/blobs/x"), path("b/blobs/x")]);
        assert_eq!(
            cache
                .marker(MarkerKey::new("dedupe-pass"))
                .unwrap()
                .as_deref(),
            Some("{}")
        );
        let app: RepoName = "app".parse().unwrap();
        assert_eq!(
            cache.pushes(&app).unwrap(),
            [(
                "v1".parse().unwrap(),
                UNIX_EPOCH + Duration::from_millis(1000)
            )]
        );
        assert_eq!(
            cache.pulls(&app).unwrap(),
            [(m, UNIX_EPOCH + Duration::from_millis(2000))]
        );
        // Taken by the first namespace only, and only once.
        let other = env
            .namespace(&Namespace::new("storage.subPaths./a"))
            .unwrap();
        assert!(other.paths(&d).unwrap().is_empty());
        drop((cache, other, env));
        assert_eq!(open(dir.path()).paths(&d).unwrap().len(), 2);
    }

    #[test]
    fn many_copies_of_one_digest_cost_no_more_per_record() {
        let dir = tempfile::tempdir().unwrap();
        let cache = open(dir.path());
        let d = Digest::sha256_of(b"base layer");
        let records: Vec<(Digest, StoragePath)> = (0..50_000)
            .map(|i| (d.clone(), path(&format!("mirror/r{i:05}/blobs/sha256/x"))))
            .collect();
        cache.put_many(&records).unwrap();
        let first = path("mirror/r00000/blobs/sha256/x");
        assert_eq!(cache.original(&d).unwrap(), Some(first.clone()));
        assert_eq!(cache.paths(&d).unwrap().len(), 50_000);
        cache.remove(&d, &first).unwrap();
        let promoted = cache.original(&d).unwrap().unwrap();
        assert_ne!(promoted, first);
        let paths = cache.paths(&d).unwrap();
        assert_eq!((paths.len(), &paths[0]), (49_999, &promoted));
    }

    #[test]
    fn the_longest_names_under_sha512_are_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Lmdb::open(dir.path(), LmdbOptions::new(false))
            .unwrap()
            .namespace(&Namespace::new(&"n".repeat(4096)))
            .unwrap();
        let d = Digest::of(crate::digest::Algorithm::Sha512, b"layer");
        let name = format!("{}/{}", "a".repeat(127), "b".repeat(127));
        let long = path(&format!("{name}/blobs/sha512/{}", d.hex()));
        cache.put(&d, &long).unwrap();
        cache.put(&d, &path("other/blobs/x")).unwrap();
        assert_eq!(
            cache.paths(&d).unwrap(),
            [long.clone(), path("other/blobs/x")]
        );
        cache.remove(&d, &long).unwrap();
        assert_eq!(cache.original(&d).unwrap(), Some(path("other/blobs/x")));
        let repo: RepoName = name.parse().unwrap();
        let tag: Tag = "t".repeat(128).parse().unwrap();
        cache
            .record_pushes(&[(repo.clone(), tag.clone(), UNIX_EPOCH)])
            .unwrap();
        cache
            .record_pulls(&[(repo.clone(), d.clone(), UNIX_EPOCH)])
            .unwrap();
        assert_eq!(cache.pushes(&repo).unwrap(), [(tag, UNIX_EPOCH)]);
        assert_eq!(cache.pulls(&repo).unwrap(), [(d, UNIX_EPOCH)]);
    }

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let d = Digest::sha256_of(b"x");
        let pass = MarkerKey::new("pass");
        {
            let cache = open(dir.path());
            cache.put(&d, &path("a/blobs/sha256/x")).unwrap();
            cache.set_marker(pass, "done").unwrap();
        }
        let cache = open(dir.path());
        assert_eq!(cache.paths(&d).unwrap(), [path("a/blobs/sha256/x")]);
        assert_eq!(cache.marker(pass).unwrap().as_deref(), Some("done"));
    }
}
