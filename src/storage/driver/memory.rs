//! The in-memory driver: objects in a map from path to bytes and metadata, kept the way an
//! object store keeps them, so the store-level suite can run every registry operation over a
//! backend with an object store's semantics, in-process and without a disk.
//!
//! What differs from the local driver, as it will for S3:
//! - Directories are implicit: a prefix exists while objects are below it. Listing a
//!   "directory" names the next level of what is below; `delete_dir` has nothing to remove
//!   (it only reports a prefix that still has objects, as rmdir(2) reports ENOTEMPTY, which
//!   the collector relies on to leave a repository written to meanwhile).
//! - Every write makes a new version (a counter unique within the driver); `replace`
//!   compares it as S3 compares an ETag with `If-Match`. `touch` changes only the time, as a
//!   copy of an object onto itself keeps its ETag.
//! - No hard links (`link` copies, sharing the immutable bytes), no local files for sendfile,
//!   no scratch objects: a write is one insert into the map.
//! - No rename: a finished upload is placed by a copy and a delete, as on S3.
//! - Placeholders: an object's metadata may name a holder (`put_placeholder`), as S3 user
//!   metadata would; every other write leaves an object without it. An upload's note is
//!   metadata of its object too, published with its parts.
//! - An upload writer keeps the parts it was given (the registry's own buffers, not copies)
//!   and publishes them as the object's new version on `flush`, `commit` and drop, like the
//!   parts of a multipart upload.
//!
//! Locks: objects are spread over striped maps by path, and the prefix index over striped
//! maps by directory. A lock is held only to look up, insert or remove map entries; bytes are
//! copied outside every lock, so a read never waits on another object's write to be copied.
//! Lock order: object stripes in ascending order, then prefix stripes one at a time.

use super::{
    Capabilities, Driver, DriverError, Entry, EntryKind, ObjectMeta, ObjectReader, StoragePath,
    UploadWriter, Version,
};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::SystemTime;

const NAME: &str = "memory";

/// Stripes of each map: enough that concurrent requests rarely share one on two cores or
/// sixty-four.
const STRIPES: usize = 64;

/// A fraction of a buffer that may go unused and still be kept as a part as it is: fuller
/// buffers are kept without a copy, emptier ones (a body's last chunk) are copied to their
/// length, so memory stays within 1/8 of the bytes written.
const SLACK_DIVISOR: usize = 8;

/// Objects in memory. Cloning shares them: every clone is a handle to the same store, as two
/// clients of one bucket are.
#[derive(Clone, Default)]
pub(crate) struct MemoryDriver {
    objects: Arc<Objects>,
}

impl MemoryDriver {
    /// An empty store.
    pub(crate) fn new() -> MemoryDriver {
        MemoryDriver::default()
    }
}

struct Objects {
    /// Path -> object, striped by path.
    stripes: Box<[RwLock<Stripe>]>,
    /// Directory ("" for the root) -> the names one level below it, each with the number of
    /// objects under it, striped by directory: `list` and the `stat` of a prefix read one
    /// entry instead of scanning every object. A directory is a key only while something is
    /// below it.
    prefixes: Box<[Mutex<Prefixes>]>,
    /// The last generation handed out.
    generations: AtomicU64,
}

impl Default for Objects {
    fn default() -> Objects {
        Objects {
            stripes: (0..STRIPES).map(|_| RwLock::default()).collect(),
            prefixes: (0..STRIPES).map(|_| Mutex::default()).collect(),
            generations: AtomicU64::new(0),
        }
    }
}

#[derive(Clone)]
struct Object {
    content: Content,
    modified: SystemTime,
    /// Which write made these bytes: unique within the driver, so it is both the fingerprint
    /// and the version (never repeated for different content, as the index cache requires).
    generation: u64,
    /// The path a placeholder names as holding its bytes (`put_placeholder`).
    holder: Option<StoragePath>,
    /// An upload's note (`UploadWriter::save_note`), kept with the version it was saved on.
    note: Option<Arc<[u8]>>,
}

impl Object {
    fn meta(&self) -> ObjectMeta {
        ObjectMeta {
            size: self.content.size,
            modified: self.modified,
            is_dir: false,
            fingerprint: self.generation,
            identity: None,
            version: version(self.generation),
        }
    }
}

fn version(generation: u64) -> Version {
    Version::new(generation.to_string())
}

