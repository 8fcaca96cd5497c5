"""The HTTP layer in one process: the real views and middleware over the in-process data plane,
served by aiohttp's test server. The OpenAPI document is generated from the route table and the
contracts, and covers exactly the routes the server mounts."""

from __future__ import annotations

import asyncio
import io
import uuid

import numpy as np
import pytest
from PIL import Image as PILImage
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from app.http.dataplane import DataPlane
from app.http import api
from app.http.openapi import EXTERNAL, openapi
from tests.unit.inprocess import InProcessRuntime, app_for, image, settings, tiny_bundle


@pytest.fixture
async def client():
    s = settings()
    runtime = InProcessRuntime(app_for(s), s, tiny_bundle())
    web_app = web.Application()
    api.setup(web_app, runtime.dataplane(), s)
    async with TestClient(TestServer(web_app)) as c:
        c.runtime = runtime
        yield c


async def test_the_document_covers_every_mounted_route_and_nothing_else(client):
    mounted = {(r.method.lower(), r.resource.canonical) for r in client.app.router.routes() if r.method != "HEAD"}
    spec = openapi(settings())
    documented = {(m, p) for p, ops in spec["paths"].items() for m in ops}
    assert documented == mounted | {(r.method, r.path) for r in EXTERNAL}
    assert spec["openapi"] == "3.1.0"
    for schema in ("Accepted", "Image", "Page", "Descriptors", "PredictResult", "Health", "Stats", "Error"):
        assert schema in spec["components"]["schemas"]


async def test_upload_then_read_the_image_back_through_the_api(client):
    data = image((250, 10, 10), salt="http")
    r = await client.post("/upload", data=data, headers={"Content-Type": "image/png"})
    body = await r.json()
    assert r.status == 202 and r.headers["Location"] == body["links"]["prediction"] and body["status"] == "pending"
    r = await client.get(body["links"]["prediction"])
    assert r.status == 200 and (await r.json())["status"] == "pending"
    r = await client.get(f"/images/{body['image_id']}")
    assert r.status == 200 and await r.read() == data
    r = await client.get(f"/images/{body['image_id']}?view=model")  # the crop the model saw
    seen = PILImage.open(io.BytesIO(await r.read()))
    size = client.runtime.bundle.backbone.size
    assert r.status == 200 and r.content_type == "image/png" and seen.size == (size, size)
    assert np.asarray(seen.convert("RGB"))[size // 2, size // 2].tolist() == [250, 10, 10]
    r = await client.get(f"/images/{body['image_id']}?view=thumbnail")
    assert r.status == 400 and (await r.json())["error"]["code"] == "invalid_view"
    r = await client.post("/extract", json={"image_id": body["image_id"]})
    desc = (await r.json())["descriptors"]
    r = await client.post("/predict/fast", json={"descriptors": desc})
    assert r.status == 200 and (await r.json())["label"] in ("red", "green", "blue")


@pytest.mark.parametrize("path,body,status,code", [
    ("/predict/fast", {"descriptors": [0.0] * 3}, 422, "invalid_descriptors"),
    ("/predict/fast", {"descriptors": [0.0] * 3 + ["NaN"]}, 422, "invalid_descriptors"),
    ("/predict/fast", {"descriptors": [True] * 4}, 422, "invalid_descriptors"),
    ("/predict/fast", {"nope": 1}, 422, "invalid_descriptors"),
    ("/predict/turbo", {"descriptors": [0.0] * 4}, 422, "unknown_classifier"),
    ("/extract", {}, 422, "invalid_request"),
    ("/extract", {"object_key": 7}, 422, "invalid_request"),
    ("/extract", {"object_key": "../../etc/passwd"}, 422, "invalid_object_key"),
    ("/extract", {"image_id": "zzz"}, 400, "malformed_image_id"),
    ("/extract", {"image_id": str(uuid.UUID(int=0))}, 404, "image_not_found"),
])
async def test_bad_direct_calls_get_a_status_and_a_json_reason(client, path, body, status, code):
    r = await client.post(path, json=body)
    assert (r.status, (await r.json())["error"]["code"]) == (status, code)


@pytest.mark.parametrize("raw", [b"{", b"[1, 2]", b"\xff\xfe", b'"text"'])
async def test_malformed_json_is_400(client, raw):
    r = await client.post("/predict/fast", data=raw, headers={"Content-Type": "application/json"})
    assert r.status == 400 and (await r.json())["error"]["code"] == "malformed_json"


async def test_refusals_of_uploads(client):
    r = await client.post("/upload", data=b"hello", headers={"Content-Type": "text/plain"})
    assert r.status == 415 and (await r.json())["error"]["code"] == "unsupported_media_type"
    r = await client.post("/upload", data=b"not an image", headers={"Content-Type": "image/png"})
    assert r.status == 422 and (await r.json())["error"]["code"] == "invalid_image"
    r = await client.get("/predictions?limit=0")
    assert r.status == 400 and (await r.json())["error"]["code"] == "invalid_parameter"
    r = await client.get("/nowhere")
    assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"


async def test_liveness_ignores_outages_that_readiness_reports(client, monkeypatch):
    """A pod must not be restarted because PostgreSQL is down: /live asks nothing outside the
    process, /ready (and /health) check every dependency and answer 503."""
    async def kafka_ok(settings, timeout=5.0):
        return None

    monkeypatch.setattr("app.http.dataplane.broker.ping", kafka_ok)
    r = await client.get("/ready")
    assert r.status == 200 and (await r.json())["status"] == "ok"
    client.runtime.db.down = 1_000
    r = await client.get("/live")
    body = await r.json()
    assert r.status == 200 and body["status"] == "alive" and body["loop_lag_ms"] >= 0
    for path in ("/ready", "/health"):
        r = await client.get(path)
        body = await r.json()
        assert r.status == 503 and body["status"] == "degraded" and not body["checks"]["postgres"]["ok"], path
        assert body["checks"]["kafka"]["ok"] and body["checks"]["s3"]["ok"]


async def test_liveness_answers_while_the_worker_is_still_starting(client):
    client.runtime.ready.clear()
    r = await asyncio.wait_for(client.get("/live"), 2)  # other routes wait up to 10 s, then 503
    assert r.status == 200


async def test_feedback_is_validated_and_the_last_label_wins(client):
    r = await client.post("/upload", data=image((10, 200, 10), salt="fb"), headers={"Content-Type": "image/png"})
    image_id = (await r.json())["image_id"]
    r = await client.post(f"/feedback/{image_id}", json={"label": "purple"})
    body = await r.json()
    assert r.status == 422 and body["error"]["code"] == "unknown_label" and "red, green, blue" in body["error"]["message"]
    r = await client.post(f"/feedback/{uuid.uuid4()}", json={"label": "green"})
    assert r.status == 404 and (await r.json())["error"]["code"] == "image_not_found"
    r = await client.post("/feedback/not-a-uuid", json={"label": "green"})
    assert r.status == 400
    r = await client.post(f"/feedback/{image_id}", json={"colour": "green"})
    assert r.status == 422 and (await r.json())["error"]["code"] == "invalid_feedback"
    for label in ("red", "green"):
        r = await client.post(f"/feedback/{image_id}", json={"label": label})
        assert r.status == 200
    body = await r.json()
    assert body["label"] == "green" and body["updates"] == 2
    assert client.runtime.db.feedback[uuid.UUID(image_id)]["label"] == "green"


async def test_drift_reports_why_it_has_no_score_yet(client):
    r = await client.get("/drift")
    body = await r.json()
    assert r.status == 200 and body["available"] is False and body["psi_max"] is None and body["reason"]
