# A LOCAL STAND-IN for the official postgres:15 image, for machines without a registry (the
# compose test): Debian's PostgreSQL 15 server (real PostgreSQL), started the way the official
# image is configured — POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB, PGDATA, port 5432.
# Operators use postgres:15 (deploy/compose/compose.yaml's default).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

USER root
ENV LANG=C.UTF-8 PGDATA=/var/lib/postgresql/data PATH=/usr/lib/postgresql/15/bin:$PATH
COPY debs/ /tmp/debs/
RUN set -eu; \
    for deb in /tmp/debs/*.deb; do dpkg -x "$deb" /; done; \
    ldconfig; rm -rf /tmp/debs; \
    useradd --system --uid 999 --home-dir /var/lib/postgresql --create-home postgres; \
    mkdir -p /var/run/postgresql "$PGDATA" && chown postgres:postgres /var/run/postgresql "$PGDATA"; \
    postgres --version
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
USER postgres
EXPOSE 5432
ENTRYPOINT ["sh", "/usr/local/bin/postgres-entrypoint.sh"]
