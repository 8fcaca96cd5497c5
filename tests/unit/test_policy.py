"""The agents' error policy and the runtime's failure paths, in one process (no service)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace

import faust
import pytest
from botocore.exceptions import ClientError

from agents.policy import run_batch
from app.errors import ServiceUnavailable
from app.metrics import DELETE_FAILED, POISON
from app.runtime import Runtime
from app.settings import Settings
from app.storage.database import UploadRecord
from app.storage.objectstore import ObjectStore


async def test_a_message_that_always_fails_is_isolated_and_dead_lettered():
    done, poison, calls = [], [], []

    async def process(batch):
        calls.append(len(batch))
        if "bad" in batch:
            raise ValueError("cannot classify this one")
        done.extend(batch)

    async def on_poison(event, exc):
        poison.append((event, str(exc)))

    events = [f"m{i}" for i in range(7)] + ["bad"] + [f"n{i}" for i in range(8)]
    before = POISON.labels("test")._value.get()
    started = time.monotonic()
    await run_batch(events, process, stage="test", on_poison=on_poison, attempts=2, base=0.001, cap=0.002)
    assert poison == [("bad", "cannot classify this one")]
    assert sorted(done) == sorted(e for e in events if e != "bad")
    assert POISON.labels("test")._value.get() == before + 1
    assert time.monotonic() - started < 2
    # 16 -> 8 -> 4 -> 2 -> 1: two attempts at each size that holds the bad message, one for each
    # half without it (the bad message's neighbour alone included)
    assert [calls.count(n) for n in (16, 8, 4, 2, 1)] == [2, 3, 3, 3, 3]


async def test_an_outage_is_retried_without_limit_and_nothing_is_dead_lettered():
    attempts = []

    async def process(batch):
        attempts.append(1)
        if len(attempts) < 6:
            raise ServiceUnavailable("postgres down")

    async def on_poison(event, exc):
        raise AssertionError("an outage is not a poison message")

    await run_batch(["a", "b"], process, stage="test", on_poison=on_poison, attempts=2, base=0.001, cap=0.002)
    assert len(attempts) == 6


def _runtime(**env) -> Runtime:
    settings = Settings(**env)
    return Runtime(faust.App(f"t-{uuid.uuid4().hex[:6]}", broker="memory://", store="memory://"), settings)


async def test_bundle_loader_survives_an_exception_without_a_message(monkeypatch, caplog):
    """A corrupt bundle raises a plain exception; the loader must keep going and load the good one
    published after it."""
    from app import runtime as runtime_mod

    rt = _runtime()
    good = SimpleNamespace(version="v2", manifest={"backbone": "efficientnet_lite0"}, k=20,
                           backbone_id=("efficientnet_lite0", None))
    tries = []

    async def fetch(store, version, folder):
        return f"/bundles/{len(tries)}"

    async def no_record(store, app_id):
        return None

    async def resolve(store, version):
        return "v2"

    def load(path, **kw):
        tries.append(path)
        if len(tries) == 1:
            raise ValueError("bad magic number in reducer.npz")  # a corrupt file: no .message
        return good

    monkeypatch.setattr(runtime_mod.registry, "fetch", fetch)
    monkeypatch.setattr(runtime_mod.registry, "deployment", no_record)
    monkeypatch.setattr(runtime_mod.registry, "resolve", resolve)
    monkeypatch.setattr(runtime_mod.Bundle, "load", staticmethod(load))
    real_sleep = asyncio.sleep
    monkeypatch.setattr(runtime_mod.asyncio, "sleep", lambda s: real_sleep(0))
    with caplog.at_level(logging.WARNING, "imgstream.runtime"):
        task = asyncio.create_task(rt._load_bundle_forever())  # it then follows the registry: never returns
        for _ in range(500):
            if rt._bundle is not None:
                break
            await real_sleep(0.01)
        task.cancel()
    assert rt.bundle is good
    assert "bad magic number" in caplog.text


async def test_failed_object_delete_is_counted_and_logged(caplog):
    store = ObjectStore(Settings())

    class Client:
        async def delete_object(self, **kw):
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "DeleteObject")

    store._client = Client()
    before = DELETE_FAILED.labels("AccessDenied")._value.get()
    with caplog.at_level(logging.WARNING, "imgstream.objectstore"):
        assert await store.delete("raw-images/x.jpg") is False
    assert DELETE_FAILED.labels("AccessDenied")._value.get() == before + 1
    assert "raw-images/x.jpg" in caplog.text


async def test_upload_row_is_written_once_postgres_answers(monkeypatch):
    from app import runtime as runtime_mod

    rt = _runtime()
    written, failures = [], [2]

    async def record_upload(record):
        if failures[0]:
            failures[0] -= 1
            raise OSError("connection refused")
        written.append(record)

    rt.db = SimpleNamespace(record_upload=record_upload)
    real_sleep = asyncio.sleep
    monkeypatch.setattr(runtime_mod.asyncio, "sleep", lambda s: real_sleep(0))
    now = datetime.now(UTC)
    rec = UploadRecord(uuid.uuid4(), "raw-images/a.jpg", "ab" * 32, 10, "image/jpeg", now, now, "d", 0, 7)
    rt.record_upload_later(rec)
    await asyncio.wait_for(rt._recorder, 5)
    assert written == [rec] and not rt.unrecorded


def test_deployment_and_groups():
    s = Settings(app_id="a", s3_bucket="b", input_topic="t")
    assert s.deployment == "a/b/t"
    assert s.group_id == "a" and s.extractor_group_id == "a"
    alone = Settings(app_id="a", roles="classifier-fast,dead-letter")
    assert alone.group_id == "a-classifier-fast-dead-letter"
    assert alone.extractor_group_id == "a-extractor"
    assert Settings(app_id="a", roles="extractor,dead-letter").extractor_group_id == "a-dead-letter-extractor"
    assert Settings(app_id="a", roles="dead-letter", extractor_group="x").extractor_group_id == "x"


@pytest.mark.parametrize("n", [1, 2, 3])
async def test_small_batches_are_isolated_too(n):
    poison = []

    async def process(batch):
        if "bad" in batch:
            raise RuntimeError("boom")

    async def on_poison(event, exc):
        poison.append(event)

    await run_batch(["bad"] + ["ok"] * (n - 1), process, stage="t", on_poison=on_poison, attempts=1, base=0)
    assert poison == ["bad"]


async def test_a_stopping_workers_pools_give_an_outage_not_a_poison_message():
    """Faust stops the runtime (and its thread pools) before the agents: a batch that reaches a
    shut pool must be retried as an outage until its agent is cancelled, never dead-lettered."""
    from concurrent.futures import ThreadPoolExecutor

    from app.errors import ServiceUnavailable
    from app.runtime import Runtime

    pool = ThreadPoolExecutor(1)
    assert await Runtime.in_pool(None, pool, lambda: 42) == 42
    pool.shutdown()
    with pytest.raises(ServiceUnavailable, match="stopping"):
        await Runtime.in_pool(None, pool, lambda: 42)
