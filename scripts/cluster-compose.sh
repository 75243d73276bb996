#!/usr/bin/env bash
# scripts/cluster-compose.sh: writes the compose file of an rtpvisor cluster with N pairs of
# Asterisk + rtpvisor behind one Kamailio, plus Prometheus. docker-compose.cluster.yml is this
# script's output for 2 pairs (scripts/cluster-test.sh checks that it is up to date); run it with
# another N to get a file for more pairs, without editing YAML by hand:
#
#   scripts/cluster-compose.sh 3 >docker-compose.cluster3.yml
#   docker-compose -p rtpvisor-cluster -f docker-compose.cluster3.yml up -d --build
#
# usage: scripts/cluster-compose.sh [N]      (N pairs, 1..30, default 2; YAML on stdout)
#
# Per pair i (1..N), each with a default that the environment overrides at `up`:
#   asterisk<i>  IP ${CLUSTER_NET}.(10+i); RTP range ASTERISK<i>_RTP_PORTS
#                (default (30+i)000-(30+i)099: 100 ports, 25 calls); not published
#   rtpvisor<i>  IP ${CLUSTER_NET}.(100+i); HTTP API published on PUBLISH_ADDR:RTPVISOR<i>_HOST_PORT
#                (default 9090+i); pool RTPVISOR<i>_RTP_PORTS (default 10i00-10i23: 24 calls,
#                a quarter of its Asterisk's range, as in docker-compose.yml); admission limit
#                RTPVISOR<i>_MAX_CALLS (default 0: the pool's size)
set -euo pipefail

N="${1:-2}"
[[ $N =~ ^[0-9]+$ && $N -ge 1 && $N -le 30 ]] || { echo "usage: $0 [N]  (1 <= N <= 30 pairs)" >&2; exit 2; }

net='${CLUSTER_NET:-172.31.240}'
pub='${PUBLISH_ADDR:-127.0.0.1}'
base='${RTPVISOR_BASE_IMAGE:-debian:sid}'
tag='${RTPVISOR_IMAGE_TAG:-local}'

destinations=""
targets=""
for ((i = 1; i <= N; i++)); do
    destinations="$destinations $net.$((10 + i))"
    targets="$targets rtpvisor$i:9090"
done
destinations="${destinations# }"
targets="${targets# }"

cat <<EOF
# docker-compose.cluster.yml: an rtpvisor cluster, $N pairs of Asterisk 22 + rtpvisor behind one
# Kamailio (the SIP entry), and Prometheus over all of them. Written by scripts/cluster-compose.sh
# (\`scripts/cluster-compose.sh $N\`): change that script, not this file, and regenerate it; for
# more pairs, write another file with it (README "Cluster").
#
#   scripts/docker-images.sh && docker-compose -p rtpvisor-cluster -f docker-compose.cluster.yml up -d --build
#   docker-compose -p rtpvisor-cluster -f docker-compose.cluster.yml down
#
# Why it is as it is:
# * Same images as docker-compose.yml (rtpvisor from Dockerfile, Asterisk from
#   docker/asterisk.Dockerfile, the same asterisk-conf/ mounted read-only), plus Kamailio
#   (docker/kamailio) and Prometheus (docker/prometheus), all FROM debian:sid with Debian's
#   packages. Format 2.4 for compose v1 (1.29) and v2, as docker-compose.yml.
# * Every container has a fixed address on the cluster network (\${CLUSTER_NET}.0/24, default
#   172.31.240.0/24; it must stay inside 172.16.0.0/12 or another range asterisk-conf/pjsip.conf's
#   identify matches): Kamailio's dispatcher list names the Asterisks by address, so a restarted
#   Asterisk must come back at the same one. kamailio .2, prometheus .3, asterisk<i> .(10+i),
#   rtpvisor<i> .(100+i).
# * Published on PUBLISH_ADDR (default 127.0.0.1): Kamailio's SIP (5080/udp), each rtpvisor's
#   HTTP API (9091, 9092, ...), Prometheus (9099). Not published: the Asterisks (SIP only through
#   Kamailio; ARI only for their rtpvisor), their RTP ranges (callers on this host reach the
#   containers' addresses directly; one docker-proxy per published UDP port would cost ~3 MB each).
# * Kamailio starts once every Asterisk is fully booted; each rtpvisor once its Asterisk is, and
#   is healthy once its /ready says so. Kamailio does not wait for the rtpvisors: a pair whose
#   rtpvisor is not connected refuses calls with 503 (asterisk-conf/extensions.conf,
#   [rtpvisor-stasis]) and Kamailio retries them on another pair.
# * Restart policy unless-stopped everywhere: a crashed rtpvisor, Asterisk or Kamailio comes back.
#
# Environment (all optional): PUBLISH_ADDR, CLUSTER_NET (first three octets of the /24),
# KAMAILIO_SIP_HOST_PORT (5080), PROMETHEUS_HOST_PORT (9099), PROMETHEUS_SCRAPE_INTERVAL (5s),
# ARI_USER / ARI_PASSWORD, RTPVISOR_BASE_IMAGE, RTPVISOR_IMAGE_TAG (images' tag, default local),
# and per pair i: RTPVISOR<i>_HOST_PORT, RTPVISOR<i>_RTP_PORTS, RTPVISOR<i>_MAX_CALLS,
# ASTERISK<i>_RTP_PORTS (defaults in scripts/cluster-compose.sh).