/// An object's bytes: immutable parts shared by every version, copy and reader that has them.
#[derive(Clone, Default)]
struct Content {
    parts: Arc<[Part]>,
    size: u64,
}

impl Content {
    fn whole(bytes: Vec<u8>) -> Content {
        let size = bytes.len() as u64;
        Content {
            parts: Arc::new([Part::new(bytes)]),
            size,
        }
    }

    fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.size as usize);
        for part in self.parts.iter() {
            out.extend_from_slice(part.bytes());
        }
        out
    }
}

/// One buffer an upload writer was given, shared by every version that holds it.
#[derive(Clone)]
struct Part {
    buf: Arc<Vec<u8>>,
}

impl Part {
    fn new(buf: Vec<u8>) -> Part {
        Part { buf: Arc::new(buf) }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// Reads a `Content` from a position: a snapshot, unaffected by later writes to the object.
struct ContentReader {
    content: Content,
    part: usize,
    at: usize,
}

impl ContentReader {
    fn new(content: Content, offset: u64) -> ContentReader {
        let mut skip = offset.min(content.size) as usize;
        let mut part = 0;
        while let Some(p) = content.parts.get(part)
            && skip >= p.bytes().len()
        {
            skip -= p.bytes().len();
            part += 1;
        }
        ContentReader {
            content,
            part,
            at: skip,
        }
    }
}

impl Read for ContentReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while let Some(part) = self.content.parts.get(self.part) {
            let rest = &part.bytes()[self.at..];
            if rest.is_empty() {
                self.part += 1;
                self.at = 0;
                continue;
            }
            let n = rest.len().min(buf.len());
            buf[..n].copy_from_slice(&rest[..n]);
            self.at += n;
            return Ok(n);
        }
        Ok(0)
    }
}

fn stripe<T>(stripes: &[T], key: &str) -> usize {
    // Not the maps' own random hasher: a stripe only spreads load, it guards no secret.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % stripes.len() as u64) as usize
}

/// The (directory, name) pairs of every level of `path`: `a/b/c` is ("", "a"), ("a", "b"),
/// ("a/b", "c").
fn levels(path: &str) -> impl Iterator<Item = (&str, &str)> {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start > path.len() {
            return None;
        }
        let end = path[start..].find('/').map_or(path.len(), |i| start + i);
        let level = (&path[..start.saturating_sub(1)], &path[start..end]);
        start = end + 1;
        Some(level)
    })
}

fn not_found(path: &str) -> DriverError {
    DriverError::NotFound {
        driver: NAME,
        path: path.to_string(),
    }
}

// Every critical section only looks up, inserts or removes entries, so a panic elsewhere in
// the holder leaves the maps consistent: poisoning is ignored.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

fn lock<T>(lock: &Mutex<T>) -> MutexGuard<'_, T> {
    lock.lock().unwrap_or_else(PoisonError::into_inner)
}

type Stripe = HashMap<String, Object>;

/// Directory -> name one level below it -> objects below that name.
type Prefixes = HashMap<String, HashMap<String, usize>>;

impl Objects {
    fn stripe(&self, path: &str) -> &RwLock<Stripe> {
        &self.stripes[stripe(&self.stripes, path)]
    }

