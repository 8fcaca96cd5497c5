"""Kafka administration: the project's topics (created explicitly, never by auto-creation),
broker health, and consumer lag per topic and partition."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError

from app.core.errors import ServiceUnavailable
from app.core.security import describe, kafka_options
from app.core.settings import Settings


def _admin(settings: Settings, request_timeout_ms: int) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=request_timeout_ms,
                               **kafka_options(settings))


def _consumer(settings: Settings) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                            **kafka_options(settings))


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replicas: int
    config: dict[str, str]


def topic_specs(settings: Settings) -> list[TopicSpec]:
    p, r = settings.topic_partitions, settings.topic_replicas
    week = str(7 * 24 * 3600 * 1000)
    isr = {"min.insync.replicas": str(settings.kafka_min_insync_replicas)}
    return [
        # Raw upload events: small (object key + hash), kept a week for replay.
        TopicSpec(settings.input_topic, p, r, {"retention.ms": week, **isr}),
        # Descriptors: the replayable history that `imgstream replay` re-classifies; kept forever.
        TopicSpec(settings.features_topic, p, r, {"retention.ms": "-1", **isr}),
        TopicSpec(settings.dead_letter_topic, p, r, {"retention.ms": week, **isr}),
        # The descriptor table's changelog, made here (as Faust would declare it) so that it is in
        # every broker's metadata before the worker consumes: a table write checks the changelog's
        # partitions against the input topic's, and on a cluster a topic Faust has only just
        # declared can read as having none.
        TopicSpec(settings.descriptor_changelog_topic, p, r, {"cleanup.policy": "compact", **isr}),
    ]


async def ensure_topics(settings: Settings) -> dict[str, str]:
    """Create missing topics and grow partition counts that are too small. Idempotent."""
    admin = _admin(settings, 10000)
    await admin.start()
    try:
        existing = await admin.describe_topics([s.name for s in topic_specs(settings)])
        have = {t["topic"]: len(t["partitions"]) for t in existing if t.get("error_code", 0) == 0}
        result: dict[str, str] = {}
        missing = [s for s in topic_specs(settings) if s.name not in have]
        if missing:
            await admin.create_topics(
                [NewTopic(s.name, s.partitions, s.replicas, topic_configs=s.config) for s in missing]
            )
            result.update({s.name: f"created ({s.partitions} partitions)" for s in missing})
        grow = {s.name: NewPartitions(s.partitions) for s in topic_specs(settings)
                if s.name in have and have[s.name] < s.partitions}
        if grow:
            await admin.create_partitions(grow)
            result.update({n: f"grown to {g.total_count} partitions" for n, g in grow.items()})
        for s in topic_specs(settings):
            result.setdefault(s.name, f"exists ({have.get(s.name)} partitions)")
        if missing or grow:
            await _until_led(admin, topic_specs(settings))
        return result
    finally:
        await admin.close()


async def _until_led(admin: AIOKafkaAdminClient, specs: list[TopicSpec], timeout: float = 30.0) -> None:
    """Wait until the metadata shows every partition of ``specs`` with a leader: a topic just
    created can read as having no partitions for a moment, longer on a cluster."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        described = await admin.describe_topics([s.name for s in specs])
        led = {t["topic"]: sum(1 for p in t["partitions"] if p.get("leader", -1) >= 0) for t in described
               if t.get("error_code", 0) == 0}
        if all(led.get(s.name, 0) >= s.partitions for s in specs):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise ServiceUnavailable(f"kafka: topics without a leader after {timeout:.0f}s: "
                                     f"{sorted(s.name for s in specs if led.get(s.name, 0) < s.partitions)}")
        await asyncio.sleep(0.2)


async def delete_topics(settings: Settings, prefix: str) -> int:
    """Delete every topic whose name starts with ``prefix`` (private topics of a benchmark or a test
    session: thousands of idle partitions cost the broker CPU). Returns how many were deleted."""
    if not prefix:
        raise ValueError("refusing to delete topics without a prefix")
    admin = _admin(settings, 60000)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        for i in range(0, len(names), 100):
            await admin.delete_topics(names[i:i + 100], timeout_ms=60000)
        return len(names)
    finally:
        await admin.close()


async def ping(settings: Settings, timeout: float = 5.0) -> None:
    """Raise ServiceUnavailable unless the broker answers a metadata request."""
    admin = _admin(settings, int(timeout * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout)
        await asyncio.wait_for(admin.list_topics(), timeout)
    except (KafkaError, OSError, asyncio.TimeoutError) as exc:
        raise ServiceUnavailable(f"kafka unavailable: {await diagnose(settings, exc, timeout)}") from exc
    finally:
        await admin.close()


async def diagnose(settings: Settings, exc: BaseException, timeout: float = 5.0) -> str:
    """Why a Kafka client could not start, in words: aiokafka logs each bootstrap server's error
    and raises only "Unable to bootstrap", so the first server is asked again here, once, by the
    same connection code, to read the cause (refused, TLS not trusted, SASL refused)."""
    if not isinstance(exc, KafkaConnectionError):
        return describe(exc)
    from aiokafka.conn import create_conn

    host, _, port = settings.kafka_bootstrap.split(",")[0].strip().rpartition(":")
    try:
        conn = await asyncio.wait_for(create_conn(host, int(port), request_timeout_ms=int(timeout * 1000),
                                                  **kafka_options(settings)), timeout)
    except (KafkaError, OSError, asyncio.TimeoutError) as cause:
        return describe(cause)
    conn.close()
    return describe(exc)


async def consumer_lag(settings: Settings, group: str, topics: list[str]) -> dict[tuple[str, int], int]:
    """Lag (end offset - committed offset) of ``group`` per (topic, partition)."""
    admin = _admin(settings, 5000)
    consumer = _consumer(settings)
    await admin.start()
    await consumer.start()
    try:
        described = await admin.describe_topics(topics)
        partitions = [TopicPartition(t["topic"], p["partition"]) for t in described if t.get("error_code", 0) == 0
                      for p in t["partitions"]]
        if not partitions:
            return {}
        committed = await admin.list_consumer_group_offsets(group)
        ends = await consumer.end_offsets(partitions)
        lag = {}
        for tp in partitions:
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else 0
            lag[(tp.topic, tp.partition)] = max(0, ends[tp] - done)
        return lag
    finally:
        await consumer.stop()
        await admin.close()


async def committed_offsets(settings: Settings, group: str, topic: str) -> dict[int, int]:
    """Offsets ``group`` has committed on ``topic``, per partition (partitions without a commit
    are left out)."""
    admin = _admin(settings, 5000)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        return {tp.partition: meta.offset for tp, meta in committed.items()
                if tp.topic == topic and meta is not None and meta.offset >= 0}
    finally:
        await admin.close()


async def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """The end offset (next offset to be written) of every partition of ``topic``."""
    admin = _admin(settings, 5000)
    consumer = _consumer(settings)
    await admin.start()
    await consumer.start()
    try:
        described = await admin.describe_topics([topic])
        tps = [TopicPartition(topic, p["partition"]) for t in described if t.get("error_code", 0) == 0
               for p in t["partitions"]]
        return {tp.partition: off for tp, off in (await consumer.end_offsets(tps)).items()} if tps else {}
    finally:
        await consumer.stop()
        await admin.close()
