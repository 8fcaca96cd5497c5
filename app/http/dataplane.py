"""The business logic of every HTTP view, once: upload, predictions, extract, predict, health.

Views (``app.http``) are thin adapters that parse HTTP into the typed requests of
``app.http.contracts`` and call these methods, which answer with the typed responses; errors are
raised from ``app.core.errors`` and mapped to ``{"error": {"code", "message"}}`` in one middleware.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import math
import time
import uuid
from collections import Counter
from datetime import UTC, datetime

import numpy as np

from app.stream import broker

from app.bundles import registry
from app.http.contracts import (Accepted, Agreement, BundleAccuracy, Check, ClassifierAccuracy, ClassifierStats, Consensus,
                           Descriptors, Drift, ExperimentBundle, ExperimentClassifier, Experiments, ExtractRequest,
                           Feedback, FeedbackRequest, Health, Image, Links, LiveAccuracy, Liveness, Page, Prediction,
                           PredictRequest, PredictResult, Series, Stats, Timeseries, TraceEvent)
from app.core.errors import BadRequest, ImgstreamError, ModelError, NotFound, ServiceUnavailable, Unprocessable
from app.stream.messages import ImageUploaded
from app.core.metrics import FEEDBACK, UPLOADS
from msgspec import UNSET
from app.bundles.deployment import BundleDeployment
from app.bundles.drift import DriftMonitor
from app.http.history import History
from app.storage.uploads import UploadRecorder
from app.stream.runtime import Runtime
from models.domain import CLASSIFIERS
from app.storage.database import UploadRecord
from models.backbones import BackboneSpec
from models.drift import ALERT as DRIFT_ALERT
from models.preprocess import EXTENSIONS, FORMATS, model_pixels, model_view, preprocess, probe, validate

log = logging.getLogger("imgstream.dataplane")


def parse_image_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except (ValueError, TypeError, AttributeError):
        raise BadRequest(f"{raw!r} is not an image id (a UUID)", code="malformed_image_id") from None


def consensus(labels: list[str], tie_break: str | None) -> Consensus:
    if not labels:
        return Consensus(None, 0)
    (label, votes), *_ = Counter(labels).most_common(1)
    if votes == 1 and tie_break is not None:
        label = tie_break
    return Consensus(label, votes, len(labels))


def _check_and_hash(body: bytes, spec: BackboneSpec | None, max_pixels: int) -> tuple[str, np.ndarray | None, str]:
    """Off the event loop: the header check (format, pixel count: refused before any decode), the
    decode that validates (to ``spec``'s crop, or the cheapest one without a co-located
    extractor) and the sha256 (1.4 ms for a 2 MB photo). Returns (format, crop, sha256)."""
    fmt, _, _ = probe(body, max_pixels)
    if spec is None:
        validate(body, max_pixels)
        return fmt, None, hashlib.sha256(body).hexdigest()
    return fmt, model_pixels(body, spec, max_pixels), hashlib.sha256(body).hexdigest()


def _model_view_png(data: bytes, spec: BackboneSpec, max_pixels: int) -> bytes:
    buf = io.BytesIO()
    model_view(data, spec, max_pixels).save(buf, "PNG")
    return buf.getvalue()


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _round(value, digits: int = 1) -> float | None:
    return None if value is None else round(float(value), digits)


def _iso(ts: datetime | None) -> str | None:
    return ts.isoformat() if ts else None


class DataPlane:
    def __init__(self, runtime: Runtime, deployment: BundleDeployment, uploads: UploadRecorder,
                 drift: DriftMonitor, history: History) -> None:
        self.rt = runtime
        self.deployment = deployment
        self.uploads = uploads
        self.drift_monitor = drift
        self.history = history
        self.settings = runtime.settings
        self._started = time.monotonic()
        self._manifest_cache: tuple[float, dict[str, dict]] | None = None

    # --- upload --------------------------------------------------------------------------------
    async def upload(self, body: bytes) -> Accepted:
        """Validate, store at raw-images/YYYY/MM/DD/<uuid>.<ext>, produce, and only then answer.

        A worker with an extractor validates by decoding the image to the backbone's input crop and
        keeps the crop for its own extractor: one decode per image. A front-only worker validates
        with the cheapest decode that still reads the whole image (1/8 scale for JPEG)."""
        spec = self._spec()
        fmt, pixels, sha = await self.rt.decode_pool.run(_check_and_hash, body, spec,
                                                 self.settings.max_pixels)
        image_id = uuid.uuid4()
        now = datetime.now(UTC)
        key = f"raw-images/{now:%Y/%m/%d}/{image_id}.{EXTENSIONS[fmt]}"
        msg = ImageUploaded(str(image_id), key, sha, len(body), FORMATS[fmt], time.time())
        await self.rt.store.put(key, body, FORMATS[fmt], sha256=sha)
        # kept before the event exists: this worker's extractor may read it before send returns
        kept = pixels is not None and self.rt.recent_uploads.put(key, spec.name, pixels)
        try:
            meta = await self.rt.producer.send(self.rt.topics.input, sha.encode(), msg.dumps())
        except ServiceUnavailable:
            self.rt.recent_uploads.pop(key, spec.name if spec else "")
            await self.rt.store.delete(key)  # nothing half-written: no event, no object
            raise
        if kept and not self.rt.extracts_here(meta.partition):
            self.rt.recent_uploads.drop_elsewhere(key)
        record = UploadRecord(image_id, key, sha, len(body), FORMATS[fmt], now, datetime.now(UTC),
                              self.settings.deployment, meta.partition, meta.offset)
        try:
            async with asyncio.timeout(2):
                await self.rt.db.record_upload(record)
        except Exception as exc:  # noqa: BLE001 - accepted: the row is written as soon as PostgreSQL answers
            log.warning("upload recorded in Kafka but not yet in PostgreSQL (%s); kept until it is",
                        type(exc).__name__, extra={"image_id": str(image_id)})
            self.uploads.record_later(record)
        UPLOADS.inc()
        log.debug("upload accepted", extra={"image_id": str(image_id), "bytes": len(body)})
        return Accepted(str(image_id), key, sha, len(body), FORMATS[fmt], "pending",
                        Links(f"/predictions/{image_id}", f"/predictions/{image_id}?trace=1"))

    def _spec(self) -> BackboneSpec | None:
        """The co-located extractor's input spec; None without an extractor (or its bundle)."""
        if "extractor" not in self.settings.roles:
            return None
        try:
            extractor = self.deployment.bundle.extractor
        except ModelError:
            return None
        return extractor.spec if extractor is not None else None

    # --- predictions ---------------------------------------------------------------------------
    async def prediction(self, raw_id: str, trace: bool = False, model_version: str | None = None) -> Image:
        image_id = parse_image_id(raw_id)
        row = await self.rt.db.get_image(image_id)
        if row is None:
            raise NotFound(f"no image {image_id}", code="image_not_found")
        preds = await self.rt.db.get_predictions(image_id, model_version or row["bundle_version"])
        return self._render(row, preds, trace)

    async def image(self, raw_id: str, view: str = "stored") -> tuple[bytes, str]:
        """The stored bytes, or (``view="model"``) the backbone's input crop as a PNG: the picture
        the model saw, orientation, bit depth and transparency applied."""
        if view not in ("stored", "model"):
            raise BadRequest(f"view must be 'stored' or 'model', not {view!r}", code="invalid_view")
        row = await self.rt.db.get_image(parse_image_id(raw_id))
        if row is None or not row["object_key"]:
            raise NotFound("no such image", code="image_not_found")
        data = await self.rt.store.get(row["object_key"])
        if view == "stored":
            return data, row["content_type"] or "application/octet-stream"
        spec = self.deployment.bundle.backbone
        return await self.rt.decode_pool.run(_model_view_png, data, spec, self.settings.max_pixels), "image/png"

    def _render(self, row, preds, trace: bool) -> Image:
        by_name = {p["classifier"]: p for p in preds}
        status = "failed" if row["status"] == "failed" else (
            "complete" if all(c in by_name for c in CLASSIFIERS) else "pending")
        predictions = {
            name: Prediction(p["label"], round(p["confidence"], 4),
                             dict(zip(self._labels(), [round(v, 4) for v in p["probabilities"]], strict=False)),
                             p["model_version"], round(p["latency_ms"], 3), _iso(p["created_at"]))
            for name, p in sorted(by_name.items())
        }
        acc = by_name.get("accurate")
        return Image(str(row["image_id"]), status, predictions,
                     consensus([p["label"] for p in by_name.values()], acc["label"] if acc else None),
                     object_key=row["object_key"], sha256=row["sha256"], uploaded_at=_iso(row["uploaded_at"]),
                     model_version=row["bundle_version"], error=row["error"],
                     trace=self._trace(row, by_name) if trace else UNSET)

    def _labels(self) -> list[str]:
        try:
            return self.deployment.bundle.labels
        except ModelError:
            return []

    @staticmethod
    def _trace(row, by_name) -> list[TraceEvent]:
        up = row["uploaded_at"]
        events = [("upload_received", up), ("upload_accepted", row["accepted_at"]),
                  ("extraction_started", row["extract_started_at"]),
                  ("extraction_finished", row["extract_finished_at"])]
        events += [(f"classifier_{n}_finished", by_name[n]["created_at"]) for n in CLASSIFIERS if n in by_name]
        out, prev = [], None
        for name, ts in events:
            item = TraceEvent(name, _iso(ts))
            if ts and up:
                item.since_upload_ms = round((ts - up).total_seconds() * 1000, 2)
            if ts and prev:
                item.since_previous_ms = round((ts - prev).total_seconds() * 1000, 2)
            if name == "extraction_finished" and row["extract_cached"] is not None:
                item.from_descriptor_table = bool(row["extract_cached"])
            out.append(item)
            prev = ts or prev
        return out

    async def recent(self, limit: int, offset: int) -> Page:
        rows = await self.rt.db.recent_images(limit, offset)
        preds = await self.rt.db.predictions_for([r["image_id"] for r in rows]) if rows else []
        grouped: dict = {}
        for p in preds:
            grouped.setdefault(p["image_id"], []).append(p)
        items = []
        for r in rows:
            mine = [p for p in grouped.get(r["image_id"], []) if p["model_version"] == r["bundle_version"]]
            items.append(self._render(r, mine, trace=False))
        return Page(items, limit, offset,
                    f"/predictions?limit={limit}&offset={offset + limit}" if len(rows) == limit else None)

    # --- direct model calls ----------------------------------------------------------------------
    async def extract(self, req: ExtractRequest) -> Descriptors:
        bundle = self.deployment.bundle
        if bundle.extractor is None:
            raise ServiceUnavailable("this worker does not run the extractor role", code="role_not_served")
        if req.image_id is None and req.object_key is None:
            raise Unprocessable("send {\"image_id\": ...} or {\"object_key\": ...}", code="invalid_request")
        if req.image_id is not None:
            image_id = parse_image_id(req.image_id)
            row = await self.rt.db.get_image(image_id)
            if row is None or not row["object_key"]:
                raise NotFound(f"no image {image_id}", code="image_not_found")
            key = row["object_key"]
        else:
            key = req.object_key
            if not key.startswith("raw-images/") or ".." in key:
                raise Unprocessable("object_key must name an object under raw-images/", code="invalid_object_key")
        data = await self.rt.store.get(key)
        started = time.perf_counter()
        x = await self.rt.decode_pool.run(preprocess, data, bundle.extractor.spec, self.settings.max_pixels)
        desc = await self.rt.onnx_pool.run(bundle.descriptors, x[None])
        return Descriptors(key, bundle.version, bundle.k, [float(v) for v in desc[0]],
                           round((time.perf_counter() - started) * 1000, 3))

    async def predict(self, classifier: str, req: PredictRequest) -> PredictResult:
        if classifier not in CLASSIFIERS:
            raise Unprocessable(f"unknown classifier {classifier!r}; choose from {', '.join(CLASSIFIERS)}",
                                code="unknown_classifier")
        bundle = self.deployment.bundle
        values = req.descriptors
        if len(values) != bundle.k:
            raise Unprocessable(f"descriptors must be a list of {bundle.k} numbers", code="invalid_descriptors")
        if not all(math.isfinite(v) for v in values):
            raise Unprocessable("descriptors must be finite numbers (no NaN or infinity)", code="invalid_descriptors")
        import numpy as np

        started = time.perf_counter()
        p = (await self.rt.predict_pool.run(bundle.predict, classifier,
                                   np.asarray([values], np.float32)))[0]
        return PredictResult(classifier, bundle.version, bundle.labels[int(p.argmax())], float(p.max()),
                             dict(zip(bundle.labels, map(float, p), strict=True)),
                             round((time.perf_counter() - started) * 1000, 3))

    # --- dashboard -------------------------------------------------------------------------------
    async def stats(self) -> Stats:
        """Per-classifier latency percentiles and throughput, agreement, consumer lag."""
        from app.core.metrics import CONSUMER_LAG

        per = await self.rt.db.prediction_stats(300)
        agree = await self.rt.db.agreement(200)
        lag: dict[str, float] = {}
        for metric in CONSUMER_LAG.collect():
            for sample in metric.samples:
                lag[sample.labels["topic"]] = lag.get(sample.labels["topic"], 0) + sample.value
        return Stats(
            {r["classifier"]: ClassifierStats(r["n"], round(r["last_minute"] / 60, 2), round(r["p50"], 3),
                                              round(r["p99"], 3)) for r in per},
            Agreement(agree["images"], agree["unanimous"],
                      round(agree["unanimous"] / agree["images"], 4) if agree["images"] else None),
            lag, self._bundle_version(),
        )

    def _bundle_version(self) -> str | None:
        try:
            return self.deployment.bundle.version
        except ModelError:
            return None

    # --- label feedback and experiments ------------------------------------------------------------
    async def feedback(self, raw_id: str, req: FeedbackRequest) -> Feedback:
        """Store the label of an image (validated against the serving bundle's classes; the last
        label sent wins)."""
        image_id = parse_image_id(raw_id)
        labels = self.deployment.bundle.labels
        if req.label not in labels:
            raise Unprocessable(f"unknown label {req.label!r}; the bundle's classes are {', '.join(labels)}",
                                code="unknown_label")
        row = await self.rt.db.record_feedback(image_id, req.label)
        if row is None:
            raise NotFound(f"no image {image_id}", code="image_not_found")
        FEEDBACK.inc()
        return Feedback(str(row["image_id"]), row["label"], row["received_at"].isoformat(), row["updates"])

    async def accuracy(self, window_s: float) -> LiveAccuracy:
        per: dict[str, dict[str, ClassifierAccuracy]] = {}
        for r in await self.rt.db.live_accuracy(window_s, self.settings.deployment):
            per.setdefault(r["model_version"], {})[r["classifier"]] = ClassifierAccuracy(
                r["images"], r["correct"], round(r["correct"] / r["images"], 4) if r["images"] else None)
        return LiveAccuracy(window_s, [BundleAccuracy(v, c) for v, c in per.items()])

    async def _manifests(self) -> dict[str, dict]:
        """Published manifests, read at most once a minute."""
        now = time.monotonic()
        if self._manifest_cache is None or now - self._manifest_cache[0] > 60:
            self._manifest_cache = (now, {m["version"]: m for m in await registry.versions(self.rt.store)})
        return self._manifest_cache[1]

    async def experiments(self, window_s: float) -> Experiments:
        if self.deployment.deployed is None:
            raise ModelError(self.deployment.error)
        serving, shadows = self.deployment.deployed  # as last read from the registry (no S3 call per request)
        activity = await self.rt.db.bundle_activity(window_s, self.settings.deployment)
        accuracy = {(r["model_version"], r["classifier"]): r for r in await self.rt.db.live_accuracy(window_s, self.settings.deployment)}
        manifests = await self._manifests()
        versions = list(dict.fromkeys([serving, *shadows, *(r["model_version"] for r in activity)]))
        act = {(r["model_version"], r["classifier"]): r for r in activity}
        out = []
        for version in versions:
            m = manifests.get(version, {})
            per = {}
            for name in CLASSIFIERS:
                a, acc = act.get((version, name)), accuracy.get((version, name))
                held = m.get("classifiers", {}).get(name, {}).get("top1")
                per[name] = ExperimentClassifier(
                    a["predictions"] if a else 0, a["compared"] if a else 0,
                    _share(a["agree"], a["compared"]) if a else None,
                    acc["images"] if acc else 0, _share(acc["correct"], acc["images"]) if acc else None,
                    round(held, 4) if held is not None else None)
            compared = sum(c.compared for c in per.values())
            labelled = sum(c.labelled for c in per.values())
            agree = sum(act[(version, n)]["agree"] for n in CLASSIFIERS if (version, n) in act)
            correct = sum(accuracy[(version, n)]["correct"] for n in CLASSIFIERS if (version, n) in accuracy)
            held = [c.held_out_top1 for c in per.values() if c.held_out_top1 is not None]
            out.append(ExperimentBundle(
                version, "serving" if version == serving else "shadow" if version in shadows else "other",
                m.get("k"), m.get("reduction"), sum(c.predictions for c in per.values()),
                _share(agree, compared) if version != serving else None, labelled, _share(correct, labelled),
                round(sum(held) / len(held), 4) if held else None, per))
        return Experiments(window_s, serving, list(shadows), out)

    def drift(self) -> Drift:
        if "extractor" not in self.settings.roles:
            return Drift(False, "this worker runs no extractor: see imgstream_drift_psi_max in Prometheus", None,
                         0, None, [], DRIFT_ALERT)
        score = self.drift_monitor.score()
        if score is None:
            monitor = self.drift_monitor
            reason = ("the serving bundle carries no training statistics (trained before they were kept)"
                      if monitor.version is not None and monitor.reference is None
                      else f"fewer than {monitor.minimum} images in the window yet")
            return Drift(False, reason, monitor.version, monitor.images, None, [], DRIFT_ALERT)
        return Drift(True, None, score["bundle"], score["images"], score["psi_max"], score["psi"], score["alert"])

    async def timeseries(self, window_s: float, step_s: float) -> Timeseries:
        rows = await self.rt.db.timeseries(window_s, step_s, self.settings.deployment)
        t = [r["t"].timestamp() for r in rows]
        acc: dict[str, Series] = {}
        for r in await self.rt.db.accuracy_timeseries(window_s, step_s, self.settings.deployment):
            series = acc.setdefault(r["model_version"], Series([], []))
            series.t.append(r["t"].timestamp())
            series.values.append(round(float(r["accuracy"]), 4))
        samples = self.history.since(window_s)
        st = [s["t"] for s in samples]
        return Timeseries(
            window_s, step_s, Series(t, [round(r["images"] / step_s, 3) for r in rows]),
            Series(t, [_round(r["p50_ms"]) for r in rows]), Series(t, [_round(r["p99_ms"]) for r in rows]),
            Series(t, [_round(r["agreement"], 4) for r in rows]), acc,
            Series(st, [s.get("lag") for s in samples]), Series(st, [s.get("drift") for s in samples]))

    # --- health ----------------------------------------------------------------------------------
    async def live(self) -> Liveness:
        """The process and its event loop answer: nothing outside the process is asked, so a
        PostgreSQL or Kafka outage never gets a worker restarted (its readiness says those).
        ``loop_lag_ms``: how long a callback waited for the loop just now."""
        loop = asyncio.get_running_loop()
        t = loop.time()
        await asyncio.sleep(0)
        return Liveness("alive", round(time.monotonic() - self._started, 1), round(1000 * (loop.time() - t), 2))

    async def health(self) -> tuple[bool, Health]:
        async def check(name, coro):
            try:
                await asyncio.wait_for(coro, 6)
                return name, Check(True)
            except ImgstreamError as exc:
                return name, Check(False, exc.message)
            except Exception as exc:  # noqa: BLE001 - report, do not raise
                return name, Check(False, type(exc).__name__)

        results = dict(await asyncio.gather(
            check("kafka", broker.ping(self.settings, timeout=5)),
            check("postgres", self.rt.db.ping()),
            check("s3", self.rt.store.ping()),
        ))
        try:
            b = self.deployment.bundle
            results["model"] = Check(True, version=b.version, backbone=b.manifest["backbone"], k=b.k,
                                     extractor_loaded=b.extractor is not None)
        except ModelError as exc:
            results["model"] = Check(False, exc.message)
        ok = all(v.ok for v in results.values())
        return ok, Health("ok" if ok else "degraded", list(self.settings.roles), results)
