# Shared by the hand-run benchmark scripts (bench-vs-distribution.sh, bench-clients.sh,
# flamegraph.sh): a work directory and the processes started in it, stopped by PID and removed
# on exit; loopback ports; waiting for a registry; starting a release berth and Debian's
# docker-registry (CNCF distribution 2.8); installing missing Debian tools. Source it; it sets
# -euo pipefail. It builds berth and the load generator first unless BENCH_LIB_NO_BUILD=1 (set
# by a script that only drives servers another script started).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

work=$(mktemp -d)
pids=()
# Waits for each process to go before removing $work: a daemon still writing under it
# (containerd) would make rm fail. KILL after 5 s so a stuck server cannot hang the exit.
stop_pid() {
  kill "$1" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
cleanup() { for p in "${pids[@]}"; do stop_pid "$p"; done; rm -rf "$work"; }
# forget_pid PID: for a process stopped before the exit, so that cleanup never signals a
# later process that was given the same PID.
forget_pid() {
  local keep=() p
  for p in "${pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  pids=("${keep[@]}")
}
trap cleanup EXIT

# The berth measured is built from the work tree, which others may be editing: say so.
berth_version() {
  local v; v=$(git rev-parse --short HEAD)
  [ -z "$(git status --porcelain -- src vendor Cargo.toml Cargo.lock)" ] || v="$v+uncommitted"
  echo "$v"
}
# A line for every result: the machine is shared, so its load is part of the figures.
machine_line() {
  echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, load $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%Y-%m-%d); berth $(berth_version)"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# need_debs PACKAGE:COMMAND...: installs the packages whose command is missing, with one
# apt-get update for all of them, so a fresh machine runs the scripts as they are.
need_debs() {
  local missing=() p
  for p in "$@"; do command -v "${p#*:}" >/dev/null || missing+=("${p%%:*}"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
}

wait_http() {
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$1/v2/" >/dev/null && return 0; sleep 0.1; done
  echo "server on port $1 did not start" >&2; exit 1
}

# start_berth PORT [BINARY [NAME [DRIVER]]]: a berth (the release build of this tree unless
# BINARY is given) on a fresh root $work/NAME (berth), its blobs and layout there or, given
# DRIVER (a JSON object, zot's storage.storageDriver), in that object store; sets bpid.
start_berth() {
  local binary=${2:-${CARGO_TARGET_DIR:-target}/release/berth} name=${3:-berth} driver=${4:+,\"storageDriver\":$4}
  echo "{\"storage\":{\"rootDirectory\":\"$work/$name\"$driver},\"http\":{\"address\":\"127.0.0.1\",\"port\":\"$1\"},\"log\":{\"level\":\"warn\"}}" > "$work/$name.json"
  "$binary" serve "$work/$name.json" 2>"$work/$name.log" &
  bpid=$!; pids+=("$bpid")
  wait_http "$1"
}

# start_distribution PORT [DRIVER]: docker-registry on a fresh root in $work, or given DRIVER
# (YAML lines indented under storage:, such as an s3: block), on that; sets dpid. Deletes are
# enabled because berth serves them too: both servers offer the same API. The in-memory blob
# descriptor cache is on, as in the config.yml that Debian and upstream ship.
start_distribution() {
  need_debs docker-registry:docker-registry
  local driver=${2:-"  filesystem:
    rootdirectory: $work/distribution"}
  cat > "$work/registry.yml" <<YML
version: 0.1
log:
  level: error
storage:
$driver
  cache:
    blobdescriptor: inmemory
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$1
YML
  # The AWS SDK in it refuses to start when AWS_CA_BUNDLE is set (this machine sets it) and
  # its HTTP transport is distribution's own: "LoadCustomCABundleError".
  env -u AWS_CA_BUNDLE docker-registry serve "$work/registry.yml" >"$work/distribution.log" 2>&1 &
  dpid=$!; pids+=("$dpid")
  wait_http "$1"
}

if [ "${BENCH_LIB_NO_BUILD:-0}" != 1 ]; then
  cargo build --release --quiet
  cargo bench --bench load --no-run --quiet
fi
