"""images-input-stream -> image-features-stream.

Per micro-batch (``noack_take(n, within=t)``, acked once handled, in order, with up to
IMGSTREAM_EXTRACT_PIPELINE_DEPTH batches in flight): parse the upload events, answer repeats
of the same bytes from the descriptor table, fetch the other objects from S3 concurrently,
decode them off the event loop, run the backbone once for the whole batch, reduce to k
descriptors, remember them in the table, and publish one compact message per image. An image
that cannot be decoded (or whose object is gone) is dead-lettered; the batch goes on.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from uuid import UUID

import faust
import numpy as np

from agents import dead_letter
from agents.policy import handle_batches, retry_outages, run_batch
from app.errors import ImgstreamError, NotFound, Unprocessable
from app.messages import ImageUploaded, Trace, encode_descriptors
from app.metrics import (BATCH_SIZE, CACHE, COMPUTE_SECONDS, CROPS_FETCHED, CROPS_FROM_UPLOAD, MESSAGE_BYTES, MESSAGES,
                         QUEUE_SECONDS)
from app.runtime import Runtime
from models.preprocess import model_pixels, normalize
from tables import descriptors as table_codec

STAGE = "extractor"


@dataclass(eq=False)
class Item:
    event: object
    msg: ImageUploaded
    started: float
    descriptors: np.ndarray | None = None
    cached: bool = False
    pixels: np.ndarray | None = None
    dead: bool = False  # dead-lettered
    version: str | None = None  # the bundle of cached descriptors (None: this batch's bundle)
    shadow: list[np.ndarray] | None = None  # descriptors of each shadow bundle (extracted items only)


async def fetch_and_decode(runtime: Runtime, item: Item, sem: asyncio.Semaphore) -> None:
    if item.pixels is not None:  # decoded by this worker's upload handler
        CROPS_FROM_UPLOAD.inc()
        return
    async with sem:
        data = await retry_outages(f"fetching {item.msg.object_key}",
                                   lambda: runtime.store.get(item.msg.object_key), stage=STAGE)
    item.pixels = await runtime.in_pool(runtime.decode_pool, model_pixels, data, runtime.bundle.extractor.spec,
                                        runtime.settings.max_pixels)
    CROPS_FETCHED.inc()


def _descriptors(bundle, shadows, pixels: list[np.ndarray], wide: bool) -> list[np.ndarray]:
    """In an ONNX thread, off the event loop: the crops normalized and stacked, the backbone run
    once, and each bundle's reduction (the serving one's first, then each shadow's)."""
    spec = bundle.extractor.spec
    features = bundle.features(np.stack([normalize(p, spec) for p in pixels]), wide)
    return [bundle.reduce(features), *(s.reduce(features) for s in shadows)]


