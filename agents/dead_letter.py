"""Poison messages are data: they go to ``images-dead-letter`` with the reason, and this agent
marks the image ``failed`` in PostgreSQL. The stage that refused the message keeps running."""

from __future__ import annotations

import logging
import time
from uuid import UUID

import faust

from agents.policy import retry_outages
from app import broker
from app.errors import ImgstreamError, Unprocessable
from app.messages import DeadLetter, ImageUploaded, decode_descriptors
from app.metrics import DEAD_LETTERED, MESSAGES, RESENT
from app.runtime import Runtime

log = logging.getLogger("imgstream.dead_letter")


async def send(runtime: Runtime, stage: str, event, error: ImgstreamError, **ids) -> None:
    msg = event.message
    letter = DeadLetter(stage=stage, code=error.code, reason=error.message, topic=msg.topic,
                        partition=msg.partition, offset=msg.offset, failed_at=time.time(), **ids)
    key = (ids.get("image_id") or f"{msg.topic}:{msg.partition}:{msg.offset}").encode()
    await runtime.send(runtime.topics.dead_letter, key, letter.dumps())
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


async def sweep(runtime: Runtime) -> int:
    """Re-publish accepted images of this deployment that never got a prediction (anti-entropy).

    A backstop only: the stream itself loses nothing on restarts and rebalances. An image is
    re-sent only when the extractor's group has committed past its input offset without a result
    (so a backlog still queued in Kafka is never fed twice), only for this deployment (app id,
    bucket, input topic: another pipeline sharing the database is never touched), and at most
    five times. The descriptor table and the primary key make a repeat harmless.
    """
    settings = runtime.settings
    committed = await broker.committed_offsets(settings, settings.extractor_group_id, settings.input_topic)
    if not committed:
        return 0  # the extractor's group has committed nothing yet: everything is still queued
    rows = await runtime.db.stalled(settings.deployment, settings.resend_after_s, committed)
    for r in rows:
        msg = ImageUploaded(str(r["image_id"]), r["object_key"], r["sha256"], r["size"] or 0,
                            r["content_type"] or "image/jpeg",
                            r["uploaded_at"].timestamp() if r["uploaded_at"] else time.time())
        meta = await runtime.send(runtime.topics.input, msg.sha256.encode(), msg.dumps())
        await runtime.db.set_input_offset(r["image_id"], meta.partition, meta.offset)
        log.warning("re-published an accepted image with no prediction", extra={"image_id": msg.image_id})
    RESENT.inc(len(rows))
    return len(rows)


def register(app: faust.App, runtime: Runtime) -> None:
    if runtime.settings.resend_after_s > 0:
        @app.timer(interval=max(1.0, runtime.settings.resend_after_s / 4), on_leader=True, name="sweeper")
        async def sweeper() -> None:
            if not runtime.ready.is_set():
                return
            try:
                await sweep(runtime)
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
