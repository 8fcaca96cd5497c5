# imgstream worker image: onnxruntime, LightGBM, numpy and Pillow; no torch (export-time only).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 curl && rm -rf /var/lib/apt/lists/*
WORKDIR /srv/imgstream
COPY pyproject.toml README.md ./
COPY app app
COPY agents agents
COPY models models
COPY tables tables
RUN pip install --no-cache-dir .
ENV IMGSTREAM_STATE_DIR=/var/lib/imgstream IMGSTREAM_WEB_HOST=0.0.0.0 IMGSTREAM_LOG_JSON=true
EXPOSE 6066
CMD ["imgstream", "worker"]
