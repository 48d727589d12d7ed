//! The store a flow runs on, a local root or a bucket on moto, so one test body shows the
//! same behaviour on both (issue 13: "the same semantics and the same tests as local"); its
//! files are looked at from outside berth: by path on disk, by key with plain S3 requests.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tempfile::TempDir;

use super::layout::{self, inode};
use super::s3::Bucket;
use super::server::{Berth, Settings, temp_dir};

/// Where an S3 store's layout starts in its bucket (`rootdirectory`).
const ROOTDIRECTORY: &str = "/berth";

/// The backends a flow runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Local,
    S3,
}

/// One store: its local root (the whole store, or on S3 the directory berth's config still
/// names, for its cache and lock) and, on S3, its bucket.
pub struct Store {
    _dir: TempDir,
    pub root: PathBuf,
    bucket: Option<Bucket>,
}

impl Store {
    pub fn new(backend: Backend) -> Store {
        Store::with_bucket((backend == Backend::S3).then(Bucket::new))
    }

    /// A store for a flow that times its requests: on S3, it has moto to itself
    /// (`Bucket::alone`).
    pub fn alone(backend: Backend) -> Store {
        Store::with_bucket((backend == Backend::S3).then(Bucket::alone))
    }

    fn with_bucket(bucket: Option<Bucket>) -> Store {
        let dir = temp_dir();
        Store {
            root: dir.path().join("root"),
            _dir: dir,
            bucket,
        }
    }

    /// `settings` pointed at this store.
    pub fn settings(&self, mut settings: Settings) -> Settings {
        if let Some(bucket) = &self.bucket {
            settings = bucket.settings(ROOTDIRECTORY, settings);
        }
        settings
    }

    /// Starts berth on this store.
    pub fn start(&self, settings: Settings) -> Berth {
        Berth::start_on(&self.root, self.settings(settings))
    }

    /// The `storage` section of a config file for this store, for the offline commands.
    pub fn storage_config(&self) -> Value {
        let mut storage = json!({ "rootDirectory": self.root });
        if let Some(bucket) = &self.bucket {
            storage["storageDriver"] = bucket.storage_driver(ROOTDIRECTORY);
        }
        storage
    }

    /// The bucket key of a path relative to the store's root.
    fn key(&self, relative: &str) -> String {
        format!("{}/{relative}", ROOTDIRECTORY.trim_start_matches('/'))
    }

    /// Whether anything is stored at `relative`: a file or directory, an object or a prefix.
    pub fn exists(&self, relative: &str) -> bool {
        match &self.bucket {
            None => self.root.join(relative).exists(),
            Some(bucket) => {
                let key = self.key(relative);
                bucket
                    .keys(&key)
                    .iter()
                    .any(|k| *k == key || k.starts_with(&format!("{key}/")))
            }
        }
    }

    /// How many copies of their bytes the files at `paths` occupy: distinct inodes on disk
    /// (dedupe links), distinct objects holding bytes in the bucket (dedupe's placeholders
    /// name a holder and hold none).
    pub fn copies(&self, paths: &[String]) -> usize {
        let mut held: Vec<String> = paths
            .iter()
            .map(|relative| match &self.bucket {
                None => inode(&self.root.join(relative)).to_string(),
                Some(bucket) => {
                    let key = self.key(relative);
                    bucket.holder_of(&key).map_or(key, |h| self.key(&h))
                }
            })
            .collect();
        held.sort();
        held.dedup();
        held.len()
    }

    /// Flips one byte in the middle of the bytes `relative` is stored in (its holder's, for a
    /// placeholder), keeping their size; on S3 with a plain PUT, as any S3 tool would.
    pub fn corrupt(&self, relative: &str) {
        match &self.bucket {
            None => {
                use std::os::unix::fs::FileExt;
                let file = std::fs::File::options()
                    .read(true)
                    .write(true)
                    .open(self.root.join(relative))
                    .unwrap();
                let middle = file.metadata().unwrap().len() / 2;
                let mut byte = [0u8];
                file.read_exact_at(&mut byte, middle).unwrap();
                file.write_all_at(&[byte[0] ^ 0xff], middle).unwrap();
            }
            Some(bucket) => {
                let key = self.key(relative);
                let key = bucket.holder_of(&key).map_or(key, |h| self.key(&h));
                let mut bytes = bucket.get(&key).expect("the object to alter");
                let middle = bytes.len() / 2;
                bytes[middle] ^= 0xff;
                bucket.put(&key, &bytes);
            }
        }
    }

    /// Audits the store's layout (`layout::assert_sound`); a bucket is copied out first, each
    /// placeholder filled with its holder's bytes.
    #[track_caller]
    pub fn assert_sound(&self) {
        let Some(bucket) = &self.bucket else {
            layout::assert_sound(&self.root);
            return;
        };
        let copy = temp_dir();
        let prefix = self.key("");
        bucket.copy_out(&prefix, copy.path());
        for key in bucket.keys(&prefix) {
            if let Some(holder) = bucket.holder_of(&key) {
                let bytes = bucket.get(&self.key(&holder)).unwrap_or_else(|| {
                    panic!("placeholder {key} names {holder}, which does not exist")
                });
                std::fs::write(copy.path().join(&key[prefix.len()..]), bytes).unwrap();
            }
        }
        layout::assert_sound(copy.path());
    }
}

/// `<repo>/blobs/<alg>/<hex>`, relative to a store's root.
pub fn blob(repo: &str, digest: &str) -> String {
    let path: &Path = repo.as_ref();
    layout::blob_path(path, digest)
        .to_str()
        .expect("UTF-8 path")
        .to_string()
}
