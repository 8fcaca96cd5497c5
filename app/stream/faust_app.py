"""The one ``faust.App`` of a worker, configured from the settings: broker and its credentials,
the table store, the producer's acks, the web server. Agents, tables and views are added to it by
``app.worker`` (Faust's layout: they import the app, never the other way round).
"""

from __future__ import annotations

from collections.abc import Callable

import faust

from app.core.logs import configure_logging, json_logging_config
from app.core.security import faust_credentials
from app.core.settings import Settings
from app.stream import faust_patches


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
    imgstream_settings: Settings
    # set by whoever adds the HTTP views (app.worker): called with the aiohttp application
    web_setup: Callable | None = None

    def on_webserver_init(self, web) -> None:
        if self.web_setup is not None:
            self.web_setup(web.web_app)


def create_faust_app(settings: Settings) -> ImgstreamApp:
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
        # route table and its access control; the API is the route table (app/http/openapi.py)
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
    return app
