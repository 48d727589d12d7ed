//! What the `storageDriver` attributes change on the wire, against the real test servers
//! `scripts/s3-services.sh` starts: the encryption, storage class and ACL of every object the
//! driver creates (moto keeps them and answers them), virtual-hosted addressing and Signature
//! Version 2 (s3s-fs checks both), TLS verification (moto on HTTPS with a self-signed
//! certificate), the per-request lines of `loglevel`, and instance credentials (moto serves
//! EC2's instance metadata) with their refresh.

use super::credentials::Provider;
use super::tests::{
    Service, config, fresh, multipart_writer, path, pattern, service, signed_requests,
};
use super::*;
use std::collections::HashMap;
use std::sync::Mutex;

/// The `x-amz-*` headers a HEAD of `key` answers, and its ACL's grants.
fn stored_attributes(d: &S3Driver, key: &str) -> (HashMap<String, String>, String) {
    let key = d.inner.key(&path(key));
    let reply = d
        .inner
        .send("stat", "HEAD", Some(&key), &[], &[], Body::Empty)
        .unwrap();
    assert_eq!(reply.status, 200, "{key}");
    let headers = reply
        .response
        .headers()
        .iter()
        .filter(|(n, _)| n.as_str().starts_with("x-amz-s"))
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
        .collect();
    let _ = reply.bytes();
    let acl = d
        .inner
        .send("acl", "GET", Some(&key), &[("acl", "")], &[], Body::Empty)
        .unwrap()
        .text()
        .unwrap();
    (headers, acl)
}

/// Every request that creates an object (PutObject for `put`, `create` and placeholders,
/// CopyObject for `copy` and `touch`, CreateMultipartUpload for the writer) carries the
/// encryption, storage class and canned ACL; moto stores them. A driver without the
/// attributes sends none of them.
#[test]
fn created_objects_carry_encryption_class_and_acl_on_moto() {
    let kms = Service {
        wire: Wire {
            encryption: Some(Encryption::Kms("berth-test-key".into())),
            storage_class: StorageClass::parse("reduced_redundancy"),
            acl: CannedAcl::parse("public-read"),
            ..Wire::default()
        },
        ..service("MOTO")
    };
    let (d, bucket) = fresh(&kms, "root");
    d.put(&path("a/put"), b"put").unwrap();
    assert!(d.create(&path("a/create"), b"create").unwrap());
    d.put_placeholder(&path("a/placeholder"), &path("a/put"))
        .unwrap();
    d.copy(&path("a/put"), &path("a/copy")).unwrap();
    d.put(&path("a/touched"), b"touched").unwrap();
    let plain = S3Driver::new(config(&service("MOTO"), &bucket, "root")).unwrap();
    plain.put(&path("a/plain"), b"plain").unwrap();
    // Touched by a driver with the attributes: the copy onto itself keeps them.
    plain.put(&path("a/touched"), b"touched").unwrap();
    d.touch(&path("a/touched")).unwrap();
    let mut w = d.writer(&path("a/upload")).unwrap();
    w.write(pattern(MIN_PART + 10, 1)).unwrap();
    w.write(pattern(1000, 2)).unwrap();
    w.commit().unwrap();
    for key in [
        "a/put",
        "a/create",
        "a/placeholder",
        "a/copy",
        "a/touched",
        "a/upload",
    ] {
        let (headers, acl) = stored_attributes(&d, key);
        assert_eq!(
            headers
                .get("x-amz-server-side-encryption")
                .map(String::as_str),
            Some("aws:kms"),
            "{key}: {headers:?}"
        );
        assert_eq!(
            headers
                .get("x-amz-server-side-encryption-aws-kms-key-id")
                .map(String::as_str),
            Some("berth-test-key"),
            "{key}: {headers:?}"
        );
        assert_eq!(
            headers.get("x-amz-storage-class").map(String::as_str),
            Some("REDUCED_REDUNDANCY"),
            "{key}: {headers:?}"
        );
        assert!(acl.contains("groups/global/AllUsers"), "{key}: {acl}");
    }
    let (headers, acl) = stored_attributes(&d, "a/plain");
    assert!(headers.is_empty(), "{headers:?}");
    assert!(!acl.contains("AllUsers"), "{acl}");

    let aes = Service {
        wire: Wire {
            encryption: Some(Encryption::Aes256),
            ..Wire::default()
        },
        ..service("MOTO")
    };
    let d = S3Driver::new(config(&aes, &bucket, "root")).unwrap();
    d.put(&path("a/aes"), b"aes").unwrap();
    let (headers, _) = stored_attributes(&d, "a/aes");
    assert_eq!(
        headers
            .get("x-amz-server-side-encryption")
            .map(String::as_str),
        Some("AES256"),
        "{headers:?}"
    );
    assert!(!headers.contains_key("x-amz-server-side-encryption-aws-kms-key-id"));
}

