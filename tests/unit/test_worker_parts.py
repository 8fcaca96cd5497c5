"""The parts a worker is assembled from (app/worker.py), each on its own: the bundle deployment,
the upload-record queue, the lag sampler, the thread pools and the extractor's claims."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace

import numpy as np
import pytest

from agents.claims import Claims
from app.bundles import deployment as deployment_mod
from app.bundles.deployment import BundleDeployment
from app.core.errors import ModelError, ServiceUnavailable
from app.core.metrics import CONSUMER_LAG, UNRECORDED
from app.core.settings import Settings
from app.core.threads import Pool
from app.storage import uploads as uploads_mod
from app.storage.database import UploadRecord
from app.storage.uploads import UploadRecorder
from app.stream import lag as lag_mod
from app.stream.lag import LagSampler


def _bundle(version: str) -> SimpleNamespace:
    return SimpleNamespace(version=version, manifest={"backbone": "efficientnet_lite0"}, k=20,
                           backbone_id=("efficientnet_lite0", None), classifiers={})


def _deployment() -> BundleDeployment:
    return BundleDeployment(Settings(_env_file=None), store=None, predict_pool=Pool(1, "predict"), extractor=True)


@pytest.fixture
def registry(monkeypatch):
    """The registry as the deployment reads it: ``versions`` published, ``record`` promoted."""
    state = SimpleNamespace(fetched=[], record=None, latest="v1")

    async def fetch(store, version, folder):
        state.fetched.append(version)
        return f"/bundles/{version}"

    async def deployment(store, app_id):
        return state.record

    async def resolve(store, version):
        return state.latest if version == "latest" else version

    monkeypatch.setattr(deployment_mod.registry, "fetch", fetch)
    monkeypatch.setattr(deployment_mod.registry, "deployment", deployment)
    monkeypatch.setattr(deployment_mod.registry, "resolve", resolve)
    return state


async def test_waiting_for_a_bundle_returns_when_one_is_served_not_on_a_poll():
    d = _deployment()
    with pytest.raises(ModelError, match="not loaded yet"):
        d.bundle
    waiter = asyncio.create_task(d.wait())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    d.serve(_bundle("v1"))
    assert (await asyncio.wait_for(waiter, 0.1)).version == "v1"  # the event, not a 0.5 s poll
    assert d.bundle.version == "v1"


async def test_the_deployment_survives_a_corrupt_bundle_and_loads_the_next(monkeypatch, registry, caplog):
    """A corrupt bundle raises a plain exception; the deployment keeps going and loads the good one
    published after it."""
    tries = []

    def load(path, **kw):
        tries.append(path)
        if len(tries) == 1:
            raise ValueError("bad magic number in reducer.npz")  # a corrupt file: no .message
        return _bundle("v1")

    monkeypatch.setattr(deployment_mod.Bundle, "load", staticmethod(load))
    real_sleep = asyncio.sleep
    monkeypatch.setattr(deployment_mod.asyncio, "sleep", lambda s: real_sleep(0))
    d = _deployment()
    with caplog.at_level(logging.WARNING, "imgstream.deployment"):
        d.start()
        bundle = await asyncio.wait_for(d.wait(), 5)
        d.stop()
    assert bundle.version == "v1" and d.deployed == ("v1", ())
    assert "bad magic number" in caplog.text


async def test_a_promotion_is_followed_and_shadows_are_loaded_beside_it(monkeypatch, registry):
    monkeypatch.setattr(deployment_mod.Bundle, "load", staticmethod(lambda path, **kw: _bundle(path.rsplit("/")[-1])))
    d = _deployment()
    await d.apply(*await d._target())
    assert d.bundle.version == "v1" and d.shadows == ()
    registry.record = SimpleNamespace(serving="v2", shadows=["v3", "v2"])
    target = await d._target()
    assert target == ("v2", ("v3",))  # the serving version is never its own shadow
    await d.apply(*target)
    assert d.bundle.version == "v2" and [b.version for b in d.shadows] == ["v3"]
    assert registry.fetched == ["v1", "v2", "v3"]


async def test_older_descriptors_get_their_own_bundles_classifiers_fetched_once(monkeypatch, registry):
    monkeypatch.setattr(deployment_mod.Bundle, "load", staticmethod(lambda path, **kw: _bundle(path.rsplit("/")[-1])))
    d = _deployment()
    d.serve(_bundle("v2"))
    assert (await d.classifiers_for("v2")).version == "v2"
    assert (await d.classifiers_for("v1")).version == "v1"
    assert (await d.classifiers_for("v1")).version == "v1"
    assert registry.fetched == ["v1"]


def _record() -> UploadRecord:
    now = datetime.now(UTC)
    return UploadRecord(uuid.uuid4(), "raw-images/a.jpg", "ab" * 32, 10, "image/jpeg", now, now, "d", 0, 7)


async def test_upload_rows_are_written_in_order_once_postgres_answers(monkeypatch):
    written, failures = [], [2]

    async def record_upload(record):
        if failures[0]:
            failures[0] -= 1
            raise OSError("connection refused")
        written.append(record)

    real_sleep = asyncio.sleep
    monkeypatch.setattr(uploads_mod.asyncio, "sleep", lambda s: real_sleep(0))
    recorder = UploadRecorder(SimpleNamespace(record_upload=record_upload))
    first, second = _record(), _record()
    recorder.record_later(first)
    recorder.record_later(second)
    assert UNRECORDED._value.get() == 2
    for _ in range(500):
        if not recorder.pending:
            break
        await real_sleep(0.01)
    assert written == [first, second] and not recorder.pending
    assert UNRECORDED._value.get() == 0


async def test_stopping_with_rows_still_pending_says_so(caplog):
    async def record_upload(record):
        raise OSError("connection refused")

    recorder = UploadRecorder(SimpleNamespace(record_upload=record_upload), base_s=10)
    recorder.record_later(_record())
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, "imgstream.uploads"):
        recorder.stop()
    assert "1 accepted upload(s) not recorded" in caplog.text


async def test_the_lag_sampler_sets_the_gauge_and_outlives_a_failing_broker(monkeypatch):
    calls = []

    async def consumer_lag(settings, group, topics):
        calls.append(group)
        if len(calls) == 1:
            raise ConnectionError("broker away")
        return {(topics[0], 0): 42}

    monkeypatch.setattr(lag_mod.broker, "consumer_lag", consumer_lag)
    settings = Settings(_env_file=None, input_topic="lag-test-input")
    sampler = LagSampler(settings, "group-a", every_s=0.01)
    sampler.start()
    for _ in range(200):
        if len(calls) >= 2:
            break
        await asyncio.sleep(0.01)
    sampler.stop()
    assert calls[:2] == ["group-a", "group-a"]
    assert CONSUMER_LAG.labels("lag-test-input", "0")._value.get() == 42


async def test_a_stopped_pool_gives_an_outage_not_a_poison_message():
    """The worker stops its resources (and their thread pools) before the agents: a batch that
    reaches a shut pool must be retried as an outage until its agent is cancelled, never
    dead-lettered."""
    pool = Pool(1, "test")
    assert await pool.run(lambda: 42) == 42
    pool.shutdown()
    with pytest.raises(ServiceUnavailable, match="stopping"):
        await pool.run(lambda: 42)


async def test_claims_are_seen_by_later_batches_fulfilled_once_and_dropped_when_released():
    claims = Claims()
    mine = claims.claim(["a", "b"], "v1")
    assert "a" in claims.in_flight("v1") and "a" not in claims.in_flight("v2") and "c" not in claims.in_flight("v1")
    later = claims.of("a", "v1")
    Claims.fulfil(mine, "a", np.ones(3))
    assert np.array_equal(await later, np.ones(3))
    waiting = claims.of("b", "v1")
    claims.release(mine, "v1")
    assert waiting.cancelled()  # the batch ended without "b": whoever joined extracts for itself
    assert len(claims) == 0
