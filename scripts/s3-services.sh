#!/usr/bin/env bash
# The S3 servers the tests run against (DESIGN "Test services", issue 13), on loopback only:
#   moto_server  (PyPI moto[server]): S3 with multipart and conditional writes; does not check
#                signatures. The driver and store suites run on it. moto checks a PUT's
#                If-Match / If-None-Match and then writes, in two steps, and moto_server serves
#                requests on a thread each, so racing conditional writes can both pass (the
#                conformance suite's counters lost an increment). S3 makes them atomic; here
#                moto's own app is served one request at a time (werkzeug, threaded=False),
#                which makes each conditional write atomic too.
#   s3s-fs       (crate s3s-fs 0.14.1): S3 over a directory; checks SigV4 and SigV2, so the
#                driver's signing is shown against it. It takes virtual-hosted requests
#                (BUCKET.localhost:PORT) as well as path-style ones (127.0.0.1:PORT, localhost:PORT).
#   moto (TLS)   a second moto_server on HTTPS with a self-signed certificate made here by
#                openssl (for localhost and 127.0.0.1): `secure` verifies it and fails,
#                `skipverify` does not. Its certificate is $STATE/tls/cert.pem.
#   moto (metadata) a third moto_server whose only clients are the tests of instance
#                credentials (moto serves EC2's instance metadata): they give up after about a
#                second, as berth does, and behind the suites' uploads on the first one, served
#                one at a time, an answer could take longer (CI saw it).
#   moto (DynamoDB) a fourth moto_server for the DynamoDB cache's tests (its endpoint is
#                BERTH_DYNAMODB_ENDPOINT), one request at a time as well: moto checks a
#                condition expression and then writes, and the cache's atomic steps
#                (originals, promotions, leases) are conditional writes.
#
#   scripts/s3-services.sh start   installs what is missing (idempotent), stops what an earlier
#                                  start left running, starts them on free 127.0.0.1 ports and
#                                  writes their endpoints, keys and PIDs to .s3-services/env
#   scripts/s3-services.sh stop    stops them by PID (from that file) and removes the state
#
# The tests read .s3-services/env (or the same variables from the environment, which
# scripts/test.sh exports); without it they fail, naming this script.
set -euo pipefail
cd "$(dirname "$0")/.."

STATE=${BERTH_S3_STATE:-$PWD/.s3-services}
ENV_FILE=$STATE/env
PYTHON=${PYTHON:-python3}
S3S_VERSION=0.14.1
# s3s-fs checks signatures with these; moto takes any.
S3S_ACCESS_KEY=berth-test-access
S3S_SECRET_KEY=berth-test-secret

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_missing() {
    if ! command -v openssl >/dev/null 2>&1; then
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl
    fi
    if ! command -v moto_server >/dev/null 2>&1; then
        echo "s3-services: installing moto[server] (pip)"
        if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
            as_root apt-get update -qq
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip
        fi
        # A Debian system Python refuses plain pip installs (PEP 668); the test machine is
        # disposable, so fall back to overriding that rather than failing.
        "$PYTHON" -m pip install --quiet 'moto[server]' ||
            "$PYTHON" -m pip install --quiet --break-system-packages 'moto[server]'
    fi
    if ! command -v s3s-fs >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/s3s-fs" ]; then
        echo "s3-services: installing s3s-fs $S3S_VERSION (cargo install; newer releases need a newer Rust)"
        cargo install "s3s-fs@$S3S_VERSION" --locked --features binary
    fi
}

s3s_fs() {
    if command -v s3s-fs >/dev/null 2>&1; then command -v s3s-fs; else echo "$HOME/.cargo/bin/s3s-fs"; fi
}

free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until something listens on 127.0.0.1:$2 (moto takes seconds on a busy machine).
wait_for() {
    local name=$1 port=$2 pid=$3
    for _ in $(seq 1 600); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "s3-services: $name exited; its log:" >&2
            cat "$STATE/$name.log" >&2 || true
            return 1
        fi
        sleep 0.1
    done
    echo "s3-services: $name did not listen on 127.0.0.1:$port within 60 s" >&2
    return 1
}

# PIDs from the state file that are still one of our servers (a PID reused since by another
# process is left alone).
our_pids() {
    [ -f "$ENV_FILE" ] || return 0
    for pid in $(sed -n 's/^BERTH_S3_[A-Z0-9_]*_PID=//p' "$ENV_FILE"); do
        if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qE 'moto_server|s3s-fs'; then
            echo "$pid"
        fi
    done
}

