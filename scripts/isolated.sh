#!/usr/bin/env bash
# scripts/isolated.sh: runs a command in a network namespace of its own, beside an Asterisk of
# its own, so that two test runs on one machine never meet.
#
#   scripts/isolated.sh [--repo DIR] [--name NAME] -- COMMAND [ARGS...]
#
# What the command gets:
#   * its own network namespace (`ip netns add`, loopback up with 127.0.0.1 and ::1, nothing
#     else): 127.0.0.1:8088 (ARI), 8089 (ARI over TLS), 5060 (SIP), the RTP range and every
#     port a test picks are the namespace's own, whatever other runs or services on the host
#     hold;
#   * its own Asterisk state: the chroot that scripts/asterisk.sh builds once (read-only here)
#     is the lower layer of an overlay mount; this run's writes (/etc/asterisk installed from
#     DIR/asterisk-conf, logs, spool, astdb, pid files, sipp's files) go to an upper layer that
#     is deleted at the end. RTPVISOR_ASTERISK_ROOT points at the overlay, so every
#     `scripts/asterisk.sh` call of the command (start, restart, stop, sipp, cli) acts on this
#     run's Asterisk only;
#   * RTPVISOR_ISOLATED=NAME and CARGO_NET_OFFLINE=true (the namespace has no route out: build
#     and fetch before entering).
# At the end (also on failure or Ctrl-C) this run's Asterisk and anything else still running in
# the namespace is stopped, the overlay unmounted and deleted, and the namespace removed. The
# command's exit status is returned.
#
# Needs root (ip netns, mount). The chroot must be built: `scripts/asterisk.sh build` (the test
# command does it first).
# Environment: RTPVISOR_ASTERISK_ROOT (the built chroot, default /var/cache/rtpvisor/asterisk-sid),
# RTPVISOR_ISOLATED_DIR (where runs keep their overlays, default /var/cache/rtpvisor/runs).
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NAME="rtpvisor-$$"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --repo) REPO_DIR="$(cd "$2" && pwd)"; shift 2 ;;
        --name) NAME="$2"; shift 2 ;;
        --) shift; break ;;
        *) echo "isolated.sh: unknown argument '$1' (usage: $0 [--repo DIR] [--name NAME] -- COMMAND...)" >&2; exit 2 ;;
    esac
done
[[ $# -gt 0 ]] || { echo "isolated.sh: no command given" >&2; exit 2; }
[[ $NAME =~ ^[A-Za-z0-9_.-]{1,40}$ ]] || { echo "isolated.sh: bad name '$NAME'" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || { echo "isolated.sh: must run as root (ip netns, mount)" >&2; exit 1; }

BASE="${RTPVISOR_ASTERISK_ROOT:-/var/cache/rtpvisor/asterisk-sid}"
[[ -f $BASE/.rtpvisor-build-complete ]] ||
    { echo "isolated.sh: $BASE is not built; run: scripts/asterisk.sh build" >&2; exit 1; }
RUN="${RTPVISOR_ISOLATED_DIR:-/var/cache/rtpvisor/runs}/$NAME"
ROOT="$RUN/root"

log() { printf 'isolated.sh[%s]: %s\n' "$NAME" "$*" >&2; }

cleanup() {
    local pids pid
    # Whatever still runs in the namespace (an Asterisk the command left, a stray child).
    pids="$(ip netns pids "$NAME" 2>/dev/null || true)"
    for pid in $pids; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 1 50); do
        [[ -z "$(ip netns pids "$NAME" 2>/dev/null || true)" ]] && break
        sleep 0.1
    done
    pids="$(ip netns pids "$NAME" 2>/dev/null || true)"
    for pid in $pids; do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$NAME" 2>/dev/null || true
    if mountpoint -q "$ROOT"; then
        umount "$ROOT" 2>/dev/null || umount -l "$ROOT" || log "warning: could not unmount $ROOT"
    fi
    mountpoint -q "$ROOT" || rm -rf "$RUN"
}

# Creating the namespace is the claim on NAME: it fails while another run of that name holds
# it, before this run has anything to clean up (so it cannot clean up the other run's).
ip netns add "$NAME" 2>/dev/null || { log "cannot create the namespace $NAME (another run of that name?)"; exit 1; }
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

mkdir -p "$RUN/upper" "$RUN/work" "$ROOT"
mount -t overlay overlay -o "lowerdir=$BASE,upperdir=$RUN/upper,workdir=$RUN/work" "$ROOT"
ip netns exec "$NAME" ip link set lo up
# IPv6 on loopback (::1) for the tests that cover IPv6 (a new namespace has it unless the
# host's defaults turn it off); without it those tests say they were skipped.
if [[ $(ip netns exec "$NAME" cat /proc/sys/net/ipv6/conf/lo/disable_ipv6 2>/dev/null) == 1 ]]; then
    ip netns exec "$NAME" sysctl -qw net.ipv6.conf.lo.disable_ipv6=0 || true
fi
ip netns exec "$NAME" ip -6 addr show dev lo 2>/dev/null | grep -q 'inet6 ::1/' ||
    log "no IPv6 on loopback in the namespace (kernel without IPv6?): IPv6 test cases will be skipped"
log "namespace $NAME, Asterisk root $ROOT (over $BASE), repo $REPO_DIR"

set +e
# A run of the test command must not start an Asterisk in the host's namespace by mistake: the
# command's own scripts/asterisk.sh uses the overlay.
(cd "$REPO_DIR" && ip netns exec "$NAME" env RTPVISOR_ASTERISK_ROOT="$ROOT" RTPVISOR_ISOLATED="$NAME" \
    CARGO_NET_OFFLINE=true "$@")
status=$?
set -e
# The command's Asterisk, stopped the orderly way first (it unmounts /proc in the overlay).
ip netns exec "$NAME" env RTPVISOR_ASTERISK_ROOT="$ROOT" bash "$REPO_DIR/scripts/asterisk.sh" stop >/dev/null 2>&1 || true
exit "$status"
