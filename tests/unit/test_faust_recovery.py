"""Faust's recovery race, driven without Kafka: the real ``Recovery.on_recovery_completed`` runs
against a consumer whose committed-offset look-ups yield while a running fetcher delivers records
into an agent's real ``FlowControlQueue`` (``clear_on_resume=True``, as Faust builds channels).
Every offset must reach the agent. Unpatched faust-streaming 0.15.3 loses the records fetched
during the seek (the ``test_unpatched_*`` tests keep that proof); the fixes in
``app.stream.faust_patches`` lose none. The second half drives aiokafka's real ``fetched_records``
through Faust's ``_fetch_records`` while the last active partition is paused."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import warnings
from collections import defaultdict
from collections.abc import Iterator
from types import SimpleNamespace

import faust
import pytest
from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import TP
from mode.utils.queues import FlowControlEvent, FlowControlQueue

from app.stream import faust_patches

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


async def run_recovery(committed: dict[TP, int | None], method: str = "on_recovery_completed") -> dict[TP, set[int]]:
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
        await getattr(recovery_for(consumer, flow_control), method)(generation_id=1)
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


@pytest.mark.parametrize("committed", CASES.values(), ids=CASES.keys())
async def test_workers_without_tables_resume_after_the_seek_too(patched, committed):
    """Workers without tables (a classifier or front role alone) recover through
    ``_resume_streams``, which has the same ordering."""
    seen = await run_recovery(committed, method="_resume_streams")
    for tp in STREAM:
        assert seen[tp] == set(range(committed.get(tp) or 0, N)), tp


def test_unpatched_resume_streams_loses_records():
    faust_patches.restore()
    seen = asyncio.run(run_recovery({}, method="_resume_streams"))
    assert any(set(range(N)) - seen[tp] for tp in STREAM)


# --- fix 2: a fetch never drains a paused partition ------------------------------------------------

class Assignment:
    """aiokafka's assignment state, as ``FetchResult`` reads it."""

    active = True

    def __init__(self) -> None:
        self.states: dict = {}

    def state_value(self, tp):
        return self.states.setdefault(tp, SimpleNamespace(paused=False, position=0, consumed_to=lambda o, tp=tp:
                                                          setattr(self.states[tp], "position", o)))


class PartitionRecords:
    def __init__(self, offsets: list[int]) -> None:
        self._it = iter(offsets)
        self.next_fetch_offset = offsets[0]

    def __iter__(self):
        return self

    def __next__(self):
        offset = next(self._it)
        self.next_fetch_offset = offset + 1
        return SimpleNamespace(offset=offset)


async def drain_while_the_last_active_partition_pauses() -> tuple[dict, int]:
    """aiokafka's real ``Fetcher.fetched_records`` (through Faust's ``_fetch_records``) waits for
    data while the changelog is the only active partition; the restore ends and the changelog is
    paused (the active set is now empty); then data arrives for the paused stream partition.
    Returns what the call drained and the stream partition's consumed position."""
    from aiokafka.consumer.fetcher import Fetcher, FetchResult

    stream, changelog = STREAM[0], CHANGELOG
    assignment = Assignment()
    waiter: asyncio.Future = asyncio.get_running_loop().create_future()

    fetcher = SimpleNamespace(
        _closed=False, _records={}, _wait_consume_future=None,
        _subscriptions=SimpleNamespace(reassignment_in_progress=False, is_assigned=lambda tp: True,
                                       fetch_context=contextlib.nullcontext),
        _notify=lambda fut: None, _create_fetch_waiter=lambda: waiter,
    )
    fetcher.fetched_records = Fetcher.fetched_records.__get__(fetcher)
    consumer = SimpleNamespace(_closed=False, _fetcher=fetcher)
    thread = SimpleNamespace(consumer=SimpleNamespace(flow_active=True))
    active = {changelog}

    async def restore_ends_then_data_arrives():
        await asyncio.sleep(0.01)
        active.discard(changelog)  # Recovery: "Done reading from changelog topics" -> pause
        fetcher._records[stream] = FetchResult(stream, assignment=assignment, partition_records=PartitionRecords(
            list(range(10))), backoff=0)
        waiter.set_result(None)

    task = asyncio.create_task(restore_ends_then_data_arrives())
    drained = await AIOKafkaConsumerThread._fetch_records(thread, consumer, active, timeout=0.3, max_records=500)
    await task
    return drained, assignment.state_value(stream).position


