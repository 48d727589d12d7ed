//! The S3 driver against the real test servers `scripts/s3-services.sh` starts: the
//! conformance suite and the multipart writer on moto, signing on s3s-fs (which checks
//! SigV4). Without the servers these tests fail, naming the script: they never pass by
//! skipping.
//!
//! s3s-fs 0.14.1 does not run the conformance suite: its `If-Match` is checked and written in
//! two steps, so read-modify-replace counters lose increments under concurrency (149 of 201
//! kept in one run), and a HEAD of a key that is one of its directories answers 500. It runs
//! the smoke test and the multipart writer, which is what it is here for: every request
//! signed and checked.

use super::*;
use std::collections::HashMap;
use std::io::Read;

/// Region of the test buckets: moto refuses a location constraint of `us-east-1`.
const REGION: &str = "eu-west-1";

struct Service {
    endpoint: String,
    access_key: String,
    secret_key: String,
}

/// The endpoint and keys of a test server (`MOTO` or `S3S`), from the environment
/// (`scripts/test.sh` exports them) or from `.s3-services/env`, which the script writes.
fn service(name: &str) -> Service {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".s3-services/env");
    let saved: HashMap<String, String> = std::fs::read_to_string(&file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let get = |key: String| {
        std::env::var(&key)
            .ok()
            .or_else(|| saved.get(&key).cloned())
    };
    let var = format!("BERTH_S3_{name}_ENDPOINT");
    let endpoint = get(var.clone()).unwrap_or_else(|| {
        panic!(
            "{var} is not set and {} does not name it: start the S3 test servers with \
             `scripts/s3-services.sh start` (scripts/test.sh starts and stops them)",
            file.display()
        )
    });
    Service {
        endpoint,
        access_key: get(format!("BERTH_S3_{name}_ACCESS_KEY")).unwrap_or("testing".into()),
        secret_key: get(format!("BERTH_S3_{name}_SECRET_KEY")).unwrap_or("testing".into()),
    }
}

fn config(service: &Service, bucket: &str, root: &str) -> S3Config {
    S3Config {
        endpoint: service.endpoint.clone(),
        region: REGION.to_string(),
        bucket: bucket.to_string(),
        access_key: service.access_key.clone(),
        secret_key: service.secret_key.clone(),
        session_token: None,
        root: root.to_string(),
        chunk_size: MIN_PART,
        multipart_copy: MultipartCopy::default(),
        redirect: false,
        time_out: S3Config::DEFAULT_TIME_OUT,
        revalidate: S3Config::DEFAULT_REVALIDATE,
    }
}

/// A driver on a new, empty bucket of `service`, with its keys under `root`.
fn fresh(service: &Service, root: &str) -> (S3Driver, String) {
    let bucket = format!("berth-{}", uuid::Uuid::new_v4().simple());
    let driver = S3Driver::new(config(service, &bucket, root)).unwrap();
    driver.create_bucket(REGION).unwrap();
    (driver, bucket)
}

/// The configuration of a new, empty bucket on moto, for suites above the driver (each
/// driver made from it is another client of the bucket, as another instance would be).
pub(crate) fn fresh_on_moto() -> S3Config {
    let moto = service("MOTO");
    let (_, bucket) = fresh(&moto, "root");
    config(&moto, &bucket, "root")
}

fn path(s: &str) -> StoragePath {
    StoragePath::from_components(s.split('/')).unwrap()
}

/// Bytes that differ at every position of a part, so a part out of place shows.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ (i >> 16) as u8 ^ seed)
        .collect()
}

fn read_from(d: &S3Driver, p: &StoragePath, offset: u64) -> (Vec<u8>, u64) {
    let mut r = d.reader(p, offset).unwrap();
    let mut out = Vec::new();
    r.reader.read_to_end(&mut out).unwrap();
    (out, r.size)
}

#[test]
fn s3_driver_conformance_on_moto() {
    let (driver, _) = fresh(&service("MOTO"), "");
    crate::storage::driver::conformance::run(&driver);
}

