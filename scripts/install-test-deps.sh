#!/usr/bin/env bash
# Installs the real clients the integration tests drive (issue 2, "How it is shown" point 2):
# Debian's skopeo and PyPI's oras (oras-py, a library; tests/suite/oras_flow.py drives it).
# Idempotent: installs only what is missing, so it is cheap to run before every test run.
set -euo pipefail

# Root in CI and on the project's machines; sudo elsewhere.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if ! command -v skopeo >/dev/null 2>&1; then
    echo "install-test-deps: installing skopeo (apt)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq skopeo
fi

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import oras.provider' >/dev/null 2>&1; then
    echo "install-test-deps: installing oras (pip)"
    if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip
    fi
    # A Debian system Python refuses plain pip installs (PEP 668); the test machine is
    # disposable, so fall back to overriding that rather than failing.
    "$PYTHON" -m pip install --quiet oras ||
        "$PYTHON" -m pip install --quiet --break-system-packages oras
fi

skopeo --version
"$PYTHON" -c 'import oras.version; print("oras-py", oras.version.__version__)'
