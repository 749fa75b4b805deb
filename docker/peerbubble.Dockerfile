# The `peerbubble` image: admin API (with its console) and bubble-server, one static-ish binary on distroless,
# built without the member tools (no MLS, no WebRTC stack: ADR 0025).
# Build from the repository root:  docker build -f docker/peerbubble.Dockerfile -t peerbubble/peerbubble:0.1.0 .
# These images cannot be built on the project's CI machines (no container runtime); see docs/kubernetes.md.
FROM docker.io/library/rust:1.94-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --package peerbubble --no-default-features --features kubernetes \
 && install -D -m 0755 target/release/peerbubble /out/peerbubble

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/peerbubble /usr/local/bin/peerbubble
USER 65532:65532
EXPOSE 8480 8481 3478/udp 443
HEALTHCHECK --interval=30s --timeout=5s CMD ["/usr/local/bin/peerbubble", "probe", "http://127.0.0.1:8480/healthz"]
ENTRYPOINT ["/usr/local/bin/peerbubble"]
CMD ["up", "--data-dir", "/var/lib/peerbubble"]
