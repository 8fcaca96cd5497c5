"""The agents' error policy and the object store's failure paths, in one process (no service)."""

from __future__ import annotations

import logging
import time

import pytest
from botocore.exceptions import ClientError

from app.stream.policy import run_batch
from app.core.errors import ServiceUnavailable
from app.core.metrics import DELETE_FAILED, POISON
from app.core.settings import Settings
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
