"""wait_complete against a real aiohttp server: it returns when every image is done and raises,
naming what is missing, when its deadline passes first."""

import asyncio

import aiohttp
import pytest
from aiohttp import web

from app.http.client import NotComplete, wait_complete


@pytest.fixture
async def server():
    status = {"a": "complete", "b": "pending"}

    async def prediction(request):
        image_id = request.match_info["id"]
        if image_id not in status:
            return web.json_response({"error": {"code": "not_found", "message": "no"}}, status=404)
        return web.json_response({"image_id": image_id, "status": status[image_id]})

    app = web.Application()
    app.router.add_get("/predictions/{id}", prediction)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", status
    await runner.cleanup()


async def test_returns_when_all_are_done(server):
    url, status = server
    async with aiohttp.ClientSession() as s:
        loop = asyncio.get_running_loop()
        loop.call_later(0.3, status.__setitem__, "b", "failed")
        done = await wait_complete(s, url, ["a", "b"], loop.time() + 5, poll=0.05)
    assert {k: v["status"] for k, v in done.items()} == {"a": "complete", "b": "failed"}


async def test_raises_at_the_deadline_naming_the_pending(server):
    url, _ = server
    async with aiohttp.ClientSession() as s:
        with pytest.raises(NotComplete) as err:
            await wait_complete(s, url, ["a", "b", "missing"], asyncio.get_running_loop().time() + 0.3, poll=0.05)
    assert err.value.pending == ["b", "missing"] and set(err.value.done) == {"a"}
