# buildd daemon image: a shared build daemon for CI agents on one network.
# Build: docker build -t buildd .   Run: see docs/operations.md.

FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY client ./client
COPY server ./server
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.12-slim
ENV PYTHONUNBUFFERED=1 \
    BUILDD_STATE_DIR=/var/lib/buildd \
    BUILDD_LOG_FORMAT=json \
    BUILDD_PRINCIPALS_FILE=/run/secrets/buildd-tokens
COPY --from=build /wheels /wheels
# bubblewrap sandboxes remote principals' hook calls where the container may
# make namespaces (see docs/remote.md); elsewhere the daemon says what it lacks.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends bubblewrap \
    && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir /wheels/*.whl \
    && rm -rf /wheels \
    && groupadd --gid 10001 buildd \
    && useradd --create-home --uid 10001 --gid 10001 buildd \
    && mkdir -p /var/lib/buildd \
    && chown buildd:buildd /var/lib/buildd
USER 10001:10001
VOLUME ["/var/lib/buildd"]
EXPOSE 50051
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s \
    CMD ["buildd-client", "-q", "--address", "127.0.0.1:50051", "health"]
# Listens on all interfaces of the container, with bearer tokens from the
# file at $BUILDD_PRINCIPALS_FILE when one is mounted there (a secret); see
# docs/operations.md and docs/remote.md before publishing the port.
CMD ["sh", "-c", "if [ -f \"$BUILDD_PRINCIPALS_FILE\" ]; then set -- --token-file \"$BUILDD_PRINCIPALS_FILE\"; fi; exec buildd-server --address 0.0.0.0:50051 --insecure \"$@\"", "buildd-server"]
