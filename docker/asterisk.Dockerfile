# docker/asterisk.Dockerfile: Asterisk 22 for rtpvisor's compose stack (image
# rtpvisor/asterisk:local), the container twin of the chroot that scripts/asterisk.sh runs.
#
# Why it is as it is:
# * FROM debian:sid: Debian sid is where Asterisk 22 is packaged. Pulled where a registry is
#   reachable; made locally by scripts/docker-images.sh where none is (this machine).
# * Only asterisk + asterisk-modules, no recommends (same packages as the chroot, minus sipp).
# * No configuration in the image: docker-compose.yml mounts the repo's asterisk-conf/ read-only
#   at /etc/asterisk, hiding Debian's ~100 sample files, so the image holds no ARI password and
#   the chroot and the container run the very same files.
# * Asterisk starts as root and drops to user asterisk (-U/-G; running as root breaks ASTdb).
#   The directories it writes belong to that user. -f: foreground, PID 1, stops on SIGTERM;
#   -n: no colour codes in `docker logs`.
# * The healthcheck (`asterisk -rx "core waitfullybooted"`) is in docker-compose.yml.
# * The entrypoint (docker/asterisk-entrypoint.sh) writes the RTP range and the NAT settings
#   from the environment (ASTERISK_RTP_PORTS, ASTERISK_EXTERNAL_ADDRESS, ASTERISK_LOCAL_NET)
#   into /run/asterisk, where asterisk-conf/ includes them, then execs Asterisk as PID 1.
# * The build context is docker/ with everything but the entrypoint ignored (docker/.dockerignore).

ARG BASE_IMAGE=debian:sid
FROM ${BASE_IMAGE}

# Check-Valid-Until: sid's Release file can be past its Valid-Until on a mirror snapshot.
# policy-rc.d: package scripts must not try to start services during the build.
RUN printf 'Acquire::Check-Valid-Until "false";\n' >/etc/apt/apt.conf.d/99no-check-valid-until \
    && printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d \
    && apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        asterisk asterisk-modules \
    && apt-get clean && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d \
    && mkdir -p /run/asterisk /var/lib/asterisk /var/log/asterisk /var/spool/asterisk /var/cache/asterisk \
    && chown -R asterisk:asterisk /run/asterisk /var/lib/asterisk /var/log/asterisk \
        /var/spool/asterisk /var/cache/asterisk

COPY asterisk-entrypoint.sh /usr/local/bin/asterisk-entrypoint
# 8088/tcp: HTTP/ARI; 5060/udp: SIP. Asterisk's RTP range (ASTERISK_RTP_PORTS) is published by
# docker-compose.yml, deliberately not EXPOSEd: `docker run -P` would start one docker-proxy
# process per port of the range.
EXPOSE 8088/tcp 5060/udp
ENTRYPOINT ["/usr/local/bin/asterisk-entrypoint"]
CMD ["asterisk", "-f", "-n", "-U", "asterisk", "-G", "asterisk"]
