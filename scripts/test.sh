#!/usr/bin/env bash
# The test command (README, .ci/run): unit tests, then the end-to-end suite against a real
# Asterisk 22, then the docker compose deployment test (scripts/compose-test.sh: builds the
# images, runs the stack, places SIP calls into it) and the cluster test
# (scripts/cluster-test.sh). Needs root (debootstrap, chroot, ip netns, mount), the machine's
# Rust toolchain and a Docker engine with docker compose (v2) or docker-compose (v1); installs
# the rest. RTPVISOR_SKIP_COMPOSE_TEST=1 / RTPVISOR_SKIP_CLUSTER_TEST=1 skip the Docker tests
# (say so when you report a run). Arguments are passed to the cargo test run (e.g. a filter).
#
# Two runs on one machine (two checkouts, two terminals) do not meet: the unit and end-to-end
# tests run in a network namespace of their own beside an Asterisk of their own
# (scripts/isolated.sh: ports 8088, 8089, 5060 and the RTP range are the namespace's, Asterisk's
# state an overlay over the shared chroot), and the Docker tests, whose stacks have fixed
# project names, subnets and host ports, take turns under a machine-wide lock.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

[ "$(id -u)" -eq 0 ] || { echo "test.sh: must run as root (it builds and starts Asterisk in a chroot)" >&2; exit 1; }
command -v cargo >/dev/null || { echo "test.sh: cargo not found: install a Rust toolchain first" >&2; exit 1; }

if [ -n "${RTPVISOR_ISOLATED:-}" ]; then
  # Inside the run's namespace: its own Asterisk (stopped by isolated.sh at the end).
  bash scripts/asterisk.sh start
  # Doc tests, and each criterion benchmark run once as a test (it takes no --test-threads).
  cargo test --workspace --doc
  cargo test -p rtpvisor-actors --bench micro
  # Unit and end-to-end tests. They share this Asterisk's ports and the RTP range: one at a time.
  exec cargo test --workspace --features e2e --lib --bins --tests -- --test-threads=1 "$@"
fi

# On the host: what the namespace cannot fetch (it has no route out), built before entering.
command -v ip >/dev/null || { apt-get update && apt-get install -y iproute2; }
# The dashboard test (tests/e2e_dashboard.rs) opens the page in Debian's headless chromium.
command -v chromium >/dev/null || { apt-get update && apt-get install -y chromium; }
bash scripts/asterisk.sh build
cargo test --workspace --features e2e --no-run
cargo test -p rtpvisor-actors --bench micro --no-run
bash scripts/isolated.sh --name "rtpvisor-test-$$" -- bash scripts/test.sh "$@"

# The Docker stacks: one run at a time on this machine.
exec {dockerlock}>/var/lock/rtpvisor-docker-tests.lock
if ! flock -n "$dockerlock"; then
  echo "test.sh: another run holds the Docker tests (/var/lock/rtpvisor-docker-tests.lock); waiting" >&2
  flock "$dockerlock"
fi
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
