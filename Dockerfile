# syntax=docker/dockerfile:1
# One image for every sagashop service and the operator.
#
#   docker build -t sagashop:0.1.0 .
#   docker run --rm sagashop:0.1.0 --help                      # sagashop <service>|dev|dlq|doctor
#   docker run --rm --entrypoint /usr/local/bin/sagashop-operator sagashop:0.1.0 crds
#
# Stages: `planner` reduces the workspace to a dependency recipe (cargo-chef), `builder` builds
# the dependencies from that recipe alone (a cached layer that changes only with Cargo.lock or
# a manifest), then the sources. The runtime image is distroless: glibc and CA certificates, no
# shell, no package manager, running as uid 65532.

ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-bookworm AS chef
# librdkafka is built from source by rdkafka-sys: it needs make, a C compiler, perl, python3,
# zlib (linked statically below so the runtime image needs no libz) and OpenSSL's headers (TLS
# and SASL SCRAM; distroless/cc ships the libssl3 it links against).
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config perl python3 libssl-dev \
 && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
ENV LIBZ_SYS_STATIC=1 CARGO_TERM_COLOR=never
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked -p sagashop -p sagashop-operator \
 && install -D -m 0755 target/release/sagashop /out/sagashop \
 && install -D -m 0755 target/release/sagashop-operator /out/sagashop-operator

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
LABEL org.opencontainers.image.title="sagashop" \
      org.opencontainers.image.description="sagashop services and operator: an event-driven order saga on Apache Kafka" \
      org.opencontainers.image.source="https://github.com/sagashop/sagashop" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/sagashop /out/sagashop-operator /usr/local/bin/
# The shipped saga, for `sagashop dev` and services run without the operator's ConfigMap.
COPY k8s/sagas/order-fulfilment.yaml /etc/sagashop/saga/saga.yaml
USER 65532:65532
EXPOSE 8080 8081
ENV LOG_FORMAT=json SAGASHOP_HTTP=0.0.0.0:8080
ENTRYPOINT ["/usr/local/bin/sagashop"]
CMD ["--help"]
