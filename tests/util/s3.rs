//! The S3 test servers `scripts/s3-services.sh` starts (issue 13): a bucket on moto, seen as a
//! plain S3 tool sees it (objects put, read, listed and inspected one request at a time, never
//! through berth's driver, so what a test finds in the bucket is what any other tool would),
//! with turns on moto for flows that time their requests; and s3s-fs's endpoint, keys and
//! buckets, for the credential flows. Without the servers a test fails here, naming the
//! script: it never passes by skipping.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::http::{Client, Response};
use super::server::Settings;
use super::services::ServiceEnv;

/// moto takes any signature but wants one there.
const ANY_SIGNATURE: &str = "AWS4-HMAC-SHA256 Credential=testing/20260101/eu-west-1/s3/aws4_request, SignedHeaders=host, Signature=00";

/// The metadata berth's S3 driver names a placeholder's holder with (DESIGN decision 9).
const HOLDER: &str = "x-amz-meta-berth-holder";

/// A variable `scripts/s3-services.sh start` writes to `.s3-services/env`, from the
/// environment (`scripts/test.sh` exports them) or from that file.
fn service_var(var: &str) -> String {
    ServiceEnv::load(".s3-services", "scripts/s3-services.sh").require(var)
}

/// moto's endpoint.
pub fn moto() -> String {
    service_var("BERTH_S3_MOTO_ENDPOINT")
}

/// The moto that only serves instance metadata (see scripts/s3-services.sh).
pub fn moto_metadata() -> String {
    service_var("BERTH_S3_MOTO_METADATA_ENDPOINT")
}

/// s3s-fs as `scripts/s3-services.sh` runs it: it checks every request's SigV4 signature
/// against its one pair of keys.
pub struct S3s {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    /// The directory it serves: a bucket is a directory in it.
    root: String,
}

impl S3s {
    pub fn running() -> S3s {
        S3s {
            endpoint: service_var("BERTH_S3_S3S_ENDPOINT"),
            access_key: service_var("BERTH_S3_S3S_ACCESS_KEY"),
            secret_key: service_var("BERTH_S3_S3S_SECRET_KEY"),
            root: service_var("BERTH_S3_S3S_ROOT"),
        }
    }

    /// A new, empty bucket, made as s3s-fs keeps one (the tests have no SigV4 signer of their
    /// own to create it with, and need none: s3s-fs serves what is in its directory).
    pub fn new_bucket(&self) -> String {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let bucket = format!("berth-it-{}-{nanos}", std::process::id());
        std::fs::create_dir(Path::new(&self.root).join(&bucket))
            .unwrap_or_else(|e| panic!("make bucket {bucket} in {}: {e}", self.root));
        bucket
    }

    /// This server's own keys.
    pub fn keys(&self) -> Option<(&str, &str)> {
        Some((&self.access_key, &self.secret_key))
    }
}

/// `storage.storageDriver` for `bucket` at `endpoint`, with `keys` (access, secret) when
/// given.
pub fn storage_driver_at(endpoint: &str, bucket: &str, keys: Option<(&str, &str)>) -> Value {
    let mut driver = json!({
        "name": "s3",
        "region": "us-east-1",
        "bucket": bucket,
        "regionendpoint": endpoint,
        "rootdirectory": "/berth",
    });
    if let Some((access, secret)) = keys {
        driver["accesskey"] = access.into();
        driver["secretkey"] = secret.into();
    }
    driver
}

/// Turns on moto, which serves one request at a time: a flow whose assertions depend on how
/// long its requests take (gc's delays) has moto to itself, other flows share it. A test
/// holds one turn (one bucket) at a time: a second shared turn asked for while a timed flow
/// waits would wait for that flow, which waits for the first turn.
static TURNS: RwLock<()> = RwLock::new(());

/// A bucket's turn on moto, held as long as the bucket is in use.
#[derive(Debug)]
enum Turn {
    Shared {
        _guard: RwLockReadGuard<'static, ()>,
    },
    Alone {
        _guard: RwLockWriteGuard<'static, ()>,
    },
}

/// A bucket of its own on moto, for one test.
#[derive(Debug)]
pub struct Bucket {
    pub endpoint: String,
    pub name: String,
    _turn: Turn,
}

impl Bucket {
    /// A new bucket, sharing moto with other flows.
    pub fn new() -> Bucket {
        // A flow that failed holding a turn says nothing about the next one.
        let turn = TURNS
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Bucket::create(Turn::Shared { _guard: turn })
    }

    /// A new bucket for a flow that times its requests: no other flow uses moto meanwhile.
    pub fn alone() -> Bucket {
        let turn = TURNS
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Bucket::create(Turn::Alone { _guard: turn })
    }

    /// A new bucket outside `us-east-1` (moto refuses that location constraint).
    fn create(turn: Turn) -> Bucket {
        let endpoint = moto();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let bucket = Bucket {
            endpoint,
            name: format!("berth-it-{}-{nanos}", std::process::id()),
            _turn: turn,
        };
        let created = bucket.send(
            "PUT",
            "",
            b"<CreateBucketConfiguration><LocationConstraint>eu-west-1</LocationConstraint></CreateBucketConfiguration>",
        );
        assert_eq!(created.status, 200, "create bucket: {created:?}");
        bucket
    }

