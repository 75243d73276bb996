#!/usr/bin/env bash
# The test command (README, .ci/run): unit tests, then the end-to-end suite against a real
# Asterisk 22 that this script builds (once, cached) and starts, and stops again at the end;
# then the docker compose deployment test (scripts/compose-test.sh: builds the images, runs the
# stack, places SIP calls into it) and the cluster test (scripts/cluster-test.sh). Needs root (debootstrap, chroot), the machine's Rust
# toolchain and a Docker engine with docker compose (v2) or docker-compose (v1); installs the
# rest. RTPVISOR_SKIP_COMPOSE_TEST=1 skips the compose test (say so when you report a run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

[ "$(id -u)" -eq 0 ] || { echo "test.sh: must run as root (it builds and starts Asterisk in a chroot)" >&2; exit 1; }
command -v cargo >/dev/null || { echo "test.sh: cargo not found: install a Rust toolchain first" >&2; exit 1; }

started_here=0
if ! bash scripts/asterisk.sh status >/dev/null 2>&1; then
  started_here=1
fi
bash scripts/asterisk.sh start
if [ "$started_here" -eq 1 ]; then
  trap 'bash scripts/asterisk.sh stop || true' EXIT
fi

# Doc tests, and each criterion benchmark run once as a test (it takes no --test-threads).
cargo test --workspace --doc
cargo test -p rtpvisor-actors --bench micro
# The dashboard test (tests/e2e_dashboard.rs) opens the page in Debian's headless chromium.
command -v chromium >/dev/null || { apt-get update && apt-get install -y chromium; }
# Unit and end-to-end tests. They share Asterisk's fixed ports (8088, 5060) and the RTP
# range: one at a time.
cargo test --workspace --features e2e --lib --bins --tests -- --test-threads=1 "$@"

if [ "${RTPVISOR_SKIP_COMPOSE_TEST:-0}" = 1 ]; then
  echo "test.sh: RTPVISOR_SKIP_COMPOSE_TEST=1: the docker compose test was NOT run" >&2
else
  bash scripts/compose-test.sh
fi
# The cluster behind Kamailio (scripts/cluster-test.sh: 2 pairs, Prometheus, failover).
if [ "${RTPVISOR_SKIP_CLUSTER_TEST:-0}" = 1 ]; then
  echo "test.sh: RTPVISOR_SKIP_CLUSTER_TEST=1: the cluster test was NOT run" >&2
else
  bash scripts/cluster-test.sh
fi
