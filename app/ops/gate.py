"""The worker's start gate: Faust cannot start without Kafka (its topics, consumer group and
changelogs), so until Kafka answers and the topics exist the worker serves its probes only:
``/live`` answers 200 (the process is fine; restarting it would not help), ``/ready`` and
``/health`` answer 503 with each service's check, naming the cause (connection refused, TLS
certificate not trusted, SASL authentication failed). It retries every few seconds and logs each
new cause once, in one line; then it closes and the Faust worker takes the port.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec
from aiohttp import web

from app.stream import broker
from app.http.contracts import Check, Health, Liveness
from app.core.errors import ImgstreamError
from app.core.security import describe
from app.core.settings import Settings
from app.storage.database import Database
from app.storage.objectstore import ObjectStore

log = logging.getLogger("imgstream.gate")


async def _check(coro) -> Check:
    try:
        await asyncio.wait_for(coro, 6)
        return Check(True)
    except ImgstreamError as exc:
        return Check(False, exc.message)
    except Exception as exc:  # noqa: BLE001 - a check reports, it does not raise
        return Check(False, describe(exc))


async def _kafka(settings: Settings) -> None:
    await broker.ping(settings)
    await broker.ensure_topics(settings)


async def wait_for_kafka(settings: Settings, every: float = 5.0) -> None:
    """Return once Kafka answers and the project's topics exist; meanwhile serve the probes."""
    # aiokafka logs every failed bootstrap at ERROR; the cause is in the one line below instead
    aiokafka_log = logging.getLogger("aiokafka")
    aiokafka_level = aiokafka_log.level
    aiokafka_log.setLevel(logging.CRITICAL)
    try:
        await _serve_until_kafka(settings, every)
    finally:
        aiokafka_log.setLevel(aiokafka_level)


async def _serve_until_kafka(settings: Settings, every: float) -> None:
    kafka = await _check(_kafka(settings))
    if kafka.ok:
        return
    started = time.monotonic()
    checks: dict[str, Check] = {"kafka": kafka}

    async def live(_: web.Request) -> web.Response:
        body = Liveness("alive", round(time.monotonic() - started, 1), 0.0)
        return web.Response(body=msgspec.json.encode(body), content_type="application/json")

    async def ready(_: web.Request) -> web.Response:
        body = Health("degraded", list(settings.roles), dict(checks))
        return web.Response(body=msgspec.json.encode(body), status=503, content_type="application/json")

    app = web.Application()
    app.router.add_get("/live", live)
    for path in ("/ready", "/health"):
        app.router.add_get(path, ready)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.web_host, settings.web_port).start()
    db, store = Database(settings, min_size=0, max_size=1), ObjectStore(settings)
    await db.start()
    await store.start()
    said = None
    try:
        while True:
            checks["postgres"], checks["s3"] = await asyncio.gather(_check(db.ping()), _check(store.ping()))
            if checks["kafka"].error != said:
                said = checks["kafka"].error
                log.warning("not ready: %s; retrying every %.0fs", said, every)
            await asyncio.sleep(every)
            checks["kafka"] = await _check(_kafka(settings))
            if checks["kafka"].ok:
                log.info("kafka answers: starting the worker")
                return
    finally:
        await db.stop()
        await store.stop()
        await runner.cleanup()
