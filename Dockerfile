# tenantd container image.
#
#   docker build --build-arg TENANTD_COMMIT=$(git rev-parse --short=12 HEAD) -t tenantd .
#   docker run -p 8080:8080 -e DATABASE_URL=postgresql://user:pass@db/tenantd \
#       -e TENANTD_JWT_SECRET=$(openssl rand -hex 32) -e TENANTD_MIGRATE_ON_START=1 tenantd
#
# compose.yaml runs it with PostgreSQL and HAProxy (`docker compose up`).
# The build stage installs the build packages with the project's own script
# and builds the release preset, as CI does; the runtime stage holds only the
# shared libraries the binary links and the binary itself (migrations and the
# OpenAPI document are compiled in).

FROM debian:bookworm-slim AS build
WORKDIR /src
COPY deps/install.sh deps/install.sh
RUN ./deps/install.sh --build && rm -rf /var/lib/apt/lists/*
COPY . .
# .git stays out of the build context: the commit comes in as an argument,
# which RUN sees as the environment variable cmake/commit.cmake reads
# ("unknown" when not given).
ARG TENANTD_COMMIT=unknown
RUN cmake --preset release -DBUILD_TESTING=OFF \
 && cmake --build --preset release --target tenantd -j "$(nproc)" \
 && ./build/release/tenantd --version

FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libuv1 libpq5 libargon2-1 libjansson4 libssl3 libcurl4 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin tenantd
COPY --from=build /src/build/release/tenantd /usr/local/bin/tenantd
# Fails the build when a shared library the binary links is missing here.
RUN /usr/local/bin/tenantd --version
USER tenantd:tenantd
ENV TENANTD_LISTEN=0.0.0.0:8080 \
    TENANTD_MIGRATE_ON_START=0
EXPOSE 8080
# `tenantd healthcheck` asks /health of the server on TENANTD_LISTEN: no curl
# in the image.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/tenantd", "healthcheck"]
# `serve` gets --migrate when TENANTD_MIGRATE_ON_START=1; any other command
# (migrate status, routes, --help) runs as given. exec: tenantd is PID 1 and
# receives SIGTERM itself, so `docker stop` drains in-flight requests.
ENTRYPOINT ["/bin/sh", "-c", "if [ \"$1\" = serve ] && [ \"$TENANTD_MIGRATE_ON_START\" = 1 ]; then shift; set -- serve --migrate \"$@\"; fi; exec /usr/local/bin/tenantd \"$@\"", "tenantd"]
CMD ["serve"]
