#!/usr/bin/env bash
# Owns the real-client half of the side-by-side benchmark: berth and distribution measured with
# tools users run instead of our own generator, on the same targets, each measurement on both
# servers in turn ROUNDS times with the order alternated (the first of a pair runs slower on
# this machine), and one table at the end: tool, workload, berth, distribution, ratio.
#   wrk     GET over keep-alive of the manifest by tag (OCI Accept header), of the image
#           config, of a ~17 KiB layer and of a ~1 MiB layer: req/s, p50 and p99
#   skopeo  copy of a 40-layer image (scripts/gen-oci-image.py: gzip layers of 4 KiB to
#           12 MiB, 64.5 MiB) from a local OCI layout into a fresh repository (push) and from
#           the registry into a fresh layout (pull): seconds raw, and net of skopeo's own time
#           for a local oci: to oci: copy of the same image measured in the same run
#   ctr     containerd's `ctr content fetch --plain-http` of that image into an empty content
#           store: what `ctr image pull` does before unpacking (ctr 1.6 has no --skip-unpack;
#           unpacking is client work, the same whichever server sent the bytes)
# Run by hand, never by CI:
#   scripts/bench-clients.sh                    starts a release berth and docker-registry
#   scripts/bench-clients.sh BERTH_PORT DISTRIBUTION_PORT   drives those on 127.0.0.1
# Env: ROUNDS (2), WRK_DURATION (5s), WRK_CONNECTIONS (32), WRK_THREADS (2).
set -euo pipefail
rounds=${ROUNDS:-2}
wrk_duration=${WRK_DURATION:-5s}
wrk_connections=${WRK_CONNECTIONS:-32}
wrk_threads=${WRK_THREADS:-2}
case $# in
  0) ;;
  2) BENCH_LIB_NO_BUILD=1 ;; # the caller built and started the servers
  *) echo "usage: $0 [BERTH_PORT DISTRIBUTION_PORT]" >&2; exit 2 ;;
esac
source "$(dirname "$0")/bench-lib.sh"
need_debs wrk:wrk skopeo:skopeo containerd:containerd containerd:ctr

