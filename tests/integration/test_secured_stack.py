"""The pipeline on the secured stack (``imgstream stack up --secure``): Kafka over SASL_SSL with a
SCRAM user made by Kafka's own tool, PostgreSQL over TLS with its certificate verified, S3 over
HTTPS with a private CA, the API behind read and write tokens. And what an operator sees when one
secret or certificate is wrong: the worker stays live, /ready says which service and why within
30 s, and no secret reaches the logs or /health."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import aiohttp
import asyncpg
import msgspec
import pytest

from app.http.client import upload_bytes, wait_complete
from app.core.security import postgres_ssl
from app.core.settings import Settings
from tests.conftest import REPO, missing
from tests.workers import Worker, isolated_env, pinned_bundle, rows_per_image

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="session")
def secured(settings):
    """(worker env, Settings) of the running secured stack, with the session's bundle published to
    its bucket."""
    from tools import stack as local_stack
    from tools.stack.secure import prepare

    bad = [(n, h) for n, _, h in local_stack.status(settings, secure=True) if h != "healthy"]
    if bad:
        missing(f"secured services not healthy: {bad}; run `imgstream stack up --secure`")
    env = prepare(settings).env(settings)
    bundle = settings.bundles_dir / pinned_bundle()
    proc = subprocess.run([sys.executable, "-m", "app.ops.cli", "models", "publish", str(bundle)], cwd=REPO,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        secure_settings = Settings()
    return env, secure_settings


def _secrets(env: dict[str, str]) -> list[str]:
    from urllib.parse import urlparse

    values = [env[k] for k in ("IMGSTREAM_KAFKA_PASSWORD", "IMGSTREAM_S3_SECRET_KEY", "IMGSTREAM_API_WRITE_TOKENS",
                               "IMGSTREAM_API_READ_TOKENS", "IMGSTREAM_METRICS_TOKENS")]
    return values + [urlparse(env["IMGSTREAM_POSTGRES_DSN"]).password]


async def test_the_pipeline_runs_end_to_end_on_the_secured_stack(secured, sample_images, tmp_path):
    env, s = secured
    write, read = env["IMGSTREAM_API_WRITE_TOKENS"], env["IMGSTREAM_API_READ_TOKENS"]
    worker = Worker({**isolated_env(uuid.uuid4().hex[:8]), **env}, log_dir=tmp_path).start()
    try:
        await asyncio.to_thread(worker.wait_healthy)
        images = sample_images[::3][:200]
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {read}"}) as reader, \
                aiohttp.ClientSession() as anonymous:
            sem = asyncio.Semaphore(16)

            async def one(data):
                async with sem:
                    return await upload_bytes(anonymous, worker.url, data, token=write)

            results = await asyncio.gather(*(one(b) for _, b in images))
            assert [st for st, _ in results] == [202] * len(images)
            ids = [body["image_id"] for _, body in results]
            done = await wait_complete(reader, worker.url, ids, asyncio.get_running_loop().time() + 120)
            async with anonymous.get(f"{worker.url}/predictions/{ids[0]}") as r:
                assert r.status == 401
            async with anonymous.get(f"{worker.url}/metrics") as r:
                assert r.status == 401
            async with anonymous.get(f"{worker.url}/metrics",
                                     headers={"Authorization": f"Bearer {env['IMGSTREAM_METRICS_TOKENS']}"}) as r:
                assert r.status == 200 and "imgstream_http" in await r.text()
            async with anonymous.get(f"{worker.url}/health") as r:
                health = await r.text()
    finally:
        worker.stop()
    assert all(d["status"] == "complete" for d in done.values()) and len(done) == len(images)
    labels = dict(zip(ids, (label for label, _ in images), strict=True))
    assert sum(done[i]["consensus"]["label"] == labels[i] for i in ids) / len(ids) > 0.5
    conn = await asyncpg.connect(s.postgres_dsn.get_secret_value(), ssl=postgres_ssl(s))
    try:
        on_tls = await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    finally:
        await conn.close()
    assert on_tls is True
    assert await rows_per_image(s.postgres_dsn.get_secret_value(), ids, ssl=postgres_ssl(s)) == {i: 3 for i in ids}
    log = worker.log_path.read_text(errors="replace")
    for secret in _secrets(env):
        assert secret not in log and secret not in health


def _other_ca(tmp_path: Path) -> str:
    from tools.stack.secure import make_certificates

    make_certificates(tmp_path / "other")
    return str(tmp_path / "other" / "ca.pem")


def _ready(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"{url}/ready", timeout=8) as r:
            return r.status, msgspec.json.decode(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, msgspec.json.decode(exc.read())
    except OSError:
        return 0, {}


@pytest.mark.parametrize("case", ["kafka-password", "kafka-ca", "postgres-password", "postgres-ca", "s3-ca"])
def test_a_wrong_secret_or_certificate_is_named_in_ready_within_30s(secured, tmp_path, case):
    env, s = secured
    from urllib.parse import urlparse

    dsn = urlparse(env["IMGSTREAM_POSTGRES_DSN"])
    wrong = {
        "kafka-password": ({"IMGSTREAM_KAFKA_PASSWORD": "not-the-password"}, "kafka", "authentication failed"),
        "kafka-ca": ({"IMGSTREAM_KAFKA_CA_FILE": _other_ca(tmp_path)}, "kafka", "certificate not trusted"),
        "postgres-password": ({"IMGSTREAM_POSTGRES_DSN": dsn._replace(
            netloc=f"imgstream:not-the-password@{dsn.hostname}:{dsn.port}").geturl()}, "postgres",
            "password authentication failed"),
        "postgres-ca": ({"IMGSTREAM_POSTGRES_CA_FILE": _other_ca(tmp_path)}, "postgres", "certificate not trusted"),
        "s3-ca": ({"IMGSTREAM_S3_CA_FILE": _other_ca(tmp_path)}, "s3", "certificate not trusted"),
    }
    override, service, cause = wrong[case]
    worker = Worker({**isolated_env(uuid.uuid4().hex[:8]), **env, **override}, log_dir=tmp_path).start()
    started = time.monotonic()
    try:
        status, body = 0, {}
        while time.monotonic() - started < 30:
            status, body = _ready(worker.url)
            check = body.get("checks", {}).get(service, {})
            if status == 503 and cause in check.get("error", ""):
                break
            assert worker.process.exited() is None, worker.log_tail()
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        assert status == 503 and cause in body["checks"][service]["error"], (status, body, worker.log_tail())
        with urllib.request.urlopen(f"{worker.url}/live", timeout=5) as r:
            assert r.status == 200, "a wrong secret never gets the worker restarted"
        time.sleep(5)  # the retries that follow say it in a line, not a traceback
        assert worker.process.exited() is None
    finally:
        worker.stop()
    log = worker.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    for secret in [*_secrets(env), "not-the-password"]:
        assert secret not in log and secret not in str(body)
    print(f"{case}: /ready named {service} ({body['checks'][service]['error']}) after {elapsed:.1f}s")


async def test_plain_is_offered_beside_scram(secured):
    """The broker's listener takes PLAIN too (some managed services offer only PLAIN over TLS)."""
    from app.stream import broker

    _, s = secured
    plain = s.model_copy(update={"kafka_sasl_mechanism": "PLAIN"})
    await broker.ping(plain)
    topics = await broker.end_offsets(plain, s.input_topic)
    assert topics, "the secured stack's topics exist and are readable over PLAIN"