stop() {
    local pids
    pids=$(our_pids)
    for pid in $pids; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in $pids; do
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    done
    rm -rf "$STATE"
}

start() {
    install_missing
    stop
    mkdir -p "$STATE/s3s-root"
    local moto_port s3s_port moto_pid s3s_pid tls_port tls_pid metadata_port metadata_pid dynamodb_port dynamodb_pid
    # `moto_server -H 127.0.0.1 -p PORT [-c CERT -k KEY]`, but one request at a time (see the
    # top). The word moto_server in its arguments is what `stop` recognises it by.
    local moto_app='
import sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
tls = (sys.argv[4], sys.argv[5]) if len(sys.argv) > 5 else None
run_simple(sys.argv[2], int(sys.argv[3]), DomainDispatcherApplication(create_backend_app), threaded=False, ssl_context=tls)
'
    moto_port=$(free_port)
    "$PYTHON" -c "$moto_app" moto_server 127.0.0.1 "$moto_port" >"$STATE/moto.log" 2>&1 &
    moto_pid=$!
    metadata_port=$(free_port)
    "$PYTHON" -c "$moto_app" moto_server 127.0.0.1 "$metadata_port" >"$STATE/moto-metadata.log" 2>&1 &
    metadata_pid=$!
    dynamodb_port=$(free_port)
    "$PYTHON" -c "$moto_app" moto_server 127.0.0.1 "$dynamodb_port" >"$STATE/moto-dynamodb.log" 2>&1 &
    dynamodb_pid=$!
    mkdir -p "$STATE/tls"
    openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj /CN=localhost \
        -addext "basicConstraints=critical,CA:FALSE" \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$STATE/tls/key.pem" -out "$STATE/tls/cert.pem" 2>"$STATE/tls/openssl.log"
    tls_port=$(free_port)
    "$PYTHON" -c "$moto_app" moto_server 127.0.0.1 "$tls_port" "$STATE/tls/cert.pem" "$STATE/tls/key.pem" \
        >"$STATE/moto-tls.log" 2>&1 &
    tls_pid=$!
    s3s_port=$(free_port)
    "$(s3s_fs)" --host 127.0.0.1 --port "$s3s_port" \
        --access-key "$S3S_ACCESS_KEY" --secret-key "$S3S_SECRET_KEY" \
        --domain "127.0.0.1:$s3s_port" --domain "localhost:$s3s_port" \
        "$STATE/s3s-root" >"$STATE/s3s-fs.log" 2>&1 &
    s3s_pid=$!
    # Written before waiting, so `stop` finds both even if a wait fails.
    cat >"$ENV_FILE" <<EOF
BERTH_S3_MOTO_ENDPOINT=http://127.0.0.1:$moto_port
BERTH_S3_MOTO_PID=$moto_pid
BERTH_S3_MOTO_TLS_ENDPOINT=https://127.0.0.1:$tls_port
BERTH_S3_MOTO_TLS_PID=$tls_pid
BERTH_S3_MOTO_METADATA_ENDPOINT=http://127.0.0.1:$metadata_port
BERTH_S3_MOTO_METADATA_PID=$metadata_pid
BERTH_DYNAMODB_ENDPOINT=http://127.0.0.1:$dynamodb_port
BERTH_S3_MOTO_DYNAMODB_PID=$dynamodb_pid
BERTH_S3_S3S_ENDPOINT=http://127.0.0.1:$s3s_port
BERTH_S3_S3S_ACCESS_KEY=$S3S_ACCESS_KEY
BERTH_S3_S3S_SECRET_KEY=$S3S_SECRET_KEY
BERTH_S3_S3S_ROOT=$STATE/s3s-root
BERTH_S3_S3S_PID=$s3s_pid
EOF
    wait_for moto "$moto_port" "$moto_pid"
    wait_for moto-tls "$tls_port" "$tls_pid"
    wait_for moto-metadata "$metadata_port" "$metadata_pid"
    wait_for moto-dynamodb "$dynamodb_port" "$dynamodb_pid"
    wait_for s3s-fs "$s3s_port" "$s3s_pid"
    echo "s3-services: moto on 127.0.0.1:$moto_port (pid $moto_pid), moto on https://127.0.0.1:$tls_port (pid $tls_pid), moto for instance metadata on 127.0.0.1:$metadata_port (pid $metadata_pid), moto for DynamoDB on 127.0.0.1:$dynamodb_port (pid $dynamodb_pid), s3s-fs on 127.0.0.1:$s3s_port (pid $s3s_pid); $ENV_FILE"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