#[test]
fn s3_driver_conformance_on_moto_under_a_root_directory() {
    let (driver, _) = fresh(&service("MOTO"), "/some/root/");
    crate::storage::driver::conformance::run(&driver);
}

/// Uploads past one part: parts of `chunksize`, a flush that makes the object whole, a
/// writer in another driver (another process) that continues it by copying the stored
/// object as a part, a writer dropped unflushed that leaves the stored object as it was, and
/// a writer whose object was deleted that stores nothing.
fn multipart_writer(service: &Service) {
    let (a, bucket) = fresh(service, "root");
    let p = path("repo/.uploads/big");
    let first = pattern(2 * MIN_PART + 12_345, 1);
    let mut w = a.writer(&p).unwrap();
    for piece in first.chunks(1 << 20) {
        w.write(piece.to_vec()).unwrap();
    }
    w.flush().unwrap();
    assert_eq!(w.size(), first.len() as u64);
    drop(w);
    assert_eq!(a.stat(&p).unwrap().unwrap().size, first.len() as u64);
    assert!(
        a.get(&p).unwrap() == first,
        "flushed bytes are stored whole"
    );

    // Another instance on the same bucket continues it.
    let b = S3Driver::new(config(service, &bucket, "root")).unwrap();
    let mut w = b.writer(&p).unwrap();
    assert_eq!(w.size(), first.len() as u64);
    let second = pattern(MIN_PART + 777, 2);
    for piece in second.chunks(1 << 20) {
        w.write(piece.to_vec()).unwrap();
    }
    w.commit().unwrap();
    let mut whole = first.clone();
    whole.extend_from_slice(&second);
    assert!(
        a.get(&p).unwrap() == whole,
        "continued after the stored bytes"
    );
    let offset = (MIN_PART + 3) as u64;
    let (tail, size) = read_from(&a, &p, offset);
    assert_eq!(size, whole.len() as u64);
    assert!(
        tail == whole[offset as usize..],
        "ranged read past a part boundary"
    );

    // Dropped unflushed with a part uploaded: the stored object stays as it was.
    let before = a.stat(&p).unwrap().unwrap();
    let mut w = a.writer(&p).unwrap();
    w.write(pattern(MIN_PART + 1, 3)).unwrap();
    drop(w);
    let after = a.stat(&p).unwrap().unwrap();
    assert_eq!((after.size, after.version), (before.size, before.version));

    // Deleted under an open writer with parts in flight: commit stores nothing.
    let mut w = a.writer(&p).unwrap();
    w.write(pattern(MIN_PART + 1, 4)).unwrap();
    a.delete(&p).unwrap();
    w.write(vec![5; 10]).unwrap();
    w.commit().unwrap();
    assert!(
        a.stat(&p).unwrap().is_none(),
        "a deleted upload stays deleted"
    );

    // Cancelled with parts uploaded: nothing left.
    let mut w = a.writer(&p).unwrap();
    w.write(pattern(MIN_PART + 1, 6)).unwrap();
    w.cancel().unwrap();
    assert!(a.stat(&p).unwrap().is_none());
}

#[test]
fn s3_writer_uploads_parts_and_continues_on_moto() {
    multipart_writer(&service("MOTO"));
}

/// s3s-fs checks every request's SigV4 signature: the driver's requests pass, with the
/// right secret only.
#[test]
fn s3_requests_are_signed_as_s3s_fs_checks() {
    let s3s = service("S3S");
    let (d, bucket) = fresh(&s3s, "signed");
    let p = path("repo/blobs/sha256/abc");
    d.put(&p, b"0123456789").unwrap();
    assert_eq!(d.get(&p).unwrap(), b"0123456789");
    assert_eq!(read_from(&d, &p, 7), (b"789".to_vec(), 10));
    assert_eq!(d.stat(&p).unwrap().unwrap().size, 10);
    d.copy(&p, &path("other/blobs/sha256/abc")).unwrap();
    let mut names: Vec<String> = d.list(None).unwrap().into_iter().map(|e| e.name).collect();
    names.sort();
    assert_eq!(names, ["other", "repo"]);
    // An object's own key: s3s-fs keeps keys as files, and a HEAD of a key that is one of
    // its directories answers 500, so a prefix delete (which HEADs the key first) is shown
    // on moto only.
    d.delete(&path("other/blobs/sha256/abc")).unwrap();
    assert!(d.stat(&path("other/blobs/sha256/abc")).unwrap().is_none());

    let wrong = Service {
        secret_key: "not-the-secret".into(),
        ..service("S3S")
    };
    let forged = S3Driver::new(config(&wrong, &bucket, "signed")).unwrap();
    let refused = forged.get(&p);
    assert!(
        matches!(refused, Err(DriverError::Io { .. })),
        "a wrong secret is refused: {refused:?}"
    );
}

