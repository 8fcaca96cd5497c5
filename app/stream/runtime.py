"""The worker's resources, and their lifecycle: the S3 client, the asyncpg pool, the Kafka producer
and topics, the thread pools that keep CPU work off the event loop, and the cache of crops decoded
at upload.

Nothing is created at import time. The worker (app/worker.py) starts them with the Faust app;
agents and views wait on ``Runtime.ready``.
"""

from __future__ import annotations

import asyncio

import faust
from faust.exceptions import ConsumerNotStarted
from faust.types import TP

from app.core.settings import Settings
from app.core.threads import Pool
from app.storage.crops import RecentUploads
from app.storage.database import Database
from app.storage.objectstore import ObjectStore
from app.stream.produce import Producer
from app.stream.topics import Topics


class Runtime:
    def __init__(self, app: faust.App, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.topics = Topics(app, settings)
        self.producer = Producer()
        self.store = ObjectStore(settings)
        self.db = Database(settings, min_size=0, max_size=10)
        self.ready = asyncio.Event()
        self.recent_uploads = RecentUploads(settings.local_object_cache_mb << 20)
        # One thread per side-by-side ONNX call of a batch (IMGSTREAM_ONNX_PARALLEL), each with
        # settings.worker_ort_threads intra-op threads; decoding and LightGBM get their own threads.
        self.onnx_pool = Pool(settings.onnx_parallel, "onnx")
        self.decode_pool = Pool(2, "decode")
        self.predict_pool = Pool(1, "predict")

    def extracts_here(self, partition: int) -> bool:
        """Whether this worker's extractor holds ``partition`` of the input topic now; True while
        the assignment is not known yet (a crop is then kept for the age limit rather than lost)."""
        try:
            assignment = self.app.consumer.assignment()
        except ConsumerNotStarted:
            return True
        return not assignment or TP(self.settings.input_topic, partition) in assignment

    async def start(self) -> None:
        await self.store.start()
        await self.db.start()
        self.ready.set()

    async def stop(self) -> None:
        await self.db.stop()
        await self.store.stop()
        for pool in (self.onnx_pool, self.decode_pool, self.predict_pool):
            pool.shutdown(wait=False, cancel_futures=True)
