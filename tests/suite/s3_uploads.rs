//! Upload sessions kept in the bucket (issue 13), berth on moto: a chunked upload cut by
//! `kill -9` between two PATCHes, and again in the middle of one, continues after a restart
//! from the offset the registry reports, without reading the bytes it had again (the session
//! state is the upload's note in the bucket), and finishes with the right digest, its one
//! multipart upload completed (the parts the killed PATCH sent are sent again under their
//! numbers); no blob is visible before the upload finishes, and nothing of the session stays
//! behind after. A session the client never resumes is ended by the store's sweep
//! (`gcDelay`), its multipart upload aborted.

use std::io::Write;
use std::time::Duration;

use crate::util::oci::*;
use crate::util::s3::Bucket;
use crate::util::server::{Berth, Settings, wait_until};

const MIB: usize = 1024 * 1024;

#[test]
fn a_chunked_upload_on_s3_cut_by_kill_9_continues_without_rereading() {
    let bucket = Bucket::new();
    let settings = || bucket.settings("/berth", Settings::default());
    let blob: Vec<u8> = (0..(13 * MIB + 17) as u32)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let digest = sha256(&blob);
    // More than one part of `chunksize` (5 MiB): the first PATCH ends in a multipart upload.
    let (first, rest) = blob.split_at(6 * MIB + 5);
    let blobs = "berth/resume/s3/blobs/";

    let mut berth = Berth::start_with(settings());
    let client = berth.client();
    let location = start_upload(&client, "resume/s3");
    let location = patch(&client, &location, 0, first);
    berth.kill9();
    drop(berth);

    // Between PATCHes: the restarted registry knows the offset from the bucket alone.
    let mut berth = Berth::start_with(settings());
    let client = berth.client();
    assert_upload_size(&client, &location, first.len());
    berth.assert_resumed_without_rereading(first.len());

    // In the middle of a PATCH: a part of it is on its way to S3 when the process dies.
    let parts_before = bucket.open_parts();
    let mut stream = client.connect().unwrap();
    let head = format!(
        "PATCH {location} HTTP/1.1\r\nHost: berth\r\nContent-Type: application/octet-stream\r\n\
         Content-Range: {}-{}\r\nContent-Length: {}\r\n\r\n",
        first.len(),
        blob.len() - 1,
        rest.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&rest[..rest.len() - MIB]).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || bucket.open_parts()
            > parts_before),
        "the PATCH never sent a part"
    );
    berth.kill9();
    drop(berth);
    assert!(
        bucket.keys(blobs).is_empty(),
        "no blob before the upload finished"
    );

    let mut berth = Berth::start_with(settings());
    let client = berth.client();
    // A PATCH cut short stored none of its bytes.
    assert_upload_size(&client, &location, first.len());
    let location = patch(&client, &location, first.len(), rest);
    finish_upload(&client, &location, &digest);
    assert!(get_blob(&client, "resume/s3", &digest) == blob);
    assert_eq!(
        bucket.keys(blobs),
        [format!("{blobs}sha256/{}", &digest["sha256:".len()..])]
    );
    let left = bucket.keys("berth/resume/s3/.uploads/");
    assert!(left.is_empty(), "the session left {left:?}");
    assert_eq!(
        bucket.open_uploads(),
        0,
        "its one multipart upload completed"
    );

    // A session cut by a kill and never resumed: the store's sweep ends it once it was
    // untouched for gcDelay (here a sweep every second), aborting its multipart upload.
    let location = start_upload(&client, "resume/s3");
    patch(&client, &location, 0, first);
    assert_eq!(bucket.open_uploads(), 1);
    berth.kill9();
    drop(berth);
    let mut swept = Settings::default();
    swept.storage.extend([
        ("gc".to_string(), true.into()),
        ("gcDelay".to_string(), "1s".into()),
        ("gcInterval".to_string(), "1s".into()),
    ]);
    let _berth = Berth::start_with(bucket.settings("/berth", swept));
    assert!(
        wait_until(Duration::from_secs(20), || bucket.open_uploads() == 0
            && bucket.keys("berth/resume/s3/.uploads/").is_empty()),
        "the sweep left {} multipart uploads open, and {:?}",
        bucket.open_uploads(),
        bucket.keys("berth/resume/s3/.uploads/")
    );
}