#[test]
fn s3_writer_uploads_parts_and_continues_on_s3s_fs() {
    multipart_writer(&service("S3S"));
}

/// A TCP relay to `upstream` on a free 127.0.0.1 port that, once `cut_after` is armed with a
/// byte count, closes the connection carrying the answer after that many more bytes, as a
/// network fault would mid-body.
struct Cutter {
    endpoint: String,
    cut_after: Arc<std::sync::atomic::AtomicI64>,
}

impl Cutter {
    fn start(upstream: &str) -> Cutter {
        use std::net::{Shutdown, TcpListener, TcpStream};
        use std::sync::atomic::{AtomicI64, Ordering};
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let cut_after = Arc::new(AtomicI64::new(-1));
        let armed = Arc::clone(&cut_after);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let server = TcpStream::connect(&upstream).unwrap();
                let (mut to_server, mut from_client) =
                    (server.try_clone().unwrap(), client.try_clone().unwrap());
                std::thread::spawn(move || std::io::copy(&mut from_client, &mut to_server));
                let (mut from_server, mut to_client) = (server, client);
                let armed = Arc::clone(&armed);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n @ 1..) = from_server.read(&mut buf) {
                        let left = armed.load(Ordering::SeqCst);
                        let n = match left {
                            0.. if (n as i64) >= left => {
                                armed.store(-1, Ordering::SeqCst);
                                let _ = std::io::Write::write_all(
                                    &mut to_client,
                                    &buf[..left as usize],
                                );
                                break;
                            }
                            0.. => {
                                armed.fetch_sub(n as i64, Ordering::SeqCst);
                                n
                            }
                            _ => n,
                        };
                        if std::io::Write::write_all(&mut to_client, &buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to_client.shutdown(Shutdown::Both);
                    let _ = from_server.shutdown(Shutdown::Both);
                });
            }
        });
        Cutter {
            endpoint,
            cut_after,
        }
    }
}

/// A body whose connection is cut midway is resumed from where it was, whole or ranged, and
/// the bytes read are the object's.
#[test]
fn a_body_cut_midway_resumes_with_a_ranged_get() {
    let moto = service("MOTO");
    let (direct, bucket) = fresh(&moto, "root");
    let p = path("blobs/big");
    let bytes = pattern(3 * 1024 * 1024 + 11, 7);
    direct.put(&p, &bytes).unwrap();
    let cutter = Cutter::start(&moto.endpoint);
    let relayed = S3Driver::new(S3Config {
        endpoint: cutter.endpoint.clone(),
        ..config(&moto, &bucket, "root")
    })
    .unwrap();
    cutter
        .cut_after
        .store(1024 * 1024, std::sync::atomic::Ordering::SeqCst);
    let (read, size) = read_from(&relayed, &p, 0);
    assert_eq!(size, bytes.len() as u64);
    assert!(read == bytes, "the whole object, resumed after the cut");
    assert_eq!(
        cutter.cut_after.load(std::sync::atomic::Ordering::SeqCst),
        -1,
        "the connection was cut"
    );
    cutter
        .cut_after
        .store(100_000, std::sync::atomic::Ordering::SeqCst);
    let mut ranged = Vec::new();
    relayed
        .reader_range(&p, 10, 2 * 1024 * 1024)
        .unwrap()
        .reader
        .read_to_end(&mut ranged)
        .unwrap();
    assert!(
        ranged == bytes[10..10 + 2 * 1024 * 1024],
        "the range, resumed"
    );
}