/// s3s-fs, with the wire of `wire`, at `localhost` (which resolves to loopback in the driver,
/// no /etc/hosts needed) when `localhost` is set.
fn s3s_with(wire: Wire, localhost: bool) -> Service {
    let mut s3s = service("S3S");
    if localhost {
        s3s.endpoint = s3s.endpoint.replace("127.0.0.1", "localhost");
    }
    Service { wire, ..s3s }
}

/// After `signed_requests` through `service`, the key it left is where a path-style client
/// finds it: the bucket was named once, in the host or in the path.
fn left_in_place(service: Service) {
    let bucket = signed_requests(service);
    let path_style = S3Driver::new(config(&service_s3s(), &bucket, "signed")).unwrap();
    assert_eq!(
        path_style.get(&path("repo/blobs/sha256/abc")).unwrap(),
        b"0123456789"
    );
}

fn service_s3s() -> Service {
    service("S3S")
}

/// `forcepathstyle: false`: the bucket in the host (`BUCKET.localhost:PORT`), the key alone
/// in the path, signed so (s3s-fs checks the signature of what it received).
#[test]
fn virtual_hosted_requests_pass_s3s_fs() {
    let s3s = s3s_with(
        Wire {
            virtual_hosted: true,
            ..Wire::default()
        },
        true,
    );
    let d = S3Driver::new(config(&s3s, "some-bucket", "")).unwrap();
    assert!(
        d.inner
            .client
            .base()
            .starts_with("http://some-bucket.localhost:"),
        "{}",
        d.inner.client.base()
    );
    left_in_place(s3s);
}

/// `v4auth: false`: Signature Version 2, path-style and virtual-hosted, and the multipart
/// writer's sub-resources (`uploads`, `partNumber`, `uploadId`), all checked by s3s-fs.
#[test]
fn signature_v2_passes_s3s_fs() {
    let v2 = Wire {
        signature_v2: true,
        ..Wire::default()
    };
    left_in_place(s3s_with(v2.clone(), false));
    left_in_place(s3s_with(
        Wire {
            virtual_hosted: true,
            ..v2.clone()
        },
        true,
    ));
    multipart_writer(&s3s_with(v2, false));
}

/// `secure` endpoints are verified: moto's self-signed certificate is refused with an error
/// naming the bucket and endpoint; `skipverify` reaches it.
#[test]
fn https_is_verified_unless_skipverify() {
    let tls = service("MOTO_TLS");
    assert!(tls.endpoint.starts_with("https://"));
    let verified = S3Driver::new(config(&tls, "berth-tls", "")).unwrap();
    let refused = verified.probe().unwrap_err().to_string();
    assert!(
        refused.contains(&format!("bucket berth-tls at {}", tls.endpoint))
            && refused.contains("invalid peer certificate")
            && refused.contains("skipverify: true"),
        "{refused}"
    );
    let skip = Service {
        wire: Wire {
            skip_verify: true,
            ..Wire::default()
        },
        ..service("MOTO_TLS")
    };
    let (d, _) = fresh(&skip, "");
    d.probe().unwrap();
    d.put(&path("over/tls"), b"bytes").unwrap();
    assert_eq!(d.get(&path("over/tls")).unwrap(), b"bytes");
}

/// What a `tracing` subscriber wrote.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// The log lines `run` makes with a driver of `log` on moto (with a session token and a
/// `useragent`), at berth's default level, `info`.
fn logged(log: LogLevel, run: impl FnOnce(&S3Driver)) -> String {
    let moto = service("MOTO");
    let (_, bucket) = fresh(&moto, "logged");
    logged_on(log, &bucket, run)
}

