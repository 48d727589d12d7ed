//! `kill -9` in the middle of concurrent pushes, then a restart on the same root (issue 2,
//! point 4): every blob and tag that was acknowledged is there and verifies, no partial blob
//! is visible under any `blobs/`, and every `index.json` parses. Run with `commit` off (a
//! process crash keeps the page cache) and on (the fsync path must not break anything). And
//! a chunked upload cut by `kill -9` continues after the restart without re-reading (issue 12),
//! on a local root and on S3 (issue 13), where the session's state is in the bucket.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::http::Client;
use crate::util::layout;
use crate::util::oci::*;
use crate::util::server::{Berth, Settings, temp_dir};
use crate::util::store::{Backend, Store};

const PUSHERS: usize = 4;
/// Bounds each pusher even if the server never dies.
const MAX_PUSHES: usize = 400;
/// The kill comes once this many manifests were acknowledged (or after KILL_AFTER).
const ACKED_BEFORE_KILL: usize = 12;
const KILL_AFTER: Duration = Duration::from_secs(8);

/// What the server acknowledged with a 201.
#[derive(Default)]
struct Acked {
    blobs: Vec<(String, String, Vec<u8>)>,
    tags: Vec<(String, String, Image)>,
}

/// Pushes images until the server goes away, recording each acknowledgement as it arrives.
/// Blobs go up in every upload style and with sizes that make some uploads take a while, so
/// the kill lands in the middle of all kinds of work.
fn pusher(
    client: Client,
    id: usize,
    acked: Arc<Mutex<Acked>>,
    acked_tags: Arc<AtomicUsize>,
    dead: Arc<AtomicBool>,
) {
    // Two pushers share each repository, so index.json updates race too.
    let repo = format!("crash/r{}", id % 2);
    for n in 0..MAX_PUSHES {
        if dead.load(Ordering::Relaxed) {
            return;
        }
        let size = 1000 + (n * 7919 + id * 104_729) % 400_000;
        let image = Image::oci((id * 10_000 + n) as u64 + 1, &[size, 3000]);
        for (k, blob) in image.blobs().into_iter().enumerate() {
            let style = match (n + k) % 4 {
                0 => Upload::Monolithic,
                1 => Upload::SessionPut,
                2 => Upload::Chunked(64 * 1024),
                _ => Upload::Streamed(32 * 1024),
            };
            let digest = sha256(blob);
            match try_upload(&client, &repo, blob, &digest, style) {
                Ok(r) if r.status == 201 => {
                    acked
                        .lock()
                        .unwrap()
                        .blobs
                        .push((repo.clone(), digest, blob.to_vec()))
                }
                Ok(r) => panic!("pusher {id}: upload refused before the kill: {r}"),
                Err(_) => return,
            }
        }
        let tag = format!("p{id}-{n}");
        match try_put_manifest(&client, &repo, &tag, OCI_MANIFEST, &image.manifest) {
            Ok(r) if r.status == 201 => {
                acked.lock().unwrap().tags.push((repo.clone(), tag, image));
                acked_tags.fetch_add(1, Ordering::Relaxed);
            }
            Ok(r) => panic!("pusher {id}: manifest refused before the kill: {r}"),
            Err(_) => return,
        }
    }
}

fn crash_and_recover(commit: bool) {
    let dir = temp_dir();
    let root = dir.path().join("root");
    let settings = Settings {
        commit,
        ..Settings::default()
    };
    let mut berth = Berth::start_on(&root, settings.clone());
    let client = berth.client();
    let acked = Arc::new(Mutex::new(Acked::default()));
    let acked_tags = Arc::new(AtomicUsize::new(0));
    let dead = Arc::new(AtomicBool::new(false));
    let pushers: Vec<_> = (0..PUSHERS)
        .map(|id| {
            let (acked, acked_tags, dead) = (
                Arc::clone(&acked),
                Arc::clone(&acked_tags),
                Arc::clone(&dead),
            );
            thread::spawn(move || pusher(client, id, acked, acked_tags, dead))
        })
        .collect();

    let started = Instant::now();
    while acked_tags.load(Ordering::Relaxed) < ACKED_BEFORE_KILL && started.elapsed() < KILL_AFTER {
        thread::sleep(Duration::from_millis(20));
    }
    assert!(
        berth.is_running(),
        "berth died on its own:\n{}",
        berth.logs()
    );
    berth.kill9();
    dead.store(true, Ordering::Relaxed);
    for handle in pushers {
        if let Err(panic) = handle.join() {
            std::panic::resume_unwind(panic);
        }
    }
    drop(berth);

    let acked = acked.lock().unwrap();
    assert!(
        acked.tags.len() >= ACKED_BEFORE_KILL.min(4),
        "too few pushes before the kill to test anything ({})",
        acked.tags.len()
    );

    // Before restarting: what is on disk is already sound (berth must not need to repair it
    // to be correct; a layout other tools read must never show a partial blob).
    layout::assert_sound(&root);

    let berth = Berth::start_on(&root, settings);
    let c = berth.client();
    for (repo, digest, bytes) in &acked.blobs {
        assert_eq!(
            &get_blob(&c, repo, digest),
            bytes,
            "acknowledged blob {repo}@{digest}"
        );
    }
    for (repo, tag, image) in &acked.tags {
        assert_image(&c, repo, tag, image);
    }
    let audit = layout::assert_sound(&root);
    assert!(
        audit.index_files >= 2,
        "both repositories have an index.json"
    );
    // The restarted server takes new pushes into the same repositories.
    let after = Image::oci(999_999, &[1234]);
    push_image(&c, "crash/r0", "after-restart", &after);
    assert_image(&c, "crash/r0", "after-restart", &after);
    eprintln!(
        "commit={commit}: {} blobs and {} tags acknowledged before kill -9, all intact",
        acked.blobs.len(),
        acked.tags.len()
    );
}

#[test]
fn kill_9_during_concurrent_pushes_loses_nothing_acknowledged() {
    crash_and_recover(false);
}

#[test]
fn kill_9_during_concurrent_pushes_with_commit_loses_nothing_acknowledged() {
    crash_and_recover(true);
}

/// Issue 12: a chunked upload interrupted by `kill -9` between two PATCHes continues after a
/// restart from the offset the registry reports and finishes with the right digest; the
/// restarted registry reads none of the bytes it already had again (its log says so).
#[test]
fn a_chunked_upload_cut_by_kill_9_continues_without_rereading() {
    cut_by_kill_9_continues_without_rereading(Backend::Local);
}

#[test]
fn a_chunked_upload_to_s3_cut_by_kill_9_continues_after_the_restart() {
    cut_by_kill_9_continues_without_rereading(Backend::S3);
}

fn cut_by_kill_9_continues_without_rereading(backend: Backend) {
    let store = Store::new(backend);
    let mut berth = store.start(Settings::default());
    let client = berth.client();
    let blob: Vec<u8> = (0..3_000_017u32).map(|i| (i * 31 % 251) as u8).collect();
    let digest = sha256(&blob);
    let (first, rest) = blob.split_at(2 * 1024 * 1024 + 5);
    let location = start_upload(&client, "resume/r");
    let location = patch(&client, &location, 0, first);
    berth.kill9();
    drop(berth);

    let berth = store.start(Settings::default());
    let client = berth.client();
    assert_upload_size(&client, &location, first.len());
    let location = patch(&client, &location, first.len(), rest);
    finish_upload(&client, &location, &digest);
    assert_eq!(get_blob(&client, "resume/r", &digest), blob);
    berth.assert_resumed_without_rereading(first.len());
}
