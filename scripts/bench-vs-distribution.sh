#!/usr/bin/env bash
# Side-by-side benchmark: starts Debian's docker-registry (CNCF distribution 2.8) and berth on
# free loopback ports with fresh storage, runs the same workloads against both in one run
# (bench/load.rs: each workload on both servers in turn, twice, in alternating order, since the
# first of a pair runs slower on this machine), and prints berth/distribution ratios; then
# measures the same two servers with real clients (wrk, skopeo, containerd's ctr; see
# scripts/bench-clients.sh), since users judge a registry by those, not by our generator.
# Run by hand, never by CI: scripts/bench-vs-distribution.sh [WORKLOADS]
# WORKLOADS: comma-separated name:concurrency:count (see bench/load.rs); counts are sized so
# each workload runs for about a second or more on the slower server.
# BENCH_CLIENTS=0 skips the real clients; bench-clients.sh reads ROUNDS and WRK_DURATION.
# BERTH_BEFORE=BINARY also runs another berth build (say, the commit before a change) as
# target `before`, in the same run, and the real clients on it after those on this build.
set -euo pipefail
workloads="${1:-push-mono-1m:8:400,push-chunked-1m:8:200,push-mono-64m:8:24,push-chunked-64m:8:24,manifest-put:8:2000,pull-1m:8:2000,pull-64m:8:48,manifest-get:32:10000,manifest-head:32:10000,catalog:8:5000,mixed:8:1000}"

source "$(dirname "$0")/bench-lib.sh"

dport=$(free_port)
start_distribution "$dport"
bport=$(free_port)
start_berth "$bport"
targets=(--target "berth=http://127.0.0.1:$bport@$bpid")
if [ -n "${BERTH_BEFORE:-}" ]; then
  before_port=$(free_port)
  start_berth "$before_port" "$BERTH_BEFORE" before
  targets+=(--target "before=http://127.0.0.1:$before_port@$bpid")
  echo "before: $BERTH_BEFORE"
fi
machine_line
cargo bench --quiet --bench load -- --rounds 2 --workloads "$workloads" \
  "${targets[@]}" --target "distribution=http://127.0.0.1:$dport@$dpid"

# On the same two processes, so both tables describe the same servers; their stores still
# hold the generator's repositories, alike on both, and the clients use repositories of their
# own.
if [ "${BENCH_CLIENTS:-1}" != 0 ]; then
  scripts/bench-clients.sh "$bport" "$dport"
  if [ -n "${BERTH_BEFORE:-}" ]; then
    echo "real clients on the build before ($BERTH_BEFORE):"
    scripts/bench-clients.sh "$before_port" "$dport"
  fi
fi
