"""Narrow, version-guarded fixes of faust-streaming bugs that lose messages on a rebalance or a
restart, or burn CPU while idle or per message; applied once when the Faust app is built. The diffs fit to send upstream are in
``docs/upstream/``. Each fix refuses to apply to any other version than the one it was read in
(faust-streaming 0.15.3 with aiokafka 0.14.0), or to a method whose source changed: an upgrade
makes someone read the new code instead of patching it blindly.

1. Recovery resumes the stream partitions before it seeks them
   (``Recovery.on_recovery_completed`` and ``Recovery._resume_streams``, faust/tables/recovery.py).
   The stream partitions are resumed *before* ``perform_seek`` and ``app.flow_control.resume()``
   runs *after* it. With the fetcher already running (it was started to restore a table's
   changelog, or by an earlier rebalance), records fetched while ``perform_seek`` makes its
   one-by-one committed-offset look-ups and seeks land in the agents' channel queues, and
   ``flow_control.resume()`` then clears those queues (channels are built with
   ``clear_on_resume=True``). The records are never acked and the position is already past them:
   a block of input is skipped without a trace. Upstream: faust-streaming/faust#216 (this race,
   no-table path) fixed by #217; #241 moved ``resume_partitions`` ahead of ``perform_seek`` again;
   #253 notes the queue clear; #596 is a related recovery gap. The fix keeps the stream partitions
   paused until the seek has finished and the queues have been cleared.

2. A fetch drains partitions that are paused (``AIOKafkaConsumerThread._fetch_records``,
   faust/transport/drivers/aiokafka.py). Faust hands its live set of active partitions to
   aiokafka's ``Fetcher.fetched_records``, which waits up to a second for data and treats an
   *empty* set as "every partition". When the last active partitions are paused during that wait
   (a changelog restore ends while every stream partition is still paused), the call drains the
   paused stream partitions too; Faust's ``getmany`` then drops those records because their
   partitions are not active, and the consumer position has moved past them. The fix hands
   aiokafka a view of the same live set that is never empty to its truth test, so a paused
   partition is never drained.

3. A batch cut short by a stop is acked (``Stream.take_events``, faust/streams.py): the batch
   agents read with ``noack_take`` and ack a batch once handled (``app.stream.policy.handle_batches``);
   ``redeliver_if_cancelled`` guards what still rides on Faust's own acks (``run_batch``, the
   dead-letter agent's per-event stream).

4. An idle micro-batch polls (``Stream.noack_take``, faust/streams.py). With an empty buffer the
   loop still waits on "buffer full" with the ``within`` timeout, so it wakes every ``within``
   seconds, and each wait goes through mode's ``Service.wait_first``, which creates and cancels
   three tasks. With the agents' micro-batch waits then (5 ms for the extractor, 2 ms for each of
   the three classifiers) that was about 1,700 polls and 10,000 callbacks a second: 14-20 % of a core
   on a worker with nothing to do, and the same cost taken from the backbone at saturation. The
   fix waits for the first event without a deadline and starts the ``within`` clock only then;
   a batch still closes when it is full or ``within`` after the loop began waiting on it. An
   event's wait is now ``within`` where polling made it ``within`` / 2 on average, so the agents'
   defaults are half what they were (2.5 ms, 1 ms): the same expected wait.

5. Every fetched message costs four tasks (``Consumer._drain_messages``, faust/transport/consumer.py,
   through mode's ``Service.wait_first``). The drain loop races each message's delivery into the
   agents' queues against the flow's suspension, so that a rebalance abandons a delivery stuck
   on a full queue. mode's ``wait_first`` wraps the delivery and three ``Event.wait()`` calls in
   four tasks and cancels three when the delivery is done, which it almost always is at once:
   counted, 402 tasks for 100 messages, two messages per image. The fix gives the consumer
   a ``wait_first`` that runs the delivery's first step itself, in a copy of the context as its
   task would: a delivery that finishes there costs no task; one that has to wait is carried on
   by a task from where it stopped and raced exactly as before.

6. Each batch of ``noack_take`` waits twice through ``Service.wait_for_stopped`` (the first event,
   then "full or ``within``"), three new tasks each. The batch loop now sleeps on one future that
   the first event, a full buffer, the deadline (``call_later``) and one long-lived watcher of
   the stream's stop resolve. With fix 5 and one deadline instead of two ``wait_for`` tasks per
   Kafka send (``Producer.send_many``), a saturated worker ran a third fewer event-loop callbacks
   per image (91 -> 61, counted).

7. The producer is idempotent only inside transactions (``Producer._settings_extra``,
   faust/transport/drivers/aiokafka.py: ``enable_idempotence`` with ``processing_guarantee=
   "exactly_once"`` alone). On a cluster a send retried into a new partition leader after a broker
   is lost could then be written twice or out of order. With IMGSTREAM_KAFKA_IDEMPOTENT_PRODUCER
   (the default) every producer of the app is idempotent (acks=all, as the app already asks).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import inspect
import logging
import types
from collections.abc import Iterator
from typing import cast

import aiokafka
import faust
from faust.streams import Stream
from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Producer
from mode import Service, want_seconds
from mode.services import WaitResults
from mode.utils.aiter import aiter
from mode.utils.futures import notify

log = logging.getLogger("imgstream.faust_patches")

FAUST_VERSION = "0.15.3"
AIOKAFKA_VERSION = "0.14.0"
# sha256 of inspect.getsource(...) of each original, as read in the versions above
SOURCES = {
    "Recovery.on_recovery_completed": "6ef567acf072e46da3fccbccc6d662371f634f622c3d510972d5df81f70ae3ac",
    "Recovery._resume_streams": "d986a6710c1aca98f08c4c723fb3eadc5bf24576ad4eb9da3dd3eecedda2f24e",
    "AIOKafkaConsumerThread._fetch_records": "39a2c6c79fc1455a199629912b533458a720c64983bc957420a42feef6593baa",
    "Producer._settings_extra": "a4c7bc41b63822236e4c9be1c49437d091f58c1b3a983eecabb7362a819aa8bd",
    "aiokafka Fetcher.fetched_records": "be4348896b9b66afe048de954e2be91c546f4e96c94cb120d5764ec77ce8f19e",
    "Message.ack": "4751b72c4ed84153a7b6c14fdfe41cc92e477b38a6c6089cb785532ef5771688",
    "Stream.noack_take": "f2cc2dbfc162d2006c94361c0ed68535c95484020849eb0d4210c1f52c4c430a",
    "Consumer.wait_first": "feade6a31f8a67897cf687c54c66f5f4535288050bbaac07249ce2063d36ae2e",
    "Consumer._drain_messages": "44a2500309e83c630493f6828af50166ec8d96a0b3e4fb2bab735f704ae93417",
    "Service._wait_stopped": "a62903ab2a73b82eae34a3a003e20e121f584e076948d9e63ae0f8c0802fe2d9",
}
# Private names the rest of the project reads (outside the fixes above), each with the source that
# gives it its meaning, as read in the versions above:
#   faust.streams._current_event, read by current_event(): tables/descriptors.event_context
#   the RocksDB store's _dbs (made in __init__, filled by _db_for_partition), _del, _decode_key:
#     tables/descriptors.expire / report_memory
#   AIOKafkaConsumer._client (made in __init__): app/ops/replay.py's metadata refresh
#   the Prometheus sensor's _metrics (made in __init__), _stream_label and the rebalance hook
#     _clear_partition_related_metrics: app/core/metrics.FaustSensor
PRIVATE = {
    "faust.streams.current_event": "3b821f1a78d86a58234dfe781fbf539775b00e66fdac9489c1c398a2d81d7e9d",
    "rocksdb Store.__init__": "c7c0fa2989e8ab4a4349ff29df8258471624a160cb549e6735c367d9b2fefd19",
    "rocksdb Store._db_for_partition": "cb7e67d5f9efc4bced7b7ab09a55fe717c352daad5b693594e3f7ca52a98787f",
    "rocksdb Store._del": "07f42ff3caefffddb002ba3c316120ee8a608a15021fa226fd8e9ba2635004a9",
    "rocksdb Store._decode_key": "fcb649a35b6e5f45a4456220a4b63ee2d2ab90316a270b537a87843c589dc29e",
    "AIOKafkaConsumer.__init__": "01506f316191f7c99c785bec915756d1560029a6fad75cba6f4da71e343a8163",
    "PrometheusMonitor.__init__": "c0d8ca8cca0a20a199b85e8d74de775a98f35bcfeffd431e753c94942ae238ef",
    "PrometheusMonitor._stream_label": "4753db036cdfceab89ea4aa3abde555c7eb78211e71e2aa304be8253e46c229f",
    "PrometheusMonitor._clear_partition_related_metrics":
        "f733982878e5c883218e71621ec05556e8583b13ab144150a495acbbb8fa348f",
}
# The private attribute names those are, for the test that every one the project touches is listed.
PRIVATE_NAMES = frozenset({"_current_event", "_dbs", "_del", "_decode_key", "_client", "_metrics", "_stream_label",
                           "_clear_partition_related_metrics"})


class FaustPatchError(RuntimeError):
    """The installed faust-streaming or aiokafka is not the version a fix was written for."""


async def on_recovery_completed(self: Recovery, generation_id: int = 0) -> None:
    """``Recovery.on_recovery_completed`` of faust-streaming 0.15.3 with the stream partitions
    resumed only after ``perform_seek`` and ``flow_control.resume()`` (fix 1)."""
    consumer = self.app.consumer
    self.log.info("Restore complete!")
    await self.app.on_rebalance_complete.send()
    self._set_recovery_ended()
    callback_coros = [
        asyncio.ensure_future(
            table.on_recovery_completed(self.actives_for_table[table], self.standbys_for_table[table])
        )
        for table in self.tables.values()
    ]
    if callback_coros:
        await asyncio.wait(callback_coros)
    assignment = consumer.assignment()
    if self.app.consumer_generation_id != generation_id:
        self.log.warning(f"Recovery rebalancing again app id {self.app.consumer_generation_id} param {generation_id}")
        return
    stream_tps = {tp for tp in assignment if not self._is_changelog_tp(tp)}
    if assignment:
        # The stream partitions are still paused here (since the assignment), so no record of
        # theirs is fetched while the committed offsets are looked up and sought.
        self.log.info("Seek stream partitions to committed offsets.")
        await self._wait(consumer.perform_seek(), timeout=self.app.conf.broker_request_timeout)
    self.completed.set()
    self.log.dev("Resume stream partitions")
    # Clears the agents' queues (clear_on_resume): nothing of the stream partitions is in them yet.
    self.app.flow_control.resume()
    consumer.resume_partitions(stream_tps)
    consumer.resume_flow()
    await cast(faust.App, self.app)._fetcher.maybe_start()
    self.tables.on_actives_ready()
    if not self.app.assignor.assigned_standbys():
        self.tables.on_standbys_ready()
    self.app.on_rebalance_end()
    self.log.info("Worker ready")


async def _resume_streams(self: Recovery, generation_id: int = 0) -> None:
    """``Recovery._resume_streams`` (the path of workers without tables) of faust-streaming
    0.15.3 with the stream partitions resumed only after the seek and the queue clear (fix 1)."""
    app = self.app
    consumer = app.consumer
    await app.on_rebalance_complete.send()
    assignment = consumer.assignment()
    if self.app.consumer_generation_id != generation_id:
        self.log.warning("Recovery rebalancing again")
        return
    stream_tps = {tp for tp in assignment if not self._is_changelog_tp(tp)}
    if assignment:
        self.log.info("Seek stream partitions to committed offsets.")
        await self._wait(consumer.perform_seek(), timeout=self.app.conf.broker_request_timeout)
    else:
        self.log.info("Resuming streams with empty assignment")
    self.completed.set()
    self.log.info("Resuming flow...")
    app.flow_control.resume()
    self.log.dev("Resume stream partitions")
    consumer.resume_partitions(stream_tps)
    consumer.resume_flow()
    await cast(faust.App, app)._fetcher.maybe_start()
    self.tables.on_actives_ready()
    self.tables.on_standbys_ready()
    app.on_rebalance_end()
    self.log.info("Worker ready")


class LivePartitions:
    """The consumer's live set of active partitions as aiokafka's ``fetched_records`` reads it:
    membership follows the set as it changes, and it is never empty to a truth test, because
    aiokafka reads an empty set as "every partition" (fix 2)."""

    __slots__ = ("_tps",)

    def __init__(self, tps: set) -> None:
        self._tps = tps

    def __bool__(self) -> bool:
        return True

    def __contains__(self, tp: object) -> bool:
        return tp in self._tps

    def __iter__(self) -> Iterator:
        return iter(list(self._tps))

    def __len__(self) -> int:
        return len(self._tps)


_original_fetch_records = AIOKafkaConsumerThread._fetch_records
_original_wait_first = Service.wait_first


async def _fetch_records(self, consumer, active_partitions, timeout=None, max_records=None):
    """``AIOKafkaConsumerThread._fetch_records`` handing aiokafka a never-empty live view of the
    active partitions (fix 2); everything else is the original."""
    if active_partitions is not None and not isinstance(active_partitions, LivePartitions):
        if not active_partitions:
            return {}
        active_partitions = LivePartitions(active_partitions)
    return await _original_fetch_records(self, consumer, active_partitions, timeout=timeout, max_records=max_records)


async def noack_take(self: Stream, max_: int, within):
    """``Stream.noack_take`` of faust-streaming 0.15.3 that waits for the first event of a batch
    without polling (fix 4) and waits on one future instead of ``Service.wait_for_stopped``
    (fix 6); the buffering, the flush when full and the hand-over are the original's, comments
    and all."""
    buffer: list = []
    events: list = []
    buffer_add = buffer.append
    event_add = events.append
    buffer_size = buffer.__len__
    buffer_full = asyncio.Event()
    buffer_consumed = asyncio.Event()
    timeout = want_seconds(within) if within else None
    stream_enable_acks: bool = self.enable_acks
    loop = asyncio.get_running_loop()

    buffer_consuming: asyncio.Future | None = None
    # fix 6: the batch loop sleeps on this future; the first event in an empty buffer, a full
    # buffer, the ``within`` deadline and the stream's stop or crash resolve it
    wakeup: asyncio.Future | None = None

    def wake(*_) -> None:
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    def watch_stop() -> asyncio.Future:
        watcher = asyncio.ensure_future(self._wait_stopped())
        watcher.add_done_callback(wake)
        return watcher

    # one watcher of the stream's stop for many waits, where each ``wait_for_stopped`` made its own
    stopped = watch_stop()

    async def sleep_until_woken(deadline: float | None) -> None:
        nonlocal wakeup, stopped
        if self.should_stop:
            return
        if stopped.done():
            stopped.result()  # raises if the watcher itself failed
            # stopped and reset since (the passive drainer's iteration stops the stream and then
            # resets it as it ends, in ``Stream._c_aiter``'s finally): watch it as it is now
            stopped = watch_stop()
        wakeup = loop.create_future()
        timer = loop.call_later(deadline, wake) if deadline is not None else None
        try:
            await wakeup
        finally:
            wakeup = None
            if timer is not None:
                timer.cancel()

    channel_it = aiter(self.channel)

    # We add this processor to populate the buffer, and the stream
    # is passively consumed in the background (enable_passive below).
    async def add_to_buffer(value):
        try:
            # buffer_consuming is set when consuming buffer
            # after timeout.
            nonlocal buffer_consuming
            if buffer_consuming is not None:
                try:
                    await buffer_consuming
                finally:
                    buffer_consuming = None

            # We want to save events instead of values to allow for manual ack
            event = self.current_event
            buffer_add(event)
            if event is None:
                raise RuntimeError("Take buffer found current_event is None")

            event_add(event)
            if buffer_size() == 1:
                wake()  # fix 4: the first event starts the batch's ``within`` clock
            if buffer_size() >= max_:
                # signal that the buffer is full and should be emptied.
                buffer_full.set()
                wake()
                # strict wait for buffer to be consumed after buffer
                # full.
                # If max is 1000, we are not allowed to return 1001
                # values.
                buffer_consumed.clear()
                await self.wait(buffer_consumed)
        except asyncio.CancelledError:  # pragma: no cover
            raise
        except Exception as exc:
            self.log.exception("Error adding to take buffer: %r", exc)
            await self.crash(exc)
        return value

    # Disable acks to ensure this method acks manually
    # events only after they are consumed by the user
    self.enable_acks = False

    self.add_processor(add_to_buffer)
    self._enable_passive(channel_it)
    try:
        while not self.should_stop:
            if not buffer:
                # fix 4: nothing buffered, so no deadline to keep: sleep until the first event
                # (or the stop) instead of waking every ``within`` seconds
                await sleep_until_woken(None)
                continue
            # wait until buffer full, or timeout.
            if not buffer_full.is_set():
                await sleep_until_woken(timeout)
            if buffer:
                # make sure background thread does not add new items to
                # buffer while we read.
                buffer_consuming = self.loop.create_future()
                try:
                    yield list(buffer)
                finally:
                    buffer.clear()
                    # code change: We want to manually ack
                    # for event in events:
                    #     await self.ack(event)
                    events.clear()
                    # allow writing to buffer again
                    notify(buffer_consuming)
                    buffer_full.clear()
                    buffer_consumed.set()
    finally:
        # Restore last behaviour of "enable_acks"
        self.enable_acks = stream_enable_acks
        self._processors.remove(add_to_buffer)
        stopped.cancel()


@types.coroutine
def _carry_on(coro, pending):
    """Drive ``coro``, whose first step already ran and yielded ``pending``, to its end: every
    later step goes through the task that awaits this, exactly as if it had run the first too."""
    while True:
        try:
            sent = yield pending
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # noqa: BLE001 - a cancellation or a thrown error goes to coro
            try:
                pending = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                pending = coro.send(sent)
            except StopIteration as stop:
                return stop.value


async def _rest_of(coro, pending):
    return await _carry_on(coro, pending)


async def consumer_wait_first(self: Consumer, *coros, timeout=None):
    """``Service.wait_first`` for Faust's consumer, which calls it once per fetched message
    (``Consumer._drain_messages``: the delivery into the agents' queues raced against the flow's
    suspension) (fix 5). The delivery almost always finishes without waiting; mode's
    ``wait_first`` still wraps it and three ``Event.wait()`` calls in four tasks and cancels three,
    each task with its own steps and callbacks. Here the first coroutine takes its first step in a copy
    of the context, as its own task would: when that finishes it, the result is returned and the
    waits, never started, are closed; when it has to wait, its task carries on from there and
    the original ``wait_first`` races it, unchanged."""
    first = coros[0] if coros else None
    if timeout is not None or not inspect.iscoroutine(first):
        return await _original_wait_first(self, *coros, timeout=timeout)
    context = contextvars.copy_context()
    try:
        pending = context.run(first.send, None)
    except StopIteration as stop:
        _close(coros[1:])
        stopped = self._stopped.is_set() or self._crashed.is_set()
        return WaitResults([], [], True) if stopped else WaitResults([first], [stop.value], False)
    except BaseException:
        _close(coros[1:])
        raise
    task = asyncio.get_running_loop().create_task(_rest_of(first, pending), context=context)
    return await _original_wait_first(self, task, *coros[1:], timeout=timeout)


def _close(coros) -> None:
    for coro in coros:
        if inspect.iscoroutine(coro):
            coro.close()


_original_settings_extra = Producer._settings_extra


def _producer_settings_extra(self: Producer):
    """Fix 7: Faust's extra producer settings, with idempotence where the app asks for it."""
    extra = dict(_original_settings_extra(self))
    settings = getattr(self.app, "imgstream_settings", None)
    if settings is not None and settings.kafka_idempotent_producer:
        extra.update(acks="all", enable_idempotence=True)
    return extra


