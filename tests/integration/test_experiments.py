"""Models on the live stream, end to end on the real stack: bundles with k = 10 and k = 50 run as
shadows of a k = 20 one, labelled images stream in with their feedback, and the experiment view
ranks the three bundles as their held-out accuracies do; the drift score stays low on those
images and rises on heavily blurred ones; promoting a bundle changes what new images are answered with,
without a restart."""

from __future__ import annotations

import asyncio
import io
import uuid
from pathlib import Path

import aiohttp
import pytest
from PIL import Image, ImageFilter

from app.http.client import upload_bytes, upload_many, wait_complete
from models import data
from tests.workers import Worker, cli, isolated_env, pinned_bundle, train_bundle

pytestmark = pytest.mark.e2e

TRAIN_LIMIT = 300  # the quick bundle's: its features are cached, so each bundle trains in seconds


def _held_out_images(dataset: Path, per_class: int) -> list[tuple[str, bytes]]:
    """Images none of the bundles trained on: outside the seed-0 subset that training draws."""
    everything = data.list_samples(dataset)
    trained = {s.path for s in data.limit_per_class(everything, TRAIN_LIMIT, seed=0)}
    rest = [s for s in everything if s.path not in trained]
    picked = data.limit_per_class(rest, per_class, seed=11)
    return [(s.label, b) for s, b in data.read_samples(dataset, picked)]


def _blurred(raw: bytes, salt: int) -> bytes:
    """Heavily blurred: an out-of-focus camera. (Inverting colours moves these descriptors far
    less: PSI about 0.17 against 8 for a blur of radius 4, measured on the k = 20 bundle.)"""
    buf = io.BytesIO()
    Image.open(io.BytesIO(raw)).convert("RGB").filter(ImageFilter.GaussianBlur(3)).save(
        buf, "JPEG", quality=95, comment=f"blur-{salt}".encode())
    return buf.getvalue()


async def _until(check, timeout: float, what: str):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"{what} not reached in {timeout}s")
        await asyncio.sleep(1)


async def test_shadows_feedback_drift_and_promotion(stack, dataset, tmp_path):
    pinned_bundle()  # fix the other tests' bundle before this one publishes three more
    versions = {k: train_bundle(dataset, k, limit_per_class=TRAIN_LIMIT) for k in (10, 20, 50)}
    env = isolated_env(uuid.uuid4().hex[:8], IMGSTREAM_BUNDLE_VERSION="latest", IMGSTREAM_REGISTRY_POLL_S="1",
                       IMGSTREAM_DRIFT_WINDOW="300", IMGSTREAM_DRIFT_MIN_IMAGES="200")
    cli("models", "promote", versions[20], env=env)
    cli("models", "shadow", versions[10], versions[50], env=env)
    worker = Worker(env, log_dir=tmp_path).start()
    try:
        worker.wait_healthy()
        labelled = _held_out_images(dataset, 50)  # 500 images, 50 per class
        folder = tmp_path / "labelled"
        for i, (label, raw) in enumerate(labelled):
            (folder / label).mkdir(parents=True, exist_ok=True)
            (folder / label / f"{i}.jpg").write_bytes(raw)
        files = [(p, p.parent.name) for p in sorted(folder.rglob("*.jpg"))]
        results = await upload_many(worker.url, [p for p, _ in files], concurrency=16,
                                    labels=[label for _, label in files])
        assert [status for *_, status, _ in results] == [202] * len(files)
        ids = [body["image_id"] for *_, body in results]

        async with aiohttp.ClientSession() as s:
            async def experiments():
                async with s.get(f"{worker.url}/experiments?window_s=3600") as r:
                    body = await r.json()
                by = {b["version"]: b for b in body["bundles"]}
                # every labelled image classified by the three classifiers of each bundle
                return body if all(by.get(v, {}).get("labelled") == 3 * len(ids) for v in versions.values()) else None

            view = await _until(experiments, 180, "three predictions per image from each bundle")
            by = {b["version"]: b for b in view["bundles"]}
            assert view["serving"] == versions[20] and set(view["shadows"]) == {versions[10], versions[50]}
            assert {by[v]["role"] for v in versions.values()} == {"serving", "shadow"}
            held = {k: by[v]["held_out_top1"] for k, v in versions.items()}
            live = {k: by[v]["live_accuracy"] for k, v in versions.items()}
            print(f"held-out top-1 {held}; live accuracy on {len(ids)} labelled images {live}")
            assert sorted(held, key=held.get) == sorted(live, key=live.get), (held, live)
            for k in (10, 50):  # shadows are compared with the serving bundle's answers
                assert by[versions[k]]["agreement"] is not None and by[versions[k]]["predictions"] == 3 * len(ids)

            # what an image is answered with stays the serving bundle's
            async with s.get(f"{worker.url}/predictions/{ids[0]}") as r:
                served = await r.json()
            assert {p["model_version"] for p in served["predictions"].values()} == {versions[20]}

            # drift: low on images like the training data, high on blurred ones
            async with s.get(f"{worker.url}/drift") as r:
                normal = await r.json()
            assert normal["available"] and normal["psi_max"] < normal["alert"], normal
            blurred = [_blurred(raw, i) for i, (_, raw) in enumerate(labelled[:300])]
            sem = asyncio.Semaphore(16)

            async def up(raw):
                async with sem:
                    return await upload_bytes(s, worker.url, raw)

            inv_ids = [b["image_id"] for _, b in await asyncio.gather(*(up(r) for r in blurred))]
            await wait_complete(s, worker.url, inv_ids, asyncio.get_running_loop().time() + 120)
            async with s.get(f"{worker.url}/drift") as r:
                drifted = await r.json()
            print(f"drift score: {normal['psi_max']} on labelled images, {drifted['psi_max']} on blurred ones")
            assert drifted["psi_max"] > drifted["alert"] > normal["psi_max"]

            async def gauge():  # Prometheus' gauge, refreshed every 10 s
                return worker.metric_sum("imgstream_drift_psi_max", bundle=versions[20]) > drifted["alert"]

            await _until(gauge, 30, "imgstream_drift_psi_max above the alert level")

            # promotion: new images are answered by the promoted bundle, without a restart
            cli("models", "promote", versions[50], env=env)

            async def promoted():
                async with s.get(f"{worker.url}/health") as r:
                    return (await r.json())["checks"]["model"].get("version") == versions[50]

            await _until(promoted, 30, "the promoted bundle serving")
            new = [b["image_id"] for _, b in await asyncio.gather(
                *(up(_blurred(raw, 1000 + i)) for i, (_, raw) in enumerate(labelled[:10])))]
            done = await wait_complete(s, worker.url, new, asyncio.get_running_loop().time() + 60)
            assert {p["model_version"] for d in done.values() for p in d["predictions"].values()} == {versions[50]}
            async with s.get(f"{worker.url}/predictions/{ids[0]}") as r:
                before = await r.json()
            assert {p["model_version"] for p in before["predictions"].values()} == {versions[20]}
        assert worker.process.exited() is None
    finally:
        worker.stop()
