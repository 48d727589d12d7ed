# Shared by the hand-run benchmark scripts (bench-vs-distribution.sh, flamegraph.sh): a work
# directory and the processes started in it, removed and killed by PID on exit; loopback
# ports; waiting for a registry; starting a release berth. Source it; it sets -euo pipefail.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_http() {
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$1/v2/" >/dev/null && return 0; sleep 0.1; done
  echo "server on port $1 did not start" >&2; exit 1
}

# start_berth PORT: a release berth on a fresh root in $work; sets bpid.
start_berth() {
  echo "{\"storage\":{\"rootDirectory\":\"$work/berth\"},\"http\":{\"address\":\"127.0.0.1\",\"port\":\"$1\"},\"log\":{\"level\":\"warn\"}}" > "$work/berth.json"
  target/release/berth serve "$work/berth.json" 2>"$work/berth.log" &
  bpid=$!; pids+=("$bpid")
  wait_http "$1"
}

cargo build --release --quiet
cargo bench --bench load --no-run --quiet
