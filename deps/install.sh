#!/usr/bin/env bash
# Installs the Debian 12 packages tenantd needs.
#
#   deps/install.sh            everything to build, run and test (the default)
#   deps/install.sh --build    only what building the binary needs (Dockerfile)
#   deps/install.sh PKG...     these packages (e.g. the benchmark's nginx-light)
#
# Runs as root, or as a user with sudo. Needs no terminal: apt runs
# non-interactively. When every package is already installed, apt is not
# touched at all, so a second run takes a fraction of a second.
#
# The private PostgreSQL (deps/pg.sh) needs only PostgreSQL's binaries, so
# Debian's automatic "main" cluster is switched off before postgresql-15 is
# installed, and services are kept from starting under apt where no init
# system runs them (containers, CI).
set -euo pipefail

BUILD_PACKAGES=(
    build-essential cmake pkg-config
    libuv1-dev node-llhttp libpq-dev libargon2-dev libjansson-dev libssl-dev
    libcurl4-openssl-dev # email.send: SMTP (STARTTLS, SMTPS, auth)
    libcrypt-dev # libxcrypt: verifying imported bcrypt hashes
)
TEST_PACKAGES=(
    libcmocka-dev python3
    python3-cryptography # test_oidc: the fake provider's RS256/ES256 keys
    postgresql-15 postgresql-client-15
    wrk curl ca-certificates openssl # openssl: the webhook TLS tests' certificates
    util-linux procps coreutils # runuser, flock (deps/pg.sh); ps, kill; sha256sum
    nodejs # the examples/worker.mjs and worker.ts tests (worker.ts: npm too, if present)
)

case "${1:-}" in
    "") wanted=("${BUILD_PACKAGES[@]}" "${TEST_PACKAGES[@]}") ;;
    --build) wanted=("${BUILD_PACKAGES[@]}") ;;
    -h | --help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "deps/install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) wanted=("$@") ;;
esac

installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

missing=()
for p in "${wanted[@]}"; do
    installed "$p" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" = 0 ]; then
    as_root() { "$@"; }
elif command -v sudo >/dev/null 2>&1; then
    as_root() { sudo "$@"; }
else
    echo "deps/install.sh: missing packages (${missing[*]}); run as root or install sudo" >&2
    exit 1
fi

apt_get() {
    # --force-confold: keep any config file already on the machine, never ask.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -y -q \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        --no-install-recommends "$@"
}

# Where no init system runs services (a container, a chroot), a package's
# postinst trying to start its daemon fails or lingers; policy-rc.d tells
# invoke-rc.d not to. Created only for this run and only if absent.
policy=/usr/sbin/policy-rc.d
made_policy=
cleanup() {
    if [ -n "$made_policy" ]; then as_root rm -f "$policy"; fi
}
trap cleanup EXIT
if [ ! -d /run/systemd/system ] && [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# written by tenantd deps/install.sh for one apt run\nexit 101\n' |
        as_root tee "$policy" >/dev/null
    as_root chmod 755 "$policy"
    made_policy=1
fi

echo "deps/install.sh: installing ${missing[*]}" >&2
apt_get update

# No "main" cluster on port 5432: tenantd runs its own (deps/pg.sh). The
# setting lives in postgresql-common's createcluster.conf, so that package goes
# first (as the official postgres Docker image does), then the server.
if printf '%s\n' "${missing[@]}" | grep -qx 'postgresql-15'; then
    installed postgresql-common || apt_get install postgresql-common
    conf=/etc/postgresql-common/createcluster.conf
    if grep -qE '^[#[:space:]]*create_main_cluster' "$conf" 2>/dev/null; then
        as_root sed -i -E 's/^[#[:space:]]*create_main_cluster.*/create_main_cluster = false/' "$conf"
    else
        echo 'create_main_cluster = false' | as_root tee -a "$conf" >/dev/null
    fi
fi

apt_get install "${missing[@]}"

for p in "${missing[@]}"; do
    if ! installed "$p"; then
        echo "deps/install.sh: $p did not install" >&2
        exit 1
    fi
done