declare -A port
if [ $# -eq 2 ]; then
  port[berth]=$1 port[distribution]=$2
else
  port[distribution]=$(free_port); start_distribution "${port[distribution]}"
  port[berth]=$(free_port); start_berth "${port[berth]}"
fi
machine_line
for s in berth distribution; do wait_http "${port[$s]}"; done

# order ROUND: the servers in the order of that round (1-based), berth first in odd rounds.
order() { if (( $1 % 2 )); then echo berth distribution; else echo distribution berth; fi; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'; }
fail() { echo "bench-clients: $*" >&2; exit 1; }

results="$work/results.tsv"
: > "$results"
# record TOOL WORKLOAD UNIT SERVER ROUND VALUE; printed as it comes so a noisy round shows.
record() {
  [[ $6 =~ ^[0-9]+(\.[0-9]+)?$ ]] || fail "$1 $2 on $4: no $3 in the tool's output"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$results"
  printf '  round %s %-12s %-6s %-34s %10s %s\n' "$5" "$4" "$1" "$2" "$6" "$3"
}

mkdir -p "$work/skopeo"
echo '{"default":[{"type":"insecureAcceptAnything"}]}' > "$work/skopeo/policy.json"
skopeo_runs=0
# skopeo's blob-info cache remembers which repositories held each blob and turns a later push
# of the same blobs into cross-repository mounts (seen here: a second push from the same cache
# sent all 40 layers as POST ?mount=&from= and uploaded nothing). Run as root it lives in
# /var/lib/containers/cache, shared with every skopeo on the machine. _CONTAINERS_ROOTLESS_UID,
# which podman sets for its rootless children, makes containers/image put it under
# XDG_DATA_HOME instead: a fresh one per copy makes every copy a first one. The policy file
# keeps the system's signature policy out of the measurement.
skopeo_fresh() {
  skopeo_runs=$((skopeo_runs + 1))
  local home="$work/skopeo/$skopeo_runs"
  mkdir -p "$home"
  HOME="$home" XDG_DATA_HOME="$home" XDG_CONFIG_HOME="$home" XDG_RUNTIME_DIR="$home" \
    _CONTAINERS_ROOTLESS_UID=65534 skopeo --policy "$work/skopeo/policy.json" "$@"
  [ -f "$home/containers/cache/blob-info-cache-v1.boltdb" ] ||
    fail "skopeo did not use its private blob-info cache; later pushes could be mounts"
}

scripts/gen-oci-image.py "$work/image" > "$work/image.env"
source "$work/image.env"
image="oci:$work/image:v1"
blob_count=$(wc -w <<< "$image_blobs")
echo "image: $image_layers gzip layers of random bytes, $image_min_layer to $image_max_layer B," \
  "$image_layer_bytes B of layers; config $image_config_size B; manifest $image_manifest_size B"

# The wrk targets and every pull read one repository, pushed alike to both servers, untimed.
seed=clients/seed
for s in berth distribution; do
  skopeo_fresh copy -q --dest-tls-verify=false "$image" "docker://127.0.0.1:${port[$s]}/$seed:v1"
done

wrk_names=("manifest GET" "config GET ($image_config_size B)" "layer GET ($image_small_blob_size B)"
  "layer GET ($image_mib_blob_size B)")
wrk_paths=("/v2/$seed/manifests/v1" "/v2/$seed/blobs/$image_config" "/v2/$seed/blobs/$image_small_blob"
  "/v2/$seed/blobs/$image_mib_blob")
wrk_accepts=("application/vnd.oci.image.manifest.v1+json" "" "" "")

# A speed comparison needs the same answer from both: status 200, the same bytes, type and
# digest, else stop. Header names only one server sends are printed for the record; asked
# over one keep-alive connection as wrk asks, since a request with Connection: close is
# answered differently (distribution echoes the header, berth closes without it).
python3 - "${port[berth]}" "${port[distribution]}" "$image_manifest" \
  "${wrk_names[@]}" "${wrk_paths[@]}" "${wrk_accepts[@]}" <<'PY'
import http.client, sys
bport, dport, manifest = sys.argv[1:4]
rest = sys.argv[4:]
n = len(rest) // 3
conns = {"berth": http.client.HTTPConnection("127.0.0.1", int(bport)),
         "distribution": http.client.HTTPConnection("127.0.0.1", int(dport))}
ok = True
for name, path, accept in zip(rest[:n], rest[n:2 * n], rest[2 * n:]):
    got = {}
    for server, conn in conns.items():
        conn.request("GET", path, headers={"Accept": accept} if accept else {})
        r = conn.getresponse()
        got[server] = (r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    (bs, bh, bb), (ds, dh, db) = got["berth"], got["distribution"]
    for what, b, d in (("status", bs, ds), ("body", bb, db),
                       ("content-type", bh.get("content-type"), dh.get("content-type")),
                       ("docker-content-digest", bh.get("docker-content-digest"),
                        dh.get("docker-content-digest"))):
        if b != d or (what == "status" and b != 200):
            ok = False
            print(f"bench-clients: {name}: {what} differs: berth {str(b)[:80]!r}, "
                  f"distribution {str(d)[:80]!r}", file=sys.stderr)
    if name == "manifest GET" and bh.get("docker-content-digest") != manifest:
        ok = False
        print("bench-clients: the pushed manifest is not the generated one", file=sys.stderr)
    for server, mine, other in (("berth", bh, dh), ("distribution", dh, bh)):
        only = sorted(set(mine) - set(other) - {"date", "server"})
        if only:
            print(f"note: {name}: only {server} sends {', '.join(only)}")
sys.exit(0 if ok else 1)
PY

to_ms() {
  awk -v v="$1" 'BEGIN { x = v + 0
    if (v ~ /us$/) x /= 1000; else if (v ~ /ms$/) ; else if (v ~ /m$/) x *= 60000
    else if (v ~ /s$/) x *= 1000
    printf "%.3f", x }'
}
echo "wrk -t$wrk_threads -c$wrk_connections -d$wrk_duration --latency"
for i in "${!wrk_names[@]}"; do
  header=()
  [ -z "${wrk_accepts[$i]}" ] || header=(-H "Accept: ${wrk_accepts[$i]}")
  for r in $(seq "$rounds"); do
    for s in $(order "$r"); do
      out="$work/wrk-$i-$s-$r.txt"
      wrk -t"$wrk_threads" -c"$wrk_connections" -d"$wrk_duration" --latency "${header[@]}" \
        "http://127.0.0.1:${port[$s]}${wrk_paths[$i]}" > "$out"
      # wrk counts a 404 as a request served: a wrong path would look fast.
      if grep -q 'Non-2xx' "$out"; then cat "$out" >&2; fail "wrk got errors from $s"; fi
      if grep -q 'Socket errors' "$out"; then echo "note: $s: $(grep 'Socket errors' "$out")"; fi
      record wrk "${wrk_names[$i]}" req/s "$s" "$r" "$(awk '/^Requests\/sec:/ { print $2 }' "$out")"
      record wrk "${wrk_names[$i]}" "p50 ms" "$s" "$r" "$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")"
      record wrk "${wrk_names[$i]}" "p99 ms" "$s" "$r" "$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")"
    done
  done
