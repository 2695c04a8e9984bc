# catlog-live image: one binary, subcommand as the argument.
#
#   docker build -t catlog-live:local .
#   docker run --rm -p 3001:3001 -e KAFKA_BROKER=… -e DATABASE_URL=… catlog-live:local          # all
#   docker run --rm -e KAFKA_BROKER=… -e DATABASE_URL=… catlog-live:local consume
#
# docker-compose.yml builds it and wires it to Kafka and PostgreSQL.

# ---- builder -------------------------------------------------------------
# 1.92, not Cargo.toml's rust-version 1.88: the locked refinery 0.10 (and
# refinery-core) declare rust-version 1.92, and cargo refuses older compilers.
FROM rust:1.92-bookworm AS builder
WORKDIR /build

# Dependencies first, in a layer of their own that stays cached until
# Cargo.toml or Cargo.lock change: build them against a dummy crate.
# benches/ingest.rs must exist because Cargo.toml names it ([[bench]] ingest).
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && : > src/lib.rs \
    && echo 'fn main() {}' > benches/ingest.rs \
    && cargo build --release --locked \
    && rm -rf target/release/.fingerprint/catlog-live-* \
              target/release/deps/catlog_live-* \
              target/release/deps/libcatlog_live-* \
              src

# The real crate. Templates (askama), static files (include_str!), the
# migrations (refinery) and the catalog CSV under src/catalog/ are compiled
# into the binary, so they are needed here and not at run time.
# The dummy benches/ingest.rs stays: the release binary does not use it.
COPY src ./src
COPY templates ./templates
COPY static ./static
COPY migrations ./migrations
RUN cargo build --release --locked \
    && cp target/release/catlog-live /catlog-live

# ---- runtime -------------------------------------------------------------
FROM debian:bookworm-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --gid 10001 catlog \
    && useradd --uid 10001 --gid catlog --create-home --shell /usr/sbin/nologin catlog

COPY --from=builder /catlog-live /usr/local/bin/catlog-live

USER catlog
WORKDIR /home/catlog

ENV LISTEN_ADDR=0.0.0.0:3001
EXPOSE 3001

ENTRYPOINT ["catlog-live"]
CMD ["all"]
