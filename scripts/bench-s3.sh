#!/usr/bin/env bash
# S3 side-by-side benchmark (issue 13): berth and Debian's docker-registry (CNCF distribution
# 2.8, its own `s3` driver) on one S3 server on loopback, one bucket each, the same workloads
# in one run as scripts/bench-vs-distribution.sh (bench/load.rs, each workload on both servers
# in turn, twice, alternating the order), then the real clients of scripts/bench-clients.sh
# (wrk over keep-alive on the manifest by tag and on blobs of 17 KiB and 1 MiB, skopeo copy of
# a 40-layer image in and out, ctr fetch), and the peak RSS of each registry during 8
# concurrent 256 MiB pushes.
#
# S3 requests are counted at the S3 server: each registry reaches it through its own
# bench/s3relay.rs, which forwards bytes unchanged (SigV4 still checks) and logs one line per
# request; the generator reports each workload's S3 requests per operation by S3 operation.
# The relays are on the path of every timed request of both registries alike.
#
# The S3 server is moto_server (PyPI moto[server], as scripts/s3-services.sh installs it), in
# its own threaded mode. It is the one S3 server here that both drivers can use: s3s-fs has
# no ListMultipartUploads, which distribution's driver calls on every PATCH and PUT of an
# upload to find its multipart upload again ("NotImplemented", a 500 on the first push), and
# Garage (crate garage, multi-threaded Rust, every call both drivers make) did not build
# within an hour on this shared 2-core machine. moto is Python: it bounds the speed of both
# registries (a 1 MiB push costs it tens of ms of CPU per request), so the speed ratios here
# mostly measure how many requests, and how much data, each registry sends to S3; the
# request counts are the registries' own. moto keeps objects larger than its buffer in
# temporary files (in /tmp: 8 concurrent 256 MiB pushes would not fit in a shared tmpfs);
# its threaded mode runs racing conditional writes in two steps
# (see scripts/s3-services.sh), so this run has no workload of concurrent writes to one
# repository's tags (no manifest-put).
#
# Both registries: chunksize 10 MiB (distribution's default, berth's too), path-style, plain
# HTTP, SigV4. distribution's blob GETs answer with a redirect to a presigned S3 URL unless
# `redirect: disable: true`; berth's are off by default (as zot's): both off, so both serve
# the bytes themselves.
#
# Run by hand, never by CI: scripts/bench-s3.sh [WORKLOADS]  (as bench-vs-distribution.sh)
# Env: BENCH_CLIENTS=0 skips the real clients; RSS=0 skips the 256 MiB pushes; ROUNDS (1) and
# WRK_DURATION (3s) go to bench-clients.sh; BERTH_S3_KEYS adds berth-only keys to berth's
# storageDriver (e.g. '"blobcachesize":0' for a run without the blob cache). The counts and those two are sized so that one
# run takes about 15 minutes on moto (919 s on the shared 2-core machine, load 8 to 15).
set -euo pipefail
workloads="${1:-push-mono-1m:8:40,push-chunked-1m:8:16,push-mono-64m:4:4,push-chunked-64m:4:4,pull-1m:8:200,pull-64m:4:8,manifest-get:16:400}"
export ROUNDS=${ROUNDS:-1} WRK_DURATION=${WRK_DURATION:-3s}

source "$(dirname "$0")/bench-lib.sh"
# moto checks no signature; the keys are there because both drivers sign every request.
access_key=bench-access
secret_key=bench-secret
region=us-east-1
chunk=$((10 * 1024 * 1024))

relay_bin=$(cargo bench --bench s3relay --no-run --message-format=json --quiet |
  python3 -c 'import json, sys
for m in map(json.loads, sys.stdin):
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "s3relay" and m.get("executable"):
        print(m["executable"])')

s3port=$(free_port)
moto_server -H 127.0.0.1 -p "$s3port" >"$work/moto.log" 2>&1 &
pids+=("$!")
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$s3port/" >/dev/null && break; sleep 0.2; done
for b in berth distribution; do
  # moto takes any signature but wants one there.
  curl -fs -X PUT -H "Authorization: AWS4-HMAC-SHA256 Credential=$access_key/20260101/$region/s3/aws4_request, SignedHeaders=host, Signature=00" \
    "http://127.0.0.1:$s3port/$b" >/dev/null
done
s3_name="moto_server $(python3 -c 'import moto; print(moto.__version__)') (threaded)"

# start_relay NAME: a counting relay to the S3 server for one registry; sets relay_port.
start_relay() {
  relay_port=$(free_port)
  "$relay_bin" --listen "127.0.0.1:$relay_port" --upstream "127.0.0.1:$s3port" \
    --log "$work/s3-$1.log" 2>"$work/relay-$1.err" &
  pids+=("$!")
  for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$relay_port") 2>/dev/null && return; sleep 0.1; done
  echo "bench-s3: relay for $1 did not start" >&2; exit 1
}

start_relay distribution
dport=$(free_port)
start_distribution "$dport" "  s3:
    accesskey: $access_key
    secretkey: $secret_key
    region: $region
    regionendpoint: http://127.0.0.1:$relay_port
    bucket: distribution
    secure: false
    v4auth: true
    chunksize: $chunk
    rootdirectory: /distribution
  redirect:
    disable: true"
start_relay berth
bport=$(free_port)
start_berth "$bport" "${CARGO_TARGET_DIR:-target}/release/berth" berth "{\"name\":\"s3\",\"region\":\"$region\",\
\"regionendpoint\":\"http://127.0.0.1:$relay_port\",\"bucket\":\"berth\",\
\"rootdirectory\":\"/berth\",\"accesskey\":\"$access_key\",\"secretkey\":\"$secret_key\",\
\"secure\":false,\"chunksize\":$chunk${BERTH_S3_KEYS:+,$BERTH_S3_KEYS}}"

machine_line
echo "S3 server: $s3_name on 127.0.0.1:$s3port"
targets=(--target "berth=http://127.0.0.1:$bport@$bpid" --target "distribution=http://127.0.0.1:$dport@$dpid")
s3logs=(--s3-log "berth=$work/s3-berth.log" --s3-log "distribution=$work/s3-distribution.log")
cargo bench --quiet --bench load -- --rounds 2 --workloads "$workloads" "${targets[@]}" "${s3logs[@]}"

# Peak RSS during 8 concurrent 256 MiB pushes, one registry at a time: the generator resets
# each server's peak before the timed phase.
if [ "${RSS:-1}" != 0 ]; then
  echo
  echo "peak RSS during 8 concurrent 256 MiB monolithic pushes:"
  cargo bench --quiet --bench load -- --rounds 1 --workloads push-mono-256m:8:8 \
    "${targets[@]}" "${s3logs[@]}"
fi

if [ "${BENCH_CLIENTS:-1}" != 0 ]; then
  scripts/bench-clients.sh "$bport" "$dport"
fi
echo "bench-s3: $SECONDS s"
