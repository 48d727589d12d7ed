//! berth on S3 when S3 fails (issue 13 "Faults", DESIGN decision 12): each test starts its own
//! s3s-fs on a free 127.0.0.1 port over a directory, so it can kill the server and start it
//! again on the same port and data, or stop it (SIGSTOP) to make it slow. berth runs with the
//! berth-only `timeout` of two seconds. An outage is a 503 with the OCI error body within the
//! time-out (a server answering 5xx too, after retries), never a hang; nothing pushed during
//! it becomes visible; pulls work again as soon as the server is back, with no restart of
//! berth. The same server, which checks presigned
//! signatures, shows the berth-only `redirect`. Without s3s-fs installed
//! (`scripts/s3-services.sh start` installs it) the tests fail, naming the script.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tempfile::TempDir;

use crate::util::http::{Client, Response};
use crate::util::oci::*;
use crate::util::server::{Berth, Settings, temp_dir, wait_until};

const ACCESS_KEY: &str = "faults-access";
const SECRET_KEY: &str = "faults-secret";
const BUCKET: &str = "faults";
/// berth's `timeout` in these tests.
const TIME_OUT: Duration = Duration::from_secs(2);
/// What an answer may take beyond the time-out: the retries' pauses and a busy machine.
const SLACK: Duration = Duration::from_secs(4);

fn s3s_fs_binary() -> PathBuf {
    let home = Path::new(&std::env::var("HOME").unwrap_or_default()).join(".cargo/bin/s3s-fs");
    let on_path = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join("s3s-fs"))
        .find(|p| p.is_file());
    on_path
        .or_else(|| home.is_file().then_some(home))
        .expect("s3s-fs is not installed: run `scripts/s3-services.sh start`, which installs it")
}

/// An s3s-fs process serving `dir` on `port`, killed when dropped.
struct S3sFs {
    dir: TempDir,
    port: u16,
    child: Option<Child>,
}

impl S3sFs {
    fn start() -> S3sFs {
        let dir = temp_dir();
        std::fs::create_dir(dir.path().join(BUCKET)).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = S3sFs {
            dir,
            port,
            child: None,
        };
        server.restart();
        server
    }

    /// Starts the server again on the same port and directory.
    fn restart(&mut self) {
        let child = Command::new(s3s_fs_binary())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        self.child = Some(child);
        let port = self.port;
        assert!(
            wait_until(Duration::from_secs(20), || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            }),
            "s3s-fs listens on {port}"
        );
    }

    /// Kills the server (its data stays).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    fn settings(&self) -> Settings {
        self.settings_with(json!({}))
    }

    /// `settings` with more keys in `storageDriver`.
    fn settings_with(&self, more: serde_json::Value) -> Settings {
        let mut settings = Settings::default();
        settings.storage.insert(
            "storageDriver".into(),
            json!({
                "name": "s3",
                "region": "us-east-1",
                "bucket": BUCKET,
                "regionendpoint": format!("http://127.0.0.1:{}", self.port),
                "rootdirectory": "/berth",
                "accesskey": ACCESS_KEY,
                "secretkey": SECRET_KEY,
                "chunksize": 5 * 1024 * 1024,
                "timeout": "2s",
            }),
        );
        let driver = settings.storage["storageDriver"].as_object_mut().unwrap();
        driver.extend(more.as_object().unwrap().clone());
        settings
    }
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.signal("-CONT");
        }
        self.kill();
    }
}

/// A 503 with the OCI error body, answered within the time-out and its slack of `since`.
#[track_caller]
fn assert_unavailable(response: &Response, since: Instant) {
    let took = since.elapsed();
    assert_eq!(response.status, 503, "{response}");
    assert_eq!(response.error_codes(), ["UNAVAILABLE"], "{response}");
    assert!(took < TIME_OUT + SLACK, "answered after {took:?}");
}

