#!/usr/bin/env bash
# scripts/asterisk.sh: a real Asterisk 22 (plus sipp) for rtpvisor's tests, without a container
# registry. It builds a Debian sid chroot once (cached), installs asterisk-conf/ into it and runs
# Asterisk there in the background.
#
# Why a chroot: no container registry is reachable here, but Debian's mirror is; Debian sid ships
# Asterisk 22 and sipp. The same asterisk-conf/ is also mounted at /etc/asterisk in the Docker
# image (see the compose files), so it must work unchanged in both places.
#
# Differences between the chroot and the container (kept minimal on purpose):
#   * HTTP/ARI bind address. asterisk-conf/http.conf says bindaddr=0.0.0.0 (what a container
#     needs) and ends with `#tryinclude "http_local.conf"`. `start` writes
#     ROOT/etc/asterisk/http_local.conf with bindaddr=127.0.0.1, so on this host ARI (which has a
#     plain development password) listens on loopback only. The repo has no http_local.conf, so
#     the container keeps 0.0.0.0.
#   * SIP transport bind address, same mechanism: pjsip.conf binds 0.0.0.0:5060 and includes
#     `pjsip_local.conf`, which `start` writes with bind=127.0.0.1:5060 (the `caller` endpoint
#     takes calls without authentication, so the host exposes it on loopback only).
#   * ARI over TLS, for tests/e2e_tls.rs: http_local.conf also enables Asterisk's TLS listener
#     on 127.0.0.1:8089 with a certificate for IP 127.0.0.1 only (no DNS name: a URL with host
#     `localhost` must fail verification), signed by a test CA. Both are made once with the
#     openssl CLI under ROOT/var/lib/rtpvisor-test (outside /etc/asterisk, which `start`
#     replaces) and copied to /etc/asterisk/keys. `tls-ca` prints the CA file's host path.
#   * A second ARI user for tests/e2e_secrets.rs, `rtpvisor-secret-test`, appended to the
#     chroot's ari.conf, with a random password made once (ROOT/var/lib/rtpvisor-test/
#     ari-secret-test.password): distinctive enough to grep rtpvisor's logs for.
#     `ari-test-user` prints the user and the password file's host path.
#   The container has neither: compose serves plain HTTP on its private network, with the
#   users of asterisk-conf/ari.conf only.
#   An Asterisk already running without these (started by another checkout's copy of this
#   script) gets them on `start` by `module reload http` / `module reload res_ari.so`: no
#   restart, live calls and WebSockets stay.
#   Nothing else differs.
#
# Exchanging files with sipp: sipp runs inside the chroot with its working directory at
# /tmp/sipp (on the host: "$(scripts/asterisk.sh root)/tmp/sipp"). Put scenario/CSV files there
# and pass their names relative to it (or absolute chroot paths such as /tmp/sipp/x.xml); sipp's
# own output files (-trace_*) land there too. That directory holds a symlink pcap ->
# /usr/share/sip-tester, so the built-in `-sn uac_pcap` scenario (which plays
# pcap/g711a.pcap) works unchanged.
#
# Environment:
#   RTPVISOR_ASTERISK_ROOT           rootfs (default /var/cache/rtpvisor/asterisk-sid)
#   RTPVISOR_DEBIAN_MIRROR           (default http://deb.debian.org/debian)
#   RTPVISOR_ASTERISK_START_TIMEOUT  seconds to wait for ARI at start (default 30)
#   RTPVISOR_ARI_USER / RTPVISOR_ARI_PASSWORD  (default rtpvisor / rtpvisor, as in ari.conf)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
CONF_SRC="$REPO_DIR/asterisk-conf"

ROOT="${RTPVISOR_ASTERISK_ROOT:-/var/cache/rtpvisor/asterisk-sid}"
MIRROR="${RTPVISOR_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
START_TIMEOUT="${RTPVISOR_ASTERISK_START_TIMEOUT:-30}"
ARI_USER="${RTPVISOR_ARI_USER:-rtpvisor}"
ARI_PASSWORD="${RTPVISOR_ARI_PASSWORD:-rtpvisor}"
ARI_URL="http://127.0.0.1:8088/ari/asterisk/info"

