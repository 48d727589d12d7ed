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
//! `secretkey` (else the environment, else the shared credentials file), `multipartcopychunksize`,
//! `multipartcopymaxconcurrency`, `multipartcopythresholdsize`, the berth-only `redirect`,
//! `timeout` and `revalidate` (Go durations), and
//! the defaults of `v4auth` (true), `skipverify` (false), `encrypt`
//! (false) and `storageclass` (`STANDARD`). Every other attribute of the table, and any other
//! value of those four, is refused with an error naming the key until it is built; an
//! unknown key is an error naming it.

use crate::storage::driver::s3::{MultipartCopy, S3Config};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

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
    /// Size of the parts of a multipart copy.
    pub multipartcopychunksize: u64,
    /// Parts of a multipart copy in flight at once.
    pub multipartcopymaxconcurrency: usize,
    /// Objects larger than this are copied in parts.
    pub multipartcopythresholdsize: u64,
    /// berth-only: blob GETs answer with a redirect to a presigned URL (off by default, as
    /// zot does not redirect).
    pub redirect: bool,
    /// berth-only: how long any step of an S3 request (connect, the answer, each read of a
    /// body) may wait before the bucket counts as unavailable (HTTP 503).
    #[serde(serialize_with = "super::serialize_duration")]
    pub timeout: Duration,
    /// berth-only: how long a repository's `index.json`, once read, is served without asking
    /// the bucket again (a tag moved through another instance is seen within it; changes
    /// through this one at once). `0s` asks on every request.
    #[serde(serialize_with = "super::serialize_duration")]
    pub revalidate: Duration,
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
    /// `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` (with `AWS_SESSION_TOKEN`), then the shared
    /// credentials file (`AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`), profile
    /// `AWS_PROFILE` or `default`. Instance credentials are not built yet. The error names the
    /// sources tried, never a secret.
    pub fn credentials(&self, key: &str) -> Result<Credentials, String> {
        self.credentials_from(key, &|name| std::env::var(name).ok())
    }

    /// `credentials`, with the environment read through `env` (so tests need not change the
    /// process's environment).
    fn credentials_from(
        &self,
        key: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Credentials, String> {
        if let (Some(access_key), Some(secret_key)) = (&self.accesskey, &self.secretkey) {
            return Ok(Credentials {
                access_key: access_key.clone(),
                secret_key: secret_key.clone(),
                session_token: None,
                source: "config",
            });
        }
        let var = |name: &str| env(name).filter(|v| !v.is_empty());
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
        let file = var("AWS_SHARED_CREDENTIALS_FILE")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                var("HOME").map(|home| std::path::Path::new(&home).join(".aws/credentials"))
            });
        let profile = var("AWS_PROFILE").unwrap_or_else(|| "default".to_string());
        if let Some(file) = &file
            && let Ok(text) = std::fs::read_to_string(file)
        {
            let entries = profile_entries(&text, &profile);
            let get = |name: &str| {
                entries
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
                    .filter(|v| !v.is_empty())
            };
            if let (Some(access_key), Some(secret_key)) =
                (get("aws_access_key_id"), get("aws_secret_access_key"))
            {
                return Ok(Credentials {
                    access_key,
                    secret_key,
                    session_token: get("aws_session_token"),
                    source: "shared credentials file",
                });
            }
        }
        let tried_file = file.map_or_else(
            || "no shared credentials file (HOME is not set)".to_string(),
            |f| format!("no profile [{profile}] with both keys in {}", f.display()),
        );
        Err(format!(
            "{key}: no S3 credentials: set accesskey and secretkey, or AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY, or a profile in the shared credentials file ({tried_file}; \
             instance credentials are not supported by this berth version yet)"
        ))
    }
}

