#!/usr/bin/env bash
# scripts/docker-images.sh: prepares what `docker-compose build` needs on a machine without a
# container registry: the base image debian:sid, and the Rust crates in docker/vendor/.
#
# Why the base image: both Dockerfiles build FROM debian:sid. Where a registry is reachable,
# this script just pulls it (as `docker build` would). On this kind of machine nothing can be
# pulled, but Debian's package mirror is reachable, so the image is made the old way, under the
# same name: `debootstrap --variant=minbase sid DIR` and `tar -C DIR -c . | docker import -
# debian:sid`. The builds then find it in the local image store and never try a registry.
# Dockerfile (rtpvisor: builder and runtime stage) and docker/asterisk.Dockerfile both use this
# one image: Asterisk 22 and a recent rustc/cargo only come with sid, and a binary built on sid
# needs sid's glibc at run time, so one base serves all and its layers are stored once.
#
# Why the vendored crates: a container build here reaches Debian's mirror (plain HTTP) but its
# HTTPS to crates.io fails certificate verification (the host trusts a CA the container does
# not). The host's cargo does reach crates.io, so `cargo vendor --locked` runs here, into
# docker/vendor/ (git-ignored), and the image build compiles offline from it. It is redone
# only when Cargo.lock changes (a stamp holds Cargo.lock's sha256); the Dockerfile refuses a
# stale copy. Without a host cargo this step is skipped and the build fetches crates itself.
#
# On a machine WITH a registry (and plain access to crates.io) none of this is needed:
#   docker compose up -d --build
# pulls debian:sid and fetches the crates inside the build.
#
# Behaviour: idempotent (an existing image is kept, an up-to-date vendor dir too; --force redoes
# both, and never pulls); a missing image is pulled first (bounded by RTPVISOR_PULL_TIMEOUT,
# default 60 s; no registry here fails in about a second), built if that fails; installs debootstrap with apt-get if it is missing; removes its temporary rootfs also
# on failure or Ctrl-C; prints timings. The image's apt lists are dropped before import
# (~80 MB; every Dockerfile runs `apt-get update` anyway). `docker import` records no CMD: the
# image gets bash.
#
# usage: scripts/docker-images.sh [--force]        (as root: debootstrap needs it)
#   then: docker-compose up -d --build
# environment:
#   RTPVISOR_DEBIAN_MIRROR  Debian mirror (default http://deb.debian.org/debian)
#   TMPDIR                  where the temporary rootfs goes (default /var/tmp; needs ~250 MB)
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENDOR_DIR="$REPO_DIR/docker/vendor"
VENDOR_STAMP="$VENDOR_DIR/.rtpvisor-cargo-lock.sha256" # the Dockerfile reads this name too
MIRROR="${RTPVISOR_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# image name -> Debian suite. One image today; add a line here for another suite.
declare -A IMAGES=(
    ["debian:sid"]=sid
)