    fn next_generation(&self) -> u64 {
        self.generations.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A new version of `content`, made now.
    fn object(&self, content: Content) -> Object {
        Object {
            content,
            modified: SystemTime::now(),
            generation: self.next_generation(),
            holder: None,
            note: None,
        }
    }

    fn lookup(&self, path: &str) -> Option<Object> {
        read(self.stripe(path)).get(path).cloned()
    }

    /// Puts `object` at `path` in `stripe` (the path's, locked by the caller), indexing the
    /// path's prefixes when it is new. Returns its metadata.
    fn insert(&self, stripe: &mut Stripe, path: &str, object: Object) -> ObjectMeta {
        let meta = object.meta();
        if stripe.insert(path.to_string(), object).is_none() {
            self.index(path, true);
        }
        meta
    }

    /// Removes the object at `path` from `stripe` (the path's, locked by the caller).
    fn remove(&self, stripe: &mut Stripe, path: &str) -> Option<Object> {
        let removed = stripe.remove(path);
        if removed.is_some() {
            self.index(path, false);
        }
        removed
    }

    /// Counts an object at `path` into (`added`) or out of the prefix index.
    fn index(&self, path: &str, added: bool) {
        for (dir, name) in levels(path) {
            let mut prefixes = lock(&self.prefixes[stripe(&self.prefixes, dir)]);
            if added {
                *prefixes
                    .entry(dir.to_string())
                    .or_default()
                    .entry(name.to_string())
                    .or_default() += 1;
                continue;
            }
            let Some(names) = prefixes.get_mut(dir) else {
                continue;
            };
            if let Some(count) = names.get_mut(name) {
                *count -= 1;
                if *count == 0 {
                    names.remove(name);
                }
            }
            if names.is_empty() {
                prefixes.remove(dir);
            }
        }
    }

    /// The names one level below `dir` ("" for the root).
    fn children(&self, dir: &str) -> Vec<String> {
        lock(&self.prefixes[stripe(&self.prefixes, dir)])
            .get(dir)
            .map(|names| names.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether anything is below `dir`: a prefix exists only then.
    fn has_children(&self, dir: &str) -> bool {
        lock(&self.prefixes[stripe(&self.prefixes, dir)]).contains_key(dir)
    }

    fn put(&self, path: &str, content: Content) {
        let object = self.object(content);
        self.insert(&mut write(self.stripe(path)), path, object);
    }

    fn delete_one(&self, path: &str) -> bool {
        self.remove(&mut write(self.stripe(path)), path).is_some()
    }

    /// Every path below `dir` that is an object or a prefix, as the index says now.
    fn below(&self, dir: &str) -> Vec<String> {
        let mut found = Vec::new();
        let mut pending = vec![dir.to_string()];
        while let Some(dir) = pending.pop() {
            for name in self.children(&dir) {
                let path = format!("{dir}/{name}");
                found.push(path.clone());
                pending.push(path);
            }
        }
        found
    }
}

impl Driver for MemoryDriver {
    fn name(&self) -> &'static str {
        NAME
    }

    fn get(&self, path: &StoragePath) -> Result<Vec<u8>, DriverError> {
        let object = self
            .objects
            .lookup(path.as_str())
            .ok_or_else(|| not_found(path.as_str()))?;
        Ok(object.content.to_vec())
    }

    fn reader(&self, path: &StoragePath, offset: u64) -> Result<ObjectReader, DriverError> {
        let object = self
            .objects
            .lookup(path.as_str())
            .ok_or_else(|| not_found(path.as_str()))?;
        let size = object.content.size;
        Ok(ObjectReader {
            reader: Box::new(ContentReader::new(object.content, offset)),
            size,
        })
    }

    fn stat(&self, path: &StoragePath) -> Result<Option<ObjectMeta>, DriverError> {
        if let Some(object) = self.objects.lookup(path.as_str()) {
            return Ok(Some(object.meta()));
        }
        Ok(self
            .objects
            .has_children(path.as_str())
            .then(ObjectMeta::prefix))
    }

    fn put(&self, path: &StoragePath, bytes: &[u8]) -> Result<(), DriverError> {
        self.objects
            .put(path.as_str(), Content::whole(bytes.to_vec()));
        Ok(())
    }

    fn create(&self, path: &StoragePath, bytes: &[u8]) -> Result<bool, DriverError> {
        let content = Content::whole(bytes.to_vec());
        let mut stripe = write(self.objects.stripe(path.as_str()));
        if stripe.contains_key(path.as_str()) {
            return Ok(false);
        }
        let object = self.objects.object(content);
        self.objects.insert(&mut stripe, path.as_str(), object);
        Ok(true)
    }

    /// Whole objects only: `unchanged_prefix` is ignored.
    fn replace(
        &self,
        path: &StoragePath,
        bytes: &[u8],
        _unchanged_prefix: usize,
        expected: Option<&Version>,
    ) -> Result<ObjectMeta, DriverError> {
        let content = Content::whole(bytes.to_vec());
        let mut stripe = write(self.objects.stripe(path.as_str()));
        if let Some(expected) = expected {
            let found = stripe.get(path.as_str()).map(|o| version(o.generation));
            if found.as_ref() != Some(expected) {
                return Err(DriverError::Conflict {
                    driver: NAME,
                    path: path.to_string(),
                    found: found.map_or_else(|| "absent".to_string(), |v| v.to_string()),
                });
            }
        }
        let object = self.objects.object(content);
        Ok(self.objects.insert(&mut stripe, path.as_str(), object))
    }

    /// As an object store: placeholders and upload notes as object metadata; no links (`link`
    /// copies, sharing the parts), no rename (a finished upload is copied into place), no local
    /// files, whole objects.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            placeholders: true,
            upload_notes: true,
            ..Capabilities::default()
        }
    }