async def test_a_fetch_never_drains_a_paused_partition(patched):
    drained, position = await drain_while_the_last_active_partition_pauses()
    assert drained == {} and position == 0


async def test_unpatched_fetch_drains_the_paused_partition():
    """Proof that the test above can fail: the empty set reads as 'every partition'."""
    faust_patches.restore()
    drained, position = await drain_while_the_last_active_partition_pauses()
    assert STREAM[0] in drained and position == 10


def test_refuses_other_library_versions():
    with pytest.raises(faust_patches.FaustPatchError, match="0.15.3"):
        faust_patches.check(faust_version="0.16.0")
    with pytest.raises(faust_patches.FaustPatchError, match="aiokafka"):
        faust_patches.check(aiokafka_version="0.15.0")
    faust_patches.check()  # the installed versions are the ones read


def test_refuses_a_changed_method():
    with pytest.raises(faust_patches.FaustPatchError, match="Recovery._resume_streams"):
        faust_patches.check(sources={**faust_patches.SOURCES, **faust_patches.PRIVATE,
                                     "Recovery._resume_streams": "0" * 64})


def test_refuses_a_changed_private_name_the_project_reads():
    with pytest.raises(faust_patches.FaustPatchError, match="rocksdb Store._del"):
        faust_patches.check(sources={**faust_patches.SOURCES, **faust_patches.PRIVATE, "rocksdb Store._del": "0" * 64})


def _private_names_read(path) -> set[str]:
    """Private names a module reads of objects not its own: ``x._name``, ``getattr(x, "_name")``,
    ``hasattr(x, "_name")`` and ``from lib import _name``."""
    import ast

    tree = ast.parse(path.read_text())
    names = set()
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.bases):
        # a subclass of a library class reads the library's private state through ``self``
        own = {n.name for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        own |= {t.attr for n in ast.walk(cls) if isinstance(n, (ast.Assign, ast.AnnAssign))
                for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Attribute)}
        names |= {n.attr for n in ast.walk(cls) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                  and n.value.id == "self" and n.attr.startswith("_") and not n.attr.startswith("__")} - own
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if not (isinstance(node.value, ast.Name) and node.value.id in {"self", "cls", "sys", "threading"}):
                names.add(node.attr)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in {"getattr", "hasattr"}:
            if len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and str(node.args[1].value).startswith("_"):
                names.add(node.args[1].value)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in {"faust", "aiokafka", "mode"}:
            names |= {a.name for a in node.names if a.name.startswith("_")}
    return names


def test_every_private_library_name_the_worker_reads_is_under_the_version_guard():
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    # the standard library's: ThreadPoolExecutor's shut-down flag (app/core/threads.Pool)
    ours = {"_shutdown"}
    read = {}
    for folder in ("app", "agents", "tables"):
        for path in (repo / folder).rglob("*.py"):
            if path.name == "faust_patches.py":  # the fixes: every method they replace is hashed in SOURCES
                continue
            for name in _private_names_read(path) - ours:
                read.setdefault(name, []).append(str(path.relative_to(repo)))
    assert set(read) <= faust_patches.PRIVATE_NAMES, {n: f for n, f in read.items() if n not in faust_patches.PRIVATE_NAMES}
    assert set(read) == faust_patches.PRIVATE_NAMES  # and nothing is listed that is no longer read


# --- fix 3: a batch cut short by a stop is not acked ------------------------------------------------

def _messages(n: int):
    from faust.types.tuples import ConsumerMessage

    tp = TP("input", 0)
    return [ConsumerMessage("input", 0, i, 0.0, None, [], b"k", b"v", None, 1, 1, tp) for i in range(n)]


async def _cut_short(messages, protect: bool) -> list[int]:
    """An agent's batch cancelled mid-way (a worker stopping), then acked the way
    ``Stream.take_events``' finally clause acks it; returns the offsets the consumer was told."""
    acked: list[int] = []
    consumer = SimpleNamespace(ack=lambda m: acked.append(m.offset) or True)
    events = [SimpleNamespace(message=m) for m in messages]

    async def batch():
        if protect:
            with faust_patches.redeliver_if_cancelled(events):
                await asyncio.sleep(10)
        else:
            await asyncio.sleep(10)

    task = asyncio.create_task(batch())
    await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    for event in events:  # take_events: finally: for event in events: await self.ack(event)
        event.message.ack(consumer)
    return acked


