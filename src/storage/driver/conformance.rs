//! The conformance suite every `Driver` runs: the contract of each trait method (atomicity,
//! not-found behaviour, replacing documents under concurrent readers, and conditionally under
//! concurrent writers, listing, appending, rename, copy and link, and placeholders where the
//! driver declares them) checked through the trait only.

use super::{Driver, DriverError, EntryKind, StoragePath, Version};
use std::io::Read;

fn path(s: &str) -> StoragePath {
    StoragePath::from_components(s.split('/')).unwrap()
}

/// The names `list` gives for `dir`, sorted.
fn names(d: &dyn Driver, dir: Option<&StoragePath>) -> Vec<String> {
    let mut names: Vec<String> = d.list(dir).unwrap().into_iter().map(|e| e.name).collect();
    names.sort();
    names
}

fn read_from(driver: &dyn Driver, p: &StoragePath, offset: u64) -> (Vec<u8>, u64) {
    let mut r = driver.reader(p, offset).unwrap();
    let mut buf = Vec::new();
    r.reader.read_to_end(&mut buf).unwrap();
    (buf, r.size)
}

/// Runs every check against `driver`, which must start empty.
pub(crate) fn run(driver: &dyn Driver) {
    missing_objects_are_not_found(driver);
    put_get_replace(driver);
    replacing_documents(driver);
    replacing_with_unchanged_prefixes(driver);
    replacing_conditionally(driver);
    creating(driver);
    ranged_reads(driver);
    listing(driver);
    appending(driver);
    appending_many(driver);
    appending_in_place(driver);
    appending_after_the_object_went(driver);
    cancelling(driver);
    noting_uploads(driver);
    writing_direct(driver);
    rename_and_copy(driver);
    copying_a_committed_version(driver);
    linking(driver);
    delete_trees(driver);
    deleting_empty_directories(driver);
    touching(driver);
    placeholders(driver);
}

/// A placeholder is an empty object naming its holder: written atomically over what was
/// there, kept by rename and touch, gone with any rewrite; an ordinary empty object names
/// none. A driver without the capability refuses to write one.
fn placeholders(d: &dyn Driver) {
    let (p, holder) = (path("ph/blobs/x"), path("ph/other/blobs/x"));
    if !d.capabilities().placeholders {
        assert!(d.put_placeholder(&p, &holder).is_err());
        return;
    }
    d.put(&holder, b"the bytes").unwrap();
    d.put(&p, b"a full copy first").unwrap();
    d.put_placeholder(&p, &holder).unwrap();
    let meta = d.stat(&p).unwrap().unwrap();
    assert_eq!((meta.size, meta.is_dir), (0, false));
    assert_eq!(d.get(&p).unwrap(), b"");
    assert_eq!(d.placeholder_holder(&p).unwrap(), Some(holder.clone()));
    assert_eq!(
        names(d, Some(&path("ph/blobs"))),
        ["x"],
        "no temporary left"
    );
    let listed = d.list(Some(&path("ph/blobs"))).unwrap();
    assert!(matches!(listed[0].kind, EntryKind::Object { size: 0, .. }));
    // Re-pointed in place.
    let other = path("ph/third/blobs/x");
    d.put_placeholder(&p, &other).unwrap();
    assert_eq!(d.placeholder_holder(&p).unwrap(), Some(other.clone()));
    // Kept across touch, and rename where the driver has it.
    d.touch(&p).unwrap();
    assert!(d.placeholder_holder(&p).unwrap().is_some());
    let moved = path("ph/moved/x");
    if d.capabilities().rename {
        d.rename(&p, &moved).unwrap();
        assert!(d.placeholder_holder(&moved).unwrap().is_some());
    } else {
        d.put_placeholder(&moved, &other).unwrap();
        d.delete(&p).unwrap();
    }
    // Promotion: bytes copied over it, and it names nothing any more.
    d.copy(&holder, &moved).unwrap();
    assert_eq!(d.get(&moved).unwrap(), b"the bytes");
    assert_eq!(d.placeholder_holder(&moved).unwrap(), None);
    // A real empty object names nothing; a missing one is not found.
    let empty = path("ph/empty");
    d.put(&empty, b"").unwrap();
    assert_eq!(d.placeholder_holder(&empty).unwrap(), None);
    assert!(matches!(
        d.placeholder_holder(&path("ph/nope")),
        Err(DriverError::NotFound { .. })
    ));
    d.put_placeholder(&empty, &holder).unwrap();
    d.put(&empty, b"").unwrap();
    assert_eq!(d.placeholder_holder(&empty).unwrap(), None, "put clears it");
    d.delete(&path("ph")).unwrap();
}