    fn put_placeholder(&self, path: &StoragePath, holder: &StoragePath) -> Result<(), DriverError> {
        let object = Object {
            holder: Some(holder.clone()),
            ..self.objects.object(Content::default())
        };
        self.objects.insert(
            &mut write(self.objects.stripe(path.as_str())),
            path.as_str(),
            object,
        );
        Ok(())
    }

    fn placeholder_holder(&self, path: &StoragePath) -> Result<Option<StoragePath>, DriverError> {
        let object = self
            .objects
            .lookup(path.as_str())
            .ok_or_else(|| not_found(path.as_str()))?;
        Ok(object.holder)
    }

    fn upload_note(&self, path: &StoragePath) -> Result<Option<Vec<u8>>, DriverError> {
        let object = self
            .objects
            .lookup(path.as_str())
            .ok_or_else(|| not_found(path.as_str()))?;
        Ok(object.note.map(|note| note.to_vec()))
    }

    fn list(&self, dir: Option<&StoragePath>) -> Result<Vec<Entry>, DriverError> {
        let dir = dir.map(StoragePath::as_str);
        let entries = self
            .objects
            .children(dir.unwrap_or(""))
            .into_iter()
            .map(|name| {
                let path = dir.map_or_else(|| name.clone(), |d| format!("{d}/{name}"));
                // A name with an object of its own is that object, as a file is on disk.
                let kind = match self.objects.lookup(&path) {
                    Some(object) => EntryKind::Object {
                        size: object.meta().size,
                        modified: object.modified,
                    },
                    None => EntryKind::Prefix,
                };
                Entry { name, kind }
            })
            .collect();
        Ok(entries)
    }

    /// The object at `path` and everything below it. Like a prefix delete on S3 (a listing,
    /// then deletes), an object written below meanwhile may survive.
    fn delete(&self, path: &StoragePath) -> Result<(), DriverError> {
        let mut found = self.objects.delete_one(path.as_str());
        for below in self.objects.below(path.as_str()) {
            found |= self.objects.delete_one(&below);
        }
        if found {
            Ok(())
        } else {
            Err(not_found(path.as_str()))
        }
    }

    fn touch(&self, path: &StoragePath) -> Result<(), DriverError> {
        let mut stripe = write(self.objects.stripe(path.as_str()));
        let object = stripe
            .get_mut(path.as_str())
            .ok_or_else(|| not_found(path.as_str()))?;
        object.modified = SystemTime::now();
        Ok(())
    }

    /// Nothing to remove; a prefix with objects below is reported as rmdir(2) would.
    fn delete_dir(&self, dir: &StoragePath) -> Result<(), DriverError> {
        if !self.objects.has_children(dir.as_str()) {
            return Ok(());
        }
        Err(DriverError::Io {
            driver: NAME,
            op: "remove directory",
            path: dir.to_string(),
            source: std::io::ErrorKind::DirectoryNotEmpty.into(),
        })
    }

    fn writer(&self, path: &StoragePath) -> Result<Box<dyn UploadWriter>, DriverError> {
        let key = path.as_str();
        let mut stripe = write(self.objects.stripe(key));
        let existing = match stripe.get(key) {
            Some(object) => object.clone(),
            None => {
                // Visible at once, empty, as the local driver's file is: a session exists
                // from its start (status requests, the collector's idle check).
                let object = self.objects.object(Content::default());
                self.objects.insert(&mut stripe, key, object.clone());
                object
            }
        };
        drop(stripe);
        Ok(Box::new(MemoryWriter {
            objects: Arc::clone(&self.objects),
            path: key.to_string(),
            parts: existing.content.parts.to_vec(),
            size: existing.content.size,
            published: Some(existing.generation),
            dirty: false,
            note: existing.note,
        }))
    }

    /// Server-side: the copy shares the source's immutable bytes.
    fn copy(&self, from: &StoragePath, to: &StoragePath) -> Result<(), DriverError> {
        let source = self
            .objects
            .lookup(from.as_str())
            .ok_or_else(|| not_found(from.as_str()))?;
        self.objects.put(to.as_str(), source.content);
        Ok(())
    }
}