version: "2.4"

services:
  kamailio:
    image: rtpvisor/kamailio:$tag
    build:
      context: ./docker/kamailio
      args:
        BASE_IMAGE: $base
    environment:
      # Dispatcher set 1, in this order (round robin): every pair's Asterisk.
      KAMAILIO_DESTINATIONS: "$destinations"
    ports:
      - "$pub:\${KAMAILIO_SIP_HOST_PORT:-5080}:5060/udp"
    networks:
      cluster:
        ipv4_address: $net.2
    depends_on:
EOF
for ((i = 1; i <= N; i++)); do
    cat <<EOF
      asterisk$i:
        condition: service_healthy
EOF
done
cat <<EOF
    healthcheck:
      # Healthy once Kamailio answers over its control socket with its dispatcher set loaded.
      test: ["CMD", "bash", "-c", "kamcmd -s unix:/run/kamailio/kamailio_ctl dispatcher.list | grep -q 'URI: sip:'"]
      interval: 3s
      timeout: 5s
      retries: 3
      start_period: 20s
    restart: unless-stopped

  prometheus:
    image: rtpvisor/prometheus:$tag
    build:
      context: ./docker/prometheus
      args:
        BASE_IMAGE: $base
    environment:
      PROMETHEUS_RTPVISOR_TARGETS: "$targets"
      PROMETHEUS_KAMAILIO_TARGET: "kamailio:9494"
      PROMETHEUS_SCRAPE_INTERVAL: \${PROMETHEUS_SCRAPE_INTERVAL:-5s}
      # Scrapes with the rtpvisors' bearer token.
      PROMETHEUS_RTPVISOR_TOKEN: \${HTTP_TOKEN:?HTTP_TOKEN is not set - scripts/docker-images.sh writes a random one to .env}
    ports:
      - "$pub:\${PROMETHEUS_HOST_PORT:-9099}:9090/tcp"
    networks:
      cluster:
        ipv4_address: $net.3
    healthcheck:
      test: ["CMD", "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9090 && printf 'GET /-/ready HTTP/1.0\\\\r\\\\n\\\\r\\\\n' >&3 && read -r _ code _ <&3 && [ \"\$\$code\" = 200 ]"]
      interval: 3s
      timeout: 5s
      retries: 3
      start_period: 20s
    restart: unless-stopped
