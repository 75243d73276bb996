#!/usr/bin/env bash
# scripts/compose-test.sh: proves the docker compose deployment on this machine's Docker engine.
# Part of the README's test command (scripts/test.sh runs it last).
#
# Steps, each timed and bounded:
#   1. images   scripts/docker-images.sh (base image debian:sid, vendored crates)
#   2. build    compose build (both images; Docker's layer cache makes a rebuild cheap)
#   3. up       compose up -d from nothing (no container or network of the test project
#               exists), then wait until both containers are healthy
#   4. probe    SIP calls from OUTSIDE the compose network: sipp on the host (in the chroot of
#               scripts/asterisk.sh, which shares the host's network) through the published SIP
#               port into `probe` mode (extension 101), answering with -rtp_echo; checks through
#               the published HTTP port that rtpvisor recorded the probes' round trips, and that
#               the calls ended cleanly (no live call, no port leased, Asterisk lists no channel
#               or bridge)
#   5. echo     the same into `echo` mode (extension 100, sipp plays its pcap); checks that
#               rtpvisor reflected it (echo-mode samples, packets out) and that Asterisk sent the
#               reflected media on to the caller (RTP statistics of the caller's channel)
#   6. operator `rtpvisor check --call` and `rtpvisor loadgen` run inside the rtpvisor container
#               with its environment (compose exec): every check ✓, 10 calls served, 0 failed,
#               nothing left in Asterisk
#   7. crash    rtpvisor's process killed (SIGKILL) with 4 live SIP calls: the restart policy
#               brings the container back and the new process adopts the 4 calls; 0 calls cut
#               (sipp ends every call itself and counts each successful), the media gap of each
#               (from the kill to its first probe back) within 2 s; a new call works
#      replace  the same with the container removed (`docker rm -f`) and a new one created by
#               `compose up -d`: the new container adopts the calls (same address, pinned)
#   8. down     compose down -v: no container, network or volume of the project is left
#
# Media path of the host caller: its SIP goes to 127.0.0.1:<published SIP port> (docker-proxy
# forwards it into the network; Asterisk sees the network's gateway as the source, which the
# `caller` endpoint's identify matches), its SDP offers the gateway address (the host's own
# address on the compose bridge) for RTP, so Asterisk's RTP reaches the host without any
# published RTP port, and the host reaches Asterisk's container address directly.
#
# It runs under its own project name and subnet with free host ports, so a stack started with
# the README's command (project rtpvisor, 172.31.250.0/24, ports 8088/5060/9090/4000) and the
# chroot Asterisk of the unit tests (127.0.0.1:8088/5060) are left alone.
#
# usage: scripts/compose-test.sh          (root: debootstrap, chroot)
# environment:
#   RTPVISOR_COMPOSE          compose command (default: `docker compose` if it works, else
#                             `docker-compose`)
#   RTPVISOR_TEST_PROJECT     compose project name (default rtpvisor-composetest)
#   RTPVISOR_TEST_SUBNET      the test network's /24 (default 172.31.251.0/24)
#   RTPVISOR_KEEP_STACK=1     leave the stack running at the end (debugging)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PROJECT="${RTPVISOR_TEST_PROJECT:-rtpvisor-composetest}"
SUBNET="${RTPVISOR_TEST_SUBNET:-172.31.251.0/24}"
GATEWAY="${SUBNET%.*}.1" # Docker gives a /24 network its .1 as gateway, the host's address on it
ARI_AUTH="${ARI_USER:-rtpvisor}:${ARI_PASSWORD:-rtpvisor}"

STACK_TEST=compose-test
source scripts/lib/stack-test.sh
need_pkg curl curl
need_pkg jq jq

