# syntax=docker/dockerfile:1
# sesscache server (and client) image: the two wheels, installed.
#
#   docker build -t sesscache:local .
#   docker run --rm -p 127.0.0.1:50051:50051 sesscache:local
#
# Without SESSCACHE_DATABASE_URL the server uses a SQLite file in /data (a
# volume); docker-compose.yml points it at PostgreSQL instead. Port 9464 serves
# the web console, /metrics and /healthz when SESSCACHE_HTTP_LISTEN=0.0.0.0:9464
# (by default HTTP is on the container's own loopback only; docker-compose.yml
# sets it). Every setting is an
# environment variable SESSCACHE_* (see `sesscache-server --help`).

ARG PYTHON_IMAGE=python:3.11-slim

# -- builder: the two wheels and the runtime virtualenv ------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
COPY requirements.txt ./

# The runtime virtualenv holds exactly the pinned runtime list: --no-deps
# installs nothing that is not pinned there (a layer of its own, cached).
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-deps -r requirements.txt

# The wheels of the server (`.`) and the client (`./client`), built as
# `pip install .` builds them: in build isolation with their [build-system]
# requires, where the build hook (setup.py, client/stubs.py) generates the
# stubs with grpcio-tools and mypy-protobuf. Those tools never reach the image.
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY protos/ protos/
COPY sesscache/ sesscache/
COPY server/ server/
COPY client/ client/
RUN pip wheel --no-deps --wheel-dir /wheels . ./client

# The two wheels over the pinned list; `pip check` fails the build if the
# list misses a dependency of either.
RUN /opt/venv/bin/pip install --no-deps /wheels/*.whl \
 && /opt/venv/bin/pip check

# -- runtime -----------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SESSCACHE_LISTEN=0.0.0.0:50051 \
    SESSCACHE_DATA_DIR=/data

RUN groupadd --system --gid 10001 sesscache \
 && useradd --system --uid 10001 --gid sesscache --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin sesscache \
 && mkdir /data \
 && chown sesscache:sesscache /data

# The installed server and client (commands `sesscache-server`, `sesscache`);
# no source tree in the image.
COPY --from=builder /opt/venv /opt/venv

# The SQLite data outlives the container (an anonymous volume unless one is
# mounted there); it starts as the empty, sesscache-owned folder made above.
VOLUME ["/data"]

USER 10001:10001
EXPOSE 50051 9464
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --start-interval=2s --retries=3 \
    CMD ["sesscache", "--target", "127.0.0.1:50051", "--timeout", "3", "health"]
CMD ["sesscache-server"]
