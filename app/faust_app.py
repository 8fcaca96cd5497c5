"""Builds the one ``faust.App``: topics, the descriptor table, the agents for this worker's roles,
the HTTP views, and Faust's Prometheus sensor on the project's registry.

Roles (``IMGSTREAM_ROLES`` or ``imgstream worker --role``) choose which agents this process runs;
a worker running every role uses the consumer group ``<app_id>``, a worker running some roles
``<app_id>-<roles>``, so each stage scales on its own by partitions and processes.
"""

from __future__ import annotations

import logging
import time
from functools import lru_cache

import faust
from aiohttp.web import Response
from faust.sensors.prometheus import FaustMetrics
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app import faust_patches
from app.dataplane import DataPlane
from app.logs import configure_logging, json_logging_config
from app.metrics import (CONSUMER_LAG, DRIFT, DRIFT_MAX, HEAP_RELEASED, HEAP_TRIM_SECONDS, LIVE_ACCURACY, LIVE_LABELLED,
                         REGISTRY, FaustSensor)
from app.runtime import Runtime, service_for
from app.security import faust_credentials
from app.settings import Settings, get_settings

log = logging.getLogger("imgstream.app")


class ImgstreamWorker(faust.Worker):
    """Faust's worker without its terminal spinner.

    At ``--loglevel warn`` and above Faust sets the *root* logger to DEBUG so that a spinner
    handler sees every record; every ``log.debug`` in botocore and aiokafka then builds a
    LogRecord nobody prints (18 % of the event loop in a profile at saturation). Here the root
    logger keeps the level asked for.
    """

    def on_setup_root_logger(self, logger, level: int) -> None:
        self.spinner = None


class ImgstreamApp(faust.App):
    runtime: Runtime
    dataplane: DataPlane
    imgstream_settings: Settings

    def _new_consumer(self):
        consumer = super()._new_consumer()
        if self.imgstream_settings.test_seek_delay_s:
            faust_patches.widen_seek_window(consumer, self.imgstream_settings.test_seek_delay_s)
        return consumer

    def on_webserver_init(self, web) -> None:
        from app.views import api

        api.setup(web.web_app, self.dataplane, self.imgstream_settings)


def create_app(settings: Settings) -> ImgstreamApp:
    configure_logging(settings)
    faust_patches.apply()
    (settings.state_dir / "faust").mkdir(parents=True, exist_ok=True)
    app = ImgstreamApp(
        settings.group_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        # every client Faust opens (consumer, producer, changelogs, its topic admin) connects so
        broker_credentials=faust_credentials(settings),
        store=f"{settings.table_store}://",
        tabledir=str(settings.worker_table_dir),
        table_standby_replicas=settings.table_standby_replicas,
        autodiscover=False,
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replicas,
        topic_allow_declare=True,
        producer_acks=-1,
        producer_linger=settings.kafka_linger_s,
        broker_session_timeout=settings.kafka_session_timeout,
        broker_heartbeat_interval=min(3.0, settings.kafka_session_timeout / 4),
        consumer_auto_offset_reset="earliest",
        # A revoke does not wait for the batches in flight: with several agents on one topic (one per
        # classifier, IMGSTREAM_CLASSIFIER_AGENTS=each), Faust's wait_empty waited minutes for
        # messages whose other copies it had just cleared from the queues (measured in the scale-up
        # chaos test: worst latency 17 s -> 102 s). The new owner re-processes those batches
        # instead; rows are idempotent and an upload keeps its first answer
        # (Database.write_predictions).
        stream_wait_empty=False,
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        web_application_options={"client_max_size": settings.max_upload_bytes + (1 << 20)},
        # Faust's own pages (/router, /table/<name>/<key>, the index at /) would serve outside the
        # route table and its access control; the API is the route table (app/views/openapi.py)
        web_router_enabled=False,
        web_tables_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
        datadir=str((settings.state_dir / "faust" / settings.group_id).resolve()),
        # With IMGSTREAM_LOG_JSON, Faust's and mode's own lines are JSON too (one formatter for all).
        logging_config=json_logging_config(settings) if settings.log_json else None,
        Worker=ImgstreamWorker,
    )
    app.imgstream_settings = settings
    app.runtime = Runtime(app, settings)
    app.dataplane = DataPlane(app.runtime)
    app.service(service_for(app.runtime))

    from agents import classifiers, dead_letter, extractor

    if "extractor" in settings.roles:
        from tables import descriptors

        extractor.register(app, app.runtime, descriptors.declare(app, settings))
    if settings.classifiers:
        classifiers.register(app, app.runtime, list(settings.classifiers))
    if "dead-letter" in settings.roles:
        dead_letter.register(app, app.runtime)
    _monitors(app, settings)
    _prometheus(app)
    if settings.heap_trim_interval_s:
        from app.memtrace import release_free_heap

        @app.timer(settings.heap_trim_interval_s, name="heap-trim")
        async def heap_trim() -> None:
            started = time.perf_counter()
            released = release_free_heap()
            if released is not None:
                HEAP_TRIM_SECONDS.observe(time.perf_counter() - started)
                HEAP_RELEASED.inc(max(0.0, released) * 2**20)

    if settings.trace_memory_s:
        from app.memtrace import MemoryTrace

        trace = MemoryTrace()

        @app.timer(settings.trace_memory_s, name="memory-trace")
        async def memory_trace() -> None:
            trace.tick()
    return app


def _prometheus(app: ImgstreamApp) -> None:
    """Faust's sensor metrics (prefix ``imgstream_faust_``) in the project's registry, and
    ``/metrics`` serving that registry: ``setup_prometheus_sensors``, with the leaner sensor."""
    app.monitor = FaustSensor(FaustMetrics.create(REGISTRY, "imgstream_faust"))

    @app.page("/metrics")
    async def metrics(self, request) -> Response:
        return Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


def _monitors(app: ImgstreamApp, settings: Settings) -> None:
    """Timers: the drift score and the dashboard's in-memory history every 10 s; the live accuracy
    gauges every 30 s (from PostgreSQL, by workers with the front role only)."""
    runtime = app.runtime

    @app.timer(10.0, name="drift-and-history")
    async def drift_and_history() -> None:
        score = runtime.drift.score()
        if score is not None:
            for i, value in enumerate(score["psi"]):
                DRIFT.labels(score["bundle"], str(i)).set(value)
            DRIFT_MAX.labels(score["bundle"]).set(score["psi_max"])
        lag = sum(s.value for m in CONSUMER_LAG.collect() for s in m.samples)
        runtime.history.add(lag=lag, drift=score["psi_max"] if score else None)

    if "front" in settings.roles:
        @app.timer(30.0, name="live-accuracy")
        async def live_accuracy() -> None:
            try:
                rows = await runtime.db.live_accuracy(settings.accuracy_window_s, settings.deployment)
            except Exception as exc:  # noqa: BLE001 - a metric must never take the worker down
                log.debug("live accuracy unavailable: %s", exc)
                return
            for r in rows:
                LIVE_ACCURACY.labels(r["model_version"], r["classifier"]).set(r["correct"] / r["images"])
                LIVE_LABELLED.labels(r["model_version"], r["classifier"]).set(r["images"])


@lru_cache(maxsize=1)
def get_app() -> ImgstreamApp:
    return create_app(get_settings())
