# The dispatcher image: the wheel, installed in a virtual environment, run as a non-root user.
# Default command: `dispatcher serve` on SQLite in /data (the embedded default); set DISPATCHER_*
# to change that, or run `gateway` / `worker` (see compose.yaml). `serve` starts one worker
# process per CPU of the container's quota (cgroup cpu.max), unless DISPATCHER_WORKER_PROCESSES.

# -- build: the wheel from the sources, then the venv with it and its dependencies ------------
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY dispatcher ./dispatcher
COPY channels ./channels
COPY transport ./transport
COPY templates ./templates
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist . \
 && python -m venv /opt/dispatcher \
 && /opt/dispatcher/bin/pip install --no-cache-dir /dist/*.whl

# -- run: the venv only (the shipped templates are package data inside it) --------------------
FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --home-dir /data --create-home dispatcher
COPY --from=build /opt/dispatcher /opt/dispatcher
ENV PATH=/opt/dispatcher/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DISPATCHER_DATABASE_URL=sqlite:////data/dispatcher.db \
    DISPATCHER_HOST=0.0.0.0 \
    DISPATCHER_PORT=8000
USER dispatcher
WORKDIR /data
VOLUME /data
EXPOSE 8000
# The API answers /healthz (no curl in a slim image: Python's own HTTP client). Workers have
# no HTTP port: compose.yaml turns this check off for them.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('DISPATCHER_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["dispatcher"]
CMD ["serve"]
