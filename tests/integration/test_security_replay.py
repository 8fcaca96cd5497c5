"""Security settings, refusals counted in metrics, roles, the CLI, and replay with another bundle."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import uuid

import aiohttp
import asyncpg
import pytest
from PIL import Image

from app.http.client import upload_bytes, wait_complete
from tests.conftest import REPO
from tests.workers import Worker, isolated_env

pytestmark = pytest.mark.e2e
SECRETS = {"IMGSTREAM_API_WRITE_TOKENS": "old-" + uuid.uuid4().hex + ",tok-" + uuid.uuid4().hex,
           "IMGSTREAM_API_READ_TOKENS": "read-" + uuid.uuid4().hex}


async def test_tokens_guard_reads_and_writes_and_secrets_stay_out_of_logs(stack, sample_images, tmp_path):
    worker = Worker(isolated_env(uuid.uuid4().hex[:8], **SECRETS), log_dir=tmp_path).start()
    try:
        await asyncio.to_thread(worker.wait_healthy)
        token = SECRETS["IMGSTREAM_API_WRITE_TOKENS"].split(",")[1]  # the second of two: rotation
        read = SECRETS["IMGSTREAM_API_READ_TOKENS"]
        async with aiohttp.ClientSession() as s:
            status, body = await upload_bytes(s, worker.url, sample_images[0][1])
            assert status == 401 and body["error"]["code"] == "unauthorized"
            status, body = await upload_bytes(s, worker.url, sample_images[0][1], token="wrong")
            assert status == 401
            status, body = await upload_bytes(s, worker.url, sample_images[0][1], token=read)
            assert status == 403 and body["error"]["code"] == "insufficient_scope"
            for path in ("/extract", "/predict/fast"):
                async with s.post(f"{worker.url}{path}", json={}) as r:
                    assert r.status == 401
            status, body = await upload_bytes(s, worker.url, sample_images[0][1], token=token)
            assert status == 202
            image_id = body["image_id"]
            for path in (f"/predictions/{image_id}", f"/images/{image_id}", "/predictions?limit=5", "/stats",
                         "/openapi.json", "/timeseries"):
                async with s.get(f"{worker.url}{path}") as r:
                    assert r.status == 401, path
                async with s.get(f"{worker.url}{path}", headers={"Authorization": f"Bearer {read}"}) as r:
                    assert r.status == 200, path
            async with s.get(f"{worker.url}/openapi.json", headers={"Authorization": f"Bearer {read}"}) as r:
                assert (await r.json())["paths"]["/upload"]["post"]["security"] == [{"bearer": ["write"]}]
            async with s.get(f"{worker.url}/metrics") as r:
                assert r.status == 200, "no metrics token configured: Prometheus scrapes as before"
            for path in ("/", "/router/", "/router/topics", "/table/"):  # Faust's own pages: off
                async with s.get(f"{worker.url}{path}", headers={"Authorization": f"Bearer {token}"}) as r:
                    assert r.status == 404, path
            async with s.get(f"{worker.url}/health") as r:
                health = await r.text()
    finally:
        worker.stop()
    log = worker.log_path.read_text(errors="replace")
    for secret in (*SECRETS["IMGSTREAM_API_WRITE_TOKENS"].split(","), read, stack.s3_secret_key.get_secret_value(),
                   "imgstream-secret-key", stack.postgres_dsn.get_secret_value()):
        assert secret not in log and secret not in health


async def test_bomb_and_refusals_are_counted_and_the_worker_keeps_running(pipeline):
    worker, _ = pipeline
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, "PNG")
    before = worker.metric_sum("imgstream_http_refused_total")
    async with aiohttp.ClientSession() as s:
        status, body = await upload_bytes(s, worker.url, buf.getvalue(), "image/png")
        assert status == 413 and body["error"]["code"] == "too_many_pixels"
        status, _ = await upload_bytes(s, worker.url, b"%PDF-1.7", "image/jpeg")
        assert status == 422
        async with s.post(f"{worker.url}/predict/fast", data=b"{oops") as r:
            assert r.status == 400
    assert worker.metric_sum("imgstream_http_refused_total") - before == 3
    assert worker.metric_sum("imgstream_http_refused_total", code="too_many_pixels") >= 1
    assert worker.pid is not None


async def test_stages_run_in_separate_processes_by_role(stack, sample_images, tmp_path):
    env = isolated_env(uuid.uuid4().hex[:8])
    workers = [Worker(env, roles=r, log_dir=tmp_path).start() for r in
               ("extractor", "classifier-fast,classifier-balanced", "classifier-accurate,dead-letter")]
    try:
        for w in workers:
            await asyncio.to_thread(w.wait_healthy)
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{workers[1].url}/health") as r:
                assert (await r.json())["checks"]["model"]["extractor_loaded"] is False
            ids = [(await upload_bytes(s, workers[0].url, b))[1]["image_id"] for _, b in sample_images[100:110]]
            done = await wait_complete(s, workers[2].url, ids, asyncio.get_running_loop().time() + 90)
    finally:
        for w in workers:
            w.stop()
    assert len(done) == 10 and all(d["status"] == "complete" for d in done.values())


def test_faust_command_line_finds_the_app():
    proc = subprocess.run([sys.executable, "-m", "faust", "-A", "app", "agents"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # one agent runs the three classifiers of a worker that has them all (IMGSTREAM_CLASSIFIER_AGENTS)
    for agent in ("extractor", "classifiers-fast-balanced-accurate", "dead-letter"):
        assert agent in proc.stdout


def test_upload_and_predictions_cli(pipeline, sample_images, tmp_path):
    worker, _ = pipeline
    for i, (label, data) in enumerate(sample_images[200:204]):
        (tmp_path / f"{i}-{label}.jpg").write_bytes(data)
    proc = subprocess.run([sys.executable, "-m", "app.ops.cli", "upload", str(tmp_path), "--url", worker.url],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    ids = [line.split("\t")[0] for line in proc.stdout.splitlines() if "\t" in line]
    assert len(ids) == 4
    asyncio.run(_wait(worker.url, ids))
    proc = subprocess.run([sys.executable, "-m", "app.ops.cli", "predictions", ids[0], "--url", worker.url, "--trace"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and '"complete"' in proc.stdout and '"trace"' in proc.stdout


async def _wait(url, ids):
    async with aiohttp.ClientSession() as s:
        await wait_complete(s, url, ids, asyncio.get_running_loop().time() + 60)


async def test_replay_reclassifies_history_with_a_new_bundle(stack, dataset, sample_images, tmp_path):
    from tests.workers import pinned_bundle

    env = isolated_env(uuid.uuid4().hex[:8])
    worker = Worker(env, log_dir=tmp_path).start()
    try:
        await asyncio.to_thread(worker.wait_healthy)
        async with aiohttp.ClientSession() as s:
            ids = [(await upload_bytes(s, worker.url, b))[1]["image_id"] for _, b in sample_images[120:150]]
            await wait_complete(s, worker.url, ids, asyncio.get_running_loop().time() + 90)
        extracted = worker.metric_sum("imgstream_descriptor_cache_total", result="miss")
    finally:
        worker.stop()
    base = pinned_bundle()
    train = subprocess.run([sys.executable, "-m", "app.ops.cli", "models", "train", "--data", str(dataset),
                            "--reducer-from", base, "--limit-per-class", "40", "--no-sweep"],
                           capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-2000:]
    new = next(line.split()[1] for line in train.stdout.splitlines() if line.startswith("bundle "))
    run = subprocess.run([sys.executable, "-m", "app.ops.cli", "replay", "--model-version", new],
                         capture_output=True, text=True, timeout=600, env={**__import__("os").environ, **env})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    conn = await asyncpg.connect(stack.postgres_dsn.get_secret_value())
    try:
        rows = await conn.fetch("SELECT model_version, count(*) AS n FROM predictions WHERE image_id = ANY($1::uuid[]) "
                                "GROUP BY model_version", [uuid.UUID(i) for i in ids])
    finally:
        await conn.close()
    assert {r["model_version"]: r["n"] for r in rows} == {base: 90, new: 90}
    assert extracted == 30, "replay re-extracted nothing (the only extractions were the 30 uploads)"
    # a second replay of the same version starts where the first stopped: nothing new
    again = subprocess.run([sys.executable, "-m", "app.ops.cli", "replay", "--model-version", new],
                           capture_output=True, text=True, timeout=600, env={**__import__("os").environ, **env})
    assert '"rows_inserted": 0' in again.stdout


def test_models_evaluate_prints_json_per_classifier(stack, dataset):
    import json

    from tests.workers import pinned_bundle

    proc = subprocess.run([sys.executable, "-m", "app.ops.cli", "models", "evaluate", "--bundle", pinned_bundle(),
                           "--data", str(dataset), "--limit-per-class", "3"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["images"] == 30 and set(result["classifiers"]) == {"fast", "balanced", "accurate"}
    for c in result["classifiers"].values():
        assert 0 <= c["top1"] <= 1 and 0 <= c["ece"] <= 1 and 0 <= c["macro_f1"] <= 1
        assert c["latency_one"]["p99_ms"] > 0 and c["latency_batch256"]["p50_ms"] > 0


def test_evaluating_on_classes_the_bundle_lacks_is_one_line_and_a_failed_exit(stack, tmp_path):
    from PIL import Image

    from tests.workers import pinned_bundle

    (tmp_path / "zebra").mkdir()
    Image.new("RGB", (32, 32), (10, 20, 30)).save(tmp_path / "zebra" / "a.jpg")
    proc = subprocess.run([sys.executable, "-m", "app.ops.cli", "models", "evaluate", "--bundle", pinned_bundle(),
                           "--data", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.strip().splitlines() == ["error: classes ['zebra'] are not in the bundle's labels "
                                                + proc.stderr.split("labels ", 1)[1].strip()]
