"""image-features-stream -> fast / balanced / accurate -> PostgreSQL.

Three agents read the same topic in parallel. Each takes a micro-batch, predicts it with one
LightGBM call off the event loop, and writes all rows in one transaction and one round trip with
an idempotent upsert, so a redelivered message never makes a second row. While PostgreSQL is down
the agent retries the batch and Kafka holds the backlog: nothing accepted is lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

import faust
import numpy as np

from agents import dead_letter
from agents.policy import handle_batches, retry_outages, run_batch
from app.errors import ModelError, Unprocessable
from app.messages import Trace, decode_descriptors
from app.metrics import BATCH_SIZE, COMPUTE_SECONDS, END_TO_END, MESSAGES, PREDICT_SECONDS, QUEUE_SECONDS
from app.runtime import Runtime
from app.storage.database import ImageProgress, PredictionRow

log = logging.getLogger("imgstream.classifiers")


def _dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


async def process_batch(runtime: Runtime, name: str, events: list) -> int:
    """Classify one micro-batch with classifier ``name``; returns rows inserted.

    Descriptors are classified by the bundle that produced them (trace header ``v``), so a worker
    restarted on a newer bundle still reads older messages correctly.
    """
    stage = f"classifier-{name}"
    now = time.time()
    BATCH_SIZE.labels(stage).observe(len(events))
    groups: dict[str, list] = {}
    for event in events:
        try:
            image_id, desc = decode_descriptors(event.value)
            trace = Trace.from_headers(event.headers)
            bundle = await retry_outages(
                f"loading bundle {trace.bundle_version}", lambda: runtime.classifiers_for(trace.bundle_version),
                stage=stage)
            if desc.shape[0] != bundle.k:
                raise Unprocessable(f"{desc.shape[0]} descriptors, bundle {bundle.version} expects {bundle.k}",
                                    code="wrong_descriptor_count")
        except (Unprocessable, ModelError) as exc:
            # Each classifier reports what it refused, whichever roles a deployment runs (the
            # dead-letter agent's "mark failed" is idempotent).
            await dead_letter.send(runtime, stage, event, exc, original=bytes(event.value or b"")[:4096])
            continue
        QUEUE_SECONDS.labels(stage).observe(max(0.0, now - trace.extract_finished_at))
        groups.setdefault((bundle.version, trace.shadow), []).append((image_id, desc, trace, bundle))
    inserted = 0
    for (version, shadow), items in groups.items():
        inserted += await _classify(runtime, name, stage, version, items, shadow)
    return inserted


async def _classify(runtime: Runtime, name: str, stage: str, version: str, items: list, shadow: bool = False) -> int:
    bundle = items[0][3]
    ids = [i[0] for i in items]
    traces = [i[2] for i in items]
    started = time.perf_counter()
    predictions = await predict_rows(bundle, runtime.predict_pool, name, ids, np.stack([i[1] for i in items]))
    # Every classifier records the image's timeline (the first write wins, later ones change
    # nothing), so it is kept whichever classifier roles a deployment runs. A shadow bundle's
    # rows are stored beside the serving ones, tagged with its version, and never touch the
    # image's row: what the image is answered with stays the serving bundle's.
    progress = [] if shadow else [
        ImageProgress(image_id, _dt(t.uploaded_at), _dt(t.extract_started_at), _dt(t.extract_finished_at), t.cached,
                      t.bundle_version)
        for image_id, t in zip(ids, traces, strict=True)
    ]
    inserted = await retry_outages(
        f"writing {len(predictions)} {name} predictions",
        lambda: runtime.db.write_predictions(progress, predictions, first_answer_only=not shadow), stage=stage,
    )
    done = time.time()
    COMPUTE_SECONDS.labels(stage, version).observe(time.perf_counter() - started)
    for t in ([] if shadow else traces):
        END_TO_END.labels(name, version).observe(max(0.0, done - t.uploaded_at))
    MESSAGES.labels(stage, "ok", version).inc(len(ids))
    return inserted


async def predict_rows(bundle, pool, name: str, ids: list, x: np.ndarray) -> list[PredictionRow]:
    """One LightGBM call (off the event loop) for a batch -> rows tagged with the bundle's version.
    Shared by the classifier agents and ``imgstream replay``."""
    version = bundle.version
    started = time.perf_counter()
    probs = await asyncio.get_running_loop().run_in_executor(pool, bundle.predict, name, x)
    predict_s = time.perf_counter() - started
    PREDICT_SECONDS.labels(name, version).observe(predict_s / len(ids))
    latency_ms = 1000 * predict_s / len(ids)
    return [
        PredictionRow(image_id, name, version, bundle.labels[int(p.argmax())], float(p.max()),
                      [float(v) for v in p], latency_ms)
        for image_id, p in zip(ids, probs, strict=True)
    ]


def register(app: faust.App, runtime: Runtime, names: list[str]) -> None:
    settings = runtime.settings
    for name in names:
        _register_one(app, runtime, name, settings)


def _register_one(app: faust.App, runtime: Runtime, name: str, settings) -> None:
    stage = f"classifier-{name}"

    async def classify(stream):
        await runtime.ready.wait()
        await runtime.wait_bundle()
        # agents/policy.py: outages retried without limit, a message that always fails isolated
        # and dead-lettered, a batch acked once handled (rows are idempotent, so re-running a
        # batch is safe).
        await handle_batches(stream, settings.classify_batch_size, settings.classify_batch_within, lambda events: run_batch(
            events, lambda batch: process_batch(runtime, name, batch), stage=stage,
            on_poison=lambda event, exc: dead_letter.send_poison(runtime, stage, event, exc),
            attempts=settings.poison_attempts))

    classify.__name__ = classify.__qualname__ = f"classifier_{name}"
    app.agent(runtime.topics.features, name=f"classifier-{name}")(classify)
