# pulseboard: the one binary on Debian slim.
#   docker build -t pulseboard .
#   docker run --rm -p 8080:8080 pulseboard serve --demo
# Configuration is environment only (SPEC §2); see docs/deployment.md.

# --- build -----------------------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src
# Migrations (and, later, templates and static files) are compiled into the binary, so the
# whole source tree is needed; .dockerignore keeps target/ and data/ out of the context.
COPY . .
RUN cargo build --release --locked \
    && cp target/release/pulseboard /usr/local/bin/pulseboard

# --- runtime ---------------------------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --home-dir /var/lib/pulseboard pulseboard
COPY --from=build /usr/local/bin/pulseboard /usr/local/bin/pulseboard
USER pulseboard
# The default SQLite database (data/pulseboard.db) is created here; mount a volume to keep it.
WORKDIR /var/lib/pulseboard
ENV PULSEBOARD_BIND=0.0.0.0:8080
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["pulseboard"]
CMD ["serve"]