log() { printf 'docker-images.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

FORCE=0
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument '$arg'" ;;
    esac
done

[[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap)"
command -v docker >/dev/null || die "docker not found"
docker info >/dev/null 2>&1 || die "cannot talk to the Docker daemon (docker info failed)"

TMP=""
cleanup() {
    [[ -n $TMP && -d $TMP ]] || return 0
    # debootstrap mounts proc/sys inside the target; a failed run can leave them mounted.
    local m
    for m in $(awk -v d="$TMP/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount "$m" 2>/dev/null || umount -l "$m" || true
    done
    rm -rf --one-file-system "$TMP" "$TMP.log"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

build_image() {
    local name="$1" suite="$2" t0 t size
    t0="$(now)"
    TMP="$(mktemp -d "${TMPDIR:-/var/tmp}/rtpvisor-rootfs.XXXXXX")"
    chmod 755 "$TMP"

    t="$(now)"
    log "$name: debootstrap --variant=minbase $suite ($MIRROR)"
    debootstrap --variant=minbase "$suite" "$TMP" "$MIRROR" >"$TMP.log" 2>&1 || {
        tail -n 30 "$TMP.log" >&2
        die "$name: debootstrap failed"
    }
    log "$name: debootstrap done in $(elapsed "$t")"

    # Package lists and caches: apt-get update in each Dockerfile fetches fresh ones.
    rm -rf "$TMP"/var/lib/apt/lists/* "$TMP"/var/cache/apt/*.bin "$TMP"/var/cache/apt/archives/*.deb \
        "$TMP"/var/log/bootstrap.log "$TMP"/debootstrap

    t="$(now)"
    tar --numeric-owner -C "$TMP" -c . | docker import --change 'CMD ["/bin/bash"]' \
        --message "debootstrap --variant=minbase $suite $MIRROR" - "$name" >/dev/null
    size="$(docker image inspect --format '{{.Size}}' "$name" | awk '{ printf "%.0f MB", $1 / 1e6 }')"
    log "$name: imported in $(elapsed "$t") ($size)"

    cleanup
    TMP=""
    log "$name: built in $(elapsed "$t0")"
}

vendor_crates() {
    local t want
    if ! command -v cargo >/dev/null; then
        log "vendor: no cargo on this host; skipped (the image build will fetch crates itself)"
        return 0
    fi
    want="$(sha256sum "$REPO_DIR/Cargo.lock" | cut -d' ' -f1)"
    if [[ $FORCE -eq 0 && -r $VENDOR_STAMP && "$(cat "$VENDOR_STAMP")" == "$want" ]]; then
        log "vendor: docker/vendor matches Cargo.lock, kept (--force redoes it)"
        return 0
    fi
    t="$(now)"
    mkdir -p "$VENDOR_DIR"
    rm -f "$VENDOR_STAMP"
    # Crates vendored earlier but no longer locked are deleted by cargo vendor itself.
    (cd "$REPO_DIR" && cargo vendor --locked --versioned-dirs --quiet "$VENDOR_DIR" >/dev/null) ||
        die "vendor: cargo vendor failed"
    # Keeps git status clean (the directory itself is committed with only this file).
    printf '%s\n' '# Filled by scripts/docker-images.sh (cargo vendor, for registry-less image builds); never committed.' \
        '*' '!.gitignore' >"$VENDOR_DIR/.gitignore"
    printf '%s\n' "$want" >"$VENDOR_STAMP"
    log "vendor: $(find "$VENDOR_DIR" -mindepth 1 -maxdepth 1 -type d | wc -l) crates into docker/vendor in $(elapsed "$t") ($(du -sh "$VENDOR_DIR" | cut -f1))"
}

T0="$(now)"
if ! command -v debootstrap >/dev/null; then
    t="$(now)"
    log "installing debootstrap (apt-get)"
    { DEBIAN_FRONTEND=noninteractive apt-get update -q &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap; } >/dev/null ||
        die "could not install debootstrap"
    log "debootstrap installed in $(elapsed "$t")"
fi

for name in "${!IMAGES[@]}"; do
    if image_exists "$name" && [[ $FORCE -eq 0 ]]; then
        log "$name: exists, kept (--force rebuilds it)"
        continue
    fi
    if [[ $FORCE -eq 0 ]]; then
        t="$(now)"
        if timeout "${RTPVISOR_PULL_TIMEOUT:-60}" docker pull -q "$name" >/dev/null 2>&1; then
            log "$name: pulled in $(elapsed "$t")"
            continue
        fi
        log "$name: no registry answered ($(elapsed "$t")): building it from Debian packages"
    fi
    build_image "$name" "${IMAGES[$name]}"
done
vendor_crates
# The API token of the compose stack: a random one in .env (never in git), kept once written.
ENV_FILE="$REPO_DIR/.env"
[[ -f "$ENV_FILE" ]] || printf '# Compose project name: containers and networks are rtpvisor_*, whatever the folder is called.\nCOMPOSE_PROJECT_NAME=rtpvisor\n' >"$ENV_FILE"
if ! grep -q '^HTTP_TOKEN=' "$ENV_FILE"; then
    printf '# Bearer token of rtpvisor'"'"'s HTTP API (Authorization: Bearer ...), written by scripts/docker-images.sh.\nHTTP_TOKEN=%s\n' \
        "$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')" >>"$ENV_FILE"
    chmod 600 "$ENV_FILE"
    log "wrote a random HTTP_TOKEN to .env"
fi
log "done in $(elapsed "$T0")"
