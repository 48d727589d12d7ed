#!/usr/bin/env bash
# Profiles berth under one load workload and writes a flame graph:
#   scripts/flamegraph.sh SCENARIO WORKLOADS [COUNT]
#   e.g. scripts/flamegraph.sh push push-mono-64m:8,push-mono-1m:8 64
# Starts a release berth on a fresh loopback root, samples it with `perf record -g` while
# bench/load.rs runs WORKLOADS against it, and folds the samples with inferno into
# flamegraphs/<date>-<commit>-<SCENARIO>.svg. Run by hand; add a line to flamegraphs/index.md.
# BERTH_DRIVER (a JSON object, zot's storage.storageDriver) profiles berth on that object
# store instead, e.g. an S3 bucket on scripts/s3-services.sh's moto.
set -euo pipefail
scenario="${1:?usage: flamegraph.sh SCENARIO WORKLOADS [COUNT]}"
workloads="${2:?usage: flamegraph.sh SCENARIO WORKLOADS [COUNT]}"
count="${3:-200}"

command -v perf >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf; }
command -v inferno-flamegraph >/dev/null || cargo install --quiet inferno
source "$(dirname "$0")/bench-lib.sh"

port=$(free_port)
start_berth "$port" "" berth "${BERTH_DRIVER:-}"

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
