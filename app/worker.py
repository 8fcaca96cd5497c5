"""One worker, assembled for the roles it runs: the Faust app (app/stream), its resources
(Runtime), the bundles it serves (BundleDeployment), the agents and the descriptor table of its
roles, the HTTP views, and the timers around them.

Roles (``IMGSTREAM_ROLES`` or ``imgstream worker --role``) choose which agents this process runs;
a worker running every role uses the consumer group ``<app_id>``, a worker running some roles
``<app_id>-<roles>``, so each stage scales on its own by partitions and processes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import lru_cache

from aiohttp.web import Response
from faust.sensors.prometheus import FaustMetrics
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agents import classifiers, dead_letter, extractor
from app.bundles.deployment import BundleDeployment
from app.bundles.drift import DriftMonitor
from app.core.metrics import (CONSUMER_LAG, DRIFT, DRIFT_MAX, HEAP_RELEASED, HEAP_TRIM_SECONDS, LIVE_ACCURACY,
                              LIVE_LABELLED, REGISTRY, FaustSensor)
from app.core.settings import Settings, get_settings
from app.http import api
from app.http.dataplane import DataPlane
from app.http.history import History
from app.storage.uploads import UploadRecorder
from app.stream.faust_app import ImgstreamApp, create_faust_app
from app.stream.lag import LagSampler
from app.stream.runtime import Runtime

log = logging.getLogger("imgstream.worker")


@dataclass
class Parts:
    """What a worker is made of, for the agents, the views and the tests to reach by name."""

    runtime: Runtime
    deployment: BundleDeployment
    uploads: UploadRecorder
    lag: LagSampler
    drift: DriftMonitor
    history: History
    dataplane: DataPlane


def create_app(settings: Settings) -> ImgstreamApp:
    app = create_faust_app(settings)
    runtime = Runtime(app, settings)
    deployment = BundleDeployment(settings, runtime.store, runtime.predict_pool, "extractor" in settings.roles)
    uploads = UploadRecorder(runtime.db)
    drift = DriftMonitor(settings.drift_window, settings.drift_min_images)
    history = History()
    dataplane = DataPlane(runtime, deployment, uploads, drift, history)
    parts = Parts(runtime, deployment, uploads, LagSampler(settings, app.conf.id), drift, history, dataplane)
    app.parts = parts
    app.web_setup = lambda web_app: api.setup(web_app, dataplane, settings)
    app.service(_service(parts))

    if "extractor" in settings.roles:
        from tables import descriptors

        extractor.register(app, runtime, deployment, drift, descriptors.declare(app, settings))
    if settings.classifiers:
        classifiers.register(app, runtime, deployment, list(settings.classifiers))
    if "dead-letter" in settings.roles:
        dead_letter.register(app, runtime)
    _monitors(app, parts)
    _prometheus(app)
    if settings.heap_trim_interval_s:
        from app.core.memtrace import release_free_heap

        @app.timer(settings.heap_trim_interval_s, name="heap-trim")
        async def heap_trim() -> None:
            started = time.perf_counter()
            released = release_free_heap()
            if released is not None:
                HEAP_TRIM_SECONDS.observe(time.perf_counter() - started)
                HEAP_RELEASED.inc(max(0.0, released) * 2**20)

    if settings.trace_memory_s:
        from app.core.memtrace import MemoryTrace

        trace = MemoryTrace()

        @app.timer(settings.trace_memory_s, name="memory-trace")
        async def memory_trace() -> None:
            trace.tick()
    return app


def _service(parts: Parts) -> type[Service]:
    """Starts the resources and the loops around them with the Faust app; stops them in reverse."""

    class WorkerService(Service):
        async def on_start(self) -> None:
            started = time.monotonic()
            await parts.runtime.start()
            parts.deployment.start()
            parts.lag.start()
            log.info("runtime started in %.2fs (roles: %s)", time.monotonic() - started,
                     ",".join(parts.runtime.settings.roles))

        async def on_stop(self) -> None:
            parts.uploads.stop()
            parts.lag.stop()
            parts.deployment.stop()
            await parts.runtime.stop()

    return WorkerService


def _prometheus(app: ImgstreamApp) -> None:
    """Faust's sensor metrics (prefix ``imgstream_faust_``) in the project's registry, and
    ``/metrics`` serving that registry: ``setup_prometheus_sensors``, with the leaner sensor."""
    app.monitor = FaustSensor(FaustMetrics.create(REGISTRY, "imgstream_faust"))

    @app.page("/metrics")
    async def metrics(self, request) -> Response:
        return Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


def _monitors(app: ImgstreamApp, parts: Parts) -> None:
    """Timers: the drift score and the dashboard's in-memory history every 10 s; the live accuracy
    gauges every 30 s (from PostgreSQL, by workers with the front role only)."""
    settings = parts.runtime.settings

    @app.timer(10.0, name="drift-and-history")
    async def drift_and_history() -> None:
        score = parts.drift.score()
        if score is not None:
            for i, value in enumerate(score["psi"]):
                DRIFT.labels(score["bundle"], str(i)).set(value)
            DRIFT_MAX.labels(score["bundle"]).set(score["psi_max"])
        lag = sum(s.value for m in CONSUMER_LAG.collect() for s in m.samples)
        parts.history.add(lag=lag, drift=score["psi_max"] if score else None)

    if "front" in settings.roles:
        @app.timer(30.0, name="live-accuracy")
        async def live_accuracy() -> None:
            try:
                rows = await parts.runtime.db.live_accuracy(settings.accuracy_window_s, settings.deployment)
            except Exception as exc:  # noqa: BLE001 - a metric must never take the worker down
                log.debug("live accuracy unavailable: %s", exc)
                return
            for r in rows:
                LIVE_ACCURACY.labels(r["model_version"], r["classifier"]).set(r["correct"] / r["images"])
                LIVE_LABELLED.labels(r["model_version"], r["classifier"]).set(r["images"])


@lru_cache(maxsize=1)
def get_app() -> ImgstreamApp:
    return create_app(get_settings())
