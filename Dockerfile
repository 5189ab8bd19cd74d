# syntax=docker/dockerfile:1
# Build stage: compile the release binary with the locked dependency set.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY loadtest/Cargo.toml loadtest/Cargo.toml
COPY src src
COPY loadtest/src loadtest/src
COPY migrations migrations
COPY tests tests
RUN cargo build --release --locked --bin callside

# Runtime stage: a slim image with no compiler, running as an unprivileged user.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system callside \
    && useradd --system --gid callside --home-dir /var/lib/callside --create-home callside
COPY --from=build /src/target/release/callside /usr/local/bin/callside
COPY config /etc/callside
USER callside
WORKDIR /var/lib/callside
ENV CALLSIDE_CONFIG=/etc/callside/callside.toml
EXPOSE 8080
# A slim image has no curl: the binary checks its own health endpoint.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["callside", "healthcheck", "--url", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["callside"]
CMD ["serve", "--listen", "0.0.0.0:8080", "--data-dir", "/var/lib/callside/data"]
