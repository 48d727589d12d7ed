#!/usr/bin/env bash
# The Redis servers the tests run against (issue 14), on loopback only, without persistence:
#   single     one redis-server
#   cluster    three redis-server --cluster-enabled yes, joined by redis-cli --cluster create
#              (three masters, no replicas), waited for until cluster_state:ok
#   sentinel   a master, its replica, and one redis-sentinel monitoring the master as
#              "berth" (quorum 1)
#
#   scripts/redis-services.sh start          installs what is missing (Debian's redis-server,
#                                            redis-sentinel and redis-tools; idempotent),
#                                            stops what an earlier start left running, starts
#                                            them on free 127.0.0.1 ports and writes their
#                                            endpoints and PIDs to .redis-services/env
#   scripts/redis-services.sh stop           stops them by PID and removes the state
#   scripts/redis-services.sh stop-single    stops the single server only (an outage) …
#   scripts/redis-services.sh start-single   … and starts it again on the same port, empty
#
# The tests read .redis-services/env (or the same variables from the environment, which
# scripts/test.sh exports); without it they fail, naming this script.
set -euo pipefail
cd "$(dirname "$0")/.."

STATE=${BERTH_REDIS_STATE:-$PWD/.redis-services}
ENV_FILE=$STATE/env
MASTER_NAME=berth

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_missing() {
    local missing=()
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    command -v redis-sentinel >/dev/null 2>&1 || missing+=(redis-sentinel)
    command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "redis-services: installing ${missing[*]} (apt-get)"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# A free port whose cluster bus port (the port + 10000) exists too.
cluster_port() {
    local port
    while port=$(free_port) && [ "$port" -gt 55535 ]; do :; done
    echo "$port"
}

# Starts a redis-server on 127.0.0.1:$2 in $STATE/$1 with extra arguments; prints its PID.
server() {
    local name=$1 port=$2
    shift 2
    mkdir -p "$STATE/$name"
    redis-server --bind 127.0.0.1 --port "$port" --dir "$STATE/$name" --save '' --appendonly no \
        --protected-mode yes "$@" >"$STATE/$name.log" 2>&1 &
    echo $!
}

# Waits (30 s at most) until 127.0.0.1:$2 answers the command `$5...` with a line matching
# $4; fails with the log of $1 (PID $3) when it exits or the time is up.
wait_for() {
    local name=$1 port=$2 pid=$3 expect=$4 tries=300
    shift 4
    until redis-cli -h 127.0.0.1 -p "$port" "$@" 2>/dev/null | grep -q "$expect"; do
        if ! kill -0 "$pid" 2>/dev/null || [ $((tries -= 1)) -eq 0 ]; then
            echo "redis-services: $name (127.0.0.1:$port) did not answer $* with $expect; its log:" >&2
            cat "$STATE/$name.log" >&2 || true
            return 1
        fi
        sleep 0.1
    done
}

# PIDs from the state file that are still one of our servers (a PID reused since by another
# process is left alone); $1 narrows to the variables BERTH_REDIS_$1_PID.
our_pids() {
    [ -f "$ENV_FILE" ] || return 0
    grep -oP "^BERTH_REDIS_${1:-\w+}_PID=\K\d+" "$ENV_FILE" | while read -r pid; do
        if grep -qaE 'redis-(server|sentinel)' "/proc/$pid/cmdline" 2>/dev/null; then
            echo "$pid"
        fi
    done
}

# Stops the servers of our_pids $1: TERM, up to 5 s to exit, then KILL.
stop_pids() {
    local pids waits=()
    pids=$(our_pids "${1:-}")
    [ -n "$pids" ] || return 0
    # shellcheck disable=SC2086
    kill $pids 2>/dev/null || true
    for pid in $pids; do waits+=("--pid=$pid"); done
    # shellcheck disable=SC2086
    timeout 5 tail "${waits[@]}" -f /dev/null || kill -9 $pids 2>/dev/null || true
}

stop() {
    stop_pids
    rm -rf "$STATE"
}

# The value of `$1` in the env file `start` wrote.
var() {
    grep -oP "^$1=\K.*" "$ENV_FILE"
}

start_single() {
    local port pid
    port=$(var BERTH_REDIS_SINGLE_PORT)
    pid=$(server single "$port")
    sed -i "s/^BERTH_REDIS_SINGLE_PID=.*/BERTH_REDIS_SINGLE_PID=$pid/" "$ENV_FILE"
    wait_for single "$port" "$pid" PONG ping
}

stop_single() {
    stop_pids SINGLE
}

start() {
    install_missing
    stop
    mkdir -p "$STATE"
    local single c1 c2 c3 master replica sentinel
    single=$(free_port)
    c1=$(cluster_port) c2=$(cluster_port) c3=$(cluster_port)
    master=$(free_port) replica=$(free_port) sentinel=$(free_port)
    local single_pid c1_pid c2_pid c3_pid master_pid replica_pid sentinel_pid
    single_pid=$(server single "$single")
    c1_pid=$(server cluster-1 "$c1" --cluster-enabled yes --cluster-config-file "$STATE/cluster-1/nodes.conf")
    c2_pid=$(server cluster-2 "$c2" --cluster-enabled yes --cluster-config-file "$STATE/cluster-2/nodes.conf")
    c3_pid=$(server cluster-3 "$c3" --cluster-enabled yes --cluster-config-file "$STATE/cluster-3/nodes.conf")
    master_pid=$(server master "$master")
    replica_pid=$(server replica "$replica" --replicaof 127.0.0.1 "$master")
    mkdir -p "$STATE/sentinel"
    cat >"$STATE/sentinel/sentinel.conf" <<EOF
bind 127.0.0.1
port $sentinel
dir $STATE/sentinel
sentinel monitor $MASTER_NAME 127.0.0.1 $master 1
sentinel down-after-milliseconds $MASTER_NAME 5000
EOF
    redis-sentinel "$STATE/sentinel/sentinel.conf" >"$STATE/sentinel.log" 2>&1 &
    sentinel_pid=$!
    # Written before waiting, so `stop` finds every server even if a wait fails.
    cat >"$ENV_FILE" <<EOF
BERTH_REDIS_URL=redis://127.0.0.1:$single
BERTH_REDIS_SINGLE_PORT=$single
BERTH_REDIS_SINGLE_PID=$single_pid
BERTH_REDIS_CLUSTER_ADDRS=127.0.0.1:$c1,127.0.0.1:$c2,127.0.0.1:$c3
BERTH_REDIS_CLUSTER_1_PID=$c1_pid
BERTH_REDIS_CLUSTER_2_PID=$c2_pid
BERTH_REDIS_CLUSTER_3_PID=$c3_pid
BERTH_REDIS_SENTINEL_ADDR=127.0.0.1:$sentinel
BERTH_REDIS_MASTER_NAME=$MASTER_NAME
BERTH_REDIS_MASTER_PID=$master_pid
BERTH_REDIS_REPLICA_PID=$replica_pid
BERTH_REDIS_SENTINEL_PID=$sentinel_pid
EOF
    wait_for single "$single" "$single_pid" PONG ping
    wait_for cluster-1 "$c1" "$c1_pid" PONG ping
    wait_for cluster-2 "$c2" "$c2_pid" PONG ping
    wait_for cluster-3 "$c3" "$c3_pid" PONG ping
    redis-cli --cluster create "127.0.0.1:$c1" "127.0.0.1:$c2" "127.0.0.1:$c3" --cluster-yes \
        >"$STATE/cluster-create.log" 2>&1
    wait_for cluster-1 "$c1" "$c1_pid" cluster_state:ok cluster info
    wait_for cluster-2 "$c2" "$c2_pid" cluster_state:ok cluster info
    wait_for cluster-3 "$c3" "$c3_pid" cluster_state:ok cluster info
    wait_for master "$master" "$master_pid" PONG ping
    wait_for replica "$replica" "$replica_pid" master_link_status:up info replication
    wait_for sentinel "$sentinel" "$sentinel_pid" "^$master\$" sentinel get-master-addr-by-name "$MASTER_NAME"
    echo "redis-services: single on 127.0.0.1:$single, cluster on 127.0.0.1:$c1,$c2,$c3, sentinel on 127.0.0.1:$sentinel (master $MASTER_NAME on $master, replica on $replica); $ENV_FILE"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
stop-single) stop_single ;;
start-single) start_single ;;
*)
    echo "usage: $0 start|stop|stop-single|start-single" >&2
    exit 2
    ;;
esac
