#!/usr/bin/env bash
# The chaos run (tests/e2e_chaos.rs) for as long as you like: calls of all three modes arrive
# and end all the time on the real Asterisk while faults are injected in a random order
# (WebSocket drop, silent link, ARI 500s and timeouts, rtpvisor kill -9 and restart, Asterisk
# restart, call-actor panic, UDP floods at the echo port and at a live call's port). Prints the
# invariants it checked and how long each fault took to settle.
#
#   scripts/chaos.sh [SECONDS]     default 600 (the test command runs it for 90 s)
#   RTPVISOR_CHAOS_SEED=N scripts/chaos.sh   replays a run's order of faults and calls
#
# Needs root (it starts the Asterisk chroot of scripts/asterisk.sh) and the Rust toolchain.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ "$(id -u)" -eq 0 ] || { echo "chaos.sh: must run as root (it starts Asterisk in a chroot)" >&2; exit 1; }
secs="${1:-600}"
case "$secs" in ''|*[!0-9]*) echo "chaos.sh: SECONDS must be a whole number, got '$secs'" >&2; exit 2 ;; esac
started_here=0
bash scripts/asterisk.sh status >/dev/null 2>&1 || started_here=1
bash scripts/asterisk.sh start
[ "$started_here" -eq 1 ] && trap 'bash scripts/asterisk.sh stop || true' EXIT
RTPVISOR_CHAOS_SECS="$secs" cargo test --test e2e_chaos -- --nocapture --test-threads=1
