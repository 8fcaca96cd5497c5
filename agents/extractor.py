"""images-input-stream -> image-features-stream.

Per micro-batch (``noack_take(n, within=t)``, acked once handled, in order, with up to
IMGSTREAM_EXTRACT_PIPELINE_DEPTH batches in flight): parse the upload events, plan the batch
(agents/planner.py: repeats of the same bytes answered by the descriptor table or by an earlier
batch in flight), fetch the other objects from S3 concurrently, decode them off the event loop,
run the backbone once for the whole batch, reduce to k descriptors, remember them in the table,
and publish one compact message per image. An image that cannot be decoded (or whose object is
gone) is dead-lettered; the batch goes on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from uuid import UUID

import faust
import numpy as np
from faust.exceptions import PartitionsMismatch

from agents import dead_letter
from agents.claims import Claims
from agents.planner import Upload, extraction, plan
from app.bundles.deployment import BundleDeployment
from app.bundles.drift import DriftMonitor
from app.core.errors import ImgstreamError, NotFound, ServiceUnavailable, Unprocessable
from app.core.metrics import (BATCH_SIZE, CACHE, COMPUTE_SECONDS, CROPS_FETCHED, CROPS_FROM_UPLOAD, MESSAGE_BYTES,
                              MESSAGES, QUEUE_SECONDS)
from app.stream.messages import ImageUploaded, Trace, encode_descriptors
from app.stream.policy import handle_batches, retry_outages, run_batch
from app.stream.runtime import Runtime
from models.bundle import Bundle
from models.preprocess import model_pixels, normalize
from tables import descriptors as table_codec

STAGE = "extractor"


@dataclass(eq=False, slots=True)
class Item:
    """One upload event of the batch."""

    event: object
    msg: ImageUploaded
    pixels: np.ndarray | None = None  # the decoded crop (this worker's upload handler's, or fetched)


@dataclass(slots=True)
class Answer:
    """An item's descriptors, and where they came from."""

    descriptors: np.ndarray
    cached: bool
    version: str | None = None  # the bundle that made cached descriptors (None: this batch's)
    shadow: list[np.ndarray] = field(default_factory=list)  # each shadow bundle's (extracted items only)


@dataclass(slots=True)
class Batch:
    """One micro-batch on its way: the bundles it started with, its items, and their answers."""

    bundle: Bundle
    shadows: tuple[Bundle, ...]
    started: float
    items: list[Item] = field(default_factory=list)
    answers: dict[int, Answer] = field(default_factory=dict)  # by item index; none: dead-lettered
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("published", "cached", "dead_lettered", "shadow"), 0))


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


@contextmanager
def _changelog_metadata_is_an_outage() -> Iterator[None]:
    """A table write checks that the changelog has as many partitions as the input topic, as the
    consumer's metadata knows them. A changelog Kafka's metadata does not show whole yet (just
    declared, a broker away) is no fault of the message: retried as an outage, never
    dead-lettered. A changelog with really too few partitions is retried too, with the reason
    logged, until an operator fixes the topic; nothing accepted is lost meanwhile."""
    try:
        yield
    except PartitionsMismatch as exc:
        raise ServiceUnavailable(f"kafka: {' '.join(str(exc).split())}", code="changelog_partitions") from exc


