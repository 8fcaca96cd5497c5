"""The error policy of every agent, in one place.

- An outage (Kafka, PostgreSQL or S3 down: ``ServiceUnavailable`` and the driver errors in
  ``PG_DOWN``) is retried without limit, with backoff: Kafka keeps the backlog, nothing is lost.
  So is a refusal by PostgreSQL (``PG_REFUSED``: a wrong password, a rotated secret not yet
  rolled out): it says nothing about the message, which must not be dead-lettered for it.
- Any other error in a batch is retried ``IMGSTREAM_POISON_ATTEMPTS`` times; then the batch is
  split in halves, each half run on its own, until the message(s) that still fail are alone; those
  are dead-lettered with the reason and the stream goes on. One message that always raises never
  blocks its partition.
- A batch never crashes its agent: Faust acks a crashed batch's events on the way out, which would
  lose them for that stage.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from app.stream import faust_patches
from app.core.backoff import Backoff
from app.core.errors import ServiceUnavailable
from app.core.metrics import MESSAGES, POISON
from app.storage.database import PG_DOWN, PG_REFUSED

log = logging.getLogger("imgstream.policy")

OUTAGES = (ServiceUnavailable, *PG_DOWN, *PG_REFUSED)
T = TypeVar("T")
E = TypeVar("E")


async def retry_outages(what: str, coro_fn: Callable[[], Awaitable[T]], *, stage: str,
                        base: float = 0.5, cap: float = 10.0) -> T:
    """Run ``coro_fn()`` until it succeeds while a dependency is down; other errors propagate."""
    backoff = Backoff(base, cap)
    while True:
        try:
            return await coro_fn()
        except OUTAGES as exc:
            MESSAGES.labels(stage, "retried", "").inc()
            log.warning("%s failed (%s); retrying in %.1fs", what, exc, backoff.delay)
        await backoff.wait()


async def handle_batches(stream, size: int, within: float, handle: Callable[[list], Awaitable[object]],
                         depth: int = 1) -> None:
    """An agent's loop: micro-batches of up to ``size`` events (waiting at most ``within``
    seconds), each acked only after ``handle(events)`` returned; with ``depth`` > 1 up to that
    many batches are handled at once, and acked in the order they arrived.

    Faust's ``Stream.take_events`` acks a batch in a ``finally`` clause, and ``Stream.on_stop``
    closes the generator of an agent that is still handling its batch: the batch was acked
    unprocessed and the stop's commit skipped it (one image in 400 in a rolling-upgrade chaos
    run, with the batch waiting out an outage). ``noack_take`` leaves acking to the caller, so a
    batch cut short, however the stop reaches it, stays unacked and its next owner processes it.
    Acking in arrival order keeps the committed offset from passing a batch still in flight."""
    if depth <= 1:
        async for events in stream.noack_take(size, within=within):
            await handle(events)
            for event in events:
                await stream.ack(event)
        return

    slots = asyncio.Semaphore(depth)
    handled: asyncio.Queue[tuple[list, asyncio.Task]] = asyncio.Queue()
    failure: list[BaseException] = []

    async def ack_in_order() -> None:
        while True:
            events, task = await handled.get()
            try:
                await task
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # noqa: BLE001 - handed to the agent's loop below
                failure.append(exc)
                slots.release()
                return
            for event in events:
                await stream.ack(event)
            slots.release()

    acker = asyncio.ensure_future(ack_in_order())
    in_flight: list[asyncio.Task] = []
    try:
        async for events in stream.noack_take(size, within=within):
            await slots.acquire()
            if failure:
                raise failure[0]
            in_flight = [t for t in in_flight if not t.done()]
            task = asyncio.ensure_future(handle(events))
            in_flight.append(task)
            handled.put_nowait((events, task))
    finally:
        # stopping: what is still in flight stays unacked, for the partition's next owner
        for task in (*in_flight, acker):
            task.cancel()


async def run_batch(events: Sequence[E], process: Callable[[list[E]], Awaitable[object]], *, stage: str,
                    on_poison: Callable[[E, BaseException], Awaitable[None]], attempts: int,
                    base: float = 0.5, cap: float = 10.0) -> None:
    """Process ``events`` under the policy above; returns when every event was processed or
    dead-lettered through ``on_poison(event, error)``. A stop in the middle of the batch leaves
    it unacked, so its next owner processes it again (app/stream/faust_patches.py, fix 3)."""
    with faust_patches.redeliver_if_cancelled(events):
        await _run_batch(list(events), process, stage=stage, on_poison=on_poison, attempts=attempts,
                         base=base, cap=cap)


async def _run_batch(batch: list, process, *, stage: str, on_poison, attempts: int, base: float,
                     cap: float) -> None:
    backoff, failures = Backoff(base, cap), 0
    error: BaseException | None = None
    while True:
        try:
            await process(batch)
            return
        except OUTAGES as exc:
            MESSAGES.labels(stage, "retried", "").inc()
            log.warning("%s batch of %d: outage (%s); retrying in %.1fs", stage, len(batch), exc, backoff.delay)
        except Exception as exc:  # noqa: BLE001 - the policy decides, the agent never crashes
            failures, error = failures + 1, exc
            MESSAGES.labels(stage, "retried", "").inc()
            if failures >= attempts:
                log.warning("%s batch of %d failed %d times (%s: %s); isolating the message(s) that fail",
                            stage, len(batch), failures, type(exc).__name__, exc)
                break
            log.exception("%s batch of %d failed (attempt %d of %d); retrying in %.1fs",
                          stage, len(batch), failures, attempts, backoff.delay)
        await backoff.wait()
    if len(batch) == 1:
        POISON.labels(stage).inc()
        await retry_outages(f"dead-lettering a {stage} message", lambda: on_poison(batch[0], error), stage=stage)
        return
    mid = len(batch) // 2
    for half in (batch[:mid], batch[mid:]):
        await _run_batch(half, process, stage=stage, on_poison=on_poison, attempts=attempts, base=base, cap=cap)
