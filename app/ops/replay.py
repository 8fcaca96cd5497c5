"""``imgstream replay``: re-classify the history of ``image-features-stream`` with another bundle.

Reads the topic from its start (or from where a previous replay of the same version stopped)
under its own consumer group ``<app_id>-replay-<version>``, up to the end offsets seen when it
started; predicts with the new bundle's classifiers and inserts rows tagged with its version.
No image is re-extracted, and rows of other versions are never touched. Descriptors made by a
bundle of another descriptor space (another backbone or reduction) cannot be read by this one:
they are counted as ``incompatible`` and skipped.
"""

from __future__ import annotations

import logging

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from app.bundles import registry
from app.bundles.predict import predict_rows
from app.core.threads import Pool
from app.core.errors import ModelError, Unprocessable
from app.stream.messages import Trace, decode_descriptors
from app.core.security import kafka_options
from app.core.settings import Settings
from models.domain import CLASSIFIERS
from app.storage.database import Database
from app.storage.objectstore import ObjectStore
from models.bundle import Bundle

log = logging.getLogger("imgstream.replay")


async def replay(settings: Settings, version: str, names: list[str] | None = None, progress=None, log=print) -> dict:
    names = names or list(CLASSIFIERS)
    async with ObjectStore(settings) as store:
        path = await registry.fetch(store, version, settings.bundles_dir)
        spaces = {m["version"]: m.get("descriptor_space") for m in await registry.versions(store)}
    bundle = Bundle.load(path, extractor=False, onnx_classifiers=settings.onnx_classifiers(names))
    space = bundle.manifest.get("descriptor_space")
    if not space:
        raise ModelError(f"bundle {bundle.version} has no descriptor space recorded; retrain it")
    group = f"{settings.app_id}-replay-{bundle.version}"
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=group,
                                enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=512,
                                **kafka_options(settings))
    await consumer.start()
    db = Database(settings)
    await db.start()
    pool = Pool(1, "predict")
    counts = {"messages": 0, "incompatible": 0, "malformed": 0, "rows_inserted": 0}
    try:
        parts = consumer.partitions_for_topic(settings.features_topic)
        if parts is None:
            await consumer._client.force_metadata_update()  # noqa: SLF001 - aiokafka has no public call
            parts = consumer.partitions_for_topic(settings.features_topic) or set()
        tps = [TopicPartition(settings.features_topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        starts = {}
        for tp in tps:
            committed = await consumer.committed(tp)
            if committed is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, committed)
            starts[tp] = await consumer.position(tp)
        total = sum(max(0, ends[tp] - starts[tp]) for tp in tps)
        advance = progress(total) if progress else None
        log(f"replaying {total} messages of {settings.features_topic} with bundle {bundle.version} "
            f"(group {group}, classifiers {', '.join(names)})")
        remaining = {tp for tp in tps if starts[tp] < ends[tp]}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            ids, rows = [], []
            offsets = {}
            for tp, records in batch.items():
                for rec in records:
                    if rec.offset >= ends[tp]:
                        break
                    counts["messages"] += 1
                    offsets[tp] = rec.offset + 1
                    try:
                        image_id, desc = decode_descriptors(rec.value)
                        trace = Trace.from_headers(rec.headers)
                    except Unprocessable:
                        counts["malformed"] += 1
                        continue
                    if spaces.get(trace.bundle_version) != space or desc.shape[0] != bundle.k:
                        counts["incompatible"] += 1
                        continue
                    ids.append(image_id)
                    rows.append(desc)
            if ids:
                x = np.stack(rows)
                preds = await predict_rows(bundle, pool, names, ids, x)
                counts["rows_inserted"] += await db.write_predictions([], preds)
            if offsets:
                await consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()})
                if advance:
                    advance(sum(o - starts[tp] for tp, o in offsets.items()))
                    starts.update(offsets)
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        pool.shutdown()
        await db.stop()
        await consumer.stop()
    return {"bundle": bundle.version, "group": group, **counts}
