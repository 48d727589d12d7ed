//! The conformance suites every cache backend runs, one per trait: `dedupe_index` (originals,
//! their promotion and replacement, duplicates, idempotent records, batch records, concurrent
//! writers of one digest, `add`'s answer), `usage_log` (later time wins, pushes and pulls
//! apart, repositories apart), `markers` and, for shared caches, `leases`. Each takes a function opening the backend's records of a namespace
//! (all over ONE backend instance, which must start empty), and checks that two namespaces
//! never see each other's records.

use super::{DedupeIndex, LeaseKey, Leases, MarkerKey, Markers, Namespace, UsageLog};
use crate::digest::Digest;
use crate::oci::{RepoName, Tag};
use crate::storage::driver::StoragePath;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn digest(n: u32) -> Digest {
    Digest::sha256_of(&n.to_le_bytes())
}

fn path(s: &str) -> StoragePath {
    StoragePath::from_components(s.split('/')).unwrap()
}

fn paths(list: &[&str]) -> Vec<StoragePath> {
    list.iter().map(|s| path(s)).collect()
}

fn ns(name: &str) -> Namespace {
    Namespace::new(name)
}

/// Runs every `DedupeIndex` check over namespaces that `open` opens in one backend.
pub(crate) fn dedupe_index<I: DedupeIndex>(open: impl Fn(&Namespace) -> I) {
    let c = open(&ns("storage"));
    unknown_digests_have_no_paths(&c);
    first_path_is_the_original(&c);
    removing_the_original_promotes_another(&c);
    a_new_original_replaces_a_full_one(&c);
    batch_records(&c);
    concurrent_records_of_one_digest(&c);
    add_answers_the_original_before(&c);
    one_of_concurrent_adds_is_the_original(&c);
    namespaces_keep_their_own_paths(&c, &open(&ns("storage.subPaths./a")));
}

fn unknown_digests_have_no_paths(c: &dyn DedupeIndex) {
    assert!(c.paths(&digest(0)).unwrap().is_empty());
    assert_eq!(c.original(&digest(0)).unwrap(), None);
    // Forgetting what was never recorded is not an error.
    c.remove(&digest(0), &path("a/blobs/sha256/x")).unwrap();
}

fn first_path_is_the_original(c: &dyn DedupeIndex) {
    let d = digest(1);
    c.put(&d, &path("a/blobs/x")).unwrap();
    c.put(&d, &path("b/blobs/x")).unwrap();
    c.put(&d, &path("a/blobs/x")).unwrap();
    assert_eq!(c.original(&d).unwrap(), Some(path("a/blobs/x")));
    assert_eq!(c.paths(&d).unwrap(), paths(&["a/blobs/x", "b/blobs/x"]));
    // Another digest is independent.
    assert!(c.paths(&digest(2)).unwrap().is_empty());
}

fn removing_the_original_promotes_another(c: &dyn DedupeIndex) {
    let d = digest(3);
    for p in ["one", "two", "three"] {
        c.put(&d, &path(p)).unwrap();
    }
    c.remove(&d, &path("two")).unwrap();
    assert_eq!(c.paths(&d).unwrap(), paths(&["one", "three"]));
    c.remove(&d, &path("one")).unwrap();
    assert_eq!(c.original(&d).unwrap(), Some(path("three")));
    c.remove(&d, &path("three")).unwrap();
    assert!(c.paths(&d).unwrap().is_empty());
    // A forgotten digest starts over with a new original.
    c.put(&d, &path("four")).unwrap();
    assert_eq!(c.paths(&d).unwrap(), paths(&["four"]));
}

