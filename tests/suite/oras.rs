//! The real oras client against a real berth (issue 2, point 2): oras-py pushes an artifact
//! and two referrers with a `subject`, finds them through the referrers API (with and
//! without an `artifactType` filter) and pulls one back; `oras_flow.py` beside this file does
//! the client side, and this test re-checks the outcome over its own HTTP client. The same
//! flow runs on a local root and on S3 (issue 13).

use serde_json::Value;

use crate::util::oci::OCI_INDEX;
use crate::util::server::{Settings, temp_dir};
use crate::util::store::{Backend, Store};
use crate::util::tools::{arg, require, run};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/suite/oras_flow.py");

#[test]
fn oras_pushes_an_artifact_with_a_subject_and_finds_it_through_referrers() {
    pushes_with_a_subject_and_finds_it_through_referrers(Backend::Local);
}

#[test]
fn oras_on_s3_pushes_an_artifact_with_a_subject_and_finds_it_through_referrers() {
    pushes_with_a_subject_and_finds_it_through_referrers(Backend::S3);
}

fn pushes_with_a_subject_and_finds_it_through_referrers(backend: Backend) {
    // The S3 servers first: without them an S3 test fails even where a client is missing.
    let store = Store::new(backend);
    if !require("oras (PyPI)", &["python3", "-c", "import oras.provider"]) {
        return;
    }
    let berth = store.start(Settings::default());
    let work = temp_dir();
    let addr = berth.addr().to_string();
    let output = run("python3", &[SCRIPT, &addr, arg(work.path())]);
    let report: Value = serde_json::from_slice(&output.stdout).expect("oras_flow.py prints JSON");

    let subject = report["subject"].as_str().unwrap();
    let listed = berth
        .client()
        .request("GET", &format!("/v2/oras/demo/referrers/{subject}"))
        .header("Accept", OCI_INDEX)
        .send()
        .expect(200);
    let mut digests: Vec<String> = listed.json()["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap().to_string())
        .collect();
    digests.sort();
    let mut expected: Vec<String> = report["referrers"]
        .as_object()
        .unwrap()
        .values()
        .map(|d| d.as_str().unwrap().to_string())
        .collect();
    expected.sort();
    assert_eq!(digests, expected);
}