done

push_name="push $image_layers layers"
pull_name="pull $image_layers layers"
for r in $(seq "$rounds"); do
  t0=$EPOCHREALTIME
  skopeo_fresh copy -q "$image" "oci:$work/local-$r:v1"
  record skopeo "local oci: to oci: copy" s local "$r" "$(since "$t0")"
  rm -rf "$work/local-$r"
  for s in $(order "$r"); do
    t0=$EPOCHREALTIME
    # A repository new to this invocation: a server another invocation already pushed to
    # (bench-vs-distribution.sh with BERTH_BEFORE) would otherwise skip the blobs it has.
    skopeo_fresh copy -q --dest-tls-verify=false "$image" "docker://127.0.0.1:${port[$s]}/clients/push-$$-$r:v1"
    record skopeo "$push_name" s "$s" "$r" "$(since "$t0")"
    digest=$(curl -fsI -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
      "http://127.0.0.1:${port[$s]}/v2/clients/push-$$-$r/manifests/v1" |
      tr -d '\r' | awk -F': ' 'tolower($1) == "docker-content-digest" { print $2 }')
    [ "$digest" = "$image_manifest" ] || fail "push to $s left manifest '$digest'"
  done
  for s in $(order "$r"); do
    dest="$work/pull-$s-$r"
    t0=$EPOCHREALTIME
    skopeo_fresh copy -q --src-tls-verify=false "docker://127.0.0.1:${port[$s]}/$seed:v1" "oci:$dest:v1"
    record skopeo "$pull_name" s "$s" "$r" "$(since "$t0")"
    [ "$(ls "$dest/blobs/sha256" | wc -l)" = "$blob_count" ] || fail "pull from $s is incomplete"
    rm -rf "$dest"
  done
done

