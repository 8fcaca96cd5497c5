"""The HTTP API on a real worker: status codes and the one error shape on every view."""

from __future__ import annotations

import asyncio
import io
import math
import uuid

import aiohttp
import pytest
from PIL import Image

from app.http.client import upload_bytes, wait_complete
from tests.workers import images_from

pytestmark = pytest.mark.e2e


def _err(body: dict) -> str:
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return body["error"]["code"]


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture(scope="module")
def done_image(pipeline, sample_images):
    worker, _ = pipeline

    async def go():
        async with aiohttp.ClientSession() as s:
            _, body = await upload_bytes(s, worker.url, sample_images[1][1])
            await wait_complete(s, worker.url, [body["image_id"]], asyncio.get_running_loop().time() + 60)
            return body

    return asyncio.run(go())


async def test_upload_multipart_and_raw_store_under_generated_keys(pipeline, http, sample_images):
    worker, _ = pipeline
    form = aiohttp.FormData()
    form.add_field("file", sample_images[0][1], filename="../../etc/passwd.jpg", content_type="image/jpeg")
    async with http.post(f"{worker.url}/upload", data=form) as r:
        assert r.status == 202
        body = await r.json()
    assert body["object_key"].startswith("raw-images/") and body["object_key"].endswith(f"{body['image_id']}.jpg")
    assert "passwd" not in body["object_key"]
    assert r.headers["Location"] == f"/predictions/{body['image_id']}"
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (0, 90, 200)).save(buf, "PNG")
    status, body = await upload_bytes(http, worker.url, buf.getvalue(), "image/png")
    assert status == 202 and body["object_key"].endswith(".png") and body["content_type"] == "image/png"


@pytest.mark.parametrize("data,ctype,status,code", [
    (b"", "image/jpeg", 422, "invalid_image"),
    (b"this is not an image", "image/jpeg", 422, "invalid_image"),
    (b"GIF89a....", "image/gif", 415, "unsupported_media_type"),
    (b"{}", "application/json", 415, "unsupported_media_type"),
])
async def test_upload_refusals(pipeline, http, data, ctype, status, code):
    worker, _ = pipeline
    got, body = await upload_bytes(http, worker.url, data, ctype)
    assert (got, _err(body)) == (status, code)


async def test_upload_over_the_size_limit_is_413(pipeline, http):
    worker, _ = pipeline
    got, body = await upload_bytes(http, worker.url, b"\xff\xd8" + b"\0" * (10 * 1024 * 1024 + 10))
    assert got == 413 and _err(body) == "body_too_large"


async def test_multipart_without_file_part_is_400(pipeline, http):
    worker, _ = pipeline
    form = aiohttp.FormData()
    form.add_field("other", b"x", filename="x.jpg")
    async with http.post(f"{worker.url}/upload", data=form) as r:
        assert r.status == 400 and _err(await r.json()) == "missing_file"


async def test_prediction_404_400_and_complete(pipeline, http, done_image):
    worker, _ = pipeline
    async with http.get(f"{worker.url}/predictions/{uuid.uuid4()}") as r:
        assert r.status == 404 and _err(await r.json()) == "image_not_found"
    async with http.get(f"{worker.url}/predictions/not-a-uuid") as r:
        assert r.status == 400 and _err(await r.json()) == "malformed_image_id"
    async with http.get(f"{worker.url}/predictions/{done_image['image_id']}?trace=1") as r:
        body = await r.json()
    assert body["status"] == "complete"
    assert set(body["predictions"]) == {"fast", "balanced", "accurate"}
    for p in body["predictions"].values():
        assert math.isclose(sum(p["probabilities"].values()), 1.0, abs_tol=1e-3)
        assert p["confidence"] == max(p["probabilities"].values())
    assert body["consensus"]["label"] in {p["label"] for p in body["predictions"].values()}
    events = [e["event"] for e in body["trace"]]
    assert events[:4] == ["upload_received", "upload_accepted", "extraction_started", "extraction_finished"]
    accepted = next(e for e in body["trace"] if e["event"] == "upload_accepted")
    assert accepted["since_upload_ms"] > 0
    assert {"classifier_fast_finished", "classifier_balanced_finished", "classifier_accurate_finished"} <= set(events)


