"""The views' business logic (app/http/dataplane.py) and the sweeper in one process, on the real
Runtime with in-memory S3, PostgreSQL and producer."""

from __future__ import annotations

import asyncio
import io
import uuid
from datetime import UTC, datetime

import msgspec
import numpy as np
import pytest
from PIL import Image

from agents import dead_letter
from app.http.contracts import ExtractRequest, PredictRequest
from app.http.dataplane import DataPlane, consensus
from app.core.errors import BadRequest, InvalidImage, NotFound, ServiceUnavailable, TooManyPixels, Unprocessable
from app.stream.messages import ImageUploaded
from app.storage.database import ImageProgress, PredictionRow
from models.domain import CLASSIFIERS
from models.preprocess import model_pixels
from tests.unit.inprocess import InProcessRuntime, app_for, image, settings, tiny_bundle


def wire(result) -> dict:
    """What a client receives: the typed result as JSON builtins."""
    return msgspec.to_builtins(result)


@pytest.fixture
def plane():
    s = settings(max_pixels=10_000)
    runtime = InProcessRuntime(app_for(s), s, tiny_bundle())
    return runtime.dataplane(), runtime


async def test_upload_stores_the_object_produces_the_event_and_records_the_row(plane):
    dp, rt = plane
    data = image((255, 0, 0), salt="up")
    body = wire(await dp.upload(data))
    key = body["object_key"]
    assert rt.store.objects[key] == data and key.startswith("raw-images/") and key.endswith(".png")
    (sent,) = rt.on(rt.settings.input_topic)
    msg = ImageUploaded.loads(sent.value)
    assert sent.key == msg.sha256.encode() and msg.image_id == body["image_id"] and msg.object_key == key
    record = rt.db.uploads[uuid.UUID(body["image_id"])]
    assert (record.input_partition, record.input_offset, record.deployment) == (0, 0, rt.settings.deployment)
    assert body["links"]["prediction"] == f"/predictions/{body['image_id']}"
    # decoded once, to the backbone's crop, kept for the extractor of this worker
    spec = rt.bundle.extractor.spec
    crop = rt.recent_uploads.pop(key, spec.name)
    assert crop.shape == (spec.size, spec.size, 3) and (crop == model_pixels(data, spec)).all()


async def test_an_upload_keyed_to_a_partition_another_worker_extracts_keeps_no_crop(plane):
    dp, rt = plane
    rt.extracts_here = lambda partition: partition != 0
    key = wire(await dp.upload(image((0, 0, 255), salt="elsewhere")))["object_key"]
    assert key not in rt.recent_uploads.items and rt.recent_uploads.size == 0


async def test_bad_uploads_are_refused_before_anything_is_written(plane):
    dp, rt = plane
    with pytest.raises(InvalidImage):
        await dp.upload(b"definitely not an image")
    with pytest.raises(InvalidImage):
        await dp.upload(b"")
    buf = io.BytesIO()
    Image.new("RGB", (200, 200)).save(buf, "PNG")
    with pytest.raises(TooManyPixels):
        await dp.upload(buf.getvalue())
    truncated = image((1, 2, 3), size=64)[:-30]
    with pytest.raises(InvalidImage):
        await dp.upload(truncated)
    assert not rt.store.objects and not rt.sent and not rt.db.uploads


async def test_an_upload_kafka_did_not_confirm_leaves_no_object(plane, monkeypatch):
    dp, rt = plane

    async def down(*a, **k):
        raise ServiceUnavailable("kafka unavailable: test")

    monkeypatch.setattr(rt.producer, "send", down)
    with pytest.raises(ServiceUnavailable):
        await dp.upload(image((0, 0, 1), salt="k"))
    assert not rt.store.objects and not rt.db.uploads


async def test_an_upload_accepted_while_postgres_is_down_is_recorded_when_it_returns(plane):
    dp, rt = plane
    rt.db.down = 2
    body = wire(await dp.upload(image((0, 1, 0), salt="pg")))
    assert uuid.UUID(body["image_id"]) not in rt.db.uploads and len(rt.uploads.pending) == 1
    for _ in range(100):
        if not rt.uploads.pending:
            break
        await asyncio.sleep(0.05)
    assert uuid.UUID(body["image_id"]) in rt.db.uploads and not rt.uploads.pending


