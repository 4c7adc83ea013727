# ipubsub-server in a small runtime image. Build: docker build -t ipubsub .
# Run:   docker run -p 16681:16681 -v ipubsub-data:/var/lib/ipubsub ipubsub
FROM rust:1.94-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ipubsub-server \
    && strip target/release/ipubsub-server

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/ipubsub --create-home ipubsub
COPY --from=build /src/target/release/ipubsub-server /usr/local/bin/ipubsub-server
COPY config/single-node.yaml /etc/ipubsub/ipubsub.yaml
USER ipubsub
WORKDIR /var/lib/ipubsub
# Listen on every interface of the container; keep the embedded store in the volume; log JSON.
ENV IPUBSUB_NODE__HTTP_BIND_ADDR_PORT=0.0.0.0:16681 \
    IPUBSUB_STORAGE__EMBEDDED__PATH=/var/lib/ipubsub/data \
    IPUBSUB_LOG__FORMAT=json
EXPOSE 16681
VOLUME ["/var/lib/ipubsub"]
# SIGTERM is the graceful leave: waiting receivers answered, appends flushed, streams handed on.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/ipubsub-server", "--config", "/etc/ipubsub/ipubsub.yaml"]