/// The `key = value` lines of section `[profile]` of an INI credentials file (keys lower
/// case; `#` and `;` start comments).
fn profile_entries(text: &str, profile: &str) -> Vec<(String, String)> {
    let mut inside = false;
    let mut entries = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = section.trim() == profile;
            continue;
        }
        if inside && let Some((k, v)) = line.split_once('=') {
            entries.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    entries
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
    redirect: Option<bool>,
    timeout: Option<String>,
    revalidate: Option<String>,
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
    let copy_defaults = MultipartCopy::default();
    let bytes_between = |value: &Option<Value>, name: &str, default: u64, min: u64, max: u64| {
        value.as_ref().map_or(Ok(default), |v| {
            number(v)
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| format!("{}: {v}: a number of bytes from {min} to {max}", at(name)))
        })
    };
    let multipartcopychunksize = bytes_between(
        &raw.multipartcopychunksize,
        "multipartcopychunksize",
        copy_defaults.chunk_size,
        MIN_CHUNK_SIZE,
        MAX_CHUNK_SIZE,
    )?;
    let multipartcopythresholdsize = bytes_between(
        &raw.multipartcopythresholdsize,
        "multipartcopythresholdsize",
        copy_defaults.threshold,
        0,
        MAX_CHUNK_SIZE,
    )?;
    let multipartcopymaxconcurrency = bytes_between(
        &raw.multipartcopymaxconcurrency,
        "multipartcopymaxconcurrency",
        copy_defaults.max_concurrency as u64,
        1,
        10_000,
    )? as usize;
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
    let duration = |value: &Option<String>, name: &str, default: Duration| {
        value.as_deref().map_or(Ok(default), |v| {
            super::duration::parse(v).map_err(|e| format!("{}: {e}", at(name)))
        })
    };
    let timeout = duration(&raw.timeout, "timeout", S3Config::DEFAULT_TIME_OUT)?;
    if timeout.is_zero() {
        return Err(format!(
            "{}: a request needs some time to be answered",
            at("timeout")
        ));
    }
    let revalidate = duration(&raw.revalidate, "revalidate", S3Config::DEFAULT_REVALIDATE)?;
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
        multipartcopychunksize,
        multipartcopymaxconcurrency,
        multipartcopythresholdsize,
        redirect: raw.redirect.unwrap_or(false),
        timeout,
        revalidate,
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
        assert_eq!(s.multipartcopythresholdsize, 32 * 1024 * 1024);
        assert!(!s.redirect);
        assert_eq!(
            (s.timeout, s.revalidate),
            (S3Config::DEFAULT_TIME_OUT, S3Config::DEFAULT_REVALIDATE)
        );
        let s =
            parse(r#"{"name":"s3","region":"r","bucket":"b","timeout":"1m30s","revalidate":"0"}"#)
                .unwrap();
        assert_eq!(
            (s.timeout, s.revalidate),
            (Duration::from_secs(90), Duration::ZERO)
        );
        assert!(
            serde_json::to_string(&s)
                .unwrap()
                .contains(r#""timeout":"1m30s""#)
        );
        let s = parse(
            r#"{"name":"s3","region":"r","bucket":"b","multipartcopychunksize":5242880,
                "multipartcopymaxconcurrency":"4","multipartcopythresholdsize":0,"redirect":true}"#,
        )
        .unwrap();
        assert_eq!(
            (
                s.multipartcopychunksize,
                s.multipartcopymaxconcurrency,
                s.multipartcopythresholdsize,
                s.redirect
            ),
            (5 * 1024 * 1024, 4, 0, true)
        );
    }

    /// zot's order: config, environment, shared credentials file (with `AWS_PROFILE`, else
    /// `[default]`); none found is an error that names no secret.
    #[test]
    fn credentials_are_found_in_zots_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credentials");
        std::fs::write(
            &file,
            "[default]\naws_access_key_id = default-id\naws_secret_access_key = default-secret\n\n\
             # a comment\n[ci]\naws_access_key_id=ci-id\naws_secret_access_key=ci-secret\n\
             aws_session_token=ci-token\n",
        )
        .unwrap();
        let file = file.to_str().unwrap().to_string();
        let without_keys = parse(r#"{"name":"s3","region":"r","bucket":"b"}"#).unwrap();
        let with_keys =
            parse(r#"{"name":"s3","region":"r","bucket":"b","accesskey":"a","secretkey":"s"}"#)
                .unwrap();
        let env = |pairs: &[(&str, &str)]| {
            let pairs: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            }
        };
        let everything = env(&[
            ("AWS_ACCESS_KEY_ID", "env-id"),
            ("AWS_SECRET_ACCESS_KEY", "env-secret"),
            ("AWS_SHARED_CREDENTIALS_FILE", file.as_str()),
        ]);
        let found = with_keys.credentials_from("k", &everything).unwrap();
        assert_eq!((found.access_key.as_str(), found.source), ("a", "config"));
        let found = without_keys.credentials_from("k", &everything).unwrap();
        assert_eq!(
            (found.access_key.as_str(), found.source),
            ("env-id", "environment")
        );
        let found = without_keys
            .credentials_from("k", &env(&[("AWS_SHARED_CREDENTIALS_FILE", file.as_str())]))
            .unwrap();
        assert_eq!(
            (found.access_key.as_str(), found.secret_key.as_str()),
            ("default-id", "default-secret")
        );
        let found = without_keys
            .credentials_from(
                "k",
                &env(&[
                    ("AWS_SHARED_CREDENTIALS_FILE", file.as_str()),
                    ("AWS_PROFILE", "ci"),
                ]),
            )
            .unwrap();
        assert_eq!(
            (found.access_key.as_str(), found.session_token.as_deref()),
            ("ci-id", Some("ci-token"))
        );
        let missing = without_keys
            .credentials_from(
                "storage.storageDriver",
                &env(&[
                    ("AWS_SHARED_CREDENTIALS_FILE", file.as_str()),
                    ("AWS_PROFILE", "nope"),
                ]),
            )
            .err()
            .expect("no credentials are found");
        assert!(
            missing.starts_with("storage.storageDriver: no S3 credentials"),
            "{missing}"
        );
        assert!(
            missing.contains("[nope]") && !missing.contains("secret-"),
            "{missing}"
        );
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
                r#"{"name":"s3","region":"r","bucket":"b","timeout":"0"}"#,
                "storage.storageDriver.timeout",
            ),
            (
                r#"{"name":"s3","region":"r","bucket":"b","revalidate":"soon"}"#,
                "storage.storageDriver.revalidate",
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
                r#"{"name":"s3","region":"r","bucket":"b","multipartcopychunksize":"1k"}"#,
                "storage.storageDriver.multipartcopychunksize",
            ),
            (
                r#"{"name":"s3","region":"r","bucket":"b","multipartcopymaxconcurrency":0}"#,
                "storage.storageDriver.multipartcopymaxconcurrency",
            ),
            (
                r#"{"name":"s3","region":"r","bucket":"b","redirect":"yes"}"#,
                "storage.storageDriver.redirect",
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
