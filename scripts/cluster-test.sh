#!/usr/bin/env bash
# scripts/cluster-test.sh: proves the cluster deployment (docker-compose.cluster.yml: Kamailio in
# front of 2 Asterisk + rtpvisor pairs, Prometheus) on this machine's Docker engine. Every call
# is SIP from the host through Kamailio's published port (sipp, scripts/cluster-uac.xml), with
# media between the host and the pair that took it.
#
# Steps, each timed and bounded:
#   1. images       scripts/docker-images.sh, compose build (all four images)
#   2. up           compose up -d from nothing, wait until every container is healthy and
#                   Kamailio sees both pairs active; the compose file is scripts/cluster-compose.sh's
#   3. spread       40 calls across the modes (16 probe, 16 echo, 8 shared-echo): none fails;
#                   each pair takes 30-70 %; the instances' totals add up to 40, every call ended
#                   normally and had media (no no_media end; probe round trips, echo samples,
#                   shared-echo packets counted); the README's PromQL queries, asked of the
#                   cluster's Prometheus, agree with the instances' own /metrics; every query
#                   of the Grafana dashboard docker/grafana/rtpvisor.json is valid and answers
#   4. capacity     48 probe calls of 10 s at once, both pools (24 each) full: none fails; CPU
#                   time of every container over the step, per call (cgroup accounting)
#   5. kill         rtpvisor of pair 1 killed (SIGKILL of its process) while calls of 20 s arrive
#                   at 2/s: no call fails and none is cut (every call ends by the caller's BYE);
#                   pair 1 is taken out, restarted by its restart policy, the new process adopts
#                   the killed one's calls (the media gap of each printed) and takes calls again
#                   (each step timed)
#   6. overflow     pair 1's pool cut to 4 ports (RTPVISOR1_RTP_PORTS at `up`), 20 long calls:
#                   pair 1 fills, its refusals (503 cause 34) go to pair 2 without pair 1 being
#                   taken out; no call fails
#   7. asterisk     pair 2's Asterisk stopped while calls arrive: every new call goes to pair 1
#                   within the detection time, none fails; started again, pair 2 takes calls again
#   8. down         compose down -v: no container, network or docker-proxy of the project left
#
# Host ports are the cluster's own (fixed by the compose file: SIP 5080/udp, rtpvisor APIs 9091
# and 9092, Prometheus 9099; the test stops if one is taken); its project name and subnet are its
# own, so a stack of docker-compose.yml (and its compose-test.sh) can run beside it. All traffic
# goes to 127.0.0.1 and to the stack's containers.
#
# usage: scripts/cluster-test.sh          (root: debootstrap for the base image, apt-get for sipp)
# environment:
#   RTPVISOR_COMPOSE          compose command (default: `docker compose` if it works, else
#                             `docker-compose`)
#   RTPVISOR_TEST_PROJECT     compose project name (default rtpvisor-clustertest)
#   RTPVISOR_TEST_CLUSTER_NET first three octets of the test network's /24 (default 172.31.241)
#   RTPVISOR_KEEP_STACK=1     leave the stack running at the end (debugging)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PROJECT="${RTPVISOR_TEST_PROJECT:-rtpvisor-clustertest}"
NET="${RTPVISOR_TEST_CLUSTER_NET:-172.31.241}"
GATEWAY="$NET.1" # the host's address on the cluster network: sipp's media address
FILE=docker-compose.cluster.yml
SIP_PORT=5080
PROM="http://127.0.0.1:9099"

STACK_TEST=cluster-test
source scripts/lib/stack-test.sh
FIGURES=()
figure() { FIGURES+=("$*"); log "$*"; }
need_pkg curl curl
need_pkg jq jq
need_pkg sipp sip-tester
PCAP=/usr/share/sip-tester/g711a.pcap
[[ -r $PCAP ]] || PCAP="$(dpkg -L sip-tester | grep -m1 'g711a.pcap$')" || die "sip-tester ships no g711a.pcap"

# The cluster's host ports must be free (another cluster stack would hold them).
in_use() { # port proto
    local hex
    hex="$(printf '%04X' "$1")"
    cat "/proc/net/$2" "/proc/net/${2}6" 2>/dev/null | awk -v h=":$hex" '$2 ~ h"$" { f = 1 } END { exit !f }'
}
in_use "$SIP_PORT" udp && die "UDP port $SIP_PORT is taken (another cluster stack?): the cluster publishes Kamailio's SIP there"
for p in 9091 9092 9099; do
    in_use "$p" tcp && die "TCP port $p is taken (another cluster stack?): the cluster publishes it"
