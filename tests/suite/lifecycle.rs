//! Stopping berth (issue 15, "Lifecycle"): SIGTERM during 8 concurrent 64 MiB chunked uploads
//! refuses new connections at once, lets the requests in flight finish, and exits 0 within
//! `http.shutdownTimeout`; every upload that finished is intact after a restart, and every
//! other one resumes where its last acknowledged chunk left it.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use crate::util::http::read_response;
use crate::util::oci::*;
use crate::util::server::{Berth, Launch, Settings, temp_dir, wait_until};

const UPLOADS: usize = 8;
const CHUNK: usize = 16 * 1024 * 1024;
const CHUNKS: usize = 4;

fn blob(seed: usize) -> Vec<u8> {
    (0..CHUNK * CHUNKS)
        .map(|i| (i.wrapping_mul(31).wrapping_add(seed * 7) % 251) as u8)
        .collect()
}

/// Sends a PATCH of `chunk` at `start` on a connection of its own, pausing halfway through the
/// body from `ready` until `resume` (the stop comes between), then sends the rest; the status.
fn patch_across_the_stop(
    addr: SocketAddr,
    location: &str,
    start: usize,
    chunk: &[u8],
    ready: &Barrier,
    resume: &Barrier,
) -> u16 {
    let mut stream = TcpStream::connect(addr).unwrap();
    let head = format!(
        "PATCH {location} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
         Content-Type: application/octet-stream\r\nContent-Range: {start}-{}\r\n\
         Content-Length: {}\r\n\r\n",
        start + chunk.len() - 1,
        chunk.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    let (first, rest) = chunk.split_at(chunk.len() / 2);
    stream.write_all(first).unwrap();
    ready.wait();
    // The stop has begun: the rest of the body still arrives and is stored.
    resume.wait();
    let sent = stream.write_all(rest);
    let response = read_response(&mut stream, false).unwrap();
    assert!(
        sent.is_ok(),
        "{sent:?}: answered early: {} {}",
        response.status,
        String::from_utf8_lossy(&response.body)
    );
    response.status
}

#[test]
fn sigterm_lets_uploads_in_flight_finish_and_the_rest_resume_after_a_restart() {
    let launch = Launch {
        http: serde_json::from_value(serde_json::json!({ "shutdownTimeout": "20s" })).unwrap(),
        ..Launch::default()
    };
    // The bodies held halfway must not stall past the read timeout.
    let settings = Settings {
        read_timeout: "30s",
        ..Settings::default()
    };
    let root = temp_dir();
    let mut berth = Berth::start_on_launch(root.path(), settings.clone(), launch.clone());
    let (client, addr) = (berth.client(), berth.addr());
    let blobs: Vec<Vec<u8>> = (0..UPLOADS).map(blob).collect();
    // Half the uploads finish before the stop; the other half are halfway through their
    // second chunk when it comes.
    let finished = Barrier::new(UPLOADS);
    let (ready, resume) = (Barrier::new(UPLOADS / 2 + 1), Barrier::new(UPLOADS / 2 + 1));
    let (sessions, refused) = thread::scope(|s| {
        let uploads: Vec<_> = blobs
            .iter()
            .enumerate()
            .map(|(i, blob)| {
                let (client, finished, ready, resume) = (&client, &finished, &ready, &resume);
                s.spawn(move || {
                    let chunk = |c: usize| &blob[c * CHUNK..(c + 1) * CHUNK];
                    let location = start_upload(client, &format!("stop/r{i}"));
                    let location = patch(client, &location, 0, chunk(0));
                    if i % 2 == 0 {
                        let mut location = location;
                        for c in 1..CHUNKS {
                            location = patch(client, &location, c * CHUNK, chunk(c));
                        }
                        finish_upload(client, &location, &sha256(blob));
                        finished.wait();
                        return (CHUNKS, location);
                    }
                    // Halfway through the next chunk only once the others finished, so the
                    // body does not stall for long.
                    finished.wait();
                    let status =
                        patch_across_the_stop(addr, &location, CHUNK, chunk(1), ready, resume);
                    assert_eq!(status, 202, "the PATCH in flight at the stop finishes");
                    (2, location)
                })
            })
            .collect();
        ready.wait();
        let stopping = Instant::now();
        let (status, refused) = thread::scope(|during| {
            // While the stop waits for them: new connections are refused, then the uploads
            // in flight send the rest of their bodies.
            let refused = during.spawn(|| {
                let refused =
                    wait_until(Duration::from_secs(5), || TcpStream::connect(addr).is_err());
                resume.wait();
                refused
            });
            let status = berth.stop(libc::SIGTERM, Duration::from_secs(25));
            (status, refused.join().unwrap())
        });
        let status = status.expect("berth exits within the shutdown timeout");
        assert!(status.success(), "exit status {status:?}");
        assert!(
            stopping.elapsed() < Duration::from_secs(20),
            "{:?}",
            stopping.elapsed()
        );
        let sessions: Vec<(usize, String)> =
            uploads.into_iter().map(|u| u.join().unwrap()).collect();
        (sessions, refused)
    });
    assert!(refused, "new connections are refused once the stop begins");
    let log = berth.logs();
    assert!(log.contains("stopping: no new connections"), "{log}");
    assert!(
        log.contains("stopped: every request in flight finished"),
        "{log}"
    );
    drop(berth);
    // The uploads that had not finished go on after the restart from their last chunk.
    let berth = Berth::start_on_launch(root.path(), settings, launch);
    let client = berth.client();
    for (i, (chunks_stored, location)) in sessions.into_iter().enumerate() {
        let repo = format!("stop/r{i}");
        let blob = &blobs[i];
        if chunks_stored < CHUNKS {
            assert_upload_size(&client, &location, chunks_stored * CHUNK);
            let mut location = location;
            for c in chunks_stored..CHUNKS {
                let chunk = &blob[c * CHUNK..(c + 1) * CHUNK];
                location = patch(&client, &location, c * CHUNK, chunk);
            }
            finish_upload(&client, &location, &sha256(blob));
        }
        assert!(
            get_blob(&client, &repo, &sha256(blob)) == *blob,
            "upload {i}"
        );
    }
}
