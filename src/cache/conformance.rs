//! The conformance suite every `Cache` runs: originals, their promotion and replacement,
//! duplicates, idempotent records, batch records, markers, concurrent writers of one digest,
//! and usage times.

use super::{Cache, TimeKind};
use crate::digest::Digest;

fn digest(n: u32) -> Digest {
    Digest::sha256_of(&n.to_le_bytes())
}

/// Runs every check against `cache`, which must start empty.
pub(crate) fn run(cache: &dyn Cache) {
    unknown_digests_have_no_paths(cache);
    first_path_is_the_original(cache);
    removing_the_original_promotes_another(cache);
    a_new_original_replaces_a_full_one(cache);
    batch_records(cache);
    markers(cache);
    concurrent_records_of_one_digest(cache);
    usage_times(cache);
}

fn unknown_digests_have_no_paths(c: &dyn Cache) {
    assert!(c.paths(&digest(0)).unwrap().is_empty());
    assert_eq!(c.original(&digest(0)).unwrap(), None);
    // Forgetting what was never recorded is not an error.
    c.remove(&digest(0), "a/blobs/sha256/x").unwrap();
}

fn first_path_is_the_original(c: &dyn Cache) {
    let d = digest(1);
    c.put(&d, "a/blobs/x").unwrap();
    c.put(&d, "b/blobs/x").unwrap();
    c.put(&d, "a/blobs/x").unwrap();
    assert_eq!(c.original(&d).unwrap().as_deref(), Some("a/blobs/x"));
    assert_eq!(c.paths(&d).unwrap(), ["a/blobs/x", "b/blobs/x"]);
    // Another digest is independent.
    assert!(c.paths(&digest(2)).unwrap().is_empty());
}

fn removing_the_original_promotes_another(c: &dyn Cache) {
    let d = digest(3);
    for p in ["one", "two", "three"] {
        c.put(&d, p).unwrap();
    }
    c.remove(&d, "two").unwrap();
    assert_eq!(c.paths(&d).unwrap(), ["one", "three"]);
    c.remove(&d, "one").unwrap();
    assert_eq!(c.original(&d).unwrap().as_deref(), Some("three"));
    c.remove(&d, "three").unwrap();
    assert!(c.paths(&d).unwrap().is_empty());
    // A forgotten digest starts over with a new original.
    c.put(&d, "four").unwrap();
    assert_eq!(c.paths(&d).unwrap(), ["four"]);
}

fn a_new_original_replaces_a_full_one(c: &dyn Cache) {
    let d = digest(4);
    // An unknown digest: the same as `put`.
    c.put_original(&d, "full").unwrap();
    c.put(&d, "a").unwrap();
    c.put_original(&d, "next").unwrap();
    assert_eq!(c.original(&d).unwrap().as_deref(), Some("next"));
    let paths = c.paths(&d).unwrap();
    assert_eq!(paths[0], "next");
    let mut copies = paths[1..].to_vec();
    copies.sort();
    assert_eq!(copies, ["a", "full"], "the previous original stays a copy");
    // A recorded copy becomes the original without being recorded twice; `put` does not
    // take the original back.
    c.put_original(&d, "a").unwrap();
    c.put(&d, "next").unwrap();
    c.put(&d, "later").unwrap();
    assert_eq!(c.original(&d).unwrap().as_deref(), Some("a"));
    assert_eq!(c.paths(&d).unwrap().len(), 4);
    // Removing a replaced original promotes a recorded copy, as for a first original.
    c.remove(&d, "a").unwrap();
    let promoted = c.original(&d).unwrap().expect("a copy is promoted");
    assert!(
        ["full", "next", "later"].contains(&promoted.as_str()),
        "{promoted}"
    );
    assert_eq!(c.paths(&d).unwrap().len(), 3);
    for p in ["full", "next", "later"] {
        c.remove(&d, p).unwrap();
    }
    assert_eq!(c.original(&d).unwrap(), None);
}

fn batch_records(c: &dyn Cache) {
    let records: Vec<(Digest, String)> = (100..400)
        .flat_map(|n| {
            [
                (digest(n), format!("r{n}/a")),
                (digest(n), format!("r{n}/b")),
            ]
        })
        .collect();
    c.put_many(&records).unwrap();
    c.put_many(&[]).unwrap();
    for n in 100..400 {
        assert_eq!(
            c.paths(&digest(n)).unwrap(),
            [format!("r{n}/a"), format!("r{n}/b")]
        );
    }
}

fn markers(c: &dyn Cache) {
    assert_eq!(c.marker("pass").unwrap(), None);
    c.set_marker("pass", "1").unwrap();
    c.set_marker("pass", "2").unwrap();
    assert_eq!(c.marker("pass").unwrap().as_deref(), Some("2"));
    assert_eq!(c.marker("other").unwrap(), None);
}

fn concurrent_records_of_one_digest(c: &dyn Cache) {
    let d = digest(500);
    std::thread::scope(|s| {
        for t in 0..4 {
            let d = &d;
            s.spawn(move || {
                for i in 0..50 {
                    c.put(d, &format!("t{t}/{i}")).unwrap();
                }
            });
        }
    });
    let mut paths = c.paths(&d).unwrap();
    assert_eq!(paths.len(), 200, "no record is lost to a concurrent writer");
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), 200);
}

fn usage_times(c: &dyn Cache) {
    assert!(c.times(TimeKind::Pushed, "app\n").unwrap().is_empty());
    c.record_times(
        TimeKind::Pushed,
        &[
            ("app\nv1".into(), 100),
            ("app\nv2".into(), 200),
            ("app2\nv1".into(), 300),
        ],
    )
    .unwrap();
    // A key keeps the later time; the kinds are separate.
    c.record_times(
        TimeKind::Pushed,
        &[("app\nv1".into(), 150), ("app\nv2".into(), 50)],
    )
    .unwrap();
    c.record_times(TimeKind::Pulled, &[("app\nsha256:00".into(), 7)])
        .unwrap();
    c.record_times(TimeKind::Pulled, &[]).unwrap();
    let mut pushed = c.times(TimeKind::Pushed, "app\n").unwrap();
    pushed.sort();
    assert_eq!(
        pushed,
        [("app\nv1".to_string(), 150), ("app\nv2".to_string(), 200)]
    );
    assert_eq!(
        c.times(TimeKind::Pulled, "app\n").unwrap(),
        [("app\nsha256:00".to_string(), 7)]
    );
}
