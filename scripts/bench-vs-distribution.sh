#!/usr/bin/env bash
# Side-by-side benchmark: starts Debian's docker-registry (CNCF distribution 2.8) and berth on
# free loopback ports with fresh storage, runs the same workloads against both in one run
# (bench/load.rs, each workload on both servers in turn), and prints berth/distribution ratios.
# Run by hand, never by CI: scripts/bench-vs-distribution.sh [WORKLOADS]
# WORKLOADS: comma-separated name:concurrency:count (see bench/load.rs); counts are sized so
# each workload runs for about a second or more on the slower server.
set -euo pipefail
cd "$(dirname "$0")/.."
workloads="${1:-push-mono-1m:8:400,push-chunked-1m:8:200,push-mono-64m:8:24,push-chunked-64m:8:24,manifest-put:8:2000,pull-1m:8:2000,pull-64m:8:48,manifest-get:32:10000,manifest-head:32:10000,catalog:8:5000,mixed:8:1000}"

if ! command -v docker-registry >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry
fi
cargo build --release --quiet
cargo bench --bench load --no-run --quiet

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 100); do curl -fs "http://127.0.0.1:$1/v2/" >/dev/null && return 0; sleep 0.1; done; echo "server on $1 did not start" >&2; exit 1; }

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
cat > "$work/berth.json" <<JSON
{"storage":{"rootDirectory":"$work/berth"},"http":{"address":"127.0.0.1","port":"$bport"},"log":{"level":"warn"}}
JSON
target/release/berth serve "$work/berth.json" 2>"$work/berth.log" &
pids+=($!); bpid=$!

wait_http "$dport"; wait_http "$bport"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(date -u +%Y-%m-%d); berth $(git rev-parse --short HEAD)"
cargo bench --quiet --bench load -- --workloads "$workloads" \
  --target "berth=http://127.0.0.1:$bport@$bpid" \
  --target "distribution=http://127.0.0.1:$dport@$dpid"