async def _complete(rt, image_id: uuid.UUID, labels=("red", "red", "green")) -> None:
    now = datetime.now(UTC)
    rt.db.progress[image_id] = ImageProgress(image_id, now, now, now, False, "v1")
    for name, label in zip(CLASSIFIERS, labels, strict=True):
        rt.db.rows[(image_id, name, "v1")] = PredictionRow(image_id, name, "v1", label, 0.7, [0.7, 0.2, 0.1], 0.5)


async def test_prediction_views_status_consensus_trace_and_errors(plane):
    dp, rt = plane
    body = wire(await dp.upload(image((200, 0, 0), salt="p")))
    pending = wire(await dp.prediction(body["image_id"]))
    assert pending["status"] == "pending" and pending["predictions"] == {}
    await _complete(rt, uuid.UUID(body["image_id"]))
    done = wire(await dp.prediction(body["image_id"], trace=True))
    assert done["status"] == "complete" and set(done["predictions"]) == set(CLASSIFIERS)
    assert done["consensus"] == {"label": "red", "agreement": 2, "of": 3}
    assert done["predictions"]["fast"]["probabilities"] == {"red": 0.7, "green": 0.2, "blue": 0.1}
    assert [e["event"] for e in done["trace"]][:4] == ["upload_received", "upload_accepted", "extraction_started",
                                                      "extraction_finished"]
    with pytest.raises(NotFound):
        await dp.prediction(str(uuid.uuid4()))
    with pytest.raises(BadRequest):
        await dp.prediction("not-a-uuid")
    data, ctype = await dp.image(body["image_id"])
    assert ctype == "image/png" and data == rt.store.objects[body["object_key"]]
    with pytest.raises(NotFound):
        await dp.image(str(uuid.uuid4()))
    rt.db.failed[uuid.UUID(body["image_id"])] = "invalid_image: x"
    assert (await dp.prediction(body["image_id"])).status == "failed"


def test_consensus_breaks_a_three_way_tie_with_the_accurate_classifier():
    assert wire(consensus(["a", "b", "c"], "c")) == {"label": "c", "agreement": 1, "of": 3}
    assert wire(consensus([], None)) == {"label": None, "agreement": 0}


async def test_recent_pages(plane):
    dp, rt = plane
    for i in range(3):
        await dp.upload(image((i, 0, 0), salt=f"r{i}"))
    first = wire(await dp.recent(2, 0))
    assert len(first["items"]) == 2 and first["next"] == "/predictions?limit=2&offset=2"
    second = wire(await dp.recent(2, 2))
    assert len(second["items"]) == 1 and second["next"] is None


async def test_extract_and_predict_direct_calls(plane):
    dp, rt = plane
    body = wire(await dp.upload(image((0, 0, 255), salt="x")))
    by_key = wire(await dp.extract(ExtractRequest(object_key=body["object_key"])))
    by_id = wire(await dp.extract(ExtractRequest(image_id=body["image_id"])))
    assert by_key["descriptors"] == by_id["descriptors"] and by_key["k"] == len(by_key["descriptors"]) == 4
    pred = wire(await dp.predict("accurate", PredictRequest(by_key["descriptors"])))
    assert pred["label"] in ("red", "green", "blue") and abs(sum(pred["probabilities"].values()) - 1) < 1e-6
    for bad, code in ((ExtractRequest(object_key="../etc/passwd"), "invalid_object_key"),
                      (ExtractRequest(), "invalid_request")):
        with pytest.raises(Unprocessable) as err:
            await dp.extract(bad)
        assert err.value.code == code
    with pytest.raises(NotFound):
        await dp.extract(ExtractRequest(image_id=str(uuid.uuid4())))
    for bad in (PredictRequest([1.0] * 3), PredictRequest([float("nan")] * 4), PredictRequest([float("inf")] * 4)):
        with pytest.raises(Unprocessable) as err:
            await dp.predict("fast", bad)
        assert err.value.code == "invalid_descriptors"
    with pytest.raises(Unprocessable) as err:
        await dp.predict("slow", PredictRequest([0.0] * 4))
    assert err.value.code == "unknown_classifier"
    rt.bundle.extractor = None
    with pytest.raises(ServiceUnavailable) as err:
        await dp.extract(ExtractRequest(object_key=body["object_key"]))
    assert err.value.code == "role_not_served"


