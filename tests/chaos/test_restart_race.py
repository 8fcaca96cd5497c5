"""Faust's recovery race on the real stack, made deterministic: the worker runs through
tests/seek_window.py, which holds its consumer for 3 s after it seeks to the committed offsets, the
descriptor table's changelog holds data (so the fetcher is already running when recovery
completes), the worker is killed with SIGKILL and restarted. Unpatched faust-streaming 0.15.3
resumes the input partitions before that seek, fetches records in the window and then clears
them from the agents' queues: they are never processed. With app/stream/faust_patches.py every accepted
image completes, with the sweeper off."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import pytest

from app.http.client import upload_bytes
from tests.chaos.conftest import Uploader, assert_none_lost_or_doubled, measure
from tests.workers import Worker, images_from, isolated_env

pytestmark = pytest.mark.chaos


async def test_kill9_restart_with_a_wide_seek_window_loses_nothing(stack, sample_images, record, tmp_path):
    env = isolated_env(uuid.uuid4().hex[:8], IMGSTREAM_TEST_SEEK_DELAY_S="3", IMGSTREAM_KAFKA_SESSION_TIMEOUT="6")
    images = images_from(sample_images, 120, uuid.uuid4().hex)
    worker = Worker(env, log_dir=tmp_path, entry="tests.seek_window").start()
    front = Worker(env, roles="front", log_dir=tmp_path)  # HTTP only, no agent
    uploader = Uploader(images[20:], concurrency=8)
    try:
        await asyncio.to_thread(worker.wait_healthy)
        async with aiohttp.ClientSession() as s:  # 20 images: the changelog holds data, offsets committed
            first = [(await upload_bytes(s, worker.url, b))[1]["image_id"] for b in images[:20]]
        uploader.accepted += first
        uploader.sent += 20
        await asyncio.sleep(5)
        worker.kill9()
        # 100 more accepted by a front-only worker: queued for the killed worker's group
        front.start()
        await asyncio.to_thread(front.wait_healthy)
        await uploader.run(lambda: front.url)
        front.stop()
        worker.start()
        await asyncio.to_thread(worker.wait_healthy)
        fig = await measure(stack, env, uploader, timeout=90)
    finally:
        worker.stop()
        front.stop()
    record("kill9_wide_seek_window", **fig)
    assert_none_lost_or_doubled(fig)
    assert fig["accepted"] == 120