async def test_a_batch_cut_short_by_a_stop_is_not_acked():
    assert await _cut_short(_messages(3), protect=True) == []


async def test_without_the_guard_a_cut_short_batch_is_acked():
    assert await _cut_short(_messages(3), protect=False) == [0, 1, 2]


async def test_the_agents_batch_policy_leaves_a_cut_short_batch_unacked():
    from app.stream.policy import run_batch

    messages = _messages(3)
    events = [SimpleNamespace(message=m) for m in messages]
    acked: list[int] = []
    consumer = SimpleNamespace(ack=lambda m: acked.append(m.offset) or True)

    async def process(batch):
        await asyncio.sleep(10)

    async def on_poison(event, exc):
        raise AssertionError("a stop is not a poison message")

    task = asyncio.create_task(run_batch(events, process, stage="t", on_poison=on_poison, attempts=1))
    await asyncio.sleep(0.01)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    for event in events:
        event.message.ack(consumer)
    assert acked == []


@pytest.mark.parametrize("ours,depth", [(True, 1), (True, 2), (True, 3), (False, 1)],
                         ids=["handle_batches", "handle_batches-depth-2", "handle_batches-depth-3", "take_events"])
async def test_a_batch_still_handled_when_its_agent_stops_stays_unacked(ours, depth):
    """A real Faust stream: the agent is still handling its batch (waiting out an outage, say)
    when the worker stops. ``Stream.on_stop`` closes ``take_events``' generator, whose ``finally``
    acks the batch (the stop's commit then skips it: one image in 400 in a rolling-upgrade chaos
    run); ``handle_batches`` reads with ``noack_take`` and acks only a handled batch."""
    from app.stream.policy import handle_batches

    app = faust.App(f"noack-{ours}-{depth}", store="memory://", autodiscover=False, value_serializer="raw",
                    web_enabled=False)
    seen: list = []

    async def handle(events):
        seen.extend(events)
        await asyncio.sleep(30)  # still handling when the worker stops

    @app.agent(app.topic("input", value_serializer="raw"))
    async def agent(stream):
        if ours:
            await handle_batches(stream, 4, 0.01, handle, depth=depth)
        else:
            async for events in stream.take_events(4, within=0.01):
                await handle(events)

    async with agent.test_context() as a:
        await a.put(b"x", wait=False)
        for _ in range(300):
            if seen:
                break
            await asyncio.sleep(0.01)
        for more in range(1, depth):  # further batches in flight beside the first
            await a.put(b"y%d" % more, wait=False)
            for _ in range(300):
                if len(seen) == more + 1:
                    break
                await asyncio.sleep(0.01)
    assert len(seen) == depth
    assert all(e.message.acked is (not ours) for e in seen)


async def test_batches_in_flight_are_handled_side_by_side_and_acked_in_order():
    """``handle_batches(depth=2)``: the second batch runs while the first is still handled, and
    is not acked before the first (the committed offset never passes a batch in flight)."""
    from app.stream.policy import handle_batches

    app = faust.App("noack-depth", store="memory://", autodiscover=False, value_serializer="raw", web_enabled=False)
    first_release = asyncio.Event()
    log: list[str] = []
    events: dict[bytes, object] = {}
    running = 0
    most = 0

    async def handle(batch):
        nonlocal running, most
        running += 1
        most = max(most, running)
        value = batch[0].value
        events[value] = batch[0]
        log.append(f"start {value.decode()}")
        if value == b"a":
            await first_release.wait()
        log.append(f"end {value.decode()}")
        running -= 1

    @app.agent(app.topic("input", value_serializer="raw"))
    async def agent(stream):
        await handle_batches(stream, 1, 0.01, handle, depth=2)

    async def until(predicate):
        for _ in range(300):
            if predicate():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(log)

    async with agent.test_context() as a:
        await a.put(b"a", wait=False)
        await a.put(b"b", wait=False)
        await until(lambda: "end b" in log)
        await asyncio.sleep(0.05)
        assert not events[b"a"].message.acked and not events[b"b"].message.acked  # b waits for a
        first_release.set()
        await until(lambda: events[b"b"].message.acked)
        assert events[b"a"].message.acked
        await a.put(b"c", wait=False)  # a third batch once a slot is free
        await until(lambda: b"c" in events and events[b"c"].message.acked)
    assert most == 2
    assert log[:3] == ["start a", "start b", "end b"]


