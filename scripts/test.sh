#!/usr/bin/env bash
# The project's single test command (README "Quick start"): installs the real clients the
# integration tests need, starts the S3 and Redis test servers (scripts/s3-services.sh,
# scripts/redis-services.sh, stopped again on exit), then runs every test target with those
# clients required, so no test can pass by skipping (tests/util/tools.rs reads
# BERTH_REQUIRE_CLIENTS; the S3 and Redis tests read the servers' endpoints from the
# environment exported here). Exits with the test run's status.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh
export BERTH_REQUIRE_CLIENTS=1
# One trap stops both sets of servers, whichever start got to run.
trap 'scripts/s3-services.sh stop; scripts/redis-services.sh stop' EXIT
scripts/s3-services.sh start
scripts/redis-services.sh start
set -a
. .s3-services/env
. .redis-services/env
set +a
# The vendored tiny_http's own unit tests: upstream's, and one or more for each of berth's
# patches (vendor/tiny_http/patches/series names them).
cargo test -p tiny_http --lib
# Every target but the benches: the load generator (bench/load.rs, harness = false) is a
# program that needs --target arguments, and `cargo test --all-targets` would run it bare
# and fail. (.ci/run compiles it through clippy, so it cannot rot.) Not `exec`: the trap stops
# the test servers after it.
cargo test --lib --bins --tests --examples "$@"