fn missing_objects_are_not_found(d: &dyn Driver) {
    let p = path("nope/x");
    assert!(matches!(d.get(&p), Err(DriverError::NotFound { .. })));
    assert!(matches!(d.reader(&p, 0), Err(DriverError::NotFound { .. })));
    assert!(d.stat(&p).unwrap().is_none());
    assert!(matches!(d.delete(&p), Err(DriverError::NotFound { .. })));
    if d.capabilities().rename {
        assert!(matches!(
            d.rename(&p, &path("nope/y")),
            Err(DriverError::NotFound { .. })
        ));
    }
    assert!(matches!(
        d.copy(&p, &path("nope/y")),
        Err(DriverError::NotFound { .. })
    ));
    assert!(d.list(Some(&path("nope"))).unwrap().is_empty());
}

fn put_get_replace(d: &dyn Driver) {
    let p = path("a/b/c.json");
    d.put(&p, b"first").unwrap();
    assert_eq!(d.get(&p).unwrap(), b"first");
    let first = d.stat(&p).unwrap().unwrap().fingerprint;
    d.put(&p, b"second, longer").unwrap();
    assert_ne!(d.stat(&p).unwrap().unwrap().fingerprint, first);
    assert_eq!(d.get(&p).unwrap(), b"second, longer");
    let meta = d.stat(&p).unwrap().unwrap();
    assert_eq!(meta.size, 14);
    assert!(!meta.is_dir);
    // No temporary file is left beside the object.
    assert_eq!(names(d, Some(&path("a/b"))), ["c.json"]);
}

/// Version `n` of the document `replacing_documents` writes: its length varies with `n`, so a
/// read that mixed two versions would not parse back.
fn document(n: usize) -> Vec<u8> {
    let mut doc = format!("{n}:").into_bytes();
    doc.resize(
        doc.len() + 1000 + (n * 7919) % 30_000,
        b'a' + (n % 26) as u8,
    );
    doc
}

/// The version a whole `document` is, or a panic naming what was torn.
fn version_of(doc: &[u8]) -> usize {
    let text = std::str::from_utf8(doc).expect("a document is ASCII");
    let (n, _) = text
        .split_once(':')
        .expect("a document starts with its version");
    let n: usize = n.parse().expect("a document's version is a number");
    assert!(doc == document(n), "a read returned a torn version {n}");
    n
}

fn replacing_documents(d: &dyn Driver) {
    let p = path("docs/repo/index.json");
    d.replace(&p, &document(0), 0, None).unwrap();
    assert_eq!(version_of(&d.get(&p).unwrap()), 0);
    const VERSIONS: usize = 300;
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                // Each reader sees whole versions, never older than one it saw before.
                let mut seen = 0;
                while !done.load(std::sync::atomic::Ordering::Acquire) {
                    let n = version_of(&d.get(&p).unwrap());
                    assert!(n >= seen, "version {n} read after version {seen}");
                    seen = n;
                }
            });
        }
        for n in 1..=VERSIONS {
            d.replace(&p, &document(n), 0, None).unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Release);
    });
    assert_eq!(version_of(&d.get(&p).unwrap()), VERSIONS);
    // Two writers at once: every read is still whole, and the last write of each is kept by
    // one of them.
    std::thread::scope(|s| {
        for writer in 0..2 {
            let p = &p;
            s.spawn(move || {
                for n in 0..100 {
                    d.replace(p, &document(1000 + writer * 100 + n), 0, None)
                        .unwrap();
                    version_of(&d.get(p).unwrap());
                }
            });
        }
    });
    assert!([1099, 1199].contains(&version_of(&d.get(&p).unwrap())));
    // A path that did not exist is created.
    let fresh = path("docs/other/index.json");
    d.replace(&fresh, &document(7), 0, None).unwrap();
    assert_eq!(version_of(&d.get(&fresh).unwrap()), 7);
    // Whatever storage replacing keeps is the document's: not listed, and no leftover.
    assert_eq!(names(d, Some(&path("docs/repo"))), ["index.json"]);
    assert!(
        d.scratch_files(Some(&path("docs/repo")))
            .unwrap()
            .is_empty()
    );
}

