"""The product, end to end on the real stack: upload -> S3 -> Kafka -> extractor -> descriptors ->
three classifiers -> PostgreSQL -> predictions view."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer

from app.http.client import upload_bytes, wait_complete
from app.stream.messages import ImageUploaded
from app.storage.objectstore import ObjectStore
from tests.workers import rows_per_image

pytestmark = pytest.mark.e2e


async def test_200_images_get_three_predictions_each_before_a_deadline(pipeline, stack, sample_images):
    worker, _ = pipeline
    images = sample_images[::3][:200] if len(sample_images) >= 600 else sample_images[:200]
    assert len(images) == 200
    crops0 = {src: worker.metric_sum("imgstream_extractor_crops_total", source=src) for src in ("upload", "fetched")}
    started = time.monotonic()
    async with aiohttp.ClientSession() as s:
        sem = asyncio.Semaphore(16)

        async def one(data):
            async with sem:
                return await upload_bytes(s, worker.url, data)

        results = await asyncio.gather(*(one(b) for _, b in images))
        assert [st for st, _ in results] == [202] * 200
        ids = [body["image_id"] for _, body in results]
        done = await wait_complete(s, worker.url, ids, asyncio.get_running_loop().time() + 120)
    elapsed = time.monotonic() - started
    assert len(done) == 200, f"only {len(done)} of 200 finished within the deadline"
    assert all(d["status"] == "complete" for d in done.values())
    per_image = await rows_per_image(stack.postgres_dsn.get_secret_value(), ids)
    assert per_image == {i: 3 for i in ids}, "every image has exactly three prediction rows"
    # The quick test model is weak, but far better than chance (10 %).
    labels = dict(zip(ids, (lbl for lbl, _ in images), strict=True))
    correct = sum(done[i]["consensus"]["label"] == labels[i] for i in ids)
    assert correct / 200 > 0.5, f"consensus accuracy {correct / 200:.2f}"
    # one decode per image: the extractor took the crops its own upload handler decoded (images the
    # descriptor table answers, e.g. bytes an earlier test uploaded, need none)
    crops = {src: worker.metric_sum("imgstream_extractor_crops_total", source=src) - n for src, n in crops0.items()}
    assert crops["fetched"] == 0 and crops["upload"] > 0, crops
    print(f"200 images classified end to end in {elapsed:.1f}s; consensus accuracy {correct / 200:.2f}")


async def test_reupload_is_answered_from_the_descriptor_table(pipeline, sample_images):
    worker, _ = pipeline
    data = [b for _, b in sample_images[-10:]]
    async with aiohttp.ClientSession() as s:
        first = [body["image_id"] for _, body in await asyncio.gather(*(upload_bytes(s, worker.url, d) for d in data))]
        await wait_complete(s, worker.url, first, asyncio.get_running_loop().time() + 60)
        hits0 = worker.metric_sum("imgstream_descriptor_cache_total", result="hit")
        miss0 = worker.metric_sum("imgstream_descriptor_cache_total", result="miss")
        again = [body["image_id"] for _, body in await asyncio.gather(*(upload_bytes(s, worker.url, d) for d in data))]
        done = await wait_complete(s, worker.url, again, asyncio.get_running_loop().time() + 60)
        assert len(done) == 10 and all(d["status"] == "complete" for d in done.values())
        async with s.get(f"{worker.url}/predictions/{again[0]}?trace=1") as r:
            trace = (await r.json())["trace"]
    assert worker.metric_sum("imgstream_descriptor_cache_total", result="hit") - hits0 == 10
    assert worker.metric_sum("imgstream_descriptor_cache_total", result="miss") == miss0, "no second extraction"
    assert next(e for e in trace if e["event"] == "extraction_finished")["from_descriptor_table"] is True


async def test_corrupted_jpeg_is_refused_at_upload_or_dead_lettered_and_the_rest_go_on(pipeline, stack, sample_images):
    worker, env = pipeline
    good = sample_images[5][1]
    corrupted = good[: len(good) // 2]
    async with aiohttp.ClientSession() as s:
        status, body = await upload_bytes(s, worker.url, corrupted)
        assert status == 422 and body["error"]["code"] == "invalid_image"

        # A producer that skips our upload checks: the broken object reaches the extractor.
        image_id = str(uuid.uuid4())
        key = f"raw-images/2026/01/01/{image_id}.jpg"
        async with ObjectStore(stack) as store:
            await store.put(key, corrupted, "image/jpeg")
        event = ImageUploaded(image_id, key, hashlib.sha256(corrupted).hexdigest(), len(corrupted), "image/jpeg",
                              time.time())
        producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(env["IMGSTREAM_INPUT_TOPIC"], event.dumps(), key=event.sha256.encode())
            await producer.send_and_wait(env["IMGSTREAM_INPUT_TOPIC"], b"{not json", key=b"x")
        finally:
            await producer.stop()
        after = [body["image_id"] for _, body in
                 await asyncio.gather(*(upload_bytes(s, worker.url, b) for _, b in sample_images[40:50]))]
        done = await wait_complete(s, worker.url, [image_id, *after], asyncio.get_running_loop().time() + 60)
    assert done[image_id]["status"] == "failed" and "invalid_image" in done[image_id]["error"]
    assert all(done[i]["status"] == "complete" for i in after)
    assert worker.metric_sum("imgstream_dead_lettered_total", stage="extractor") >= 2
    assert worker.pid is not None, "the worker keeps running"


async def test_a_message_that_always_fails_is_dead_lettered_and_its_partition_goes_on(pipeline, stack, sample_images):
    """A descriptor message whose trace holds NaN timestamps decodes fine but raises in every
    classification attempt: the error policy isolates it and dead-letters it within a bounded
    time, while images on the same partition, before and after it, complete."""
    import struct

    import numpy as np

    from app.stream.messages import encode_descriptors
    from tests.workers import images_from

    worker, env = pipeline
    poison_id = uuid.uuid4()
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
    await producer.start()
    async with aiohttp.ClientSession() as s:
        images = images_from(sample_images, 40, uuid.uuid4().hex)
        before = [(await upload_bytes(s, worker.url, b))[1]["image_id"] for b in images[:20]]
        try:
            headers = [("v", pinned_version(env).encode()), ("t", struct.pack("<3d", *[float("nan")] * 3)),
                       ("c", b"0")]
            for partition in range(stack.topic_partitions):  # a neighbour on every partition
                await producer.send_and_wait(env["IMGSTREAM_FEATURES_TOPIC"], encode_descriptors(
                    poison_id, np.zeros(20, np.float32)), key=str(poison_id).encode(), partition=partition,
                    headers=headers)
        finally:
            await producer.stop()
        started = time.monotonic()
        after = [(await upload_bytes(s, worker.url, b))[1]["image_id"] for b in images[20:]]
        done = await wait_complete(s, worker.url, [str(poison_id), *before, *after],
                                   asyncio.get_running_loop().time() + 120)
    assert done[str(poison_id)]["status"] == "failed" and "poison_message" in done[str(poison_id)]["error"]
    assert {done[i]["status"] for i in before + after} == {"complete"}
    assert time.monotonic() - started < 120
    assert worker.metric_sum("imgstream_poison_messages_total") >= 1
    assert worker.pid is not None


def pinned_version(env: dict[str, str]) -> str:
    return env["IMGSTREAM_BUNDLE_VERSION"]
