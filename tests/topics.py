"""Read a whole topic back (tests count what a stage published, per image)."""

from __future__ import annotations

import uuid
from collections import Counter

from aiokafka import AIOKafkaConsumer, TopicPartition

from app.stream import broker
from app.stream.messages import ImageUploaded, decode_descriptors


async def read_topic(settings, topic: str) -> list:
    """Every record of ``topic`` from the beginning up to the end offsets seen now."""
    ends = {TopicPartition(topic, p): end for p, end in (await broker.end_offsets(settings, topic)).items()}
    if not any(ends.values()):
        return []
    # A throwaway group (never committed): aiokafka 0.12's group-less coordinator can raise
    # CancelledError from stop() when its background task has not started yet.
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                                group_id=f"read-{uuid.uuid4().hex}")
    await consumer.start()
    try:
        tps = list(ends)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records = []

        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in tps])

        while await behind():
            for batch in (await consumer.getmany(timeout_ms=1000)).values():
                records += [r for r in batch if r.offset < ends[TopicPartition(r.topic, r.partition)]]
        return records
    finally:
        await consumer.stop()


async def input_events_per_image(settings, topic: str) -> Counter:
    return Counter(ImageUploaded.loads(r.value).image_id for r in await read_topic(settings, topic))


async def descriptor_messages_per_image(settings, topic: str) -> Counter:
    return Counter(str(decode_descriptors(r.value)[0]) for r in await read_topic(settings, topic))
