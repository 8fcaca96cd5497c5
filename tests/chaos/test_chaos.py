"""Break things on purpose, with the sweeper off: no accepted image may be lost or answered twice,
and every redelivery is counted."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest

from tools.stack.services import SERVICES
from app.storage.objectstore import ObjectStore
from models.bundle import FILES
from tests.chaos.conftest import Uploader, alive, assert_none_lost_or_doubled, images_from, measure, until_accepted
from tests.topics import input_events_per_image
from tests.workers import Worker, isolated_env, pinned_bundle

pytestmark = pytest.mark.chaos

# Kafka's smallest session timeout: a killed worker's partitions move after 6 s, not 15.
FAST_FAILOVER = {"IMGSTREAM_KAFKA_SESSION_TIMEOUT": "6"}


async def test_worker_kill9_mid_upload_then_restart(stack, sample_images, record, tmp_path):
    env = isolated_env(uuid.uuid4().hex[:8])
    worker = Worker(env, log_dir=tmp_path).start()
    worker.wait_healthy()
    uploader = Uploader(images_from(sample_images, 500, uuid.uuid4().hex), concurrency=8)
    try:
        task = asyncio.create_task(uploader.run(lambda: worker.url))
        await until_accepted(uploader, task, 150)
        worker.kill9()
        await asyncio.sleep(1)
        worker.start()
        await asyncio.to_thread(worker.wait_healthy)
        await task
        fig = await measure(stack, env, uploader)
    finally:
        worker.stop()
    record("worker_kill9", **fig)
    assert_none_lost_or_doubled(fig)
    assert fig["accepted"] == 500


async def test_five_kill9_restart_cycles_under_continuous_uploads(stack, sample_images, record, tmp_path):
    env = isolated_env(uuid.uuid4().hex[:8], **FAST_FAILOVER)
    worker = Worker(env, log_dir=tmp_path).start()
    worker.wait_healthy()
    uploader = Uploader(images_from(sample_images, 700, uuid.uuid4().hex), concurrency=4, pace=0.02)
    try:
        task = asyncio.create_task(uploader.run(lambda: worker.url))
        for cycle in range(5):
            await until_accepted(uploader, task, 80 + 110 * cycle)
            worker.kill9()
            await asyncio.sleep(0.5)
            worker.start()
            await asyncio.to_thread(worker.wait_healthy)
            await asyncio.sleep(8)  # the group moves on from the dead member; the worker catches up
        await task
        fig = await measure(stack, env, uploader, timeout=240)
    finally:
        worker.stop()
    record("kill9_five_cycles", **fig)
    assert_none_lost_or_doubled(fig)
    assert fig["accepted"] == 700


async def test_scale_up_to_three_workers_and_back_down(stack, sample_images, record, tmp_path):
    """1 -> 2 -> 3 workers under load, then 3 -> 2 (SIGTERM), 2 -> 1 (kill -9), and the last of
    the first workers replaced by a new one (SIGTERM): every step is a rebalance."""
    env = isolated_env(uuid.uuid4().hex[:8], **FAST_FAILOVER)
    a = Worker(env, log_dir=tmp_path).start()
    a.wait_healthy()
    b, c, d = (Worker(env, log_dir=tmp_path) for _ in range(3))
    workers = [a, b, c, d]
    uploader = Uploader(images_from(sample_images, 800, uuid.uuid4().hex), concurrency=4, pace=0.02)
    try:
        task = asyncio.create_task(uploader.run(lambda: alive(workers)))
        steps = [
            (100, lambda: b.start()),
            (200, lambda: c.start()),
            (320, lambda: c.stop()),  # SIGTERM
            (440, lambda: b.kill9()),
            (540, lambda: d.start()),
            (620, lambda: a.stop()),  # SIGTERM: d carries on
        ]
        for at, step in steps:
            await until_accepted(uploader, task, at)
            step()
            for w in (b, c, d):
                if w.pid is not None:
                    await asyncio.to_thread(w.wait_healthy)
        await task
        fig = await measure(stack, env, uploader, timeout=240)
    finally:
        for w in workers:
            w.stop()
    record("scale_up_down", **fig)
    assert_none_lost_or_doubled(fig)
    assert fig["accepted"] == 800


async def _copy_bundle(settings, version: str) -> str:
    """Publish the same model under a new version (a 'newer bundle' as a deployment sees it). The
    name sorts before real versions, so it never becomes anyone's 'latest'."""
    new = f"0-chaos-{uuid.uuid4().hex[:8]}"
    async with ObjectStore(settings) as store:
        for name in FILES:
            data = await store.get(f"models/{version}/{name}")
            if name == "manifest.json":
                data = json.dumps({**json.loads(data), "version": new}).encode()
            await store.put(f"models/{new}/{name}", data)
    return new


async def _delete_bundle(settings, version: str) -> None:
    async with ObjectStore(settings) as store:
        for name in FILES:
            await store.delete(f"models/{version}/{name}")


