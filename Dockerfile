# Dockerfile: the rtpvisor image (docker-compose.yml builds it as rtpvisor/rtpvisor:local).
#
# Why it is as it is:
# * No rust: image (no container registry here): the base is debian:sid, pulled where a registry
#   answers and made by scripts/docker-images.sh (debootstrap + docker import) where none does.
#   Debian sid packages a recent rustc and cargo (the workspace needs >= 1.85), so the
#   toolchain stage installs them with apt. Another base: --build-arg BASE_IMAGE=... (compose:
#   RTPVISOR_BASE_IMAGE).
# * Crates: if docker/vendor/ holds a `cargo vendor` copy (scripts/docker-images.sh makes it on
#   hosts where a container cannot fetch from crates.io), the build is offline from it and
#   refuses a copy that does not match Cargo.lock; if it is empty, cargo fetches from crates.io.
#   Either way --locked: the image builds exactly the versions in Cargo.lock.
# * Dependencies are compiled in their own layer, against a skeleton of the workspace: every
#   member's Cargo.toml plus a stub `fn main() {}` at each target's path (listed by `cargo
#   metadata`, so new members, benches or tests need no change here). The skeleton's content
#   only changes with the manifests or the set of targets, so an edit to our code recompiles
#   just rtpvisor and rtpvisor-actors (~1-1.5 min here instead of ~10-14 min). Only the
#   rtpvisor package (-p) and what it depends on are compiled; bench/ and the tests are not.
# * The runtime stage is the same sid base (its layers are shared with the builder and the
#   Asterisk image; the binary needs sid's glibc) plus the binary, run as the non-root user
#   rtpvisor. No ca-certificates: for an https:// ARI the binary trusts Mozilla's roots,
#   compiled in (webpki-roots), or the PEM file in ari.ca_file (ARI is plain http:// on the
#   compose network). The release profile keeps line tables (debug = 1) for backtraces with
#   file:line; objcopy compresses them (90 MB -> 26 MB binary), backtraces still resolve.
# * The healthcheck (GET /ready) is in docker-compose.yml; `bash` (in every Debian image) can
#   make that request through /dev/tcp, so the image needs no curl.

ARG BASE_IMAGE=debian:sid

FROM ${BASE_IMAGE} AS toolchain
# Marks every build-only stage (toolchain, skeleton, builder); the runtime stage below says
# `runtime`. The legacy builder keeps each build stage's last layer as an untagged image
# (~1.1 GB skeleton, ~2.5 GB builder, sharing the toolchain): they are its cache for the next
# build. A rebuild also leaves the previous runtime image untagged. `docker image prune -f
# --filter label=org.rtpvisor.stage` removes exactly those untagged images (the tagged
# rtpvisor/rtpvisor image stays, and nobody else's image carries the label).
LABEL org.rtpvisor.stage=build
# sid's Release file can be past its Valid-Until on a mirror snapshot.
RUN printf 'Acquire::Check-Valid-Until "false";\n' >/etc/apt/apt.conf.d/99no-check-valid-until \
    && apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        rustc cargo gcc libc6-dev ca-certificates \
    && apt-get clean && rm -rf /var/lib/apt/lists/*
ENV CARGO_HOME=/cargo CARGO_TERM_COLOR=never

# The workspace's sources (/ctx, without docker/) and its skeleton (/skeleton).
FROM toolchain AS skeleton
COPY . /ctx/
WORKDIR /ctx
RUN set -e; \
    rm -rf /ctx/docker; \
    cargo metadata --no-deps --offline --format-version 1 >/tmp/metadata.json; \
    mkdir -p /skeleton; \
    cp Cargo.toml Cargo.lock /skeleton/; \
    for m in $(grep -o '"manifest_path":"[^"]*"' /tmp/metadata.json | cut -d'"' -f4 | sort -u); do \
        rel="${m#/ctx/}"; mkdir -p "/skeleton/$(dirname "$rel")"; cp "$m" "/skeleton/$rel"; \
    done; \
    for t in $(grep -o '"src_path":"[^"]*"' /tmp/metadata.json | cut -d'"' -f4 | sort -u); do \
        rel="${t#/ctx/}"; mkdir -p "/skeleton/$(dirname "$rel")"; echo '#![allow(dead_code)] fn main() {}' >"/skeleton/$rel"; \
    done

FROM toolchain AS builder
WORKDIR /src
COPY docker/vendor/ /vendor/
COPY --from=skeleton /skeleton/ /src/
RUN set -e; \
    if [ -e /vendor/.rtpvisor-cargo-lock.sha256 ]; then \
        if [ "$(cat /vendor/.rtpvisor-cargo-lock.sha256)" != "$(sha256sum Cargo.lock | cut -d' ' -f1)" ]; then \
            echo "docker/vendor does not match Cargo.lock: run scripts/docker-images.sh" >&2; exit 1; \
        fi; \
        mkdir -p "$CARGO_HOME"; \
        printf '[source.crates-io]\nreplace-with = "vendored"\n[source.vendored]\ndirectory = "/vendor"\n[net]\noffline = true\n' \
            >"$CARGO_HOME/config.toml"; \
        echo "crates: vendored copy in docker/vendor (offline build)"; \
    else \
        echo "crates: fetched from crates.io (docker/vendor is empty)"; \
    fi; \
    cargo build --release --locked -p rtpvisor

# Our code over the stubs. touch: COPY keeps the files' old mtimes, which cargo would take for
# older than the stub build above.
COPY --from=skeleton /ctx/ /src/
RUN find /src -path /src/target -prune -o -name '*.rs' -exec touch {} + \
    && cargo build --release --locked -p rtpvisor \
    && objcopy --compress-debug-sections=zlib target/release/rtpvisor /rtpvisor \
    && /rtpvisor --version

FROM ${BASE_IMAGE}
LABEL org.rtpvisor.stage=runtime
RUN useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin rtpvisor
COPY --from=builder /rtpvisor /usr/local/bin/rtpvisor
USER rtpvisor
# In a container the API must answer beyond the container's own loopback: bind every address,
# which rtpvisor accepts only with a token (RTPVISOR_HTTP_TOKEN or _FILE). `docker run` of this
# image without one stops at once with the one-line how-to instead of serving an API nobody
# outside the container can reach.
ENV RTPVISOR_HTTP_ADDR=0.0.0.0:9090
# 9090/tcp: HTTP API (/ready, /metrics); 4000/udp: shared echo. The per-call RTP ports
# (RTPVISOR_RTP_PORTS, default 10000-10100/udp) are reached by Asterisk on the compose network.
EXPOSE 9090/tcp 4000/udp
ENTRYPOINT ["/usr/local/bin/rtpvisor"]
