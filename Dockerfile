# imgstream worker image: onnxruntime, LightGBM, RocksDB (rocksdict), numpy and Pillow; no torch
# (export-time only) and no build tools (every dependency installs from a wheel, at the exact
# version and hash of requirements.lock).
#
# BASE: any Debian-based image; its Python is used where it has one (the public slim Python 3.11
# image), Debian 12's python3 (3.11) is installed where it has none (a local Debian base made with
# mmdebstrap, as tests/containers do where no image registry is reachable). Build with
# `--format docker` under podman, or the OCI format drops the HEALTHCHECK.
ARG BASE=python:3.11-slim
FROM ${BASE}
RUN set -eux; \
    packages="libgomp1 curl ca-certificates"; \
    command -v python3 >/dev/null || packages="$packages python3 python3-venv"; \
    apt-get update; \
    apt-get install -y --no-install-recommends $packages; \
    rm -rf /var/lib/apt/lists/*; \
    groupadd --system --gid 10001 imgstream; \
    useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/imgstream --create-home imgstream
WORKDIR /srv/imgstream
# A CA bundle for pip where the build reaches PyPI through a TLS-inspecting proxy (unset: the
# image's own trust store); tools/containers.py mounts the host's and passes its path.
ARG PIP_CERT
COPY requirements.lock ./
RUN python3 -m venv /opt/imgstream \
 && /opt/imgstream/bin/pip install --no-cache-dir --require-hashes --only-binary=:all: -r requirements.lock
COPY pyproject.toml README.md ./
COPY app app
COPY agents agents
COPY models models
COPY tables tables
RUN /opt/imgstream/bin/pip install --no-cache-dir --no-deps . && rm -rf /root/.cache build *.egg-info
ENV PATH=/opt/imgstream/bin:$PATH \
    IMGSTREAM_STATE_DIR=/var/lib/imgstream IMGSTREAM_WEB_HOST=0.0.0.0 IMGSTREAM_LOG_JSON=true \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 6066
# Liveness only (the process and its event loop answer); /ready checks Kafka, PostgreSQL and S3.
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD curl -fs "http://127.0.0.1:${IMGSTREAM_WEB_PORT:-6066}/live" >/dev/null || exit 1
CMD ["imgstream", "worker"]
