//! Reading through placeholders (DESIGN decision 9): where dedupe keeps one copy of a blob by
//! placeholders, every other copy is a zero-byte object whose metadata names the path holding
//! the bytes. This module owns telling a placeholder from a blob and resolving it to its
//! holder, for every read of a blob (stat, pulls, mounts, manifest reads, gc's and scrub's
//! walks), whatever the store's dedupe setting: a store started with `dedupe: false` still
//! serves the placeholders an earlier start left until the start-up restore fills them.
//!
//! Only a zero-byte object can be a placeholder, so reads of ordinary blobs pay nothing (no
//! system call beyond the `stat` they made anyway), and the empty blob (the digest of zero
//! bytes) is always itself: never a placeholder, never deduplicated by one.

use super::driver::{Driver, DriverError, ObjectMeta, StoragePath};
use crate::digest::{Algorithm, Digest};
use std::sync::LazyLock;

/// The digests of zero bytes, per algorithm.
static EMPTY: LazyLock<Vec<Digest>> =
    LazyLock::new(|| Algorithm::ALL.iter().map(|a| Digest::of(*a, b"")).collect());

/// Whether `digest` is the digest of zero bytes: a real, empty blob.
pub(super) fn is_empty_blob(digest: &Digest) -> bool {
    EMPTY.contains(digest)
}

/// Whether an object of `size` bytes at a blob path of `digest` cannot be the blob itself:
/// a placeholder, or bytes lost (an object cut to nothing, or a placeholder copied out of a
/// bucket without its metadata).
pub(super) fn may_be(digest: &Digest, size: u64) -> bool {
    size == 0 && !is_empty_blob(digest)
}

/// The holder the empty object at `path` names, where the driver keeps placeholders.
fn holder_of(driver: &dyn Driver, path: &StoragePath) -> Result<Option<StoragePath>, DriverError> {
    if driver.capabilities().placeholders {
        driver.placeholder_holder(path)
    } else {
        Ok(None)
    }
}

/// A blob path's bytes, found.
#[derive(Debug, Clone)]
pub(super) struct Resolved {
    /// Where the bytes are: the path itself, or the holder its placeholder names.
    pub(super) path: StoragePath,
    /// The metadata of that object.
    pub(super) meta: ObjectMeta,
    /// The path asked about is a placeholder.
    pub(super) placeholder: bool,
}

/// What a blob path holds.
#[derive(Debug)]
pub(super) enum Lookup {
    /// Nothing (or a directory).
    Missing,
    /// Bytes, of its own or a holder's.
    Found(Resolved),
    /// A placeholder whose holder is gone.
    Dangling(StoragePath),
    /// Zero bytes for a digest of more, naming no holder: never served as the blob.
    Empty,
}

/// What the blob path `path` of `digest` holds, its placeholder resolved.
pub(super) fn lookup(
    driver: &dyn Driver,
    path: &StoragePath,
    digest: &Digest,
) -> Result<Lookup, DriverError> {
    let Some(meta) = driver.stat_object(path)? else {
        return Ok(Lookup::Missing);
    };
    if !may_be(digest, meta.size) {
        return Ok(Lookup::Found(Resolved {
            path: path.clone(),
            meta,
            placeholder: false,
        }));
    }
    let holder = match holder_of(driver, path) {
        Ok(Some(holder)) => holder,
        Ok(None) => return Ok(Lookup::Empty),
        Err(DriverError::NotFound { .. }) => return Ok(Lookup::Missing),
        Err(e) => return Err(e),
    };
    // A holder holds bytes: an empty one (itself a placeholder, or cut) would serve a
    // non-empty digest as zero bytes.
    Ok(match driver.stat_object(&holder)? {
        Some(meta) if meta.size > 0 => Lookup::Found(Resolved {
            path: holder,
            meta,
            placeholder: true,
        }),
        _ => Lookup::Dangling(holder),
    })
}

/// `lookup` for reads: a placeholder whose holder is gone, or an empty object naming none,
/// holds nothing (zot #4427 served such a placeholder as an empty 200).
pub(super) fn resolve(
    driver: &dyn Driver,
    path: &StoragePath,
    digest: &Digest,
) -> Result<Option<Resolved>, DriverError> {
    Ok(match lookup(driver, path, digest)? {
        Lookup::Found(resolved) => Some(resolved),
        Lookup::Missing | Lookup::Dangling(_) | Lookup::Empty => None,
    })
}

/// The whole (small) blob at `path` of `digest` (a manifest), read through its placeholder.
/// `NotFound` if absent, a placeholder whose holder is gone, or empty naming no holder.
pub(super) fn get(
    driver: &dyn Driver,
    path: &StoragePath,
    digest: &Digest,
) -> Result<Vec<u8>, DriverError> {
    let bytes = driver.get(path)?;
    if !may_be(digest, bytes.len() as u64) {
        return Ok(bytes);
    }
    let gone = |path: &StoragePath| DriverError::NotFound {
        driver: driver.name(),
        path: path.to_string(),
    };
    match holder_of(driver, path)? {
        Some(holder) => match driver.get(&holder)? {
            held if held.is_empty() => Err(gone(&holder)),
            held => Ok(held),
        },
        None => Err(gone(path)),
    }
}