async def test_worker_restarted_on_a_newer_bundle_mid_stream(stack, sample_images, record, tmp_path):
    env = isolated_env(uuid.uuid4().hex[:8], **FAST_FAILOVER)
    old = Worker(env, log_dir=tmp_path).start()
    old.wait_healthy()
    newer = await _copy_bundle(stack, pinned_bundle())
    new = Worker({**env, "IMGSTREAM_BUNDLE_VERSION": newer}, log_dir=tmp_path)
    uploader = Uploader(images_from(sample_images, 400, uuid.uuid4().hex), concurrency=4, pace=0.02)
    try:
        # 150 images to the old worker; the rest of the stream waits while the new one starts,
        # flows while the old one stops, and its last 100+ images come after the old one is gone
        # (the stream must outlast the switch on any machine, or the test shows nothing)
        uploader.pause_at(150)
        task = asyncio.create_task(uploader.run(lambda: alive([old, new])))
        await uploader.paused(task)
        new.start()
        await asyncio.to_thread(new.wait_healthy)
        uploader.pause_at(300)
        uploader.resume()
        await until_accepted(uploader, task, 170)
        old.stop()  # SIGTERM mid-stream: a rolling upgrade
        stopped_at = time.time()
        uploader.pause_at(None)
        uploader.resume()
        await task
        fig = await measure(stack, env, uploader, timeout=240)
    finally:
        old.stop()
        new.stop()
        await _delete_bundle(stack, newer)
    record("restart_on_newer_bundle", **fig)
    assert_none_lost_or_doubled(fig)
    assert fig["accepted"] == 400
    assert uploader.accepted_between(stopped_at, time.time()) >= 90  # 100, less those in flight at the pause
    assert newer in fig["versions"], "the new bundle served the rest of the stream"


@pytest.mark.parametrize("service,down_for", [("kafka", 5.0), ("postgres", 30.0), ("s3", 10.0)])
async def test_service_outage_mid_run(stack, sample_images, record, tmp_path, service, down_for):
    env = isolated_env(uuid.uuid4().hex[:8])
    worker = Worker(env, log_dir=tmp_path).start()
    worker.wait_healthy()
    svc = SERVICES[service](stack)
    uploader = Uploader(images_from(sample_images, 240, uuid.uuid4().hex), concurrency=4)
    seen_503: dict = {}
    window: list[float] = []
    try:
        # the clients hold after 60 uploads until the service is down: on a fast machine the rest of
        # the stream would otherwise be through before the outage began
        uploader.pause_at(60)
        task = asyncio.create_task(uploader.run(lambda: worker.url))
        await uploader.paused(task)
        await asyncio.to_thread(svc.down)
        window.append(time.time())
        uploader.pause_at(None)
        uploader.resume()
        await asyncio.sleep(down_for)
        if service == "s3":  # while S3 is down an upload is refused with 503 and a Retry-After
            import aiohttp
            async with aiohttp.ClientSession() as s, s.post(f"{worker.url}/upload", data=images_from(
                    sample_images, 1, uuid.uuid4().hex)[0], headers={"Content-Type": "image/jpeg"}) as r:
                seen_503.update(status=r.status, retry_after=r.headers.get("Retry-After"), body=await r.json())
        window.append(time.time())
        await asyncio.to_thread(svc.up)
        await task
        fig = await measure(stack, env, uploader, timeout=240)
        assert worker.pid is not None, "the worker survived the outage"
    finally:
        worker.stop()
        await asyncio.to_thread(svc.up)
    fig["accepted_during_outage"] = uploader.accepted_between(*window)
    record({"kafka": "kafka_restart", "postgres": "postgres_outage", "s3": "s3_outage"}[service], **fig)
    assert_none_lost_or_doubled(fig)
    if service == "s3":
        assert seen_503["status"] == 503 and seen_503["retry_after"]
        assert seen_503["body"]["error"]["code"] == "service_unavailable"
        # nothing half-written: every event on the input topic is an accepted upload, once
        events = await input_events_per_image(stack, env["IMGSTREAM_INPUT_TOPIC"])
        assert sorted(events.elements()) == sorted(uploader.accepted)
    if service == "postgres":
        assert fig["accepted_during_outage"] > 0, "uploads are accepted while PostgreSQL is down"


async def test_two_workers_one_killed_the_other_takes_over(stack, sample_images, record, tmp_path):
    env = isolated_env(uuid.uuid4().hex[:8])
    a = Worker(env, log_dir=tmp_path).start()
    b = Worker(env, log_dir=tmp_path).start()
    a.wait_healthy()
    b.wait_healthy()
    uploader = Uploader(images_from(sample_images, 300, uuid.uuid4().hex), concurrency=6)
    try:
        # uploads go to the survivor; partitions held by the killed worker move to it
        task = asyncio.create_task(uploader.run(lambda: b.url))
        await until_accepted(uploader, task, 80)
        a.kill9()
        await task
        fig = await measure(stack, env, uploader, timeout=240)
    finally:
        a.stop()
        b.stop()
    record("two_workers_one_killed", **fig)
    assert_none_lost_or_doubled(fig)
    assert fig["accepted"] == 300
