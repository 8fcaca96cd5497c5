"""Access control, generated from the route table (app/http/openapi.py ROUTES + EXTERNAL): every
route is tried without a token, with a wrong one, with a read token, a write token and a metrics
token, so a route added to the table later is covered without touching this test. The OpenAPI
document declares each route's scheme."""

from __future__ import annotations

import re

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from app.http.dataplane import DataPlane
from app.http import api
from app.http.openapi import EXTERNAL, ROUTES, openapi
from tests.unit.inprocess import InProcessRuntime, app_for, image, settings, tiny_bundle

TOKENS = {"api_read_tokens": "read-a,read-b", "api_write_tokens": "write-a,write-b", "metrics_tokens": "scrape-a"}
AS = {"none": None, "wrong": "Bearer not-a-token", "read": "Bearer read-b", "write": "Bearer write-a",
      "metrics": "Bearer scrape-a"}
# who gets past the access check, per route scope
ALLOWED = {"public": set(AS), "read": {"read", "write"}, "write": {"write"}, "metrics": {"metrics"}}


@pytest.fixture
async def client():
    s = settings(**TOKENS)
    runtime = InProcessRuntime(app_for(s), s, tiny_bundle())
    web_app = web.Application()
    api.setup(web_app, runtime.dataplane(), s)
    for route in EXTERNAL:  # served by Faust's own page in a worker; the same middleware guards it
        web_app.router.add_get(route.path, lambda _: web.Response(text="# metrics\n"))
    async with TestClient(TestServer(web_app)) as c:
        r = await c.post("/upload", data=image((9, 9, 9), salt="access"),
                         headers={"Content-Type": "image/png", "Authorization": AS["write"]})
        assert r.status == 202
        c.image_id = (await r.json())["image_id"]
        yield c


def _url(path: str, image_id: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: {"image_id": image_id, "classifier": "fast"}[m.group(1)], path)


@pytest.mark.parametrize("route", ROUTES + EXTERNAL, ids=lambda r: f"{r.method} {r.path}")
async def test_every_route_by_token(client, route):
    url = _url(route.path, client.image_id)
    for who, header in AS.items():
        headers = {"Authorization": header} if header else {}
        body = {"json": {}} if route.method == "post" else {}
        async with client.request(route.method.upper(), url, headers=headers, **body) as r:
            if who in ALLOWED[route.scope]:
                assert r.status not in (401, 403), (who, r.status, await r.text())
            else:
                payload = await r.json()
                expected = 403 if route.scope == "write" and who == "read" else 401
                assert r.status == expected, (who, r.status, payload)
                assert payload["error"]["code"] in ("unauthorized", "insufficient_scope")
                if r.status == 401:
                    assert r.headers["WWW-Authenticate"].startswith("Bearer")


def test_only_the_probes_and_the_static_dashboard_are_public_and_every_get_reads():
    public = {r.path for r in ROUTES + EXTERNAL if r.scope == "public"}
    assert public == {"/live", "/ready", "/health", "/dashboard"}
    assert {r.scope for r in ROUTES if r.method == "post"} == {"write"}
    assert {r.scope for r in ROUTES if r.method == "get" and r.path not in public} == {"read"}


def test_the_document_declares_the_scheme_of_every_route():
    spec = openapi(settings(**TOKENS))
    for route in ROUTES + EXTERNAL:
        op = spec["paths"][route.path][route.method]
        if route.scope == "public":
            assert op["security"] == [] and "401" not in op["responses"]
        else:
            assert op["security"] == [{"bearer": [route.scope]}] and "401" in op["responses"]
    assert "403" in spec["paths"]["/upload"]["post"]["responses"]
    open_spec = openapi(settings())
    assert all(op["security"] == [] for ops in open_spec["paths"].values() for op in ops.values())


async def test_a_route_mounted_outside_the_route_table_is_not_served(client):
    """Anything mounted on the server without a row in the route table is refused whatever the
    token (a worker also turns Faust's own pages off: tests/integration/test_security_replay.py)."""
    client.app.router._frozen = False  # noqa: SLF001 - mount one late, as a library might
    client.app.router.add_get("/router/", lambda _: web.Response(text="tables"))
    for header in (None, AS["write"]):
        async with client.get("/router/", headers={"Authorization": header} if header else {}) as r:
            assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"

