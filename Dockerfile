# The dispatcher on its embedded default (SQLite in /data); set DISPATCHER_* to change that.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY dispatcher ./dispatcher
COPY channels ./channels
COPY transport ./transport
COPY templates ./templates
RUN pip install --no-cache-dir .
# The shipped templates are in the wheel (package data); set DISPATCHER_TEMPLATES_DIR for others.
ENV DISPATCHER_DATABASE_URL=sqlite:////data/dispatcher.db \
    DISPATCHER_HOST=0.0.0.0
VOLUME /data
EXPOSE 8000
CMD ["dispatcher", "serve"]