fn a_new_original_replaces_a_full_one(c: &dyn DedupeIndex) {
    let d = digest(4);
    // An unknown digest: the same as `put`.
    c.put_original(&d, &path("full")).unwrap();
    c.put(&d, &path("a")).unwrap();
    c.put_original(&d, &path("next")).unwrap();
    assert_eq!(c.original(&d).unwrap(), Some(path("next")));
    let recorded = c.paths(&d).unwrap();
    assert_eq!(recorded[0], path("next"));
    let mut copies = recorded[1..].to_vec();
    copies.sort();
    assert_eq!(
        copies,
        paths(&["a", "full"]),
        "the previous original stays a copy"
    );
    // A recorded copy becomes the original without being recorded twice; `put` does not
    // take the original back.
    c.put_original(&d, &path("a")).unwrap();
    c.put(&d, &path("next")).unwrap();
    c.put(&d, &path("later")).unwrap();
    assert_eq!(c.original(&d).unwrap(), Some(path("a")));
    assert_eq!(c.paths(&d).unwrap().len(), 4);
    // Removing a replaced original promotes a recorded copy, as for a first original.
    c.remove(&d, &path("a")).unwrap();
    let promoted = c.original(&d).unwrap().expect("a copy is promoted");
    assert!(
        paths(&["full", "next", "later"]).contains(&promoted),
        "{promoted}"
    );
    assert_eq!(c.paths(&d).unwrap().len(), 3);
    for p in ["full", "next", "later"] {
        c.remove(&d, &path(p)).unwrap();
    }
    assert_eq!(c.original(&d).unwrap(), None);
}

fn batch_records(c: &dyn DedupeIndex) {
    let records: Vec<(Digest, StoragePath)> = (100..400)
        .flat_map(|n| {
            [
                (digest(n), path(&format!("r{n}/a"))),
                (digest(n), path(&format!("r{n}/b"))),
            ]
        })
        .collect();
    c.put_many(&records).unwrap();
    c.put_many(&[]).unwrap();
    for n in 100..400 {
        assert_eq!(
            c.paths(&digest(n)).unwrap(),
            [path(&format!("r{n}/a")), path(&format!("r{n}/b"))]
        );
    }
}

fn concurrent_records_of_one_digest(c: &dyn DedupeIndex) {
    let d = digest(500);
    std::thread::scope(|s| {
        for t in 0..4 {
            let d = &d;
            s.spawn(move || {
                for i in 0..50 {
                    c.put(d, &path(&format!("t{t}/{i}"))).unwrap();
                }
            });
        }
    });
    let mut recorded = c.paths(&d).unwrap();
    assert_eq!(
        recorded.len(),
        200,
        "no record is lost to a concurrent writer"
    );
    recorded.sort();
    recorded.dedup();
    assert_eq!(recorded.len(), 200);
}

fn add_answers_the_original_before(c: &dyn DedupeIndex) {
    let d = digest(600);
    assert_eq!(
        c.add(&d, &path("first")).unwrap(),
        None,
        "unknown: now the original"
    );
    assert_eq!(c.original(&d).unwrap(), Some(path("first")));
    assert_eq!(c.add(&d, &path("second")).unwrap(), Some(path("first")));
    assert_eq!(
        c.add(&d, &path("second")).unwrap(),
        Some(path("first")),
        "idempotent"
    );
    assert_eq!(c.paths(&d).unwrap(), paths(&["first", "second"]));
    // After the original goes, the promoted copy is what `add` answers.
    c.remove(&d, &path("first")).unwrap();
    assert_eq!(c.add(&d, &path("third")).unwrap(), Some(path("second")));
    for p in ["second", "third"] {
        c.remove(&d, &path(p)).unwrap();
    }
    assert_eq!(
        c.add(&d, &path("fourth")).unwrap(),
        None,
        "forgotten: starts over"
    );
}

fn one_of_concurrent_adds_is_the_original(c: &dyn DedupeIndex) {
    for round in 0..20 {
        let d = digest(700 + round);
        let told_none = std::thread::scope(|s| {
            let adds: Vec<_> = (0..4)
                .map(|t| {
                    let d = &d;
                    s.spawn(move || c.add(d, &path(&format!("t{t}"))).unwrap())
                })
                .collect();
            adds.into_iter()
                .map(|a| a.join().unwrap())
                .filter(Option::is_none)
                .count()
        });
        assert_eq!(
            told_none, 1,
            "round {round}: exactly one adder is the original"
        );
        let original = c.original(&d).unwrap().unwrap();
        assert_eq!(c.paths(&d).unwrap().len(), 4);
        assert_eq!(c.paths(&d).unwrap()[0], original);
    }
}