# --- fixes 4 and 6: an idle micro-batch does not poll, a batch costs no task ---------------------

@contextlib.contextmanager
def counting_tasks() -> Iterator[list[int]]:
    """Counts the tasks the running loop creates inside the block: ``count[0]``."""
    loop = asyncio.get_running_loop()
    count = [0]
    previous = loop.get_task_factory()

    def factory(loop, coro, **kwargs):
        count[0] += 1
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(factory)
    try:
        yield count
    finally:
        loop.set_task_factory(previous)


async def _take(patched_take: bool, puts: list[float], size: int = 4, within: float = 0.002,
                idle: float = 0.3) -> tuple[int, int, list[list[bytes]]]:
    """A real Faust agent reading with ``noack_take``: idle for ``idle`` seconds, then one event
    after each delay in ``puts``. Returns the tasks created while it idled, the tasks created
    per batch afterwards, and the batches it yielded."""
    (faust_patches.apply if patched_take else faust_patches.restore)()
    app = faust.App(f"take-{patched_take}-{len(puts)}", store="memory://", autodiscover=False,
                    value_serializer="raw", web_enabled=False)
    batches: list[list[bytes]] = []

    @app.agent(app.topic("input", value_serializer="raw"))
    async def agent(stream):
        async for events in stream.noack_take(size, within=within):
            batches.append([e.value for e in events])
            for event in events:
                await stream.ack(event)

    try:
        async with agent.test_context() as a:
            await asyncio.sleep(0.05)  # started and waiting
            with counting_tasks() as idle_tasks:
                await asyncio.sleep(idle)
            with counting_tasks() as batch_tasks:
                for i, delay in enumerate(puts):
                    await asyncio.sleep(delay)
                    await a.put(str(i).encode(), wait=False)
                for _ in range(100):
                    if sum(map(len, batches)) == len(puts):
                        break
                    await asyncio.sleep(0.01)
    finally:
        faust_patches.restore()
    return idle_tasks[0], batch_tasks[0] / max(1, len(batches)), batches


async def test_an_idle_batch_loop_waits_without_polling():
    idle_tasks, _, batches = await _take(True, [0.0])
    assert idle_tasks == 0  # sleeping until the first event, not waking every ``within``
    assert batches == [[b"0"]]


async def test_unpatched_idle_batch_loop_polls_every_within():
    idle_tasks, _, _ = await _take(False, [0.0])
    # three tasks a poll (mode's wait_first): 0.3 s at within = 2 ms is ~150 polls in theory,
    # fewer on a busy machine
    assert idle_tasks > 90


async def test_a_batch_costs_the_loop_no_task():
    # events further apart than ``within``: each closes its batch on the deadline
    _, per_batch, batches = await _take(True, [0.005] * 12, within=0.001, idle=0.01)
    assert len(batches) == 12
    assert per_batch == 0


async def test_unpatched_batch_loop_makes_tasks_every_batch():
    # two ``wait_for_stopped`` a batch (the first event, then full or ``within``), three tasks each
    _, per_batch, batches = await _take(False, [0.005] * 12, within=0.001, idle=0.01)
    assert len(batches) == 12
    assert per_batch >= 3


async def test_batches_still_fill_and_close_on_time():
    # ten events at once: full batches of four, then the rest once ``within`` has passed
    _, _, burst = await _take(True, [0.0] * 10, within=0.05, idle=0.05)
    assert [len(b) for b in burst] == [4, 4, 2]
    assert [v for b in burst for v in b] == [str(i).encode() for i in range(10)]
    # events further apart than ``within``: each closes its own batch
    _, _, spaced = await _take(True, [0.05, 0.05, 0.05], within=0.01, idle=0.05)
    assert [len(b) for b in spaced] == [1, 1, 1]


async def test_a_stopping_stream_ends_an_idle_batch_loop():
    """The stop still reaches a batch loop asleep on an empty buffer: the agent's stream ends."""
    faust_patches.apply()
    app = faust.App("take-stop", store="memory://", autodiscover=False, value_serializer="raw", web_enabled=False)
    ended = asyncio.Event()

    @app.agent(app.topic("input", value_serializer="raw"))
    async def agent(stream):
        try:
            async for _ in stream.noack_take(4, within=0.01):
                pass
        finally:
            ended.set()

    try:
        async with agent.test_context():
            await asyncio.sleep(0.05)
        await asyncio.wait_for(ended.wait(), 5)
    finally:
        faust_patches.restore()


