# Weft's images, for users who build with Docker, from the repository root:
#   docker build --build-arg BIN=weft-operator -t weft-operator .
#   docker build --build-arg BIN=weft-proxy -t weft-proxy .
# The local e2e cluster builds the same images without Docker
# (e2e/cluster/images.sh from-binary): the binary as the entrypoint at
# /usr/local/bin/<BIN>, the shared libraries it links, and user weft (uid 2102).
ARG BIN=weft-operator

FROM rust:1.95-bookworm AS build
ARG BIN
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p "$BIN" && cp "target/release/$BIN" /weft-binary

FROM debian:bookworm-slim
ARG BIN
# The proxy image also runs `weft-proxy init`, which writes the capture rules.
RUN if [ "$BIN" = weft-proxy ]; then \
      apt-get update && apt-get install -y --no-install-recommends iptables && rm -rf /var/lib/apt/lists/*; \
    fi
RUN groupadd --gid 2102 weft && useradd --uid 2102 --gid 2102 --no-create-home --shell /usr/sbin/nologin weft
COPY --from=build /weft-binary /usr/local/bin/${BIN}
RUN ln -s "/usr/local/bin/${BIN}" /usr/local/bin/entrypoint
USER 2102:2102
ENTRYPOINT ["/usr/local/bin/entrypoint"]
