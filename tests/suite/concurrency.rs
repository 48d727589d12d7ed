//! Many clients pushing the same thing at the same moment (issue 2, "Concurrency"): the same
//! blob by 16 clients in every upload style, the same tag by 16 clients, and many tags of one
//! repository at once (a lost `index.json` update would drop tags). Every push must succeed
//! and the store must be consistent afterwards.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use crate::util::layout::{self, read_index, tags_of};
use crate::util::oci::*;
use crate::util::server::Berth;

const CLIENTS: usize = 16;

/// Runs `work(i)` on CLIENTS threads released together, and returns their results in order.
fn all_at_once<T: Send + 'static>(work: impl Fn(usize) -> T + Send + Sync + 'static) -> Vec<T> {
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let work = Arc::new(work);
    let handles: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let barrier = Arc::clone(&barrier);
            let work = Arc::clone(&work);
            thread::spawn(move || {
                barrier.wait();
                work(i)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("client thread panicked"))
        .collect()
}

#[test]
fn the_same_blob_pushed_by_16_clients_at_once() {
    let berth = Berth::start();
    let c = berth.client();
    let baseline = Baseline::push(&c, "base/repo");
    let blob = Arc::new(random_bytes(300, 1 << 20));
    let digest = sha256(&blob);
    let (bytes, expected) = (Arc::clone(&blob), digest.clone());
    let statuses = all_at_once(move |i| {
        let style = match i % 4 {
            0 => Upload::Monolithic,
            1 => Upload::SessionPut,
            2 => Upload::Chunked(256 * 1024),
            _ => Upload::Streamed(64 * 1024),
        };
        let done = try_upload(&c, "same/blob", &bytes, &expected, style).expect("transport");
        (
            i,
            style,
            done.status,
            done.header("Docker-Content-Digest").map(str::to_string),
        )
    });
    for (i, style, status, echoed) in statuses {
        assert_eq!(status, 201, "client {i} ({style:?})");
        assert_eq!(echoed.as_deref(), Some(digest.as_str()), "client {i}");
    }
    assert_eq!(get_blob(&c, "same/blob", &digest), *blob);
    let audit = layout::assert_sound(berth.root());
    // The baseline's four blobs plus this one, stored once.
    assert_eq!(audit.blob_files, 5);
    baseline.assert_intact(&c);
}

#[test]
fn the_same_tag_pushed_by_16_clients_at_once() {
    let berth = Berth::start();
    let c = berth.client();
    let baseline = Baseline::push(&c, "base/repo");
    let images: Arc<Vec<Image>> = Arc::new(
        (0..CLIENTS)
            .map(|i| Image::oci(400 + i as u64, &[5000]))
            .collect(),
    );
    let shared = Arc::clone(&images);
    let statuses = all_at_once(move |i| {
        let image = &shared[i];
        for blob in image.blobs() {
            push_blob(&c, "same/tag", blob);
        }
        try_put_manifest(&c, "same/tag", "race", OCI_MANIFEST, &image.manifest)
            .expect("transport")
            .status
    });
    assert!(statuses.iter().all(|&s| s == 201), "{statuses:?}");

    let digests: BTreeSet<String> = images.iter().map(Image::digest).collect();
    let winner = c.get_manifest("same/tag", "race", OCI_MANIFEST).expect(200);
    let winner = winner.header("Docker-Content-Digest").unwrap().to_string();
    assert!(
        digests.contains(&winner),
        "tag points at a manifest nobody pushed"
    );
    let tags = tags_of(&read_index(&berth.root().join("same/tag")));
    assert_eq!(
        tags,
        vec![("race".to_string(), winner)],
        "exactly one descriptor holds the tag"
    );
    // Every manifest stays pullable by digest, the losers too.
    for image in images.iter() {
        assert_image(&c, "same/tag", &image.digest(), image);
    }
    layout::assert_sound(berth.root());
    baseline.assert_intact(&c);
}

#[test]
fn many_tags_of_one_repository_at_once_are_all_kept() {
    let berth = Berth::start();
    let c = berth.client();
    let image = Image::oci(500, &[100]);
    push_image(&c, "many/tags", "seed", &image);
    let manifest = Arc::new(image.manifest.clone());
    const PER_CLIENT: usize = 6;
    // Meanwhile a reader parses index.json over and over, as another tool reading the layout
    // would: replaced by rename, it is always a whole document, never a half-written one.
    let done = Arc::new(AtomicBool::new(false));
    let index_path = berth.root().join("many/tags/index.json");
    let reader = {
        let done = Arc::clone(&done);
        thread::spawn(move || {
            let mut reads = 0;
            while !done.load(Ordering::Relaxed) && reads < 100_000 {
                let bytes = std::fs::read(&index_path).expect("index.json is always there");
                if let Err(e) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                    panic!("torn index.json ({e}): {}", String::from_utf8_lossy(&bytes));
                }
                reads += 1;
            }
            reads
        })
    };
    all_at_once(move |i| {
        for j in 0..PER_CLIENT {
            put_manifest(
                &c,
                "many/tags",
                &format!("c{i:02}-{j}"),
                OCI_MANIFEST,
                &manifest,
            );
        }
    });
    done.store(true, Ordering::Relaxed);
    let reads = reader.join().expect("index.json reader");
    assert!(reads > 0, "the reader never read index.json");
    let listed = c.get("/v2/many/tags/tags/list").expect(200).json();
    let listed: BTreeSet<String> = listed["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let mut expected: BTreeSet<String> = (0..CLIENTS)
        .flat_map(|i| (0..PER_CLIENT).map(move |j| format!("c{i:02}-{j}")))
        .collect();
    expected.insert("seed".to_string());
    assert_eq!(
        listed, expected,
        "tags lost to concurrent index.json updates"
    );
    assert_eq!(
        tags_of(&read_index(&berth.root().join("many/tags"))).len(),
        expected.len()
    );
}
