# syntax=docker/dockerfile:1
# Multi-stage: build a wheel, install it into a clean runtime image, run as a non-root user.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY audit ./audit
COPY datasets ./datasets
COPY policies ./policies
COPY gateway ./gateway
RUN pip install --no-cache-dir --upgrade pip build \
 && python -m build --wheel --outdir /wheels

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN groupadd --system sde && useradd --system --gid sde --home-dir /nonexistent --shell /usr/sbin/nologin sde \
 && mkdir -p /data /state && chown sde:sde /state
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER sde
# /data: the catalogue's Parquet files (read-only mount). /state: keys, audit trail, engine db.
VOLUME ["/state"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["sde-gateway"]
CMD ["serve", "--data", "/data", "--state-dir", "/state", "--host", "0.0.0.0", "--port", "8000"]
