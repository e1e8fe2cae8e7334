# Builds the single syncserver binary; the default settings keep data in /data.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin syncserver

FROM debian:bookworm-slim
RUN useradd --system --home /data syncserver && mkdir -p /data && chown syncserver /data
COPY --from=build /src/target/release/syncserver /usr/local/bin/syncserver
USER syncserver
WORKDIR /data
ENV SYNC_HOST=0.0.0.0 SYNC_DATA_DIR=/data
EXPOSE 8000
VOLUME ["/data"]
ENTRYPOINT ["/usr/local/bin/syncserver"]