/// `create` writes only where nothing is: of writers racing to create one object, exactly
/// one wins and its bytes stay.
fn creating(d: &dyn Driver) {
    let p = path("create/repo/index.json");
    assert!(d.create(&p, b"first").unwrap());
    assert!(!d.create(&p, b"second").unwrap());
    assert_eq!(d.get(&p).unwrap(), b"first");
    for round in 0..20 {
        let p = path(&format!("create/race/{round}"));
        let winners: Vec<usize> = std::thread::scope(|s| {
            let racers: Vec<_> = (0..4)
                .map(|n| {
                    let p = &p;
                    s.spawn(move || d.create(p, n.to_string().as_bytes()).unwrap().then_some(n))
                })
                .collect();
            racers
                .into_iter()
                .filter_map(|r| r.join().unwrap())
                .collect()
        });
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        assert_eq!(d.get(&p).unwrap(), winners[0].to_string().as_bytes());
    }
    assert!(
        d.scratch_files(Some(&path("create/repo")))
            .unwrap()
            .is_empty(),
        "no temporary file left"
    );
}

/// `replace` given the version `stat` handed out: it swaps only while that version is there,
/// so writers that read, change and replace (retrying on `Conflict`) lose no change however
/// they interleave.
fn replacing_conditionally(d: &dyn Driver) {
    let p = path("cas/repo/index.json");
    let version = |p: &StoragePath| d.stat(p).unwrap().map(|m| m.version);
    let absent = d.replace(&p, b"0", 0, Some(&Version::new("anything")));
    assert!(
        matches!(absent, Err(DriverError::Conflict { .. })),
        "{absent:?}"
    );
    d.replace(&p, b"0", 0, None).unwrap();
    let first = version(&p).unwrap();
    let written = d.replace(&p, b"1", 0, Some(&first)).unwrap();
    let second = version(&p).unwrap();
    assert_ne!(first, second, "a replace makes a new version");
    assert_eq!(written.version, second, "and reports it");
    let stale = d.replace(&p, b"stale", 0, Some(&first));
    assert!(
        matches!(stale, Err(DriverError::Conflict { .. })),
        "{stale:?}"
    );
    assert_eq!(d.get(&p).unwrap(), b"1", "a lost race changes nothing");
    // Counters incremented by read-modify-replace from several threads at once.
    const WRITERS: usize = 4;
    const INCREMENTS: usize = 50;
    let conflicts = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..WRITERS {
            s.spawn(|| {
                for _ in 0..INCREMENTS {
                    loop {
                        // The version first, then the bytes: bytes newer than the version
                        // make a conflict, never a lost change.
                        let seen = version(&p).unwrap();
                        let n: usize = String::from_utf8(d.get(&p).unwrap())
                            .unwrap()
                            .parse()
                            .unwrap();
                        let next = (n + 1).to_string();
                        match d.replace(&p, next.as_bytes(), 0, Some(&seen)) {
                            Ok(_) => break,
                            Err(DriverError::Conflict { .. }) => {
                                conflicts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            });
        }
    });
    assert_eq!(
        d.get(&p).unwrap(),
        (1 + WRITERS * INCREMENTS).to_string().as_bytes(),
        "no increment lost ({} conflicts retried)",
        conflicts.into_inner()
    );
}

/// `replace` with honest `unchanged_prefix` hints, the way `index.json` is written: each
/// version keeps some prefix of the last and changes the rest, growing or shrinking, and the
/// hint is at most what really is unchanged. Every read is exactly the last version, whatever
/// the driver makes of the hints (local: it writes only the tail of a recycled file, so a hint
/// trusted one version too far leaves bytes of an older version).
fn replacing_with_unchanged_prefixes(d: &dyn Driver) {
    let docs = [path("hints/a/index.json"), path("hints/b/index.json")];
    let mut last: [Vec<u8>; 2] = Default::default();
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    // xorshift: a fixed sequence, so a failure repeats.
    let mut below = |bound: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % bound as u64) as usize
    };
    for round in 0..400usize {
        let which = below(2);
        let old = &last[which];
        let keep = below(old.len() + 1);
        let mut doc = old[..keep].to_vec();
        let tail = 1 + below(3000);
        doc.extend((0..tail).map(|i| b'a' + ((round * 7 + i / 64) % 26) as u8));
        let unchanged = old.iter().zip(&doc).take_while(|(a, b)| a == b).count();
        let hint = match below(4) {
            0 => below(unchanged + 1),
            _ => unchanged,
        };
        d.replace(&docs[which], &doc, hint, None).unwrap();
        assert!(
            d.get(&docs[which]).unwrap() == doc,
            "round {round}: the document is not the version just written"
        );
        last[which] = doc;
    }
    for (doc, bytes) in docs.iter().zip(&last) {
        assert!(d.get(doc).unwrap() == *bytes);
    }
}

