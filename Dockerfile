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
    BUILDD_LOG_FORMAT=json
COPY --from=build /wheels /wheels
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
# Listens on all interfaces of the container; see docs/operations.md before
# publishing the port beyond a trusted network.
CMD ["buildd-server", "--address", "0.0.0.0:50051", "--insecure"]