async def test_stats_and_health_report_each_dependency(plane, monkeypatch):
    dp, rt = plane

    async def kafka_ping(settings, timeout=5.0):
        raise ServiceUnavailable("kafka unavailable: test")

    monkeypatch.setattr("app.http.dataplane.broker.ping", kafka_ping)
    ok, health = await dp.health()
    body = wire(health)
    assert not ok and body["checks"]["kafka"] == {"ok": False, "error": "kafka unavailable: test"}
    assert body["checks"]["postgres"]["ok"] and body["checks"]["s3"]["ok"] and body["checks"]["model"]["ok"]
    stats = wire(await dp.stats())
    assert stats["model_version"] == "v1" and stats["agreement"]["rate"] is None


# --- the sweeper ---------------------------------------------------------------------------------

@pytest.fixture
def sweeper(monkeypatch):
    s = settings(roles=("dead-letter",), resend_after_s=1)
    rt = InProcessRuntime(app_for(s), s, tiny_bundle())
    offsets = {"committed": {}, "ends": {}}

    async def committed(settings, group, topic):
        return dict(offsets["committed"].get((group, topic), {}))

    async def ends(settings, topic):
        return dict(offsets["ends"].get(topic, {}))

    monkeypatch.setattr(dead_letter.broker, "committed_offsets", committed)
    monkeypatch.setattr(dead_letter.broker, "end_offsets", ends)
    return dead_letter.Sweeper(rt), rt, offsets


async def _accepted(rt, partition: int, offset: int) -> uuid.UUID:
    from app.storage.database import UploadRecord

    image_id = uuid.uuid4()
    now = datetime.now(UTC)
    rt.db.uploads[image_id] = UploadRecord(image_id, f"raw-images/x/{image_id}.png", "ab" * 32, 10, "image/png",
                                           now, now, rt.settings.deployment, partition, offset)
    return image_id


async def test_the_sweeper_waits_until_the_extractor_and_every_classifier_are_past_an_image(sweeper):
    sw, rt, offsets = sweeper
    s = rt.settings
    lost = await _accepted(rt, 0, 3)
    queued = await _accepted(rt, 0, 9)
    assert await sw.sweep() == 0  # nothing committed yet: everything may still be queued
    offsets["committed"][(s.extractor_group_id, s.input_topic)] = {0: 5}
    offsets["ends"][s.features_topic] = {0: 7}
    assert await sw.sweep() == 0  # the classifiers have not consumed what the extractor published
    for g in s.classifier_group_ids:
        offsets["committed"][(g, s.features_topic)] = {0: 7}
    assert await sw.sweep() == 1
    (sent,) = rt.on(s.input_topic)
    assert ImageUploaded.loads(sent.value).image_id == str(lost) and rt.db.resent[0][0] == lost
    assert queued not in [r[0] for r in rt.db.resent]


def test_image_ids_are_read_from_input_and_descriptor_messages():
    from app.stream.messages import encode_descriptors

    image_id = uuid.uuid4()
    up = ImageUploaded(str(image_id), "raw-images/k.png", "ab" * 32, 1, "image/png", 1.0)
    ev = type("E", (), {"value": up.dumps()})
    assert dead_letter.image_ids_of(ev)["image_id"] == str(image_id)
    ev.value = encode_descriptors(image_id, np.zeros(4))
    assert dead_letter.image_ids_of(ev) == {"image_id": str(image_id)}
    ev.value = b"junk"
    assert dead_letter.image_ids_of(ev) == {}
