# The operator image. Build from the repository root:
#   docker build -f docker/operator.Dockerfile -t peerbubble/operator:0.1.0 .
# These images cannot be built on the project's CI machines (no container runtime); see docs/kubernetes.md.
FROM docker.io/library/rust:1.94-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --package peerbubble-operator \
 && install -D -m 0755 target/release/peerbubble-operator /out/peerbubble-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/peerbubble-operator /usr/local/bin/peerbubble-operator
USER 65532:65532
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/peerbubble-operator"]
