"""`docker compose up` of docker-compose.yml with deploy/compose/local.yml, the override for a
machine without an image registry (every third-party image built here from Debian's packages),
through Docker's API served by podman. The init job creates topics, bucket and schema, uploads
complete, and `docker compose down` then `up` again keeps every prediction (volumes)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid

import aiohttp
import pytest

from app.http.client import upload_bytes, wait_complete
from tests.conftest import REPO
from tests.containers.helpers import http_get
from tests.workers import images_from, pinned_bundle

pytestmark = pytest.mark.containers
URL = "http://127.0.0.1:16066"  # the worker of deploy/compose/local.yml, on the host's network
LOCAL = {"IMGSTREAM_KAFKA_BOOTSTRAP": "127.0.0.1:19092", "IMGSTREAM_S3_ENDPOINT": "http://127.0.0.1:17070",
         "IMGSTREAM_S3_BUCKET": "imgstream",
         "IMGSTREAM_POSTGRES_DSN": "postgresql://imgstream:imgstream@127.0.0.1:15432/imgstream"}


def _wait_ready(timeout: float = 180) -> None:
    deadline, body = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        status, body = http_get(f"{URL}/ready")
        if status == 200:
            return
        time.sleep(1)
    raise TimeoutError(f"the compose worker is not ready: {body}")


async def test_compose_up_uploads_then_down_and_up_keeps_every_prediction(worker_image, stack, sample_images):
    import asyncpg

    from tools import compose_local

    compose_local.build_images(stack)
    project = f"imgstream-test-{uuid.uuid4().hex[:6]}"
    try:
        compose_local.compose(stack, project, "up", "-d")
        init = compose_local.compose(stack, project, "logs", "init").stdout
        assert "topic images-input-stream: created" in init and "bucket imgstream: ready" in init
        assert "migrations applied" in init
        # a model for the compose stack's own S3: the session's bundle, published there
        publish = subprocess.run([sys.executable, "-m", "app.ops.cli", "models", "publish",
                                  str(stack.bundles_dir / pinned_bundle())], cwd=REPO, capture_output=True,
                                 text=True, env={**os.environ, **LOCAL}, timeout=120)
        assert publish.returncode == 0, publish.stderr[-2000:]
        await asyncio.to_thread(_wait_ready)
        images = images_from(sample_images, 60, salt=project)
        async with aiohttp.ClientSession() as s:
            results = await asyncio.gather(*(upload_bytes(s, URL, b) for b in images))
            assert [st for st, _ in results] == [202] * len(images)
            ids = [body["image_id"] for _, body in results]
            before = await wait_complete(s, URL, ids, asyncio.get_running_loop().time() + 120)
        compose_local.compose(stack, project, "down")  # containers gone, volumes kept
        compose_local.compose(stack, project, "up", "-d")
        await asyncio.to_thread(_wait_ready)
        async with aiohttp.ClientSession() as s:
            after = {}
            for image_id in ids:
                async with s.get(f"{URL}/predictions/{image_id}") as r:
                    after[image_id] = await r.json()
        for image_id in ids:
            assert after[image_id]["status"] == "complete"
            assert after[image_id]["predictions"] == before[image_id]["predictions"]
        conn = await asyncpg.connect(LOCAL["IMGSTREAM_POSTGRES_DSN"])
        try:
            rows = await conn.fetchval("SELECT count(*) FROM predictions WHERE image_id = ANY($1::uuid[])",
                                       [uuid.UUID(i) for i in ids])
        finally:
            await conn.close()
        assert rows == 3 * len(ids)
    finally:
        compose_local.compose(stack, project, "down", "-v", check=False)
        compose_local.stop_service(stack)