class Extractor:
    """The extractor's I/O around the batch plan: S3, decode and ONNX threads, the table, Kafka."""

    def __init__(self, runtime: Runtime, deployment: BundleDeployment, drift: DriftMonitor, table) -> None:
        self.runtime, self.deployment, self.drift, self.table = runtime, deployment, drift, table
        self.settings = runtime.settings
        self.claims = Claims()

    async def process_batch(self, events: list) -> dict[str, int]:
        """Handle one micro-batch; returns counts (published, cached, dead_lettered, shadow)."""
        batch = Batch(self.deployment.bundle, self.deployment.shadows, time.time())
        version, spec_name = batch.bundle.version, batch.bundle.extractor.spec.name
        BATCH_SIZE.labels(STAGE).observe(len(events))
        for event in events:
            try:
                msg = ImageUploaded.loads(event.value)
            except Unprocessable as exc:
                await dead_letter.send(self.runtime, STAGE, event, exc, original=bytes(event.value or b"")[:4096])
                batch.counts["dead_lettered"] += 1
                continue
            QUEUE_SECONDS.labels(STAGE).observe(max(0.0, batch.started - msg.uploaded_at))
            # the crop this worker decoded at upload, taken whatever answers the event below (the
            # table, a batch in flight), so that none is left behind in the cache
            batch.items.append(Item(event, msg, self.runtime.recent_uploads.pop(msg.object_key, spec_name)))

        # A lookup runs in its event's context: the RocksDB store reads the partition of the
        # current event, which in a batch would otherwise be the last one's.
        hits = []
        for item in batch.items:
            with table_codec.event_context(item.event):
                raw = self.table.get(item.msg.sha256)
            hits.append(None if raw is None else table_codec.unpack(raw))
        the_plan = plan([Upload(it.msg.sha256, UUID(it.msg.image_id)) for it in batch.items], hits, version,
                        self.claims.in_flight(version), batch.started, self.settings.descriptor_ttl_s)
        for i in the_plan.table:
            batch.answers[i] = Answer(hits[i].descriptors, True, hits[i].bundle_version)
            CACHE.labels("hit").inc()
        # claimed right after the look-ups, with no await in between, so a batch started later sees them
        joined = {i: self.claims.of(batch.items[i].msg.sha256, version) for i in the_plan.earlier}
        mine = self.claims.claim(the_plan.claims, version)
        try:
            await self._extract(batch, the_plan.own, joined, mine)
            return await self._publish(batch)
        finally:
            self.claims.release(mine, version)

    async def _fetch_and_decode(self, item: Item, sem: asyncio.Semaphore) -> None:
        if item.pixels is not None:  # decoded by this worker's upload handler
            CROPS_FROM_UPLOAD.inc()
            return
        async with sem:
            data = await retry_outages(f"fetching {item.msg.object_key}",
                                       lambda: self.runtime.store.get(item.msg.object_key), stage=STAGE)
        item.pixels = await self.runtime.decode_pool.run(model_pixels, data, self.deployment.bundle.extractor.spec,
                                                         self.settings.max_pixels)
        CROPS_FETCHED.inc()

    async def _join(self, item: Item, claim: asyncio.Future, sem: asyncio.Semaphore) -> np.ndarray | None:
        """The descriptors an earlier batch in flight extracts for the same bytes; where that batch
        fails or stops first, None, and the item is fetched and decoded to be extracted here."""
        try:
            return await asyncio.shield(claim)
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():
                raise
        await self._fetch_and_decode(item, sem)
        return None

    async def _extract(self, batch: Batch, own: tuple[int, ...], joined: dict[int, asyncio.Future],
                       mine: dict[str, asyncio.Future]) -> None:
        """Fetch and decode what this batch extracts (dead-lettering what cannot be), wait for what
        an earlier batch extracts, and run the backbone once per distinct bytes."""
        bundle, shadows, items, answers = batch.bundle, batch.shadows, batch.items, batch.answers
        version = bundle.version
        started = time.perf_counter()
        sem = asyncio.Semaphore(self.settings.fetch_concurrency)
        order = [*own, *joined]
        results = await asyncio.gather(*(self._fetch_and_decode(items[i], sem) for i in own),
                                       *(self._join(items[i], claim, sem) for i, claim in joined.items()),
                                       return_exceptions=True)
        decoded = []
        for i, res in zip(order, results, strict=True):
            item = items[i]
            if isinstance(res, BaseException):
                if isinstance(res, NotFound):
                    res = Unprocessable(f"object {item.msg.object_key} is gone", code="object_missing")
                if not isinstance(res, ImgstreamError):
                    raise res
                await dead_letter.send(self.runtime, STAGE, item.event, res, image_id=item.msg.image_id,
                                       object_key=item.msg.object_key, sha256=item.msg.sha256,
                                       uploaded_at=item.msg.uploaded_at)
                batch.counts["dead_lettered"] += 1
            elif res is not None:  # answered by an earlier batch in flight
                answers[i] = Answer(res, True)
                CACHE.labels("hit").inc()
            else:
                decoded.append((i, item.msg.sha256))
        ex = extraction(decoded)
        CACHE.labels("hit").inc(len(ex.copies))
        CACHE.labels("miss").inc(len(ex.first))
        for i in ex.copies:  # the same bytes twice in one batch: extracted once
            items[i].pixels = None

        # the backbone and the reduction: the batch in IMGSTREAM_ONNX_PARALLEL chunks side by side
        if ex.first:
            # a batch too small to split (low load) runs whole on the every-core session instead
            chunks = split_chunks(list(ex.first), self.settings.onnx_parallel)
            wide = len(chunks) == 1
            outs = await asyncio.gather(*(self.runtime.onnx_pool.run(
                _descriptors, bundle, shadows, [items[i].pixels for i in chunk], wide) for chunk in chunks))
            desc = np.concatenate([o[0] for o in outs])
            self.drift.add(bundle, desc)
            shadow_desc = [np.concatenate([o[1 + s] for o in outs]) for s in range(len(shadows))]
            with _changelog_metadata_is_an_outage():
                for n, (i, d) in enumerate(zip(ex.first, desc, strict=True)):
                    item = items[i]
                    item.pixels = None
                    answers[i] = Answer(d, False, shadow=[sd[n] for sd in shadow_desc])
                    with table_codec.event_context(item.event):
                        self.table[item.msg.sha256] = table_codec.pack(version, d, UUID(item.msg.image_id),
                                                                       partition=item.event.message.partition,
                                                                       written_at=batch.started)
                    self.claims.fulfil(mine, item.msg.sha256, d)
        for i, first in ex.copies.items():
            answers[i] = Answer(answers[first].descriptors, True, shadow=answers[first].shadow)
        COMPUTE_SECONDS.labels(STAGE, version).observe(time.perf_counter() - started)

    async def _publish(self, batch: Batch) -> dict[str, int]:
        """Publish (in input order), waiting for the broker's confirmation; then each shadow
        bundle's descriptors of the images extracted in this batch (a repeat answered by the table
        has no features to reduce, so shadows see only extracted images)."""
        version, counts = batch.bundle.version, batch.counts
        finished = time.time()
        records = []
        for i, item in enumerate(batch.items):
            answer = batch.answers.get(i)
            if answer is None:  # dead-lettered
                continue
            image_id = UUID(item.msg.image_id)
            payload = encode_descriptors(image_id, answer.descriptors)
            trace = Trace(answer.version or version, item.msg.uploaded_at, batch.started, finished, answer.cached)
            MESSAGE_BYTES.labels(self.settings.features_topic).observe(len(payload))
            records.append((item.msg.image_id.encode(), payload, trace.headers()))
            counts["published"] += 1
            counts["cached"] += answer.cached
            for shadow, d in zip(batch.shadows, answer.shadow, strict=False):
                trace = Trace(shadow.version, item.msg.uploaded_at, batch.started, finished, False, shadow=True)
                records.append((item.msg.image_id.encode(), encode_descriptors(image_id, d), trace.headers()))
                counts["shadow"] += 1
        await self.runtime.producer.send_many(self.runtime.topics.features, records)
        MESSAGES.labels(STAGE, "ok", version).inc(counts["published"])
        MESSAGES.labels(STAGE, "dead_lettered", version).inc(counts["dead_lettered"])
        return counts