fn ranged_reads(d: &dyn Driver) {
    let p = path("r/blob");
    d.put(&p, b"0123456789").unwrap();
    assert_eq!(read_from(d, &p, 0), (b"0123456789".to_vec(), 10));
    assert_eq!(read_from(d, &p, 7), (b"789".to_vec(), 10));
    assert_eq!(read_from(d, &p, 10), (Vec::new(), 10));
    // A driver that declares local files hands out one with the same bytes; one that does
    // not, none.
    let file = d.file(&p).unwrap();
    assert_eq!(file.is_some(), d.capabilities().local_files);
    if let Some(file) = file {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut &file, &mut buf).unwrap();
        assert_eq!(buf, b"0123456789");
    }
    assert!(matches!(
        d.file(&path("r/none")),
        Err(DriverError::NotFound { .. }) | Ok(None)
    ));
}

fn listing(d: &dyn Driver) {
    d.put(&path("l/one"), b"1").unwrap();
    d.put(&path("l/two"), b"2").unwrap();
    d.put(&path("l/sub/three"), b"3").unwrap();
    let mut listed = d.list(Some(&path("l"))).unwrap();
    listed.sort_by(|a, b| a.name.cmp(&b.name));
    let kinds: Vec<(&str, Option<u64>)> = listed
        .iter()
        .map(|e| match e.kind {
            EntryKind::Object { size, modified } => {
                let age = std::time::SystemTime::now().duration_since(modified);
                assert!(age.is_ok_and(|a| a.as_secs() < 60), "{e:?}");
                (e.name.as_str(), Some(size))
            }
            EntryKind::Prefix => (e.name.as_str(), None),
        })
        .collect();
    assert_eq!(
        kinds,
        [("one", Some(1)), ("sub", None), ("two", Some(1))],
        "objects with their size and time, and prefixes, from the listing alone"
    );
    assert!(d.stat(&path("l/sub")).unwrap().unwrap().is_dir);
    assert!(names(d, None).contains(&"l".to_string()));
}

/// Flushed bytes are the session's, for a writer opened later to continue after: readable
/// at the path at once, or, where the driver declares `sealed_uploads`, only once committed
/// (the session's status tells their size meanwhile).
fn appending(d: &dyn Driver) {
    let p = path("u/.uploads/session");
    let mut w = d.writer(&p).unwrap();
    assert_eq!(w.size(), 0);
    let size = |d: &dyn Driver| d.upload_status(&p).unwrap().map(|s| s.size);
    assert_eq!(size(d), Some(0), "a new upload is visible at once");
    w.write(b"hello ".to_vec()).unwrap();
    w.write(b"there".to_vec()).unwrap();
    assert_eq!(w.size(), 11);
    w.flush().unwrap();
    drop(w);
    assert_eq!(size(d), Some(11));
    if !d.capabilities().sealed_uploads {
        assert_eq!(d.get(&p).unwrap(), b"hello there");
    }
    // Reopening continues after what was stored.
    let mut w = d.writer(&p).unwrap();
    assert_eq!(w.size(), 11);
    w.write(b"!".to_vec()).unwrap();
    w.commit().unwrap();
    assert_eq!(d.get(&p).unwrap(), b"hello there!");
}