EOF
for ((i = 1; i <= N; i++)); do
    cat <<EOF

  asterisk$i:
    image: rtpvisor/asterisk:$tag
    build:
      context: ./docker
      dockerfile: asterisk.Dockerfile
      args:
        BASE_IMAGE: $base
    volumes:
      - ./asterisk-conf:/etc/asterisk:ro
    environment:
      ASTERISK_RTP_PORTS: \${ASTERISK${i}_RTP_PORTS:-$((30 + i))000-$((30 + i))099}
      RTPVISOR_SUBNET: $net.0/24
    networks:
      cluster:
        ipv4_address: $net.$((10 + i))
    healthcheck:
      # As in docker-compose.yml: fully booted, and ARI answers HTTP.
      test: ["CMD", "bash", "-c", "asterisk -rx 'core waitfullybooted' >/dev/null && exec 3<>/dev/tcp/127.0.0.1/8088 && printf 'GET /ari/asterisk/ping HTTP/1.0\\\\r\\\\n\\\\r\\\\n' >&3 && read -r _ code _ <&3 && [ \"\$\$code\" = 401 ] || [ \"\$\$code\" = 200 ]"]
      interval: 3s
      timeout: 10s
      retries: 3
      start_period: 30s
    restart: unless-stopped

  rtpvisor$i:
    image: rtpvisor/rtpvisor:$tag
    build:
      context: .
      args:
        BASE_IMAGE: $base
    depends_on:
      asterisk$i:
        condition: service_healthy
    environment:
      RTPVISOR_ARI_URL: http://asterisk$i:8088/ari
      RTPVISOR_ARI_USER: \${ARI_USER:-rtpvisor}
      RTPVISOR_ARI_PASSWORD: \${ARI_PASSWORD:-rtpvisor}
      # The development password is refused toward a non-loopback ARI unless allowed: ARI is on
      # this private network only (see docker-compose.yml).
      RTPVISOR_ARI_ALLOW_DEV_PASSWORD: \${ARI_ALLOW_DEV_PASSWORD:-true}
      RTPVISOR_HTTP_TOKEN: \${HTTP_TOKEN:?HTTP_TOKEN is not set - scripts/docker-images.sh writes a random one to .env}
      # The shared echo answers this network only (its Asterisk) and loopback.
      RTPVISOR_ECHO_ALLOW: $net.0/24,127.0.0.0/8,::1/128
      RTPVISOR_MEDIA_HOST: rtpvisor$i
      RTPVISOR_ECHO_HOST: rtpvisor$i
      RTPVISOR_HTTP_ADDR: 0.0.0.0:9090
      RTPVISOR_ECHO_ADDR: 0.0.0.0:4000
      # At most a quarter of its Asterisk's RTP range (docker-compose.yml explains why).
      RTPVISOR_RTP_PORTS: \${RTPVISOR${i}_RTP_PORTS:-$((100 + i))00-$((100 + i))23}
      RTPVISOR_MAX_CALLS: \${RTPVISOR${i}_MAX_CALLS:-0}
      RUST_LOG: info
    read_only: true
    cap_drop: [ALL]
    security_opt: ["no-new-privileges:true"]
    ports:
      - "$pub:\${RTPVISOR${i}_HOST_PORT:-$((9090 + i))}:9090/tcp"
    networks:
      cluster:
        ipv4_address: $net.$((100 + i))
    healthcheck:
      test: ["CMD", "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9090 && printf 'GET /ready HTTP/1.0\\\\r\\\\n\\\\r\\\\n' >&3 && read -r _ code _ <&3 && [ \"\$\$code\" = 200 ]"]
      interval: 3s
      timeout: 5s
      retries: 3
      start_period: 30s
    stop_grace_period: 15s
    restart: unless-stopped
EOF
done
cat <<EOF

networks:
  cluster:
    ipam:
      config:
        - subnet: $net.0/24
EOF
