# syntax=docker/dockerfile:1
# sesscache server (and client) image.
#
#   docker build -t sesscache:local .
#   docker run --rm -p 127.0.0.1:50051:50051 sesscache:local
#
# Without SESSCACHE_DATABASE_URL the server uses a SQLite file in /data (a
# volume); docker-compose.yml points it at PostgreSQL instead. Port 9464 serves
# /metrics and /healthz when SESSCACHE_HTTP_LISTEN=0.0.0.0:9464 (off by default;
# docker-compose.yml turns it on). Every setting is an
# environment variable SESSCACHE_* (see `python -m sesscache_server --help`).

ARG PYTHON_IMAGE=python:3.11-slim

# -- builder: the runtime virtualenv and the generated stubs -------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
COPY requirements.txt requirements-dev.txt ./

# The runtime virtualenv holds exactly the pinned runtime list: --no-deps
# installs nothing that is not pinned there, and `pip check` fails the build
# if the list misses a dependency.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-deps -r requirements.txt \
 && /opt/venv/bin/pip check

# The stub generators, at the versions pinned in requirements-dev.txt, in a
# virtualenv of their own that never reaches the final image; grpcio and
# protobuf constrained to the runtime pins (constraints take no extras).
RUN grep -E '^(grpcio-tools|mypy-protobuf)==' requirements-dev.txt > codegen.txt \
 && test "$(wc -l < codegen.txt)" -eq 2 \
 && sed -E 's/\[[^]]*\]//' requirements.txt > constraints.txt \
 && python -m venv /opt/codegen \
 && /opt/codegen/bin/pip install -r codegen.txt -c constraints.txt

COPY protos/ protos/
COPY sesscache/ sesscache/
COPY server/ server/
COPY client/ client/

# The same generator as the Makefile (client/stubs.py); the mypy plugins are found on PATH.
RUN PATH="/opt/codegen/bin:$PATH" /opt/codegen/bin/python client/stubs.py protos . sesscache.v1 \
 && PATH="/opt/codegen/bin:$PATH" /opt/codegen/bin/python client/stubs.py protos client sesscache_client.v1 \
 && /opt/venv/bin/python -m compileall -q sesscache server client

# -- runtime -----------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH=/app/server:/app/client \
    SESSCACHE_LISTEN=0.0.0.0:50051 \
    SESSCACHE_DATA_DIR=/data

RUN groupadd --system --gid 10001 sesscache \
 && useradd --system --uid 10001 --gid sesscache --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin sesscache \
 && mkdir /data \
 && chown sesscache:sesscache /data

WORKDIR /app
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /src/protos protos/
COPY --from=builder /src/sesscache sesscache/
COPY --from=builder /src/server server/
COPY --from=builder /src/client client/

# The SQLite data outlives the container (an anonymous volume unless one is
# mounted there); it starts as the empty, sesscache-owned folder made above.
VOLUME ["/data"]

USER 10001:10001
EXPOSE 50051 9464
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --start-interval=2s --retries=3 \
    CMD ["python", "-m", "sesscache_client", "--target", "127.0.0.1:50051", "--timeout", "3", "health"]
CMD ["python", "-m", "sesscache_server"]
