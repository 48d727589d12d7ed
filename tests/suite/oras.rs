//! The real oras client against a real berth (issue 2, point 2): oras-py pushes an artifact
//! and two referrers with a `subject`, finds them through the referrers API (with and
//! without an `artifactType` filter) and pulls one back; `oras_flow.py` beside this file does
//! the client side, and this test re-checks the outcome over its own HTTP client.

use serde_json::Value;

use crate::util::oci::OCI_INDEX;
use crate::util::server::{Berth, temp_dir};
use crate::util::tools::{arg, require, run};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/suite/oras_flow.py");

#[test]
fn oras_pushes_an_artifact_with_a_subject_and_finds_it_through_referrers() {
    if !require("oras (PyPI)", &["python3", "-c", "import oras.provider"]) {
        return;
    }
    let berth = Berth::start();
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