#[test]
fn pushes_and_pulls_during_an_outage_are_503s_and_work_again_when_s3_is_back() {
    let mut s3 = S3sFs::start();
    let berth = Berth::start_with(s3.settings());
    let client = berth.client();
    let image = Image::oci(21, &[1000, 70_000]);
    push_image(&client, "faults/app", "v1", &image);
    let layer = sha256(&image.layers[1]);
    s3.kill();
    // Past the revalidation interval, a pull must ask the bucket.
    std::thread::sleep(Duration::from_millis(1100));
    let started = Instant::now();
    let pulled = client.get(&format!("/v2/faults/app/blobs/{layer}"));
    assert_unavailable(&pulled, started);
    let started = Instant::now();
    let manifest = client.get("/v2/faults/app/manifests/v1");
    assert_unavailable(&manifest, started);

    let lost = random_bytes(22, 6 * 1024 * 1024 + 5);
    let lost_digest = sha256(&lost);
    let started = Instant::now();
    let monolithic = try_upload(
        &client,
        "faults/app",
        &lost,
        &lost_digest,
        Upload::Monolithic,
    )
    .expect("berth answers");
    assert_unavailable(&monolithic, started);
    let started = Instant::now();
    let chunked = try_upload(
        &client,
        "faults/app",
        &lost,
        &lost_digest,
        Upload::Chunked(1024 * 1024),
    )
    .expect("berth answers");
    assert_unavailable(&chunked, started);

    s3.restart();
    assert_image(&client, "faults/app", "v1", &image);
    client
        .head(&format!("/v2/faults/app/blobs/{lost_digest}"))
        .expect(404);
    upload(
        &client,
        "faults/app",
        &lost,
        &lost_digest,
        Upload::Chunked(4 * 1024 * 1024),
    );
    assert!(get_blob(&client, "faults/app", &lost_digest) == lost);
}

#[test]
fn a_push_cut_off_midway_leaves_nothing_and_a_new_push_succeeds() {
    let mut s3 = S3sFs::start();
    let berth = Berth::start_with(s3.settings());
    let client = berth.client();
    let bytes = random_bytes(23, 12 * 1024 * 1024 + 3);
    let digest = sha256(&bytes);
    let started = client
        .request("POST", "/v2/faults/cut/blobs/uploads/")
        .send()
        .expect(202);
    // More than one part: the first is in the bucket before the server goes.
    let first = &bytes[..6 * 1024 * 1024];
    let patched = client
        .request("PATCH", &started.location())
        .header("Content-Type", "application/octet-stream")
        .header("Content-Range", &format!("0-{}", first.len() - 1))
        .body(first)
        .send()
        .expect(202);
    s3.kill();
    let since = Instant::now();
    let rest = client
        .request(
            "PUT",
            &crate::util::http::with_query(&patched.location(), &format!("digest={digest}")),
        )
        .header("Content-Type", "application/octet-stream")
        .body(&bytes[first.len()..])
        .send();
    assert_unavailable(&rest, since);
    s3.restart();
    client
        .head(&format!("/v2/faults/cut/blobs/{digest}"))
        .expect(404);
    upload(&client, "faults/cut", &bytes, &digest, Upload::Monolithic);
    assert!(get_blob(&client, "faults/cut", &digest) == bytes);
}

