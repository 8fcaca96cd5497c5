"""The descriptor table on the real stack (RocksDB store): a re-upload inside the TTL is answered
from the table; an entry past the TTL leaves the table and the changelog's live keys (its last
record becomes a tombstone, which compaction keeps last), and the same bytes are then extracted
again."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid

import aiohttp
import pytest

from app.http.client import upload_bytes, wait_complete
from app.core.settings import Settings
from tests.topics import read_topic
from tests.workers import Worker, images_from, isolated_env

pytestmark = pytest.mark.e2e

TTL_S = 20


def _live_keys(records) -> set[str]:
    """Keys of a compacted topic whose last record is a value (what compaction keeps live)."""
    last = {}
    for r in records:
        last[json.loads(r.key)] = r.value
    return {k for k, v in last.items() if v is not None}


async def _upload_and_wait(url: str, images: list[bytes]) -> list[str]:
    async with aiohttp.ClientSession() as s:
        out = await asyncio.gather(*(upload_bytes(s, url, b) for b in images))
        assert all(status == 202 for status, _ in out), out
        ids = [body["image_id"] for _, body in out]
        done = await wait_complete(s, url, ids, asyncio.get_running_loop().time() + 90)
    assert len(done) == len(ids)
    return ids


async def test_entries_expire_from_the_table_and_the_changelog_and_hit_inside_the_ttl(stack, sample_images, tmp_path):
    unique = uuid.uuid4().hex[:8]
    env = isolated_env(unique, IMGSTREAM_DESCRIPTOR_TTL_S=str(TTL_S), IMGSTREAM_DESCRIPTOR_EXPIRY_INTERVAL_S="2",
                       IMGSTREAM_TABLE_STORE="rocksdb")
    worker = Worker(env, log_dir=tmp_path).start()
    settings = Settings(app_id=env["IMGSTREAM_APP_ID"])
    changelog = f"{settings.app_id}-descriptors-changelog"
    try:
        await asyncio.to_thread(worker.wait_healthy)
        images = images_from(sample_images, 6, unique)
        keys = {hashlib.sha256(b).hexdigest() for b in images}
        started = time.monotonic()
        await _upload_and_wait(worker.url, images)
        assert _live_keys(await read_topic(settings, changelog)) == keys

        # inside the TTL: every re-upload is a hit, nothing is extracted again
        hits = worker.metric_sum("imgstream_descriptor_cache_total", result="hit")
        misses = worker.metric_sum("imgstream_descriptor_cache_total", result="miss")
        await _upload_and_wait(worker.url, images[:3])
        assert time.monotonic() - started < TTL_S, "the machine was too slow for this TTL"
        assert worker.metric_sum("imgstream_descriptor_cache_total", result="hit") - hits == 3
        assert worker.metric_sum("imgstream_descriptor_cache_total", result="miss") == misses

        # past the TTL: the expiry pass deletes all six with tombstones
        deadline = time.monotonic() + TTL_S + 30
        while worker.metric_sum("imgstream_descriptor_table_expired_total") < 6 and time.monotonic() < deadline:
            await asyncio.sleep(1)
        assert worker.metric_sum("imgstream_descriptor_table_expired_total") == 6
        assert worker.metric_sum("imgstream_descriptor_table_entries") == 0
        records = await read_topic(settings, changelog)
        assert _live_keys(records) == set()
        assert sum(r.value is None for r in records) == 6

        # and the same bytes are extracted again (a miss), then cached again
        await _upload_and_wait(worker.url, images[:1])
        assert worker.metric_sum("imgstream_descriptor_cache_total", result="miss") == misses + 1
        assert _live_keys(await read_topic(settings, changelog)) == {hashlib.sha256(images[0]).hexdigest()}
    finally:
        worker.stop()