async def test_predictions_list_pages(pipeline, http, sample_images):
    worker, _ = pipeline
    # three images of its own, so that two pages exist whatever ran before
    ids = []
    for data in images_from(sample_images[2:5], 3, uuid.uuid4().hex):
        status, body = await upload_bytes(http, worker.url, data)
        assert status == 202
        ids.append(body["image_id"])
    await wait_complete(http, worker.url, ids, asyncio.get_running_loop().time() + 60)
    async with http.get(f"{worker.url}/predictions?limit=2") as r:
        page = await r.json()
    assert r.status == 200 and len(page["items"]) == 2 and page["next"]
    async with http.get(f"{worker.url}{page['next']}") as r:
        page2 = await r.json()
    assert {i["image_id"] for i in page["items"]}.isdisjoint({i["image_id"] for i in page2["items"]})
    async with http.get(f"{worker.url}/predictions?limit=0") as r:
        assert r.status == 400 and _err(await r.json()) == "invalid_parameter"


async def test_extract_then_predict_matches_the_pipeline(pipeline, http, done_image):
    worker, _ = pipeline
    async with http.post(f"{worker.url}/extract", json={"image_id": done_image["image_id"]}) as r:
        assert r.status == 200
        ext = await r.json()
    assert len(ext["descriptors"]) == ext["k"] == 20
    async with http.post(f"{worker.url}/extract", json={"object_key": done_image["object_key"]}) as r:
        assert (await r.json())["descriptors"] == ext["descriptors"]
    async with http.get(f"{worker.url}/predictions/{done_image['image_id']}") as r:
        stored = (await r.json())["predictions"]
    for name in ("fast", "balanced", "accurate"):
        async with http.post(f"{worker.url}/predict/{name}", json={"descriptors": ext["descriptors"]}) as r:
            assert r.status == 200
            pred = await r.json()
        assert pred["label"] == stored[name]["label"]
        assert math.isclose(pred["confidence"], stored[name]["confidence"], abs_tol=1e-3)


@pytest.mark.parametrize("path,body,status,code", [
    ("/predict/fast", {"descriptors": [0.0] * 19}, 422, "invalid_descriptors"),
    ("/predict/fast", {"descriptors": [0.0] * 19 + ["NaN"]}, 422, "invalid_descriptors"),
    ("/predict/fast", {"descriptors": [True] * 20}, 422, "invalid_descriptors"),
    ("/predict/fast", {"nope": 1}, 422, "invalid_descriptors"),
    ("/predict/turbo", {"descriptors": [0.0] * 20}, 422, "unknown_classifier"),
    ("/extract", {}, 422, "invalid_request"),
    ("/extract", {"object_key": "../../etc/passwd"}, 422, "invalid_object_key"),
    ("/extract", {"image_id": "zzz"}, 400, "malformed_image_id"),
    ("/extract", {"image_id": str(uuid.UUID(int=0))}, 404, "image_not_found"),
])
async def test_direct_calls_refuse_bad_input(pipeline, http, path, body, status, code):
    worker, _ = pipeline
    async with http.post(f"{worker.url}{path}", json=body) as r:
        assert (r.status, _err(await r.json())) == (status, code)


async def test_nan_descriptor_literal_is_refused(pipeline, http):
    worker, _ = pipeline
    raw = "{\"descriptors\": [" + ", ".join(["NaN"] + ["0"] * 19) + "]}"
    async with http.post(f"{worker.url}/predict/fast", data=raw, headers={"Content-Type": "application/json"}) as r:
        assert r.status in (400, 422)
        _err(await r.json())


@pytest.mark.parametrize("path", ["/extract", "/predict/fast"])
async def test_malformed_json_is_400(pipeline, http, path):
    worker, _ = pipeline
    for raw in (b"{", b"[1, 2]", b"\xff\xfe", b'"text"'):
        async with http.post(f"{worker.url}{path}", data=raw, headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400 and _err(await r.json()) == "malformed_json"


async def test_health_metrics_and_openapi(pipeline, http):
    worker, _ = pipeline
    async with http.get(f"{worker.url}/health") as r:
        body = await r.json()
    assert r.status == 200 and all(c["ok"] for c in body["checks"].values())
    assert set(body["checks"]) == {"kafka", "postgres", "s3", "model"}
    metrics = worker.metrics()
    names = {n for n, _ in metrics}
    for expected in ("imgstream_uploads_total", "imgstream_end_to_end_seconds_count", "imgstream_http_refused_total",
                     "imgstream_stage_messages_total"):
        assert expected in names
    async with http.get(f"{worker.url}/openapi.json") as r:
        spec = await r.json()
    assert spec["openapi"].startswith("3.") and "/upload" in spec["paths"]
