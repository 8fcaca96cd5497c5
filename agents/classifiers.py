"""image-features-stream -> fast / balanced / accurate -> PostgreSQL.

The three classifiers read the same topic in parallel: in workers of their own (one role each),
or, in a worker that runs several, as one agent that runs each of them on every micro-batch (each
message delivered and decoded once; ``IMGSTREAM_CLASSIFIER_AGENTS=each`` gives each an agent of its
own instead). An agent takes a micro-batch, predicts it off the event loop (one call for all its
classifiers: the LightGBM trees, on onnxruntime unless ``IMGSTREAM_CLASSIFIER_RUNTIME=lightgbm``),
and writes all rows in one transaction and one round trip with an
idempotent upsert, so a redelivered message never makes a second row. While PostgreSQL is down the
agent retries the batch and Kafka holds the backlog: nothing accepted is lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import faust
import numpy as np

from agents import dead_letter
from app.stream.policy import handle_batches, retry_outages, run_batch
from app.core.errors import ModelError, Unprocessable
from app.stream.messages import Trace, decode_descriptors
from app.core.metrics import BATCH_SIZE, COMPUTE_SECONDS, END_TO_END, MESSAGES, QUEUE_SECONDS
from app.bundles.deployment import BundleDeployment
from app.bundles.predict import predict_rows
from app.stream.runtime import Runtime
from app.storage.database import ImageProgress

log = logging.getLogger("imgstream.classifiers")


def _dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def stage(name: str) -> str:
    """A classifier's stage label (metrics, dead letters), whichever agent runs it."""
    return f"classifier-{name}"


async def process_batch(runtime: Runtime, deployment: BundleDeployment, names: Sequence[str],
                        events: list) -> int:
    """Classify one micro-batch with each classifier of ``names``; returns rows inserted.

    Descriptors are classified by the bundle that produced them (trace header ``v``), so a worker
    restarted on a newer bundle still reads older messages correctly. Each event is decoded once,
    whichever classifiers share the batch.
    """
    stages = [stage(name) for name in names]
    queued = [QUEUE_SECONDS.labels(s) for s in stages]
    now = time.time()
    for s in stages:
        BATCH_SIZE.labels(s).observe(len(events))
    groups: dict[tuple[str, bool], list] = {}
    for event in events:
        try:
            image_id, desc = decode_descriptors(event.value)
            trace = Trace.from_headers(event.headers)
            bundle = await retry_outages(
                f"loading bundle {trace.bundle_version}", lambda: deployment.classifiers_for(trace.bundle_version),
                stage=stages[0])
            if desc.shape[0] != bundle.k:
                raise Unprocessable(f"{desc.shape[0]} descriptors, bundle {bundle.version} expects {bundle.k}",
                                    code="wrong_descriptor_count")
        except (Unprocessable, ModelError) as exc:
            # Each classifier reports what it refused, whichever roles a deployment runs (the
            # dead-letter agent's "mark failed" is idempotent).
            for s in stages:
                await dead_letter.send(runtime, s, event, exc, original=bytes(event.value or b"")[:4096])
            continue
        waited = max(0.0, now - trace.extract_finished_at)
        for histogram in queued:
            histogram.observe(waited)
        groups.setdefault((bundle.version, trace.shadow), []).append((image_id, desc, trace, bundle))
    inserted = 0
    for (version, shadow), items in groups.items():
        inserted += await _classify(runtime, names, version, items, shadow)
    return inserted


async def _classify(runtime: Runtime, names: Sequence[str], version: str, items: list, shadow: bool = False) -> int:
    bundle = items[0][3]
    ids = [i[0] for i in items]
    traces = [i[2] for i in items]
    started = time.perf_counter()
    predictions = await predict_rows(bundle, runtime.predict_pool, names, ids, np.stack([i[1] for i in items]))
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
        f"writing {len(predictions)} {'/'.join(names)} predictions",
        lambda: runtime.db.write_predictions(progress, predictions, first_answer_only=not shadow),
        stage=stage(names[0]),
    )
    done = time.time()
    compute_s = time.perf_counter() - started
    for name in names:
        COMPUTE_SECONDS.labels(stage(name), version).observe(compute_s)
        MESSAGES.labels(stage(name), "ok", version).inc(len(ids))
        if not shadow:
            histogram = END_TO_END.labels(name, version)
            for t in traces:
                histogram.observe(max(0.0, done - t.uploaded_at))
    return inserted


def register(app: faust.App, runtime: Runtime, deployment: BundleDeployment, names: list[str]) -> None:
    """One agent for this worker's classifiers (``shared``), or one per classifier (``each``)."""
    settings = runtime.settings
    if settings.classifier_agents == "shared":
        _register_agent(app, runtime, deployment, names, settings)
    else:
        for name in names:
            _register_agent(app, runtime, deployment, [name], settings)


def agent_name(names: Sequence[str]) -> str:
    """``classifier-fast``, or ``classifiers-fast-balanced-accurate`` for a shared agent."""
    return stage(names[0]) if len(names) == 1 else f"classifiers-{'-'.join(names)}"


def _register_agent(app: faust.App, runtime: Runtime, deployment: BundleDeployment, names: list[str],
                    settings) -> None:
    name = agent_name(names)

    async def classify(stream):
        await runtime.ready.wait()
        await deployment.wait()
        # app/stream/policy.py: outages retried without limit, a message that always fails isolated
        # and dead-lettered, a batch acked once handled (rows are idempotent, so re-running a
        # batch is safe).
        await handle_batches(stream, settings.classify_batch_size, settings.classify_batch_within, lambda events: run_batch(
            events, lambda batch: process_batch(runtime, deployment, names, batch), stage=name,
            on_poison=lambda event, exc: _poison(runtime, names, event, exc), attempts=settings.poison_attempts))

    classify.__name__ = classify.__qualname__ = name.replace("-", "_")
    app.agent(runtime.topics.features, name=name)(classify)


async def _poison(runtime: Runtime, names: Sequence[str], event, exc: BaseException) -> None:
    for name in names:
        await dead_letter.send_poison(runtime, stage(name), event, exc)