#[test]
fn a_pull_cut_off_midway_ends_short_without_hanging() {
    let mut s3 = S3sFs::start();
    let berth = Berth::start_with(s3.settings());
    let client = berth.client();
    let bytes = random_bytes(24, 48 * 1024 * 1024);
    let digest = push_blob(&client, "faults/pull", &bytes);
    let mut stream = client.connect().unwrap();
    write!(
        stream,
        "GET /v2/faults/pull/blobs/{digest} HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut head = vec![0u8; 64 * 1024];
    let n = stream.read(&mut head).unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
    s3.kill();
    let since = Instant::now();
    let mut rest = Vec::new();
    // The connection ends: EOF or a reset, whichever the kernel reports.
    let _ = stream.read_to_end(&mut rest);
    assert!(
        n + rest.len() < bytes.len(),
        "the body is short: {} of {} bytes",
        n + rest.len(),
        bytes.len()
    );
    assert!(
        since.elapsed() < TIME_OUT + SLACK,
        "no hang: {:?}",
        since.elapsed()
    );
    s3.restart();
    assert!(get_blob(&client, "faults/pull", &digest) == bytes);
}

#[test]
fn a_stalled_server_is_a_503_after_the_time_out_and_serves_again_when_it_resumes() {
    let s3 = S3sFs::start();
    let berth = Berth::start_with(s3.settings());
    let client = berth.client();
    let bytes = random_bytes(25, 100_000);
    let digest = push_blob(&client, "faults/slow", &bytes);
    s3.signal("-STOP");
    let since = Instant::now();
    let pulled = client.get(&format!("/v2/faults/slow/blobs/{digest}"));
    assert_unavailable(&pulled, since);
    assert!(since.elapsed() >= TIME_OUT, "it waited for the time-out");
    s3.signal("-CONT");
    assert!(get_blob(&client, "faults/slow", &digest) == bytes);
}

#[test]
fn with_redirect_a_blob_get_is_a_307_to_a_presigned_url_that_serves_the_bytes() {
    let s3 = S3sFs::start();
    let berth = Berth::start_with(s3.settings_with(json!({"redirect": true})));
    let client = berth.client();
    let bytes = random_bytes(26, 300_000);
    let digest = push_blob(&client, "faults/redirect", &bytes);
    let target = format!("/v2/faults/redirect/blobs/{digest}");
    let redirected = client.get(&target).expect(307);
    // HEAD still answers from the object's metadata.
    let head = client.head(&target).expect(200);
    assert_eq!(head.content_length(), Some(bytes.len() as u64));
    let url = redirected.header("Location").unwrap().to_string();
    let rest = url
        .strip_prefix(&format!("http://127.0.0.1:{}", s3.port))
        .unwrap_or_else(|| panic!("the URL is the bucket's: {url}"));
    assert!(rest.contains("X-Amz-Expires=1200"), "{url}");
    let from_s3 = Client::new(format!("127.0.0.1:{}", s3.port).parse().unwrap())
        .request("GET", rest)
        .try_send()
        .unwrap();
    assert_eq!(from_s3.status, 200, "{from_s3}");
    assert!(from_s3.body == bytes, "the presigned URL serves the blob");
    // A signature that does not match is refused: s3s-fs checks it.
    let forged = rest.replace("X-Amz-Expires=1200", "X-Amz-Expires=1201");
    let refused = Client::new(format!("127.0.0.1:{}", s3.port).parse().unwrap())
        .request("GET", &forged)
        .try_send()
        .unwrap();
    assert_eq!(refused.status, 403, "{refused}");
}

#[test]
fn a_server_answering_5xx_is_retried_then_a_503() {
    let s3 = S3sFs::start();
    let berth = Berth::start_with(s3.settings());
    let client = berth.client();
    let bytes = random_bytes(27, 1000);
    push_blob(&client, "faults/fivexx", &bytes);
    // s3s-fs answers 500 to a HEAD or GET of a key that is one of its directories: a blob key
    // made a directory behind berth's back.
    let digest = sha256(b"not stored");
    let key = s3
        .dir
        .path()
        .join(BUCKET)
        .join("berth/faults/fivexx/blobs/sha256")
        .join(&digest["sha256:".len()..]);
    std::fs::create_dir_all(key.join("below")).unwrap();
    let since = Instant::now();
    let head = client.head(&format!("/v2/faults/fivexx/blobs/{digest}"));
    // Retried: the pauses between the attempts (20 + 80 + 320 ms) passed. A HEAD has no body.
    let took = since.elapsed();
    assert_eq!(head.status, 503, "{head}");
    assert!(took >= Duration::from_millis(420), "{took:?}");
    assert!(took < TIME_OUT + SLACK, "answered after {took:?}");
    let since = Instant::now();
    let get = client.get(&format!("/v2/faults/fivexx/blobs/{digest}"));
    assert_unavailable(&get, since);
}