done
# sipp's own ports on the host (signalling on 127.0.0.1, media on the gateway address).
SIPP_SIG=(25071 25072 25073)
SIPP_MEDIA=(26000 26010 26020)

HTTP_TOKEN="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
export HTTP_TOKEN COMPOSE_PROJECT_NAME="$PROJECT" PUBLISH_ADDR=127.0.0.1 CLUSTER_NET="$NET" \
    RTPVISOR_IMAGE_TAG=clustertest PROMETHEUS_SCRAPE_INTERVAL=2s
compose() { "${COMPOSE[@]}" -p "$PROJECT" -f "$FILE" "$@"; }

WORK="$(mktemp -d /tmp/rtpvisor-cluster-test.XXXXXX)"
SIPP_PIDS=()
cleanup() {
    local rc=$? pid
    for pid in "${SIPP_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    if [[ $rc -ne 0 ]]; then
        log "failed (exit $rc); last lines of the containers' logs:"
        compose logs --no-color --tail 30 >&2 2>/dev/null || true
        log "sipp logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    if [[ ${RTPVISOR_KEEP_STACK:-0} == 1 ]]; then
        log "RTPVISOR_KEEP_STACK=1: stack $PROJECT left running (SIP 127.0.0.1:$SIP_PORT, APIs 9091/9092, Prometheus 9099)"
    else
        compose down -v --remove-orphans --timeout 10 >/dev/null 2>&1 || true
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

container() { compose ps -q "$1"; }
health() { docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$(container "$1")" 2>/dev/null; }
SERVICES=(kamailio prometheus asterisk1 rtpvisor1 asterisk2 rtpvisor2)
all_healthy() {
    local s
    for s in "${SERVICES[@]}"; do [[ "$(health "$s")" == healthy ]] || return 1; done
}
api() { curl -sf --max-time 5 -H "Authorization: Bearer $HTTP_TOKEN" "http://127.0.0.1:$((9090 + $1))$2"; }
metric() { api "$1" /metrics | jq -r "$2"; }
restart_count() { docker inspect --format '{{.RestartCount}}' "$(container "rtpvisor$1")"; }
# Kamailio's view of pair $1: its dispatcher flags (AP active, IP inactive, ...).
ds_flags() {
    docker exec "$(container kamailio)" kamcmd -s unix:/run/kamailio/kamailio_ctl dispatcher.list 2>/dev/null |
        awk -v want="duid=pair$1" '/FLAGS:/ { f = $2 } /BODY:/ && $2 == want { print f; exit }'
}
ds_active() { [[ "$(ds_flags "$1")" == A* ]]; }
ds_inactive() { [[ "$(ds_flags "$1")" == I* ]]; }
asterisk_channels() { docker exec "$(container "asterisk$1")" asterisk -rx 'core show channels count' | awk '/active channel/ { print $1 }'; }
# Prometheus instant query: the first result's value, or "none".
promq() { curl -sf --max-time 5 --data-urlencode "query=$1" "$PROM/api/v1/query" | jq -r '.data.result[0].value[1] // "none"'; }

# sipp NAME SERVICE CALL_MS MEDIA SLOT ARGS...: one sipp run through Kamailio, in the background
# ($! is its pid). MEDIA: echo (-rtp_echo: reflects what reaches it, for probe mode) or pcap
# (plays sipp's PCMA pcap, for echo and shared-echo mode). SLOT picks its host ports.
sipp_start() {
    local name="$1" service="$2" call_ms="$3" media="$4" slot="$5" pt codec action extra=()
    shift 5
    if [[ $media == echo ]]; then
        pt=0 codec=PCMU action="" extra=(-rtp_echo)
    else
        pt=8 codec=PCMA
        action="<nop><action><exec play_pcap_audio=\"$PCAP\"/></action></nop>"
    fi
    sed -e "s|@CALL_MS@|$call_ms|g" -e "s|@PT@|$pt|g" -e "s|@CODEC@|$codec|g" -e "s|@MEDIA@|$action|" \
        scripts/cluster-uac.xml >"$WORK/$name.xml"
    sipp -sf "$WORK/$name.xml" -s "$service" "127.0.0.1:$SIP_PORT" -i 127.0.0.1 -p "${SIPP_SIG[$slot]}" \
        -mi "$GATEWAY" -mp "${SIPP_MEDIA[$slot]}" -nostdin -timeout 150s -timeout_error \
        -trace_logs -log_file "$WORK/$name.log" -trace_err -error_file "$WORK/$name.err" \
        -trace_stat -stf "$WORK/$name.csv" -fd 1 \
        "${extra[@]}" "$@" >"$WORK/$name.out" 2>&1 &
    SIPP_PIDS+=($!)
}
# sipp_wait NAME PID LIMIT: waits for a sipp run; dies unless every call succeeded.
sipp_wait() {
    local name="$1" pid="$2" limit="$3" rc=0
    wait_for "$limit" sipp_gone "$pid" || die "$name: sipp still running after $limit s"
    wait "$pid" || rc=$?
    [[ $rc -eq 0 ]] || die "$name: sipp exit $rc (some calls failed): $(sipp_counts "$name"); $(tail -n 5 "$WORK/$name.out" | tr '\n' ' ')"
}
sipp_gone() { ! kill -0 "$1" 2>/dev/null; }
# "successful failed" from the last line of sipp's statistics file.
sipp_counts() {
    awk -F';' 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
        END { printf "%s %s\n", $col["SuccessfulCall(C)"], $col["FailedCall(C)"] }' "$WORK/$1.csv" 2>/dev/null
}
peer_byes() { grep -c '^peer-bye ' "$WORK/$1.log" 2>/dev/null || true; }

log "compose: ${COMPOSE[*]} ($COMPOSE_VERSION); project $PROJECT, network $NET.0/24; sipp $(sipp -v 2>&1 | grep -o 'v[0-9.]*' | head -n 1)"
diff -q <(bash scripts/cluster-compose.sh 2) "$FILE" >/dev/null ||
    die "$FILE is not what scripts/cluster-compose.sh 2 writes: regenerate it (scripts/cluster-compose.sh 2 >$FILE)"

# 1. images
t="$(now)"
bash scripts/docker-images.sh
compose build
step_done images "$t"

# 2. up from nothing
compose down -v --remove-orphans --timeout 10 >/dev/null 2>&1 || true
[[ -z "$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT")" ]] || die "containers of $PROJECT left from before"
t="$(now)"
compose up -d
wait_for 150 all_healthy || die "stack not healthy within 150 s: $(for s in "${SERVICES[@]}"; do printf '%s=%s ' "$s" "$(health "$s")"; done)"
wait_for 20 ds_active 1 && wait_for 20 ds_active 2 || die "Kamailio does not see both pairs active: pair1 $(ds_flags 1), pair2 $(ds_flags 2)"
step_done up "$t"
targets="$(curl -sf --max-time 5 "$PROM/api/v1/targets" | jq -r '[.data.activeTargets[] | "\(.labels.job)/\(.labels.instance)=\(.health)"] | sort | join(" ")')"
log "prometheus targets: $targets"

# 3. 40 calls across the modes
t="$(now)"
sipp_start spread-probe 101 4000 echo 0 -m 16 -l 16 -r 4
p_probe=$!
sipp_start spread-echo 100 9000 pcap 1 -m 16 -l 16 -r 4
p_echo=$!
sipp_start spread-shared 102 9000 pcap 2 -m 8 -l 8 -r 2
p_shared=$!
sipp_wait spread-probe "$p_probe" 60
sipp_wait spread-echo "$p_echo" 60
sipp_wait spread-shared "$p_shared" 60
SIPP_PIDS=()
sleep 0.5 # the instances' live figures are at most 250 ms old
c1="$(metric 1 .total_channels)"
c2="$(metric 2 .total_channels)"
figure "spread: 40 calls (16 probe, 16 echo, 8 shared-echo): pair 1 took $c1, pair 2 took $c2; refused: pair 1 $(metric 1 .rejected_calls), pair 2 $(metric 2 .rejected_calls)"
[[ $((c1 + c2)) -eq 40 ]] || die "spread: the instances count $c1 + $c2 calls, not 40"
for c in "$c1" "$c2"; do
    [[ $c -ge 12 && $c -le 28 ]] || die "spread: a pair took $c of 40 calls (outside 30-70 %)"
done
for mode in probe:16 echo:16 shared-echo:8; do
    n=$(($(metric 1 ".modes[\"${mode%:*}\"].calls_total") + $(metric 2 ".modes[\"${mode%:*}\"].calls_total")))
    [[ $n -eq ${mode#*:} ]] || die "spread: ${mode%:*} calls counted $n, expected ${mode#*:}"
done
for i in 1 2; do
    [[ "$(metric "$i" .failed_calls)" == 0 && "$(metric "$i" .ended.no_media)" == 0 ]] ||
        die "spread: pair $i: failed $(metric "$i" .failed_calls), ended without media $(metric "$i" .ended.no_media)"
    [[ "$(metric "$i" .active_channels)" == 0 ]] || die "spread: pair $i still has live calls"
done
# Media of every call: ~50 packets/s each way; at least a third of it per call, per mode.
probe_rt=$(($(metric 1 .modes.probe.latency.count) + $(metric 2 .modes.probe.latency.count)))
echo_samples=$(($(metric 1 .modes.echo.latency.count) + $(metric 2 .modes.echo.latency.count)))
shared_pkts=$(($(metric 1 .echo.packets) + $(metric 2 .echo.packets)))
figure "spread: media: $probe_rt probe round trips, $echo_samples echo-mode samples, $shared_pkts shared-echo packets; p99 pair 1 $(metric 1 .p99_latency) ms, pair 2 $(metric 2 .p99_latency) ms"
[[ $probe_rt -ge $((16 * 60)) ]] || die "spread: only $probe_rt probe round trips for 16 calls of 4 s"
[[ $echo_samples -ge $((16 * 100)) ]] || die "spread: only $echo_samples echo samples for 16 calls"
[[ $shared_pkts -ge $((8 * 100)) ]] || die "spread: only $shared_pkts shared-echo packets for 8 calls"

# Prometheus against the instances' own /metrics (after the scrape that follows the calls).
prom_calls() { [[ "$(promq 'sum(rtpvisor_calls_total)')" == 40 && "$(promq 'sum(rtpvisor_latency_seconds_count)')" == "$1" ]]; }
json_samples=$(($(metric 1 .total_latencies) + $(metric 2 .total_latencies)))
wait_for 30 prom_calls "$json_samples" || die "Prometheus: sum(rtpvisor_calls_total) = $(promq 'sum(rtpvisor_calls_total)'), samples $(promq 'sum(rtpvisor_latency_seconds_count)') (instances: 40, $json_samples)"
sum_json() { echo $(($(metric 1 "$1") + $(metric 2 "$1"))); }
same() { awk -v a="$1" -v b="$2" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 1e-9 + 1e-6 * (b < 0 ? -b : b)) }'; }
check_query() { # what query expected
    local got
    got="$(promq "$2")"
    [[ $got != none ]] || die "Prometheus: $1: $2 has no answer"
    same "$got" "$3" || die "Prometheus: $1: $2 = $got, the instances say $3"
    log "prometheus: $1 = $got (instances: $3): $2"
}
check_query "cluster calls" 'sum(rtpvisor_calls_total)' "$(sum_json .total_channels)"
check_query "calls by mode (probe)" 'sum by (mode) (rtpvisor_calls_total{mode="probe"})' 16
check_query "instances" 'count(count by (instance) (rtpvisor_calls_total))' 2
check_query "rejected calls" 'sum(rtpvisor_calls_rejected_total)' "$(sum_json .rejected_calls)"
check_query "failed calls" 'sum(rtpvisor_calls_failed_total)' "$(sum_json .failed_calls)"
lost=$(($(sum_json .modes.echo.lost) + $(sum_json .modes.probe.lost)))
expected=$(($(sum_json .modes.echo.expected) + $(sum_json .modes.probe.expected)))
late=$(($(sum_json .modes.echo.late) + $(sum_json .modes.probe.late)))
check_query "loss" 'sum(rtpvisor_packets_lost_total) / sum(rtpvisor_packets_expected_total)' "$(awk -v a="$lost" -v b="$expected" 'BEGIN { printf "%.12g", a / b }')"
check_query "late" 'sum(rtpvisor_packets_late_total) / sum(rtpvisor_latency_seconds_count)' "$(awk -v a="$late" -v b="$json_samples" 'BEGIN { printf "%.12g", a / b }')"
# p99 of the cluster from the summed buckets: it lies between the instances' own p99s (within
# the bucket that holds it, as histogram_quantile interpolates inside a bucket).
p99="$(promq 'histogram_quantile(0.99, sum by (le) (rtpvisor_latency_seconds_bucket))')"
p99a="$(metric 1 .p99_latency)"
p99b="$(metric 2 .p99_latency)"
bounds="0 0.00005 0.0001 0.00025 0.0005 0.001 0.0025 0.005 0.01 0.02 0.04 0.06 0.08 0.1 0.15 0.2 0.3 0.5 1 2"
awk -v q="$p99" -v a="$p99a" -v b="$p99b" -v bs="$bounds" 'BEGIN {
    n = split(bs, B, " "); lo = 0; hi = 1e9
    for (i = 2; i <= n; i++) if (q <= B[i] + 1e-12) { lo = B[i - 1]; hi = B[i]; break }
    mn = (a < b ? a : b) / 1000; mx = (a > b ? a : b) / 1000
    exit !(lo <= mx * 1.001 && hi >= mn * 0.999) }' ||
    die "Prometheus: cluster p99 $p99 s is not in a bucket that overlaps the instances' p99s ($p99a ms, $p99b ms)"
figure "prometheus: cluster p99 $p99 s (histogram_quantile over both instances' buckets); instances' own p99 $p99a ms and $p99b ms"
# The README's rate forms (dashboards) answer with numbers.
for q in 'sum(rate(rtpvisor_calls_total[1m]))' 'sum(rate(rtpvisor_calls_rejected_total[1m])) + sum(rate(rtpvisor_calls_failed_total[1m]))' \
    'sum(rate(rtpvisor_packets_lost_total[1m])) / sum(rate(rtpvisor_packets_expected_total[1m]))' \
    'sum(rate(rtpvisor_packets_late_total[1m])) / sum(rate(rtpvisor_latency_seconds_count[1m]))' \
    'histogram_quantile(0.99, sum by (le) (rate(rtpvisor_latency_seconds_bucket[1m])))'; do
    v="$(promq "$q")"
    [[ $v =~ ^[0-9.e+-]+$|^NaN$ ]] || die "Prometheus: $q answered '$v'"
    log "prometheus: $q = $v"
done
[[ "$(promq 'sum(rate(rtpvisor_calls_total[1m]))')" != 0 ]] || die "Prometheus: no call rate"
kam="$(promq 'kamailio_tmx_UAS_transactions')"
[[ $kam != none ]] || die "Prometheus does not scrape Kamailio (kamailio_tmx_UAS_transactions: $kam)"
log "prometheus: Kamailio scraped (tmx UAS transactions $kam)"
# The Grafana dashboard (docker/grafana/rtpvisor.json): each of its queries, with Grafana's
# variables filled in as Grafana would ($instance: every instance its template query lists,
# $__rate_interval: 1m), is valid PromQL for this Prometheus and answers at least one number
# (not NaN) now that calls have run. Every panel and query takes its datasource from the
# import-time input ${DS_PROMETHEUS}.
DASH=docker/grafana/rtpvisor.json
jq -e '[.. | objects | select(has("datasource")) | .datasource.uid] | length > 0 and all(. == "${DS_PROMETHEUS}")' "$DASH" >/dev/null ||
    die "Grafana dashboard: a datasource other than \${DS_PROMETHEUS} in $DASH"
var_query="$(jq -r '.templating.list[] | select(.name == "instance") | .definition' "$DASH")"
[[ $var_query =~ ^label_values\(([a-z_]+),\ *([a-z_]+)\)$ ]] || die "Grafana dashboard: variable instance is not label_values(metric, label): $var_query"
instances="$(curl -sf --max-time 5 -G --data-urlencode "match[]=${BASH_REMATCH[1]}" "$PROM/api/v1/label/${BASH_REMATCH[2]}/values" | jq -r '.data | join("|")')"
[[ $instances == "rtpvisor1:9090|rtpvisor2:9090" ]] || die "Grafana dashboard: $var_query lists '$instances', not the two rtpvisors"
dash_queries=0
while IFS= read -r json_expr; do
    expr="$(jq -r . <<<"$json_expr")"
    q="${expr//\$__rate_interval/1m}"
    q="${q//\$instance/$instances}"
    [[ $q != *'$'* ]] || die "Grafana dashboard: a variable the test does not fill in: $expr"
    answer="$(curl -s --max-time 5 --data-urlencode "query=$q" "$PROM/api/v1/query")"
    [[ "$(jq -r .status <<<"$answer")" == success ]] ||
        die "Grafana dashboard: invalid query: $expr: $(jq -r '.error // "no answer"' <<<"$answer" 2>/dev/null || echo "$answer")"
    [[ "$(jq '[.data.result[] | .value[1] | select(. != "NaN")] | length' <<<"$answer")" -gt 0 ]] ||
        die "Grafana dashboard: no data for: $expr (as run: $q): $(jq -c .data.result <<<"$answer")"
    dash_queries=$((dash_queries + 1))
done < <(jq -c '.. | objects | select(has("expr")) | .expr' "$DASH")
[[ $dash_queries -ge 20 ]] || die "Grafana dashboard: only $dash_queries queries found in $DASH"
figure "grafana: all $dash_queries queries of $DASH valid and answering data (instances $instances)"
step_done spread "$t"

# 4. capacity: both pools full (24 + 24 calls of 10 s), CPU per call
cpu_ns() { # service: CPU time of its container so far, ns (cgroup v1 or v2; 0 if unknown)
    local id
    id="$(docker inspect --format '{{.Id}}' "$(container "$1")")"
    if [[ -r /sys/fs/cgroup/cpuacct/docker/$id/cpuacct.usage ]]; then
        cat "/sys/fs/cgroup/cpuacct/docker/$id/cpuacct.usage"
    elif [[ -r /sys/fs/cgroup/system.slice/docker-$id.scope/cpu.stat ]]; then
        awk '$1 == "usage_usec" { printf "%.0f\n", $2 * 1000 }' "/sys/fs/cgroup/system.slice/docker-$id.scope/cpu.stat"
    else
        echo 0
    fi
}
t="$(now)"
CPU_SERVICES=(kamailio asterisk1 asterisk2 rtpvisor1 rtpvisor2)
declare -A cpu0
for s in "${CPU_SERVICES[@]}"; do cpu0[$s]="$(cpu_ns "$s")"; done
b1="$(metric 1 .total_channels)"
b2="$(metric 2 .total_channels)"
sipp_start capacity 101 10000 echo 0 -m 48 -l 48 -r 12
p_cap=$!
max1=0 max2=0
for _ in $(seq 1 100); do
    a="$(metric 1 .active_channels)"; [[ $a -gt $max1 ]] && max1=$a
    a="$(metric 2 .active_channels)"; [[ $a -gt $max2 ]] && max2=$a
    sipp_gone "$p_cap" && break
    sleep 0.25
done
sipp_wait capacity "$p_cap" 60
SIPP_PIDS=()
call_s=480 # 48 calls of 10 s
cpu_line=""
for s in "${CPU_SERVICES[@]}"; do
    cpu_line="$cpu_line $s $(awk -v a="${cpu0[$s]}" -v b="$(cpu_ns "$s")" -v c="$call_s" 'BEGIN { printf "%.1f ms/call-s (%.2f %%/call)", (b - a) / 1e6 / c, (b - a) / 1e7 / c }'),"
done
took1=$(($(metric 1 .total_channels) - b1))
took2=$(($(metric 2 .total_channels) - b2))
figure "capacity: 48 calls of 10 s: pair 1 took $took1 (at most $max1 at once), pair 2 took $took2 (at most $max2 at once), 0 failed; CPU per concurrent call:${cpu_line%,}"
[[ $((took1 + took2)) -eq 48 && $max1 -le 24 && $max2 -le 24 ]] || die "capacity: $took1 + $took2 calls, at most $max1 / $max2 at once"
step_done capacity "$t"

# 5. rtpvisor of pair 1 killed under 2 calls/s (30 calls of 20 s: at most ~30 live, which the
#    two pools of 24 carry even while pair 1 is out)
t="$(now)"
restarts_before="$(restart_count 1)"
sipp_start kill 101 20000 echo 0 -m 30 -l 30 -r 2
p_kill=$!
pair1_up() { [[ "$(metric 1 .modes.probe.calls_active)" -ge 1 ]]; }
sleep 8
wait_for 10 pair1_up || die "kill: pair 1 carries no call before the kill"
live_at_kill="$(metric 1 .active_channels)"
tk="$(now)"
tk_ms="$(date +%s%3N)"
kill -KILL "$(docker inspect --format '{{.State.Pid}}' "$(container rtpvisor1)")"
log "kill: rtpvisor1 killed with $live_at_kill live calls"
t_out="" t_restart="" t_healthy="" t_calls="" t_adopted=""
deadline=$(($(date +%s) + 60))
while [[ $(date +%s) -lt $deadline ]]; do
    [[ -z $t_out ]] && ds_inactive 1 && t_out="$(secs "$tk")"
    [[ -z $t_restart && "$(restart_count 1)" -gt $restarts_before ]] && t_restart="$(secs "$tk")"
    if [[ -n $t_restart && -z $t_healthy && "$(health rtpvisor1)" == healthy ]]; then t_healthy="$(secs "$tk")"; fi
    if [[ -n $t_restart && -z $t_adopted ]] && [[ "$(metric 1 .reconcile.runs 2>/dev/null || echo 0)" -gt 0 ]]; then t_adopted="$(secs "$tk")"; fi
    if [[ -n $t_restart && -z $t_calls ]] && [[ "$(metric 1 .total_channels 2>/dev/null || echo 0)" -gt "$live_at_kill" ]]; then t_calls="$(secs "$tk")"; fi
    [[ -n $t_restart && -n $t_healthy && -n $t_calls && -n $t_adopted ]] && break
    sleep 0.2
done
[[ -n $t_restart ]] || die "kill: rtpvisor1 was not restarted within 60 s"
[[ -n $t_healthy ]] || die "kill: rtpvisor1 not healthy again within 60 s"
[[ -n $t_adopted ]] || die "kill: the new rtpvisor1 did not reconcile: $(api 1 /metrics | jq -c .reconcile)"
[[ -n $t_calls ]] || die "kill: pair 1 took no new call within 60 s after the kill"
adopted="$(metric 1 .reconcile.adopted_calls)"
orphans="$(metric 1 .reconcile.orphans_cleaned)"
sipp_wait kill "$p_kill" 90
SIPP_PIDS=()
read -r ok failed <<<"$(sipp_counts kill)"
byes="$(peer_byes kill)"
# Each adopted call's gap: from the kill to its first probe back in the new process.
gaps="$(api 1 '/calls/ended?since=0&limit=1000' | jq -c --argjson k "$tk_ms" '[.calls[] | select(.adopted_at_ms != null) | .first_media_at_ms - $k] | sort')"
reasons="$(api 1 '/calls/ended?since=0&limit=1000' | jq -c '[.calls[] | select(.outcome != "refused") | .reason] | group_by(.) | map({(.[0]): length}) | add')"
figure "kill: 30 calls of 20 s at 2/s, $ok completed, $failed failed, $byes ended by the far end; $live_at_kill calls live on pair 1 at the kill, $adopted adopted by the new process ($orphans orphans cleaned); media gap of each adopted call since the kill (ms): $gaps; pair 1's calls ended by: $reasons"
figure "kill: pair 1 out (Kamailio) after ${t_out:-? (back before a poll saw it out)} s, restarted after $t_restart s, healthy after $t_healthy s, calls adopted after $t_adopted s, new calls on it again after $t_calls s"
[[ $ok -eq 30 && $failed -eq 0 ]] || die "kill: $ok of 30 calls completed, $failed failed"
[[ $byes -eq 0 ]] || die "kill: $byes calls were cut (a BYE from the far end)"
# Every call live at the kill is adopted (one that became live between the count and the kill
# too). A caller that reached Stasis on pair 1 while no rtpvisor served it was never answered:
# the new process refuses it (503 cause 34) and Kamailio retries it on pair 2: an orphan
# cleaned, not a cut call.
[[ $adopted -ge $live_at_kill ]] || die "kill: $adopted of $live_at_kill calls adopted"
[[ "$(jq 'length' <<<"$gaps")" -eq $adopted ]] || die "kill: gaps of $(jq length <<<"$gaps") adopted calls recorded, $adopted adopted: $gaps"
[[ "$(jq '[.calls[] | select(.outcome != "refused" and .reason != "hangup")] | length' <<<"$(api 1 '/calls/ended?since=0&limit=1000')")" -eq 0 ]] ||
    die "kill: a call on pair 1 ended otherwise than by its caller: $reasons"
wait_for 20 eval '[[ "$(asterisk_channels 1)" == 0 && "$(metric 1 .active_channels)" == 0 ]]' ||
    die "kill: pair 1 not clean after the calls: Asterisk $(asterisk_channels 1) channels, rtpvisor $(metric 1 .active_channels) live calls"
[[ "$(api 1 /ports | jq .leased)" == 0 ]] || die "kill: pair 1 still leases ports"
step_done kill "$t"

# 6. pair 1's pool cut to 4 ports: 20 calls of 8 s, its overflow goes to pair 2
t="$(now)"
RTPVISOR1_RTP_PORTS=10100-10103 compose up -d rtpvisor1 >/dev/null 2>&1
wait_for 60 all_healthy || die "overflow: rtpvisor1 not healthy with the small pool"
wait_for 20 ds_active 1 || die "overflow: pair 1 not active"
[[ "$(api 1 /ports | jq .size)" == 4 ]] || die "overflow: pair 1's pool is $(api 1 /ports | jq .size) ports, not 4"
b2="$(metric 2 .total_channels)"
sipp_start overflow 101 8000 echo 0 -m 20 -l 20 -r 10
p_over=$!
max1=0
for _ in $(seq 1 60); do
    a="$(metric 1 .active_channels)"
    [[ $a -gt $max1 ]] && max1=$a
    sipp_gone "$p_over" && break
    sleep 0.25
done
sipp_wait overflow "$p_over" 60
SIPP_PIDS=()
took1="$(metric 1 .total_channels)"
refused1="$(metric 1 .rejected_calls)"
took2=$(($(metric 2 .total_channels) - b2))
busy="$(compose logs --no-color kamailio 2>/dev/null | grep -c 'is busy (503 cause 34)' || true)"
figure "overflow: 20 calls, pool of 4 on pair 1: pair 1 took $took1 (at most $max1 at once) and refused $refused1 (503 cause 34, retried on pair 2: Kamailio logged $busy busy refusals); pair 2 took $took2; 0 failed"
[[ $((took1 + took2)) -eq 20 ]] || die "overflow: $took1 + $took2 calls taken, not 20"
[[ $max1 -le 4 && $refused1 -ge 1 ]] || die "overflow: pair 1 carried $max1 at once and refused $refused1"
ds_active 1 || die "overflow: a busy pair 1 was taken out ($(ds_flags 1))"
compose up -d rtpvisor1 >/dev/null 2>&1 # back to the default pool
wait_for 60 all_healthy || die "overflow: rtpvisor1 not healthy with its default pool"
wait_for 20 ds_active 1 || die "overflow: pair 1 not active again"
step_done overflow "$t"

# 7. pair 2's Asterisk stopped, then started, while calls arrive at 2/s (calls of 2 s)
t="$(now)"
sipp_start asterisk 101 2000 echo 0 -m 70 -l 20 -r 2
p_ast=$!
sleep 4
b1="$(metric 1 .total_channels)"
ts="$(now)"
docker stop --time 10 "$(container asterisk2)" >/dev/null
t_stopped="$(secs "$ts")"
wait_for 10 ds_inactive 2 || die "asterisk: Kamailio did not take pair 2 out within 10 s"
t_down="$(secs "$ts")"
n2_down="$(metric 2 .total_channels)"
sleep 8
n2_after="$(metric 2 .total_channels)"
[[ $n2_after -eq $n2_down ]] || die "asterisk: pair 2 took calls while its Asterisk was down ($n2_down -> $n2_after)"
took1_down=$(($(metric 1 .total_channels) - b1))
tst="$(now)"
docker start "$(container asterisk2)" >/dev/null
wait_for 30 ds_active 2 || die "asterisk: pair 2 not active again within 30 s"
t_up="$(secs "$tst")"
wait_for 60 eval '[[ "$(health rtpvisor2)" == healthy && "$(health asterisk2)" == healthy ]]' || die "asterisk: pair 2 not healthy again"
t_ready="$(secs "$tst")"
took2_again() { [[ "$(metric 2 .total_channels)" -gt "$n2_after" ]]; }
wait_for 30 took2_again || die "asterisk: pair 2 took no call within 30 s of its Asterisk's start"
t_calls2="$(secs "$tst")"
sipp_wait asterisk "$p_ast" 90
SIPP_PIDS=()
read -r ok failed <<<"$(sipp_counts asterisk)"
byes="$(peer_byes asterisk)"
figure "asterisk: pair 2's Asterisk stopped (docker stop took $t_stopped s): pair 2 out after $t_down s; meanwhile pair 1 took $took1_down calls and pair 2 none"
figure "asterisk: started again: pair 2 active (Kamailio) after $t_up s, healthy after $t_ready s, taking calls after $t_calls2 s; 70 calls at 2/s: $ok completed, $failed failed, $byes ended by the far end (live on pair 2 when its Asterisk stopped)"
[[ $ok -eq 70 && $failed -eq 0 ]] || die "asterisk: $ok of 70 calls completed, $failed failed"
step_done asterisk "$t"

# 8. down
t="$(now)"
compose down -v --remove-orphans --timeout 20
left_c="$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" | wc -l)"
left_n="$(docker network ls -q --filter "label=com.docker.compose.project=$PROJECT" | wc -l)"
left_p="$(ps -C docker-proxy -o args= 2>/dev/null | grep -cE -- "-host-port ($SIP_PORT|9091|9092|9099)( |$)" || true)"
[[ $left_c -eq 0 && $left_n -eq 0 && $left_p -eq 0 ]] ||
    die "down left $left_c containers, $left_n networks, $left_p docker-proxy processes of $PROJECT"
step_done down "$t"

log "passed in $(secs "$T0") s ($COMPOSE_VERSION):"
printf '  %s\n' "${TIMINGS[@]}" >&2
printf '  %s\n' "${FIGURES[@]}" >&2