/// An upload keeps the last note saved with it, for the next writer or process; a committed
/// object keeps none. Drivers without `upload_notes` have no notes to give.
fn noting_uploads(d: &dyn Driver) {
    let p = path("u/.uploads/noted");
    assert!(matches!(
        d.upload_note(&p),
        Err(DriverError::NotFound { .. })
    ));
    let mut w = d.writer(&p).unwrap();
    assert_eq!(d.upload_note(&p).unwrap(), None, "a new upload has no note");
    if !d.capabilities().upload_notes {
        drop(w);
        d.delete(&p).unwrap();
        return;
    }
    w.write(vec![1; 5000]).unwrap();
    w.flush().unwrap();
    w.save_note(b"at 5000").unwrap();
    drop(w);
    assert_eq!(d.upload_note(&p).unwrap().as_deref(), Some(&b"at 5000"[..]));
    let mut w = d.writer(&p).unwrap();
    w.write(vec![2; 10]).unwrap();
    w.flush().unwrap();
    w.save_note(b"at 5010").unwrap();
    assert_eq!(d.upload_note(&p).unwrap().as_deref(), Some(&b"at 5010"[..]));
    w.commit().unwrap();
    assert_eq!(
        d.upload_note(&p).unwrap(),
        None,
        "the finished object has none"
    );
    assert_eq!(d.stat(&p).unwrap().unwrap().size, 5010);
    d.delete(&p).unwrap();
}

/// A direct writer's object appears only when it commits, replacing what was there; one
/// cancelled or dropped leaves the path as it was. Drivers without `direct_uploads` refuse.
fn writing_direct(d: &dyn Driver) {
    let p = path("d/blobs/sha256/direct");
    if !d.capabilities().direct_uploads {
        assert!(matches!(
            d.direct_writer(&p),
            Err(DriverError::Unsupported { .. })
        ));
        return;
    }
    let mut w = d.direct_writer(&p).unwrap();
    w.write(b"small".to_vec()).unwrap();
    w.flush().unwrap();
    assert!(d.stat(&p).unwrap().is_none(), "nothing before the commit");
    w.commit().unwrap();
    assert_eq!(d.get(&p).unwrap(), b"small");
    let mut w = d.direct_writer(&p).unwrap();
    w.write(vec![7; 70_000]).unwrap();
    w.cancel().unwrap();
    let mut w = d.direct_writer(&p).unwrap();
    w.write(vec![8; 10]).unwrap();
    drop(w);
    assert_eq!(
        d.get(&p).unwrap(),
        b"small",
        "cancelled and dropped: as it was"
    );
    let mut w = d.direct_writer(&p).unwrap();
    for piece in 0..7u8 {
        w.write(vec![piece; 10_000]).unwrap();
    }
    assert_eq!(w.size(), 70_000);
    w.commit().unwrap();
    let stored = d.get(&p).unwrap();
    assert_eq!(stored.len(), 70_000, "committed over it: replaced");
    assert!(
        stored
            .chunks(10_000)
            .enumerate()
            .all(|(i, c)| c.iter().all(|&b| b == i as u8))
    );
    assert_eq!(
        d.upload_note(&p).unwrap(),
        None,
        "a direct write keeps no note"
    );
    d.delete(&p).unwrap();
}

/// A cancelled upload leaves nothing; cancelling one whose object is gone is fine.
fn cancelling(d: &dyn Driver) {
    let p = path("u/.uploads/cancelled");
    let mut w = d.writer(&p).unwrap();
    w.write(vec![9; 70_000]).unwrap();
    w.cancel().unwrap();
    assert!(d.stat(&p).unwrap().is_none());
    let mut w = d.writer(&p).unwrap();
    w.write(b"x".to_vec()).unwrap();
    w.flush().unwrap();
    d.delete(&p).unwrap();
    w.cancel().unwrap();
    assert!(d.stat(&p).unwrap().is_none());
}

