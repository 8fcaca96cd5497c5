"""The one place errors become JSON: every error class maps to its status and shape."""

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from app.core import errors
from app.http.api import errors as error_middleware


@pytest.fixture
async def client():
    async def boom(request):
        kind = request.match_info["kind"]
        raise {
            "bad": errors.BadRequest("nope", code="malformed_image_id"),
            "missing": errors.NotFound("gone"),
            "big": errors.TooManyPixels("too many"),
            "image": errors.InvalidImage("broken"),
            "down": errors.ServiceUnavailable("s3 down", retry_after=7),
            "bug": RuntimeError("secret internals"),
        }[kind]

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/boom/{kind}", boom)
    async with TestClient(TestServer(app)) as c:
        yield c


@pytest.mark.parametrize("kind,status,code", [
    ("bad", 400, "malformed_image_id"), ("missing", 404, "not_found"), ("big", 413, "too_many_pixels"),
    ("image", 422, "invalid_image"), ("down", 503, "service_unavailable"), ("bug", 500, "internal_error"),
])
async def test_errors_map_to_status_and_one_json_shape(client, kind, status, code):
    r = await client.get(f"/boom/{kind}")
    assert r.status == status
    body = await r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"]
    assert "secret internals" not in str(body)
    if kind == "down":
        assert r.headers["Retry-After"] == "7"


async def test_unknown_route_is_json_too(client):
    r = await client.get("/nope")
    assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
