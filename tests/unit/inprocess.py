"""Agents in one process: a Faust app on ``memory://`` whose agents run through
``agent.test_context()``, and a Runtime whose resources (S3, PostgreSQL, the Kafka producer) are
in-memory fakes. Everything between the Runtime's boundary and the agents is the real code."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import faust
import lightgbm as lgb
import numpy as np
from PIL import Image

from app.core.errors import NotFound, ServiceUnavailable
from app.stream.messages import ImageUploaded, Trace, encode_descriptors
from app.bundles.deployment import BundleDeployment
from app.bundles.drift import DriftMonitor
from app.http.dataplane import DataPlane
from app.http.history import History
from app.storage.uploads import UploadRecorder
from app.stream.runtime import Runtime
from app.core.settings import Settings
from models.backbones import BackboneSpec
from models.bundle import Bundle
from models.classifier import Classifier
from models.domain import CLASSIFIERS
from models.reduction import Reducer

LABELS = ["red", "green", "blue"]


class TinyBackbone:
    """Stands in for the ONNX backbone: 8x8 inputs, features = each channel's mean and spread."""

    spec = BackboneSpec("tiny", features=6, size=8, resize=8, mean=(0.0, 0.0, 0.0), std=(255.0, 255.0, 255.0))
    threads = 1

    def __init__(self) -> None:
        self.calls = 0
        self.images = 0

    def run(self, batch: np.ndarray, wide: bool = False) -> np.ndarray:
        self.calls += 1
        self.images += len(batch)
        return np.concatenate([batch.mean(axis=(2, 3)), batch.std(axis=(2, 3))], axis=1).astype(np.float32)


def tiny_bundle(version: str = "v1", k: int = 4, seed: int = 0) -> Bundle:
    """A real Bundle (reducer, three LightGBM classifiers) over the tiny backbone's features."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 600)
    x = rng.normal(0, 0.05, (600, 6)).astype(np.float32)
    x[np.arange(600), y] += 0.8  # class c: channel c is bright
    reducer = Reducer("pca", x.mean(0).astype(np.float32), rng.normal(size=(k, 6)).astype(np.float32))
    d = reducer.transform(x)
    classifiers = {}
    for name in CLASSIFIERS:
        booster = lgb.train({"objective": "multiclass", "num_class": 3, "verbosity": -1, "num_threads": 1},
                            lgb.Dataset(d, y), 10)
        classifiers[name] = Classifier(name, booster, 1.0, LABELS)
    manifest = {"version": version, "labels": LABELS, "k": k, "backbone": "tiny",
                "classifiers": {n: {"temperature": 1.0} for n in CLASSIFIERS}}
    return Bundle(Path("."), manifest, reducer, classifiers, TinyBackbone())


def image(color: tuple[int, int, int], size: int = 8, salt: str = "") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, "PNG", pnginfo=_text(salt))
    return buf.getvalue()


def _text(salt: str):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("salt", salt)
    return info


class FakeStore:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.down = 0  # the next ``down`` calls fail as an outage

    async def get(self, key: str) -> bytes:
        if self.down:
            self.down -= 1
            raise ServiceUnavailable("s3 unavailable: test")
        if key not in self.objects:
            raise NotFound(f"no object {key}")
        return self.objects[key]

    async def put(self, key: str, data: bytes, content_type: str = "application/octet-stream", **meta) -> None:
        if self.down:
            self.down -= 1
            raise ServiceUnavailable("s3 unavailable: test")
        self.objects[key] = data

    async def delete(self, key: str) -> bool:
        return self.objects.pop(key, None) is not None

    async def ping(self) -> None:
        if self.down:
            raise ServiceUnavailable("s3 unavailable: test")


class FakeDatabase:
    def __init__(self) -> None:
        self.rows: dict[tuple, object] = {}
        self.progress: dict[uuid.UUID, object] = {}
        self.failed: dict[uuid.UUID, str] = {}
        self.down = 0
        self.attempts: defaultdict[tuple, int] = defaultdict(int)
        self.uploads: dict[uuid.UUID, object] = {}
        self.resent: list[tuple] = []
        self.feedback: dict[uuid.UUID, dict] = {}
        self.created_at = datetime.now(UTC)

    def _outage(self) -> None:
        if self.down:
            self.down -= 1
            raise ServiceUnavailable("postgres unavailable: test")

    async def write_predictions(self, progress, rows, first_answer_only: bool = False) -> int:
        self._outage()
        for p in progress:
            self.progress.setdefault(p.image_id, p)
        inserted = 0
        for r in rows:
            key = (r.image_id, r.classifier, r.model_version)
            self.attempts[key] += 1
            if key not in self.rows:
                self.rows[key] = r
                inserted += 1
        return inserted

    async def mark_failed(self, image_id, error, *args) -> None:
        self._outage()
        self.failed[image_id] = error

    # --- what the views and the sweeper read: rows shaped like the SQL's ------------------------
    async def record_upload(self, r) -> None:
        self._outage()
        self.uploads[r.image_id] = r

    async def ping(self) -> None:
        self._outage()

    async def record_feedback(self, image_id, label: str):
        self._outage()
        if image_id not in self.uploads:
            return None
        old = self.feedback.get(image_id)
        self.feedback[image_id] = {"image_id": image_id, "label": label, "received_at": datetime.now(UTC),
                                   "updates": old["updates"] + 1 if old else 1}
        return self.feedback[image_id]

    async def get_image(self, image_id):
        r = self.uploads.get(image_id)
        if r is None:
            return None
        p = self.progress.get(image_id)
        return {"image_id": image_id, "object_key": r.object_key, "sha256": r.sha256, "size": r.size,
                "content_type": r.content_type, "uploaded_at": r.uploaded_at, "accepted_at": r.accepted_at,
                "status": "failed" if image_id in self.failed else "pending", "error": self.failed.get(image_id),
                "bundle_version": p.bundle_version if p else None,
                "extract_started_at": p.extract_started_at if p else None,
                "extract_finished_at": p.extract_finished_at if p else None,
                "extract_cached": p.extract_cached if p else None}

    def _prediction(self, row) -> dict:
        return {**dataclasses.asdict(row), "created_at": self.created_at}

    async def get_predictions(self, image_id, model_version=None):
        return [self._prediction(r) for (i, _, v), r in self.rows.items()
                if i == image_id and (model_version is None or v == model_version)]

    async def recent_images(self, limit: int, offset: int):
        ids = sorted(self.uploads, key=lambda i: self.uploads[i].uploaded_at, reverse=True)[offset:offset + limit]
        return [await self.get_image(i) for i in ids]

    async def predictions_for(self, image_ids):
        return [{**self._prediction(r), "image_id": i} for (i, _, _), r in self.rows.items() if i in image_ids]

    async def agreement(self, limit: int = 200):
        return {"images": 0, "unanimous": 0}

    async def prediction_stats(self, window_s: int = 300):
        return []

    async def stalled(self, deployment, older_than_s, committed, limit: int = 500):
        return [{"image_id": r.image_id, "object_key": r.object_key, "sha256": r.sha256, "size": r.size,
                 "content_type": r.content_type, "uploaded_at": r.uploaded_at}
                for r in self.uploads.values()
                if r.deployment == deployment and r.input_offset is not None
                and r.input_offset < committed.get(r.input_partition, -1)
                and not any(i == r.image_id for i, _, _ in self.rows)]

    async def set_input_offset(self, image_id, partition: int, offset: int) -> None:
        self.resent.append((image_id, partition, offset))


class Sent(SimpleNamespace):
    """One produced record: topic, key, value, headers."""


class FakeProducer:
    """Keeps what is produced instead of sending it."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []

    async def send(self, topic, key: bytes, value: bytes, headers=None, timeout: float = 15.0):
        return (await self.send_many(topic, [(key, value, headers)], timeout))[0]

    async def send_many(self, topic, records, timeout: float = 15.0) -> list:
        name = topic.get_topic_name()
        metadata = []
        for key, value, headers in records:
            self.sent.append(Sent(topic=name, key=key, value=value, headers=dict(headers or [])))
            metadata.append(SimpleNamespace(partition=0, offset=len(self.sent) - 1))
        return metadata


