# pulseboard: the one binary in a small Debian image, run as an unprivileged user.
#   docker build -t pulseboard .
#   docker run --rm -p 8080:8080 pulseboard serve --demo
# Configuration is environment only (docs/deployment.md, Configuration).

# --- front-end packages ------------------------------------------------------------------------
# uPlot from the npm registry, as package-lock.json pins it; the build embeds it (build.rs stops
# without it).
FROM node:20-bookworm-slim AS npm
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund

# --- dependencies ------------------------------------------------------------------------------
# Only the manifests: this layer (every dependency compiled) is rebuilt when Cargo.toml,
# Cargo.lock or package-lock.json change, not when the source does.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs package.json package-lock.json ./
COPY --from=npm /src/node_modules node_modules
# Cargo checks that every target the manifest names exists: empty stand-ins for them.
RUN mkdir -p src benches tests/api migrations \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs tests/api/main.rs \
    && for bench in ingest live store; do echo 'fn main() {}' > "benches/$bench.rs"; done \
    && cargo build --release --locked \
    && rm -rf src benches tests

# --- the service -------------------------------------------------------------------------------
# Migrations, templates and static files (and uPlot from node_modules/) are compiled into the
# binary.
COPY src src
COPY migrations migrations
COPY templates templates
COPY static static
COPY benches benches
COPY tests tests
# The stand-ins' build is older than these files; touch makes cargo rebuild the crate itself.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin pulseboard \
    && cp target/release/pulseboard /usr/local/bin/pulseboard

# --- runtime -----------------------------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /var/lib/pulseboard pulseboard
COPY --from=build /usr/local/bin/pulseboard /usr/local/bin/pulseboard
USER pulseboard
# The default SQLite database (data/pulseboard.db) is created here; mount a volume to keep it.
WORKDIR /var/lib/pulseboard
ENV PULSEBOARD_BIND=0.0.0.0:8080
EXPOSE 8080
# SIGTERM starts the graceful shutdown (docs/operations.md, Shutdown): within 10 s by default.
STOPSIGNAL SIGTERM
# No curl in the image: bash's /dev/tcp asks for /healthz on the default port (plain HTTP; a
# deployment that changes PULSEBOARD_BIND or enables TLS overrides this check).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["pulseboard"]
CMD ["serve"]
