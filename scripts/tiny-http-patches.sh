#!/usr/bin/env bash
# berth's copy of tiny_http is the crates.io release 0.12.0 plus the numbered patch series in
# vendor/tiny_http/patches (one concern per patch, each header says what, why and which test
# covers it; `series` lists them in order). This script proves the series and the vendored
# tree agree, and helps carry the series to a newer upstream (issue 12).
#
#   scripts/tiny-http-patches.sh check [PRISTINE]
#       Applies the series to a pristine tiny_http 0.12.0 in a temporary directory and checks
#       the result equals vendor/tiny_http byte for byte (the patches directory aside).
#       PRISTINE is the unpacked crate directory or the .crate file; without it the crate is
#       downloaded from static.crates.io (once; cached) and its SHA-256 checked. Exit 0 when
#       equal, 1 when not (the differences are printed).
#
#   scripts/tiny-http-patches.sh rebase NEW [--base PRISTINE] [--work DIR]
#       Carries the series to a newer upstream NEW (unpacked crate directory or .crate file)
#       with git's three-way merge: in DIR (a new temporary directory by default) it commits
#       0.12.0 and the series as branch `berth-0.12.0`, then the new upstream on top of 0.12.0
#       as branch `upstream`, then replays the series onto it as branch `berth`, stopping at
#       the first patch that does not apply and saying what to do next.
#
#   scripts/tiny-http-patches.sh continue DIR
#       After resolving that patch (git am --continue, or --skip): replays the rest.
#
#   scripts/tiny-http-patches.sh export DIR
#       After a finished rebase: writes DIR's `berth` branch back as the series (same file
#       names where the series keeps its length) and as vendor/tiny_http.
#
# Network use is limited to `check`/`rebase` fetching the 0.12.0 crate when no copy is given;
# CI does not run this script.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENDOR="$ROOT/vendor/tiny_http"
PATCHES="$VENDOR/patches"
SERIES="$PATCHES/series"
CRATE_URL=https://static.crates.io/crates/tiny_http/tiny_http-0.12.0.crate
# The checksum crates.io's index records for tiny_http 0.12.0.
CRATE_SHA256=389915df6413a2e74fb181895f933386023c71110878cd0825588928e64cdc82
# Commits made here are scratch work; give git an identity so it never asks.
export GIT_AUTHOR_NAME="${GIT_AUTHOR_NAME:-tiny-http-patches}"
export GIT_AUTHOR_EMAIL="${GIT_AUTHOR_EMAIL:-tiny-http-patches@localhost}"
export GIT_COMMITTER_NAME="${GIT_COMMITTER_NAME:-$GIT_AUTHOR_NAME}"
export GIT_COMMITTER_EMAIL="${GIT_COMMITTER_EMAIL:-$GIT_AUTHOR_EMAIL}"

# A caller's repository (a git hook, say) must not leak into the scratch work here.
unset GIT_DIR GIT_WORK_TREE GIT_INDEX_FILE
# A scratch directory a command made, removed on exit.
SCRATCH=""
trap 'if [ -n "$SCRATCH" ]; then rm -rf "$SCRATCH"; fi' EXIT

die() { echo "tiny-http-patches: $*" >&2; exit 2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2; }

# The patch files, in series order.
series_patches() { grep -E '^[0-9]{4}-[^ ]*\.patch$' "$SERIES"; }
# The paths removed from the release before the first patch.
series_drops() { sed -n 's/^drop  *//p' "$SERIES"; }

# Unpacks a .crate file, or copies a crate directory, into $2 (which must not exist).
unpack() {
    local src=$1 dest=$2
    mkdir -p "$dest"
    if [ -d "$src" ]; then
        cp -a "$src/." "$dest/"
    elif [ -f "$src" ]; then
        tar -xzf "$src" -C "$dest" --strip-components=1
    else
        die "no such crate file or directory: $src"
    fi
    [ -f "$dest/Cargo.toml" ] || die "$src does not look like a crate (no Cargo.toml)"
}