/// Parts of an upload in progress, published as a new version of the object when flushed.
struct MemoryWriter {
    objects: Arc<Objects>,
    path: String,
    parts: Vec<Part>,
    size: u64,
    /// The generation this writer opened or last published. `None` once another write
    /// replaced the object or a delete removed it: like bytes written to an unlinked file,
    /// what this writer holds then has no name, and publishing it would undo that write.
    published: Option<u64>,
    /// Parts or note changed since the last publish.
    dirty: bool,
    note: Option<Arc<[u8]>>,
}

impl MemoryWriter {
    fn publish(&mut self) {
        let Some(seen) = self.published.filter(|_| self.dirty) else {
            return;
        };
        self.dirty = false;
        let content = Content {
            parts: self.parts.as_slice().into(),
            size: self.size,
        };
        let mut stripe = write(self.objects.stripe(&self.path));
        self.published = match stripe.get_mut(&self.path) {
            Some(object) if object.generation == seen => {
                *object = Object {
                    note: self.note.clone(),
                    ..self.objects.object(content)
                };
                Some(object.generation)
            }
            _ => None,
        };
    }
}

impl UploadWriter for MemoryWriter {
    fn size(&self) -> u64 {
        self.size
    }

    fn write(&mut self, buf: Vec<u8>) -> Result<Vec<u8>, DriverError> {
        if buf.is_empty() {
            return Ok(buf);
        }
        self.size += buf.len() as u64;
        self.dirty = true;
        if buf.capacity() - buf.len() <= buf.len() / SLACK_DIVISOR {
            // Kept as it is; the caller reads its next chunk into a new buffer.
            let capacity = buf.capacity();
            self.parts.push(Part::new(buf));
            return Ok(Vec::with_capacity(capacity));
        }
        self.parts.push(Part::new(buf.clone()));
        Ok(buf)
    }

    fn flush(&mut self) -> Result<(), DriverError> {
        self.publish();
        Ok(())
    }

    /// Published with the parts, as one new version.
    fn save_note(&mut self, note: &[u8]) -> Result<(), DriverError> {
        self.note = Some(note.into());
        self.dirty = true;
        self.publish();
        Ok(())
    }

    /// `flush`, without the note (it was the session's): memory has nothing more durable to
    /// reach.
    fn commit(mut self: Box<Self>) -> Result<Version, DriverError> {
        if self.note.take().is_some() {
            self.dirty = true;
        }
        self.flush()?;
        self.published
            .map(version)
            .ok_or_else(|| DriverError::Conflict {
                driver: NAME,
                path: self.path.clone(),
                found: "another write".to_string(),
            })
    }

    /// Removes the object if it is still this writer's (another write may have replaced it).
    fn cancel(mut self: Box<Self>) -> Result<(), DriverError> {
        let Some(seen) = self.published.take() else {
            return Ok(());
        };
        let mut stripe = write(self.objects.stripe(&self.path));
        if stripe.get(&self.path).is_some_and(|o| o.generation == seen) {
            self.objects.remove(&mut stripe, &self.path);
        }
        Ok(())
    }
}

impl Drop for MemoryWriter {
    fn drop(&mut self) {
        self.publish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_driver_conformance() {
        super::super::conformance::run(&MemoryDriver::new());
    }

    #[test]
    fn levels_name_every_directory_of_a_path() {
        assert_eq!(levels("a").collect::<Vec<_>>(), [("", "a")]);
        assert_eq!(
            levels("a/b/c").collect::<Vec<_>>(),
            [("", "a"), ("a", "b"), ("a/b", "c")]
        );
    }

    /// A reader is a snapshot of the version it opened, and parts are neither copied nor
    /// lost across writes and reopening.
    #[test]
    fn readers_see_the_version_they_opened() {
        let driver = MemoryDriver::new();
        let path = StoragePath::from_components(["u"]).unwrap();
        let mut w = driver.writer(&path).unwrap();
        w.write(vec![1; 1000]).unwrap();
        w.write(vec![2; 10]).unwrap();
        w.flush().unwrap();
        let mut old = driver.reader(&path, 995).unwrap();
        drop(w);
        let mut w = driver.writer(&path).unwrap();
        w.write(vec![3; 2]).unwrap();
        w.commit().unwrap();
        let mut bytes = Vec::new();
        old.reader.read_to_end(&mut bytes).unwrap();
        assert_eq!(bytes, [1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2]);
        let mut new = Vec::new();
        driver
            .reader(&path, 995)
            .unwrap()
            .reader
            .read_to_end(&mut new)
            .unwrap();
        assert_eq!(new, [1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3]);
    }
}