# A host port nobody listens on (TCP and UDP), from a range away from the well-known ones.
used_ports() {
    cat /proc/net/tcp /proc/net/tcp6 /proc/net/udp /proc/net/udp6 2>/dev/null |
        awk '$2 ~ /:[0-9A-F]+$/ { split($2, a, ":"); print a[2] }' | while read -r hex; do echo $((16#$hex)); done | sort -un
}
USED="$(used_ports)"
PICKED=""
free_port() {
    local p
    for ((p = $1; p < $1 + 500; p++)); do
        if ! grep -qx "$p" <<<"$USED" && ! grep -qw "$p" <<<"$PICKED"; then
            PICKED="$PICKED $p"
            printf '%s\n' "$p"
            return 0
        fi
    done
    die "no free port from $1"
}
ARI_PORT="$(free_port 18088)"
SIP_PORT="$(free_port 15060)"
HTTP_PORT="$(free_port 19090)"
ECHO_PORT="$(free_port 14000)"
SIPP_PORT="$(free_port 15070)"
SIPP_MEDIA_PORT="$(free_port 26000)"
# 100 consecutive free ports for Asterisk's published RTP range.
free_range() {
    local s p ok
    for ((s = $1; s < $1 + 2000; s += 100)); do
        ok=1
        for ((p = s; p < s + 100; p++)); do
            grep -qx "$p" <<<"$USED" && { ok=0; break; }
        done
        [[ $ok == 1 ]] && { printf '%s-%s\n' "$s" "$((s + 99))"; return 0; }
    done
    die "no 100 free ports from $1"
}
RTP_RANGE="$(free_range 32000)"
# A documentation address (RFC 5737): the NAT settings must be in force for callers outside the
# compose network and leave this host's callers (from the gateway, inside it) alone.
EXTERNAL_ADDRESS=203.0.113.10

HTTP_TOKEN="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
export HTTP_TOKEN COMPOSE_PROJECT_NAME="$PROJECT" PUBLISH_ADDR=127.0.0.1 RTPVISOR_SUBNET="$SUBNET" RTPVISOR_ADDRESS="${SUBNET%.*}.10" \
    ARI_HOST_PORT="$ARI_PORT" SIP_HOST_PORT="$SIP_PORT" METRICS_HOST_PORT="$HTTP_PORT" \
    ECHO_HOST_PORT="$ECHO_PORT" ASTERISK_RTP_PORTS="$RTP_RANGE" ASTERISK_EXTERNAL_ADDRESS="$EXTERNAL_ADDRESS" \
    RTPVISOR_RTP_PORTS=10000-10023
compose() { "${COMPOSE[@]}" -p "$PROJECT" "$@"; }

ARI="http://127.0.0.1:$ARI_PORT/ari"
API="http://127.0.0.1:$HTTP_PORT"
ari() { curl -sf --max-time 5 -u "$ARI_AUTH" "$ARI$1"; }
api() { curl -sf --max-time 5 -H "Authorization: Bearer $HTTP_TOKEN" "$API$1"; }
metric() { api /metrics | jq -r "$1"; }

SIPP_PIDS=()
cleanup() {
    local rc=$?
    local pid
    for pid in "${SIPP_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    if [[ $rc -ne 0 ]]; then
        log "failed (exit $rc); last lines of the containers' logs:"
        compose logs --no-color --tail 40 >&2 2>/dev/null || true
    fi
    if [[ ${RTPVISOR_KEEP_STACK:-0} == 1 ]]; then
        log "RTPVISOR_KEEP_STACK=1: stack $PROJECT left running (API $API, ARI $ARI, SIP 127.0.0.1:$SIP_PORT)"
    else
        compose down -v --remove-orphans --timeout 10 >/dev/null 2>&1 || true
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

container() { compose ps -a -q "$1"; } # -a: v2 lists running containers only
health() { docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$(container "$1")"; }
healthy() { [[ "$(health asterisk)" == healthy && "$(health rtpvisor)" == healthy ]]; }

# sipp on the host: SIP from 127.0.0.1 to the published port, media offered on the gateway.
sipp() {
    bash scripts/asterisk.sh sipp -s "$1" "127.0.0.1:$SIP_PORT" -i 127.0.0.1 -p "$SIPP_PORT" \
        -mi "$GATEWAY" -mp "$SIPP_MEDIA_PORT" -min_rtp_port 26100 -max_rtp_port 26300 \
        -nostdin -timeout 90s -timeout_error "${@:2}"
}
# Nothing of rtpvisor's left: no live call, no leased port, no channel or bridge in Asterisk.
clean() {
    [[ "$(metric .active_channels)" == 0 && "$(api /ports | jq .leased)" == 0 ]] &&
        [[ "$(ari /channels | jq length)" == 0 && "$(ari /bridges | jq length)" == 0 ]]
}
probe_calls_up() { [[ "$(metric .modes.probe.calls_active)" -ge "$1" ]]; }
restart_count() { docker inspect --format '{{.RestartCount}}' "$(container rtpvisor)"; }
restarted_since() { [[ "$(restart_count)" -gt "$1" ]]; }
sipp_gone() { ! kill -0 "$1" 2>/dev/null; }
assert_clean() {
    wait_for "$1" clean || die "$2: not clean after $1 s: active=$(metric .active_channels) ports=$(api /ports | jq -c .leased) asterisk channels=$(ari /channels | jq -c '[.[].name]') bridges=$(ari /bridges | jq length)"
}

log "compose: ${COMPOSE[*]} ($COMPOSE_VERSION); project $PROJECT, subnet $SUBNET"
log "host ports: ARI $ARI_PORT, SIP $SIP_PORT/udp, HTTP $HTTP_PORT, echo $ECHO_PORT/udp, Asterisk RTP $RTP_RANGE/udp; sipp $SIPP_PORT, media $GATEWAY:$SIPP_MEDIA_PORT"
bash scripts/asterisk.sh build >/dev/null # sipp lives in the chroot (cached after the first build)

# 1-2. images
t="$(now)"
bash scripts/docker-images.sh
step_done images "$t"
t="$(now)"
compose build
step_done build "$t"

# 3. up from nothing
compose down -v --remove-orphans --timeout 10 >/dev/null 2>&1 || true
[[ -z "$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT")" ]] || die "containers of $PROJECT left from before"
proxies() { ps -C docker-proxy -o rss= 2>/dev/null | awk '{ n++; kb += $1 } END { printf "%d %d\n", n, kb / 1024 }'; }
read -r proxies_before _ <<<"$(proxies)"
t="$(now)"
compose up -d
wait_for 120 healthy || die "stack not healthy within 120 s (asterisk $(health asterisk), rtpvisor $(health rtpvisor))"
step_done up "$t"
[[ "$(api /ready | jq -r .ready)" == true ]] || die "/ready does not say ready"
# The API wants its token; the containers run with least privilege.
code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$API/metrics")"
[[ "$code" == 401 ]] || die "GET /metrics without the token answered $code, not 401"
rtpvisor_id="$(compose ps -q rtpvisor)"
[[ "$(docker inspect -f '{{.HostConfig.ReadonlyRootfs}} {{.HostConfig.CapDrop}} {{.HostConfig.SecurityOpt}}' "$rtpvisor_id")" == "true [ALL] [no-new-privileges:true]" ]] ||
    die "rtpvisor container is not read-only without capabilities: $(docker inspect -f '{{.HostConfig.ReadonlyRootfs}} {{.HostConfig.CapDrop}} {{.HostConfig.SecurityOpt}}' "$rtpvisor_id")"
log "API refuses requests without the token (401); rtpvisor runs read-only, no capabilities, no-new-privileges"
# The published ports, and the NAT settings the entrypoint wrote from the environment.
published="$(docker port "$(container asterisk)" | grep -c '/udp')"
[[ $published -eq 101 ]] || die "asterisk publishes $published UDP ports, expected 101 (SIP + $RTP_RANGE)"
transport="$(docker exec "$(container asterisk)" asterisk -rx 'pjsip show transport transport-udp')"
grep -q "external_media_address *: *$EXTERNAL_ADDRESS" <<<"$transport" || die "external_media_address not set: $transport"
grep -q "local_net *: *${SUBNET%/*}/" <<<"$transport" || die "local_net $SUBNET not set: $transport"
rtp_settings="$(docker exec "$(container asterisk)" asterisk -rx 'rtp show settings')"
grep -q "Port start: *${RTP_RANGE%-*}" <<<"$rtp_settings" || die "Asterisk's RTP range is not $RTP_RANGE: $rtp_settings"
read -r proxies_after proxies_mib <<<"$(proxies)"
log "asterisk: SIP + RTP $RTP_RANGE published ($((proxies_after - proxies_before)) docker-proxy processes started, all proxies together $proxies_mib MiB RSS), external address $EXTERNAL_ADDRESS for callers outside $SUBNET"

# 4. probe calls with -rtp_echo: 3 calls of 5 s at once
t="$(now)"
before="$(metric .modes.probe.latency.count)"
out="$(sipp 101 -sn uac -rtp_echo -d 5000 -m 3 -l 3 -r 3 2>&1)" || die "sipp into probe failed: $out"
samples=$(($(metric .modes.probe.latency.count) - before))
calls="$(metric .modes.probe.calls_total)"
lost="$(metric .modes.probe.lost)"
p50="$(metric .modes.probe.latency.p50_ms)"
p99="$(metric .modes.probe.latency.p99_ms)"
log "probe: $calls calls, $samples round trips recorded (lost $lost), p50 $p50 ms, p99 $p99 ms"
[[ $calls -ge 3 ]] || die "probe: rtpvisor saw $calls calls, expected 3"
# 3 calls x ~5 s x 50 probes/s: at least half of it must have come back.
[[ $samples -ge 375 ]] || die "probe: only $samples round trips recorded"
assert_clean 10 probe
step_done probe "$t"

# 5. echo calls: sipp plays its pcap (G.711 a-law, ~8 s) into echo mode
t="$(now)"
before="$(metric .modes.echo.latency.count)"
sipp 100 -sn uac_pcap -m 1 -l 1 >/tmp/rtpvisor-compose-sipp-echo.log 2>&1 &
SIPP_PIDS+=($!)
echo_pid=$!
caller_tx=0
for _ in $(seq 1 60); do # while the call lasts: what Asterisk sent to the caller
    id="$(ari /channels | jq -r '[.[] | select(.name | startswith("PJSIP/"))][0].id // empty')" || id=""
    if [[ -n $id ]]; then
        tx="$(ari "/channels/$id/rtp_statistics" | jq -r '.txcount // 0')" || tx=0
        [[ $tx -gt $caller_tx ]] && caller_tx=$tx
        [[ $caller_tx -ge 100 ]] && break
    fi
    sleep 0.25
done
wait "$echo_pid" || die "sipp into echo failed: $(cat /tmp/rtpvisor-compose-sipp-echo.log)"
SIPP_PIDS=()
samples=$(($(metric .modes.echo.latency.count) - before))
pin="$(metric .modes.echo.packets_in)"
pout="$(metric .modes.echo.packets_out)"
jitter="$(metric .modes.echo.jitter_ms_avg)"
log "echo: $samples packets measured, $pin in / $pout reflected, jitter $jitter ms; Asterisk sent $caller_tx packets on to the caller"
[[ $samples -ge 100 ]] || die "echo: only $samples samples recorded"
[[ $pout -ge 100 && $pout -ge $((pin * 9 / 10)) ]] || die "echo: $pin packets in but $pout reflected"
[[ $caller_tx -ge 100 ]] || die "echo: the reflected media did not reach the caller (Asterisk txcount $caller_tx)"
assert_clean 10 echo
step_done echo "$t"

# 6. the operator commands inside the rtpvisor container, with the service's own environment
#    (`compose exec rtpvisor rtpvisor check|loadgen`, as the README says): check passes every
#    line and places one probe call; loadgen places 10 calls through Asterisk, collects all of
#    them from the service and exits 0 under its SLOs, nothing of them left in Asterisk.
t="$(now)"
out="$(compose exec -T rtpvisor rtpvisor check --call Local/echo@rtpvisor-test 2>&1)" ||
    die "rtpvisor check in the container exited $?: $out"
! grep -q '✗' <<<"$out" || die "rtpvisor check in the container: $out"
grep -q '^✓ probe call to Local/echo@rtpvisor-test: setup' <<<"$out" || die "rtpvisor check --call placed no call: $out"
log "check in the container: $(grep -c '^✓' <<<"$out") lines ✓; $(grep '^✓ probe call' <<<"$out")"
json="$(compose exec -T rtpvisor rtpvisor loadgen --calls 10 --rate 5 --concurrency 5 --duration 2 \
    --endpoint Local/echo@rtpvisor-test --mode probe --max-failed 0 --max-loss 0.01 --json 2>/dev/null)" ||
    die "rtpvisor loadgen in the container exited $?: $json"
read -r placed served failed left p99 mos <<<"$(jq -r '.summary | "\(.placed) \(.served) \(.failed) \(.left_channels + .left_bridges) \(.latency_ms.p99) \(.mos_mean * 100 | round / 100)"' <<<"$json")"
log "loadgen in the container: placed $placed, served $served, failed $failed, RTT p99 $p99 ms, MOS $mos, left in Asterisk $left"
[[ $placed -eq 10 && $served -eq 10 && $failed -eq 0 && $left -eq 0 ]] || die "loadgen in the container: $(jq -c .summary <<<"$json")"
assert_clean 10 "operator commands"
step_done operator "$t"

# 7. rtpvisor dies with 4 live probe calls of 20 s, twice:
#    crash    the process is killed (SIGKILL from the host, as the kernel's OOM killer or a
#             fatal fault would): the container's restart policy must bring it back.
#    replace  the container is removed (`docker rm -f`: SIGKILL, then gone) and `compose up -d`
#             creates a new one, as an operator replacing it would; rtpvisor's address is pinned
#             in the compose file, so Asterisk's media reaches the new container.
#    Either way the new process must adopt the 4 calls at its ARI connect: their probes come
#    back again, sipp ends every call itself with its own BYE and counts 4 successful calls (a
#    BYE from our side would count as failed), and nothing is left at the end.
kill_and_adopt() {
    local how="$1" t sipp_pid restarts_before media tk_ms restarted back adopted gaps worst by
    t="$(now)"
    sipp 101 -sn uac -rtp_echo -d 20000 -m 4 -l 4 -r 4 >"/tmp/rtpvisor-compose-sipp-$how.log" 2>&1 &
    sipp_pid=$!
    SIPP_PIDS+=("$sipp_pid")
    wait_for 20 probe_calls_up 4 || die "$how: the 4 calls did not come up"
    sleep 1
    restarts_before="$(restart_count)"
    media="$(ari /channels | jq '[.[] | select(.name | startswith("UnicastRTP/"))] | length')"
    tk_ms="$(date +%s%3N)"
    case "$how" in
        crash) kill -KILL "$(docker inspect --format '{{.State.Pid}}' "$(container rtpvisor)")" ;;
        replace) docker rm -f "$(container rtpvisor)" >/dev/null ;;
    esac
    log "$how: rtpvisor killed with 4 live calls ($media externalMedia channels in Asterisk)"
    if [[ $how == replace ]]; then
        compose up -d --no-deps rtpvisor
        by="a new container (compose up -d)"
    else
        wait_for 10 restarted_since "$restarts_before" ||
            die "$how: rtpvisor was not restarted (restart count $restarts_before, state $(docker inspect --format '{{.State.Status}}' "$(container rtpvisor)"))"
        by="its restart policy"
    fi
    restarted="$(( $(date +%s%3N) - tk_ms ))"
    adopted_all() { [[ "$(api /channels | jq '[.[] | select(.adopted_at_ms != null and .media.first_packet_ms_ago != null)] | length')" == 4 ]]; }
    wait_for 20 adopted_all || die "$how: the 4 calls were not adopted: $(api /channels | jq -c '[.[] | {channel_id, adopted_at_ms, first: .media.first_packet_ms_ago}]')"
    # The gap of each call: from the kill to its first probe back in the new process.
    gaps="$(api /channels | jq -c --argjson now "$(date +%s%3N)" --argjson k "$tk_ms" '[.[] | $now - .media.first_packet_ms_ago - $k] | sort')"
    worst="$(jq 'max' <<<"$gaps")"
    back="$(( $(date +%s%3N) - tk_ms ))"
    reconciled() { [[ "$(metric .reconcile.runs)" -ge 1 ]]; }
    wait_for 10 reconciled || die "$how: the new process's reconciliation was not reported"
    adopted="$(metric .reconcile.adopted_calls)"
    log "$how: back by $by after $restarted ms; $adopted calls adopted, media gap per call since the kill $gaps ms; all seen adopted after $back ms"
    [[ $adopted -eq 4 && "$(metric .reconcile.orphans_cleaned)" -eq 0 ]] || die "$how: adopted $adopted, cleaned $(metric .reconcile.orphans_cleaned): $(api /metrics | jq -c .reconcile)"
    if [[ $how == crash ]]; then
        [[ $worst -le 2000 ]] || die "$how: a call's media came back $worst ms after the kill (budget 2000 ms): $gaps"
    fi
    wait_for 40 sipp_gone "$sipp_pid" || die "$how: the sipp calls did not end"
    wait "$sipp_pid" || die "$how: sipp failed (a call was cut?): $(tail -5 "/tmp/rtpvisor-compose-sipp-$how.log")"
    SIPP_PIDS=()
    [[ "$(metric .ended.hangup)" -eq 4 && "$(metric .failed_calls)" -eq 0 ]] || die "$how: ended $(api /metrics | jq -c .ended)"
    assert_clean 10 "$how: after the adopted calls"
    log "$how: 0 calls cut: sipp counted 4 successful calls, each ended by its BYE"
    # A new call after the restart.
    out="$(sipp 101 -sn uac -rtp_echo -d 3000 -m 1 -l 1 2>&1)" || die "$how: sipp after the restart failed: $out"
    assert_clean 10 "$how: after the restart"
    step_done "$how" "$t"
}
kill_and_adopt crash
kill_and_adopt replace

# 8. down
t="$(now)"
compose down -v --remove-orphans --timeout 20
left_c="$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" | wc -l)"
left_n="$(docker network ls -q --filter "label=com.docker.compose.project=$PROJECT" | wc -l)"
left_v="$(docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT" | wc -l)"
[[ $left_c -eq 0 && $left_n -eq 0 && $left_v -eq 0 ]] ||
    die "down left $left_c containers, $left_n networks, $left_v volumes of $PROJECT"
step_done down "$t"

log "passed in $(secs "$T0") s ($COMPOSE_VERSION):"
printf '  %s\n' "${TIMINGS[@]}" >&2
