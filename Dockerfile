# The `backlinks` binary in a small runtime image.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p backlinks-cli \
 && cp target/release/backlinks /usr/local/bin/backlinks

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 backlinks
COPY --from=build /usr/local/bin/backlinks /usr/local/bin/backlinks
COPY pipelines /app/pipelines
# Parquet output and the state directory (raw archive, run manifests):
# writable by the runtime user; mount volumes here to keep them.
RUN mkdir -p /app/data /app/state && chown backlinks /app/data /app/state
WORKDIR /app
USER backlinks
ENTRYPOINT ["backlinks"]
CMD ["run", "pipelines/nightly.toml"]
