"""Resources with a lifecycle, owned by one service per worker: the S3 client, the asyncpg pool,
the model bundle and the thread pools that keep CPU work off the event loop.

Nothing is created at import time. The Faust app starts ``RuntimeService`` with the worker;
agents and views wait on ``Runtime.ready`` and read the bundle through ``Runtime.bundle``, which
raises ``ModelError`` (503) until one is loaded.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import sys
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor

import faust
import numpy as np
from faust.exceptions import ConsumerNotStarted
from faust.types import TP
from mode import Service

from app import broker, registry
from app.backoff import Backoff
from app.errors import ModelError, NotFound, ServiceUnavailable
from app.metrics import BUNDLE, CONSUMER_LAG, CROPS_DROPPED_EXPIRED, CROPS_ELSEWHERE, CROPS_NOT_KEPT, SHADOWS, UNRECORDED
from app.monitor import DriftMonitor, History
from app.settings import Settings
from app.storage.database import Database, UploadRecord
from app.storage.objectstore import ObjectStore
from models.bundle import Bundle

log = logging.getLogger("imgstream.runtime")

_PR_SET_NAME = 15


def name_os_thread() -> None:
    """A ``ThreadPoolExecutor`` initializer: the thread's Python name at the OS level too, where
    ``/proc/<pid>/task/<tid>/comm``, top and py-spy see it. Threads it starts inherit the name
    (onnxruntime's intra-op threads among them), so the CPU of the backbone's threads (onnx*,
    decode*) can be told apart from the event loop's. Linux only; elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).prctl(_PR_SET_NAME, threading.current_thread().name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


def named_pool(workers: int, prefix: str) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix=prefix, initializer=name_os_thread)


class Topics:
    def __init__(self, app: faust.App, settings: Settings) -> None:
        kw = {"partitions": settings.topic_partitions, "key_serializer": "raw", "value_serializer": "raw"}
        self.input = app.topic(settings.input_topic, **kw)
        self.features = app.topic(settings.features_topic, **kw)
        self.dead_letter = app.topic(settings.dead_letter_topic, **kw)


class RecentUploads:
    """The decoded crops of uploads accepted by this worker, by object key: an extractor in the
    same process takes the crop from here instead of fetching the object back from S3 and decoding
    it again (S3 stays the source of truth; a miss costs a GET and a decode). Bounded in bytes of
    pixels (150 KB per 224x224 crop, whatever the photo's size).

    When full, a new crop is not kept: the extractor reads its backlog oldest first, so making room
    by evicting the oldest crop would drop the very next one it needs, and a backlog longer than
    the cache would then miss on every image, just when the worker is busiest. A crop no extractor
    took within ``max_age_s`` is dropped (its event went to another worker, or was redelivered
    after a rebalance), so such crops cannot hold the room for good."""

    def __init__(self, max_bytes: int, max_age_s: float = 60.0) -> None:
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.size = 0
        self.items: OrderedDict[str, tuple[str, np.ndarray, float]] = OrderedDict()

    def put(self, key: str, backbone: str, pixels: np.ndarray, now: float | None = None) -> bool:
        """Keep ``pixels`` for ``key``; False (and not kept) when there is no room for them."""
        now = time.monotonic() if now is None else now
        while self.items:
            oldest_key, (_, _, made) = next(iter(self.items.items()))
            if now - made <= self.max_age_s:
                break
            self._take(oldest_key)
            CROPS_DROPPED_EXPIRED.inc()
        if self.size + pixels.nbytes > self.max_bytes:
            CROPS_NOT_KEPT.inc()
            return False
        self.items[key] = (backbone, pixels, now)
        self.size += pixels.nbytes
        return True

    def drop_elsewhere(self, key: str) -> None:
        """Drop ``key``'s crop: its event went to a partition another worker extracts."""
        if self._take(key) is not None:
            CROPS_ELSEWHERE.inc()

    def pop(self, key: str, backbone: str) -> np.ndarray | None:
        """The crop for ``key`` if it was made for ``backbone`` (a bundle swap may change it)."""
        item = self._take(key)
        return item[1] if item is not None and item[0] == backbone else None

    def _take(self, key: str) -> tuple[str, np.ndarray, float] | None:
        item = self.items.pop(key, None)
        if item is not None:
            self.size -= item[1].nbytes
        return item


