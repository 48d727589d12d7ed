//! berth on S3 (issue 13), against moto as `scripts/s3-services.sh` starts it: an image
//! pushed over HTTP to a store whose config names a bucket (zot's `storageDriver`) is pulled
//! back byte-identical, also from a second berth process on a fresh local root after the
//! first is gone (nothing a pull needs lives in the process or on its disk), and the bucket
//! holds the OCI layout under `rootdirectory`. Without the servers the test fails, naming the
//! script: it never passes by skipping.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::util::http::{Client, Response};
use crate::util::oci::*;
use crate::util::server::{Berth, Settings};

/// moto takes any signature but wants one there.
const ANY_SIGNATURE: &str = "AWS4-HMAC-SHA256 Credential=testing/20260101/eu-west-1/s3/aws4_request, SignedHeaders=host, Signature=00";

/// moto's endpoint, from the environment (`scripts/test.sh` exports it) or from the file
/// `scripts/s3-services.sh start` writes.
pub(super) fn moto() -> String {
    let var = "BERTH_S3_MOTO_ENDPOINT";
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".s3-services/env");
    std::env::var(var)
        .ok()
        .or_else(|| {
            std::fs::read_to_string(&file).ok()?.lines().find_map(|l| {
                l.strip_prefix("BERTH_S3_MOTO_ENDPOINT=")
                    .map(str::to_string)
            })
        })
        .unwrap_or_else(|| {
            panic!(
                "{var} is not set and {} does not name it: start the S3 test servers with \
                 `scripts/s3-services.sh start` (scripts/test.sh starts and stops them)",
                file.display()
            )
        })
}

/// A plain request to moto (the registry test client checks for a registry's headers).
pub(super) fn to_moto(endpoint: &str, method: &str, target: &str, body: &[u8]) -> Response {
    let addr: SocketAddr = endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("moto's endpoint is http://127.0.0.1:PORT");
    Client::new(addr)
        .request(method, target)
        .header("Authorization", ANY_SIGNATURE)
        .body(body.to_vec())
        .try_send()
        .expect("moto answers")
}

/// A new bucket on moto, outside `us-east-1` (moto refuses that location constraint).
pub(super) fn new_bucket(endpoint: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let bucket = format!("berth-it-{}-{nanos}", std::process::id());
    let created = to_moto(
        endpoint,
        "PUT",
        &format!("/{bucket}"),
        b"<CreateBucketConfiguration><LocationConstraint>eu-west-1</LocationConstraint></CreateBucketConfiguration>",
    );
    assert_eq!(created.status, 200, "create bucket: {created:?}");
    bucket
}

pub(super) fn on_s3(endpoint: &str, bucket: &str) -> Settings {
    let mut settings = Settings::default();
    settings.storage.insert(
        "storageDriver".into(),
        json!({
            "name": "s3",
            "region": "eu-west-1",
            "bucket": bucket,
            "regionendpoint": endpoint,
            "rootdirectory": "/berth",
            "accesskey": "testing",
            "secretkey": "testing",
            "chunksize": 5 * 1024 * 1024
        }),
    );
    settings
}

#[test]
fn an_image_pushed_to_s3_is_pulled_back_by_another_process() {
    let endpoint = moto();
    let bucket = new_bucket(&endpoint);
    // The last layer is more than one part of `chunksize`: a multipart upload.
    let image = Image::oci(13, &[10, 70_000, 6 * 1024 * 1024 + 17]);
    {
        let berth = Berth::start_with(on_s3(&endpoint, &bucket));
        push_image(&berth.client(), "s3/app", "v1", &image);
        assert_image(&berth.client(), "s3/app", "v1", &image);
    }
    let berth = Berth::start_with(on_s3(&endpoint, &bucket));
    assert_image(&berth.client(), "s3/app", "v1", &image);
    for layer in &image.layers {
        assert!(get_blob(&berth.client(), "s3/app", &sha256(layer)) == *layer);
    }
    // The bucket holds the layout under `rootdirectory`.
    let big = &image.layers[2];
    let hex = sha256(big)["sha256:".len()..].to_string();
    let object = to_moto(
        &endpoint,
        "GET",
        &format!("/{bucket}/berth/s3/app/blobs/sha256/{hex}"),
        b"",
    );
    assert_eq!(object.status, 200);
    assert!(
        object.body == *big,
        "the blob is the object under rootdirectory"
    );
    let index = to_moto(
        &endpoint,
        "GET",
        &format!("/{bucket}/berth/s3/app/index.json"),
        b"",
    );
    assert_eq!(index.status, 200);
    assert!(String::from_utf8_lossy(&index.body).contains(&image.digest()));
}