/// `a` holds the records above; `b`, another namespace of the same backend, starts empty.
fn namespaces_keep_their_own_paths(a: &dyn DedupeIndex, b: &dyn DedupeIndex) {
    let d = digest(1);
    assert!(
        b.paths(&d).unwrap().is_empty(),
        "b sees none of a's records"
    );
    assert_eq!(b.original(&d).unwrap(), None);
    b.put(&d, &path("b/blobs/x")).unwrap();
    b.put_many(&[(d.clone(), path("c/blobs/x"))]).unwrap();
    // Forgetting in b touches nothing of a, though the path is the same.
    b.remove(&d, &path("a/blobs/x")).unwrap();
    assert_eq!(b.paths(&d).unwrap(), paths(&["b/blobs/x", "c/blobs/x"]));
    assert_eq!(a.paths(&d).unwrap(), paths(&["a/blobs/x", "b/blobs/x"]));
    b.put_original(&d, &path("c/blobs/x")).unwrap();
    assert_eq!(a.original(&d).unwrap(), Some(path("a/blobs/x")));
    b.remove(&d, &path("b/blobs/x")).unwrap();
    b.remove(&d, &path("c/blobs/x")).unwrap();
    assert!(b.paths(&d).unwrap().is_empty());
    assert_eq!(a.paths(&d).unwrap().len(), 2);
}

fn at(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis)
}

fn repo(s: &str) -> RepoName {
    s.parse().unwrap()
}

