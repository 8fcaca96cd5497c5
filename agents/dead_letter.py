"""Poison messages are data: they go to ``images-dead-letter`` with the reason, and this agent
marks the image ``failed`` in PostgreSQL. The stage that refused the message keeps running."""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from uuid import UUID

import faust

from app.stream.policy import retry_outages
from app.stream import broker, faust_patches
from app.core.errors import ImgstreamError, Unprocessable
from app.stream.messages import DeadLetter, ImageUploaded, decode_descriptors
from app.core.metrics import DEAD_LETTERED, MESSAGES, RESENT
from app.stream.runtime import Runtime

log = logging.getLogger("imgstream.dead_letter")


async def send(runtime: Runtime, stage: str, event, error: ImgstreamError, **ids) -> None:
    msg = event.message
    letter = DeadLetter(stage=stage, code=error.code, reason=error.message, topic=msg.topic,
                        partition=msg.partition, offset=msg.offset, failed_at=time.time(), **ids)
    key = (ids.get("image_id") or f"{msg.topic}:{msg.partition}:{msg.offset}").encode()
    await runtime.producer.send(runtime.topics.dead_letter, key, letter.dumps())
    DEAD_LETTERED.labels(stage, error.code).inc()
    log.warning("dead-lettered %s message: %s", stage, error.message,
                extra={"image_id": ids.get("image_id"), "code": error.code})


async def send_poison(runtime: Runtime, stage: str, event, error: BaseException) -> None:
    """Dead-letter a message that the error policy isolated: it failed alone, every attempt."""
    reason = error if isinstance(error, ImgstreamError) else Unprocessable(
        f"{type(error).__name__}: {error}"[:500], code="poison_message")
    ids = image_ids_of(event)
    await send(runtime, stage, event, reason, original=bytes(event.value or b"")[:4096], **ids)


def image_ids_of(event) -> dict:
    """The image id of an input or descriptor message, where it can be read."""
    value = bytes(event.value or b"")
    try:
        msg = ImageUploaded.loads(value)
        return {"image_id": msg.image_id, "object_key": msg.object_key, "sha256": msg.sha256,
                "uploaded_at": msg.uploaded_at}
    except Unprocessable:
        pass
    try:
        image_id, _ = decode_descriptors(value)
        return {"image_id": str(image_id)}
    except Unprocessable:
        return {}


@dataclass(frozen=True, slots=True)
class Watermark:
    """A sweeper round's view of the stream: the extractor group's committed input offsets, and
    the features topic's end offsets read after them (every descriptor of an input record below
    ``extracted`` lies below ``published``)."""

    extracted: dict[int, int]
    published: dict[int, int]


class Sweeper:
    """Re-publishes accepted images of this deployment that never got a prediction (anti-entropy).

    A backstop only: the stream itself loses nothing on restarts and rebalances. An image is
    re-sent only when it is provably not queued: the extractor's group committed past its input
    offset at a round whose published descriptors every classifier group has since consumed, and
    it still has no result after IMGSTREAM_RESEND_AFTER_S. So a backlog waiting in Kafka (in
    front of the extractor or of the classifiers) is never fed twice. Only this deployment's
    images (app id, bucket, input topic) are touched, each at most five times; the descriptor
    table and the primary key make a repeat harmless.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.marks: deque[Watermark] = deque(maxlen=1000)

    async def watermark(self) -> Watermark | None:
        """The newest round whose descriptors every classifier group has consumed (older rounds
        are dropped), after recording this round's."""
        s = self.rt.settings
        extracted = await broker.committed_offsets(s, s.extractor_group_id, s.input_topic)
        published = await broker.end_offsets(s, s.features_topic)
        self.marks.append(Watermark(extracted, published))
        consumed = [await broker.committed_offsets(s, g, s.features_topic) for g in s.classifier_group_ids]
        safe = None
        for mark in self.marks:
            if all(c.get(p, 0) >= end for c in consumed for p, end in mark.published.items()):
                safe = mark
        while safe is not None and self.marks[0] is not safe:
            self.marks.popleft()
        return safe

    async def sweep(self) -> int:
        mark = await self.watermark()
        if mark is None or not mark.extracted:
            return 0  # everything accepted may still be queued
        s = self.rt.settings
        rows = await self.rt.db.stalled(s.deployment, s.resend_after_s, mark.extracted)
        for r in rows:
            msg = ImageUploaded(str(r["image_id"]), r["object_key"], r["sha256"], r["size"] or 0,
                                r["content_type"] or "image/jpeg",
                                r["uploaded_at"].timestamp() if r["uploaded_at"] else time.time())
            meta = await self.rt.producer.send(self.rt.topics.input, msg.sha256.encode(), msg.dumps())
            await self.rt.db.set_input_offset(r["image_id"], meta.partition, meta.offset)
            log.warning("re-published an accepted image with no prediction", extra={"image_id": msg.image_id})
        RESENT.inc(len(rows))
        return len(rows)


def register(app: faust.App, runtime: Runtime) -> None:
    if runtime.settings.resend_after_s > 0:
        sweeper_ = Sweeper(runtime)

        @app.timer(interval=max(1.0, runtime.settings.resend_after_s / 4), on_leader=True, name="sweeper")
        async def sweeper() -> None:
            if not runtime.ready.is_set():
                return
            try:
                await sweeper_.sweep()
            except Exception as exc:  # noqa: BLE001 - try again next tick
                log.warning("sweeper skipped a round: %s", exc)

    @app.agent(runtime.topics.dead_letter, name="dead-letter")
    async def dead_letter(stream):
        await runtime.ready.wait()
        async for event in stream.events():
            try:
                letter = DeadLetter.loads(event.value)
            except Unprocessable:
                log.error("unreadable dead letter at %s:%s", event.message.partition, event.message.offset)
                continue
            if not letter.image_id:
                continue
            image_id = UUID(letter.image_id)
            with faust_patches.redeliver_if_cancelled([event]):
                await retry_outages(
                    "marking image failed",
                    lambda: runtime.db.mark_failed(image_id, f"{letter.code}: {letter.reason}", letter.object_key,
                                                   letter.sha256, _ts(letter.uploaded_at)),
                    stage="dead-letter",
                )
            MESSAGES.labels("dead-letter", "ok", "").inc()


def _ts(epoch: float | None):
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC) if epoch else None
