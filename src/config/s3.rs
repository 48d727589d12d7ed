//! `storage.storageDriver` with `name: "s3"` (issue 13): zot's attributes
//! (reference/003_43de0aa1d043bbfc.txt, "Configuring remote storage with s3"), typed, and the
//! credentials in zot's order.
//!
//! With an S3 driver, a store's `rootDirectory` stays a local directory: it holds the
//! embedded cache and the lock, as zot keeps its cache there; `storageDriver.rootdirectory`
//! is the key prefix in the bucket.
//!
//! Built so far: `name`, `region`, `regionendpoint`, `bucket`, `rootdirectory`,
//! `forcepathstyle` (true only: path-style requests), `secure`, `chunksize`, `accesskey`,
//! `secretkey`, and the defaults of `v4auth` (true), `skipverify` (false), `encrypt`
//! (false) and `storageclass` (`STANDARD`). Every other attribute of the table, and any other
//! value of those four, is refused with an error naming the key until it is built; an
//! unknown key is an error naming it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The default `chunksize`: distribution's.
pub const DEFAULT_CHUNK_SIZE: u64 = 10 * 1024 * 1024;
/// The smallest part S3 takes in a multipart upload.
const MIN_CHUNK_SIZE: u64 = 5 * 1024 * 1024;
/// The largest.
const MAX_CHUNK_SIZE: u64 = 5 * 1024 * 1024 * 1024;

/// A store's S3 settings, printed back (by `berth verify`) in zot's keys; the keys are never
/// printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct S3Settings {
    /// Always `s3`.
    pub name: String,
    /// The bucket's region (the signing region).
    pub region: String,
    /// The endpoint as configured, if not AWS's own for the region.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regionendpoint: Option<String>,
    /// The bucket.
    pub bucket: String,
    /// The key prefix every repository is under.
    pub rootdirectory: String,
    /// Path-style requests (the only style built so far).
    pub forcepathstyle: bool,
    /// HTTPS (else plain HTTP) where `regionendpoint` names no scheme.
    pub secure: bool,
    /// Size of multipart upload parts.
    pub chunksize: u64,
    /// The access key given in the config, if any: not printed either, so a printed config
    /// read back finds its credentials where the secret's are (the environment).
    #[serde(skip)]
    pub accesskey: Option<String>,
    /// The secret key given in the config, if any: never printed.
    #[serde(skip)]
    pub secretkey: Option<String>,
}

/// Credentials found for a store.
#[derive(Clone)]
pub struct Credentials {
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
    /// Session token of temporary credentials.
    pub session_token: Option<String>,
    /// Where they were found, for the log (never the secret).
    pub source: &'static str,
}

impl S3Settings {
    /// The endpoint URL requests go to: `regionendpoint` (with a scheme from `secure` when it
    /// names none), else AWS's endpoint for the region.
    pub fn endpoint(&self) -> String {
        let scheme = if self.secure { "https" } else { "http" };
        match &self.regionendpoint {
            Some(e) if e.contains("://") => e.trim_end_matches('/').to_string(),
            Some(e) => format!("{scheme}://{}", e.trim_end_matches('/')),
            None => format!("{scheme}://s3.{}.amazonaws.com", self.region),
        }
    }

    /// Credentials in zot's order: the config's `accesskey`/`secretkey`, then
    /// `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` (with `AWS_SESSION_TOKEN`). The shared
    /// credentials file and instance credentials are not built yet. The error names the
    /// sources tried, never a secret.
    pub fn credentials(&self, key: &str) -> Result<Credentials, String> {
        if let (Some(access_key), Some(secret_key)) = (&self.accesskey, &self.secretkey) {
            return Ok(Credentials {
                access_key: access_key.clone(),
                secret_key: secret_key.clone(),
                session_token: None,
                source: "config",
            });
        }
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        if let (Some(access_key), Some(secret_key)) =
            (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY"))
        {
            return Ok(Credentials {
                access_key,
                secret_key,
                session_token: var("AWS_SESSION_TOKEN"),
                source: "environment",
            });
        }
        Err(format!(
            "{key}: no S3 credentials: set accesskey and secretkey, or AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY (the shared credentials file and instance credentials are \
             not supported by this berth version yet)"
        ))
    }
}

/// zot's attributes as written; lower case, as zot's documentation spells them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawS3 {
    name: Option<String>,
    region: Option<String>,
    regionendpoint: Option<String>,
    bucket: Option<String>,
    rootdirectory: Option<String>,
    forcepathstyle: Option<bool>,
    secure: Option<bool>,
    chunksize: Option<Value>,
    accesskey: Option<String>,
    secretkey: Option<String>,
    v4auth: Option<bool>,
    skipverify: Option<bool>,
    encrypt: Option<bool>,
    storageclass: Option<String>,
    keyid: Option<Value>,
    multipartcopychunksize: Option<Value>,
    multipartcopymaxconcurrency: Option<Value>,
    multipartcopythresholdsize: Option<Value>,
    useragent: Option<Value>,
    usedualstack: Option<Value>,
    accelerate: Option<Value>,
    objectacl: Option<Value>,
    loglevel: Option<Value>,
}