fn tag(s: &str) -> Tag {
    s.parse().unwrap()
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

/// Runs every `UsageLog` check over namespaces that `open` opens in one backend.
pub(crate) fn usage_log<L: UsageLog>(open: impl Fn(&Namespace) -> L) {
    let c = open(&ns("storage"));
    let (app, app2, nested) = (repo("app"), repo("app2"), repo("app/nested"));
    assert!(c.pushes(&app).unwrap().is_empty());
    assert!(c.pulls(&app).unwrap().is_empty());
    c.record_pushes(&[
        (app.clone(), tag("v1"), at(100)),
        (app.clone(), tag("v2"), at(200)),
        (app2.clone(), tag("v1"), at(300)),
        (nested.clone(), tag("v1"), at(400)),
    ])
    .unwrap();
    // A record keeps the later time, whatever order batches come in.
    c.record_pushes(&[
        (app.clone(), tag("v1"), at(150)),
        (app.clone(), tag("v2"), at(50)),
    ])
    .unwrap();
    c.record_pushes(&[]).unwrap();
    // Pulls are apart from pushes; a digest in a pull is not a tag.
    let m = digest(7);
    c.record_pulls(&[(app.clone(), m.clone(), at(7))]).unwrap();
    c.record_pulls(&[(app.clone(), m.clone(), at(5))]).unwrap();
    c.record_pulls(&[]).unwrap();
    // Milliseconds are kept; finer parts may not be.
    let now = at(1_700_000_000_123) + Duration::from_micros(456);
    c.record_pushes(&[(app2.clone(), tag("now"), now)]).unwrap();
    assert_eq!(
        sorted(c.pushes(&app).unwrap()),
        [(tag("v1"), at(150)), (tag("v2"), at(200))],
        "a repository's records only, not those of app2 or app/nested"
    );
    assert_eq!(c.pulls(&app).unwrap(), [(m.clone(), at(7))]);
    assert!(c.pulls(&app2).unwrap().is_empty());
    assert_eq!(
        sorted(c.pushes(&app2).unwrap()),
        [(tag("now"), at(1_700_000_000_123)), (tag("v1"), at(300))]
    );
    assert_eq!(c.pushes(&nested).unwrap(), [(tag("v1"), at(400))]);
    // Another namespace: empty, and its records stay its own.
    let b = open(&ns("storage.subPaths./a"));
    assert!(b.pushes(&app).unwrap().is_empty());
    assert!(b.pulls(&app).unwrap().is_empty());
    b.record_pushes(&[(app.clone(), tag("v1"), at(10_000))])
        .unwrap();
    b.record_pulls(&[(app.clone(), m.clone(), at(10_000))])
        .unwrap();
    assert_eq!(b.pushes(&app).unwrap(), [(tag("v1"), at(10_000))]);
    assert_eq!(
        sorted(c.pushes(&app).unwrap()),
        [(tag("v1"), at(150)), (tag("v2"), at(200))]
    );
    assert_eq!(c.pulls(&app).unwrap(), [(m, at(7))]);
}

/// Runs every `Markers` check over namespaces that `open` opens in one backend.
pub(crate) fn markers<M: Markers>(open: impl Fn(&Namespace) -> M) {
    let (pass, other) = (MarkerKey::new("pass"), MarkerKey::new("other"));
    let c = open(&ns("storage"));
    assert_eq!(c.marker(pass).unwrap(), None);
    c.set_marker(pass, "1").unwrap();
    c.set_marker(pass, "2").unwrap();
    assert_eq!(c.marker(pass).unwrap().as_deref(), Some("2"));
    assert_eq!(c.marker(other).unwrap(), None);
    let b = open(&ns("storage.subPaths./a"));
    assert_eq!(b.marker(pass).unwrap(), None);
    b.set_marker(pass, "b's").unwrap();
    assert_eq!(c.marker(pass).unwrap().as_deref(), Some("2"));
    assert_eq!(b.marker(pass).unwrap().as_deref(), Some("b's"));
}

/// Runs every `Leases` check over namespaces that `open` opens in one backend.
pub(crate) fn leases<L: Leases>(open: impl Fn(&Namespace) -> L) {
    let (gc, scrub) = (LeaseKey::new("gc"), LeaseKey::new("scrub"));
    let long = Duration::from_secs(60);
    let c = open(&ns("storage"));
    assert!(c.acquire(gc, "a", long).unwrap());
    assert!(!c.acquire(gc, "b", long).unwrap(), "held by a");
    assert!(c.acquire(gc, "a", long).unwrap(), "the holder renews");
    assert!(
        c.acquire(scrub, "b", long).unwrap(),
        "another lease is free"
    );
    c.release(gc, "b").unwrap();
    assert!(
        !c.acquire(gc, "b", long).unwrap(),
        "b cannot release a's hold"
    );
    c.release(gc, "a").unwrap();
    assert!(c.acquire(gc, "b", long).unwrap(), "released");
    c.release(gc, "b").unwrap();
    c.release(scrub, "b").unwrap();
    // A holder that stops renewing loses the lease when its time-to-live passes.
    let short = Duration::from_millis(300);
    assert!(c.acquire(gc, "a", short).unwrap());
    assert!(!c.acquire(gc, "b", long).unwrap());
    std::thread::sleep(Duration::from_millis(700));
    assert!(c.acquire(gc, "b", long).unwrap(), "a's hold expired");
    assert!(!c.acquire(gc, "a", long).unwrap());
    // A renewal extends the hold past the first time-to-live.
    assert!(c.acquire(scrub, "a", short).unwrap());
    std::thread::sleep(Duration::from_millis(150));
    assert!(c.acquire(scrub, "a", Duration::from_secs(5)).unwrap());
    std::thread::sleep(Duration::from_millis(400));
    assert!(!c.acquire(scrub, "b", long).unwrap(), "renewed by a");
    // Of several instances asking at once, exactly one holds it.
    let race = LeaseKey::new("race");
    let winners = std::thread::scope(|s| {
        let tries: Vec<_> = (0..4)
            .map(|t| {
                let c = &c;
                s.spawn(move || c.acquire(race, &format!("h{t}"), long).unwrap())
            })
            .collect();
        tries
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|won| *won)
            .count()
    });
    assert_eq!(winners, 1);
    // Another namespace holds its own leases.
    let b = open(&ns("storage.subPaths./a"));
    assert!(
        b.acquire(gc, "a", long).unwrap(),
        "gc of another store is free"
    );
    assert!(
        !c.acquire(gc, "a", long).unwrap(),
        "in the first namespace, b still holds it"
    );
}