# Prints the path of the 0.12.0 crate file, downloading it into the cache if needed.
pristine_crate() {
    local cache="${XDG_CACHE_HOME:-$HOME/.cache}/berth"
    local crate="$cache/tiny_http-0.12.0.crate"
    if [ ! -f "$crate" ]; then
        mkdir -p "$cache"
        echo "downloading $CRATE_URL" >&2
        curl -sSfL --retry 2 -o "$crate.part" "$CRATE_URL" || die "cannot download $CRATE_URL"
        mv "$crate.part" "$crate"
    fi
    local sum
    sum=$(sha256sum "$crate" | cut -d' ' -f1)
    [ "$sum" = "$CRATE_SHA256" ] || die "$crate: SHA-256 $sum, expected $CRATE_SHA256"
    echo "$crate"
}

# Unpacks the release into $2 without the dropped paths. $1 is the release or empty.
prepare_base() {
    local src=${1:-} dest=$2
    [ -n "$src" ] || src=$(pristine_crate)
    unpack "$src" "$dest"
    local path
    while read -r path; do
        rm -rf "${dest:?}/$path"
    done < <(series_drops)
}

cmd_check() {
    [ $# -le 1 ] || usage
    local tmp
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/tiny-http-check.XXXXXX")
    SCRATCH=$tmp
    prepare_base "${1:-}" "$tmp/tree"
    local patch n=0
    while read -r patch; do
        # Outside any repository (mktemp -d), git apply works as a strict patch(1): no fuzz.
        if ! (cd "$tmp/tree" && git apply --whitespace=nowarn "$PATCHES/$patch"); then
            echo "FAIL: $patch does not apply" >&2
            exit 1
        fi
        n=$((n + 1))
    done < <(series_patches)
    # The vendored tree as committed: build outputs someone left there are not part of it.
    if diff -r -x patches -x target "$tmp/tree" "$VENDOR" >"$tmp/diff"; then
        echo "OK: 0.12.0 + $n patches == vendor/tiny_http (byte for byte, patches/ aside)"
    else
        cat "$tmp/diff"
        echo "FAIL: 0.12.0 + $n patches differs from vendor/tiny_http (above)" >&2
        exit 1
    fi
}

cmd_rebase() {
    local new="" base="" work=""
    while [ $# -gt 0 ]; do
        case $1 in
            --base) base=$2; shift 2 ;;
            --work) work=$2; shift 2 ;;
            -*) usage ;;
            *) [ -z "$new" ] || usage; new=$1; shift ;;
        esac
    done
    [ -n "$new" ] || usage
    case $new in /*) ;; *) new="$PWD/$new" ;; esac
    if [ -z "$work" ]; then
        work=$(mktemp -d "${TMPDIR:-/tmp}/tiny-http-rebase.XXXXXX")
    else
        [ ! -e "$work" ] || die "$work exists; give a new directory"
        mkdir -p "$work"
    fi
    local g=(git -C "$work")
    "${g[@]}" init -q -b berth-0.12.0
    # 0.12.0 and the series: this also stores every intermediate file version, which is what
    # lets `git am -3` below merge three ways instead of rejecting hunks.
    prepare_base "$base" "$work/.base"
    cp -a "$work/.base/." "$work/" && rm -rf "$work/.base"
    "${g[@]}" add -A && "${g[@]}" commit -q -m "tiny_http 0.12.0 (crates.io), minus dropped files"
    "${g[@]}" tag base-0.12.0
    local patches=()
    mapfile -t patches < <(series_patches | sed "s|^|$PATCHES/|")
    "${g[@]}" am -q "${patches[@]}" || die "the series does not apply to 0.12.0; run check first"
    # The new upstream as a child of 0.12.0, so `git diff base-0.12.0 upstream` is upstream's
    # own change.
    "${g[@]}" checkout -q -b upstream base-0.12.0
    "${g[@]}" rm -q -r .
    unpack "$new" "$work/.new"
    local path
    while read -r path; do rm -rf "${work:?}/.new/$path"; done < <(series_drops)
    cp -a "$work/.new/." "$work/" && rm -rf "$work/.new"
    local version
    version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$work/Cargo.toml" | head -1)
    "${g[@]}" add -A && "${g[@]}" commit -q --allow-empty -m "tiny_http $version (upstream), minus dropped files"
    "${g[@]}" tag "upstream-$version"
    "${g[@]}" checkout -q -b berth
    echo "work tree: $work (0.12.0 -> $version: $("${g[@]}" diff --shortstat base-0.12.0 upstream))"
    printf '%s\n' "${patches[@]}" >"$work/.git/tiny-http-todo"
    replay "$work"
}

# Applies the patches listed in DIR/.git/tiny-http-todo to the checked-out branch, three ways,
# until one does not apply.
replay() {
    local work=$1 g=(git -C "$1") todo="$1/.git/tiny-http-todo" p
    while [ -s "$todo" ]; do
        p=$(head -1 "$todo")
        sed -i 1d "$todo"
        if "${g[@]}" am -q -3 "$p" >"$work/.git/tiny-http-am.log" 2>&1; then
            echo "applied  $(basename "$p")"
        else
            echo "CONFLICT $(basename "$p"), in:"
            "${g[@]}" diff --name-only --diff-filter=U | sed 's/^/    /'
            cat <<EOF

Resolve it in $work: the patch header says what the patch is for and which test
proves it; run that test there (cargo test --lib). Then
    git -C $work add -A && git -C $work am --continue
(or git -C $work am --skip when upstream now does the same thing), and
    $0 continue $work
for the remaining $(wc -l <"$todo") patches.
EOF
            exit 1
        fi
    done
    echo
    echo "every patch applies on branch berth in $work."
    echo "Run the unit tests there (cargo test --lib), then: $0 export $work"
}

cmd_continue() {
    [ $# -eq 1 ] || usage
    [ -f "$1/.git/tiny-http-todo" ] || die "$1 is not a work tree made by $0 rebase"
    [ ! -d "$1/.git/rebase-apply" ] || die "git am is still in progress in $1: finish it first"
    replay "$1"
}

cmd_export() {
    [ $# -eq 1 ] || usage
    local work=$1 g=(git -C "$1")
    "${g[@]}" rev-parse -q --verify berth >/dev/null || die "$work has no branch berth"
    [ -z "$("${g[@]}" status --porcelain)" ] || die "$work has uncommitted changes (git am in progress?)"
    local upstream
    upstream=$("${g[@]}" describe --tags --match 'upstream-*' --abbrev=0 berth)
    local tmp
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/tiny-http-export.XXXXXX")
    SCRATCH=$tmp
    "${g[@]}" format-patch -q --zero-commit --no-signature -o "$tmp" "$upstream..berth"
    local old=() new=()
    mapfile -t old < <(series_patches)
    mapfile -t new < <(cd "$tmp" && ls)
    local i name
    for i in "${!new[@]}"; do
        name=${new[$i]}
        if [ ${#old[@]} -eq ${#new[@]} ]; then name=${old[$i]}; fi
        mv "$tmp/${new[$i]}" "$tmp/$name"
    done
    # The vendored tree becomes the branch's tree; the series directory is kept aside.
    mv "$PATCHES" "$tmp/.patches-dir"
    find "$VENDOR" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
    "${g[@]}" archive berth | tar -x -C "$VENDOR"
    mv "$tmp/.patches-dir" "$PATCHES"
    rm -f "$PATCHES"/[0-9][0-9][0-9][0-9]-*.patch
    mv "$tmp"/*.patch "$PATCHES/"
    echo "exported $upstream + ${#new[@]} patches to vendor/tiny_http."
    if [ ${#old[@]} -ne ${#new[@]} ]; then
        echo "The series changed length: list the new patch files in $SERIES."
    fi
    echo "Now update the base (version, URL, SHA-256) in $SERIES and in this script,"
    echo "then run: $0 check <the new release>, and berth's tests."
}

case ${1:-} in
    check) shift; cmd_check "$@" ;;
    rebase) shift; cmd_rebase "$@" ;;
    continue) shift; cmd_continue "$@" ;;
    export) shift; cmd_export "$@" ;;
    *) usage ;;
esac