/// Many writes of recycled buffers in flight at once land in order.
fn appending_many(d: &dyn Driver) {
    let p = path("u/.uploads/many");
    let mut w = d.writer(&p).unwrap();
    let mut expected = Vec::new();
    let mut buf = Vec::new();
    for i in 0..64u8 {
        buf.clear();
        buf.resize(4096 + i as usize, i);
        expected.extend_from_slice(&buf);
        buf = w.write(buf).unwrap();
    }
    assert_eq!(w.size(), expected.len() as u64);
    w.commit().unwrap();
    assert_eq!(d.get(&p).unwrap(), expected);
}

/// Bytes written in place through `spare` land in order with written ones.
fn appending_in_place(d: &dyn Driver) {
    let p = path("u/.uploads/in-place");
    let mut w = d.writer(&p).unwrap();
    let mut expected = Vec::new();
    for i in 0..40u8 {
        let len = 3000 + 977 * i as usize;
        let chunk: Vec<u8> = (0..len).map(|j| (j as u8) ^ i).collect();
        expected.extend_from_slice(&chunk);
        match w.spare().unwrap() {
            Some(spare) if i % 3 != 0 => {
                let n = spare.len().min(chunk.len());
                spare[..n].copy_from_slice(&chunk[..n]);
                w.commit_spare(n).unwrap();
                w.write(chunk[n..].to_vec()).unwrap();
            }
            _ => {
                w.write(chunk).unwrap();
            }
        }
    }
    assert_eq!(w.size(), expected.len() as u64);
    w.commit().unwrap();
    assert_eq!(d.get(&p).unwrap(), expected);
}

/// A writer whose object was deleted, or replaced by another write, while it was open
/// changes nothing any more: like bytes written to an unlinked file, what it writes has no
/// name, and giving it one would bring back or overwrite what came later (an upload the
/// collector ended, a session cancelled). Its commit says so (`Conflict`) where the driver
/// can tell, and must with `sealed_uploads`, so that no caller places what it did not write.
fn appending_after_the_object_went(d: &dyn Driver) {
    let lost = |committed: Result<Version, DriverError>| match committed {
        Err(DriverError::Conflict { .. }) => {}
        Ok(_) if !d.capabilities().sealed_uploads => {}
        other => panic!("a writer whose upload went committed: {other:?}"),
    };
    let p = path("u/.uploads/gone");
    let mut w = d.writer(&p).unwrap();
    d.delete(&p).unwrap();
    let _ = w.write(b"late".to_vec());
    lost(w.commit());
    assert!(
        d.stat(&p).unwrap().is_none(),
        "a deleted upload stays deleted"
    );
    let mut w = d.writer(&p).unwrap();
    if d.capabilities().sealed_uploads {
        // A session is replaced by another of its writers, not by a `put` at its path.
        let mut other = d.writer(&p).unwrap();
        other.write(b"newer".to_vec()).unwrap();
        other.commit().unwrap();
    } else {
        d.put(&p, b"newer").unwrap();
    }
    let _ = w.write(b"late".to_vec());
    lost(w.commit());
    assert_eq!(d.get(&p).unwrap(), b"newer", "a later write stays");
    d.delete(&p).unwrap();
}

/// `copy_version` copies the version an upload's commit returned, and nothing once another
/// write replaced it (a session's next writer, on an object store, replaces a committed
/// upload with its note): `Conflict`, the target left as it was.
fn copying_a_committed_version(d: &dyn Driver) {
    let (from, to) = (path("v/.uploads/committed"), path("v/blobs/placed"));
    let mut w = d.writer(&from).unwrap();
    w.write(b"first".to_vec()).unwrap();
    let first = w.commit().unwrap();
    d.copy_version(&from, &first, &to).unwrap();
    assert_eq!(d.get(&to).unwrap(), b"first");
    d.delete(&from).unwrap();
    let mut w = d.writer(&from).unwrap();
    w.write(b"second".to_vec()).unwrap();
    w.commit().unwrap();
    let stale = d.copy_version(&from, &first, &path("v/blobs/other"));
    assert!(
        matches!(stale, Err(DriverError::Conflict { .. })),
        "{stale:?}"
    );
    assert!(d.stat(&path("v/blobs/other")).unwrap().is_none());
    d.delete(&from).unwrap();
    d.delete(&to).unwrap();
}

