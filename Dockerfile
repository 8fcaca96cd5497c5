# imgstream worker image: onnxruntime, LightGBM, RocksDB (rocksdict), numpy and Pillow; no torch
# (export-time only) and no build tools (every dependency installs from a wheel).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 curl && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 imgstream \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/imgstream --create-home imgstream
WORKDIR /srv/imgstream
COPY pyproject.toml README.md ./
COPY app app
COPY agents agents
COPY models models
COPY tables tables
RUN pip install --no-cache-dir . && rm -rf /root/.cache
ENV IMGSTREAM_STATE_DIR=/var/lib/imgstream IMGSTREAM_WEB_HOST=0.0.0.0 IMGSTREAM_LOG_JSON=true
USER 10001:10001
EXPOSE 6066
# Liveness only (the process and its event loop answer); /ready checks Kafka, PostgreSQL and S3.
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD curl -fs "http://127.0.0.1:${IMGSTREAM_WEB_PORT:-6066}/live" >/dev/null || exit 1
CMD ["imgstream", "worker"]
