# scripts/lib/stack-test.sh: what the deployment tests (scripts/compose-test.sh,
# scripts/cluster-test.sh) share. Sourced, with STACK_TEST set to the test's name (the prefix of
# its log lines). Defines:
#   log MSG..., die MSG...      a line on stderr; die also exits 1
#   now, secs START [END]       a timestamp; seconds from START to END (default now), 2 decimals
#   step_done NAME START        logs a finished step and keeps it for the summary (TIMINGS)
#   wait_for LIMIT CMD...       runs CMD every 0.2 s until it succeeds; 1 after LIMIT seconds
#   need_pkg COMMAND PACKAGE    installs PACKAGE with apt-get unless COMMAND exists
#   COMPOSE (array), COMPOSE_VERSION: `docker compose` if it works, else `docker-compose`
#                               (RTPVISOR_COMPOSE overrides)
# and checks that it runs as root beside a Docker engine it can talk to.

T0="$(date +%s.%N)"
TIMINGS=()
log() { printf '%s: %s\n' "$STACK_TEST" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="${2:-$(now)}" 'BEGIN { printf "%.2f", b - a }'; }
step_done() { # name start
    local s
    s="$(secs "$2")"
    TIMINGS+=("$(printf '%-12s %7s s' "$1" "$s")")
    log "$1: done in $s s"
}

# Waits up to $1 seconds for the command "${@:2}" to succeed.
wait_for() {
    local limit="$1" t
    shift
    t="$(now)"
    until "$@" >/dev/null 2>&1; do
        awk -v a="$t" -v b="$(now)" -v l="$limit" 'BEGIN { exit !(b - a > l) }' && return 1
        sleep 0.2
    done
}

need_pkg() { # command package
    command -v "$1" >/dev/null && return 0
    log "installing $2 (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null || die "could not install $2"
}

[[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap, chroot, apt-get)"
command -v docker >/dev/null || die "docker not found: this test needs a Docker engine"
docker info >/dev/null 2>&1 || die "cannot talk to the Docker daemon (docker info failed)"

if [[ -n ${RTPVISOR_COMPOSE:-} ]]; then
    read -r -a COMPOSE <<<"$RTPVISOR_COMPOSE"
elif docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null; then
    COMPOSE=(docker-compose)
else
    die "neither 'docker compose' nor 'docker-compose' is installed"
fi
COMPOSE_VERSION="$("${COMPOSE[@]}" version 2>/dev/null | head -n 1 || true)"