# containerd keeps one content store for all namespaces and skips any blob it already holds
# (seen here: a fetch in a second namespace of the same daemon moved 2.8 of 64.5 MiB), so each
# fetch gets a daemon of its own on an empty root, started and stopped outside the timing.
expected=$(tr ' ' '\n' <<< "$image_blobs" | sort)
fetch_fresh() { # fetch_fresh SERVER ROUND
  local d="$work/containerd-$1-$2" cpid t0
  mkdir -p "$d"
  # Everything under $d, and the socket too, never the system daemon's. CRI would set up
  # Kubernetes plumbing and the opt plugin creates /opt/containerd; fetching needs neither,
  # nor the snapshotters that only probe this filesystem.
  cat > "$d/config.toml" <<TOML
version = 2
root = "$d/root"
state = "$d/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "$d/containerd.sock"
[ttrpc]
  address = "$d/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
TOML
  containerd --config "$d/config.toml" > "$d/containerd.log" 2>&1 &
  cpid=$!; pids+=("$cpid")
  local c=(ctr --address "$d/containerd.sock" --namespace bench)
  for _ in $(seq 100); do "${c[@]}" version >/dev/null 2>&1 && break; sleep 0.1; done
  "${c[@]}" version >/dev/null || fail "containerd did not start: $(tail -3 "$d/containerd.log")"
  [ -z "$("${c[@]}" content ls -q)" ] || fail "containerd's content store is not empty"
  t0=$EPOCHREALTIME
  "${c[@]}" content fetch --plain-http "127.0.0.1:${port[$1]}/$seed:v1" > "$d/fetch.log"
  record ctr "content fetch $image_layers layers" s "$1" "$2" "$(since "$t0")"
  # A digest is listed only once its bytes arrived and matched it.
  [ "$("${c[@]}" content ls -q | sort)" = "$expected" ] ||
    fail "containerd's store after the fetch from $1 is not the image's $blob_count blobs"
  stop_pid "$cpid"; forget_pid "$cpid"
  rm -rf "$d"
}
for r in $(seq "$rounds"); do
  for s in $(order "$r"); do fetch_fresh "$s" "$r"; done
done

echo
python3 - "$results" <<'PY'
import sys
from collections import defaultdict
vals, keys = defaultdict(list), []
for line in open(sys.argv[1]):
    tool, workload, unit, server, _round, value = line.rstrip("\n").split("\t")
    if (tool, workload, unit) not in keys:
        keys.append((tool, workload, unit))
    vals[tool, workload, unit, server].append(float(value))
mean = lambda xs: sum(xs) / len(xs)
locals_ = vals["skopeo", "local oci: to oci: copy", "s", "local"]
local, spread = mean(locals_), max(locals_) - min(locals_)
print(f"{'tool':<7} {'workload':<38} {'berth':>12} {'distribution':>13} {'ratio':>9}")
for tool, workload, unit in keys:
    b, d = vals[tool, workload, unit, "berth"], vals[tool, workload, unit, "distribution"]
    if not b:
        continue
    rows = [(f"{workload}, {unit}", mean(b), mean(d), True)]
    if tool == "skopeo":
        # A net time within the baseline's own round-to-round spread is noise, and a ratio of
        # two such would be a number without meaning.
        nb, nd = mean(b) - local, mean(d) - local
        rows.append((f"{workload}, net s", nb, nd, min(nb, nd) > spread))
    for name, x, y, comparable in rows:
        # ratio: how many times better berth is, whichever way the unit points
        ratio = f"{(x / y if unit == 'req/s' else y / x):8.2f}x" if comparable else f"{'-':>9}"
        fmt = "{:>12.1f} {:>13.1f}" if unit == "req/s" else "{:>12.3f} {:>13.3f}"
        print(f"{tool:<7} {name:<38} " + fmt.format(x, y) + f" {ratio}")
print(f"""
means over {len(locals_)} rounds. ratio: how many times better berth is (req/s: berth/distribution;
seconds and ms: distribution/berth). net s: raw minus skopeo's own local oci: to oci: copy of
the image, {local:.3f} s ({min(locals_):.3f} to {max(locals_):.3f} s), which copies one blob at a time as a push
from a layout does (a pull copies several at once) and also writes and fsyncs every blob, the
work a registry does on a push; no ratio where a net time is within that spread.""")
PY
echo "bench-clients: $SECONDS s; load at the end $(cut -d' ' -f1-3 /proc/loadavg)"