def split_chunks(items: list, parts: int, min_size: int = 2) -> list[list]:
    """``items`` in at most ``parts`` contiguous chunks of near-equal size and at least
    ``min_size`` items each (one chunk when there are fewer), in order."""
    if not items:
        return []
    parts = max(1, min(parts, len(items) // max(1, min_size)))
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


async def process_batch(runtime: Runtime, table, events: list) -> dict[str, int]:
    """Handle one micro-batch; returns counts (published, cached, dead_lettered, shadow)."""
    bundle, shadows = runtime.bundle, runtime.shadows
    version, spec_name = bundle.version, bundle.extractor.spec.name
    now = time.time()
    BATCH_SIZE.labels(STAGE).observe(len(events))
    items: list[Item] = []
    counts = {"published": 0, "cached": 0, "dead_lettered": 0, "shadow": 0}
    for event in events:
        try:
            msg = ImageUploaded.loads(event.value)
        except Unprocessable as exc:
            await dead_letter.send(runtime, STAGE, event, exc, original=bytes(event.value or b"")[:4096])
            counts["dead_lettered"] += 1
            continue
        QUEUE_SECONDS.labels(STAGE).observe(max(0.0, now - msg.uploaded_at))
        # the crop this worker decoded at upload, taken whatever answers the event below (the
        # table, a batch in flight), so that none is left behind in the cache
        items.append(Item(event, msg, now, pixels=runtime.recent_uploads.pop(msg.object_key, spec_name)))

    # 1. the descriptor table answers repeats of the same bytes (same sha256, same bundle), and a
    #    redelivered event gets the answer it already had, whatever bundle made it: a worker
    #    restarted on a newer bundle never gives one upload two answers.
    #    A lookup runs in its event's context: the RocksDB store reads the partition of the
    #    current event, which in a batch would otherwise be the last one's.
    todo: list[Item] = []
    ttl = runtime.settings.descriptor_ttl_s
    for item in items:
        with table_codec.event_context(item.event):
            hit = table.get(item.msg.sha256)
        if hit is not None:
            entry = table_codec.unpack(hit)
            fresh = not entry.expired(now, ttl)
            if fresh and (entry.bundle_version == version or entry.image_id == UUID(item.msg.image_id)):
                item.descriptors, item.cached, item.version = entry.descriptors, True, entry.bundle_version
                CACHE.labels("hit").inc()
                continue
        todo.append(item)

    # ... and an earlier batch still in flight (IMGSTREAM_EXTRACT_PIPELINE_DEPTH) that extracts
    #    the same bytes with the same bundle answers them once it has the descriptors. Claimed
    #    right after the look-ups, with no await in between, so a batch started later sees them.
    claims = runtime.extracting
    mine: dict[tuple[str, str], asyncio.Future] = {}
    joined: list[tuple[Item, asyncio.Future]] = []
    own: list[Item] = []
    for item in todo:
        key = (item.msg.sha256, version)
        if key not in mine and key in claims:
            joined.append((item, claims[key]))
            continue
        if key not in mine:
            mine[key] = claims[key] = asyncio.get_running_loop().create_future()
        own.append(item)
    try:
        return await _extract_and_publish(runtime, table, bundle, shadows, items, own, joined, mine, now, counts)
    finally:
        for key, fut in mine.items():
            if claims.get(key) is fut:
                del claims[key]
            if not fut.done():  # this batch failed or stopped: whoever joined extracts for itself
                fut.cancel()


async def _join(runtime: Runtime, item: Item, claim: asyncio.Future, sem: asyncio.Semaphore) -> None:
    """The descriptors an earlier batch in flight extracts for the same bytes; where that batch
    fails or stops first, the item is fetched and decoded to be extracted here."""
    try:
        item.descriptors = await asyncio.shield(claim)
        item.cached = True
        return
    except asyncio.CancelledError:
        if asyncio.current_task().cancelling():
            raise
    await fetch_and_decode(runtime, item, sem)


async def _extract_and_publish(runtime: Runtime, table, bundle, shadows, items: list[Item], todo: list[Item],
                               joined: list[tuple[Item, asyncio.Future]], mine: dict, now: float,
                               counts: dict[str, int]) -> dict[str, int]:
    version = bundle.version
    # 2. fetch + decode concurrently (each item its own object); refuse what cannot be decoded
    started = time.perf_counter()
    sem = asyncio.Semaphore(runtime.settings.fetch_concurrency)
    results = await asyncio.gather(*(fetch_and_decode(runtime, it, sem) for it in todo),
                                   *(_join(runtime, it, claim, sem) for it, claim in joined), return_exceptions=True)
    first_of: dict[str, Item] = {}
    for item, res in zip([*todo, *(it for it, _ in joined)], results, strict=True):
        if isinstance(res, BaseException):
            if isinstance(res, NotFound):
                res = Unprocessable(f"object {item.msg.object_key} is gone", code="object_missing")
            if not isinstance(res, ImgstreamError):
                raise res
            await dead_letter.send(runtime, STAGE, item.event, res, image_id=item.msg.image_id,
                                   object_key=item.msg.object_key, sha256=item.msg.sha256,
                                   uploaded_at=item.msg.uploaded_at)
            counts["dead_lettered"] += 1
            item.dead = True
        elif item.descriptors is not None:  # answered by an earlier batch in flight
            CACHE.labels("hit").inc()
        elif item.msg.sha256 in first_of:  # the same bytes twice in one batch: extract once
            item.cached, item.pixels = True, None
            CACHE.labels("hit").inc()
        else:
            first_of[item.msg.sha256] = item
            CACHE.labels("miss").inc()

    # 3. the backbone and the reduction: the batch in IMGSTREAM_ONNX_PARALLEL chunks side by side
    unique = list(first_of.values())
    if unique:
        # a batch too small to split (low load) runs whole on the every-core session instead
        chunks = split_chunks(unique, runtime.settings.onnx_parallel)
        wide = len(chunks) == 1
        outs = await asyncio.gather(*(runtime.in_pool(runtime.onnx_pool, _descriptors, bundle, shadows,
                                                      [it.pixels for it in chunk], wide) for chunk in chunks))
        desc = np.concatenate([o[0] for o in outs])
        runtime.drift.add(bundle, desc)
        shadow_desc = [np.concatenate([o[1 + s] for o in outs]) for s in range(len(shadows))]
        for i, (it, d) in enumerate(zip(unique, desc, strict=True)):
            it.descriptors, it.pixels = d, None
            it.shadow = [sd[i] for sd in shadow_desc]
            with table_codec.event_context(it.event):
                table[it.msg.sha256] = table_codec.pack(version, d, UUID(it.msg.image_id),
                                                        partition=it.event.message.partition, written_at=now)
            claim = mine.get((it.msg.sha256, version))
            if claim is not None and not claim.done():
                claim.set_result(d)
    finished = time.time()
    COMPUTE_SECONDS.labels(STAGE, version).observe(time.perf_counter() - started)

    # 4. publish (in input order), waiting for the broker's confirmation; then each shadow bundle's
    #    descriptors of the images extracted in this batch (a repeat answered by the table has no
    #    features to reduce, so shadows see only extracted images)
    records = []
    for item in items:
        if item.dead:
            continue
        if item.descriptors is None:
            first = first_of[item.msg.sha256]
            item.descriptors, item.shadow = first.descriptors, first.shadow
        image_id = UUID(item.msg.image_id)
        payload = encode_descriptors(image_id, item.descriptors)
        trace = Trace(item.version or version, item.msg.uploaded_at, item.started, finished, item.cached)
        MESSAGE_BYTES.labels(runtime.settings.features_topic).observe(len(payload))
        records.append((item.msg.image_id.encode(), payload, trace.headers()))
        counts["published"] += 1
        counts["cached"] += item.cached
        for shadow, d in zip(shadows, item.shadow or (), strict=False):
            trace = Trace(shadow.version, item.msg.uploaded_at, item.started, finished, False, shadow=True)
            records.append((item.msg.image_id.encode(), encode_descriptors(image_id, d), trace.headers()))
            counts["shadow"] += 1
    await runtime.send_many(runtime.topics.features, records)
    MESSAGES.labels(STAGE, "ok", version).inc(counts["published"])
    MESSAGES.labels(STAGE, "dead_lettered", version).inc(counts["dead_lettered"])
    return counts


def register(app: faust.App, runtime: Runtime, table) -> None:
    settings = runtime.settings

    # One actor on purpose: with agent concurrency > 1 Faust 0.15 may commit an offset past a batch
    # another actor still holds (its gap check is skipped while a partition has no commit yet), and
    # a crash then skips that batch. Parallelism lives inside the batch instead (split_chunks), and
    # across the batches one actor keeps in flight (handle_batches acks them in arrival order).
    @app.agent(runtime.topics.input, name="extractor")
    async def extractor(stream):
        await runtime.ready.wait()
        await runtime.wait_bundle()
        # agents/policy.py: outages retried without limit, a message that always fails isolated
        # and dead-lettered, a batch acked once handled. Re-running a batch is safe (table writes
        # and descriptor messages are idempotent downstream).
        await handle_batches(stream, settings.extract_batch_size, settings.extract_batch_within, lambda events: run_batch(
            events, lambda batch: process_batch(runtime, table, batch), stage=STAGE,
            on_poison=lambda event, exc: dead_letter.send_poison(runtime, STAGE, event, exc),
            attempts=settings.poison_attempts), depth=settings.extract_pipeline_depth)

    if settings.descriptor_ttl_s:
        @app.timer(settings.descriptor_expiry_interval_s, name="descriptor-expiry")
        async def expire_descriptors():
            await table_codec.expire(table, table_codec.owned_partitions(app, table), settings.descriptor_ttl_s)

    @app.timer(15.0, name="descriptor-table-memory")
    async def table_memory():
        table_codec.report_memory(table)