def source_sha256(fn) -> str:
    return hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()


_ORIGINALS = {
    "Recovery.on_recovery_completed": (Recovery, "on_recovery_completed", Recovery.on_recovery_completed,
                                       on_recovery_completed),
    "Recovery._resume_streams": (Recovery, "_resume_streams", Recovery._resume_streams, _resume_streams),
    "Stream.noack_take": (Stream, "noack_take", Stream.noack_take, noack_take),
    "Consumer.wait_first": (Consumer, "wait_first", Consumer.wait_first, consumer_wait_first),
    "AIOKafkaConsumerThread._fetch_records": (AIOKafkaConsumerThread, "_fetch_records", _original_fetch_records,
                                              _fetch_records),
    "Producer._settings_extra": (Producer, "_settings_extra", _original_settings_extra, _producer_settings_extra),
}


def check(faust_version: str | None = None, aiokafka_version: str | None = None,
          sources: dict[str, str] | None = None) -> None:
    """Raise ``FaustPatchError`` unless the installed libraries are the ones the fixes were read in."""
    faust_version = faust_version or faust.__version__
    aiokafka_version = aiokafka_version or aiokafka.__version__
    if (faust_version, aiokafka_version) != (FAUST_VERSION, AIOKAFKA_VERSION):
        raise FaustPatchError(
            f"imgstream's fixes of Faust's rebalance losses were written for faust-streaming {FAUST_VERSION} with "
            f"aiokafka {AIOKAFKA_VERSION}, found {faust_version} with {aiokafka_version}: read "
            "faust/tables/recovery.py and faust/transport/drivers/aiokafka.py, re-check app/stream/faust_patches.py "
            "(and its docs/upstream diffs) before running these versions")
    from aiokafka import AIOKafkaConsumer
    from aiokafka.consumer.fetcher import Fetcher
    from faust import streams
    from faust.sensors.prometheus import PrometheusMonitor
    from faust.stores.rocksdb import Store
    from faust.types.tuples import Message

    current = sources or {
        **{name: source_sha256(original) for name, (_, _, original, _) in _ORIGINALS.items()},
        "aiokafka Fetcher.fetched_records": source_sha256(Fetcher.fetched_records),
        "Message.ack": source_sha256(Message.ack),
        "Consumer._drain_messages": source_sha256(Consumer._drain_messages),
        "Service._wait_stopped": source_sha256(Service._wait_stopped),
        "faust.streams.current_event": source_sha256(streams.current_event),
        "rocksdb Store.__init__": source_sha256(Store.__init__),
        "rocksdb Store._db_for_partition": source_sha256(Store._db_for_partition),
        "rocksdb Store._del": source_sha256(Store._del),
        "rocksdb Store._decode_key": source_sha256(Store._decode_key),
        "AIOKafkaConsumer.__init__": source_sha256(AIOKafkaConsumer.__init__),
        "PrometheusMonitor.__init__": source_sha256(PrometheusMonitor.__init__),
        "PrometheusMonitor._stream_label": source_sha256(PrometheusMonitor._stream_label),
        "PrometheusMonitor._clear_partition_related_metrics": source_sha256(
            PrometheusMonitor._clear_partition_related_metrics),
    }
    changed = sorted(name for name, digest in {**SOURCES, **PRIVATE}.items() if current.get(name) != digest)
    if changed:
        raise FaustPatchError(f"not the source the fixes were written against: {', '.join(changed)}")


def apply() -> None:
    """Install the fixes (idempotent); ``FaustPatchError`` on any other library version."""
    check()
    for owner, attr, _, fixed in _ORIGINALS.values():
        setattr(owner, attr, fixed)


def restore() -> None:
    """Undo ``apply`` (tests)."""
    for owner, attr, original, _ in _ORIGINALS.values():
        setattr(owner, attr, original)


@contextlib.contextmanager
def redeliver_if_cancelled(events) -> Iterator[None]:
    """Fix 3, for the agents' batches: Faust's ``Stream.take_events`` acks a batch's events in a
    ``finally`` clause, also when the agent is cancelled in the middle of the batch (a worker
    stopping on SIGTERM); the worker's stop then commits them and the unprocessed rest of the
    batch is skipped for good (measured: 15 of 400 images in a rolling restart). Marking the
    messages acked on cancellation makes those acks no-ops (``Message.ack`` skips an acked
    message), so no offset past the batch is committed and the next owner processes it again."""
    try:
        yield
    except asyncio.CancelledError:
        for event in events:
            event.message.acked = True
        raise
