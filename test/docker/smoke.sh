#!/usr/bin/env bash
# Builds the container image from a clean clone of HEAD and checks it against
# the private PostgreSQL: the health check turns healthy, it runs as a
# non-root user, signup and login work, a one-off `migrate status` runs, the
# JWT secret never reaches the log, and `docker stop` drains and exits 0.
# Then, where `docker compose` exists, the stack of compose.yaml: up with
# --wait, signup and login through HAProxy on :8080 (both replicas serve),
# the image's health check by `tenantd healthcheck`, and down -v.
#
#   test/docker/smoke.sh
#
# Needs a running Docker daemon (Debian: apt-get install docker.io; dockerd).
# Where Docker Hub cannot be reached, the base image debian:bookworm-slim is
# made locally from debootstrap (minbase) and Debian's mirror. Not part of
# CI (a daemon there is not a given). Talks only to 127.0.0.1 (host
# network), bounded in time; removes its container, image tag, database and
# temporary folder.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$here"
docker info >/dev/null 2>&1 || { echo "smoke: no Docker daemon (dockerd)" >&2; exit 1; }

tmp=$(mktemp -d /tmp/tenantd-docker.XXXXXX)
name=tenantd-smoke-$$
tag=tenantd:smoke-$$
dbname=docker_smoke_$$
cleanup() {
    set +e
    docker rm -f "$name" >/dev/null 2>&1
    docker rmi "$tag" >/dev/null 2>&1
    [ -n "${compose_up:-}" ] && (cd "$tmp/src" && docker compose -p "$name" down -v --rmi local >/dev/null 2>&1)
    ./deps/pg.sh psql -qAt -c "DROP DATABASE IF EXISTS $dbname WITH (FORCE)" >/dev/null 2>&1
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() {
    echo "smoke: $*" >&2
    docker logs "$name" 2>&1 | tail -n 20 >&2 || true
    exit 1
}

if ! docker image inspect debian:bookworm-slim >/dev/null 2>&1 &&
    ! timeout 120 docker pull debian:bookworm-slim >/dev/null 2>&1; then
    echo "smoke: no debian:bookworm-slim; making it with debootstrap" >&2
    command -v debootstrap >/dev/null || apt-get install -y --no-install-recommends debootstrap >/dev/null
    debootstrap --variant=minbase bookworm "$tmp/rootfs" http://deb.debian.org/debian >/dev/null
    tar -C "$tmp/rootfs" -c . | docker import - debian:bookworm-slim >/dev/null
    rm -rf "$tmp/rootfs"
fi

git clone -q "$here" "$tmp/src"
echo "smoke: docker build ($(git -C "$tmp/src" rev-parse --short HEAD))" >&2
commit=$(git -C "$tmp/src" rev-parse --short=12 HEAD)
timeout 1800 docker build -q --build-arg TENANTD_COMMIT="$commit" -t "$tag" "$tmp/src" >/dev/null
docker run --rm "$tag" --version | grep -q "(commit $commit)" || fail "--version lacks the commit"

./deps/pg.sh start >/dev/null
./deps/pg.sh psql -qAt -c "CREATE DATABASE $dbname" >/dev/null
db_url="$(./deps/pg.sh url | sed 's,/tenantd$,,')/$dbname"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
secret=$(openssl rand -hex 32)
base=http://127.0.0.1:$port

docker run -d --name "$name" --network host -e DATABASE_URL="$db_url" \
    -e TENANTD_JWT_SECRET="$secret" -e TENANTD_MIGRATE_ON_START=1 \
    -e TENANTD_LISTEN="127.0.0.1:$port" "$tag" >/dev/null
health=
for _ in $(seq 60); do
    health=$(docker inspect -f '{{.State.Health.Status}}' "$name")
    [ "$health" = healthy ] && break
    [ "$(docker inspect -f '{{.State.Running}}' "$name")" = true ] || fail "the container exited"
    sleep 1
done
[ "$health" = healthy ] || fail "health check: $health after 60 s"
echo "smoke: healthy" >&2

[ "$(docker exec "$name" id -u)" = 10001 ] || fail "not running as uid 10001"
curl -fsS --max-time 10 -H 'Content-Type: application/json' \
    -d '{"name":"Smoke","slug":"smoke","admin":{"email":"a@example.com","password":"correct-horse-battery"}}' \
    "$base/v1/orgs" >/dev/null || fail "signup"
curl -fsS --max-time 10 -H 'Content-Type: application/json' \
    -d '{"email":"a@example.com","password":"correct-horse-battery","org":"smoke"}' \
    "$base/v1/auth/login" | grep -q '"access_token"' || fail "login"
docker run --rm --network host -e DATABASE_URL="$db_url" "$tag" migrate status |
    grep -q '0 behind' || fail "migrate status"

start=$(date +%s%N)
docker stop -t 30 "$name" >/dev/null
took_ms=$(( ($(date +%s%N) - start) / 1000000 ))
[ "$(docker inspect -f '{{.State.ExitCode}}' "$name")" = 0 ] || fail "exit code after docker stop"
docker logs "$name" 2>&1 | grep -q 'draining' || fail "no drain on docker stop"
if docker logs "$name" 2>&1 | grep -q "$secret"; then fail "the JWT secret is in the log"; fi
echo "smoke: ok (image $(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1 / 1e6}'), stopped in ${took_ms} ms)"

if ! docker compose version >/dev/null 2>&1; then
    echo "smoke: no docker compose; compose.yaml not checked" >&2
    exit 0
fi
echo "smoke: docker compose up (compose.yaml)" >&2
compose_up=1
(cd "$tmp/src" && TENANTD_COMMIT=$commit timeout 1800 docker compose -p "$name" up -d --build --wait \
    --wait-timeout 300 >/dev/null) || fail "docker compose up --wait"
base=http://127.0.0.1:8080
curl -fsS --max-time 10 "$base/ready" | grep -q ready || fail "compose: /ready through HAProxy"
curl -fsS --max-time 10 -H 'Content-Type: application/json' \
    -d '{"name":"Compose","slug":"compose","admin":{"email":"a@example.com","password":"correct-horse-battery"}}' \
    "$base/v1/orgs" >/dev/null || fail "compose: signup"
for _ in 1 2 3 4; do # round robin: both replicas verify the same secret
    curl -fsS --max-time 10 -H 'Content-Type: application/json' \
        -d '{"email":"a@example.com","password":"correct-horse-battery","org":"compose"}' \
        "$base/v1/auth/login" | grep -q '"access_token"' || fail "compose: login"
done
replicas=$(cd "$tmp/src" && docker compose -p "$name" ps --status running -q tenantd | wc -l)
[ "$replicas" = 2 ] || fail "compose: $replicas tenantd replicas running, expected 2"
curl -fsS --max-time 10 "$base/metrics" | grep -q "tenantd_build_info{.*commit=\"$commit\"" ||
    fail "compose: build info"
echo "smoke: compose ok"
