# syncserver in a small image: `docker build -t syncserver .` (amd64 and arm64:
# `docker buildx build --platform linux/amd64,linux/arm64 -t syncserver .`).
# The default settings keep everything (SQLite database, master secret) in the /data volume.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin syncserver \
    && strip target/release/syncserver

FROM debian:bookworm-slim
# ca-certificates: the tokenserver talks to Firefox Accounts over TLS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /data syncserver \
    && mkdir -p /data && chown syncserver /data
COPY --from=build /src/target/release/syncserver /usr/local/bin/syncserver
USER syncserver
WORKDIR /data
# Listen on the container's interfaces; set SYNC_PUBLIC_URL to the URL Firefox will use.
ENV SYNC_HOST=0.0.0.0 SYNC_PORT=8000 SYNC_DATA_DIR=/data
EXPOSE 8000
VOLUME ["/data"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/syncserver", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/syncserver"]