class InProcessDeployment(BundleDeployment):
    """Serves ``bundle``; ``others`` are the published bundles classifiers_for finds by version."""

    def __init__(self, runtime: Runtime, bundle: Bundle) -> None:
        super().__init__(runtime.settings, runtime.store, runtime.predict_pool, "extractor" in runtime.settings.roles)
        self.others: dict[str, Bundle] = {}
        self.serve(bundle)

    async def classifiers_for(self, version: str) -> Bundle:
        if version in self.others:
            return self.others[version]
        return await super().classifiers_for(version)


class InProcessRuntime(Runtime):
    """The real Runtime with in-memory resources: S3, PostgreSQL and the producer are fakes; beside
    it, the parts a worker assembles around it (app/worker.py), on those resources."""

    def __init__(self, app: faust.App, settings: Settings, bundle: Bundle) -> None:
        super().__init__(app, settings)
        self.store = FakeStore()
        self.db = FakeDatabase()
        self.producer = FakeProducer()
        self.ready.set()
        self.deployment = InProcessDeployment(self, bundle)
        self.uploads = UploadRecorder(self.db)
        self.drift = DriftMonitor(settings.drift_window, settings.drift_min_images)
        self.history = History()

    @property
    def bundle(self) -> Bundle:
        return self.deployment.bundle

    @property
    def others(self) -> dict[str, Bundle]:
        return self.deployment.others

    @property
    def sent(self) -> list[Sent]:
        return self.producer.sent

    def dataplane(self) -> DataPlane:
        return DataPlane(self, self.deployment, self.uploads, self.drift, self.history)

    def on(self, topic: str) -> list[Sent]:
        return [s for s in self.sent if s.topic == topic]


def settings(**kw) -> Settings:
    kw = {"app_id": f"inproc-{uuid.uuid4().hex[:8]}", "table_store": "memory", "resend_after_s": 0,
          "descriptor_ttl_s": 0, **kw}
    return Settings(_env_file=None, **kw)


def app_for(s: Settings) -> faust.App:
    return faust.App(s.app_id, store="memory://", autodiscover=False,
                     key_serializer="raw", value_serializer="raw", web_enabled=False,
                     datadir=f"/tmp/imgstream-inproc/{s.app_id}")


def upload_event(runtime: InProcessRuntime, data: bytes, image_id: str | None = None) -> tuple[str, bytes, bytes]:
    """Put ``data`` in the fake store; the (image id, key, value) of its upload event."""
    image_id = image_id or str(uuid.uuid4())
    key = f"raw-images/test/{image_id}.png"
    runtime.store.objects[key] = data
    sha = hashlib.sha256(data).hexdigest()
    msg = ImageUploaded(image_id, key, sha, len(data), "image/png", time.time())
    return image_id, sha.encode(), msg.dumps()


def descriptor_event(bundle: Bundle, image_id: uuid.UUID, d: np.ndarray) -> tuple[bytes, bytes, list]:
    now = time.time()
    trace = Trace(bundle.version, now - 0.1, now - 0.05, now, False)
    return str(image_id).encode(), encode_descriptors(image_id, d), trace.headers()


async def until(predicate, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.01)
