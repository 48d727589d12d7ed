//! `storage.storageDriver` with `name: "s3"` (issue 13): zot's attributes
//! (reference/003_43de0aa1d043bbfc.txt, "Configuring remote storage with s3"), typed, and the
//! credentials in zot's order.
//!
//! With an S3 driver, a store's `rootDirectory` stays a local directory: it holds the
//! embedded cache and the lock, as zot keeps its cache there; `storageDriver.rootdirectory`
//! is the key prefix in the bucket.
//!
//! Every attribute of zot's table is taken, with distribution's defaults and accepted values
//! (its `s3-aws` driver is where zot's table comes from); a value outside them, and an
//! unknown key, is an error naming the key. What each changes on the wire is in
//! `storage::driver::s3::client`. berth-only: `redirect`, `timeout`, `revalidate`,
//! `blobcachesize`.

use crate::storage::driver::s3::{
    CannedAcl, Credentials, Encryption, Instance, LogLevel, MultipartCopy, S3Config, StorageClass,
    Wire,
};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;
use std::time::Duration;

/// The default `chunksize`: distribution's.
pub const DEFAULT_CHUNK_SIZE: u64 = 10 * 1024 * 1024;
/// The default `blobcachesize`: 64 MiB per store, blobs up to a sixteenth of it (4 MiB:
/// image configs, manifests read as blobs, small layers) kept. It bounds the blobs held and
/// those being read whole to be kept together (a pull that finds no room streams the blob
/// without keeping it); a blob dropped while a response still sends it lives until that
/// response ends. Beside it an S3 store keeps at most 64 MiB of manifests and about 128 MiB
/// of parsed `index.json` listings. Measured: peak RSS 172 to 184 MiB during 8 concurrent 256 MiB
/// pushes, with these caches empty; not measured with them full.
pub const DEFAULT_BLOB_CACHE_SIZE: u64 = 64 * 1024 * 1024;
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
    /// Path-style requests (else virtual-hosted).
    pub forcepathstyle: bool,
    /// Server-side encryption of every object created.
    pub encrypt: bool,
    /// The KMS key of that encryption (else S3's own keys).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyid: Option<String>,
    /// Storage class of every object created; `None` is `NONE` (none sent).
    #[serde(serialize_with = "storage_class_or_none")]
    pub storageclass: Option<StorageClass>,
    /// Canned ACL of every object created, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objectacl: Option<CannedAcl>,
    /// `User-Agent`, if not berth's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub useragent: Option<String>,
    /// AWS's dual-stack (IPv4 and IPv6) endpoint, when no `regionendpoint` is given.
    pub usedualstack: bool,
    /// AWS's transfer-acceleration endpoint, when no `regionendpoint` is given.
    pub accelerate: bool,
    /// HTTPS without verifying the server's certificate.
    pub skipverify: bool,
    /// Signature Version 4 (else 2).
    pub v4auth: bool,
    /// Per-request log lines.
    pub loglevel: LogLevel,
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
    /// berth-only: bytes of small blobs kept in memory (0: none), each at most a sixteenth of
    /// it; a pull of one served from there asks the bucket nothing within `revalidate`, and
    /// then only whether the blob is still there.
    pub blobcachesize: u64,
    /// The access key given in the config, if any: not printed either, so a printed config
    /// read back finds its credentials where the secret's are (the environment).
    #[serde(skip)]
    pub accesskey: Option<String>,
    /// The secret key given in the config, if any: never printed.
    #[serde(skip)]
    pub secretkey: Option<String>,
}

fn storage_class_or_none<S: Serializer>(
    class: &Option<StorageClass>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(class.map_or("NONE", StorageClass::as_str))
}

impl S3Settings {
    /// The endpoint URL requests go to: `regionendpoint` (with a scheme from `secure` when it
    /// names none), else AWS's endpoint for the region: dual-stack with `usedualstack`, the
    /// global acceleration endpoint with `accelerate`.
    pub fn endpoint(&self) -> String {
        let scheme = if self.secure { "https" } else { "http" };
        match &self.regionendpoint {
            Some(e) if e.contains("://") => e.trim_end_matches('/').to_string(),
            Some(e) => format!("{scheme}://{}", e.trim_end_matches('/')),
            None => match (self.accelerate, self.usedualstack) {
                (true, true) => format!("{scheme}://s3-accelerate.dualstack.amazonaws.com"),
                (true, false) => format!("{scheme}://s3-accelerate.amazonaws.com"),
                (false, true) => format!("{scheme}://s3.dualstack.{}.amazonaws.com", self.region),
                (false, false) => format!("{scheme}://s3.{}.amazonaws.com", self.region),
            },
        }
    }

