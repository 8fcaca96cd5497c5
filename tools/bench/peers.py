"""The architectures imgstream is measured against, on the same images, in the same run.

``sync``: a plain synchronous HTTP service — upload, extraction and the three classifications
inside the request (S3 write, ONNX, LightGBM, PostgreSQL write), no Kafka.

``before``: the original design — the full image travels through Kafka and each of the three
classifier services runs its own backbone on it (one process per classifier, each its own group).

Run as processes by ``tools.bench.runner``: ``python -m tools.bench.peers sync --port P`` or
``python -m tools.bench.peers before --topic T --classifier fast --tag before-x``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import numpy as np
from aiohttp import web

from app.bundles import registry
from app.core.settings import Settings
from models.domain import CLASSIFIERS
from app.storage.database import Database, ImageProgress, PredictionRow
from app.storage.objectstore import ObjectStore
from models.bundle import Bundle
from models.preprocess import preprocess, probe


async def _load(settings: Settings, threads: int, wide_threads: int | None = None,
                onnx_classifiers: tuple[str, ...] = ()) -> tuple[Bundle, ObjectStore, Database]:
    store = ObjectStore(settings)
    await store.start()
    path = await registry.fetch(store, settings.bundle_version, settings.bundles_dir)
    db = Database(settings)
    await db.start()
    return Bundle.load(path, threads=threads, wide_threads=wide_threads, onnx_classifiers=onnx_classifiers), store, db


def _rows(bundle: Bundle, image_id, x, names, version, latency_ms) -> list[PredictionRow]:
    out = []
    for name in names:
        p = bundle.predict(name, x)[0]
        out.append(PredictionRow(image_id, name, version, bundle.labels[int(p.argmax())], float(p.max()),
                                 [float(v) for v in p], latency_ms))
    return out


async def sync_server(settings: Settings, port: int) -> None:
    # the same ONNX configuration as imgstream's extractor: that many requests computed at once,
    # each on one core; a request alone in flight gets every core (the wide session)
    bundle, store, db = await _load(settings, settings.worker_ort_threads, settings.worker_wide_threads,
                                    settings.onnx_classifiers(CLASSIFIERS))
    pool = ThreadPoolExecutor(settings.onnx_parallel)
    version = f"sync-{bundle.version}"
    in_flight = 0

    async def upload(request: web.Request) -> web.Response:
        body = await request.read()
        t0 = datetime.now(UTC)
        probe(body, settings.max_pixels)
        image_id = uuid.uuid4()
        key = f"bench-sync/{image_id}.jpg"

        def compute(wide: bool):
            x = preprocess(body, bundle.extractor.spec, settings.max_pixels)[None]  # refuses corrupt data too
            d = bundle.descriptors(x, wide)
            return d, _rows(bundle, image_id, d, CLASSIFIERS, version, 0.0)

        nonlocal in_flight
        await store.put(key, body, "image/jpeg")
        t1 = datetime.now(UTC)
        in_flight += 1
        try:
            _, rows = await asyncio.get_running_loop().run_in_executor(pool, compute, in_flight == 1)
        finally:
            in_flight -= 1
        t2 = datetime.now(UTC)
        await db.write_predictions([ImageProgress(image_id, t0, t1, t2, False, version)], rows)
        return web.json_response({"image_id": str(image_id), "labels": {r.classifier: r.label for r in rows}})

    app = web.Application(client_max_size=settings.max_upload_bytes)
    app.router.add_post("/upload", upload)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


async def before_classifier(settings: Settings, topic: str, name: str, tag: str, batch: int) -> None:
    from aiokafka import AIOKafkaConsumer

    # each classifier service as the original design had it: its own backbone on every core, its
    # classifier on LightGBM
    bundle, store, db = await _load(settings, settings.ort_threads)
    pool = ThreadPoolExecutor(1)
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap, group_id=f"{tag}-{name}",
                                auto_offset_reset="earliest", enable_auto_commit=False, max_poll_records=batch)
    await consumer.start()
    print("ready", flush=True)
    try:
        while True:
            records = [r for rs in (await consumer.getmany(timeout_ms=200, max_records=batch)).values() for r in rs]
            if not records:
                continue

            def compute():
                x = np.stack([preprocess(r.value, bundle.extractor.spec) for r in records])
                d = bundle.descriptors(x)
                p = bundle.predict(name, d)
                return p

            started = time.perf_counter()
            probs = await asyncio.get_running_loop().run_in_executor(pool, compute)
            ms = 1000 * (time.perf_counter() - started) / len(records)
            rows = [PredictionRow(uuid.UUID(bytes=r.key), name, tag, bundle.labels[int(p.argmax())], float(p.max()),
                                  [float(v) for v in p], ms) for r, p in zip(records, probs, strict=True)]
            await db.write_predictions([], rows)
            await consumer.commit()
    finally:
        await consumer.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sync")
    s.add_argument("--port", type=int, required=True)
    b = sub.add_parser("before")
    b.add_argument("--topic", required=True)
    b.add_argument("--classifier", required=True, choices=CLASSIFIERS)
    b.add_argument("--tag", required=True)
    b.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    settings = Settings()
    if args.cmd == "sync":
        asyncio.run(sync_server(settings, args.port))
    else:
        asyncio.run(before_classifier(settings, args.topic, args.classifier, args.tag, args.batch))


if __name__ == "__main__":
    main()
