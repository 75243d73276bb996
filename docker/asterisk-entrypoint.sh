#!/bin/sh
# docker/asterisk-entrypoint.sh: the Asterisk container's entrypoint. It turns three environment
# variables into two small config files that asterisk-conf/ includes with #tryinclude (absent
# in the chroot of scripts/asterisk.sh, which then keeps the files' own values), then runs the
# command (Asterisk) as PID 1.
#
#   ASTERISK_RTP_PORTS        Asterisk's RTP range, "START-END" (default 31000-31999, as
#                             rtp.conf). docker-compose.yml publishes this same range, so it is
#                             where phones outside the host send media.
#   ASTERISK_EXTERNAL_ADDRESS the address phones outside reach this host at (an IP or name).
#                             Set: SIP and SDP towards callers outside ASTERISK_LOCAL_NET carry
#                             it instead of the container's address (pjsip external_media_address
#                             and external_signaling_address). Unset: nothing is rewritten.
#   ASTERISK_LOCAL_NET        networks Asterisk reaches without NAT, space-separated CIDRs
#                             (pjsip local_net; default: 127.0.0.0/8 and RTPVISOR_SUBNET, the
#                             compose network, which docker-compose.yml passes in)
#
# Files: /run/asterisk/rtpvisor-rtp.conf (rtp.conf) and /run/asterisk/rtpvisor-transport.conf
# (pjsip.conf, inside [transport-udp]). Invalid values stop the container with a message.
set -eu

die() { echo "asterisk-entrypoint: $*" >&2; exit 64; }

mkdir -p /run/asterisk
ports="${ASTERISK_RTP_PORTS:-31000-31999}"
start="${ports%-*}"
end="${ports#*-}"
case "$start$end" in *[!0-9]* | "") die "ASTERISK_RTP_PORTS='$ports' is not START-END (e.g. 31000-31099)" ;; esac
[ "$start" -ge 1024 ] && [ "$end" -le 65535 ] && [ "$end" -gt "$start" ] ||
    die "ASTERISK_RTP_PORTS='$ports': need 1024 <= START < END <= 65535"
printf '; written by docker/asterisk-entrypoint.sh from ASTERISK_RTP_PORTS\nrtpstart = %s\nrtpend = %s\n' \
    "$start" "$end" >/run/asterisk/rtpvisor-rtp.conf

local_net="${ASTERISK_LOCAL_NET:-127.0.0.0/8 ${RTPVISOR_SUBNET:-}}"
{
    echo "; written by docker/asterisk-entrypoint.sh from ASTERISK_EXTERNAL_ADDRESS and ASTERISK_LOCAL_NET"
    if [ -n "${ASTERISK_EXTERNAL_ADDRESS:-}" ]; then
        echo "external_media_address = $ASTERISK_EXTERNAL_ADDRESS"
        echo "external_signaling_address = $ASTERISK_EXTERNAL_ADDRESS"
        for net in $local_net; do
            echo "local_net = $net"
        done
    fi
} >/run/asterisk/rtpvisor-transport.conf
chown -R asterisk:asterisk /run/asterisk

echo "asterisk-entrypoint: RTP $start-$end, external address ${ASTERISK_EXTERNAL_ADDRESS:-(none)}, local_net $local_net" >&2
exec "$@"