class Runtime:
    def __init__(self, app: faust.App, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.topics = Topics(app, settings)
        self.store = ObjectStore(settings)
        self.db = Database(settings, min_size=0, max_size=10)
        self.ready = asyncio.Event()
        self.recent_uploads = RecentUploads(settings.local_object_cache_mb << 20)
        # (sha256, bundle version) -> descriptors of an extractor batch in flight (agents/extractor.py)
        self.extracting: dict[tuple[str, str], asyncio.Future] = {}
        self._bundle: Bundle | None = None
        self._other_bundles: dict[str, Bundle] = {}
        self._shadows: tuple[Bundle, ...] = ()
        # (serving, shadow versions) as last read from the settings and the registry
        self.deployed: tuple[str, tuple[str, ...]] | None = None
        self.drift = DriftMonitor(settings.drift_window, settings.drift_min_images)
        self.history = History()
        self.bundle_error = "model bundle not loaded yet"
        # One thread per side-by-side ONNX call of a batch (IMGSTREAM_ONNX_PARALLEL), each with
        # settings.worker_ort_threads intra-op threads; decoding and LightGBM get their own threads.
        self.onnx_pool = named_pool(settings.onnx_parallel, "onnx")
        self.decode_pool = named_pool(2, "decode")
        self.predict_pool = named_pool(1, "predict")
        self._tasks: list[asyncio.Task] = []
        self.unrecorded: deque[UploadRecord] = deque()
        self._recorder: asyncio.Task | None = None

    @property
    def needs_extractor(self) -> bool:
        return "extractor" in self.settings.roles

    def extracts_here(self, partition: int) -> bool:
        """Whether this worker's extractor holds ``partition`` of the input topic now; True while
        the assignment is not known yet (a crop is then kept for the age limit rather than lost)."""
        try:
            assignment = self.app.consumer.assignment()
        except ConsumerNotStarted:
            return True
        return not assignment or TP(self.settings.input_topic, partition) in assignment

    @property
    def onnx_classifiers(self) -> tuple[str, ...]:
        """The classifiers this worker serves as tree ensembles on onnxruntime: those it runs an
        agent for (building one costs memory and a second or so per bundle; other roles predict
        at most a /predict call, with LightGBM)."""
        return self.settings.onnx_classifiers(self.settings.classifiers)

    @property
    def bundle(self) -> Bundle:
        if self._bundle is None:
            raise ModelError(self.bundle_error)
        return self._bundle

    async def classifiers_for(self, version: str) -> Bundle:
        """The bundle whose reduction made descriptors of ``version``: the loaded one, or another
        published one fetched on demand (classifiers only). Descriptors are only ever classified by
        the classifiers trained on their own descriptor space."""
        bundle = self.bundle
        if version == bundle.version:
            return bundle
        if version not in self._other_bundles:
            path = await registry.fetch(self.store, version, self.settings.bundles_dir)
            self._other_bundles[version] = await asyncio.get_running_loop().run_in_executor(
                self.predict_pool, lambda: Bundle.load(path, extractor=False,
                                                       onnx_classifiers=self.onnx_classifiers))
            log.info("loaded classifiers of bundle %s for descriptors it produced", version)
        return self._other_bundles[version]

    async def wait_bundle(self) -> Bundle:
        while self._bundle is None:
            await asyncio.sleep(0.5)
        return self._bundle

    async def start(self) -> None:
        await self.store.start()
        await self.db.start()
        self._tasks.append(asyncio.create_task(self._load_bundle_forever(), name="load-bundle"))
        self._tasks.append(asyncio.create_task(self._lag_forever(), name="consumer-lag"))
        self.ready.set()

    async def stop(self) -> None:
        if self.unrecorded:
            log.error("stopping with %d accepted upload(s) not recorded in PostgreSQL (their predictions "
                      "still arrive through Kafka; the sweeper cannot see them)", len(self.unrecorded))
        for t in [*self._tasks, self._recorder]:
            if t is not None:
                t.cancel()
        await self.db.stop()
        await self.store.stop()
        for pool in (self.onnx_pool, self.decode_pool, self.predict_pool):
            pool.shutdown(wait=False, cancel_futures=True)

    @property
    def shadows(self) -> tuple[Bundle, ...]:
        """Shadow bundles this worker's extractor runs beside the serving one (same backbone)."""
        return self._shadows

    async def _target(self) -> tuple[str, tuple[str, ...]]:
        """(serving version, shadow versions) this worker should run now: see
        ``Settings.bundle_version`` and ``Settings.shadow_bundles``. Publishing a bundle never
        changes what a running worker serves; promoting one does."""
        record = await registry.deployment(self.store, self.settings.app_id)
        serving = self.settings.bundle_version
        if serving == "latest":
            if record is not None and record.serving:
                serving = record.serving
            elif self._bundle is not None:
                serving = self._bundle.version
        serving = await registry.resolve(self.store, serving)
        shadows = tuple(record.shadows) if record is not None else self.settings.shadow_bundles
        return serving, tuple(v for v in shadows if v != serving)

    async def _load(self, version: str, extractor: bool) -> Bundle:
        path = await registry.fetch(self.store, version, self.settings.bundles_dir)
        # loaded on a thread named like the ONNX pool: the sessions' own intra-op threads inherit it
        loader = named_pool(1, "onnx-load")
        try:
            return await asyncio.get_running_loop().run_in_executor(
                loader, lambda: Bundle.load(path, extractor=extractor, threads=self.settings.worker_ort_threads,
                                            providers=list(self.settings.onnx_providers),
                                            wide_threads=self.settings.worker_wide_threads,
                                            onnx_classifiers=self.onnx_classifiers))
        finally:
            loader.shutdown(wait=False)

    async def _apply(self, serving: str, shadows: tuple[str, ...]) -> None:
        """Load what changed and swap it in; a batch in flight keeps the bundles it started with."""
        if self._bundle is None or self._bundle.version != serving:
            bundle = await self._load(serving, self.needs_extractor)
            previous, self._bundle = self._bundle, bundle
            BUNDLE.labels(bundle.version, bundle.manifest["backbone"], str(bundle.k)).set(1)
            if previous is not None:
                BUNDLE.labels(previous.version, previous.manifest["backbone"], str(previous.k)).set(0)
                log.info("now serving bundle %s (was %s)", bundle.version, previous.version)
            else:
                log.info("loaded model bundle %s (%s, k=%d)", bundle.version, bundle.manifest["backbone"], bundle.k)
            log.info("classifiers of bundle %s: %s", bundle.version,
                     "; ".join(f"{name} on {c.runtime_note}" for name, c in bundle.classifiers.items()))
        wanted = shadows if self.needs_extractor else ()
        if tuple(b.version for b in self._shadows) != wanted or any(
                b.backbone_id != self._bundle.backbone_id for b in self._shadows):
            loaded = {b.version: b for b in self._shadows}
            out = []
            for version in wanted:
                bundle = loaded.get(version) or await self._load(version, extractor=False)
                if bundle.backbone_id != self._bundle.backbone_id:
                    log.warning("shadow bundle %s uses another backbone (%s) than the serving one (%s): not run; "
                                "re-classify history with it instead (imgstream replay)", version,
                                bundle.manifest["backbone"], self._bundle.manifest["backbone"])
                    continue
                out.append(bundle)
            self._shadows = tuple(out)
            SHADOWS.set(len(out))
            log.info("shadow bundles: %s", ", ".join(b.version for b in out) or "none")

    async def _load_bundle_forever(self) -> None:
        """Load the bundles the settings and the registry name, then follow the registry's record;
        keep retrying while none is published or S3 is down."""
        backoff = Backoff(1.0, 15.0)
        while True:
            try:
                target = await self._target()
                await self._apply(*target)
                self.deployed = target
                backoff.reset()
                await asyncio.sleep(self.settings.registry_poll_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep trying; health reports why
                known = isinstance(exc, (ModelError, ServiceUnavailable, NotFound))
                if self._bundle is None:
                    self.bundle_error = exc.message if known else repr(exc)
                if not known:  # a corrupt bundle, say: the traceback says where it broke
                    log.exception("loading a model bundle failed")
                log.warning("model bundles not (re)loaded: %s (retrying in %.0fs)",
                            exc.message if known else repr(exc), backoff.delay)
                await backoff.wait()

    async def _lag_forever(self, every: float = 5.0) -> None:
        topics = [self.settings.input_topic, self.settings.features_topic, self.settings.dead_letter_topic]
        while True:
            await asyncio.sleep(every)
            try:
                lag = await broker.consumer_lag(self.settings, self.app.conf.id, topics)
                for (topic, partition), value in lag.items():
                    CONSUMER_LAG.labels(topic, str(partition)).set(value)
            except Exception as exc:  # noqa: BLE001 - metrics must never take the worker down
                log.debug("consumer lag unavailable: %s", exc)

    async def send(self, topic: faust.TopicT, key: bytes, value: bytes, headers=None, timeout: float = 15.0):
        """Produce and wait until the broker confirms (acks=all); returns the record's metadata
        (partition, offset). ServiceUnavailable otherwise."""
        return (await self.send_many(topic, [(key, value, headers)], timeout))[0]

    async def send_many(self, topic: faust.TopicT, records, timeout: float = 15.0) -> list:
        """Produce ``(key, value, headers)`` records in their order, then wait until the broker
        confirms every one (acks=all); their metadata in the same order. ServiceUnavailable
        otherwise. One deadline for all, and no task per record (``asyncio.wait_for`` and a
        ``gather`` of coroutines each make one): every upload and every extracted image passes
        here."""
        try:
            async with asyncio.timeout(timeout):
                confirmations = [await topic.send(key=key, value=value, headers=headers)
                                 for key, value, headers in records]
                return await asyncio.gather(*confirmations)
        except Exception as exc:  # noqa: BLE001 - any produce failure means "not confirmed"
            raise ServiceUnavailable(f"kafka unavailable: {type(exc).__name__}") from exc

    def record_upload_later(self, record: UploadRecord) -> None:
        """Keep an accepted upload's row for PostgreSQL and write it as soon as the database
        answers: the sweeper (the backstop) only sees images that have their row."""
        self.unrecorded.append(record)
        if self._recorder is None or self._recorder.done():
            self._recorder = asyncio.create_task(self._record_uploads_forever(), name="record-uploads")

    async def _record_uploads_forever(self, base: float = 0.5, cap: float = 10.0) -> None:
        backoff = Backoff(base, cap)
        while self.unrecorded:
            try:
                await self.db.record_upload(self.unrecorded[0])
                self.unrecorded.popleft()
                UNRECORDED.set(len(self.unrecorded))
                backoff.reset()
            except Exception as exc:  # noqa: BLE001 - the database is away: try again
                UNRECORDED.set(len(self.unrecorded))
                log.warning("%d accepted upload(s) not yet recorded in PostgreSQL (%s); retrying in %.1fs",
                            len(self.unrecorded), type(exc).__name__, backoff.delay)
                await backoff.wait()

    async def in_pool(self, pool: ThreadPoolExecutor, fn, *args):
        """``fn(*args)`` on ``pool``. Faust stops this runtime (and its pools) before the agents: a
        batch still running then gets an outage, which the error policy retries until the agent
        is cancelled and the batch goes to the partition's next owner, never a poison message."""
        try:
            future = asyncio.get_running_loop().run_in_executor(pool, fn, *args)
        except RuntimeError as exc:  # "cannot schedule new futures after shutdown"
            raise ServiceUnavailable("the worker is stopping", code="stopping") from exc
        try:
            return await future
        except asyncio.CancelledError:
            if pool._shutdown and not asyncio.current_task().cancelling():  # noqa: SLF001 - cancel_futures=True
                raise ServiceUnavailable("the worker is stopping", code="stopping") from None
            raise


def service_for(runtime: Runtime) -> type[Service]:
    class RuntimeService(Service):
        async def on_start(self) -> None:
            started = time.monotonic()
            await runtime.start()
            log.info("runtime started in %.2fs (roles: %s)", time.monotonic() - started, ",".join(runtime.settings.roles))

        async def on_stop(self) -> None:
            await runtime.stop()

    return RuntimeService
