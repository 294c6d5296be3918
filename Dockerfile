# syntax=docker/dockerfile:1
# streamrec image: `docker run IMAGE worker | produce ... | consume`.
# Configuration is by STREAMREC_* variables (stream/settings.py), as in docker-compose.yml.

FROM python:3.11-slim AS build

# torch 2.13.0 on the default index resolves to the CUDA build (several GB of extra
# packages). The builder supplies PyTorch's CPU wheel index here, e.g.
#   docker compose build --build-arg PIP_EXTRA_INDEX_URL=<CPU wheel index>
# pip reads PIP_EXTRA_INDEX_URL from the environment, which RUN sees ARGs in; the empty
# default adds no index.
ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first, pinned, in its own layer: the largest download, cached across source
# changes, and already satisfied when the project's `torch==2.13.0` is resolved.
RUN pip install torch==2.13.0

# No extras: a worker, produce and consume need only the core dependencies. The dev
# extra (embedded broker and Redis server, matplotlib, psutil) is for `streamrec dev`,
# the benchmarks and the tests (pyproject.toml, stream/extras.py).
COPY . /src
RUN pip install /src


FROM python:3.11-slim

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# A fixed numeric uid so orchestrators can check runAsNonRoot; the state directory is
# the worker's data_dir in docker-compose.yml (a volume there).
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/streamrec --create-home \
        --shell /usr/sbin/nologin streamrec

COPY --from=build /opt/venv /opt/venv

USER 10001
WORKDIR /var/lib/streamrec

# The worker's web server (/metrics); it binds STREAMREC_WEB_HOST, loopback by default.
EXPOSE 6066

ENTRYPOINT ["streamrec"]
CMD ["worker"]
