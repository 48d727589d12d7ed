//! Gating on the external clients (skopeo, oras-py) and running them. When a client is
//! missing, a test skips with a notice, unless `BERTH_REQUIRE_CLIENTS=1` (set by
//! `scripts/test.sh` and so by CI), where a missing client is a failure: CI must never pass
//! by skipping the flows issue 2 asks to be shown.

use std::path::Path;
use std::process::{Command, Output};

/// Whether the probe command runs and succeeds; if not, skip or fail as described above.
/// Returns true when the test should go on.
pub fn require(tool: &str, probe: &[&str]) -> bool {
    let found = Command::new(probe[0])
        .args(&probe[1..])
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return true;
    }
    let install = "scripts/install-test-deps.sh installs it";
    if std::env::var("BERTH_REQUIRE_CLIENTS").as_deref() == Ok("1") {
        panic!(
            "{tool} is required (BERTH_REQUIRE_CLIENTS=1) but `{}` failed; {install}",
            probe.join(" ")
        );
    }
    eprintln!(
        "SKIPPED: {tool} not found (`{}` failed); {install}",
        probe.join(" ")
    );
    false
}

/// Runs a client to completion and panics with its whole output if it fails.
#[track_caller]
pub fn run(program: &str, args: &[&str]) -> Output {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        output.status.success(),
        "`{program} {}` failed ({}):\nstdout: {}\nstderr: {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A path as a command-line argument (the tests' temporary paths are always UTF-8).
pub fn arg(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}