/// Copies always; renames where the driver declares them, and says so where it does not.
fn rename_and_copy(d: &dyn Driver) {
    let src = path("m/src");
    d.put(&src, b"payload").unwrap();
    d.copy(&src, &path("n/deep/copy")).unwrap();
    assert_eq!(d.get(&path("n/deep/copy")).unwrap(), b"payload");
    let dst = path("m/elsewhere/dst");
    if !d.capabilities().rename {
        assert!(matches!(
            d.rename(&src, &dst),
            Err(DriverError::Unsupported { .. })
        ));
        return;
    }
    d.put(&dst, b"old").unwrap();
    d.rename(&src, &dst).unwrap();
    assert_eq!(d.get(&dst).unwrap(), b"payload");
    assert!(d.stat(&src).unwrap().is_none());
}

fn linking(d: &dyn Driver) {
    let original = path("k/a/blobs/x");
    d.put(&original, b"shared bytes").unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(1);
    // A new name, an existing different object, and a name already linked.
    let fresh = path("k/b/blobs/x");
    let other = path("k/c/blobs/x");
    d.put(&other, b"a separate copy").unwrap();
    for to in [&fresh, &other, &fresh] {
        d.link(&original, to).unwrap();
        assert_eq!(d.get(to).unwrap(), b"shared bytes");
        let meta = d.stat(to).unwrap().unwrap();
        assert!(
            meta.modified > old,
            "a linked name looks new to the collector"
        );
        if d.capabilities().hard_links {
            assert_eq!(meta.identity, d.stat(&original).unwrap().unwrap().identity);
        }
    }
    assert_eq!(names(d, Some(&path("k/c/blobs"))), ["x"]);
    assert!(matches!(
        d.link(&path("k/none"), &path("k/d/blobs/x")),
        Err(DriverError::NotFound { .. })
    ));
    // Finished links and puts leave no temporary files behind.
    for dir in ["k/a/blobs", "k/b/blobs", "k/c/blobs"] {
        assert!(d.scratch_files(Some(&path(dir))).unwrap().is_empty());
    }
    // Deleting one name leaves the others whole.
    d.delete(&original).unwrap();
    assert_eq!(d.get(&fresh).unwrap(), b"shared bytes");
    assert_eq!(d.get(&other).unwrap(), b"shared bytes");
}

fn delete_trees(d: &dyn Driver) {
    d.put(&path("t/x/1"), b"1").unwrap();
    d.put(&path("t/x/y/2"), b"2").unwrap();
    d.delete(&path("t/x/1")).unwrap();
    assert!(d.stat(&path("t/x/1")).unwrap().is_none());
    d.delete(&path("t/x")).unwrap();
    assert!(d.stat(&path("t/x/y/2")).unwrap().is_none());
    assert!(d.list(Some(&path("t"))).unwrap().is_empty());
}

fn touching(d: &dyn Driver) {
    let p = path("touch/x");
    d.put(&p, b"bytes").unwrap();
    let before = d.stat(&p).unwrap().unwrap().modified;
    std::thread::sleep(std::time::Duration::from_millis(20));
    d.touch(&p).unwrap();
    let after = d.stat(&p).unwrap().unwrap();
    assert!(after.modified > before, "touch makes the object new");
    assert_eq!(d.get(&p).unwrap(), b"bytes");
    assert!(matches!(
        d.touch(&path("touch/missing")),
        Err(DriverError::NotFound { .. })
    ));
}

fn deleting_empty_directories(d: &dyn Driver) {
    // A document written with `replace` leaves nothing behind once deleted.
    d.replace(&path("e/doc/index.json"), b"v1", 0, None)
        .unwrap();
    d.replace(&path("e/doc/index.json"), b"v2", 0, None)
        .unwrap();
    d.delete(&path("e/doc/index.json")).unwrap();
    d.delete_dir(&path("e/doc")).unwrap();
    d.put(&path("e/full/1"), b"1").unwrap();
    assert!(
        d.delete_dir(&path("e/full")).is_err(),
        "a directory with a file in it is not removed"
    );
    assert_eq!(d.get(&path("e/full/1")).unwrap(), b"1");
    d.delete(&path("e/full/1")).unwrap();
    d.delete_dir(&path("e/full")).unwrap();
    assert!(d.list(Some(&path("e"))).unwrap().is_empty());
    d.delete_dir(&path("e/never")).unwrap();
}
