#!/bin/sh
# docker/prometheus/entrypoint.sh: writes /run/prometheus/prometheus.yml from the environment,
# then runs the command (Prometheus) as PID 1.
#
#   PROMETHEUS_RTPVISOR_TARGETS  the rtpvisors' HTTP APIs, space-separated HOST:PORT (job rtpvisor,
#                                path /metrics/prometheus); `instance` is the HOST:PORT
#   PROMETHEUS_KAMAILIO_TARGET   Kamailio's xhttp_prom endpoint HOST:PORT (job kamailio,
#                                path /metrics); empty: not scraped
#   PROMETHEUS_SCRAPE_INTERVAL   scrape and evaluation interval (default 5s)
#   PROMETHEUS_RTPVISOR_TOKEN    the rtpvisors' API bearer token (empty: none)
set -eu
die() { echo "prometheus-entrypoint: $*" >&2; exit 64; }

[ -n "${PROMETHEUS_RTPVISOR_TARGETS:-}" ] || die "PROMETHEUS_RTPVISOR_TARGETS is empty"
interval="${PROMETHEUS_SCRAPE_INTERVAL:-5s}"
list() { for t in $1; do printf "'%s', " "$t"; done | sed 's/, $//'; }
{
    echo "# written by docker/prometheus/entrypoint.sh"
    echo "global:"
    echo "  scrape_interval: $interval"
    echo "  evaluation_interval: $interval"
    echo "scrape_configs:"
    echo "  - job_name: rtpvisor"
    echo "    metrics_path: /metrics/prometheus"
    if [ -n "${PROMETHEUS_RTPVISOR_TOKEN:-}" ]; then
        # The token goes into a file of its own (not the config), readable by Prometheus only.
        printf '%s' "$PROMETHEUS_RTPVISOR_TOKEN" >/run/prometheus/rtpvisor-token
        chmod 600 /run/prometheus/rtpvisor-token
        echo "    authorization:"
        echo "      credentials_file: /run/prometheus/rtpvisor-token"
    fi
    echo "    static_configs:"
    echo "      - targets: [$(list "$PROMETHEUS_RTPVISOR_TARGETS")]"
    if [ -n "${PROMETHEUS_KAMAILIO_TARGET:-}" ]; then
        echo "  - job_name: kamailio"
        echo "    metrics_path: /metrics"
        echo "    static_configs:"
        echo "      - targets: ['$PROMETHEUS_KAMAILIO_TARGET']"
    fi
} >/run/prometheus/prometheus.yml
echo "prometheus-entrypoint: scraping every $interval: rtpvisor $PROMETHEUS_RTPVISOR_TARGETS; kamailio ${PROMETHEUS_KAMAILIO_TARGET:-(none)}" >&2
exec "$@"