    /// Whether the bucket is named in the host: `forcepathstyle: false`, or AWS's
    /// acceleration endpoint, which only takes virtual-hosted requests (AWS's SDK ignores
    /// `forcepathstyle` with it, as here).
    pub fn virtual_hosted(&self) -> bool {
        !self.forcepathstyle || (self.accelerate && self.regionendpoint.is_none())
    }

    /// What the attributes change in each request.
    pub fn wire(&self) -> Wire {
        Wire {
            virtual_hosted: self.virtual_hosted(),
            encryption: self.encrypt.then(|| {
                self.keyid
                    .clone()
                    .map_or(Encryption::Aes256, Encryption::Kms)
            }),
            storage_class: self.storageclass,
            acl: self.objectacl,
            user_agent: self.useragent.clone(),
            skip_verify: self.skipverify,
            signature_v2: !self.v4auth,
            log: self.loglevel,
        }
    }

    /// Attributes that have no effect as combined, for the start-up log: with a
    /// `regionendpoint`, `usedualstack` and `accelerate` choose nothing (AWS's SDK does not
    /// apply dual-stack to a custom endpoint either), and `accelerate` makes `forcepathstyle`
    /// moot.
    pub fn ignored(&self, key: &str) -> Vec<String> {
        let mut ignored = Vec::new();
        if self.regionendpoint.is_some() {
            for (on, name) in [
                (self.usedualstack, "usedualstack"),
                (self.accelerate, "accelerate"),
            ] {
                if on {
                    ignored.push(format!(
                        "{key}.{name}: ignored, regionendpoint names the endpoint"
                    ));
                }
            }
        } else if self.accelerate && self.forcepathstyle {
            ignored.push(format!(
                "{key}.forcepathstyle: ignored, the acceleration endpoint takes virtual-hosted requests only"
            ));
        }
        ignored
    }

    /// Credentials in zot's order (`credentials`), starting with the config's
    /// `accesskey`/`secretkey`.
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
        credentials_from(
            self.accesskey.as_deref().zip(self.secretkey.as_deref()),
            key,
            env,
        )
    }
}

