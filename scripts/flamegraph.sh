#!/usr/bin/env bash
# Profiles berth under one load workload and writes a flame graph:
#   scripts/flamegraph.sh SCENARIO WORKLOADS [COUNT]
#   e.g. scripts/flamegraph.sh push push-mono-64m:8,push-mono-1m:8 64
# Starts a release berth on a fresh loopback root, samples it with `perf record -g` while
# bench/load.rs runs WORKLOADS against it, and folds the samples with inferno into
# flamegraphs/<date>-<commit>-<SCENARIO>.svg. Run by hand; add a line to flamegraphs/index.md.
set -euo pipefail
cd "$(dirname "$0")/.."
scenario="${1:?usage: flamegraph.sh SCENARIO WORKLOADS [COUNT]}"
workloads="${2:?usage: flamegraph.sh SCENARIO WORKLOADS [COUNT]}"
count="${3:-200}"

command -v perf >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf; }
command -v inferno-flamegraph >/dev/null || cargo install --quiet inferno
cargo build --release --quiet
cargo bench --bench load --no-run --quiet

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
echo "{\"storage\":{\"rootDirectory\":\"$work/root\"},\"http\":{\"address\":\"127.0.0.1\",\"port\":\"$port\"},\"log\":{\"level\":\"warn\"}}" > "$work/berth.json"
target/release/berth serve "$work/berth.json" 2>"$work/berth.log" &
bpid=$!; pids+=($bpid)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done

perf record -F 999 -g -p "$bpid" -o "$work/perf.data" 2>"$work/perf.log" &
ppid=$!; pids+=($ppid)
sleep 0.5
cargo bench --quiet --bench load -- --count "$count" --workloads "$workloads" \
  --target "berth=http://127.0.0.1:$port@$bpid"
kill -INT "$ppid"; wait "$ppid" || true

out="flamegraphs/$(date -u +%Y-%m-%d)-$(git rev-parse --short HEAD)-$scenario.svg"
perf script -i "$work/perf.data" 2>/dev/null | inferno-collapse-perf | \
  inferno-flamegraph --title "berth: $scenario ($workloads, count $count)" > "$out"
echo "wrote $out"
