# One image with both binaries: phoenix-node (memory node, cleanup job) and
# phoenix-operator. Build: docker build -t phoenix-memory:0.1.0 .
#
# Stage 1 compiles in the official Rust image; stage 2 is distroless (no shell, no package
# manager) and runs as the non-root user 65532.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# jemalloc's build-time configuration (see .cargo/config.toml).
COPY .cargo .cargo
COPY operator operator
COPY node node
COPY tests tests
# Without the node's `bench` feature: the benchmark scenarios and their plotting and HTTP
# client crates stay out of the image.
RUN cargo build --release --locked -p phoenix-node -p phoenix-operator \
      --no-default-features --features phoenix-node/jemalloc \
 && mkdir -p /out \
 && cp target/release/phoenix-node target/release/phoenix-operator /out/

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
EXPOSE 8080
VOLUME ["/data"]
ENTRYPOINT ["/usr/local/bin/phoenix-node"]
CMD ["serve", "--config", "/etc/phoenix/node.yaml"]
