"""The sweeper, the backstop behind the stream: it completes an accepted image whose event went
missing, touches only its own deployment's images, and never feeds a backlog still queued in
Kafka."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
import pytest

from app.http.client import upload_bytes, wait_complete
from app.core.settings import ROLES
from app.storage.database import Database, UploadRecord
from app.storage.objectstore import ObjectStore
from tests.topics import descriptor_messages_per_image
from tests.workers import Worker, images_from, isolated_env

pytestmark = pytest.mark.e2e

PIPELINE_ROLES = ",".join(r for r in ROLES if r != "dead-letter")


async def _upload(url: str, images: list[bytes]) -> list[str]:
    async with aiohttp.ClientSession() as s:
        out = await asyncio.gather(*(upload_bytes(s, url, b) for b in images))
    assert all(status == 202 for status, _ in out), out
    return [body["image_id"] for _, body in out]


async def _complete(url: str, ids: list[str], timeout: float = 90) -> dict[str, dict]:
    async with aiohttp.ClientSession() as s:
        return await wait_complete(s, url, ids, asyncio.get_running_loop().time() + timeout)


async def _images(dsn: str, ids: list[str]) -> dict[str, asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT image_id::text AS id, status, resent_count, deployment, input_offset "
                                "FROM images WHERE image_id = ANY($1::uuid[])", [uuid.UUID(i) for i in ids])
        return {r["id"]: r for r in rows}
    finally:
        await conn.close()


async def test_sweeper_republishes_an_accepted_image_whose_event_went_missing(stack, sample_images, tmp_path):
    """An upload recorded as accepted whose Kafka event never reached the extractor (here it is
    simply never produced) is found by the sweeper and classified anyway."""
    env = isolated_env(uuid.uuid4().hex[:8], IMGSTREAM_RESEND_AFTER_S="3")
    worker = Worker(env, log_dir=tmp_path).start()
    try:
        await asyncio.to_thread(worker.wait_healthy)
        # traffic first, so the extractor's group has committed offsets to compare with
        first = await _upload(worker.url, images_from(sample_images, 8, uuid.uuid4().hex))
        assert len(await _complete(worker.url, first)) == 8
        data = images_from(sample_images, 1, uuid.uuid4().hex)[0]
        image_id = uuid.uuid4()
        key = f"raw-images/2026/01/01/{image_id}.jpg"
        async with ObjectStore(stack) as store:
            await store.put(key, data, "image/jpeg")
        deployment = f"{env['IMGSTREAM_APP_ID']}/{stack.s3_bucket}/{env['IMGSTREAM_INPUT_TOPIC']}"
        then = datetime.now(UTC) - timedelta(seconds=10)
        async with Database(stack) as db:
            await db.record_upload(UploadRecord(image_id, key, hashlib.sha256(data).hexdigest(), len(data),
                                                "image/jpeg", then, then, deployment))
        done = await _complete(worker.url, [str(image_id)], timeout=60)
        assert done[str(image_id)]["status"] == "complete"
        assert worker.metric_sum("imgstream_resent_total") >= 1
        rows = await _images(stack.postgres_dsn.get_secret_value(), first)
        assert rows and all(r["resent_count"] == 0 for r in rows.values())
    finally:
        worker.stop()


async def test_sweeper_touches_only_its_own_deployment(stack, sample_images, tmp_path):
    """Two deployments on one database: A accepted images and has no worker that extracts them;
    B sweeps every second. A's images stay pending, untouched, and complete when A's worker
    returns."""
    a_env = isolated_env(uuid.uuid4().hex[:8])
    b_env = isolated_env(uuid.uuid4().hex[:8], IMGSTREAM_RESEND_AFTER_S="1")
    a_front = Worker(a_env, roles="dead-letter", log_dir=tmp_path).start()
    b = Worker(b_env, log_dir=tmp_path).start()
    dsn = stack.postgres_dsn.get_secret_value()
    try:
        await asyncio.to_thread(a_front.wait_healthy)
        await asyncio.to_thread(b.wait_healthy)
        a_ids = await _upload(a_front.url, images_from(sample_images, 12, uuid.uuid4().hex))
        a_front.stop()
        b_ids = await _upload(b.url, images_from(sample_images, 6, uuid.uuid4().hex))  # B commits offsets
        assert len(await _complete(b.url, b_ids)) == 6
        await asyncio.sleep(8)  # B's sweeper runs several rounds meanwhile
        rows = await _images(dsn, a_ids)
        assert {r["status"] for r in rows.values()} == {"pending"}
        assert sum(r["resent_count"] for r in rows.values()) == 0
        assert {r["deployment"] for r in rows.values()} == {
            f"{a_env['IMGSTREAM_APP_ID']}/{stack.s3_bucket}/{a_env['IMGSTREAM_INPUT_TOPIC']}"}
        a = Worker(a_env, log_dir=tmp_path).start()
        try:
            await asyncio.to_thread(a.wait_healthy)
            done = await _complete(a.url, a_ids)
            assert {d["status"] for d in done.values()} == {"complete"} and len(done) == 12
        finally:
            a.stop()
    finally:
        a_front.stop()
        b.stop()


async def test_a_backlog_is_not_re_sent(stack, sample_images, tmp_path):
    """The extractor stops for a while, uploads go on (a backlog older than the sweeper's age
    limit), the extractor returns: zero re-sends and exactly one descriptor message per image."""
    unique = uuid.uuid4().hex[:8]
    env = isolated_env(unique)
    pipeline_group = f"{env['IMGSTREAM_APP_ID']}-" + "-".join(sorted(PIPELINE_ROLES.split(",")))
    front = Worker({**env, "IMGSTREAM_RESEND_AFTER_S": "2", "IMGSTREAM_EXTRACTOR_GROUP": pipeline_group,
                    "IMGSTREAM_CLASSIFIER_GROUPS": pipeline_group},
                   roles="dead-letter", log_dir=tmp_path).start()
    pipeline = Worker(env, roles=PIPELINE_ROLES, log_dir=tmp_path).start()
    dsn = stack.postgres_dsn.get_secret_value()
    try:
        await asyncio.to_thread(front.wait_healthy)
        await asyncio.to_thread(pipeline.wait_healthy)
        before = await _upload(front.url, images_from(sample_images, 20, uuid.uuid4().hex))
        assert len(await _complete(front.url, before)) == 20
        await asyncio.sleep(4)  # the pipeline's group commits its offsets
        pipeline.stop()
        backlog: list[str] = []
        for _ in range(6):  # ~12 s of uploads with no extractor: all older than the age limit
            backlog += await _upload(front.url, images_from(sample_images, 10, uuid.uuid4().hex))
            await asyncio.sleep(2)
        pipeline.start()
        await asyncio.to_thread(pipeline.wait_healthy)
        done = await _complete(front.url, backlog, timeout=120)
        assert {d["status"] for d in done.values()} == {"complete"} and len(done) == len(backlog)
        rows = await _images(dsn, before + backlog)
        assert sum(r["resent_count"] for r in rows.values()) == 0
        assert front.metric_sum("imgstream_resent_total") == 0
        per_image = await descriptor_messages_per_image(stack, env["IMGSTREAM_FEATURES_TOPIC"])
        assert {per_image[i] for i in before + backlog} == {1}
    finally:
        front.stop()
        pipeline.stop()