/// Credentials in zot's order: `keys` given in the config, then
/// `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` (with `AWS_SESSION_TOKEN`), then the shared
/// credentials file (`AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`), profile
/// `AWS_PROFILE` or `default`, then instance credentials (ECS container endpoint, EC2
/// instance metadata), each given about a second; with the environment read through `env`.
/// The S3 driver's and the DynamoDB cache's one chain. The error, which starts with `key`,
/// names the sources tried, never a secret.
pub fn credentials_from(
    keys: Option<(&str, &str)>,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Credentials, String> {
    if let Some((access_key, secret_key)) = keys {
        return Ok(Credentials {
            access_key: access_key.to_string(),
            secret_key: secret_key.to_string(),
            session_token: None,
            source: "config",
            refresh: None,
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
            refresh: None,
        });
    }
    let file = var("AWS_SHARED_CREDENTIALS_FILE")
        .map(std::path::PathBuf::from)
        .or_else(|| var("HOME").map(|home| std::path::Path::new(&home).join(".aws/credentials")));
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
                refresh: None,
            });
        }
    }
    let tried_file = file.map_or_else(
        || "no shared credentials file (HOME is not set)".to_string(),
        |f| format!("no profile [{profile}] with both keys in {}", f.display()),
    );
    let mut tried_instance = Vec::new();
    for source in Instance::sources(env).map_err(|e| format!("{key}: {e}"))? {
        match source.fetch() {
            Ok(found) => return Ok(found),
            Err(e) => tried_instance.push(e),
        }
    }
    if tried_instance.is_empty() {
        tried_instance.push("no instance credentials (AWS_EC2_METADATA_DISABLED)".to_string());
    }
    Err(format!(
        "{key}: no AWS credentials: set accesskey and secretkey, or AWS_ACCESS_KEY_ID and \
         AWS_SECRET_ACCESS_KEY, or a profile in the shared credentials file ({tried_file}), \
         or run where instance credentials answer ({})",
        tried_instance.join("; ")
    ))
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
    blobcachesize: Option<Value>,
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
    let one_of = |name: &str, value: &str, accepted: &[&str]| {
        format!(
            "{}: {value:?} is not one of {}",
            at(name),
            accepted.join(", ")
        )
    };
    let text = |value: &Option<Value>, name: &str| -> Result<Option<String>, String> {
        match value {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!("{}: {other}: a string", at(name))),
        }
    };
    let flag = |value: &Option<Value>, name: &str, default: bool| -> Result<bool, String> {
        match value {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            // zot's examples, and distribution's environment overrides, write strings.
            Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
            Some(other) => Err(format!("{}: {other}: true or false", at(name))),
        }
    };
    let encrypt = raw.encrypt.unwrap_or(false);
    let keyid = text(&raw.keyid, "keyid")?.filter(|k| !k.is_empty());
    if keyid.is_some() && !encrypt {
        return Err(format!(
            "{}: a KMS key needs encrypt: true (distribution would silently store unencrypted)",
            at("keyid")
        ));
    }
    let storageclass = match raw.storageclass.as_deref() {
        None => StorageClass::parse("STANDARD"),
        Some(c) if c.trim().eq_ignore_ascii_case("NONE") => None,
        Some(c) => Some(StorageClass::parse(c).ok_or_else(|| {
            let mut accepted = StorageClass::ACCEPTED.to_vec();
            accepted.push("NONE");
            one_of("storageclass", c, &accepted)
        })?),
    };
    let objectacl = text(&raw.objectacl, "objectacl")?
        .map(|acl| {
            CannedAcl::parse(&acl).ok_or_else(|| one_of("objectacl", &acl, &CannedAcl::ACCEPTED))
        })
        .transpose()?;
    let loglevel = text(&raw.loglevel, "loglevel")?
        .map(|level| {
            LogLevel::parse(&level).ok_or_else(|| {
                let accepted: Vec<&str> = LogLevel::ACCEPTED.iter().map(|(n, _)| *n).collect();
                one_of("loglevel", &level, &accepted)
            })
        })
        .transpose()?
        .unwrap_or_default();
    let useragent = text(&raw.useragent, "useragent")?.filter(|u| !u.is_empty());
    if let Some(agent) = &useragent
        && agent.chars().any(|c| c.is_control() || !c.is_ascii())
    {
        return Err(format!(
            "{}: {agent:?}: printable ASCII only (it is an HTTP header)",
            at("useragent")
        ));
    }
    let usedualstack = flag(&raw.usedualstack, "usedualstack", false)?;
    let accelerate = flag(&raw.accelerate, "accelerate", false)?;
    if keyid.is_some() && raw.v4auth == Some(false) {
        return Err(format!(
            "{}: false: S3 takes requests for KMS-encrypted objects (keyid) signed with \
             Signature Version 4 only",
            at("v4auth")
        ));
    }
    let regionendpoint = raw.regionendpoint.filter(|e| !e.is_empty());
    if raw.forcepathstyle == Some(false)
        && let Some(endpoint) = &regionendpoint
    {
        // A virtual-hosted request names BUCKET.HOST: no such name exists for an IP address.
        let authority = endpoint
            .split_once("://")
            .map_or(endpoint.as_str(), |(_, a)| a);
        let host = authority
            .rsplit_once(':')
            .map_or(authority, |(h, _)| h)
            .trim_matches(['[', ']']);
        if host.parse::<std::net::IpAddr>().is_ok() {
            return Err(format!(
                "{}: false: virtual-hosted requests need a host name in regionendpoint, not \
                 the address {host} (use localhost for loopback)",
                at("forcepathstyle")
            ));
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
    let blobcachesize = bytes_between(
        &raw.blobcachesize,
        "blobcachesize",
        DEFAULT_BLOB_CACHE_SIZE,
        0,
        usize::MAX as u64,
    )?;
    Ok(S3Settings {
        name: "s3".to_string(),
        region,
        regionendpoint,
        bucket,
        rootdirectory: raw
            .rootdirectory
            .unwrap_or_default()
            .trim_matches('/')
            .to_string(),
        forcepathstyle: raw.forcepathstyle.unwrap_or(true),
        encrypt,
        keyid,
        storageclass,
        objectacl,
        useragent,
        usedualstack,
        accelerate,
        skipverify: raw.skipverify.unwrap_or(false),
        v4auth: raw.v4auth.unwrap_or(true),
        loglevel,
        secure: raw.secure.unwrap_or(true),
        chunksize,
        multipartcopychunksize,
        multipartcopymaxconcurrency,
        multipartcopythresholdsize,
        redirect: raw.redirect.unwrap_or(false),
        timeout,
        revalidate,
        blobcachesize,
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
        assert_eq!(s.blobcachesize, DEFAULT_BLOB_CACHE_SIZE);
        let s = parse(
            r#"{"name":"s3","region":"r","bucket":"b","timeout":"1m30s","revalidate":"0",
                "blobcachesize":0}"#,
        )
        .unwrap();
        assert_eq!(
            (s.timeout, s.revalidate, s.blobcachesize),
            (Duration::from_secs(90), Duration::ZERO, 0)
        );
        let cached = parse(r#"{"name":"s3","region":"r","bucket":"b","blobcachesize":"1048576"}"#);
        assert_eq!(cached.unwrap().blobcachesize, 1 << 20);
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
        // Then instance credentials: moto serves EC2's instance metadata.
        let moto = crate::storage::driver::s3::tests::fresh_on_moto().endpoint;
        let found = without_keys
            .credentials_from(
                "k",
                &env(&[
                    ("AWS_SHARED_CREDENTIALS_FILE", file.as_str()),
                    ("AWS_PROFILE", "nope"),
                    ("AWS_EC2_METADATA_SERVICE_ENDPOINT", moto.as_str()),
                ]),
            )
            .unwrap();
        assert_eq!(
            (found.access_key.as_str(), found.source),
            ("test-key", "EC2 instance metadata")
        );
        let container = format!("{moto}/latest/meta-data/iam/security-credentials/default-role");
        let found = without_keys
            .credentials_from(
                "k",
                &env(&[
                    ("HOME", "/nonexistent"),
                    ("AWS_CONTAINER_CREDENTIALS_FULL_URI", container.as_str()),
                    ("AWS_EC2_METADATA_DISABLED", "true"),
                ]),
            )
            .unwrap();
        assert_eq!(found.source, "container credentials endpoint");
        let refused = without_keys
            .credentials_from(
                "k",
                &env(&[(
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                    "http://192.0.2.1/creds",
                )]),
            )
            .unwrap_err();
        assert!(refused.contains("must be https"), "{refused}");

        // None answers: a quick error naming every source tried, and no secret.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let closed = format!("http://127.0.0.1:{closed}");
        let started = std::time::Instant::now();
        let missing = without_keys
            .credentials_from(
                "storage.storageDriver",
                &env(&[
                    ("AWS_SHARED_CREDENTIALS_FILE", file.as_str()),
                    ("AWS_PROFILE", "nope"),
                    ("AWS_EC2_METADATA_SERVICE_ENDPOINT", closed.as_str()),
                ]),
            )
            .expect_err("no credentials are found");
        assert!(started.elapsed() < std::time::Duration::from_millis(1500));
        assert!(
            missing.starts_with("storage.storageDriver: no AWS credentials"),
            "{missing}"
        );
        assert!(
            missing.contains("[nope]")
                && missing.contains(&format!("EC2 instance metadata at {closed}"))
                && !missing.contains("secret-"),
            "{missing}"
        );
        let disabled = without_keys
            .credentials_from(
                "k",
                &env(&[
                    ("HOME", "/nonexistent"),
                    ("AWS_EC2_METADATA_DISABLED", "TRUE"),
                ]),
            )
            .unwrap_err();
        assert!(disabled.contains("AWS_EC2_METADATA_DISABLED"), "{disabled}");
    }

    /// Each attribute, typed into what the driver sends; AWS's endpoints chosen by
    /// `usedualstack` and `accelerate` when no `regionendpoint` is given.
    #[test]
    fn wire_attributes_resolve() {
        let s = parse(
            r#"{"name":"s3","region":"eu-west-1","bucket":"b","encrypt":true,"keyid":"k-1",
                "storageclass":"reduced_redundancy","objectacl":"bucket-owner-full-control",
                "useragent":"me/1","skipverify":true,"loglevel":"DebugWithSigning",
                "forcepathstyle":false}"#,
        )
        .unwrap();
        let wire = s.wire();
        assert_eq!(wire.encryption, Some(Encryption::Kms("k-1".into())));
        assert_eq!(
            wire.storage_class.map(StorageClass::as_str),
            Some("REDUCED_REDUNDANCY")
        );
        assert_eq!(
            wire.acl.map(CannedAcl::as_str),
            Some("bucket-owner-full-control")
        );
        assert_eq!(wire.user_agent.as_deref(), Some("me/1"));
        assert!(wire.skip_verify && !wire.signature_v2 && wire.virtual_hosted);
        assert_eq!(wire.log, LogLevel::DebugWithSigning);
        assert_eq!(s.endpoint(), "https://s3.eu-west-1.amazonaws.com");
        let printed = serde_json::to_value(&s).unwrap();
        assert_eq!(printed["storageclass"], "REDUCED_REDUNDANCY");
        assert_eq!(printed["loglevel"], "debugwithsigning");

        let s = parse(r#"{"name":"s3","region":"r","bucket":"b"}"#).unwrap();
        let wire = s.wire();
        assert_eq!(wire.encryption, None);
        assert_eq!(
            wire.storage_class.map(StorageClass::as_str),
            Some("STANDARD")
        );
        assert!(!wire.virtual_hosted && !wire.skip_verify && !wire.signature_v2);
        assert_eq!(wire.log, LogLevel::Off);
        let s = parse(
            r#"{"name":"s3","region":"r","bucket":"b","encrypt":true,"storageclass":"NONE"}"#,
        )
        .unwrap();
        assert_eq!(s.wire().encryption, Some(Encryption::Aes256));
        assert_eq!(s.wire().storage_class, None);
        assert_eq!(serde_json::to_value(&s).unwrap()["storageclass"], "NONE");
        let s = parse(r#"{"name":"s3","region":"r","bucket":"b","v4auth":false}"#).unwrap();
        assert!(s.wire().signature_v2);

        for (json, endpoint, virtual_hosted) in [
            (
                r#""usedualstack":true"#,
                "https://s3.dualstack.eu-west-2.amazonaws.com",
                false,
            ),
            (
                r#""accelerate":true"#,
                "https://s3-accelerate.amazonaws.com",
                true,
            ),
            (
                r#""accelerate":true,"usedualstack":true,"secure":false"#,
                "http://s3-accelerate.dualstack.amazonaws.com",
                true,
            ),
            (
                r#""accelerate":true,"usedualstack":true,"regionendpoint":"http://127.0.0.1:9000""#,
                "http://127.0.0.1:9000",
                false,
            ),
        ] {
            let s = parse(&format!(
                r#"{{"name":"s3","region":"eu-west-2","bucket":"b",{json}}}"#
            ))
            .unwrap();
            assert_eq!(
                (s.endpoint().as_str(), s.virtual_hosted()),
                (endpoint, virtual_hosted),
                "{json}"
            );
        }
        let s = parse(
            r#"{"name":"s3","region":"r","bucket":"b","accelerate":true,"usedualstack":true,
                "regionendpoint":"http://127.0.0.1:9000"}"#,
        )
        .unwrap();
        assert_eq!(
            s.ignored("k"),
            [
                "k.usedualstack: ignored, regionendpoint names the endpoint",
                "k.accelerate: ignored, regionendpoint names the endpoint"
            ]
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
                r#"{"name":"s3","region":"r","bucket":"b","blobcachesize":"64m"}"#,
                "storage.storageDriver.blobcachesize",
            ),
            (
                r#"{"name":"s3","region":"r","bucket":"b","blobcachesize":-1}"#,
                "storage.storageDriver.blobcachesize",
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
                r#"{"name":"s3","region":"r","bucket":"b","useragent":"a\nb"}"#,
                "storage.storageDriver.useragent",
            ),
            (
                r#"{"name":"s3","region":"r","bucket":"b","storageclass":"GLACIER"}"#,
                "storage.storageDriver.storageclass",
            ),
            (
                r#"{"name":"s3","region":"r","bucket":"b","objectacl":"everyone"}"#,
                "storage.storageDriver.objectacl",
            ),
            (
                r#"{"name":"s3","region":"r","bucket":"b","loglevel":"loud"}"#,
                "storage.storageDriver.loglevel",
            ),
            (
                r#"{"name":"s3","region":"r","bucket":"b","keyid":"k"}"#,
                "storage.storageDriver.keyid",
            ),
            (
                r#"{"name":"s3","region":"r","bucket":"b","skipverify":"yes"}"#,
                "storage.storageDriver.skipverify",
            ),
            (
                r#"{"name":"s3","region":"r","bucket":"b","usedualstack":1}"#,
                "storage.storageDriver.usedualstack",
            ),
            (
                r#"{"name":"s3","region":"r","bucket":"b","accelerate":"fast"}"#,
                "storage.storageDriver.accelerate",
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
                r#"{"name":"s3","region":"r","bucket":"b","forcepathstyle":"no"}"#,
                "storage.storageDriver.forcepathstyle",
            ),
            (
                r#"{"name":"s3","region":"r","bucket":"b","forcepathstyle":false,
                    "regionendpoint":"http://127.0.0.1:9000"}"#,
                "storage.storageDriver.forcepathstyle",
            ),
            (
                r#"{"name":"s3","region":"r","bucket":"b","encrypt":true,"keyid":"k",
                    "v4auth":false}"#,
                "storage.storageDriver.v4auth",
            ),
        ] {
            let e = parse(json).unwrap_err();
            assert!(e.starts_with(key), "{json}: {e}");
            assert!(!e.contains("\"a\""), "no secret printed: {e}");
        }
    }
}
