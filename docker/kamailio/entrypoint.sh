#!/bin/sh
# docker/kamailio/entrypoint.sh: writes Kamailio's dispatcher list (set 1: the cluster's pairs)
# from KAMAILIO_DESTINATIONS, then runs the command (Kamailio) as PID 1.
#
#   KAMAILIO_DESTINATIONS  the pairs' Asterisk SIP addresses, space-separated HOST[:PORT]
#                          (docker-compose.cluster.yml passes their fixed IPs). Each becomes
#                          `1 sip:HOST:PORT 0 0 duid=pairN` (N from 1, in the given order).
set -eu
die() { echo "kamailio-entrypoint: $*" >&2; exit 64; }

[ -n "${KAMAILIO_DESTINATIONS:-}" ] || die "KAMAILIO_DESTINATIONS is empty: no pair to send calls to"
mkdir -p /run/kamailio
{
    echo "# written by docker/kamailio/entrypoint.sh from KAMAILIO_DESTINATIONS"
    echo "# setid destination flags priority attributes"
    n=0
    for dst in $KAMAILIO_DESTINATIONS; do
        n=$((n + 1))
        case "$dst" in *:*) ;; *) dst="$dst:5060" ;; esac
        echo "1 sip:$dst 0 0 duid=pair$n"
    done
} >/run/kamailio/dispatcher.list
chown -R kamailio:kamailio /run/kamailio
echo "kamailio-entrypoint: $n pairs: $KAMAILIO_DESTINATIONS" >&2
exec "$@"