/// `logged`, on `bucket` of moto.
fn logged_on(log: LogLevel, bucket: &str, run: impl FnOnce(&S3Driver)) -> String {
    let moto = service("MOTO");
    let mut cfg = config(&moto, bucket, "logged");
    cfg.credentials.secret_key = "the-secret-key".into();
    cfg.credentials.session_token = Some("the-session-token".into());
    cfg.wire = Wire {
        log,
        user_agent: Some("berth-test-agent/1.0".into()),
        ..Wire::default()
    };
    let d = S3Driver::new(cfg).unwrap();
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    tracing::subscriber::with_default(subscriber, || run(&d));
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        !text.contains("the-secret-key") && !text.contains("the-session-token"),
        "no secret in the log: {text}"
    );
    text
}

/// `loglevel`: a line per request (method, bucket, key, status, bytes, duration); with
/// signing, the canonical request and string to sign; with the HTTP body level, the headers
/// (`User-Agent` among them); with request errors, S3's error answer. Never a secret or a
/// session token; nothing when off.
#[test]
fn loglevel_logs_each_request() {
    let put_and_get = |d: &S3Driver| {
        d.put(&path("r/k"), b"0123456789").unwrap();
        assert_eq!(d.get(&path("r/k")).unwrap(), b"0123456789");
    };
    assert_eq!(logged(LogLevel::Off, put_and_get), "");
    let debug = logged(LogLevel::Debug, put_and_get);
    let lines: Vec<&str> = debug.lines().filter(|l| l.contains("S3 request")).collect();
    assert_eq!(lines.len(), 2, "{debug}");
    assert!(
        lines[0].contains("method=\"PUT\"")
            && lines[0].contains("key=\"logged/r/k\"")
            && lines[0].contains("status=200")
            && lines[0].contains("sent=10")
            && lines[0].contains("ms="),
        "{debug}"
    );
    assert!(
        lines[1].contains("method=\"GET\"") && lines[1].contains("received=\"10\""),
        "{debug}"
    );
    assert!(!debug.contains("canonical_request"), "{debug}");
    let signing = logged(LogLevel::DebugWithSigning, put_and_get);
    assert!(
        signing.contains("canonical_request=\"PUT\\n/")
            && signing.contains("string_to_sign=\"AWS4-HMAC-SHA256")
            && signing.contains("x-amz-security-token:<session token>"),
        "{signing}"
    );
    let headers = logged(LogLevel::DebugWithHttpBody, put_and_get);
    assert!(
        headers.contains("S3 request headers") && headers.contains("berth-test-agent/1.0"),
        "{headers}"
    );
    let errors = logged_on(
        LogLevel::DebugWithRequestErrors,
        "no-such-bucket-here",
        |d| {
            assert!(d.probe().is_err());
        },
    );
    assert!(
        errors.contains("S3 error answer") && errors.contains("NoSuchBucket"),
        "{errors}"
    );
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// moto serves EC2's instance metadata (IMDSv2 token, role, credentials); the same JSON at a
/// URL given as the container endpoint is read as ECS's.
#[test]
fn instance_credentials_are_read_from_moto() {
    let moto = service("MOTO_METADATA").endpoint;
    let ec2 = Instance::Ec2 {
        endpoint: moto.clone(),
    }
    .fetch()
    .unwrap();
    assert_eq!(
        (
            ec2.access_key.as_str(),
            ec2.session_token.as_deref(),
            ec2.source
        ),
        (
            "test-key",
            Some("test-session-token"),
            "EC2 instance metadata"
        )
    );
    let refresh = ec2.refresh.expect("temporary credentials expire");
    assert!(refresh.expires > SystemTime::now() + Duration::from_secs(3600));
    let ecs = Instance::Container {
        url: format!("{moto}/latest/meta-data/iam/security-credentials/default-role"),
        token: Some("container-token".into()),
    }
    .fetch()
    .unwrap();
    assert_eq!(
        (ecs.secret_key.as_str(), ecs.source),
        ("test-secret-key", "container credentials endpoint")
    );
}

/// No instance source answering: an error naming it, within about a second.
#[test]
fn instance_credentials_give_up_quickly() {
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    let started = std::time::Instant::now();
    let e = Instance::Ec2 {
        endpoint: endpoint.clone(),
    }
    .fetch()
    .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert!(
        e.contains(&format!("EC2 instance metadata at {endpoint}")),
        "{e}"
    );
}

/// Temporary credentials are fetched again within five minutes of their expiry, not before;
/// a failing source keeps the current ones while they work, and is an error once they
/// expired.
#[test]
fn temporary_credentials_are_refreshed_before_they_expire() {
    let moto = Instance::Ec2 {
        endpoint: service("MOTO_METADATA").endpoint,
    };
    let closed = Instance::Ec2 {
        endpoint: format!("http://127.0.0.1:{}", closed_port()),
    };
    let old = |expires_in: i64, from: &Instance| Credentials {
        access_key: "old-key".into(),
        secret_key: "old-secret".into(),
        session_token: None,
        source: "test",
        refresh: Some(Refresh {
            expires: if expires_in >= 0 {
                SystemTime::now() + Duration::from_secs(expires_in as u64)
            } else {
                SystemTime::now() - Duration::from_secs(expires_in.unsigned_abs())
            },
            from: from.clone(),
        }),
    };
    let key = |p: &Provider| p.get().unwrap().access_key.clone();
    assert_eq!(key(&Provider::new(old(3600, &moto))), "old-key");
    let soon = Provider::new(old(60, &moto));
    assert_eq!(key(&soon), "test-key");
    assert_eq!(key(&soon), "test-key", "kept once fetched");
    assert_eq!(key(&Provider::new(old(60, &closed))), "old-key");
    let expired = Provider::new(old(-1, &closed))
        .get()
        .unwrap_err()
        .to_string();
    assert!(expired.contains("expired"), "{expired}");
}

/// A GET of `url` as a client following a redirect sends it (the host from the URL, which
/// `BUCKET.localhost` needs no resolver for: the test connects to 127.0.0.1): the status and
/// the body.
fn fetch_url(url: &str) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, target) = rest.split_at(rest.find('/').unwrap());
    let port = host.rsplit_once(':').unwrap().1;
    let mut stream = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let end = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&answer[..end]).to_string();
    let status = head[9..12].parse().unwrap();
    // s3s-fs answers a GET with Content-Length (no chunking), so the body is what follows.
    (status, answer[end + 4..].to_vec())
}