    /// A plain request to moto for `/{bucket}{target}` (the registry test client's `send`
    /// checks for a registry's headers).
    fn send(&self, method: &str, target: &str, body: &[u8]) -> Response {
        let addr: SocketAddr = self
            .endpoint
            .trim_start_matches("http://")
            .parse()
            .expect("moto's endpoint is http://127.0.0.1:PORT");
        Client::new(addr)
            .request(method, &format!("/{}{target}", self.name))
            .header("Authorization", ANY_SIGNATURE)
            .body(body.to_vec())
            .try_send()
            .unwrap_or_else(|e| {
                panic!(
                    "{method} {target}: moto does not answer ({e}): is it running? \
                     `scripts/s3-services.sh start` starts it"
                )
            })
    }

    /// The object at `key`, or None when there is none.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let got = self.send("GET", &format!("/{key}"), b"");
        match got.status {
            200 => Some(got.body),
            404 => None,
            _ => panic!("GET {key}: {got:?}"),
        }
    }

    /// PUTs `bytes` at `key`, as any S3 tool would: no metadata.
    pub fn put(&self, key: &str, bytes: &[u8]) {
        let put = self.send("PUT", &format!("/{key}"), bytes);
        assert_eq!(put.status, 200, "PUT {key}: {put:?}");
    }

    /// Deletes the object at `key`, as any S3 tool would (another instance's delete).
    pub fn delete(&self, key: &str) {
        let deleted = self.send("DELETE", &format!("/{key}"), b"");
        assert_eq!(deleted.status, 204, "DELETE {key}: {deleted:?}");
    }

    /// The key holding the bytes of the placeholder at `key`, or None when `key` holds its
    /// own bytes; panics when there is no object at `key`.
    pub fn holder_of(&self, key: &str) -> Option<String> {
        let head = self.send("HEAD", &format!("/{key}"), b"");
        assert_eq!(head.status, 200, "HEAD {key}: {head:?}");
        head.header(HOLDER).map(str::to_string)
    }

    /// Every key under `prefix`, in S3's order, through every page of ListObjectsV2.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut target = format!("?list-type=2&prefix={}", query_escape(prefix));
            if let Some(token) = &token {
                target.push_str(&format!("&continuation-token={}", query_escape(token)));
            }
            let listed = self.send("GET", &target, b"");
            assert_eq!(listed.status, 200, "list {prefix}: {listed:?}");
            let xml = String::from_utf8(listed.body).expect("ListObjectsV2 is UTF-8 XML");
            keys.extend(elements(&xml, "Key"));
            token = elements(&xml, "NextContinuationToken").into_iter().next();
            if token.is_none() {
                return keys;
            }
        }
    }

    /// How many multipart uploads of the bucket are open.
    pub fn open_uploads(&self) -> usize {
        let listed = self.send("GET", "?uploads", b"");
        assert_eq!(listed.status, 200, "list uploads: {listed:?}");
        String::from_utf8_lossy(&listed.body)
            .matches("<UploadId>")
            .count()
    }

    /// The parts sent to the bucket's open multipart uploads (ListParts of each).
    pub fn open_parts(&self) -> usize {
        let listed = self.send("GET", "?uploads", b"");
        assert_eq!(listed.status, 200, "list uploads: {listed:?}");
        let xml = String::from_utf8_lossy(&listed.body).into_owned();
        elements(&xml, "Upload")
            .iter()
            .map(|upload| {
                let (key, id) = (
                    &elements(upload, "Key")[0],
                    &elements(upload, "UploadId")[0],
                );
                let parts = self.send("GET", &format!("/{key}?uploadId={}", query_escape(id)), b"");
                assert_eq!(parts.status, 200, "list parts: {parts:?}");
                String::from_utf8_lossy(&parts.body)
                    .matches("<PartNumber>")
                    .count()
            })
            .sum()
    }

    /// A plain copy of every object under `prefix` into `dir`, as `aws s3 cp --recursive`
    /// would make it: object bytes only, so a placeholder comes out as an empty file.
    pub fn copy_out(&self, prefix: &str, dir: &Path) {
        for key in self.keys(prefix) {
            let path = dir.join(key.strip_prefix(prefix).expect("listed under the prefix"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, self.get(&key).expect("a listed object")).unwrap();
        }
    }

    /// A plain copy of every file under `dir` into the bucket under `prefix`, one PUT each.
    pub fn copy_in(&self, dir: &Path, prefix: &str) {
        for relative in super::layout::tree(dir) {
            let path = dir.join(&relative);
            if path.is_file() {
                let key = format!("{prefix}{}", relative.to_str().expect("UTF-8 path"));
                self.put(&key, &std::fs::read(&path).unwrap());
            }
        }
    }

    /// `storage.storageDriver` for a store in this bucket under `rootdirectory`.
    pub fn storage_driver(&self, rootdirectory: &str) -> Value {
        json!({
            "name": "s3",
            "region": "eu-west-1",
            "bucket": self.name,
            "regionendpoint": self.endpoint,
            "rootdirectory": rootdirectory,
            "accesskey": "testing",
            "secretkey": "testing",
            "chunksize": 5 * 1024 * 1024
        })
    }

    /// `settings` with the default store in this bucket under `rootdirectory`.
    pub fn settings(&self, rootdirectory: &str, mut settings: Settings) -> Settings {
        settings
            .storage
            .insert("storageDriver".into(), self.storage_driver(rootdirectory));
        settings
    }
}

/// The text of every `<name>` element of an S3 XML answer (keys here need no unescaping:
/// berth's paths and the tests' prefixes are plain ASCII without `&` or `<`).
fn elements(xml: &str, name: &str) -> Vec<String> {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    xml.split(&open)
        .skip(1)
        .map(|rest| rest.split(&close).next().unwrap_or_default().to_string())
        .collect()
}

/// Percent-encodes a query value (a continuation token is base64: `+`, `/`, `=`).
fn query_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