STAMP_NAME=".rtpvisor-build-complete"
PACKAGES=(asterisk asterisk-modules sip-tester)
PIDFILE="$ROOT/run/rtpvisor-asterisk.pid"       # PID of Asterisk, as seen from the host
CONSOLE_LOG="$ROOT/var/log/rtpvisor-asterisk.out" # Asterisk's stdout/stderr
MESSAGES_LOG="$ROOT/var/log/asterisk/messages"    # logger.conf's file channel
SIPP_CWD="/tmp/sipp"                               # inside the chroot
TLS_DIR="$ROOT/var/lib/rtpvisor-test"             # test CA, Asterisk's TLS certificate, test user
TLS_PORT=8089
SECRET_USER="rtpvisor-secret-test"
SECRET_FILE="$TLS_DIR/ari-secret-test.password"

log() { printf 'asterisk.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
# A command that ends the script through `set -e` says which one it was (conditions, `||`
# lists and a function's own `return N`, such as status's, do not count).
set -E
trap 'rc=$?; [[ $BASH_COMMAND == return* ]] || log "error: exit $rc at line $LINENO: $BASH_COMMAND"' ERR

now() { date +%s.%N; }
# elapsed START -> "1.23 s"
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f s", b - a }'; }

usage() {
    cat <<EOF
usage: scripts/asterisk.sh COMMAND [ARGS...]

Real Asterisk 22 + sipp in a Debian sid chroot at ROOT=$ROOT
(set RTPVISOR_ASTERISK_ROOT to move it). build/start/stop need root.

commands:
  build         debootstrap sid + asterisk + sipp into ROOT, once (cached by a stamp file)
  start         build if needed, install asterisk-conf/ into ROOT/etc/asterisk, start Asterisk,
                wait until ARI answers ($ARI_URL); exit 0 if already running and healthy
  stop          stop Asterisk (core stop now, then TERM/KILL), unmount; fine if not running
  restart       stop, then start
  status        running or not, PID, whether ARI answers (exit 0 only if running and ARI answers)
  cli CMD...    run asterisk -rx "CMD" in the chroot, e.g.: cli 'core show channels'
  sipp ARGS...  run sipp in the chroot, cwd $SIPP_CWD (ROOT$SIPP_CWD on the host)
  root          print ROOT
  tls-ca        print the path of the test CA (PEM) that signed the TLS listener's certificate
  ari-test-user print the test ARI user and the path of its password file
  log [ARGS]    tail Asterisk's messages log (ARGS go to tail, default -n 60; e.g. log -f)

sipp files: write scenarios/CSV into "\$(scripts/asterisk.sh root)$SIPP_CWD/" and pass them by
name (relative to $SIPP_CWD) or as absolute chroot paths. $SIPP_CWD/pcap links to
/usr/share/sip-tester (g711a.pcap, DTMF pcaps), so the built-in uac_pcap scenario works as is.
examples (Asterisk at 127.0.0.1:5060, extension 200 = Answer + Echo):
  scripts/asterisk.sh sipp -sn uac -s 200 127.0.0.1:5060 -i 127.0.0.1 -p 5070 -m 1 -d 3000 \\
      -rtp_echo -min_rtp_port 23000 -max_rtp_port 23999 -nostdin
  scripts/asterisk.sh sipp -sn uac_pcap -s 200 127.0.0.1:5060 -i 127.0.0.1 -p 5070 -m 1 \\
      -min_rtp_port 23000 -max_rtp_port 23999 -nostdin

bind addresses: http.conf/pjsip.conf bind 0.0.0.0 (for the container); start writes
http_local.conf/pjsip_local.conf overlays so that here ARI is on 127.0.0.1:8088 and SIP on
127.0.0.1:5060 only.
EOF
}

need_root() {
    [[ $(id -u) -eq 0 ]] || die "'$1' needs root (it uses chroot and mount); run it with sudo"
}

sanity_check_root_path() {
    [[ $ROOT == /* ]] || die "RTPVISOR_ASTERISK_ROOT must be an absolute path (got '$ROOT')"
    case "${ROOT%/}" in
        "" | /usr | /var | /etc | /home | /tmp | /var/cache) die "refusing ROOT=$ROOT" ;;
    esac
}

is_built() { [[ -f "$ROOT/$STAMP_NAME" ]]; }

# Anything mounted at or below DIR?
has_mounts_below() {
    local dir
    dir="$(realpath -m "$1")"
    awk -v d="$dir" '$2 == d || index($2, d "/") == 1 { found = 1 } END { exit !found }' /proc/self/mounts
}

# Unmount every mount at or below DIR, deepest first.
unmount_below() {
    local dir m
    dir="$(realpath -m "$1")"
    awk -v d="$dir" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/self/mounts |
        sort -r | while read -r m; do
        umount "$m" 2>/dev/null || umount -l "$m" || log "warning: could not unmount $m"
    done
}

# ---------------------------------------------------------------------------------------------
# build

# pkg_version ROOTFS PACKAGE
pkg_version() {
    # shellcheck disable=SC2016 # ${Version} is dpkg-query's format, not a shell expansion
    chroot "$1" dpkg-query -W -f '${Version}' "$2"
}

BUILD_TMP=""
build_cleanup() {
    if [[ -n $BUILD_TMP && -d $BUILD_TMP ]]; then
        unmount_below "$BUILD_TMP"
        if has_mounts_below "$BUILD_TMP"; then
            log "warning: $BUILD_TMP still has mounts; not deleting it"
        else
            rm -rf --one-file-system "$BUILD_TMP"
        fi
        rm -f "$BUILD_TMP.debootstrap.log" "$BUILD_TMP.apt.log"
    fi
}

cmd_build() {
    need_root build
    sanity_check_root_path
    if is_built; then
        log "build: $ROOT is already built ($(head -n1 "$ROOT/$STAMP_NAME"))"
        return 0
    fi
    mkdir -p "$(dirname "$ROOT")"
    local lock="$ROOT.build.lock"
    exec {lockfd}>"$lock"
    if ! flock -n "$lockfd"; then
        log "build: another build holds $lock; waiting for it"
        flock "$lockfd"
    fi
    if is_built; then # built by whoever held the lock
        log "build: $ROOT was built meanwhile"
        exec {lockfd}>&-
        return 0
    fi
    if [[ -e $ROOT ]]; then
        die "$ROOT exists but has no $STAMP_NAME (not a complete build of this script); remove it and retry"
    fi

    local t0 t
    t0="$(now)"
    if ! command -v debootstrap >/dev/null; then
        t="$(now)"
        log "build: installing debootstrap on the host"
        { DEBIAN_FRONTEND=noninteractive apt-get update -q &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap; } >"$ROOT.host-apt.log" 2>&1 || {
            tail -n 40 "$ROOT.host-apt.log" >&2
            die "could not install debootstrap on the host (log: $ROOT.host-apt.log)"
        }
        rm -f "$ROOT.host-apt.log"
        log "build: debootstrap installed in $(elapsed "$t")"
    fi

    BUILD_TMP="$(mktemp -d "$ROOT.tmp.XXXXXX")"
    trap build_cleanup EXIT
    trap 'exit 130' INT TERM HUP # make signals run the EXIT trap (unmount, remove the temp dir)
    chmod 755 "$BUILD_TMP"

    t="$(now)"
    log "build: debootstrap --variant=minbase sid $BUILD_TMP $MIRROR"
    debootstrap --variant=minbase sid "$BUILD_TMP" "$MIRROR" >"$BUILD_TMP.debootstrap.log" 2>&1 || {
        tail -n 40 "$BUILD_TMP.debootstrap.log" >&2
        rm -f "$BUILD_TMP.debootstrap.log"
        die "debootstrap failed"
    }
    rm -f "$BUILD_TMP.debootstrap.log"
    log "build: debootstrap done in $(elapsed "$t")"

    # sid's Release file is often past its Valid-Until on a mirror snapshot.
    printf 'Acquire::Check-Valid-Until "false";\n' >"$BUILD_TMP/etc/apt/apt.conf.d/99rtpvisor-no-valid-until"
    # Package scripts must not start services (there is no init in the chroot).
    printf '#!/bin/sh\nexit 101\n' >"$BUILD_TMP/usr/sbin/policy-rc.d"
    chmod 755 "$BUILD_TMP/usr/sbin/policy-rc.d"

    mount -t proc proc "$BUILD_TMP/proc"
    mkdir -p "$BUILD_TMP/dev/pts"
    mount -t devpts -o newinstance,ptmxmode=0666 devpts "$BUILD_TMP/dev/pts"

    t="$(now)"
    log "build: apt-get install ${PACKAGES[*]}"
    chroot "$BUILD_TMP" /usr/bin/env DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 \
        /bin/sh -ec "apt-get update -q && apt-get install -y -q --no-install-recommends ${PACKAGES[*]} && apt-get clean" \
        >"$BUILD_TMP.apt.log" 2>&1 || {
        tail -n 40 "$BUILD_TMP.apt.log" >&2
        rm -f "$BUILD_TMP.apt.log"
        die "apt-get install in the chroot failed"
    }
    rm -f "$BUILD_TMP.apt.log"
    log "build: packages installed in $(elapsed "$t")"

    unmount_below "$BUILD_TMP"

    # Asterisk runs as user asterisk (-U root breaks ASTdb); it needs these writable.
    chroot "$BUILD_TMP" /bin/sh -ec '
        mkdir -p /run/asterisk /var/log/asterisk /var/lib/asterisk /var/spool/asterisk /var/cache/asterisk
        chown -R asterisk:asterisk /run/asterisk /var/log/asterisk /var/lib/asterisk /var/spool/asterisk /var/cache/asterisk
    '
    # sipp's working directory (see the header).
    mkdir -p "$BUILD_TMP$SIPP_CWD"
    ln -sfn /usr/share/sip-tester "$BUILD_TMP$SIPP_CWD/pcap"

    local ast_version sipp_version
    ast_version="$(pkg_version "$BUILD_TMP" asterisk)"
    sipp_version="$(pkg_version "$BUILD_TMP" sip-tester)"
    {
        echo "asterisk $ast_version, sip-tester $sipp_version, built $(date -u +%FT%TZ)"
        echo "mirror $MIRROR"
    } >"$BUILD_TMP/$STAMP_NAME"
    # The stamp is inside the tree before the rename: ROOT appears complete or not at all.
    mv -T "$BUILD_TMP" "$ROOT"
    BUILD_TMP=""
    trap - EXIT INT TERM HUP
    exec {lockfd}>&-
    log "build: done in $(elapsed "$t0"): $ROOT ($(du -sh --one-file-system "$ROOT" | cut -f1); asterisk $ast_version, sip-tester $sipp_version)"
}

# ---------------------------------------------------------------------------------------------
# process helpers

ROOT_REAL=""
root_real() {
    [[ -n $ROOT_REAL ]] || ROOT_REAL="$(realpath -m "$ROOT")"
    printf '%s' "$ROOT_REAL"
}

# Is PID alive? A zombie is not: it has exited and released its ports, and where PID 1 reaps
# lazily (seen in a microVM: ~2 s) kill -0 would still succeed on it.
pid_alive() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"
    [[ ${stat:0:1} != Z ]]
}

# Is PID an Asterisk running in our chroot?
is_our_asterisk() {
    local pid="$1" r comm
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    pid_alive "$pid" || return 1
    r="$(readlink "/proc/$pid/root" 2>/dev/null)" || return 1
    comm="$(cat "/proc/$pid/comm" 2>/dev/null)" || return 1
    [[ $r == "$(root_real)" && $comm == asterisk ]]
}

# Print the PID of our Asterisk, if one runs (pidfile first, then Asterisk's own pidfile).
our_pid() {
    local f pid
    for f in "$PIDFILE" "$ROOT/run/asterisk/asterisk.pid"; do
        [[ -r $f ]] || continue
        pid="$(tr -dc '0-9' <"$f")"
        if is_our_asterisk "$pid"; then
            printf '%s\n' "$pid"
            return 0
        fi
    done
    return 1
}

ari_ok() {
    if command -v curl >/dev/null; then
        curl -fsS --max-time 2 -u "$ARI_USER:$ARI_PASSWORD" "$ARI_URL" >/dev/null 2>&1
    else
        python3 - "$ARI_URL" "$ARI_USER" "$ARI_PASSWORD" <<'EOF' >/dev/null 2>&1
import base64, sys, urllib.request
url, user, password = sys.argv[1:4]
req = urllib.request.Request(url)
req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
urllib.request.urlopen(req, timeout=2).read()
EOF
    fi
}

# "who holds PROTO PORT" (process names and PIDs) or nothing if free.
port_holder() {
    local proto="$1" port="$2" flags
    case "$proto" in
        tcp) flags=-Hltnp ;;
        udp) flags=-Hlunp ;;
    esac
    ss "$flags" "sport = :$port" 2>/dev/null | grep -o 'users:(.*)' |
        grep -oE '"[^"]+",pid=[0-9]+' | sed -E 's/^"([^"]+)",pid=([0-9]+)$/\1 (pid \2)/' |
        sort -u | paste -sd ',' - | sed 's/,/, /g'
}

port_busy() {
    local proto="$1" port="$2" flags
    case "$proto" in
        tcp) flags=-Hltn ;;
        udp) flags=-Hlun ;;
    esac
    [[ -n "$(ss "$flags" "sport = :$port" 2>/dev/null)" ]]
}

check_port_free() {
    local proto="$1" port="$2" who
    if port_busy "$proto" "$port"; then
        who="$(port_holder "$proto" "$port")"
        die "port $port/$proto is taken by ${who:-an unknown process (no process info)}"
    fi
}

mount_runtime() {
    mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
}

unmount_runtime() {
    local m
    for m in "$ROOT/dev/pts" "$ROOT/proc"; do
        if mountpoint -q "$m"; then
            umount "$m" 2>/dev/null || umount -l "$m" || log "warning: could not unmount $m"
        fi
    done
}

print_logs() {
    local n="${1:-40}"
    if [[ -s $CONSOLE_LOG ]]; then
        log "last $n lines of $CONSOLE_LOG:"
        tail -n "$n" "$CONSOLE_LOG" >&2
    fi
    if [[ -s $MESSAGES_LOG ]]; then
        log "last $n lines of $MESSAGES_LOG:"
        tail -n "$n" "$MESSAGES_LOG" >&2
    fi
}

in_chroot_asterisk_rx() {
    timeout "${2:-10}" chroot "$ROOT" /usr/sbin/asterisk -rx "$1"
}

# ---------------------------------------------------------------------------------------------
# TLS for ARI (tests only)

# The test CA and Asterisk's certificate (IP 127.0.0.1 only), made once.
make_tls_material() {
    [[ -s $TLS_DIR/server.pem && -s $TLS_DIR/server.key && -s $TLS_DIR/ca.pem && -s $SECRET_FILE ]] && return 0
    command -v openssl >/dev/null || {
        log "installing openssl (apt-get)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssl >/dev/null || die "could not install openssl"
    }
    local tmp
    tmp="$(mktemp -d "$ROOT/var/lib/rtpvisor-tls.tmp.XXXXXX")"
    (
        cd "$tmp"
        openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 3650 \
            -subj "/CN=rtpvisor test CA" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
        openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=127.0.0.1"
        printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' >server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem \
            -days 3650 -extfile server.ext
        rm -f server.csr server.ext ca.srl
        printf 'canary-%s\n' "$(openssl rand -hex 20)" >ari-secret-test.password
    ) >"$tmp.log" 2>&1 || { cat "$tmp.log" >&2; rm -rf "$tmp" "$tmp.log"; die "making the TLS test certificates failed"; }
    rm -f "$tmp.log"
    rm -rf "$TLS_DIR"
    mv -T "$tmp" "$TLS_DIR"
    chmod 755 "$TLS_DIR"
    log "tls: made a test CA, a certificate for 127.0.0.1 and a test ARI password in $TLS_DIR"
}

# Appends the test ARI user to ETC/ari.conf.
install_secret_user() {
    local etc="$1"
    make_tls_material
    cat >>"$etc/ari.conf" <<EOF

; Written by scripts/asterisk.sh for the host chroot only: a test user whose random password
; ($SECRET_FILE) tests/e2e_secrets.rs looks for in rtpvisor's logs.
[$SECRET_USER]
type = user
read_only = no
password = $(head -n1 "$SECRET_FILE")
password_format = plain
EOF
}

secret_user_ok() {
    [[ -s $SECRET_FILE ]] || return 1
    curl -fsS --max-time 2 -u "$SECRET_USER:$(head -n1 "$SECRET_FILE")" "$ARI_URL" >/dev/null 2>&1
}

# Copies the certificate into ETC/keys and appends the TLS listener to ETC/http_local.conf.
install_tls() {
    local etc="$1"
    make_tls_material
    mkdir -p "$etc/keys"
    cp "$TLS_DIR/server.pem" "$etc/keys/asterisk.pem"
    cp "$TLS_DIR/server.key" "$etc/keys/asterisk.key"
    cat >>"$etc/http_local.conf" <<EOF
; ARI over TLS for tests/e2e_tls.rs: a certificate for 127.0.0.1 signed by a test CA
; ($TLS_DIR/ca.pem on the host). Host chroot only.
tlsenable=yes
tlsbindaddr=127.0.0.1:$TLS_PORT
tlscertfile=/etc/asterisk/keys/asterisk.pem
tlsprivatekey=/etc/asterisk/keys/asterisk.key
EOF
}

# The key readable by Asterisk's user only (and root).
protect_tls_key() {
    chroot "$ROOT" /bin/sh -ec 'chown root:asterisk /etc/asterisk/keys/asterisk.key && chmod 640 /etc/asterisk/keys/asterisk.key'
}

# An Asterisk started from a configuration without the TLS listener (another checkout's
# script) gets it added and `module reload http`: no restart, calls and WebSockets stay.
ensure_tls_running() {
    port_busy tcp "$TLS_PORT" && return 0
    local etc="$ROOT/etc/asterisk"
    if ! grep -q '^tlsenable=yes' "$etc/http_local.conf" 2>/dev/null; then
        install_tls "$etc"
        chmod -R u=rwX,go=rX "$etc/keys" "$etc/http_local.conf"
        protect_tls_key
    fi
    in_chroot_asterisk_rx 'module reload http' >/dev/null || log "warning: 'module reload http' failed"
    local i
    for ((i = 0; i < 50; i++)); do
        port_busy tcp "$TLS_PORT" && { log "start: TLS listener added on 127.0.0.1:$TLS_PORT (http reloaded)"; return 0; }
        sleep 0.1
    done
    log "warning: the TLS listener did not come up on 127.0.0.1:$TLS_PORT after reloading http"
}

ensure_secret_user_running() {
    secret_user_ok && return 0
    local etc="$ROOT/etc/asterisk"
    grep -q "^\[$SECRET_USER\]" "$etc/ari.conf" 2>/dev/null || install_secret_user "$etc"
    in_chroot_asterisk_rx 'module reload res_ari.so' >/dev/null || log "warning: 'module reload res_ari.so' failed"
    secret_user_ok && log "start: test ARI user $SECRET_USER added (res_ari reloaded)" ||
        log "warning: the test ARI user $SECRET_USER does not authenticate after reloading res_ari"
}

# ---------------------------------------------------------------------------------------------
# start / stop

install_conf() {
    [[ -d $CONF_SRC ]] || die "missing $CONF_SRC"
    local etc="$ROOT/etc/asterisk"
    mkdir -p "$etc"
    # Replace the whole directory's contents: Debian's ~100 sample files must not load.
    find "$etc" -mindepth 1 -delete
    cp -R "$CONF_SRC/." "$etc/"
    # Host-only overlays (see the header). The repo must never contain these two files.
    cat >"$etc/http_local.conf" <<'EOF'
; Written by scripts/asterisk.sh for the host chroot only: ARI listens on loopback here.
; Included by http.conf (#tryinclude); the container has no such file and binds 0.0.0.0.
bindaddr=127.0.0.1
EOF
    cat >"$etc/pjsip_local.conf" <<'EOF'
; Written by scripts/asterisk.sh for the host chroot only: SIP listens on loopback here.
; Included by pjsip.conf inside [transport-udp] (#tryinclude); the container binds 0.0.0.0.
bind=127.0.0.1:5060
EOF
    install_tls "$etc"
    install_secret_user "$etc"
    chown -R root:root "$etc"
    chmod -R u=rwX,go=rX "$etc"
    protect_tls_key
}

# wait_exit PID TENTHS: wait up to TENTHS/10 s for PID to exit; fails if it still runs.
wait_exit() {
    local i
    for ((i = 0; i < $2; i++)); do
        pid_alive "$1" || return 0
        sleep 0.1
    done
    ! pid_alive "$1"
}

# terminate_pid PID: TERM, wait 5 s, KILL, wait 5 s.
terminate_pid() {
    local pid="$1"
    pid_alive "$pid" || return 0
    log "sending TERM to Asterisk (PID $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    wait_exit "$pid" 50 && return 0
    log "Asterisk (PID $pid) ignored TERM; sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_exit "$pid" 50
}

START_PID=""
start_failed() {
    local why="$1"
    log "start failed: $why"
    print_logs 40
    if [[ -n $START_PID ]]; then
        terminate_pid "$START_PID"
    fi
    rm -f "$PIDFILE"
    unmount_runtime
    exit 1
}

cmd_start() {
    need_root start
    sanity_check_root_path
    is_built || cmd_build
    mkdir -p "$(dirname "$ROOT")"
    exec {runlockfd}>"$ROOT.run.lock"
    flock "$runlockfd"

    local pid
    if pid="$(our_pid)"; then
        if ari_ok; then
            log "start: Asterisk is already running and healthy (PID $pid, ARI answers)"
            ensure_tls_running
            ensure_secret_user_running
            return 0
        fi
        die "start: Asterisk is already running (PID $pid) but ARI does not answer at $ARI_URL; try: $0 stop"
    fi

    check_port_free tcp 8088
    check_port_free tcp "$TLS_PORT"
    check_port_free udp 5060

    local t0
    t0="$(now)"
    install_conf
    mkdir -p "$ROOT/run/asterisk"
    chroot "$ROOT" chown asterisk:asterisk /run/asterisk
    rm -f "$MESSAGES_LOG" "$ROOT/run/asterisk/asterisk.pid" "$ROOT/run/asterisk/asterisk.ctl"
    : >"$CONSOLE_LOG"
    mount_runtime

    # The lock's fd must not leak into Asterisk, or Asterisk holds the lock until it exits.
    setsid chroot "$ROOT" /usr/sbin/asterisk -f -n -U asterisk -G asterisk \
        </dev/null >>"$CONSOLE_LOG" 2>&1 {runlockfd}>&- &
    START_PID=$!
    echo "$START_PID" >"$PIDFILE"

    local deadline
    deadline="$(awk -v a="$(now)" -v t="$START_TIMEOUT" 'BEGIN { printf "%.3f", a + t }')"
    until ari_ok; do
        pid_alive "$START_PID" || start_failed "Asterisk exited during startup"
        if awk -v n="$(now)" -v d="$deadline" 'BEGIN { exit !(n > d) }'; then
            start_failed "ARI did not answer at $ARI_URL within ${START_TIMEOUT} s"
        fi
        sleep 0.1
    done
    in_chroot_asterisk_rx 'core waitfullybooted' "$START_TIMEOUT" >/dev/null ||
        start_failed "'core waitfullybooted' did not return"
    pid_alive "$START_PID" || start_failed "Asterisk exited during startup"
    is_our_asterisk "$START_PID" || log "warning: PID $START_PID does not look like our Asterisk"

    log "start: Asterisk running (PID $START_PID), ARI answers at $ARI_URL; startup took $(elapsed "$t0")"

    local errors
    errors="$(grep -E '(^|[] ])ERROR\[' "$MESSAGES_LOG" 2>/dev/null || true)"
    if [[ -n $errors ]]; then
        log "warning: ERROR lines in $MESSAGES_LOG at startup:"
        printf '%s\n' "$errors" >&2
    fi
    exec {runlockfd}>&-
}

cmd_stop() {
    need_root stop
    sanity_check_root_path
    [[ -d $ROOT ]] || { log "stop: $ROOT does not exist; nothing to stop"; return 0; }
    exec {runlockfd}>"$ROOT.run.lock"
    flock "$runlockfd"

    local pid t0
    t0="$(now)"
    if pid="$(our_pid)"; then
        in_chroot_asterisk_rx 'core stop now' 5 >/dev/null 2>&1 || true
        wait_exit "$pid" 50 || terminate_pid "$pid"
        pid_alive "$pid" && die "stop: PID $pid survived KILL"
        log "stop: Asterisk (PID $pid) stopped in $(elapsed "$t0")"
    else
        log "stop: Asterisk is not running"
    fi
    rm -f "$PIDFILE"
    unmount_runtime
    exec {runlockfd}>&-
}

cmd_status() {
    local pid
    if pid="$(our_pid)"; then
        if ari_ok; then
            echo "running: PID $pid, ARI answers at $ARI_URL (ROOT $ROOT)"
            return 0
        fi
        echo "running: PID $pid, ARI does NOT answer at $ARI_URL (ROOT $ROOT)"
        return 1
    fi
    if [[ $(id -u) -ne 0 ]] && ari_ok; then
        # Without root, /proc/PID/root of Asterisk (another user) can't be read.
        echo "ARI answers at $ARI_URL (run as root to see whether it is our Asterisk and its PID)"
        return 0
    fi
    if is_built; then
        echo "stopped (ROOT $ROOT is built: $(head -n1 "$ROOT/$STAMP_NAME"))"
    else
        echo "stopped (ROOT $ROOT is not built; run: $0 build)"
    fi
    return 3
}

cmd_cli() {
    [[ $# -gt 0 ]] || die "usage: $0 cli 'CLI COMMAND'"
    need_root cli
    our_pid >/dev/null || die "Asterisk is not running (start it with: $0 start)"
    chroot "$ROOT" /usr/sbin/asterisk -rx "$*"
}

cmd_sipp() {
    need_root sipp
    is_built || die "$ROOT is not built (run: $0 build)"
    mkdir -p "$ROOT$SIPP_CWD"
    [[ -L $ROOT$SIPP_CWD/pcap ]] || ln -sfn /usr/share/sip-tester "$ROOT$SIPP_CWD/pcap"
    # shellcheck disable=SC2016 # expanded by the chroot's sh
    chroot "$ROOT" /bin/sh -c 'cd "$0" && exec /usr/bin/sipp "$@"' "$SIPP_CWD" "$@"
}

cmd_log() {
    [[ -r $MESSAGES_LOG ]] || die "no log at $MESSAGES_LOG"
    if [[ $# -eq 0 ]]; then
        tail -n 60 "$MESSAGES_LOG"
    else
        tail "$@" "$MESSAGES_LOG"
    fi
}

main() {
    local cmd="${1:-}"
    [[ $# -gt 0 ]] && shift
    case "$cmd" in
        build) cmd_build ;;
        start) cmd_start ;;
        stop) cmd_stop ;;
        restart) cmd_stop && cmd_start ;;
        status) cmd_status ;;
        cli) cmd_cli "$@" ;;
        sipp) cmd_sipp "$@" ;;
        root) printf '%s\n' "$ROOT" ;;
        tls-ca) printf '%s\n' "$TLS_DIR/ca.pem" ;;
        ari-test-user) printf '%s %s\n' "$SECRET_USER" "$SECRET_FILE" ;;
        log) cmd_log "$@" ;;
        -h | --help | help) usage ;;
        "") usage >&2; exit 2 ;;
        *) log "unknown command '$cmd'"; usage >&2; exit 2 ;;
    esac
}

main "$@"
