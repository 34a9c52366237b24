# mobilenet-serve: build with the Rust toolchain, run on a small Debian base as a non-root user.
#
#   docker build -t mobilenet-serve .                                  # models mounted at run time
#   docker run -p 8000:8000 mobilenet-serve serve                      # nothing mounted: the embedded model
#   (podman/buildah: add --format docker, else the OCI image format drops the HEALTHCHECK)
#   docker run -p 8000:8000 -p 8001:8001 -v "$PWD/zoo:/models:ro" mobilenet-serve
#   docker build --build-arg MODELS=zoo -t mobilenet-serve:zoo .       # models baked in from ./zoo
#
# No target-cpu flags: the kernels pick AVX-512, AVX2+FMA or scalar code at run time, so one
# image runs on any x86-64 node. protox compiles the .proto files, so no protoc is needed.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS chef
# nasm: libjpeg-turbo's SIMD in mozjpeg-sys (the scaled JPEG decode of `resize=fast`). Not
# pinned: a build tool of the discarded builder stage, at the base image's Debian release.
# hadolint ignore=DL3008
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nasm \
 && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

# The dependency recipe changes only with Cargo.toml/Cargo.lock, so the layer that builds the
# dependencies stays cached while the project's own code changes.
# Only what the build reads is copied, so that documentation, tests or a models directory in the
# context do not invalidate these layers.
FROM chef AS planner
COPY Cargo.toml Cargo.lock ./
COPY proto proto
COPY src src
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY Cargo.toml Cargo.lock ./
COPY proto proto
# The default model compiled into the binary (models/NOTICE).
COPY models/embedded models/embedded
COPY src src
# The line tables are dropped (a 170 MB binary becomes about 20 MB); symbols stay, so that a
# backtrace still names its functions.
RUN cargo build --release --locked --bin mobilenet-serve \
 && mkdir -p /out \
 && objcopy --strip-debug target/release/mobilenet-serve /out/mobilenet-serve

FROM ${RUNTIME_IMAGE}
# A directory of the build context with the zoo (real files, not links) to bake into the image;
# the default holds only a README, and the models are then mounted at /models.
ARG MODELS=deploy/no-models
RUN groupadd --system --gid 10001 mobilenet \
 && useradd --system --uid 10001 --gid mobilenet --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin mobilenet
COPY --from=builder /out/mobilenet-serve /usr/local/bin/mobilenet-serve
COPY ${MODELS} /models/
# MODELS_DIR is left unset: from WORKDIR /, the default directory `models` is /models, and when
# nothing is mounted or baked there the embedded default model is served (a named directory is
# never replaced by it; the Kubernetes manifests name theirs).
WORKDIR /
ENV HOST=0.0.0.0 \
    HTTP_PORT=8000 \
    GRPC_PORT=8001 \
    LOG_FORMAT=json
USER 10001:10001
EXPOSE 8000 8001
# Liveness only: readiness (/readyz) is the orchestrator's business, and a container that is
# still warming up is not unhealthy. The probe follows HTTP_PORT.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["mobilenet-serve", "healthcheck"]
ENTRYPOINT ["mobilenet-serve"]
CMD ["serve"]
