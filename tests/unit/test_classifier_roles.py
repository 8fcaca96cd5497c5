"""What a classifier does must not depend on which other classifier roles a deployment runs, nor on
whether they share one agent: each one reports the messages it refuses and records the image's
timeline."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import numpy as np
import pytest

from agents import classifiers
from app.core.threads import Pool
from app.stream.messages import Trace, encode_descriptors

K = 20


class Bundle:
    version, k, labels = "v1", K, [f"c{i}" for i in range(10)]

    def predict(self, name, x):
        return np.full((len(x), 10), 0.1, np.float32)


def event(value: bytes, headers=None):
    return SimpleNamespace(value=value, headers=headers or [],
                           message=SimpleNamespace(topic="features", partition=0, offset=7))


@pytest.fixture
def runtime(monkeypatch):
    letters, writes = [], []

    async def send(rt, stage, ev, error, **ids):
        letters.append((stage, error.code))

    async def write_predictions(progress, rows, first_answer_only=False):
        writes.append((progress, rows))
        return len(rows)

    async def classifiers_for(version):
        return Bundle()

    monkeypatch.setattr(classifiers.dead_letter, "send", send)
    rt = SimpleNamespace(predict_pool=Pool(1, "predict"), db=SimpleNamespace(write_predictions=write_predictions),
                         deployment=SimpleNamespace(classifiers_for=classifiers_for))
    yield rt, letters, writes
    rt.predict_pool.shutdown()


ALONE_OR_SHARED = [["fast"], ["balanced"], ["accurate"], ["fast", "balanced", "accurate"]]


@pytest.mark.parametrize("names", ALONE_OR_SHARED)
async def test_every_classifier_dead_letters_what_it_refuses(runtime, names):
    rt, letters, _ = runtime
    await classifiers.process_batch(rt, rt.deployment, names, [event(b"\x01\x02 not a descriptor message")])
    assert letters == [(f"classifier-{name}", "malformed_message") for name in names]


@pytest.mark.parametrize("names", ALONE_OR_SHARED)
async def test_every_classifier_records_the_timeline(runtime, names):
    rt, _, writes = runtime
    image_id = uuid.uuid4()
    trace = Trace("v1", 1.0e9, 1.0e9 + 1, 1.0e9 + 2, False)
    await classifiers.process_batch(rt, rt.deployment, names, [event(encode_descriptors(image_id, np.zeros(K, np.float32)),
                                                      trace.headers())])
    (progress, rows), = writes  # one write, whichever classifiers share the batch
    assert [p.image_id for p in progress] == [image_id] and progress[0].bundle_version == "v1"
    assert [(r.image_id, r.classifier) for r in rows] == [(image_id, name) for name in names]
