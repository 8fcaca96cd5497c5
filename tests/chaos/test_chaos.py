"""Break things on purpose; no accepted image may be lost or doubled."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from app.stack.services import SERVICES
from tests.chaos.conftest import Uploader, figures, images_from, resent_count, settle
from tests.workers import Worker, isolated_env

pytestmark = pytest.mark.chaos


def _assert_none_lost_or_doubled(fig: dict) -> None:
    assert fig["accepted"] > 0
    assert (fig["lost"], fig["partial"], fig["doubled"]) == (0, 0, 0), fig
    assert fig["complete_with_3"] == fig["accepted"]


async def _upload_while(uploader: Uploader, url_of, action, after_accepted: int) -> None:
    """Run the uploads; when ``after_accepted`` were accepted, run ``action`` (a coroutine function)."""
    task = asyncio.create_task(uploader.run(url_of))
    while len(uploader.accepted) < after_accepted and not task.done():
        await asyncio.sleep(0.05)
    await action()
    await task


async def test_worker_kill9_mid_upload_then_restart(stack, sample_images, record, tmp_path):
    env = isolated_env(uuid.uuid4().hex[:8])
    worker = Worker(env, log_dir=tmp_path).start()
    worker.wait_healthy()
    uploader = Uploader(images_from(sample_images, 500, uuid.uuid4().hex), concurrency=8)

    async def crash_and_restart():
        worker.kill9()
        await asyncio.sleep(1)
        worker.start()
        await asyncio.to_thread(worker.wait_healthy)

    try:
        await _upload_while(uploader, lambda: worker.url, crash_and_restart, after_accepted=150)
        per = await settle(stack.postgres_dsn.get_secret_value(), uploader.accepted)
        resent = await resent_count(stack, uploader.accepted)
    finally:
        worker.stop()
    fig = {**figures(uploader, per), "resent_by_sweeper": resent}
    record("worker_kill9", **fig)
    _assert_none_lost_or_doubled(fig)
    assert fig["accepted"] == 500


@pytest.mark.parametrize("service,down_for", [("kafka", 5.0), ("postgres", 30.0), ("s3", 10.0)])
async def test_service_outage_mid_run(stack, sample_images, record, tmp_path, service, down_for):
    env = isolated_env(uuid.uuid4().hex[:8])
    worker = Worker(env, log_dir=tmp_path).start()
    worker.wait_healthy()
    svc = SERVICES[service](stack)
    uploader = Uploader(images_from(sample_images, 240, uuid.uuid4().hex), concurrency=4)
    seen_503 = {}

    async def outage():
        await asyncio.to_thread(svc.down)
        await asyncio.sleep(down_for)
        if service == "s3":  # while S3 is down an upload is refused with 503 and a Retry-After
            import aiohttp
            async with aiohttp.ClientSession() as s, s.post(f"{worker.url}/upload", data=images_from(
                    sample_images, 1, uuid.uuid4().hex)[0], headers={"Content-Type": "image/jpeg"}) as r:
                seen_503.update(status=r.status, retry_after=r.headers.get("Retry-After"),
                                body=await r.json())
        await asyncio.to_thread(svc.up)

    try:
        await _upload_while(uploader, lambda: worker.url, outage, after_accepted=60)
        per = await settle(stack.postgres_dsn.get_secret_value(), uploader.accepted, timeout=240)
        assert worker.proc.poll() is None, "the worker survived the outage"
        resent = await resent_count(stack, uploader.accepted)
    finally:
        worker.stop()
        await asyncio.to_thread(svc.up)
    fig = {**figures(uploader, per), "resent_by_sweeper": resent}
    record({"kafka": "kafka_restart", "postgres": "postgres_outage", "s3": "s3_outage"}[service], **fig)
    _assert_none_lost_or_doubled(fig)
    if service == "s3":
        assert seen_503["status"] == 503 and seen_503["retry_after"]
        assert seen_503["body"]["error"]["code"] == "service_unavailable"
        # nothing half-written: every event on the input topic is an accepted upload, once
        events = await _input_topic_ids(stack, env["IMGSTREAM_INPUT_TOPIC"])
        assert sorted(events) == sorted(uploader.accepted)
    if service == "postgres":
        assert fig["accepted"] > 60, "uploads are accepted while PostgreSQL is down"


async def test_two_workers_one_killed_the_other_takes_over(stack, sample_images, record, tmp_path):
    env = isolated_env(uuid.uuid4().hex[:8])
    a = Worker(env, log_dir=tmp_path).start()
    b = Worker(env, log_dir=tmp_path).start()
    a.wait_healthy()
    b.wait_healthy()
    uploader = Uploader(images_from(sample_images, 300, uuid.uuid4().hex), concurrency=6)

    async def kill_a():
        a.kill9()

    try:
        # uploads go to the survivor; partitions held by the killed worker move to it
        await _upload_while(uploader, lambda: b.url, kill_a, after_accepted=80)
        per = await settle(stack.postgres_dsn.get_secret_value(), uploader.accepted, timeout=240)
        resent = await resent_count(stack, uploader.accepted)
    finally:
        a.stop()
        b.stop()
    fig = {**figures(uploader, per), "resent_by_sweeper": resent}
    record("two_workers_one_killed", **fig)
    _assert_none_lost_or_doubled(fig)
    assert fig["accepted"] == 300


async def _input_topic_ids(settings, topic: str) -> list[str]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from app.messages import ImageUploaded

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        ids = []
        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in tps])

        while await behind():
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                ids += [ImageUploaded.loads(r.value).image_id for r in records]
        return ids
    finally:
        await consumer.stop()