/// A number, or a string of one (zot's examples write both).
fn number(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Resolves `value`, the object at `key` (`storage.storageDriver` or a sub-path's).
pub(super) fn resolve(value: &Value, key: &str) -> Result<S3Settings, String> {
    let raw: RawS3 = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." {
            key.to_string()
        } else {
            format!("{key}.{path}")
        };
        format!("{at}: {}", e.into_inner())
    })?;
    let at = |name: &str| format!("{key}.{name}");
    match raw.name.as_deref() {
        Some("s3") => {}
        Some(other) => {
            return Err(format!(
                "{}: {other:?}: the only storage driver is \"s3\"",
                at("name")
            ));
        }
        None => return Err(format!("{}: required (\"s3\")", at("name"))),
    }
    let not_yet = |name: &str| {
        format!(
            "{}: not supported by this berth version yet; remove the key",
            at(name)
        )
    };
    for (present, name) in [
        (raw.keyid.is_some(), "keyid"),
        (
            raw.multipartcopychunksize.is_some(),
            "multipartcopychunksize",
        ),
        (
            raw.multipartcopymaxconcurrency.is_some(),
            "multipartcopymaxconcurrency",
        ),
        (
            raw.multipartcopythresholdsize.is_some(),
            "multipartcopythresholdsize",
        ),
        (raw.useragent.is_some(), "useragent"),
        (raw.usedualstack.is_some(), "usedualstack"),
        (raw.accelerate.is_some(), "accelerate"),
        (raw.objectacl.is_some(), "objectacl"),
        (raw.loglevel.is_some(), "loglevel"),
        (raw.v4auth == Some(false), "v4auth"),
        (raw.skipverify == Some(true), "skipverify"),
        (raw.encrypt == Some(true), "encrypt"),
        (
            raw.storageclass.as_deref().is_some_and(|c| c != "STANDARD"),
            "storageclass",
        ),
        (raw.forcepathstyle == Some(false), "forcepathstyle"),
    ] {
        if present {
            return Err(not_yet(name));
        }
    }
    let required = |value: Option<String>, name: &str| {
        value
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("{}: required", at(name)))
    };
    let region = required(raw.region, "region")?;
    let bucket = required(raw.bucket, "bucket")?;
    let chunksize = match &raw.chunksize {
        None => DEFAULT_CHUNK_SIZE,
        Some(v) => number(v)
            .filter(|n| (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(n))
            .ok_or_else(|| {
                format!(
                    "{}: {v}: a number of bytes from {MIN_CHUNK_SIZE} (5 MiB) to {MAX_CHUNK_SIZE} (5 GiB)",
                    at("chunksize")
                )
            })?,
    };
    if raw.accesskey.is_some() != raw.secretkey.is_some() {
        let missing = if raw.accesskey.is_some() {
            "secretkey"
        } else {
            "accesskey"
        };
        return Err(format!(
            "{}: required with {}",
            at(missing),
            if missing == "secretkey" {
                "accesskey"
            } else {
                "secretkey"
            }
        ));
    }
    Ok(S3Settings {
        name: "s3".to_string(),
        region,
        regionendpoint: raw.regionendpoint.filter(|e| !e.is_empty()),
        bucket,
        rootdirectory: raw
            .rootdirectory
            .unwrap_or_default()
            .trim_matches('/')
            .to_string(),
        forcepathstyle: true,
        secure: raw.secure.unwrap_or(true),
        chunksize,
        accesskey: raw.accesskey,
        secretkey: raw.secretkey,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<S3Settings, String> {
        resolve(
            &serde_json::from_str(json).unwrap(),
            "storage.storageDriver",
        )
    }

    #[test]
    fn zot_attributes_resolve() {
        let s = parse(
            r#"{"name":"s3","region":"eu-west-1","bucket":"b","regionendpoint":"127.0.0.1:9000",
                "secure":false,"rootdirectory":"/zot/","chunksize":"6291456","forcepathstyle":true,
                "v4auth":true,"skipverify":false,"encrypt":false,"storageclass":"STANDARD",
                "accesskey":"ak","secretkey":"sk"}"#,
        )
        .unwrap();
        assert_eq!(s.endpoint(), "http://127.0.0.1:9000");
        assert_eq!(s.rootdirectory, "zot");
        assert_eq!(s.chunksize, 6 * 1024 * 1024);
        let creds = s.credentials("storage.storageDriver").unwrap();
        assert_eq!((creds.access_key.as_str(), creds.source), ("ak", "config"));
        let printed = serde_json::to_string(&s).unwrap();
        assert!(!printed.contains("\"sk\""), "{printed}");
        let s = parse(r#"{"name":"s3","region":"us-west-2","bucket":"b"}"#).unwrap();
        assert_eq!(s.endpoint(), "https://s3.us-west-2.amazonaws.com");
        assert_eq!(s.chunksize, DEFAULT_CHUNK_SIZE);
    }

    #[test]
    fn bad_values_name_their_key() {
        for (json, key) in [
            (
                r#"{"name":"gcs","region":"r","bucket":"b"}"#,
                "storage.storageDriver.name",
            ),
            (
                r#"{"name":"s3","bucket":"b"}"#,
                "storage.storageDriver.region",
            ),
            (
                r#"{"name":"s3","region":"r"}"#,
                "storage.storageDriver.bucket",
            ),
            (
                r#"{"name":"s3","region":"r","bucket":"b","chunksize":1024}"#,
                "storage.storageDriver.chunksize",
            ),
            (
                r#"{"name":"s3","region":"r","bucket":"b","bogus":1}"#,
                "storage.storageDriver",
            ),
            (
                r#"{"name":"s3","region":"r","bucket":"b","accesskey":"a"}"#,
                "storage.storageDriver.secretkey",
            ),
            (
                r#"{"name":"s3","region":"r","bucket":"b","useragent":"x"}"#,
                "storage.storageDriver.useragent",
            ),
            (
                r#"{"name":"s3","region":"r","bucket":"b","forcepathstyle":false}"#,
                "storage.storageDriver.forcepathstyle",
            ),
        ] {
            let e = parse(json).unwrap_err();
            assert!(e.starts_with(key), "{json}: {e}");
            assert!(!e.contains("\"a\""), "no secret printed: {e}");
        }
    }
}
