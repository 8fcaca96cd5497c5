"""Poison messages are data: they go to ``images-dead-letter`` with the reason, and this agent
marks the image ``failed`` in PostgreSQL. The stage that refused the message keeps running."""

from __future__ import annotations

import asyncio
import logging
import time
from uuid import UUID

import faust

from app.errors import ImgstreamError, ServiceUnavailable, Unprocessable
from app.messages import DeadLetter, ImageUploaded
from app.metrics import DEAD_LETTERED, MESSAGES, RESENT
from app.runtime import Runtime
from app.storage.database import PG_DOWN

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


async def retry_forever(what: str, coro_fn, *, stage: str, base: float = 0.5, cap: float = 10.0):
    """Run ``coro_fn()`` until it succeeds while a dependency is down: Kafka keeps the backlog.

    An error that is not a known outage is retried too (logged with its traceback): raising it
    would crash the agent, and Faust acks a crashed batch's events on the way out, which would
    lose them for this stage.
    """
    delay = base
    while True:
        try:
            return await coro_fn()
        except (ServiceUnavailable, *PG_DOWN) as exc:
            MESSAGES.labels(stage, "retried", "").inc()
            log.warning("%s failed (%s); retrying in %.1fs", what, exc, delay)
        except ImgstreamError:
            raise  # a permanent refusal (bad input, unknown bundle): the caller dead-letters it
        except Exception:
            MESSAGES.labels(stage, "retried", "").inc()
            log.exception("%s failed unexpectedly; retrying in %.1fs", what, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, cap)


async def sweep(runtime: Runtime) -> int:
    """Re-publish accepted images that never got a prediction (anti-entropy).

    Kafka and the agents are at-least-once, but a message can still go missing on the way (a
    rebalance right after a worker crash was seen to skip one). Every accepted upload has a row in
    PostgreSQL, so the sweeper finds the ones still missing predictions and sends their event
    again; the descriptor table and the primary key make a repeat harmless (classifiers that
    already wrote their row skip it).
    """
    rows = await runtime.db.stalled(runtime.settings.resend_after_s)
    for r in rows:
        msg = ImageUploaded(str(r["image_id"]), r["object_key"], r["sha256"], r["size"] or 0,
                            r["content_type"] or "image/jpeg",
                            r["uploaded_at"].timestamp() if r["uploaded_at"] else time.time())
        await runtime.send(runtime.topics.input, msg.sha256.encode(), msg.dumps())
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
            await retry_forever(
                "marking image failed",
                lambda: runtime.db.mark_failed(image_id, f"{letter.code}: {letter.reason}", letter.object_key,
                                               letter.sha256, _ts(letter.uploaded_at)),
                stage="dead-letter",
            )
            MESSAGES.labels("dead-letter", "ok", "").inc()


def _ts(epoch: float | None):
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC) if epoch else None