def register(app: faust.App, runtime: Runtime, deployment: BundleDeployment, drift: DriftMonitor,
             table) -> Extractor:
    settings = runtime.settings
    extractor_ = Extractor(runtime, deployment, drift, table)

    # One actor on purpose: with agent concurrency > 1 Faust 0.15 may commit an offset past a batch
    # another actor still holds (its gap check is skipped while a partition has no commit yet), and
    # a crash then skips that batch. Parallelism lives inside the batch instead (split_chunks), and
    # across the batches one actor keeps in flight (handle_batches acks them in arrival order).
    @app.agent(runtime.topics.input, name="extractor")
    async def extractor(stream):
        await runtime.ready.wait()
        await deployment.wait()
        # app/stream/policy.py: outages retried without limit, a message that always fails isolated
        # and dead-lettered, a batch acked once handled. Re-running a batch is safe (table writes
        # and descriptor messages are idempotent downstream).
        await handle_batches(stream, settings.extract_batch_size, settings.extract_batch_within, lambda events: run_batch(
            events, extractor_.process_batch, stage=STAGE,
            on_poison=lambda event, exc: dead_letter.send_poison(runtime, STAGE, event, exc),
            attempts=settings.poison_attempts), depth=settings.extract_pipeline_depth)

    if settings.descriptor_ttl_s:
        @app.timer(settings.descriptor_expiry_interval_s, name="descriptor-expiry")
        async def expire_descriptors():
            await table_codec.expire(table, table_codec.owned_partitions(app, table), settings.descriptor_ttl_s)

    @app.timer(15.0, name="descriptor-table-memory")
    async def table_memory():
        table_codec.report_memory(table)

    return extractor_