# --- fix 5: the consumer delivers a fetched message without four tasks ------------------------------

def _draining_consumer(messages, deliver):
    """The worker's consumer class (Faust's ``_drain_messages`` and the installed ``wait_first``),
    not connected, over a fake fetch: one ``getmany`` of ``messages``, then its fetcher stops."""
    from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
    from mode import Service

    consumer = AIOKafkaConsumer.__new__(AIOKafkaConsumer)
    Service.__init__(consumer)
    fetcher = Service()
    consumer._read_offset = defaultdict(lambda: None)
    consumer._commit_every = None
    consumer._n_acked = 0
    consumer.app = SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda topic: False))
    consumer.suspend_flow = asyncio.Event()
    consumer.callback = deliver

    def getmany(timeout):
        async def records():
            for message in messages:
                yield message.tp, message
            fetcher._stopped.set()
        return records()

    consumer.getmany = getmany
    return consumer, fetcher


async def _drain(patched_consumer: bool, n: int, deliver) -> int:
    (faust_patches.apply if patched_consumer else faust_patches.restore)()
    try:
        consumer, fetcher = _draining_consumer(_messages(n), deliver)
        with counting_tasks() as tasks:
            await asyncio.wait_for(consumer._drain_messages(fetcher), 5)
        return tasks[0]
    finally:
        faust_patches.restore()


async def test_a_delivery_that_does_not_wait_costs_no_task():
    seen: list[int] = []

    async def deliver(message):
        seen.append(message.offset)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a never-awaited ``suspend_flow.wait()`` would warn
        tasks = await _drain(True, 100, deliver)
    assert seen == list(range(100))
    assert tasks <= 2  # the drain loop's own ``sleep(0)`` per fetch, none per message


async def test_unpatched_delivery_costs_four_tasks_a_message():
    async def deliver(message):
        pass

    assert await _drain(False, 100, deliver) >= 400


@pytest.mark.parametrize("patched_consumer", [True, False], ids=["patched", "unpatched"])
async def test_a_delivery_that_waits_is_still_raced_against_the_flow(patched_consumer):
    """A delivery into a full queue waits; the flow's suspension (a rebalance) abandons it, and
    the drain goes on: the original's behaviour, kept."""
    queue: asyncio.Queue = asyncio.Queue(maxsize=1)
    queue.put_nowait("full")

    async def deliver(message):
        if message.offset == 1:
            asyncio.get_running_loop().call_later(0.05, consumer.suspend_flow.set)
            await queue.put(message.offset)  # waits: the queue is full
        return message.offset

    (faust_patches.apply if patched_consumer else faust_patches.restore)()
    try:
        consumer, fetcher = _draining_consumer(_messages(3), deliver)
        await asyncio.wait_for(consumer._drain_messages(fetcher), 5)
    finally:
        faust_patches.restore()
    assert consumer._read_offset[TP("input", 0)] == 2  # every message was read past
    assert list(queue._queue) == ["full"]  # the abandoned put never landed


async def test_a_delivery_keeps_its_own_context():
    """The first step runs in a copy of the context, as it would in its own task: what a
    delivery sets does not leak into the drain loop."""
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="drain")

    async def deliver(message):
        var.set("delivery")

    await _drain(True, 3, deliver)
    assert var.get() == "drain"


async def test_a_delivery_error_propagates_from_the_first_step():
    async def deliver(message):
        raise ValueError("undecodable")

    faust_patches.apply()
    try:
        consumer, fetcher = _draining_consumer(_messages(1), deliver)
        with pytest.raises(ValueError, match="undecodable"):
            await consumer._drain_messages(fetcher)
    finally:
        faust_patches.restore()


# --- fix 7: an idempotent producer outside transactions ----------------------------------------------

def test_the_producer_is_idempotent_unless_the_settings_say_otherwise(tmp_path):
    from app.core.settings import Settings
    from app.stream.faust_app import create_faust_app

    def producer_extra(**kw) -> dict:
        app = create_faust_app(Settings(_env_file=None, state_dir=tmp_path, app_id=f"idem-{len(kw)}", **kw))
        return dict(app.producer._settings_extra())

    assert producer_extra() == {"acks": "all", "enable_idempotence": True}
    assert "enable_idempotence" not in producer_extra(kafka_idempotent_producer=False)