/// Presigned URLs (`redirect`) in each signing and addressing s3s-fs checks, with and without
/// a session token: each serves the object's bytes, and one with a forged signature is
/// refused. SigV2 with a session token is left out: s3s-fs 0.14.1 refuses botocore's own
/// such URLs too (its limit, not the signing's).
#[test]
fn presigned_urls_pass_s3s_fs_in_every_signing_and_addressing() {
    let (d, bucket) = fresh(&service_s3s(), "presigned");
    let p = path("repo/blobs/sha256/abc");
    let bytes = pattern(10_000, 5);
    d.put(&p, &bytes).unwrap();
    let cases = [
        ("SigV4 path-style", false, false, None),
        ("SigV4 virtual-hosted", false, true, None),
        ("SigV2 path-style", true, false, None),
        ("SigV2 virtual-hosted", true, true, None),
        (
            "SigV4 with a session token",
            false,
            false,
            Some("a-session/token+="),
        ),
        (
            "SigV4 virtual-hosted with a session token",
            false,
            true,
            Some("a-session/token+="),
        ),
    ];
    for (name, signature_v2, virtual_hosted, token) in cases {
        let s3s = s3s_with(
            Wire {
                signature_v2,
                virtual_hosted,
                ..Wire::default()
            },
            virtual_hosted,
        );
        let mut config = config(&s3s, &bucket, "presigned");
        config.redirect = true;
        config.credentials.session_token = token.map(str::to_string);
        let presigning = S3Driver::new(config).unwrap();
        let url = presigning
            .presigned_url(&p, Duration::from_secs(60))
            .unwrap();
        let (status, body) = fetch_url(&url);
        assert_eq!(
            status,
            200,
            "{name}: {url}: {}",
            String::from_utf8_lossy(&body)
        );
        assert!(body == bytes, "{name}: the object's bytes");
        let signature = if signature_v2 {
            "Signature="
        } else {
            "X-Amz-Signature="
        };
        let at = url.find(signature).unwrap() + signature.len();
        // A digit in hex (SigV4) and in base64 (SigV2): still well-formed, but wrong.
        let flipped = if url[at..].starts_with('0') { "1" } else { "0" };
        let forged = format!("{}{flipped}{}", &url[..at], &url[at + 1..]);
        assert_eq!(fetch_url(&forged).0, 403, "{name}: forged {forged}");
    }
}
