"""Faust's recovery race, driven without Kafka: the real ``Recovery.on_recovery_completed`` runs
against a consumer whose committed-offset look-ups yield while a running fetcher delivers records
into an agent's real ``FlowControlQueue`` (``clear_on_resume=True``, as Faust builds channels).
Every offset must reach the agent. Unpatched faust-streaming 0.15.3 loses the records fetched
during the seek (``test_unpatched_recovery_loses_records`` keeps that proof); the patch in
``app.faust_patches`` loses none."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import faust
import pytest
from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer
from faust.types import TP
from mode.utils.queues import FlowControlEvent, FlowControlQueue

from app import faust_patches

N = 60
STREAM = [TP("input", 0), TP("input", 1)]
CHANGELOG = TP("app-descriptors-changelog", 0)


class FakeConsumer:
    """Faust's own pause/resume/perform_seek bookkeeping (the real methods) over a fake fetch
    position per partition. ``seek_to_committed`` behaves like aiokafka's: one look-up per
    partition (each yields to the loop), a seek right after it when a commit exists."""

    pause_partitions = Consumer.pause_partitions
    resume_partitions = Consumer.resume_partitions
    perform_seek = Consumer.perform_seek

    def __init__(self, committed: dict[TP, int | None]) -> None:
        self.committed = committed
        self.position = {tp: committed.get(tp) or 0 for tp in STREAM}
        self._active_partitions: set[TP] = {CHANGELOG}
        self._paused_partitions: set[TP] = set()
        self._read_offset: dict = {}
        self._committed_offset: dict = {}
        self.flow_active = True

    def _get_active_partitions(self) -> set[TP]:
        return self._active_partitions

    def assignment(self) -> set[TP]:
        return {*STREAM, CHANGELOG}

    async def seek_to_committed(self) -> dict[TP, int | None]:
        out = {}
        for tp in STREAM:
            await asyncio.sleep(0.01)  # OffsetFetch round trip
            out[tp] = self.committed.get(tp)
            if out[tp]:
                self.position[tp] = out[tp]
        return out

    def resume_flow(self) -> None:
        self.flow_active = True


async def fetcher(consumer: FakeConsumer, queue: FlowControlQueue, stop: asyncio.Event) -> None:
    """Delivers the next record of every active, unpaused stream partition every millisecond."""
    while not stop.is_set():
        if consumer.flow_active:
            for tp in STREAM:
                if tp in consumer._active_partitions and consumer.position[tp] < N:
                    offset = consumer.position[tp]
                    consumer.position[tp] += 1
                    await queue.put((tp, offset))
        await asyncio.sleep(0.001)


def recovery_for(consumer: FakeConsumer, flow_control: FlowControlEvent) -> Recovery:
    async def noop(*_a, **_k):
        return None

    app = SimpleNamespace(
        conf=SimpleNamespace(stream_recovery_delay=0.0, broker_request_timeout=30.0),
        consumer=consumer, consumer_generation_id=1, flow_control=flow_control, in_recovery=True,
        on_rebalance_complete=SimpleNamespace(send=noop), _fetcher=SimpleNamespace(maybe_start=noop),
        assignor=SimpleNamespace(assigned_standbys=lambda: set()), on_rebalance_end=lambda: None,
    )
    tables = SimpleNamespace(values=lambda: [], changelog_topics={CHANGELOG.topic},
                             on_actives_ready=lambda: None, on_standbys_ready=lambda: None)
    return Recovery(app, tables)


async def run_recovery(committed: dict[TP, int | None]) -> dict[TP, set[int]]:
    """The state a worker is in when its changelog restore has finished: the fetcher runs, flow
    control is resumed, the stream partitions are paused since the assignment. Then the recovery
    completes; the agent is busy until it has (it reads its queue afterwards)."""
    flow_control = FlowControlEvent()
    flow_control.resume()
    queue: FlowControlQueue = FlowControlQueue(flow_control=flow_control, clear_on_resume=True)
    consumer = FakeConsumer(committed)
    consumer.pause_partitions(STREAM)
    stop = asyncio.Event()
    task = asyncio.create_task(fetcher(consumer, queue, stop))
    try:
        await recovery_for(consumer, flow_control).on_recovery_completed(generation_id=1)
        seen: dict[TP, set[int]] = {tp: set() for tp in STREAM}
        while any(consumer.position[tp] < N for tp in STREAM) or not queue.empty():
            try:
                tp, offset = await asyncio.wait_for(queue.get(), 1.0)
            except TimeoutError:
                break
            seen[tp].add(offset)
        return seen
    finally:
        stop.set()
        await task


CASES = {"no commit yet": {}, "committed": {STREAM[0]: 10, STREAM[1]: 20}}


@pytest.fixture
def patched():
    faust_patches.apply()
    yield
    faust_patches.restore()


@pytest.mark.parametrize("committed", CASES.values(), ids=CASES.keys())
async def test_every_offset_reaches_the_agent(patched, committed):
    seen = await run_recovery(committed)
    for tp in STREAM:
        assert seen[tp] == set(range(committed.get(tp) or 0, N)), tp


@pytest.mark.parametrize("committed", CASES.values(), ids=CASES.keys())
async def test_unpatched_recovery_loses_records(committed):
    """The race itself, on the unpatched method: proof that the test above can fail."""
    faust_patches.restore()
    seen = await run_recovery(committed)
    missing = {tp: set(range(committed.get(tp) or 0, N)) - seen[tp] for tp in STREAM}
    assert any(missing.values()), "faust's own ordering lost nothing: is the race gone upstream?"


def test_refuses_another_faust_version():
    with pytest.raises(faust_patches.FaustPatchError, match="0.15.3"):
        faust_patches.apply(version="0.16.0")
    assert faust.__version__ == faust_patches.FAUST_VERSION


def test_refuses_a_changed_method():
    async def other(self, generation_id: int = 0):
        return None

    with pytest.raises(faust_patches.FaustPatchError, match="source"):
        faust_patches.apply(original=other)
