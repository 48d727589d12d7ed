#!/usr/bin/env bash
# Side-by-side benchmark: starts Debian's docker-registry (CNCF distribution 2.8) and berth on
# free loopback ports with fresh storage, runs the same workloads against both in one run
# (bench/load.rs: each workload on both servers in turn, twice, in alternating order, since the
# first of a pair runs slower on this machine), and prints berth/distribution ratios.
# Run by hand, never by CI: scripts/bench-vs-distribution.sh [WORKLOADS]
# WORKLOADS: comma-separated name:concurrency:count (see bench/load.rs); counts are sized so
# each workload runs for about a second or more on the slower server.
set -euo pipefail
workloads="${1:-push-mono-1m:8:400,push-chunked-1m:8:200,push-mono-64m:8:24,push-chunked-64m:8:24,manifest-put:8:2000,pull-1m:8:2000,pull-64m:8:48,manifest-get:32:10000,manifest-head:32:10000,catalog:8:5000,mixed:8:1000}"

if ! command -v docker-registry >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry
fi
source "$(dirname "$0")/bench-lib.sh"

dport=$(free_port)
cat > "$work/registry.yml" <<YML
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $work/distribution
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$dport
YML
docker-registry serve "$work/registry.yml" >"$work/distribution.log" 2>&1 &
pids+=($!); dpid=$!

bport=$(free_port)
start_berth "$bport"
wait_http "$dport"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(date -u +%Y-%m-%d); berth $(git rev-parse --short HEAD)"
cargo bench --quiet --bench load -- --rounds 2 --workloads "$workloads" \
  --target "berth=http://127.0.0.1:$bport@$bpid" \
  --target "distribution=http://127.0.0.1:$dport@$dpid"
